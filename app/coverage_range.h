// How far a calibrated fit's coverage may fall from its nominal level by chance alone: over n
// independent truths, the count inside a credible interval of nominal level p is Binomial(n, p),
// so a mock study's coverage is judged against that distribution's central range, not against p.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "dslens/core/errors.h"

namespace dslens::app {

struct CoverageRange {
  double lower, upper;  // fractions of n: counts lower*n .. upper*n hold `level` of the mass
};

// The central `level` range of Binomial(n, p) / n: the smallest count whose CDF reaches
// (1 - level) / 2, and the smallest whose CDF reaches (1 + level) / 2. The pmf is summed in log
// space (lgamma), exact to double round-off for any n a study has.
inline CoverageRange binomial_coverage_range(int64_t n, double p, double level = 0.95) {
  if (n < 1 || !(p > 0 && p < 1) || !(level > 0 && level < 1))
    throw InvalidArgument("binomial_coverage_range: needs n >= 1, 0 < p < 1, 0 < level < 1");
  const double lo_tail = 0.5 * (1.0 - level), hi_tail = 0.5 * (1.0 + level);
  const double nd = static_cast<double>(n);
  double cdf = 0.0;
  int64_t lo = -1, hi = -1;
  for (int64_t k = 0; k <= n && hi < 0; ++k) {
    const double kd = static_cast<double>(k);
    cdf += std::exp(std::lgamma(nd + 1) - std::lgamma(kd + 1) - std::lgamma(nd - kd + 1) +
                    kd * std::log(p) + (nd - kd) * std::log1p(-p));
    if (lo < 0 && cdf >= lo_tail) lo = k;
    if (cdf >= hi_tail) hi = k;
  }
  if (hi < 0) hi = n;  // round-off kept the CDF below the tail
  return {static_cast<double>(lo) / nd, static_cast<double>(hi) / nd};
}

}  // namespace dslens::app

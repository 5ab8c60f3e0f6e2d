// The branch-free exp and log of dslens/core/simd.h against the C library's, over the ranges the
// kernels use (EPL: log of R^2 from 1e-30 up, exp of (t - 1) ln(b / R); the VAE: sigmoids), and
// the error bounds their comments claim (log: ~1 ulp seen; exp: ~2).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "dslens/core/simd.h"

namespace simd_test {

using dslens::simd::Vec;

// Relative error of f (vector) against g (scalar) at xs, in units of the result's ulp.
template <typename T, typename F, typename G>
double max_ulps(const std::vector<T>& xs, F f, G g) {
  constexpr int L = dslens::simd::kLanes<T>;
  double worst = 0;
  for (size_t i = 0; i + L <= xs.size(); i += L) {
    const Vec<T> y = f(dslens::simd::load(xs.data() + i));
    for (int l = 0; l < L; ++l) {
      const double want = g(static_cast<double>(xs[i + l]));
      const double ulp = std::abs(want) * std::numeric_limits<T>::epsilon();
      worst = std::max(worst, std::abs(static_cast<double>(y[l]) - want) / ulp);
    }
  }
  return worst;
}

std::vector<double> spaced(double lo, double hi, int n, bool logarithmic) {
  std::vector<double> xs;
  for (int i = 0; i < n; ++i) {
    const double u = static_cast<double>(i) / (n - 1);
    xs.push_back(logarithmic ? std::exp(std::log(lo) + u * (std::log(hi) - std::log(lo)))
                             : lo + u * (hi - lo));
  }
  return xs;
}

TEST(Simd, LogIsWithinTwoUlpsFromTheSmallestNormalToTheLargest) {
  auto vlog = [](Vec<double> x) { return dslens::simd::vlog(x); };
  auto log = [](double x) { return std::log(x); };
  // Far from 1, where log x is far from 0 and ulps are relative.
  EXPECT_LT(max_ulps(spaced(2.3e-308, 0.5, 40000, true), vlog, log), 2.0);
  EXPECT_LT(max_ulps(spaced(2.0, 1.7e308, 40000, true), vlog, log), 2.0);
  // Near 1 the reduction's s = (m - 1) / (m + 1) carries the result: relative accuracy holds.
  EXPECT_LT(max_ulps(spaced(0.5, 2.0, 40000, false), vlog, log), 2.0);
  // Both sides of the fold at m = sqrt(2), and exact powers of two.
  std::vector<double> edges;
  for (int e = -1000; e <= 1000; e += 7)
    for (double m : {1.0, 1.4142135623730949, 1.4142135623730951, 1.4142135623730954, 1.9999999})
      edges.push_back(std::ldexp(m, e));
  while (edges.size() % 4) edges.push_back(3.0);
  EXPECT_LT(max_ulps(edges, vlog, log), 2.0);
}

TEST(Simd, ExpIsWithinThreeUlpsAndClampsToTheFiniteRange) {
  auto vexp = [](Vec<double> x) { return dslens::simd::vexp(x); };
  auto exp = [](double x) { return std::exp(x); };
  // (2.1 ulps seen at 400,000 points: the Taylor polynomial's rounding, not its truncation.)
  EXPECT_LT(max_ulps(spaced(-708.0, 709.0, 100000, false), vexp, exp), 3.0);
  EXPECT_LT(max_ulps(spaced(-1e-3, 1e-3, 4000, false), vexp, exp), 3.0);
  const Vec<double> y = dslens::simd::vexp(Vec<double>{-1e4, 1e4, 0.0, -0.0});
  EXPECT_DOUBLE_EQ(y[0], std::exp(-708.0));  // within 4 ulps
  EXPECT_DOUBLE_EQ(y[1], std::exp(709.0));
  EXPECT_EQ(y[2], 1.0);
  EXPECT_EQ(y[3], 1.0);
  // float: Cephes' polynomial, ~1 ulp of float.
  std::vector<float> xf;
  for (double x : spaced(-87.0, 88.0, 40000, false)) xf.push_back(static_cast<float>(x));
  auto vexpf = [](Vec<float> x) { return dslens::simd::vexp(x); };
  EXPECT_LT(max_ulps(xf, vexpf, exp), 2.0);
}

}  // namespace simd_test

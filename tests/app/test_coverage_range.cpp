// The chance range of a calibrated fit's coverage (app/coverage_range.h), against binomial tails
// summed exactly with integers (Python's math.comb, printed here) and against closed forms.
#include <gtest/gtest.h>

#include "app/coverage_range.h"
#include "dslens/core/errors.h"

namespace coverage_range_test {

using dslens::app::binomial_coverage_range;

// Reference counts: for k in range(n + 1), the first k whose sum of comb(n, j) p^j (1-p)^(n-j),
// j <= k, reaches 0.025 and 0.975 (Python, fractions-free floats; checked with Fraction for n=30).
TEST(CoverageRange, CentralRangeOfBinomialCountsAtNominal68) {
  const struct {
    int64_t n, lo, hi;
  } cases[] = {{10, 4, 9}, {30, 15, 25}, {150, 91, 113}, {240, 149, 177}};
  for (const auto& c : cases) {
    const auto r = binomial_coverage_range(c.n, 0.68);
    EXPECT_DOUBLE_EQ(r.lower, double(c.lo) / c.n) << "n " << c.n;
    EXPECT_DOUBLE_EQ(r.upper, double(c.hi) / c.n) << "n " << c.n;
  }
}

TEST(CoverageRange, ClosedFormsAndSymmetry) {
  // n = 1: the CDF is 1 - p at k = 0 and 1 at k = 1.
  const auto one = binomial_coverage_range(1, 0.68);
  EXPECT_EQ(one.lower, 0.0);  // 0.32 >= 0.025
  EXPECT_EQ(one.upper, 1.0);  // 0.32 < 0.975
  // p = 1/2 is symmetric: lower + upper = 1 when no count sits exactly on a tail.
  const auto half = binomial_coverage_range(101, 0.5);
  EXPECT_DOUBLE_EQ(half.lower + half.upper, 1.0);
  // The range narrows as 1/sqrt(n) around p (normal limit: p +- 1.96 sqrt(p(1-p)/n)).
  const auto big = binomial_coverage_range(100000, 0.68);
  const double half_width = 1.959964 * std::sqrt(0.68 * 0.32 / 100000);
  EXPECT_NEAR(big.lower, 0.68 - half_width, 2e-5);
  EXPECT_NEAR(big.upper, 0.68 + half_width, 2e-5);
}

TEST(CoverageRange, RefusesMeaninglessArguments) {
  EXPECT_THROW(binomial_coverage_range(0, 0.68), dslens::InvalidArgument);
  EXPECT_THROW(binomial_coverage_range(30, 1.0), dslens::InvalidArgument);
  EXPECT_THROW(binomial_coverage_range(30, 0.68, 1.0), dslens::InvalidArgument);
}

}  // namespace coverage_range_test

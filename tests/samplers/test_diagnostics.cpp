// MCMC diagnostics against the R package posterior's values for Stan's Bernoulli example, closed
// forms (iid and AR(1) chains) and the undefined cases (NaN).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <random>

#include "dslens/core/errors.h"
#include "dslens/samplers/diagnostics.h"
#include "dslens/samplers/stan_csv.h"
#include "test_support.h"

namespace diagnostics_test {

namespace ds = dslens::samplers;

std::vector<std::string> bernoulli_files() {
  const std::string dir = dslens::testing::shared_dir() + "/reference/mcmc_diagnostics/";
  return {dir + "bern1.csv", dir + "bern2.csv", dir + "bern3.csv", dir + "bern4.csv"};
}

torch::Tensor column(const ds::StanChains& c, const std::string& name) {
  for (size_t i = 0; i < c.names.size(); ++i) {
    if (c.names[i] == name) return c.draws.select(2, static_cast<int64_t>(i));
  }
  ADD_FAILURE() << "no column " << name;
  return {};
}

void expect_rel(double actual, double expected, double rel, const std::string& what) {
  EXPECT_NEAR(actual, expected, rel * std::abs(expected)) << what;
}

// AR(1) chains x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t started in stationarity.
torch::Tensor ar1(int64_t chains, int64_t n, double rho, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  auto t = torch::empty({chains, n}, torch::kFloat64);
  auto a = t.accessor<double, 2>();
  const double s = std::sqrt(1 - rho * rho);
  for (int64_t c = 0; c < chains; ++c) {
    double x = normal(rng);
    for (int64_t i = 0; i < n; ++i) {
      a[c][i] = x;
      x = rho * x + s * normal(rng);
    }
  }
  return t;
}

TEST(Diagnostics, ReproducesPosteriorOnStanBernoulli) {
  const auto files = bernoulli_files();
  for (const auto& f : files) DSLENS_REQUIRE_FILE(f);
  const auto chains = ds::read_stan_csv_chains(files);
  ASSERT_EQ(chains.draws.sizes(), (std::vector<int64_t>{4, 1000, 8}));
  // Reference: /work/shared/reference/mcmc_diagnostics/README.md (R package posterior).
  const auto theta = column(chains, "theta");
  expect_rel(ds::rhat(theta), 1.006789, 1e-4, "theta rhat");
  expect_rel(ds::ess_bulk(theta), 1407.5124, 1e-4, "theta ess_bulk");
  expect_rel(ds::ess_tail(theta), 1291.7131, 1e-4, "theta ess_tail");
  const auto lp = column(chains, "lp__");
  expect_rel(ds::rhat(lp), 1.00073, 1e-4, "lp__ rhat");
  expect_rel(ds::ess_bulk(lp), 1512.7684, 1e-4, "lp__ ess_bulk");
  expect_rel(ds::ess_tail(lp), 1591.9707, 1e-4, "lp__ ess_tail");

  // The batched form and the all-in-one struct agree with the single functions.
  const auto all = ds::convergence_per_parameter(chains.draws);
  ASSERT_EQ(all.size(), 8u);
  const auto one = ds::convergence(theta);
  EXPECT_DOUBLE_EQ(all[7].rhat, ds::rhat(theta));
  EXPECT_DOUBLE_EQ(all[7].ess_bulk, ds::ess_bulk(theta));
  EXPECT_DOUBLE_EQ(all[7].ess_tail, ds::ess_tail(theta));
  EXPECT_DOUBLE_EQ(one.rhat_bulk, ds::rhat_bulk(theta));
  EXPECT_DOUBLE_EQ(one.rhat_tail, ds::rhat_tail(theta));
  EXPECT_DOUBLE_EQ(one.rhat, std::max(one.rhat_bulk, one.rhat_tail));
  EXPECT_DOUBLE_EQ(one.ess_basic, ds::ess_basic(theta));
  EXPECT_DOUBLE_EQ(one.mcse_mean, ds::mcse_mean(theta));
  EXPECT_DOUBLE_EQ(one.mcse_q5, ds::mcse_quantile(theta, 0.05));
  EXPECT_DOUBLE_EQ(one.mcse_q95, ds::mcse_quantile(theta, 0.95));
  EXPECT_DOUBLE_EQ(all[0].ess_bulk, ds::ess_bulk(lp));

  // The sampler column divergent__ is constant (no divergences): every diagnostic is undefined.
  const auto div = column(chains, "divergent__");
  EXPECT_TRUE(std::isnan(ds::rhat(div)));
  EXPECT_TRUE(std::isnan(ds::ess_bulk(div)));
  EXPECT_TRUE(std::isnan(ds::ess_tail(div)));
  EXPECT_TRUE(std::isnan(all[5].rhat));
  EXPECT_TRUE(std::isnan(all[5].ess_bulk));
  EXPECT_EQ(ds::count_divergences(div), 0);

  // E-BFMI of Stan's energies: well above the 0.3 warning level for this easy posterior.
  const auto e = ds::ebfmi(column(chains, "energy__"));
  ASSERT_EQ(e.size(), 4u);
  for (double v : e) {
    EXPECT_GT(v, 0.3);
    EXPECT_LT(v, 3.0);
  }
}

// divergence_percentiles against ranks counted by hand: divergent draws at the 1st, 2nd and 4th
// smallest of 5 values of x (ranks 0, 1, 3 of 4: mean 1/3) and, for y = -x, at ranks 4, 3, 1
// (2/3); no divergences give NaN, and shapes are checked.
TEST(Diagnostics, DivergencePercentilesAreTheDivergentDrawsMeanRanks) {
  const auto x = torch::tensor({3.0, 1.0, 5.0, 2.0, 4.0}, torch::kFloat64);
  const auto draws = torch::stack({x, -x}, 1).reshape({1, 5, 2});
  const auto divergent = torch::tensor({false, true, false, true, true}).reshape({1, 5});
  const auto p = ds::divergence_percentiles(draws, divergent);
  // Divergent x values 1, 2, 4 have ranks 0, 1, 3.
  EXPECT_NEAR(p[0].item<double>(), (0.0 + 1.0 + 3.0) / 3.0 / 4.0, 1e-12);
  EXPECT_NEAR(p[1].item<double>(), (4.0 + 3.0 + 1.0) / 3.0 / 4.0, 1e-12);
  EXPECT_TRUE(std::isnan(
      ds::divergence_percentiles(draws, torch::zeros({1, 5}, torch::kBool))[0].item<double>()));
  EXPECT_THROW(ds::divergence_percentiles(draws, divergent.reshape({5, 1})),
               dslens::InvalidArgument);
}

TEST(Diagnostics, UndefinedCasesAreNaN) {
  auto x = ar1(4, 100, 0.3, 1);
  ASSERT_TRUE(std::isfinite(ds::rhat(x)));
  // One non-finite draw anywhere.
  for (double bad : std::vector<double>{std::nan(""), HUGE_VAL, -HUGE_VAL}) {
    auto y = x.clone();
    y[2][17] = bad;
    EXPECT_TRUE(std::isnan(ds::rhat(y)));
    EXPECT_TRUE(std::isnan(ds::rhat_basic(y)));
    EXPECT_TRUE(std::isnan(ds::ess_bulk(y)));
    EXPECT_TRUE(std::isnan(ds::ess_tail(y)));
    EXPECT_TRUE(std::isnan(ds::ess_basic(y)));
    EXPECT_TRUE(std::isnan(ds::mcse_mean(y)));
    EXPECT_TRUE(std::isnan(ds::mcse_quantile(y, 0.5)));
    EXPECT_TRUE(std::isnan(ds::convergence(y).ess_bulk));
  }
  // Constant draws.
  auto c = torch::full({4, 100}, 2.5, torch::kFloat64);
  EXPECT_TRUE(std::isnan(ds::rhat(c)));
  EXPECT_TRUE(std::isnan(ds::ess_bulk(c)));
  EXPECT_TRUE(std::isnan(ds::ess_tail(c)));
  EXPECT_TRUE(std::isnan(ds::mcse_mean(c)));
  // Fewer than 4 draws per chain; 4 draws are enough for R-hat.
  auto few = ar1(4, 3, 0.0, 2);
  EXPECT_TRUE(std::isnan(ds::rhat(few)));
  EXPECT_TRUE(std::isnan(ds::ess_bulk(few)));
  EXPECT_TRUE(std::isnan(ds::ess_tail(few)));
  EXPECT_TRUE(std::isnan(ds::rhat(ar1(2, 0, 0.0, 3))));
  EXPECT_TRUE(std::isfinite(ds::rhat(ar1(4, 4, 0.0, 4))));
  // The std::vector form agrees.
  EXPECT_TRUE(std::isnan(ds::ess_bulk(ds::ChainDraws{{1, 2, 3}, {4, 5, 6}})));
  EXPECT_TRUE(std::isnan(ds::rhat(ds::ChainDraws{{1, 1, 1, 1, 1}, {1, 1, 1, 1, 1}})));
  // Bad shapes and unequal chains are errors, not NaN.
  EXPECT_THROW(ds::rhat(torch::zeros({2, 3, 4})), dslens::InvalidArgument);
  EXPECT_THROW(ds::rhat(ds::ChainDraws{{1, 2, 3, 4}, {1, 2, 3}}), dslens::InvalidArgument);
  EXPECT_THROW(ds::ess_quantile(x, 1.5), dslens::InvalidArgument);
}

TEST(Diagnostics, IidNormalDrawsHaveEssNearTheirNumber) {
  torch::manual_seed(11);
  const auto x = torch::randn({4, 1000}, torch::kFloat64);
  const double N = 4000;
  // The ESS estimate of iid draws scatters by a few percent; 12 % is > 4 sigma.
  EXPECT_NEAR(ds::ess_bulk(x), N, 0.12 * N);
  EXPECT_NEAR(ds::ess_basic(x), N, 0.12 * N);
  EXPECT_NEAR(ds::ess_tail(x), N, 0.2 * N);
  EXPECT_LT(ds::rhat(x), 1.01);
  EXPECT_GT(ds::rhat(x), 0.99);
  // MCSE of the mean ~ sd / sqrt(N); of the 5 % quantile ~ sqrt(p (1 - p) / N) / phi(q_p).
  EXPECT_NEAR(ds::mcse_mean(x), 1 / std::sqrt(N), 0.1 / std::sqrt(N));
  const double phi_q5 =
      std::exp(-0.5 * 1.6448536269514722 * 1.6448536269514722) / std::sqrt(2 * M_PI);
  const double mcse_q5 = std::sqrt(0.05 * 0.95 / N) / phi_q5;
  EXPECT_NEAR(ds::mcse_quantile(x, 0.05), mcse_q5, 0.3 * mcse_q5);
  // Float32 and CUDA-independent input: same answer from float32 draws (to float32 rounding).
  EXPECT_NEAR(ds::ess_bulk(x.to(torch::kFloat32)), ds::ess_bulk(x), 1e-6 * N);
  // E-BFMI of iid energies is 2 (E[(E_t - E_{t-1})^2] = 2 var E).
  for (double v : ds::ebfmi(x)) EXPECT_NEAR(v, 2.0, 0.45);  // scatter ~0.13 per chain
}

TEST(Diagnostics, Ar1EssMatchesClosedForm) {
  // ESS of the mean of an AR(1) chain: N (1 - rho) / (1 + rho). With 80000 draws the estimate's
  // relative scatter is ~4 % at rho = 0.9 (truncation window ~40 lags), less for smaller |rho|.
  for (double rho : {0.5, 0.9, -0.3}) {
    const auto x = ar1(8, 10000, rho, 7 + static_cast<uint64_t>(100 * (rho + 1)));
    const double expected = 80000 * (1 - rho) / (1 + rho);
    EXPECT_NEAR(ds::ess_basic(x), expected, 0.15 * expected) << "rho " << rho;
    EXPECT_NEAR(ds::ess_bulk(x), expected, 0.15 * expected) << "rho " << rho;
    EXPECT_LT(ds::rhat(x), 1.01) << "rho " << rho;
  }
  // Chains stuck in different places: R-hat far above 1.
  auto x = ar1(4, 1000, 0.5, 99);
  x[0] += 3.0;
  EXPECT_GT(ds::rhat(x), 1.2);
  EXPECT_GT(ds::rhat_basic(x), 1.2);
  // Chains with different scales: the folded (tail) R-hat sees it.
  auto y = ar1(4, 1000, 0.0, 98);
  y[0] *= 5.0;
  EXPECT_GT(ds::rhat_tail(y), 1.1);
}

TEST(Diagnostics, OddLengthsAndVectorInputAgreeWithTensors) {
  const auto x = ar1(3, 101, 0.4, 5);  // odd: split drops the middle draw
  ds::ChainDraws v(3);
  for (int c = 0; c < 3; ++c) {
    for (int i = 0; i < 101; ++i) v[c].push_back(x[c][i].item<double>());
  }
  EXPECT_DOUBLE_EQ(ds::rhat(v), ds::rhat(x));
  EXPECT_DOUBLE_EQ(ds::ess_bulk(v), ds::ess_bulk(x));
  EXPECT_DOUBLE_EQ(ds::ess_tail(v), ds::ess_tail(x));
  EXPECT_DOUBLE_EQ(ds::mcse_quantile(v, 0.5), ds::mcse_quantile(x, 0.5));
  // A 1-d tensor is one chain.
  EXPECT_DOUBLE_EQ(ds::ess_bulk(x[0]), ds::ess_bulk(x.slice(0, 0, 1)));
  // Dropping the middle draw: the odd chain's diagnostics equal those of the chain without it.
  auto without_middle = torch::cat({x.slice(1, 0, 50), x.slice(1, 51, 101)}, 1);
  EXPECT_DOUBLE_EQ(ds::rhat_basic(x), ds::rhat_basic(without_middle));
}

TEST(Diagnostics, DivergenceCounts) {
  auto d = torch::zeros({3, 10}, torch::kInt64);
  d[0][2] = 1;
  d[2][0] = 1;
  d[2][9] = 1;
  EXPECT_EQ(ds::count_divergences(d), 3);
  EXPECT_EQ(ds::divergences_per_chain(d), (std::vector<int64_t>{1, 0, 2}));
  EXPECT_EQ(ds::count_divergences(d.to(torch::kBool)), 3);
  EXPECT_EQ(ds::count_divergences(d[2].to(torch::kFloat64)), 2);
}

TEST(Diagnostics, ReferenceAboveTheDrawsMeansAnotherMode) {
  // A 76-d standard normal: log density -|x|^2 / 2 per draw, 4 x 500 iid draws.
  const int64_t D = 76;
  torch::manual_seed(19);
  const auto lp = [](const torch::Tensor& x) { return -0.5 * x.square().sum(-1); };
  const auto draws = lp(torch::randn({4, 500, D}, torch::kFloat64));
  // 2000 fresh points of the same Gaussian (truths of a calibrated posterior): none flagged.
  const auto fresh = lp(torch::randn({2000, D}, torch::kFloat64));
  int flagged = 0;
  for (int64_t i = 0; i < fresh.size(0); ++i) {
    flagged += ds::log_density_above_draws(fresh[i].item<double>(), draws, D) > 0;
  }
  EXPECT_EQ(flagged, 0);
  // The mode itself (log density 0, D / 2 = 38 nats above the typical set's mean, about 6 sd) is
  // not flagged: it belongs to the draws' mode. Its distance to the best draw less D / 2:
  const double best = draws.max().item<double>();
  EXPECT_NEAR(ds::log_density_above_draws(0.0, draws, D), -best - 38.0, 1e-12);
  EXPECT_LT(ds::log_density_above_draws(0.0, draws, D), 0);
  // Draws of a second, lower mode (the same Gaussian 80 nats down) against a point of the first
  // are flagged, as is the first mode's top against the same Gaussian 60 nats down.
  EXPECT_GT(ds::log_density_above_draws(fresh[0].item<double>(), draws - 80.0, D), 0);
  EXPECT_GT(ds::log_density_above_draws(0.0, draws - 60.0, D), 0);
  // Float32 draws, non-finite draws ignored; undefined cases NaN.
  auto with_inf = draws.to(torch::kFloat32).clone();
  with_inf[0][0] = -INFINITY;
  EXPECT_NEAR(ds::log_density_above_draws(0.0, with_inf, D),
              ds::log_density_above_draws(0.0, draws, D), 1e-4);
  EXPECT_TRUE(std::isnan(ds::log_density_above_draws(NAN, draws, D)));
  EXPECT_TRUE(std::isnan(ds::log_density_above_draws(0.0, torch::full({3}, NAN), D)));
  EXPECT_THROW(ds::log_density_above_draws(0.0, draws, 0), dslens::InvalidArgument);
}

TEST(DiagnosticsStats, AutocovarianceMatchesDirectSums) {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  for (size_t n : {5u, 64u, 333u}) {
    std::vector<double> x(n);
    for (auto& v : x) v = normal(rng);
    double mean = 0;
    for (double v : x) mean += v;
    mean /= static_cast<double>(n);
    const auto ac = ds::mcmc_stats::autocovariance(x);
    ASSERT_EQ(ac.size(), n);
    for (size_t t = 0; t < n; ++t) {
      double s = 0;
      for (size_t i = 0; i + t < n; ++i) s += (x[i] - mean) * (x[i + t] - mean);
      EXPECT_NEAR(ac[t], s / static_cast<double>(n), 1e-12) << "n " << n << " lag " << t;
    }
  }
  const auto zero = ds::mcmc_stats::autocovariance({2.0, 2.0, 2.0});
  for (double v : zero) EXPECT_EQ(v, 0.0);
}

TEST(DiagnosticsStats, QuantilesMatchRAndPython) {
  // R: quantile(c(4, 1, 3, 2), c(0, 0.05, 0.5, 1)) = 1, 1.15, 2.5, 4 (type 7).
  EXPECT_DOUBLE_EQ(ds::mcmc_stats::quantile({4, 1, 3, 2}, 0.0), 1.0);
  EXPECT_DOUBLE_EQ(ds::mcmc_stats::quantile({4, 1, 3, 2}, 0.05), 1.15);
  EXPECT_DOUBLE_EQ(ds::mcmc_stats::quantile({4, 1, 3, 2}, 0.5), 2.5);
  EXPECT_DOUBLE_EQ(ds::mcmc_stats::quantile({4, 1, 3, 2}, 1.0), 4.0);
  // Python statistics.NormalDist().inv_cdf (AS241).
  EXPECT_NEAR(ds::mcmc_stats::normal_quantile(0.975), 1.9599639845400536, 1e-15);
  EXPECT_NEAR(ds::mcmc_stats::normal_quantile(0.3), -0.5244005127080407, 1e-15);
  EXPECT_NEAR(ds::mcmc_stats::normal_quantile(1e-10), -6.361340902404056, 1e-13);
  EXPECT_NEAR(ds::mcmc_stats::normal_quantile(1 - 1e-12), 7.0344869100478356, 1e-6);
  EXPECT_EQ(ds::mcmc_stats::normal_quantile(0.5), 0.0);
  EXPECT_TRUE(std::isinf(ds::mcmc_stats::normal_quantile(0.0)));
  // Beta(1, b): I_x = 1 - (1 - x)^b, so qbeta(p, 1, b) = 1 - (1 - p)^(1/b).
  for (double b : {1.0, 3.5, 250.0}) {
    for (double p : {0.1586553, 0.5, 0.8413447}) {
      EXPECT_NEAR(ds::mcmc_stats::beta_quantile(p, 1, b), 1 - std::pow(1 - p, 1 / b), 1e-12);
      EXPECT_NEAR(ds::mcmc_stats::incomplete_beta(1 - std::pow(1 - p, 1 / b), 1, b), p, 1e-12);
    }
  }
  // Symmetric Beta(a, a) has median 1/2; large parameters as in mcse_quantile.
  EXPECT_NEAR(ds::mcmc_stats::beta_quantile(0.5, 2001, 2001), 0.5, 1e-12);
  EXPECT_NEAR(ds::mcmc_stats::incomplete_beta(0.5, 70.5, 70.5), 0.5, 1e-12);
}

}  // namespace diagnostics_test

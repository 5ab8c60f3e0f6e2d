// app/chain_summary.h: each chain's means and the warning for chains in a lower mode, on draws
// made here with one chain displaced (its parameters and its log posterior), so the expected
// values are known.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "app/chain_summary.h"

namespace chain_summary_test {

using dslens::app::ChainSummary;

struct Chains {
  torch::Tensor values, log_density, divergent, step_size;
};

// 4 chains x 400 draws of (theta_E, gamma): chains 0, 1, 3 around (1.0, 2.0), chain `odd` around
// (1.1, 2.3) with a mean log posterior `odd_lp` (the others' 100); chain 1 has 3 divergences.
Chains make_chains(int64_t odd, double odd_lp) {
  torch::manual_seed(7);
  const int64_t C = 4, N = 400;
  auto values =
      torch::randn({C, N, 2}, torch::kFloat64) * torch::tensor({0.01, 0.05}, torch::kFloat64);
  values = values + torch::tensor({1.0, 2.0}, torch::kFloat64);
  values[odd] += torch::tensor({0.1, 0.3}, torch::kFloat64);
  auto lp = 100.0 + 3.0 * torch::randn({C, N}, torch::kFloat64);
  lp[odd] += odd_lp - 100.0;
  auto divergent = torch::zeros({C, N}, torch::kBool);
  divergent[1].narrow(0, 10, 3).fill_(true);
  const auto step =
      torch::tensor({0.1, 0.2, 0.3, 0.4}, torch::kFloat64).unsqueeze(1).expand({C, N});
  return {values, lp, divergent, step};
}

const std::vector<std::string> kNames = {"theta_E_lens0", "gamma_lens0"};

TEST(ChainSummary, MeansPerChainAndTheLowerModeIsNamed) {
  const Chains c = make_chains(2, 60.0);
  const ChainSummary s =
      dslens::app::summarize_chains(c.values, kNames, c.log_density, c.divergent, c.step_size);
  ASSERT_EQ(s.mean_log_density.size(), 4u);
  for (int64_t k = 0; k < 4; ++k) {
    // Means computed here element by element.
    double lp = 0, theta = 0;
    for (int64_t n = 0; n < 400; ++n) {
      lp += c.log_density[k][n].item<double>();
      theta += c.values[k][n][0].item<double>();
    }
    EXPECT_NEAR(s.mean_log_density[static_cast<size_t>(k)], lp / 400, 1e-9);
    EXPECT_NEAR(s.means[k][0].item<double>(), theta / 400, 1e-12);
    EXPECT_NEAR(s.step_size[static_cast<size_t>(k)], 0.1 * (k + 1), 1e-12);
  }
  EXPECT_EQ(s.divergences, (std::vector<int64_t>{0, 3, 0, 0}));
  // Pooled within-chain sd: the displacement does not enter it.
  EXPECT_NEAR(s.within_sd[0].item<double>(), 0.01, 0.001);
  EXPECT_NEAR(s.within_sd[1].item<double>(), 0.05, 0.005);

  const auto w = dslens::app::split_chains_warning(s);
  ASSERT_TRUE(w.has_value());
  EXPECT_NE(w->find("chain 2's is 40."), std::string::npos) << *w;
  EXPECT_NE(w->find("nats below chain "), std::string::npos) << *w;
  // gamma is 6 sd away, theta_E 10: theta_E first.
  EXPECT_LT(w->find("theta_E_lens0 1.1"), w->find("gamma_lens0 2.3")) << *w;
  EXPECT_EQ(w->find("chain 1's"), std::string::npos) << *w;

  const auto j = dslens::app::chains_json(s);
  ASSERT_EQ(j.size(), 4u);
  EXPECT_NEAR(j[2]["mean"]["gamma_lens0"].get<double>(), 2.3, 0.01);
  EXPECT_EQ(j[1]["divergences"].get<int64_t>(), 3);
  const std::string text = dslens::app::chains_text(s);
  EXPECT_NE(text.find("chain 3"), std::string::npos) << text;
  EXPECT_NE(text.find("\ntheta_E_lens0 "), std::string::npos) << text;
  EXPECT_EQ(dslens::app::chains_text(s, 3), "");  // more chains than columns
}

// Chains whose parameters differ but whose log posteriors agree are not a lower mode (R-hat
// speaks for them); nor is a gap within the threshold.
TEST(ChainSummary, NoWarningWithoutALogPosteriorGap) {
  for (const double odd_lp : {100.0, 96.0}) {
    const Chains c = make_chains(0, odd_lp);
    const ChainSummary s =
        dslens::app::summarize_chains(c.values, kNames, c.log_density, c.divergent, c.step_size);
    EXPECT_FALSE(dslens::app::split_chains_warning(s).has_value()) << odd_lp;
  }
  // The best chain can be the displaced one: then the other three are named.
  const Chains c = make_chains(3, 120.0);
  const auto w = dslens::app::split_chains_warning(
      dslens::app::summarize_chains(c.values, kNames, c.log_density, c.divergent, c.step_size));
  ASSERT_TRUE(w.has_value());
  for (const char* chain : {"chain 0's", "chain 1's", "chain 2's"})
    EXPECT_NE(w->find(chain), std::string::npos) << *w;
  EXPECT_NE(w->find("below chain 3's"), std::string::npos) << *w;
}

// A 1,037-parameter posterior's log density wanders with sd sqrt(D / 2) = 23 nats and, sampled by
// NUTS, is autocorrelated: one mode's chains then differ in their means by more than 5 nats (the
// session-46 fit of a 32 x 32 pixel grid: 7.0 and 9.2), which is not a lower mode. An AR(1) log
// density (rho 0.9, ESS about 20 of 400 draws) gives each chain's mean a Monte Carlo error of
// about 5 nats; a gap of 9 is within 4 of them, one of 60 is not.
TEST(ChainSummary, AGapWithinTheChainsMonteCarloErrorIsNotALowerMode) {
  torch::manual_seed(11);
  const int64_t C = 4, N = 400;
  const double rho = 0.9, sd = 23.0;
  auto lp = torch::zeros({C, N}, torch::kFloat64);
  auto prev = torch::randn({C}, torch::kFloat64) * sd;
  for (int64_t n = 0; n < N; ++n) {
    prev = rho * prev + std::sqrt(1 - rho * rho) * sd * torch::randn({C}, torch::kFloat64);
    lp.select(1, n).copy_(prev);
  }
  auto values = torch::randn({C, N, 2}, torch::kFloat64);
  const auto divergent = torch::zeros({C, N}, torch::kBool);
  const auto step = torch::full({C, N}, 0.2, torch::kFloat64);
  // Chain 1 set 9 nats below chain 0's mean, chain 2 at 0, chain 3 at 0: within the error.
  const auto means = lp.mean(1);
  for (int64_t c = 0; c < C; ++c) lp[c] -= means[c];
  lp[1] -= 9.0;
  auto s = dslens::app::summarize_chains(values, kNames, lp, divergent, step);
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_GT(s.mean_log_density_mcse[static_cast<size_t>(c)], 2.5) << c;
    EXPECT_LT(s.mean_log_density_mcse[static_cast<size_t>(c)], 10.0) << c;
  }
  EXPECT_FALSE(dslens::app::split_chains_warning(s).has_value());
  lp[1] -= 51.0;  // 60 nats below
  s = dslens::app::summarize_chains(values, kNames, lp, divergent, step);
  const auto w = dslens::app::split_chains_warning(s);
  ASSERT_TRUE(w.has_value());
  EXPECT_NE(w->find("chain 1's is 60.0 nats below"), std::string::npos) << *w;
}

// The divergences' warning names where they lie: 40 divergent draws among the lowest 10 % of
// parameter "a" (and so the highest of "b" = -a), none of "c"'s pattern: "low a", "high b", not c.
// Four divergences, or divergences spread evenly, add nothing.
TEST(ChainSummary, DivergenceRegionNamesTheParametersTheDivergencesLeanTowards) {
  torch::manual_seed(5);
  const int64_t C = 4, N = 500;
  const auto a = torch::randn({C, N}, torch::kFloat64);
  const auto draws = torch::stack({a, -2.0 * a + 1.0, torch::randn({C, N}, torch::kFloat64)}, 2);
  const std::vector<std::string> names = {"a", "b", "c"};
  const auto low = a <= std::get<0>(a.flatten().kthvalue(C * N / 10));  // the lowest 10 %
  auto divergent = torch::zeros({C, N}, torch::kBool);
  const auto idx = low.flatten().nonzero().flatten().narrow(0, 0, 40);
  divergent.view({-1}).index_fill_(0, idx, true);
  const std::string text = dslens::app::divergence_region(draws, divergent, names);
  EXPECT_EQ(text.find("; they lie towards low a (mean percentile "), 0u) << text;
  EXPECT_NE(text.find(", high b (mean percentile 9"), std::string::npos) << text;
  EXPECT_EQ(text.find(" c "), std::string::npos) << text;
  // Only 4 divergences: nothing said.
  auto few = torch::zeros({C, N}, torch::kBool);
  few.view({-1}).index_fill_(0, idx.narrow(0, 0, 4), true);
  EXPECT_EQ(dslens::app::divergence_region(draws, few, names), "");
  // Every 10th draw divergent: spread like the posterior, nothing said.
  auto even = torch::zeros({C, N}, torch::kBool);
  even.view({-1}).index_fill_(0, torch::arange(0, C * N, 10), true);
  EXPECT_EQ(dslens::app::divergence_region(draws, even, names), "");
}

}  // namespace chain_summary_test

// Stan's warmup building blocks: dual averaging, the window schedule, Welford estimators and the
// step-size search.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/samplers/adaptation.h"
#include "dslens/samplers/hmc.h"

namespace adaptation_test {

using namespace dslens::samplers;
using Windows = std::vector<std::pair<int64_t, int64_t>>;

// Stan's stepsize_adaptation::learn_stepsize, scalar, written from the paper's equations.
struct ScalarDualAveraging {
  double mu, delta = 0.8, gamma = 0.05, kappa = 0.75, t0 = 10;
  double s_bar = 0, x_bar = 0;
  int counter = 0;
  double learn(double stat) {
    ++counter;
    stat = std::min(stat, 1.0);
    double eta = 1.0 / (counter + t0);
    s_bar = (1 - eta) * s_bar + eta * (delta - stat);
    double x = mu - s_bar * std::sqrt(counter) / gamma;
    double w = std::pow(counter, -kappa);
    x_bar = (1 - w) * x_bar + w * x;
    return std::exp(x);
  }
};

TEST(DualAveraging, MatchesStanRecurrencePerChain) {
  auto opt = torch::TensorOptions().dtype(torch::kFloat64);
  torch::Tensor mu = torch::tensor({std::log(10.0 * 0.3), std::log(10.0 * 1.7)}, opt);
  DualAveraging da(StepSizeAdaptSettings{}, mu);
  ScalarDualAveraging ref0{std::log(3.0)}, ref1{std::log(17.0)};
  for (int i = 0; i < 60; ++i) {
    double a0 = 0.5 + 0.45 * std::sin(0.3 * i), a1 = i % 7 == 0 ? 1.3 : 0.1 + 0.01 * i;
    torch::Tensor eps = da.learn(torch::tensor({a0, a1}, opt));
    const double e0 = ref0.learn(a0), e1 = ref1.learn(a1);
    ASSERT_NEAR(eps[0].item<double>(), e0, 1e-12 * e0) << i;
    ASSERT_NEAR(eps[1].item<double>(), e1, 1e-12 * e1) << i;
    EXPECT_NEAR(da.final_step_size()[0].item<double>(), std::exp(ref0.x_bar),
                1e-12 * std::exp(ref0.x_bar));
    EXPECT_NEAR(da.final_step_size()[1].item<double>(), std::exp(ref1.x_bar),
                1e-12 * std::exp(ref1.x_bar));
  }
}

// Rows out of step: each row's updates, made whenever that row learns, are learn's to the bit
// (float32, where learn's scalars are cast by the kernels), and rows that do not learn keep their
// state and the step size given.
TEST(DualAveraging, RowsLearningAtTheirOwnCountersMatchLearn) {
  const auto opt = torch::TensorOptions().dtype(torch::kFloat32);
  const torch::Tensor mu = torch::tensor({0.3f, 1.2f, -0.4f}, opt);
  auto stat_at = [](int64_t row, int64_t n) {
    return 0.5 + 0.45 * std::sin(0.7 * static_cast<double>(n) + static_cast<double>(row));
  };
  std::vector<DualAveraging> alone;
  for (int64_t r = 0; r < 3; ++r) alone.emplace_back(StepSizeAdaptSettings{}, mu.narrow(0, r, 1));
  DualAveraging rows(StepSizeAdaptSettings{}, mu);
  // Row r learns at calls where (call + r) % (r + 1) == 0: row 0 every call, row 2 every third.
  std::vector<int64_t> counter(3, 0);
  torch::Tensor eps = torch::full({3}, -1.0f, opt);
  for (int64_t call = 0; call < 40; ++call) {
    std::vector<int64_t> learns(3, 0);
    std::vector<float> stat(3, 0.0f);
    torch::Tensor expected = eps.clone();
    for (int64_t r = 0; r < 3; ++r) {
      if ((call + r) % (r + 1) != 0) continue;
      learns[r] = ++counter[r];
      stat[r] = static_cast<float>(stat_at(r, counter[r]));
      expected[r] = alone[r].learn(torch::tensor({stat[r]}, opt))[0];
    }
    eps = rows.learn_rows(torch::tensor(stat, opt), learns, eps);
    ASSERT_TRUE(torch::equal(eps, expected)) << "call " << call;
    for (int64_t r = 0; r < 3; ++r) {
      ASSERT_TRUE(torch::equal(rows.x_bar()[r], alone[r].x_bar()[0])) << "call " << call;
      ASSERT_TRUE(torch::equal(rows.s_bar()[r], alone[r].s_bar()[0])) << "call " << call;
    }
  }
  EXPECT_THROW(rows.learn_rows(torch::zeros({3}, opt), {1, 2}, eps), dslens::InvalidArgument);
}

TEST(DualAveraging, ConvergesToTheTargetAcceptance) {
  // A synthetic sampler whose acceptance is exp(-eps): the fixed point is eps = -log(delta).
  auto opt = torch::TensorOptions().dtype(torch::kFloat64);
  for (double delta : {0.6, 0.8, 0.95}) {
    StepSizeAdaptSettings s;
    s.delta = delta;
    DualAveraging da(s, torch::full({1}, std::log(10.0), opt));
    torch::Tensor eps = torch::ones({1}, opt);
    for (int i = 0; i < 3000; ++i) eps = da.learn(torch::exp(-eps));
    EXPECT_NEAR(da.final_step_size().item<double>(), -std::log(delta), 0.08 * -std::log(delta))
        << "delta " << delta;
  }
}

TEST(WindowedAdaptation, SlowWindowsMatchStan) {
  WindowSettings w;  // 75 / 25 / 50
  EXPECT_EQ(WindowedAdaptation::slow_windows(1000, w),
            (Windows{{75, 100}, {100, 150}, {150, 250}, {250, 450}, {450, 950}}));
  EXPECT_EQ(WindowedAdaptation::slow_windows(2000, w),
            (Windows{{75, 100}, {100, 150}, {150, 250}, {250, 450}, {450, 850}, {850, 1950}}));
  EXPECT_EQ(WindowedAdaptation::slow_windows(150, w), (Windows{{75, 100}}));
  // 300: the third window ends exactly at the terminal buffer.
  EXPECT_EQ(WindowedAdaptation::slow_windows(300, w), (Windows{{75, 100}, {100, 150}, {150, 250}}));
  WindowSettings small{10, 5, 10};
  EXPECT_EQ(WindowedAdaptation::slow_windows(60, small), (Windows{{10, 15}, {15, 25}, {25, 50}}));
}

TEST(Welford, MatchesTorchCovariance) {
  torch::manual_seed(3);
  auto opt = torch::TensorOptions().dtype(torch::kFloat64);
  const int64_t C = 3, N = 40, D = 4;
  torch::Tensor x = torch::randn({C, N, D}, opt) * torch::tensor({1.0, 2.0, 0.5, 3.0}, opt) + 1.5;
  WelfordEstimator diag(MetricKind::diag, C, D, opt), dense(MetricKind::dense, C, D, opt);
  for (int64_t i = 0; i < N; ++i) {
    diag.add(x.select(1, i));
    dense.add(x.select(1, i));
  }
  EXPECT_EQ(diag.num_samples(), N);
  EXPECT_TRUE(torch::allclose(diag.covariance(false), x.var(1, /*unbiased=*/true), 1e-10, 1e-12));
  for (int64_t c = 0; c < C; ++c) {
    torch::Tensor xc = x[c] - x[c].mean(0);
    torch::Tensor cov = xc.t().mm(xc) / double(N - 1);
    EXPECT_TRUE(torch::allclose(dense.covariance(false)[c], cov, 1e-10, 1e-12));
  }
  // Pooled: each chain's deviations from its own mean, over C (N - 1) degrees of freedom.
  torch::Tensor within = x - x.mean(1, /*keepdim=*/true);
  torch::Tensor flat = within.reshape({C * N, D});
  EXPECT_TRUE(torch::allclose(diag.covariance(true)[1], flat.pow(2).sum(0) / double(C * (N - 1)),
                              1e-10, 1e-12));
  EXPECT_TRUE(torch::allclose(dense.covariance(true)[2], flat.t().mm(flat) / double(C * (N - 1)),
                              1e-10, 1e-12));
  EXPECT_EQ(dense.effective_count(true), C * N);
}

// In float32 the textbook update (q - mean_new)(q - mean_old)^T leaves the covariance asymmetric
// at round-off; the metric built from it must be symmetric to the bit.
TEST(Welford, DenseCovarianceIsExactlySymmetricInFloat32) {
  torch::manual_seed(5);
  auto opt = torch::TensorOptions().dtype(torch::kFloat32);
  const int64_t C = 2, N = 200, D = 12;
  const torch::Tensor mix = torch::randn({D, D}, opt);
  const torch::Tensor x = torch::randn({C, N, D}, opt).matmul(mix) + 3.0;
  WelfordEstimator dense(MetricKind::dense, C, D, opt);
  for (int64_t i = 0; i < N; ++i) dense.add(x.select(1, i));
  for (const bool pooled : {false, true}) {
    const torch::Tensor cov = dense.covariance(pooled);
    EXPECT_TRUE(torch::equal(cov, cov.transpose(-1, -2))) << "pooled " << pooled;
    // and still the covariance, to float32 round-off
    const torch::Tensor xc = (x[0] - x[0].mean(0)).to(torch::kFloat64);
    if (!pooled) {
      EXPECT_TRUE(
          torch::allclose(cov[0].to(torch::kFloat64), xc.t().mm(xc) / double(N - 1), 1e-4, 1e-4));
    }
  }
}

TEST(Welford, PooledMetricLeavesOutTheDistanceBetweenChains) {
  // Two chains in two modes 10 sd apart (x = +-5 + N(0, 1) in every coordinate): the metric a
  // trajectory needs is the modes' own unit covariance. The draws taken together have variance
  // 1 + 25 = 26, which would cut the step size by sqrt(26) in the whitened frame.
  torch::manual_seed(5);
  auto opt = torch::TensorOptions().dtype(torch::kFloat64);
  const int64_t C = 2, N = 400, D = 3;
  const auto shift = torch::tensor({-5.0, 5.0}, opt).view({C, 1, 1});
  torch::Tensor x = torch::randn({C, N, D}, opt) + shift;
  WelfordEstimator diag(MetricKind::diag, C, D, opt), dense(MetricKind::dense, C, D, opt);
  for (int64_t i = 0; i < N; ++i) {
    diag.add(x.select(1, i));
    dense.add(x.select(1, i));
  }
  const auto var = diag.covariance(true);
  EXPECT_LT((var - 1.0).abs().max().item<double>(), 0.2) << var;
  const auto cov = dense.covariance(true)[0];
  EXPECT_LT((cov - torch::eye(D, opt)).abs().max().item<double>(), 0.2) << cov;
  // Both chains get the same pooled estimate.
  EXPECT_TRUE(torch::equal(dense.covariance(true)[0], dense.covariance(true)[1]));
}

TEST(Welford, GroupsPoolTheirOwnChainsOnly) {
  torch::manual_seed(4);
  auto opt = torch::TensorOptions().dtype(torch::kFloat64);
  const int64_t C = 4, N = 30, D = 3;
  // Chains 2 and 3 (the second group) are wider and elsewhere: pooling across groups would show.
  const auto scale = torch::tensor({1.0, 1.0, 5.0, 5.0}, opt).view({C, 1, 1});
  const auto shift = torch::tensor({0.0, 0.3, 10.0, 9.0}, opt).view({C, 1, 1});
  torch::Tensor x = torch::randn({C, N, D}, opt) * scale + shift;
  WelfordEstimator diag(MetricKind::diag, C, D, opt), dense(MetricKind::dense, C, D, opt);
  for (int64_t i = 0; i < N; ++i) {
    diag.add(x.select(1, i));
    dense.add(x.select(1, i));
  }
  const auto by_group_diag = diag.covariance_of_groups(2);
  const auto by_group_dense = dense.covariance_of_groups(2);
  for (int64_t g = 0; g < 2; ++g) {
    // The within-chain covariance of the group's two chains: the mean of their covariances.
    const torch::Tensor g_x = x.narrow(0, 2 * g, 2);
    const torch::Tensor ac = (g_x - g_x.mean(1, /*keepdim=*/true)).reshape({2 * N, D});
    const torch::Tensor cov = ac.t().mm(ac) / double(2 * (N - 1));
    for (int64_t c = 2 * g; c < 2 * g + 2; ++c) {
      EXPECT_TRUE(torch::allclose(by_group_dense[c], cov, 1e-10, 1e-12)) << "chain " << c;
      EXPECT_TRUE(torch::allclose(by_group_diag[c], cov.diagonal(), 1e-10, 1e-12)) << "chain " << c;
    }
  }
  EXPECT_FALSE(torch::allclose(by_group_dense[0], by_group_dense[2], 1e-2, 1e-2));
  EXPECT_EQ(dense.effective_count_of_groups(2), 2 * N);
  // Groups of 1 and of all chains are the per-chain and pooled estimates.
  EXPECT_TRUE(torch::equal(dense.covariance_of_groups(1), dense.covariance(false)));
  EXPECT_TRUE(torch::allclose(dense.covariance_of_groups(C), dense.covariance(true), 1e-12, 1e-12));
  EXPECT_THROW(dense.covariance_of_groups(3), dslens::InvalidArgument);
}

TEST(Welford, StanRegularisation) {
  auto opt = torch::TensorOptions().dtype(torch::kFloat64);
  torch::Tensor var = torch::tensor({{2.0, 0.5}}, opt);
  torch::Tensor r = regularize_covariance(var, 10, MetricKind::diag);
  EXPECT_NEAR(r[0][0].item<double>(), 10.0 / 15.0 * 2.0 + 1e-3 * 5.0 / 15.0, 1e-15);
  EXPECT_NEAR(r[0][1].item<double>(), 10.0 / 15.0 * 0.5 + 1e-3 * 5.0 / 15.0, 1e-15);
  torch::Tensor cov = torch::tensor({{{2.0, 0.3}, {0.3, 1.0}}}, opt);
  torch::Tensor rd = regularize_covariance(cov, 20, MetricKind::dense);
  EXPECT_NEAR(rd[0][0][1].item<double>(), 0.8 * 0.3, 1e-15);
  EXPECT_NEAR(rd[0][1][1].item<double>(), 0.8 * 1.0 + 1e-3 * 0.2, 1e-15);
}

// With a reference inverse metric the shrinkage is 1e-3 of its diagonal instead of 1e-3 I, so that
// regularising a covariance in other units gives the same covariance in those units.
TEST(Welford, RegularisationTowardsTheReferencesScale) {
  auto opt = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor cov = torch::tensor({{{2.0, 0.3}, {0.3, 1.0}}}, opt);
  const torch::Tensor ref = torch::tensor({{{4.0, 1.0}, {1.0, 0.5}}}, opt);
  const torch::Tensor r = regularize_covariance(cov, 20, MetricKind::dense, ref);
  EXPECT_NEAR(r[0][0][0].item<double>(), 0.8 * 2.0 + 1e-3 * 0.2 * 4.0, 1e-15);
  EXPECT_NEAR(r[0][0][1].item<double>(), 0.8 * 0.3, 1e-15);
  EXPECT_NEAR(r[0][1][1].item<double>(), 0.8 * 1.0 + 1e-3 * 0.2 * 0.5, 1e-15);
  // Equivariance under a change of units x -> s x.
  const double s2 = 1e-8;
  EXPECT_TRUE(torch::allclose(regularize_covariance(cov * s2, 20, MetricKind::dense, ref * s2),
                              r * s2, 1e-12, 0.0));
  const torch::Tensor var = torch::tensor({{2.0, 0.5}}, opt),
                      vref = torch::tensor({{3.0, 1e-6}}, opt);
  const torch::Tensor d = regularize_covariance(var * s2, 10, MetricKind::diag, vref * s2);
  EXPECT_NEAR(d[0][1].item<double>() / s2, 10.0 / 15.0 * 0.5 + 1e-3 * 5.0 / 15.0 * 1e-6, 1e-12);
  EXPECT_THROW(regularize_covariance(cov, 20, MetricKind::dense, vref), dslens::InvalidArgument);
}

TEST(StepSizeSearch, FindsTheAcceptanceCrossingPerChain) {
  // Standard normal in 1-d with unit metric: one leapfrog step of size e from (q, p) changes H by
  // a known amount; the search must stop at a step size whose acceptance brackets 0.8.
  auto opt = torch::TensorOptions().dtype(torch::kFloat64);
  const int64_t C = 6;
  LogDensityFn f = [](const torch::Tensor& q) {
    return LogDensityValue{-0.5 * (q * q).sum(1) * 1e4, -q * 1e4};
  };
  HamiltonianSystem sys(f, Metric::identity(MetricKind::diag, C, 1, opt),
                        ChainRandom(5, 0, C, torch::kCPU));
  ChainState st;
  st.q = torch::linspace(-0.02, 0.02, C, opt).unsqueeze(1);
  LogDensityValue v = f(st.q);
  st.log_p = v.log_p;
  st.grad = v.grad;
  torch::Tensor eps = find_reasonable_step_size(sys, st, torch::ones({C}, opt), 0);
  // For sigma = 0.01 a reasonable step is of order sigma: far below the start of 1.
  EXPECT_TRUE((eps < 0.05).all().item<bool>()) << eps;
  EXPECT_TRUE((eps > 1e-4).all().item<bool>()) << eps;
  // Halving stops at the first step size whose acceptance exceeds 0.8 for the probe momentum:
  // the step size is a power of two.
  torch::Tensor l2 = torch::log2(eps);
  EXPECT_TRUE(torch::allclose(l2, torch::round(l2)));
}

}  // namespace adaptation_test

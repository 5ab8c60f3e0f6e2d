// NUTS: the U-turn criterion, batched == single chain, posteriors with known moments (float64 and
// float32, per-chain and pooled adaptation), divergences.
//
// Sizes are chosen so the suite runs in seconds: a few hundred warmup iterations with Stan's
// windows scaled down, 500 to 1000 draws per chain (NUTS draws of these targets are nearly
// independent, so 4 x 1000 draws give MCSEs of about 2 % of a standard deviation; the tail R-hat of
// a dozen coordinates then stays below about 1.005) and every check still able to fail: means and
// second moments within 4 Monte Carlo standard errors, R-hat < 1.01, no divergences where none are
// expected, batched chains identical to single chains.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/samplers/adaptation.h"
#include "dslens/samplers/diagnostics.h"
#include "dslens/samplers/nuts.h"
#include "grouped_gaussian.h"

namespace nuts_test {

using namespace dslens::samplers;

torch::TensorOptions f64() {
  return torch::TensorOptions().dtype(torch::kFloat64);
}

// Independent N(0, sigma^2) coordinates, in sigma's dtype: log p = q.g / 2 with g = -q / sigma^2.
LogDensityFn gaussian(torch::Tensor sigma) {
  torch::Tensor neg_precision = -1.0 / (sigma * sigma);
  return [neg_precision](const torch::Tensor& q) {
    torch::Tensor g = q * neg_precision;
    return LogDensityValue{0.5 * (q * g).sum(1), g};
  };
}

// Mean of x [C, N] and its batch-means Monte Carlo standard error (20 batches per chain).
std::pair<double, double> mean_mcse(const torch::Tensor& x) {
  const int64_t C = x.size(0), N = x.size(1), B = 20, L = N / B;
  torch::Tensor bm = x.to(torch::kFloat64).narrow(1, 0, B * L).reshape({C, B, L}).mean(2).flatten();
  return {bm.mean().item<double>(), bm.std().item<double>() / std::sqrt(double(bm.numel()))};
}

void expect_moment(const torch::Tensor& x, double truth, const std::string& what) {
  auto [m, se] = mean_mcse(x);
  EXPECT_NEAR(m, truth, 4 * se) << what << " (MCSE " << se << ")";
}

// Rank-normalised split R-hat of x [C, N] below 1.01 (Vehtari et al. 2021's threshold).
void expect_converged(const torch::Tensor& x, const std::string& what) {
  EXPECT_LT(rhat(x.to(torch::kFloat64)), 1.01) << what;
}

// Means 0 and variances sigma^2 of every coordinate of draws [C, N, D], and R-hat.
void expect_gaussian_moments(const torch::Tensor& draws, const torch::Tensor& sigma) {
  for (int64_t d = 0; d < sigma.size(0); ++d) {
    torch::Tensor z = draws.select(2, d).to(torch::kFloat64) / sigma[d].item<double>();
    expect_moment(z, 0.0, "mean of coordinate " + std::to_string(d));
    expect_moment(z * z, 1.0, "variance of coordinate " + std::to_string(d));
    expect_converged(z, "R-hat of coordinate " + std::to_string(d));
  }
}

torch::Tensor row(std::initializer_list<double> v) {
  return torch::tensor(std::vector<double>(v), f64()).unsqueeze(0);
}

TEST(UTurn, StanCriterionOnHandMadeMomenta) {
  // Both ends still move along rho: no U-turn.
  EXPECT_TRUE(no_uturn(row({1, 0}), row({0.5, 0.5}), row({2, 1})).item<bool>());
  // The forward end moves against rho.
  EXPECT_FALSE(no_uturn(row({1, 0}), row({-1, 0.1}), row({1, 0.3})).item<bool>());
  // The backward end moves against rho.
  EXPECT_FALSE(no_uturn(row({-1, 0}), row({1, 0}), row({1, 0})).item<bool>());
  // Batched: one answer per chain.
  torch::Tensor ok =
      no_uturn(torch::tensor({{1.0}, {1.0}}, f64()), torch::tensor({{1.0}, {-1.0}}, f64()),
               torch::tensor({{2.0}, {1.0}}, f64()));
  EXPECT_TRUE(ok[0].item<bool>());
  EXPECT_FALSE(ok[1].item<bool>());
}

TEST(UTurn, ChecksAcrossSubtreeBoundariesCatchWhatTheMergedCheckMisses) {
  // 1-d momenta: first subtree [1, 1], second [-0.5, 3]. Over the merged tree rho = 4.5 and both
  // ends point along it, but the first subtree extended by -0.5 (rho = 1.5) ends moving backwards.
  SubtreeEnds first{row({1}), row({1}), row({1}), row({1}), row({2})};
  SubtreeEnds second{row({-0.5}), row({3}), row({-0.5}), row({3}), row({2.5})};
  EXPECT_TRUE(no_uturn(first.p_sharp_beg, second.p_sharp_end, first.rho + second.rho).item<bool>());
  EXPECT_FALSE(merged_no_uturn(first, second).item<bool>());
  // Without the backward step everything agrees.
  SubtreeEnds smooth{row({0.9}), row({3}), row({0.9}), row({3}), row({3.9})};
  EXPECT_TRUE(merged_no_uturn(first, smooth).item<bool>());
  // Sharp momenta use the metric: the same momenta turn back under a different M^-1.
  SubtreeEnds a{row({1, 1}), row({1, 1}), row({1, 1}), row({1, 1}), row({1, 1})};
  SubtreeEnds b{row({1, -0.9}), row({1, -0.9}), row({1, -0.9}), row({1, -0.9}), row({1, -0.9})};
  EXPECT_TRUE(merged_no_uturn(a, b).item<bool>());
  SubtreeEnds b_sharp = b;
  b_sharp.p_sharp_beg = b_sharp.p_sharp_end = row({0.01, -0.9});  // M^-1 = diag(0.01, 1)
  EXPECT_FALSE(merged_no_uturn(a, b_sharp).item<bool>());
}

TEST(UTurn, LargeAndSmallBatchesGiveTheSameAnswers) {
  // Large batches form the six U-turn products one at a time, small ones on stacked operands; a
  // chain's answer must not depend on which (batched == single relies on it).
  const int64_t C = 3000, D = 3;
  torch::Generator gen = at::detail::createCPUGenerator(11);
  auto ends = [&] {
    torch::Tensor p = torch::randn({C, D}, gen, f64()), q = torch::randn({C, D}, gen, f64());
    torch::Tensor inv = torch::rand({C, D}, gen, f64()) + 0.1;
    return SubtreeEnds{p, q, p * inv, q * inv, p + q + 0.3 * torch::randn({C, D}, gen, f64())};
  };
  SubtreeEnds a = ends(), b = ends();
  torch::Tensor all = merged_no_uturn(a, b);
  EXPECT_GT(all.sum().item<int64_t>(), C / 20);
  EXPECT_LT(all.sum().item<int64_t>(), C - C / 20);
  auto rows = [](const SubtreeEnds& e, int64_t i, int64_t n) {
    return SubtreeEnds{e.p_beg.narrow(0, i, n), e.p_end.narrow(0, i, n),
                       e.p_sharp_beg.narrow(0, i, n), e.p_sharp_end.narrow(0, i, n),
                       e.rho.narrow(0, i, n)};
  };
  for (int64_t i = 0; i < C; i += 10)
    ASSERT_TRUE(torch::equal(merged_no_uturn(rows(a, i, 10), rows(b, i, 10)), all.narrow(0, i, 10)))
        << "rows " << i;
}

TEST(UTurn, WholeTrajectoriesOnACircle) {
  // Momenta rotating at a constant rate: NUTS keeps doubling while the trajectory spans less than
  // half a turn and stops once some subtree turns back.
  auto circle = [](int n, double total_angle) {
    torch::Tensor a = torch::linspace(0, total_angle, n, f64());
    return torch::stack({torch::cos(a), torch::sin(a)}, 1).unsqueeze(0);
  };
  EXPECT_TRUE(trajectory_no_uturn(circle(8, 1.0)).item<bool>());
  EXPECT_TRUE(trajectory_no_uturn(circle(16, 2.5)).item<bool>());
  EXPECT_FALSE(trajectory_no_uturn(circle(16, 4.0)).item<bool>());
  EXPECT_FALSE(trajectory_no_uturn(circle(32, 2 * M_PI)).item<bool>());
  // A trajectory that reverses inside its second quarter: the whole-tree check alone passes.
  torch::Tensor p = torch::tensor({1.0, 1.0, 1.0, 1.0, -0.5, 3.0, 3.0, 3.0}, f64()).view({1, 8, 1});
  EXPECT_FALSE(trajectory_no_uturn(p).item<bool>());
  EXPECT_TRUE(no_uturn(p[0][0].view({1, 1}), p[0][7].view({1, 1}), p.sum(1)).item<bool>());
  EXPECT_THROW(trajectory_no_uturn(torch::ones({1, 6, 1}, f64())), dslens::InvalidArgument);
}

TEST(Nuts, BatchedChainsEqualSingleChains) {
  const int64_t C = 8, D = 6;
  torch::Tensor sigma = torch::tensor({0.2, 0.5, 1.0, 2.0, 3.0, 5.0}, f64());
  auto f = gaussian(sigma);
  torch::Tensor init =
      torch::randn({C, D}, torch::Generator(at::detail::createCPUGenerator(7)), f64());
  NutsSettings s;
  // Two metric updates, each followed by a step-size search and a dual-averaging restart.
  s.num_warmup = 120;
  s.num_draws = 40;
  s.adapt.windows = WindowSettings{20, 15, 25};
  s.seed = 2024;
  SamplerResult all = sample_nuts(f, init, s);
  // Chains do not march in step: their tree depths differ in some iteration.
  EXPECT_TRUE((std::get<0>(all.tree_depth.max(0)) != std::get<0>(all.tree_depth.min(0)))
                  .any()
                  .item<bool>());
  for (int64_t k : {0, 3, 7}) {
    NutsSettings one = s;
    one.chain_id_offset = k;
    SamplerResult r = sample_nuts(f, init.narrow(0, k, 1), one);
    EXPECT_TRUE(torch::allclose(r.draws[0], all.draws[k], 1e-9, 1e-11)) << "chain " << k;
    EXPECT_TRUE(torch::allclose(r.step_size[0], all.step_size[k], 1e-9, 0)) << "chain " << k;
    EXPECT_TRUE(torch::equal(r.tree_depth[0], all.tree_depth[k])) << "chain " << k;
    EXPECT_TRUE(torch::equal(r.n_leapfrog[0], all.n_leapfrog[k])) << "chain " << k;
    EXPECT_TRUE(torch::equal(r.divergent[0], all.divergent[k])) << "chain " << k;
    EXPECT_TRUE(torch::allclose(r.accept_stat[0], all.accept_stat[k], 1e-9, 1e-11));
    EXPECT_TRUE(torch::allclose(r.energy[0], all.energy[k], 1e-9, 1e-11));
    EXPECT_TRUE(torch::allclose(r.inv_metric[0], all.inv_metric[k], 1e-9, 0));
  }
}

TEST(Nuts, GaussianWithScalesOverFourOrdersAdaptsTheDiagonalMetric) {
  const int64_t C = 4, D = 20;
  // Scales spread over four orders of magnitude, as in `dslens bench sampler` (which runs 100
  // coordinates; 20 keep the 60 R-hat and moment checks below from being a multiple-testing
  // lottery at 4 x 500 draws).
  torch::Tensor sigma = torch::pow(10.0, torch::linspace(-2, 2, D, f64()));
  NutsSettings s;
  s.seed = 1;
  // Until the first metric update the identity metric needs ~10^4 leapfrog steps per U-turn, so
  // trees stop at max_depth whatever it is; 6 instead of 10 makes that phase 16x cheaper. Adapted
  // trees have depth 3 to 4, far below the cap.
  s.max_depth = 6;
  s.num_warmup = 400;  // slow windows [25, 50), [50, 100), [100, 350)
  s.adapt.windows = WindowSettings{25, 25, 50};
  // The largest scales' tail R-hat needs about 1000 draws per chain to stay well below 1.01.
  s.num_draws = 1000;
  torch::Tensor init =
      torch::rand({C, D}, torch::Generator(at::detail::createCPUGenerator(3)), f64()) * 4 - 2;
  SamplerResult r = sample_nuts(gaussian(sigma), init, s);
  EXPECT_EQ(r.divergent.sum().item<int64_t>(), 0);
  expect_gaussian_moments(r.draws, sigma);
  // The metric learned the variances and the trees are short.
  torch::Tensor ratio = r.inv_metric / (sigma * sigma);
  EXPECT_TRUE(((ratio > 0.5) & (ratio < 2.0)).all().item<bool>()) << ratio.min() << ratio.max();
  EXPECT_LE(r.tree_depth.to(torch::kFloat64).mean().item<double>(), 4.0);
  EXPECT_NEAR(r.accept_stat.mean().item<double>(), 0.8, 0.1);
  EXPECT_EQ(r.draws.sizes(), (c10::IntArrayRef{C, 1000, D}));
  EXPECT_EQ(r.energy.sizes(), (c10::IntArrayRef{C, 1000}));
}

TEST(Nuts, Float32PositionsRunEndToEnd) {
  const int64_t C = 4, D = 6;
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  torch::Tensor sigma = torch::tensor({0.5, 0.8, 1.0, 1.5, 2.0, 3.0}, f32);
  NutsSettings s;
  s.seed = 17;
  s.num_warmup = 300;  // slow windows [50, 75), [75, 125), [125, 250)
  s.adapt.windows = WindowSettings{50, 25, 50};
  s.num_draws = 1000;
  torch::Tensor init =
      torch::rand({C, D}, torch::Generator(at::detail::createCPUGenerator(5)), f32) * 4 - 2;
  SamplerResult r = sample_nuts(gaussian(sigma), init, s);
  // Every floating-point output stays in the positions' dtype.
  for (const torch::Tensor* t : {&r.draws, &r.log_density, &r.step_size, &r.accept_stat, &r.energy,
                                 &r.step_size_adapted, &r.inv_metric})
    EXPECT_EQ(t->scalar_type(), torch::kFloat32);
  EXPECT_EQ(r.divergent.sum().item<int64_t>(), 0);
  EXPECT_TRUE(torch::isfinite(r.draws).all().item<bool>());
  expect_gaussian_moments(r.draws, sigma);
  torch::Tensor ratio = r.inv_metric / (sigma * sigma);
  EXPECT_TRUE(((ratio > 0.5) & (ratio < 2.0)).all().item<bool>()) << ratio;
  EXPECT_NEAR(r.accept_stat.mean().item<double>(), 0.8, 0.1);
  // log_density is the target's value at the draws.
  torch::Tensor lp = gaussian(sigma)(r.draws.reshape({-1, D})).log_p.view({C, -1});
  EXPECT_TRUE(torch::allclose(r.log_density, lp, 1e-5, 1e-5));
}

TEST(Nuts, PooledAdaptationSharesOneStepSizeAndMetric) {
  const int64_t C = 4, D = 6;
  torch::Tensor sigma = torch::tensor({0.5, 0.8, 1.0, 1.5, 2.0, 3.0}, f64());
  NutsSettings s;
  s.seed = 23;
  s.adapt.per_chain = false;
  s.num_warmup = 300;  // slow windows [50, 75), [75, 125), [125, 250)
  s.adapt.windows = WindowSettings{50, 25, 50};
  s.num_draws = 1000;
  torch::Tensor init =
      torch::rand({C, D}, torch::Generator(at::detail::createCPUGenerator(6)), f64()) * 4 - 2;
  SamplerResult r = sample_nuts(gaussian(sigma), init, s);
  // One step size and one metric for all chains, used for every draw.
  EXPECT_TRUE(torch::equal(r.step_size_adapted, r.step_size_adapted[0].expand({C})));
  EXPECT_TRUE(torch::equal(r.step_size, r.step_size_adapted.unsqueeze(1).expand_as(r.step_size)));
  EXPECT_TRUE(torch::equal(r.inv_metric, r.inv_metric[0].expand_as(r.inv_metric)));
  EXPECT_EQ(r.divergent.sum().item<int64_t>(), 0);
  expect_gaussian_moments(r.draws, sigma);
  // The last window pools 4 x 125 draws.
  torch::Tensor ratio = r.inv_metric[0] / (sigma * sigma);
  EXPECT_TRUE(((ratio > 0.6) & (ratio < 1.6)).all().item<bool>()) << ratio;
  EXPECT_NEAR(r.accept_stat.mean().item<double>(), 0.8, 0.1);

  // Per-chain adaptation from the same start gives every chain its own step size and metric (the
  // checks above can fail).
  s.adapt.per_chain = true;
  s.num_warmup = 150;  // slow windows [50, 75), [75, 100)
  s.num_draws = 1;
  SamplerResult own = sample_nuts(gaussian(sigma), init, s);
  EXPECT_FALSE(torch::equal(own.step_size_adapted, own.step_size_adapted[0].expand({C})));
  EXPECT_FALSE(torch::equal(own.inv_metric, own.inv_metric[0].expand_as(own.inv_metric)));
}

TEST(Nuts, AdaptationPooledWithinGroupsOfChains) {
  // Two lenses' posteriors as rows grouped in order: chains 0, 1 see N(0, 1), chains 2, 3 see
  // N(5, 10^2), in each of 3 coordinates. Each pair pools its adaptation, and only its own.
  const int64_t C = 4, D = 3;
  const auto f = dslens::testing::grouped_gaussian(
      torch::eye(D, f64()), torch::tensor({1.0, 0.01}, f64()),
      torch::tensor({0.0, 5.0}, f64()).unsqueeze(1).expand({2, D}).contiguous());
  NutsSettings s;
  s.seed = 29;
  s.adapt.pool_group = 2;
  s.num_warmup = 300;  // slow windows [50, 75), [75, 125), [125, 250)
  s.adapt.windows = WindowSettings{50, 25, 50};
  s.num_draws = 500;
  torch::Tensor init =
      torch::rand({C, D}, torch::Generator(at::detail::createCPUGenerator(8)), f64()) * 4 - 2;
  SamplerResult r = sample_nuts(f, init, s);
  EXPECT_EQ(r.divergent.sum().item<int64_t>(), 0);
  for (int64_t g = 0; g < 2; ++g) {
    const int64_t a = 2 * g, b = 2 * g + 1;
    EXPECT_EQ(r.step_size_adapted[a].item<double>(), r.step_size_adapted[b].item<double>());
    EXPECT_TRUE(torch::equal(r.inv_metric[a], r.inv_metric[b])) << "group " << g;
    // The last window pools 2 x 125 draws of the group's own target.
    const double variance = g == 0 ? 1.0 : 100.0;
    const torch::Tensor ratio = r.inv_metric[a] / variance;
    EXPECT_TRUE(((ratio > 0.5) & (ratio < 2.0)).all().item<bool>()) << "group " << g << ratio;
  }
  // Each group's own dual averaging: one step size per group, not one for all chains.
  EXPECT_NE(r.step_size_adapted[0].item<double>(), r.step_size_adapted[2].item<double>());
  expect_gaussian_moments(r.draws.narrow(0, 0, 2), torch::ones({D}, f64()));
  expect_gaussian_moments(r.draws.narrow(0, 2, 2) - 5.0, torch::full({D}, 10.0, f64()));

  s.adapt.pool_group = 3;  // does not divide 4 chains
  EXPECT_THROW(sample_nuts(f, init, s), dslens::InvalidArgument);
}

TEST(Nuts, CompactRowsEvaluatesOnlyTheChainsStillIntegrating) {
  // Two lenses of 4 chains each (rows grouped in order): N(0, 1) and N(5, 10^2) in 3 coordinates.
  const int64_t C = 8, D = 3;
  const auto target = dslens::testing::grouped_gaussian(
      torch::eye(D, f64()), torch::tensor({1.0, 0.01}, f64()),
      torch::tensor({0.0, 5.0}, f64()).unsqueeze(1).expand({2, D}).contiguous());
  int64_t rows = 0;
  bool even = true;
  const LogDensityFn counted = [&](const torch::Tensor& q) {
    rows += q.size(0);
    even = even && q.size(0) % 2 == 0;  // both lenses get the same number of rows
    return target(q);
  };
  NutsSettings s;
  s.seed = 31;
  s.adapt.pool_group = 4;
  s.num_warmup = 150;
  s.adapt.windows = WindowSettings{30, 20, 40};
  s.num_draws = 100;
  torch::Tensor init =
      torch::rand({C, D}, torch::Generator(at::detail::createCPUGenerator(9)), f64()) * 4 - 2;
  const SamplerResult full = sample_nuts(counted, init, s);
  const int64_t full_rows = rows;
  rows = 0;
  s.compact_rows = 2;
  const SamplerResult compact = sample_nuts(counted, init, s);
  EXPECT_TRUE(even);
  // The same chains: a chain that waits keeps its state, the others see the rows of their lens.
  EXPECT_TRUE(torch::allclose(compact.draws, full.draws, 1e-9, 1e-11));
  EXPECT_TRUE(torch::equal(compact.n_leapfrog, full.n_leapfrog));
  EXPECT_TRUE(torch::equal(compact.tree_depth, full.tree_depth));
  EXPECT_TRUE(torch::allclose(compact.step_size_adapted, full.step_size_adapted, 1e-9, 0));
  EXPECT_EQ(compact.gradient_evaluations, full.gradient_evaluations);  // calls x chains
  // Fewer rows: the trees of 4 chains per lens differ in depth.
  EXPECT_LT(static_cast<double>(rows), 0.9 * static_cast<double>(full_rows))
      << rows << " of " << full_rows;
  s.compact_rows = 3;  // does not divide 8 chains
  EXPECT_THROW(sample_nuts(counted, init, s), dslens::InvalidArgument);
}

TEST(Nuts, CorrelatedGaussianWithDenseMetric) {
  const int64_t C = 4;
  // sd 1 and 10, correlation 0.95.
  torch::Tensor cov = torch::tensor({{1.0, 9.5}, {9.5, 100.0}}, f64());
  torch::Tensor prec = torch::inverse(cov);
  torch::Tensor mu = torch::tensor({1.0, -3.0}, f64());
  LogDensityFn f = [prec, mu](const torch::Tensor& q) {
    torch::Tensor x = q - mu;
    torch::Tensor px = x.matmul(prec);
    return LogDensityValue{-0.5 * (x * px).sum(1), -px};
  };
  NutsSettings s;
  s.metric = MetricKind::dense;
  s.seed = 5;
  s.num_warmup = 600;  // slow windows [25, 50), [50, 100), [100, 200), [200, 550)
  s.adapt.windows = WindowSettings{25, 25, 50};
  s.num_draws = 500;
  SamplerResult r = sample_nuts(f, torch::zeros({C, 2}, f64()), s);
  EXPECT_EQ(r.divergent.sum().item<int64_t>(), 0);
  torch::Tensor x0 = r.draws.select(2, 0) - 1.0, x1 = r.draws.select(2, 1) + 3.0;
  expect_moment(x0, 0.0, "mean 0");
  expect_moment(x1, 0.0, "mean 1");
  expect_moment(x0 * x0, 1.0, "var 0");
  expect_moment(x1 * x1, 100.0, "var 1");
  expect_moment(x0 * x1, 9.5, "cov");
  expect_converged(x0, "R-hat 0");
  expect_converged(x1, "R-hat 1");
  ASSERT_EQ(r.inv_metric.sizes(), (c10::IntArrayRef{C, 2, 2}));
  torch::Tensor rel = (r.inv_metric - cov).abs() / cov.abs();
  EXPECT_TRUE((rel < 0.35).all().item<bool>()) << r.inv_metric;
  // With the covariance as metric the target is isotropic: short trees.
  EXPECT_LE(r.tree_depth.to(torch::kFloat64).mean().item<double>(), 2.6);
}

TEST(Nuts, NonCentredFunnel) {
  // v ~ N(0, 3^2), z_i ~ N(0, 1), x_i = exp(v / 2) z_i: NUTS samples (v, z).
  const int64_t C = 4, D = 10;
  LogDensityFn f = autograd_log_density([](const torch::Tensor& q) {
    torch::Tensor v = q.select(1, 0), z = q.narrow(1, 1, 9);
    return -v * v / 18.0 - 0.5 * (z * z).sum(1);
  });
  NutsSettings s;
  s.seed = 9;
  s.num_warmup = 400;  // slow windows [25, 50), [50, 100), [100, 350)
  s.adapt.windows = WindowSettings{25, 25, 50};
  s.num_draws = 1000;
  SamplerResult r = sample_nuts(f, torch::zeros({C, D}, f64()), s);
  EXPECT_EQ(r.divergent.sum().item<int64_t>(), 0);
  torch::Tensor v = r.draws.select(2, 0);
  expect_moment(v, 0.0, "E v");
  expect_moment(v * v, 9.0, "E v^2");
  expect_converged(v, "R-hat v");
  for (int64_t i = 1; i < D; ++i) {
    torch::Tensor z = r.draws.select(2, i);
    expect_moment(z, 0.0, "E z" + std::to_string(i));
    expect_moment(z * z, 1.0, "E z^2 " + std::to_string(i));
    expect_converged(z, "R-hat z" + std::to_string(i));
  }
}

// Eight schools, non-centred: mu ~ N(0, 5), tau ~ half-Cauchy(0, 5), theta~_j ~ N(0, 1),
// y_j ~ N(mu + tau theta~_j, sigma_j); unconstrained (mu, log tau, theta~).
const double kY[8] = {28, 8, -3, 7, -1, 1, 18, 12};
const double kSigma[8] = {15, 10, 16, 11, 9, 11, 10, 18};

struct SchoolsReference {
  double mu, mu2, log_tau, log_tau2, theta1;
};

// Quadrature over (mu, log tau) with theta integrated out analytically. The grid (0.25 in mu,
// 0.075 in log tau) gives the same moments to 6 digits as one 25x finer.
SchoolsReference schools_reference() {
  torch::Tensor y = torch::tensor(std::vector<double>(kY, kY + 8), f64());
  torch::Tensor s2 = torch::tensor(std::vector<double>(kSigma, kSigma + 8), f64()).pow(2);
  torch::Tensor mu = torch::linspace(-40, 50, 361, f64()).view({-1, 1, 1});
  torch::Tensor lt = torch::linspace(-14, 7, 281, f64()).view({1, -1, 1});
  torch::Tensor tau2 = torch::exp(2 * lt);
  torch::Tensor var = s2 + tau2;  // [1, T, 8]
  torch::Tensor loglik = (-0.5 * (y - mu).pow(2) / var - 0.5 * torch::log(var)).sum(2);
  torch::Tensor lt2 = lt.squeeze(2), mu2 = mu.squeeze(2);
  torch::Tensor logp = loglik - mu2.pow(2) / 50.0 - torch::log1p(tau2.squeeze(2) / 25.0) + lt2;
  torch::Tensor w = torch::exp(logp - logp.max());
  w = w / w.sum();
  torch::Tensor t2 = tau2.squeeze(2);
  torch::Tensor theta1_mean = (kY[0] / s2[0] + mu2 / t2) / (1.0 / s2[0] + 1.0 / t2);
  auto e = [&](const torch::Tensor& g) { return (w * g).sum().item<double>(); };
  return {e(mu2 + 0 * lt2), e(mu2.pow(2) + 0 * lt2), e(lt2 + 0 * mu2), e(lt2.pow(2) + 0 * mu2),
          e(theta1_mean)};
}

TEST(Nuts, EightSchoolsNonCentred) {
  const int64_t C = 4;
  torch::Tensor y = torch::tensor(std::vector<double>(kY, kY + 8), f64());
  torch::Tensor sigma = torch::tensor(std::vector<double>(kSigma, kSigma + 8), f64());
  // Analytic gradient (the autograd wrapper is tested elsewhere; this keeps the test fast).
  LogDensityFn f = [y, sigma](const torch::Tensor& q) {
    torch::Tensor mu = q.narrow(1, 0, 1), lt = q.narrow(1, 1, 1), th = q.narrow(1, 2, 8);
    torch::Tensor tau = torch::exp(lt);
    torch::Tensor resid = (y - (mu + tau * th)) / sigma;
    torch::Tensor r = resid / sigma;
    torch::Tensor t2 = tau * tau / 25.0;
    torch::Tensor lp = (-mu * mu / 50.0 - torch::log1p(t2) + lt).squeeze(1) -
                       0.5 * (th * th).sum(1) - 0.5 * (resid * resid).sum(1);
    torch::Tensor g_mu = -mu / 25.0 + r.sum(1, true);
    torch::Tensor g_lt = -2.0 * t2 / (1.0 + t2) + 1.0 + (r * tau * th).sum(1, true);
    torch::Tensor g_th = -th + r * tau;
    return LogDensityValue{lp, torch::cat({g_mu, g_lt, g_th}, 1)};
  };
  NutsSettings s;
  s.seed = 8;
  s.adapt.dual_averaging.delta = 0.9;
  s.num_warmup = 400;  // slow windows [50, 75), [75, 125), [125, 350)
  s.adapt.windows = WindowSettings{50, 25, 50};
  s.num_draws = 500;
  torch::Tensor init =
      torch::rand({C, 10}, torch::Generator(at::detail::createCPUGenerator(4)), f64()) * 4 - 2;
  SamplerResult r = sample_nuts(f, init, s);
  SchoolsReference ref = schools_reference();
  // A rare divergence can occur in the tau -> 0 neck even when non-centred.
  EXPECT_LE(r.divergent.sum().item<int64_t>(), 4);
  torch::Tensor mu = r.draws.select(2, 0), lt = r.draws.select(2, 1);
  expect_moment(mu, ref.mu, "E mu");
  expect_moment(mu * mu, ref.mu2, "E mu^2");
  expect_moment(lt, ref.log_tau, "E log tau");
  expect_moment(lt * lt, ref.log_tau2, "E log tau^2");
  expect_moment(mu + torch::exp(lt) * r.draws.select(2, 2), ref.theta1, "E theta_1");
  expect_converged(mu, "R-hat mu");
  expect_converged(lt, "R-hat log tau");
  // Sanity of the reference itself (posteriordb: E mu ~ 4.4, E tau ~ 3.6).
  EXPECT_NEAR(ref.mu, 4.4, 0.3);
}

TEST(Nuts, NonFiniteLogDensityMarksTransitionsDivergent) {
  // A standard normal whose log density is NaN beyond q0 = 1: chains keep running, never enter.
  LogDensityFn f = [](const torch::Tensor& q) {
    torch::Tensor lp = -0.5 * (q * q).sum(1);
    torch::Tensor bad = q.select(1, 0) > 1.0;
    lp = torch::where(bad, torch::full_like(lp, NAN), lp);
    torch::Tensor g = torch::where(bad.unsqueeze(1), torch::full_like(q, NAN), -q);
    return LogDensityValue{lp, g};
  };
  NutsSettings s;
  s.num_warmup = 100;
  s.num_draws = 200;
  s.adapt.metric = false;
  s.seed = 3;
  SamplerResult r = sample_nuts(f, torch::zeros({4, 3}, f64()), s);
  EXPECT_GT(r.divergent.sum().item<int64_t>(), 0);
  EXPECT_TRUE((r.draws.select(2, 0) <= 1.0).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(r.draws).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(r.log_density).all().item<bool>());
  // Divergent transitions are those with a NaN somewhere on the trajectory: a chain's energy and
  // acceptance statistics stay finite.
  EXPECT_TRUE(torch::isfinite(r.accept_stat).all().item<bool>());

  // A non-finite initial point is a clear error naming the chain.
  torch::Tensor init = torch::zeros({4, 3}, f64());
  init[2][0] = 2.0;
  try {
    sample_nuts(f, init, s);
    FAIL() << "expected InvalidArgument";
  } catch (const dslens::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("chain(s) 2 "), std::string::npos) << e.what();
  }
}

TEST(Nuts, MaxDepthBoundsTheTrees) {
  NutsSettings s;
  s.num_warmup = 0;
  s.num_draws = 20;
  s.step_size = 0.01;  // far too small: trees would grow to depth 8 or more
  s.max_depth = 3;
  SamplerResult r = sample_nuts(gaussian(torch::ones({2}, f64())), torch::zeros({3, 2}, f64()), s);
  EXPECT_TRUE((r.tree_depth == 3).all().item<bool>());
  EXPECT_TRUE((r.n_leapfrog == 7).all().item<bool>());
  EXPECT_TRUE((r.step_size == 0.01).all().item<bool>());
  EXPECT_EQ(r.gradient_evaluations, (1 + 20 * 7) * 3);
}

TEST(Nuts, ChainIdsMakeAChainIndependentOfItsPlaceInTheBatch) {
  const int64_t D = 3;
  auto f = gaussian(torch::tensor({0.5, 1.0, 2.0}, f64()));
  torch::Tensor init =
      torch::randn({3, D}, torch::Generator(at::detail::createCPUGenerator(5)), f64());
  NutsSettings s;
  s.num_warmup = 30;
  s.num_draws = 20;
  s.adapt.metric = false;
  s.seed = 9;
  s.chain_ids = {1000003, 17, 1u << 31};
  SamplerResult all = sample_nuts(f, init, s);
  for (int64_t k = 0; k < 3; ++k) {
    NutsSettings one = s;
    one.chain_ids = {s.chain_ids[k]};
    SamplerResult r = sample_nuts(f, init.narrow(0, k, 1), one);
    EXPECT_TRUE(torch::allclose(r.draws[0], all.draws[k], 1e-9, 1e-11)) << "chain " << k;
    EXPECT_TRUE(torch::equal(r.n_leapfrog[0], all.n_leapfrog[k])) << "chain " << k;
  }
  // Another id, another stream.
  NutsSettings other = s;
  other.chain_ids = {18};
  EXPECT_FALSE(torch::allclose(sample_nuts(f, init.narrow(0, 1, 1), other).draws[0], all.draws[1],
                               1e-3, 1e-3));
  s.chain_ids = {1, 2};  // 2 ids for 3 chains
  EXPECT_THROW(sample_nuts(f, init, s), dslens::InvalidArgument);
}

struct StopHere {};

TEST(Nuts, ResumedFromACheckpointGivesTheUninterruptedRun) {
  const int64_t C = 3, D = 4;
  auto f = gaussian(torch::tensor({0.3, 1.0, 2.0, 4.0}, f64()));
  torch::Tensor init =
      torch::randn({C, D}, torch::Generator(at::detail::createCPUGenerator(3)), f64());
  NutsSettings s;
  s.num_warmup = 120;
  s.num_draws = 40;
  s.adapt.windows = WindowSettings{20, 15, 25};  // metric updates at 35 and 95
  s.metric = MetricKind::dense;
  s.save_warmup = true;
  s.seed = 77;
  s.checkpoint_every = 35;
  std::vector<std::vector<torch::Tensor>> saved;
  s.on_checkpoint = [&saved](const SamplerSnapshot& snap) { saved.push_back(snap.to_tensors()); };
  const SamplerResult full = sample_nuts(f, init, s);
  std::vector<int64_t> at;
  for (const auto& t : saved) at.push_back(SamplerSnapshot::from_tensors(t).iteration);
  // Every 35 iterations, and at the end of warmup; none after the last iteration.
  EXPECT_EQ(at, (std::vector<int64_t>{35, 70, 105, 120, 140}));

  for (const auto& t : saved) {
    NutsSettings r = s;
    r.on_checkpoint = nullptr;
    r.resume_from = std::make_shared<SamplerSnapshot>(SamplerSnapshot::from_tensors(t));
    const SamplerResult res = sample_nuts(f, init, r);
    const int64_t it = r.resume_from->iteration;
    EXPECT_TRUE(torch::equal(res.draws, full.draws)) << "resumed at " << it;
    EXPECT_TRUE(torch::equal(res.warmup.draws, full.warmup.draws)) << "resumed at " << it;
    EXPECT_TRUE(torch::equal(res.n_leapfrog, full.n_leapfrog)) << "resumed at " << it;
    EXPECT_TRUE(torch::equal(res.step_size_adapted, full.step_size_adapted)) << it;
    EXPECT_TRUE(torch::equal(res.inv_metric, full.inv_metric)) << "resumed at " << it;
    EXPECT_EQ(res.gradient_evaluations, full.gradient_evaluations) << "resumed at " << it;
    EXPECT_EQ(res.warmup_gradient_evaluations, full.warmup_gradient_evaluations) << it;
  }

  // The callback can stop the run (an interrupted job); the last snapshot continues it.
  NutsSettings stop = s;
  std::shared_ptr<SamplerSnapshot> last;
  stop.on_checkpoint = [&last](const SamplerSnapshot& snap) {
    last = std::make_shared<SamplerSnapshot>(snap);
    if (snap.iteration == 70) throw StopHere{};
  };
  EXPECT_THROW(sample_nuts(f, init, stop), StopHere);
  ASSERT_TRUE(last);
  stop.on_checkpoint = nullptr;
  stop.resume_from = last;
  EXPECT_TRUE(torch::equal(sample_nuts(f, init, stop).draws, full.draws));

  // A checkpoint of another run is refused with the reason.
  NutsSettings longer = stop;
  longer.num_draws = 50;
  EXPECT_THROW(sample_nuts(f, init, longer), dslens::InvalidArgument);
  NutsSettings diag = stop;
  diag.metric = MetricKind::diag;
  EXPECT_THROW(sample_nuts(f, init, diag), dslens::InvalidArgument);
  EXPECT_THROW(sample_nuts(f, init.narrow(0, 0, 2), stop), dslens::InvalidArgument);
  std::vector<torch::Tensor> broken = saved.front();
  broken.pop_back();
  EXPECT_THROW(SamplerSnapshot::from_tensors(broken), dslens::InvalidArgument);
}

// A correlated D-d Gaussian: covariance sd_i (A A^T / D + 0.05 I)_ij sd_j for a standard normal
// A, and C starting points drawn from it.
struct CorrelatedGaussian {
  torch::Tensor cov, chol, init;
  LogDensityFn f;
};

CorrelatedGaussian correlated_gaussian(uint64_t seed, int64_t C, int64_t D,
                                       const torch::Tensor& sd) {
  auto gen = torch::Generator(at::detail::createCPUGenerator(seed));
  torch::Tensor a = torch::randn({D, D}, gen, f64()) / std::sqrt(static_cast<double>(D));
  CorrelatedGaussian g;
  g.cov = sd.unsqueeze(1) * (a.mm(a.t()) + 0.05 * torch::eye(D, f64())) * sd;
  g.chol = torch::linalg_cholesky(g.cov);
  torch::Tensor prec = torch::inverse(g.cov);
  g.f = [prec](const torch::Tensor& q) {
    torch::Tensor pq = q.mm(prec);
    return LogDensityValue{-0.5 * (q * pq).sum(1), -pq};
  };
  g.init = torch::randn({C, D}, gen, f64()).mm(g.chol.t());
  return g;
}

TEST(Nuts, MetricPriorCountKeepsAGoodDenseMetricThroughAShortWindow) {
  // A correlated 30-d Gaussian started with its exact covariance as the metric; a 150-iteration
  // warmup has one slow window of 25 draws, fewer than the dimension.
  const int64_t C = 2, D = 30;
  const CorrelatedGaussian target = correlated_gaussian(31, C, D, torch::ones({D}, f64()));
  const torch::Tensor &cov = target.cov, &chol = target.chol, &init = target.init;
  const LogDensityFn& f = target.f;
  NutsSettings s;
  s.num_warmup = 150;
  s.num_draws = 150;
  s.max_depth = 8;
  s.metric = MetricKind::dense;
  s.inv_metric = cov;
  s.seed = 5;
  // Condition number of the adapted metric in the posterior's whitened frame (1 is perfect).
  auto condition = [&chol](const torch::Tensor& inv_metric) {
    torch::Tensor li = torch::inverse(chol);
    torch::Tensor e = torch::linalg_eigvalsh(li.matmul(inv_metric).matmul(li.t()), "L");
    return (e.select(-1, D - 1) / e.select(-1, 0)).max().item<double>();
  };
  const SamplerResult stan = sample_nuts(f, init, s);
  s.adapt.metric_prior_count = static_cast<double>(D);
  const SamplerResult kept = sample_nuts(f, init, s);
  const double k_stan = condition(stan.inv_metric), k_kept = condition(kept.inv_metric);
  EXPECT_GT(k_stan, 100.0);  // Stan's rule: the 5 missing directions shrink to 1e-3 I
  EXPECT_LT(k_kept, 10.0) << "stan " << k_stan;  // Marchenko-Pastur spread of 25 draws in 30-d
  const double lf_stan = stan.n_leapfrog.to(torch::kFloat64).mean().item<double>();
  const double lf_kept = kept.n_leapfrog.to(torch::kFloat64).mean().item<double>();
  EXPECT_LT(lf_kept, 0.5 * lf_stan);
  // And the draws still have the target's covariance: whitened, their variances average ~1.
  torch::Tensor w = kept.draws.reshape({-1, D}).mm(torch::inverse(chol).t());
  const double v = w.var(0).mean().item<double>();
  EXPECT_GT(v, 0.8);
  EXPECT_LT(v, 1.2);
  s.adapt.metric_prior_count = -1;
  EXPECT_THROW(sample_nuts(f, init, s), dslens::InvalidArgument);
}

// The dense adaptation does not depend on the parameters' units: the same correlated 10-d Gaussian
// in units 1e4 times smaller (sds ~1e-4, as a lens's centre or Einstein radius in the fit's
// unconstrained space), started with its covariance as the metric (a Laplace start), adapts to the
// same trees. Stan's shrinkage towards 1e-3 I (before session 46) gave the small-unit target a
// metric variance of about 5e-5 against its 1e-8 after the first window: the step size fell by
// ~70 and the trees ran to max_depth.
TEST(Nuts, DenseAdaptationDoesNotDependOnTheParametersUnits) {
  const int64_t C = 4, D = 10;
  const CorrelatedGaussian target = correlated_gaussian(41, C, D, torch::ones({D}, f64()));
  const double small = 1e-4;
  const torch::Tensor prec_small = torch::inverse(target.cov * (small * small));
  const LogDensityFn f_small = [prec_small](const torch::Tensor& q) {
    torch::Tensor pq = q.mm(prec_small);
    return LogDensityValue{-0.5 * (q * pq).sum(1), -pq};
  };
  NutsSettings s;
  s.num_warmup = 150;
  s.num_draws = 100;
  s.max_depth = 8;
  s.metric = MetricKind::dense;
  s.adapt.metric_prior_count = static_cast<double>(D);
  s.seed = 8;
  s.inv_metric = target.cov;
  const SamplerResult unit = sample_nuts(target.f, target.init, s);
  s.inv_metric = target.cov * (small * small);
  const SamplerResult tiny = sample_nuts(f_small, target.init * small, s);
  const double lf_unit = unit.n_leapfrog.to(torch::kFloat64).mean().item<double>();
  const double lf_tiny = tiny.n_leapfrog.to(torch::kFloat64).mean().item<double>();
  EXPECT_NEAR(lf_tiny, lf_unit, 0.15 * lf_unit);
  EXPECT_LT(lf_unit, 16.0);
  // The adapted metrics agree in the target's units: the small one, scaled up, is the unit one.
  const torch::Tensor rel = (tiny.inv_metric / (small * small) - unit.inv_metric).abs().max() /
                            unit.inv_metric.abs().max();
  EXPECT_LT(rel.item<double>(), 0.2);
  // The draws have the target's covariance.
  torch::Tensor w = (tiny.draws.reshape({-1, D}) / small).mm(torch::inverse(target.chol).t());
  const double v = w.var(0).mean().item<double>();
  EXPECT_GT(v, 0.75);
  EXPECT_LT(v, 1.25);
}

// The two curvature tests' NUTS: dense metric, chains pooled in pairs, and windows that keep their
// prior (metric_prior_count 1e9), so that only curvature updates reshape a wrong starting metric.
NutsSettings wrong_start_settings() {
  NutsSettings s;
  s.num_warmup = 150;
  s.num_draws = 20;
  s.max_depth = 7;
  s.metric = MetricKind::dense;
  s.seed = 9;
  s.adapt.pool_group = 2;
  s.adapt.metric_prior_count = 1e9;
  s.save_warmup = true;
  return s;
}

// A correlated 30-d Gaussian with sds from 0.01 to 1, started with the identity metric, and windows
// that keep their prior (metric_prior_count 1e9): only the curvature updates can reshape the
// metric, and on a Gaussian they recover the covariance exactly.
TEST(Nuts, CurvatureMetricReplacesAWrongStartAfterTheInitialBuffer) {
  const int64_t C = 4, D = 30;
  const CorrelatedGaussian target =
      correlated_gaussian(37, C, D, torch::logspace(-2, 0, D, 10.0, f64()));
  const torch::Tensor &chol = target.chol, &init = target.init;
  const LogDensityFn& f = target.f;
  NutsSettings s = wrong_start_settings();
  // The adapted metric's eigenvalues in the posterior's whitened frame (all 1 when exact).
  auto whitened = [&chol](const torch::Tensor& inv_metric) {
    torch::Tensor li = torch::inverse(chol);
    return torch::linalg_eigvalsh(li.matmul(inv_metric).matmul(li.t()), "L");
  };
  const SamplerResult kept = sample_nuts(f, init, s);
  s.adapt.curvature_metric = true;
  const SamplerResult fixed = sample_nuts(f, init, s);
  auto e_kept = whitened(kept.inv_metric);
  EXPECT_GT((e_kept.max() / e_kept.min()).item<double>(), 1e3);
  auto e = whitened(fixed.inv_metric);
  EXPECT_GT(e.min().item<double>(), 0.99);
  EXPECT_LT(e.max().item<double>(), 1.01);
  // Fewer leapfrog steps per draw, and the Hessian's 2D rows per chain are counted.
  const double lf_kept = kept.n_leapfrog.to(torch::kFloat64).mean().item<double>();
  const double lf_fixed = fixed.n_leapfrog.to(torch::kFloat64).mean().item<double>();
  EXPECT_LT(lf_fixed, 0.3 * lf_kept);
  const int64_t warmup_leapfrog = fixed.warmup.n_leapfrog.sum().item<int64_t>();
  EXPECT_GE(fixed.warmup_gradient_evaluations, warmup_leapfrog + 2 * D * C);
  s.adapt.curvature_max_variance = 0;
  EXPECT_THROW(sample_nuts(f, init, s), dslens::InvalidArgument);
}

// curvature_first: the same target and wrong start; with a curvature metric after 5 iterations
// (besides those at 25, 50 and 75) iterations 8 to 25 already run with the exact metric, where
// without it they run with the identity's long trees.
TEST(Nuts, CurvatureFirstReshapesTheMetricEarlyInTheBuffer) {
  const int64_t C = 4, D = 30;
  const CorrelatedGaussian target =
      correlated_gaussian(37, C, D, torch::logspace(-2, 0, D, 10.0, f64()));
  NutsSettings s = wrong_start_settings();
  s.adapt.curvature_metric = true;
  const SamplerResult at25 = sample_nuts(target.f, target.init, s);
  s.adapt.curvature_first = 5;
  const SamplerResult at5 = sample_nuts(target.f, target.init, s);
  auto mean_leapfrog = [](const SamplerResult& r, int64_t from, int64_t to) {
    return r.warmup.n_leapfrog.narrow(1, from - 1, to - from + 1)
        .to(torch::kFloat64)
        .mean()
        .item<double>();
  };
  // Identical until the extra metric (the same random streams), far fewer steps after it.
  EXPECT_EQ(mean_leapfrog(at5, 1, 5), mean_leapfrog(at25, 1, 5));
  EXPECT_LT(mean_leapfrog(at5, 8, 25), 0.3 * mean_leapfrog(at25, 8, 25));
  s.adapt.curvature_first = -1;
  EXPECT_THROW(sample_nuts(target.f, target.init, s), dslens::InvalidArgument);
}

// Two unit Gaussians in 3-d, 16 sd apart (NUTS never crosses between them): mode A at -8 e_0 and
// mode B at +8 e_0 with log weight w_b. log p is their log-sum-exp.
LogDensityFn two_modes(double w_b) {
  return [w_b](const torch::Tensor& q) {
    torch::Tensor shift = torch::zeros({1, q.size(1)}, q.options());
    shift.select(1, 0).fill_(8.0);
    const torch::Tensor la = -0.5 * (q + shift).pow(2).sum(1);
    const torch::Tensor lb = -0.5 * (q - shift).pow(2).sum(1) + w_b;
    const torch::Tensor lp = torch::logaddexp(la, lb);
    const torch::Tensor wa = torch::exp(la - lp).unsqueeze(1),
                        wb = torch::exp(lb - lp).unsqueeze(1);
    return LogDensityValue{lp, -wa * (q + shift) - wb * (q - shift)};
  };
}

// Which mode each chain's draws sit in: +1 (B) or -1 (A) when all of them agree, 0 otherwise.
std::vector<int> modes_of_chains(const torch::Tensor& draws) {
  std::vector<int> out;
  for (int64_t c = 0; c < draws.size(0); ++c) {
    const torch::Tensor x0 = draws[c].select(1, 0);
    out.push_back((x0 > 0).all().item<bool>() ? 1 : (x0 < 0).all().item<bool>() ? -1 : 0);
  }
  return out;
}

// Stray chains: chains in a mode of negligible mass (B, e^-40 of A's) continue from the best chain
// of their group at the first check of the initial buffer; without stray_nats they stay, and
// between modes of equal mass nothing moves.
TEST(Nuts, StrayChainsInANegligibleModeJoinTheBestChainOfTheirGroup) {
  const int64_t D = 3;
  auto start = [](std::initializer_list<double> x0) {
    torch::Tensor init = torch::zeros({static_cast<int64_t>(x0.size()), D}, f64());
    init.select(1, 0).copy_(torch::tensor(std::vector<double>(x0), f64()));
    return init;
  };
  NutsSettings s;
  s.num_warmup = 200;
  s.num_draws = 100;
  s.seed = 21;
  s.adapt.pool_group = 2;
  s.adapt.stray_nats = 20;
  s.adapt.stray_group = 2;
  // Chains 0 and 1 share a group; chain 1 starts in B, chain 0 in A: chain 1 moves to A. Chains 2
  // and 3 both start in B, the best of their group: they stay there.
  const torch::Tensor init = start({-8.0, 8.0, 8.0, 8.0});
  const SamplerResult moved = sample_nuts(two_modes(-40.0), init, s);
  EXPECT_EQ(modes_of_chains(moved.draws), (std::vector<int>{-1, -1, 1, 1}));
  // The draws of the moved chain are its own (its random stream), not a copy of chain 0's.
  EXPECT_FALSE(torch::equal(moved.draws[0], moved.draws[1]));
  // Off: chain 1 stays in B.
  NutsSettings off = s;
  off.adapt.stray_nats = 0;
  EXPECT_EQ(modes_of_chains(sample_nuts(two_modes(-40.0), init, off).draws),
            (std::vector<int>{-1, 1, 1, 1}));
  // Equal masses: mean log densities within a few nats, nothing moves.
  EXPECT_EQ(modes_of_chains(sample_nuts(two_modes(0.0), init, s).draws),
            (std::vector<int>{-1, 1, 1, 1}));
  // Without an initial buffer the first check is the end of the first slow window (iteration 50).
  NutsSettings slow = s;
  slow.adapt.windows = WindowSettings{0, 50, 50};
  EXPECT_EQ(modes_of_chains(sample_nuts(two_modes(-40.0), init, slow).draws),
            (std::vector<int>{-1, -1, 1, 1}));
  // One group of four (stray_group 0): chains 1-3 all join chain 0.
  NutsSettings one = s;
  one.adapt.stray_group = 0;
  one.adapt.pool_group = 0;
  one.adapt.per_chain = false;
  EXPECT_EQ(modes_of_chains(sample_nuts(two_modes(-40.0), init, one).draws),
            (std::vector<int>{-1, -1, -1, -1}));

  // A run resumed inside the initial buffer (at 30, between the checks at 25 and 50) carries the
  // log densities summed since the check: its snapshot at 40 is the uninterrupted run's.
  NutsSettings ck = s;
  ck.checkpoint_every = 10;
  std::vector<SamplerSnapshot> saved;
  ck.on_checkpoint = [&saved](const SamplerSnapshot& snap) { saved.push_back(snap); };
  const SamplerResult full = sample_nuts(two_modes(-40.0), init, ck);
  ASSERT_GE(saved.size(), 4u);
  ASSERT_EQ(saved[2].iteration, 30);
  ASSERT_TRUE(saved[2].stray_window.defined());
  NutsSettings resumed = ck;
  resumed.resume_from =
      std::make_shared<SamplerSnapshot>(SamplerSnapshot::from_tensors(saved[2].to_tensors()));
  std::vector<SamplerSnapshot> again;
  resumed.on_checkpoint = [&again](const SamplerSnapshot& snap) { again.push_back(snap); };
  const SamplerResult rest = sample_nuts(two_modes(-40.0), init, resumed);
  ASSERT_FALSE(again.empty());
  EXPECT_EQ(again.front().iteration, 40);
  EXPECT_TRUE(torch::equal(again.front().stray_window, saved[3].stray_window));
  EXPECT_TRUE(torch::equal(rest.draws, full.draws));

  NutsSettings bad = s;
  bad.adapt.stray_group = 3;
  EXPECT_THROW(sample_nuts(two_modes(-40.0), init, bad), dslens::InvalidArgument);
  bad.adapt.stray_group = 2;
  bad.adapt.stray_nats = -1;
  EXPECT_THROW(sample_nuts(two_modes(-40.0), init, bad), dslens::InvalidArgument);
}

// find_stray_chains on its own: gaps per group, a chain that left the support, a group whose best
// is not finite (nothing can be judged there, nothing moves).
TEST(Adaptation, FindStrayChainsComparesEachChainWithItsGroupsBest) {
  const double inf = HUGE_VAL, nan = std::nan("");
  const auto mean = torch::tensor({-10.0, -35.0, -29.0, -inf, -inf, nan, 3.0, 2.0}, f64());
  const StrayChains sc = find_stray_chains(mean, 4, 20.0);
  // Group 0: 25 nats (chain 1) and a chain at -inf stray, 19 nats do not; group 1 (-inf, NaN, 3,
  // 2): its best is chain 6, and the -inf and NaN chains stray to it.
  EXPECT_TRUE(
      torch::equal(sc.stray, torch::tensor({false, true, false, true, true, true, false, false})));
  EXPECT_TRUE(torch::equal(sc.source, torch::tensor({0, 0, 2, 0, 6, 6, 6, 7}, torch::kLong)));
  EXPECT_NEAR(sc.gap[1].item<double>(), 25.0, 1e-12);
  EXPECT_NEAR(sc.gap[2].item<double>(), 19.0, 1e-12);
  EXPECT_EQ(sc.gap[3].item<double>(), inf);
  // In pairs: (-inf, NaN) has no finite best, and nothing there can be judged.
  const StrayChains g2 = find_stray_chains(mean, 2, 20.0);
  EXPECT_TRUE(torch::equal(g2.source, torch::tensor({0, 0, 2, 2, 4, 5, 6, 7}, torch::kLong)));
  EXPECT_THROW(find_stray_chains(mean, 3, 20.0), dslens::InvalidArgument);
}

// With Monte Carlo errors the gap must also clear 4 errors of the difference of two means, sqrt(2)
// times the group's pooled error; an error that is not finite counts as 0.
TEST(Adaptation, FindStrayChainsNeedsTheGapToClearFourMonteCarloErrors) {
  const auto mean = torch::tensor({0.0, -25.0, 0.0, -25.0, 0.0, -25.0}, f64());
  // Pairs: errors (3, 3): 4 sqrt(2) 3 = 17.0 < 25, strays; (6, 6): 33.9 > 25, stays; (NaN, NaN):
  // 0.
  const auto se = torch::tensor({3.0, 3.0, 6.0, 6.0, std::nan(""), std::nan("")}, f64());
  const StrayChains sc = find_stray_chains(mean, 2, 20.0, se);
  EXPECT_TRUE(torch::equal(sc.stray, torch::tensor({false, true, false, false, false, true})));
  // Pooled over the group: errors (1, 1, 1, 9) pool to 4.58, and 25.9 > 25 keeps chain 1, whose
  // own and the best's errors alone would give 5.7.
  const auto m2 = torch::tensor({0.0, -25.0, 0.0, 0.0}, f64());
  EXPECT_FALSE(find_stray_chains(m2, 4, 20.0, torch::tensor({1.0, 1.0, 1.0, 9.0}, f64()))
                   .stray.any()
                   .item<bool>());
  EXPECT_TRUE(find_stray_chains(m2, 4, 20.0, torch::tensor({1.0, 1.0, 1.0, 8.0}, f64()))
                  .stray[1]
                  .item<bool>());
  EXPECT_THROW(find_stray_chains(mean, 2, 20.0, se.narrow(0, 0, 4)), dslens::InvalidArgument);
}

// StrayWindow against its definition: on AR(1) series (rho 0.6) around 20,000 nats, the window's
// mean is the plain mean, and its Monte Carlo error is, on average over 4,000 chains, within 25 %
// of the spread of the 25-draw means across chains (the lag-1 estimate from 25 draws is biased low
// by about 15 %; without the autocorrelation the error would be 50 % of the spread). A window
// begun again (`first`) forgets the last one, the lag product included.
TEST(Adaptation, StrayWindowGivesTheMeanAndAnAr1MonteCarloError) {
  torch::manual_seed(3);
  const int64_t C = 4000, n = 25;
  const double rho = 0.6;
  auto ar1 = [&](int64_t length) {
    std::vector<torch::Tensor> x = {torch::randn({C}, f64())};  // stationary: unit variance
    for (int64_t t = 1; t < length; ++t)
      x.push_back(rho * x.back() + std::sqrt(1.0 - rho * rho) * torch::randn({C}, f64()));
    return torch::stack(x, 1);  // [C, length]
  };
  const auto before = 3.0 * ar1(n) - 20000.0, x = 5.0 * ar1(n) + 20000.0;
  StrayWindow fresh(C, f64()), reused(C, f64());
  for (int64_t t = 0; t < n; ++t) reused.add(before.select(1, t), t == 0);
  for (int64_t t = 0; t < n; ++t) {
    fresh.add(x.select(1, t), t == 0);
    reused.add(x.select(1, t), t == 0);
  }
  const auto [mean, error] = fresh.mean_and_error(n);
  EXPECT_LT((mean - x.mean(1)).abs().max().item<double>(), 1e-9);
  const double spread = x.mean(1).std().item<double>();
  EXPECT_NEAR(error.mean().item<double>() / spread, 1.0, 0.25) << "spread " << spread;
  const auto [mean2, error2] = reused.mean_and_error(n);
  EXPECT_TRUE(torch::allclose(mean2, mean, 0.0, 1e-9));
  EXPECT_TRUE(torch::allclose(error2, error, 1e-12, 1e-12));
  // A snapshot's [C] sum from before: the mean carries on, the error is unknown.
  StrayWindow old(x.sum(1));
  const auto [mean3, error3] = old.mean_and_error(n);
  EXPECT_TRUE(torch::allclose(mean3, mean, 0.0, 1e-9));
  EXPECT_TRUE(torch::isnan(error3).all().item<bool>());
}

// In 1,000 dimensions one mode's log density has sd 22 nats, and 25-draw windows' means differ by
// more than the rule's 20 nats without a second mode. With the Monte Carlo errors no chain moves,
// whether the 4 chains start in the typical set or at the mode itself (log density 0, where the
// typical set's is -500), while the rule without them would have moved chains in both runs (the
// premise, checked on the runs' own windows: the trajectories are the same up to its first move;
// over seeds 0-11 it would have in all 24 runs, the new rule in none). A mode 60 nats down, as
// far below as 2.7 of those windows' sds, is still left.
TEST(Nuts, StrayRuleLeavesTheChainsOfOneModeInAThousandDimensions) {
  const int64_t D = 1000, C = 4;
  NutsSettings s;
  s.num_warmup = 150;
  s.num_draws = 10;
  s.seed = 5;
  s.save_warmup = true;
  s.adapt.stray_nats = 20;
  s.adapt.stray_group = C;
  s.adapt.pool_group = C;
  const auto target = gaussian(torch::ones({D}, f64()));
  torch::manual_seed(11);
  for (const bool from_mode : {false, true}) {
    const torch::Tensor init =
        from_mode ? torch::zeros({C, D}, f64()) : torch::randn({C, D}, f64());
    const SamplerResult r = sample_nuts(target, init, s);
    EXPECT_EQ(r.stray_moves, 0) << (from_mode ? "from the mode" : "from the typical set");
    // The checks of a 150-iteration warmup: iterations 25, 50 and 75 (initial buffer), 100.
    int64_t flagged = 0;
    for (int64_t w = 0; w < 4; ++w)
      flagged += find_stray_chains(r.warmup.log_density.narrow(1, 25 * w, 25).mean(1), C, 20.0)
                     .stray.sum()
                     .item<int64_t>();
    EXPECT_GT(flagged, 0) << "premise: the rule without errors would move a chain";
  }
  // Chain 0 in mode A, chains 1-3 in B, which holds e^-60 of A's mass: all end in A.
  torch::Tensor init = torch::randn({C, D}, f64());
  init.select(1, 0).copy_(torch::tensor({-8.0, 8.0, 8.0, 8.0}, f64()));
  EXPECT_EQ(modes_of_chains(sample_nuts(two_modes(-60.0), init, s).draws),
            (std::vector<int>{-1, -1, -1, -1}));
}

}  // namespace nuts_test

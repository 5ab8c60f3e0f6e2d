// samplers::cuda_graphed (samplers/cuda_graph.h): a CUDA graph replay returns what the eager log
// density returns, for new positions too; a log density that reads a value back to the host
// is not captured and stays eager with the same results; CPU positions always run eagerly. The
// replay check (rows reversed against eager calls on them, per-output tolerances) and the count of
// reads back run on the CPU; the captures themselves need a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <memory>

#include "dslens/core/errors.h"
#include "dslens/samplers/cuda_graph.h"

namespace cuda_graph_test {

using namespace dslens::samplers;

// A banana-shaped density in the first two coordinates, Gaussian in the others.
torch::Tensor banana(const torch::Tensor& q) {
  const auto x = q.select(1, 0), y = q.select(1, 1);
  const auto rest = q.narrow(1, 2, q.size(1) - 2);
  return -0.5 * x * x - 0.5 * (y - 0.5 * x * x).pow(2) / 0.09 - 0.5 * (rest * rest).sum(1);
}

void expect_same(const LogDensityValue& a, const LogDensityValue& b, double tol) {
  EXPECT_TRUE(torch::allclose(a.log_p, b.log_p, tol, tol));
  EXPECT_TRUE(torch::allclose(a.grad, b.grad, tol, tol));
}

TEST(CudaGraph, CpuPositionsRunTheEagerFunction) {
  auto stats = std::make_shared<CudaGraphStats>();
  const auto eager = autograd_log_density(banana);
  const auto graphed = cuda_graphed(eager, {}, stats);
  const auto q = torch::randn({5, 4}, torch::kFloat64);
  const auto a = graphed(q), b = eager(q);
  EXPECT_TRUE(torch::equal(a.log_p, b.log_p));
  EXPECT_TRUE(torch::equal(a.grad, b.grad));
  EXPECT_EQ(stats->eager_calls, 1);
  EXPECT_EQ(stats->captured, 0);
  EXPECT_EQ(stats->replays, 0);
}

TEST(CudaGraph, SettingsAreValidated) {
  CudaGraphSettings s;
  s.warmup_calls = 0;
  EXPECT_THROW(cuda_graphed(autograd_log_density(banana), s), dslens::InvalidArgument);
  s = CudaGraphSettings{};
  s.log_p_rtol_float32 = 0.0;
  EXPECT_THROW(cuda_graphed(autograd_log_density(banana), s), dslens::InvalidArgument);
  s = CudaGraphSettings{};
  s.grad_rtol_float64 = -1.0;
  EXPECT_THROW(cuda_graphed(autograd_log_density(banana), s), dslens::InvalidArgument);
  s = CudaGraphSettings{};
  s.recheck_every = -1;
  EXPECT_THROW(cuda_graphed(autograd_log_density(banana), s), dslens::InvalidArgument);
}

// Row i is pulled towards i + 1, as row i of a batch of several lenses is fitted to its own lens.
torch::Tensor row_dependent(const torch::Tensor& q) {
  const auto centre = torch::arange(1, q.size(0) + 1, q.options()).unsqueeze(1);
  return -0.5 * (q - centre).pow(2).sum(1);
}

TEST(CudaGraph, TheReversedRowsAreComparedWithEagerCallsOnThem) {
  const auto eager = autograd_log_density(row_dependent);
  torch::manual_seed(7);
  const auto q = torch::randn({6, 3}, torch::kFloat64);
  const auto at_q = eager(q);
  // A faithful replay of a batch whose rows are not interchangeable passes...
  const auto faithful = check_replay(eager, eager, q, at_q);
  EXPECT_EQ(faithful.log_p, 0.0);
  EXPECT_EQ(faithful.grad, 0.0);
  EXPECT_TRUE(faithful.within(CudaGraphSettings{}, torch::kFloat64));
  // ...where the eager results reversed would have failed it (the H200 run's 64-lens MAP: 13.7).
  const auto reversed_q = eager(q.flip({0}));
  const LogDensityValue reversed_results{at_q.log_p.flip({0}), at_q.grad.flip({0})};
  EXPECT_GT(replay_difference(reversed_q, reversed_results).grad, 0.5);
  // A graph that ignores its input returns the capture's answer for the reversed rows too.
  const LogDensityFn stale = [at_q](const torch::Tensor&) { return at_q; };
  const auto d = check_replay(stale, eager, q, at_q);
  EXPECT_EQ(replay_difference(stale(q), at_q).grad, 0.0);
  EXPECT_GT(d.log_p, 0.1);
  EXPECT_GT(d.grad, 0.1);
  EXPECT_FALSE(d.within(CudaGraphSettings{}, torch::kFloat32));
}

TEST(CudaGraph, ReplayDifferencesAreRelativeToEachOutputsLargestValue) {
  const auto q = torch::zeros({2, 3}, torch::kFloat64);
  const LogDensityValue eager{torch::tensor({-100.0, -50.0}, torch::kFloat64),
                              torch::tensor({{2.0, 0.0, -1.0}, {0.5, 0.0, 0.0}}, torch::kFloat64)};
  LogDensityValue replayed{eager.log_p.clone(), eager.grad.clone()};
  replayed.log_p[1] = -50.02;        // 0.02 / 100
  replayed.grad[1][2] = 0.0 + 0.01;  // 0.01 / 2
  const auto d = replay_difference(replayed, eager);
  EXPECT_NEAR(d.log_p, 2e-4, 1e-12);
  EXPECT_NEAR(d.grad, 5e-3, 1e-12);
  // float32: the gradient's summation order may move it by this much, the log density not.
  CudaGraphSettings s;
  EXPECT_FALSE(d.within(s, torch::kFloat32));  // the log density's 2e-4 is over its 1e-4
  s.log_p_rtol_float32 = 3e-4;
  EXPECT_TRUE(d.within(s, torch::kFloat32));
  EXPECT_FALSE(d.within(s, torch::kFloat64));
  s.grad_rtol_float32 = 1e-3;
  EXPECT_FALSE(d.within(s, torch::kFloat32));
  // A non-finite entry where the eager call has a finite one fails whatever the tolerance.
  replayed.log_p[0] = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(std::isinf(replay_difference(replayed, eager).log_p));
  EXPECT_FALSE(replay_difference(replayed, eager).within(s, torch::kFloat32));
}

TEST(CudaGraph, ReadsBackToTheHostAreCounted) {
  const auto q = torch::randn({4, 3}, torch::kFloat64);
  EXPECT_EQ(host_reads_during([&] { (void)autograd_log_density(banana)(q); }), 0);
  EXPECT_EQ(host_reads_during([&] { (void)q.abs().max().item<double>(); }), 1);
  EXPECT_GE(host_reads_during([&] { (void)torch::nonzero(q > 0); }), 1);
  // Inside a log density wrapped for the samplers.
  const auto reads = host_reads_during([&] {
    (void)autograd_log_density([](const torch::Tensor& x) {
      const double s = x.detach().abs().max().item<double>();
      return banana(x) * (1.0 + 0.0 * s);
    })(q);
  });
  EXPECT_EQ(reads, 1);
  // Nothing counted once the call is over.
  (void)q.sum().item<double>();
  EXPECT_EQ(host_reads_during([] {}), 0);
}

TEST(CudaGraph, ReplaysMatchEagerCallsOnNewPositions) {
  if (!cuda_graphs_compiled() || !torch::cuda::is_available()) {
    GTEST_SKIP() << "needs a CUDA LibTorch and a GPU (this build or machine has none)";
  }
  auto stats = std::make_shared<CudaGraphStats>();
  const auto eager = autograd_log_density(banana);
  CudaGraphSettings settings;
  settings.recheck_every = 2;
  const auto graphed = cuda_graphed(eager, settings, stats);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64).device(torch::kCUDA);
  for (int call = 0; call < 4; ++call) {
    const auto q = torch::randn({6, 5}, opts);
    expect_same(graphed(q), eager(q), 1e-12);
  }
  EXPECT_EQ(stats->captured, 1);
  EXPECT_EQ(stats->replays, 3);
  EXPECT_EQ(stats->rechecks, 1);  // the second replay
  // Another shape gets its own graph.
  const auto q = torch::randn({2, 5}, opts);
  expect_same(graphed(q), eager(q), 1e-12);
  expect_same(graphed(q * 0.5), eager(q * 0.5), 1e-12);
  EXPECT_EQ(stats->captured, 2);
}

TEST(CudaGraph, AReadBackToTheHostStaysEager) {
  if (!cuda_graphs_compiled() || !torch::cuda::is_available()) {
    GTEST_SKIP() << "needs a CUDA LibTorch and a GPU (this build or machine has none)";
  }
  auto stats = std::make_shared<CudaGraphStats>();
  // The scale is read back on every call: not capturable.
  const auto eager = autograd_log_density([](const torch::Tensor& q) {
    const double s = q.detach().abs().max().item<double>();
    return banana(q) / (1.0 + 0.0 * s);
  });
  const auto graphed = cuda_graphed(eager, {}, stats);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  for (int call = 0; call < 3; ++call) {
    const auto q = torch::randn({4, 3}, opts);
    expect_same(graphed(q), eager(q), 1e-6);
  }
  EXPECT_EQ(stats->captured, 0);
  EXPECT_EQ(stats->eager_shapes, 1);
  EXPECT_EQ(stats->replays, 0);
}

TEST(CudaGraph, RowsThatAreNotInterchangeableAreCaptured) {
  if (!cuda_graphs_compiled() || !torch::cuda::is_available()) {
    GTEST_SKIP() << "needs a CUDA LibTorch and a GPU (this build or machine has none)";
  }
  auto stats = std::make_shared<CudaGraphStats>();
  const auto eager = autograd_log_density(row_dependent);
  const auto graphed = cuda_graphed(eager, {}, stats);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  for (int call = 0; call < 3; ++call) {
    const auto q = torch::randn({8, 3}, opts);
    expect_same(graphed(q), eager(q), 1e-5);
  }
  EXPECT_EQ(stats->captured, 1);
  EXPECT_EQ(stats->replays, 2);
}

}  // namespace cuda_graph_test

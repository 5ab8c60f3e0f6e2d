// samplers::cuda_graphed (samplers/cuda_graph.h): a CUDA graph replay returns what the eager log
// density returns, for new positions too; a log density that reads a value back to the host
// cannot be captured and stays eager with the same results; CPU positions always run eagerly.
#include <gtest/gtest.h>
#include <torch/torch.h>

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
  s.rtol_float32 = 0.0;
  EXPECT_THROW(cuda_graphed(autograd_log_density(banana), s), dslens::InvalidArgument);
  s = CudaGraphSettings{};
  s.recheck_every = -1;
  EXPECT_THROW(cuda_graphed(autograd_log_density(banana), s), dslens::InvalidArgument);
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

}  // namespace cuda_graph_test

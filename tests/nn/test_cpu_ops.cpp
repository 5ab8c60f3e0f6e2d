// The VAE's CPU kernels (cpu_ops.h) against LibTorch's layers: values and every gradient, float32
// and float64, odd sizes, batch and thread independence, and the whole VAE with and without them.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>

#include "dslens/core/errors.h"
#include "dslens/nn/cpu_ops.h"
#include "dslens/nn/vae.h"

namespace ops = dslens::nn::cpu_ops;
using torch::Tensor;

namespace test_cpu_ops_detail {

using Layer = std::function<Tensor(const std::vector<Tensor>&)>;

double rel_err(const Tensor& a, const Tensor& b) {
  return ((a - b).abs().max() / (b.abs().max() + 1e-300)).item<double>();
}

// Compares values and the gradients of <y, w> (w random) with respect to every input.
void expect_same(const std::string& what, const Layer& ours, const Layer& ref,
                 std::vector<Tensor> inputs) {
  const bool f64 = inputs[0].scalar_type() == torch::kFloat64;
  const double tol = f64 ? 1e-13 : 2e-5;
  for (auto& t : inputs) t.requires_grad_(true);
  const auto y1 = ours(inputs);
  const auto y2 = ref(inputs);
  ASSERT_EQ(y1.sizes(), y2.sizes()) << what;
  EXPECT_LT(rel_err(y1, y2), tol) << what << " value";
  const auto w = torch::randn_like(y2);
  const auto g1 = torch::autograd::grad({(y1 * w).sum()}, inputs);
  const auto g2 = torch::autograd::grad({(y2 * w).sum()}, inputs);
  for (size_t i = 0; i < inputs.size(); ++i) {
    EXPECT_LT(rel_err(g1[i], g2[i]), tol) << what << " gradient of input " << i;
  }
}

}  // namespace test_cpu_ops_detail

using namespace test_cpu_ops_detail;

TEST(CpuOps, LayersMatchLibTorchWithGradients) {
  torch::manual_seed(11);
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    const auto o = torch::TensorOptions().dtype(dtype);
    for (int64_t B : {1, 3}) {
      expect_same(
          "conv_transpose4x4s2",
          [](const auto& v) { return ops::conv_transpose4x4s2(v[0], v[1], v[2]); },
          [](const auto& v) { return torch::conv_transpose2d(v[0], v[1], v[2], 2, 1); },
          {torch::randn({B, 5, 4, 6}, o), torch::randn({5, 3, 4, 4}, o), torch::randn({3}, o)});
      expect_same(
          "conv_transpose4x4s2 wide",
          [](const auto& v) { return ops::conv_transpose4x4s2(v[0], v[1], v[2]); },
          [](const auto& v) { return torch::conv_transpose2d(v[0], v[1], v[2], 2, 1); },
          {torch::randn({B, 9, 8, 8}, o), torch::randn({9, 13, 4, 4}, o), torch::randn({13}, o)});
      expect_same(
          "conv4x4s2 one channel", [](const auto& v) { return ops::conv4x4s2(v[0], v[1], v[2]); },
          [](const auto& v) { return torch::conv2d(v[0], v[1], v[2], 2, 1); },
          {torch::randn({B, 1, 16, 12}, o), torch::randn({8, 1, 4, 4}, o), torch::randn({8}, o)});
      expect_same(
          "conv4x4s2", [](const auto& v) { return ops::conv4x4s2(v[0], v[1], v[2]); },
          [](const auto& v) { return torch::conv2d(v[0], v[1], v[2], 2, 1); },
          {torch::randn({B, 6, 8, 10}, o), torch::randn({11, 6, 4, 4}, o), torch::randn({11}, o)});
      expect_same(
          "conv3x3 to one channel", [](const auto& v) { return ops::conv3x3(v[0], v[1], v[2]); },
          [](const auto& v) { return torch::conv2d(v[0], v[1], v[2], 1, 1); },
          {torch::randn({B, 7, 10, 9}, o), torch::randn({1, 7, 3, 3}, o), torch::randn({1}, o)});
      expect_same(
          "conv3x3", [](const auto& v) { return ops::conv3x3(v[0], v[1], v[2]); },
          [](const auto& v) { return torch::conv2d(v[0], v[1], v[2], 1, 1); },
          {torch::randn({B, 4, 8, 8}, o), torch::randn({6, 4, 3, 3}, o), torch::randn({6}, o)});
      expect_same(
          "linear", [](const auto& v) { return ops::linear(v[0], v[1], v[2]); },
          [](const auto& v) { return torch::linear(v[0], v[1], v[2]); },
          {torch::randn({B, 7}, o), torch::randn({13, 7}, o), torch::randn({13}, o)});
      expect_same(
          "linear long", [](const auto& v) { return ops::linear(v[0], v[1], v[2]); },
          [](const auto& v) { return torch::linear(v[0], v[1], v[2]); },
          {torch::randn({B, 200}, o), torch::randn({5, 200}, o), torch::randn({5}, o)});
      expect_same(
          "group_norm_silu",
          [](const auto& v) { return ops::group_norm_silu(v[0], 3, v[1], v[2], 1e-5); },
          [](const auto& v) { return torch::silu(torch::group_norm(v[0], 3, v[1], v[2], 1e-5)); },
          {torch::randn({B, 6, 5, 7}, o) * 3 + 1, torch::randn({6}, o), torch::randn({6}, o)});
      // SiLU alone, over a wide range (the exponential's clamping and both tails).
      expect_same(
          "silu", [](const auto& v) { return ops::group_norm_silu(v[0], 0, {}, {}, 0.0); },
          [](const auto& v) { return torch::silu(v[0]); }, {torch::randn({B, 6, 5, 7}, o) * 40});
    }
    // No bias.
    auto x = torch::randn({2, 3, 4, 4}, o);
    auto w = torch::randn({3, 2, 4, 4}, o);
    EXPECT_LT(rel_err(ops::conv_transpose4x4s2(x, w, {}), torch::conv_transpose2d(x, w, {}, 2, 1)),
              dtype == torch::kFloat64 ? 1e-13 : 2e-5);
  }
}

TEST(CpuOps, ExtremeInputsStayFinite) {
  auto x = torch::tensor({-1e4, -800.0, -100.0, 0.0, 100.0, 800.0, 1e4}, torch::kFloat64)
               .view({1, 1, 1, 7});
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    auto y = ops::group_norm_silu(x.to(dtype), 0, {}, {}, 0.0);
    EXPECT_TRUE(torch::isfinite(y).all().item<bool>()) << y;
    EXPECT_TRUE(torch::allclose(y, torch::silu(x.to(dtype)), 1e-6, 1e-30)) << y;
  }
}

TEST(CpuOps, BadInputsAreClearErrors) {
  auto x = torch::randn({2, 3, 4, 4});
  EXPECT_THROW(ops::conv_transpose4x4s2(x, torch::randn({4, 2, 4, 4}), {}),
               dslens::InvalidArgument);
  EXPECT_THROW(ops::conv3x3(x, torch::randn({2, 3, 3, 3}, torch::kFloat64), {}),
               dslens::InvalidArgument);
  EXPECT_THROW(ops::conv4x4s2(torch::randn({2, 3, 5, 4}), torch::randn({2, 3, 4, 4}), {}),
               dslens::InvalidArgument);
  EXPECT_THROW(ops::group_norm_silu(x, 2, {}, {}, 1e-5), dslens::InvalidArgument);
  EXPECT_THROW(ops::linear(torch::zeros({2, 3}, torch::kInt32), torch::randn({4, 3}), {}),
               dslens::InvalidArgument);
  EXPECT_THROW(ops::linear(torch::randn({2, 3}), torch::randn({4, 2}), {}),
               dslens::InvalidArgument);
  EXPECT_FALSE(ops::supported(torch::zeros({2}, torch::kInt64)));
  EXPECT_TRUE(ops::supported(torch::zeros({2}, torch::kFloat64)));
}

TEST(CpuOps, OneItemDoesNotDependOnTheBatchOrTheThreadCount) {
  torch::manual_seed(12);
  const int threads = torch::get_num_threads();
  auto x = torch::randn({9, 16, 16, 16}, torch::kFloat64);
  auto w = torch::randn({16, 8, 4, 4}, torch::kFloat64);
  auto b = torch::randn({8}, torch::kFloat64);
  auto f = [&](const Tensor& xx) {
    return ops::group_norm_silu(ops::conv_transpose4x4s2(xx, w, b), 4, {}, {}, 1e-5);
  };
  torch::set_num_threads(2);
  const auto all = f(x);
  torch::set_num_threads(1);
  const auto one = f(x.narrow(0, 5, 1));
  const auto all1 = f(x);
  torch::set_num_threads(threads);
  // Bitwise: every item's arithmetic is the same sequence of operations.
  EXPECT_TRUE(torch::equal(all[5], one[0]));
  EXPECT_TRUE(torch::equal(all, all1));
}

TEST(CpuOps, VaeWithAndWithoutTheKernelsIsTheSameFunction) {
  torch::manual_seed(13);
  dslens::nn::VaeArch arch;
  arch.stamp_size = 32;
  arch.latent_dim = 6;
  arch.channels = {4, 8, 8};
  arch.groups = 2;
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    dslens::nn::Vae vae(arch, dslens::nn::PixelNorm{0.1, 2.0});
    vae->to(dtype);
    const double tol = dtype == torch::kFloat64 ? 1e-12 : 1e-4;
    auto x = torch::rand({3, 32, 32}, torch::kFloat64);
    auto eps = torch::randn({3, 6}, torch::kFloat64);
    // Training: the loss and every parameter gradient.
    auto loss = [&](bool kernels) {
      vae->set_cpu_kernels(kernels);
      vae->zero_grad();
      auto out = vae->forward(x, eps);
      auto t = dslens::nn::elbo_terms(out, x, vae->pixel_norm(), 0.1, 1.0);
      t.loss.backward();
      std::vector<Tensor> grads;
      for (const auto& p : vae->parameters()) grads.push_back(p.grad().clone());
      return std::make_pair(t.loss.item<double>(), grads);
    };
    const auto [l1, g1] = loss(true);
    const auto [l0, g0] = loss(false);
    EXPECT_NEAR(l1, l0, tol * std::abs(l0));
    for (size_t i = 0; i < g0.size(); ++i) EXPECT_LT(rel_err(g1[i], g0[i]), tol) << i;
    // Inference: decode and its gradient in z with frozen weights.
    vae->eval();
    for (auto& p : vae->parameters()) p.requires_grad_(false);
    auto z = torch::randn({4, 6}, dtype).requires_grad_(true);
    auto wpix = torch::randn({4, 32, 32}, dtype);
    vae->set_cpu_kernels(true);
    auto d1 = vae->decode(z);
    auto gz1 = torch::autograd::grad({(d1 * wpix).sum()}, {z})[0];
    vae->set_cpu_kernels(false);
    auto d0 = vae->decode(z);
    auto gz0 = torch::autograd::grad({(d0 * wpix).sum()}, {z})[0];
    EXPECT_LT(rel_err(d1, d0), tol);
    EXPECT_LT(rel_err(gz1, gz0), tol);
  }
}

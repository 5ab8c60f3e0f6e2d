// Light profiles: lenstronomy reference values, float32 vs float64, batching, autograd vs finite
// differences, INTERPOL's pixel convention, the registry.
#include <ATen/record_function.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "app/op_census.h"
#include "dslens/core/errors.h"
#include "dslens/physics/light_profiles.h"
#include "dslens/physics/profile.h"
#include "physics/src/light/interpol_cuda_pack.h"
#include "physics/src/light/interpol_cuda_point.h"
#include "tests/test_support.h"

namespace dslens::physics::test_light_detail {

using nlohmann::json;

const json& reference() {
  static const json ref = [] {
    std::ifstream in(dslens::testing::lenstronomy_reference_path());
    return json::parse(in);
  }();
  return ref;
}

torch::Tensor vec(const json& a, torch::Dtype dtype = torch::kFloat64) {
  return torch::tensor(a.get<std::vector<double>>(), torch::dtype(torch::kFloat64)).to(dtype);
}

ParamMap params_of(const json& kwargs, torch::Dtype dtype = torch::kFloat64) {
  ParamMap p;
  for (const auto& [k, v] : kwargs.items()) {
    p[k] = torch::full({1}, v.get<double>(), torch::dtype(dtype));
  }
  return p;
}

double max_abs(const torch::Tensor& t) {
  return t.abs().max().item<double>();
}

// Central finite-difference check of d(sum(w * f(p)))/d p[name] for every parameter present
// (every element of it, image pixels included), float64.
void check_gradients(const LightProfile& prof, ParamMap p, const torch::Tensor& x,
                     const torch::Tensor& y, double h, double tol) {
  std::vector<std::string> names;
  std::vector<torch::Tensor> inputs;
  for (auto& [name, v] : p) {
    v = v.detach().clone().requires_grad_(true);
    names.push_back(name);
    inputs.push_back(v);
  }
  auto f0 = prof.surface_brightness(x, y, p);
  auto w = torch::rand_like(f0);
  auto grads = torch::autograd::grad({(f0 * w).sum()}, inputs);
  for (size_t i = 0; i < names.size(); ++i) {
    auto g = grads[i].reshape(-1);
    for (int64_t j = 0; j < p[names[i]].numel(); ++j) {
      auto eval = [&](double delta) {
        ParamMap q;
        for (const auto& [k, v] : p) q[k] = v.detach().clone();
        q[names[i]].view(-1)[j] += delta;
        return (prof.surface_brightness(x, y, q) * w).sum().item<double>();
      };
      const double fd = (eval(h) - eval(-h)) / (2 * h);
      EXPECT_NEAR(g[j].item<double>(), fd, tol * std::max(1.0, std::abs(fd)))
          << prof.type() << " d/d" << names[i] << "[" << j << "]";
    }
  }
}

TEST(LightReference, EveryEntryFloat64) {
  DSLENS_REQUIRE_FILE(dslens::testing::lenstronomy_reference_path());
  const auto& light = reference().at("light");
  ASSERT_FALSE(light.empty());
  int checked = 0;
  for (const auto& e : light) {
    auto prof = make_light_profile(e.at("profile").get<std::string>());
    auto x = vec(e.at("x")).unsqueeze(0), y = vec(e.at("y")).unsqueeze(0);
    auto expected = vec(e.at("surface_brightness"));
    auto got = prof->surface_brightness(x, y, params_of(e.at("kwargs"))).squeeze(0);
    ASSERT_EQ(got.sizes(), expected.sizes());
    ASSERT_EQ(got.scalar_type(), torch::kFloat64);
    double worst = ((got - expected).abs() / expected.abs()).max().item<double>();
    EXPECT_LT(worst, 1e-8) << e.at("profile") << " " << e.at("kwargs").dump();
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(light.size()));
}

TEST(LightReference, Float32MatchesFloat64) {
  DSLENS_REQUIRE_FILE(dslens::testing::lenstronomy_reference_path());
  for (const auto& e : reference().at("light")) {
    auto prof = make_light_profile(e.at("profile").get<std::string>());
    auto x = vec(e.at("x")).unsqueeze(0), y = vec(e.at("y")).unsqueeze(0);
    auto f64 = prof->surface_brightness(x, y, params_of(e.at("kwargs")));
    auto f32 = prof->surface_brightness(x.to(torch::kFloat32), y.to(torch::kFloat32),
                                        params_of(e.at("kwargs"), torch::kFloat32));
    ASSERT_EQ(f32.scalar_type(), torch::kFloat32);
    EXPECT_LT(max_abs(f32.to(torch::kFloat64) - f64), 1e-4 * max_abs(f64)) << e.at("profile");
  }
}

TEST(LightReference, BatchedEqualsOneAtATime) {
  DSLENS_REQUIRE_FILE(dslens::testing::lenstronomy_reference_path());
  for (std::string type : {"SERSIC", "SERSIC_ELLIPSE", "GAUSSIAN"}) {
    std::vector<const json*> entries;
    for (const auto& e : reference().at("light"))
      if (e.at("profile") == type) entries.push_back(&e);
    ASSERT_GE(entries.size(), 2u) << type;
    auto prof = make_light_profile(type);
    ParamMap batched;
    std::vector<torch::Tensor> xs, ys, singles;
    for (const auto& n : prof->param_names()) {
      std::vector<double> v;
      for (auto* e : entries) v.push_back(e->at("kwargs").at(n).get<double>());
      batched[n] = torch::tensor(v, torch::kFloat64);
    }
    for (auto* e : entries) {
      xs.push_back(vec(e->at("x")));
      ys.push_back(vec(e->at("y")));
      singles.push_back(prof->surface_brightness(xs.back().unsqueeze(0), ys.back().unsqueeze(0),
                                                 params_of(e->at("kwargs"))));
    }
    // Per-member points [B, N].
    auto out = prof->surface_brightness(torch::stack(xs), torch::stack(ys), batched);
    EXPECT_TRUE(torch::equal(out, torch::cat(singles))) << type;
    // Shared points [1, N] against per-member parameters.
    auto shared = prof->surface_brightness(xs[0].unsqueeze(0), ys[0].unsqueeze(0), batched);
    ASSERT_EQ(shared.size(0), static_cast<int64_t>(entries.size()));
    for (size_t b = 0; b < entries.size(); ++b) {
      auto one = prof->surface_brightness(xs[0].unsqueeze(0), ys[0].unsqueeze(0),
                                          params_of(entries[b]->at("kwargs")));
      EXPECT_TRUE(torch::allclose(shared[b], one[0], 1e-15, 0)) << type << " member " << b;
    }
  }
}

TEST(LightProfiles, GradientsMatchFiniteDifferences) {
  torch::manual_seed(3);
  auto x = torch::rand({1, 40}, torch::kFloat64) * 3 - 1.5;
  auto y = torch::rand({1, 40}, torch::kFloat64) * 3 - 1.5;
  auto t = [](std::vector<double> v) { return torch::tensor(v, torch::kFloat64); };
  ParamMap sersic = {{"amp", t({2.0, 5.0})},
                     {"R_sersic", t({0.6, 0.3})},
                     {"n_sersic", t({1.5, 4.2})},
                     {"center_x", t({0.1, -0.2})},
                     {"center_y", t({-0.05, 0.2})}};
  check_gradients(SersicLight(), sersic, x, y, 1e-6, 1e-6);
  ParamMap ell = sersic;
  ell["e1"] = t({0.12, -0.3});
  ell["e2"] = t({-0.07, 0.2});
  check_gradients(SersicEllipseLight(), ell, x, y, 1e-6, 1e-6);
  ParamMap gauss = {{"amp", t({2.0, 5.0})},
                    {"sigma", t({0.6, 0.3})},
                    {"center_x", t({0.1, -0.2})},
                    {"center_y", t({-0.05, 0.2})}};
  check_gradients(GaussianLight(), gauss, x, y, 1e-6, 1e-6);
}

TEST(LightProfiles, SersicEllipseIsFiniteAtCentreAndRoundLimit) {
  auto t = [](double v) { return torch::full({1}, v, torch::kFloat64).requires_grad_(true); };
  ParamMap p = {{"amp", t(2.0)}, {"R_sersic", t(0.5)}, {"n_sersic", t(4.0)}, {"e1", t(0.0)},
                {"e2", t(0.0)},  {"center_x", t(0.0)}, {"center_y", t(0.0)}};
  auto x = torch::tensor({{0.0, 0.3}}, torch::kFloat64),
       y = torch::tensor({{0.0, -0.4}}, torch::kFloat64);
  auto f = SersicEllipseLight().surface_brightness(x, y, p);
  auto round = SersicLight().surface_brightness(x, y, p);
  EXPECT_TRUE(torch::allclose(f, round, 1e-14, 0));
  f.sum().backward();
  for (const auto& [n, v] : p) EXPECT_TRUE(torch::isfinite(v.grad()).all().item<bool>()) << n;
}

TEST(Interpol, PixelCentresBordersAndRotation) {
  // A 3 x 4 image: pixel (r, c) sits at x = c - 1.5, y = r - 1 (in units of scale) about the
  // centre.
  auto img = torch::arange(1, 13, torch::kFloat64).reshape({1, 3, 4});
  const double scale = 0.2, cx = 0.3, cy = -0.1;
  auto t = [](double v) { return torch::full({1}, v, torch::kFloat64); };
  ParamMap p = {{"image", img}, {"center_x", t(cx)}, {"center_y", t(cy)}, {"scale", t(scale)}};
  std::vector<double> xs, ys, expected;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) {
      xs.push_back(cx + (c - 1.5) * scale);
      ys.push_back(cy + (r - 1.0) * scale);
      expected.push_back(img[0][r][c].item<double>());
    }
  // Midway between pixels (0,0),(0,1),(1,0),(1,1); half a pixel beyond the left edge of row 1
  // (half of pixel (1,0)); a full pixel beyond (zero border); far outside.
  xs.insert(xs.end(), {cx - 1.0 * scale, cx - 2.0 * scale, cx - 2.5 * scale, cx + 10});
  ys.insert(ys.end(), {cy - 0.5 * scale, cy, cy, cy});
  expected.insert(expected.end(), {(1 + 2 + 5 + 6) / 4.0, 0.5 * 5, 0.0, 0.0});
  InterpolLight prof;
  auto x = torch::tensor(xs, torch::kFloat64).unsqueeze(0);
  auto y = torch::tensor(ys, torch::kFloat64).unsqueeze(0);
  auto got = prof.surface_brightness(x, y, p).squeeze(0);
  EXPECT_LT(max_abs(got - torch::tensor(expected, torch::kFloat64)), 1e-12) << got;

  // amp scales; phi_G rotates: lenstronomy evaluates at (x cos + y sin, -x sin + y cos), so with
  // phi_G = pi/2 the point (dx, dy) = (0, -1.5 scale) reads x_pix = -1.5, y_pix = 0: pixel
  // (row 1, col 0) = 5.
  p["amp"] = t(2.5);
  p["phi_G"] = t(M_PI / 2);
  auto v = prof.surface_brightness(torch::tensor({{cx}}, torch::kFloat64),
                                   torch::tensor({{cy - 1.5 * scale}}, torch::kFloat64), p);
  EXPECT_NEAR(v.item<double>(), 2.5 * 5.0, 1e-12);
}

TEST(Interpol, BatchingAndSharedImage) {
  torch::manual_seed(5);
  auto imgs = torch::rand({3, 8, 8}, torch::kFloat64);
  auto t = [](std::vector<double> v) { return torch::tensor(v, torch::kFloat64); };
  ParamMap p = {{"image", imgs},
                {"center_x", t({0.0, 0.1, -0.1})},
                {"center_y", t({0.05, 0.0, 0.02})},
                {"scale", t({0.1, 0.12, 0.09})},
                {"phi_G", t({0.0, 0.3, -0.5})},
                {"amp", t({1.0, 2.0, 0.5})}};
  auto x = torch::rand({1, 50}, torch::kFloat64) - 0.5,
       y = torch::rand({1, 50}, torch::kFloat64) - 0.5;
  InterpolLight prof;
  auto all = prof.surface_brightness(x, y, p);
  auto xb = x.expand({3, 50}).contiguous(), yb = y.expand({3, 50}).contiguous();
  auto all_b = prof.surface_brightness(xb, yb, p);
  EXPECT_TRUE(torch::allclose(all, all_b, 0, 1e-15));
  for (int64_t b = 0; b < 3; ++b) {
    ParamMap q;
    for (const auto& [k, v] : p) q[k] = v.slice(0, b, b + 1);
    EXPECT_TRUE(torch::allclose(prof.surface_brightness(x, y, q)[0], all[b], 0, 1e-15)) << b;
    // One image [1, h, w] with batched parameters.
    ParamMap shared = p;
    shared["image"] = imgs.slice(0, b, b + 1);
    EXPECT_TRUE(torch::allclose(prof.surface_brightness(x, y, shared)[b], all[b], 0, 1e-15)) << b;
  }
}

TEST(Interpol, GradientsMatchFiniteDifferences) {
  torch::manual_seed(9);
  auto t = [](std::vector<double> v) { return torch::tensor(v, torch::kFloat64); };
  ParamMap p = {{"image", torch::rand({2, 6, 7}, torch::kFloat64)},
                {"center_x", t({0.01, -0.02})},
                {"center_y", t({-0.03, 0.02})},
                {"scale", t({0.1, 0.13})},
                {"phi_G", t({0.2, -0.4})},
                {"amp", t({1.3, 0.7})}};
  auto x = torch::rand({1, 60}, torch::kFloat64) * 0.8 - 0.4;
  auto y = torch::rand({1, 60}, torch::kFloat64) * 0.8 - 0.4;
  for (auto order : {PixelInterpolation::kBilinear, PixelInterpolation::kBicubic}) {
    InterpolLight prof(order);
    check_gradients(prof, p, x, y, 1e-7, 1e-5);
    // Gradients with respect to the coordinates (the ray-shot positions).
    auto xg = x.clone().requires_grad_(true), yg = y.clone().requires_grad_(true);
    auto w = torch::rand({2, 60}, torch::kFloat64);
    auto g = torch::autograd::grad({(prof.surface_brightness(xg, yg, p) * w).sum()}, {xg, yg});
    for (int axis = 0; axis < 2; ++axis) {
      for (int64_t j = 0; j < 60; j += 7) {
        auto eval = [&](double d) {
          auto xx = x.clone(), yy = y.clone();
          (axis == 0 ? xx : yy)[0][j] += d;
          return (prof.surface_brightness(xx, yy, p) * w).sum().item<double>();
        };
        const double h = 1e-7;
        const double fd = (eval(h) - eval(-h)) / (2 * h);
        EXPECT_NEAR(g[axis][0][j].item<double>(), fd, 1e-5 * std::max(1.0, std::abs(fd)))
            << prof.type();
      }
    }
  }
}

TEST(Interpol, KernelMatchesTensorOpPath) {
  torch::manual_seed(13);
  // Points inside, on the ramp to the zero border, on exact pixel centres and far outside.
  auto pts = [](int64_t b) {
    auto x = torch::rand({b, 400}, torch::kFloat64) * 14 - 7;
    auto y = torch::rand({b, 400}, torch::kFloat64) * 12 - 6;
    x.slice(1, 0, 10).copy_(torch::arange(10, torch::kFloat64) - 4.5);
    y.slice(1, 0, 10).fill_(0.5);
    return std::make_pair(x, y);
  };
  for (auto order : {PixelInterpolation::kBilinear, PixelInterpolation::kBicubic})
    for (auto [bi, bp] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {1, 3}, {3, 1}, {3, 3}}) {
      for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
        auto img0 = torch::randn({bi, 9, 10}, torch::kFloat64).to(dtype);
        auto [x0, y0] = pts(bp);
        x0 = x0.to(dtype);
        y0 = y0.to(dtype);
        std::vector<torch::Tensor> vals, grads;
        for (bool tensor_ops : {false, true}) {
          auto img = img0.clone().requires_grad_(true);
          auto x = x0.clone().requires_grad_(true), y = y0.clone().requires_grad_(true);
          auto f = interpolate_source_image(img, x, y, tensor_ops, order);
          auto w = torch::linspace(0.5, 1.5, f.numel(), torch::dtype(dtype)).reshape(f.sizes());
          auto g = torch::autograd::grad({(f * w).sum()}, {img, x, y});
          vals.push_back(f.to(torch::kFloat64));
          for (auto& t : g) grads.push_back(t.to(torch::kFloat64));
        }
        const double tol = dtype == torch::kFloat64 ? 1e-12 : 2e-5;
        EXPECT_LT(max_abs(vals[0] - vals[1]), tol * max_abs(vals[1])) << bi << " " << bp;
        for (int i = 0; i < 3; ++i) {
          EXPECT_EQ(grads[i].sizes(), grads[i + 3].sizes());
          // Coordinate gradients away from the exact pixel centres (kinks: one-sided derivatives).
          auto a = i == 0 ? grads[i] : grads[i].slice(1, 10);
          auto b = i == 0 ? grads[i + 3] : grads[i + 3].slice(1, 10);
          EXPECT_LT(max_abs(a - b), tol * (1 + max_abs(b)))
              << "input " << i << " batches " << bi << " " << bp << " " << dtype << " order "
              << static_cast<int>(order);
        }
      }
    }
}

// Off the CPU's kernels (every other device) the bicubic profile is the gather path under plain
// autograd: one gather per forward + gradient, where the custom function's backward ran the
// forward again (2) and the first gather path read each of the 16 taps apart (32). On a GPU each
// operator is a kernel launch. Values and gradients equal the CPU kernel's.
// Fresh leaves requiring grad for every parameter of p0, appended to `leaves` in p0's order.
ParamMap leaves_of(const ParamMap& p0, std::vector<torch::Tensor>& leaves) {
  ParamMap p;
  for (const auto& [k, v] : p0) {
    p[k] = v.clone().requires_grad_(true);
    leaves.push_back(p[k]);
  }
  return p;
}

std::atomic<int64_t>& gathers() {
  static std::atomic<int64_t> n{0};
  return n;
}

std::unique_ptr<at::ObserverContext> count_gather(const at::RecordFunction& fn) {
  if (std::string(fn.name()) == "aten::gather") ++gathers();
  return nullptr;
}

TEST(Interpol, BicubicOffTheCpuKernelsGathersOncePerGradient) {
  torch::manual_seed(31);
  auto t = [](std::vector<double> v) { return torch::tensor(v, torch::kFloat64); };
  const ParamMap p0 = {{"image", torch::randn({2, 8, 8}, torch::kFloat64)},
                       {"center_x", t({0.05, -0.1})},
                       {"center_y", t({-0.02, 0.03})},
                       {"scale", t({0.1, 0.08})},
                       {"amp", t({1.5, 0.7})}};
  const auto x0 = torch::rand({2, 200}, torch::kFloat64) * 1.6 - 0.8;
  const auto y0 = torch::rand({2, 200}, torch::kFloat64) * 1.6 - 0.8;
  std::vector<std::vector<torch::Tensor>> results;
  for (bool kernels : {true, false}) {
    set_cpu_kernels(kernels);
    std::vector<torch::Tensor> inputs;
    ParamMap p = leaves_of(p0, inputs);
    auto x = x0.clone().requires_grad_(true), y = y0.clone().requires_grad_(true);
    inputs.push_back(x);
    inputs.push_back(y);
    gathers() = 0;
    const auto handle = at::addGlobalCallback(
        at::RecordFunctionCallback(&count_gather).scopes({at::RecordScope::FUNCTION}));
    const auto f = InterpolLight(PixelInterpolation::kBicubic).surface_brightness(x, y, p);
    auto g = torch::autograd::grad({(f * f).sum()}, inputs);
    at::removeCallback(handle);
    set_cpu_kernels(true);
    EXPECT_EQ(gathers().load(), kernels ? 0 : 1);
    g.insert(g.begin(), f);
    results.push_back(g);
  }
  for (size_t i = 0; i < results[0].size(); ++i) {
    EXPECT_LT(max_abs(results[0][i] - results[1][i]), 1e-12 * (1 + max_abs(results[0][i]))) << i;
  }
}

TEST(Interpol, ProfileMatchesLenstronomyFormulaWithTensorOps) {
  // The fused kernel (affine map, amplitude) against lenstronomy's formula written with tensor
  // ops: values and gradients in every parameter, the image and the coordinates.
  torch::manual_seed(19);
  auto t = [](std::vector<double> v) { return torch::tensor(v, torch::kFloat64); };
  ParamMap p0 = {{"image", torch::randn({1, 7, 9}, torch::kFloat64)},
                 {"center_x", t({0.05, -0.1, 0.0})},
                 {"center_y", t({-0.02, 0.03, 0.1})},
                 {"scale", t({0.1, 0.08, 0.12})},
                 {"phi_G", t({0.4, -1.1, 2.0})},
                 {"amp", t({1.5, 0.7, 2.0})}};
  auto x0 = torch::rand({1, 300}, torch::kFloat64) * 1.6 - 0.8;
  auto y0 = torch::rand({1, 300}, torch::kFloat64) * 1.6 - 0.8;
  for (auto order : {PixelInterpolation::kBilinear, PixelInterpolation::kBicubic}) {
    std::vector<torch::Tensor> vals;
    std::vector<std::vector<torch::Tensor>> grads;
    for (bool fused : {true, false}) {
      std::vector<torch::Tensor> inputs;
      ParamMap p = leaves_of(p0, inputs);
      auto x = x0.clone().requires_grad_(true), y = y0.clone().requires_grad_(true);
      inputs.push_back(x);
      inputs.push_back(y);
      torch::Tensor f;
      if (fused) {
        f = InterpolLight(order).surface_brightness(x, y, p);
      } else {
        auto col = [](const torch::Tensor& v) { return v.unsqueeze(1); };
        auto dx = x - col(p["center_x"]), dy = y - col(p["center_y"]);
        auto c = torch::cos(col(p["phi_G"])), s = torch::sin(col(p["phi_G"]));
        auto xp = (dx * c + dy * s) / col(p["scale"]), yp = (-dx * s + dy * c) / col(p["scale"]);
        f = interpolate_source_image(p["image"], xp, yp, true, order) * col(p["amp"]);
      }
      auto w = torch::linspace(0.2, 1.0, f.numel(), torch::kFloat64).reshape(f.sizes());
      vals.push_back(f.detach());
      grads.push_back(torch::autograd::grad({(f * w).sum()}, inputs));
    }
    EXPECT_LT(max_abs(vals[0] - vals[1]), 1e-12 * max_abs(vals[1]));
    EXPECT_GT(max_abs(vals[1]), 0.1);
    for (size_t i = 0; i < grads[0].size(); ++i) {
      EXPECT_LT(max_abs(grads[0][i] - grads[1][i]), 1e-11 * (1 + max_abs(grads[1][i]))) << i;
    }
  }
}

// The CUDA kernels' per-thread bodies (interpol_cuda_point.h) run on the host over every (lens,
// ray) of arguments packed from CPU tensors by the GPU path's packing (interpol_cuda_pack.h),
// against the CPU kernel through InterpolLight: values, and the gradients wrt the stamp, the rays
// and every map parameter (the map's 7 columns chained to scale and phi_G here), bilinear and
// bicubic, float64 and float32, with a shared and a batched stamp and shared and batched rays.
TEST(Interpol, CudaKernelBodiesOnTheHostMatchTheCpuKernel) {
  torch::manual_seed(31);
  const int64_t B = 3, N = 400;
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    const auto opts = torch::TensorOptions().dtype(dtype);
    const double tol = dtype == torch::kFloat64 ? 1e-12 : 1e-5;
    for (int64_t image_batch : {int64_t{1}, B}) {
      for (int64_t point_batch : {int64_t{1}, B}) {
        for (auto order : {PixelInterpolation::kBilinear, PixelInterpolation::kBicubic}) {
          const int64_t taps = order == PixelInterpolation::kBicubic ? 4 : 2;
          SCOPED_TRACE(std::string(dtype == torch::kFloat64 ? "float64" : "float32") + " taps " +
                       std::to_string(taps) + " image batch " + std::to_string(image_batch) +
                       " point batch " + std::to_string(point_batch));
          const auto image = torch::randn({image_batch, 9, 11}, opts);
          const auto cx = torch::tensor({0.05, -0.1, 0.0}, opts);
          const auto cy = torch::tensor({-0.02, 0.03, 0.1}, opts);
          const auto scale = torch::tensor({0.1, 0.08, 0.12}, opts);
          const auto phi = torch::tensor({0.4, -1.1, 2.0}, opts);
          const auto amp = torch::tensor({1.5, 0.7, 2.0}, opts);
          const auto xs = torch::rand({point_batch, N}, opts) * 1.8 - 0.9;
          const auto ys = torch::rand({point_batch, N}, opts) * 1.8 - 0.9;
          const auto grad = torch::cos(torch::arange(B * N, opts).reshape({B, N}) * 0.29);
          // The CPU kernel through the profile, and autograd.
          ParamMap p = {{"image", image.clone().requires_grad_(true)},
                        {"center_x", cx.clone().requires_grad_(true)},
                        {"center_y", cy.clone().requires_grad_(true)},
                        {"scale", scale.clone().requires_grad_(true)},
                        {"phi_G", phi.clone().requires_grad_(true)},
                        {"amp", amp.clone().requires_grad_(true)}};
          auto x = xs.clone().requires_grad_(true), y = ys.clone().requires_grad_(true);
          const auto f = InterpolLight(order).surface_brightness(x, y, p);
          const auto g = torch::autograd::grad(
              {(f * grad).sum()},
              {p["image"], x, y, p["center_x"], p["center_y"], p["scale"], p["phi_G"], p["amp"]});
          // The kernels' bodies, with the map as the profile builds it.
          const auto c = torch::cos(phi) / scale, s = torch::sin(phi) / scale;
          const auto aff = torch::stack({c, s, -s, c, cx, cy, amp}, 1).contiguous();
          const auto args = interpol_cuda::pack(image, xs, ys, aff, B, taps);
          auto out = torch::empty({B, N}, opts);
          auto bufs = interpol_cuda::gradient_buffers(image, xs, ys, aff);
          auto run = [&](auto zero) {
            using T = decltype(zero);
            const interpol_cuda::View<T> v(args);
            const auto add = [](T* address, T value) { *address += value; };
            auto sums = bufs.affine.accessor<double, 2>();
            for (int64_t b = 0; b < B; ++b)
              for (int64_t n = 0; n < N; ++n) {
                double col[interpol_cuda::kAffineColumns];
                if (taps == 4) {
                  interpol_cuda::forward_point<T, 4>(v, b, n, out.data_ptr<T>());
                  interpol_cuda::backward_point<T, 4>(
                      v, b, n, grad.data_ptr<T>(), bufs.image.data_ptr<T>(), bufs.x.data_ptr<T>(),
                      bufs.y.data_ptr<T>(), col, add);
                } else {
                  interpol_cuda::forward_point<T, 2>(v, b, n, out.data_ptr<T>());
                  interpol_cuda::backward_point<T, 2>(
                      v, b, n, grad.data_ptr<T>(), bufs.image.data_ptr<T>(), bufs.x.data_ptr<T>(),
                      bufs.y.data_ptr<T>(), col, add);
                }
                for (int k = 0; k < interpol_cuda::kAffineColumns; ++k)
                  sums[aff.size(0) > 1 ? b : 0][k] += col[k];
              }
          };
          if (dtype == torch::kFloat64)
            run(double{0});
          else
            run(float{0});
          EXPECT_LT(max_abs(out - f), tol * max_abs(f));
          EXPECT_LT(max_abs(bufs.image - g[0]), tol * (1 + max_abs(g[0])));
          EXPECT_LT(max_abs(bufs.x - g[1]), tol * (1 + max_abs(g[1])));
          EXPECT_LT(max_abs(bufs.y - g[2]), tol * (1 + max_abs(g[2])));
          // Map columns -> parameters: centre and amplitude directly; scale and phi_G by the chain
          // rule through a00 = a11 = cos(phi) / scale, a01 = -a10 = sin(phi) / scale.
          const auto ga = bufs.affine.to(dtype);
          const auto col = [&](int k) { return ga.select(1, k); };
          const auto g_phi = (-s * col(0) + c * col(1) - c * col(2) - s * col(3));
          const auto g_scale = -(c * col(0) + s * col(1) - s * col(2) + c * col(3)) / scale;
          const std::vector<std::pair<torch::Tensor, torch::Tensor>> pairs{
              {col(4), g[3]}, {col(5), g[4]}, {g_scale, g[5]}, {g_phi, g[6]}, {col(6), g[7]}};
          for (size_t i = 0; i < pairs.size(); ++i) {
            SCOPED_TRACE("parameter " + std::to_string(i));
            EXPECT_LT(max_abs(pairs[i].first - pairs[i].second),
                      10 * tol * (1 + max_abs(pairs[i].second)));
          }
        }
      }
    }
  }
}

// The fused CUDA kernels (interpol_cuda.cu) against the CPU's kernel: values and gradients wrt the
// image, the coordinates and every map parameter, bilinear and bicubic, float64 and float32, with
// a shared image and shared coordinates (the kernels' atomics) and batched ones; and their
// operator count against the gather path's. Needs a GPU and DSLENS_WITH_CUDA_KERNELS.
TEST(Interpol, FusedCudaKernelsMatchTheCpuKernel) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  if (!cuda_kernels_built()) GTEST_SKIP() << "built without DSLENS_WITH_CUDA_KERNELS";
  torch::manual_seed(29);
  auto t = [](std::vector<double> v) { return torch::tensor(v, torch::kFloat64); };
  const torch::Device cuda(torch::kCUDA);
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    for (int64_t image_batch : {1, 3}) {
      for (int64_t point_batch : {1, 3}) {
        ParamMap p0 = {{"image", torch::randn({image_batch, 15, 17}, torch::kFloat64)},
                       {"center_x", t({0.05, -0.1, 0.0})},
                       {"center_y", t({-0.02, 0.03, 0.1})},
                       {"scale", t({0.1, 0.08, 0.12})},
                       {"phi_G", t({0.4, -1.1, 2.0})},
                       {"amp", t({1.5, 0.7, 2.0})}};
        auto x0 = torch::rand({point_batch, 2000}, torch::kFloat64) * 2.4 - 1.2;
        auto y0 = torch::rand({point_batch, 2000}, torch::kFloat64) * 2.4 - 1.2;
        for (auto order : {PixelInterpolation::kBilinear, PixelInterpolation::kBicubic}) {
          SCOPED_TRACE(std::string(dtype == torch::kFloat64 ? "float64" : "float32") +
                       (order == PixelInterpolation::kBicubic ? " bicubic" : " bilinear") +
                       " image batch " + std::to_string(image_batch) + " point batch " +
                       std::to_string(point_batch));
          std::vector<std::vector<torch::Tensor>> results;
          std::vector<int64_t> ops;
          for (int run = 0; run < 3; ++run) {  // CPU kernel, CUDA kernels, CUDA tensor ops
            const torch::Device device = run == 0 ? torch::Device(torch::kCPU) : cuda;
            set_cuda_kernels(run != 2);
            std::vector<torch::Tensor> inputs;
            ParamMap p;
            for (const auto& [k, v] : p0) {
              p[k] = v.to(device, dtype).clone().requires_grad_(true);  // a fresh leaf
              inputs.push_back(p[k]);
            }
            auto x = x0.to(device, dtype).clone().requires_grad_(true);
            auto y = y0.to(device, dtype).clone().requires_grad_(true);
            inputs.push_back(x);
            inputs.push_back(y);
            app::OpCensus census;
            auto f = InterpolLight(order).surface_brightness(x, y, p);
            auto w = torch::linspace(0.2, 1.0, f.numel(), f.options()).reshape(f.sizes());
            auto g = torch::autograd::grad({(f * w).sum()}, inputs);
            ops.push_back(census.operators());
            g.insert(g.begin(), f);
            for (auto& r : g) r = r.detach().to(torch::kCPU, torch::kFloat64);
            results.push_back(g);
          }
          set_cuda_kernels(true);
          const double tol = dtype == torch::kFloat64 ? 1e-11 : 2e-4;
          for (size_t i = 0; i < results[0].size(); ++i) {
            SCOPED_TRACE("output " + std::to_string(i));
            EXPECT_LT(max_abs(results[1][i] - results[0][i]), tol * (1 + max_abs(results[0][i])));
          }
          std::cout << "INTERPOL forward + gradient: " << ops[1] << " operators with the CUDA "
                    << "kernels, " << ops[2] << " without\n";
          EXPECT_LT(ops[1], ops[2]);
        }
      }
    }
  }
}

// Closed forms for the bicubic interpolation: Catmull-Rom cubic convolution reproduces linear and
// quadratic images exactly (Keys 1981, third-order accuracy: a = -1/2), and a single bright pixel
// reads Keys's kernel W(s). The CPU kernel and the gather path (other devices) are compared in
// KernelMatchesTensorOpPath.
TEST(Interpol, BicubicReproducesQuadraticImagesAndKeysKernel) {
  torch::manual_seed(23);
  // An image a + b col + c row + d col^2 + e col row + f row^2, read at points whose 4 x 4 taps
  // are all inside.
  const int64_t h = 9, w = 12;
  auto cols = torch::arange(w, torch::kFloat64).unsqueeze(0);
  auto rows = torch::arange(h, torch::kFloat64).unsqueeze(1);
  const auto poly = [](const torch::Tensor& c, const torch::Tensor& r) {
    return 0.3 + 0.7 * c - 0.4 * r + 0.05 * c * c - 0.03 * c * r + 0.02 * r * r;
  };
  auto quad = poly(cols, rows).unsqueeze(0);
  auto px = torch::rand({1, 200}, torch::kFloat64) * (w - 3) + 1;  // column in [1, w - 2)
  auto py = torch::rand({1, 200}, torch::kFloat64) * (h - 3) + 1;
  for (bool tensor_ops : {false, true}) {
    auto xg = (px - 0.5 * (w - 1)).requires_grad_(true);
    auto yg = (py - 0.5 * (h - 1)).requires_grad_(true);
    auto v = interpolate_source_image(quad, xg, yg, tensor_ops, PixelInterpolation::kBicubic);
    EXPECT_LT(max_abs(v - poly(px, py)), 1e-12) << tensor_ops;
    auto g = torch::autograd::grad({v.sum()}, {xg, yg});
    EXPECT_LT(max_abs(g[0] - (0.7 + 0.1 * px - 0.03 * py)), 1e-11) << tensor_ops;
    EXPECT_LT(max_abs(g[1] - (-0.4 - 0.03 * px + 0.04 * py)), 1e-11) << tensor_ops;
  }
  // Bilinear interpolation does not reproduce the quadratic (the test can tell them apart).
  auto bl = interpolate_source_image(quad, px - 0.5 * (w - 1), py - 0.5 * (h - 1));
  EXPECT_GT(max_abs(bl - poly(px, py)), 1e-3);

  // A single bright pixel: the value at distance s along its row is W(s), a = -1/2.
  auto delta = torch::zeros({1, 5, 5}, torch::kFloat64);
  delta[0][2][2] = 1.0;
  const double a = -0.5;
  for (double s : {0.0, 0.3, 0.5, 1.0, 1.25, 1.7, 2.0, 2.6}) {
    const double expect = s <= 1  ? (a + 2) * s * s * s - (a + 3) * s * s + 1
                          : s < 2 ? a * s * s * s - 5 * a * s * s + 8 * a * s - 4 * a
                                  : 0.0;
    auto at = interpolate_source_image(delta, torch::full({1, 1}, s, torch::kFloat64),
                                       torch::zeros({1, 1}, torch::kFloat64), false,
                                       PixelInterpolation::kBicubic);
    EXPECT_NEAR(at.item<double>(), expect, 1e-14) << s;
  }
}

// The reason for bicubic sources: its gradient in the coordinates is continuous across pixel
// rows and columns; bilinear's jumps there (by the difference of the neighbouring slopes).
TEST(Interpol, BicubicGradientIsContinuousAcrossPixelEdges) {
  torch::manual_seed(29);
  auto img = torch::randn({1, 7, 7}, torch::kFloat64);
  // Points just either side of the column through pixel centres (x_pix integer), rows between.
  auto centres = torch::arange(-2.0, 3.0, 1.0, torch::kFloat64);  // 5 pixel columns
  auto yrow = torch::rand({1, 5}, torch::kFloat64) * 4 - 2;
  for (auto order : {PixelInterpolation::kBilinear, PixelInterpolation::kBicubic}) {
    std::vector<torch::Tensor> side;
    for (double eps : {-1e-9, 1e-9}) {
      auto x = (centres + eps).unsqueeze(0).requires_grad_(true);
      auto v = interpolate_source_image(img, x, yrow, false, order);
      side.push_back(torch::autograd::grad({v.sum()}, {x})[0]);
    }
    const double jump = max_abs(side[0] - side[1]);
    if (order == PixelInterpolation::kBicubic) {
      EXPECT_LT(jump, 1e-7);
    } else {
      EXPECT_GT(jump, 0.1);  // the kinks the bicubic source removes
    }
  }
}

TEST(Interpol, SecondDerivatives) {
  // d/d image of (dL/dx . v), through create_graph: the first derivative is linear in the image,
  // so a unit finite-difference step is exact.
  for (auto order : {PixelInterpolation::kBilinear, PixelInterpolation::kBicubic}) {
    torch::manual_seed(17);
    auto img = torch::randn({1, 6, 6}, torch::kFloat64).requires_grad_(true);
    auto x = (torch::rand({2, 30}, torch::kFloat64) * 5 - 2.5).requires_grad_(true);
    auto y = (torch::rand({2, 30}, torch::kFloat64) * 5 - 2.5);
    auto v = torch::rand({2, 30}, torch::kFloat64);
    auto first = [&](const torch::Tensor& im, bool create) {
      auto gx = torch::autograd::grad({interpolate_source_image(im, x, y, false, order).sum()}, {x},
                                      {}, c10::nullopt, create)[0];
      return (gx * v).sum();
    };
    auto hess = torch::autograd::grad({first(img, true)}, {img})[0].reshape(-1);
    for (int64_t j = 0; j < 36; ++j) {
      auto up = img.detach().clone(), down = img.detach().clone();
      up.view(-1)[j] += 1.0;
      down.view(-1)[j] -= 1.0;
      const double fd = (first(up, false).item<double>() - first(down, false).item<double>()) / 2;
      EXPECT_NEAR(hess[j].item<double>(), fd, 1e-12) << j;
    }
  }
}

TEST(LightRegistry, TypesAndErrors) {
  auto types = light_profile_types();
  for (std::string t : {"SERSIC", "SERSIC_ELLIPSE", "GAUSSIAN", "INTERPOL", "INTERPOL_BICUBIC"}) {
    ASSERT_NE(std::find(types.begin(), types.end(), t), types.end()) << t;
    EXPECT_EQ(make_light_profile(t)->type(), t);
    EXPECT_EQ(is_pixelated_light(t), t.rfind("INTERPOL", 0) == 0) << t;
  }
  try {
    make_light_profile("SERSIK");
    FAIL() << "no exception";
  } catch (const dslens::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("SERSIC_ELLIPSE"), std::string::npos) << e.what();
  }
  ParamMap missing = {{"amp", torch::ones({1}, torch::kFloat64)}};
  auto x = torch::zeros({1, 3}, torch::kFloat64);
  EXPECT_THROW(make_light_profile("GAUSSIAN")->surface_brightness(x, x, missing),
               dslens::InvalidArgument);
}

}  // namespace dslens::physics::test_light_detail

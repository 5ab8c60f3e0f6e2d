// Pixel grids, binning, PSF convolution (direct and FFT) and whole-image simulation against
// lenstronomy; float32 vs float64; batching; autograd vs finite differences in every parameter.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/physics/image_model.h"
#include "dslens/physics/light_profiles.h"
#include "tests/test_support.h"

namespace dslens::physics::test_image_detail {

using nlohmann::json;

const json& reference() {
  static const json ref = [] {
    std::ifstream in(dslens::testing::lenstronomy_reference_path());
    return json::parse(in);
  }();
  return ref;
}

// A JSON array of any rank -> float64 tensor.
torch::Tensor array(const json& a) {
  std::vector<double> flat;
  std::vector<int64_t> shape;
  const json* cur = &a;
  while (cur->is_array()) {
    shape.push_back(static_cast<int64_t>(cur->size()));
    if (cur->empty()) break;
    cur = &(*cur)[0];
  }
  std::function<void(const json&)> walk = [&](const json& v) {
    if (v.is_array()) {
      for (const auto& e : v) walk(e);
    } else {
      flat.push_back(v.get<double>());
    }
  };
  walk(a);
  return torch::tensor(flat, torch::kFloat64).reshape(shape);
}

ParamMap params_of(const json& kwargs, torch::Dtype dtype) {
  ParamMap p;
  for (const auto& [k, v] : kwargs.items())
    if (v.is_number()) p[k] = torch::full({1}, v.get<double>(), torch::dtype(dtype));
  return p;
}

// lenstronomy's reference setup: SIE + SHEAR, an INTERPOL source, an 11 x 11 PSF.
ImageModel reference_model(const json& e, torch::Dtype dtype) {
  ImageModel m;
  m.grid.ny = m.grid.nx = e.at("npix").get<int64_t>();
  m.grid.pixel_scale = e.at("pixel_scale").get<double>();
  m.grid.ra_at_xy_0 = e.at("ra_at_xy_0").get<double>();
  m.grid.dec_at_xy_0 = e.at("dec_at_xy_0").get<double>();
  m.supersampling = e.at("supersampling").get<int64_t>();
  for (const auto& l : e.at("lens")) {
    m.lens.add(make_mass_profile(l.at("profile").get<std::string>()),
               params_of(l.at("kwargs"), dtype));
  }
  const auto& s = e.at("source");
  ParamMap sp = params_of(s, dtype);
  sp["image"] = array(s.at("image")).unsqueeze(0).to(dtype);
  m.source_light.push_back({make_light_profile(s.at("profile").get<std::string>()), sp});
  m.psf_kernel = array(e.at("psf_kernel")).to(dtype);
  return m;
}

double max_abs(const torch::Tensor& t) {
  return t.abs().max().item<double>();
}

torch::Tensor vals(std::vector<double> v) {
  return torch::tensor(v, torch::kFloat64);
}

// A small model with every kind of parameter: SIE + SHEAR lens, SERSIC_ELLIPSE lens light,
// INTERPOL source with per-member images; batch 2, float64.
ImageModel small_model() {
  ImageModel m;
  m.grid = PixelGrid::centered(10, 9, 0.15);
  m.supersampling = 2;
  m.lens.add(make_mass_profile("SIE"), {{"theta_E", vals({0.55, 0.6})},
                                        {"e1", vals({0.1, -0.05})},
                                        {"e2", vals({-0.04, 0.12})},
                                        {"center_x", vals({0.013, -0.021})},
                                        {"center_y", vals({-0.017, 0.009})}});
  m.lens.add(make_mass_profile("SHEAR"), {{"gamma1", vals({0.03, -0.02})},
                                          {"gamma2", vals({-0.01, 0.04})},
                                          {"ra_0", vals({0.0, 0.0})},
                                          {"dec_0", vals({0.0, 0.0})}});
  m.lens_light.push_back({make_light_profile("SERSIC_ELLIPSE"),
                          {{"amp", vals({3.0, 2.0})},
                           {"R_sersic", vals({0.4, 0.5})},
                           {"n_sersic", vals({3.0, 2.2})},
                           {"e1", vals({0.05, -0.1})},
                           {"e2", vals({0.02, 0.07})},
                           {"center_x", vals({0.02, -0.01})},
                           {"center_y", vals({-0.03, 0.01})}}});
  torch::manual_seed(11);
  m.source_light.push_back({make_light_profile("INTERPOL"),
                            {{"image", torch::rand({2, 8, 8}, torch::kFloat64)},
                             {"center_x", vals({0.02, -0.03})},
                             {"center_y", vals({-0.01, 0.015})},
                             {"scale", vals({0.06, 0.07})},
                             {"phi_G", vals({0.3, -0.2})},
                             {"amp", vals({1.2, 0.8})}}});
  m.psf_kernel = gaussian_psf_kernel(0.25, 0.15, Compute{}, 5);
  return m;
}

// Every parameter tensor of a model, by a readable name, for the gradient checks.
std::vector<std::pair<std::string, torch::Tensor*>> all_params(ImageModel& m) {
  std::vector<std::pair<std::string, torch::Tensor*>> out;
  // LensModel exposes its components read-only; rebuild it below with leaf tensors instead.
  for (auto& c : m.lens_light)
    for (auto& [k, v] : c.params) out.push_back({"lens_light." + k, &v});
  for (auto& c : m.source_light)
    for (auto& [k, v] : c.params) out.push_back({"source." + k, &v});
  return out;
}

TEST(PixelGrid, OrientationAndSupersampling) {
  auto g = PixelGrid::centered(4, 5, 0.1);
  EXPECT_DOUBLE_EQ(g.ra_at_xy_0, -0.2);
  EXPECT_DOUBLE_EQ(g.dec_at_xy_0, -0.15);
  auto [x, y] = g.coordinates(Compute{});
  ASSERT_EQ(x.sizes(), (std::vector<int64_t>{4, 5}));
  // Column j -> ra = ra0 + j * scale; row i -> dec = dec0 + i * scale.
  EXPECT_NEAR(x[2][3].item<double>(), -0.2 + 3 * 0.1, 1e-15);
  EXPECT_NEAR(y[2][3].item<double>(), -0.15 + 2 * 0.1, 1e-15);
  EXPECT_NEAR(x.mean().item<double>(), 0.0, 1e-15);
  EXPECT_NEAR(y.mean().item<double>(), 0.0, 1e-15);
  auto [xs, ys] = g.supersampled_coordinates(3, Compute{});
  ASSERT_EQ(xs.sizes(), (std::vector<int64_t>{12, 15}));
  // Sub-pixel centres at ((k + 0.5) / 3 - 0.5) * scale about the pixel centre.
  EXPECT_NEAR(xs[4][9].item<double>(), x[1][3].item<double>() + (0.5 / 3 - 0.5) * 0.1, 1e-15);
  EXPECT_NEAR(ys[5][9].item<double>(), y[1][3].item<double>() + (2.5 / 3 - 0.5) * 0.1, 1e-15);
  // Binning the sub-pixel coordinates gives back the pixel centres.
  EXPECT_LT(max_abs(bin_supersampled(xs.unsqueeze(0), 3)[0] - x), 1e-15);
  EXPECT_LT(max_abs(bin_supersampled(ys.unsqueeze(0), 3)[0] - y), 1e-15);
  auto [x32, y32] = g.supersampled_coordinates(2, Compute{torch::kCPU, torch::kFloat32});
  EXPECT_EQ(x32.scalar_type(), torch::kFloat32);
  EXPECT_THROW(g.supersampled_coordinates(0, Compute{}), dslens::InvalidArgument);
  EXPECT_THROW(PixelGrid::centered(0, 3, 0.1), dslens::InvalidArgument);
  EXPECT_THROW(bin_supersampled(torch::zeros({1, 5, 6}), 2), dslens::InvalidArgument);
  // The pixels' box: the outer centres (x in [-0.2, 0.2], y in [-0.15, 0.15]) plus half a pixel,
  // the same for a grid moved off centre.
  const auto e = g.edges();
  EXPECT_NEAR(e.x_min, -0.25, 1e-15);
  EXPECT_NEAR(e.x_max, 0.25, 1e-15);
  EXPECT_NEAR(e.y_min, -0.2, 1e-15);
  EXPECT_NEAR(e.y_max, 0.2, 1e-15);
  EXPECT_TRUE(e.contains(0.2499, -0.1999));
  EXPECT_FALSE(e.contains(0.2501, 0.0));
  EXPECT_FALSE(e.contains(0.0, -0.2001));
  g.ra_at_xy_0 = 1.0;
  g.dec_at_xy_0 = -2.0;
  const auto moved = g.edges();
  EXPECT_NEAR(moved.x_min, 0.95, 1e-15);
  EXPECT_NEAR(moved.x_max, 1.0 + 4 * 0.1 + 0.05, 1e-15);
  EXPECT_NEAR(moved.y_min, -2.05, 1e-15);
  EXPECT_NEAR(moved.y_max, -2.0 + 3 * 0.1 + 0.05, 1e-15);
}

TEST(Psf, ReferenceConvolutionDirectAndFft) {
  DSLENS_REQUIRE_FILE(dslens::testing::lenstronomy_reference_path());
  for (const auto& e : reference().at("images")) {
    auto u = array(e.at("image_unconvolved")).unsqueeze(0);
    auto expected = array(e.at("image")).unsqueeze(0);
    auto k = array(e.at("psf_kernel"));
    const double peak = max_abs(expected);
    EXPECT_LT(max_abs(convolve_psf(u, k, ConvolutionMethod::kDirect) - expected), 1e-12 * peak);
    EXPECT_LT(max_abs(convolve_psf(u, k, ConvolutionMethod::kFft) - expected), 1e-12 * peak);
    EXPECT_LT(max_abs(convolve_psf(u, k) - expected), 1e-12 * peak);
  }
}

TEST(Psf, TrueConvolutionOrientation) {
  // A kernel with its only tap at (0, 0) of a 3 x 5 kernel: out[i][j] = in[i + 1][j + 2].
  auto in = torch::rand({1, 6, 7}, torch::kFloat64);
  auto k = torch::zeros({3, 5}, torch::kFloat64);
  k[0][0] = 1.0;
  auto expected = torch::zeros_like(in);
  expected.slice(1, 0, 5).slice(2, 0, 5).copy_(in.slice(1, 1, 6).slice(2, 2, 7));
  for (auto method : {ConvolutionMethod::kDirect, ConvolutionMethod::kFft})
    EXPECT_LT(max_abs(convolve_psf(in, k, method) - expected), 1e-14);
}

TEST(Psf, FftAgreesWithDirect) {
  torch::manual_seed(7);
  auto images = torch::rand({4, 37, 45}, torch::kFloat64);
  for (auto shape : {std::vector<int64_t>{5, 5}, {11, 11}, {21, 17}, {4, 7, 9}, {4, 41, 41}}) {
    auto k = torch::rand(shape, torch::kFloat64);
    k = k / k.sum({-2, -1}, true);
    auto direct = convolve_psf(images, k, ConvolutionMethod::kDirect);
    auto fft = convolve_psf(images, k, ConvolutionMethod::kFft);
    ASSERT_EQ(fft.sizes(), images.sizes());
    EXPECT_LT(max_abs(direct - fft), 1e-13 * max_abs(direct)) << k.sizes();
    auto f32 = convolve_psf(images.to(torch::kFloat32), k, ConvolutionMethod::kFft);
    auto d32 = convolve_psf(images.to(torch::kFloat32), k, ConvolutionMethod::kDirect);
    EXPECT_EQ(f32.scalar_type(), torch::kFloat32);
    EXPECT_LT(max_abs(f32.to(torch::kFloat64) - direct), 1e-5 * max_abs(direct));
    EXPECT_LT(max_abs(d32.to(torch::kFloat64) - direct), 1e-5 * max_abs(direct));
  }
  // Per-member kernels equal one-at-a-time convolution.
  auto ks = torch::rand({4, 5, 7}, torch::kFloat64);
  auto batched = convolve_psf(images, ks);
  for (int64_t b = 0; b < 4; ++b)
    EXPECT_LT(max_abs(batched[b] - convolve_psf(images.slice(0, b, b + 1), ks[b])[0]), 1e-14);
  EXPECT_THROW(convolve_psf(images, torch::ones({4, 4})), dslens::InvalidArgument);
}

// The CPU's fused direct kernel (taken when cpu_kernels() is on) against LibTorch's conv2d (the
// tensor-op path, taken with it off): values, the gradient wrt the images, and the gradient of a
// gradient (its backward calls itself with the kernel flipped), at image widths that are not a
// multiple of its 32-column blocks and for shared and per-member kernels.
TEST(Psf, FusedCpuKernelMatchesConv2dWithGradients) {
  torch::manual_seed(11);
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    const double tol = dtype == torch::kFloat64 ? 1e-14 : 2e-6;
    for (auto shape : {std::vector<int64_t>{13, 13}, {3, 9}, {3, 5, 7}}) {
      auto images = torch::rand({3, 29, 70}, dtype).requires_grad_(true);
      auto k = torch::rand(shape, dtype);
      k = k / k.sum({-2, -1}, true);
      auto v = torch::rand({3, 29, 70}, dtype);
      auto run = [&](bool fused) {
        set_cpu_kernels(fused);
        auto out = convolve_psf(images, k, ConvolutionMethod::kDirect);
        auto g = torch::autograd::grad({(out * out * v).sum()}, {images}, {}, true, true)[0];
        auto gg = torch::autograd::grad({(g * g * v).sum()}, {images})[0];
        set_cpu_kernels(true);
        return std::vector<torch::Tensor>{out.detach(), g.detach(), gg};
      };
      auto fused = run(true), conv2d = run(false);
      for (int i = 0; i < 3; ++i) {
        const double scale = max_abs(conv2d[i]);
        EXPECT_LT(max_abs(fused[i] - conv2d[i]), tol * scale) << "output " << i << " " << k.sizes();
      }
    }
  }
}

TEST(Psf, GaussianKernel) {
  const double fwhm = 0.3, scale = 0.05;
  auto k = gaussian_psf_kernel(fwhm, scale, Compute{});
  ASSERT_EQ(k.dim(), 2);
  EXPECT_EQ(k.size(0) % 2, 1);
  EXPECT_GE(k.size(0), 2 * 3 * 6 + 1);  // about 3 FWHM on each side
  EXPECT_NEAR(k.sum().item<double>(), 1.0, 1e-14);
  EXPECT_TRUE(torch::allclose(k, k.flip({0}), 0, 1e-16));
  EXPECT_TRUE(torch::allclose(k, k.t(), 0, 1e-16));
  // Second moment in pixels equals sigma^2 = (fwhm / 2.3548 / scale)^2.
  const double sigma = fwhm / (2 * std::sqrt(2 * std::log(2.0))) / scale;
  auto r = torch::arange(k.size(0), torch::kFloat64) - k.size(0) / 2;
  EXPECT_NEAR((k.sum(0) * r * r).sum().item<double>(), sigma * sigma, 1e-8);
  EXPECT_EQ(gaussian_psf_kernel(fwhm, scale, Compute{}, 7).size(1), 7);
  EXPECT_THROW(gaussian_psf_kernel(fwhm, scale, Compute{}, 8), dslens::InvalidArgument);
}

TEST(ImageSimulation, MatchesLenstronomyReference) {
  DSLENS_REQUIRE_FILE(dslens::testing::lenstronomy_reference_path());
  int checked = 0;
  for (const auto& e : reference().at("images")) {
    auto model = reference_model(e, torch::kFloat64);
    auto expected_u = array(e.at("image_unconvolved")).unsqueeze(0);
    auto expected = array(e.at("image")).unsqueeze(0);
    auto u = simulate_unconvolved(model, 1, Compute{});
    auto img = simulate_image(model, 1, Compute{});
    ASSERT_EQ(img.sizes(), expected.sizes());
    const double eu = max_abs(u - expected_u) / max_abs(expected_u);
    const double ei = max_abs(img - expected) / max_abs(expected);
    EXPECT_LT(eu, 1e-6) << "supersampling " << model.supersampling;
    EXPECT_LT(ei, 1e-6) << "supersampling " << model.supersampling;
    std::printf(
        "[ reference ] image %d (supersampling %lld): unconvolved %.2e, convolved %.2e of peak\n",
        checked, static_cast<long long>(model.supersampling), eu, ei);
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

TEST(ImageSimulation, Float32MatchesFloat64) {
  DSLENS_REQUIRE_FILE(dslens::testing::lenstronomy_reference_path());
  const Compute f32{torch::kCPU, torch::kFloat32};
  for (const auto& e : reference().at("images")) {
    auto img64 = simulate_image(reference_model(e, torch::kFloat64), 1, Compute{});
    auto img32 = simulate_image(reference_model(e, torch::kFloat32), 1, f32);
    ASSERT_EQ(img32.scalar_type(), torch::kFloat32);
    EXPECT_LT(max_abs(img32.to(torch::kFloat64) - img64), 1e-4 * max_abs(img64));
  }
}

TEST(ImageSimulation, BatchedEqualsOneAtATime) {
  auto m = small_model();
  auto batched = simulate_image(m, 2, Compute{});
  ASSERT_EQ(batched.sizes(), (std::vector<int64_t>{2, 10, 9}));
  for (int64_t b = 0; b < 2; ++b) {
    ImageModel one = m;
    auto slice = [b](ParamMap p) {
      for (auto& [k, v] : p) v = v.slice(0, b, b + 1);
      return p;
    };
    one.lens = LensModel();
    for (const auto& c : m.lens.components()) one.lens.add(c.profile, slice(c.params));
    for (auto& c : one.lens_light) c.params = slice(c.params);
    for (auto& c : one.source_light) c.params = slice(c.params);
    auto single = simulate_image(one, 1, Compute{});
    EXPECT_LT(max_abs(single[0] - batched[b]), 1e-14 * max_abs(batched)) << b;
  }
  // Parameters of batch 1 broadcast to the requested batch.
  ImageModel shared = m;
  shared.lens_light.clear();
  shared.source_light.clear();
  shared.lens = LensModel();
  shared.lens_light.push_back({make_light_profile("GAUSSIAN"),
                               {{"amp", vals({1.0})},
                                {"sigma", vals({0.2})},
                                {"center_x", vals({0.0})},
                                {"center_y", vals({0.0})}}});
  auto s = simulate_image(shared, 3, Compute{});
  ASSERT_EQ(s.size(0), 3);
  EXPECT_TRUE(torch::equal(s[0], s[2]));
  // Total flux of a well-sampled Gaussian (amp = total flux) is conserved up to edge losses.
  auto big = shared;
  big.grid = PixelGrid::centered(60, 60, 0.05);
  big.psf_kernel = gaussian_psf_kernel(0.1, 0.05, Compute{});
  EXPECT_NEAR(simulate_image(big, 1, Compute{}).sum().item<double>(), 1.0, 1e-6);
  EXPECT_THROW(simulate_image(m, 3, Compute{}), dslens::InvalidArgument);
}

// A sky level (UNIFORM lens light) is amp times the pixel area in every pixel of the convolved
// image, edges included, and adds to the rest of the model without changing it. Convolved
// through the zero padding, as the other light is, the 5 x 5 kernel would have dimmed the outer
// two rows and columns: the check on the corner fails if it is.
TEST(ImageSimulation, ASkyLevelIsTheSameInEveryPixelAfterThePsf) {
  auto m = small_model();
  const double area = m.grid.pixel_scale * m.grid.pixel_scale;
  ImageModel with_sky = m;
  with_sky.lens_light.push_back({make_light_profile("UNIFORM"), {{"amp", vals({0.7, -0.3})}}});
  const auto sky = simulate_image(with_sky, 2, Compute{}) - simulate_image(m, 2, Compute{});
  for (int64_t b = 0; b < 2; ++b) {
    const double level = (b == 0 ? 0.7 : -0.3) * area;
    EXPECT_LT(max_abs(sky[b] - level), 1e-14) << b;
  }
  // Alone, with a parameter of batch 1: one image, broadcast (an expanded view, as other light).
  ImageModel only = m;
  only.lens = LensModel();
  only.lens_light = {{make_light_profile("UNIFORM"), {{"amp", vals({0.5})}}}};
  only.source_light.clear();
  const auto flat = simulate_image(only, 3, Compute{});
  ASSERT_EQ(flat.sizes(), (std::vector<int64_t>{3, 10, 9}));
  EXPECT_EQ(flat.stride(0), 0);
  EXPECT_NEAR(flat[2][0][0].item<double>(), 0.5 * area, 1e-15);
  EXPECT_NEAR(flat.min().item<double>(), flat.max().item<double>(), 1e-15);
  // The convolution the sky is kept out of would have dimmed the corner.
  const auto through_psf =
      convolve_psf(torch::full({1, 10, 9}, 0.5 * area, torch::kFloat64), *m.psf_kernel);
  EXPECT_LT(through_psf[0][0][0].item<double>(), 0.9 * 0.5 * area);
  // Gradient: d(pixel) / d(amp) is the pixel area.
  auto amp = vals({0.5}).requires_grad_(true);
  only.lens_light = {{make_light_profile("UNIFORM"), {{"amp", amp}}}};
  simulate_image(only, 1, Compute{}).sum().backward();
  EXPECT_NEAR(amp.grad().item<double>(), 90 * area, 1e-12);
  // It has no total flux, so it cannot be a source.
  EXPECT_THROW(make_light_profile("UNIFORM")->total_flux({{"amp", vals({1.0})}}),
               dslens::InvalidArgument);
}

// ImageModel::coordinates (made once by a fit) stand in for the grid's own sub-pixel centres: the
// same centres give the same image, centres shifted by a pixel give the image of a shifted grid
// (so they are used, not recomputed), and centres of another shape or dtype are ignored.
TEST(ImageSimulation, PrecomputedCoordinatesAreUsedWhenTheyFit) {
  auto m = small_model();
  const Compute c64{};
  const auto plain = simulate_image(m, 2, c64);
  ImageModel same = m;
  same.coordinates = m.grid.supersampled_coordinates(m.supersampling, c64);
  EXPECT_TRUE(torch::equal(simulate_image(same, 2, c64), plain));

  ImageModel shifted_grid = m;
  shifted_grid.grid.ra_at_xy_0 += m.grid.pixel_scale;
  ImageModel shifted = m;
  shifted.coordinates = shifted_grid.grid.supersampled_coordinates(m.supersampling, c64);
  const auto expected = simulate_image(shifted_grid, 2, c64);
  EXPECT_GT(max_abs(expected - plain), 1e-3 * max_abs(plain));  // the shift is visible
  EXPECT_LT(max_abs(simulate_image(shifted, 2, c64) - expected), 1e-14 * max_abs(expected));

  ImageModel other_shape = m;
  other_shape.coordinates = m.grid.supersampled_coordinates(1, c64);
  EXPECT_TRUE(torch::equal(simulate_image(other_shape, 2, c64), plain));
  ImageModel other_dtype = m;
  const auto [x32, y32] =
      shifted_grid.grid.supersampled_coordinates(m.supersampling, {torch::kCPU, torch::kFloat32});
  other_dtype.coordinates = std::make_pair(x32, y32);
  EXPECT_TRUE(torch::equal(simulate_image(other_dtype, 2, c64), plain));
}

TEST(ImageSimulation, GradientsMatchFiniteDifferences) {
  auto m = small_model();
  // Rebuild the lens with leaf tensors that require gradients.
  std::vector<std::pair<std::string, ParamMap>> lens_params;
  for (const auto& c : m.lens.components()) lens_params.push_back({c.profile->type(), c.params});
  auto build = [&](const std::vector<std::pair<std::string, ParamMap>>& lp, ImageModel base) {
    base.lens = LensModel();
    for (const auto& [type, p] : lp) base.lens.add(make_mass_profile(type), p);
    return base;
  };
  torch::manual_seed(21);
  auto w = torch::rand({2, 10, 9}, torch::kFloat64);
  // Loss scaled so that gradients are O(1).
  auto loss_of = [&](const ImageModel& model) {
    return (simulate_image(model, 2, Compute{}) * w).sum() / (0.15 * 0.15);
  };

  std::vector<std::pair<std::string, torch::Tensor*>> params;
  for (auto& [type, p] : lens_params)
    for (auto& [k, v] : p) params.push_back({"lens." + type + "." + k, &v});
  for (auto& np : all_params(m)) params.push_back(np);
  for (auto& [name, t] : params) *t = t->detach().clone().requires_grad_(true);

  std::vector<torch::Tensor> inputs;
  for (auto& [name, t] : params) inputs.push_back(*t);
  auto grads =
      torch::autograd::grad({loss_of(build(lens_params, m))}, inputs, {}, false, false, true);

  const double h = 1e-6;
  int checked = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    auto& [name, t] = params[i];
    const bool linear = name == "source.image";
    auto g =
        grads[i].defined() ? grads[i].reshape(-1) : torch::zeros({t->numel()}, torch::kFloat64);
    for (int64_t j = 0; j < t->numel(); ++j) {
      auto eval = [&](double d) {
        torch::NoGradGuard ng;
        auto saved = t->detach().clone();
        auto bumped = saved.clone();
        bumped.view(-1)[j] += d;
        *t = bumped;
        double v = loss_of(build(lens_params, m)).item<double>();
        *t = saved.requires_grad_(true);
        return v;
      };
      // The image is linear in the source pixels: a large step is exact and avoids round-off.
      const double step = linear ? 1e-3 : h;
      const double fd = (eval(step) - eval(-step)) / (2 * step);
      const double ad = g[j].item<double>();
      const double tol = linear ? 1e-8 : 1e-6;
      EXPECT_NEAR(ad, fd, tol * (1.0 + std::abs(fd))) << name << "[" << j << "]";
      ++checked;
    }
  }
  // SIE 5 + SHEAR 4 + SERSIC_ELLIPSE 7 + INTERPOL 5 parameters, batch 2, plus 2 x 64 pixels.
  EXPECT_EQ(checked, 2 * (5 + 4 + 7 + 5) + 2 * 64);
}

// Timing of the interpolation / binning / PSF path at the size of `dslens bench simulate`
// (100 x 100, supersampling 2, 64 x 64 source, 11 x 11 PSF, batch 16, float32). Not a check:
// run with --gtest_also_run_disabled_tests --gtest_filter='*Timing*'.
TEST(ImageSimulation, DISABLED_Timing) {
  const Compute f32{torch::kCPU, torch::kFloat32};
  const int64_t b = 16;
  auto g = PixelGrid::centered(100, 100, 0.05);
  auto [xs, ys] = g.supersampled_coordinates(2, f32);
  auto x = (xs.reshape({1, -1}) * 0.6 + 0.01 * torch::randn({b, 1}, torch::kFloat32)).contiguous();
  auto y = (ys.reshape({1, -1}) * 0.6 + 0.01 * torch::randn({b, 1}, torch::kFloat32)).contiguous();
  x.requires_grad_(true);
  y.requires_grad_(true);
  auto src = torch::rand({b, 64, 64}, torch::kFloat32).requires_grad_(true);
  auto t = [&](double v) { return torch::full({b}, v, torch::kFloat32).requires_grad_(true); };
  ParamMap p = {{"image", src},
                {"center_x", t(0.0)},
                {"center_y", t(0.0)},
                {"scale", t(0.04)},
                {"amp", t(1.0)}};
  auto psf = gaussian_psf_kernel(0.12, 0.05, f32, 11);
  InterpolLight prof;
  // Wall and process CPU time (the machine may be shared: CPU time is the steadier number).
  auto time = [](const char* what, int reps, const std::function<void()>& fn) {
    fn();
    auto t0 = std::chrono::steady_clock::now();
    std::clock_t c0 = std::clock();
    for (int i = 0; i < reps; ++i) fn();
    double cpu = 1000.0 * static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC / reps;
    double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() /
        reps;
    std::printf("[ timing ] %-45s wall %8.2f ms  cpu %8.2f ms\n", what, ms, cpu);
  };
  std::printf("[ timing ] torch threads: %d\n", torch::get_num_threads());
  for (const InterpolLight& timed : {prof, InterpolLight(PixelInterpolation::kBicubic)}) {
    time((timed.type() + " forward 16 x 40000").c_str(), 20, [&] {
      torch::NoGradGuard ng;
      timed.surface_brightness(x, y, p);
    });
    time((timed.type() + " forward+backward 16 x 40000").c_str(), 20, [&] {
      auto f = timed.surface_brightness(x, y, p);
      torch::autograd::grad({f.sum()}, {src, x, y, p["scale"]});
    });
  }
  time("elementwise x - 1 on 16 x 40000", 20, [&] {
    torch::NoGradGuard ng;
    auto r = x - 1.0;
  });
  auto xp = (x.detach() / 0.04).requires_grad_(true), yp = (y.detach() / 0.04).requires_grad_(true);
  time("interpolate_source_image kernel fwd", 20, [&] {
    torch::NoGradGuard ng;
    interpolate_source_image(src, xp, yp);
  });
  time("interpolate_source_image kernel fwd+bwd", 20, [&] {
    torch::autograd::grad({interpolate_source_image(src, xp, yp).sum()}, {src, xp, yp});
  });
  time("interpolate_source_image gather fwd+bwd", 5, [&] {
    torch::autograd::grad({interpolate_source_image(src, xp, yp, true).sum()}, {src, xp, yp});
  });
  auto fine = torch::rand({b, 200, 200}, torch::kFloat32).requires_grad_(true);
  time("bin_supersampled 16 x 200 x 200 fwd+bwd", 20,
       [&] { torch::autograd::grad({bin_supersampled(fine, 2).sum()}, {fine}); });
  time("avg_pool2d 16 x 200 x 200 fwd+bwd (alternative)", 20,
       [&] { torch::autograd::grad({torch::avg_pool2d(fine.unsqueeze(1), 2).sum()}, {fine}); });
  time("reshape-mean 16 x 200 x 200 fwd+bwd (alternative)", 20, [&] {
    torch::autograd::grad({fine.reshape({b, 100, 2, 100, 2}).mean({2, 4}).sum()}, {fine});
  });
  auto img = torch::rand({b, 100, 100}, torch::kFloat32).requires_grad_(true);
  time("PSF 11x11 direct 16 x 100 x 100 fwd+bwd", 20, [&] {
    torch::autograd::grad({convolve_psf(img, psf, ConvolutionMethod::kDirect).sum()}, {img});
  });
  time("PSF 11x11 FFT 16 x 100 x 100 fwd+bwd", 20, [&] {
    torch::autograd::grad({convolve_psf(img, psf, ConvolutionMethod::kFft).sum()}, {img});
  });
  for (int64_t ks : {3, 5, 7, 15, 21, 31}) {
    auto k = gaussian_psf_kernel(0.12 * ks / 11, 0.05, f32, ks);
    std::string d = "PSF " + std::to_string(ks) + " direct fwd+bwd",
                f = "PSF " + std::to_string(ks) + " FFT fwd+bwd";
    time(d.c_str(), 10, [&] {
      torch::autograd::grad({convolve_psf(img, k, ConvolutionMethod::kDirect).sum()}, {img});
    });
    time(f.c_str(), 10, [&] {
      torch::autograd::grad({convolve_psf(img, k, ConvolutionMethod::kFft).sum()}, {img});
    });
  }
}

}  // namespace dslens::physics::test_image_detail

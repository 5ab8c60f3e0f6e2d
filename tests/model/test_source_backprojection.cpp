// The data traced back to the source plane (model/source_backprojection.h): at the true lens the
// traced signal lands on the true source (centre, orientation and shape of its stamp), the lens
// light is subtracted first, rows are independent, the footprint a pixel grid must hold is the
// traced flux's quantile, and nothing traced is reported as such.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "dslens/core/errors.h"
#include "dslens/model/arcs_placement.h"
#include "dslens/model/lens_posterior.h"
#include "dslens/model/source_backprojection.h"
#include "dslens/physics/image_model.h"
#include "dslens/physics/profile.h"
#include "model_bindings.h"

using namespace dslens;
using namespace dslens::model;

namespace {

// A 48x48-pixel SIE (theta_E 0.9") lensing an elongated elliptical Sersic (e1 0.3: axis ratio
// 0.54, off the lens axis), Gaussian PSF, noise 0.005 (peak signal-to-noise about 60); optionally a
// lens-light Sersic much brighter than the arcs in the data and in the model.
struct BackProjectionProblem {
  Compute compute{torch::kCPU, torch::kFloat64};
  LensModelSpec spec;
  ParameterSpace space;
  ImagingData data;
  physics::ParamMap source{{"amp", torch::tensor({8.0}, torch::kFloat64)},
                           {"R_sersic", torch::tensor({0.12}, torch::kFloat64)},
                           {"n_sersic", torch::tensor({1.0}, torch::kFloat64)},
                           {"e1", torch::tensor({0.3}, torch::kFloat64)},
                           {"e2", torch::tensor({0.0}, torch::kFloat64)},
                           {"center_x", torch::tensor({0.08}, torch::kFloat64)},
                           {"center_y", torch::tensor({-0.05}, torch::kFloat64)}};

  bool free_light = false;
  // psf_fwhm 0: no PSF; noise: the noise realisation's sd (the sigma stays 0.005); free_light:
  // the lens light's amplitude a parameter (uniform 20 to 60, 40 in lens_u).
  explicit BackProjectionProblem(bool lens_light, double psf_fwhm = 0.1, double noise = 0.005,
                                 bool free_light_amp = false)
      : free_light(free_light_amp) {
    spec.grid = physics::PixelGrid::centered(48, 48, 0.06);
    if (psf_fwhm > 0) spec.psf_kernel = physics::gaussian_psf_kernel(psf_fwhm, 0.06, compute);
    spec.mass.push_back(dslens::testing::centred_sie());
    if (lens_light) {
      spec.lens_light.push_back(
          dslens::testing::round_sersic("light_amp", "light_r", "one", "zero"));
    }
    space.add_free("theta_E", Prior::uniform(0.5, 1.5));
    space.add_free("q", Prior::uniform(0.4, 1.0));
    space.add_free("phi", Prior::uniform(-1.5, 1.5));
    space.add_fixed("zero", 0.0);
    space.add_fixed("one", 1.0);
    if (free_light) {
      space.add_free("light_amp", Prior::uniform(20.0, 60.0));
    } else {
      space.add_fixed("light_amp", 40.0);
    }
    space.add_fixed("light_r", 0.5);
    LensPosterior lens_only(spec, space, blank(), compute);
    physics::ImageModel m = lens_only.build(space.unpack(lens_u(0.9)), 1);
    m.source_light = {{physics::make_light_profile("SERSIC_ELLIPSE"), source}};
    const auto clean = physics::simulate_image(m, 1, compute)[0].contiguous();
    auto gen = at::detail::createCPUGenerator(5);
    data = blank();
    data.image = clean + noise * torch::randn(clean.sizes(), gen, torch::kFloat64);
  }
  ImagingData blank() const {
    return {torch::zeros({48, 48}, torch::kFloat64), torch::full({48, 48}, 0.005, torch::kFloat64),
            torch::ones({48, 48}, torch::kBool)};
  }
  torch::Tensor lens_u(double theta_e, double light_amp = 40.0) const {
    std::map<std::string, torch::Tensor> v{{"theta_E", torch::tensor({theta_e}, torch::kFloat64)},
                                           {"q", torch::tensor({0.75}, torch::kFloat64)},
                                           {"phi", torch::tensor({0.3}, torch::kFloat64)}};
    if (free_light) v["light_amp"] = torch::tensor({light_amp}, torch::kFloat64);
    return space.pack(v);
  }
  LensPosterior posterior() const { return LensPosterior(spec, space, data, compute); }
};

const double kScale = 0.01, kPhi = 0.5;  // stamp pixels (arcsec) and their rotation

BackProjection project(const BackProjectionProblem& p, const torch::Tensor& u) {
  const auto post = p.posterior();
  BackProjectionSettings s;
  s.stamp_size = 40;
  return back_project(post, p.space.unpack(u), u.size(0), torch::full({1}, kScale, torch::kFloat64),
                      torch::full({1}, kPhi, torch::kFloat64), s);
}

// One row at the true lens (theta_E 0.9), unrotated stamp pixels of kScale, the given settings.
BackProjection project_true_lens(const BackProjectionProblem& p, const LensPosterior& post,
                                 const BackProjectionSettings& s) {
  return back_project(post, p.space.unpack(p.lens_u(0.9)), 1,
                      torch::full({1}, kScale, torch::kFloat64), torch::zeros({1}, torch::kFloat64),
                      s);
}

// Correlation of a row's stamp with the true source's surface brightness at the stamp's pixel
// centres (lenstronomy's INTERPOL convention, inverted: x = cx + s (x_pix cos - y_pix sin), ...).
double stamp_correlation(const BackProjectionProblem& p, const BackProjection& bp, int64_t row) {
  const int64_t S = bp.stamp.size(1);
  const auto pix = torch::arange(S, torch::kFloat64) - 0.5 * (S - 1);
  const auto yy = pix.view({-1, 1}).expand({S, S}), xx = pix.view({1, -1}).expand({S, S});
  const double c = std::cos(kPhi), s = std::sin(kPhi);
  const auto x = bp.center_x[row] + kScale * (xx * c - yy * s);
  const auto y = bp.center_y[row] + kScale * (xx * s + yy * c);
  const auto truth = physics::make_light_profile("SERSIC_ELLIPSE")
                         ->surface_brightness(x.reshape({1, -1}), y.reshape({1, -1}), p.source)
                         .reshape({-1});
  const auto got = bp.stamp[row].reshape({-1});
  const auto tc = truth - truth.mean(), gc = got - got.mean();
  return ((tc * gc).sum() / (tc.norm() * gc.norm())).item<double>();
}

}  // namespace

TEST(SourceBackProjection, TheTrueLensTracesTheArcsOntoTheSource) {
  BackProjectionProblem p(false);
  const auto bp = project(p, p.lens_u(0.9));
  EXPECT_GT(bp.traced[0].item<int64_t>(), 50);
  // The flux-weighted centre of the traced pixels is the source's centre.
  EXPECT_NEAR(bp.center_x[0].item<double>(), 0.08, 0.02);
  EXPECT_NEAR(bp.center_y[0].item<double>(), -0.05, 0.02);
  // Its stamp has the source's shape and orientation (a stamp rotated by a wrong angle or flipped
  // correlates far less with an e1 = 0.3 source), and about its surface brightness: the PSF
  // spreads the arcs, so the peak is lower than the source's 8 x e^{b_n}.
  const double corr = stamp_correlation(p, bp, 0);
  EXPECT_GT(corr, 0.85) << corr;
  const double peak = bp.stamp[0].max().item<double>();
  const double true_peak = 8.0 * std::exp(1.9992 - 0.3271);
  EXPECT_GT(peak, 0.3 * true_peak) << peak;
  EXPECT_LT(peak, 1.2 * true_peak) << peak;
}

// The footprint a pixel grid must cover (half_width) at the true lens, against the same quantile
// computed independently: the image plane sampled 8 x 8 times per pixel, each point ray-shot and
// read on the true source, the points whose surface brightness times a data pixel's area clears 3
// sigma weighted by it (image-plane flux; a data pixel here is its centre's value times its area).
// No PSF and no noise, which the reference cannot follow: noise lifts faint outskirts over the
// threshold. A lens 0.3" too large scatters the images and the footprint grows.
TEST(SourceBackProjection, TheFootprintIsTheTracedImageFluxQuantile) {
  BackProjectionProblem p(false, 0.0, 0.0);
  const auto bp = project(p, torch::cat({p.lens_u(0.9), p.lens_u(1.2)}));
  const double got = bp.half_width[0].item<double>();
  const int64_t n = 48 * 8;
  const double h = 0.06 / 8, cx = bp.center_x[0].item<double>(), cy = bp.center_y[0].item<double>();
  const auto t = (torch::arange(n, torch::kFloat64) - 0.5 * (n - 1)) * h;
  const auto y = t.view({-1, 1}).expand({n, n}).reshape({1, -1});
  const auto x = t.view({1, -1}).expand({n, n}).reshape({1, -1});
  const auto post = p.posterior();
  const auto lens = post.build(p.space.unpack(p.lens_u(0.9)), 1, false).lens;
  const auto [bx, by] = lens.ray_shoot(x, y);
  const auto sb = physics::make_light_profile("SERSIC_ELLIPSE")
                      ->surface_brightness(bx, by, p.source)
                      .reshape({-1});
  const auto flux = torch::where(sb * 0.06 * 0.06 > 3.0 * 0.005, sb, torch::zeros_like(sb));
  const auto dist =
      torch::where(flux > 0, torch::max((bx - cx).abs(), (by - cy).abs()).reshape({-1}),
                   torch::zeros_like(flux));
  const auto [sorted, order] = dist.sort();
  const auto cum = flux.index_select(0, order).cumsum(0);
  const double expected = sorted[(cum < 0.99 * cum[-1]).sum().item<int64_t>()].item<double>();
  EXPECT_NEAR(got, expected, 0.05 * expected) << got << " vs " << expected;
  EXPECT_GT(bp.half_width[1].item<double>(), 1.3 * got) << bp.half_width;
  // A lower fraction holds a smaller square.
  BackProjectionSettings half;
  half.stamp_size = 4;
  half.footprint_flux_fraction = 0.5;
  const auto inner = project_true_lens(p, post, half);
  EXPECT_LT(inner.half_width[0].item<double>(), 0.7 * got);
}

TEST(SourceBackProjection, AWrongLensScattersTheImagesAndRowsAreIndependent) {
  BackProjectionProblem p(false);
  const auto both = project(p, torch::cat({p.lens_u(0.9), p.lens_u(1.2)}));
  const auto alone = project(p, p.lens_u(0.9));
  EXPECT_TRUE(torch::allclose(both.stamp[0], alone.stamp[0]));
  EXPECT_NEAR(both.center_x[0].item<double>(), alone.center_x[0].item<double>(), 1e-12);
  // Theta_E 0.3" too large: the images of the one source land apart and the stamp is no longer
  // the source.
  const double wrong = stamp_correlation(p, both, 1), right = stamp_correlation(p, both, 0);
  EXPECT_LT(wrong, right - 0.2) << wrong << " vs " << right;
}

TEST(SourceBackProjection, LensLightIsSubtractedBeforeTracing) {
  BackProjectionProblem lit(true), dark(false);
  const auto with_light = project(lit, lit.lens_u(0.9));
  // The same noise realisation: the data differ by the lens light only.
  const auto without = project(dark, dark.lens_u(0.9));
  EXPECT_EQ(with_light.traced[0].item<int64_t>(), without.traced[0].item<int64_t>());
  EXPECT_NEAR(with_light.center_x[0].item<double>(), without.center_x[0].item<double>(), 1e-9);
  EXPECT_TRUE(torch::allclose(with_light.stamp, without.stamp, 1e-9, 1e-9));
}

TEST(SourceBackProjection, NothingAboveTheThresholdIsReported) {
  BackProjectionProblem p(false);
  const auto post = p.posterior();
  BackProjectionSettings s;
  s.snr_threshold = 1e6;
  s.stamp_size = 8;
  const auto bp = project_true_lens(p, post, s);
  EXPECT_EQ(bp.traced[0].item<int64_t>(), 0);
  EXPECT_TRUE(std::isnan(bp.center_x[0].item<double>()));
  EXPECT_TRUE(std::isnan(bp.half_width[0].item<double>()));
  EXPECT_EQ(bp.stamp.abs().sum().item<double>(), 0.0);
  s.cell = 3;  // does not divide 8
  EXPECT_THROW(project_true_lens(p, post, s), InvalidArgument);
}

// The smoothed weighted quantiles (model/arcs_placement.h) against a closed form: values on a fine
// lattice of [0, 1] weighted by the density 2v have the quantiles sqrt(f). Shuffled, with points
// of weight 0 far out, they are the same; the root is the kernel distribution's; the gradient is
// the implicit function's, checked against finite differences.
TEST(ArcsPlacement, SmoothedQuantilesAreTheKernelDistributionsRoots) {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const int64_t n = 4000;
  auto v = (torch::arange(n, f64) + 0.5) / double(n);
  auto w = 2.0 * v;
  auto gen = at::detail::createCPUGenerator(3);
  const auto perm = torch::randperm(n, gen, torch::TensorOptions().dtype(torch::kLong));
  v = torch::cat({v.index_select(0, perm), torch::full({50}, 100.0, f64)}).unsqueeze(0);
  w = torch::cat({w.index_select(0, perm), torch::zeros({50}, f64)}).unsqueeze(0);
  const std::vector<double> fractions = {0.005, 0.25, 0.995};
  const double width = 1e-3;
  const auto q = smoothed_weighted_quantiles(v, w, fractions, width);
  for (size_t i = 0; i < fractions.size(); ++i) {
    EXPECT_NEAR(q[0][i].item<double>(), std::sqrt(fractions[i]), 2e-3) << fractions[i];
    // F(q) = f for the kernel distribution.
    const auto z = (q[0][i] - v[0]) / width;
    const double cdf =
        ((w[0] * 0.5 * torch::erfc(-z / std::sqrt(2.0))).sum() / w.sum()).item<double>();
    EXPECT_NEAR(cdf, fractions[i], 1e-10);
  }
  // The interpolated quantiles give the same to the lattice's spacing.
  const auto plain = weighted_quantiles(v, w, fractions);
  EXPECT_TRUE(torch::allclose(plain, q, 0.0, 2e-3)) << plain << q;

  // d q / d (values, weights) of a small irregular set, a wide kernel.
  const auto vs = torch::rand({1, 30}, gen, torch::kFloat64);
  const auto ws = torch::rand({1, 30}, gen, torch::kFloat64);
  const auto vg = vs.clone().requires_grad_(true), wg = ws.clone().requires_grad_(true);
  const auto picked = smoothed_weighted_quantiles(vg, wg, {0.1, 0.9}, 0.05);
  const auto [gv, gw] = [&] {
    const auto g = torch::autograd::grad({picked.sum()}, {vg, wg});
    return std::pair{g[0], g[1]};
  }();
  const double h = 1e-6;
  for (const int64_t j : {0, 7, 19}) {
    for (const bool weight : {false, true}) {
      auto plus_v = vs.clone(), minus_v = vs.clone(), plus_w = ws.clone(), minus_w = ws.clone();
      (weight ? plus_w : plus_v)[0][j] += h;
      (weight ? minus_w : minus_v)[0][j] -= h;
      const double fd = ((smoothed_weighted_quantiles(plus_v, plus_w, {0.1, 0.9}, 0.05).sum() -
                          smoothed_weighted_quantiles(minus_v, minus_w, {0.1, 0.9}, 0.05).sum()) /
                         (2 * h))
                            .item<double>();
      const double ad = (weight ? gw : gv)[0][j].item<double>();
      EXPECT_NEAR(ad, fd, 1e-6 * std::max(1.0, std::abs(fd))) << j << " weight " << weight;
    }
  }
  EXPECT_THROW(smoothed_weighted_quantiles(vs, ws, {0.5}, 0.0), InvalidArgument);
}

namespace {

// The problem's model with an n x n pixel grid (identity decoder, sigma 1) placed on the arcs;
// pixels with |mu| below min_mu count nothing (ArcsPlacementSpec::min_magnification; 0: all count).
LensPosterior arcs_placed_posterior(BackProjectionProblem p, int64_t n, double min_mu = 0.5) {
  p.spec.source.push_back({"INTERPOL_BICUBIC", {{"amp", "one"}}});
  p.spec.latent_block = "pixels";
  p.spec.decoder = [n](const torch::Tensor& z) { return z.reshape({-1, n, n}); };
  ArcsPlacementSpec arcs;
  arcs.size = n;
  arcs.min_magnification = min_mu;
  p.spec.arcs_placement = arcs;
  p.space.add_standard_normal_block("pixels", n * n);
  return LensPosterior(p.spec, p.space, p.data, p.compute);
}

}  // namespace

// The grid placed on the arcs traced through the true lens against an independent computation
// (no noise, no PSF): each pixel centre ray-shot and read on the true source, weighted by that flux
// times its ramp clamp(snr - 3, 0, 1), and the box's edges found by bisection on the distribution
// smoothed by a pixel-wide kernel. A lens 0.3" too large
// scatters the images and the grid grows; the lens light is subtracted as the model images it (PSF
// included), so a lit lens places the grid where a dark one does.
TEST(ArcsPlacement, TheGridHoldsTheTracedArcsAndFollowsTheLens) {
  BackProjectionProblem p(false, 0.0, 0.0);
  const int64_t n = 16;
  const auto post = arcs_placed_posterior(p, n);
  const auto rows = torch::cat({p.lens_u(0.9), p.lens_u(1.2)});
  const auto g = *post.arcs_grid(p.space.unpack(rows), 2);
  const auto [x, y] = p.spec.grid.coordinates(p.compute);
  const auto lens = post.build(p.space.unpack(p.lens_u(0.9)), 1, false).lens;
  const auto [bx, by] = lens.ray_shoot(x.reshape({1, -1}), y.reshape({1, -1}));
  const auto flux = physics::make_light_profile("SERSIC_ELLIPSE")
                        ->surface_brightness(bx, by, p.source)
                        .reshape({-1}) *
                    (0.06 * 0.06);
  const auto wt = flux * (flux / 0.005 - 3.0).clamp(0.0, 1.0);
  const auto edge = [&](const torch::Tensor& v, double frac) {
    double lo = -3.0, hi = 3.0;
    for (int i = 0; i < 60; ++i) {
      const double mid = 0.5 * (lo + hi);
      const double cdf =
          ((wt * 0.5 * torch::erfc(-(mid - v.reshape({-1})) / (0.06 * std::sqrt(2.0)))).sum() /
           wt.sum())
              .item<double>();
      (cdf < frac ? lo : hi) = mid;
    }
    return 0.5 * (lo + hi);
  };
  const double x0 = edge(bx, 0.005), x1 = edge(bx, 0.995), y0 = edge(by, 0.005),
               y1 = edge(by, 0.995);
  const double side = 2.2 * 0.5 * std::max(x1 - x0, y1 - y0);
  EXPECT_NEAR(g.scale[0].item<double>() * n, side, 1e-3 * side) << side;
  EXPECT_NEAR(g.center_x[0].item<double>(), 0.5 * (x0 + x1), 1e-3 * side);
  EXPECT_NEAR(g.center_y[0].item<double>(), 0.5 * (y0 + y1), 1e-3 * side);
  EXPECT_GT(g.scale[1].item<double>(), 1.3 * g.scale[0].item<double>()) << g.scale;
  // The model's source component is drawn on that grid.
  const auto with_pixels =
      post.space().pack({{"theta_E", torch::tensor({0.9, 1.2}, torch::kFloat64)},
                         {"q", torch::full({2}, 0.75, torch::kFloat64)},
                         {"phi", torch::full({2}, 0.3, torch::kFloat64)},
                         {"pixels", torch::zeros({2, n * n}, torch::kFloat64)}});
  const auto built = post.build(post.space().unpack(with_pixels), 2);
  EXPECT_TRUE(torch::allclose(built.source_light.at(0).params.at("scale"), g.scale));

  BackProjectionProblem lit(true), dark(false);
  const auto lit_grid = *arcs_placed_posterior(lit, n).arcs_grid(lit.space.unpack(rows), 2);
  const auto dark_grid = *arcs_placed_posterior(dark, n).arcs_grid(dark.space.unpack(rows), 2);
  EXPECT_TRUE(torch::allclose(lit_grid.scale, dark_grid.scale, 1e-6, 1e-9))
      << lit_grid.scale << dark_grid.scale;
  EXPECT_TRUE(torch::allclose(lit_grid.center_x, dark_grid.center_x, 1e-6, 1e-9));
}

// The log posterior's gradient through the grid's placement (the lens moves the grid) against
// central differences, for the lens's coordinates.
TEST(ArcsPlacement, TheLogPosteriorsGradientFollowsThePlacement) {
  BackProjectionProblem p(true);
  const int64_t n = 8;
  const auto post = arcs_placed_posterior(p, n);
  auto gen = at::detail::createCPUGenerator(11);
  auto u = post.space().pack({{"theta_E", torch::tensor({0.93}, torch::kFloat64)},
                              {"q", torch::tensor({0.75}, torch::kFloat64)},
                              {"phi", torch::tensor({0.3}, torch::kFloat64)},
                              {"pixels", 0.3 * torch::rand({1, n * n}, gen, torch::kFloat64)}});
  const auto fn = post.log_density();
  const auto grad = fn(u).grad;
  const double h = 1e-6;
  for (int64_t j = 0; j < 3; ++j) {  // theta_E, q, phi: the lens
    auto up = u.clone(), down = u.clone();
    up[0][j] += h;
    down[0][j] -= h;
    const double fd = ((post.log_prob(up) - post.log_prob(down)) / (2 * h)).item<double>();
    EXPECT_NEAR(grad[0][j].item<double>(), fd, 1e-5 * std::max(1.0, std::abs(fd))) << j;
  }
  // The grid does move with the lens (a gradient that left the placement out would differ).
  auto wider = u.clone();
  wider[0][0] += 0.05;
  const auto a = *post.arcs_grid(post.space().unpack(u), 1);
  const auto b = *post.arcs_grid(post.space().unpack(wider), 1);
  EXPECT_GT(std::abs((b.scale - a.scale).item<double>()), 1e-3 * a.scale.item<double>());
}

// A lens light 5 % too faint, subtracted as the row's own, leaves the core's residuals above the
// threshold; traced back they land near |beta| = theta_E all round. Counted, they widen the grid
// 2.6 times; the lens demagnifies them (|mu| < 1/2), and left out for that they widen it by less
// than a tenth (model/arcs_placement.h). The true lens light's grid is the same either way.
TEST(ArcsPlacement, TheDemagnifiedCoreDoesNotWidenTheGrid) {
  BackProjectionProblem p(true, 0.1, 0.005, /*free_light_amp=*/true);
  const int64_t n = 16;
  const auto rows = torch::cat({p.lens_u(0.9, 40.0), p.lens_u(0.9, 38.0)});
  const auto all = *arcs_placed_posterior(p, n, 0.0).arcs_grid(p.space.unpack(rows), 2);
  const auto magnified = *arcs_placed_posterior(p, n).arcs_grid(p.space.unpack(rows), 2);
  const double truth = all.scale[0].item<double>();
  EXPECT_GT(all.scale[1].item<double>(), 2.0 * truth) << all.scale;
  EXPECT_LT(magnified.scale[1].item<double>(), 1.1 * truth) << magnified.scale;
  EXPECT_NEAR(magnified.scale[0].item<double>(), truth, 1e-3 * truth);
  EXPECT_NEAR(magnified.center_x[0].item<double>(), all.center_x[0].item<double>(),
              1e-3 * truth * n);
  // The ramp itself: 0 at |mu| <= 1/2, 1 at >= 3/4, linear in 1 / |mu| between; NaN is 0.
  const auto ramp = magnification_ramp(
      torch::tensor({3.0, 2.0, 5.0 / 3.0, 4.0 / 3.0, 1.0, std::nan("")}, torch::kFloat64), 0.5,
      0.75);
  const auto expected = torch::tensor({0.0, 0.0, 0.5, 1.0, 1.0, 0.0}, torch::kFloat64);
  EXPECT_TRUE(torch::allclose(ramp, expected, 1e-12, 1e-12)) << ramp;
  EXPECT_THROW(magnification_ramp(ramp, 0.5, 0.5), InvalidArgument);
}

// The lens light the arcs are traced from, fixed (LensPosterior::fix_arcs_lens_light): rows whose
// lens light is 5 % too faint or too bright get the grid of the true lens light, where with each
// row's own the too-faint one's core residuals, traced far out, widen it (every pixel counted, so
// that the core does: the test above leaves it out); the tempered copies of the posterior share
// it.
TEST(ArcsPlacement, AFixedLensLightHoldsTheGridWhateverTheRowsLensLight) {
  BackProjectionProblem p(true, 0.1, 0.005, /*free_light_amp=*/true);
  const int64_t n = 16;
  const auto post = arcs_placed_posterior(p, n, 0.0);
  const auto rows = torch::cat({p.lens_u(0.9, 40.0), p.lens_u(0.9, 38.0), p.lens_u(0.9, 42.0)});
  const auto own = *post.arcs_grid(p.space.unpack(rows), 3);
  EXPECT_GT(own.scale[1].item<double>(), 1.5 * own.scale[0].item<double>()) << own.scale;
  const auto tempered = post.with_noise_scaled(2.0);
  post.fix_arcs_lens_light(p.space.unpack(p.lens_u(0.9, 40.0)));
  const auto fixed = *post.arcs_grid(p.space.unpack(rows), 3);
  EXPECT_NEAR(fixed.scale[0].item<double>(), own.scale[0].item<double>(),
              1e-9 * own.scale[0].item<double>());
  for (int64_t r = 1; r < 3; ++r) {
    EXPECT_NEAR(fixed.scale[r].item<double>(), fixed.scale[0].item<double>(), 1e-12) << r;
    EXPECT_NEAR(fixed.center_x[r].item<double>(), fixed.center_x[0].item<double>(), 1e-12) << r;
  }
  // Tempered: the same lens light, and the weights read the data's own noise.
  const auto hot = *tempered.arcs_grid(p.space.unpack(rows), 3);
  EXPECT_TRUE(torch::allclose(hot.scale, fixed.scale, 1e-12, 1e-14)) << hot.scale << fixed.scale;
}

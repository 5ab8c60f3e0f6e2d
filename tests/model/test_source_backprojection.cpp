// The data traced back to the source plane (model/source_backprojection.h): at the true lens the
// traced signal lands on the true source (centre, orientation and shape of its stamp), the lens
// light is subtracted first, rows are independent, the footprint a pixel grid must hold is the
// traced flux's quantile, and nothing traced is reported as such.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

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

  // psf_fwhm 0: no PSF; noise: the noise realisation's sd (the sigma stays 0.005).
  explicit BackProjectionProblem(bool lens_light, double psf_fwhm = 0.1, double noise = 0.005) {
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
    space.add_fixed("light_amp", 40.0);
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
  torch::Tensor lens_u(double theta_e) const {
    return space.pack({{"theta_E", torch::tensor({theta_e}, torch::kFloat64)},
                       {"q", torch::tensor({0.75}, torch::kFloat64)},
                       {"phi", torch::tensor({0.3}, torch::kFloat64)}});
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

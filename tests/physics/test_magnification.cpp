// The light profiles' total fluxes against numerical integrals of their surface brightness, and the
// source's total magnification (physics::source_magnification) against closed forms: a uniform
// convergence sheet (exact for any source), a point mass and an SIS (a small source, with the
// SIS's finite-source term).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>

#include "dslens/core/errors.h"
#include "dslens/physics/image_model.h"
#include "dslens/physics/light_profiles.h"
#include "dslens/physics/profile.h"

namespace dslens::physics::test_magnification_detail {

torch::Tensor full(double v) {
  return torch::full({1}, v, torch::kFloat64);
}

// Midpoint rule over the square [-half, half]^2 (shifted by the centre) with cells of side h.
double grid_integral(const LightProfile& profile, const ParamMap& p, double cx, double cy,
                     double half, double h) {
  const int64_t n = static_cast<int64_t>(std::llround(2 * half / h));
  const auto ax = (torch::arange(n, torch::kFloat64) + 0.5) * h - half;
  const auto g = torch::meshgrid({ax + cy, ax + cx}, "ij");
  const auto sb = profile.surface_brightness(g[1].reshape({1, -1}), g[0].reshape({1, -1}), p);
  return sb.sum().item<double>() * h * h;
}

TEST(LightFlux, SersicTotalFluxIsTheRadialIntegral) {
  // integral of 2 pi R I(R) dR in ln R, from 1e-7 R_sersic to the profile's cut-off at 1000.
  for (const double n : {0.7, 1.0, 2.5, 4.0}) {
    const double r_sersic = 0.3, amp = 2.5;
    const ParamMap p{{"amp", full(amp)},
                     {"R_sersic", full(r_sersic)},
                     {"n_sersic", full(n)},
                     {"center_x", full(0.0)},
                     {"center_y", full(0.0)}};
    const int64_t k = 400000;
    const auto ln_r = torch::linspace(std::log(1e-7 * r_sersic), std::log(999.999 * r_sersic), k,
                                      torch::kFloat64);
    const auto r = torch::exp(ln_r);
    const auto sb = SersicLight().surface_brightness(r.reshape({1, -1}),
                                                     torch::zeros({1, k}, torch::kFloat64), p)[0];
    const auto f = 2 * M_PI * r * r * sb;  // d(flux) / d(ln R)
    const double dl = (ln_r[1] - ln_r[0]).item<double>();
    const double numeric = ((f.sum() - 0.5 * (f[0] + f[k - 1])) * dl).item<double>();
    const double closed = SersicLight().total_flux(p).item<double>();
    EXPECT_NEAR(closed / numeric, 1.0, 1e-6) << "n = " << n;
  }
}

TEST(LightFlux, EllipseGaussianAndStampsIntegrateToTheirTotalFlux) {
  {
    // An exponential ellipse (q = 0.64), its light beyond 12 R_sersic about 2e-6.
    const ParamMap p{{"amp", full(1.7)},      {"R_sersic", full(0.3)}, {"n_sersic", full(1.0)},
                     {"e1", full(0.2)},       {"e2", full(-0.1)},      {"center_x", full(0.1)},
                     {"center_y", full(-0.2)}};
    const SersicEllipseLight ellipse;
    EXPECT_NEAR(
        ellipse.total_flux(p).item<double>() / grid_integral(ellipse, p, 0.1, -0.2, 3.6, 0.004),
        1.0, 1e-4);
  }
  {
    const ParamMap p{{"amp", full(3.0)},
                     {"sigma", full(0.2)},
                     {"center_x", full(0.0)},
                     {"center_y", full(0.05)}};
    EXPECT_NEAR(GaussianLight().total_flux(p).item<double>(), 3.0, 0.0);
    EXPECT_NEAR(grid_integral(GaussianLight(), p, 0.0, 0.05, 2.0, 0.01), 3.0, 3e-6);
  }
  // A rotated random stamp, bilinear and bicubic; two rows of stamps and amplitudes.
  torch::manual_seed(3);
  const auto stamps = torch::rand({2, 16, 16}, torch::kFloat64);
  for (const auto order : {PixelInterpolation::kBilinear, PixelInterpolation::kBicubic}) {
    const InterpolLight interpol(order);
    const ParamMap p{
        {"image", stamps},         {"center_x", full(0.05)},
        {"center_y", full(-0.02)}, {"scale", full(0.05)},
        {"phi_G", full(0.4)},      {"amp", torch::tensor({3.0, 0.5}, torch::kFloat64)}};
    const auto flux = interpol.total_flux(p);
    ASSERT_EQ(flux.sizes(), torch::IntArrayRef({2}));
    for (int64_t row = 0; row < 2; ++row) {
      ParamMap one = p;
      one["image"] = stamps.narrow(0, row, 1);
      one["amp"] = p.at("amp").narrow(0, row, 1);
      EXPECT_NEAR(
          flux[row].item<double>() / grid_integral(interpol, one, 0.05, -0.02, 0.75, 0.0015), 1.0,
          2e-5)
          << interpol.type() << " row " << row;
    }
  }
}

// A model of one mass profile and a source on a centred grid.
ImageModel lens_of(const std::string& mass, ParamMap mass_params, const std::string& source,
                   ParamMap source_params, int64_t pixels, double pixel_scale) {
  ImageModel m;
  m.grid = PixelGrid::centered(pixels, pixels, pixel_scale);
  m.supersampling = 2;
  m.lens.add(make_mass_profile(mass), std::move(mass_params));
  m.source_light.push_back({make_light_profile(source), std::move(source_params)});
  m.psf_kernel = torch::ones({3, 3}, torch::kFloat64) / 9.0;  // left out, whatever it is
  m.lens_light.push_back({make_light_profile("GAUSSIAN"),
                          {{"amp", full(50.0)},
                           {"sigma", full(0.3)},
                           {"center_x", full(0.0)},
                           {"center_y", full(0.0)}}});  // left out too
  return m;
}

TEST(SourceMagnification, ConvergenceSheetMagnifiesByOneOverOneMinusKappaSquared) {
  // beta = (1 - kappa) theta: every source is magnified by 1 / (1 - kappa)^2; two rows.
  const auto kappa = torch::tensor({0.3, -0.2}, torch::kFloat64);
  const ImageModel m = lens_of("CONVERGENCE", {{"kappa", kappa}}, "SERSIC_ELLIPSE",
                               {{"amp", full(4.0)},
                                {"R_sersic", full(0.1)},
                                {"n_sersic", full(1.0)},
                                {"e1", full(0.1)},
                                {"e2", full(0.05)},
                                {"center_x", full(0.1)},
                                {"center_y", full(-0.05)}},
                               200, 0.02);
  const auto mu = source_magnification(m, 2, Compute{});
  ASSERT_EQ(mu.sizes(), torch::IntArrayRef({2}));
  EXPECT_NEAR(mu[0].item<double>(), 1.0 / (0.7 * 0.7), 2e-4);
  EXPECT_NEAR(mu[1].item<double>(), 1.0 / (1.2 * 1.2), 2e-4);
}

TEST(SourceMagnification, PointMassAndSisOfASmallSource) {
  const ParamMap lens{{"theta_E", full(1.0)}, {"center_x", full(0.0)}, {"center_y", full(0.0)}};
  const auto source = [](double beta, double sigma) {
    return ParamMap{{"amp", full(2.0)},
                    {"sigma", full(sigma)},
                    {"center_x", full(beta * std::cos(0.3))},
                    {"center_y", full(beta * std::sin(0.3))}};
  };
  // Point mass: mu = (u^2 + 2) / (u sqrt(u^2 + 4)), u = beta / theta_E (Paczynski 1986); the
  // finite source changes it by about (sigma / beta)^2 = 4e-4.
  const double u = 0.5;
  const double mu_point = (u * u + 2) / (u * std::sqrt(u * u + 4));
  const auto point = source_magnification(
      lens_of("POINT_MASS", lens, "GAUSSIAN", source(u, 0.01), 600, 0.005), 1, Compute{});
  EXPECT_NEAR(point.item<double>() / mu_point, 1.0, 1e-3);
  // SIS: two images, mu = 2 theta_E / beta; averaged over a Gaussian source of sd sigma per axis,
  // 1 / |beta| gains sigma^2 / (2 beta^3) (its Laplacian in 2-d is 1 / beta^3).
  const double beta = 0.3, sigma = 0.02;
  const double mu_sis = 2.0 / beta * (1.0 + sigma * sigma / (2 * beta * beta));
  const auto sis = source_magnification(
      lens_of("SIS", lens, "GAUSSIAN", source(beta, sigma), 600, 0.005), 1, Compute{});
  // Measured 2.3e-5 off; without the finite-source term 2.2e-3 off.
  EXPECT_NEAR(sis.item<double>() / mu_sis, 1.0, 5e-4);
  // A source that misses every caustic is not magnified much (point mass: mu(u = 2.5) = 1.03).
  const auto far = source_magnification(
      lens_of("POINT_MASS", lens, "GAUSSIAN", source(2.5, 0.05), 600, 0.01), 1, Compute{});
  EXPECT_NEAR(far.item<double>(), (2.5 * 2.5 + 2) / (2.5 * std::sqrt(2.5 * 2.5 + 4)), 2e-3);

  // A source of no positive flux has no magnification.
  ParamMap dark = source(beta, sigma);
  dark["amp"] = full(0.0);
  EXPECT_TRUE(
      std::isnan(source_magnification(lens_of("SIS", lens, "GAUSSIAN", dark, 10, 0.1), 1, Compute{})
                     .item<double>()));
  ImageModel none = lens_of("SIS", lens, "GAUSSIAN", source(beta, sigma), 10, 0.1);
  none.source_light.clear();
  EXPECT_THROW(source_magnification(none, 1, Compute{}), InvalidArgument);
}

}  // namespace dslens::physics::test_magnification_detail

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <cmath>
#include <utility>

#include "dslens/core/errors.h"
#include "dslens/model/image_positions.h"
#include "dslens/model/lens_posterior.h"
#include "dslens/physics/profile.h"
#include "model_bindings.h"

using namespace dslens;
using namespace dslens::model;

namespace {

torch::Tensor f64(std::vector<double> v) {
  return torch::tensor(v, torch::kFloat64);
}

// An SIS of Einstein radius theta_E (one value per row) at the origin.
physics::LensModel sis(const torch::Tensor& theta_e) {
  physics::LensModel lens;
  const auto zero = torch::zeros_like(theta_e);
  lens.add(physics::make_mass_profile("SIS"),
           {{"theta_E", theta_e}, {"center_x", zero}, {"center_y", zero}});
  return lens;
}

// The term for images x_i on the x axis of an SIS of Einstein radius t, written out: beta_i =
// x_i - t sign(x_i), all on the axis; the Hessian is diag(0, t / |x_i|), so P_i = diag(1, (1 - t /
// |x_i|)^-2) / sigma^2, the fitted source lies at the mean of the beta_i (equal radial weights),
// and det S = (n / sigma^2) sum_i (1 - t / |x_i|)^-2 / sigma^2.
double sis_axis_term(const std::vector<double>& x, double sigma, double t) {
  double mean = 0.0, tangential = 0.0;
  for (const double xi : x) mean += (xi - t * (xi > 0 ? 1 : -1)) / double(x.size());
  double chi2 = 0.0;
  for (const double xi : x) {
    const double r = xi - t * (xi > 0 ? 1 : -1) - mean;
    chi2 += r * r / (sigma * sigma);
    tangential += 1.0 / std::pow(1.0 - t / std::abs(xi), 2) / (sigma * sigma);
  }
  return -0.5 * chi2 - 0.5 * std::log(double(x.size()) / (sigma * sigma) * tangential);
}

}  // namespace

// A source at 0.2" on the axis behind an SIS of 1": images at 1.2" and -0.8". The term against
// its closed form (above) at the true lens (chi-square 0) and at lenses that bring the images back
// to two places, batched as rows; a second lens with no positions adds 0 to its rows, and its
// padding leaves the first lens's rows as they are alone.
TEST(ImagePositions, AnSisPairsTermIsItsClosedFormAndPaddingAddsNothing) {
  const std::vector<double> x = {1.2, -0.8};
  const double sigma = 0.01;
  const std::vector<double> thetas = {1.0, 0.95, 0.61, 1.1};
  const std::vector<ImagePositionGroup> groups = {{{{1.2, 0.0}, {-0.8, 0.0}}, sigma}};
  const auto alone = batch_image_positions({groups});
  const auto term = image_positions_log_likelihood(sis(f64(thetas)), alone, 4);
  for (size_t k = 0; k < thetas.size(); ++k) {
    const double expected = sis_axis_term(x, sigma, thetas[k]);
    EXPECT_NEAR(term[k].item<double>(), expected, 1e-9 * std::abs(expected)) << thetas[k];
  }
  EXPECT_NEAR(image_positions_chi_square(sis(f64({1.0})), alone, 1)[0][0].item<double>(), 0.0,
              1e-18);
  // A lens of half the Einstein radius (the demagnified optimum of docs/fit.md's pixelated mock
  // had 0.61 against 1.2) traces the pair 0.78" apart: 1,500 nats down at sigma 0.01".
  EXPECT_LT(term[2].item<double>(), term[0].item<double>() - 1000.0);

  // Two lenses: the first with a second feature of three images, the second with none.
  const std::vector<ImagePositionGroup> more = {groups[0],
                                                {{{0.3, 1.3}, {0.1, -0.9}, {-1.0, 0.4}}, 0.02}};
  const auto batch = batch_image_positions({more, {}});
  ASSERT_EQ(batch.x.size(1), 5);
  ASSERT_EQ(batch.member.size(2), 2);
  const auto first_alone =
      image_positions_log_likelihood(sis(f64({1.0, 0.9})), batch_image_positions({more}), 2);
  const auto both = image_positions_log_likelihood(sis(f64({1.0, 0.9, 1.0, 0.9})), batch, 2);
  EXPECT_TRUE(torch::allclose(both.slice(0, 0, 2), first_alone, 1e-12, 0.0));
  EXPECT_EQ(both[2].item<double>(), 0.0);
  EXPECT_EQ(both[3].item<double>(), 0.0);
  // The three-image feature's term is the second group's alone: the first's is its closed form.
  EXPECT_GT(std::abs(first_alone[0].item<double>() - sis_axis_term(x, sigma, 1.0)), 1.0);
}

// Through an EPL (analytic Hessian) and an external shear, the gradient in every lens parameter
// against central differences: the term depends on the parameters through the Hessian too.
TEST(ImagePositions, TheGradientThroughAnEplAndShearMatchesFiniteDifferences) {
  const std::vector<std::string> names = {"theta_E",  "gamma",    "e1",     "e2",
                                          "center_x", "center_y", "gamma1", "gamma2"};
  const auto base = f64({1.1, 2.05, 0.08, -0.05, 0.02, -0.03, 0.03, -0.02});
  const std::vector<ImagePositionGroup> groups = {{{{1.15, 0.35}, {-0.9, -0.4}, {0.2, -1.1}}, 0.01},
                                                  {{{0.5, 1.0}, {-0.6, -0.9}}, 0.02}};
  const auto positions = batch_image_positions({groups});
  const auto term = [&](const torch::Tensor& v) {
    physics::LensModel lens;
    physics::ParamMap epl, shear;
    for (int i = 0; i < 6; ++i) epl[names[i]] = v[i].reshape({1});
    shear["gamma1"] = v[6].reshape({1});
    shear["gamma2"] = v[7].reshape({1});
    shear["ra_0"] = torch::zeros({1}, torch::kFloat64);
    shear["dec_0"] = torch::zeros({1}, torch::kFloat64);
    lens.add(physics::make_mass_profile("EPL"), epl);
    lens.add(physics::make_mass_profile("SHEAR"), shear);
    return image_positions_log_likelihood(lens, positions, 1)[0];
  };
  auto v = base.clone().requires_grad_(true);
  const auto grad = torch::autograd::grad({term(v)}, {v})[0];
  const double h = 1e-6;
  for (int i = 0; i < 8; ++i) {
    auto up = base.clone(), down = base.clone();
    up[i] += h;
    down[i] -= h;
    const double fd = (term(up) - term(down)).item<double>() / (2 * h);
    EXPECT_NEAR(grad[i].item<double>(), fd, 1e-5 * std::max(1.0, std::abs(fd))) << names[i];
  }
}

// The posterior adds the term to its likelihood (against the term of a lens built here, not by
// the posterior), and a tempered copy divides its chi-square by T^2 with sigma x T.
TEST(ImagePositions, ThePosteriorAddsTheTermAndTemperingScalesIt) {
  LensModelSpec spec;
  spec.grid = physics::PixelGrid::centered(12, 12, 0.2);
  spec.mass.push_back(dslens::testing::centred_sie());
  ParameterSpace space;
  space.add_free("theta_E", Prior::uniform(0.5, 1.5));
  space.add_free("q", Prior::uniform(0.3, 1.0));
  space.add_free("phi", Prior::uniform(-1.5, 1.5));
  space.add_fixed("zero", 0.0);
  ImagingData data;
  data.image = torch::zeros({12, 12}, torch::kFloat64);
  data.sigma = torch::full({12, 12}, 0.1, torch::kFloat64);
  data.mask = torch::ones({12, 12}, torch::kBool);
  const Compute compute{torch::kCPU, torch::kFloat64};
  const LensPosterior plain(spec, space, data, compute);
  const std::vector<ImagePositionGroup> groups = {{{{1.1, 0.3}, {-0.7, -0.4}, {0.1, 0.9}}, 0.02}};
  data.positions = batch_image_positions({groups});
  const LensPosterior with(spec, space, data, compute);
  torch::Generator gen = at::detail::createCPUGenerator(5);
  const auto u = space.sample_prior(3, torch::kFloat64, gen);
  const auto x = space.constrained(u);
  physics::LensModel lens;
  const auto q = x.select(1, 1), phi = x.select(1, 2), f = (1 - q) / (1 + q);
  const auto zero = torch::zeros({3}, torch::kFloat64);
  lens.add(physics::make_mass_profile("SIE"), {{"theta_E", x.select(1, 0)},
                                               {"e1", f * torch::cos(2 * phi)},
                                               {"e2", f * torch::sin(2 * phi)},
                                               {"center_x", zero},
                                               {"center_y", zero}});
  const auto expected = image_positions_log_likelihood(lens, data.positions, 3);
  EXPECT_TRUE(torch::allclose(with.log_prob(u) - plain.log_prob(u), expected, 1e-10, 1e-8));
  EXPECT_TRUE(
      torch::allclose(with.log_likelihood(u) - plain.log_likelihood(u), expected, 1e-10, 1e-8));
  // Tempered by T: -1/2 chi^2 / T^2 - 1/2 (log det S - 4 log T) for the one feature, beside the
  // pixels' own tempering.
  const double T = 2.0;
  const auto chi2 = image_positions_chi_square(lens, data.positions, 3).sum(1);
  const auto log_det = -2.0 * expected - chi2;
  const auto tempered_term = -0.5 * chi2 / (T * T) - 0.5 * (log_det - 4.0 * std::log(T));
  EXPECT_TRUE(torch::allclose(
      with.with_noise_scaled(T).log_prob(u) - plain.with_noise_scaled(T).log_prob(u), tempered_term,
      1e-10, 1e-8));
  // Positions for another number of lenses than the images hold are refused.
  data.positions = batch_image_positions({groups, groups});
  EXPECT_THROW(LensPosterior(spec, space, data, compute), InvalidArgument);
}

// The term is the images' likelihood in the image plane, each image measured with sd sigma about
// the lens's image of a source b, integrated over b with a flat prior:
//   I = int prod_i N2(theta_i; theta_i(b), sigma^2) db = (2 pi)^(1 - n) sigma^(-2n) exp(term)
// to first order in sigma (the Jacobians |det A_i| of the source-plane Gaussians cancel against
// the images' magnifications, leaving the Occam factor det S^-1/2). Here I is summed by brute
// force over a grid of b for an SIS, whose two images of b are b/|b| (|b| +- theta_E) in closed
// form, for a source 0.3" off the lens and for one 0.02" off it, whose images sit on either side of
// the Einstein ring magnified 51 and 49 times (the first-order mapping's hardest case here). The
// tight tangential source position makes the Occam factor det S^-1/2 2.7 nats smaller there.
TEST(ImagePositions, TheTermIsTheImagePlaneLikelihoodMarginalisedOverTheSourceByBruteForce) {
  const double sigma = 0.002, phi0 = 0.7;
  const double c = std::cos(phi0), s = std::sin(phi0);
  for (const double r0 : {0.3, 0.02}) {
    // The observed images: those of a source at r0 along phi0 behind an SIS of 1".
    const std::array<double, 2> plus{c * (r0 + 1.0), s * (r0 + 1.0)},
        minus{c * (r0 - 1.0), s * (r0 - 1.0)};
    const std::vector<ImagePositionGroup> groups = {{{plus, minus}, sigma}};
    const auto positions = batch_image_positions({groups});
    double truth_term = 0.0;
    for (const double t : {1.0, 1.0015, 0.999}) {
      const double term =
          image_positions_log_likelihood(sis(f64({t})), positions, 1)[0].item<double>();
      // The grid: radial (u) and tangential (v) offsets from the source both images trace back
      // to at lens t, r0 + 1 - t and r0 - 1 + t on average, each spanning 10 sd of the source
      // position (radial sigma / sqrt 2; tangential sigma r / |theta| / sqrt 2 at each image).
      const double centre = r0, su = sigma / std::sqrt(2.0),
                   sv = sigma * r0 / (r0 + 1.0) / std::sqrt(2.0);
      const int64_t n = 801;
      const auto u = torch::linspace(-10 * su, 10 * su, n, torch::kFloat64).view({n, 1});
      const auto v = torch::linspace(-10 * sv, 10 * sv, n, torch::kFloat64).view({1, n});
      const auto bx = (centre + u) * c - v * s, by = (centre + u) * s + v * c;
      const auto r = torch::sqrt(bx * bx + by * by);
      auto log_like = torch::zeros({n, n}, torch::kFloat64);
      for (const auto& [obs, sign] : {std::pair{plus, 1.0}, std::pair{minus, -1.0}}) {
        const auto scale = (r + sign * t) / r;  // theta(b) = b (|b| +- t) / |b|
        const auto dx = obs[0] - bx * scale, dy = obs[1] - by * scale;
        log_like = log_like - (dx * dx + dy * dy) / (2 * sigma * sigma) -
                   std::log(2 * M_PI * sigma * sigma);
      }
      const double cell = (20 * su / (n - 1)) * (20 * sv / (n - 1));
      const double log_i =
          torch::logsumexp(log_like.reshape({-1}), 0).item<double>() + std::log(cell);
      const double expected = log_i + std::log(2 * M_PI) + 4 * std::log(sigma);
      // Exact at the true lens (chi-square 0). Off it the images' positions are not linear in b
      // over the chi-square's range: measured, the first-order term errs by 0.4-0.6 % of its fall
      // from the truth's for the far source and by 0.9-1.9 % near the ring.
      const double fall = (t == 1.0) ? 0.0 : truth_term - term;
      EXPECT_NEAR(term, expected, 1e-4 + 0.03 * fall) << "r0 " << r0 << ", theta_E " << t;
      if (t == 1.0) truth_term = term;
    }
  }
  // At the true lens the chi-square is 0 and the term is -1/2 log det S, with det S 207 times
  // larger for the source near the caustic's centre (its tangential precision (|theta_1|^2 +
  // |theta_2|^2) / r0^2 / sigma^2).
  const auto at_truth = [&](double r0) {
    const std::vector<ImagePositionGroup> g = {
        {{{c * (r0 + 1.0), s * (r0 + 1.0)}, {c * (r0 - 1.0), s * (r0 - 1.0)}}, sigma}};
    return image_positions_log_likelihood(sis(f64({1.0})), batch_image_positions({g}), 1)[0]
        .item<double>();
  };
  EXPECT_NEAR(at_truth(0.3) - at_truth(0.02), 0.5 * std::log(2.0008 / 0.0004 / (2.18 / 0.09)),
              1e-9);
}

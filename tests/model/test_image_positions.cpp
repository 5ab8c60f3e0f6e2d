#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

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

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dslens/core/errors.h"
#include "dslens/model/lens_posterior.h"
#include "dslens/physics/profile.h"
#include "model_bindings.h"

using namespace dslens;
using namespace dslens::model;

namespace {

// A small SIE + Sersic problem: 24x24 pixels, no PSF, data = model at the truth.
struct SmallProblem {
  LensModelSpec spec;
  ParameterSpace space;
  ImagingData data;
  Compute compute{torch::kCPU, torch::kFloat64};
  std::map<std::string, double> truth{{"theta_E", 0.9}, {"q", 0.8},     {"phi", 0.4},
                                      {"src_x", 0.05},  {"src_R", 0.2}, {"src_amp", 5.0}};
  SmallProblem() {
    spec.grid = physics::PixelGrid::centered(24, 24, 0.1);
    spec.mass.push_back(dslens::testing::centred_sie());
    spec.source.push_back(dslens::testing::round_sersic("src_amp", "src_R", "src_n", "src_x"));
    space.add_free("theta_E", Prior::uniform(0.5, 1.5));
    space.add_free("q", Prior::uniform(0.3, 1.0));
    space.add_free("phi", Prior::uniform(-1.5, 1.5));
    space.add_free("src_x", Prior::normal(0.0, 0.2));
    space.add_free("src_R", Prior::lognormal(std::log(0.2), 0.5));
    space.add_free("src_amp", Prior::lognormal(std::log(5.0), 1.0));
    space.add_fixed("src_n", 1.5);
    space.add_fixed("zero", 0.0);
    data.image = torch::zeros({24, 24}, torch::kFloat64);
    data.sigma = torch::full({24, 24}, 0.05, torch::kFloat64);
    data.mask = torch::ones({24, 24}, torch::kBool);
  }
  torch::Tensor truth_u() const {
    std::map<std::string, torch::Tensor> v;
    for (const auto& [k, x] : truth) v[k] = torch::tensor({x}, torch::kFloat64);
    return space.pack(v);
  }
};

}  // namespace

TEST(LensPosterior, LikelihoodPeaksAtTruthWithExactNormalisation) {
  SmallProblem p;
  LensPosterior first(p.spec, p.space, p.data, p.compute);
  const auto u0 = p.truth_u();
  p.data.image = first.model_image(p.space.unpack(u0))[0].detach();
  LensPosterior post(p.spec, p.space, p.data, p.compute);
  const double expected = -576 * std::log(0.05) - 0.5 * 576 * std::log(2 * M_PI);
  EXPECT_NEAR(post.log_likelihood(u0).item<double>(), expected, 1e-8);
  EXPECT_NEAR(post.chi_square(u0).item<double>(), 0.0, 1e-12);
  auto off = u0.clone();
  off[0][0] += 0.1;
  EXPECT_LT(post.log_likelihood(off).item<double>(), expected - 1.0);
}

TEST(LensPosterior, GradientMatchesFiniteDifferencesAndBatchesAreIndependent) {
  SmallProblem p;
  LensPosterior first(p.spec, p.space, p.data, p.compute);
  p.data.image = first.model_image(p.space.unpack(p.truth_u()))[0].detach();
  LensPosterior post(p.spec, p.space, p.data, p.compute);
  torch::Generator gen = at::detail::createCPUGenerator(5);
  auto u = p.space.sample_prior(3, torch::kFloat64, gen);
  auto value = post.log_density()(u);
  for (int64_t c = 0; c < 3; ++c) {
    auto single = post.log_prob(u.slice(0, c, c + 1));
    EXPECT_NEAR(single.item<double>(), value.log_p[c].item<double>(), 1e-9);
  }
  const double h = 1e-6;
  for (int64_t i = 0; i < p.space.dim(); ++i) {
    auto e = torch::zeros_like(u);
    e.select(1, i).fill_(h);
    auto fd = (post.log_prob(u + e) - post.log_prob(u - e)) / (2 * h);
    for (int64_t c = 0; c < 3; ++c) {
      const double g = value.grad[c][i].item<double>(), f = fd[c].item<double>();
      EXPECT_NEAR(g, f, 1e-5 * std::max(1.0, std::abs(f))) << "chain " << c << " coord " << i;
    }
  }
}

TEST(LensPosterior, MaskedPixelsDoNotCount) {
  SmallProblem p;
  p.data.image[3][4] = std::nan("");
  p.data.mask[3][4] = false;
  LensPosterior post(p.spec, p.space, p.data, p.compute);
  EXPECT_EQ(post.n_pixels(), 575);
  EXPECT_TRUE(torch::isfinite(post.log_prob(p.truth_u())).all().item<bool>());
  p.data.mask[3][4] = true;
  EXPECT_THROW(LensPosterior(p.spec, p.space, p.data, p.compute), InvalidArgument);
}

TEST(LensPosterior, SmoothedObjectiveIsExactAtZeroBlurAndKeepsTheNoiseChiSquare) {
  SmallProblem p;
  LensPosterior first(p.spec, p.space, p.data, p.compute);
  const auto u0 = p.truth_u();
  const auto clean = first.model_image(p.space.unpack(u0))[0].detach();
  // 16 noise realisations fitted as 16 lenses of one batch.
  const int64_t L = 16;
  torch::Generator gen = at::detail::createCPUGenerator(8);
  ImagingData noisy{clean.unsqueeze(0) + 0.05 * torch::randn({L, 24, 24}, gen, torch::kFloat64),
                    torch::full({L, 24, 24}, 0.05, torch::kFloat64),
                    torch::ones({L, 24, 24}, torch::kBool)};
  noisy.mask[0][3][4] = false;  // a masked pixel must not leak through the blur
  noisy.image[0][3][4] = 1e6;
  LensPosterior post(p.spec, p.space, noisy, p.compute);
  const auto u = u0.repeat({L, 1});
  EXPECT_TRUE(torch::allclose(post.log_prob_smoothed(u, 0.0), post.log_prob(u), 0, 0));
  // At the truth the residual is the noise: blurred and reweighted by 1 / sum(g^2), its
  // chi-square keeps the mean of the unblurred one (less a little at the zero-padded edges).
  const auto prior_and_norm = post.log_prob(u) + 0.5 * post.chi_square(u);
  for (double blur : {1.0, 2.0}) {
    const auto chi2_b = -2.0 * (post.log_prob_smoothed(u, blur) - prior_and_norm);
    const double ratio = (chi2_b.mean() / post.chi_square(u).mean()).item<double>();
    EXPECT_GT(ratio, 0.75) << "blur " << blur;
    EXPECT_LT(ratio, 1.1) << "blur " << blur;
  }
  // Its gradient (autograd through the separable convolution) against finite differences.
  const auto v = post.log_density_smoothed(1.5)(u);
  const double h = 1e-6;
  for (int64_t i = 0; i < p.space.dim(); ++i) {
    auto e = torch::zeros_like(u);
    e.select(1, i).fill_(h);
    const auto fd =
        (post.log_prob_smoothed(u + e, 1.5) - post.log_prob_smoothed(u - e, 1.5)) / (2 * h);
    EXPECT_NEAR(v.grad[1][i].item<double>(), fd[1].item<double>(),
                1e-5 * std::max(1.0, std::abs(fd[1].item<double>())))
        << "coord " << i;
  }
}

// Likelihood annealing: sigma x T gives chi^2 / T^2 and the normalisation of the scaled noise,
// with the prior untouched; the original posterior is not changed.
TEST(LensPosterior, NoiseScaledPosteriorTempersTheLikelihood) {
  SmallProblem p;
  LensPosterior first(p.spec, p.space, p.data, p.compute);
  p.data.image = first.model_image(p.space.unpack(p.truth_u()))[0].detach();
  // A noisy pixel map, so that the chi-square and the normalisation are not trivial.
  p.data.sigma = 0.03 + 0.04 * torch::rand({24, 24}, torch::kFloat64);
  LensPosterior post(p.spec, p.space, p.data, p.compute);
  const double T = 3.0;
  const LensPosterior tempered = post.with_noise_scaled(T);
  torch::Generator gen = at::detail::createCPUGenerator(11);
  const auto u = p.space.sample_prior(4, torch::kFloat64, gen);
  const auto chi2 = post.chi_square(u);
  const double n = 576.0;
  const double log_norm =
      -(p.data.sigma.log().sum().item<double>() + n * std::log(T)) - 0.5 * n * std::log(2 * M_PI);
  const auto expected = log_norm - 0.5 * chi2 / (T * T);
  EXPECT_TRUE(torch::allclose(tempered.log_likelihood(u), expected, 1e-10, 1e-8));
  EXPECT_TRUE(torch::allclose(tempered.chi_square(u), chi2 / (T * T), 1e-10, 1e-10));
  const auto prior = post.log_prob(u) - post.log_likelihood(u);
  EXPECT_TRUE(
      torch::allclose(tempered.log_prob(u) - tempered.log_likelihood(u), prior, 1e-10, 1e-8));
  EXPECT_TRUE(torch::allclose(post.chi_square(u), chi2));
  EXPECT_THROW(post.with_noise_scaled(0.0), InvalidArgument);
  EXPECT_THROW(post.with_noise_scaled(-2.0), InvalidArgument);
}

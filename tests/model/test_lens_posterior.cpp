#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dslens/core/errors.h"
#include "dslens/model/lens_posterior.h"
#include "dslens/physics/profile.h"
#include "dslens/samplers/optimize.h"
#include "model_bindings.h"

using namespace dslens;
using namespace dslens::model;

namespace {

// A small SIE + Sersic problem: 24x24 pixels (or `side`), no PSF, data = model at the truth.
struct SmallProblem {
  LensModelSpec spec;
  ParameterSpace space;
  ImagingData data;
  Compute compute{torch::kCPU, torch::kFloat64};
  std::map<std::string, double> truth{{"theta_E", 0.9}, {"q", 0.8},     {"phi", 0.4},
                                      {"src_x", 0.05},  {"src_R", 0.2}, {"src_amp", 5.0}};
  explicit SmallProblem(int64_t side = 24, double pixel_scale = 0.1, double amp = 5.0,
                        double n_sersic = 1.5) {
    truth["src_amp"] = amp;
    spec.grid = physics::PixelGrid::centered(side, side, pixel_scale);
    spec.mass.push_back(dslens::testing::centred_sie());
    spec.source.push_back(dslens::testing::round_sersic("src_amp", "src_R", "src_n", "src_x"));
    space.add_free("theta_E", Prior::uniform(0.5, 1.5));
    space.add_free("q", Prior::uniform(0.3, 1.0));
    space.add_free("phi", Prior::uniform(-1.5, 1.5));
    space.add_free("src_x", Prior::normal(0.0, 0.2));
    space.add_free("src_R", Prior::lognormal(std::log(0.2), 0.5));
    space.add_free("src_amp", Prior::lognormal(std::log(amp), 1.0));
    space.add_fixed("src_n", n_sersic);
    space.add_fixed("zero", 0.0);
    data.image = torch::zeros({side, side}, torch::kFloat64);
    data.sigma = torch::full({side, side}, 0.05, torch::kFloat64);
    data.mask = torch::ones({side, side}, torch::kBool);
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

// "poisson_term": "model" (ModelNoise): var = b + max(m, 0) * k per pixel, with the Gaussian
// normalisation from that variance. Checked against the sum written out pixel by pixel, finite
// differences, tempering, and a batch lens without the term.
TEST(LensPosterior, ModelNoiseLikelihoodIsThePixelSumWithTheModelsVariance) {
  SmallProblem p;
  LensPosterior first(p.spec, p.space, p.data, p.compute);
  const auto clean = first.model_image(p.space.unpack(p.truth_u()))[0].detach();
  torch::Generator gen = at::detail::createCPUGenerator(21);
  const double b = 0.02 * 0.02, k = 1.0 / 50.0;  // rms 0.02, t = 50
  p.data.image = clean + torch::sqrt(b + clean.clamp_min(0) * k) *
                             torch::randn({24, 24}, gen, torch::kFloat64);
  p.data.image[2][3] = -0.2;  // a pixel below 0 (no Poisson term from a negative model either)
  p.data.mask[5][6] = false;
  p.data.image[5][6] = NAN;
  p.data.model_noise = {torch::full({24, 24}, b, torch::kFloat64),
                        torch::full({24, 24}, k, torch::kFloat64)};
  LensPosterior post(p.spec, p.space, p.data, p.compute);
  auto u = p.space.sample_prior(3, torch::kFloat64, gen);
  u = torch::cat({u, p.truth_u()});
  const auto ll = post.log_likelihood(u);
  const auto chi2 = post.chi_square(u);
  const auto models = post.model_image(p.space.unpack(u)).contiguous();
  const auto d = p.data.image.contiguous();
  for (int64_t c = 0; c < u.size(0); ++c) {
    double sum = 0.0, sum_chi2 = 0.0;
    for (int64_t i = 0; i < 24; ++i) {
      for (int64_t j = 0; j < 24; ++j) {
        if (i == 5 && j == 6) continue;
        const double m = models[c][i][j].item<double>(), r = d[i][j].item<double>() - m;
        const double var = b + std::max(m, 0.0) * k;
        sum_chi2 += r * r / var;
        sum += -0.5 * (r * r / var + std::log(2 * M_PI * var));
      }
    }
    EXPECT_NEAR(ll[c].item<double>(), sum, 1e-9 * std::abs(sum)) << "row " << c;
    EXPECT_NEAR(chi2[c].item<double>(), sum_chi2, 1e-9 * sum_chi2) << "row " << c;
  }
  // The gradient, now also through the variance and its logarithm.
  const auto value = post.log_density()(u);
  const double h = 1e-6;
  for (int64_t i = 0; i < p.space.dim(); ++i) {
    auto e = torch::zeros_like(u);
    e.select(1, i).fill_(h);
    const auto fd = (post.log_prob(u + e) - post.log_prob(u - e)) / (2 * h);
    for (int64_t c = 0; c < u.size(0); ++c) {
      const double g = value.grad[c][i].item<double>(), f = fd[c].item<double>();
      EXPECT_NEAR(g, f, 1e-5 * std::max(1.0, std::abs(f))) << "row " << c << " coord " << i;
    }
  }
  // Tempering by T multiplies the variance by T^2: the chi-square by 1 / T^2 and the
  // normalisation by -n log T.
  const double T = 1.7;
  const LensPosterior tempered = post.with_noise_scaled(T);
  EXPECT_TRUE(torch::allclose(tempered.chi_square(u), chi2 / (T * T), 1e-10, 1e-10));
  const auto norm = ll + 0.5 * chi2;
  EXPECT_TRUE(torch::allclose(tempered.log_likelihood(u) + 0.5 * tempered.chi_square(u),
                              norm - 575.0 * std::log(T), 1e-10, 1e-8));
  // Without the Poisson term (k = 0, b = sigma^2) it is the fixed-sigma likelihood.
  SmallProblem q;
  q.data.image = p.data.image.clone();
  q.data.mask = p.data.mask.clone();
  q.data.sigma = 0.03 + 0.04 * torch::rand({24, 24}, gen, torch::kFloat64);
  const LensPosterior fixed(q.spec, q.space, q.data, q.compute);
  q.data.model_noise = {q.data.sigma.square(), torch::zeros({24, 24}, torch::kFloat64)};
  const LensPosterior as_model(q.spec, q.space, q.data, q.compute);
  EXPECT_TRUE(torch::allclose(as_model.log_prob(u), fixed.log_prob(u), 1e-12, 1e-9));
  // Its shapes and values are checked.
  q.data.model_noise.inverse_exposure = torch::zeros({24, 23}, torch::kFloat64);
  EXPECT_THROW(LensPosterior(q.spec, q.space, q.data, q.compute), InvalidArgument);
  q.data.model_noise = {torch::zeros({24, 24}, torch::kFloat64),
                        torch::zeros({24, 24}, torch::kFloat64)};
  EXPECT_THROW(LensPosterior(q.spec, q.space, q.data, q.compute), InvalidArgument);
}

// The bias that motivates "poisson_term": "model" (docs/fit.md, "The noise: a Poisson term from
// the model"). A faint Sersic whose noise is Poisson-dominated (var = 0.3^2 + m / 2; its peak
// m = 4.4 has SNR 2.9), 32 noise draws fitted as one batch for its amplitude alone. sigma fixed
// from the image (a pixel that fluctuated low gets more weight) gives amplitudes far too low
// (-62 %); sigma from the model with its normalisation is unbiased within the draws' standard
// error; the model's sigma in the chi-square alone (lenstronomy's ImageData.log_likelihood) gives
// them too high (+39 %).
TEST(LensPosterior, PoissonTermFromTheModelLeavesAFaintSourceUnbiased) {
  const int64_t n = 32, L = 32;
  const double amp = 100.0, b = 0.3 * 0.3, k = 0.5;
  const Compute compute{torch::kCPU, torch::kFloat64};
  LensModelSpec spec;
  spec.grid = physics::PixelGrid::centered(n, n, 0.1);
  spec.lens_light.push_back(dslens::testing::round_sersic("amp", "R", "n_s", "zero"));
  ParameterSpace space;
  space.add_free("amp", Prior::uniform(0.05 * amp, 3.0 * amp));
  space.add_fixed("R", 0.6);
  space.add_fixed("n_s", 1.0);
  space.add_fixed("zero", 0.0);
  ImagingData one{torch::zeros({n, n}, torch::kFloat64), torch::ones({n, n}, torch::kFloat64),
                  torch::ones({n, n}, torch::kBool)};
  const auto at = [&](const torch::Tensor& a) { return space.pack({{"amp", a}}); };
  const auto clean = LensPosterior(spec, space, one, compute)
                         .model_image(space.unpack(at(torch::tensor({amp}))))[0];
  torch::Generator gen = at::detail::createCPUGenerator(33);
  const auto var = b + clean.clamp_min(0) * k;
  const auto images = clean + torch::sqrt(var) * torch::randn({L, n, n}, gen, torch::kFloat64);
  const auto mask = torch::ones({L, n, n}, torch::kBool);
  // Each lens's maximum-likelihood amplitude in [0.1, 2] x amp, by golden-section search on all
  // lenses at once (one row per lens); the likelihood is unimodal in it.
  const auto fitted = [&](const ImagingData& data, bool chi_square_only = false) {
    const LensPosterior post(spec, space, data, compute);
    const double g = (std::sqrt(5.0) - 1.0) / 2.0;
    auto lo = torch::full({L}, 0.1 * amp, torch::kFloat64);
    auto hi = torch::full({L}, 2.0 * amp, torch::kFloat64);
    const auto objective = [&](const torch::Tensor& a) {
      return chi_square_only ? -0.5 * post.chi_square(at(a)) : post.log_likelihood(at(a));
    };
    for (int it = 0; it < 60; ++it) {
      const auto c = hi - g * (hi - lo), d = lo + g * (hi - lo);
      const auto left = objective(c) > objective(d);
      hi = torch::where(left, d, hi);
      lo = torch::where(left, lo, c);
    }
    return 0.5 * (lo + hi) / amp - 1.0;  // [L] relative error
  };
  const auto from_image = fitted({images, torch::sqrt(b + images.clamp_min(0) * k), mask});
  ImagingData model_data{images, torch::ones({L, n, n}, torch::kFloat64), mask};
  model_data.model_noise = {torch::full({L, n, n}, b, torch::kFloat64),
                            torch::full({L, n, n}, k, torch::kFloat64)};
  const auto from_model = fitted(model_data);
  const double se = (from_model.std() / std::sqrt(double(L))).item<double>();
  const double bias_image = from_image.mean().item<double>();
  const double bias_model = from_model.mean().item<double>();
  EXPECT_LT(bias_image, -0.3) << "image-based sigma, se " << se;
  EXPECT_LT(std::abs(bias_model), 3 * se) << "model-based sigma";
  EXPECT_GT(fitted(model_data, true).mean().item<double>(), 0.2) << "chi-square alone";
}

// Near a stiff mode a step's gain falls below the log posterior's rounding, and Armijo's test
// passes or fails by chance. With the Poisson term from the model (40 x 40 pixels, Poisson-
// dominated, source position sd about 1e-3"), L-BFGS's starts went on for all 200 iterations,
// backtracking about 24 times in each: 39,104 rows. It now stops a start whose steps needed ten
// halvings and gained only rounding, three iterations running (samplers/src/optimize.cpp): every
// start ends at the same mode, in a thirtieth of the rows.
TEST(LensPosterior, ModelNoiseMapStartsStopAtTheModeInsteadOfBacktrackingOnRounding) {
  SmallProblem p(40, 0.08, 20.0, 1.0);
  p.truth["theta_E"] = 1.0;
  const auto clean = LensPosterior(p.spec, p.space, p.data, p.compute)
                         .model_image(p.space.unpack(p.truth_u()))[0]
                         .detach();
  torch::Generator gen = at::detail::createCPUGenerator(5);
  const double b = 0.01, k = 1.0 / 50;
  p.data.image = clean + torch::sqrt(b + clean.clamp_min(0) * k) *
                             torch::randn({40, 40}, gen, torch::kFloat64);
  p.data.model_noise = {torch::full({40, 40}, b, torch::kFloat64),
                        torch::full({40, 40}, k, torch::kFloat64)};
  const LensPosterior post(p.spec, p.space, p.data, p.compute);
  const auto starts = p.space.sample_prior(8, torch::kFloat64, gen);
  samplers::AdamSettings adam;
  adam.max_iterations = 300;
  const auto a = samplers::maximize_adam(post.log_density(), starts, adam);
  samplers::LbfgsSettings lbfgs;
  lbfgs.max_iterations = 200;
  const auto r = samplers::maximize_lbfgs(post.log_density(), a.x, lbfgs);
  EXPECT_LT(r.rows_evaluated, 4000);
  EXPECT_LT(r.iterations.max().item<int64_t>(), 100);
  EXPECT_LT((r.log_p.max() - r.log_p.min()).item<double>(), 1e-8) << r.log_p;
  EXPECT_LT(r.grad_norm.max().item<double>(), 1e-4);
}

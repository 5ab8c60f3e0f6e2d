// Noise maps and noise realisations: formula, reproducibility by seed (across dtypes and devices),
// and the right statistics (Gaussian background, exact Poisson counts, Gaussian large-count limit).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <utility>

#include "dslens/core/errors.h"
#include "dslens/physics/image_model.h"

namespace dslens::physics {

TEST(Noise, NoiseMapFormula) {
  auto model = torch::tensor({{-1.0, 0.0, 2.0, 50.0}}, torch::kFloat64);
  NoiseModel nm{0.1, 20.0};
  auto sigma = noise_map(model, nm);
  auto expected =
      torch::sqrt(0.01 + torch::tensor({{0.0, 0.0, 2.0, 50.0}}, torch::kFloat64) / 20.0);
  EXPECT_TRUE(torch::allclose(sigma, expected, 1e-15, 0));
  auto bg_only = noise_map(model, NoiseModel{0.1, 0.0});
  EXPECT_TRUE(torch::allclose(bg_only, torch::full_like(model, 0.1), 0, 0));
  EXPECT_THROW(noise_map(model, NoiseModel{-1.0, 0.0}), dslens::InvalidArgument);
}

TEST(Noise, ReproducibleBySeedAcrossDtypesAndDevices) {
  // Values exact in float32, so that both dtypes draw from the same expected counts.
  auto model = (torch::rand({2, 32, 32}, torch::kFloat64) * 3 * 1024).round() / 1024;
  NoiseModel nm{0.2, 50.0};
  auto a = add_noise(model, nm, 1234);
  auto b = add_noise(model, nm, 1234);
  auto c = add_noise(model, nm, 1235);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_GT((a - c).abs().max().item<double>(), 0.01);
  auto a32 = add_noise(model.to(torch::kFloat32), nm, 1234);
  EXPECT_EQ(a32.scalar_type(), torch::kFloat32);
  EXPECT_LT((a32.to(torch::kFloat64) - a).abs().max().item<double>(), 1e-5);
  if (torch::cuda::is_available()) {
    auto g = add_noise(model.to(torch::kCUDA), nm, 1234);
    EXPECT_TRUE(g.is_cuda());
    EXPECT_TRUE(torch::equal(g.cpu(), a));
  }
}

TEST(Noise, StatisticsMatchTheNoiseMap) {
  const int64_t n = 256;
  // Gaussian background + exact Poisson (500 expected counts per pixel), and the Gaussian
  // large-count branch (1e5 counts per pixel). The standardised residuals must have mean 0 and
  // variance 1: with 65536 pixels the standard errors are 0.004 and 0.0055; allow 5 of them.
  for (double level : {5.0, 1000.0}) {
    auto model = torch::full({1, n, n}, level, torch::kFloat64);
    NoiseModel nm{0.3, 100.0};
    auto z = (add_noise(model, nm, 99) - model) / noise_map(model, nm);
    EXPECT_NEAR(z.mean().item<double>(), 0.0, 0.02) << level;
    EXPECT_NEAR(z.var().item<double>(), 1.0, 0.028) << level;
  }
  // Background only.
  auto zero = torch::zeros({1, n, n}, torch::kFloat64);
  auto bg = add_noise(zero, NoiseModel{0.5, 0.0}, 3);
  EXPECT_NEAR(bg.std().item<double>(), 0.5, 0.5 * 0.028);
}

TEST(Noise, PoissonCountsAreIntegers) {
  // Without background, t_exp * (model + noise) are Poisson counts: integers, mean = variance
  // = 1.4.
  const double t = 2.0;
  auto model = torch::full({1, 200, 200}, 0.7, torch::kFloat64);
  auto counts = add_noise(model, NoiseModel{0.0, t}, 5) * t;
  EXPECT_LT((counts - counts.round()).abs().max().item<double>(), 1e-12);
  EXPECT_GE(counts.min().item<double>(), 0.0);
  EXPECT_NEAR(counts.mean().item<double>(), 1.4, 5 * std::sqrt(1.4 / 40000));
  EXPECT_NEAR(counts.var().item<double>(), 1.4, 0.05);
  // Negative model values draw no Poisson counts.
  auto neg = add_noise(torch::full({1, 10, 10}, -3.0, torch::kFloat64), NoiseModel{0.0, t}, 5);
  EXPECT_TRUE(torch::equal(neg, torch::full({1, 10, 10}, -3.0, torch::kFloat64)));
}

TEST(Noise, DifferentiableInTheModel) {
  auto model = torch::rand({1, 8, 8}, torch::kFloat64).requires_grad_(true);
  auto noisy = add_noise(model, NoiseModel{0.1, 10.0}, 1);
  auto g = torch::autograd::grad({noisy.sum()}, {model})[0];
  EXPECT_TRUE(torch::allclose(g, torch::ones_like(g)));
}

// The correlation kernel: a Gaussian of the given FWHM (neighbour ratio exp(-1 / (2 sd^2))),
// normalised to a sum of squares of 1; FWHM 0 is the identity; out of range is an error.
TEST(Noise, CorrelationKernelIsAGaussianOfUnitSumOfSquares) {
  const double fwhm = 1.5, sd = fwhm / (2.0 * std::sqrt(2.0 * std::log(2.0)));
  const auto k = noise_correlation_kernel(fwhm);
  ASSERT_EQ(k.dim(), 2);
  ASSERT_EQ(k.size(0) % 2, 1);
  const int64_t c = k.size(0) / 2;
  EXPECT_NEAR(k.square().sum().item<double>(), 1.0, 1e-12);
  EXPECT_NEAR((k[c][c + 1] / k[c][c]).item<double>(), std::exp(-0.5 / (sd * sd)), 1e-12);
  EXPECT_NEAR((k[c + 2][c + 1] / k[c][c]).item<double>(), std::exp(-2.5 / (sd * sd)), 1e-12);
  EXPECT_TRUE(torch::allclose(k, k.t(), 0, 0));
  EXPECT_TRUE(torch::equal(noise_correlation_kernel(0.0), torch::ones({1, 1}, torch::kFloat64)));
  EXPECT_THROW(noise_correlation_kernel(-1.0), dslens::InvalidArgument);
  EXPECT_THROW(noise_correlation_kernel(11.0), dslens::InvalidArgument);
}

// Correlated noise keeps each pixel's variance, in the interior and at the corners (renormalised
// there), and neighbouring pixels correlate as the kernel's autocorrelation sum_ij k(i,j) k(i,j+1)
// (and diagonally k(i,j) k(i+1,j+1)), summed here by hand over the kernel. 4096 images of 8x8:
// variance standard errors 0.022 per pixel position; correlations' about 1 / sqrt(4096).
TEST(Noise, CorrelatedNoiseKeepsThePixelVarianceAndCorrelatesAsTheKernel) {
  const double fwhm = 1.5;
  const auto k = noise_correlation_kernel(fwhm);
  const auto ka = k.accessor<double, 2>();
  const int64_t m = k.size(0);
  double along = 0.0, diagonal = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j + 1 < m; ++j) {
      along += ka[i][j] * ka[i][j + 1];
      if (i + 1 < m) diagonal += ka[i][j] * ka[i + 1][j + 1];
    }
  }
  const int64_t b = 4096, n = 8;
  const auto model = torch::zeros({b, n, n}, torch::kFloat64);
  NoiseModel nm{0.5, 0.0, fwhm};
  const auto z = add_noise(model, nm, 17) / 0.5;
  const auto var = z.square().mean(0);  // [n, n], the mean is 0
  const double se = std::sqrt(2.0 / b);
  for (auto [i, j] : {std::pair<int64_t, int64_t>{0, 0}, {0, n - 1}, {n - 1, 0}, {3, 4}, {0, 4}}) {
    EXPECT_NEAR(var[i][j].item<double>(), 1.0, 4 * se) << i << "," << j;
  }
  const auto interior = z.slice(1, 2, 6).slice(2, 2, 6);
  const auto right = z.slice(1, 2, 6).slice(2, 3, 7);
  const auto below = z.slice(1, 3, 7).slice(2, 2, 6);
  const auto diag = z.slice(1, 3, 7).slice(2, 3, 7);
  EXPECT_GT(along, 0.3);  // FWHM 1.5 px correlates neighbours strongly: the test can tell
  EXPECT_NEAR((interior * right).mean().item<double>(), along, 0.02);
  EXPECT_NEAR((interior * below).mean().item<double>(), along, 0.02);
  EXPECT_NEAR((interior * diag).mean().item<double>(), diagonal, 0.02);
  // Without correlation, neighbours are independent.
  const auto w = add_noise(model, NoiseModel{0.5, 0.0}, 17) / 0.5;
  EXPECT_NEAR((w.slice(2, 0, n - 1) * w.slice(2, 1, n)).mean().item<double>(), 0.0, 0.01);
  // The same seed draws the same correlated noise.
  EXPECT_TRUE(torch::equal(add_noise(model, nm, 17), add_noise(model, nm, 17)));
}

// The kernel's lag-1 correlation in closed form (the separable sum) equals the one summed by hand
// over the whole 2-d kernel, for several widths; its inverse gives back each width, rises with the
// correlation, and refuses a correlation no kernel up to FWHM 10 px reaches.
TEST(Noise, CorrelationFwhmIsRecoveredFromTheLag1Correlation) {
  double previous = -1.0;
  for (const double fwhm : {0.8, 1.0, 1.35, 1.5, 2.5, 6.0}) {
    const auto k = noise_correlation_kernel(fwhm);
    const auto ka = k.accessor<double, 2>();
    double along = 0.0;
    for (int64_t i = 0; i < k.size(0); ++i) {
      for (int64_t j = 0; j + 1 < k.size(1); ++j) along += ka[i][j] * ka[i][j + 1];
    }
    EXPECT_NEAR(noise_correlation_lag1(fwhm), along, 1e-12) << fwhm;
    EXPECT_GT(along, previous);
    previous = along;
    EXPECT_NEAR(noise_correlation_fwhm_for_lag1(along), fwhm, 1e-6) << along;
  }
  EXPECT_EQ(noise_correlation_lag1(0.0), 0.0);
  EXPECT_EQ(noise_correlation_fwhm_for_lag1(0.0), 0.0);
  EXPECT_EQ(noise_correlation_fwhm_for_lag1(-0.05), 0.0);  // a measured anticorrelation: none
  EXPECT_THROW(noise_correlation_fwhm_for_lag1(0.99), dslens::InvalidArgument);
}

}  // namespace dslens::physics

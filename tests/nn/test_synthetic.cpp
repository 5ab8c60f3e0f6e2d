#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "dslens/core/config.h"
#include "dslens/core/errors.h"
#include "dslens/nn/synthetic_galaxies.h"

namespace dslens::nn::test_synthetic_detail {

// Rotational asymmetry sum|I - rot180(I)| / sum|I| per stamp (rotation about the stamp centre).
torch::Tensor asymmetry(const torch::Tensor& x) {
  const auto r = torch::rot90(x, 2, {1, 2});
  return (x - r).abs().sum({1, 2}) / x.abs().sum({1, 2});
}

// Number of local maxima (brighter than all 8 neighbours) above 5% of the peak, per stamp.
torch::Tensor local_maxima(const torch::Tensor& x) {
  const auto pooled = torch::max_pool2d(x.unsqueeze(1), {3, 3}, {1, 1}, {1, 1}).squeeze(1);
  const auto peak = std::get<0>(x.flatten(1).max(1)).view({-1, 1, 1});
  return ((x == pooled) & (x > 0.05 * peak)).sum({1, 2});
}

// Second moment of the light along the columns, per stamp.
torch::Tensor column_variance(const torch::Tensor& x) {
  const int64_t S = x.size(-1);
  const auto c = torch::arange(S, x.options()).view({1, 1, S});
  const auto f = x.sum({1, 2});
  const auto m = (x * c).sum({1, 2}) / f;
  return (x * c * c).sum({1, 2}) / f - m * m;
}

SyntheticConfig blob() {
  SyntheticConfig c;
  c.clumps = {0, 0};
  c.spiral_probability = 0.0;
  return c;
}

}  // namespace dslens::nn::test_synthetic_detail

namespace tsd = dslens::nn::test_synthetic_detail;

TEST(SyntheticGalaxies, ReproducibleBySeedAndDifferentAcrossSeeds) {
  dslens::nn::SyntheticConfig cfg;
  cfg.noise_sigma = 0.02;
  const auto a = dslens::nn::generate_synthetic_galaxies(cfg, 12, 32, 7);
  const auto b = dslens::nn::generate_synthetic_galaxies(cfg, 12, 32, 7);
  const auto c = dslens::nn::generate_synthetic_galaxies(cfg, 12, 32, 8);
  ASSERT_EQ(a.sizes(), (std::vector<int64_t>{12, 32, 32}));
  EXPECT_EQ(a.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_GT((a - c).abs().max().item<double>(), 1e-3);
  // Different galaxies within one set, too.
  EXPECT_GT((a[0] - a[1]).abs().max().item<double>(), 1e-3);
}

TEST(SyntheticGalaxies, CleanStampsArePositiveWithUnitFlux) {
  dslens::nn::SyntheticConfig cfg;
  const auto x = dslens::nn::generate_synthetic_galaxies(cfg, 32, 48, 1);
  EXPECT_TRUE(torch::isfinite(x).all().item<bool>());
  EXPECT_GE(x.min().item<double>(), 0.0);
  const auto flux = x.sum({1, 2});
  // Unit flux up to what the profiles' wings lose beyond the stamp edge.
  EXPECT_LE(flux.max().item<double>(), 1.0 + 1e-4);  // clumps' sampled sum ~ integral
  EXPECT_GT(flux.min().item<double>(), 0.9);
}

TEST(SyntheticGalaxies, MorphologyIsClumpyAndAsymmetricUnlikeABlob) {
  const auto blob = dslens::nn::generate_synthetic_galaxies(tsd::blob(), 32, 49, 3);
  const auto gal =
      dslens::nn::generate_synthetic_galaxies(dslens::nn::SyntheticConfig{}, 64, 49, 3);
  const auto a_blob = tsd::asymmetry(blob);
  const auto a_gal = tsd::asymmetry(gal);
  // Bulge + disk alone is point-symmetric about the centre.
  EXPECT_LT(a_blob.max().item<double>(), 1e-9);
  EXPECT_GT(a_gal.median().item<double>(), 0.15);
  EXPECT_GT(std::get<0>(a_gal.sort()).select(0, 6).item<double>(), 0.03);  // 10th percentile
  // Clumps: several bright knots where a bulge + disk has one maximum.
  const auto m_blob = tsd::local_maxima(blob);
  const auto m_gal = tsd::local_maxima(gal).to(torch::kFloat64);
  EXPECT_EQ(m_blob.max().item<int64_t>(), 1);
  EXPECT_EQ(m_blob.min().item<int64_t>(), 1);
  EXPECT_GT(m_gal.mean().item<double>(), 2.0);
  EXPECT_GT((m_gal >= 2).to(torch::kFloat64).mean().item<double>(), 0.6);
}

TEST(SyntheticGalaxies, OneArmedSpiralsBreakPointSymmetry) {
  auto cfg = tsd::blob();
  cfg.spiral_probability = 1.0;
  cfg.spiral_arms = {1, 1};
  cfg.spiral_amplitude = {0.8, 0.8};
  cfg.bulge_fraction = {0.0, 0.0};
  const auto x = dslens::nn::generate_synthetic_galaxies(cfg, 16, 48, 5);
  EXPECT_GT(tsd::asymmetry(x).min().item<double>(), 0.05);
  // Two arms keep point symmetry (cos(2(theta + pi)) = cos(2 theta)).
  cfg.spiral_arms = {2, 2};
  const auto y = dslens::nn::generate_synthetic_galaxies(cfg, 16, 48, 5);
  EXPECT_LT(tsd::asymmetry(y).max().item<double>(), 1e-9);
}

TEST(SyntheticGalaxies, NoiseAndPsfHaveTheRequestedSize) {
  auto cfg = tsd::blob();
  cfg.disk_radius = {0.04, 0.05};
  cfg.bulge_radius = {0.02, 0.03};
  cfg.bulge_sersic_n = {1.0, 1.5};  // steep wings: nothing lost off the stamp when blurred
  cfg.disk_sersic_n = {0.6, 1.0};
  const auto clean = dslens::nn::generate_synthetic_galaxies(cfg, 16, 64, 9);
  cfg.noise_sigma = 0.05;
  const auto noisy = dslens::nn::generate_synthetic_galaxies(cfg, 16, 64, 9);
  const auto peak = std::get<0>(clean.flatten(1).max(1));
  const auto rel = ((noisy - clean).flatten(1).std(1) / peak);
  EXPECT_NEAR(rel.mean().item<double>(), 0.05, 0.003);
  cfg.noise_sigma = 0.0;
  cfg.psf_fwhm_pixels = 4.0;
  const auto blurred = dslens::nn::generate_synthetic_galaxies(cfg, 16, 64, 9);
  // Second moments add under convolution: var + sigma_psf^2.
  const double s = 4.0 / (2.0 * std::sqrt(2.0 * std::log(2.0)));
  const auto dv = tsd::column_variance(blurred) - tsd::column_variance(clean);
  EXPECT_NEAR(dv.mean().item<double>(), s * s, 0.03 * s * s);
  EXPECT_LT(blurred.max().item<double>(), clean.max().item<double>());
}

TEST(SyntheticGalaxies, ConfigErrorsNameThePath) {
  auto fails_with = [](const nlohmann::json& j, const std::string& path) {
    try {
      dslens::nn::parse_synthetic_config(dslens::ConfigNode(j, "/data/synthetic"));
    } catch (const dslens::ConfigError& e) {
      EXPECT_EQ(e.path(), path) << e.what();
      return;
    }
    ADD_FAILURE() << "no ConfigError for " << j.dump();
  };
  fails_with({{"clump", 3}}, "/data/synthetic/clump");
  fails_with({{"clumps", {5, 2}}}, "/data/synthetic/clumps");
  fails_with({{"clumps", {1.5, 2}}}, "/data/synthetic/clumps");
  fails_with({{"disk_radius", {0.1}}}, "/data/synthetic/disk_radius");
  fails_with({{"disk_axis_ratio", {0.0, 0.5}}}, "/data/synthetic/disk_axis_ratio/0");
  fails_with({{"noise_sigma", -1}}, "/data/synthetic/noise_sigma");
  const auto cfg = dslens::nn::parse_synthetic_config(dslens::ConfigNode(
      nlohmann::json{{"clumps", {0, 3}}, {"disk_radius", 0.1}, {"psf_fwhm_pixels", 2}},
      "/data/synthetic"));
  EXPECT_EQ(cfg.clumps, (std::pair<int64_t, int64_t>{0, 3}));
  EXPECT_EQ(cfg.disk_radius.lo, 0.1);
  EXPECT_EQ(cfg.disk_radius.hi, 0.1);
  EXPECT_EQ(dslens::nn::describe(cfg).at("psf_fwhm_pixels").get<double>(), 2.0);
  EXPECT_THROW(dslens::nn::generate_synthetic_galaxies(cfg, 0, 32, 0), dslens::InvalidArgument);
}

// The FITS inputs shipped in configs/data/ are made by the deterministic generators below:
//   DSLENS_REGENERATE_DATA=1 build/tests/dslens_app_tests --gtest_filter='SimulateData.*'
// rewrites them; otherwise the tests check that the files are what the generators make.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "dslens/core/fits.h"

namespace {

const std::string kDataDir = std::string(DSLENS_SOURCE_DIR) + "/configs/data";

torch::Tensor sersic(const torch::Tensor& u, const torch::Tensor& v, double r_e, double n, double q,
                     double phi, double amp) {
  const double c = std::cos(phi), s = std::sin(phi);
  auto a = u * c + v * s;
  auto b = -u * s + v * c;
  auto r = torch::sqrt(q * a * a + b * b / q + 1e-12);
  const double bn = 1.9992 * n - 0.3271;
  return amp * torch::exp(-bn * (torch::pow(r / r_e, 1.0 / n) - 1.0));
}

// A 64x64 galaxy (surface brightness, peak ~1): bulge + exponential disc + star-forming clumps
// along two spiral arms, tapered to zero at the edges.
torch::Tensor source_galaxy() {
  const int64_t n = 64;
  auto r = torch::arange(n, torch::kFloat64) - 0.5 * (n - 1);
  auto u = r.unsqueeze(0).expand({n, n});  // columns: x
  auto v = r.unsqueeze(1).expand({n, n});  // rows: y
  auto img = sersic(u, v, 3.0, 1.5, 0.85, 0.4, 0.08) + sersic(u, v, 9.0, 1.0, 0.55, 0.5, 0.12);
  for (int arm = 0; arm < 2; ++arm) {
    for (int k = 0; k < 6; ++k) {
      const double rad = 5.0 + 3.2 * k;
      const double ang = 0.5 + arm * 3.141592653589793 + 0.55 * k;
      const double cx = rad * std::cos(ang), cy = 0.6 * rad * std::sin(ang);
      const double sigma = 1.2 + 0.15 * k, amp = 0.25 - 0.025 * k + 0.05 * ((k + arm) % 2);
      img = img +
            amp * torch::exp(-((u - cx) * (u - cx) + (v - cy) * (v - cy)) / (2.0 * sigma * sigma));
    }
  }
  auto rr = torch::sqrt(u * u + v * v);
  auto taper = torch::clamp((31.5 - rr) / 7.0, 0.0, 1.0);
  img = img * taper * taper * (3.0 - 2.0 * taper);  // smoothstep
  return img / img.max();
}

// A 15x15 Moffat kernel (beta = 2.5), FWHM 0.09" on 0.05" pixels, normalised.
torch::Tensor psf_hst_like() {
  const int64_t n = 15;
  const double fwhm_px = 0.09 / 0.05, beta = 2.5;
  const double alpha = fwhm_px / (2.0 * std::sqrt(std::pow(2.0, 1.0 / beta) - 1.0));
  auto r = torch::arange(n, torch::kFloat64) - (n - 1) / 2;
  auto r2 = r.unsqueeze(0).square() + r.unsqueeze(1).square();
  auto k = torch::pow(1.0 + r2 / (alpha * alpha), -beta);
  return k / k.sum();
}

void check_or_write(const std::string& name, const torch::Tensor& expected) {
  const std::string path = kDataDir + "/" + name;
  if (std::getenv("DSLENS_REGENERATE_DATA")) {
    std::filesystem::create_directories(kDataDir);
    dslens::write_fits_image(path, expected, {{"ORIGIN", std::string("dslens tests/app"), ""}},
                             /*as_float32=*/true);
  }
  ASSERT_TRUE(std::filesystem::exists(path)) << path << " is missing; regenerate it (see top)";
  const auto got = dslens::read_fits_image(path);
  ASSERT_EQ(got.sizes(), expected.sizes());
  // Stored as float32.
  EXPECT_LT((got - expected).abs().max().item<double>(),
            1e-6 * expected.abs().max().item<double>());
}

}  // namespace

TEST(SimulateData, SourceGalaxyIsTheGeneratorsOutput) {
  const auto img = source_galaxy();
  EXPECT_NEAR(img.max().item<double>(), 1.0, 1e-12);
  EXPECT_GE(img.min().item<double>(), 0.0);
  // Zero at the edges, so that INTERPOL's zero border adds no step.
  EXPECT_EQ(img.index({0}).abs().max().item<double>(), 0.0);
  check_or_write("source_galaxy.fits", img);
}

TEST(SimulateData, HstLikePsfIsTheGeneratorsOutput) {
  const auto k = psf_hst_like();
  EXPECT_NEAR(k.sum().item<double>(), 1.0, 1e-12);
  // Symmetric and peaked in the centre.
  EXPECT_TRUE(torch::allclose(k, k.flip({0})));
  EXPECT_TRUE(torch::allclose(k, k.t()));
  EXPECT_EQ(k.argmax().item<int64_t>(), 7 * 15 + 7);
  check_or_write("psf_hst_like.fits", k);
}

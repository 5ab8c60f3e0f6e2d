// VAE network, losses and checkpoints.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "dslens/core/errors.h"
#include "dslens/nn/checkpoint.h"
#include "dslens/nn/vae.h"
#include "test_support.h"

namespace fs = std::filesystem;
using dslens::nn::Vae;
using dslens::nn::VaeArch;

namespace test_vae_detail {

VaeArch small_arch() {
  VaeArch a;
  a.stamp_size = 16;
  a.latent_dim = 4;
  a.channels = {4, 8};
  a.groups = 2;
  return a;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

}  // namespace test_vae_detail

using namespace test_vae_detail;

TEST(Vae, Shapes) {
  torch::manual_seed(0);
  Vae vae(small_arch());
  auto x = torch::rand({3, 16, 16}, torch::kFloat64);
  auto [mean, logvar] = vae->encode(x);
  EXPECT_EQ(mean.sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(logvar.sizes(), (std::vector<int64_t>{3, 4}));
  auto out = vae->forward(x, torch::randn({3, 4}));
  EXPECT_EQ(out.z.sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(out.recon.sizes(), (std::vector<int64_t>{3, 16, 16}));
  EXPECT_EQ(vae->decode(torch::zeros({5, 4})).sizes(), (std::vector<int64_t>{5, 16, 16}));
  // float64 through .to(dtype)
  vae->to(torch::kFloat64);
  EXPECT_EQ(vae->decode(torch::zeros({2, 4}, torch::kFloat64)).scalar_type(), torch::kFloat64);
  EXPECT_THROW(vae->decode(torch::zeros({2, 5}, torch::kFloat64)), dslens::InvalidArgument);
  EXPECT_THROW(vae->encode(torch::zeros({2, 8, 8})), dslens::InvalidArgument);
  // Default architecture: 64x64 stamps, 64 latents.
  Vae big;
  EXPECT_EQ(big->decode(torch::zeros({1, 64})).sizes(), (std::vector<int64_t>{1, 64, 64}));
  // Stamp size must be divisible by 2^levels.
  VaeArch bad = small_arch();
  bad.stamp_size = 18;
  EXPECT_THROW(bad.validate(), dslens::InvalidArgument);
}

TEST(Vae, DecodeOfOneLatentDoesNotDependOnTheBatch) {
  torch::manual_seed(1);
  Vae vae(small_arch());
  vae->to(torch::kFloat64);
  vae->eval();
  auto z = torch::randn({4, 4}, torch::kFloat64);
  auto all = vae->decode(z);
  auto one = vae->decode(z.narrow(0, 2, 1));
  EXPECT_TRUE(torch::allclose(all[2], one[0], 1e-12, 1e-12));
}

TEST(Vae, KlMatchesClosedForm) {
  auto mean = torch::tensor({{0.5, -1.0}, {0.0, 0.0}}, torch::kFloat64);
  auto logvar = torch::tensor({{std::log(2.0), std::log(0.25)}, {0.0, 0.0}}, torch::kFloat64);
  auto kl = dslens::nn::kl_to_standard_normal(mean, logvar);
  // 0.5 (s^2 + m^2 - 1 - log s^2) per dimension
  const double k0 =
      0.5 * (2.0 + 0.25 - 1.0 - std::log(2.0)) + 0.5 * (0.25 + 1.0 - 1.0 - std::log(0.25));
  EXPECT_NEAR(kl[0].item<double>(), k0, 1e-12);
  EXPECT_NEAR(kl[1].item<double>(), 0.0, 1e-15);

  // Monte-Carlo check of the same KL: E_q[log q - log p].
  torch::manual_seed(3);
  auto eps = torch::randn({400000, 2}, torch::kFloat64);
  auto sd = torch::exp(0.5 * logvar[0]);
  auto z = mean[0] + sd * eps;
  auto log_q = (-0.5 * eps.pow(2) - torch::log(sd)).sum(1);
  auto log_p = (-0.5 * z.pow(2)).sum(1);
  EXPECT_NEAR((log_q - log_p).mean().item<double>(), k0, 0.01);
}

TEST(Vae, ElboTermsOfAPerfectReconstruction) {
  dslens::nn::VaeOutput out;
  out.mean = torch::zeros({2, 3}, torch::kFloat64);
  out.logvar = torch::zeros({2, 3}, torch::kFloat64);
  auto x = torch::rand({2, 4, 4}, torch::kFloat64);
  out.recon = x.clone();
  dslens::nn::PixelNorm norm;
  norm.scale = 2.0;
  auto t = dslens::nn::elbo_terms(out, x, norm, 0.1, 1.0);
  const double expected = 16 * (std::log(0.1) + 0.5 * std::log(2 * 3.141592653589793));
  EXPECT_NEAR(t.recon.item<double>(), expected, 1e-10);
  EXPECT_NEAR(t.kl.item<double>(), 0.0, 1e-15);
  // A residual of 0.2 (data units) = 0.1 normalised = 1 sigma on every pixel: + 16 / 2 nats.
  out.recon = x + 0.2;
  t = dslens::nn::elbo_terms(out, x, norm, 0.1, 2.0);
  EXPECT_NEAR(t.recon.item<double>(), expected + 8.0, 1e-9);
  EXPECT_NEAR(t.mse.item<double>(), 0.04, 1e-12);
}

// decode_with_total: every stamp rescaled to the total, differentiably (the lensed VAE source's
// flux is then its amplitude's alone); median_prior_total: the median of the prior's totals.
TEST(Vae, DecodeWithTotalRescalesEachStampAndKeepsItsGradient) {
  torch::manual_seed(5);
  // An offset keeps the untrained decoder's totals positive (about 256 x 0.5).
  Vae vae(small_arch(), dslens::nn::PixelNorm{0.5, 0.2});
  vae->to(torch::kFloat64);
  vae->eval();
  auto z = torch::randn({3, 4}, torch::kFloat64);
  const auto raw = vae->decode(z).detach();
  const auto scaled = vae->decode_with_total(z, 7.5).detach();
  EXPECT_TRUE(
      torch::allclose(scaled.sum({1, 2}), torch::full({3}, 7.5, torch::kFloat64), 0.0, 1e-12));
  // The same shape: one factor per stamp, 7.5 / its raw total.
  const auto factor = (7.5 / raw.sum({1, 2})).view({3, 1, 1});
  EXPECT_TRUE(torch::allclose(scaled, raw * factor, 1e-12, 1e-14));

  auto w = torch::randn({3, 16, 16}, torch::kFloat64);
  auto f = [&](const torch::Tensor& zz) { return (vae->decode_with_total(zz, 7.5) * w).sum(); };
  auto zg = z.clone().requires_grad_(true);
  const auto grad = torch::autograd::grad({f(zg)}, {zg})[0];
  const double h = 1e-6;
  torch::NoGradGuard guard;
  double largest = 0.0;
  for (int64_t b = 0; b < 3; ++b) {
    for (int64_t k = 0; k < 4; ++k) {
      auto zp = z.clone(), zm = z.clone();
      zp[b][k] += h;
      zm[b][k] -= h;
      const double fd = (f(zp).item<double>() - f(zm).item<double>()) / (2 * h);
      largest = std::max(largest, std::abs(fd));
      EXPECT_NEAR(grad[b][k].item<double>(), fd, 1e-6 * std::max(1.0, std::abs(fd)));
    }
  }
  EXPECT_GT(largest, 1e-3);  // the normalised stamp does depend on z
  EXPECT_THROW(vae->decode_with_total(z, 0.0), dslens::InvalidArgument);
  EXPECT_THROW(vae->decode_with_total(z, NAN), dslens::InvalidArgument);

  // The median total of 9 prior stamps drawn with seed 3, computed here from sample().
  auto gen = at::detail::createCPUGenerator(3);
  const auto totals = vae->sample(9, gen).sum({1, 2});
  const double median = std::get<0>(totals.sort()).select(0, 4).item<double>();
  EXPECT_DOUBLE_EQ(vae->median_prior_total(9, 3), median);
  EXPECT_DOUBLE_EQ(vae->median_prior_total(9, 3), vae->median_prior_total(9, 3));
  EXPECT_NE(vae->median_prior_total(9, 4), median);
  // source_flux_total: the default median (256 draws, seed 0), refused when not positive.
  EXPECT_DOUBLE_EQ(vae->source_flux_total(), vae->median_prior_total());
  vae->set_pixel_norm(dslens::nn::PixelNorm{-0.5, 0.2});
  EXPECT_THROW(vae->source_flux_total(), dslens::InvalidArgument);
}

TEST(Vae, DecoderGradientMatchesFiniteDifferences) {
  torch::manual_seed(4);
  Vae vae(small_arch(), dslens::nn::PixelNorm{0.1, 3.0});
  vae->to(torch::kFloat64);
  vae->eval();
  auto w = torch::randn({2, 16, 16}, torch::kFloat64);
  auto z = torch::randn({2, 4}, torch::kFloat64).requires_grad_(true);
  auto f = [&](const torch::Tensor& zz) { return (vae->decode(zz) * w).sum(); };
  auto grad = torch::autograd::grad({f(z)}, {z})[0];
  const double h = 1e-6;
  torch::NoGradGuard guard;
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t k = 0; k < 4; ++k) {
      auto zp = z.detach().clone();
      auto zm = z.detach().clone();
      zp[b][k] += h;
      zm[b][k] -= h;
      const double fd = (f(zp).item<double>() - f(zm).item<double>()) / (2 * h);
      EXPECT_NEAR(grad[b][k].item<double>(), fd, 1e-6 * std::max(1.0, std::abs(fd)))
          << b << "," << k;
    }
  }
}

TEST(Checkpoint, SaveLoadGivesIdenticalOutputs) {
  const auto dir = dslens::testing::temp_dir("vae_ckpt");
  torch::manual_seed(5);
  Vae vae(small_arch(), dslens::nn::PixelNorm{0.0, 2.5});
  vae->eval();
  dslens::nn::save_checkpoint(dir, *vae, nullptr, 7, {{"source", "test"}}, {{"note", 1}});
  EXPECT_TRUE(fs::exists(fs::path(dir) / "checkpoint.json"));
  auto loaded = dslens::nn::load_vae(dir);
  EXPECT_EQ(loaded.meta.step, 7);
  EXPECT_EQ(loaded.meta.data["source"], "test");
  EXPECT_DOUBLE_EQ(loaded.vae->pixel_norm().scale, 2.5);
  auto z = torch::randn({3, 4});
  EXPECT_TRUE(torch::equal(vae->decode(z), loaded.vae->decode(z)));
  // Loading in float64 gives the same function to float32 precision.
  auto l64 = dslens::nn::load_vae(dir + "/checkpoint.json", {torch::kCPU, torch::kFloat64});
  EXPECT_TRUE(torch::allclose(l64.vae->decode(z.to(torch::kFloat64)).to(torch::kFloat32),
                              vae->decode(z), 1e-5, 1e-5));
  // A second checkpoint replaces the first one's archives.
  dslens::nn::save_checkpoint(dir, *vae, nullptr, 9, {}, {});
  int archives = 0;
  for (const auto& e : fs::directory_iterator(dir)) archives += e.path().extension() == ".pt";
  EXPECT_EQ(archives, 1);
  EXPECT_EQ(dslens::nn::read_checkpoint_meta(dir).step, 9);
}

TEST(Checkpoint, MismatchedOrMissingSidecarIsAFileError) {
  const auto dir = dslens::testing::temp_dir("vae_ckpt_bad");
  torch::manual_seed(6);
  Vae vae(small_arch());
  // Missing sidecar.
  EXPECT_THROW(dslens::nn::load_vae(dir), dslens::FileError);
  dslens::nn::save_checkpoint(dir, *vae, nullptr, 1, {}, {});
  const std::string sidecar = dir + "/checkpoint.json";
  const std::string good = read_text(sidecar);
  auto j = nlohmann::json::parse(good);

  // Latent dim that does not match the weights' shapes.
  j["architecture"]["latent_dim"] = 6;
  write_text(sidecar, j.dump());
  try {
    dslens::nn::load_vae(dir);
    FAIL() << "expected FileError";
  } catch (const dslens::FileError& e) {
    EXPECT_NE(std::string(e.what()).find("shape"), std::string::npos) << e.what();
  }
  // One level fewer: tensors missing / extra.
  j = nlohmann::json::parse(good);
  j["architecture"]["channels"] = {4};
  write_text(sidecar, j.dump());
  EXPECT_THROW(dslens::nn::load_vae(dir), dslens::FileError);
  // Corrupt sidecar.
  write_text(sidecar, good.substr(0, good.size() / 2));
  EXPECT_THROW(dslens::nn::load_vae(dir), dslens::FileError);
  // Not a checkpoint sidecar.
  write_text(sidecar, "{\"format\": \"other\"}");
  EXPECT_THROW(dslens::nn::load_vae(dir), dslens::FileError);
  // Weights replaced by garbage: size/hash mismatch.
  write_text(sidecar, good);
  EXPECT_NO_THROW(dslens::nn::load_vae(dir));
  const auto weights = dslens::nn::read_checkpoint_meta(dir).weights_file;
  write_text(weights, "garbage");
  EXPECT_THROW(dslens::nn::load_vae(dir), dslens::FileError);
  fs::remove(weights);
  EXPECT_THROW(dslens::nn::load_vae(dir), dslens::FileError);
}

TEST(Vae, BadStampsAreClearErrors) {
  auto x = torch::rand({4, 16, 16}, torch::kFloat64);
  EXPECT_NO_THROW(dslens::nn::check_stamps(x, 16, "stamps"));
  x[2][3][4] = std::nan("");
  try {
    dslens::nn::check_stamps(x, 16, "training stamps");
    FAIL();
  } catch (const dslens::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("stamp 2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(dslens::nn::check_stamps(torch::zeros({0, 16, 16}), 16, "stamps"),
               dslens::InvalidArgument);
  EXPECT_THROW(dslens::nn::check_stamps(torch::zeros({3, 8, 8}), 16, "stamps"),
               dslens::InvalidArgument);
}

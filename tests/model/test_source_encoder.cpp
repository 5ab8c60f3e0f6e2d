// FitModel::encoder (model/fit_model.h): the decoded source's parameters for a source image, as the
// MAP's back-projected start uses them. VAE: the latents do not depend on the image's brightness
// (the encoder sees peak-normalised stamps, as in training) and the amplitude gives the decoded
// stamp the image's peak; PIXELATED: the pixels reproduce the image exactly.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dslens/core/config.h"
#include "dslens/model/fit_model.h"
#include "test_support.h"
#include "tiny_vae.h"

using namespace dslens;

namespace {

nlohmann::json sis_with_source(const nlohmann::json& source) {
  return {{"mass", {{{"type", "SIS"}, {"theta_E", 1.0}, {"center_x", 0.0}, {"center_y", 0.0}}}},
          {"source", {source}}};
}

}  // namespace

TEST(SourceEncoder, VaeLatentsIgnoreBrightnessAndAmplitudeMatchesThePeak) {
  const auto dir = dslens::testing::tiny_vae_checkpoint("encoder_vae", 3);
  const Compute compute{torch::kCPU, torch::kFloat64};
  const auto fit = model::parse_fit_model(
      ConfigNode(sis_with_source({{"type", "VAE"},
                                  {"checkpoint", dir},
                                  {"center_x", 0.0},
                                  {"center_y", 0.0},
                                  {"scale", 0.02},
                                  {"amp", {{"prior", "lognormal"}, {"mu", 0.0}, {"sigma", 1.0}}}}),
                 "/model"),
      dir, compute);
  ASSERT_TRUE(static_cast<bool>(fit.encoder));
  auto gen = at::detail::createCPUGenerator(9);
  const auto images = torch::rand({3, 16, 16}, gen, torch::kFloat64);
  const auto brighter = images * torch::tensor({1.0, 30.0, 0.2}, torch::kFloat64).view({3, 1, 1});
  const auto a = fit.encoder(images), b = fit.encoder(brighter);
  ASSERT_EQ(a.latents.sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_TRUE(torch::allclose(a.latents, b.latents, 1e-9, 1e-9));
  EXPECT_TRUE(torch::allclose(b.amp / a.amp, torch::tensor({1.0, 30.0, 0.2}, torch::kFloat64)));
  // amp x decoded stamp has the image's peak.
  const auto decoded = fit.decoder(b.latents) * b.amp.view({3, 1, 1});
  EXPECT_TRUE(torch::allclose(decoded.flatten(1).amax(1), brighter.flatten(1).amax(1)));
}

TEST(SourceEncoder, PixelatedPixelsReproduceTheImage) {
  const Compute compute{torch::kCPU, torch::kFloat64};
  const auto fit = model::parse_fit_model(
      ConfigNode(
          sis_with_source({{"type", "PIXELATED"}, {"size", 6}, {"scale", 0.05}, {"sigma", 0.5}}),
          "/model"),
      ".", compute);
  auto gen = at::detail::createCPUGenerator(2);
  const auto images = torch::randn({2, 6, 6}, gen, torch::kFloat64);
  const auto e = fit.encoder(images);
  EXPECT_FALSE(e.amp.defined());
  EXPECT_TRUE(torch::allclose(fit.decoder(e.latents), images));
  EXPECT_TRUE(torch::allclose(e.latents, images.reshape({2, 36}) / 0.5));
}

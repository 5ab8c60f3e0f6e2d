// FitModel::encoder (model/fit_model.h): the decoded source's parameters for a source image, as the
// MAP's back-projected start uses them. VAE: the latents do not depend on the image's brightness
// (the encoder sees peak-normalised stamps, as in training) and the amplitude gives the decoded
// stamp the image's peak; PIXELATED: the pixels reproduce the image exactly.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <optional>

#include "dslens/core/config.h"
#include "dslens/core/errors.h"
#include "dslens/model/fit_model.h"
#include "dslens/model/pixel_regulariser.h"
#include "dslens/nn/checkpoint.h"
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
  const auto dir = dslens::testing::tiny_vae_checkpoint("encoder_vae", 3, nn::PixelNorm{0.5, 0.2});
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

// A VAE source's decoded stamps are rescaled to one total (nn::VaeImpl::decode_with_total), the
// median total of the checkpoint's prior stamps, unless "normalise_flux" is false; a checkpoint
// whose stamps do not have positive totals is refused with the key's JSON path.
TEST(SourceEncoder, VaeSourceFluxIsTheAmplitudesAlone) {
  const auto dir = dslens::testing::tiny_vae_checkpoint("flux_vae", 4, nn::PixelNorm{0.5, 0.2});
  const Compute compute{torch::kCPU, torch::kFloat64};
  const auto source = [&](std::optional<bool> normalise) {
    nlohmann::json s = {{"type", "VAE"},   {"checkpoint", dir}, {"center_x", 0.0},
                        {"center_y", 0.0}, {"scale", 0.02},     {"amp", 1.0}};
    if (normalise) s["normalise_flux"] = *normalise;
    return model::parse_fit_model(ConfigNode(sis_with_source(s), "/model"), dir, compute);
  };
  auto vae = nn::load_vae(dir, compute).vae;
  auto gen = at::detail::createCPUGenerator(11);
  const auto z = torch::randn({4, 4}, gen, torch::kFloat64);
  const auto raw = vae->decode(z);
  // Totals of the prior's stamps (seed 0, 256 draws, as median_prior_total draws them).
  auto prior_gen = at::detail::createCPUGenerator(0);
  const auto prior_totals = vae->sample(256, prior_gen).sum({1, 2});
  const double median = std::get<0>(prior_totals.sort()).select(0, 127).item<double>();

  const auto normalised = source(std::nullopt);
  EXPECT_DOUBLE_EQ(normalised.vae_description.at("flux_total").get<double>(), median);
  const auto stamps = normalised.decoder(z);
  EXPECT_TRUE(torch::allclose(stamps.sum({1, 2}), torch::full({4}, median, torch::kFloat64), 0.0,
                              1e-10 * median));
  EXPECT_TRUE(torch::allclose(stamps, raw * (median / raw.sum({1, 2}, true)), 1e-12, 1e-14));
  EXPECT_GT((raw.sum({1, 2}) / median - 1).abs().max().item<double>(), 1e-3);  // a real change

  const auto as_decoded = source(false);
  EXPECT_TRUE(torch::allclose(as_decoded.decoder(z), raw, 0.0, 0.0));
  EXPECT_FALSE(as_decoded.vae_description.contains("flux_total"));

  // The untrained decoder without an offset: its prior stamps' median total is negative.
  const auto signed_dir = dslens::testing::tiny_vae_checkpoint("flux_vae_signed", 3);
  try {
    model::parse_fit_model(ConfigNode(sis_with_source({{"type", "VAE"},
                                                       {"checkpoint", signed_dir},
                                                       {"center_x", 0.0},
                                                       {"center_y", 0.0},
                                                       {"scale", 0.02},
                                                       {"amp", 1.0}}),
                                      "/model"),
                           signed_dir, compute);
    ADD_FAILURE() << "a checkpoint with negative totals was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/model/source/0/normalise_flux"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("median total"), std::string::npos) << e.what();
  }
}

// Decoded sources (VAE, PIXELATED) are lensed bicubically unless the config says "bilinear"
// (lenstronomy's INTERPOL; physics::PixelInterpolation; docs/fit.md, "Source interpolation");
// another value is refused with its JSON path and the allowed values.
TEST(SourceEncoder, DecodedSourcesAreBicubicUnlessToldOtherwise) {
  const auto dir = dslens::testing::tiny_vae_checkpoint("interp_vae", 4, nn::PixelNorm{0.5, 0.2});
  const Compute compute{torch::kCPU, torch::kFloat64};
  const auto parse = [&](nlohmann::json s) {
    return model::parse_fit_model(ConfigNode(sis_with_source(std::move(s)), "/model"), dir,
                                  compute);
  };
  const nlohmann::json vae = {{"type", "VAE"},   {"checkpoint", dir}, {"center_x", 0.0},
                              {"center_y", 0.0}, {"scale", 0.02},     {"amp", 1.0}};
  const nlohmann::json pixelated = {{"type", "PIXELATED"}, {"size", 6}, {"scale", 0.05}};
  for (const auto& base : {vae, pixelated}) {
    EXPECT_EQ(parse(base).source.at(0).type, "INTERPOL_BICUBIC") << base.dump();
    auto bilinear = base;
    bilinear["interpolation"] = "bilinear";
    EXPECT_EQ(parse(bilinear).source.at(0).type, "INTERPOL") << base.dump();
    auto bicubic = base;
    bicubic["interpolation"] = "bicubic";
    EXPECT_EQ(parse(bicubic).source.at(0).type, "INTERPOL_BICUBIC") << base.dump();
    auto bad = base;
    bad["interpolation"] = "cubic";
    try {
      parse(bad);
      ADD_FAILURE() << "interpolation 'cubic' was accepted";
    } catch (const ConfigError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("/model/source/0/interpolation"), std::string::npos) << what;
      EXPECT_NE(what.find("bilinear"), std::string::npos) << what;
    }
  }
  // A parametric source has no such key.
  EXPECT_THROW(parse({{"type", "GAUSSIAN"},
                      {"amp", 1.0},
                      {"sigma", 0.1},
                      {"center_x", 0.0},
                      {"center_y", 0.0},
                      {"interpolation", "bicubic"}}),
               ConfigError);
}

// A PIXELATED grid's placement (model/fit_model.h). Without scale or centre it is placed on the
// arcs: no placement parameters, the model's arcs placement set for the component. "free": the
// side n x scale log-normal about kPixelGridSide, the centre normal about 0 unless given; with a
// fixed scale the centre stays fixed at 0, 0 as before. "arcs" with a scale is an error naming it.
TEST(SourceEncoder, APixelGridIsPlacedOnTheArcsOrFreely) {
  const Compute compute{torch::kCPU, torch::kFloat64};
  const auto parse = [&](nlohmann::json s) {
    return model::parse_fit_model(ConfigNode(sis_with_source(std::move(s)), "/model"), ".",
                                  compute);
  };
  const auto arcs = parse({{"type", "PIXELATED"}, {"size", 20}});
  ASSERT_TRUE(arcs.arcs_placement.has_value());
  EXPECT_EQ(arcs.arcs_placement->size, 20);
  EXPECT_EQ(arcs.arcs_placement->source_index, 0u);
  for (const std::string p : {"scale", "center_x", "center_y"})
    EXPECT_FALSE(arcs.space.has(p + "_source_light0")) << p;
  const auto spec = arcs.spec(physics::PixelGrid::centered(8, 8, 0.1), std::nullopt);
  EXPECT_TRUE(spec.arcs_placement.has_value());
  try {
    parse({{"type", "PIXELATED"}, {"size", 20}, {"placement", "arcs"}, {"scale", 0.05}});
    ADD_FAILURE() << "no error for a scale with placement arcs";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/model/source/0/scale"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("\"placement\": \"free\""), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse({{"type", "PIXELATED"}, {"size", 20}, {"placement", "here"}}), ConfigError);
  // "arcs_extent": the grid's side over the arcs' box's, 1.1 by default; it reaches the spec the
  // posterior places the grid with.
  EXPECT_DOUBLE_EQ(arcs.arcs_placement->side_per_half_width, 2.2);
  const auto wide = parse({{"type", "PIXELATED"}, {"size", 20}, {"arcs_extent", 1.4}});
  const auto wide_spec = wide.spec(physics::PixelGrid::centered(8, 8, 0.1), std::nullopt);
  ASSERT_TRUE(wide_spec.arcs_placement.has_value());
  EXPECT_DOUBLE_EQ(wide_spec.arcs_placement->side_per_half_width, 2.8);
  const auto error_of = [&](const nlohmann::json& s) {
    try {
      parse(s);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  for (const double bad : {0.3, 5.0}) {
    const auto what = error_of({{"type", "PIXELATED"}, {"size", 20}, {"arcs_extent", bad}});
    EXPECT_NE(what.find("/model/source/0/arcs_extent"), std::string::npos) << what;
    EXPECT_NE(what.find("[0.5, 4]"), std::string::npos) << what;
  }
  const auto freed =
      error_of({{"type", "PIXELATED"}, {"size", 20}, {"placement", "free"}, {"arcs_extent", 1.4}});
  EXPECT_NE(freed.find("/model/source/0/arcs_extent"), std::string::npos) << freed;
  EXPECT_NE(freed.find("\"placement\": \"arcs\""), std::string::npos) << freed;

  const auto free = parse({{"type", "PIXELATED"}, {"size", 20}, {"placement", "free"}});
  EXPECT_FALSE(free.arcs_placement.has_value());
  const auto scale = free.space.prior("scale_source_light0");
  ASSERT_TRUE(scale.has_value());
  EXPECT_EQ(scale->kind(), Prior::Kind::kLogNormal);
  EXPECT_NEAR(scale->median() * 20, model::kPixelGridSide, 1e-12);
  for (const std::string c : {"center_x_source_light0", "center_y_source_light0"}) {
    const auto centre = free.space.prior(c);
    ASSERT_TRUE(centre.has_value()) << c;
    EXPECT_EQ(centre->kind(), Prior::Kind::kNormal);
    EXPECT_EQ(centre->median(), 0.0);
  }
  // A simulation's INTERPOL stamp is not the grid: its scale and centre are no truth for the
  // grid's, where a parametric source's centre is.
  const nlohmann::json truth = {{"source",
                                 {{{"scale", {{"value", 0.02}}},
                                   {"center_x", {{"value", 0.06}}},
                                   {"center_y", {{"value", 0.04}}}}}}};
  const auto grid_truth = model::truth_values(free, truth);
  for (const std::string p : {"scale", "center_x", "center_y"})
    EXPECT_FALSE(grid_truth.count(p + "_source_light0")) << p;
  const auto sersic = parse({{"type", "SERSIC"},
                             {"amp", 1.0},
                             {"R_sersic", 0.2},
                             {"n_sersic", 1.0},
                             {"center_x", {{"prior", "normal"}, {"mean", 0.0}, {"sigma", 0.3}}},
                             {"center_y", 0.0}});
  EXPECT_EQ(model::truth_values(sersic, truth).count("center_x_source_light0"), 1u);
  // A centre given stays as given, the placement free.
  const auto given = parse({{"type", "PIXELATED"}, {"size", 20}, {"center_x", 0.1}});
  EXPECT_FALSE(given.arcs_placement.has_value());
  EXPECT_TRUE(given.space.is_fixed("center_x_source_light0"));
  EXPECT_FALSE(given.space.is_fixed("center_y_source_light0"));
  // A fixed scale keeps the fixed centre.
  const auto fixed = parse({{"type", "PIXELATED"}, {"size", 20}, {"scale", 0.05}});
  EXPECT_TRUE(fixed.space.is_fixed("scale_source_light0"));
  EXPECT_TRUE(fixed.space.is_fixed("center_x_source_light0"));
  EXPECT_EQ(fixed.space.range("center_x_source_light0").first, 0.0);
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
  // sigma is the INTERPOL profile's amp: the decoder gives the pixels in units of sigma.
  EXPECT_TRUE(torch::allclose(fit.decoder(e.latents) * 0.5, images));
  EXPECT_TRUE(torch::allclose(e.latents, images.reshape({2, 36}) / 0.5));
}

// A regularised grid (model/pixel_regulariser.h): the decoded pixels of z ~ N(0, I), times sigma,
// must have the prior N(0, sigma^2 C^-1) (checked as the decoder's linear map M: M M^T = C^-1); the
// encoder inverts the decoder and gives a free sigma its most probable value for an image,
// sqrt(s^T C s / n^2).
TEST(SourceEncoder, RegularisedPixelsHaveCovarianceSigmaSquaredTimesCInverse) {
  const Compute compute{torch::kCPU, torch::kFloat64};
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const int64_t n = 5, k = n * n;
  auto gen = at::detail::createCPUGenerator(4);
  const auto z = torch::randn({3, k}, gen, torch::kFloat64);
  for (const std::string kind : {"identity", "gradient", "curvature"}) {
    const auto c = model::pixel_regulariser(kind, n, f64);
    for (const bool free : {false, true}) {
      nlohmann::json source = {
          {"type", "PIXELATED"}, {"size", n}, {"scale", 0.05}, {"regularisation", kind}};
      source["sigma"] = free ? nlohmann::json{{"prior", "lognormal"}, {"mu", 0.0}, {"sigma", 3.0}}
                             : nlohmann::json(2.0);
      const auto fit =
          model::parse_fit_model(ConfigNode(sis_with_source(source), "/model"), ".", compute);
      EXPECT_EQ(fit.pixel_regularisation, kind);
      EXPECT_EQ(fit.space.is_fixed("sigma_source_light0"), !free);
      // Column j of M: the decoded image of the unit latent e_j.
      const auto m = fit.decoder(torch::eye(k, f64)).reshape({k, k}).t();
      EXPECT_TRUE(torch::allclose(m.matmul(m.t()), torch::inverse(c), 1e-9, 1e-11))
          << kind << " free " << free;
      const auto images = fit.decoder(z) * 2.0;  // sigma 2
      const auto e = fit.encoder(images);
      EXPECT_EQ(e.amp.defined(), free);
      if (!free) {
        EXPECT_TRUE(torch::allclose(e.latents, z, 1e-9, 1e-10)) << kind;
        continue;
      }
      const auto s = images.reshape({3, k});
      const auto expected = ((s.matmul(c) * s).sum(1) / static_cast<double>(k)).sqrt();
      EXPECT_TRUE(torch::allclose(e.amp, expected, 1e-9, 1e-12)) << kind;
      EXPECT_TRUE(
          torch::allclose(fit.decoder(e.latents) * e.amp.view({3, 1, 1}), images, 1e-9, 1e-10))
          << kind;
    }
  }
}

TEST(SourceEncoder, RegularisedPixelConfigErrorsNameTheKey) {
  const Compute compute{torch::kCPU, torch::kFloat64};
  const auto error = [&](const nlohmann::json& source) {
    try {
      model::parse_fit_model(ConfigNode(sis_with_source(source), "/model"), ".", compute);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const nlohmann::json base = {{"type", "PIXELATED"}, {"size", 8}, {"scale", 0.05}};
  auto bad_kind = base, signed_prior = base, tied = base, zero = base, tiny = base;
  bad_kind["regularisation"] = "smooth";
  EXPECT_NE(error(bad_kind).find("/model/source/0/regularisation"), std::string::npos)
      << error(bad_kind);
  EXPECT_NE(error(bad_kind).find("curvature"), std::string::npos) << error(bad_kind);
  signed_prior["sigma"] = {{"prior", "normal"}, {"mean", 1.0}, {"sigma", 1.0}};
  EXPECT_NE(error(signed_prior).find("/model/source/0/sigma"), std::string::npos)
      << error(signed_prior);
  EXPECT_NE(error(signed_prior).find("lognormal"), std::string::npos) << error(signed_prior);
  tied["sigma"] = {{"same_as", "theta_E_lens0"}};
  EXPECT_NE(error(tied).find("/model/source/0/sigma"), std::string::npos) << error(tied);
  zero["sigma"] = 0.0;
  EXPECT_NE(error(zero).find("/model/source/0/sigma"), std::string::npos) << error(zero);
  tiny["size"] = 2;
  tiny["regularisation"] = "gradient";
  EXPECT_NE(error(tiny).find("/model/source/0/size"), std::string::npos) << error(tiny);
}

#include <fitsio.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <tuple>

#include "dslens/core/errors.h"
#include "dslens/core/fits.h"
#include "dslens/model/noise_estimate.h"
#include "dslens/model/observation.h"
#include "dslens/physics/image_model.h"
#include "test_support.h"

using dslens::ConfigError;
using dslens::ConfigNode;
using dslens::json;
using dslens::model::load_observation;
using dslens::model::Observation;

namespace observation_test {

torch::Tensor f64(std::vector<double> values, int64_t ny, int64_t nx) {
  return torch::tensor(values, torch::kFloat64).reshape({ny, nx});
}

// A [ny, nx] image of distinct positive values: 100 * row + column + 1.
torch::Tensor ramp(int64_t ny, int64_t nx) {
  return (100.0 * torch::arange(ny, torch::kFloat64).unsqueeze(1) +
          torch::arange(nx, torch::kFloat64).unsqueeze(0) + 1.0)
      .contiguous();
}

Observation load(const json& data, const std::string& dir) {
  return load_observation(ConfigNode(data, "/data"), dir);
}

// The ConfigError message of loading `data` ("" if none was thrown; other types fail the test).
std::string config_error(const json& data, const std::string& dir, std::string* path = nullptr) {
  try {
    load(data, dir);
  } catch (const ConfigError& e) {
    if (path) *path = e.path();
    return e.what();
  }
  ADD_FAILURE() << "no ConfigError for " << data.dump();
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Writes `images` as consecutive image HDUs through CFITSIO: an empty primary HDU, then one
// extension per (EXTNAME, image).
void write_extensions(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& images) {
  fitsfile* f = nullptr;
  int status = 0;
  const std::string target = "!" + path;
  fits_create_file(&f, target.c_str(), &status);
  long none[1] = {0};
  fits_create_img(f, DOUBLE_IMG, 0, none, &status);
  for (const auto& [name, image] : images) {
    torch::Tensor img = image.contiguous();
    long naxes[2] = {static_cast<long>(img.size(1)), static_cast<long>(img.size(0))};
    fits_create_img(f, DOUBLE_IMG, 2, naxes, &status);
    fits_update_key(f, TSTRING, "EXTNAME", const_cast<char*>(name.c_str()), nullptr, &status);
    long first[2] = {1, 1};
    fits_write_pix(f, TDOUBLE, first, img.numel(), img.data_ptr<double>(), &status);
  }
  fits_close_file(f, &status);
  ASSERT_EQ(status, 0);
}

// 0.4 exp(-r / 8 px) on an n x n image centred on it: a galaxy's light spanning decades.
torch::Tensor galaxy_profile(int64_t n) {
  const auto r = torch::arange(n, torch::kFloat64) - static_cast<double>(n - 1) / 2.0;
  const auto radius = torch::sqrt(r.unsqueeze(1).square() + r.unsqueeze(0).square());
  return 0.4 * torch::exp(-radius / 8.0);
}

}  // namespace observation_test

using namespace observation_test;

TEST(Observation, NoiseMapGivesSigmaAndACentredGrid) {
  const auto dir = dslens::testing::temp_dir("obs_noise");
  const auto image = ramp(4, 5);
  const auto noise = 0.1 + 0.01 * ramp(4, 5);
  dslens::write_fits_image(dir + "/image.fits", image);
  dslens::write_fits_image(dir + "/sigma.fits", noise);
  const json data = {
      {"image", "image.fits"}, {"noise_map", {{"fits", "sigma.fits"}}}, {"pixel_scale", 0.05}};
  const Observation obs = load(data, dir);
  EXPECT_TRUE(torch::equal(obs.image, image));
  EXPECT_TRUE(torch::equal(obs.sigma, noise));
  EXPECT_TRUE(obs.mask.all().item<bool>());
  EXPECT_EQ(obs.mask.scalar_type(), torch::kBool);
  EXPECT_EQ(obs.image.scalar_type(), torch::kFloat64);
  EXPECT_FALSE(obs.psf.has_value());
  EXPECT_TRUE(obs.truth.is_null());
  EXPECT_TRUE(obs.warnings.empty());
  EXPECT_EQ(obs.grid.ny, 4);
  EXPECT_EQ(obs.grid.nx, 5);
  EXPECT_DOUBLE_EQ(obs.grid.pixel_scale, 0.05);
  EXPECT_DOUBLE_EQ(obs.grid.ra_at_xy_0, -2.0 * 0.05);   // x = (j - (nx-1)/2) * scale
  EXPECT_DOUBLE_EQ(obs.grid.dec_at_xy_0, -1.5 * 0.05);  // y = (i - (ny-1)/2) * scale
  EXPECT_TRUE(contains(obs.description, "image.fits"));
  const auto imaging = obs.imaging();
  EXPECT_TRUE(torch::equal(imaging.sigma, noise));
  EXPECT_DOUBLE_EQ(obs.noise_scale, 1.0);
  EXPECT_FALSE(obs.noise_model.has_value());

  // "noise_scale" multiplies every sigma (correlated noise, docs/fit.md); out of range is an
  // error naming it.
  auto scaled = data;
  scaled["noise_scale"] = 1.7;
  const Observation wide = load(scaled, dir);
  EXPECT_TRUE(torch::allclose(wide.sigma, 1.7 * noise, 1e-15, 0));
  EXPECT_DOUBLE_EQ(wide.noise_scale, 1.7);
  EXPECT_TRUE(torch::equal(wide.image, image));
  for (double bad : {0.0, -1.0, 1000.0}) {
    scaled["noise_scale"] = bad;
    std::string path;
    const auto msg = config_error(scaled, dir, &path);
    EXPECT_EQ(path, "/data/noise_scale") << msg;
  }
  // "auto": sigma as given until `dslens fit` measures the factor (app/noise_correlation.h); any
  // other string is an error naming the value and what is allowed.
  scaled["noise_scale"] = "auto";
  const Observation automatic = load(scaled, dir);
  EXPECT_TRUE(automatic.noise_scale_auto);
  EXPECT_FALSE(wide.noise_scale_auto);
  EXPECT_DOUBLE_EQ(automatic.noise_scale, 1.0);
  EXPECT_TRUE(torch::equal(automatic.sigma, noise));
  scaled["noise_scale"] = "Auto ";
  std::string path;
  const auto msg = config_error(scaled, dir, &path);
  EXPECT_EQ(path, "/data/noise_scale") << msg;
  EXPECT_TRUE(contains(msg, "'Auto '") && contains(msg, "\"auto\"") && contains(msg, "[0.01, 100]"))
      << msg;
  // with_noise_scaled: the fitted pixels' sigma and noise_scale times the factor; the masked
  // pixels' placeholder sigma, the image and the image positions' sigmas unchanged.
  auto masked = data;
  masked["mask_radius"] = {{"outer", 0.08}};
  const Observation given = load(masked, dir);
  ASSERT_GT(given.n_fitted(), 0);
  ASSERT_LT(given.n_fitted(), given.sigma.numel());
  const Observation times = given.with_noise_scaled(1.5);
  EXPECT_TRUE(torch::allclose(times.sigma.masked_select(given.mask),
                              1.5 * given.sigma.masked_select(given.mask), 1e-15, 0));
  EXPECT_TRUE(
      torch::equal(times.sigma.masked_select(~given.mask), given.sigma.masked_select(~given.mask)));
  EXPECT_DOUBLE_EQ(times.noise_scale, 1.5);
  EXPECT_DOUBLE_EQ(times.with_noise_scaled(2.0).noise_scale, 3.0);
  EXPECT_TRUE(torch::equal(times.image, given.image));
  EXPECT_THROW(given.with_noise_scaled(0.0), dslens::InvalidArgument);
  EXPECT_THROW(given.with_noise_scaled(NAN), dslens::InvalidArgument);
}

TEST(Observation, WeightMapIsInverseVarianceAndZeroWeightIsMasked) {
  const auto dir = dslens::testing::temp_dir("obs_weight");
  const auto image = ramp(3, 3);
  const auto weight = f64({4, 16, 0.25, 1, 0, 100, 1, -2, 1}, 3, 3);
  dslens::write_fits_image(dir + "/image.fits", image);
  dslens::write_fits_image(dir + "/weight.fits", weight);
  const Observation obs =
      load({{"image", "image.fits"}, {"weight_map", "weight.fits"}, {"pixel_scale", 0.1}}, dir);
  const auto expected_sigma = f64({0.5, 0.25, 2, 1, 1, 0.1, 1, 1, 1}, 3, 3);
  EXPECT_TRUE(torch::allclose(obs.sigma, expected_sigma, 0, 1e-15)) << obs.sigma;
  const auto expected_mask =
      torch::tensor({1, 1, 1, 1, 0, 1, 1, 0, 1}, torch::kBool).reshape({3, 3});
  EXPECT_TRUE(torch::equal(obs.mask, expected_mask)) << obs.mask;
  EXPECT_EQ(obs.image[1][1].item<double>(), 0.0);  // masked pixels are zeroed
  EXPECT_EQ(obs.image[2][2].item<double>(), image[2][2].item<double>());
  // Weight 0 is the convention for "not measured": no warning; a negative weight is warned about.
  ASSERT_EQ(obs.warnings.size(), 1u);
  EXPECT_TRUE(contains(obs.warnings[0], "weight.fits")) << obs.warnings[0];
  EXPECT_TRUE(contains(obs.warnings[0], "1 of 8")) << obs.warnings[0];
}

TEST(Observation, BackgroundRmsAndExposureTimeGiveSigma) {
  const auto dir = dslens::testing::temp_dir("obs_rms");
  const auto image = f64({-0.5, 0.0, 0.2, 3.0, 10.0, 1e-3}, 2, 3);
  dslens::write_fits_image(dir + "/image.fits", image);
  const double rms = 0.006, t = 2000.0;
  const Observation obs = load({{"image", "image.fits"},
                                {"background_rms", rms},
                                {"exposure_time", t},
                                {"pixel_scale", 0.03}},
                               dir);
  auto img = image.accessor<double, 2>();
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t j = 0; j < 3; ++j) {
      const double expected = std::sqrt(rms * rms + std::max(img[i][j], 0.0) / t);
      EXPECT_NEAR(obs.sigma[i][j].item<double>(), expected, 1e-15 * expected) << i << "," << j;
    }
  }
  EXPECT_TRUE(obs.mask.all().item<bool>());
  // Both keys are needed, and only one noise model is allowed.
  auto msg =
      config_error({{"image", "image.fits"}, {"background_rms", rms}, {"pixel_scale", 0.03}}, dir);
  EXPECT_TRUE(contains(msg, "/data/exposure_time")) << msg;
  std::string path;
  msg = config_error({{"image", "image.fits"},
                      {"noise_map", "image.fits"},
                      {"background_rms", rms},
                      {"exposure_time", t},
                      {"pixel_scale", 0.03}},
                     dir, &path);
  EXPECT_EQ(path, "/data/background_rms") << msg;
  EXPECT_TRUE(contains(msg, "exactly one")) << msg;
  msg = config_error({{"image", "image.fits"}, {"pixel_scale", 0.03}}, dir, &path);
  EXPECT_EQ(path, "/data") << msg;
  EXPECT_TRUE(contains(msg, "noise_map")) << msg;
}

TEST(Observation, PoissonSmoothingTakesTheImagesLocalMean) {
  const auto dir = dslens::testing::temp_dir("obs_poisson_smoothing");
  // One bright pixel at (1, 1) and a NaN at (4, 4) on a 5 x 5 image of zeros.
  auto image = torch::zeros({5, 5}, torch::kFloat64);
  image[1][1] = 9.0;
  image[4][4] = std::numeric_limits<double>::quiet_NaN();
  dslens::write_fits_image(dir + "/image.fits", image);
  const double rms = 0.5, t = 4.0;
  const json base = {
      {"image", "image.fits"}, {"background_rms", rms}, {"exposure_time", t}, {"pixel_scale", 0.1}};
  auto data = base;
  data["poisson_smoothing"] = 3;
  const Observation obs = load(data, dir);
  // The 3 x 3 box's mean over the pixels on the image and finite.
  const auto expect = [&](int64_t i, int64_t j, double mean) {
    EXPECT_NEAR(obs.sigma[i][j].item<double>(), std::sqrt(rms * rms + mean / t), 1e-15)
        << i << "," << j;
  };
  expect(0, 0, 9.0 / 4);  // a corner: 4 pixels in its box
  expect(0, 2, 9.0 / 6);  // an edge: 6
  expect(2, 2, 9.0 / 9);
  expect(3, 3, 0.0);  // its box has the NaN, not the bright pixel
  expect(1, 4, 0.0);
  expect(2, 3, 0.0);
  EXPECT_FALSE(obs.mask[4][4].item<bool>());
  // A cutout's edge keeps its whole box: the bright pixel lies outside the cutout.
  data["cutout"] = {{"center", {3, 3}}, {"size", {3, 3}}};  // rows and columns 2..4
  const Observation cut = load(data, dir);
  EXPECT_NEAR(cut.sigma[0][0].item<double>(), std::sqrt(rms * rms + 1.0 / t), 1e-15);
  // Width 1 (the default) is the pixel's own value.
  const Observation own = load(base, dir);
  EXPECT_NEAR(own.sigma[1][1].item<double>(), std::sqrt(rms * rms + 9.0 / t), 1e-15);
  EXPECT_NEAR(own.sigma[0][0].item<double>(), rms, 1e-15);
  // The noise's form is kept for an exported model (a noise map has none).
  ASSERT_TRUE(own.noise_model.has_value());
  EXPECT_EQ(own.noise_model->background_rms, rms);
  EXPECT_EQ(own.noise_model->exposure_time, t);
  EXPECT_EQ(own.noise_model->correlation_fwhm, 0.0);
  // Bad widths and the wrong noise model name the key.
  std::string path;
  data = base;
  data["poisson_smoothing"] = 4;
  auto msg = config_error(data, dir, &path);
  EXPECT_EQ(path, "/data/poisson_smoothing") << msg;
  EXPECT_TRUE(contains(msg, "even")) << msg;
  data["poisson_smoothing"] = 0;
  msg = config_error(data, dir, &path);
  EXPECT_EQ(path, "/data/poisson_smoothing") << msg;
  msg = config_error({{"image", "image.fits"},
                      {"noise_map", "image.fits"},
                      {"poisson_smoothing", 3},
                      {"pixel_scale", 0.1}},
                     dir, &path);
  EXPECT_EQ(path, "/data/poisson_smoothing") << msg;
  EXPECT_TRUE(contains(msg, "background_rms")) << msg;
}

// A flat sky s with Gaussian noise of variance rms^2 + s / t: the inverse-variance weighted mean
// of the pixels estimates s. With the Poisson term from each pixel's own value it comes out low by
// 1 / t (model/noise_estimate.h); from a 7 x 7 local mean, by 1 / (49 t).
TEST(Observation, PoissonTermFromTheImageBiasesAFlatSkyLowAndItsLocalMeanDoesNot) {
  const auto dir = dslens::testing::temp_dir("obs_poisson_bias");
  const int64_t n = 200;
  const double sky = 1.0, rms = 0.001, t = 100.0;
  const double sd = std::sqrt(rms * rms + sky / t);  // 0.1: the Poisson term dominates
  torch::manual_seed(11);
  const auto image = sky + sd * torch::randn({n, n}, torch::kFloat64);
  dslens::write_fits_image(dir + "/image.fits", image);
  const auto weighted_mean_error = [&](int width) {
    const Observation obs = load({{"image", "image.fits"},
                                  {"background_rms", rms},
                                  {"exposure_time", t},
                                  {"poisson_smoothing", width},
                                  {"pixel_scale", 0.05}},
                                 dir);
    const auto w = 1.0 / obs.sigma.square();
    return ((w * obs.image).sum() / w.sum()).item<double>() - sky;
  };
  const double standard_error = sd / static_cast<double>(n);  // 5e-4, i.e. 0.05 / t
  const double own = weighted_mean_error(1), smoothed = weighted_mean_error(7);
  EXPECT_GT(own, -1.3 / t);
  EXPECT_LT(own, -0.7 / t);  // 0.3 / t is 6 standard errors
  EXPECT_LT(std::abs(smoothed), 4.0 * standard_error) << smoothed;
  // The plain mean has no bias either way: the check sees the noise it should.
  EXPECT_LT(std::abs(image.mean().item<double>() - sky), 4.0 * standard_error);
}

// image_poisson_bias's first-order figure against a Monte Carlo: Gaussian blobs (peak 0.5, sd 4
// px) with Poisson noise of exposure t plus a background of rms 0.1, each fitted for its amplitude
// with weights from the image's box mean, as a fit with "background_rms" + "exposure_time" weighs
// its pixels. The figure takes its template from the noisy image and leaves out the faintest
// light, so it is a lower bound: it must lie between 0.45 and 1.1 of the measured bias and of its
// z (within 3 standard errors), also in a cut-out of four times the empty sky. Without the k^2 of
// 1 / (k^2 t) it would be 9 times too large for k = 3. Then the warning: given where the bias is
// a standard deviation or more, not where the exposure is long, nor with "poisson_term": "model".
TEST(Observation, PoissonTermFromTheImageWarnsOfTheFirstOrderBiasItGivesTheLight) {
  const int64_t draws = 400;
  const double rms = 0.1;
  const auto blob = [](int64_t n) {
    const auto yx = torch::arange(n, torch::kFloat64) - static_cast<double>(n - 1) / 2.0;
    return 0.5 * torch::exp(-(yx.square().unsqueeze(1) + yx.square().unsqueeze(0)) / 32.0);
  };
  auto gen = at::detail::createCPUGenerator(17);
  const auto check = [&](double t, int64_t k, int64_t n) {
    SCOPED_TRACE("t " + std::to_string(t) + ", box " + std::to_string(k) + ", side " +
                 std::to_string(n));
    const auto g = blob(n);
    const auto mask = torch::ones({n, n}, torch::kBool);
    const auto rate = (g * t).expand({draws, n, n}).contiguous();
    const auto d = torch::poisson(rate, gen) / t +
                   rms * at::normal(0.0, 1.0, {draws, n, n}, gen, torch::kFloat64);
    std::vector<double> amplitude, predicted, predicted_z;
    for (int64_t i = 0; i < draws; ++i) {
      const auto box = dslens::model::local_mean(d[i], k);
      const auto sigma = torch::sqrt(rms * rms + box.clamp_min(0.0) / t);
      const auto w = sigma.square().reciprocal();
      amplitude.push_back(((w * d[i] * g).sum() / (w * g * g).sum()).item<double>());
      const auto b = dslens::model::image_poisson_bias(box, sigma, mask, t, k);
      EXPECT_DOUBLE_EQ(b.shift, 1.0 / (static_cast<double>(k * k) * t));
      EXPECT_GT(b.pixels, 50);
      EXPECT_LT(b.pixels, 600);
      predicted.push_back(-b.relative);
      predicted_z.push_back(b.z);
    }
    const auto a = torch::tensor(amplitude, torch::kFloat64);
    const double bias = a.mean().item<double>() - 1.0, sd = a.std().item<double>();
    const double se = sd / std::sqrt(static_cast<double>(draws));
    const double pred = torch::tensor(predicted).mean().item<double>();
    const double pred_z = torch::tensor(predicted_z).mean().item<double>();
    EXPECT_LT(bias, -3.0 * se);
    EXPECT_LT(pred, 0.45 * bias + 3.0 * se);
    EXPECT_GT(pred, 1.1 * bias - 3.0 * se);
    EXPECT_GT(pred_z, 0.45 * -bias / sd - 3.0 * se / sd);
    EXPECT_LT(pred_z, 1.1 * -bias / sd + 3.0 * se / sd);
  };
  check(50.0, 1, 32);   // 25 counts at the peak
  check(200.0, 1, 32);  // 100
  check(10.0, 3, 32);   // 5, in a box of 9 pixels
  check(50.0, 1, 64);   // four times the sky

  const int64_t n = 32;
  const auto g = blob(n);
  const auto dir = dslens::testing::temp_dir("obs_poisson_warning");
  const double t = 50.0;
  const auto image = (torch::poisson((g * t).contiguous(), gen) / t +
                      rms * at::normal(0.0, 1.0, {n, n}, gen, torch::kFloat64))
                         .contiguous();
  dslens::write_fits_image(dir + "/image.fits", image);
  const json base = {{"image", "image.fits"},
                     {"background_rms", rms},
                     {"exposure_time", t},
                     {"pixel_scale", 0.05}};
  const Observation warned = load(base, dir);
  ASSERT_EQ(warned.warnings.size(), 1u);
  for (const char* part : {"image.fits': the Poisson term", "Poisson term taken from the image",
                           "1 / (1^2 x 50)", "\"poisson_term\": \"model\""}) {
    EXPECT_TRUE(contains(warned.warnings[0], part)) << part << " in " << warned.warnings[0];
  }
  auto as_model = base;
  as_model["poisson_term"] = "model";
  EXPECT_TRUE(load(as_model, dir).warnings.empty());
  auto long_exposure = base;
  long_exposure["exposure_time"] = 5000.0;  // z about 0.15
  EXPECT_TRUE(load(long_exposure, dir).warnings.empty());
}

// "poisson_term": "model": the noise's form (rms, t, noise_scale) as a ModelNoise for the
// likelihood, and sigma at any model image for the outputs; the image's sigma stays for what
// needs a fixed one. Refused with a noise map and for an unknown value, naming the JSON path.
TEST(Observation, PoissonTermFromTheModelGivesTheNoisesFormAtEachModelImage) {
  const auto dir = dslens::testing::temp_dir("obs_poisson_model");
  const double rms = 0.02, t = 40.0, scale = 1.5;
  torch::manual_seed(3);
  const auto image = 0.5 * torch::rand({10, 12}, torch::kFloat64) - 0.1;
  dslens::write_fits_image(dir + "/image.fits", image);
  dslens::write_fits_image(dir + "/sigma.fits", 0.01 + 0.0 * image);
  const json base = {
      {"image", "image.fits"}, {"background_rms", rms},
      {"exposure_time", t},    {"pixel_scale", 0.05},
      {"noise_scale", scale},  {"mask_circles", {{{"center", {0, 0}}, {"radius", 0.1}}}}};
  const Observation as_image = load(base, dir);
  EXPECT_FALSE(as_image.poisson_from_model);
  EXPECT_FALSE(as_image.imaging().model_noise.defined());
  const auto model = 0.3 * torch::randn({10, 12}, torch::kFloat64);  // some pixels below 0
  EXPECT_TRUE(torch::equal(as_image.sigma_at(model), as_image.sigma));

  auto with = base;
  with["poisson_term"] = "model";
  const Observation obs = load(with, dir);
  ASSERT_TRUE(obs.poisson_from_model);
  const auto fitted = obs.mask;
  ASSERT_GT(fitted.logical_not().sum().item<int64_t>(), 0);  // the circle masks some
  // The image's sigma is as with "image" (arcs placement and pixel solves read it).
  EXPECT_TRUE(torch::allclose(obs.sigma, as_image.sigma, 0, 0));
  const auto n = obs.imaging().model_noise;
  ASSERT_TRUE(n.defined());
  const auto s2 = scale * scale;
  EXPECT_TRUE(torch::allclose(
      n.background_variance.masked_select(fitted),
      torch::full({fitted.sum().item<int64_t>()}, rms * rms * s2, torch::kFloat64)));
  EXPECT_TRUE(
      torch::allclose(n.inverse_exposure.masked_select(fitted),
                      torch::full({fitted.sum().item<int64_t>()}, s2 / t, torch::kFloat64)));
  EXPECT_EQ(n.inverse_exposure.masked_select(fitted.logical_not()).abs().sum().item<double>(), 0);
  const auto expected = scale * torch::sqrt(rms * rms + model.clamp_min(0) / t);
  EXPECT_TRUE(torch::allclose(obs.sigma_at(model).masked_select(fitted),
                              expected.masked_select(fitted), 1e-14, 0));
  EXPECT_TRUE(torch::equal(obs.at_model(model).sigma, obs.sigma_at(model)));
  // A noise_scale applied later ("auto") scales the model's sigma too.
  EXPECT_TRUE(torch::allclose(obs.with_noise_scaled(2.0).sigma_at(model).masked_select(fitted),
                              2.0 * expected.masked_select(fitted), 1e-14, 0));
  // What summary.txt and the log say; a simulation without a Poisson term has t = 0.
  EXPECT_EQ(obs.model_noise_formula(), "sigma^2 = 0.02^2 + max(model, 0) / 40");
  Observation no_poisson = obs;
  no_poisson.noise_model->exposure_time = 0.0;
  EXPECT_EQ(no_poisson.model_noise_formula(), "sigma = 0.02 (exposure_time 0: no Poisson term)");

  std::string path;
  with["poisson_term"] = "Model";
  auto msg = config_error(with, dir, &path);
  EXPECT_EQ(path, "/data/poisson_term");
  EXPECT_TRUE(contains(msg, "'Model'") && contains(msg, "\"image\"") && contains(msg, "\"model\""))
      << msg;
  json noise_map = {{"image", "image.fits"},
                    {"noise_map", "sigma.fits"},
                    {"pixel_scale", 0.05},
                    {"poisson_term", "model"}};
  msg = config_error(noise_map, dir, &path);
  EXPECT_EQ(path, "/data/poisson_term");
  EXPECT_TRUE(contains(msg, "'noise_map' is given")) << msg;
}

// A noise map whose Poisson term was computed from the noisy image, left unclamped where the
// image is negative (the shared SLACS map's pattern): its low pixels carry much of the weight.
TEST(Observation, ANoiseMapFromTheNoisyImageIsWarnedAboutWithItsRebuild) {
  const auto dir = dslens::testing::temp_dir("obs_noise_from_image");
  const int64_t n = 120;
  const double rms = 0.0015, t = 400.0;
  // A galaxy-like profile over a faint floor, so the image's values span two decades.
  const auto truth = 0.004 + galaxy_profile(n);
  torch::manual_seed(5);
  const auto noise_free_var = rms * rms + truth / t;
  const auto image = truth + torch::sqrt(noise_free_var) * torch::randn({n, n}, torch::kFloat64);
  const auto from_image = torch::sqrt(torch::clamp_min(rms * rms + image / t, 1e-4 * rms * rms));
  dslens::write_fits_image(dir + "/image.fits", image);
  dslens::write_fits_image(dir + "/from_image.fits", from_image);
  dslens::write_fits_image(dir + "/from_truth.fits", torch::sqrt(noise_free_var));
  const json data = {{"image", "image.fits"}, {"pixel_scale", 0.03}};
  auto with = data;
  with["noise_map"] = "from_image.fits";
  const Observation bad = load(with, dir);
  ASSERT_EQ(bad.warnings.size(), 1u);
  const std::string& msg = bad.warnings[0];
  EXPECT_TRUE(contains(msg, "from_image.fits")) << msg;
  EXPECT_TRUE(contains(msg, "5x5 neighbourhood")) << msg;
  EXPECT_TRUE(contains(msg, "\"poisson_term\": \"model\" in place of \"noise_map\"")) << msg;
  EXPECT_TRUE(contains(msg, "\"poisson_smoothing\": 5")) << msg;
  // The rebuild it suggests is the map's own form.
  const auto form = dslens::model::fit_noise_map_form(bad.image, bad.sigma, bad.mask);
  EXPECT_NEAR(form.background_rms, rms, 0.03 * rms);
  EXPECT_NEAR(form.exposure_time, t, 0.01 * t);
  EXPECT_LT(form.max_relative_misfit, 0.05);
  // The noise-free variance, and the same image weighted by it, raise nothing.
  with["noise_map"] = "from_truth.fits";
  EXPECT_TRUE(load(with, dir).warnings.empty()) << load(with, dir).warnings[0];
  // A weight map is checked the same way.
  dslens::write_fits_image(dir + "/weights.fits", 1.0 / from_image.square());
  with.erase("noise_map");
  with["weight_map"] = "weights.fits";
  const Observation weighted = load(with, dir);
  ASSERT_EQ(weighted.warnings.size(), 1u);
  EXPECT_TRUE(contains(weighted.warnings[0], "weights.fits")) << weighted.warnings[0];
  EXPECT_TRUE(contains(weighted.warnings[0], "in place of \"weight_map\"")) << weighted.warnings[0];
  EXPECT_TRUE(contains(msg, "in place of \"noise_map\"")) << msg;
}

// A noise map computed from the noisy image with its Poisson term clamped at 0 has no low pixels
// for the warning above, but it carries the same bias: each pixel pulled low by 1 / t (here 1.7
// background rms). It is recognised by giving back the image pixel by pixel where the image is
// bright; maps made from the noise-free image or from the image's 5 x 5 mean are not.
TEST(Observation, ANoiseMapWhosePoissonTermIsTheNoisyImagesIsWarnedOfItsBias) {
  const auto dir = dslens::testing::temp_dir("obs_noise_map_poisson");
  const int64_t n = 120;
  const double rms = 0.0015, t = 400.0;
  const auto truth = galaxy_profile(n);
  torch::manual_seed(6);
  const auto image =
      truth + torch::sqrt(rms * rms + truth / t) * torch::randn({n, n}, torch::kFloat64);
  dslens::write_fits_image(dir + "/image.fits", image);
  const auto write_map = [&](const std::string& name, const torch::Tensor& poisson) {
    dslens::write_fits_image(dir + "/" + name,
                             torch::sqrt(rms * rms + torch::clamp_min(poisson, 0.0) / t));
  };
  write_map("from_image.fits", image);
  write_map("from_truth.fits", truth);
  write_map("from_box_mean.fits", dslens::model::local_mean(image, 5));
  json data = {{"image", "image.fits"}, {"pixel_scale", 0.03}, {"noise_map", "from_image.fits"}};
  const Observation obs = load(data, dir);
  ASSERT_EQ(obs.warnings.size(), 1u);
  const std::string& msg = obs.warnings[0];
  for (const char* part : {"from_image.fits': its sigma follows sigma^2 = 0.0015^2 + image / 400 "
                           "pixel by pixel",
                           "computed from this noisy image", "1 / t = 0.0025 (1.7 background_rms)",
                           "\"background_rms\": 0.0015, \"exposure_time\": 400, "
                           "\"poisson_term\": \"model\" in place of \"noise_map\""}) {
    EXPECT_TRUE(contains(msg, part)) << part << " in " << msg;
  }
  EXPECT_FALSE(contains(msg, "5x5 neighbourhood")) << msg;  // no low pixels
  for (const char* map : {"from_truth.fits", "from_box_mean.fits"}) {
    data["noise_map"] = map;
    const Observation quiet = load(data, dir);
    EXPECT_TRUE(quiet.warnings.empty()) << map << ": " << quiet.warnings[0];
  }
}

TEST(Observation, NonFinitePixelsAreMaskedWithACountedWarning) {
  const auto dir = dslens::testing::temp_dir("obs_nan");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  auto image = ramp(4, 5);
  image[0][0] = nan;
  image[1][2] = nan;
  image[3][4] = inf;
  auto noise = torch::full({4, 5}, 0.5, torch::kFloat64);
  noise[0][0] = nan;  // already masked by the image: not counted again
  noise[2][1] = nan;
  noise[2][2] = 0.0;
  noise[3][0] = -1.0;
  dslens::write_fits_image(dir + "/image.fits", image);
  dslens::write_fits_image(dir + "/noise.fits", noise);
  const Observation obs =
      load({{"image", "image.fits"}, {"noise_map", "noise.fits"}, {"pixel_scale", 0.1}}, dir);
  EXPECT_EQ(obs.n_fitted(), 20 - 3 - 3);
  for (auto [i, j] :
       std::vector<std::pair<int, int>>{{0, 0}, {1, 2}, {3, 4}, {2, 1}, {2, 2}, {3, 0}}) {
    EXPECT_FALSE(obs.mask[i][j].item<bool>()) << i << "," << j;
    EXPECT_EQ(obs.image[i][j].item<double>(), 0.0);
    EXPECT_EQ(obs.sigma[i][j].item<double>(), 1.0);
  }
  EXPECT_TRUE(torch::isfinite(obs.image).all().item<bool>());
  EXPECT_TRUE((obs.sigma > 0).all().item<bool>());
  ASSERT_EQ(obs.warnings.size(), 2u);
  EXPECT_TRUE(contains(obs.warnings[0], "image.fits")) << obs.warnings[0];
  EXPECT_TRUE(contains(obs.warnings[0], "3 of 20")) << obs.warnings[0];
  EXPECT_TRUE(contains(obs.warnings[1], "noise.fits")) << obs.warnings[1];
  EXPECT_TRUE(contains(obs.warnings[1], "3 of 17")) << obs.warnings[1];
}

TEST(Observation, MismatchedShapesNameBothFiles) {
  const auto dir = dslens::testing::temp_dir("obs_shape");
  dslens::write_fits_image(dir + "/image.fits", ramp(4, 5));
  dslens::write_fits_image(dir + "/noise.fits", ramp(4, 6));
  dslens::write_fits_image(dir + "/mask.fits", torch::ones({5, 5}));
  std::string path;
  auto msg = config_error(
      {{"image", "image.fits"}, {"noise_map", "noise.fits"}, {"pixel_scale", 0.1}}, dir, &path);
  EXPECT_EQ(path, "/data/noise_map");
  EXPECT_TRUE(contains(msg, dir + "/image.fits") && contains(msg, "4x5")) << msg;
  EXPECT_TRUE(contains(msg, dir + "/noise.fits") && contains(msg, "4x6")) << msg;
  msg = config_error({{"image", "image.fits"},
                      {"noise_map", "image.fits"},
                      {"mask", {{"fits", "mask.fits"}}},
                      {"pixel_scale", 0.1}},
                     dir, &path);
  EXPECT_EQ(path, "/data/mask/fits");
  EXPECT_TRUE(contains(msg, "mask.fits") && contains(msg, "5x5") && contains(msg, "4x5")) << msg;
}

TEST(Observation, CutoutPicksThePixelsOfImageNoiseAndMask) {
  const auto dir = dslens::testing::temp_dir("obs_cutout");
  const auto image = ramp(10, 12);
  const auto noise = 1.0 + ramp(10, 12) / 1000.0;
  auto mask = torch::ones({10, 12}, torch::kFloat64);
  mask[4][5] = 0.0;  // inside the cutout, at its row 1, column 1
  mask[0][0] = 0.0;  // outside
  dslens::write_fits_image(dir + "/image.fits", image);
  dslens::write_fits_image(dir + "/noise.fits", noise);
  dslens::write_fits_image(dir + "/mask.fits", mask);
  json data = {{"image", "image.fits"},
               {"noise_map", "noise.fits"},
               {"mask", "mask.fits"},
               {"pixel_scale", 0.2},
               {"cutout", {{"center", {5, 4}}, {"size", {3, 2}}}}};
  const Observation obs = load(data, dir);
  // Columns 5 - 3/2 = 4 .. 6, rows 4 - 2/2 = 3 .. 4.
  ASSERT_EQ(obs.image.sizes(), (std::vector<int64_t>{2, 3}));
  const auto expected = f64({305, 306, 307, 405, 0, 407}, 2, 3);
  EXPECT_TRUE(torch::equal(obs.image, expected)) << obs.image;
  EXPECT_DOUBLE_EQ(obs.sigma[0][0].item<double>(), 1.305);
  EXPECT_DOUBLE_EQ(obs.sigma[1][1].item<double>(), 1.0);  // masked
  EXPECT_EQ(obs.n_fitted(), 5);
  EXPECT_EQ(obs.grid.ny, 2);
  EXPECT_EQ(obs.grid.nx, 3);
  EXPECT_DOUBLE_EQ(obs.grid.ra_at_xy_0, -0.2);  // centred on the cutout
  EXPECT_DOUBLE_EQ(obs.grid.dec_at_xy_0, -0.1);
  EXPECT_TRUE(contains(obs.description, "cutout")) << obs.description;

  // Without a center the cutout is centred on the image (column 6, row 5).
  data["cutout"] = {{"size", {1, 1}}};
  EXPECT_EQ(load(data, dir).image.item<double>(), 507.0);
  // A cutout leaving the image is an error naming the JSON path and the value.
  data["cutout"] = {{"center", {10, 4}}, {"size", {6, 2}}};
  std::string path;
  const auto msg = config_error(data, dir, &path);
  EXPECT_EQ(path, "/data/cutout");
  EXPECT_TRUE(contains(msg, "[10,4]") && contains(msg, "columns 7..12")) << msg;
}

TEST(Observation, MaskRadiusKeepsAnAnnulus) {
  const auto dir = dslens::testing::temp_dir("obs_annulus");
  dslens::write_fits_image(dir + "/image.fits", ramp(9, 9));
  const double scale = 0.5, inner = 0.8, outer = 1.6;
  const Observation obs = load({{"image", "image.fits"},
                                {"noise_map", "image.fits"},
                                {"pixel_scale", scale},
                                {"mask_radius", {{"inner", inner}, {"outer", outer}}}},
                               dir);
  int64_t kept = 0;
  for (int i = 0; i < 9; ++i) {
    for (int j = 0; j < 9; ++j) {
      const double r = scale * std::hypot(i - 4.0, j - 4.0);
      const bool in = r >= inner && r <= outer;
      kept += in;
      EXPECT_EQ(obs.mask[i][j].item<bool>(), in) << i << "," << j << " r=" << r;
    }
  }
  EXPECT_EQ(obs.n_fitted(), kept);
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, 81);
  // Only an outer radius; an inverted annulus is an error.
  const Observation disc = load({{"image", "image.fits"},
                                 {"noise_map", "image.fits"},
                                 {"pixel_scale", scale},
                                 {"mask_radius", {{"outer", 0.5}}}},
                                dir);
  EXPECT_EQ(disc.n_fitted(), 5);  // the centre and its 4 neighbours at r = 0.5
  std::string path;
  const auto msg = config_error({{"image", "image.fits"},
                                 {"noise_map", "image.fits"},
                                 {"pixel_scale", scale},
                                 {"mask_radius", {{"inner", 2.0}, {"outer", 1.0}}}},
                                dir, &path);
  EXPECT_EQ(path, "/data/mask_radius") << msg;
}

TEST(Observation, MaskCirclesLeaveDiscsOut) {
  const auto dir = dslens::testing::temp_dir("obs_circles");
  dslens::write_fits_image(dir + "/image.fits", ramp(9, 9));
  const double scale = 0.5;
  const json circles = json::array(
      {{{"center", {1.0, -0.5}}, {"radius", 0.6}}, {{"center", {-1.5, 1.5}}, {"radius", 0.3}}});
  const Observation obs = load({{"image", "image.fits"},
                                {"noise_map", "image.fits"},
                                {"pixel_scale", scale},
                                {"mask_circles", circles}},
                               dir);
  // Pixel (row i, column j) sits at x = 0.5 (j - 4), y = 0.5 (i - 4).
  int64_t left_out = 0;
  for (int i = 0; i < 9; ++i) {
    for (int j = 0; j < 9; ++j) {
      const double x = scale * (j - 4.0), y = scale * (i - 4.0);
      const bool out = std::hypot(x - 1.0, y + 0.5) <= 0.6 || std::hypot(x + 1.5, y - 1.5) <= 0.3;
      left_out += out;
      EXPECT_EQ(obs.mask[i][j].item<bool>(), !out) << i << "," << j;
    }
  }
  EXPECT_EQ(left_out, 6);  // (1, -0.5) and its 4 neighbours at 0.5", and (-1.5, 1.5)
  EXPECT_EQ(obs.n_fitted(), 81 - left_out);
  // A centre that is not [x, y] and a radius <= 0 are errors naming the path and the value.
  for (const auto& [bad, where] :
       {std::pair<json, std::string>{{{"center", {1.0, 2.0, 3.0}}, {"radius", 0.5}}, "center"},
        std::pair<json, std::string>{{{"center", {1.0, 2.0}}, {"radius", -0.5}}, "radius"}}) {
    std::string path;
    const auto msg = config_error({{"image", "image.fits"},
                                   {"noise_map", "image.fits"},
                                   {"pixel_scale", scale},
                                   {"mask_circles", json::array({bad})}},
                                  dir, &path);
    EXPECT_EQ(path, "/data/mask_circles/0/" + where) << msg;
  }
}

// "image_positions": read in arcsec on the grid, batched for the posterior; a feature with one
// image, a sigma <= 0, a position that is not [x, y] and one off the image (pixel indices given
// for arcsec) are errors naming the path.
TEST(Observation, ImagePositionsAreReadAndBadOnesNameTheirPath) {
  const auto dir = dslens::testing::temp_dir("obs_positions");
  dslens::write_fits_image(dir + "/image.fits", ramp(9, 9));
  const json base = {{"image", "image.fits"}, {"noise_map", "image.fits"}, {"pixel_scale", 0.5}};
  json data = base;
  data["image_positions"] = {
      {{"images", {{1.0, -0.5}, {-1.5, 1.5}}}, {"sigma", 0.05}},
      {{"images", {{0.5, 0.5}, {-2.0, 0.0}, {2.25, -2.25}}}, {"sigma", 0.1}}};
  const Observation obs = load(data, dir);
  ASSERT_EQ(obs.image_positions.size(), 2u);
  EXPECT_EQ(obs.image_positions[1].images.size(), 3u);
  EXPECT_EQ(obs.image_positions[1].images[2][0], 2.25);
  EXPECT_EQ(obs.image_positions[0].sigma, 0.05);
  const auto batched = obs.imaging().positions;
  ASSERT_TRUE(batched.defined());
  EXPECT_EQ(batched.x.sizes(), (std::vector<int64_t>{1, 5}));
  EXPECT_NEAR(batched.inv_var[0][4].item<double>(), 100.0, 1e-9);
  EXPECT_EQ(batched.member[0][4][1].item<double>(), 1.0);
  EXPECT_FALSE(load(base, dir).imaging().positions.defined());
  const json one = {{{"images", {{1.0, -0.5}}}, {"sigma", 0.05}}};
  const json flat = {{{"images", {{1.0, -0.5}, {-1.5, 1.5}}}, {"sigma", 0.0}}};
  const json triple = {{{"images", {{1.0, -0.5}, {-1.5, 1.5, 0.0}}}, {"sigma", 0.05}}};
  const json pixels = {{{"images", {{1.0, -0.5}, {7.0, 3.0}}}, {"sigma", 0.05}}};
  for (const auto& [bad, where, says] :
       {std::tuple<json, std::string, std::string>{one, "/images", "two or more"},
        {flat, "/sigma", "> 0"},
        {triple, "/images/1", "[x, y]"},
        {pixels, "/images/1", "not pixel indices"}}) {
    json d = base;
    d["image_positions"] = bad;
    std::string path;
    const auto msg = config_error(d, dir, &path);
    EXPECT_EQ(path, "/data/image_positions/0" + where) << msg;
    EXPECT_TRUE(contains(msg, says)) << msg;
  }
}

TEST(Observation, SelectsHdusByNumberAndExtname) {
  const auto dir = dslens::testing::temp_dir("obs_hdu");
  const auto sci = ramp(3, 4);
  const auto err = 0.1 * torch::ones({3, 4}, torch::kFloat64) + 0.001 * ramp(3, 4);
  write_extensions(dir + "/multi.fits", {{"SCI", sci}, {"ERR", err}});
  const Observation obs = load({{"image", {{"fits", "multi.fits"}, {"hdu", "SCI"}}},
                                {"noise_map", {{"fits", "multi.fits"}, {"hdu", 2}}},
                                {"pixel_scale", 0.1}},
                               dir);
  EXPECT_TRUE(torch::equal(obs.image, sci));
  EXPECT_TRUE(torch::equal(obs.sigma, err));
  EXPECT_TRUE(contains(obs.description, "multi.fits[SCI]")) << obs.description;
  const Observation by_number = load({{"image", {{"fits", "multi.fits"}, {"hdu", 1}}},
                                      {"noise_map", {{"fits", "multi.fits"}, {"hdu", "ERR"}}},
                                      {"pixel_scale", 0.1}},
                                     dir);
  EXPECT_TRUE(torch::equal(by_number.image, sci));
  EXPECT_TRUE(torch::equal(by_number.sigma, err));
  std::string path;
  auto msg = config_error({{"image", {{"fits", "multi.fits"}, {"hdu", "NOPE"}}},
                           {"noise_map", "multi.fits"},
                           {"pixel_scale", 0.1}},
                          dir, &path);
  EXPECT_EQ(path, "/data/image/fits");
  EXPECT_TRUE(contains(msg, "multi.fits") && contains(msg, "NOPE")) << msg;
  msg = config_error({{"image", {{"fits", "multi.fits"}, {"hdu", -1}}},
                      {"noise_map", "multi.fits"},
                      {"pixel_scale", 0.1}},
                     dir, &path);
  EXPECT_EQ(path, "/data/image/hdu");
  EXPECT_TRUE(contains(msg, "-1") && contains(msg, "EXTNAME")) << msg;
}

// FITS data without "pixel_scale" take the image header's (core/fits.h); a scale given that is
// more than 1 % from the header's, and pixels that are not square, are warned of; with neither
// a scale nor a header to take it from, the error names data/pixel_scale.
TEST(Observation, PixelScaleComesFromTheImageHeaderWhenNotGiven) {
  const auto dir = dslens::testing::temp_dir("obs_pixel_scale");
  const double deg = 0.03 / 3600.0;
  const std::vector<dslens::FitsCard> wcs = {{"CTYPE1", std::string("RA---TAN"), ""},
                                             {"CTYPE2", std::string("DEC--TAN"), ""},
                                             {"CD1_1", -deg, ""},
                                             {"CD2_2", deg, ""}};
  dslens::write_fits_image(dir + "/hst.fits", ramp(6, 8), wcs);
  dslens::write_fits_image(dir + "/bare.fits", ramp(6, 8));
  const json base = {{"image", "hst.fits"}, {"background_rms", 0.1}, {"exposure_time", 100.0}};
  Observation obs = load(base, dir);
  EXPECT_NEAR(obs.grid.pixel_scale, 0.03, 1e-12);
  EXPECT_TRUE(obs.warnings.empty()) << obs.warnings.size();
  // The PSF's FWHM is in arcsec on that scale: 0.09" is 3 pixels.
  json with_psf = base;
  with_psf["psf"] = {{"fwhm", 0.09}};
  obs = load(with_psf, dir);
  ASSERT_TRUE(obs.psf.has_value());
  EXPECT_EQ(obs.psf->size(0) % 2, 1);
  // Given: taken as given; within 1 % no warning, beyond it one naming both scales.
  json given = base;
  given["pixel_scale"] = 0.0301;
  obs = load(given, dir);
  EXPECT_DOUBLE_EQ(obs.grid.pixel_scale, 0.0301);
  EXPECT_TRUE(obs.warnings.empty());
  given["pixel_scale"] = 0.05;
  obs = load(given, dir);
  EXPECT_DOUBLE_EQ(obs.grid.pixel_scale, 0.05);
  ASSERT_EQ(obs.warnings.size(), 1u);
  EXPECT_TRUE(contains(obs.warnings[0], "/data/pixel_scale 0.05\" differs from the 0.03\"") &&
              contains(obs.warnings[0], "hst.fits"))
      << obs.warnings[0];
  // Pixels 0.03" x 0.045": a scale of their area's side, and a warning.
  dslens::write_fits_image(dir + "/oblong.fits", ramp(6, 8),
                           {{"CTYPE1", std::string("RA---TAN"), ""},
                            {"CTYPE2", std::string("DEC--TAN"), ""},
                            {"CDELT1", -deg, ""},
                            {"CDELT2", 1.5 * deg, ""}});
  json oblong = base;
  oblong["image"] = "oblong.fits";
  obs = load(oblong, dir);
  EXPECT_NEAR(obs.grid.pixel_scale, 0.03 * std::sqrt(1.5), 1e-12);
  ASSERT_EQ(obs.warnings.size(), 1u);
  EXPECT_TRUE(contains(obs.warnings[0], "not square")) << obs.warnings[0];
  // No scale given and none in the header.
  json bare = base;
  bare["image"] = "bare.fits";
  std::string path;
  const std::string msg = config_error(bare, dir, &path);
  EXPECT_EQ(path, "/data/pixel_scale");
  EXPECT_TRUE(contains(msg, "bare.fits") && contains(msg, "missing")) << msg;
}

TEST(Observation, PsfIsCheckedAndNormalised) {
  const auto dir = dslens::testing::temp_dir("obs_psf");
  dslens::write_fits_image(dir + "/image.fits", ramp(6, 6));
  const auto kernel = f64({1, 2, 1, 2, 4, 2, 1, 2, 1}, 3, 3);
  dslens::write_fits_image(dir + "/psf.fits", kernel);
  dslens::write_fits_image(dir + "/even.fits", torch::ones({4, 5}));
  dslens::write_fits_image(dir + "/zero.fits", f64({1, -1, 0, 0, 0, 0, 0, 0, 0}, 3, 3));
  json data = {{"image", "image.fits"},
               {"noise_map", "image.fits"},
               {"pixel_scale", 0.1},
               {"psf", {{"fits", "psf.fits"}}}};
  const Observation obs = load(data, dir);
  ASSERT_TRUE(obs.psf.has_value());
  EXPECT_TRUE(torch::allclose(*obs.psf, kernel / 16.0, 0, 1e-16));
  std::string path;
  data["psf"] = {{"fits", "even.fits"}};
  auto msg = config_error(data, dir, &path);
  EXPECT_EQ(path, "/data/psf/fits");
  EXPECT_TRUE(contains(msg, "even.fits") && contains(msg, "4x5") && contains(msg, "odd")) << msg;
  data["psf"] = {{"fits", "zero.fits"}};
  msg = config_error(data, dir, &path);
  EXPECT_TRUE(contains(msg, "zero.fits") && contains(msg, "sums to 0")) << msg;
  data["psf"] = {{"fits", "missing.fits"}};
  msg = config_error(data, dir, &path);
  EXPECT_EQ(path, "/data/psf/fits");
  EXPECT_TRUE(contains(msg, "missing.fits")) << msg;
  // A Gaussian is physics::gaussian_psf_kernel on the data's pixels.
  data["psf"] = {{"fwhm", 0.25}};
  const Observation gauss = load(data, dir);
  ASSERT_TRUE(gauss.psf.has_value());
  EXPECT_TRUE(torch::equal(*gauss.psf, dslens::physics::gaussian_psf_kernel(0.25, 0.1, {})));
  data["psf"] = {{"fwhm", 0.25}, {"fits", "psf.fits"}};
  msg = config_error(data, dir, &path);
  EXPECT_EQ(path, "/data/psf") << msg;
  data["psf"] = {{"fwhm", 0.25}, {"size", 4}};
  msg = config_error(data, dir, &path);
  EXPECT_EQ(path, "/data/psf/size") << msg;
}

TEST(Observation, ConfigErrorsNameTheJsonPath) {
  const auto dir = dslens::testing::temp_dir("obs_keys");
  dslens::write_fits_image(dir + "/image.fits", ramp(4, 4));
  const json good = {{"image", "image.fits"}, {"noise_map", "image.fits"}, {"pixel_scale", 0.1}};
  EXPECT_NO_THROW(load(good, dir));
  std::string path;
  json data = good;
  data["nois_map"] = "x.fits";
  auto msg = config_error(data, dir, &path);
  EXPECT_EQ(path, "/data/nois_map");
  EXPECT_TRUE(contains(msg, "unknown key") && contains(msg, "noise_map")) << msg;
  data = good;
  data["cutout"] = {{"centre", {1, 1}}, {"size", {2, 2}}};
  msg = config_error(data, dir, &path);
  EXPECT_EQ(path, "/data/cutout/centre") << msg;
  data = good;
  data["pixel_scale"] = -0.1;
  msg = config_error(data, dir, &path);
  EXPECT_EQ(path, "/data/pixel_scale");
  EXPECT_TRUE(contains(msg, "-0.1") && contains(msg, "> 0")) << msg;
  data = good;
  data.erase("pixel_scale");
  msg = config_error(data, dir, &path);
  EXPECT_EQ(path, "/data/pixel_scale") << msg;
  data = good;
  data["image"] = 3;
  msg = config_error(data, dir, &path);
  EXPECT_EQ(path, "/data/image") << msg;
  msg = config_error({{"simulation", "sim"}, {"pixel_scale", 0.1}}, dir, &path);
  EXPECT_EQ(path, "/data/pixel_scale") << msg;
  msg = config_error({{"simulation", "no_such_folder"}}, dir, &path);
  EXPECT_EQ(path, "/data/simulation");
  EXPECT_TRUE(contains(msg, "no_such_folder")) << msg;
}

TEST(Observation, SimulationFolderRoundTripsTheGrid) {
  const auto dir = dslens::testing::temp_dir("obs_sim");
  const auto sim = dir + "/runs/mock";
  std::filesystem::create_directories(sim);
  const auto image = ramp(6, 8);
  const auto noise = 0.01 + 0.0 * image;
  dslens::write_fits_image(sim + "/image.fits", image);
  dslens::write_fits_image(sim + "/noise_map.fits", noise);
  dslens::write_fits_image(sim + "/psf.fits", f64({0, 1, 0, 1, 4, 1, 0, 1, 0}, 3, 3));
  auto value = [](double v, const std::string& unit) { return json{{"value", v}, {"unit", unit}}; };
  json truth;
  truth["grid"] = {{"nx", value(8, "pixels")},
                   {"ny", value(6, "pixels")},
                   {"pixel_scale", value(0.07, "arcsec/pixel")},
                   {"ra_at_xy_0", value(-0.3, "arcsec")},
                   {"dec_at_xy_0", value(-0.2, "arcsec")},
                   {"supersampling", value(2, "sub-pixels per pixel side")}};
  truth["mass"] = json::array({{{"type", "SIE"}, {"theta_E", value(1.1, "arcsec")}}});
  std::ofstream(sim + "/truth.json") << truth.dump(2) << "\n";

  json data = {{"simulation", "runs/mock"}};
  const Observation obs = load(data, dir);
  EXPECT_EQ(obs.grid.nx, 8);
  EXPECT_EQ(obs.grid.ny, 6);
  EXPECT_DOUBLE_EQ(obs.grid.pixel_scale, 0.07);
  EXPECT_DOUBLE_EQ(obs.grid.ra_at_xy_0, -0.3);
  EXPECT_DOUBLE_EQ(obs.grid.dec_at_xy_0, -0.2);
  EXPECT_EQ(obs.truth, truth);
  EXPECT_TRUE(torch::equal(obs.image, image));
  EXPECT_TRUE(torch::equal(obs.sigma, noise));
  EXPECT_FALSE(obs.poisson_from_model);
  ASSERT_TRUE(obs.psf.has_value());
  EXPECT_DOUBLE_EQ((*obs.psf)[1][1].item<double>(), 0.5);
  EXPECT_TRUE(contains(obs.description, "runs/mock (dslens simulate)")) << obs.description;
  // A simulation's noise map is scaled too.
  const Observation scaled = load({{"simulation", "runs/mock"}, {"noise_scale", 2.5}}, dir);
  EXPECT_TRUE(torch::allclose(scaled.sigma, 2.5 * noise, 1e-15, 0));

  // "poisson_term": "model" takes the simulation's noise from truth.json; without it, an error.
  std::string where;
  auto why = config_error({{"simulation", "runs/mock"}, {"poisson_term", "model"}}, dir, &where);
  EXPECT_EQ(where, "/data/poisson_term");
  EXPECT_TRUE(contains(why, "noise/background_rms")) << why;
  truth["noise"] = {{"background_rms", value(0.01, "")}, {"exposure_time", value(200, "s")}};
  std::ofstream(sim + "/truth.json") << truth.dump(2) << "\n";
  const Observation from_model =
      load({{"simulation", "runs/mock"}, {"poisson_term", "model"}}, dir);
  ASSERT_TRUE(from_model.poisson_from_model);
  EXPECT_TRUE(torch::allclose(from_model.sigma_at(image), torch::sqrt(0.01 * 0.01 + image / 200.0),
                              1e-14, 0));

  // A cutout keeps every pixel at its original position.
  data["cutout"] = {{"center", {5, 3}}, {"size", {3, 3}}};
  const Observation cut = load(data, dir);
  const dslens::Compute cpu{};
  const auto [x_full, y_full] = obs.grid.coordinates(cpu);
  const auto [x_cut, y_cut] = cut.grid.coordinates(cpu);
  EXPECT_TRUE(torch::allclose(x_cut, x_full.slice(0, 2, 5).slice(1, 4, 7), 0, 1e-14));
  EXPECT_TRUE(torch::allclose(y_cut, y_full.slice(0, 2, 5).slice(1, 4, 7), 0, 1e-14));
  EXPECT_TRUE(torch::equal(cut.image, image.slice(0, 2, 5).slice(1, 4, 7)));

  // truth.json and image.fits must agree.
  truth["grid"]["nx"] = value(9, "pixels");
  std::ofstream(sim + "/truth.json") << truth.dump(2) << "\n";
  std::string path;
  const auto msg = config_error({{"simulation", "runs/mock"}}, dir, &path);
  EXPECT_EQ(path, "/data/simulation");
  EXPECT_TRUE(contains(msg, "6x8") && contains(msg, "6x9") && contains(msg, "truth.json")) << msg;
}

TEST(Observation, LoadsTheSharedSlacsLensWithACutout) {
  const auto folder = dslens::testing::shared_dir() + "/data/lenses/slacs_j1430+4105";
  DSLENS_REQUIRE_FILE(folder + "/image.fits");
  const Observation obs = load({{"image", "image.fits"},
                                {"noise_map", {{"fits", "noise_map.fits"}}},
                                {"psf", {{"fits", "psf.fits"}}},
                                {"pixel_scale", 0.03},
                                {"cutout", {{"center", {150, 150}}, {"size", {120, 100}}}}},
                               folder);
  ASSERT_EQ(obs.image.sizes(), (std::vector<int64_t>{100, 120}));
  EXPECT_EQ(obs.sigma.sizes(), obs.image.sizes());
  EXPECT_EQ(obs.grid.nx, 120);
  EXPECT_EQ(obs.grid.ny, 100);
  ASSERT_TRUE(obs.psf.has_value());
  EXPECT_EQ(obs.psf->sizes(), (std::vector<int64_t>{21, 21}));
  EXPECT_NEAR(obs.psf->sum().item<double>(), 1.0, 1e-12);
  EXPECT_TRUE(torch::isfinite(obs.image).all().item<bool>());
  EXPECT_TRUE((obs.sigma > 0).all().item<bool>());
  EXPECT_GT(obs.n_fitted(), 100 * 120 * 9 / 10);
  // The fitted pixels are the file's pixels at rows 100..199, columns 90..209.
  const auto raw = dslens::read_fits_image(folder + "/image.fits");
  const auto expected = raw.slice(0, 100, 200).slice(1, 90, 210);
  EXPECT_TRUE(torch::equal(obs.image.masked_select(obs.mask), expected.masked_select(obs.mask)));
  // Inside the cut-out the noise map has no low pixels (docs/slacs.md, session 62).
  EXPECT_TRUE(obs.warnings.empty()) << obs.warnings[0];
}

// On the whole image, 1.6 % of the pixels, where the image is near or below 0, carry over half
// the weight: the map's Poisson term was computed from the noisy image (docs/slacs.md).
TEST(Observation, TheSharedSlacsNoiseMapIsWarnedAboutOnTheWholeImage) {
  const auto folder = dslens::testing::shared_dir() + "/data/lenses/slacs_j1430+4105";
  DSLENS_REQUIRE_FILE(folder + "/noise_map.fits");
  const Observation obs = load(
      {{"image", "image.fits"}, {"noise_map", "noise_map.fits"}, {"pixel_scale", 0.03}}, folder);
  ASSERT_EQ(obs.warnings.size(), 1u);
  EXPECT_TRUE(contains(obs.warnings[0], "noise_map.fits")) << obs.warnings[0];
  EXPECT_TRUE(contains(obs.warnings[0], "\"poisson_smoothing\": 5")) << obs.warnings[0];
  const auto s = obs.sigma;
  const auto form = dslens::model::fit_noise_map_form(obs.image, s, obs.mask);
  EXPECT_NEAR(form.exposure_time, 398.0, 8.0);
  EXPECT_NEAR(form.background_rms, 0.0014, 0.0001);
}

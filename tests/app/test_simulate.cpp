// `dslens simulate` end to end: the executable is run on configs in temporary folders, and its
// outputs are checked against closed forms (flux, centroid, Einstein radius), noise statistics and
// each other; bad input must exit 2 naming the JSON path and leave nothing behind.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dslens/core/fits.h"
#include "run_dslens.h"
#include "test_support.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using dslens::testing::quote;
using dslens::testing::read_json;
using dslens::testing::run_dslens;
using dslens::testing::RunResult;
using dslens::testing::write_json;

// Runs without the trailing --log-level (for the top-level --help / --version).
RunResult run_plain(const std::string& args) {
  return run_dslens(args, "");
}

const char* kFiles[] = {"image.fits",  "model.fits", "noise_map.fits", "psf.fits",
                        "source.fits", "truth.json", "preview.png"};

void expect_all_files(const std::string& dir) {
  for (const char* f : kFiles) EXPECT_TRUE(fs::exists(dir + "/" + f)) << dir << "/" << f;
}

size_t entries(const std::string& dir) {
  size_t n = 0;
  for (auto it = fs::directory_iterator(dir); it != fs::directory_iterator(); ++it) ++n;
  return n;
}

// A small config in `dir`, with every kind of component; `source_fits` is written there.
json base_config(const std::string& dir) {
  dslens::write_fits_image(dir + "/src.fits", torch::rand({8, 8}, torch::kFloat64));
  return json::parse(R"({
    "grid": {"nx": 24, "ny": 20, "pixel_scale": 0.1, "supersampling": 2},
    "psf": {"fwhm": 0.15},
    "mass": [{"type": "EPL", "theta_E": 0.8, "gamma": 2.0, "q": 0.8, "phi": 0.2,
              "center_x": 0.0, "center_y": 0.0},
             {"type": "SHEAR", "gamma1": 0.02, "gamma2": 0.0}],
    "lens_light": [{"type": "SERSIC_ELLIPSE", "amp": 10, "R_sersic": 0.5, "n_sersic": 3,
                    "e1": 0.05, "e2": 0.0, "center_x": 0, "center_y": 0}],
    "source": [{"type": "INTERPOL", "fits": "src.fits", "center_x": 0.0, "center_y": 0.0,
                "scale": 0.05, "phi_G": 0.0, "amp": 5.0}],
    "noise": {"background_rms": 0.05, "exposure_time": 100.0},
    "seed": 3
  })");
}

// Decoded PNG header: width and height, after checking the signature.
std::pair<uint32_t, uint32_t> png_size(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::vector<uint8_t> sig = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (b.size() < 33 || !std::equal(sig.begin(), sig.end(), b.begin())) return {0, 0};
  auto u32 = [&](size_t at) {
    return (uint32_t(b[at]) << 24) | (uint32_t(b[at + 1]) << 16) | (uint32_t(b[at + 2]) << 8) |
           uint32_t(b[at + 3]);
  };
  if (std::string(b.begin() + 12, b.begin() + 16) != "IHDR") return {0, 0};
  return {u32(16), u32(20)};
}

}  // namespace

TEST(SimulateCli, HelpAndVersionExitZero) {
  auto help = run_plain("--help");
  EXPECT_EQ(help.code, 0) << help.output;
  EXPECT_NE(help.output.find("simulate"), std::string::npos) << help.output;
  auto version = run_plain("--version");
  EXPECT_EQ(version.code, 0);
  EXPECT_EQ(version.output.rfind("dslens ", 0), 0u) << version.output;
  auto sim_help = run_plain("simulate --help");
  EXPECT_EQ(sim_help.code, 0) << sim_help.output;
  EXPECT_NE(sim_help.output.find("--out"), std::string::npos) << sim_help.output;
  EXPECT_NE(sim_help.output.find("--overwrite"), std::string::npos);
  EXPECT_NE(sim_help.output.find("--device"), std::string::npos);
  auto bench_help = run_plain("bench simulate --help");
  EXPECT_EQ(bench_help.code, 0) << bench_help.output;
}

TEST(SimulateCli, BadCommandLinesExitTwo) {
  const auto dir = dslens::testing::temp_dir("sim_cli");
  write_json(dir + "/c.json", base_config(dir));
  auto no_out = run_dslens("simulate " + quote(dir + "/c.json"));
  EXPECT_EQ(no_out.code, 2) << no_out.output;
  EXPECT_NE(no_out.output.find("--out"), std::string::npos) << no_out.output;
  auto bad_opt = run_dslens("simulate " + quote(dir + "/c.json") + " --out x --frobnicate");
  EXPECT_EQ(bad_opt.code, 2) << bad_opt.output;
  auto bad_device = run_dslens("simulate " + quote(dir + "/c.json") + " --out " +
                               quote(dir + "/o") + " --device tpu");
  EXPECT_EQ(bad_device.code, 2) << bad_device.output;
  EXPECT_FALSE(fs::exists(dir + "/o"));
  auto missing =
      run_dslens("simulate " + quote(dir + "/nope.json") + " --out " + quote(dir + "/o"));
  EXPECT_EQ(missing.code, 2) << missing.output;
  EXPECT_NE(missing.output.find("nope.json"), std::string::npos) << missing.output;
  std::ofstream(dir + "/broken.json") << "{\"grid\": {";
  auto broken =
      run_dslens("simulate " + quote(dir + "/broken.json") + " --out " + quote(dir + "/o"));
  EXPECT_EQ(broken.code, 2) << broken.output;
  EXPECT_NE(broken.output.find("broken.json"), std::string::npos) << broken.output;
  EXPECT_FALSE(fs::exists(dir + "/o"));
  fs::remove_all(dir);
}

// Every config shipped in configs/ runs; the noise is consistent with the noise map, the files
// carry the grid, and truth.json holds the configured values.
TEST(SimulateConfigs, ShippedConfigsRunAndWriteConsistentFiles) {
  const std::string configs = std::string(DSLENS_SOURCE_DIR) + "/configs";
  const auto dir = dslens::testing::temp_dir("sim_configs");
  for (const std::string name :
       {"sie_shear_sersic", "epl_shear_pixelated", "hst_like", "euclid_like"}) {
    SCOPED_TRACE(name);
    const std::string cfg_path = configs + "/" + name + ".json";
    ASSERT_TRUE(fs::exists(cfg_path));
    const json cfg = read_json(cfg_path);
    const std::string out = dir + "/" + name;
    auto r = run_dslens("simulate " + quote(cfg_path) + " --out " + quote(out));
    ASSERT_EQ(r.code, 0) << r.output;
    expect_all_files(out);

    const auto image = dslens::read_fits_image(out + "/image.fits");
    const auto model = dslens::read_fits_image(out + "/model.fits");
    const auto sigma = dslens::read_fits_image(out + "/noise_map.fits");
    const int64_t nx = cfg["grid"]["nx"], ny = cfg["grid"]["ny"];
    ASSERT_EQ(model.sizes(), (std::vector<int64_t>{ny, nx}));
    ASSERT_EQ(image.sizes(), model.sizes());
    ASSERT_EQ(sigma.sizes(), model.sizes());
    const auto header = dslens::read_fits_numeric_header(out + "/model.fits");
    EXPECT_DOUBLE_EQ(header.at("PIXSCALE"), cfg["grid"]["pixel_scale"].get<double>());
    // Its WCS gives the same scale (CDELT in arcsec), so that a fit of it needs no pixel_scale.
    const auto wcs = dslens::fits_pixel_scale(dslens::read_fits_header(out + "/model.fits"));
    ASSERT_TRUE(wcs.has_value());
    EXPECT_DOUBLE_EQ(wcs->arcsec, cfg["grid"]["pixel_scale"].get<double>());
    EXPECT_NE(wcs->from.find("CDELT1"), std::string::npos) << wcs->from;

    // The model is a lens: bright, finite, non-negative.
    EXPECT_TRUE(torch::isfinite(model).all().item<bool>());
    EXPECT_GE(model.min().item<double>(), -1e-12 * model.max().item<double>());
    EXPECT_GT(model.max().item<double>(), 10.0 * cfg["noise"]["background_rms"].get<double>());
    // sigma^2 = bg^2 + model / t_exp, and (image - model) / sigma ~ N(0, 1).
    const double bg = cfg["noise"]["background_rms"], t_exp = cfg["noise"]["exposure_time"];
    const auto expected_sigma = torch::sqrt(bg * bg + model.clamp_min(0) / t_exp);
    EXPECT_LT((sigma - expected_sigma).abs().max().item<double>(), 1e-9);
    const auto z = (image - model) / sigma;
    const double n = static_cast<double>(z.numel());
    EXPECT_LT(std::abs(z.mean().item<double>()), 5.0 / std::sqrt(n));
    EXPECT_NEAR(z.std().item<double>(), 1.0, 5.0 / std::sqrt(2.0 * n));

    const auto psf = dslens::read_fits_image(out + "/psf.fits");
    EXPECT_NEAR(psf.sum().item<double>(), 1.0, 1e-9);
    EXPECT_EQ(psf.size(0) % 2, 1);

    const json truth = read_json(out + "/truth.json");
    EXPECT_DOUBLE_EQ(truth["mass"][0]["theta_E"]["value"].get<double>(),
                     cfg["mass"][0]["theta_E"].get<double>());
    EXPECT_EQ(truth["mass"][0]["theta_E"]["unit"].get<std::string>(), "arcsec");
    EXPECT_EQ(truth["seed"].get<int64_t>(), cfg["seed"].get<int64_t>());
    const auto [w, h] = png_size(out + "/preview.png");
    EXPECT_GT(w, 800u);
    EXPECT_GT(h, 250u);
  }
  fs::remove_all(dir);
}

// An unlensed Gaussian: total flux = amp (GAUSSIAN's amp is the total flux), centroid at the
// configured centre (x along columns, y along rows from the bottom), and zero noise = the model.
TEST(SimulatePhysics, UnlensedGaussianHasItsFluxAndCentroid) {
  const auto dir = dslens::testing::temp_dir("sim_gauss");
  json cfg = json::parse(R"({
    "grid": {"nx": 64, "ny": 48, "pixel_scale": 0.05, "supersampling": 3},
    "psf": {"fwhm": 0.1},
    "mass": [],
    "source": [{"type": "GAUSSIAN", "amp": 10.0, "sigma": 0.15, "center_x": 0.3, "center_y": -0.2}],
    "noise": {"background_rms": 0.0, "exposure_time": 0.0}
  })");
  write_json(dir + "/c.json", cfg);
  auto r = run_dslens("simulate " + quote(dir + "/c.json") + " --out " + quote(dir + "/o"));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto model = dslens::read_fits_image(dir + "/o/model.fits");
  const auto image = dslens::read_fits_image(dir + "/o/image.fits");
  EXPECT_NEAR(model.sum().item<double>(), 10.0, 0.01);
  EXPECT_TRUE(torch::equal(model, image));
  const double s = 0.05;
  auto x = (torch::arange(64, torch::kFloat64) - 31.5) * s;
  auto y = (torch::arange(48, torch::kFloat64) - 23.5) * s;
  const double total = model.sum().item<double>();
  const double cx = (model * x.unsqueeze(0)).sum().item<double>() / total;
  const double cy = (model * y.unsqueeze(1)).sum().item<double>() / total;
  EXPECT_NEAR(cx, 0.3, 2e-3);
  EXPECT_NEAR(cy, -0.2, 2e-3);

  // The true source plane: a Gaussian's peak is amp / (2 pi sigma^2), and its brightness-weighted
  // mean brightness (int s^2 / int s) half of that, so peak_over_mean = 2 (the window, +-3.3 sigma,
  // holds 99.8 % of the flux); no pixel is negative.
  const json sp = read_json(dir + "/o/truth.json").at("source_plane");
  const double peak = 10.0 / (2.0 * M_PI * 0.15 * 0.15);
  EXPECT_NEAR(sp.at("peak").at("value").get<double>(), peak, 1e-3 * peak);
  EXPECT_NEAR(sp.at("peak_over_mean").at("value").get<double>(), 2.0, 0.01);
  EXPECT_EQ(sp.at("negative_flux_fraction").at("value").get<double>(), 0.0);
  const auto source = dslens::read_fits_image(dir + "/o/source.fits");
  EXPECT_EQ(source.sizes(), (std::vector<int64_t>{200, 200}));
  EXPECT_DOUBLE_EQ(source.max().item<double>(), sp.at("peak").at("value").get<double>());
  // Its pixels sum to the flux: brightness x pixel area.
  const double pixel = sp.at("pixel").at("value").get<double>();
  EXPECT_NEAR(source.sum().item<double>() * pixel * pixel, 10.0, 0.03);
  fs::remove_all(dir);
}

// truth.json's image_positions: the images of the source's centre through the true lens. An SIS
// of 1" images a centre 0.2" out on the x axis at 1.2" (magnification 1 + 1 / 0.2 = 6) and -0.8"
// (1 - 1 / 0.2 = -4), brightest first; without a lens there are none.
TEST(SimulatePhysics, TruthHasTheImagesOfTheSourceCentre) {
  const auto dir = dslens::testing::temp_dir("sim_images");
  json cfg = json::parse(R"({
    "grid": {"nx": 60, "ny": 60, "pixel_scale": 0.05},
    "psf": {"fwhm": 0.1},
    "mass": [{"type": "SIS", "theta_E": 1.0, "center_x": 0.0, "center_y": 0.0}],
    "source": [{"type": "GAUSSIAN", "amp": 10.0, "sigma": 0.05, "center_x": 0.2, "center_y": 0.0}],
    "noise": {"background_rms": 0.0, "exposure_time": 0.0}
  })");
  write_json(dir + "/c.json", cfg);
  auto r = run_dslens("simulate " + quote(dir + "/c.json") + " --out " + quote(dir + "/o"));
  ASSERT_EQ(r.code, 0) << r.output;
  const json positions = read_json(dir + "/o/truth.json").at("image_positions");
  ASSERT_EQ(positions.size(), 1u) << positions.dump();
  const json& images = positions[0].at("images");
  ASSERT_EQ(images.size(), 2u) << positions.dump();
  EXPECT_NEAR(images[0][0].get<double>(), 1.2, 1e-8);
  EXPECT_NEAR(images[0][1].get<double>(), 0.0, 1e-8);
  EXPECT_NEAR(images[1][0].get<double>(), -0.8, 1e-8);
  EXPECT_NEAR(positions[0].at("magnifications")[0].get<double>(), 6.0, 1e-6);
  EXPECT_NEAR(positions[0].at("magnifications")[1].get<double>(), -4.0, 1e-6);
  cfg["mass"] = json::array();
  write_json(dir + "/c.json", cfg);
  r = run_dslens("simulate " + quote(dir + "/c.json") + " --out " + quote(dir + "/unlensed"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(read_json(dir + "/unlensed/truth.json").at("image_positions").empty());
  fs::remove_all(dir);
}

// A source of both signs: a pixelated stamp with a block of +1 and, a zero column apart, a block
// of -0.3 of the same size. Bilinear interpolation keeps the two signs apart and integrates each
// pixel to its value times its area, so the negative flux is 0.3 of the positive, and the two
// plateaus give the peak and the minimum.
TEST(SimulatePhysics, SourcePlaneSummaryCountsNegativeFlux) {
  const auto dir = dslens::testing::temp_dir("sim_negative");
  auto stamp = torch::zeros({8, 8}, torch::kFloat64);
  stamp.index_put_({torch::indexing::Slice(2, 6), torch::indexing::Slice(1, 3)}, 1.0);
  stamp.index_put_({torch::indexing::Slice(2, 6), torch::indexing::Slice(4, 6)}, -0.3);
  dslens::write_fits_image(dir + "/src.fits", stamp);
  json cfg = json::parse(R"({
    "grid": {"nx": 40, "ny": 40, "pixel_scale": 0.05},
    "psf": {"fwhm": 0.1},
    "mass": [],
    "source": [{"type": "INTERPOL", "fits": "src.fits", "center_x": 0.1, "center_y": 0.0,
                "scale": 0.05, "phi_G": 0.0, "amp": 5.0}],
    "noise": {"background_rms": 0.0, "exposure_time": 0.0}
  })");
  write_json(dir + "/c.json", cfg);
  auto r = run_dslens("simulate " + quote(dir + "/c.json") + " --out " + quote(dir + "/o"));
  ASSERT_EQ(r.code, 0) << r.output;
  const json sp = read_json(dir + "/o/truth.json").at("source_plane");
  EXPECT_NEAR(sp.at("negative_flux_fraction").at("value").get<double>(), 0.3, 0.003);
  const double peak = sp.at("peak").at("value").get<double>();
  EXPECT_GT(peak, 0.0);
  EXPECT_NEAR(sp.at("minimum").at("value").get<double>(), -0.3 * peak, 1e-9 * peak);
  fs::remove_all(dir);
}

// A compact source behind an SIS forms an Einstein ring of radius theta_E.
TEST(SimulatePhysics, SisMakesAnEinsteinRingAtThetaE) {
  const auto dir = dslens::testing::temp_dir("sim_ring");
  json cfg = json::parse(R"({
    "grid": {"nx": 100, "ny": 100, "pixel_scale": 0.04, "supersampling": 4},
    "psf": {"fwhm": 0.04},
    "mass": [{"type": "SIS", "theta_E": 1.2, "center_x": 0.0, "center_y": 0.0}],
    "source": [{"type": "GAUSSIAN", "amp": 1.0, "sigma": 0.02, "center_x": 0.0, "center_y": 0.0}],
    "noise": {"background_rms": 0.01, "exposure_time": 0.0}
  })");
  write_json(dir + "/c.json", cfg);
  auto r = run_dslens("simulate " + quote(dir + "/c.json") + " --out " + quote(dir + "/o"));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto model = dslens::read_fits_image(dir + "/o/model.fits");
  auto c = (torch::arange(100, torch::kFloat64) - 49.5) * 0.04;
  auto radius = torch::sqrt(c.unsqueeze(0).square() + c.unsqueeze(1).square());
  const double mean_r = (model * radius).sum().item<double>() / model.sum().item<double>();
  EXPECT_NEAR(mean_r, 1.2, 0.03);
  // A ring: the flux inside 0.6 theta_E is negligible.
  const double inner = (model * (radius < 0.72)).sum().item<double>();
  EXPECT_LT(inner, 1e-3 * model.sum().item<double>());
  fs::remove_all(dir);
}

// e1/e2 and the equivalent q/phi give the same image; a PSF kernel from FITS is normalised.
TEST(SimulatePhysics, EllipticityFormsAndFitsPsfAgree) {
  const auto dir = dslens::testing::temp_dir("sim_forms");
  json a = base_config(dir);
  const double q = 0.8, phi = 0.2, f = (1 - q) / (1 + q);
  json b = a;
  b["mass"][0].erase("q");
  b["mass"][0].erase("phi");
  b["mass"][0]["e1"] = f * std::cos(2 * phi);
  b["mass"][0]["e2"] = f * std::sin(2 * phi);
  // Delta kernels of different sizes and sums must give the same (unconvolved) image.
  auto delta3 = torch::zeros({3, 3}, torch::kFloat64);
  delta3[1][1] = 5.0;
  dslens::write_fits_image(dir + "/d3.fits", delta3);
  dslens::write_fits_image(dir + "/d1.fits", torch::full({1, 1}, 2.0, torch::kFloat64));
  a["psf"] = {{"fits", "d3.fits"}};
  b["psf"] = {{"fits", "d1.fits"}};
  write_json(dir + "/a.json", a);
  write_json(dir + "/b.json", b);
  auto ra = run_dslens("simulate " + quote(dir + "/a.json") + " --out " + quote(dir + "/oa"));
  auto rb = run_dslens("simulate " + quote(dir + "/b.json") + " --out " + quote(dir + "/ob"));
  ASSERT_EQ(ra.code, 0) << ra.output;
  ASSERT_EQ(rb.code, 0) << rb.output;
  const auto ma = dslens::read_fits_image(dir + "/oa/model.fits");
  const auto mb = dslens::read_fits_image(dir + "/ob/model.fits");
  EXPECT_LT((ma - mb).abs().max().item<double>(), 1e-10 * ma.abs().max().item<double>());
  EXPECT_GT(ma.max().item<double>(), 0.0);
  const auto psf = dslens::read_fits_image(dir + "/oa/psf.fits");
  EXPECT_DOUBLE_EQ(psf[1][1].item<double>(), 1.0);
  EXPECT_DOUBLE_EQ(psf.sum().item<double>(), 1.0);
  fs::remove_all(dir);
}

// grid.ra_at_xy_0 / dec_at_xy_0 place pixel (0, 0) (a fit's exported model on a cut-out has
// them): the grid moved by (+2, -1) pixels with every centre moved by the same offset images the
// same lens, pixel for pixel, as the centred grid; the centres moved alone give another image.
TEST(SimulateGrid, PixelZerosPositionMovesTheGrid) {
  const auto dir = dslens::testing::temp_dir("sim_grid_origin");
  const json centred = base_config(dir);
  const double s = 0.1, dx = 2 * s, dy = -s;
  json moved = centred;
  moved["grid"]["ra_at_xy_0"] = -0.5 * (24 - 1) * s + dx;
  moved["grid"]["dec_at_xy_0"] = -0.5 * (20 - 1) * s + dy;
  for (const std::string list : {"mass", "lens_light", "source"}) {
    for (auto& c : moved[list]) {
      if (!c.contains("center_x")) continue;
      c["center_x"] = c["center_x"].get<double>() + dx;
      c["center_y"] = c["center_y"].get<double>() + dy;
    }
  }
  // The shear's origin moves too (lenstronomy's ra_0, dec_0).
  moved["mass"][1]["ra_0"] = dx;
  moved["mass"][1]["dec_0"] = dy;
  json centres_only = moved;
  centres_only["grid"].erase("ra_at_xy_0");
  centres_only["grid"].erase("dec_at_xy_0");
  std::map<std::string, torch::Tensor> model;
  for (const auto& [name, cfg] : std::map<std::string, json>{
           {"centred", centred}, {"moved", moved}, {"centres_only", centres_only}}) {
    write_json(dir + "/" + name + ".json", cfg);
    const auto r = run_dslens("simulate " + quote(dir + "/" + name + ".json") + " --out " +
                              quote(dir + "/" + name));
    ASSERT_EQ(r.code, 0) << name << "\n" << r.output;
    model[name] = dslens::read_fits_image(dir + "/" + name + "/model.fits");
  }
  const double peak = model["centred"].abs().max().item<double>();
  EXPECT_LT((model["moved"] - model["centred"]).abs().max().item<double>(), 1e-9 * peak);
  EXPECT_GT((model["centres_only"] - model["centred"]).abs().max().item<double>(), 0.1 * peak);
  EXPECT_NEAR(read_json(dir + "/moved/truth.json")["grid"]["ra_at_xy_0"]["value"].get<double>(),
              -1.15 + dx, 1e-12);

  json half = centred;
  half["grid"]["ra_at_xy_0"] = 0.0;
  write_json(dir + "/half.json", half);
  const auto r =
      run_dslens("simulate " + quote(dir + "/half.json") + " --out " + quote(dir + "/half"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("/grid/dec_at_xy_0: missing required key"), std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir + "/half"));
  fs::remove_all(dir);
}

// Each class of bad input: exit 2, a message naming the JSON path (or file), nothing written.
TEST(SimulateBadInput, EachClassExitsTwoNamingThePathAndWritesNothing) {
  const auto dir = dslens::testing::temp_dir("sim_bad");
  const json base = base_config(dir);
  std::ofstream(dir + "/junk.fits") << "SIMPLE  = this is not a FITS file";
  dslens::write_fits_image(dir + "/even.fits", torch::ones({4, 4}, torch::kFloat64));
  struct Case {
    std::string name;
    std::function<void(json&)> mutate;
    std::vector<std::string> expect;  // fragments of the message
  };
  const std::vector<Case> cases = {
      {"unknown top-level key", [](json& c) { c["grdi"] = 1; }, {"/grdi", "unknown key"}},
      {"unknown component key",
       [](json& c) { c["mass"][0]["theta_e"] = 1.0; },
       {"/mass/0/theta_e", "unknown key", "theta_E"}},
      {"missing grid value", [](json& c) { c["grid"].erase("nx"); }, {"/grid/nx", "missing"}},
      {"missing parameter",
       [](json& c) { c["mass"][0].erase("theta_E"); },
       {"/mass/0/theta_E", "missing"}},
      {"missing section", [](json& c) { c.erase("noise"); }, {"/noise", "missing"}},
      {"wrong type number",
       [](json& c) { c["grid"]["pixel_scale"] = "0.05"; },
       {"/grid/pixel_scale", "expected a number"}},
      {"wrong type array",
       [](json& c) { c["mass"] = json::object(); },
       {"/mass", "expected an array"}},
      {"non-integer size",
       [](json& c) { c["grid"]["nx"] = 10.5; },
       {"/grid/nx", "expected an integer"}},
      {"q above 1", [](json& c) { c["mass"][0]["q"] = 1.5; }, {"/mass/0/q", "(0, 1]"}},
      {"q zero", [](json& c) { c["mass"][0]["q"] = 0.0; }, {"/mass/0/q", "out of range"}},
      {"nx zero", [](json& c) { c["grid"]["nx"] = 0; }, {"/grid/nx", "out of range"}},
      {"supersampling zero",
       [](json& c) { c["grid"]["supersampling"] = 0; },
       {"/grid/supersampling", "out of range"}},
      {"negative scale",
       [](json& c) { c["source"][0]["scale"] = -0.05; },
       {"/source/0/scale", "> 0"}},
      {"negative theta_E",
       [](json& c) { c["mass"][0]["theta_E"] = -1.0; },
       {"/mass/0/theta_E", "> 0"}},
      {"EPL slope out of range",
       [](json& c) { c["mass"][0]["gamma"] = 3.5; },
       {"/mass/0/gamma", "(1, 3)"}},
      {"negative noise",
       [](json& c) { c["noise"]["background_rms"] = -1; },
       {"/noise/background_rms", ">= 0"}},
      {"noise correlation too wide",
       [](json& c) { c["noise"]["correlation_fwhm"] = 12.0; },
       {"/noise/correlation_fwhm", "out of range", "10"}},
      {"e and q together", [](json& c) { c["mass"][0]["e1"] = 0.1; }, {"/mass/0/q", "either"}},
      {"ellipticity too large",
       [](json& c) {
         c["lens_light"][0]["e1"] = 0.8;
         c["lens_light"][0]["e2"] = 0.8;
       },
       {"/lens_light/0", "< 1"}},
      {"unknown profile",
       [](json& c) { c["mass"][0]["type"] = "NOPE"; },
       {"/mass/0/type", "EPL", "SIE"}},
      {"PSF without kind", [](json& c) { c["psf"] = json::object(); }, {"/psf", "fwhm"}},
      {"sky level as a source",
       [](json& c) {
         c["source"][0] = {{"type", "UNIFORM"}, {"amp", 1.0}};
       },
       {"/source/0/type", "UNIFORM", "lens_light"}},
      {"missing FITS",
       [](json& c) { c["source"][0]["fits"] = "nope.fits"; },
       {"/source/0/fits", "nope.fits"}},
      {"malformed FITS",
       [](json& c) { c["source"][0]["fits"] = "junk.fits"; },
       {"/source/0/fits", "junk.fits"}},
      {"even PSF kernel",
       [](json& c) {
         c["psf"] = {{"fits", "even.fits"}};
       },
       {"/psf/fits", "odd"}},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.name);
    json cfg = base;
    tc.mutate(cfg);
    write_json(dir + "/bad.json", cfg);
    const size_t before = entries(dir);
    auto r = run_dslens("simulate " + quote(dir + "/bad.json") + " --out " + quote(dir + "/out"));
    EXPECT_EQ(r.code, 2) << r.output;
    for (const auto& frag : tc.expect) {
      EXPECT_NE(r.output.find(frag), std::string::npos) << "'" << frag << "' not in: " << r.output;
    }
    // One line of error, no partial output folder (nor hidden staging folder).
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_FALSE(fs::exists(dir + "/out"));
    EXPECT_EQ(entries(dir), before);
  }
  // The unmodified base config is valid.
  write_json(dir + "/good.json", base);
  auto ok = run_dslens("simulate " + quote(dir + "/good.json") + " --out " + quote(dir + "/out"));
  EXPECT_EQ(ok.code, 0) << ok.output;
  expect_all_files(dir + "/out");
  fs::remove_all(dir);
}

TEST(SimulateOutput, ExistingFolderIsRefusedUnlessOverwrite) {
  const auto dir = dslens::testing::temp_dir("sim_exist");
  write_json(dir + "/c.json", base_config(dir));
  fs::create_directories(dir + "/out");
  std::ofstream(dir + "/out/mine.txt") << "keep me";
  auto refused = run_dslens("simulate " + quote(dir + "/c.json") + " --out " + quote(dir + "/out"));
  EXPECT_EQ(refused.code, 2) << refused.output;
  EXPECT_NE(refused.output.find("already exists"), std::string::npos) << refused.output;
  EXPECT_TRUE(fs::exists(dir + "/out/mine.txt"));
  EXPECT_FALSE(fs::exists(dir + "/out/model.fits"));
  auto replaced = run_dslens("simulate " + quote(dir + "/c.json") + " --out " +
                             quote(dir + "/out") + " --overwrite");
  EXPECT_EQ(replaced.code, 0) << replaced.output;
  EXPECT_FALSE(fs::exists(dir + "/out/mine.txt"));
  expect_all_files(dir + "/out");
  // Only c.json, src.fits and out/ remain: no staging leftovers.
  EXPECT_EQ(entries(dir), 3u);
  fs::remove_all(dir);
}

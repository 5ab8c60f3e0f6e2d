#include "model_export.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "dslens/core/atomic_file.h"
#include "dslens/core/errors.h"
#include "dslens/core/fits.h"

namespace fs = std::filesystem;

namespace dslens::app {
namespace {

// Row `row` of a parameter [1] or [B] (a scalar broadcast to every row has one element).
double row_value(const torch::Tensor& t, int64_t row, const std::string& name) {
  const auto flat = t.detach().reshape({-1});
  if (flat.numel() == 1) return flat[0].item<double>();
  if (row < 0 || row >= flat.numel()) {
    throw InvalidArgument("export_model: parameter '" + name + "' has " +
                          std::to_string(flat.numel()) + " rows, no row " + std::to_string(row));
  }
  return flat[row].item<double>();
}

// Row `row` of an image batch [1 or B, h, w] (or one image [h, w]) as a CPU float64 [h, w].
torch::Tensor row_image(const torch::Tensor& t, int64_t row, const std::string& name) {
  torch::Tensor img = t.detach();
  if (img.dim() == 3) {
    if (img.size(0) != 1 && (row < 0 || row >= img.size(0))) {
      throw InvalidArgument("export_model: '" + name + "' has " + std::to_string(img.size(0)) +
                            " images, no row " + std::to_string(row));
    }
    img = img[img.size(0) == 1 ? 0 : row];
  }
  if (img.dim() != 2) throw InvalidArgument("export_model: '" + name + "' is not an image");
  return img.to(torch::kCPU, torch::kFloat64).contiguous();
}

// Rows of a 2-d image as nested lists, row 0 first (lenstronomy's array[row][col], row = y).
nlohmann::json image_rows(const torch::Tensor& img) {
  nlohmann::json rows = nlohmann::json::array();
  const auto a = img.accessor<double, 2>();
  for (int64_t i = 0; i < img.size(0); ++i) {
    nlohmann::json row = nlohmann::json::array();
    for (int64_t j = 0; j < img.size(1); ++j) row.push_back(a[i][j]);
    rows.push_back(std::move(row));
  }
  return rows;
}

// lenstronomy interpolates a stamp bilinearly only (its INTERPOL).
std::string lenstronomy_light_type(const std::string& type) {
  return type == "INTERPOL_BICUBIC" ? "INTERPOL" : type;
}

// The features' images as lenstronomy point sources: one LENSED_POSITION per feature at its
// measured images, point_amp 0 (a feature is a constraint on the lens; its light is in the
// extended source), and kwargs_likelihood's source_position_likelihood with the image-plane sigma
// (lenstronomy's PositionLikelihood maps it to the source plane through the Hessian, as dslens
// does).
void export_positions(const std::vector<model::ImagePositionGroup>& positions, nlohmann::json& lt,
                      nlohmann::json& notes) {
  if (positions.empty()) return;
  nlohmann::json types = nlohmann::json::array(), kwargs = nlohmann::json::array();
  double sigma_max = 0.0, sigma_min = INFINITY;
  for (const auto& g : positions) {
    nlohmann::json ra = nlohmann::json::array(), dec = nlohmann::json::array(),
                   amp = nlohmann::json::array();
    for (const auto& [x, y] : g.images) {
      ra.push_back(x);
      dec.push_back(y);
      amp.push_back(0.0);
    }
    types.push_back("LENSED_POSITION");
    kwargs.push_back({{"ra_image", ra}, {"dec_image", dec}, {"point_amp", amp}});
    sigma_max = std::max(sigma_max, g.sigma);
    sigma_min = std::min(sigma_min, g.sigma);
  }
  lt["point_source_model_list"] = types;
  lt["kwargs_ps"] = kwargs;
  lt["kwargs_likelihood"] = {{"source_position_likelihood", true},
                             {"source_position_sigma", sigma_max}};
  std::string note =
      "kwargs_ps holds data/image_positions (point_amp 0: constraints, not light). lenstronomy's "
      "source_position_likelihood compares each image traced back with their mean, where dslens "
      "marginalises the source position (model/image_positions.h)";
  if (sigma_min < sigma_max) {
    char what[160];
    std::snprintf(what, sizeof what,
                  "; lenstronomy takes one source_position_sigma, and the features' sigmas range "
                  "from %g to %g, so the largest is written",
                  sigma_min, sigma_max);
    note += what;
  }
  notes.push_back(note);
}

}  // namespace

ExportedModel export_model(const physics::ImageModel& m, int64_t row,
                           const physics::NoiseModel& noise,
                           const std::vector<model::ImagePositionGroup>& positions,
                           const ExportedData& data) {
  ExportedModel out;
  nlohmann::json notes = nlohmann::json::array();
  const auto& g = m.grid;

  nlohmann::json sim;
  sim["comment"] =
      "dslens simulate config of a fitted model (written by dslens fit): `dslens simulate` of it "
      "reproduces the fit's model image; the noise block is for a new noisy image only";
  sim["grid"] = {{"nx", g.nx},
                 {"ny", g.ny},
                 {"pixel_scale", g.pixel_scale},
                 {"supersampling", m.supersampling},
                 {"ra_at_xy_0", g.ra_at_xy_0},
                 {"dec_at_xy_0", g.dec_at_xy_0}};
  // No PSF is the identity kernel.
  const torch::Tensor psf = m.psf_kernel ? row_image(*m.psf_kernel, row, "psf_kernel")
                                         : torch::ones({1, 1}, torch::kFloat64);
  out.fits_files.emplace_back("psf.fits", psf);
  sim["psf"] = {{"fits", "psf.fits"}};

  nlohmann::json lt;
  lt["conventions"] =
      "lenstronomy keyword arguments of the fitted model (written by dslens fit). Angles in "
      "arcsec; pixel (row i, col j) at ra = ra_at_xy_0 + j * pixel_scale, dec = dec_at_xy_0 + i * "
      "pixel_scale (transform_pix2angle); INTERPOL images are array[row][col] with row = y; pixel "
      "values are counts/s (surface brightness times pixel area); the PSF convolves the "
      "supersampled image after binning (supersampling_convolution false). kwargs_data needs "
      "image_data: the fit's data.fits with its NaN (the masked pixels) set to 0, since "
      "lenstronomy multiplies each pixel's chi-square by the mask and NaN x 0 is NaN "
      "(numpy.nan_to_num); kwargs_likelihood's image_likelihood_mask_list, where present, is the "
      "fit's mask (1 = fitted). The noise is the data's before any data.noise_scale.";

  nlohmann::json mass_sim = nlohmann::json::array(), lens_list = nlohmann::json::array(),
                 kwargs_lens = nlohmann::json::array();
  for (const auto& c : m.lens.components()) {
    nlohmann::json kw = nlohmann::json::object();
    for (const auto& [name, t] : c.params) {
      const double v = row_value(t, row, name);
      // MULTIPOLE's order m is an integer in both codes.
      kw[name] =
          name == "m" ? nlohmann::json(static_cast<int64_t>(std::lround(v))) : nlohmann::json(v);
    }
    nlohmann::json s = kw;
    s["type"] = c.profile->type();
    mass_sim.push_back(s);
    lens_list.push_back(c.profile->type());
    // MULTIPOLE's r_E enters its m = 1 term only (physics/src/mass/multipole.cpp), and lenstronomy
    // releases before that term's (2024) refuse the keyword: it is left out for other orders.
    if (c.profile->type() == "MULTIPOLE" && kw.contains("r_E") && kw.value("m", 0) != 1) {
      kw.erase("r_E");
    } else if (c.profile->type() == "MULTIPOLE" && kw.contains("r_E")) {
      notes.push_back(
          "MULTIPOLE of order m = 1 takes r_E, which lenstronomy's MULTIPOLE accepts "
          "only in releases since its m = 1 term (2024)");
    }
    kwargs_lens.push_back(kw);
  }
  sim["mass"] = mass_sim;
  lt["lens_model_list"] = lens_list;
  lt["kwargs_lens"] = kwargs_lens;

  const auto lights = [&](const std::vector<physics::LightComponent>& list,
                          const std::string& list_name, const std::string& lt_list,
                          const std::string& lt_kwargs) {
    nlohmann::json sims = nlohmann::json::array(), types = nlohmann::json::array(),
                   kwargs = nlohmann::json::array();
    for (size_t i = 0; i < list.size(); ++i) {
      const auto& c = list[i];
      const std::string type = c.profile->type();
      nlohmann::json kw = nlohmann::json::object(), s = nlohmann::json::object();
      for (const auto& [name, t] : c.params) {
        if (name == "image") {
          const std::string file = list_name + std::to_string(i) + ".fits";
          const torch::Tensor img = row_image(t, row, list_name + " image");
          out.fits_files.emplace_back(file, img);
          s["fits"] = file;
          kw["image"] = image_rows(img);
        } else {
          kw[name] = row_value(t, row, name);
          s[name] = kw[name];
        }
      }
      s["type"] = type;
      sims.push_back(s);
      types.push_back(lenstronomy_light_type(type));
      kwargs.push_back(kw);
      if (type != lenstronomy_light_type(type)) {
        notes.push_back(list_name + " " + std::to_string(i) +
                        " was fitted with bicubic interpolation of its stamp "
                        "(INTERPOL_BICUBIC); lenstronomy's INTERPOL is bilinear, so its image "
                        "differs slightly from the fit's model image");
      }
      if (c.profile->psf_invariant()) {
        notes.push_back(list_name + " " + std::to_string(i) + " (" + type +
                        ") is added after the PSF in the fit; lenstronomy convolves it with the "
                        "rest, through the zero padding, so its image is dimmer within the PSF's "
                        "half-width of the edges");
      }
    }
    if (!sims.empty() || list_name == "source") sim[list_name] = sims;
    lt[lt_list] = types;
    lt[lt_kwargs] = kwargs;
  };
  lights(m.lens_light, "lens_light", "lens_light_model_list", "kwargs_lens_light");
  lights(m.source_light, "source", "source_light_model_list", "kwargs_source");

  sim["noise"] = {{"background_rms", noise.background_rms}, {"exposure_time", noise.exposure_time}};
  if (noise.correlation_fwhm > 0.0) {
    sim["noise"]["correlation_fwhm"] = noise.correlation_fwhm;
    // lenstronomy's ImageModel draws independent pixels (its kwargs_data has no correlation).
    char what[200];
    std::snprintf(what, sizeof what,
                  "the data's noise is correlated between pixels (dslens simulate's "
                  "noise.correlation_fwhm %.3g px); lenstronomy's noise and likelihood treat "
                  "pixels as independent",
                  noise.correlation_fwhm);
    notes.push_back(what);
  }
  lt["kwargs_data"] = {{"ra_at_xy_0", g.ra_at_xy_0},
                       {"dec_at_xy_0", g.dec_at_xy_0},
                       {"transform_pix2angle", {{g.pixel_scale, 0.0}, {0.0, g.pixel_scale}}},
                       {"background_rms", noise.background_rms}};
  const auto check_shape = [&g](const torch::Tensor& t, const char* what) {
    if (t.defined() && (t.dim() != 2 || t.size(0) != g.ny || t.size(1) != g.nx)) {
      throw InvalidArgument(std::string("export_model: the data's ") + what + " is not " +
                            std::to_string(g.ny) + " x " + std::to_string(g.nx) + " (the grid)");
    }
  };
  check_shape(data.sigma, "sigma");
  check_shape(data.mask, "mask");
  const torch::Tensor mask =
      data.mask.defined() ? data.mask.to(torch::kCPU, torch::kBool) : torch::Tensor();
  if (noise.exposure_time > 0.0) {
    lt["kwargs_data"]["exposure_time"] = noise.exposure_time;
  } else {
    // No Poisson term: lenstronomy's ImageNoise would raise exposure_time 0 to 1e-10 s (a
    // Poisson variance of 1e10 x the image), and without one it divides by None; a noise_map
    // overrides both. Masked and non-finite pixels take the background (unused, but finite:
    // lenstronomy multiplies each pixel's chi-square by the mask, and NaN x 0 is NaN).
    const auto background = torch::full({g.ny, g.nx}, noise.background_rms, torch::kFloat64);
    torch::Tensor sd =
        data.sigma.defined() ? data.sigma.to(torch::kCPU, torch::kFloat64).detach() : background;
    auto usable = torch::isfinite(sd) & (sd > 0);
    if (mask.defined()) usable = usable & mask;
    lt["kwargs_data"]["noise_map"] = image_rows(torch::where(usable, sd, background).contiguous());
  }
  if (g.nx != g.ny) {
    notes.push_back(
        "the grid is not square (" + std::to_string(g.ny) + " rows x " + std::to_string(g.nx) +
        " columns): lenstronomy's ImageData reads (nx, ny) = np.shape(image_data), rows first, "
        "and its PixelGrid numbers x over nx, so its pixel coordinates differ from "
        "ra_at_xy_0 + col * pixel_scale here; cut a square image for lenstronomy");
  }
  lt["kwargs_psf"] =
      m.psf_kernel ? nlohmann::json{{"psf_type", "PIXEL"}, {"kernel_point_source", image_rows(psf)}}
                   : nlohmann::json{{"psf_type", "NONE"}};
  lt["kwargs_numerics"] = {{"supersampling_factor", m.supersampling},
                           {"supersampling_convolution", false}};
  export_positions(positions, lt, notes);
  if (mask.defined() && !mask.all().item<bool>()) {
    lt["kwargs_likelihood"]["image_likelihood_mask_list"] =
        nlohmann::json::array({image_rows(mask.to(torch::kFloat64).contiguous())});
  }
  // create_class_instances(**kwargs_model) and FittingSequence take the lists together.
  lt["kwargs_model"] = {{"lens_model_list", lt["lens_model_list"]},
                        {"lens_light_model_list", lt["lens_light_model_list"]},
                        {"source_light_model_list", lt["source_light_model_list"]}};
  if (lt.contains("point_source_model_list")) {
    lt["kwargs_model"]["point_source_model_list"] = lt["point_source_model_list"];
  }
  lt["notes"] = notes;
  out.simulate = std::move(sim);
  out.lenstronomy = std::move(lt);
  return out;
}

void write_exported_model(const ExportedModel& e, const std::string& dir) {
  fs::create_directories(dir);
  for (const auto& [file, img] : e.fits_files) write_fits_image(dir + "/" + file, img);
  write_text_atomically(dir + "/simulate.json", e.simulate.dump(2) + "\n");
  write_text_atomically(dir + "/lenstronomy.json", e.lenstronomy.dump(1) + "\n");
}

}  // namespace dslens::app

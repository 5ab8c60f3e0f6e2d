#include "dslens/model/observation.h"

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <sstream>

#include "dslens/core/errors.h"
#include "dslens/core/fits.h"
#include "dslens/model/noise_estimate.h"

namespace dslens::model {
namespace observation_detail {

namespace fs = std::filesystem;

std::string resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || fs::path(path).is_absolute() || base_dir.empty()) return path;
  return (fs::path(base_dir) / path).lexically_normal().string();
}

std::string shape_text(const torch::Tensor& t) {
  std::string s;
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? "x" : "") + std::to_string(t.size(i));
  return s.empty() ? "scalar" : s;
}

std::string num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// A 2-d FITS image named in the config.
struct FitsImage {
  torch::Tensor data;     // [rows, columns] float64
  std::string label;      // resolved path, with "[hdu]" when one was chosen
  std::string json_path;  // where the config names it
  std::string path;       // resolved path
  FitsHdu hdu;            // the HDU asked for
};

FitsHdu parse_hdu(const ConfigNode& node) {
  const json& v = node.value();
  if (v.is_number_integer() && v.get<long long>() >= 0 &&
      v.get<long long>() <= std::numeric_limits<int>::max()) {
    return FitsHdu::number(static_cast<int>(v.get<long long>()));
  }
  if (v.is_string() && !v.get<std::string>().empty()) return FitsHdu::named(v.get<std::string>());
  node.fail("expected an HDU number (>= 0, 0 = primary) or an EXTNAME string, got " +
            json_excerpt(v));
}

// Reads a 2-d image ([1, ny, nx] cubes are squeezed); file problems become ConfigErrors at
// `json_path` that keep the file and HDU named by read_fits_image.
FitsImage read_2d(const std::string& path, const FitsHdu& hdu, const std::string& json_path,
                  const std::string& what) {
  FitsImage out;
  out.json_path = json_path;
  out.label = path;
  out.path = path;
  out.hdu = hdu;
  if (hdu.index >= 0) out.label += "[" + std::to_string(hdu.index) + "]";
  if (!hdu.name.empty()) out.label += "[" + hdu.name + "]";
  torch::Tensor img;
  try {
    img = read_fits_image(path, hdu);
  } catch (const FileError& e) {
    throw ConfigError(json_path, std::string(e.what()) + " (" + what + ")");
  }
  while (img.dim() > 2 && img.size(0) == 1) img = img.squeeze(0);
  if (img.dim() != 2 || img.numel() == 0) {
    throw ConfigError(json_path, what + " '" + out.label + "' holds an array of shape " +
                                     shape_text(img) + "; allowed: a 2-d image");
  }
  out.data = img.to(torch::kFloat64).contiguous();
  return out;
}

// parent[key] is a path string or {"fits": path, "hdu": number or EXTNAME}.
FitsImage read_file_at(const ConfigNode& parent, const std::string& key,
                       const std::string& base_dir, const std::string& what) {
  const ConfigNode node = parent.at(key);
  std::string given, json_path = node.path();
  FitsHdu hdu;
  if (node.value().is_string()) {
    given = node.as_string();
  } else if (node.is_object()) {
    node.allow_only({"fits", "hdu"});
    given = node.string("fits");
    json_path = node.child_path("fits");
    if (node.has("hdu")) hdu = parse_hdu(node.at("hdu"));
  } else {
    node.fail("expected a FITS path or {\"fits\": path, \"hdu\": number or EXTNAME}, got " +
              json_excerpt(node.value()));
  }
  if (given.empty()) throw ConfigError(json_path, "empty file name; expected a FITS image path");
  return read_2d(resolve(base_dir, given), hdu, json_path, what);
}

// Odd-sized, finite, positive-sum kernel normalised to sum 1.
torch::Tensor checked_psf(const FitsImage& k) {
  if (k.data.size(0) % 2 == 0 || k.data.size(1) % 2 == 0) {
    throw ConfigError(k.json_path, "PSF kernel '" + k.label + "' is " + shape_text(k.data) +
                                       "; allowed: odd sizes in both axes (a centred kernel)");
  }
  if (!torch::isfinite(k.data).all().item<bool>()) {
    throw ConfigError(k.json_path, "PSF kernel '" + k.label +
                                       "' has non-finite (NaN or inf) pixels; allowed: finite");
  }
  const double sum = k.data.sum().item<double>();
  if (!(sum > 0.0)) {
    throw ConfigError(k.json_path, "PSF kernel '" + k.label + "' sums to " + num(sum) +
                                       "; allowed: a positive sum (it is normalised to 1)");
  }
  return k.data / sum;
}

torch::Tensor read_psf(const ConfigNode& data, const std::string& base_dir, double pixel_scale) {
  const ConfigNode psf = data.at("psf");
  psf.require_object();
  psf.allow_only({"fits", "hdu", "fwhm", "size"});
  if (psf.has("fwhm") == psf.has("fits")) {
    psf.fail(psf.has("fwhm") ? "give either 'fwhm' or 'fits', not both"
                             : "expected {\"fits\": kernel image} or {\"fwhm\": arcsec}, got " +
                                   json_excerpt(psf.value()));
  }
  if (psf.has("fits")) {
    if (psf.has("size"))
      psf.fail_at("size", "only allowed with 'fwhm' (a FITS kernel has its size)");
    return checked_psf(read_file_at(data, "psf", base_dir, "PSF"));
  }
  if (psf.has("hdu")) psf.fail_at("hdu", "only allowed with 'fits'");
  const double fwhm = psf.number("fwhm", Range::positive());
  const long long size = psf.integer_or("size", 0, Range::closed(1, 1001));
  if (size % 2 == 0 && size != 0) {
    psf.fail_at("size", "value " + std::to_string(size) + " is even; allowed: odd sizes");
  }
  return physics::gaussian_psf_kernel(fwhm, pixel_scale, Compute{torch::kCPU, torch::kFloat64},
                                      size);
}

// Which part of the image is fitted.
struct Window {
  int64_t row0 = 0, col0 = 0, ny = 0, nx = 0;
  bool cut = false;
  torch::Tensor apply(const torch::Tensor& t) const {
    return t.slice(0, row0, row0 + ny).slice(1, col0, col0 + nx).contiguous();
  }
};

std::array<int64_t, 2> integer_pair(const ConfigNode& parent, const std::string& key,
                                    const std::string& meaning, const Range& range) {
  const ConfigNode node = parent.at(key);
  if (!node.is_array() || node.size() != 2) {
    node.fail("expected two integers [" + meaning + "], got " + json_excerpt(node.value()));
  }
  std::array<int64_t, 2> out{};
  for (size_t i = 0; i < 2; ++i) {
    const ConfigNode e = node.at(i);
    const double v = e.as_number(range);
    if (std::floor(v) != v) e.fail("expected an integer, got " + json_excerpt(e.value()));
    out[i] = static_cast<int64_t>(v);
  }
  return out;
}

Window parse_cutout(const ConfigNode& data, const FitsImage& image) {
  const int64_t NY = image.data.size(0), NX = image.data.size(1);
  if (!data.has("cutout")) return {0, 0, NY, NX, false};
  const ConfigNode c = data.at("cutout");
  c.require_object();
  c.allow_only({"center", "size"});
  const auto size = integer_pair(c, "size", "nx, ny", Range::closed(1, 1e9));
  const auto center = c.has("center") ? integer_pair(c, "center", "column, row", Range::any())
                                      : std::array<int64_t, 2>{NX / 2, NY / 2};
  Window w{center[1] - size[1] / 2, center[0] - size[0] / 2, size[1], size[0], true};
  if (w.col0 < 0 || w.col0 + w.nx > NX || w.row0 < 0 || w.row0 + w.ny > NY) {
    c.fail("value " + json_excerpt(c.value()) + " spans columns " + std::to_string(w.col0) + ".." +
           std::to_string(w.col0 + w.nx - 1) + " and rows " + std::to_string(w.row0) + ".." +
           std::to_string(w.row0 + w.ny - 1) + ", outside the image '" + image.label + "' (" +
           std::to_string(NY) + "x" + std::to_string(NX) +
           " rows x columns); allowed: a cutout inside the image (0-based [column, row])");
  }
  return w;
}

void check_same_shape(const FitsImage& ref, const std::string& ref_what, const FitsImage& other,
                      const std::string& other_what) {
  if (ref.data.sizes() == other.data.sizes()) return;
  throw ConfigError(other.json_path, other_what + " '" + other.label + "' is " +
                                         shape_text(other.data) + " but " + ref_what + " '" +
                                         ref.label + "' is " + shape_text(ref.data) +
                                         " (rows x columns); allowed: the same shape");
}

void warn(Observation& obs, const std::string& message) {
  spdlog::warn("data: {}", message);
  obs.warnings.push_back(message);
}

// Unmasks nothing: masks the fitted pixels where `bad` holds and warns with their count.
void mask_bad(Observation& obs, const torch::Tensor& bad, const std::string& label,
              const std::string& what) {
  const torch::Tensor newly = bad.logical_and(obs.mask);
  const int64_t n = newly.sum().item<int64_t>();
  if (n == 0) return;
  const int64_t total = obs.mask.sum().item<int64_t>();
  obs.mask = obs.mask.logical_and(newly.logical_not());
  warn(obs, "'" + label + "': " + std::to_string(n) + " of " + std::to_string(total) +
                " fitted pixels " + what + "; they are masked");
}

// How sigma is obtained.
struct Noise {
  enum class Kind { kNoiseMap, kWeightMap, kRmsExposure } kind = Kind::kNoiseMap;
  FitsImage map;  // sigma or inverse variance
  double background_rms = 0.0, exposure_time = 0.0;
  int64_t poisson_smoothing = 1;  // the Poisson term's box (pixels): model/noise_estimate.h
};

struct Inputs {
  FitsImage image;
  Noise noise;
  std::optional<FitsImage> mask;
  bool centred_grid = false;  // FITS data: the grid is centred on the (cut-out) image
  // FITS data: the image's header (read_fits_header), whose celestial WCS the cut-out keeps.
  std::map<std::string, std::string> image_header;
};

// "poisson_term": true for "model", false for "image" (the default).
bool poisson_from_model(const ConfigNode& data) {
  if (!data.has("poisson_term")) return false;
  const ConfigNode node = data.at("poisson_term");
  const std::string v = node.as_string();
  if (v != "image" && v != "model") {
    node.fail("'" + v +
              "' is not a Poisson term; allowed: \"image\" (sigma from the image, fixed) or "
              "\"model\" (sigma from the model image at each point of the fit, as lenstronomy)");
  }
  return v == "model";
}

// The Poisson term taken from the image pulls the fit's light low (model/noise_estimate.h,
// image_poisson_bias): a warning where that is a standard deviation of the light's amplitude or
// more (with obs.noise_scale's widening), else a line of the log.
void warn_of_image_poisson_bias(Observation& obs, const std::string& label,
                                const torch::Tensor& box_mean, const torch::Tensor& sigma,
                                const Noise& noise) {
  const int64_t k = noise.poisson_smoothing;
  // A noise_scale widens the amplitude's sd, not the bias ("auto" is not known yet: 1 here).
  const ImagePoissonBias b =
      image_poisson_bias(box_mean, sigma, obs.mask, noise.exposure_time, k, obs.noise_scale);
  const std::string bias =
      describe_image_poisson_bias(
          b, fmt::format("1 / (k^2 t) = 1 / ({}^2 x {:.4g})", k, noise.exposure_time),
          noise.background_rms) +
      (obs.noise_scale != 1.0 ? fmt::format(", with noise_scale {:.3g}", obs.noise_scale) : "");
  if (b.z < 1.0) {
    spdlog::info("data: the Poisson term taken from '{}' (poisson_smoothing {}) {}", label, k,
                 bias);
    return;
  }
  warn(obs, "'" + label + "': the Poisson term taken from the image (poisson_smoothing " +
                std::to_string(k) + ") " + bias +
                ". \"poisson_term\": \"model\" takes it from the model instead (docs/fit.md, "
                "\"The noise: a Poisson term from the model\")");
}

// Cutout, masks and sigma; obs.grid must already hold the full image's grid.
void finish(Observation& obs, const ConfigNode& data, const Inputs& in) {
  const Window w = parse_cutout(data, in.image);
  if (w.cut) {
    if (in.centred_grid) {
      obs.grid = physics::PixelGrid::centered(w.ny, w.nx, obs.grid.pixel_scale);
    } else {
      obs.grid.ny = w.ny;
      obs.grid.nx = w.nx;
      obs.grid.ra_at_xy_0 += static_cast<double>(w.col0) * obs.grid.pixel_scale;
      obs.grid.dec_at_xy_0 += static_cast<double>(w.row0) * obs.grid.pixel_scale;
    }
    obs.description += ", cutout " + std::to_string(w.nx) + "x" + std::to_string(w.ny) +
                       " (columns x rows) from column " + std::to_string(w.col0) + ", row " +
                       std::to_string(w.row0);
  }
  obs.sky_wcs =
      fits_celestial_wcs(in.image_header, static_cast<double>(w.col0), static_cast<double>(w.row0));
  const torch::Tensor image = w.apply(in.image.data);
  obs.mask = torch::ones({w.ny, w.nx}, torch::kBool);
  if (in.mask) {
    const torch::Tensor m = w.apply(in.mask->data);
    obs.mask = torch::isfinite(m).logical_and(m != 0);
  }
  if (data.has("mask_radius")) {
    const ConfigNode r = data.at("mask_radius");
    r.require_object();
    r.allow_only({"inner", "outer"});
    if (!r.has("inner") && !r.has("outer")) {
      r.fail("expected {\"inner\": r1, \"outer\": r2} in arcsec (either optional), got {}");
    }
    const double inner = r.number_or("inner", 0.0, Range::non_negative());
    const double outer =
        r.number_or("outer", std::numeric_limits<double>::infinity(), Range::positive());
    if (!(inner < outer)) {
      r.fail("value " + json_excerpt(r.value()) + ": allowed: inner < outer");
    }
    const auto [x, y] = obs.grid.coordinates(Compute{torch::kCPU, torch::kFloat64});
    const torch::Tensor radius = torch::sqrt(x * x + y * y);
    obs.mask = obs.mask.logical_and(radius >= inner).logical_and(radius <= outer);
  }
  if (data.has("mask_circles")) {
    // Discs left out of the fit (a neighbouring galaxy, a star, a cosmic ray): centre and radius in
    // arcsec on the fit's grid, as mask_radius.
    const ConfigNode circles = data.at("mask_circles");
    circles.require_array();
    const auto [x, y] = obs.grid.coordinates(Compute{torch::kCPU, torch::kFloat64});
    for (const ConfigNode& c : circles.elements()) {
      c.require_object();
      c.allow_only({"center", "radius"});
      const std::vector<double> centre = c.numbers("center");
      if (centre.size() != 2) {
        c.fail_at("center",
                  "value " + json_excerpt(c.at("center").value()) + ": allowed: [x, y] in arcsec");
      }
      const double r = c.number("radius", Range::positive());
      const torch::Tensor dx = x - centre[0], dy = y - centre[1];
      obs.mask = obs.mask.logical_and(dx * dx + dy * dy > r * r);
    }
  }
  mask_bad(obs, torch::isfinite(image).logical_not(), in.image.label,
           "are not finite (NaN or inf)");

  torch::Tensor sigma, poisson_box_mean;  // the latter for a Poisson term from the image
  const Noise& noise = in.noise;
  if (noise.kind == Noise::Kind::kNoiseMap) {
    sigma = w.apply(noise.map.data);
    mask_bad(obs, torch::isfinite(sigma).logical_not().logical_or(sigma <= 0), noise.map.label,
             "have a non-finite or non-positive sigma");
  } else if (noise.kind == Noise::Kind::kWeightMap) {
    const torch::Tensor weight = w.apply(noise.map.data);
    const torch::Tensor zero = (weight == 0).logical_and(obs.mask);
    const int64_t n_zero = zero.sum().item<int64_t>();
    if (n_zero > 0) {
      spdlog::info("data: '{}': {} pixels of weight 0 are masked", noise.map.label, n_zero);
      obs.mask = obs.mask.logical_and(zero.logical_not());
    }
    mask_bad(obs, torch::isfinite(weight).logical_not().logical_or(weight < 0), noise.map.label,
             "have a non-finite or negative weight");
    sigma = 1.0 / torch::sqrt(weight);
  } else {
    // The local mean is taken over the whole image, so a cutout's edge pixels have full boxes.
    const torch::Tensor poisson = w.apply(local_mean(in.image.data, noise.poisson_smoothing));
    sigma = torch::sqrt(noise.background_rms * noise.background_rms +
                        torch::clamp_min(poisson, 0.0) / noise.exposure_time);
    obs.noise_model = physics::NoiseModel{noise.background_rms, noise.exposure_time};
    if (!poisson_from_model(data)) poisson_box_mean = poisson;
  }
  const char* map_key = noise.kind == Noise::Kind::kNoiseMap ? "noise_map" : "weight_map";
  bool low_pixels_warned = false;
  if (noise.kind != Noise::Kind::kRmsExposure) {
    if (auto m = underestimated_noise_warning(noise.map.label, map_key, image, sigma, obs.mask)) {
      warn(obs, *m);
      low_pixels_warned = true;
    }
  }
  // After the check, which compares sigma with itself and is blind to a common factor.
  if (data.has("noise_scale") && data.at("noise_scale").value().is_string()) {
    const ConfigNode scale = data.at("noise_scale");
    if (scale.as_string() != "auto") {
      scale.fail("'" + scale.as_string() +
                 "' is not a noise scale; allowed: a number in [0.01, 100], or \"auto\" to take "
                 "the one the MAP's residuals call for (docs/fit.md, \"Correlated noise\")");
    }
    obs.noise_scale_auto = true;
  } else {
    obs.noise_scale = data.number_or("noise_scale", 1.0, Range::closed(0.01, 100.0));
  }
  if (poisson_box_mean.defined()) {
    warn_of_image_poisson_bias(obs, in.image.label, poisson_box_mean, sigma, noise);
  } else if (noise.kind != Noise::Kind::kRmsExposure && !low_pixels_warned) {
    // A map made from this image pixel by pixel (the low-pixels warning already says so).
    if (auto m = image_poisson_noise_map_warning(noise.map.label, map_key, image, sigma, obs.mask,
                                                 obs.noise_scale)) {
      warn(obs, *m);
    }
  }
  obs.image = torch::where(obs.mask, image, torch::zeros_like(image));
  obs.sigma = torch::where(obs.mask, sigma * obs.noise_scale, torch::ones_like(sigma));
  if (obs.n_fitted() == 0) {
    data.fail("no pixel of '" + in.image.label + "' is left to fit after masking (" +
              std::to_string(w.ny) + "x" + std::to_string(w.nx) +
              " pixels); allowed: a mask, mask_radius and cutout that keep some pixels");
  }
}

// truth.json's section/key as a finite number (its "value" where it is an object), or nullptr.
const json* truth_number(const json& truth, const char* section, const std::string& key) {
  if (!truth.is_object() || !truth.contains(section) || !truth[section].is_object() ||
      !truth[section].contains(key))
    return nullptr;
  const json& g = truth[section][key];
  const json* v = g.is_object() && g.contains("value") ? &g["value"] : &g;
  return v->is_number() && std::isfinite(v->get<double>()) ? v : nullptr;
}

double truth_grid_value(const json& truth, const ConfigNode& sim, const std::string& file,
                        const std::string& key) {
  const json* v = truth_number(truth, "grid", key);
  if (!v) {
    sim.fail("'" + file + "' has no number at grid/" + key +
             "/value; expected the truth.json written by `dslens simulate`");
  }
  return v->get<double>();
}

Observation load_simulation(const ConfigNode& data, const std::string& base_dir) {
  data.allow_only({"simulation", "mask", "mask_radius", "mask_circles", "cutout", "image_positions",
                   "noise_scale", "poisson_term"});
  const ConfigNode sim = data.at("simulation");
  const std::string given = sim.as_string();
  if (given.empty()) sim.fail("empty folder name; expected a `dslens simulate` output folder");
  const std::string folder = resolve(base_dir, given);
  const std::string expected =
      "; allowed: a `dslens simulate` output folder (image.fits, noise_map.fits, psf.fits, "
      "truth.json)";
  if (!fs::is_directory(folder)) sim.fail("folder '" + folder + "' does not exist" + expected);
  for (const char* name : {"image.fits", "noise_map.fits", "truth.json"}) {
    if (!fs::exists(fs::path(folder) / name)) {
      sim.fail("folder '" + folder + "' has no " + name + expected);
    }
  }
  Observation obs;
  const std::string truth_file = (fs::path(folder) / "truth.json").string();
  try {
    obs.truth = load_json_file(truth_file);
  } catch (const FileError& e) {
    throw ConfigError(sim.path(), e.what());
  }
  const double nx = truth_grid_value(obs.truth, sim, truth_file, "nx");
  const double ny = truth_grid_value(obs.truth, sim, truth_file, "ny");
  if (!(nx >= 1 && ny >= 1 && std::floor(nx) == nx && std::floor(ny) == ny)) {
    sim.fail("'" + truth_file + "' has grid " + num(ny) + "x" + num(nx) +
             "; allowed: positive integer sizes");
  }
  obs.grid.nx = static_cast<int64_t>(nx);
  obs.grid.ny = static_cast<int64_t>(ny);
  obs.grid.pixel_scale = truth_grid_value(obs.truth, sim, truth_file, "pixel_scale");
  obs.grid.ra_at_xy_0 = truth_grid_value(obs.truth, sim, truth_file, "ra_at_xy_0");
  obs.grid.dec_at_xy_0 = truth_grid_value(obs.truth, sim, truth_file, "dec_at_xy_0");
  if (!(obs.grid.pixel_scale > 0)) {
    sim.fail("'" + truth_file + "' has pixel_scale " + num(obs.grid.pixel_scale) +
             "; allowed: > 0");
  }

  Inputs in;
  const auto file = [&](const char* name) { return (fs::path(folder) / name).string(); };
  in.image = read_2d(file("image.fits"), FitsHdu{}, sim.path(), "image");
  if (in.image.data.size(0) != obs.grid.ny || in.image.data.size(1) != obs.grid.nx) {
    sim.fail("image '" + in.image.label + "' is " + shape_text(in.image.data) + " but '" +
             truth_file + "' says " + std::to_string(obs.grid.ny) + "x" +
             std::to_string(obs.grid.nx) + " (rows x columns); allowed: the same shape");
  }
  in.noise.kind = Noise::Kind::kNoiseMap;
  in.noise.map = read_2d(file("noise_map.fits"), FitsHdu{}, sim.path(), "noise map");
  check_same_shape(in.image, "image", in.noise.map, "noise map");
  if (data.has("mask")) {
    in.mask = read_file_at(data, "mask", base_dir, "mask");
    check_same_shape(in.image, "image", *in.mask, "mask");
  }
  if (fs::exists(file("psf.fits"))) {
    obs.psf = checked_psf(read_2d(file("psf.fits"), FitsHdu{}, sim.path(), "PSF"));
  }
  obs.description = folder + " (dslens simulate)";
  if (poisson_from_model(data)) {
    // The simulation's own noise (truth.json), in place of its noise map, which was made from
    // the noise-free model at the truth.
    const auto noise_value = [&](const char* key) {
      const json* v = truth_number(obs.truth, "noise", key);
      if (!v) {
        data.fail_at("poisson_term", "\"model\" needs the simulation's noise, and '" + truth_file +
                                         "' has no number at noise/" + key + "/value");
      }
      return v->get<double>();
    };
    obs.noise_model =
        physics::NoiseModel{noise_value("background_rms"), noise_value("exposure_time")};
    if (!(obs.noise_model->background_rms > 0)) {
      data.fail_at("poisson_term", "\"model\" needs a positive background_rms, and '" + truth_file +
                                       "' has " + num(obs.noise_model->background_rms));
    }
    obs.poisson_from_model = true;
  }
  finish(obs, data, in);
  return obs;
}

// "pixel_scale", or where it is absent the image header's (core/fits.h: its WCS, or dslens's
// PIXSCALE). A given scale more than 1 % from the header's is warned of (a drizzled image's
// header has the drizzled scale: 0.03" for SLACS's ACS images, whose detector pixels are 0.05"),
// as are pixels that are not square, which the grid assumes.
double fits_pixel_scale_of(Observation& obs, const ConfigNode& data, const FitsImage& image,
                           const std::map<std::string, std::string>& image_header) {
  const std::optional<FitsPixelScale> header = fits_pixel_scale(image_header);
  double scale = 0.0;
  if (data.has("pixel_scale")) {
    scale = data.number("pixel_scale", Range::positive());
    if (header && std::abs(header->arcsec / scale - 1.0) > 0.01) {
      warn(obs, data.child_path("pixel_scale") + " " + num(scale) + "\" differs from the " +
                    num(header->arcsec) + "\" per pixel in the header of image '" + image.label +
                    "' (" + header->from +
                    "); every angle of the fit (theta_E, positions, R_sersic) is in units of "
                    "the scale given: leave pixel_scale out to take the header's");
    }
  } else if (header) {
    scale = header->arcsec;
    spdlog::info("data: pixel scale {:.6g}\" from the header of image '{}' ({})", scale,
                 image.label, header->from);
  } else {
    data.fail_at("pixel_scale",
                 "missing, and image '" + image.label +
                     "' has no world coordinates (CDi_j or CDELTi in degrees or arcsec) or "
                     "PIXSCALE in its header to take it from; allowed: arcsec per pixel > 0");
  }
  if (header && std::abs(header->aspect - 1.0) > 0.01) {
    warn(obs, "the pixels of image '" + image.label + "' are not square (x side / y side " +
                  num(header->aspect) + ", " + header->from +
                  "); the fit's grid has square pixels of " + num(scale) + "\"");
  }
  return scale;
}

Observation load_fits(const ConfigNode& data, const std::string& base_dir) {
  data.allow_only({"image", "noise_map", "weight_map", "background_rms", "exposure_time",
                   "poisson_smoothing", "poisson_term", "psf", "mask", "mask_radius",
                   "mask_circles", "pixel_scale", "cutout", "image_positions", "noise_scale"});
  if (!data.has("image")) {
    data.fail(
        "expected {\"simulation\": folder} or FITS files ({\"image\": ..., \"noise_map\": "
        "..., \"pixel_scale\": ...}), got " +
        json_excerpt(data.value()));
  }
  Observation obs;
  Inputs in;
  in.image = read_file_at(data, "image", base_dir, "image");
  try {
    in.image_header = read_fits_header(in.image.path, in.image.hdu);
  } catch (const FileError& e) {
    throw ConfigError(in.image.json_path, std::string(e.what()) + " (image header)");
  }
  const double pixel_scale = fits_pixel_scale_of(obs, data, in.image, in.image_header);

  const bool has_rms = data.has("background_rms"), has_t = data.has("exposure_time");
  if (has_rms != has_t) {
    data.fail_at(has_rms ? "exposure_time" : "background_rms",
                 "missing; 'background_rms' and 'exposure_time' are given together");
  }
  std::vector<std::string> given;
  for (const char* key : {"noise_map", "weight_map", "background_rms"}) {
    if (data.has(key)) given.push_back(key);
  }
  const std::string choices =
      "allowed: exactly one of 'noise_map' (sigma), 'weight_map' (inverse variance) or "
      "'background_rms' + 'exposure_time'";
  if (given.empty()) data.fail("no noise model given; " + choices);
  if (given.size() > 1) data.fail_at(given[1], "'" + given[0] + "' is given too; " + choices);
  if (given[0] == "background_rms") {
    in.noise.kind = Noise::Kind::kRmsExposure;
    in.noise.background_rms = data.number("background_rms", Range::positive());
    in.noise.exposure_time = data.number("exposure_time", Range::positive());
    in.noise.poisson_smoothing = data.integer_or("poisson_smoothing", 1, Range::closed(1, 51));
    if (in.noise.poisson_smoothing % 2 == 0) {
      data.fail_at("poisson_smoothing", "value " + std::to_string(in.noise.poisson_smoothing) +
                                            " is even; allowed: an odd box width in pixels "
                                            "(1 = each pixel's own value)");
    }
    obs.poisson_from_model = poisson_from_model(data);
  } else {
    if (data.has("poisson_term")) {
      data.fail_at("poisson_term",
                   "only allowed with 'background_rms' + 'exposure_time' (the noise whose "
                   "Poisson term it places); '" +
                       given[0] + "' is given");
    }
    if (data.has("poisson_smoothing")) {
      data.fail_at("poisson_smoothing",
                   "only allowed with 'background_rms' + 'exposure_time' (the Poisson term it "
                   "smooths); '" +
                       given[0] + "' is given");
    }
    const bool weights = given[0] == "weight_map";
    in.noise.kind = weights ? Noise::Kind::kWeightMap : Noise::Kind::kNoiseMap;
    in.noise.map = read_file_at(data, given[0], base_dir, weights ? "weight map" : "noise map");
    check_same_shape(in.image, "image", in.noise.map, weights ? "weight map" : "noise map");
  }
  if (data.has("mask")) {
    in.mask = read_file_at(data, "mask", base_dir, "mask");
    check_same_shape(in.image, "image", *in.mask, "mask");
  }
  if (data.has("psf")) obs.psf = read_psf(data, base_dir, pixel_scale);
  obs.grid =
      physics::PixelGrid::centered(in.image.data.size(0), in.image.data.size(1), pixel_scale);
  obs.description = in.image.label;
  in.centred_grid = true;
  finish(obs, data, in);
  return obs;
}

}  // namespace observation_detail

ModelNoise Observation::model_noise() const {
  if (!poisson_from_model) {
    return {torch::where(mask, sigma.square(), torch::ones_like(sigma)), torch::zeros_like(sigma)};
  }
  const double s2 = noise_scale * noise_scale;
  const double rms = noise_model->background_rms, t = noise_model->exposure_time;
  const auto fitted = mask.to(torch::kFloat64);
  return {torch::where(mask, torch::full_like(sigma, rms * rms * s2), torch::ones_like(sigma)),
          fitted * (t > 0 ? s2 / t : 0.0)};
}

std::string Observation::model_noise_formula() const {
  const double rms = noise_model ? noise_model->background_rms : 0.0;
  const double t = noise_model ? noise_model->exposure_time : 0.0;
  if (!(t > 0)) return fmt::format("sigma = {:.4g} (exposure_time 0: no Poisson term)", rms);
  return fmt::format("sigma^2 = {:.4g}^2 + max(model, 0) / {:.4g}", rms, t);
}

torch::Tensor Observation::sigma_at(const torch::Tensor& model) const {
  if (!poisson_from_model) return sigma;
  const ModelNoise n = model_noise();
  const auto m = model.to(torch::kCPU, torch::kFloat64).reshape(sigma.sizes());
  return torch::sqrt(n.background_variance + m.clamp_min(0.0) * n.inverse_exposure);
}

Observation Observation::at_model(const torch::Tensor& model) const {
  Observation out = *this;
  out.sigma = sigma_at(model);
  return out;
}

Observation Observation::with_noise_scaled(double factor) const {
  if (!(factor > 0.0) || !std::isfinite(factor)) {
    throw InvalidArgument("noise scale factor must be a positive number, got " +
                          std::to_string(factor));
  }
  Observation out = *this;
  out.sigma = torch::where(mask, sigma * factor, sigma);
  out.noise_scale = noise_scale * factor;
  return out;
}

Observation load_observation(const ConfigNode& data, const std::string& base_dir) {
  using namespace observation_detail;
  data.require_object();
  Observation obs =
      data.has("simulation") ? load_simulation(data, base_dir) : load_fits(data, base_dir);
  if (data.has("image_positions")) {
    const ConfigNode node = data.at("image_positions");
    obs.image_positions = parse_image_positions(node);
    // Positions off the grid are most likely pixel indices where arcsec are asked for.
    const auto edges = obs.grid.edges();
    for (size_t g = 0; g < obs.image_positions.size(); ++g) {
      const auto& images = obs.image_positions[g].images;
      for (size_t i = 0; i < images.size(); ++i) {
        const auto [px, py] = images[i];
        if (!edges.contains(px, py)) {
          char what[256];
          std::snprintf(what, sizeof what,
                        "position [%g, %g] lies off the image (x in [%.4g, %.4g], y in [%.4g, "
                        "%.4g]); allowed: arcsec on the fit's grid (not pixel indices)",
                        px, py, edges.x_min, edges.x_max, edges.y_min, edges.y_max);
          node.at(g).at("images").at(i).fail(what);
        }
      }
    }
    size_t n = 0;
    for (const auto& group : obs.image_positions) n += group.images.size();
    spdlog::info("data: {} image positions of {} source feature(s)", n, obs.image_positions.size());
  }
  if (obs.poisson_from_model) {
    spdlog::info("data: {}{} at each point of the fit (poisson_term \"model\")",
                 obs.model_noise_formula(),
                 obs.noise_scale != 1.0 ? fmt::format(", times {:.4g}", obs.noise_scale) : "");
  }
  spdlog::info("data: {}: {}x{} pixels (rows x columns), {} fitted, pixel scale {}\", PSF {}",
               obs.description, obs.grid.ny, obs.grid.nx, obs.n_fitted(), obs.grid.pixel_scale,
               obs.psf ? shape_text(*obs.psf) : std::string("none"));
  return obs;
}

}  // namespace dslens::model

#include "lens_config.h"

#include <cmath>
#include <filesystem>

#include "dslens/core/errors.h"
#include "dslens/core/fits.h"
#include "dslens/core/version.h"
#include "dslens/model/fit_model.h"
#include "dslens/nn/checkpoint.h"
#include "dslens/physics/light_profiles.h"
#include "dslens/physics/mass_profiles.h"

namespace fs = std::filesystem;

namespace dslens::app {
namespace lens_config_detail {

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

std::string shape_text(const torch::Tensor& t) {
  std::string s;
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? "x" : "") + std::to_string(t.size(i));
  return s.empty() ? "scalar" : s;
}

// Allowed values of a parameter, by lenstronomy name.
Range param_range(const std::string& name) {
  if (name == "theta_E" || name == "R_sersic" || name == "sigma" || name == "scale" ||
      name == "Rs" || name == "r_E") {
    return Range::positive();
  }
  if (name == "gamma") return Range::open(1.0, 3.0);  // EPL power-law slope
  if (name == "n_sersic") return Range::closed(0.2, 10.0);
  if (name == "amp") return Range::non_negative();
  if (name == "e1" || name == "e2") return Range::open(-1.0, 1.0);
  return Range::any();
}

std::map<std::string, double> light_defaults(const std::string& type) {
  if (physics::is_pixelated_light(type)) return {{"phi_G", 0.0}, {"amp", 1.0}};
  return {};
}

std::string resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || fs::path(path).is_absolute() || base_dir.empty()) return path;
  return (fs::path(base_dir) / path).lexically_normal().string();
}

// A 2-d, finite FITS image; file problems become ConfigErrors naming the JSON path too.
torch::Tensor read_image_at(const ConfigNode& node, const std::string& key,
                            const std::string& base_dir, std::string& resolved,
                            int64_t min_size = 2) {
  const std::string given = node.string(key);
  if (given.empty()) node.fail_at(key, "empty file name; expected the path of a FITS image");
  resolved = resolve(base_dir, given);
  torch::Tensor img;
  try {
    img = read_fits_image(resolved);
  } catch (const FileError& e) {
    throw ConfigError(node.child_path(key), e.what());
  }
  if (img.dim() != 2) {
    node.fail_at(key, "FITS file '" + resolved + "' holds an array of shape " + shape_text(img) +
                          "; expected a 2-d image");
  }
  if (img.size(0) < min_size || img.size(1) < min_size) {
    node.fail_at(key, "FITS image '" + resolved + "' is " + shape_text(img) +
                          "; expected at least " + std::to_string(min_size) + "x" +
                          std::to_string(min_size) + " pixels");
  }
  if (!torch::isfinite(img).all().item<bool>()) {
    node.fail_at(key, "FITS image '" + resolved + "' has non-finite (NaN or inf) pixels");
  }
  return img;
}

struct Parsed {
  ComponentSpec spec;
  physics::ParamMap params;
};

// A source decoded by a trained VAE: {"type": "VAE", "checkpoint": DIR, "z": [...] or
// "z_seed": n (z ~ N(0, I)), center_x, center_y, scale, phi_G, amp, "normalise_flux": true,
// "interpolation": "bicubic" or "bilinear"}; lensed as INTERPOL_BICUBIC (the default, as `dslens
// fit` models a VAE source) or INTERPOL.
Parsed parse_vae_source(const ConfigNode& node, const std::string& base_dir,
                        const Compute& compute) {
  node.allow_only({"type", "checkpoint", "z", "z_seed", "center_x", "center_y", "scale", "phi_G",
                   "amp", "normalise_flux", "interpolation"});
  Parsed out;
  out.spec.type = "VAE";
  out.spec.light_type = model::decoded_source_light_type(node);
  const std::map<std::string, double> defaults = {{"phi_G", 0.0}, {"amp", 1.0}};
  for (const std::string n : {"center_x", "center_y", "scale", "phi_G", "amp"}) {
    out.spec.params[n] =
        node.has(n) || !defaults.count(n) ? node.number(n, param_range(n)) : defaults.at(n);
    out.params[n] = torch::full({1}, out.spec.params[n], compute.options());
  }
  out.spec.checkpoint = resolve(base_dir, node.string("checkpoint"));
  nn::LoadedVae loaded;
  try {
    loaded = nn::load_vae(out.spec.checkpoint, compute);
  } catch (const FileError& e) {
    throw ConfigError(node.child_path("checkpoint"), e.what());
  }
  const int64_t d = loaded.meta.arch.latent_dim;
  if (node.has("z") == node.has("z_seed")) {
    node.fail("give the latent vector either as 'z' (" + std::to_string(d) +
              " numbers) or as 'z_seed' (z drawn from N(0, I)), exactly one of them");
  }
  if (node.has("z")) {
    out.spec.latent = node.numbers("z");
    if (static_cast<int64_t>(out.spec.latent.size()) != d) {
      node.fail_at("z", "has " + std::to_string(out.spec.latent.size()) +
                            " values; the checkpoint's latent dimension is " + std::to_string(d));
    }
  } else {
    const auto seed = node.integer("z_seed", Range::closed(0, 9007199254740992.0));
    auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
    const auto z = torch::randn({d}, gen, torch::kFloat64);
    out.spec.latent.assign(z.data_ptr<double>(), z.data_ptr<double>() + d);
  }
  torch::NoGradGuard no_grad;
  const auto z = torch::tensor(out.spec.latent, torch::kFloat64).unsqueeze(0);
  // As `dslens fit` models it (model/fit_model.h): the decoded stamp at the checkpoint's
  // reference total unless "normalise_flux" is false, so that a fit's amp is the simulation's.
  torch::Tensor image;
  if (node.boolean_or("normalise_flux", true)) {
    double total = 0.0;
    try {
      total = loaded.vae->source_flux_total();
    } catch (const InvalidArgument& e) {
      node.fail_at("normalise_flux", e.what());
    }
    image = loaded.vae->decode_with_total(z.to(compute.options()), total).detach();
  } else {
    image = loaded.vae->decode(z.to(compute.options())).detach();
  }
  out.spec.image_shape = {image.size(1), image.size(2)};
  out.params["image"] = image;
  return out;
}

Parsed parse_component(const ConfigNode& node, bool is_mass, const std::string& base_dir,
                       const Compute& compute, bool is_source = false) {
  node.require_object();
  if (is_source && node.has("type") && node.at("type").value() == "VAE") {
    return parse_vae_source(node, base_dir, compute);
  }
  std::vector<std::string> types =
      is_mass ? physics::mass_profile_types() : physics::light_profile_types();
  if (is_source) types.push_back("VAE");
  const std::string type = node.choice("type", types);
  if (is_source && type == "UNIFORM") node.fail_at("type", physics::kUniformSourceRefusal);
  const std::vector<std::string> names = is_mass ? physics::make_mass_profile(type)->param_names()
                                                 : physics::make_light_profile(type)->param_names();
  const std::map<std::string, double> defaults =
      is_mass ? physics::mass_profile_defaults(type) : light_defaults(type);
  const bool interpol = !is_mass && physics::is_pixelated_light(type);
  const bool elliptical = contains(names, "e1") && contains(names, "e2");

  std::vector<std::string> allowed = {"type"};
  for (const auto& n : names) {
    if (!(interpol && n == "image")) allowed.push_back(n);
  }
  if (elliptical) {
    allowed.push_back("q");
    allowed.push_back("phi");
  }
  if (interpol) allowed.push_back("fits");
  node.allow_only(allowed);

  Parsed out;
  out.spec.type = type;
  for (const auto& n : names) {
    if (interpol && n == "image") continue;
    if (elliptical && (n == "e1" || n == "e2")) continue;
    double v = 0.0;
    if (node.has(n)) {
      // A sky level may be below zero (over-subtracted); other amplitudes may not.
      v = n == "m" ? static_cast<double>(node.integer(n, Range::closed(1, 20)))
          : (type == "UNIFORM" && n == "amp") ? node.number(n)
                                              : node.number(n, param_range(n));
    } else if (defaults.count(n)) {
      v = defaults.at(n);
    } else {
      node.at(n);  // throws "missing required key"
    }
    out.spec.params[n] = v;
  }
  if (elliptical) {
    const bool has_e = node.has("e1") || node.has("e2");
    const bool has_q = node.has("q") || node.has("phi");
    double e1 = 0.0, e2 = 0.0, q = 1.0, phi = 0.0;
    if (has_e && has_q) {
      node.fail_at(node.has("q") ? "q" : "phi",
                   "give the ellipticity either as e1/e2 or as q/phi, not both");
    } else if (has_q) {
      q = node.number("q", Range::left_open(0.0, 1.0));
      phi = node.number("phi");
      const double f = (1.0 - q) / (1.0 + q);
      e1 = f * std::cos(2.0 * phi);
      e2 = f * std::sin(2.0 * phi);
    } else if (has_e) {
      e1 = node.number("e1", param_range("e1"));
      e2 = node.number("e2", param_range("e2"));
      const double e = std::hypot(e1, e2);
      if (!(e < 1.0)) {
        node.fail("ellipticity |e| = sqrt(e1^2 + e2^2) = " + std::to_string(e) +
                  " is out of range; allowed: < 1");
      }
      q = (1.0 - e) / (1.0 + e);
      phi = 0.5 * std::atan2(e2, e1);
    } else {
      node.fail_at("e1", "missing required key (give e1 and e2, or q and phi)");
    }
    out.spec.params["e1"] = e1;
    out.spec.params["e2"] = e2;
    out.spec.derived["q"] = q;
    out.spec.derived["phi"] = phi;
  }
  for (const auto& [name, value] : out.spec.params) {
    out.params[name] = torch::full({1}, value, compute.options());
  }
  if (interpol) {
    torch::Tensor img = read_image_at(node, "fits", base_dir, out.spec.image_path);
    out.spec.image_shape = {img.size(0), img.size(1)};
    out.params["image"] = img.to(compute.options()).unsqueeze(0);
  }
  return out;
}

}  // namespace lens_config_detail

LensConfig parse_lens_config(const json& config, const std::string& base_dir,
                             const Compute& compute) {
  using namespace lens_config_detail;
  const ConfigNode root = ConfigNode::root(config);
  root.require_object();
  root.allow_only({"grid", "psf", "mass", "lens_light", "source", "noise", "seed", "comment"});
  if (root.has("comment")) root.string("comment");

  LensConfig out;
  out.config = config;

  const ConfigNode grid = root.at("grid");
  grid.allow_only({"nx", "ny", "pixel_scale", "supersampling", "ra_at_xy_0", "dec_at_xy_0"});
  const auto nx = grid.integer("nx", Range::closed(1, 10000));
  const auto ny = grid.integer("ny", Range::closed(1, 10000));
  const double pixel_scale = grid.number("pixel_scale", Range::positive());
  out.model.supersampling = grid.integer_or("supersampling", 1, Range::closed(1, 32));
  out.model.grid = physics::PixelGrid::centered(ny, nx, pixel_scale);
  // A grid off-centre (a cut-out of real data, as a fit's exported model has): the position of
  // pixel (0, 0), lenstronomy's ra_at_xy_0 / dec_at_xy_0; both or neither.
  if (grid.has("ra_at_xy_0") != grid.has("dec_at_xy_0")) {
    grid.fail_at(grid.has("ra_at_xy_0") ? "dec_at_xy_0" : "ra_at_xy_0",
                 "missing required key (give ra_at_xy_0 and dec_at_xy_0 together, or neither "
                 "for a grid centred on (0, 0))");
  }
  if (grid.has("ra_at_xy_0")) {
    out.model.grid.ra_at_xy_0 = grid.number("ra_at_xy_0");
    out.model.grid.dec_at_xy_0 = grid.number("dec_at_xy_0");
  }

  const ConfigNode psf = root.at("psf");
  psf.allow_only({"fwhm", "size", "fits"});
  if (psf.has("fwhm") == psf.has("fits")) {
    psf.fail(psf.has("fwhm") ? "give either 'fwhm' or 'fits', not both"
                             : "missing PSF: give 'fwhm' (Gaussian, arcsec) or 'fits' (a kernel "
                               "image, odd sizes)");
  }
  if (psf.has("fwhm")) {
    out.psf.kind = "gaussian";
    out.psf.fwhm = psf.number("fwhm", Range::positive());
    int64_t size = 0;
    if (psf.has("size")) {
      size = psf.integer("size", Range::closed(1, 1001));
      if (size % 2 == 0) psf.fail_at("size", "value " + std::to_string(size) + " must be odd");
    }
    out.model.psf_kernel = physics::gaussian_psf_kernel(out.psf.fwhm, pixel_scale, compute, size);
  } else {
    if (psf.has("size"))
      psf.fail_at("size", "only allowed with 'fwhm' (a FITS kernel has its size)");
    out.psf.kind = "fits";
    torch::Tensor k = read_image_at(psf, "fits", base_dir, out.psf.fits_path, 1);
    if (k.size(0) % 2 == 0 || k.size(1) % 2 == 0) {
      psf.fail_at("fits", "PSF kernel '" + out.psf.fits_path + "' is " + shape_text(k) +
                              "; expected odd sizes (centred kernel)");
    }
    const double sum = k.sum().item<double>();
    if (!(sum > 0.0)) {
      psf.fail_at("fits", "PSF kernel '" + out.psf.fits_path + "' sums to " + std::to_string(sum) +
                              "; expected a positive sum");
    }
    out.model.psf_kernel = (k / sum).to(compute.options());
  }

  const ConfigNode mass = root.at("mass");
  mass.require_array();
  for (const auto& c : mass.elements()) {
    Parsed p = parse_component(c, true, base_dir, compute);
    out.model.lens.add(physics::make_mass_profile(p.spec.type), std::move(p.params));
    out.mass.push_back(std::move(p.spec));
  }
  if (root.has("lens_light")) {
    const ConfigNode light = root.at("lens_light");
    light.require_array();
    for (const auto& c : light.elements()) {
      Parsed p = parse_component(c, false, base_dir, compute);
      out.model.lens_light.push_back(
          {physics::make_light_profile(p.spec.type), std::move(p.params)});
      out.lens_light.push_back(std::move(p.spec));
    }
  }
  const ConfigNode source = root.at("source");
  source.require_array();
  for (const auto& c : source.elements()) {
    Parsed p = parse_component(c, false, base_dir, compute, true);
    // A VAE source is its decoded stamp, lensed as INTERPOL(_BICUBIC).
    out.model.source_light.push_back(
        {physics::make_light_profile(p.spec.type == "VAE" ? p.spec.light_type : p.spec.type),
         std::move(p.params)});
    out.source.push_back(std::move(p.spec));
  }

  const ConfigNode noise = root.at("noise");
  noise.allow_only({"background_rms", "exposure_time", "correlation_fwhm"});
  out.noise.background_rms = noise.number("background_rms", Range::non_negative());
  out.noise.exposure_time = noise.number("exposure_time", Range::non_negative());
  out.noise.correlation_fwhm = noise.number_or("correlation_fwhm", 0.0, Range::closed(0.0, 10.0));

  out.seed =
      static_cast<uint64_t>(root.integer_or("seed", 1, Range::closed(0, 9007199254740992.0)));
  return out;
}

LensConfig load_lens_config(const std::string& path, const Compute& compute) {
  const json config = load_json_file(path);
  const std::string base = fs::absolute(path).parent_path().string();
  LensConfig out = parse_lens_config(config, base, compute);
  out.config_path = path;
  return out;
}

std::string parameter_unit(const std::string& type, const std::string& name) {
  static const std::map<std::string, std::string> units = {{"theta_E", "arcsec"},
                                                           {"center_x", "arcsec"},
                                                           {"center_y", "arcsec"},
                                                           {"ra_0", "arcsec"},
                                                           {"dec_0", "arcsec"},
                                                           {"R_sersic", "arcsec"},
                                                           {"sigma", "arcsec"},
                                                           {"Rs", "arcsec"},
                                                           {"alpha_Rs", "arcsec"},
                                                           {"r_E", "arcsec"},
                                                           {"phi", "rad"},
                                                           {"phi_G", "rad"},
                                                           {"phi_m", "rad"},
                                                           {"scale", "arcsec/pixel"},
                                                           {"gamma", "dimensionless"},
                                                           {"e1", "dimensionless"},
                                                           {"e2", "dimensionless"},
                                                           {"q", "dimensionless"},
                                                           {"gamma1", "dimensionless"},
                                                           {"gamma2", "dimensionless"},
                                                           {"kappa", "dimensionless"},
                                                           {"n_sersic", "dimensionless"},
                                                           {"a_m", "dimensionless"},
                                                           {"m", "dimensionless"}};
  if (name == "amp") {
    if (type == "GAUSSIAN") return "counts/s (total flux)";
    if (type == "UNIFORM") return "counts/s/arcsec^2 (constant sky level)";
    if (physics::is_pixelated_light(type))
      return "dimensionless (scales the image, counts/s/arcsec^2)";
    return "counts/s/arcsec^2 (surface brightness at R_sersic)";
  }
  auto it = units.find(name);
  return it == units.end() ? "dimensionless" : it->second;
}

json lens_config_truth(const LensConfig& config) {
  auto value = [](double v, const std::string& unit) { return json{{"value", v}, {"unit", unit}}; };
  auto components = [&](const std::vector<ComponentSpec>& list) {
    json arr = json::array();
    for (const auto& c : list) {
      json j;
      j["type"] = c.type;
      for (const auto& [n, v] : c.params) j[n] = value(v, parameter_unit(c.type, n));
      if (!c.derived.empty()) {
        json d;
        for (const auto& [n, v] : c.derived) d[n] = value(v, parameter_unit(c.type, n));
        j["derived_from_e1_e2"] = d;
      }
      if (!c.checkpoint.empty()) {
        j["checkpoint"] = c.checkpoint;
        j["z"] = c.latent;
      }
      if (!c.image_path.empty()) {
        j["image"] = {{"fits", c.image_path},
                      {"shape", c.image_shape},
                      {"unit", "surface brightness, counts/s/arcsec^2 (times amp)"}};
      }
      arr.push_back(j);
    }
    return arr;
  };
  const auto& g = config.model.grid;
  json truth;
  truth["dslens_version"] = version();
  if (!config.config_path.empty()) truth["config_file"] = config.config_path;
  truth["conventions"] =
      "lenstronomy parameter names; pixel (row i, col j) at x = ra_at_xy_0 + j*pixel_scale, "
      "y = dec_at_xy_0 + i*pixel_scale; e1 = (1-q)/(1+q) cos(2 phi), e2 = (1-q)/(1+q) sin(2 phi); "
      "image units counts/s per pixel";
  truth["grid"] = {{"nx", value(static_cast<double>(g.nx), "pixels")},
                   {"ny", value(static_cast<double>(g.ny), "pixels")},
                   {"pixel_scale", value(g.pixel_scale, "arcsec/pixel")},
                   {"ra_at_xy_0", value(g.ra_at_xy_0, "arcsec")},
                   {"dec_at_xy_0", value(g.dec_at_xy_0, "arcsec")},
                   {"supersampling", value(static_cast<double>(config.model.supersampling),
                                           "sub-pixels per pixel side")}};
  json psf = {{"kind", config.psf.kind}};
  if (config.psf.kind == "gaussian") psf["fwhm"] = value(config.psf.fwhm, "arcsec");
  if (config.psf.kind == "fits") psf["fits"] = config.psf.fits_path;
  if (config.model.psf_kernel) {
    psf["kernel_shape"] = {config.model.psf_kernel->size(0), config.model.psf_kernel->size(1)};
  }
  truth["psf"] = psf;
  truth["mass"] = components(config.mass);
  truth["lens_light"] = components(config.lens_light);
  truth["source"] = components(config.source);
  truth["noise"] = {{"background_rms", value(config.noise.background_rms, "counts/s per pixel")},
                    {"exposure_time", value(config.noise.exposure_time, "s")}};
  if (config.noise.correlation_fwhm > 0.0) {
    truth["noise"]["correlation_fwhm"] = value(config.noise.correlation_fwhm, "pixels");
  }
  truth["seed"] = config.seed;
  return truth;
}

std::vector<std::array<double, 4>> zero_contour(const torch::Tensor& values, double x0, double y0,
                                                double dx, double dy) {
  torch::Tensor v = values.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  std::vector<std::array<double, 4>> segments;
  if (v.dim() != 2 || v.size(0) < 2 || v.size(1) < 2) return segments;
  const int64_t H = v.size(0), W = v.size(1);
  const double* d = v.data_ptr<double>();
  auto at = [&](int64_t i, int64_t j) { return d[i * W + j]; };
  for (int64_t i = 0; i + 1 < H; ++i) {
    for (int64_t j = 0; j + 1 < W; ++j) {
      // Corners counter-clockwise from bottom-left: (i, j), (i, j+1), (i+1, j+1), (i+1, j).
      const double c[4] = {at(i, j), at(i, j + 1), at(i + 1, j + 1), at(i + 1, j)};
      const double cx[4] = {0, 1, 1, 0}, cy[4] = {0, 0, 1, 1};
      bool finite = true;
      for (double f : c) finite = finite && std::isfinite(f);
      if (!finite) continue;
      std::array<double, 2> pts[4];
      int n = 0;
      for (int e = 0; e < 4; ++e) {
        const int a = e, b = (e + 1) % 4;
        if ((c[a] > 0) == (c[b] > 0)) continue;
        const double t = c[a] / (c[a] - c[b]);
        pts[n] = {x0 + (j + cx[a] + t * (cx[b] - cx[a])) * dx,
                  y0 + (i + cy[a] + t * (cy[b] - cy[a])) * dy};
        ++n;
      }
      if (n == 2) {
        segments.push_back({pts[0][0], pts[0][1], pts[1][0], pts[1][1]});
      } else if (n == 4) {
        // Saddle: the centre's sign decides which corners are joined.
        const double centre = 0.25 * (c[0] + c[1] + c[2] + c[3]);
        if ((centre > 0) == (c[0] > 0)) {
          // Corners 1 and 3 are cut off: edges (0,1) and (2,3).
          segments.push_back({pts[0][0], pts[0][1], pts[1][0], pts[1][1]});
          segments.push_back({pts[2][0], pts[2][1], pts[3][0], pts[3][1]});
        } else {
          // Corners 0 and 2 are cut off: edges (3,0) and (1,2).
          segments.push_back({pts[3][0], pts[3][1], pts[0][0], pts[0][1]});
          segments.push_back({pts[1][0], pts[1][1], pts[2][0], pts[2][1]});
        }
      }
    }
  }
  return segments;
}

CriticalCurves critical_curves(const physics::LensModel& lens, const physics::PixelGrid& grid,
                               int64_t oversample, const Compute& compute) {
  CriticalCurves out;
  oversample = std::max<int64_t>(1, oversample);
  const int64_t H = grid.ny * oversample, W = grid.nx * oversample;
  if (lens.empty()) {
    out.convergence = torch::zeros({H, W}, torch::kFloat64);
    out.det_a = torch::ones({H, W}, torch::kFloat64);
    return out;
  }
  auto [x, y] = grid.supersampled_coordinates(oversample, compute);
  const torch::Tensor xf = x.reshape({1, -1}), yf = y.reshape({1, -1});
  const physics::Hessian h = lens.hessian(xf, yf);
  const torch::Tensor det = (1.0 - h.xx) * (1.0 - h.yy) - h.xy * h.xy;
  out.det_a = det.detach().reshape({H, W}).to(torch::kCPU, torch::kFloat64);
  out.convergence = (0.5 * (h.xx + h.yy)).detach().reshape({H, W}).to(torch::kCPU, torch::kFloat64);
  const torch::Tensor xc = x.detach().to(torch::kCPU, torch::kFloat64);
  const torch::Tensor yc = y.detach().to(torch::kCPU, torch::kFloat64);
  const double step = grid.pixel_scale / static_cast<double>(oversample);
  out.critical =
      zero_contour(out.det_a, xc[0][0].item<double>(), yc[0][0].item<double>(), step, step);
  if (out.critical.empty()) return out;
  const int64_t n = static_cast<int64_t>(out.critical.size());
  std::vector<double> px, py;
  px.reserve(2 * n);
  py.reserve(2 * n);
  for (const auto& s : out.critical) {
    px.push_back(s[0]);
    px.push_back(s[2]);
    py.push_back(s[1]);
    py.push_back(s[3]);
  }
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor tx = torch::from_blob(px.data(), {1, 2 * n}, f64).to(compute.options());
  const torch::Tensor ty = torch::from_blob(py.data(), {1, 2 * n}, f64).to(compute.options());
  auto [bx, by] = lens.ray_shoot(tx, ty);
  const torch::Tensor bxc = bx.detach().reshape({-1}).to(torch::kCPU, torch::kFloat64).contiguous();
  const torch::Tensor byc = by.detach().reshape({-1}).to(torch::kCPU, torch::kFloat64).contiguous();
  const double* ax = bxc.data_ptr<double>();
  const double* ay = byc.data_ptr<double>();
  for (int64_t k = 0; k < n; ++k) {
    out.caustic.push_back({ax[2 * k], ay[2 * k], ax[2 * k + 1], ay[2 * k + 1]});
  }
  return out;
}

}  // namespace dslens::app

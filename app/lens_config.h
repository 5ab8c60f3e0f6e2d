// The JSON lens configuration -> physics mapping shared by `dslens simulate` (and the fitter).
//
//   {
//     "grid":   {"nx": 100, "ny": 100, "pixel_scale": 0.05, "supersampling": 2},
//     "psf":    {"fwhm": 0.1}                  // Gaussian, optional "size" (odd, pixels)
//               or {"fits": "data/psf.fits"},  // kernel image, relative to the config's folder
//     "mass":   [{"type": "EPL", "theta_E": 1.2, "gamma": 2.1, "q": 0.8, "phi": 0.3,
//                 "center_x": 0, "center_y": 0}, {"type": "SHEAR", "gamma1": 0.03, ...}],
//     "lens_light": [{"type": "SERSIC_ELLIPSE", ...}],            // optional
//     "source": [{"type": "INTERPOL", "fits": "data/galaxy.fits", "center_x": 0.05,
//                 "center_y": 0, "scale": 0.02, "phi_G": 0, "amp": 1}],
//               or [{"type": "VAE", "checkpoint": "runs/vae", "z_seed": 7 (or "z": [...]),
//                 "center_x": 0.05, "center_y": 0, "scale": 0.02, "phi_G": 0, "amp": 1,
//                 "interpolation": "bicubic"}],  // or "bilinear"; INTERPOL_BICUBIC also a type
//     "noise":  {"background_rms": 0.01, "exposure_time": 1000},
//     "seed":   42,                                               // optional (default 1)
//     "comment": "free text"                                      // optional
//   }
//
// Parameter names are lenstronomy's; ellipticities are given either as e1/e2 or as q/phi
// (phi in radians). Every key is validated: an unknown key, a missing value, a wrong type, a value
// out of range or a bad FITS file throws ConfigError naming the JSON path and what is allowed.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "dslens/core/config.h"
#include "dslens/core/device.h"
#include "dslens/physics/image_model.h"

namespace dslens::app {

// One profile as configured: its type and scalar parameters (defaults filled in, q/phi turned
// into e1/e2; `derived` holds q/phi of elliptical profiles).
struct ComponentSpec {
  std::string type;
  std::map<std::string, double> params;
  std::map<std::string, double> derived;
  std::string image_path;            // INTERPOL: the FITS file (resolved)
  std::vector<int64_t> image_shape;  // INTERPOL and VAE: [h, w]
  std::string checkpoint;            // VAE: the checkpoint folder (resolved)
  std::vector<double> latent;        // VAE: the latent vector z that was decoded
  std::string light_type;  // VAE: the light profile it is lensed as (INTERPOL or _BICUBIC)
};

struct PsfSpec {
  std::string kind;       // "gaussian" or "fits"
  double fwhm = 0.0;      // arcsec, for "gaussian"
  std::string fits_path;  // resolved path, for "fits"
};

struct LensConfig {
  physics::ImageModel model;  // parameters as [1] tensors on the Compute's device and dtype
  physics::NoiseModel noise;
  uint64_t seed = 1;
  PsfSpec psf;
  std::vector<ComponentSpec> mass, lens_light, source;
  std::string config_path;  // empty when parsed from memory
  json config;              // the JSON as read
};

// Parses and validates a config; relative FITS paths are resolved against `base_dir`.
LensConfig parse_lens_config(const json& config, const std::string& base_dir,
                             const Compute& compute);
// Reads the JSON file and parses it, FITS paths relative to the file's folder.
LensConfig load_lens_config(const std::string& path, const Compute& compute);

// Unit of a parameter of a profile type ("arcsec", "rad", ...).
std::string parameter_unit(const std::string& type, const std::string& name);
// Every parameter as {"value": v, "unit": u}, plus grid, PSF, noise and seed: truth.json.
json lens_config_truth(const LensConfig& config);

// Critical curves (det A = 0, by marching squares on a grid `oversample` times finer than the
// pixel grid) and their caustics. Segments are (x0, y0, x1, y1) in arcsec.
struct CriticalCurves {
  std::vector<std::array<double, 4>> critical;  // image plane
  std::vector<std::array<double, 4>> caustic;   // the same segments ray-shot to the source plane
  torch::Tensor convergence;                    // kappa on the fine grid, [ny*f, nx*f], CPU
  torch::Tensor det_a;                          // det A on the fine grid, [ny*f, nx*f], CPU
};
CriticalCurves critical_curves(const physics::LensModel& lens, const physics::PixelGrid& grid,
                               int64_t oversample, const Compute& compute);

// Zero-level contour of a field sampled on a regular grid: values [H, W] (row i at y0 + i*dy,
// column j at x0 + j*dx). Cells with a non-finite corner are skipped.
std::vector<std::array<double, 4>> zero_contour(const torch::Tensor& values, double x0, double y0,
                                                double dx, double dy);

}  // namespace dslens::app

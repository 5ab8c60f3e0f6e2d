// The data a lens is fitted to (the "data" section of a `dslens fit` config, docs/fit.md):
// either a `dslens simulate` output folder or FITS files (image, noise, PSF, mask), with an
// optional cutout and annulus mask. Everything is float64 on the CPU; the fitter moves it.
//
//   "data": {"simulation": "runs/mock"}
//   "data": {"image": {"fits": "img.fits", "hdu": "SCI"}, "noise_map": "sigma.fits",
//            "psf": {"fwhm": 0.1}, "pixel_scale": 0.05,
//            "cutout": {"center": [150, 150], "size": [120, 120]},
//            "mask_radius": {"inner": 0.3, "outer": 2.5}}
//
// Keys (every file is a path string or {"fits": path, "hdu": number or EXTNAME}):
//   simulation                      a `dslens simulate` folder: image.fits, noise_map.fits,
//                                   psf.fits (optional), truth.json (grid and truth)
//   image                           FITS mode: the image (required)
//   noise_map | weight_map | background_rms + exposure_time
//                                   exactly one: sigma; inverse variance (0 = masked);
//                                   sigma^2 = rms^2 + max(image, 0) / exposure_time
//   poisson_term                    "image" (default) or "model": with background_rms +
//                                   exposure_time (or a simulation's truth.json noise), whether
//                                   the Poisson term is taken from the image once (sigma fixed)
//                                   or from the model image at each point of the fit, as
//                                   lenstronomy's likelihood does (ModelNoise); not with a
//                                   PIXELATED source, whose linear solves need a fixed sigma
//   poisson_smoothing               with background_rms: odd box width (pixels, default 1) of
//                                   the image's local mean that the Poisson term takes instead
//                                   of the pixel's own value (model/noise_estimate.h)
//   noise_scale                     factor (0.01-100, default 1) on every pixel's sigma after the
//                                   above, e.g. map.json's noise_correlation.noise_scale where
//                                   the noise is correlated between pixels (drizzled images);
//                                   "auto": 1 here, and `dslens fit` measures that factor on the
//                                   MAP's residuals before the chains (app/noise_correlation.h)
//   psf                             {"fits": ..., "hdu": ...} or {"fwhm": arcsec, "size": odd};
//                                   absent = no PSF (a simulation folder uses psf.fits)
//   pixel_scale                     arcsec / pixel (FITS mode only); default: the image
//                                   header's (its WCS, or PIXSCALE: core/fits.h), warned of
//                                   where a scale given differs from it by more than 1 %
//   mask                            FITS image, nonzero = fitted, NaN = not (both modes; like
//                                   every path, relative to the config's folder)
//   mask_radius                     {"inner": r1, "outer": r2} arcsec from the grid's origin:
//                                   pixels with r1 <= r <= r2 are kept (either bound optional)
//   cutout                          {"center": [col, row], "size": [nx, ny]}, 0-based pixels;
//                                   columns [col - nx/2, col - nx/2 + nx) (integer division), rows
//                                   likewise; center defaults to the image centre (N/2)
//   image_positions                 [{"images": [[x, y], ...], "sigma": s}, ...]: measured
//                                   positions (arcsec, the fit's grid) of the images of compact
//                                   source features, a likelihood term (model/image_positions.h)
// Non-finite image or noise pixels and sigma <= 0 are masked with a warning; a noise or weight
// map whose low pixels hold much of the weight is warned about (underestimated_noise_warning).
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "dslens/core/config.h"
#include "dslens/core/fits.h"
#include "dslens/model/image_positions.h"
#include "dslens/model/lens_posterior.h"
#include "dslens/physics/image_model.h"

namespace dslens::model {

struct Observation {
  torch::Tensor image;            // [ny, nx] float64 CPU; masked pixels set to 0
  torch::Tensor sigma;            // [ny, nx] float64 CPU, per-pixel noise sd (1 where masked)
  double noise_scale = 1.0;       // "noise_scale", already applied to sigma
  bool noise_scale_auto = false;  // "noise_scale": "auto" (noise_scale then 1 until measured)
  // FITS data with background_rms + exposure_time: that noise model (the form of sigma, before
  // noise_scale), so that an exported model simulates noise like the data's; nullopt otherwise.
  std::optional<physics::NoiseModel> noise_model;
  // "poisson_term": "model": sigma^2 = noise_model's rms^2 + max(model, 0) / t, times
  // noise_scale^2, at each point of the fit (ModelNoise); `sigma` is then the image's, for what
  // needs a fixed noise, and sigma_at gives the model's.
  bool poisson_from_model = false;
  torch::Tensor mask;                // [ny, nx] bool, true = pixel enters the likelihood
  std::optional<torch::Tensor> psf;  // [k, k'] float64, odd sizes, normalised to sum 1
  // Simulations: the grid of truth.json (shifted by a cutout); FITS: centred on the image, i.e.
  // pixel (i, j) at x = (j - (nx-1)/2) * pixel_scale, y = (i - (ny-1)/2) * pixel_scale.
  physics::PixelGrid grid;
  // FITS data whose image header has a celestial WCS: its cards, with CRPIX moved to the cut-out
  // (core/fits.h, fits_celestial_wcs), for the fit's images to carry; empty otherwise.
  std::vector<FitsCard> sky_wcs;
  nlohmann::json truth;               // truth.json of a simulation, null otherwise
  std::string description;            // e.g. "runs/mock (dslens simulate)" or "image.fits[0]"
  std::vector<std::string> warnings;  // also logged with spdlog::warn

  // "image_positions" (model/image_positions.h), checked to lie on the grid.
  std::vector<ImagePositionGroup> image_positions;

  int64_t n_fitted() const { return mask.defined() ? mask.sum().item<int64_t>() : 0; }
  ImagingData imaging() const {
    return {image, sigma, mask, batch_image_positions({image_positions}),
            poisson_from_model ? model_noise() : ModelNoise{}};
  }
  // The pixels' variance as a ModelNoise [ny, nx]: rms^2 and 1 / t (times noise_scale^2) with
  // "poisson_term": "model", else sigma^2 and 0, i.e. this lens in a batch with such lenses.
  ModelNoise model_noise() const;
  // The noise sigma at a model image [ny, nx] (1 where masked): from the model with
  // "poisson_term": "model", else `sigma`. What a fit's normalised residuals divide by.
  torch::Tensor sigma_at(const torch::Tensor& model) const;
  // "poisson_term": "model"'s noise in words, before noise_scale: "sigma^2 = 0.1^2 + max(model, 0)
  // / 50", or "sigma = 0.1 (exposure_time 0: no Poisson term)" (a simulation without one).
  std::string model_noise_formula() const;
  // The same data with sigma = sigma_at(model): the noise of the fit's outputs at its MAP.
  Observation at_model(const torch::Tensor& model) const;
  // The same data with every fitted pixel's sigma, and noise_scale, times `factor` (> 0); the
  // image positions' sigmas are unchanged, as with a noise_scale in the config.
  Observation with_noise_scaled(double factor) const;
};

// `data` is the config's "data" node (its path, e.g. "/data", prefixes every error); relative
// paths are resolved against base_dir (the config's folder). Throws ConfigError naming the JSON
// path, the bad value and what is allowed; FITS problems become ConfigErrors that also name the
// file and HDU.
Observation load_observation(const ConfigNode& data, const std::string& base_dir);

}  // namespace dslens::model

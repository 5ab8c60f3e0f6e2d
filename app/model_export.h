// A fitted model (one row of a physics::ImageModel, e.g. the MAP) in two forms a modeller can take
// elsewhere:
//  - a `dslens simulate` config that reproduces the fit's model image (its pixelated or decoded
//    source stamps and its PSF kernel go into FITS files beside it), to perturb or re-simulate the
//    fitted lens;
//  - lenstronomy's keyword arguments (lens_model_list / kwargs_lens, lens_light_model_list /
//    kwargs_lens_light, source_light_model_list / kwargs_source, kwargs_data, kwargs_psf,
//    kwargs_numerics), whose conventions dslens follows (docs/fit.md, "The MAP model, exported"),
//    and the data's image positions as LENSED_POSITION point sources with kwargs_likelihood's
//    source_position_likelihood (the term dslens fits, model/image_positions.h). Each key was
//    checked against lenstronomy's source (Data/image_noise.py, Data/pixel_grid.py,
//    LightModel/Profiles/interpolation.py, Sampling/likelihood.py); lenstronomy itself is not
//    installed here to load it.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "dslens/model/image_positions.h"
#include "dslens/physics/image_model.h"

namespace dslens::app {

struct ExportedModel {
  nlohmann::json simulate;     // a `dslens simulate` config; FITS paths relative to its folder
  nlohmann::json lenstronomy;  // lenstronomy's kwargs, stamps and PSF kernel inline
  // FITS files the simulate config names: (file name, 2-d float64 CPU image).
  std::vector<std::pair<std::string, torch::Tensor>> fits_files;
};

// The data a model was fitted to, as far as lenstronomy's likelihood needs it besides the image.
struct ExportedData {
  // [ny, nx] per-pixel noise sd before any noise_scale, written as kwargs_data's noise_map where
  // the noise has no exposure time (export_model). Undefined: the noise's background_rms.
  torch::Tensor sigma;
  // [ny, nx] bool, true where the pixel was fitted; written as kwargs_likelihood's
  // image_likelihood_mask_list where any pixel is not. Undefined: every pixel.
  torch::Tensor mask;
};

// Row `row` of `m`. `noise` fills the config's noise block (a simulation needs one; the model
// image does not depend on it; a correlation_fwhm of 0 is left out) and kwargs_data's noise:
// background_rms and exposure_time where it has a Poisson term, else `data`'s sigma as noise_map
// (lenstronomy's ImageNoise raises an exposure time of 0 to 1e-10 s, a Poisson variance 1e10
// times the image's). `positions` are the data's image positions (none: no point sources in
// lenstronomy.json). Parameters of any other row count than 1 or m's batch, and a `data` image of
// another shape than m's grid, are an InvalidArgument.
ExportedModel export_model(const physics::ImageModel& m, int64_t row,
                           const physics::NoiseModel& noise,
                           const std::vector<model::ImagePositionGroup>& positions,
                           const ExportedData& data = {});

// Writes the export into `dir` (created if absent): simulate.json, lenstronomy.json and the FITS
// files, each atomically.
void write_exported_model(const ExportedModel& e, const std::string& dir);

}  // namespace dslens::app

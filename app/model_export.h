// A fitted model (one row of a physics::ImageModel, e.g. the MAP) in two forms a modeller can take
// elsewhere:
//  - a `dslens simulate` config that reproduces the fit's model image (its pixelated or decoded
//    source stamps and its PSF kernel go into FITS files beside it), to perturb or re-simulate the
//    fitted lens;
//  - lenstronomy's keyword arguments (lens_model_list / kwargs_lens, lens_light_model_list /
//    kwargs_lens_light, source_light_model_list / kwargs_source, kwargs_data, kwargs_psf,
//    kwargs_numerics), whose conventions dslens follows (docs/fit.md, "The MAP model, exported"),
//    and the data's image positions as LENSED_POSITION point sources with kwargs_likelihood's
//    source_position_likelihood (the term dslens fits, model/image_positions.h).
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

// Row `row` of `m`. `noise` fills the config's noise block (a simulation needs one; the model
// image does not depend on it; a correlation_fwhm of 0 is left out). `positions` are the data's
// image positions (none: no point sources in lenstronomy.json). Parameters of any other row count
// than 1 or m's batch are an InvalidArgument.
ExportedModel export_model(const physics::ImageModel& m, int64_t row,
                           const physics::NoiseModel& noise,
                           const std::vector<model::ImagePositionGroup>& positions);

// Writes the export into `dir` (created if absent): simulate.json, lenstronomy.json and the FITS
// files, each atomically.
void write_exported_model(const ExportedModel& e, const std::string& dir);

}  // namespace dslens::app

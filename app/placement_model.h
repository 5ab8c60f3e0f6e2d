// The placement stage's model (app/map_search.h): a decoded source (a VAE or a pixel grid) stood
// in for by a Sersic, cheap enough to place the lens from many prior draws.
#pragma once
#include <nlohmann/json.hpp>

namespace dslens::app {

// Whether a config's source component is decoded: "VAE" or "PIXELATED".
bool is_decoded_source(const nlohmann::json& source);

// The "model" JSON of the placement stage: every VAE or PIXELATED source replaced by a
// SERSIC_ELLIPSE with the same centre (prior, value or tie; a pixel grid whose centre is not fixed
// gets a free one, normal(0, 0.5")) and broad priors on amplitude
// (log-normal around `amp_median`, counts/s per arcsec^2), size, index and ellipticity; or, for
// `inversion`, by a fixed zero-amplitude one (the source is then solved linearly on a pixel grid
// centred on the decoded source's centre: its prior's mean or init, or its value). Other
// components are kept as they are.
struct PlacementModel {
  nlohmann::json model;
  double center_x = 0.0, center_y = 0.0;  // inversion: the source grid's centre
};
PlacementModel placement_model(const nlohmann::json& model, double amp_median, bool inversion);

}  // namespace dslens::app

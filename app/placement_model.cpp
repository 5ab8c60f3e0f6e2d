#include "placement_model.h"

#include <cmath>
#include <string>

#include "dslens/model/fit_model.h"

namespace dslens::app {

bool is_decoded_source(const nlohmann::json& source) {
  const auto t = source.value("type", std::string());
  return t == "VAE" || t == "PIXELATED";
}

namespace {

// The stand-in's centre: the decoded source's own (a value or a prior); for a pixel grid whose
// centre is not fixed (on the arcs, it follows the lens; or free), free about the lens's centre
// as a free grid's (model/fit_model.h); else 0, the decoded source's default.
nlohmann::json stand_in_centre(const nlohmann::json& source, const char* key) {
  if (source.contains(key)) return source.at(key);
  const bool grid_centre_follows =
      source.value("type", std::string()) == "PIXELATED" &&
      (!source.contains("scale") || source.value("placement", std::string()) == "free");
  if (!grid_centre_follows) return 0.0;
  return {{"prior", "normal"}, {"mean", 0.0}, {"sigma", model::kPixelGridCentreSigma}};
}

}  // namespace

PlacementModel placement_model(const nlohmann::json& model, double amp_median, bool inversion) {
  PlacementModel result;
  nlohmann::json& out = result.model;
  out = model;
  if (!out.contains("source")) return result;
  for (auto& s : out["source"]) {
    if (!is_decoded_source(s)) continue;
    if (inversion) {
      // A source of zero amplitude, fixed: the inversion supplies the source; its grid is centred
      // on the decoded source's centre (prior mean or init, or value).
      const auto centre = [&s](const char* key) {
        const nlohmann::json c = s.value(key, nlohmann::json(0.0));
        if (c.is_number()) return c.get<double>();
        if (c.is_object()) return c.value("init", c.value("mean", 0.0));
        return 0.0;
      };
      result.center_x = centre("center_x");
      result.center_y = centre("center_y");
      s = {{"type", "SERSIC_ELLIPSE"},
           {"amp", 0.0},
           {"R_sersic", 0.1},
           {"n_sersic", 1.0},
           {"e1", 0.0},
           {"e2", 0.0},
           {"center_x", result.center_x},
           {"center_y", result.center_y}};
      continue;
    }
    nlohmann::json sersic = {
        {"type", "SERSIC_ELLIPSE"},
        // Broad: the stand-in's amplitude is only a starting scale for Adam (log space).
        {"amp", {{"prior", "lognormal"}, {"mu", std::log(amp_median)}, {"sigma", 2.0}}},
        // Half-light radii of z ~ 1 galaxies: 0.04" to 0.3" within 1 sigma.
        {"R_sersic", {{"prior", "lognormal"}, {"mu", std::log(0.1)}, {"sigma", 1.0}}},
        {"n_sersic", {{"prior", "uniform"}, {"lower", 0.5}, {"upper", 4.0}}},
        {"e1", {{"prior", "uniform"}, {"lower", -0.5}, {"upper", 0.5}}},
        {"e2", {{"prior", "uniform"}, {"lower", -0.5}, {"upper", 0.5}}},
        // A centre the decoded source leaves to the lens (a pixel grid on the arcs) is free in
        // the stand-in: held at (0, 0) it made the placements of SLACS J1430+4105, whose source
        // lies 0.5" from the lens's centre, bend the lens to it (slope 1.50 at its prior's
        // bound; docs/slacs.md, session 60).
        {"center_x", stand_in_centre(s, "center_x")},
        {"center_y", stand_in_centre(s, "center_y")}};
    s = sersic;
  }
  return result;
}

}  // namespace dslens::app

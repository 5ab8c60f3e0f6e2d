// app/placement_model.h: the placement stage's Sersic stand-in keeps the decoded source's centre,
// and frees the centre of a pixel grid whose centre is not fixed (on the arcs, or free), which a
// stand-in held at (0, 0) could not follow to a source off the lens's centre.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "app/placement_model.h"

namespace placement_model_test {

using json = nlohmann::json;
using dslens::app::placement_model;

json model_with(const json& source) {
  return {{"mass", json::array({{{"type", "SIS"}, {"theta_E", 1.0}}})},
          {"source", json::array({source})}};
}

const json& stand_in(const json& placement) {
  return placement.at("source").at(0);
}

TEST(PlacementModel, AGridWhoseCentreIsNotFixedGetsAFreeStandInCentre) {
  const json free_centre = {{"prior", "normal"}, {"mean", 0.0}, {"sigma", 0.5}};
  // On the arcs (no scale, no centre) and free (a scale prior's grid, "placement": "free").
  for (const json& grid :
       {json{{"type", "PIXELATED"}, {"size", 20}},
        json{{"type", "PIXELATED"}, {"size", 20}, {"scale", 0.05}, {"placement", "free"}}}) {
    const json s = stand_in(placement_model(model_with(grid), 10.0, false).model);
    EXPECT_EQ(s.at("type"), "SERSIC_ELLIPSE") << grid.dump();
    EXPECT_EQ(s.at("center_x"), free_centre) << grid.dump();
    EXPECT_EQ(s.at("center_y"), free_centre) << grid.dump();
  }
  // A fixed scale without a centre keeps the grid at (0, 0): so does the stand-in.
  const json fixed =
      stand_in(placement_model(model_with({{"type", "PIXELATED"}, {"size", 20}, {"scale", 0.05}}),
                               10.0, false)
                   .model);
  EXPECT_EQ(fixed.at("center_x"), 0.0);
  // A centre the config gives (a prior, a value) is the stand-in's.
  const json given = {{"prior", "normal"}, {"mean", 0.3}, {"sigma", 0.1}};
  const json s = stand_in(
      placement_model(
          model_with(
              {{"type", "PIXELATED"}, {"size", 20}, {"center_x", given}, {"center_y", -0.2}}),
          10.0, false)
          .model);
  EXPECT_EQ(s.at("center_x"), given);
  EXPECT_EQ(s.at("center_y"), -0.2);
  // A VAE source without a centre: 0, its own default.
  const json vae = stand_in(
      placement_model(model_with({{"type", "VAE"}, {"checkpoint", "v.pt"}}), 10.0, false).model);
  EXPECT_EQ(vae.at("center_x"), 0.0);
  // Parametric sources are kept as they are.
  const json sersic = {{"type", "SERSIC"}, {"amp", 1.0}, {"R_sersic", 0.1}, {"n_sersic", 1.0}};
  EXPECT_EQ(stand_in(placement_model(model_with(sersic), 10.0, false).model), sersic);
}

}  // namespace placement_model_test

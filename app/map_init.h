// `dslens fit --init`: the MAP starts from a given point instead of searching from prior draws.
// Use it to refit a lens from an earlier fit's map.json (other sampler settings, more draws), to
// start from a solution found elsewhere, or, on a simulation, to start at its truth: the check of
// whether the search missed a mode near the truth (docs/mock_study.md, session 35).
#pragma once
#include <torch/torch.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "fit_config.h"

namespace dslens::app {

// What --init names: "truth" (each lens's simulation truth) or a JSON file of parameter values,
// either a map.json (its "parameters") or an object {name: value}, with a VAE's latents as
// "z_source_light0[i]"; a fit's folder stands for its map.json, and the folder of a fit of
// several lenses for each lens's map.json in its sub-folder of the lens's name (so that a
// catalogue's grid configs start from the same catalogue's Sersic fits, lens by lens).
struct MapInit {
  std::string source;  // "truth" or the file's path, for messages and map.json's "origin"
  bool truth = false;
  nlohmann::json values;  // the file's name -> value object
  // A fit of several lenses: lens name -> its name -> value object (values unused).
  std::map<std::string, nlohmann::json> per_lens;
};

// Throws InputError naming the file when it cannot be read or holds no object of values.
MapInit read_map_init(const std::string& arg);

// The start of `cfg`'s MAP, unconstrained [1, D] (float64, CPU). Every free coordinate must be
// given; names that are not parameters of the model are refused (a typo would otherwise leave a
// parameter at a value nobody chose), fixed ones are ignored. One exception, for a PIXELATED
// source: its pixels and strength sigma may be left out (the MAP solves them for the start's lens,
// map_from_start), and source parameters the model lacks are set aside, so that an earlier
// fit with a parametric source (its map.json) seeds the pixel grid's fit. Throws InputError naming
// the lens, the parameter and what is allowed.
torch::Tensor map_init_point(const FitConfig& cfg, const MapInit& init);

}  // namespace dslens::app

#include "map_init.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "dslens/core/config.h"
#include "dslens/core/errors.h"
#include "dslens/model/fit_model.h"

namespace dslens::app {

MapInit read_map_init(const std::string& arg) {
  MapInit init;
  init.source = arg;
  if (arg == "truth") {
    init.truth = true;
    return init;
  }
  if (!std::filesystem::exists(arg)) {
    throw InputError("--init '" + arg +
                     "': no such file; allowed: 'truth' (a simulation's), a JSON file of "
                     "parameter values (an earlier fit's map.json) or a fit's folder");
  }
  const auto values_of = [](const std::string& file) {
    const nlohmann::json j = load_json_file(file);
    nlohmann::json values = j.contains("parameters") ? j.at("parameters") : j;
    if (!values.is_object() || values.empty()) {
      throw InputError("--init '" + file +
                       "': expected an object of parameter values (or a map.json with "
                       "\"parameters\")");
    }
    return values;
  };
  namespace fs = std::filesystem;
  if (!fs::is_directory(arg)) {
    init.values = values_of(arg);
    return init;
  }
  // A fit's output folder stands for its map.json; a fit of several lenses has one per lens's
  // sub-folder.
  if (fs::exists(fs::path(arg) / "map.json")) {
    init.values = values_of((fs::path(arg) / "map.json").string());
    return init;
  }
  for (const auto& entry : fs::directory_iterator(arg)) {
    const fs::path map = entry.path() / "map.json";
    if (entry.is_directory() && fs::exists(map))
      init.per_lens[entry.path().filename().string()] = values_of(map.string());
  }
  if (init.per_lens.empty()) {
    throw InputError("--init '" + arg +
                     "': a folder without map.json, and none in its sub-folders; give a fit's "
                     "folder or its map.json");
  }
  return init;
}

torch::Tensor map_init_point(const FitConfig& cfg, const MapInit& init) {
  const auto& space = cfg.model.space;
  const std::string lens = "--init " + init.source + " for lens '" + cfg.name + "'";
  const nlohmann::json* given = &init.values;
  if (!init.per_lens.empty()) {
    const auto it = init.per_lens.find(cfg.name);
    if (it == init.per_lens.end()) {
      std::string names;
      for (const auto& [name, values] : init.per_lens) names += (names.empty() ? "" : ", ") + name;
      throw InputError(lens + ": the folder has no fit of this lens (" + cfg.name +
                       "/map.json); its lenses: " + names);
    }
    given = &it->second;
  }
  std::map<std::string, torch::Tensor> values;
  if (init.truth) {
    const auto point = model::truth_point(cfg.model, cfg.data.truth);
    if (!point) {
      throw InputError(lens +
                       ": its data has no truth for every free parameter (allowed only on a "
                       "`dslens simulate` folder of the same model)");
    }
    values = *point;
  } else {
    // A pixel grid's pixels and strength sigma may be left out: the MAP solves them exactly for
    // the start's lens and lens light before it optimises (app/map_search.h, map_from_start). So
    // an earlier fit with a parametric source seeds a pixel grid's fit, its source parameters,
    // which are not this model's, set aside: the parametric-then-pixelated chain of lenstronomy's
    // and PyAutoLens's pipelines.
    const model::FitModel& fit = cfg.model;
    const bool pixelated = fit.decoded_kind == "PIXELATED";
    const auto solved = [&](const std::string& base) {
      return pixelated && (base == fit.latent_block || base == fit.pixel_sigma_name);
    };
    std::vector<std::string> set_aside;
    for (const auto& [name, v] : given->items()) {
      // A block's coordinate "z[i]" belongs to the block "z".
      const std::string base = name.substr(0, name.find('['));
      if (!space.has(base) && pixelated && name.find("_source_light") != std::string::npos) {
        set_aside.push_back(name);
        continue;
      }
      if (!space.has(base)) {
        throw InputError(lens + ": '" + name + "' is not a parameter of the model");
      }
      if (!v.is_number()) {
        throw InputError(lens + ": '" + name + "' is " + v.dump() + "; expected a number");
      }
    }
    // A sky level (UNIFORM lens light) the file lacks starts at 0, no sky, where its prior allows:
    // a fit without one seeds the same model with one (docs/fit.md, "A sky level").
    std::set<std::string> skies;
    for (const auto& b : fit.lens_light) {
      if (b.type == "UNIFORM" && b.params.count("amp")) skies.insert(b.params.at("amp"));
    }
    // Per free scalar or block, the values of its coordinates in order.
    std::map<std::string, std::vector<double>> coords;
    std::map<std::string, bool> is_block;
    std::vector<std::string> missing, no_sky;
    int64_t n_solved = 0;
    for (const auto& c : space.coordinate_names()) {
      const auto it = given->find(c);
      const std::string base = c.substr(0, c.find('['));
      if (it == given->end() && solved(base)) {
        ++n_solved;
        continue;
      }
      if (it == given->end() && skies.count(c) && space.range(c).first < 0.0 &&
          space.range(c).second > 0.0) {
        coords[base].push_back(0.0);
        is_block[base] = false;
        no_sky.push_back(c);
        continue;
      }
      if (it == given->end()) {
        missing.push_back(c);
        continue;
      }
      coords[base].push_back(it->get<double>());
      is_block[base] = c.find('[') != std::string::npos;
    }
    if (!missing.empty()) {
      std::string list;
      for (size_t i = 0; i < missing.size() && i < 8; ++i) list += (i ? ", " : "") + missing[i];
      if (missing.size() > 8) list += ", ... (" + std::to_string(missing.size()) + " in all)";
      throw InputError(lens + ": no value for the free parameter(s) " + list);
    }
    for (const auto& c : no_sky)
      spdlog::info("{}: '{}', a sky level, not given: it starts at 0 (no sky)", lens, c);
    if (n_solved > 0 || !set_aside.empty()) {
      std::string names;
      for (size_t i = 0; i < set_aside.size() && i < 8; ++i)
        names += (i ? ", " : "") + set_aside[i];
      if (set_aside.size() > 8) names += ", ...";
      spdlog::info(
          "{}: {} coordinate(s) of the pixel grid not given, solved for the start's lens{}", lens,
          n_solved,
          set_aside.empty() ? std::string()
                            : "; its source parameters (" + names + ") are not this model's");
    }
    // Coordinates the MAP solves that were not all given start at their prior's median (the
    // solve does not depend on them).
    const auto median =
        space.unpack(space.initial(1, torch::TensorOptions().dtype(torch::kFloat64))).values;
    for (const auto& name : space.free_names()) {
      const auto& m = median.at(name);
      if (solved(name) && (!coords.count(name) || int64_t(coords.at(name).size()) != m.numel())) {
        values[name] = m;
        continue;
      }
      const auto t = torch::tensor(coords.at(name), torch::kFloat64);
      values[name] = is_block.at(name) ? t.reshape({1, -1}) : t;
    }
  }
  const torch::Tensor u = space.pack(values).to(torch::kCPU, torch::kFloat64);
  if (!torch::isfinite(u).all().item<bool>()) {
    const auto names = space.coordinate_names();
    for (int64_t d = 0; d < u.size(1); ++d) {
      if (!std::isfinite(u[0][d].item<double>())) {
        const auto [lo, hi] = space.range(
            names[static_cast<size_t>(d)].substr(0, names[static_cast<size_t>(d)].find('[')));
        throw InputError(lens + ": '" + names[static_cast<size_t>(d)] +
                         "' lies outside its prior's support (" + std::to_string(lo) + ", " +
                         std::to_string(hi) + ")");
      }
    }
  }
  return u;
}

}  // namespace dslens::app

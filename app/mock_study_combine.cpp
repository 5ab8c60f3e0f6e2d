// `dslens mock-study --combine`: a study's parts, run on different machines or days, joined into
// one table (docs/mock_study.md, "A study in parts").
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "dslens/core/errors.h"
#include "mock_population.h"
#include "mock_study_table.h"

namespace fs = std::filesystem;

namespace dslens::app::mock_study {

void combine_studies(const std::vector<std::string>& inputs, const fs::path& out,
                     const std::string& command, bool replace) {
  json common, digest, first_settings, definition;
  std::string first_input;
  std::map<double, std::map<std::string, json>> lenses_at;  // SNR -> mock -> lens record
  // SNR -> summed fit wall time; a part tabulated before it finished (--partial) has none, and
  // then the level's sum would understate it, so the level's wall time is unknown (the table
  // shows the lenses' summed times instead, known for every part).
  std::map<double, double> wall_at;
  std::set<double> wall_unknown;
  std::map<std::pair<double, std::string>, size_t> part_of;  // (SNR, mock) -> part
  std::set<std::string> versions, devices, dtypes, mocks;
  double seconds = 0;
  json parts = json::array();
  for (const auto& input : inputs) {
    fs::path file = input;
    if (fs::is_directory(file)) file /= "mock_study.json";
    if (!fs::exists(file)) {
      throw InputError("--combine: '" + file.string() +
                       "' does not exist (give mock-study output folders or their "
                       "mock_study.json)");
    }
    const json part = load_json_file(file.string());
    if (!part.contains("settings") || !part.contains("levels")) {
      throw InputError("--combine: '" + file.string() + "' is not a mock_study.json");
    }
    json comparable = part.at("settings");
    for (const char* k : {"mocks", "first", "only", "snr", "vae"}) comparable.erase(k);
    const json d = part.value("vae_weights_fnv1a64", json(nullptr));
    if (first_input.empty()) {
      common = comparable;
      digest = d;
      first_settings = part.at("settings");
      definition = part.value("snr_definition", json(kSnrDefinition));
      first_input = file.string();
    } else if (comparable != common) {
      throw InputError("--combine: '" + file.string() + "' has other settings (" +
                       comparable.dump() + ") than '" + first_input + "' (" + common.dump() + ")");
    } else if (d != digest) {
      throw InputError("--combine: the VAE of '" + file.string() + "' (weights " + d.dump() +
                       ") is not that of '" + first_input + "' (" + digest.dump() +
                       "): its mocks have other sources");
    }
    versions.insert(part.value("dslens_version", std::string("?")));
    devices.insert(part.value("device", std::string("?")));
    dtypes.insert(part.value("dtype", std::string("?")));
    seconds += part.value("seconds", 0.0);
    parts.push_back({{"file", file.string()},
                     {"command", part.value("command", std::string())},
                     {"date", part.value("date", std::string())},
                     {"partial", part.value("partial", false)}});
    for (const auto& level : part.at("levels")) {
      const double snr = level.at("snr").get<double>();
      for (const auto& lens : level.at("lenses")) {
        const std::string name = lens.at("name").get<std::string>();
        const auto [it, added] = part_of.emplace(std::make_pair(snr, name), parts.size() - 1);
        if (!added) {
          json& earlier = parts[it->second];
          if (!replace) {
            throw InputError("--combine: " + name + " at SNR " + num(snr) + " is in both '" +
                             earlier.at("file").get<std::string>() + "' and '" + file.string() +
                             "' (--replace takes the later part's)");
          }
          // The part listed last wins, whatever its date: an older fit listed after a refit
          // silently undoes the refit (session 40 did so once by hand), so say so.
          const std::string earlier_date = earlier.value("date", std::string());
          const std::string date = part.value("date", std::string());
          if (!earlier_date.empty() && !date.empty() && date < earlier_date) {
            spdlog::warn(
                "--combine --replace: {} at SNR {} is taken from '{}' ({}), listed after '{}' "
                "({}), a later fit of it; --replace takes the part listed last, so list refits "
                "after the parts they refit",
                name, num(snr), file.string(), date, earlier.at("file").get<std::string>(),
                earlier_date);
          }
          earlier["replaced"].push_back(name + " at SNR " + num(snr));
          it->second = parts.size() - 1;
        }
        lenses_at[snr][name] = lens;
        mocks.insert(name);
      }
      const double w = number_or_nan(level, "fit_wall_seconds");
      if (std::isfinite(w)) {
        wall_at[snr] += w;
      } else {
        wall_unknown.insert(snr);
      }
    }
  }
  if (fs::exists(out)) {
    throw InputError("output folder '" + out.string() + "' already exists; choose another --out");
  }
  json levels = json::array(), snrs = json::array();
  for (const auto& [snr, by_name] : lenses_at) {
    json lenses = json::array();  // by name, as a whole study lists them
    for (const auto& [name, lens] : by_name) lenses.push_back(lens);
    const auto w = wall_at.find(snr);
    const bool known = w != wall_at.end() && wall_unknown.count(snr) == 0;
    levels.push_back(level_entry(snr, "combined", lenses, known ? w->second : NAN));
    snrs.push_back(snr);
  }
  auto joined = [](const std::set<std::string>& v) {
    std::string r;
    for (const auto& x : v) r += (r.empty() ? "" : ", ") + x;
    return r;
  };
  json settings = first_settings;
  settings.erase("first");
  settings.erase("only");
  settings["mocks"] = static_cast<int64_t>(mocks.size());
  settings["snr"] = snrs;
  fs::create_directories(out);
  write_study(out, {{"command", command},
                    {"dslens_version", joined(versions)},
                    {"date", utc_date()},
                    {"device", joined(devices)},
                    {"dtype", joined(dtypes)},
                    {"settings", settings},
                    {"vae_weights_fnv1a64", digest},
                    {"snr_definition", definition},
                    {"combined_from", parts},
                    {"levels", levels},
                    {"seconds", seconds}});
}

}  // namespace dslens::app::mock_study

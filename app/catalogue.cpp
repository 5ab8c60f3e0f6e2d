#include "catalogue.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "dslens/core/config.h"
#include "dslens/core/errors.h"
#include "dslens/core/fits_table.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace dslens::app {
namespace catalogue_detail {

// RFC 4180: a field with a comma, quote or line break is quoted, its quotes doubled.
std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string cell(const json& v) {
  if (v.is_number()) {
    const double x = v.get<double>();
    if (!std::isfinite(x)) return "";
    if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.10g", x);
    return buf;
  }
  if (v.is_string()) return csv_field(v.get<std::string>());
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  return "";
}

}  // namespace catalogue_detail

using namespace catalogue_detail;

std::vector<fs::path> fit_lens_folders(const fs::path& run) {
  const fs::path index_path = run / "index.json";
  if (!fs::exists(index_path))
    throw FileError("'" + run.string() + "' holds no finished fit (no index.json)");
  const json index = load_json_file(index_path.string());
  if (!index.contains("lenses") || !index.at("lenses").is_array())
    throw FileError("'" + index_path.string() + "' has no \"lenses\" list");
  std::vector<fs::path> out;
  const bool one_lens = index.at("lenses").size() == 1;
  for (const auto& line : index.at("lenses")) {
    const std::string lens = line.value("lens", std::string());
    const fs::path recorded = line.value("folder", std::string());
    // Where `dslens fit` puts a lens (DIR/LENS, or DIR itself for one lens) before the recorded
    // path, which is relative to where the fit ran when --out was.
    if (!lens.empty() && !one_lens && fs::exists(run / lens / "summary.json")) {
      out.push_back(run / lens);
    } else if (one_lens && fs::exists(run / "summary.json")) {
      out.push_back(run);
    } else if (!recorded.empty() && fs::exists(recorded / "summary.json")) {
      out.push_back(recorded);
    } else {
      throw FileError("'" + index_path.string() + "' lists lens '" + lens +
                      "', whose summary.json is neither in '" + recorded.string() + "' nor in '" +
                      (run / lens).string() + "'");
    }
  }
  return out;
}

Catalogue catalogue_csv(const std::vector<fs::path>& lens_dirs) {
  std::vector<std::string> columns = {
      "lens",        "folder",   "reduced_chi_square_map", "reduced_chi_square_arcs",
      "divergences", "max_rhat", "min_ess_bulk",           "warnings"};
  std::set<std::string> known(columns.begin(), columns.end());
  std::vector<std::map<std::string, json>> rows;
  const auto add = [&](std::map<std::string, json>& row, const std::string& key, const json& v) {
    if (known.insert(key).second) columns.push_back(key);
    row[key] = v;
  };
  for (const auto& dir : lens_dirs) {
    const fs::path path = dir / "summary.json";
    const json s = load_json_file(path.string());
    if (!s.contains("parameters") || !s.at("parameters").is_array())
      throw FileError("'" + path.string() + "' has no \"parameters\" list");
    std::map<std::string, json> row;
    row["lens"] = s.value("lens", dir.filename().string());
    row["folder"] = dir.string();
    row["reduced_chi_square_map"] = s.value("reduced_chi_square_map", json());
    row["reduced_chi_square_arcs"] = s.value("reduced_chi_square_arcs", json());
    row["divergences"] = s.value("divergences", json());
    row["warnings"] = s.contains("warnings") ? json(s.at("warnings").size()) : json();
    double max_rhat = -INFINITY, min_ess = INFINITY;
    for (const auto& p : s.at("parameters")) {
      if (p.value("rhat", json()).is_number())
        max_rhat = std::max(max_rhat, p["rhat"].get<double>());
      if (p.value("ess_bulk", json()).is_number())
        min_ess = std::min(min_ess, p["ess_bulk"].get<double>());
    }
    row["max_rhat"] = std::isfinite(max_rhat) ? json(max_rhat) : json();
    row["min_ess_bulk"] = std::isfinite(min_ess) ? json(min_ess) : json();
    // The MAP's parameter values (map.json, when present).
    json map_values = json::object();
    if (fs::exists(dir / "map.json")) {
      const json map = load_json_file((dir / "map.json").string());
      if (map.contains("parameters") && map.at("parameters").is_object())
        map_values = map.at("parameters");
      // The derived quantities at the MAP (map.json's `derived`, from session 45).
      if (map.contains("derived") && map.at("derived").is_object())
        map_values.update(map.at("derived"));
      // The noise's correlation between pixels (map.json's `noise_correlation`, session 63) on the
      // quiet pixels: the sigma scale the fit used, the one its residuals call for, and the sum
      // ratio behind it, to find in a catalogue the lenses whose widths need a noise_scale.
      // The lens's centre on the sky, where the data had a celestial WCS (map.json's "sky").
      const json centre = map.value("sky", json::object()).value("lens_center", json());
      if (centre.is_object()) {
        add(row, "ra_lens_center", centre.value("ra", json()));
        add(row, "dec_lens_center", centre.value("dec", json()));
      }
      add(row, "noise_scale", map.value("noise_scale", json(1.0)));
      const json quiet = map.value("noise_correlation", json::object()).value("quiet", json());
      if (quiet.is_object()) {
        add(row, "noise_scale_suggested", quiet.value("noise_scale", json()));
        add(row, "noise_sum_ratio", quiet.value("sum_ratio", json()));
        add(row, "noise_kernel_fwhm", quiet.value("kernel_fwhm", json()));
      }
    }
    for (const char* list : {"parameters", "derived"}) {
      if (!s.contains(list)) continue;
      for (const auto& p : s.at(list)) {
        const std::string v = p.value("variable", std::string());
        if (v.empty() || v.find('[') != std::string::npos) continue;  // latents, source pixels
        for (const char* k : {"q50", "q16", "q84", "rhat"})
          add(row, v + "_" + k, p.value(k, json()));
        if (map_values.contains(v)) add(row, v + "_map", map_values.at(v));
        if (p.contains("truth")) add(row, v + "_truth", p.at("truth"));
      }
    }
    rows.push_back(std::move(row));
  }
  Catalogue result;
  std::string& out = result.csv;
  for (size_t c = 0; c < columns.size(); ++c) out += (c ? "," : "") + csv_field(columns[c]);
  out += "\n";
  result.columns = columns;
  for (const auto& row : rows) {
    result.lenses.push_back(row.at("lens").get<std::string>());
    std::vector<json> cells;
    for (size_t c = 0; c < columns.size(); ++c) {
      const auto it = row.find(columns[c]);
      out += (c ? "," : "") + (it == row.end() ? std::string() : cell(it->second));
      cells.push_back(it == row.end() ? json() : it->second);
    }
    result.cells.push_back(std::move(cells));
    out += "\n";
  }
  return result;
}

void write_catalogue_fits(const std::string& path, const Catalogue& table) {
  std::vector<FitsTableColumn> columns;
  for (size_t c = 0; c < table.columns.size(); ++c) {
    FitsTableColumn col;
    col.name = table.columns[c];
    for (const auto& row : table.cells) col.is_text = col.is_text || row[c].is_string();
    for (const auto& row : table.cells) {
      const json& v = row[c];
      if (col.is_text) {
        col.text.push_back(v.is_string() ? v.get<std::string>() : v.is_null() ? "" : v.dump());
      } else {
        col.numbers.push_back(v.is_number()    ? v.get<double>()
                              : v.is_boolean() ? double(v.get<bool>())
                                               : NAN);
      }
    }
    columns.push_back(std::move(col));
  }
  write_fits_table(path, columns, "CATALOGUE");
}

}  // namespace dslens::app

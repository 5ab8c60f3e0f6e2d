#include "dslens/samplers/draws_io.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "dslens/core/atomic_file.h"
#include "dslens/core/errors.h"
#include "dslens/core/npy.h"

namespace dslens::samplers {
namespace draws_io_detail {

constexpr const char* kFormat = "dslens-draws";
constexpr int kVersion = 1;

void check_labelled(const std::string& what, const std::string& path, const LabelledDraws& d) {
  if (!d.values.defined() || d.values.dim() != 3) {
    throw InvalidArgument(what + " for '" + path + "' must be a [chains, draws, columns] tensor");
  }
  if (static_cast<int64_t>(d.names.size()) != d.values.size(2)) {
    throw InvalidArgument(what + " for '" + path + "': " + std::to_string(d.names.size()) +
                          " names for " + std::to_string(d.values.size(2)) + " columns");
  }
  std::set<std::string> seen;
  for (const auto& n : d.names) {
    if (n.empty()) throw InvalidArgument(what + " for '" + path + "': empty column name");
    if (!seen.insert(n).second) {
      throw InvalidArgument(what + " for '" + path + "': duplicate column name '" + n + "'");
    }
  }
}

void write_labelled(const std::string& npy_path, const LabelledDraws& d, const std::string& kind) {
  check_labelled(kind, npy_path, d);
  nlohmann::json side = {
      {"format", kFormat},
      {"version", kVersion},
      {"kind", kind},
      {"shape", d.values.sizes().vec()},
      {"names", d.names},
      {"settings", d.settings.is_null() ? nlohmann::json::object() : d.settings}};
  write_npy(npy_path, d.values.detach().to(torch::kCPU, torch::kFloat64));
  write_text_atomically(sidecar_path(npy_path), side.dump(2) + "\n");
}

LabelledDraws read_labelled(const std::string& npy_path, const std::string& expected_kind) {
  const std::string side_path = sidecar_path(npy_path);
  if (!std::filesystem::exists(npy_path))
    throw FileError("draws file '" + npy_path + "' does not exist");
  if (!std::filesystem::exists(side_path)) {
    throw FileError("draws file '" + npy_path + "' has no sidecar '" + side_path + "'");
  }
  nlohmann::json side;
  {
    std::ifstream in(side_path);
    if (!in) throw FileError("cannot read '" + side_path + "'");
    try {
      side = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw FileError("sidecar '" + side_path + "' is not valid JSON: " + e.what());
    }
  }
  auto bad = [&](const std::string& what) -> FileError {
    return FileError("sidecar '" + side_path + "': " + what);
  };
  if (!side.is_object() || side.value("format", std::string()) != kFormat) {
    throw bad(std::string("not a dslens draws sidecar (\"format\" must be \"") + kFormat + "\")");
  }
  if (!side.contains("version") || !side["version"].is_number_integer() ||
      side["version"].get<int>() > kVersion) {
    throw bad("unsupported version (this dslens reads version " + std::to_string(kVersion) + ")");
  }
  const std::string kind = side.value("kind", std::string());
  if (!expected_kind.empty() && kind != expected_kind) {
    throw bad("kind is '" + kind + "', expected '" + expected_kind + "'");
  }
  LabelledDraws d;
  try {
    d.names = side.at("names").get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception&) {
    throw bad("\"names\" must be a list of strings");
  }
  d.settings = side.contains("settings") ? side["settings"] : nlohmann::json::object();
  auto values = read_npy(npy_path);
  if (values.dim() != 3) {
    throw FileError("draws file '" + npy_path +
                    "' must hold a [chains, draws, columns] array, got " +
                    std::to_string(values.dim()) + " dimensions");
  }
  if (static_cast<int64_t>(d.names.size()) != values.size(2)) {
    throw bad(std::to_string(d.names.size()) + " names but '" + npy_path + "' has " +
              std::to_string(values.size(2)) + " columns");
  }
  if (side.contains("shape")) {
    std::vector<int64_t> shape;
    try {
      shape = side["shape"].get<std::vector<int64_t>>();
    } catch (const nlohmann::json::exception&) {
      throw bad("\"shape\" must be a list of integers");
    }
    if (shape != values.sizes().vec()) throw bad("\"shape\" does not match '" + npy_path + "'");
  }
  d.values = values.to(torch::kFloat64);
  return d;
}

}  // namespace draws_io_detail

int64_t LabelledDraws::column(const std::string& name) const {
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return static_cast<int64_t>(i);
  }
  return -1;
}

torch::Tensor LabelledDraws::column_values(const std::string& name) const {
  const int64_t i = column(name);
  if (i < 0) throw InvalidArgument("no column '" + name + "'");
  return values.select(2, i);
}

std::string sidecar_path(const std::string& npy_path) {
  std::filesystem::path p(npy_path);
  if (p.extension() == ".npy") return p.replace_extension(".json").string();
  return npy_path + ".json";
}

void write_draws(const std::string& npy_path, const LabelledDraws& draws) {
  draws_io_detail::write_labelled(npy_path, draws, "draws");
}

void write_stats(const std::string& npy_path, const LabelledDraws& stats) {
  draws_io_detail::write_labelled(npy_path, stats, "stats");
}

LabelledDraws read_draws(const std::string& npy_path) {
  return draws_io_detail::read_labelled(npy_path, "");
}

LabelledDraws read_stats(const std::string& npy_path) {
  return draws_io_detail::read_labelled(npy_path, "stats");
}

void write_sampler_output(const std::string& dir, const LabelledDraws& draws,
                          const LabelledDraws& stats) {
  const std::filesystem::path d(dir);
  write_draws((d / "draws.npy").string(), draws);
  if (stats.values.defined()) write_stats((d / "stats.npy").string(), stats);
}

}  // namespace dslens::samplers

// Sampler output on disk: a NumPy array [chains, draws, columns] (float64) plus a JSON sidecar with
// the column names and the sampler settings.
//
//   draws.npy   [chains, draws, params]     draws.json  {"format": "dslens-draws", "kind": "draws",
//   stats.npy   [chains, draws, n_stats]    stats.json   "version": 1, "shape": [...],
//                                                        "names": [...], "settings": {...}}
//
// The sidecar of X.npy is X.json. Both files are written atomically (array first, then sidecar).
// Reading checks that the sidecar matches the array and throws dslens::FileError naming the file
// otherwise; bad arguments to the writers throw dslens::InvalidArgument.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace dslens::samplers {

// A labelled array of MCMC output.
struct LabelledDraws {
  torch::Tensor values;            // [chains, draws, columns], stored as float64
  std::vector<std::string> names;  // one unique, non-empty name per column
  nlohmann::json settings = nlohmann::json::object();  // free-form sampler settings

  int64_t chains() const { return values.size(0); }
  int64_t draws() const { return values.size(1); }
  // Index of column `name`, or -1.
  int64_t column(const std::string& name) const;
  // values[:, :, column(name)] as [chains, draws]; InvalidArgument if absent.
  torch::Tensor column_values(const std::string& name) const;
};

// The sidecar path of an array path: "out/draws.npy" -> "out/draws.json".
std::string sidecar_path(const std::string& npy_path);

// Parameter draws (kind "draws") and sampler statistics (kind "stats", e.g. energy__,
// divergent__, treedepth__, stepsize__, accept_stat__, n_leapfrog__).
void write_draws(const std::string& npy_path, const LabelledDraws& draws);
void write_stats(const std::string& npy_path, const LabelledDraws& stats);
// Reads an array and its sidecar (either kind).
LabelledDraws read_draws(const std::string& npy_path);
// Like read_draws, and the sidecar must say kind "stats".
LabelledDraws read_stats(const std::string& npy_path);

// A sampler's output folder: dir/draws.npy + draws.json, and dir/stats.npy + stats.json when
// `stats` has values. The folder must exist.
void write_sampler_output(const std::string& dir, const LabelledDraws& draws,
                          const LabelledDraws& stats = {});

}  // namespace dslens::samplers

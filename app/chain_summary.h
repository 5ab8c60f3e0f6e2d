// Each chain of a fit on its own: its mean log posterior, divergences, step size and the mean of
// every scalar quantity, so that a modeller whose R-hat warns can see which chain is where.
// Written to summary.json ("chains") and summary.txt ("Per chain"); split_chains_warning names
// chains that sit in a lower mode than the best chain's.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace dslens::app {

struct ChainSummary {
  std::vector<double> mean_log_density;       // [C]
  std::vector<double> mean_log_density_mcse;  // [C]: its Monte Carlo error (sd / sqrt(ESS))
  std::vector<int64_t> divergences;           // [C], after warmup
  std::vector<double> step_size;              // [C], the sampling step size
  std::vector<std::string> names;             // [K]
  torch::Tensor means;                        // [C, K] float64
  torch::Tensor within_sd;                    // [K]: sqrt of the mean of the chains' variances
};

// values [C, N, K], log_density [C, N], divergent [C, N] (bool), step_size [C, N].
ChainSummary summarize_chains(const torch::Tensor& values, const std::vector<std::string>& names,
                              const torch::Tensor& log_density, const torch::Tensor& divergent,
                              const torch::Tensor& step_size);

// [{"chain", "mean_log_density", "divergences", "step_size", "mean": {name: value}}, ...]
nlohmann::json chains_json(const ChainSummary& s);

// A table with one row per quantity and one column per chain (mean log posterior, divergences
// and step size first); empty above `max_chains` chains.
std::string chains_text(const ChainSummary& s, size_t max_chains = 8);

// When a chain's mean log posterior lies more than `nats` below the best chain's, it explores
// another, less probable mode and the pooled summary mixes the two: a warning that names each such
// chain, its gap, and the (up to three) quantities whose chain mean lies furthest from the best
// chain's, in units of the pooled within-chain sd (those beyond 3 sd). A mean log posterior moves
// by about sqrt(D / 2) / sqrt(ESS) between chains of the same mode (under 1 nat for a 75-parameter
// fit with an ESS of 100), so a gap of 5 nats is a different mode.
std::optional<std::string> split_chains_warning(const ChainSummary& s, double nats = 5.0);

// Where a fit's divergent transitions lie, for their warning: "; they lie towards low X (mean
// percentile 12 %), ..." for the (up to three) parameters whose divergent draws' mean rank
// percentile among all draws (samplers::divergence_percentiles) is furthest from 50 %, beyond 15
// points; "" with fewer than 5 divergences (a chain's draws come in runs, and a few say little),
// or when none is that far. draws [C, N, K] (any monotone transform of each parameter), divergent
// [C, N], names [K]. docs/fit.md, "Divergences".
std::string divergence_region(const torch::Tensor& draws, const torch::Tensor& divergent,
                              const std::vector<std::string>& names);

}  // namespace dslens::app

// The fitting pipeline of `dslens fit` for one batch of lenses that share a model: MAP from many
// prior draws optimised together, then NUTS (or HMC) chains started at each lens's best optimum,
// all lenses' starts and chains as rows of one tensor batch (lens-major).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dslens/core/device.h"
#include "dslens/samplers/hmc.h"
#include "fit_config.h"

namespace dslens::app {

// One lens's share of a batch fit: everything its output folder is made from.
struct LensFitResult {
  const FitConfig* config = nullptr;
  // data.noise_scale "auto" (app/noise_correlation.h): the config with the measured factor applied
  // to sigma, which the chains sampled (null where no factor was applied), and the measurement
  // (null where the config's noise_scale is a number).
  std::shared_ptr<const FitConfig> noise_scaled_config;
  nlohmann::json noise_scale_auto;
  // The config the chains sampled: the noise-scaled one, else `config`.
  const FitConfig& fitted_config() const {
    return noise_scaled_config ? *noise_scaled_config : *config;
  }
  torch::Tensor map_u;     // [1, D] the highest optimum found (unconstrained) ...
  double map_log_p = 0.0;  // ... its log posterior, and where it came from
  std::string map_origin = "the MAP search";
  torch::Tensor starts_u;      // [K, D] the best K optima, best first
  torch::Tensor starts_log_p;  // [K]
  // [1, D] the row whose lens light (and lens's core) a PIXELATED grid on the arcs is traced from
  // (LensPosterior::fix_arcs_lens_light) for the chains and the outputs: the search's best
  // placement (app/map_search.h); undefined without such a grid. Not starts_u's first row: outputs
  // that traced from that row drew the MAP's pixels on another grid (docs/slacs.md, session 56).
  torch::Tensor arcs_lens_light_u;
  samplers::Draws chains;  // [C, N, D] unconstrained draws and [C, N] statistics
  nlohmann::json sampler_settings;
  double map_seconds = 0.0, warmup_seconds = 0.0, sampling_seconds = 0.0;
  int64_t gradient_evaluations = 0;  // this lens's share
  int64_t batch_size = 1;            // lenses fitted together
  // MAP search rounds the lens took part in (app/map_rounds.h): 1 when the first search passed,
  // 0 when --init replaced the search, -1 when unknown (resumed from an older checkpoint).
  int64_t search_rounds = -1;
};

struct FitRunOptions {
  Compute compute;
  std::string checkpoint_dir;  // stage results for --resume
  bool resume = false;
  // "map" or "warmup": stop after that stage, leaving its checkpoint, and return no results.
  std::string stop_after;
  // --init (app/map_init.h): each lens's MAP start [1, D], replacing the search; empty: search.
  std::map<const FitConfig*, torch::Tensor> init;
  std::string init_source;  // what --init named, for map.json's "origin"
};

// Fits lenses (same batch_key) together; `batch_index` names the checkpoint files.
std::vector<LensFitResult> fit_batch(const std::vector<const FitConfig*>& lenses,
                                     int64_t batch_index, const FitRunOptions& options);

// Writes draws, statistics, summary, MAP, FITS images, warnings and report.png into `dir`.
// Returns the lens's line of the run index (name, reduced chi-square, warnings count, ...).
nlohmann::json write_lens_outputs(const std::string& dir, const LensFitResult& result,
                                  const Compute& compute);

}  // namespace dslens::app

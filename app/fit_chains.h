// The chains stage of `dslens fit` (app/fit_run.h): one sampler run of a batch's lenses started
// from their MAP optima, checkpointed for --resume; each lens's best draw optimised; and which
// lenses' chains ended apart, in modes tens of nats apart, so that they are run again (chain
// rounds, docs/fit.md).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "dslens/samplers/hmc.h"
#include "dslens/samplers/laplace.h"
#include "fit_config.h"
#include "fit_run.h"

namespace dslens::app {

// Checkpoint files: written atomically (through PATH.tmp); load_tensors throws FileError naming
// the file.
void save_tensors(const std::string& path, const std::vector<torch::Tensor>& tensors);
std::vector<torch::Tensor> load_tensors(const std::string& path);

struct ChainRunFiles {
  std::string chains;   // the finished run's draws and statistics
  std::string sampler;  // the sampler's last snapshot (an interrupted run continues from it)
};

struct ChainRun {
  samplers::SamplerResult sampled;  // rows lens-major: [L * chains, ...]
  nlohmann::json settings;          // the sampler settings, as stats.json records them
};

// One sampler run of `lenses` (same batch_key; log_density's rows lens-major), the chains of each
// lens started at its kept optima best_x [L, K, D] (log posteriors best_lp [L, K], best first).
// `hessian_block`, when set, gives the Laplace approximation at the optima a block of the Hessian
// in closed form (a pixel grid's: model::pixel_source_hessian).
// `round` (1, 2, ...) salts the chains' random streams and starting jitter, so that a lens's run
// of a given round is the same alone or in any batch. With options.resume, finished chains are
// read from files.chains and an interrupted run continues from files.sampler. std::nullopt: the
// run stopped after warmup (options.stop_after "warmup").
std::optional<ChainRun> run_chains(const std::vector<const FitConfig*>& lenses,
                                   const samplers::LogDensityFn& log_density,
                                   const samplers::HessianBlockFn& hessian_block,
                                   const torch::Tensor& best_x, const torch::Tensor& best_lp,
                                   int64_t round, const ChainRunFiles& files,
                                   const FitRunOptions& options, const std::string& label);

// Each lens's best draw of its chains, optimised by L-BFGS: the MAP search can end in a mode that
// the chains leave during warmup (on the bench mock its optimum had e1 0.165 and gamma 2.37, the
// chains' mean 0.091 and 2.17, with draws 26 nats above that optimum), and the outputs' model and
// residuals must show the mode the posterior describes. One row per lens (lens-major).
struct ChainsMode {
  torch::Tensor x;      // [L, D]
  torch::Tensor log_p;  // [L] (CPU, float64); -inf where not finite
};
ChainsMode chains_mode(const samplers::LogDensityFn& log_density,
                       const samplers::SamplerResult& sampled, int64_t n_lenses);

// The lenses (indices) whose chains ended apart: some chain's mean log density over its draws is
// more than `nats` below that of its lens's best chain, or not finite while the best's is
// (samplers::find_stray_chains on log_density [L * chains, N]). Between two modes of one shape
// the chains' mean log densities differ by the log of their mass ratio, so with the stray rule's
// 20 nats such a chain sits in a mode holding less than e^-20 of the best one's mass: its draws
// are not the posterior's, and R-hat says so. As in warmup, the gap must also exceed 4 Monte
// Carlo errors of the two chains' means (samplers::mcse_mean of each chain's draws).
std::vector<int64_t> lenses_with_chains_apart(const torch::Tensor& log_density, int64_t chains,
                                              double nats);

}  // namespace dslens::app

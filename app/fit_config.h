// One `dslens fit` config (docs/fit.md): the data, the model, and the MAP and sampler settings;
// and how configs are grouped into batches that share one model and one image size.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dslens/core/config.h"
#include "dslens/core/device.h"
#include "dslens/model/fit_model.h"
#include "dslens/model/observation.h"

namespace dslens::app {

// The largest map.retry_rounds a config may ask for.
inline constexpr int64_t kMaxRetryRounds = 100;

struct MapSettings {
  int64_t starts = 32;            // prior draws optimised together, per lens
  int64_t adam_iterations = 300;  // Adam first (robust far from the optimum) ...
  double learning_rate = 0.05;
  // Coarse to fine: the Adam iterations are split into stages on the residuals blurred by these
  // Gaussian sigmas (pixels; LensPosterior::log_prob_smoothed), then one on the exact posterior.
  // Off by default until a mock study says which schedule to use (docs/fit.md).
  std::vector<double> blur_pixels;
  int64_t lbfgs_iterations = 200;  // ... then L-BFGS to converge
  uint64_t seed = 0;
  // Models with a VAE or PIXELATED source (app/map_search.h): "sersic" places the lens with a
  // Sersic stand-in source first, then fits the decoded source with the lens held, then all
  // parameters at joint_learning_rate; "none" optimises all parameters from prior draws at once.
  std::string placement = "sersic";  // or "inversion" or "none"
  // Iterations of the placement stage; < 0: adam_iterations and lbfgs_iterations.
  int64_t placement_adam_iterations = -1;
  int64_t placement_lbfgs_iterations = -1;
  // Prior draws of the placement stage (cheap: no decoder), per lens; the best `starts` of them go
  // on to the source and joint stages. Below `starts`: `starts`. Negative (the default, when the
  // config has no value): 4 x starts with `backproject`, whose full-model ranking picks them,
  // else `starts` (app/map_search.cpp).
  int64_t placement_starts = -1;
  int64_t inversion_pixels = 16;       // "inversion": the source grid's side ...
  double inversion_half_width = 0.75;  // ... and half its width (arcsec)
  // The placement's objective: residuals blurred by this Gaussian sigma (pixels), so that the
  // stand-in is fitted to the arcs' shape, not to the source's small-scale structure.
  double placement_blur_pixels = 0.0;
  int64_t source_adam_iterations = 300;
  int64_t source_lbfgs_iterations = 200;
  double joint_learning_rate = 0.005;
  // Likelihood annealing (staged MAP only): noise scale factors T > 1, largest first. Placement and
  // source stages run on the posterior with every pixel's sigma multiplied by the first factor
  // (the likelihood raised to 1/T^2: fewer, wider basins), then the joint stage runs at each
  // factor in turn and finally at 1. Empty: no annealing.
  std::vector<double> anneal_noise;
  // Staged MAP, "sersic" placement: start from the data traced back to the source plane
  // (model/source_backprojection.h): each placement's source centre at the flux-weighted centre
  // of its lens's back-projected signal pixels (models without lens light), and the decoded
  // source (latents by the VAE's encoder, amplitude, centre) from the back-projected image
  // through each placed lens. false: prior draws, as before.
  bool backproject = true;
  // Polishing (samplers/newton.h): damped Newton iterations with the finite-difference Hessian on
  // each lens's best `newton_starts` optima after the last stage; 0: none. Models with more than
  // `kHessianMaxDimension` free parameters to difference skip it (the Hessian costs 2D gradients
  // per start; a pixel grid's block is known in closed form and not counted).
  int64_t newton_iterations = 50;
  int64_t newton_starts = 4;
  // Search rounds (app/map_rounds.h): a lens whose best optimum leaves a reduced chi-square above
  // retry_reduced_chi_square (or the sigma rule's threshold below) is searched again from fresh
  // prior draws, at most retry_rounds more times; each lens keeps its best `starts` optima over all
  // rounds. 0: one round only.
  int64_t retry_rounds = 2;  // at most kMaxRetryRounds
  double retry_reduced_chi_square = 1.1;
  // ... or above 1 + retry_chi_square_sigma sqrt(2 / dof), if lower (app/map_rounds.h); 0: off.
  double retry_chi_square_sigma = 1.5;
};
// Newton polishing and the sampler's curvature metric take Hessians by differences (2D gradient
// rows per point, a D x D eigensolve); models with more free parameters to difference than this
// skip the polish, and with more free parameters skip the curvature metric (which does not yet use
// a pixel grid's closed-form block).
inline constexpr int64_t kHessianMaxDimension = 400;
// The sampler's "auto" metric is dense up to this many free parameters, diagonal above. A dense
// metric costs D^2 per chain and leapfrog step and D^3 per window, small beside the image model up
// to a few thousand parameters; a pixel grid's neighbouring pixels are correlated through the PSF
// and the interpolation, which a diagonal metric pays for in step size (a 32 x 32 PIXELATED source,
// 1,037 parameters: 382 leapfrog steps per iteration diagonal, 33 to 132 dense, in the same early
// warmup; docs/benchmarks.md, session 46).
inline constexpr int64_t kDenseMetricMaxDimension = 2048;

struct SamplerChoice {
  std::string algorithm = "nuts";  // "nuts" or "hmc"
  int64_t chains = 4;              // per lens
  int64_t warmup = 500;
  int64_t draws = 500;
  int max_depth = 10;
  double target_accept = 0.8;
  // "dense", "diag", or "auto": dense up to kDenseMetricMaxDimension free parameters, diagonal
  // above (SLACS J1430+4105's 20 parameters: 7 times fewer gradients with the dense metric than
  // with the diagonal one, docs/slacs.md).
  std::string metric = "auto";
  // Draws' worth of weight the current metric keeps in each warmup window's estimate
  // (samplers::AdaptSettings::metric_prior_count); < 0: the number of free parameters for a dense
  // metric, 0 (Stan's rule) for a diagonal one.
  double metric_prior_count = -1.0;
  uint64_t seed = 0;
  int64_t num_steps = 16;  // HMC only
  // On a CUDA device, replay the sampler's log density from CUDA graphs (samplers/cuda_graph.h).
  bool cuda_graphs = true;
  // "per_lens": the chains of a lens pool their warmup adaptation (one step size and one metric
  // per lens, from all its chains' draws); "per_chain": each chain adapts on its own.
  std::string adaptation = "per_lens";
  // Warmup's metric from the local curvature at the chains' positions
  // (samplers::AdaptSettings::curvature_metric); models with more than kHessianMaxDimension free
  // parameters skip it.
  bool curvature_metric = true;
  // Warmup's stray chains (samplers::AdaptSettings::stray_nats): in the initial buffer a chain
  // whose mean log posterior is this many nats below its lens's best chain continues from that
  // chain's position; 0: off.
  double stray_nats = 20.0;
  // Chain rounds (app/fit_chains.h): a lens whose chains end with mean log posteriors more than
  // stray_nats apart is run again from its best optimum so far, at most this many more times.
  int64_t retry_rounds = 1;
  // NUTS with the chains out of step (samplers::NutsSettings::out_of_step; in warmup the lenses,
  // whose chains pool their adaptation): the same draws in fewer batched leapfrog steps where the
  // chains' trees differ. Unset: on the CPU when a batch holds more than one lens (the CPU skips a
  // single lens's waiting rows anyway, but pads every lens of a batch to the same count; on a GPU
  // each out-of-step leapfrog step dispatches more operators than a lock-step one, which is not
  // measured against the steps saved: docs/benchmarks.md, sessions 42 and 43).
  std::optional<bool> out_of_step;
};

struct FitConfig {
  std::string name;  // the config file's stem
  std::string path;  // the config file
  json config;       // as read
  model::Observation data;
  model::FitModel model;
  MapSettings map;
  SamplerChoice sampler;
};

// Reads and validates a config file; ConfigError names the JSON path.
FitConfig load_fit_config(const std::string& path, const Compute& compute);
void parse_fit_settings(const ConfigNode& root, MapSettings& map, SamplerChoice& sampler);

// Configs whose model, settings, image size and PSF size agree can share one batch.
std::string batch_key(const FitConfig& config);

// Expands files and folders (*.json, sorted) into config paths; InputError when none.
std::vector<std::string> expand_config_paths(const std::vector<std::string>& args);
// The slice i of n (configs k with k % n == i).
std::vector<std::string> shard(const std::vector<std::string>& paths, int64_t index, int64_t count);

}  // namespace dslens::app

// Batched Hamiltonian Monte Carlo: per-chain counter-based random streams, the leapfrog
// integrator, the Stan-style warmup/sampling driver shared with NUTS, and static HMC with fixed or
// jittered trajectory lengths. All chains advance together on the positions' device; each chain's
// draws are those it would get alone with the same seed and chain id.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dslens/samplers/log_density.h"
#include "dslens/samplers/metric.h"
#include "dslens/samplers/sampler_settings.h"

namespace dslens::samplers {

// Counter-based random numbers with one independent stream per chain: the value drawn for
// (iteration, stream, sub, element) depends only on (seed, chain id) and those counters, never on
// other chains or on how many numbers were drawn before. 32-bit integer hashing (MurmurHash3 /
// lowbias32 finalisers): on the CPU in one fused loop, elsewhere with int64 tensor operations on
// the device; both give the same words.
class ChainRandom {
 public:
  ChainRandom() = default;
  // Chains get ids first_chain_id, ..., first_chain_id + chains - 1.
  ChainRandom(uint64_t seed, int64_t first_chain_id, int64_t chains, torch::Device device);
  // Chain c gets id chain_ids[c].
  ChainRandom(uint64_t seed, const std::vector<uint64_t>& chain_ids, torch::Device device);
  int64_t chains() const { return key_ab_.defined() ? key_ab_.size(0) : 0; }
  // Raw 32-bit words [C, n] (int64 in [0, 2^32)) for elements offset, ..., offset + n - 1.
  torch::Tensor bits(int64_t iteration, int64_t stream, int64_t sub, int64_t offset,
                     int64_t n) const;
  // The same words computed with tensor operations (what bits() does off the CPU, where it runs
  // one fused loop instead); public so that tests can compare the two.
  torch::Tensor bits_tensor_ops(int64_t iteration, int64_t stream, int64_t sub, int64_t offset,
                                int64_t n) const;
  // Words [C, n] for chain c's elements offset[c], ..., offset[c] + n - 1 of its own
  // iteration[c]: row c of bits(iteration[c], stream, sub, offset[c], n). For chains that are not
  // at the same iteration (out-of-step NUTS); iteration and offset are int64 [C] on the chains'
  // device.
  torch::Tensor bits_per_chain(const torch::Tensor& iteration, int64_t stream, int64_t sub,
                               const torch::Tensor& offset, int64_t n) const;
  // The same words with tensor operations (what bits_per_chain does off the CPU).
  torch::Tensor bits_per_chain_tensor_ops(const torch::Tensor& iteration, int64_t stream,
                                          int64_t sub, const torch::Tensor& offset,
                                          int64_t n) const;
  // Uniforms in (0, 1) with 32-bit resolution, [C, n].
  torch::Tensor uniform(int64_t iteration, int64_t stream, int64_t sub, int64_t offset, int64_t n,
                        torch::Dtype dtype) const;
  // Standard normals (Box-Muller with a 53-bit radius uniform), [C, n].
  torch::Tensor normal(int64_t iteration, int64_t stream, int64_t sub, int64_t n,
                       torch::Dtype dtype) const;
  // The conversions behind uniform() (one word each) and normal() (three words each, [C, 3n]).
  static torch::Tensor uniform_from_bits(const torch::Tensor& words, torch::Dtype dtype);
  static torch::Tensor normal_from_bits(const torch::Tensor& words, torch::Dtype dtype);

 private:
  torch::Tensor key_ab_;  // [C, 2]: the two 32-bit halves of each chain's key
  // Per-column constants of the two finalisers, [1, 2] on the device.
  torch::Tensor mix1_, shift2_, mix2_, second_column_;
  // The last element hash (it depends only on offset and n); not thread-safe, like the sampler.
  mutable torch::Tensor element_hash_;
  mutable int64_t element_offset_ = 0;
};

// Random stream ids used by the samplers.
enum RandomStream : int64_t {
  kStreamMomentum = 1,
  kStreamStepSearch = 3,  // step-size search after a metric update: sub = probe
  kStreamHmc = 4,         // static HMC: element 0 acceptance, 1 trajectory length
  kStreamFirstStepSearch = 5,
  kStreamNuts = 6,  // NUTS: elements [0, 3D) momentum; then per tree depth d a block of 2^d + 1:
                    // direction, top-level sampling, the 2^d - 1 subtree merges (post-order)
};

// A point in phase space per chain.
struct PhasePoint {
  torch::Tensor q;      // [C, D]
  torch::Tensor p;      // [C, D]
  torch::Tensor log_p;  // [C]
  torch::Tensor grad;   // [C, D]
};
// mask [C] ? a : b, field by field.
PhasePoint select(const torch::Tensor& mask, const PhasePoint& a, const PhasePoint& b);

// The log density, metric and random streams of a run; counts batched log-density calls.
class HamiltonianSystem {
 public:
  HamiltonianSystem(LogDensityFn f, Metric metric, ChainRandom random,
                    double max_energy_error = 1000.0);
  LogDensityValue evaluate(const torch::Tensor& q);
  // One leapfrog step with per-chain (signed) step sizes eps [C].
  PhasePoint leapfrog(const PhasePoint& z, const torch::Tensor& eps);
  // The same with eps and eps / 2 given as columns [C, 1].
  PhasePoint leapfrog(const PhasePoint& z, const torch::Tensor& eps_col,
                      const torch::Tensor& half_eps_col);
  // On the CPU, evaluate the log density only at the rows whose step size is not 0 (NUTS chains
  // still building their trees); rows are `groups` consecutive groups of equal size (the model
  // maps rows to groups by position), each padded to the largest group's count of such rows. A
  // row with step size 0 keeps its position, log density and gradient unchanged. 0: off.
  void compact_rows(int64_t groups) { compact_groups_ = groups; }
  // -log p + kinetic, [C]; +inf wherever it is not finite (NaN log p or gradient included).
  // velocity, when given, receives M^-1 p.
  torch::Tensor hamiltonian(const PhasePoint& z, torch::Tensor* velocity = nullptr) const;

  Metric& metric() { return metric_; }
  const Metric& metric() const { return metric_; }
  const ChainRandom& random() const { return random_; }
  double max_energy_error() const { return max_energy_error_; }
  int64_t calls() const { return calls_; }
  // Counts `rows` gradient rows evaluated outside the leapfrog (e.g. a Hessian by differences) as
  // rows / chains batched calls, so gradient_evaluations stays calls x chains.
  void count_rows(int64_t rows, int64_t chains) { calls_ += (rows + chains - 1) / chains; }

 private:
  LogDensityFn f_;
  Metric metric_;
  ChainRandom random_;
  double max_energy_error_;
  int64_t calls_ = 0;
  int64_t compact_groups_ = 0;
};

// Positions and their log density / gradient, [C, D], [C], [C, D].
struct ChainState {
  torch::Tensor q, log_p, grad;
};

// Per-transition statistics, [C] each.
struct TransitionStats {
  torch::Tensor accept_stat;  // mean Metropolis acceptance over the trajectory
  torch::Tensor tree_depth;   // int64; 0 for static HMC
  torch::Tensor n_leapfrog;   // int64
  torch::Tensor divergent;    // bool
  torch::Tensor energy;       // Hamiltonian of the selected state
};

// Draws [C, N, D] and per-draw statistics [C, N].
struct Draws {
  torch::Tensor draws;
  torch::Tensor log_density;
  torch::Tensor step_size;
  torch::Tensor tree_depth;  // int64
  torch::Tensor n_leapfrog;  // int64
  torch::Tensor accept_stat;
  torch::Tensor energy;
  torch::Tensor divergent;  // bool
};

struct SamplerResult : Draws {
  Draws warmup;                     // defined only with save_warmup
  torch::Tensor step_size_adapted;  // [C], the step sizes used for sampling
  MetricKind metric = MetricKind::diag;
  torch::Tensor inv_metric;          // [C, D] or [C, D, D], the inverse metric used for sampling
  int64_t log_density_calls = 0;     // batched calls
  int64_t gradient_evaluations = 0;  // calls x chains (masked chains included)
  int64_t warmup_gradient_evaluations = 0;
  // The batched leapfrog steps of the warmup's transitions with the chains out of step: counted
  // when run out of step, and in lock-step what the same trees would have taken (per segment
  // between two meeting points, the largest sum over one adaptation group's iterations of its
  // deepest tree). Over this run's iterations (a resumed run counts from its snapshot).
  int64_t warmup_steps_out_of_step = 0;
  int64_t sampling_steps_out_of_step = 0;  // the same for sampling (every chain on its own)
  // Chains the warmup's stray rule moved (AdaptSettings::stray_nats), over this run's iterations.
  int64_t stray_moves = 0;
  double warmup_seconds = 0;
  double sampling_seconds = 0;
};

// Everything the warmup/sampling loop needs to continue where it stopped. With counter-based
// random streams, a run resumed from a snapshot gives exactly the draws of an uninterrupted one.
// Tensors are CPU copies.
struct SamplerSnapshot {
  int64_t iteration = 0;  // iterations completed, warmup included
  int64_t num_warmup = 0, num_draws = 0;
  torch::Tensor q, log_p, grad;  // the chains' state [C, D], [C], [C, D]
  torch::Tensor step_size;       // [C], for the next iteration
  torch::Tensor inv_metric;      // [C, D] or [C, D, D]
  int64_t dual_counter = 0;      // dual averaging (undefined tensors when not adapting)
  torch::Tensor dual_mu, dual_s_bar, dual_x_bar;
  int64_t welford_count = 0;  // the (co)variance window in progress
  torch::Tensor welford_mean, welford_m2;
  // AdaptSettings::stray_nats's window since the last check: StrayWindow::sums() [5, C] float64
  // (from earlier versions [C], the sum alone); undefined when off.
  torch::Tensor stray_window;
  Draws warmup, draws;  // the result's buffers; rows before `iteration` are filled
  int64_t calls = 0, warmup_calls = 0, divergences = 0;
  double warmup_seconds = 0, sampling_seconds = 0;

  // A flat list for torch::save / torch::load, and back; from_tensors throws
  // dslens::InvalidArgument for a list that is not a snapshot.
  std::vector<torch::Tensor> to_tensors() const;
  static SamplerSnapshot from_tensors(const std::vector<torch::Tensor>& tensors);
};

// One transition of all chains: updates state in place.
using TransitionFn =
    std::function<TransitionStats(HamiltonianSystem& system, ChainState& state,
                                  const torch::Tensor& step_size, int64_t iteration)>;

// Stan's init_stepsize (base_hmc.hpp), per chain: doubles or halves each chain's step size until
// the acceptance of one leapfrog step from state with fresh momenta crosses 0.8. Chains run in
// lock-step; the loop ends when every chain has finished. Throws dslens::NumericalError for an
// improper posterior (step size > 1e7) or a step size that underflows to 0.
torch::Tensor find_reasonable_step_size(HamiltonianSystem& system, const ChainState& state,
                                        const torch::Tensor& step_size, int64_t iteration,
                                        int64_t stream = kStreamStepSearch);

// Step-size adaptation inside a segment of warmup iterations. The chains adapt in consecutive
// groups of `group`, and a group's chains begin each transition together. When some groups' chains
// have all ended a transition, learn(accept_stat [C], ended [C], step_size [C]) returns the step
// sizes [C] of every chain's next transition: ended[c] is how many of the segment's transitions
// chain c's group has ended if it learns now, and 0 if not (those rows keep step_size);
// accept_stat is current on the rows that learn.
struct SegmentStepSizeLearning {
  int64_t group = 1;
  std::function<torch::Tensor(const torch::Tensor& accept_stat, const std::vector<int64_t>& ended,
                              const torch::Tensor& step_size)>
      learn;
};

// Progress inside a segment: called whenever every chain has ended at least `done` of the
// segment's transitions (done grows by one or more), with the segment's draws so far (columns
// below `done` are final).
using SegmentProgressFn = std::function<void(const Draws& so_far, int64_t done)>;

// `count` transitions of every chain, iterations first_iteration, ... of their random streams,
// with the metric fixed; updates state to the last draws and returns the draws and statistics
// [C, count]. The step sizes [C] are fixed when `learning` is null; otherwise they are learnt as
// it says and step_size ends as the last ones learnt. For a sampler whose chains need not be in
// step between draws (or, while learning, between the groups' draws).
using SegmentFn = std::function<Draws(
    HamiltonianSystem& system, ChainState& state, torch::Tensor& step_size, int64_t first_iteration,
    int64_t count, const SegmentStepSizeLearning* learning, const SegmentProgressFn& on_progress)>;

// The warmup (Stan's adaptive sampler: step-size search, dual averaging, windowed metric
// adaptation) and sampling loop shared by HMC and NUTS. init [C, D] on the run's device/dtype.
// Without `segment` every iteration is one call of `transition`, all chains in step. With it the
// iterations run through it in segments: in sampling they end at checkpoints and at least every
// max(refresh, 50) iterations; in warmup also at every adaptation event that reads all chains
// (metric updates, step-size searches, stray-chain checks), with dual averaging learnt per group
// inside the segment. The result is the same as with `transition` alone when `segment` makes
// transition's transitions.
SamplerResult run_adaptive_sampler(const LogDensityFn& log_density, const torch::Tensor& init,
                                   const SamplerSettings& settings, const TransitionFn& transition,
                                   const std::string& name, const SegmentFn& segment = {});

// Static HMC transition: num_steps leapfrog steps (per-chain random lengths with jitter > 0) and a
// Metropolis correction.
TransitionStats hmc_transition(HamiltonianSystem& system, ChainState& state,
                               const torch::Tensor& step_size, int64_t iteration, int64_t num_steps,
                               double trajectory_jitter);

// Static HMC with Stan's warmup. init [C, D].
SamplerResult sample_hmc(const LogDensityFn& log_density, const torch::Tensor& init,
                         const HmcSettings& settings);

}  // namespace dslens::samplers

// Settings of the HMC and NUTS samplers and of their Stan-style warmup. Every struct has a
// validate() that throws dslens::InvalidArgument naming the offending field and its value.
#pragma once
#include <torch/torch.h>
#include <functional>

#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

namespace dslens::samplers {

struct SamplerSnapshot;  // hmc.h

enum class MetricKind { diag, dense };
const char* metric_name(MetricKind kind);

// Nesterov dual averaging of log(step size) (Hoffman & Gelman 2014, as in Stan).
struct StepSizeAdaptSettings {
  double delta = 0.8;   // target acceptance statistic, in (0, 1)
  double gamma = 0.05;  // regularisation scale, > 0
  double kappa = 0.75;  // relaxation exponent, in (0, 1]
  double t0 = 10.0;     // iteration offset, > 0
  void validate() const;
};

// Stan's windowed metric adaptation: a fast initial buffer, slow windows that double in length,
// a fast terminal buffer.
struct WindowSettings {
  int64_t init_buffer = 75;
  int64_t base_window = 25;
  int64_t term_buffer = 50;
  void validate() const;
  int64_t required_warmup() const { return init_buffer + base_window + term_buffer; }
};

struct AdaptSettings {
  bool step_size = true;  // dual averaging during warmup
  bool metric = true;     // windowed (co)variance estimation during warmup
  // true: every chain adapts its own step size and metric (and chains stay independent);
  // false: one step size from the mean acceptance statistic and one metric from the pooled draws.
  bool per_chain = true;
  // > 0: chains pool their adaptation in consecutive groups of this many (it must divide the
  // number of chains), e.g. the chains of one lens when rows are lens-major: one step size per
  // group from the group's mean acceptance statistic, and one metric from the group's pooled
  // draws, so a dense metric in D dimensions gets chains x n draws per window instead of n.
  // 0: per_chain decides (a group of 1, or of all chains).
  int64_t pool_group = 0;
  // The group size these settings give for `chains` chains.
  int64_t group_size(int64_t chains) const {
    return pool_group > 0 ? pool_group : (per_chain ? 1 : chains);
  }
  // The metric in use counts as this many draws in each window's estimate: the new inverse metric
  // is (n C + k M^-1) / (n + k) for n draws with (Stan-regularised) covariance C and k this count,
  // i.e. the posterior mean under an inverse-Wishart prior centred on the current metric. 0 is
  // Stan's rule. A dense metric in D dimensions estimated from n < D draws alone is singular
  // (Stan then shrinks it to 1e-3 I in the missing directions; here 1e-3 of the metric's own
  // diagonal, regularize_covariance); a good starting metric (a Laplace
  // approximation) with k ~ D keeps what it knows until the windows have the draws to replace it.
  double metric_prior_count = 0.0;
  // Metric from the local curvature (samplers::curvature_covariance: |-H|^-1 by central
  // differences of the gradient at the chains' positions, 2D gradient rows per chain, averaged
  // over each adaptation group, eigen-variances capped at curvature_max_variance). In the initial
  // fast buffer, every windows.base_window iterations and at its end, it replaces the metric (the
  // chains are travelling to the typical set); at the end of each slow window it is what the
  // window's estimate is blended with (metric_prior_count), instead of the metric in use. A start
  // from the mode (a Laplace approximation) can be far too narrow in the typical set that the
  // buffer reaches, and the windows alone widen it over several doublings; a window's covariance
  // of a few correlated draws is noisy in D dimensions. On the 100x100 VAE-source bench mock one
  // run of 4 x (500 + 100) took a fifth fewer gradient evaluations with it, within the +-10 %
  // that three seeds of one setting spread over (docs/benchmarks.md, sessions 17 and 18).
  bool curvature_metric = false;
  double curvature_max_variance = INFINITY;
  // With curvature_metric: the first curvature metric of the initial buffer is taken after this
  // many iterations too (0: none before windows.base_window). Chains started at a mode leave it in
  // a few iterations, and the mode's curvature (the Laplace start) is sharper than the typical
  // set's: on the bench mock NUTS ran its maximum depth (255 leapfrog steps) in each of the first
  // 25 iterations with it, and 63 to 127 steps after the first curvature metric.
  int64_t curvature_first = 0;
  // Stray chains (> 0; 0: off). In the initial fast buffer, every windows.base_window iterations
  // and at its end, and at the end of each slow window, a chain whose mean log density over the
  // iterations since the last check is more than stray_nats below the best chain of its
  // stray_group continues from that chain's position (state, step size and metric copied; its own
  // random stream then separates them). Chains seeded at different optima, or one that finds a
  // better mode during warmup, thus gather in the mode of the highest density, instead of keeping
  // one whose draws sit tens of nats lower, where NUTS stays for the whole run (docs/fit.md,
  // "Stray chains"). Between two modes of one shape the mean log densities differ by the log of
  // their mass ratio, so with 20 nats only modes holding less than e^-20 of the best one's mass
  // are left. The gap must also exceed 4 Monte Carlo errors of the two means (find_stray_chains,
  // StrayWindow): in one mode of D dimensions the log density's sd is about sqrt(D / 2), and
  // short windows' means differ by more than 20 nats at D ~ 1,000. Warmup only: the draws are
  // still those of an unchanged Markov chain.
  double stray_nats = 0.0;
  // Chains are compared in consecutive groups of this many (it must divide the number of chains;
  // e.g. the chains of one lens when rows are lens-major). 0: all chains form one group.
  int64_t stray_group = 0;
  StepSizeAdaptSettings dual_averaging;
  WindowSettings windows;
  void validate(int64_t num_warmup) const;
};

// What a progress callback sees (every `refresh` iterations and at the end).
struct SamplerProgress {
  int64_t iteration = 0;  // 1-based, warmup included
  int64_t total = 0;
  bool warmup = true;
  int64_t divergences = 0;      // so far, all chains, warmup and sampling counted apart
  double mean_step_size = 0.0;  // geometric mean over chains
  double mean_leapfrog = 0.0;   // leapfrog steps per transition since the last report
  double seconds = 0.0;         // since the start
};

// Shared by HMC and NUTS.
struct SamplerSettings {
  int64_t num_warmup = 1000;
  int64_t num_draws = 1000;
  double step_size = 1.0;  // initial step size (the warmup's starting point)
  MetricKind metric = MetricKind::diag;
  // Optional initial inverse metric: diag [D] or [C, D]; dense [D, D] or [C, D, D]. Undefined:
  // identity.
  torch::Tensor inv_metric;
  AdaptSettings adapt;
  double max_energy_error = 1000.0;  // a leapfrog step with H - H0 above this is divergent
  // Per-chain random streams: chain c draws from stream (seed, chain_id_offset + c), so a chain's
  // draws do not depend on how many other chains run beside it.
  uint64_t seed = 0;
  int64_t chain_id_offset = 0;
  // When not empty, one id per chain, used instead of chain_id_offset + c: e.g. ids derived from a
  // lens's name, so that its chains draw the same numbers wherever it sits in a batch.
  std::vector<uint64_t> chain_ids;
  // > 0, on the CPU: each leapfrog step evaluates the log density only at the chains still
  // integrating (NUTS chains whose trees have stopped wait for the others with step size 0). The
  // chains are this many consecutive groups of equal size (the lenses of a batch, whose model maps
  // rows to lenses by position); every group is padded to the same count of rows with copies, and
  // the count must divide the number of chains. Off the CPU it does nothing (CUDA graphs replay
  // fixed shapes). gradient_evaluations still counts calls x chains. 0: every row, every step.
  int64_t compact_rows = 0;
  bool save_warmup = false;
  // Log progress every this many iterations (0: every 10 %).
  int64_t refresh = 0;
  // Called instead of the log line when set (e.g. a progress bar); never inside a transition.
  std::function<void(const SamplerProgress&)> on_progress;
  // Checkpoints: on_checkpoint gets a snapshot every `checkpoint_every` iterations (0: never) and
  // at the end of warmup. It may throw to stop the run; the exception propagates unchanged.
  int64_t checkpoint_every = 0;
  // > 0: also a snapshot where the chains meet (after every iteration in lock-step, at a segment's
  // end out of step) once this many seconds have passed since the last one or the start. Unlike
  // checkpoint_every it does not end segments early, so out-of-step runs keep their long segments.
  double checkpoint_seconds = 0.0;
  std::function<void(const SamplerSnapshot&)> on_checkpoint;
  // Polled after every iteration (lock-step) or every transition the slowest chain ends (out of
  // step); when it returns true the run gives on_checkpoint a snapshot of the last iteration that
  // every chain has ended (out of step: the current segment's start; the segment is done again
  // on resume, with the same result) and throws Interrupted. E.g. a flag set by a SIGTERM handler.
  std::function<bool()> stop_requested;
  // Continue a run from a snapshot taken with the same settings and initial positions' shape: the
  // counter-based random streams make the result that of the uninterrupted run.
  std::shared_ptr<const SamplerSnapshot> resume_from;
  void validate() const;
};

struct NutsSettings : SamplerSettings {
  int max_depth = 10;  // in [1, 30]
  // Chains out of step (nuts_transitions_out_of_step): the same draws, fewer batched leapfrog
  // steps when the chains' trees differ. In warmup the chains that pool their adaptation
  // (AdaptSettings::group_size) stay in step with each other, and all chains meet at each metric
  // update, step-size search and stray-chain check.
  bool out_of_step = false;
  void validate() const;
};

struct HmcSettings : SamplerSettings {
  int64_t num_steps = 16;  // leapfrog steps per transition (the maximum when jittered)
  // 0: always num_steps; j in (0, 1]: each chain and transition draws its number of steps
  // uniformly from {max(1, ceil((1 - j) num_steps)), ..., num_steps}.
  double trajectory_jitter = 0.0;
  void validate() const;
};

}  // namespace dslens::samplers

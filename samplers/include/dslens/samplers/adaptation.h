// Stan's warmup building blocks, batched over chains: dual averaging of the step size
// (stan/mcmc/stepsize_adaptation.hpp), the windowed adaptation schedule
// (stan/mcmc/windowed_adaptation.hpp) and Welford (co)variance estimators with Stan's
// regularisation (var_adaptation.hpp, covar_adaptation.hpp).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "dslens/samplers/sampler_settings.h"

namespace dslens::samplers {

// Nesterov dual averaging of log(step size), one state per chain ([C] tensors).
class DualAveraging {
 public:
  DualAveraging(const StepSizeAdaptSettings& settings, const torch::Tensor& mu);
  void set_mu(const torch::Tensor& mu) { mu_ = mu; }
  void restart();
  // One update with the acceptance statistics [C] (clipped at 1); returns exp(x) [C], the step
  // sizes to use next.
  torch::Tensor learn(const torch::Tensor& adapt_stat);
  // Each row's own update: row c makes update counter[c] (1-based) as learn makes it, rows with
  // counter 0 keep their state; the counter is not moved (set_counter, when every row has caught
  // up). Returns exp(x) [C] on the rows that learn and `keep` on the others. For chains out of
  // step; the per-row coefficients reach the device in one copy.
  torch::Tensor learn_rows(const torch::Tensor& adapt_stat, const std::vector<int64_t>& counter,
                           const torch::Tensor& keep);
  void set_counter(int64_t counter) { counter_ = counter; }
  // exp(x_bar) [C]: the step sizes after warmup.
  torch::Tensor final_step_size() const { return torch::exp(x_bar_); }
  int64_t counter() const { return counter_; }
  const torch::Tensor& s_bar() const { return s_bar_; }
  const torch::Tensor& x_bar() const { return x_bar_; }
  const torch::Tensor& mu() const { return mu_; }
  // Puts back a state read with the accessors above (sampler checkpoints).
  void restore(int64_t counter, const torch::Tensor& mu, const torch::Tensor& s_bar,
               const torch::Tensor& x_bar);

 private:
  StepSizeAdaptSettings settings_;
  int64_t counter_ = 0;
  torch::Tensor mu_, s_bar_, x_bar_;
};

// Stan's window schedule: an initial fast buffer, slow windows doubling from base_window (the
// last one stretched to the terminal buffer), a terminal fast buffer. Host-side, shared by chains.
class WindowedAdaptation {
 public:
  WindowedAdaptation(int64_t num_warmup, const WindowSettings& settings);
  struct Step {
    bool add_sample = false;  // this iteration's draw goes into the (co)variance estimate
    bool end_window = false;  // after adding it, a slow window ends: update the metric
  };
  // Advances by one warmup iteration, exactly as Stan's learn_variance does.
  Step step();
  // Slow windows as [begin, end) warmup iteration ranges.
  static std::vector<std::pair<int64_t, int64_t>> slow_windows(int64_t num_warmup,
                                                               const WindowSettings& settings);

 private:
  bool adaptation_window() const;
  bool end_adaptation_window() const;
  void compute_next_window();
  void restart();
  int64_t num_warmup_, init_buffer_, term_buffer_, base_window_;
  int64_t counter_ = 0, window_size_ = 0, next_window_ = 0;
};

// Welford running (co)variance per chain: [C, D] (diag) or [C, D, D] (dense).
class WelfordEstimator {
 public:
  WelfordEstimator(MetricKind kind, int64_t chains, int64_t dim,
                   const torch::TensorOptions& options);
  void restart();
  void add(const torch::Tensor& q);  // q [C, D]
  int64_t num_samples() const { return n_; }
  // Sample (co)variance (divisor n - 1) per chain, or pooled over chains (within-chain, below) and
  // broadcast.
  torch::Tensor covariance(bool pooled) const { return covariance_of_groups(pooled ? chains_ : 1); }
  // Pooled over consecutive groups of `group` chains and broadcast to each group's chains: the
  // mean of the group's per-chain covariances (each about its own chain's mean; R-hat's W), so
  // that chains in different modes do not widen the metric by the distance between them; group
  // 1: per chain. `group` must divide the number of chains.
  torch::Tensor covariance_of_groups(int64_t group) const;
  // Number of draws behind covariance(pooled) / covariance_of_groups(group).
  int64_t effective_count_of_groups(int64_t group) const { return n_ * group; }
  int64_t effective_count(bool pooled) const {
    return effective_count_of_groups(pooled ? chains_ : 1);
  }
  const torch::Tensor& mean() const { return mean_; }
  const torch::Tensor& m2() const { return m2_; }  // sum of squared deviations
  // Puts back a state read with num_samples(), mean() and m2() (sampler checkpoints).
  void restore(int64_t n, const torch::Tensor& mean, const torch::Tensor& m2);

 private:
  MetricKind kind_;
  int64_t chains_, dim_;
  torch::TensorOptions options_;
  int64_t n_ = 0;
  torch::Tensor mean_, m2_;
};

// AdaptSettings::stray_nats: which chains continue from another's position. mean_log_p [C] is each
// chain's mean log density since the last check; chains are compared in consecutive groups of
// `group` (which must divide C). A chain more than `nats` below its group's best (or with a mean
// that is not finite while the best's is) strays, provided the gap also exceeds
// kStrayMonteCarloErrors times the Monte Carlo error of the difference of two means, sqrt(2) times
// the group's pooled (root mean square) error, when mean_se [C], each mean's Monte Carlo error, is
// given (non-finite entries count as 0).
// Within one mode a chain's log density has sd sqrt(D / 2) in D dimensions (a Gaussian's), so the
// means of short windows differ by tens of nats at D ~ 1,000 without any second mode: at 414 and
// 1,038 parameters the rule without this condition moved chains of one mode 6 and 8 times, at gaps
// of 21 to 51 nats (docs/benchmarks.md, sessions 47 and 48).
struct StrayChains {
  torch::Tensor source;  // [C] int64: the chain whose state each chain takes (itself if kept)
  torch::Tensor stray;   // [C] bool
  torch::Tensor gap;     // [C] float64: nats below its group's best mean (+inf if not finite)
  torch::Tensor needed;  // [C] float64: the gap that strays, nats or the Monte Carlo bound
};
// As app/chain_summary's test of chains in different modes: 4 Monte Carlo errors.
constexpr double kStrayMonteCarloErrors = 4.0;
StrayChains find_stray_chains(const torch::Tensor& mean_log_p, int64_t group, double nats,
                              const torch::Tensor& mean_se = {});

// The stray check's window: each chain's log density x_t over the iterations since the last check,
// summed on the device (read only at the checks, so no host sync per iteration). With
// y_t = x_t - x_1 (x_1 the window's first value, for float64 sums without cancellation) it holds
// [5, C]: sum y, sum y^2, sum y_t y_(t-1), x_1, and the last y. The Monte Carlo error of the mean
// assumes an AR(1) autocorrelation (integrated time (1 + rho) / (1 - rho), rho the lag-1
// autocorrelation clamped to [0, 0.95]): 25 draws cannot estimate more, and a chain still drifting
// has rho near 1, so its error is large and it is not judged on its trend.
class StrayWindow {
 public:
  StrayWindow() = default;
  StrayWindow(int64_t chains, const torch::TensorOptions& options);
  // A window restored from a snapshot: [5, C]; or [C], the plain sum of log densities that
  // snapshots held before (its mean is exact, its Monte Carlo error unknown: NaN, counted as 0).
  explicit StrayWindow(const torch::Tensor& saved);
  bool defined() const { return sums_.defined(); }
  // One iteration's log densities [C]; `first`: the window's first iteration.
  void add(const torch::Tensor& log_p, bool first);
  // The mean of the window's n values and its Monte Carlo error, [C] float64 each.
  std::pair<torch::Tensor, torch::Tensor> mean_and_error(int64_t n) const;
  const torch::Tensor& sums() const { return sums_; }

 private:
  torch::Tensor sums_;
};

// Stan's shrinkage of an estimated (co)variance from n draws, (n / (n + 5)) var + 1e-3 (5 /
// (n + 5)) S, with S = I as in Stan when `reference` is undefined. Otherwise S is the diagonal of
// `reference`, an inverse metric of var's shape ([C, D] diag, [C, D, D] dense; the metric in use
// or the curvature the window is blended with), so that the shrinkage is 1e-3 of each parameter's
// own scale: Stan's 1e-3 I assumes unit-scale parameters, and a lens parameter whose posterior sd
// is 4e-4 (variance 1.7e-7) got a metric variance of 5e-5 from it after a 100-draw window, 280
// times its own, which cut the step size by 17 (docs/benchmarks.md, session 46).
torch::Tensor regularize_covariance(const torch::Tensor& var, int64_t n, MetricKind kind,
                                    const torch::Tensor& reference = {});

}  // namespace dslens::samplers

// Batched maximum-a-posteriori optimisation from many starting points at once: every start is an
// independent row of [S, D] and runs on the positions' device. Adam, and L-BFGS with a per-start
// history and a backtracking (Armijo) line search, halving or interpolating.
#pragma once
#include <torch/torch.h>

#include <cmath>

#include <cstdint>
#include <functional>

#include "dslens/samplers/log_density.h"

namespace dslens::samplers {

// What a progress callback sees: Adam every `check_every` iterations, L-BFGS every iteration
// (both already read the device there), and once at the end.
struct OptimizeProgress {
  const char* method = "";  // "adam" or "lbfgs"
  int64_t iteration = 0;
  int64_t max_iterations = 0;
  double best_log_p = -INFINITY;  // over the starts whose log density is finite
  int64_t active = 0;             // starts still moving (not converged or stalled)
  int64_t starts = 0;
};
using OptimizeProgressFn = std::function<void(const OptimizeProgress&)>;

struct AdamSettings {
  int64_t max_iterations = 2000;
  double learning_rate = 0.05;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
  double grad_tol = 1e-6;    // a start has converged when max_i |d log p / dx_i| < grad_tol
  int64_t check_every = 10;  // convergence is checked on the host every this many iterations
  OptimizeProgressFn on_progress;
  void validate() const;
};

struct LbfgsSettings {
  int64_t max_iterations = 500;
  int64_t history = 10;          // stored (s, y) pairs per start
  double grad_tol = 1e-6;        // converged when max_i |d log p / dx_i| < grad_tol
  double armijo = 1e-4;          // sufficient-decrease constant c1 in (0, 1)
  double backtrack = 0.5;        // step shrink factor in (0, 1)
  int64_t max_line_search = 40;  // backtracking steps before a start is declared stalled
  // Step lengths t, t b, ..., t b^(k-1) tried per start in one batched log-density call (rows
  // start-major, as Newton's ladder). The first that satisfies Armijo is taken: the same iterate
  // as k sequential backtracking steps, in one call. 1 on a CPU, where a call costs in proportion
  // to its rows; more on a GPU, where a call of 8 x more rows costs about the same.
  int64_t line_search_batch = 1;
  // Backtracking by quadratic interpolation (the minimiser of the quadratic through f(0), f'(0)
  // and the rejected f(t), kept within [0.1 t, backtrack t]) instead of t -> backtrack t. Needs
  // line_search_batch 1.
  bool interpolate = false;
  // Backtracking steps evaluate only the starts whose line search has not yet succeeded (true),
  // or every start (false: one batch shape throughout, as CUDA graphs want). A start with a bad
  // step would otherwise have the whole batch re-evaluated at each of its backtracks: on the
  // 100x100 bench mock's MAP, 16 starts x about 20 calls per iteration (session 16).
  bool compact_line_search = false;
  // The starts are `row_groups` consecutive groups of equal size (the lenses of a batch, whose
  // log density reads a row's lens from its place); a compacted call keeps that shape by padding
  // each group's pending starts to the largest group's count with copies whose results are unused.
  int64_t row_groups = 1;
  // Compacted calls pad each group's pending starts to a power of two (at most the group's size):
  // a few call shapes, each replayed from its own CUDA graph, instead of one per pending count.
  bool compact_pow2 = false;
  // When > 0, a call tries as many step lengths per evaluated start as keep it within this many
  // rows (at least 1, at most line_search_batch): after the first call of an iteration only the
  // few starts still backtracking are evaluated (compact_line_search), each with a longer ladder.
  int64_t line_search_rows = 0;
  // A start stops (stalled, not converged) when its log p rose by less than stall_gain over its
  // last stall_window iterations; 0 = never. In float32 a start's gradient never meets grad_tol,
  // and near its optimum most of its calls are backtracks that gain rounding.
  int64_t stall_window = 0;
  double stall_gain = 0.0;
  OptimizeProgressFn on_progress;
  void validate() const;
};

struct OptimizeResult {
  torch::Tensor x;           // [S, D] final positions
  torch::Tensor log_p;       // [S] (-inf for starts whose log density was never finite)
  torch::Tensor grad_norm;   // [S] max-abs gradient of log p at x
  torch::Tensor converged;   // [S] bool: grad_norm < grad_tol
  torch::Tensor iterations;  // [S] int64
  int64_t best = -1;         // index of the start with the largest finite log p
  torch::Tensor best_x;      // [D]
  double best_log_p = -INFINITY;
  int64_t log_density_calls = 0;
  int64_t rows_evaluated = 0;  // rows over all calls (L-BFGS; a CPU's cost is in proportion)
};

// Maximises log p from every start. Throws dslens::InvalidArgument for bad settings or starts that
// are not [S, D], dslens::NumericalError when no start has a finite log density.
OptimizeResult maximize_adam(const LogDensityFn& log_density, const torch::Tensor& starts,
                             const AdamSettings& settings = {});
OptimizeResult maximize_lbfgs(const LogDensityFn& log_density, const torch::Tensor& starts,
                              const LbfgsSettings& settings = {});

// Rows of `x` [G * n, D] in G consecutive groups of n (lens-major starts): the `keep` rows of
// each group with the largest `log_p` [G * n] (NaN counts as -inf), best first, as
// [G * min(keep, n), D]. For keeping the best optima of a cheap stage for a costly one.
torch::Tensor best_rows_per_group(const torch::Tensor& x, const torch::Tensor& log_p,
                                  int64_t groups, int64_t keep);

}  // namespace dslens::samplers

// Batched damped Newton ascent for polishing optima that a first-order optimiser leaves short of
// the mode. On a posterior whose curvatures span many orders of magnitude and change along curved
// ridges (a VAE source's latents against the lens parameters), L-BFGS ends hundreds of nats below
// the mode with directions of positive curvature left (docs/fit.md, "Polishing by Newton steps");
// a step with the full Hessian takes every direction at its own scale.
//
// Each iteration: the Hessian H by central differences of the gradient (laplace.h), the
// eigen-decomposition of -H with every eigenvalue replaced by its absolute value (Betancourt's
// SoftAbs, so a direction of positive curvature is climbed, not jumped to its saddle), and the
// Levenberg-Marquardt steps dx = V (|lambda| + mu)^-1 V^T g for a ladder of damping values mu,
// all evaluated in one batched call; the best one is kept if it raises log p (Nocedal & Wright,
// section 10.3, with the damping set per start as a trust region).
#pragma once
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "dslens/samplers/laplace.h"
#include "dslens/samplers/log_density.h"
#include "dslens/samplers/optimize.h"

namespace dslens::samplers {

struct NewtonSettings {
  int64_t max_iterations = 20;
  // A start has converged when the gain its undamped Newton step predicts, g^T |H|^-1 g / 2, is
  // below this (nats); it stops without converging when no step of the ladder raised its log p in
  // three tries in a row, each with 1000 times the damping.
  double gain_tol = 1e-3;
  // Finite-difference steps of the Hessian, as in LaplaceSettings: the first iteration takes a
  // common `initial_step`, then `relative_step` of each coordinate's width (from the diagonal of
  // the last Hessian), clamped to [1e-7, max_step].
  double initial_step = 1e-3;
  double relative_step = 0.1;
  double max_step = 0.1;
  // Curvatures below 1 / max_variance count as that (as LaplaceSettings::max_variance): a
  // direction the Hessian calls flat gets a step of at most max_variance x its gradient, not an
  // unbounded one.
  double max_variance = INFINITY;
  int64_t max_rows = 512;  // most rows per log-density call
  // Hessians and ladders only for the starts still moving (true), or for every start (false: one
  // batch shape throughout, as CUDA graphs want). On a CPU, where a call costs in proportion to its
  // rows, the bench mock's polish spent 26 of its 36 s with 1 to 3 of 4 starts moving (session
  // 24). The starts are `row_groups` consecutive groups of equal size (the lenses of a batch); a
  // compacted call pads each group's moving starts to the largest group's count with copies whose
  // results are unused, as LbfgsSettings::compact_line_search.
  bool compact = false;
  int64_t row_groups = 1;
  // A diagonal block of the Hessian known in closed form at the points it is given (laplace.h's
  // HessianBlock; rows as the log density's): its coordinates are not differenced, so a model
  // with a 32 x 32 pixel grid costs the Hessian 2 x 14 gradient rows per start, not 2 x 1,038.
  HessianBlockFn hessian_block;
  // Coordinates every step leaves where they are (the Newton system is solved in the others): a
  // direction along which log p has no maximum, such as a pixel grid's strength in whitened pixel
  // coordinates (model/pixel_source_solve.h), would otherwise take every iteration. Each in
  // [0, D), no repeats.
  std::vector<int64_t> held_coordinates;
  OptimizeProgressFn on_progress;
  void validate() const;
};

// Maximises log p from every start [S, D] (rows keep their positions in every call, so a log
// density that assigns rows to lenses by position sees each start under its own lens). The result's
// `converged` marks starts that reached gain_tol; `grad_norm` is the max-abs gradient at x.
// Costs 2D + 7 rows per start and iteration (plus 2D on the first), D less a known block's size.
// Throws InvalidArgument for bad settings or starts (a held coordinate outside [0, D)),
// NumericalError when no start has a finite log density.
OptimizeResult maximize_newton(const LogDensityFn& log_density, const torch::Tensor& starts,
                               const NewtonSettings& settings = {});

}  // namespace dslens::samplers

// The Laplace approximation at a mode: the Hessian of log p by central differences of its
// gradient, and the covariance (-H)^-1 it implies. Used to start HMC/NUTS warmup with a metric that
// already knows the posterior's scales: without it the first warmup window runs with the identity
// metric, and on a posterior whose widths span four orders of magnitude (lens parameters against
// VAE latents) every tree stops at the maximum depth with a tiny step size.
#pragma once
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "dslens/samplers/log_density.h"

namespace dslens::samplers {

struct LaplaceSettings {
  // First pass: gradient differences with this step (unconstrained units) give a first diagonal
  // curvature; the second pass steps each coordinate by `relative_step` of that first width, so
  // the differences stay linear for tight parameters and above rounding for wide ones.
  double initial_step = 1e-3;
  double relative_step = 0.1;
  double max_step = 0.1;
  // Eigenvalues of -H are replaced by their absolute values (a non-concave direction keeps its
  // curvature's scale, as in Betancourt's SoftAbs metric) and floored at this fraction of the
  // largest and at 1 / max_variance, so a flat direction gets a wide but finite variance that
  // does not leak into every marginal variance through its eigenvector.
  double eigenvalue_floor = 1e-12;
  double max_variance = INFINITY;
  // Most rows per log-density call ([B, 2k, D] with k coordinates per call).
  int64_t max_rows = 512;
  void validate() const;
};

struct LaplaceApproximation {
  torch::Tensor hessian;      // [B, D, D] of log p, symmetrised, float64 on the CPU
  torch::Tensor covariance;   // [B, D, D] = |-H|^-1 with the eigenvalue floor
  torch::Tensor variance;     // [B, D]: its diagonal (marginal variances)
  torch::Tensor non_concave;  // [B] int64: eigenvalues of -H that were <= 0 (0 at a true maximum)
  int64_t log_density_calls = 0;
};

// A diagonal block of the Hessian of log p known in closed form: coordinates [first, first + K)
// and value [B, K, K] at the points x [B, D] it was made for. A model linear in a block of its
// coordinates with a Gaussian prior on them (a pixelated source: model/pixel_source_solve.h) has
// that block exact and constant in the block, where differences would cost 2K gradients per point.
struct HessianBlock {
  int64_t first = 0;
  torch::Tensor value;  // [B, K, K]; undefined: no block known
  bool known() const { return value.defined(); }
};
// The block at points x [B, D] (rows as f's), or an undefined value where none is known.
using HessianBlockFn = std::function<HessianBlock(const torch::Tensor& x)>;

// The Hessian [B, D, D] of log p at x [B, D] (float64, CPU, symmetrised) by central differences
// of the gradient, H[:, :, j] = (g(x + h_j e_j) - g(x - h_j e_j)) / 2 h_j, with per-point,
// per-coordinate steps h [B, D]; k = max_rows / 2B coordinates per call (max_rows at most 64 on
// the CPU, where wider calls cost more per row), rows point-major (see below). With a known block,
// only the other coordinates are stepped: their columns give every entry but the block's, which is
// copied in (the block's rows across the others by symmetry). `calls` is incremented per
// log-density call. Throws NumericalError when a gradient is not finite, InvalidArgument when the
// block does not fit x.
torch::Tensor hessian_by_differences(const LogDensityFn& f, const torch::Tensor& x,
                                     const torch::Tensor& h, int64_t max_rows, int64_t& calls,
                                     const HessianBlock& known = {});

// Per-coordinate difference steps [B, D] from a Hessian [B, D, D]: `relative_step` of each
// coordinate's width 1 / sqrt|H_jj|, clamped to [1e-7, max_step], so the differences stay linear
// for tight coordinates and above rounding for wide ones.
torch::Tensor difference_steps(const torch::Tensor& H, double relative_step, double max_step);

// At modes x [B, D]. f is evaluated on [B * 2k, D] with the rows of point b contiguous
// (point-major), so a log density whose rows are grouped by lens (B lenses, one mode each) sees
// every perturbation under its own lens. `block`, when given, supplies a diagonal block of the
// Hessian at x, which is then not differenced (a 32 x 32 pixel grid: 2 x 2 x 14 gradients per
// mode instead of 2 x 2 x 1,038). Throws InvalidArgument for bad settings or shapes and
// NumericalError when the gradient is not finite near a mode.
LaplaceApproximation laplace_approximation(const LogDensityFn& f, const torch::Tensor& x,
                                           const LaplaceSettings& settings = {},
                                           const HessianBlockFn& block = nullptr);

// Each non-concave direction of the Hessians [B, D, D] of log p (an eigenvector v of -H whose
// eigenvalue is <= 0, so log p does not fall along it), the optima in turn: the coordinate that
// carries most of it and its share v_j^2 of the unit vector, so a warning can name the parameter.
struct NonConcaveDirection {
  int64_t optimum = 0, coordinate = 0;
  double share = 0.0;
  double curvature = 0.0;  // v^T H v >= 0
};
std::vector<NonConcaveDirection> non_concave_directions(const torch::Tensor& hessian);

// The local curvature metric at arbitrary points q [C, D] (chains, not modes): the Hessian by
// central differences with steps `relative_step` x widths [C, D] (e.g. the square roots of the
// metric in use's diagonal, so one pass suffices), |-H|^-1 with `eigenvalue_floor` and
// `max_variance` as in laplace_approximation, averaged over consecutive groups of `group` points
// (the chains of one lens pool it, as their warmup windows do). Returns [C, D, D], float64 on the
// CPU; `non_concave` [C] counts each point's eigenvalues of -H that were <= 0. For a Gaussian this
// is its covariance at every point; on a curved posterior it is the typical set's scale where the
// Laplace approximation at the mode is not (docs/fit.md, "Sampling").
torch::Tensor curvature_covariance(const LogDensityFn& f, const torch::Tensor& q,
                                   const torch::Tensor& widths, int64_t group,
                                   const LaplaceSettings& settings, int64_t& calls,
                                   torch::Tensor* non_concave = nullptr);

// The modes that seed chains: log_mass [G, K] holds each group's (lens's) K modes' log masses,
// e.g. log p + log det(Sigma) / 2 of their Laplace approximations (not finite: unusable). Each
// group's `chains` chains go round-robin over its modes within `nats` of its largest mass, the
// heaviest first; a group with no finite mass seeds every chain at its mode 0. With log_p [G, K]
// defined, a mode whose log p is within height_nats of its group's highest is also seeded: where
// the optima have not converged their Laplace masses can rank a false lens first (the mass of an
// optimum near a prior bound or with non-concave directions is not the mode's), and the stray
// chains of warmup (AdaptSettings::stray_nats) then decide between the seeded modes by their draws'
// log densities. Returns [G * chains] indices into the flattened [G * K] modes, group-major.
std::vector<int64_t> seed_modes(const torch::Tensor& log_mass, int64_t chains, double nats,
                                const torch::Tensor& log_p = {}, double height_nats = 0.0);

}  // namespace dslens::samplers

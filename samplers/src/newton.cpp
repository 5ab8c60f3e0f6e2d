#include "dslens/samplers/newton.h"

#include <array>
#include <cmath>

#include <spdlog/spdlog.h>

#include "dslens/samplers/laplace.h"
#include "optimize_common.h"

namespace dslens::samplers {
namespace newton_detail {

// The damping ladder, in units of each start's trust scale: 0 is the undamped (SoftAbs) Newton
// step, the larger ones shorten every direction whose curvature is below them. Candidates cost K
// rows per start against the Hessian's 2D, so the ladder spans six decades.
constexpr std::array<double, 7> kLadder = {0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0};
// How the trust scale moves after an iteration whose best step was ladder entry k: an undamped
// step shrinks it (the quadratic model is good), a step at the largest damping grows it.
constexpr std::array<double, 7> kTrustAfter = {0.1, 0.1, 0.1, 0.3, 1.0, 3.0, 10.0};
// A start whose every step failed retries on the same Hessian with the damping this much larger;
// after this many failures in a row it stops.
constexpr double kTrustAfterFailure = 1e3;
constexpr int64_t kMaxFailures = 3;

}  // namespace newton_detail

void NewtonSettings::validate() const {
  using optimize_common::require;
  using optimize_common::str;
  require(max_iterations >= 1, "newton max_iterations must be >= 1, got " + str(max_iterations));
  require(gain_tol >= 0 && std::isfinite(gain_tol),
          "newton gain_tol must be finite and >= 0, got " + str(gain_tol));
  const auto positive = [](double v) { return v > 0 && std::isfinite(v); };
  require(positive(initial_step) && positive(relative_step) && positive(max_step),
          "newton finite-difference steps must be positive");
  require(max_variance > 0, "newton max_variance must be positive, got " + str(max_variance));
  require(max_rows >= 2, "newton max_rows must be >= 2, got " + str(max_rows));
  require(row_groups >= 1, "newton row_groups must be >= 1, got " + str(row_groups));
}

OptimizeResult maximize_newton(const LogDensityFn& log_density, const torch::Tensor& starts,
                               const NewtonSettings& s) {
  using namespace optimize_common;
  using namespace newton_detail;
  s.validate();
  check_starts(starts, "newton");
  if (s.compact) check_row_groups(starts, s.row_groups, "newton");
  // The coordinates each step moves (all but the held ones).
  std::vector<int64_t> moved;
  {
    std::vector<bool> held(static_cast<size_t>(starts.size(1)), false);
    for (const int64_t j : s.held_coordinates) {
      require(j >= 0 && j < starts.size(1) && !held[static_cast<size_t>(j)],
              "newton held coordinate " + str(j) + " is outside [0, " + str(starts.size(1)) +
                  ") or repeated");
      held[static_cast<size_t>(j)] = true;
    }
    for (int64_t j = 0; j < starts.size(1); ++j)
      if (!held[static_cast<size_t>(j)]) moved.push_back(j);
    require(!moved.empty(), "newton holds every coordinate");
  }
  OptimizeResult r;
  torch::NoGradGuard no_grad;
  const int64_t n = starts.size(0), dim = starts.size(1);
  const int64_t K = static_cast<int64_t>(kLadder.size());
  const auto opt = starts.options();
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto ladder = torch::tensor(std::vector<double>(kLadder.begin(), kLadder.end()), f64);
  const auto trust_after =
      torch::tensor(std::vector<double>(kTrustAfter.begin(), kTrustAfter.end()), f64);
  const auto host = [](const torch::Tensor& t) {
    return t.detach().to(torch::kCPU, torch::kFloat64);
  };

  torch::Tensor x = starts.detach().clone();
  const LogDensityValue v0 = evaluate_checked(log_density, x);
  ++r.log_density_calls;
  torch::Tensor lp = host(v0.log_p), g = host(v0.grad);
  const torch::Tensor ok = finite_rows(lp, g);
  lp = torch::where(ok, lp, torch::full_like(lp, -INFINITY));
  g = torch::where(ok.unsqueeze(1), g, torch::zeros_like(g));
  torch::Tensor active = ok.clone();
  torch::Tensor converged = torch::zeros({n}, f64.dtype(torch::kBool));
  torch::Tensor failures = torch::zeros({n}, f64.dtype(torch::kInt64));
  torch::Tensor iters = torch::zeros({n}, f64.dtype(torch::kInt64));
  torch::Tensor trust, H, eigenvalues, V;
  bool fresh_hessian_needed = true;
  const bool all_moved = static_cast<int64_t>(moved.size()) == dim;
  const auto moved_idx = torch::tensor(moved, f64.dtype(torch::kInt64));
  const torch::Tensor all_rows = torch::arange(n, f64.dtype(torch::kInt64));
  const auto moving_rows = [&] {
    return s.compact && !active.all().item<bool>() ? pending_rows(active, s.row_groups)
                                                   : PendingRows{all_rows, all_rows};
  };

  for (int64_t it = 0; it < s.max_iterations; ++it) {
    if (it > 0) report(s.on_progress, "newton", it, s.max_iterations, lp, active);
    if (!active.any().item<bool>()) break;
    // The rows evaluated this iteration (sel, the moving starts padded per group when compact)
    // and, among them, those that are not padding (real); on the host.
    const PendingRows e = moving_rows();
    const torch::Tensor sel_dev = e.sel.to(x.device());
    const torch::Tensor to = e.sel.index_select(0, e.real);
    const int64_t ns = e.sel.size(0);
    if (fresh_hessian_needed) {
      const torch::Tensor xs = x.index_select(0, sel_dev);
      const HessianBlock known = s.hessian_block ? s.hessian_block(xs) : HessianBlock{};
      torch::Tensor Hs;
      if (!H.defined()) {
        // First iteration: a common small step gives each coordinate's width (as laplace.h).
        const auto h1 = torch::full({ns, dim}, s.initial_step, opt);
        Hs = hessian_by_differences(log_density, xs, h1, s.max_rows, r.log_density_calls, known);
        H = torch::zeros({n, dim, dim}, Hs.options());
      } else {
        Hs = H.index_select(0, e.sel);
      }
      // The steps from the last Hessian's diagonal.
      const auto h = difference_steps(Hs, s.relative_step, s.max_step);
      Hs = hessian_by_differences(log_density, xs, h.to(opt), s.max_rows, r.log_density_calls,
                                  known);
      // Starts that stopped keep their last Hessian (they never move again).
      const torch::Tensor fresh = Hs.index_select(0, e.real);
      H.index_copy_(0, to, fresh);
      // -H = V diag(lambda) V^T over the moved coordinates, for the starts whose Hessian is new
      // only: a start that stopped or failed a step does not redo its D x D eigensolve (D = 1,038
      // on a 32 x 32 pixel grid).
      const auto Hm =
          all_moved ? fresh : fresh.index_select(1, moved_idx).index_select(2, moved_idx);
      const auto eig = torch::linalg_eigh(-Hm, "L");
      if (!V.defined()) {
        eigenvalues = torch::zeros({n, Hm.size(1)}, Hm.options());
        V = torch::zeros({n, Hm.size(1), Hm.size(1)}, Hm.options());
      }
      eigenvalues.index_copy_(0, to, std::get<0>(eig));
      V.index_copy_(0, to, std::get<1>(eig));
    }
    // SoftAbs: |lambda|, floored so a flat direction stays finite.
    const auto gm = all_moved ? g : g.index_select(1, moved_idx);
    auto lambda = eigenvalues.abs();
    const auto top = std::get<0>(lambda.max(1, /*keepdim=*/true)).clamp_min(1e-300);
    lambda = torch::maximum(lambda, 1e-12 * top).clamp_min(1.0 / s.max_variance);
    if (!trust.defined()) trust = std::get<0>(lambda.median(1));
    const auto gt = V.transpose(1, 2).matmul(gm.unsqueeze(2)).squeeze(2);  // [n, D moved]
    // The Newton decrement: the gain the undamped step predicts, g^T |H|^-1 g / 2 (Boyd &
    // Vandenberghe, section 9.5.1); below gain_tol the start has converged. A small realised gain
    // is no such sign: it may come from a heavily damped step.
    const auto predicted = 0.5 * (gt * gt / lambda).sum(1);
    const auto done = active & (predicted < s.gain_tol);
    converged = converged | done;
    active = active & ~done;
    if (!active.any().item<bool>()) break;
    // Steps [n, K, D] = V (|lambda| + mu_k)^-1 V^T g for every damping mu_k of the ladder.
    const auto mu = trust.unsqueeze(1) * ladder.unsqueeze(0);  // [n, K]
    const auto coeff = gt.unsqueeze(1) / (lambda.unsqueeze(1) + mu.unsqueeze(2));
    const auto moved_steps = coeff.matmul(V.transpose(1, 2));  // [n, K, D moved]
    const auto steps = all_moved ? moved_steps
                                 : torch::zeros({n, K, dim}, moved_steps.options())
                                       .index_copy(2, moved_idx, moved_steps);
    // Candidates point-major ([n * K, D], the K of start i contiguous), as laplace.h's rows; only
    // the selected starts' are evaluated, the others read -inf.
    const auto cand = (host(x).unsqueeze(1) + steps).reshape({n * K, dim});
    const PendingRows c = moving_rows();  // without the starts that just converged
    const torch::Tensor c_to = c.sel.index_select(0, c.real);
    const int64_t nc = c.sel.size(0);
    const auto cand_rows =
        (c.sel.unsqueeze(1) * K + torch::arange(K, c.sel.options()).unsqueeze(0)).reshape({-1});
    const LogDensityValue vc =
        evaluate_checked(log_density, cand.index_select(0, cand_rows).to(opt));
    ++r.log_density_calls;
    auto lps = host(vc.log_p), gs = host(vc.grad);
    lps =
        torch::where(finite_rows(lps, gs), lps, torch::full_like(lps, -INFINITY)).reshape({nc, K});
    gs = gs.reshape({nc, K, dim});
    auto lpc = torch::full({n, K}, -INFINITY, lps.options())
                   .index_copy(0, c_to, lps.index_select(0, c.real));
    auto gc = torch::zeros({n, K, dim}, gs.options())
                  .index_copy(0, c_to, gs.index_select(0, c.real))
                  .reshape({n * K, dim});
    const auto best = lpc.max(1);
    const auto& lp_best = std::get<0>(best);
    const auto k_best = std::get<1>(best);
    const auto improved = active & (lp_best > lp);
    const auto rows = torch::arange(n, f64.dtype(torch::kInt64)) * K + k_best;
    const auto im = improved.unsqueeze(1);
    x = torch::where(im.to(x.device()), cand.index_select(0, rows).to(opt), x);
    lp = torch::where(improved, lp_best, lp);
    g = torch::where(im, gc.index_select(0, rows), g);
    trust = torch::where(improved, trust * trust_after.index_select(0, k_best),
                         torch::where(active, trust * kTrustAfterFailure, trust));
    failures = torch::where(improved, torch::zeros_like(failures),
                            torch::where(active, failures + 1, failures));
    iters = iters + active.to(torch::kInt64);
    if (spdlog::should_log(spdlog::level::debug))
      spdlog::debug(
          "newton iteration {}: best log p {:.10g}, predicted gain up to {:.3g}, {} of {} starts "
          "improved, mean ladder entry {:.2g}",
          it + 1, lp.max().item<double>(),
          torch::where(active, predicted, torch::zeros_like(predicted)).max().item<double>(),
          improved.sum().item<int64_t>(), active.sum().item<int64_t>(),
          k_best.to(torch::kFloat64).mean().item<double>());
    active = active & (failures < kMaxFailures);
    // Starts that did not move keep their Hessian; recompute only when one moved.
    fresh_hessian_needed = improved.any().item<bool>();
  }
  report(s.on_progress, "newton", iters.max().item<int64_t>(), s.max_iterations, lp, active);
  r.x = x;
  r.log_p = lp.to(opt.dtype()).to(x.device());
  // On the starts' device, like Adam's and L-BFGS's results (the Hessian work above is on the CPU).
  r.grad_norm = max_abs(g).to(x.device());
  r.converged = converged.to(x.device());
  r.iterations = iters.to(x.device());
  finish(r, "newton");
  return r;
}

}  // namespace dslens::samplers

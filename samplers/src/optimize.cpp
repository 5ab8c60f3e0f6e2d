#include "dslens/samplers/optimize.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "dslens/core/errors.h"
#include "lbfgs_direction.h"
#include "optimize_common.h"

namespace dslens::samplers {

void AdamSettings::validate() const {
  using optimize_common::require;
  using optimize_common::str;
  require(max_iterations >= 1, "adam max_iterations must be >= 1, got " + str(max_iterations));
  require(learning_rate > 0 && std::isfinite(learning_rate),
          "adam learning_rate must be positive, got " + str(learning_rate));
  require(beta1 >= 0 && beta1 < 1, "adam beta1 must be in [0, 1), got " + str(beta1));
  require(beta2 >= 0 && beta2 < 1, "adam beta2 must be in [0, 1), got " + str(beta2));
  require(epsilon > 0, "adam epsilon must be positive, got " + str(epsilon));
  require(grad_tol >= 0, "adam grad_tol must be >= 0, got " + str(grad_tol));
  require(check_every >= 1, "adam check_every must be >= 1, got " + str(check_every));
}

void LbfgsSettings::validate() const {
  using optimize_common::require;
  using optimize_common::str;
  require(max_iterations >= 1, "lbfgs max_iterations must be >= 1, got " + str(max_iterations));
  require(history >= 1, "lbfgs history must be >= 1, got " + str(history));
  require(grad_tol >= 0, "lbfgs grad_tol must be >= 0, got " + str(grad_tol));
  require(armijo > 0 && armijo < 1, "lbfgs armijo must be in (0, 1), got " + str(armijo));
  require(backtrack > 0 && backtrack < 1,
          "lbfgs backtrack must be in (0, 1), got " + str(backtrack));
  require(max_line_search >= 1, "lbfgs max_line_search must be >= 1, got " + str(max_line_search));
  require(line_search_batch >= 1,
          "lbfgs line_search_batch must be >= 1, got " + str(line_search_batch));
  require(row_groups >= 1, "lbfgs row_groups must be >= 1, got " + str(row_groups));
  require(line_search_rows >= 0,
          "lbfgs line_search_rows must be >= 0, got " + str(line_search_rows));
  require(stall_window >= 0, "lbfgs stall_window must be >= 0, got " + str(stall_window));
  require(stall_gain >= 0 && std::isfinite(stall_gain),
          "lbfgs stall_gain must be finite and >= 0, got " + str(stall_gain));
  require(!interpolate || line_search_batch == 1,
          "lbfgs interpolate needs line_search_batch 1 (a batched ladder fixes its steps in "
          "advance), got " +
              str(line_search_batch));
}

OptimizeResult maximize_adam(const LogDensityFn& log_density, const torch::Tensor& starts,
                             const AdamSettings& s) {
  using namespace optimize_common;
  s.validate();
  check_starts(starts, "adam");
  OptimizeResult r;
  torch::Tensor x = starts.detach().clone();
  LogDensityValue v = evaluate_checked(log_density, x);
  ++r.log_density_calls;
  torch::Tensor lp = v.log_p, g = v.grad;
  torch::Tensor ok = finite_rows(lp, g);
  torch::Tensor active =
      ok & (max_abs(torch::where(ok.unsqueeze(1), g, torch::zeros_like(g))) >= s.grad_tol);
  torch::Tensor lr = torch::full({x.size(0)}, s.learning_rate, x.options());
  torch::Tensor m = torch::zeros_like(x), vv = torch::zeros_like(x);
  torch::Tensor iters = torch::zeros({x.size(0)}, x.options().dtype(torch::kInt64));
  for (int64_t t = 1; t <= s.max_iterations; ++t) {
    if ((t - 1) % s.check_every == 0) {
      if (t > 1) report(s.on_progress, "adam", t - 1, s.max_iterations, lp, active);
      if (!active.any().item<bool>()) break;
    }
    torch::Tensor a = active.unsqueeze(1);
    torch::Tensor m_new = s.beta1 * m + (1 - s.beta1) * g;
    torch::Tensor v_new = s.beta2 * vv + (1 - s.beta2) * g * g;
    torch::Tensor mhat = m_new / (1 - std::pow(s.beta1, static_cast<double>(t)));
    torch::Tensor vhat = v_new / (1 - std::pow(s.beta2, static_cast<double>(t)));
    torch::Tensor x_try = x + lr.unsqueeze(1) * mhat / (torch::sqrt(vhat) + s.epsilon);
    LogDensityValue vt = evaluate_checked(log_density, x_try);
    ++r.log_density_calls;
    torch::Tensor fine = finite_rows(vt.log_p, vt.grad);
    torch::Tensor step = active & fine;
    torch::Tensor sm = step.unsqueeze(1);
    x = torch::where(sm, x_try, x);
    lp = torch::where(step, vt.log_p, lp);
    g = torch::where(sm, vt.grad, g);
    m = torch::where(a, m_new, m);
    vv = torch::where(a, v_new, vv);
    // A step into a non-finite region is undone and that start's learning rate halved.
    lr = torch::where(active & ~fine, 0.5 * lr, lr);
    iters = iters + active.to(torch::kInt64);
    if (t % s.check_every == 0) active = active & (max_abs(g) >= s.grad_tol);
  }
  report(s.on_progress, "adam", iters.max().item<int64_t>(), s.max_iterations, lp, active);
  r.x = x;
  r.log_p = torch::where(ok, lp, torch::full_like(lp, -INFINITY));
  r.grad_norm = max_abs(g);
  r.converged = ok & (r.grad_norm < s.grad_tol);
  r.iterations = iters;
  finish(r, "adam");
  return r;
}

OptimizeResult maximize_lbfgs(const LogDensityFn& log_density, const torch::Tensor& starts,
                              const LbfgsSettings& s) {
  using namespace optimize_common;
  s.validate();
  check_starts(starts, "lbfgs");
  if (s.compact_line_search) check_row_groups(starts, s.row_groups, "lbfgs");
  OptimizeResult r;
  const int64_t n = starts.size(0), dim = starts.size(1), mh = s.history;
  const auto opt = starts.options();
  torch::Tensor x = starts.detach().clone();
  LogDensityValue v = evaluate_checked(log_density, x);
  ++r.log_density_calls;
  r.rows_evaluated += n;
  // Minimise f = -log p.
  torch::Tensor f = -v.log_p, g = -v.grad;
  torch::Tensor ok = finite_rows(f, g);
  g = torch::where(ok.unsqueeze(1), g, torch::zeros_like(g));
  torch::Tensor active = ok & (max_abs(g) >= s.grad_tol);
  torch::Tensor s_hist = torch::zeros({n, mh, dim}, opt), y_hist = torch::zeros({n, mh, dim}, opt);
  // rho = 1 / (s . y) of a stored pair; 0 marks a slot without one (a stored pair has s . y > 0).
  torch::Tensor rho = torch::zeros({n, mh}, opt);
  torch::Tensor gamma = torch::ones({n}, opt);
  torch::Tensor has_history = torch::zeros({n}, opt.dtype(torch::kBool));
  torch::Tensor iters = torch::zeros({n}, opt.dtype(torch::kInt64));
  // Each start keeps its own ring of pairs: a step that fails the curvature test stores nothing
  // (Nocedal & Wright, Algorithm 7.5 and section 7.2: skip the update), so the start's older pairs
  // survive. next [n] is the slot its next pair goes to.
  const torch::Tensor rows = torch::arange(n, opt.dtype(torch::kInt64));
  // b^j, j = 0 .. line_search_batch - 1: the shrink factors of one batched line-search call.
  const torch::Tensor shrink =
      torch::pow(s.backtrack, torch::arange(s.line_search_batch, opt)).unsqueeze(0);
  torch::Tensor next = torch::zeros({n}, opt.dtype(torch::kInt64));
  const torch::Tensor slots = torch::arange(mh, opt.dtype(torch::kInt64)).unsqueeze(0);  // [1, m]
  // f at the last stall_window iterations, a ring indexed by iteration modulo the window.
  torch::Tensor f_lag;
  if (s.stall_window > 0) f_lag = f.unsqueeze(0).repeat({s.stall_window, 1});
  // Consecutive iterations whose step gained only rounding (below), per start.
  torch::Tensor rounding_steps = torch::zeros({n}, opt.dtype(torch::kInt64));

  for (int64_t it = 0; it < s.max_iterations; ++it) {
    if (it > 0) report(s.on_progress, "lbfgs", it, s.max_iterations, -f, active);
    if (!active.any().item<bool>()) break;
    // The quasi-Newton direction from each start's pairs, gathered newest first (a slot without
    // a pair has rho 0 and contributes nothing).
    const torch::Tensor order = (next.unsqueeze(1) - 1 - slots).remainder(mh);  // [n, m]
    const torch::Tensor order3 = order.unsqueeze(2).expand({n, mh, dim});
    const torch::Tensor rr = lbfgs_inverse_hessian_product(
        g, s_hist.gather(1, order3), y_hist.gather(1, order3), rho.gather(1, order), gamma);
    torch::Tensor d = -rr;
    torch::Tensor gd = (g * d).sum(1);
    // Fall back to steepest descent where the quasi-Newton direction is not a descent direction.
    torch::Tensor reset = ~(gd < 0) | ~torch::isfinite(gd);
    d = torch::where(reset.unsqueeze(1), -g, d);
    gd = torch::where(reset, -(g * g).sum(1), gd);
    // Without history, the first trial step moves by at most 1 in the max norm.
    torch::Tensor t = torch::where(has_history & ~reset, torch::ones({n}, opt),
                                   torch::clamp_max(1.0 / max_abs(g).clamp_min(1e-300), 1.0));

    torch::Tensor accepted = ~active;
    torch::Tensor x_new = x, f_new = f, g_new = g;
    const torch::Tensor t_first = t;
    for (int64_t ls = 0, k = 0; ls < s.max_line_search; ls += k) {
      // Without compaction every start is evaluated, in place: no row selections to make.
      const bool compact = s.compact_line_search;
      const PendingRows e =
          compact ? pending_rows(~accepted, s.row_groups, s.compact_pow2) : PendingRows{};
      auto take = [&](const torch::Tensor& v) { return compact ? v.index_select(0, e.sel) : v; };
      const int64_t ns = compact ? e.sel.size(0) : n;
      // k step lengths per evaluated start, [ns, k]; trial rows start-major [ns * k, D].
      k = std::min(s.line_search_batch, s.max_line_search - ls);
      if (s.line_search_rows > 0) k = std::clamp<int64_t>(s.line_search_rows / ns, 1, k);
      const torch::Tensor steps = take(t).unsqueeze(1) * shrink.narrow(1, 0, k);
      const torch::Tensor x_try =
          (take(x).unsqueeze(1) + steps.unsqueeze(2) * take(d).unsqueeze(1)).reshape({ns * k, dim});
      LogDensityValue vt = evaluate_checked(log_density, x_try);
      ++r.log_density_calls;
      r.rows_evaluated += ns * k;
      const torch::Tensor f_try = -vt.log_p, g_try = -vt.grad;
      const torch::Tensor good = finite_rows(f_try, g_try).reshape({ns, k}) &
                                 (f_try.reshape({ns, k}) <=
                                  take(f).unsqueeze(1) + s.armijo * steps * take(gd).unsqueeze(1));
      // The longest step that passes (argmax returns the first maximum), for the evaluated starts
      // that are not padding (e.real: their places among the evaluated rows), put back in place.
      torch::Tensor fresh, to, pick;
      if (compact) {
        pick = e.real * k + good.to(torch::kInt32).argmax(1).index_select(0, e.real);
        to = e.sel.index_select(0, e.real);
        fresh = torch::zeros_like(accepted).index_copy(0, to, good.any(1).index_select(0, e.real));
      } else {
        pick = k == 1 ? torch::Tensor() : rows * k + good.to(torch::kInt32).argmax(1);
        fresh = k == 1 ? good.squeeze(1) : good.any(1);
      }
      // Each start's picked trial row, in its place.
      auto picked = [&](const torch::Tensor& base, const torch::Tensor& trial) {
        if (compact) return base.index_copy(0, to, trial.index_select(0, pick));
        return k == 1 ? trial : trial.index_select(0, pick);
      };
      fresh = fresh & ~accepted;
      const torch::Tensor fm = fresh.unsqueeze(1);
      x_new = torch::where(fm, picked(x_new, x_try), x_new);
      f_new = torch::where(fresh, picked(f_new, f_try), f_new);
      g_new = torch::where(fm, picked(g_new, g_try), g_new);
      accepted = accepted | fresh;
      if (accepted.all().item<bool>()) break;
      if (s.interpolate) {
        // The minimiser of the quadratic through f(0), f'(0) = gd and f(t), kept within
        // [0.1 t, backtrack t] (Nocedal & Wright, Numerical Optimization, section 3.5): after a
        // rejected quasi-Newton step it usually lands on an acceptable step at once, where halving
        // needs several calls (4.6 rows per start and iteration in the bench mock's MAP's source
        // stage, 2.0 with interpolation).
        const torch::Tensor te = take(t), ft = f_try.reshape({ns});
        const torch::Tensor f0 = take(f), gd0 = take(gd);
        // Only a step that raised f by more than rounding is interpolated: near a mode f(t) - f(0)
        // is rounding, the quadratic is noise, and its steps (down to 0.1 t each) would go on
        // being accepted without progress where halving stalls the start after max_line_search
        // steps. A non-finite f(t) is halved too.
        const double eps = ft.scalar_type() == torch::kFloat64
                               ? std::numeric_limits<double>::epsilon()
                               : std::numeric_limits<float>::epsilon();
        const torch::Tensor rise = ft - f0, curv = rise - gd0 * te;
        const torch::Tensor tq = -gd0 * te * te / (2.0 * curv);
        const torch::Tensor hi = s.backtrack * te, lo = std::min(0.1, s.backtrack) * te;
        const torch::Tensor fit = torch::isfinite(tq) & (curv > 0) & (rise > 64.0 * eps * f0.abs());
        const torch::Tensor tn = torch::where(fit, torch::min(torch::max(tq, lo), hi), hi);
        t = torch::where(accepted, t,
                         compact ? t.index_copy(0, to, tn.index_select(0, e.real)) : tn);
      } else {
        t = torch::where(accepted, t, t * std::pow(s.backtrack, static_cast<double>(k)));
      }
    }
    torch::Tensor moved = active & accepted;
    torch::Tensor sv = x_new - x, yv = g_new - g;
    torch::Tensor sy = (sv * yv).sum(1);
    torch::Tensor curvature = moved & (sy > 1e-10 * sv.norm(2, 1) * yv.norm(2, 1)) & (sy > 0);
    // The accepted pairs go to each start's slot `next`: a one-hot mask over the slots, so the
    // update is elementwise (no indexing).
    const torch::Tensor put = curvature.unsqueeze(1) & (slots == next.unsqueeze(1));  // [n, m]
    s_hist = torch::where(put.unsqueeze(2), sv.unsqueeze(1), s_hist);
    y_hist = torch::where(put.unsqueeze(2), yv.unsqueeze(1), y_hist);
    rho = torch::where(put, (1.0 / sy).unsqueeze(1), rho);
    gamma = torch::where(curvature, sy / (yv * yv).sum(1), gamma);
    has_history = has_history | curvature;
    next = torch::where(curvature, (next + 1).remainder(mh), next);

    // A start whose steps passed only after ten or more halvings and gained no more than f's
    // rounding, three iterations running, stops there: near a stiff mode (|grad| 4e-5 with
    // curvature 8e5 along it, a 40 x 40 mock with the Poisson term from the model) Armijo's test
    // is rounding noise, and such a start went on for hundreds of iterations of 25 backtracks each
    // without moving. One such step (a poor quasi-Newton direction) does not stop it.
    const double eps = f.scalar_type() == torch::kFloat64 ? std::numeric_limits<double>::epsilon()
                                                          : std::numeric_limits<float>::epsilon();
    const torch::Tensor step = (sv.norm(2, 1) / d.norm(2, 1).clamp_min(1e-300));
    const torch::Tensor at_rounding =
        (step < 1e-3 * t_first) & (f - f_new <= 64.0 * eps * f.abs().clamp_min(1.0));
    torch::Tensor mm = moved.unsqueeze(1);
    x = torch::where(mm, x_new, x);
    f = torch::where(moved, f_new, f);
    g = torch::where(mm, g_new, g);
    iters = iters + active.to(torch::kInt64);
    rounding_steps =
        torch::where(at_rounding & moved, rounding_steps + 1, torch::zeros_like(rounding_steps));
    // Starts whose line search failed have stalled: they stop where they are.
    active = moved & (rounding_steps < 3) & (max_abs(g) >= s.grad_tol);
    if (s.stall_window > 0) {
      const int64_t slot = (it + 1) % s.stall_window;
      if (it + 1 >= s.stall_window) active = active & (f_lag[slot] - f >= s.stall_gain);
      f_lag[slot].copy_(f);
    }
  }
  report(s.on_progress, "lbfgs", iters.max().item<int64_t>(), s.max_iterations, -f, active);
  r.x = x;
  r.log_p = torch::where(ok, -f, torch::full_like(f, -INFINITY));
  r.grad_norm = max_abs(g);
  r.converged = ok & (r.grad_norm < s.grad_tol);
  r.iterations = iters;
  finish(r, "lbfgs");
  return r;
}

torch::Tensor best_rows_per_group(const torch::Tensor& x, const torch::Tensor& log_p,
                                  int64_t groups, int64_t keep) {
  if (x.dim() != 2 || log_p.dim() != 1 || log_p.size(0) != x.size(0) || groups < 1 ||
      x.size(0) % groups != 0 || keep < 1) {
    throw InvalidArgument("best_rows_per_group: x must be [G * n, D] and log_p [G * n] with G = " +
                          std::to_string(groups) + " >= 1 groups and keep >= 1 (got keep " +
                          std::to_string(keep) + ")");
  }
  const int64_t n = x.size(0) / groups;
  const auto lp = torch::nan_to_num(log_p.detach(), -INFINITY).reshape({groups, n});
  const auto order = std::get<1>(lp.topk(std::min(keep, n), 1));
  const auto offsets =
      torch::arange(groups, order.options()).unsqueeze(1) * n;  // first row of each group
  return x.index_select(0, (order + offsets).reshape({-1}));
}

}  // namespace dslens::samplers

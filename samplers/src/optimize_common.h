// Helpers shared by the batched optimisers (optimize.cpp, newton.cpp): argument checks, the
// per-start bookkeeping of OptimizeResult and progress reports; pending_rows also by the samplers
// (hmc.cpp).
#pragma once
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

#include "dslens/core/errors.h"
#include "dslens/samplers/optimize.h"

namespace dslens::samplers {
namespace optimize_common {

template <typename T>
inline std::string str(T v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

inline void require(bool ok, const std::string& message) {
  if (!ok) throw InvalidArgument(message);
}

// Compacted calls pad each of `groups` consecutive row groups to one size (pending_rows), so the
// starts must split into equal groups.
inline void check_row_groups(const torch::Tensor& starts, int64_t groups, const char* name) {
  if (starts.size(0) % groups != 0)
    throw InvalidArgument(std::string(name) + ": " + std::to_string(starts.size(0)) +
                          " starts do not split into " + std::to_string(groups) +
                          " equal row groups");
}

inline void check_starts(const torch::Tensor& starts, const char* name) {
  if (!starts.defined() || starts.dim() != 2 || starts.size(0) < 1 || starts.size(1) < 1 ||
      !starts.is_floating_point())
    throw InvalidArgument(std::string(name) +
                          ": starting points must be a floating-point [starts, dim] tensor");
}

// The rows one call evaluates when only the pending ones need it (an L-BFGS line search, NUTS
// chains still building their trees): sel [G m] (rows of the batch, group-major) and real (the
// places in sel that are not padding). With compaction, each of the G groups contributes
// its pending rows in order, padded to m = the largest group's count with its first row.
struct PendingRows {
  torch::Tensor sel, real;
};

// With pow2, m is rounded up to a power of two (at most the group size), so the calls take a few
// shapes only, as CUDA graphs want (one graph per shape).
inline PendingRows pending_rows(const torch::Tensor& pending, int64_t groups, bool pow2 = false) {
  const int64_t per = pending.size(0) / groups;  // divisible: checked by the callers
  const auto lopt = pending.options().dtype(torch::kInt64);
  const torch::Tensor pg = pending.view({groups, per});
  const torch::Tensor count = pg.sum(1);
  int64_t m = count.max().item<int64_t>();
  if (pow2) {
    int64_t p = 1;
    while (p < m) p *= 2;
    m = std::min(p, per);
  }
  // Pending rows first, each part in its original order: sort keys (not pending) * per + column.
  const torch::Tensor col = torch::arange(per, lopt).unsqueeze(0);
  const torch::Tensor order = ((~pg).to(torch::kInt64) * per + col)
                                  .argsort(/*dim=*/1, /*descending=*/false)
                                  .narrow(1, 0, m);
  const torch::Tensor slot = col.narrow(1, 0, m);           // [1, m]
  const torch::Tensor is_real = slot < count.unsqueeze(1);  // [G, m]
  const torch::Tensor within = torch::where(is_real, order, order.narrow(1, 0, 1));
  const torch::Tensor sel =
      (within + torch::arange(groups, lopt).unsqueeze(1) * per).reshape({groups * m});
  return {sel, is_real.reshape({groups * m}).nonzero().squeeze(1)};
}

inline torch::Tensor finite_rows(const torch::Tensor& lp, const torch::Tensor& grad) {
  return torch::isfinite(lp) & torch::isfinite(grad).all(1);
}

inline torch::Tensor max_abs(const torch::Tensor& g) {
  return std::get<0>(g.abs().max(1));
}

inline void finish(OptimizeResult& r, const char* name) {
  torch::Tensor lp =
      torch::where(torch::isfinite(r.log_p), r.log_p, torch::full_like(r.log_p, -INFINITY));
  r.log_p = lp;
  auto best = lp.argmax();
  r.best = best.item<int64_t>();
  r.best_log_p = lp[r.best].item<double>();
  if (!std::isfinite(r.best_log_p))
    throw NumericalError(std::string(name) + ": the log density is not finite at any start");
  r.best_x = r.x[r.best].clone();
}

inline void report(const OptimizeProgressFn& fn, const char* method, int64_t iteration,
                   int64_t max_it, const torch::Tensor& log_p, const torch::Tensor& active) {
  if (!fn) return;
  OptimizeProgress p;
  p.method = method;
  p.iteration = iteration;
  p.max_iterations = max_it;
  const auto lp = torch::where(torch::isfinite(log_p), log_p, torch::full_like(log_p, -INFINITY));
  p.best_log_p = lp.max().item<double>();
  p.active = active.sum().item<int64_t>();
  p.starts = log_p.size(0);
  fn(p);
}

}  // namespace optimize_common

}  // namespace dslens::samplers

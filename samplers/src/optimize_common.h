// Helpers shared by the batched optimisers (optimize.cpp, newton.cpp): argument checks, the
// per-start bookkeeping of OptimizeResult and progress reports.
#pragma once
#include <torch/torch.h>

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

inline void check_starts(const torch::Tensor& starts, const char* name) {
  if (!starts.defined() || starts.dim() != 2 || starts.size(0) < 1 || starts.size(1) < 1 ||
      !starts.is_floating_point())
    throw InvalidArgument(std::string(name) +
                          ": starting points must be a floating-point [starts, dim] tensor");
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

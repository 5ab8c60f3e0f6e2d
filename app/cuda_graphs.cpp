#include "cuda_graphs.h"

#include <spdlog/spdlog.h>

#include <atomic>

#include "dslens/physics/profile.h"

namespace dslens::app {
namespace cuda_graphs_detail {

std::atomic<bool>& scope_active() {
  static std::atomic<bool> active{false};
  return active;
}

}  // namespace cuda_graphs_detail

CudaGraphScope::CudaGraphScope(const model::LensPosterior& posterior, bool enabled) {
  if (!enabled || !posterior.compute().device.is_cuda()) return;
  if (!samplers::cuda_graphs_compiled()) {
    spdlog::info("cuda graphs: not in this build (LibTorch without CUDA); eager calls");
    return;
  }
  const auto bound = posterior.epl_ellipticity_bound();
  if (!bound) {
    spdlog::warn(
        "cuda graphs: off, an EPL ellipticity prior is unbounded (give e1/e2 bounded priors, or q "
        "a lower bound, to replay the log density from CUDA graphs)");
    return;
  }
  if (*bound > 0) {
    const int terms = physics::epl_series_terms_for(*bound, posterior.compute().dtype);
    physics::set_epl_series_terms(terms);
    spdlog::info("cuda graphs: on; EPL series fixed at {} terms (|e| <= {:.3g} under the priors)",
                 terms, *bound);
  } else {
    spdlog::info("cuda graphs: on");
  }
  active_ = true;
  cuda_graphs_detail::scope_active().store(true);
}

CudaGraphScope::~CudaGraphScope() {
  if (!active_) return;
  physics::set_epl_series_terms(0);
  cuda_graphs_detail::scope_active().store(false);
}

samplers::LogDensityFn graphed_if_active(samplers::LogDensityFn f,
                                         std::shared_ptr<samplers::CudaGraphStats> stats) {
  if (!cuda_graphs_detail::scope_active().load()) return f;
  return samplers::cuda_graphed(std::move(f), {}, std::move(stats));
}

}  // namespace dslens::app

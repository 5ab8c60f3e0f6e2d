#include "dslens/samplers/cuda_graph.h"

#include <spdlog/spdlog.h>

#include <ATen/record_function.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <utility>

#include "dslens/core/device.h"
#include "dslens/core/errors.h"

#ifdef DSLENS_WITH_CUDA_GRAPHS
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/cuda.h>
#endif

namespace dslens::samplers {
namespace cuda_graph_detail {

// Largest |a - b| over the entries finite in both, relative to the largest finite |b|; infinity
// when a and b are not finite at the same entries (a replay that lost a rejection, or made one).
double relative_difference(const torch::Tensor& a, const torch::Tensor& b) {
  const auto fa = torch::isfinite(a), fb = torch::isfinite(b);
  if (!torch::equal(fa, fb)) return std::numeric_limits<double>::infinity();
  const auto zero = torch::zeros_like(b);
  const auto diff = torch::where(fb, (a - b).abs(), zero).max().item<double>();
  const auto scale = torch::where(fb, b.abs(), zero).max().item<double>();
  return diff / std::max(scale, std::numeric_limits<double>::min());
}

// Operators that read a device value back to the host (see host_reads_during).
bool reads_back(const char* name) {
  return std::strcmp(name, "aten::_local_scalar_dense") == 0 ||
         std::strcmp(name, "aten::nonzero") == 0;
}

std::atomic<int64_t>& host_reads() {
  static std::atomic<int64_t> n{0};
  return n;
}

std::unique_ptr<at::ObserverContext> count_host_read(const at::RecordFunction& fn) {
  if (reads_back(fn.name())) ++host_reads();
  return nullptr;
}

double log_p_rtol(const CudaGraphSettings& s, torch::ScalarType dtype) {
  return dtype == torch::kFloat64 ? s.log_p_rtol_float64 : s.log_p_rtol_float32;
}

double grad_rtol(const CudaGraphSettings& s, torch::ScalarType dtype) {
  return dtype == torch::kFloat64 ? s.grad_rtol_float64 : s.grad_rtol_float32;
}

std::string shape_key(const torch::Tensor& q) {
  std::ostringstream os;
  os << q.sizes() << ' ' << device_dtype_key(q.options());
  return os.str();
}

}  // namespace cuda_graph_detail

ReplayDifference replay_difference(const LogDensityValue& replayed, const LogDensityValue& eager) {
  return {cuda_graph_detail::relative_difference(replayed.log_p, eager.log_p),
          cuda_graph_detail::relative_difference(replayed.grad, eager.grad)};
}

bool ReplayDifference::within(const CudaGraphSettings& s, torch::ScalarType dtype) const {
  // <= rather than !(>): a NaN difference fails the check.
  return log_p <= cuda_graph_detail::log_p_rtol(s, dtype) &&
         grad <= cuda_graph_detail::grad_rtol(s, dtype);
}

ReplayDifference check_replay(const LogDensityFn& replayed, const LogDensityFn& eager,
                              const torch::Tensor& q, const LogDensityValue& eager_at_q) {
  ReplayDifference d = replay_difference(replayed(q), eager_at_q);
  if (q.size(0) > 1) {
    const auto flipped = q.flip({0});
    const ReplayDifference f = replay_difference(replayed(flipped), eager(flipped));
    d.log_p = std::max(d.log_p, f.log_p);
    d.grad = std::max(d.grad, f.grad);
  }
  return d;
}

int64_t host_reads_during(const std::function<void()>& f) {
  using namespace cuda_graph_detail;
  const int64_t before = host_reads().load();
  const auto handle = at::addGlobalCallback(
      at::RecordFunctionCallback(&count_host_read).scopes({at::RecordScope::FUNCTION}));
  try {
    f();
  } catch (...) {
    at::removeCallback(handle);
    throw;
  }
  at::removeCallback(handle);
  return host_reads().load() - before;
}

void CudaGraphSettings::validate() const {
  if (warmup_calls < 1) {
    throw InvalidArgument("cuda graphs: warmup_calls must be >= 1, got " +
                          std::to_string(warmup_calls));
  }
  if (recheck_every < 0) {
    throw InvalidArgument("cuda graphs: recheck_every must be >= 0, got " +
                          std::to_string(recheck_every));
  }
  if (max_graphs < 0) {
    throw InvalidArgument("cuda graphs: max_graphs must be >= 0, got " +
                          std::to_string(max_graphs));
  }
  if (!(log_p_rtol_float32 > 0) || !(grad_rtol_float32 > 0) || !(log_p_rtol_float64 > 0) ||
      !(grad_rtol_float64 > 0)) {
    throw InvalidArgument("cuda graphs: the replay tolerances must be > 0");
  }
}

#ifdef DSLENS_WITH_CUDA_GRAPHS

bool cuda_graphs_compiled() {
  return true;
}

namespace cuda_graph_detail {

struct Captured {
  bool eager_only = false;
  int64_t replays = 0;
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  torch::Tensor input;     // the graph reads its positions here
  LogDensityValue output;  // and writes its results here, overwritten by every replay
};

// Drops the shape's graph (if any): its calls run eagerly from now on.
void fall_back(Captured& c, CudaGraphStats& stats) {
  c = Captured{};
  c.eager_only = true;
  ++stats.eager_shapes;
}

LogDensityValue replay(Captured& c, const torch::Tensor& q) {
  c.input.copy_(q);
  c.graph->replay();
  // Clones: the caller keeps results across calls (NUTS holds a tree's ends), the next replay
  // overwrites the graph's own.
  return {c.output.log_p.clone(), c.output.grad.clone()};
}

// Captures eager(c.input) on a side stream (graphs cannot be captured on the default stream),
// after warmup calls there that create what a first call creates (cuBLAS / cuDNN handles,
// autograd's device threads, the caching allocator's blocks).
void capture(Captured& c, const LogDensityFn& eager, const torch::Tensor& q,
             const CudaGraphSettings& s) {
  const auto index = q.device().index();
  c10::cuda::CUDAGuard device_guard(q.device());
  c.input = q.detach().clone();
  torch::cuda::synchronize(index);
  auto side = c10::cuda::getStreamFromPool(false, index);
  {
    c10::cuda::CUDAStreamGuard stream_guard(side);
    for (int64_t i = 0; i < s.warmup_calls; ++i) (void)eager(c.input);
    side.synchronize();
    c.graph = std::make_unique<at::cuda::CUDAGraph>();
    c.graph->capture_begin();
    try {
      c.output = eager(c.input);
    } catch (...) {
      // End the stream's capture mode before the error leaves; the graph is discarded. LibTorch's
      // capture_end can throw before it ends an invalidated capture (seen with LibTorch 2.11 on an
      // H200: every later synchronisation failed with "operation not permitted when stream is
      // capturing"), so the stream's state is asked and the capture ended directly if need be.
      try {
        c.graph->capture_end();
      } catch (...) {
      }
      cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(side.stream(), &status) == cudaSuccess &&
          status != cudaStreamCaptureStatusNone) {
        cudaGraph_t partial = nullptr;
        (void)cudaStreamEndCapture(side.stream(), &partial);
        if (partial != nullptr) (void)cudaGraphDestroy(partial);
      }
      (void)cudaGetLastError();  // the capture's error is not this process's next call's
      c.graph.reset();
      throw;
    }
    c.graph->capture_end();
  }
  torch::cuda::synchronize(index);
}

}  // namespace cuda_graph_detail

LogDensityFn cuda_graphed(LogDensityFn eager, CudaGraphSettings settings,
                          std::shared_ptr<CudaGraphStats> stats) {
  using namespace cuda_graph_detail;
  settings.validate();
  if (!stats) stats = std::make_shared<CudaGraphStats>();
  auto graphs = std::make_shared<std::map<std::string, Captured>>();
  return [eager = std::move(eager), settings, stats, graphs](const torch::Tensor& q) {
    if (!q.is_cuda()) {
      ++stats->eager_calls;
      return eager(q);
    }
    const std::string key = shape_key(q);
    auto it = graphs->find(key);
    if (it != graphs->end()) {
      if (it->second.eager_only) {
        ++stats->eager_calls;
        return eager(q);
      }
      Captured& c = it->second;
      ++stats->replays;
      ++c.replays;
      if (settings.recheck_every == 0 || c.replays % settings.recheck_every != 0) {
        return replay(c, q);
      }
      LogDensityValue replayed = replay(c, q);
      ++stats->rechecks;
      ++stats->eager_calls;
      LogDensityValue reference = eager(q);
      const ReplayDifference diff = replay_difference(replayed, reference);
      if (!diff.within(settings, q.scalar_type())) {
        spdlog::warn(
            "cuda graphs: after {} replays, positions {} differ from the eager call (relative: log "
            "density {:.3g}, gradient {:.3g}; allowed {:.1g}, {:.1g}): this shape runs eagerly "
            "from now on",
            c.replays, key, diff.log_p, diff.grad, log_p_rtol(settings, q.scalar_type()),
            grad_rtol(settings, q.scalar_type()));
        fall_back(c, *stats);
        --stats->captured;
        return reference;
      }
      return replayed;
    }
    Captured& c = (*graphs)[key];
    ++stats->eager_calls;
    LogDensityValue reference;
    const int64_t reads = host_reads_during([&] { reference = eager(q); });
    if (reads > 0) {
      fall_back(c, *stats);
      spdlog::warn(
          "cuda graphs: the log density of positions {} read {} value(s) back to the host "
          "(.item(), nonzero): it cannot be captured, this shape runs eagerly",
          key, reads);
      return reference;
    }
    if (static_cast<int64_t>(graphs->size()) > settings.max_graphs) {
      fall_back(c, *stats);
      spdlog::info("cuda graphs: {} shapes captured already; positions {} run eagerly",
                   settings.max_graphs, key);
      return reference;
    }
    try {
      capture(c, eager, q, settings);
      const ReplayDifference diff =
          check_replay([&c](const torch::Tensor& x) { return replay(c, x); }, eager, q, reference);
      if (!diff.within(settings, q.scalar_type())) {
        spdlog::warn(
            "cuda graphs: the replay of positions {} differs from the eager call (relative: log "
            "density {:.3g}, gradient {:.3g}; allowed {:.1g}, {:.1g}): this shape runs eagerly",
            key, diff.log_p, diff.grad, log_p_rtol(settings, q.scalar_type()),
            grad_rtol(settings, q.scalar_type()));
        fall_back(c, *stats);
        return reference;
      }
    } catch (const std::exception& e) {
      spdlog::warn("cuda graphs: capturing positions {} failed ({}); this shape runs eagerly", key,
                   e.what());
      fall_back(c, *stats);
      return reference;
    }
    ++stats->captured;
    spdlog::debug("cuda graphs: captured the log density of positions {}", key);
    return reference;
  };
}

#else

bool cuda_graphs_compiled() {
  return false;
}

LogDensityFn cuda_graphed(LogDensityFn eager, CudaGraphSettings settings,
                          std::shared_ptr<CudaGraphStats> stats) {
  settings.validate();
  if (!stats) stats = std::make_shared<CudaGraphStats>();
  return [eager = std::move(eager), stats](const torch::Tensor& q) {
    ++stats->eager_calls;
    return eager(q);
  };
}

#endif

}  // namespace dslens::samplers

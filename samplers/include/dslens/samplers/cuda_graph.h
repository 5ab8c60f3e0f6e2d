// CUDA graphs of a log density and its gradient. On a GPU a call of the lens posterior costs its
// ~3,000 ATen operators' CPU dispatch (5-10 us each), not its arithmetic (docs/benchmarks.md,
// "On a GPU"): 12 ms for one image or sixteen. A CUDA graph records the kernels of one call once
// and replays them with a single launch, so a replay costs what the GPU computes. The wrapper
// captures one graph per input shape on the first call of that shape and checks the replay against
// eager calls on that call's positions and on the rows reversed (check_replay), and again every
// `recheck_every` replays; a shape whose capture fails or whose check fails runs eagerly from then
// on, with a warning. What a captured call may not do: read a value back to the host (.item(),
// nonzero: a first call that does is not captured at all, see host_reads_during), copy from host
// memory, or change shapes with its input's values (physics::set_epl_series_terms fixes the EPL's
// series for that reason). CPU positions, and builds against a CPU LibTorch, always run the eager
// function.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>

#include "dslens/samplers/log_density.h"

namespace dslens::samplers {

struct CudaGraphSettings {
  int64_t warmup_calls = 2;  // eager calls on the capture's stream first (cuBLAS, autograd threads)
  int64_t max_graphs = 4;    // shapes captured at most; calls of further shapes run eagerly
  // A replay must match the eager result within rtol times the largest |value| of each output.
  // The gradient's tolerance is wider in float32: at an optimum it is a sum of per-pixel terms
  // that nearly cancel, so the kernels' summation order moves it by far more than float32's
  // epsilon relative to its largest entry (replays of the bench's fit on an H200 differed from
  // eager calls by 1.1e-4 to 5.3e-3, docs/benchmarks.md "On a GPU, second run"); a graph that
  // reads stale inputs or constants is off by O(1), and its log density too.
  double log_p_rtol_float32 = 1e-4;
  double grad_rtol_float32 = 2e-2;
  double log_p_rtol_float64 = 1e-10;
  double grad_rtol_float64 = 1e-8;
  // Every this many replays of a shape, the eager function runs too and the two are compared
  // again (the replay's result is returned); a mismatch sends the shape back to eager calls.
  // 0: only at capture.
  int64_t recheck_every = 1000;
  void validate() const;
};

// How far a replay is from the eager call, for the log densities and the gradients apart: each
// the largest |difference| over the entries finite in both, relative to that output's largest
// finite |eager value|; infinity when the two are not finite at the same entries.
struct ReplayDifference {
  double log_p = 0.0;
  double grad = 0.0;
  bool within(const CudaGraphSettings& s, torch::ScalarType dtype) const;
};
ReplayDifference replay_difference(const LogDensityValue& replayed, const LogDensityValue& eager);

// The check of a fresh graph: `replayed` on q against `eager_at_q` (the eager call on q), then, for
// more than one row, `replayed` on q's rows reversed against `eager` on the same reversed rows (a
// graph that did not read its input would return the first answer again). The reversed rows are
// evaluated eagerly rather than taken from eager_at_q: the rows of a batch of several lenses are
// not interchangeable (row i is fitted to its own lens's image).
ReplayDifference check_replay(const LogDensityFn& replayed, const LogDensityFn& eager,
                              const torch::Tensor& q, const LogDensityValue& eager_at_q);

// The number of ATen operators that read a device value back to the host
// (aten::_local_scalar_dense, which .item() runs, and aten::nonzero) run by f, on any thread. A
// CUDA graph cannot contain them: the capture fails, and in CUDA's global capture mode the failed
// capture can leave the process unable to synchronise. The wrapper counts them on the first call
// of each shape and does not capture a shape that has any.
int64_t host_reads_during(const std::function<void()>& f);

// Whether this build can capture CUDA graphs (it was built against a CUDA LibTorch).
bool cuda_graphs_compiled();

// What the wrapper did so far, over all shapes.
struct CudaGraphStats {
  int64_t captured = 0;      // shapes replayed from a graph
  int64_t eager_shapes = 0;  // shapes left eager (capture or check failed, or max_graphs reached)
  int64_t replays = 0;
  int64_t eager_calls = 0;  // calls that ran the eager function (CPU positions included)
  int64_t rechecks = 0;     // replays compared with an eager call after the capture
};

// `eager` replayed from CUDA graphs as described above; `stats` (optional) is updated on every
// call.
LogDensityFn cuda_graphed(LogDensityFn eager, CudaGraphSettings settings = {},
                          std::shared_ptr<CudaGraphStats> stats = nullptr);

}  // namespace dslens::samplers

// CUDA graphs of a log density and its gradient. On a GPU a call of the lens posterior costs its
// ~3,000 ATen operators' CPU dispatch (5-10 us each), not its arithmetic (docs/benchmarks.md,
// "On a GPU"): 12 ms for one image or sixteen. A CUDA graph records the kernels of one call once
// and replays them with a single launch, so a replay costs what the GPU computes. The wrapper
// captures one graph per input shape on the first call of that shape and checks the replay against
// the eager result on that call's positions (and on the rows reversed, which a graph that ignored
// its input would get wrong), and again every `recheck_every` replays; a shape whose capture fails
// or whose check fails runs eagerly from then on, with a warning. What a captured call may not do:
// read a value back to the host (.item(), nonzero), copy from host memory, or change shapes with
// its input's values (physics::set_epl_series_terms fixes the EPL's series for that reason). CPU
// positions, and builds against a CPU LibTorch, always run the eager function.
#pragma once
#include <cstdint>
#include <memory>

#include "dslens/samplers/log_density.h"

namespace dslens::samplers {

struct CudaGraphSettings {
  int64_t warmup_calls = 2;  // eager calls on the capture's stream first (cuBLAS, autograd threads)
  int64_t max_graphs = 4;    // shapes captured at most; calls of further shapes run eagerly
  // A replay must match the eager result within rtol times the largest |value| of each output.
  double rtol_float32 = 1e-4;
  double rtol_float64 = 1e-10;
  // Every this many replays of a shape, the eager function runs too and the two are compared
  // again (the replay's result is returned); a mismatch sends the shape back to eager calls.
  // 0: only at capture.
  int64_t recheck_every = 1000;
  void validate() const;
};

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

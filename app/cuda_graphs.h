// CUDA graphs for the fit's log densities (samplers/cuda_graph.h): while a CudaGraphScope is
// active (a CUDA device, `sampler.cuda_graphs` on, a build against a CUDA LibTorch, and bounded
// EPL ellipticity priors), graphed_if_active wraps the MAP's objectives and the sampler's log
// density so that each shape is captured once and replayed. The scope fixes the EPL's series at
// the length the priors' largest |e| needs, since a captured call cannot read the batch's
// ellipticity back to choose it, and restores the per-batch choice when it ends.
#pragma once
#include <memory>

#include "dslens/model/lens_posterior.h"
#include "dslens/samplers/cuda_graph.h"

namespace dslens::app {

class CudaGraphScope {
 public:
  CudaGraphScope(const model::LensPosterior& posterior, bool enabled);
  ~CudaGraphScope();
  CudaGraphScope(const CudaGraphScope&) = delete;
  CudaGraphScope& operator=(const CudaGraphScope&) = delete;
  bool active() const { return active_; }

 private:
  bool active_ = false;
};

// f replayed from CUDA graphs while a CudaGraphScope is active, else f itself.
samplers::LogDensityFn graphed_if_active(samplers::LogDensityFn f,
                                         std::shared_ptr<samplers::CudaGraphStats> stats = nullptr);

}  // namespace dslens::app

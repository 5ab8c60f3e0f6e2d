// Rows of a batch that fits L lenses together are lens-major (model/lens_posterior.h): this
// spreads per-lens tensors over them.
#pragma once
#include <torch/torch.h>

namespace dslens::model {

// Each lens's entry [L, ...] repeated for its `per` rows, lens-major: [L * per, ...]. Not
// repeat_interleave, which reads its output size back from the device (a host sync, and nothing a
// CUDA graph can capture).
inline torch::Tensor per_row(const torch::Tensor& per_lens, int64_t per) {
  auto shape = per_lens.sizes().vec();
  shape.insert(shape.begin() + 1, per);
  auto out_shape = per_lens.sizes().vec();
  out_shape[0] *= per;
  return per_lens.unsqueeze(1).expand(shape).reshape(out_shape);
}

}  // namespace dslens::model

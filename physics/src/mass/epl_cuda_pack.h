// Packing tensors into the fused EPL CUDA kernels' arguments (epl_cuda.h), with the tensors the
// arguments point into. The packing does not depend on the device: epl_fused.cpp packs CUDA
// tensors for the kernels, the tests pack CPU tensors and run the kernels' bodies
// (epl_cuda_point.h) on the host.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "epl_cuda.h"

namespace dslens::physics::epl_cuda {

struct ForwardPack {
  ForwardArgs args;
  std::vector<torch::Tensor> inputs;  // what args points into: keep alive until the kernel ran
  torch::Tensor ax, ay;               // [B, N]
  torch::Tensor derivs;               // [11, B, N], or undefined without derivatives
};

// x, y: [B or 1, N or 1] of one floating dtype; params: theta_E, gamma, e1, e2, center_x,
// center_y, each [1] or [B] (any strides; converted to x's device and dtype where they differ).
ForwardPack pack_forward(const torch::Tensor& x, const torch::Tensor& y,
                         const std::vector<torch::Tensor>& params, int64_t B, bool with_derivs);

struct BackwardPack {
  BackwardArgs args;
  std::vector<torch::Tensor> inputs;
  torch::Tensor gx, gy;  // [B, N]
  torch::Tensor sums;    // [B, 6] float64, zeroed
};

// gax, gay: broadcastable to [B, N]; derivs: ForwardPack::derivs.
BackwardPack pack_backward(const torch::Tensor& gax, const torch::Tensor& gay,
                           const torch::Tensor& derivs);

}  // namespace dslens::physics::epl_cuda

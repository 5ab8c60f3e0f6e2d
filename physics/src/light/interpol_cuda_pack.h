// Packing tensors into the fused INTERPOL CUDA kernels' arguments (interpol_cuda.h), and the
// backward's zeroed gradient buffers. Device-independent: interpol.cpp packs CUDA tensors for the
// kernels, the tests pack CPU tensors and run the kernels' bodies (interpol_cuda_point.h) on the
// host.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "interpol_cuda.h"

namespace dslens::physics::interpol_cuda {

// image [B or 1, h, w], xs and ys [B or 1, N], affine [B or 1, 7]: contiguous, of one floating
// dtype, on one device; b the batch; taps 2 or 4.
Args pack(const torch::Tensor& image, const torch::Tensor& xs, const torch::Tensor& ys,
          const torch::Tensor& affine, int64_t b, int64_t taps);

// The backward's outputs, each the shape of its input: zeroed where the kernel adds (the stamp,
// shared rays, the map's float64 sums), uninitialised where it stores (batched rays).
struct Gradients {
  torch::Tensor image, x, y, affine;
};
Gradients gradient_buffers(const torch::Tensor& image, const torch::Tensor& xs,
                           const torch::Tensor& ys, const torch::Tensor& affine);

}  // namespace dslens::physics::interpol_cuda

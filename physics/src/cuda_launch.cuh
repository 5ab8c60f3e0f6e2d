// Launch helpers shared by the fused CUDA kernels (epl_cuda.cu, interpol_cuda.cu): the grid of
// (points, lenses), the error after a launch, and a warp's sum.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

namespace dslens::physics::cuda_launch {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxGridY = 65535;

// x over points (kThreads per block), y over lenses; kernels loop over lenses beyond the grid's y
// limit.
inline dim3 grid_for(int64_t lenses, int64_t points) {
  return dim3(static_cast<unsigned>((points + kThreads - 1) / kThreads),
              static_cast<unsigned>(std::min<int64_t>(lenses, kMaxGridY)));
}

// "" or the error of the last launch.
inline std::string status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

__device__ inline double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Adds each thread's s[0..K-1] over the block into out[0..K-1] (one atomicAdd per value and
// block). Every thread of the block must call it; `partial` is the block's [kWarps][K] scratch.
template <int K>
__device__ inline void block_sum_into(const double* s, double (*partial)[K], double* out) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int k = 0; k < K; ++k) {
    const double w = warp_sum(s[k]);
    if (lane == 0) partial[warp][k] = w;
  }
  __syncthreads();
  if (warp == 0) {
    for (int k = 0; k < K; ++k) {
      const double w = warp_sum(lane < kWarps ? partial[lane][k] : 0.0);
      if (lane == 0) atomicAdd(out + k, w);
    }
  }
  __syncthreads();  // partial is reused by the caller's next lens
}

}  // namespace dslens::physics::cuda_launch

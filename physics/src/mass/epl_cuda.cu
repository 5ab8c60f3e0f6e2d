// Fused EPL CUDA kernels: one thread per (lens, point) runs epl_point::evaluate, the scalar double
// version of the CPU's SIMD kernel (float32 tensors too are evaluated in double, as on the CPU;
// FP64 throughput on data-centre GPUs makes that cheap next to the launches it saves). The
// backward kernel contracts the saved derivatives with the incoming gradients and reduces the
// per-lens parameter gradients in each block (warp shuffles, then one double atomicAdd per block
// and parameter), so that the reduction costs no extra kernel.
#include <cuda_runtime.h>

#include "../cuda_launch.cuh"
#include "epl_cuda.h"
#include "epl_cuda_point.h"

namespace dslens::physics::epl_cuda {

namespace {

using cuda_launch::grid_for;
using cuda_launch::kThreads;
using cuda_launch::kWarps;
using cuda_launch::status;

// Grid: x over points, y over lenses (looping when B exceeds the grid's y limit).
template <typename T>
__global__ void forward_kernel(ForwardArgs a) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= a.N) return;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) forward_point<T>(a, b, n);
}

template <typename T>
__global__ void backward_kernel(BackwardArgs a) {
  __shared__ double partial[kWarps][6];
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    double s[6] = {0, 0, 0, 0, 0, 0};
    if (n < a.N) backward_point<T>(a, b, n, s);
    cuda_launch::block_sum_into<6>(s, partial, a.sums + b * 6);
  }
}

}  // namespace

std::string forward(const ForwardArgs& a, void* stream) {
  if (a.B <= 0 || a.N <= 0) return "";
  auto s = static_cast<cudaStream_t>(stream);
  if (a.float64)
    forward_kernel<double><<<grid_for(a.B, a.N), kThreads, 0, s>>>(a);
  else
    forward_kernel<float><<<grid_for(a.B, a.N), kThreads, 0, s>>>(a);
  return status();
}

std::string backward(const BackwardArgs& a, void* stream) {
  if (a.B <= 0 || a.N <= 0) return "";
  auto s = static_cast<cudaStream_t>(stream);
  if (a.float64)
    backward_kernel<double><<<grid_for(a.B, a.N), kThreads, 0, s>>>(a);
  else
    backward_kernel<float><<<grid_for(a.B, a.N), kThreads, 0, s>>>(a);
  return status();
}

}  // namespace dslens::physics::epl_cuda

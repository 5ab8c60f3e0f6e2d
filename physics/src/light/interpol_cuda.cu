// Fused INTERPOL CUDA kernels: one thread per (lens, ray) runs interpol_taps.h, the per-point code
// of the CPU kernels. The backward scatters the image's gradient with atomicAdd (rays of one lens
// land on overlapping taps) and reduces the 7 map parameters' gradients per block (warp shuffles,
// then one double atomicAdd per block and column).
#include <cuda_runtime.h>

#include "../cuda_launch.cuh"
#include "interpol_cuda.h"
#include "interpol_cuda_point.h"

namespace dslens::physics::interpol_cuda {

namespace {

using cuda_launch::grid_for;
using cuda_launch::kThreads;
using cuda_launch::kWarps;
using cuda_launch::status;

template <typename T, int K>
__global__ void forward_kernel(View<T> v, int64_t B, T* out) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= v.N) return;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) forward_point<T, K>(v, b, n, out);
}

template <typename T, int K>
__global__ void backward_kernel(View<T> v, int64_t B, const T* grad, T* g_image, T* g_x, T* g_y,
                                double* g_affine) {
  __shared__ double partial[kWarps][kAffineColumns];
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const auto add = [](T* address, T value) { atomicAdd(address, value); };
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    double s[kAffineColumns] = {0, 0, 0, 0, 0, 0, 0};
    if (n < v.N) backward_point<T, K>(v, b, n, grad, g_image, g_x, g_y, s, add);
    cuda_launch::block_sum_into<kAffineColumns>(
        s, partial, g_affine + (v.affine_batched ? b * kAffineColumns : 0));
  }
}

template <typename T>
void launch_forward(const Args& a, void* out, cudaStream_t s) {
  const View<T> v(a);
  if (a.taps == 4)
    forward_kernel<T, 4><<<grid_for(a.B, a.N), kThreads, 0, s>>>(v, a.B, static_cast<T*>(out));
  else
    forward_kernel<T, 2><<<grid_for(a.B, a.N), kThreads, 0, s>>>(v, a.B, static_cast<T*>(out));
}

template <typename T>
void launch_backward(const Args& a, const void* grad, void* g_image, void* g_x, void* g_y,
                     double* g_affine, cudaStream_t s) {
  const View<T> v(a);
  auto g = static_cast<const T*>(grad);
  auto gi = static_cast<T*>(g_image);
  auto gx = static_cast<T*>(g_x);
  auto gy = static_cast<T*>(g_y);
  if (a.taps == 4)
    backward_kernel<T, 4><<<grid_for(a.B, a.N), kThreads, 0, s>>>(v, a.B, g, gi, gx, gy, g_affine);
  else
    backward_kernel<T, 2><<<grid_for(a.B, a.N), kThreads, 0, s>>>(v, a.B, g, gi, gx, gy, g_affine);
}

}  // namespace

std::string forward(const Args& a, void* out, void* stream) {
  if (a.B <= 0 || a.N <= 0) return "";
  auto s = static_cast<cudaStream_t>(stream);
  if (a.float64)
    launch_forward<double>(a, out, s);
  else
    launch_forward<float>(a, out, s);
  return status();
}

std::string backward(const Args& a, const void* grad, void* g_image, void* g_x, void* g_y,
                     double* g_affine, void* stream) {
  if (a.B <= 0 || a.N <= 0) return "";
  auto s = static_cast<cudaStream_t>(stream);
  if (a.float64)
    launch_backward<double>(a, grad, g_image, g_x, g_y, g_affine, s);
  else
    launch_backward<float>(a, grad, g_image, g_x, g_y, g_affine, s);
  return status();
}

}  // namespace dslens::physics::interpol_cuda

// Fused EPL CUDA kernels: one thread per (lens, point) runs epl_point::evaluate, the scalar double
// version of the CPU's SIMD kernel (float32 tensors too are evaluated in double, as on the CPU;
// FP64 throughput on data-centre GPUs makes that cheap next to the launches it saves). The
// backward kernel contracts the saved derivatives with the incoming gradients and reduces the
// per-lens parameter gradients in each block (warp shuffles, then one double atomicAdd per block
// and parameter), so that the reduction costs no extra kernel.
#include <cuda_runtime.h>

#include "../cuda_launch.cuh"
#include "epl_cuda.h"
#include "epl_point.h"

namespace dslens::physics::epl_cuda {

namespace {

using cuda_launch::grid_for;
using cuda_launch::kThreads;
using cuda_launch::kWarps;
using cuda_launch::status;

template <typename T>
__device__ double at(const Strided& s, int64_t b) {
  return static_cast<double>(static_cast<const T*>(s.data)[b * s.stride]);
}

template <typename T>
__device__ double at(const Coords& c, int64_t b, int64_t n) {
  return static_cast<double>(
      static_cast<const T*>(c.data)[b * c.batch_stride + n * c.point_stride]);
}

// Grid: x over points, y over lenses (looping when B exceeds the grid's y limit).
template <typename T>
__global__ void forward_kernel(ForwardArgs a) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= a.N) return;
  T* ax = static_cast<T*>(a.ax);
  T* ay = static_cast<T*>(a.ay);
  T* derivs = static_cast<T*>(a.derivs);
  const int64_t plane = a.B * a.N;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    const epl_point::Lens k = epl_point::make_lens(at<T>(a.theta_E, b), at<T>(a.gamma, b),
                                                   at<T>(a.e1, b), at<T>(a.e2, b), a.floor, a.eps);
    const double dx = at<T>(a.x, b, n) - at<T>(a.center_x, b);
    const double dy = at<T>(a.y, b, n) - at<T>(a.center_y, b);
    double out[epl_point::kNumOutputs];
    epl_point::evaluate(k, dx, dy, derivs != nullptr, out);
    const int64_t i = b * a.N + n;
    ax[i] = static_cast<T>(out[0]);
    ay[i] = static_cast<T>(out[1]);
    if (derivs == nullptr) continue;
    for (int d = 0; d < epl_point::kNumDerivs; ++d)
      derivs[d * plane + i] = static_cast<T>(out[2 + d]);
  }
}

template <typename T>
__global__ void backward_kernel(BackwardArgs a) {
  __shared__ double partial[kWarps][6];
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const T* gax = static_cast<const T*>(a.gax);
  const T* gay = static_cast<const T*>(a.gay);
  const T* d = static_cast<const T*>(a.derivs);
  T* gx = static_cast<T*>(a.gx);
  T* gy = static_cast<T*>(a.gy);
  const int64_t plane = a.B * a.N;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    double s[6] = {0, 0, 0, 0, 0, 0};
    if (n < a.N) {
      const int64_t i = b * a.N + n;
      const double g1 = gax[i], g2 = gay[i];
      const double jxx = d[i], jxy = d[plane + i], jyy = d[2 * plane + i];
      const double vx = g1 * jxx + g2 * jxy, vy = g1 * jxy + g2 * jyy;
      gx[i] = static_cast<T>(vx);
      gy[i] = static_cast<T>(vy);
      for (int k = 0; k < 4; ++k)
        s[k] = g1 * d[(3 + 2 * k) * plane + i] + g2 * d[(4 + 2 * k) * plane + i];
      s[4] = -vx;
      s[5] = -vy;
    }
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

// Fused INTERPOL CUDA kernels: one thread per (lens, ray) runs interpol_taps.h, the per-point code
// of the CPU kernels. The backward scatters the image's gradient with atomicAdd (rays of one lens
// land on overlapping taps) and reduces the 7 map parameters' gradients per block (warp shuffles,
// then one double atomicAdd per block and column).
#include <cuda_runtime.h>

#include "../cuda_launch.cuh"
#include "interpol_cuda.h"
#include "interpol_taps.h"

namespace dslens::physics::interpol_cuda {

namespace {

using interpol_taps::Axis;
using interpol_taps::locate_axis;
using interpol_taps::sample_taps;
using interpol_taps::scatter_taps;

using cuda_launch::grid_for;
using cuda_launch::kThreads;
using cuda_launch::kWarps;
using cuda_launch::status;
enum Column { kA00, kA01, kA10, kA11, kCx, kCy, kAmp };

template <typename T>
struct View {
  const T *image, *x, *y, *affine;
  int64_t N, h, w;
  bool image_batched, points_batched, affine_batched;
  explicit View(const Args& a)
      : image(static_cast<const T*>(a.image)),
        x(static_cast<const T*>(a.x)),
        y(static_cast<const T*>(a.y)),
        affine(static_cast<const T*>(a.affine)),
        N(a.N),
        h(a.h),
        w(a.w),
        image_batched(a.image_batched),
        points_batched(a.points_batched),
        affine_batched(a.affine_batched) {}
  __device__ const T* image_of(int64_t b) const { return image + (image_batched ? b * h * w : 0); }
  __device__ int64_t point(int64_t b, int64_t n) const { return (points_batched ? b * N : 0) + n; }
  __device__ const T* affine_of(int64_t b) const {
    return affine + (affine_batched ? b * kAffineColumns : 0);
  }
  // Ray n of lens b: its offsets from the map's centre and its taps; false when no tap is inside.
  template <int K>
  __device__ bool locate(int64_t b, int64_t n, T& dx, T& dy, Axis<T, K>& ac, Axis<T, K>& ar) const {
    const T* a = affine_of(b);
    const int64_t p = point(b, n);
    dx = x[p] - a[kCx];
    dy = y[p] - a[kCy];
    const T col = a[kA00] * dx + a[kA01] * dy + T(0.5) * T(w - 1);
    const T row = a[kA10] * dx + a[kA11] * dy + T(0.5) * T(h - 1);
    return locate_axis(col, w, ac) && locate_axis(row, h, ar);
  }
};

template <typename T, int K>
__global__ void forward_kernel(View<T> v, int64_t B, T* out) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= v.N) return;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    T dx, dy, unused_col, unused_row;
    Axis<T, K> ac, ar;
    out[b * v.N + n] =
        v.locate(b, n, dx, dy, ac, ar)
            ? v.affine_of(b)[kAmp] *
                  sample_taps<T, K, false>(v.image_of(b), v.h, v.w, ac, ar, unused_col, unused_row)
            : T(0);
  }
}

template <typename T, int K>
__global__ void backward_kernel(View<T> v, int64_t B, const T* grad, T* g_image, T* g_x, T* g_y,
                                double* g_affine) {
  __shared__ double partial[kWarps][kAffineColumns];
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    double s[kAffineColumns] = {0, 0, 0, 0, 0, 0, 0};
    if (n < v.N) {
      const T* a = v.affine_of(b);
      const int64_t p = v.point(b, n);
      T dx, dy;
      Axis<T, K> ac, ar;
      if (v.locate(b, n, dx, dy, ac, ar)) {
        const T gk = grad[b * v.N + n], ga = gk * a[kAmp];
        T d_col, d_row;
        const T value = sample_taps<T, K, true>(v.image_of(b), v.h, v.w, ac, ar, d_col, d_row);
        const T gc = ga * d_col, gr = ga * d_row;
        const T gx = a[kA00] * gc + a[kA10] * gr, gy = a[kA01] * gc + a[kA11] * gr;
        if (v.points_batched) {
          g_x[p] = gx;
          g_y[p] = gy;
        } else {
          atomicAdd(g_x + p, gx);
          atomicAdd(g_y + p, gy);
        }
        s[kA00] = gc * dx;
        s[kA01] = gc * dy;
        s[kA10] = gr * dx;
        s[kA11] = gr * dy;
        s[kCx] = -gx;
        s[kCy] = -gy;
        s[kAmp] = gk * value;
        T* gi = g_image + (v.image_batched ? b * v.h * v.w : 0);
        scatter_taps(v.h, v.w, ac, ar, ga, [gi](int64_t i, T add) { atomicAdd(gi + i, add); });
      } else if (v.points_batched) {
        g_x[p] = T(0);
        g_y[p] = T(0);
      }
    }
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

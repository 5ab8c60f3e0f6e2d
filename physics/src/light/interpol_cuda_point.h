// The body of each thread of the fused INTERPOL CUDA kernels (interpol_cuda.cu), one (lens b,
// ray n) at a time, as host-and-device code: the kernels call it on the GPU, and the CPU tests
// call it in a loop over (b, n) on arguments packed from CPU tensors (interpol_cuda_pack.h), so
// the indexing, the batch broadcasting and the gradients' layout a GPU runs are checked on a
// machine without one. Only the launch and the block reduction of the map's gradients stay
// GPU-only.
#pragma once

#include <cstdint>

#include "../host_device.h"
#include "interpol_cuda.h"
#include "interpol_taps.h"

namespace dslens::physics::interpol_cuda {

// Typed pointers and shapes of Args.
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
  DSLENS_HOST_DEVICE int64_t image_offset(int64_t b) const { return image_batched ? b * h * w : 0; }
  DSLENS_HOST_DEVICE int64_t point(int64_t b, int64_t n) const {
    return (points_batched ? b * N : 0) + n;
  }
  DSLENS_HOST_DEVICE const T* affine_of(int64_t b) const {
    return affine + (affine_batched ? b * kAffineColumns : 0);
  }
  // Ray n of lens b: its offsets from the map's centre and its taps; false when no tap is inside.
  template <int K>
  DSLENS_HOST_DEVICE bool locate(int64_t b, int64_t n, T& dx, T& dy, interpol_taps::Axis<T, K>& ac,
                                 interpol_taps::Axis<T, K>& ar) const {
    const T* a = affine_of(b);
    const int64_t p = point(b, n);
    dx = x[p] - a[kCx];
    dy = y[p] - a[kCy];
    const T col = a[kA00] * dx + a[kA01] * dy + T(0.5) * T(w - 1);
    const T row = a[kA10] * dx + a[kA11] * dy + T(0.5) * T(h - 1);
    return interpol_taps::locate_axis(col, w, ac) && interpol_taps::locate_axis(row, h, ar);
  }
};

// out[b * N + n]: the amplitude times the stamp interpolated at ray n of lens b.
template <typename T, int K>
DSLENS_HOST_DEVICE inline void forward_point(const View<T>& v, int64_t b, int64_t n, T* out) {
  T dx, dy, unused_col, unused_row;
  interpol_taps::Axis<T, K> ac, ar;
  out[b * v.N + n] = v.locate(b, n, dx, dy, ac, ar)
                         ? v.affine_of(b)[kAmp] * interpol_taps::sample_taps<T, K, false>(
                                                      v.image + v.image_offset(b), v.h, v.w, ac, ar,
                                                      unused_col, unused_row)
                         : T(0);
}

// The backward of ray n of lens b for the incoming gradient grad [B, N]: the stamp's gradient
// through add(address, value) (an atomicAdd on a GPU: rays share taps, lenses may share a stamp),
// the ray's gradients into g_x, g_y (stored where the rays are batched, added where they are
// shared), and its contributions to the map's 7 gradients into s[0..6].
template <typename T, int K, typename Add>
DSLENS_HOST_DEVICE inline void backward_point(const View<T>& v, int64_t b, int64_t n, const T* grad,
                                              T* g_image, T* g_x, T* g_y, double* s, Add add) {
  for (int k = 0; k < kAffineColumns; ++k) s[k] = 0.0;
  const T* a = v.affine_of(b);
  const int64_t p = v.point(b, n);
  T dx, dy;
  interpol_taps::Axis<T, K> ac, ar;
  if (!v.locate(b, n, dx, dy, ac, ar)) {
    if (v.points_batched) {
      g_x[p] = T(0);
      g_y[p] = T(0);
    }
    return;
  }
  const T gk = grad[b * v.N + n], ga = gk * a[kAmp];
  T d_col, d_row;
  const T value = interpol_taps::sample_taps<T, K, true>(v.image + v.image_offset(b), v.h, v.w, ac,
                                                         ar, d_col, d_row);
  const T gc = ga * d_col, gr = ga * d_row;
  const T gx = a[kA00] * gc + a[kA10] * gr, gy = a[kA01] * gc + a[kA11] * gr;
  if (v.points_batched) {
    g_x[p] = gx;
    g_y[p] = gy;
  } else {
    add(g_x + p, gx);
    add(g_y + p, gy);
  }
  s[kA00] = gc * dx;
  s[kA01] = gc * dy;
  s[kA10] = gr * dx;
  s[kA11] = gr * dy;
  s[kCx] = -gx;
  s[kCy] = -gy;
  s[kAmp] = gk * value;
  T* gi = g_image + v.image_offset(b);
  interpol_taps::scatter_taps(v.h, v.w, ac, ar, ga, [gi, add](int64_t i, T x) { add(gi + i, x); });
}

}  // namespace dslens::physics::interpol_cuda

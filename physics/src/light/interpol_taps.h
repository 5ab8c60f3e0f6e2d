// The taps of one point's pixel interpolation (INTERPOL's bilinear, INTERPOL_BICUBIC's Keys
// cubic convolution), as scalar code that compiles for both the host and a CUDA device: the CPU
// kernels of interpol.cpp and the CUDA kernels of interpol_cuda.cu share it, so the CPU tests
// check the arithmetic the GPU runs. No LibTorch here: nvcc compiles this header without it.
//
// Pixel (r, c) of an h x w image sits at col = c, row = r; a point at (col, row) reads the K x K
// taps around it (K = 2 or 4 per axis; tap j of an axis at floor(pos) + j - (K/2 - 1)), with the
// image zero outside.
#pragma once

#include <cmath>
#include <cstdint>

#include "../host_device.h"

namespace dslens::physics::interpol_taps {

// Keys (1981, IEEE Trans. ASSP 29, 1153) cubic convolution: W(s) = (a + 2)|s|^3 - (a + 3)|s|^2 + 1
// for |s| <= 1, a|s|^3 - 5a|s|^2 + 8a|s| - 4a for 1 < |s| < 2, 0 beyond. Its value and first
// derivative are continuous for every a, so the image and its gradient in the coordinates are;
// bilinear interpolation's gradient jumps at every pixel row and column. a = -1/2 (Catmull-Rom) is
// the only a that reproduces linear and quadratic images exactly (Keys's third-order accuracy);
// grid_sample's and OpenCV's a = -0.75 moves a linear ramp by up to 0.08 pixel (the first version
// of Interpol.BicubicReproducesQuadraticImagesAndKeysKernel), so the bicubic path is ours on every
// device.
constexpr double kCubicA = -0.5;

// W at the 4 taps of fractional position t in [0, 1) (distances 1 + t, t, 1 - t, 2 - t) into
// w[0..3], for a scalar V = S or a tensor V with scalar constants S.
template <typename V, typename S>
DSLENS_HOST_DEVICE inline void cubic_weights(const V& t, V* w) {
  const S a = S(kCubicA);
  const auto inner = [a](const V& s) -> V { return ((a + S(2)) * s - (a + S(3))) * s * s + S(1); };
  const auto outer = [a](const V& s) -> V {
    return ((a * s - S(5) * a) * s + S(8) * a) * s - S(4) * a;
  };
  w[0] = outer(t + S(1));
  w[1] = inner(t);
  w[2] = inner(S(1) - t);
  w[3] = outer(S(2) - t);
}

// One axis of a point: the first tap's pixel, the taps' weights and their derivatives in the
// position, and whether each tap is inside the image. No member initialisers: locate_axis()
// writes every field (zero-filling a point's taps and weights per point was a fifth of the CPU's
// bicubic backward's time, perf in session 25).
template <typename T, int K>
struct Axis {
  int64_t first;
  T w[K], d[K];
  bool ok[K];
};

// False when every tap is outside the image (also for NaN; and keeps the integer conversion in
// range).
template <typename T, int K>
DSLENS_HOST_DEVICE inline bool locate_axis(T pos, int64_t size, Axis<T, K>& a) {
  constexpr int64_t off = K / 2 - 1;
  const T f = floor(pos);
  if (!(f >= T(-(K / 2)) && f <= T(size - 1 + off))) return false;
  a.first = static_cast<int64_t>(f) - off;
  const T t = pos - f;
  if constexpr (K == 2) {
    a.w[0] = T(1) - t;
    a.w[1] = t;
    a.d[0] = T(-1);
    a.d[1] = T(1);
  } else {
    const T A = T(kCubicA);
    // dW/ds on each branch; the taps' distances move as +t, +t, -t, -t.
    const auto inner_d = [A](T s) { return (T(3) * (A + T(2)) * s - T(2) * (A + T(3))) * s; };
    const auto outer_d = [A](T s) { return (T(3) * A * s - T(10) * A) * s + T(8) * A; };
    cubic_weights<T, T>(t, a.w);
    a.d[0] = outer_d(t + T(1));
    a.d[1] = inner_d(t);
    a.d[2] = -inner_d(T(1) - t);
    a.d[3] = -outer_d(T(2) - t);
  }
  for (int j = 0; j < K; ++j) a.ok[j] = a.first + j >= 0 && a.first + j < size;
  return true;
}

// Whether every tap of the cell is inside the image (most of the points that land on the stamp):
// those take the loops without per-tap checks.
template <typename T, int K>
DSLENS_HOST_DEVICE inline bool interior(int64_t h, int64_t w, const Axis<T, K>& c,
                                        const Axis<T, K>& r) {
  return c.first >= 0 && c.first + K <= w && r.first >= 0 && r.first + K <= h;
}

// The interpolated value at taps (c, r) and, with kDerivatives, its derivatives in col and row.
// Taps outside the image read 0 (they are skipped: the sums are those of the zero-padded image).
template <typename T, int K, bool kDerivatives>
DSLENS_HOST_DEVICE inline T sample_taps(const T* im, int64_t h, int64_t w, const Axis<T, K>& c,
                                        const Axis<T, K>& r, T& d_col, T& d_row) {
  const bool inside = interior(h, w, c, r);
  T value = 0;
  d_col = 0;
  d_row = 0;
  for (int i = 0; i < K; ++i) {
    if (!inside && !r.ok[i]) continue;
    const T* line = im + (c.first + (r.first + i) * w);
    T across = 0, across_d = 0;
    for (int j = 0; j < K; ++j) {
      const T v = inside || c.ok[j] ? line[j] : T(0);
      across += c.w[j] * v;
      if constexpr (kDerivatives) across_d += c.d[j] * v;
    }
    value += r.w[i] * across;
    if constexpr (kDerivatives) {
      d_col += r.w[i] * across_d;
      d_row += r.d[i] * across;
    }
  }
  return value;
}

// add(pixel index, g x weight) for each tap inside the image: the adjoint of sample_taps's value
// (add is a plain += on the CPU, an atomicAdd on a GPU).
template <typename T, int K, typename Add>
DSLENS_HOST_DEVICE inline void scatter_taps(int64_t h, int64_t w, const Axis<T, K>& c,
                                            const Axis<T, K>& r, T g, Add add) {
  const bool inside = interior(h, w, c, r);
  for (int i = 0; i < K; ++i) {
    if (!inside && !r.ok[i]) continue;
    const int64_t line = c.first + (r.first + i) * w;
    const T wi = g * r.w[i];
    for (int j = 0; j < K; ++j)
      if (inside || c.ok[j]) add(line + j, wi * c.w[j]);
  }
}

}  // namespace dslens::physics::interpol_taps

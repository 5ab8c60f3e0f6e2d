// The body of each thread of the fused EPL CUDA kernels (epl_cuda.cu), one (lens b, point n) at a
// time, as host-and-device code: the kernels call it on the GPU, and the CPU tests call it in a
// loop over (b, n) on arguments packed from CPU tensors (epl_cuda_pack.h), so the indexing,
// strides and derivative layout a GPU runs are checked on a machine without one. Only the launch
// and the block reduction of the parameter sums stay GPU-only.
#pragma once

#include <cstdint>

#include "../host_device.h"
#include "epl_cuda.h"
#include "epl_point.h"

namespace dslens::physics::epl_cuda {

template <typename T>
DSLENS_HOST_DEVICE inline double value_at(const Strided& s, int64_t b) {
  return static_cast<double>(static_cast<const T*>(s.data)[b * s.stride]);
}

template <typename T>
DSLENS_HOST_DEVICE inline double value_at(const Coords& c, int64_t b, int64_t n) {
  return static_cast<double>(
      static_cast<const T*>(c.data)[b * c.batch_stride + n * c.point_stride]);
}

// Writes alpha (and the 11 derivatives where a.derivs is set) of point n of lens b.
template <typename T>
DSLENS_HOST_DEVICE inline void forward_point(const ForwardArgs& a, int64_t b, int64_t n) {
  const epl_point::Lens k =
      epl_point::make_lens(value_at<T>(a.theta_E, b), value_at<T>(a.gamma, b), value_at<T>(a.e1, b),
                           value_at<T>(a.e2, b), a.floor, a.eps);
  const double dx = value_at<T>(a.x, b, n) - value_at<T>(a.center_x, b);
  const double dy = value_at<T>(a.y, b, n) - value_at<T>(a.center_y, b);
  T* derivs = static_cast<T*>(a.derivs);
  double out[epl_point::kNumOutputs];
  epl_point::evaluate(k, dx, dy, derivs != nullptr, out);
  const int64_t i = b * a.N + n, plane = a.B * a.N;
  static_cast<T*>(a.ax)[i] = static_cast<T>(out[0]);
  static_cast<T*>(a.ay)[i] = static_cast<T>(out[1]);
  if (derivs == nullptr) return;
  for (int d = 0; d < epl_point::kNumDerivs; ++d)
    derivs[d * plane + i] = static_cast<T>(out[2 + d]);
}

// Writes the gradients wrt x and y of point n of lens b, and its contributions to the lens's
// parameter gradients into s[0..5] (theta_E, gamma, e1, e2, center_x, center_y).
template <typename T>
DSLENS_HOST_DEVICE inline void backward_point(const BackwardArgs& a, int64_t b, int64_t n,
                                              double* s) {
  const T* d = static_cast<const T*>(a.derivs);
  const int64_t i = b * a.N + n, plane = a.B * a.N;
  const double g1 = static_cast<const T*>(a.gax)[i], g2 = static_cast<const T*>(a.gay)[i];
  const double jxx = d[i], jxy = d[plane + i], jyy = d[2 * plane + i];
  const double vx = g1 * jxx + g2 * jxy, vy = g1 * jxy + g2 * jyy;
  static_cast<T*>(a.gx)[i] = static_cast<T>(vx);
  static_cast<T*>(a.gy)[i] = static_cast<T>(vy);
  for (int k = 0; k < 4; ++k)
    s[k] = g1 * d[(3 + 2 * k) * plane + i] + g2 * d[(4 + 2 * k) * plane + i];
  s[4] = -vx;
  s[5] = -vy;
}

}  // namespace dslens::physics::epl_cuda

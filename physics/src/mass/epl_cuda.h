// Launchers of the fused EPL CUDA kernels (epl_cuda.cu): the deflection and its 11 derivatives in
// one kernel, and the backward contraction with the per-lens parameter sums in another, where the
// tensor-op series costs a few hundred kernel launches per forward and backward (on a GPU the
// launches, not the arithmetic, set the time of one lens's log density). Plain C++, no LibTorch
// and no CUDA types, so that epl_fused.cpp includes it with or without a CUDA toolkit; built only
// with DSLENS_WITH_CUDA_KERNELS. Pointers are device pointers of float (float64 = false) or double.
#pragma once

#include <cstdint>
#include <string>

namespace dslens::physics::epl_cuda {

// A [B] parameter: element b is data[b * stride]; stride 0 broadcasts one value.
struct Strided {
  const void* data = nullptr;
  int64_t stride = 0;
};

// A [B or 1, N or 1] coordinate: element (b, n) is data[b * batch_stride + n * point_stride].
struct Coords {
  const void* data = nullptr;
  int64_t batch_stride = 0, point_stride = 0;
};

struct ForwardArgs {
  bool float64 = true;
  int64_t B = 0, N = 0;
  Coords x, y;
  Strided theta_E, gamma, e1, e2, center_x, center_y;
  double floor = 0, eps = 0;  // mass::kEllipticityFloor, mass::epl_series_eps(dtype)
  void* ax = nullptr;         // [B, N], contiguous
  void* ay = nullptr;
  void* derivs = nullptr;  // [11, B, N], contiguous (epl_point's order), or null: alpha only
};

struct BackwardArgs {
  bool float64 = true;
  int64_t B = 0, N = 0;
  const void* gax = nullptr;  // incoming gradients, [B, N] contiguous
  const void* gay = nullptr;
  const void* derivs = nullptr;  // [11, B, N], from forward
  void* gx = nullptr;            // [B, N]: gradients wrt x and y
  void* gy = nullptr;
  double* sums = nullptr;  // [B, 6], zeroed: theta_E, gamma, e1, e2, center_x, center_y
};

// Launch on `stream` (a cudaStream_t; the caller's current stream, so that CUDA graphs capture the
// launch). Return "" or CUDA's error string.
std::string forward(const ForwardArgs& a, void* stream);
std::string backward(const BackwardArgs& a, void* stream);

}  // namespace dslens::physics::epl_cuda

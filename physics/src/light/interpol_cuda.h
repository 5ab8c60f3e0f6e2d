// Launchers of the fused INTERPOL CUDA kernels (interpol_cuda.cu): the pixelated source sampled
// at every ray (bilinear or bicubic, with the affine map and amplitude on the fly) in one kernel,
// and its backward (gradients wrt the image, the rays and the 7 map parameters) in another, where
// the bicubic gather path costs a few hundred kernel launches per forward and backward. Plain
// C++, no LibTorch and no CUDA types; built only with DSLENS_WITH_CUDA_KERNELS. Pointers are
// device pointers of float (float64 = false) or double, contiguous.
#pragma once

#include <cstdint>
#include <string>

namespace dslens::physics::interpol_cuda {

// The affine map's columns, for interpol.cpp and the kernels alike:
//   x_pix = a00 (x - cx) + a01 (y - cy),   y_pix = a10 (x - cx) + a11 (y - cy),   value * amp.
enum Column : int64_t { kA00, kA01, kA10, kA11, kCx, kCy, kAmp, kAffineColumns };

struct Args {
  bool float64 = true;
  int taps = 4;  // per axis: 2 bilinear, 4 bicubic
  int64_t B = 0, N = 0, h = 0, w = 0;
  const void* image = nullptr;  // [B or 1, h, w]
  bool image_batched = false;
  const void* x = nullptr;  // [B or 1, N]
  const void* y = nullptr;
  bool points_batched = false;
  const void* affine = nullptr;  // [B or 1, 7]
  bool affine_batched = false;
};

// out: [B, N].
std::string forward(const Args& a, void* out, void* stream);

// grad: [B, N]. g_image [B or 1, h, w], g_x and g_y [B or 1, N] (zeroed where not batched: the
// batch's contributions are added atomically) and g_affine [B or 1, 7] in double, all zeroed
// except batched g_x and g_y.
std::string backward(const Args& a, const void* grad, void* g_image, void* g_x, void* g_y,
                     double* g_affine, void* stream);

}  // namespace dslens::physics::interpol_cuda

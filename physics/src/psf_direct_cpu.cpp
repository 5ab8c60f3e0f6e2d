// Direct PSF convolution on the CPU: each output is a sum over the kernel's taps, computed on a
// zero-padded copy of the image in register blocks of 2 rows x 4 SIMD vectors (2 x 32 float or
// 2 x 16 double outputs) that stay in registers over all taps. For a PSF of a few hundred taps on a
// 100x100 image this is about 1.7M multiply-adds, several times cheaper than the FFT's 120x120
// transforms forward and backward (docs/benchmarks.md, session 18).
//
// Convolution (not correlation, as scipy.signal.fftconvolve): out[y, x] = sum_ij K[i, j]
// img[y + ph - i, x + pw - j] = sum_ij Kf[i, j] P[y + i, x + j] with Kf the flipped kernel and P
// the image padded by (ph, pw) = (kh / 2, kw / 2). Its adjoint is the same convolution with the
// kernel flipped, so backward calls forward again and stays differentiable.
#include "psf_direct_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "dslens/core/simd.h"

namespace dslens::physics::psf_detail {

namespace {

// 17 x 17; larger kernels go by FFT (16 x 100 x 100 images, forward + backward, 1 thread: 15 x 15
// 3.8 ms direct vs 5.9 ms FFT, 21 x 21 6.8 ms vs 5.6 ms).
constexpr int64_t kDirectCpuMaxTaps = 289;
constexpr int kBlockVectors = 4;

using torch::Tensor;

// NR output rows from y of one item: out[r * w + x] = sum_ij kf_ij P[(y + r + i) * wp + x + j],
// x < w. kf holds each tap kf_ij repeated over a vector's lanes, at kf + (i * kw + j) * L (a load,
// not a broadcast, in the inner loop; plain T storage, as std::vector need not align 32-byte
// vectors).
// NR rows x kBlockVectors vectors are 8 independent accumulators: enough to cover the FMA's
// latency. P has rows of wp >= round_up(w, block) + kw - 1 elements, so whole blocks never read
// past it.
template <typename T, int NR>
DSLENS_INLINE void correlate_rows(const T* P, int64_t wp, const T* kf, int64_t kh, int64_t kw,
                                  int64_t y, int64_t w, T* out) {
  using V = simd::Vec<T>;
  constexpr int L = simd::kLanes<T>;
  constexpr int64_t block = kBlockVectors * L;
  for (int64_t x0 = 0; x0 < w; x0 += block) {
    V acc[NR][kBlockVectors];
    for (int r = 0; r < NR; ++r)
      for (int v = 0; v < kBlockVectors; ++v) acc[r][v] = V{};
    for (int64_t i = 0; i < kh; ++i) {
      const T* row = P + (y + i) * wp + x0;
      const T* ki = kf + i * kw * L;
      for (int64_t j = 0; j < kw; ++j) {
        const V kij = simd::load(ki + j * L);
        for (int r = 0; r < NR; ++r)
          for (int v = 0; v < kBlockVectors; ++v)
            acc[r][v] += kij * simd::load(row + r * wp + j + v * L);
      }
    }
    const int64_t n = std::min(block, w - x0);
    for (int r = 0; r < NR; ++r) {
      T tmp[block];
      for (int v = 0; v < kBlockVectors; ++v) simd::store(tmp + v * L, acc[r][v]);
      std::copy(tmp, tmp + n, out + r * w + x0);
    }
  }
}

// Rows [y0, y1) of one item, two at a time.
template <typename T>
DSLENS_INLINE void correlate_range(const T* P, int64_t wp, const T* kf, int64_t kh, int64_t kw,
                                   int64_t y0, int64_t y1, int64_t w, T* out) {
  int64_t y = y0;
  for (; y + 2 <= y1; y += 2) correlate_rows<T, 2>(P, wp, kf, kh, kw, y, w, out + y * w);
  if (y < y1) correlate_rows<T, 1>(P, wp, kf, kh, kw, y, w, out + y * w);
}

// One clone pair per dtype (target_clones needs a function, not a template).
DSLENS_CPU_CLONES void correlate_range_cloned(const float* P, int64_t wp, const float* kf,
                                              int64_t kh, int64_t kw, int64_t y0, int64_t y1,
                                              int64_t w, float* out) {
  correlate_range(P, wp, kf, kh, kw, y0, y1, w, out);
}
DSLENS_CPU_CLONES void correlate_range_cloned(const double* P, int64_t wp, const double* kf,
                                              int64_t kh, int64_t kw, int64_t y0, int64_t y1,
                                              int64_t w, double* out) {
  correlate_range(P, wp, kf, kh, kw, y0, y1, w, out);
}

template <typename T>
Tensor convolve(const Tensor& images_in, const Tensor& kernel_in) {
  const Tensor images = images_in.contiguous();
  const Tensor kernel = kernel_in.contiguous();
  const int64_t B = images.size(0), H = images.size(1), W = images.size(2);
  const int64_t kh = kernel.size(-2), kw = kernel.size(-1), ph = kh / 2, pw = kw / 2;
  const bool per_item = kernel.dim() == 3;
  constexpr int L = simd::kLanes<T>;
  constexpr int64_t block = kBlockVectors * L;
  const int64_t hp = H + kh - 1, wp = (W + block - 1) / block * block + kw - 1;
  // Flipped kernels, one per item or one shared.
  const int64_t nk = per_item ? B : 1, taps = kh * kw;
  std::vector<T> kf(static_cast<size_t>(nk * taps * L));
  const T* pk = kernel.data_ptr<T>();
  for (int64_t b = 0; b < nk; ++b)
    for (int64_t t = 0; t < taps; ++t)
      std::fill_n(kf.data() + (b * taps + t) * L, L, pk[b * taps + taps - 1 - t]);
  std::vector<T> padded(static_cast<size_t>(B * hp * wp), T(0));
  const T* pi = images.data_ptr<T>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t y = 0; y < H; ++y)
      std::copy(pi + (b * H + y) * W, pi + (b * H + y + 1) * W,
                padded.data() + (b * hp + y + ph) * wp + pw);
  Tensor out = torch::empty({B, H, W}, images.options());
  T* po = out.data_ptr<T>();
  // Work items: runs of kRowsPerTask rows of one item.
  constexpr int64_t kRowsPerTask = 8;
  const int64_t runs = (H + kRowsPerTask - 1) / kRowsPerTask;
  at::parallel_for(0, B * runs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / runs, y0 = (task % runs) * kRowsPerTask;
      correlate_range_cloned(padded.data() + b * hp * wp, wp,
                             kf.data() + (per_item ? b * taps * L : 0), kh, kw, y0,
                             std::min(H, y0 + kRowsPerTask), W, po + b * H * W);
    }
  });
  return out;
}

Tensor convolve_any(const Tensor& images, const Tensor& kernel) {
  if (images.scalar_type() == torch::kFloat64) return convolve<double>(images, kernel);
  return convolve<float>(images, kernel);
}

class DirectPsfConvolution : public torch::autograd::Function<DirectPsfConvolution> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                Tensor images, Tensor kernel) {
    ctx->saved_data["kernel"] = kernel;
    return {convolve_any(images, kernel)};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const Tensor flipped = ctx->saved_data["kernel"].toTensor().flip({-2, -1});
    return {DirectPsfConvolution::apply(grads[0], flipped)[0], Tensor()};
  }
};

}  // namespace

bool direct_cpu_applies(const Tensor& images, const Tensor& kernel) {
  const auto dtype = images.scalar_type();
  return images.device().is_cpu() && kernel.device().is_cpu() && images.dim() == 3 &&
         (dtype == torch::kFloat32 || dtype == torch::kFloat64) && kernel.scalar_type() == dtype &&
         !kernel.requires_grad() && kernel.size(-2) * kernel.size(-1) <= kDirectCpuMaxTaps &&
         kernel.size(-2) % 2 == 1 && kernel.size(-1) % 2 == 1 &&
         (kernel.dim() == 2 || kernel.size(0) == images.size(0));
}

Tensor convolve_direct_cpu(const Tensor& images, const Tensor& kernel) {
  return DirectPsfConvolution::apply(images, kernel.detach())[0];
}

}  // namespace dslens::physics::psf_detail

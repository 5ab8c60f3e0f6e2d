// PSF convolution ('same' size, zero padded) by direct convolution or FFT, and Gaussian kernels.
#include <cmath>
#include <string>

#include "dslens/core/errors.h"
#include "dslens/physics/image_model.h"
#include "psf_direct_cpu.h"

namespace dslens::physics {

namespace psf_detail {

// Under ConvolutionMethod::kAuto, kernels with more taps than this are convolved by FFT on CUDA.
// On the CPU, kernels the fused direct kernel does not take go by FFT: against LibTorch's CPU
// conv2d it was faster at every size measured (16 x 100 x 100 images, forward + backward: 3x3 6 ms
// vs 11 ms direct, 11x11 5-8 ms vs 60-85 ms, 31x31 7 ms vs 155 ms).
constexpr int64_t kFftMinTaps = 225;

// Smallest n' >= n whose only prime factors are 2, 3 and 5 (fast FFT sizes).
int64_t fft_size(int64_t n) {
  for (int64_t m = std::max<int64_t>(n, 1);; ++m) {
    int64_t r = m;
    for (int64_t p : {2, 3, 5})
      while (r % p == 0) r /= p;
    if (r == 1) return m;
  }
}

Tensor convolve_direct(const Tensor& images, const Tensor& kernel) {
  const int64_t kh = kernel.size(-2), kw = kernel.size(-1);
  // conv2d is a cross-correlation: flip the kernel for a true convolution (as scipy's fftconvolve).
  Tensor k = kernel.flip({-2, -1});
  const std::vector<int64_t> pad = {kh / 2, kw / 2};
  if (kernel.dim() == 2) {
    Tensor out = torch::conv2d(images.unsqueeze(1), k.reshape({1, 1, kh, kw}), {}, 1, pad);
    return out.squeeze(1);
  }
  // One kernel per batch member: the batch as channels of one image, grouped convolution.
  const int64_t b = images.size(0);
  Tensor out = torch::conv2d(images.unsqueeze(0), k.reshape({b, 1, kh, kw}), {}, 1, pad, 1, b);
  return out.squeeze(0);
}

Tensor convolve_fft(const Tensor& images, const Tensor& kernel) {
  const int64_t h = images.size(-2), w = images.size(-1);
  const int64_t kh = kernel.size(-2), kw = kernel.size(-1);
  // Padding to at least h + kh - 1 makes the circular convolution equal the linear one.
  const int64_t fh = fft_size(h + kh - 1), fw = fft_size(w + kw - 1);
  Tensor fi = torch::fft::rfft2(images, std::vector<int64_t>{fh, fw});
  Tensor fk = torch::fft::rfft2(kernel, std::vector<int64_t>{fh, fw});
  Tensor full = torch::fft::irfft2(fi * fk, std::vector<int64_t>{fh, fw});
  return full.slice(-2, kh / 2, kh / 2 + h).slice(-1, kw / 2, kw / 2 + w);
}

}  // namespace psf_detail

Tensor convolve_psf(const Tensor& images, const Tensor& kernel_in, ConvolutionMethod method) {
  if (images.dim() != 3) {
    throw InvalidArgument("convolve_psf: images must be [B, H, W], got " +
                          std::to_string(images.dim()) + " dimensions");
  }
  if (kernel_in.dim() != 2 && kernel_in.dim() != 3) {
    throw InvalidArgument("convolve_psf: kernel must be [h, w] or [B, h, w]");
  }
  const int64_t kh = kernel_in.size(-2), kw = kernel_in.size(-1);
  if (kh % 2 == 0 || kw % 2 == 0) {
    throw InvalidArgument("convolve_psf: kernel sizes must be odd, got " + std::to_string(kh) +
                          " x " + std::to_string(kw));
  }
  if (kernel_in.dim() == 3 && kernel_in.size(0) != images.size(0)) {
    throw InvalidArgument("convolve_psf: " + std::to_string(kernel_in.size(0)) +
                          " kernels for a batch of " + std::to_string(images.size(0)) + " images");
  }
  Tensor kernel = kernel_in.to(images.device(), images.scalar_type());
  // On the CPU the fused direct kernel (psf_direct_cpu.cpp) takes kernels up to 17x17 that need
  // no gradient; larger ones, or a differentiable kernel, go by FFT (LibTorch's CPU conv2d is
  // slower at every size measured).
  const bool cpu_fused =
      images.device().is_cpu() && cpu_kernels() && psf_detail::direct_cpu_applies(images, kernel);
  if (method != ConvolutionMethod::kFft && cpu_fused && kh * kw > 1)
    return psf_detail::convolve_direct_cpu(images, kernel);
  const bool large =
      kh * kw > psf_detail::kFftMinTaps || (images.device().is_cpu() && cpu_kernels());
  const bool fft = method == ConvolutionMethod::kFft ||
                   (method == ConvolutionMethod::kAuto && kh * kw > 1 && large);
  if (fft) return psf_detail::convolve_fft(images, kernel);
  return psf_detail::convolve_direct(images, kernel);
}

Tensor gaussian_psf_kernel(double fwhm, double pixel_scale, const Compute& compute, int64_t size) {
  if (!(fwhm > 0.0) || !(pixel_scale > 0.0)) {
    throw InvalidArgument("gaussian_psf_kernel: fwhm and pixel_scale must be positive");
  }
  if (size == 0) size = 2 * static_cast<int64_t>(std::ceil(3.0 * fwhm / pixel_scale)) + 1;
  if (size < 1 || size % 2 == 0) {
    throw InvalidArgument("gaussian_psf_kernel: size must be odd and positive, got " +
                          std::to_string(size));
  }
  const double sigma = fwhm / (2.0 * std::sqrt(2.0 * std::log(2.0))) / pixel_scale;  // pixels
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(compute.device);
  Tensor r = torch::arange(size, f64) - static_cast<double>(size / 2);
  Tensor g = torch::exp(-0.5 * (r / sigma) * (r / sigma));
  Tensor k = g.unsqueeze(1) * g.unsqueeze(0);
  return (k / k.sum()).to(compute.dtype);
}

}  // namespace dslens::physics

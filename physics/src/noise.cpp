// Noise maps and reproducible noise realisations (Gaussian background + Poisson source counts).
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <string>

#include "dslens/core/errors.h"
#include "dslens/physics/image_model.h"

namespace dslens::physics {

namespace noise_detail {

// Above this many expected counts per pixel the Poisson term is drawn as a Gaussian with the same
// variance (relative skewness below 1%).
constexpr double kGaussianCounts = 1e4;
constexpr double kMaxCorrelationFwhm = 10.0;

void check(const NoiseModel& noise) {
  if (!(noise.background_rms >= 0.0) || !(noise.exposure_time >= 0.0)) {
    throw InvalidArgument("noise: background_rms and exposure_time must be >= 0");
  }
  if (!(noise.correlation_fwhm >= 0.0) || !(noise.correlation_fwhm <= kMaxCorrelationFwhm)) {
    throw InvalidArgument("noise: correlation_fwhm must be in [0, " +
                          std::to_string(kMaxCorrelationFwhm) + "] pixels, got " +
                          std::to_string(noise.correlation_fwhm));
  }
}

// The noise field `draw` [..., ny, nx] convolved with the kernel, zero-padded, each pixel
// divided by the root of the kernel's sum of squares over the part that lies on the image.
Tensor correlate(const Tensor& draw, const Tensor& kernel) {
  const int64_t ny = draw.size(-2), nx = draw.size(-1), pad = kernel.size(0) / 2;
  const auto k = kernel.view({1, 1, kernel.size(0), kernel.size(1)});
  const auto flat = draw.reshape({-1, 1, ny, nx});
  const auto conv = torch::conv2d(flat, k, {}, 1, pad);
  const auto on_image =
      torch::conv2d(torch::ones({1, 1, ny, nx}, draw.options()), k.square(), {}, 1, pad);
  return (conv / torch::sqrt(on_image)).reshape(draw.sizes());
}

}  // namespace noise_detail

Tensor noise_correlation_kernel(double fwhm) {
  noise_detail::check({0.0, 0.0, fwhm});
  auto cpu64 = torch::TensorOptions().dtype(torch::kFloat64);
  if (fwhm == 0.0) return torch::ones({1, 1}, cpu64);
  // A Gaussian out to 4 sd (its square, whose sum the normalisation takes, to 5.7 sd).
  const double sd = fwhm / (2.0 * std::sqrt(2.0 * std::log(2.0)));
  const auto half = static_cast<int64_t>(std::ceil(4.0 * sd));
  const auto u = torch::arange(-half, half + 1, cpu64);
  const auto g = torch::exp(-0.5 * (u / sd).square());
  const auto k = torch::outer(g, g);
  return k / torch::sqrt(k.square().sum());
}

double noise_correlation_lag1(double fwhm) {
  const auto k = noise_correlation_kernel(fwhm);
  const int64_t c = k.size(0) / 2;
  // The kernel's central row is g / sqrt(sum g^2) times g_c; its lag-1 sum over its own squares is
  // the separable kernel's lag-1 autocorrelation.
  const auto g = k[c];
  if (g.numel() == 1) return 0.0;
  return (g.slice(0, 0, -1) * g.slice(0, 1)).sum().item<double>() / g.square().sum().item<double>();
}

double noise_correlation_fwhm_for_lag1(double rho) {
  if (!(rho > 0.0)) return 0.0;
  constexpr double kLargest = 10.0;
  if (rho > noise_correlation_lag1(kLargest)) {
    throw InvalidArgument("noise_correlation_fwhm_for_lag1: a lag-1 correlation of " +
                          std::to_string(rho) + " needs a kernel wider than FWHM " +
                          std::to_string(kLargest) + " px (" +
                          std::to_string(noise_correlation_lag1(kLargest)) + ")");
  }
  // Bisection: the correlation rises with the FWHM (to within the 4 sd truncation's e-8 steps).
  double lo = 0.0, hi = kLargest;
  while (hi - lo > 1e-9) {
    const double mid = 0.5 * (lo + hi);
    (noise_correlation_lag1(mid) < rho ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

Tensor noise_map(const Tensor& model, const NoiseModel& noise) {
  noise_detail::check(noise);
  const double bg2 = noise.background_rms * noise.background_rms;
  if (noise.exposure_time > 0.0) {
    return torch::sqrt(bg2 + torch::clamp_min(model, 0.0) / noise.exposure_time);
  }
  return torch::full_like(model, noise.background_rms);
}

Tensor add_noise(const Tensor& model, const NoiseModel& noise, uint64_t seed) {
  noise_detail::check(noise);
  // Drawn on the CPU in float64 from one seeded generator, in a fixed order, then moved: the same
  // seed gives the same noise on every device and dtype.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto cpu64 = torch::TensorOptions().dtype(torch::kFloat64);
  Tensor m = model.detach().to(torch::kCPU, torch::kFloat64);
  Tensor draw = torch::randn(m.sizes(), gen, cpu64) * noise.background_rms;
  if (noise.exposure_time > 0.0) {
    const double t = noise.exposure_time;
    Tensor counts = torch::clamp_min(m, 0.0) * t;
    Tensor large = counts > noise_detail::kGaussianCounts;
    Tensor gauss = torch::randn(m.sizes(), gen, cpu64) * torch::sqrt(counts);
    Tensor poisson =
        torch::poisson(torch::where(large, torch::zeros_like(counts), counts), gen) - counts;
    draw = draw + torch::where(large, gauss, poisson) / t;
  }
  if (noise.correlation_fwhm > 0.0) {
    draw = noise_detail::correlate(draw, noise_correlation_kernel(noise.correlation_fwhm));
  }
  return model + draw.to(model.device(), model.scalar_type());
}

}  // namespace dslens::physics

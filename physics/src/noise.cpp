// Noise maps and reproducible noise realisations (Gaussian background + Poisson source counts).
#include <ATen/CPUGeneratorImpl.h>

#include <string>

#include "dslens/core/errors.h"
#include "dslens/physics/image_model.h"

namespace dslens::physics {

namespace noise_detail {

// Above this many expected counts per pixel the Poisson term is drawn as a Gaussian with the same
// variance (relative skewness below 1%).
constexpr double kGaussianCounts = 1e4;

void check(const NoiseModel& noise) {
  if (!(noise.background_rms >= 0.0) || !(noise.exposure_time >= 0.0)) {
    throw InvalidArgument("noise: background_rms and exposure_time must be >= 0");
  }
}

}  // namespace noise_detail

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
  return model + draw.to(model.device(), model.scalar_type());
}

}  // namespace dslens::physics

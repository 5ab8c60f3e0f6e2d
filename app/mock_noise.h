// The noise of a mock lens at a given signal-to-noise ratio, as `dslens mock-study` and
// `dslens bench fit` define it: SNR := P / background_rms, where P is the brightest pixel of the
// noise-free lensed-source image, and the exposure time makes the Poisson noise at that pixel half
// the background rms (so that pixel's total signal-to-noise is SNR / sqrt(1.25) = 0.89 SNR, and
// the fainter arc pixels are background-dominated).
#pragma once
#include <cmath>
#include <string>

#include "dslens/core/errors.h"
#include "dslens/physics/image_model.h"
#include "lens_config.h"

namespace dslens::app {

constexpr double kPoissonToBackground = 0.5;  // Poisson sigma at the peak / background rms

// Brightest pixel of the noise-free image of a `dslens simulate` config (CPU, float64); `who`
// names the caller in the error.
inline double noise_free_peak(json config, const std::string& who) {
  config["noise"] = {{"background_rms", 1.0}, {"exposure_time", 0.0}};
  const Compute cpu{torch::kCPU, torch::kFloat64};
  const LensConfig cfg = parse_lens_config(config, "", cpu);
  torch::NoGradGuard no_grad;
  const double peak = physics::simulate_image(cfg.model, 1, cpu).max().item<double>();
  if (!(peak > 0) || !std::isfinite(peak)) {
    throw NumericalError(who + ": the noise-free mock has peak " + std::to_string(peak) +
                         "; the VAE decodes no positive source?");
  }
  return peak;
}

// A simulate config's "noise" section for a mock of noise-free peak `peak` at `snr`.
inline json noise_at_snr(double peak, double snr) {
  const double rms = peak / snr;
  return {{"background_rms", rms},
          {"exposure_time", peak / std::pow(kPoissonToBackground * rms, 2)}};
}

}  // namespace dslens::app

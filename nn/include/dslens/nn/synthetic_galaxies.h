// Synthetic high-redshift source galaxies, the embedded default training set of the source VAE
// (no downloads). Each galaxy is a Sérsic bulge plus a Sérsic disk whose light is modulated by
// logarithmic spiral arms, plus a few compact Gaussian star-forming clumps scattered over the
// disk; optionally convolved with a circular Gaussian PSF and with Gaussian noise added.
//
// Sizes are fractions of the stamp side, so a configuration describes the same population at any
// stamp size. Generation is batched (all galaxies' parameters drawn at once, images rendered as
// [chunk, S, S] tensors) and reproducible: the same (config, count, size, seed) gives identical
// stamps on every run.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <utility>

namespace dslens {
class ConfigNode;
}

namespace dslens::nn {

// A closed interval [lo, hi] from which a parameter is drawn uniformly per galaxy.
struct UniformRange {
  double lo = 0.0;
  double hi = 0.0;
};

struct SyntheticConfig {
  int64_t oversample = 2;                 // sub-pixels per pixel side (pixel integration)
  UniformRange bulge_fraction{0.0, 0.5};  // bulge flux / (bulge + disk) flux
  UniformRange bulge_radius{0.02, 0.06};  // bulge half-light radius / stamp side
  UniformRange bulge_sersic_n{1.5, 4.0};
  UniformRange bulge_axis_ratio{0.6, 1.0};
  UniformRange disk_radius{0.07, 0.16};  // disk half-light radius / stamp side
  UniformRange disk_sersic_n{0.6, 1.5};
  UniformRange disk_axis_ratio{0.3, 1.0};         // projected minor/major axis (inclination)
  double spiral_probability = 0.7;                // chance that a disk has spiral arms
  std::pair<int64_t, int64_t> spiral_arms{1, 4};  // number of arms, uniform integer in [lo, hi]
  UniformRange spiral_pitch_deg{10.0, 35.0};      // pitch angle of the logarithmic spiral
  UniformRange spiral_amplitude{0.3, 0.9};        // modulation depth, in [0, 1)
  std::pair<int64_t, int64_t> clumps{2, 8};       // clumps per galaxy, uniform integer in [lo, hi]
  UniformRange clump_radius{0.008, 0.025};        // Gaussian sigma / stamp side
  UniformRange clump_flux_fraction{0.1, 0.4};     // total clump flux / total galaxy flux
  UniformRange clump_distance{0.2, 1.6};          // clump distance from the centre / disk radius
  double centre_offset = 0.0;                     // max random centre offset / stamp side
  double psf_fwhm_pixels = 0.0;                   // Gaussian PSF FWHM in stamp pixels; 0: none
  double noise_sigma = 0.0;                       // Gaussian noise sigma / peak of the clean image
};

// Parses the "synthetic" object; unknown keys and bad values throw ConfigError naming the path.
SyntheticConfig parse_synthetic_config(const dslens::ConfigNode& node);
nlohmann::json describe(const SyntheticConfig& cfg);

// `count` stamps of size x size, [count, size, size] float64 on the CPU, each with total flux 1
// before noise. InvalidArgument for count < 1 or size < 8.
torch::Tensor generate_synthetic_galaxies(const SyntheticConfig& cfg, int64_t count, int64_t size,
                                          uint64_t seed);

}  // namespace dslens::nn

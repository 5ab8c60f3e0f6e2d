// Pixel grids, PSF convolution, whole-image simulation and noise (lenstronomy's ImageModel).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "dslens/core/device.h"
#include "dslens/physics/lens_model.h"
#include "dslens/physics/profile.h"

namespace dslens::physics {

// lenstronomy's orientation: pixel (row i, col j) is centred at
//   ra  = ra_at_xy_0  + j * pixel_scale,   dec = dec_at_xy_0 + i * pixel_scale.
struct PixelGrid {
  int64_t ny = 0, nx = 0;  // rows, columns
  double pixel_scale = 0.0;
  double ra_at_xy_0 = 0.0, dec_at_xy_0 = 0.0;

  // A grid whose centre (between the middle pixels for even sizes) is at (0, 0).
  static PixelGrid centered(int64_t ny, int64_t nx, double pixel_scale);
  // Pixel centres, each [ny, nx].
  std::pair<Tensor, Tensor> coordinates(const Compute& compute) const;
  // Centres of the factor x factor sub-pixels of every pixel, each [ny*factor, nx*factor].
  std::pair<Tensor, Tensor> supersampled_coordinates(int64_t factor, const Compute& compute) const;
  // The box the pixels cover (arcsec): the outer pixel centres plus half a pixel.
  struct Edges {
    double x_min, x_max, y_min, y_max;
    bool contains(double x, double y) const {
      return x >= x_min && x <= x_max && y >= y_min && y <= y_max;
    }
  };
  Edges edges() const;
};

// Mean over factor x factor blocks: [B, ny*f, nx*f] -> [B, ny, nx].
Tensor bin_supersampled(const Tensor& image, int64_t factor);

// How convolve_psf convolves: kAuto picks FFT on the CPU (faster than LibTorch's CPU conv2d at
// every kernel size measured) and, on other devices, when the kernel is large (h*w above 225),
// direct convolution otherwise; both agree to float precision.
enum class ConvolutionMethod { kAuto, kDirect, kFft };

// 'same'-size, zero-padded (true, flipped-kernel) convolution of images [B, H, W] with a kernel
// [h, w] (odd sizes, normalised by the caller) or one kernel per batch member [B, h, w]; as
// scipy.signal.fftconvolve(mode='same') in lenstronomy. The kernel is moved to the images'
// dtype and device. Differentiable in both.
Tensor convolve_psf(const Tensor& images, const Tensor& kernel,
                    ConvolutionMethod method = ConvolutionMethod::kAuto);
// A normalised, odd-sized Gaussian kernel with the given FWHM (arcsec) on pixels of `pixel_scale`.
Tensor gaussian_psf_kernel(double fwhm, double pixel_scale, const Compute& compute,
                           int64_t size = 0 /* 0: about 3 FWHM on each side */);

struct LightComponent {
  std::shared_ptr<const LightProfile> profile;
  ParamMap params;  // name -> [B]; INTERPOL also takes "image" -> [B, h, w] (or [1, h, w])
};

// Everything that defines the noise-free model image.
struct ImageModel {
  PixelGrid grid;
  int64_t supersampling = 1;
  LensModel lens;
  std::vector<LightComponent> lens_light;    // drawn at the image-plane positions (unlensed)
  std::vector<LightComponent> source_light;  // drawn at the ray-shot source-plane positions
  std::optional<Tensor> psf_kernel;          // [h, w]; none = no convolution
  // The sub-pixel centres grid.supersampled_coordinates(supersampling, ...) would give, made once
  // by a caller that simulates the same grid many times (a fit): building them cost 55 operators
  // per call, an eighth of a fit's forward pass (docs/benchmarks.md, session 20).
  std::optional<std::pair<Tensor, Tensor>> coordinates;
};

// Noise-free image [B, ny, nx]: each pixel is the mean surface brightness over its sub-pixels
// times the pixel area (lenstronomy's convention), then convolved with the PSF; lens light the PSF
// leaves as it is (LightProfile::psf_invariant: UNIFORM, a sky level) is added after it.
// `batch` is the batch size B (parameters of size 1 broadcast to it). When every parameter has
// batch 1 the result is an expanded (stride-0, read-only) view of one image.
Tensor simulate_image(const ImageModel& model, int64_t batch, const Compute& compute);
// The same without PSF convolution.
Tensor simulate_unconvolved(const ImageModel& model, int64_t batch, const Compute& compute);

// The total magnification of the source light as the model images it, [batch]: the flux of the
// lensed source in the image (the sum of the unconvolved image of the source components alone,
// over the grid at the model's supersampling; pixel values are surface brightness times pixel
// area) over the source's own total flux (LightProfile::total_flux, summed over the source
// components). The PSF is left out: it keeps flux, except for what it spreads over the edges.
// Images of the source that fall outside the grid are not counted, as in the data. NaN in a row
// whose source has no positive total flux (a free pixel grid can sum to 0 or less);
// InvalidArgument without source light.
Tensor source_magnification(const ImageModel& model, int64_t batch, const Compute& compute);

struct NoiseModel {
  double background_rms = 0.0;  // Gaussian background per pixel, in image units
  double exposure_time = 0.0;   // seconds; 0 = no Poisson noise. Image units are counts / s.
  // FWHM (pixels) of the Gaussian kernel the noise field is convolved with, as resampling
  // (drizzling) correlates the noise of neighbouring pixels; 0 = independent pixels.
  double correlation_fwhm = 0.0;
};
// The kernel `add_noise` convolves the noise with, [k, k] float64 (k odd), normalised so that
// the sum of its squares is 1 (a pixel's variance is kept). The variance of a sum over many
// pixels is (sum k)^2 times what independent pixels would give. fwhm 0 gives [[1]].
Tensor noise_correlation_kernel(double fwhm);
// The correlation between neighbouring pixels (lag 1 along x or y, away from the edges) of noise
// correlated by noise_correlation_kernel(fwhm): the kernel is separable, k = g g^T / sum g^2, so
// it is sum_i g_i g_(i+1) / sum_i g_i^2: 0 for fwhm 0, 0.12 for 1 px, 0.50 for 1.5, 0.986 for 10.
double noise_correlation_lag1(double fwhm);
// Its inverse: the kernel FWHM (pixels) whose noise has lag-1 correlation `rho`, to 1e-9 px, so
// that a correlation measured on real data can be simulated. 0 for rho <= 0; InvalidArgument for
// rho above noise_correlation_lag1(10), the largest correlation_fwhm.
double noise_correlation_fwhm_for_lag1(double rho);
// Per-pixel standard deviation sqrt(bg^2 + max(model, 0) / t_exp), same shape as `model`.
Tensor noise_map(const Tensor& model, const NoiseModel& noise);
// model + Gaussian background + Poisson noise (Gaussian approximation of the Poisson term when
// counts are large), reproducible: the same seed gives the same noise on any device. With a
// correlation_fwhm the noise field is convolved with noise_correlation_kernel (zero padding, each
// pixel renormalised by the kernel's part on the image, so edge pixels keep their variance); a
// pixel's variance is then the noise map's where sigma varies slowly across the kernel.
Tensor add_noise(const Tensor& model, const NoiseModel& noise, uint64_t seed);

}  // namespace dslens::physics

// Per-pixel noise estimated from the image, and a check of noise maps that were.
//
// A Poisson term computed from the noisy image itself, sigma^2 = rms^2 + max(d, 0) / t, is
// smaller where a pixel fluctuated low, so the likelihood weighs those pixels more: a weighted
// mean of a flat sky of variance v comes out low by v |d ln w / d d| = 1 / t (w = 1 / sigma^2,
// to first order), a bias that does not average away with more pixels. lenstronomy avoids it by
// taking the Poisson term from the model (ImageNoise.C_D_model); dslens keeps sigma fixed, so it
// takes the term from the image's local mean, whose fluctuation is width^2 times smaller.
#pragma once
#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

namespace dslens::model {

// The mean of `image` [ny, nx] over the width x width box around each pixel (width odd >= 1);
// non-finite pixels and those off the image are left out of each mean (a pixel with none left is
// NaN). width 1 returns the image unchanged.
torch::Tensor local_mean(const torch::Tensor& image, int64_t width);

// What the Poisson term taken from the image does to a fit, to first order. Each fitted pixel's
// weight w = 1 / sigma^2 falls as its box mean rises, and the box mean shares the pixel's noise
// (var / k^2 of it, k = width), so E[w (d - m)] = var w'(m) / k^2 = -w / (k^2 t): every pixel's
// light is pulled low by shift = 1 / (k^2 t), whatever its brightness or the background. A fit of
// a light template g times an amplitude A then comes out low by
//   shift sum(g / sigma^2) / sum(g^2 / sigma^2)   (relative),
//   shift sum(g / sigma^2) / sqrt(sum(g^2 / sigma^2))   (in standard deviations of A).
// g is the image's box mean over the pixels where it is 2 of its sds (sigma / k) above 0: with
// all pixels the sky's clamped noise counts as light, and the figure grows with the cut-out's
// empty sky. So the figure is a lower bound, from 0.6 to 0.9 of a Monte Carlo's bias in the test
// (Observation.PoissonTermFromTheImageWarnsOfTheFirstOrderBiasItGivesTheLight), and less where
// pixels hold a few counts, where first order falls short (docs/fit.md, "The noise: a Poisson
// term from the image").
struct ImagePoissonBias {
  double shift = 0.0;     // 1 / (k^2 t), in the image's units per pixel
  double relative = 0.0;  // the lit pixels' light in the fit, too faint by this fraction
  double z = 0.0;         // the same in standard deviations of its amplitude
  int64_t pixels = 0;     // lit pixels
};
// box_mean and sigma [ny, nx] as the observation made them (sigma^2 = rms^2 + max(box_mean, 0) /
// t), mask the fitted pixels; z is for sigma times noise_scale, which widens the amplitude's sd.
ImagePoissonBias image_poisson_bias(const torch::Tensor& box_mean, const torch::Tensor& sigma,
                                    const torch::Tensor& mask, double exposure_time, int64_t width,
                                    double noise_scale = 1.0);
// The bias in words for a warning: "pulls each fitted pixel's light low by about <shift_formula> =
// 0.02 (0.2 background_rms), so the light of the 91 pixels 2 sigma above 0 comes out at least
// 5.3 % too faint, 1.4 standard deviations of its amplitude (first order, a lower bound)".
std::string describe_image_poisson_bias(const ImagePoissonBias& bias,
                                        const std::string& shift_formula, double background_rms);

// sigma^2 = rms^2 + max(d, 0) / t fitted to a noise map by weighted least squares on the medians
// of 20 equal-count bins of the image's value (weights 1 / median(sigma^2)^2, so that each bin
// counts by its relative misfit); only bins of positive image value take part.
struct NoiseMapForm {
  double background_rms = 0.0;       // sqrt of the intercept (NaN if the intercept is not positive)
  double exposure_time = 0.0;        // 1 / slope (NaN if the slope is not positive)
  double max_relative_misfit = 0.0;  // over the bins used, |fit - median| / median
  int bins = 0;                      // bins used
};
NoiseMapForm fit_noise_map_form(const torch::Tensor& image, const torch::Tensor& sigma,
                                const torch::Tensor& mask);

// Looks for the fitted pixels of a noise map whose sigma lies below half the median sigma of their
// 5 x 5 neighbourhood. Where there are 10 or more of them among 400 or more fitted pixels, and they
// hold more than `max_weight_share` of the likelihood's weight (sum of 1 / sigma^2 over the fitted
// pixels), returns a warning naming `label`, their count, their share and, where the map follows
// sigma^2 = rms^2 + image / t to 10 % (above), the "background_rms" + "exposure_time" +
// "poisson_term": "model" that rebuild it without the bias in place of the config's `key`
// ("noise_map" or "weight_map"), or "poisson_smoothing" where the source is pixelated.
std::optional<std::string> underestimated_noise_warning(
    const std::string& label, const std::string& key, const torch::Tensor& image,
    const torch::Tensor& sigma, const torch::Tensor& mask, double max_weight_share = 0.1);

// A noise map (or weight map) whose Poisson term was computed from this very image, pixel by
// pixel, carries the bias of image_poisson_bias with k = 1. It is recognised where the image is
// bright (d > 3 sigma, 100 pixels or more): there the map's form (fit_noise_map_form, to 10 %)
// gives back the image, r = ((sigma^2 - rms^2) t - d) / sigma, with an rms of r below 0.3; a map
// made from a model or a smoothed image has r = (m - d) / sigma, rms about 1. Returns a warning
// naming `label`, the rms of r and the bias, where the bias is at least one standard deviation
// of the light's amplitude (with sigma times noise_scale), and the rebuild in place of `key`.
std::optional<std::string> image_poisson_noise_map_warning(
    const std::string& label, const std::string& key, const torch::Tensor& image,
    const torch::Tensor& sigma, const torch::Tensor& mask, double noise_scale = 1.0);

// The normalised residuals' mean square in `bins` equal-count bins of the model image's value,
// over the pixels where `mask` holds and the residual is finite, faintest first: a noise that is
// right has 1 in every bin (less the fitted parameters' share); one whose Poisson term is too
// large falls below 1 from the faint bins to the bright ones.
struct BrightnessBin {
  double model_low = 0.0, model_high = 0.0;  // the bin's range of model values
  double mean_square = 0.0;                  // of the normalised residuals
  int64_t pixels = 0;
};
std::vector<BrightnessBin> residuals_by_brightness(const torch::Tensor& normalised_residuals,
                                                   const torch::Tensor& model_image,
                                                   const torch::Tensor& mask, int64_t bins = 10);

// How the normalised residuals r of neighbouring pixels are correlated, from their autocovariance
// C(dx, dy) = mean of (r_p - m)(r_{p+d} - m) over the pairs of pixels where `mask` holds and r is
// finite (m: their mean), for lags |dx|, |dy| <= window. The likelihood treats pixels as
// independent; where the noise is correlated (drizzled images), a parameter set by many pixels has
// a posterior variance proportional to sum_d C(d), not to C(0) (Casertano et al. 2000, AJ 120,
// 2747, for drizzled sums): noise_scale = sqrt(sum_d C(d)) is the factor on sigma that gives such
// parameters the right width, a summary and not a correlated-noise likelihood.
//
// Misfit correlates residuals too, over the scale of the misfit: the lens light's outskirts in a
// cut-out made SLACS J1430+4105's sum ratio 13.9 where its sky's noise has about 3
// (docs/fit.md, "Correlated noise"). With highpass > 0 (odd) each residual first loses the mean of
// the used residuals in the highpass x highpass box around it, which takes away misfit smoother
// than the box, and the autocovariances are corrected for what the subtraction takes from the
// noise's own (to first order in 1 / box area; implementation).
struct ResidualCorrelation {
  double mean_square = 0.0;   // C(0)
  double rho_x = 0.0;         // C(1, 0) / C(0): along a row (x)
  double rho_y = 0.0;         // C(0, 1) / C(0): along a column (y)
  double sum_ratio = 1.0;     // sum_d C(d) / C(0) over the window's lags; 1 = independent pixels
  double sum_ratio_se = 0.0;  // its standard error for independent pixels: 2 sqrt(lags' half / n),
                              // more with a highpass (implementation)
  double noise_scale = 1.0;   // sqrt(sum_d C(d))
  int64_t pixels = 0;
  int64_t window = 0;
  int64_t highpass = 0;
};
ResidualCorrelation residual_correlation(const torch::Tensor& normalised_residuals,
                                         const torch::Tensor& mask, int64_t window = 2,
                                         int64_t highpass = 0);

}  // namespace dslens::model

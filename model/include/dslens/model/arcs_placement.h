// A PIXELATED source grid placed on the arcs (`"placement": "arcs"`, docs/fit.md, "A pixel grid's
// extent"): its centre and pixel size are functions of the lens, not parameters.
//
// Each data pixel's signal (data less the lens light, weighted by how far it rises above the
// noise) is ray-shot through the lens; the grid is the square about the traced flux's box, the box
// whose sides hold all but (1 - flux_fraction) / 2 of the flux beyond each, widened by
// side_per_half_width / 2. A grid of fixed extent wider than the traced arcs biased a mock's slope
// by 19 sd (coarse pixels favour lenses that enlarge the source); a free centre and size fixed that
// but gave the posterior a mode every pixel (a grid shifted by one holds nearly the same source):
// on a 32 x 32 grid four chains sat in different ones (center_y R-hat 2.12, docs/benchmarks.md,
// session 50). Tied to the lens there is one grid per lens and no such mode.
//
// The quantiles are read from the flux's distribution smoothed by a kernel a data pixel wide, so
// that the placement is a smooth function of the lens and the lens light: HMC and L-BFGS follow
// its gradient.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <vector>

namespace dslens::model {

// The magnification ramp's ends (ArcsPlacementSpec::min_magnification, below): pixels with |mu|
// at or below kCoreMagnification count nothing, at or above kArcMagnification fully. The data
// traced back (BackProjectionSettings, model/source_backprojection.h) use the same.
inline constexpr double kCoreMagnification = 0.5;
inline constexpr double kArcMagnification = 0.75;

struct ArcsPlacementSpec {
  size_t source_index = 0;  // the PIXELATED component in the model's source list
  int64_t size = 0;         // the grid's side in pixels
  // A pixel's weight is its lens-light-subtracted flux times clamp(snr - snr_threshold, 0, 1):
  // pixels below the threshold count nothing, those a sigma above it fully, continuously between.
  double snr_threshold = 3.0;
  double flux_fraction = 0.99;
  // The grid's side over the box's half side: 2.2 leaves a tenth to spare each side (the side
  // session 50's evidence scan preferred, 0.8-0.9" against the arcs' 0.83").
  double side_per_half_width = 2.2;
  // The width (arcsec) of the Gaussian kernel each traced pixel's weight is spread over before the
  // quantiles are read (smoothed_weighted_quantiles); 0: the data's pixel scale.
  double smoothing = 0.0;
  double fallback_side = 1.5;  // arcsec, centred on 0, 0, for a row with no traced flux
  // Pixels the lens demagnifies count nothing: a weight factor rising from 0 at |mu| =
  // min_magnification to 1 at full_magnification (magnification_ramp). An arc is magnified; the
  // lens's core is not (|mu| < 1/2 within theta_E / 3 of an isothermal lens's centre), and what
  // the lens light leaves there traces back to |beta| ~ theta_E all round. On SLACS J1430+4105 a
  // 32 x 32 grid came out 3.22" wide (2.2 theta_E) where the arcs need 1.6", and took up lens
  // light (docs/slacs.md). min_magnification <= 0: none excluded. The factor is computed from the
  // lens's Hessian without a gradient (at a singular centre its gradient is not finite): fixed
  // with the lens light (`counted`, below) it is a constant, so the log density's gradient is
  // exact; before that, each row's own, it is exact but for the pixels inside the ramp.
  double min_magnification = kCoreMagnification;
  double full_magnification = kArcMagnification;
  // The noise the weights read is the data's sigma / noise_factor: a tempered posterior
  // (LensPosterior::with_noise_scaled) places the grid as the untempered one does.
  double noise_factor = 1.0;
  // The lens light subtracted from the data before the arcs are traced, [L, ny * nx], fixed
  // (LensPosterior::fix_arcs_lens_light): a fit sets it to its best placement's (app/map_search.h).
  // Subtracted as each row's own lens light, the grid followed the lens light's errors: 5 % too
  // little of the mock's Sersic amplitude left the core's residuals above the threshold, and traced
  // far out they made the grid 3.4 times as wide (0.79" -> 2.67"); the joint MAP stage then ended
  // 900 nats below the free grid's. Undefined until fixed: each row's own. Shared by the copies of
  // a posterior (its tempered versions included).
  std::shared_ptr<torch::Tensor> lens_light;
  // The magnification ramp [L, ny * nx] of the lens of the row the lens light is fixed from, fixed
  // with it; undefined until then (each row's own).
  std::shared_ptr<torch::Tensor> counted;
};

struct GridPlacement {
  torch::Tensor center_x, center_y, scale;  // [B], arcsec
};

// Quantiles of the values v [B, P] weighted by w [B, P] (>= 0) for each fraction of `fractions`,
// [B, fractions.size()]: the inverse of the weighted cumulative distribution, linear between
// consecutive points in sorted order. Points of weight 0 do not move it; a row of total weight 0
// gives its smallest value.
torch::Tensor weighted_quantiles(const torch::Tensor& v, const torch::Tensor& w,
                                 const std::vector<double>& fractions);

// The same quantiles of the weights spread over Gaussian kernels of sd `width` about each value:
// the roots t of sum_i w_i Phi((t - v_i) / width) = f sum_i w_i. Smooth in v and w where the
// interpolated ones have a kink at every point and, in the sparse tails a grid's edges are read
// from, steep segments: on the 20 x 20 mock a 1e-4" step of theta_E once moved the grid's side 15
// times as much as the steps around it. The gradient is the implicit function's. InvalidArgument
// for width <= 0.
torch::Tensor smoothed_weighted_quantiles(const torch::Tensor& v, const torch::Tensor& w,
                                          const std::vector<double>& fractions, double width);

// The factor by which a pixel counts for its magnification, from inverse_mu = 1 / |mu| = |det A|
// (any shape): clamp((1 / min_mu - inverse_mu) / (1 / min_mu - 1 / full_mu), 0, 1); NaN counts
// as demagnified. Ones for min_mu <= 0; InvalidArgument for full_mu <= min_mu.
torch::Tensor magnification_ramp(const torch::Tensor& inverse_mu, double min_mu, double full_mu);

// The grid for traced positions bx, by [B, P] (or [1, P]) and pixel weights [B, P] (above).
GridPlacement place_on_arcs(const torch::Tensor& bx, const torch::Tensor& by,
                            const torch::Tensor& weight, const ArcsPlacementSpec& spec);

}  // namespace dslens::model

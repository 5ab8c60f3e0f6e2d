// The probabilistic lens model of Chianese et al. (2020): parameters u (unconstrained) ->
// lens, lens-light and source parameters -> model image by exact lensing physics -> Gaussian
// pixel likelihood; the log posterior is log p(u) = log prior (with Jacobians) + log likelihood.
// Batched over chains: u is [C, D] and every method returns one value per chain.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dslens/core/device.h"
#include "dslens/model/arcs_placement.h"
#include "dslens/model/image_positions.h"
#include "dslens/model/parameter_space.h"
#include "dslens/physics/image_model.h"
#include "dslens/samplers/log_density.h"

namespace dslens::model {

// Where the parameters of one profile come from: profile parameter name -> ParameterSpace name.
// An elliptical profile may bind "q" and "phi" instead of "e1" and "e2"; they are converted with
// lenstronomy's e1 = (1-q)/(1+q) cos 2phi, e2 = (1-q)/(1+q) sin 2phi.
struct ProfileBinding {
  std::string type;
  std::map<std::string, std::string> params;
};

// Maps a latent block [C, k] to source images [C, S, S] (a VAE decoder), differentiably.
using SourceDecoder = std::function<torch::Tensor(const torch::Tensor& z)>;

struct LensModelSpec {
  physics::PixelGrid grid;
  int64_t supersampling = 1;
  std::optional<torch::Tensor> psf_kernel;  // [h, w], or one per lens [L, h, w]
  std::vector<ProfileBinding> mass, lens_light, source;
  // For a decoded source: the INTERPOL binding's "image" is decoder(values[latent_block]).
  std::string latent_block;
  SourceDecoder decoder;
  // A PIXELATED source whose centre and pixel size follow the traced arcs (model/arcs_placement.h):
  // build() sets its component's center_x, center_y and scale.
  std::optional<ArcsPlacementSpec> arcs_placement;
};

// A noise whose variance follows the model image m, as lenstronomy's ImageNoise.C_D_model:
//   var = background_variance + max(m, 0) * inverse_exposure   (per pixel, like the image),
// i.e. rms^2 + max(m, 0) / t. The likelihood then keeps its normalisation -1/2 sum log(2 pi var),
// which now depends on the parameters: with it the score's expectation at the truth is 0 (an
// unbiased estimating equation), where the chi-square alone (lenstronomy's
// ImageData.log_likelihood) leans towards brighter models by var' / (2 var) per pixel. A lens of
// a batch without such a term has background_variance = sigma^2 and inverse_exposure = 0.
struct ModelNoise {
  torch::Tensor background_variance;
  torch::Tensor inverse_exposure;
  bool defined() const { return background_variance.defined(); }
};

// One lens's data [ny, nx], or L lenses of the same model and grid [L, ny, nx] fitted as one
// batch: then rows of u [B, D] belong to lens b / (B / L) (B a multiple of L), i.e. the rows are
// lens-major, B / L chains (or optimiser starts) per lens.
struct ImagingData {
  torch::Tensor image;  // [ny, nx] or [L, ny, nx]
  torch::Tensor sigma;  // per-pixel noise standard deviation (> 0 where unmasked), like image
  torch::Tensor mask;   // bool, like image: true = pixel enters the likelihood
  // Measured positions of multiply imaged features, a term of the likelihood beside the pixels'
  // (model/image_positions.h); none when undefined.
  ImagePositions positions{};
  // When defined, the pixels' variance follows the model image (ModelNoise) and `sigma` serves
  // only what needs a fixed noise: pixel-source solves, arcs placement, source back-projection.
  ModelNoise model_noise{};
};

class LensPosterior {
 public:
  LensPosterior(LensModelSpec spec, ParameterSpace space, ImagingData data, Compute compute);

  const ParameterSpace& space() const { return space_; }
  const Compute& compute() const { return compute_; }
  // The largest ellipticity |e| = sqrt(e1^2 + e2^2) any EPL of the model can take under its
  // priors (from e1/e2 or from q's lower bound), for a fixed EPL series length
  // (physics::epl_series_terms_for); 0 without an EPL, nullopt when a prior leaves |e| unbounded.
  std::optional<double> epl_ellipticity_bound() const;
  // The physics for constrained values of `rows` rows (lens-major, see ImagingData). Without
  // `with_sources` the source light is left out (no decoder pass): the lens and lens light only.
  physics::ImageModel build(const ParameterSpace::Unpacked& values, int64_t rows,
                            bool with_sources = true) const;
  // An arcs-placed grid's lens light (ArcsPlacementSpec::lens_light) fixed at that of `values`,
  // one row per lens, and with it the magnification ramp of their lenses (`counted`): for this
  // posterior and every copy made from it. No-op for other models.
  void fix_arcs_lens_light(const ParameterSpace::Unpacked& values) const;
  // The arcs-placed grid (spec().arcs_placement) of `rows` rows; nullopt for any other model.
  std::optional<GridPlacement> arcs_grid(const ParameterSpace::Unpacked& values,
                                         int64_t rows) const;
  const ImagingData& data() const { return data_; }  // [L, ny, nx] on the compute device
  // The same model with every pixel's noise sigma multiplied by `factor` (> 0): its likelihood is
  // this one's raised to the power 1 / factor^2 (up to its normalisation), the tempered posterior
  // of likelihood annealing (the MAP's `anneal_noise`). InvalidArgument for factor <= 0.
  LensPosterior with_noise_scaled(double factor) const;
  const LensModelSpec& spec() const { return spec_; }
  // Noise-free model images [C, ny, nx] for constrained values.
  torch::Tensor model_image(const ParameterSpace::Unpacked& values) const;
  // The pixels' Gaussian likelihood (sigma fixed, or following the model image: ModelNoise), plus
  // the image positions' term where the data have any.
  torch::Tensor log_likelihood(const torch::Tensor& u) const;  // [C]
  torch::Tensor log_prob(const torch::Tensor& u) const;        // [C]
  // The posterior in the samplers' interface (autograd gradient).
  samplers::LogDensityFn log_density() const;
  // The log posterior with the residual image convolved with a Gaussian of `blur_pixels` (sigma,
  // in pixels) before it is squared, its weights divided by sum(g^2) so that pure noise keeps its
  // chi-square: a smoothed objective for the first MAP stages, in which an arc placed a few pixels
  // off still overlaps the data and pulls the lens towards it (coarse to fine). blur_pixels <= 0
  // is log_prob.
  torch::Tensor log_prob_smoothed(const torch::Tensor& u, double blur_pixels) const;
  samplers::LogDensityFn log_density_smoothed(double blur_pixels) const;
  // The image positions' term alone (model/image_positions.h), [C]; 0 without positions.
  torch::Tensor image_positions_term(const ParameterSpace::Unpacked& un, int64_t rows) const;
  // Chi-square over unmasked pixels and their count, for the reduced chi-square.
  torch::Tensor chi_square(const torch::Tensor& u) const;
  int64_t n_pixels() const { return n_pixels_; }  // summed over lenses
  int64_t n_lenses() const { return n_lenses_; }
  // Unmasked pixels of each lens, [L] int64 on the CPU.
  const torch::Tensor& pixels_per_lens() const { return pixels_per_lens_; }

 private:
  int64_t rows_per_lens(int64_t batch) const;
  // Chi-square per row, of the residuals blurred by a Gaussian of blur_pixels when > 0. With
  // `log_norm`, also the Gaussian normalisation per row, -sum log sigma - n/2 log 2 pi (from the
  // model image's variance under a ModelNoise).
  torch::Tensor chi_square_of(const ParameterSpace::Unpacked& un, int64_t rows, double blur_pixels,
                              torch::Tensor* log_norm = nullptr) const;
  // The arcs-placed grid for a built lens and lens light (spec_.arcs_placement set).
  GridPlacement place_grid(const physics::ImageModel& m, int64_t rows) const;
  // The magnification ramp of each pixel centre through m's lens (ArcsPlacementSpec), [B or 1,
  // ny * nx], without a gradient.
  torch::Tensor magnification_weight(const physics::ImageModel& m) const;
  LensModelSpec spec_;
  ParameterSpace space_;
  ImagingData data_;
  Compute compute_;
  torch::Tensor weight_;    // [L, ny, nx]: mask / sigma^2, 0 where masked
  torch::Tensor log_norm_;  // [L]: -sum log sigma - n/2 log 2 pi over unmasked pixels
  // A ModelNoise's, var = b (1 + max(m, 0) k / b): [L, ny, nx] mask / b and k / b, and [L]
  // -1/2 sum log(2 pi b) over unmasked pixels.
  torch::Tensor inverse_background_, poisson_ratio_, model_log_norm_;
  int64_t n_pixels_ = 0;
  int64_t n_lenses_ = 1;
  torch::Tensor pixels_per_lens_;
  std::pair<torch::Tensor, torch::Tensor> coordinates_;  // the grid's sub-pixel centres, made once
  std::pair<torch::Tensor, torch::Tensor> pixel_centres_;  // [1, ny * nx], for arcs_placement
};

}  // namespace dslens::model

// Measured positions of the multiple images of compact source features (a knot or a nucleus seen
// two or four times), as a likelihood term beside the pixels': lenstronomy's
// source_position_likelihood (Birrer & Treu 2019, eq. 13) and the role of PyAutoLens's positions.
// Each image i of a feature traces back to beta_i = theta_i - alpha(theta_i); an astrometric error
// of sd sigma_i in the image plane is, to first order, one of covariance sigma_i^2 A_i A_i^T in the
// source plane (A_i = I - Hessian, the lens equation's Jacobian at theta_i). The feature's source
// position beta, flat a priori, is marginalised in closed form:
//   log L = -1/2 sum_i (beta_i - b)^T P_i (beta_i - b) - 1/2 log det S   (+ const),
//   P_i = (A_i A_i^T)^-1 / sigma_i^2,  S = sum_i P_i,  b = S^-1 sum_i P_i beta_i,
// summed over features. A lens that does not bring a feature's images back to one place is
// penalised by their scatter in units of the measurement error: given the two images of the 32 x
// 32 pixelated mock's source centre, the MAP search no longer kept the demagnified optimum
// (theta_E 0.605 against 1.2) it had 115 nats below the best (docs/fit.md, "Image positions").
#pragma once
#include <torch/torch.h>

#include <array>
#include <vector>

#include "dslens/core/config.h"
#include "dslens/physics/lens_model.h"

namespace dslens::model {

// One feature's images: at least two positions (arcsec, the fit's coordinates) and their
// astrometric sd (arcsec).
struct ImagePositionGroup {
  std::vector<std::array<double, 2>> images;
  double sigma = 0.0;
};

// The data's "image_positions": [{"images": [[x, y], [x, y], ...], "sigma": s}, ...]. ConfigError
// naming the JSON path for a group with fewer than two images, a position that is not [x, y] of
// finite numbers, or sigma <= 0.
std::vector<ImagePositionGroup> parse_image_positions(const ConfigNode& node);

// The groups of L lenses as tensors [L, P] (P the most images any lens has), padded with images of
// inverse variance 0. Undefined tensors when no lens has any.
struct ImagePositions {
  torch::Tensor x, y;     // [L, P] arcsec
  torch::Tensor inv_var;  // [L, P] 1 / sigma^2; 0 for padding
  torch::Tensor member;   // [L, P, G] 1 where image p is of feature g (G the most any lens has)
  bool defined() const { return x.defined(); }
  ImagePositions to(const torch::TensorOptions& options) const;
  // The same images with every sigma multiplied by `factor` (a tempered likelihood).
  ImagePositions with_sigma_scaled(double factor) const;
};
ImagePositions batch_image_positions(const std::vector<std::vector<ImagePositionGroup>>& lenses);

// The term log L above for each row of a lens model whose rows are lens-major, `per` rows per lens
// ([L * per]). Differentiable in the lens's parameters (the Hessian's own included). Features
// with no images (padding) add 0.
torch::Tensor image_positions_log_likelihood(const physics::LensModel& lens,
                                             const ImagePositions& positions, int64_t per);

// The chi-square of each feature's images about its fitted source position, the first term above
// times -2: [L * per, G], 0 for padding. Its expectation is 2 (n_g - 1) for n_g images measured
// with the given sigma (map.json reports it).
torch::Tensor image_positions_chi_square(const physics::LensModel& lens,
                                         const ImagePositions& positions, int64_t per);

}  // namespace dslens::model

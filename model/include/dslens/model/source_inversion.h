// The lens's posterior with the source marginalised: the source is a regular grid of pixels
// (bilinear interpolation, surface brightness per pixel) that enters the image linearly, so for
// given lens and lens-light parameters it is solved by regularised least squares (the semi-linear
// inversion of Warren & Dye 2003), and the Bayesian evidence of that linear model (Suyu et al.
// 2006, eq. 19; gradient or curvature regularisation, its strength marginalised over a grid of
// values) is the objective. Lens parameters found this way do not depend on a parametric guess of
// the source's shape; the MAP's placement stage uses it (app/map_search.h).
#pragma once
#include <torch/torch.h>

#include <vector>

#include "dslens/model/lens_posterior.h"
#include "dslens/samplers/log_density.h"

namespace dslens::model {

struct InversionSettings {
  int64_t pixels = 16;       // source grid side
  double half_width = 0.75;  // arcsec, half the grid's side
  double center_x = 0.0, center_y = 0.0;
  // The regulariser C (Suyu et al. 2006, Sec. 2.2.2): "gradient" (squared differences of
  // neighbouring pixels), "curvature" (squared second differences) or "identity" (zeroth order).
  std::string regularisation = "gradient";
  // Regularisation strengths: 10^o x tr(F) / tr(C) for each offset o (F = the data's curvature
  // matrix, C = the regulariser's); the evidence is averaged over them (a uniform prior).
  std::vector<double> log10_lambda_offsets = {-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0};
};

class SourceInversion {
 public:
  // `lens_only`: the model without the source to be solved (its source components must be absent
  // or have zero amplitude); its lens light is fitted together with the lens.
  SourceInversion(const LensPosterior& lens_only, InversionSettings settings);

  struct Solution {
    torch::Tensor log_evidence;  // [C]: log evidence, averaged over the regularisation strengths
    torch::Tensor source;        // [C, n, n] surface brightness at the most probable strength
    torch::Tensor chi_square;    // [C] of that source
  };
  Solution solve(const torch::Tensor& u) const;
  // Log prior of u plus the log evidence: the objective of the placement stage.
  torch::Tensor log_prob(const torch::Tensor& u) const;
  samplers::LogDensityFn log_density() const;
  // Centres of the source pixels, each [n, n] (x along columns, y along rows).
  std::pair<torch::Tensor, torch::Tensor> source_coordinates() const;

 private:
  const LensPosterior& posterior_;
  InversionSettings settings_;
  torch::Tensor regulariser_;  // C [K, K], float64
  double logdet_regulariser_ = 0.0;
};

}  // namespace dslens::model

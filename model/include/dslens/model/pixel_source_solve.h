// A PIXELATED source (model/fit_model.h) solved exactly for the rest of the model. Its pixels are
// a linear map of the standard-normal block z, scaled by sigma (the INTERPOL amp), and the image
// is linear in the source light; so for fixed lens, lens light and sigma the model image is
//   m = m0 + sigma J z,
// with J the lensed, binned and PSF-convolved image of each of the decoder's columns at unit
// sigma, and the log posterior in z is exactly quadratic:
//   -1/2 |z|^2 - 1/2 (d - m0 - sigma J z)^T W (d - m0 - sigma J z),   W = mask / noise^2.
// Its maximum is one linear solve, z = sigma (I + sigma^2 G)^-1 b with G = J W J^T and
// b = J W (d - m0) (the semi-linear inversion of Warren & Dye 2003), and the evidence
// p(d | sigma) = N(d; m0, W^-1 + sigma^2 J^T J) is exact (Suyu et al. 2006, eq. 19): what the MAP
// needs where a gradient optimiser of hundreds of pixels stalls far from the optimum.
#pragma once
#include <torch/torch.h>

#include "dslens/model/fit_model.h"
#include "dslens/model/lens_posterior.h"
#include "dslens/samplers/laplace.h"

namespace dslens::model {

struct PixelSourceSystem {
  torch::Tensor gram;        // [R, K, K] float64: G = J W J^T, J at unit sigma
  torch::Tensor rhs;         // [R, K] float64: b = J W (d - m0), J at unit sigma
  torch::Tensor sigma;       // [R] float64: each row's sigma
  int64_t first_column = 0;  // the block's coordinates in u: [first_column, first_column + K)
  // [R] bool: rows whose model was finite; the others have G = 0, b = 0, sigma = 1, and the
  // solves leave them as they are.
  torch::Tensor finite;
};

// G and b at the rows u [R, D] of `posterior` (built from `model`, possibly with its noise
// scaled). J is made from K source-light evaluations per row at the rows' ray-shot positions
// (the lens is ray-shot once), a group of rows at a time: J, G and G's eigenvectors of a group
// take at most 512 MB, and `max_group_rows` > 0 caps a group's rows further. InvalidArgument
// unless model.decoded_kind is "PIXELATED".
PixelSourceSystem pixel_source_system(const FitModel& model, const LensPosterior& posterior,
                                      const torch::Tensor& u, int64_t max_group_rows = 0);

// The pixel block's Hessian of the log posterior at the rows u [R, D]: -(I + sigma^2 G), [R, K, K]
// float64 on the CPU, at the block's first column. Exact, and the same for any z: the image is
// linear in z and z's prior standard normal. What samplers::laplace_approximation would otherwise
// difference column by column (2 K gradients per row and pass: 1,524 s at the 4 optima of a
// 32 x 32 grid on 2 cores, 11 s with this; docs/benchmarks.md, session 52). A row whose model is
// not finite gets -I.
samplers::HessianBlock pixel_source_hessian(const FitModel& model, const LensPosterior& posterior,
                                            const torch::Tensor& u, int64_t max_group_rows = 0);

// u with each row's pixel block at its maximum given the row's other coordinates (sigma
// included). The log posterior of no row decreases.
torch::Tensor with_pixel_source_solved(const FitModel& model, const LensPosterior& posterior,
                                       const torch::Tensor& u, int64_t max_group_rows = 0);

// For a free sigma (FitModel::has_free_pixel_strength): each row's sigma at the maximum of the
// evidence p(d | sigma) times sigma's prior for the row's lens and lens light, and its pixels at
// their maximum there. In the sampler's coordinates z the joint posterior has no mode in sigma
// (sigma up and z down keep the image), so this, the type-II maximum, is the point the MAP reports
// and the chains start from (docs/fit.md, "Pixel grids"). For a fixed sigma:
// with_pixel_source_solved. `chosen`, when given, receives each row's sigma.
torch::Tensor with_pixel_source_at_evidence_maximum(const FitModel& model,
                                                    const LensPosterior& posterior,
                                                    const torch::Tensor& u,
                                                    torch::Tensor* chosen = nullptr,
                                                    int64_t max_group_rows = 0);

// The pixel block's effective number of parameters at each row u [R, D]: the trace of the hat
// matrix, sum_k sigma^2 g_k / (1 + sigma^2 g_k) over G's eigenvalues g_k (MacKay 1992's gamma, the
// number of directions the data constrain more than the prior does). For data drawn from the
// model, the chi-square at the block's maximum has expectation N - this (N fitted pixels), where
// counting each of the K pixels as a parameter expects N - K: a 20 x 20 grid's 400 pixels would
// count where fewer are constrained (docs/fit.md, "Pixel grids"). [R] float64 on the CPU; K for a
// row whose model is not finite. InvalidArgument unless model.decoded_kind is "PIXELATED".
torch::Tensor pixel_source_effective_parameters(const FitModel& model,
                                                const LensPosterior& posterior,
                                                const torch::Tensor& u, int64_t max_group_rows = 0);

}  // namespace dslens::model

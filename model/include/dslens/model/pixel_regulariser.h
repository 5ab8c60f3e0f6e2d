// Regularisation of a pixelated source (Suyu et al. 2006, MNRAS 371, 983, Sec. 2.2.2): the
// quadratic form E = s^T C s / 2 of an n x n grid of pixels s (row-major). A source prior
// N(0, sigma^2 C^-1) with these C prefers smooth sources, as galaxies are.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

namespace dslens::model {

// "identity": C = I. "gradient": C = D1^T D1 + eps I, D1 the differences of horizontally and
// vertically neighbouring pixels. "curvature": C = D2^T D2 + eps I, D2 the second differences
// s[j-1] - 2 s[j] + s[j+1] along rows and columns. eps = 1e-2 makes C positive definite (a flat or
// linear source has E = 0 otherwise, and the prior no normalisation): the weak zeroth-order term
// Suyu et al. add for the same reason. Dense [n^2, n^2] with `options` (float64 recommended).
// InvalidArgument for another kind, or n < 3 with gradient or curvature.
torch::Tensor pixel_regulariser(const std::string& kind, int64_t n,
                                const torch::TensorOptions& options);

// C's eigendecomposition. Both difference operators act along rows and along columns alike, so
// C = T (x) I + I (x) T + eps I with T the 1-d operator's n x n Gram matrix, T = V diag(t) V^T:
// C's eigenvectors are V (x) V, its eigenvalues t_i + t_j + eps. For an image S [n, n] (row i,
// column j), C S = V ((t_i + t_j + eps) * (V^T S V)) V^T: any n, with n x n matrices only.
struct RegulariserEigen {
  torch::Tensor basis;        // V [n, n]
  torch::Tensor eigenvalues;  // [n, n]: t_i + t_j + eps (identity: V = I, all 1)
};
RegulariserEigen pixel_regulariser_eigen(const std::string& kind, int64_t n,
                                         const torch::TensorOptions& options);

// The kinds above, for error messages.
std::vector<std::string> pixel_regulariser_kinds();

}  // namespace dslens::model

// The L-BFGS product r = H g of the inverse-Hessian approximation with the gradient, for a batch of
// starts, in a fixed number of tensor operations whatever the history's length.
//
// The two-loop recursion (Nocedal & Wright, Numerical Optimization, Algorithm 7.4) takes 2 m
// sequential steps of a few operators each; on a GPU each is a kernel launch and several
// microseconds of dispatch, and at m = 10 the recursion was about 640 of the optimiser's 1,150
// operators per iteration (docs/benchmarks.md, session 41). Its coefficients solve two triangular
// systems instead, the idea of the compact representation (Byrd, Nocedal & Schnabel 1994, Math.
// Programming 63, 129): with pairs (s_j, y_j), newest first (j = 0), rho_j = 1 / (s_j . y_j) and
// A_ji = s_j . y_i,
//   first loop   alpha_j = rho_j (s_j . g - sum_{i<j} alpha_i A_ji)
//                  <=> (I + diag(rho) tril(A, -1)) alpha = rho (S g),   q = g - Y^T alpha
//   second loop  beta_j = alpha_j - rho_j (y_j . r0 + sum_{i>j} beta_i A_ij),   r0 = gamma q
//                  <=> (I + diag(rho) triu(A^T, 1)) beta = alpha - rho (Y r0),  r = r0 + S^T beta
// Forward and back substitution are the recursion's own steps; only the dot products are formed
// from the history's Gram matrix instead of from the updated vectors.
#pragma once
#include <torch/torch.h>

namespace dslens::samplers {

// g [n, D]; s, y [n, m, D], newest pair first; rho [n, m] with 0 for a slot holding no pair (it
// then contributes nothing); gamma [n], the initial inverse Hessian's scale. Returns H g [n, D].
torch::Tensor lbfgs_inverse_hessian_product(const torch::Tensor& g, const torch::Tensor& s,
                                            const torch::Tensor& y, const torch::Tensor& rho,
                                            const torch::Tensor& gamma);

}  // namespace dslens::samplers

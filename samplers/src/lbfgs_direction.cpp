#include "lbfgs_direction.h"

namespace dslens::samplers {

torch::Tensor lbfgs_inverse_hessian_product(const torch::Tensor& g, const torch::Tensor& s,
                                            const torch::Tensor& y, const torch::Tensor& rho,
                                            const torch::Tensor& gamma) {
  // Dot products as products and sums, not bmm: LibTorch's CPU bmm loops over the batch with one
  // operator per matrix, and [n, m, m, D] is small (n m^2 D = 10^6 at 128 starts, m = 10, D = 76).
  const torch::Tensor a = (s.unsqueeze(2) * y.unsqueeze(1)).sum(3);  // A_ji = s_j . y_i
  const torch::Tensor r = rho.unsqueeze(2);
  // Unit triangular: the solver reads only the strict triangle, so A's diagonal needs no masking.
  const torch::Tensor alpha =
      torch::linalg_solve_triangular(r * a, (rho * (s * g.unsqueeze(1)).sum(2)).unsqueeze(2),
                                     /*upper=*/false, /*left=*/true, /*unitriangular=*/true);
  const torch::Tensor r0 = gamma.unsqueeze(1) * (g - (y * alpha).sum(1));
  const torch::Tensor beta = torch::linalg_solve_triangular(
      r * a.transpose(1, 2), alpha - (rho * (y * r0.unsqueeze(1)).sum(2)).unsqueeze(2),
      /*upper=*/true, /*left=*/true, /*unitriangular=*/true);
  return r0 + (s * beta).sum(1);
}

}  // namespace dslens::samplers

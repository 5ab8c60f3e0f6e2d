// Euclidean metrics of HMC, batched over chains. The inverse metric M^-1 is what warmup estimates
// (the posterior (co)variance); momenta are p ~ N(0, M), the kinetic energy is p^T M^-1 p / 2 and
// dq/dt = M^-1 p ("p sharp" in Stan's notation).
#pragma once
#include <torch/torch.h>

#include "dslens/samplers/sampler_settings.h"

namespace dslens::samplers {

class Metric {
 public:
  Metric() = default;
  // Identity for `chains` chains in `dim` dimensions.
  static Metric identity(MetricKind kind, int64_t chains, int64_t dim,
                         const torch::TensorOptions& options);
  // inv: diag [C, D] or [D]; dense [C, D, D] or [D, D] (broadcast to every chain). Throws
  // dslens::InvalidArgument for a wrong shape, a non-positive diagonal or a matrix that is not
  // symmetric positive definite; symmetric means |M_ij - M_ji| <= kSymmetryTolerance
  // sqrt(M_ii M_jj), and the matrix is used as given.
  static constexpr double kSymmetryTolerance = 1e-5;
  static Metric from_inverse(MetricKind kind, const torch::Tensor& inv, int64_t chains, int64_t dim,
                             const torch::TensorOptions& options);

  MetricKind kind() const { return kind_; }
  // [C, D] for diag, [C, D, D] for dense.
  const torch::Tensor& inverse() const { return inv_; }

  // Momenta p ~ N(0, M) from standard normals [C, D].
  torch::Tensor momentum_from_normal(const torch::Tensor& z) const;
  // M^-1 p, [C, D].
  torch::Tensor velocity(const torch::Tensor& p) const;
  // p^T M^-1 p / 2, [C].
  torch::Tensor kinetic(const torch::Tensor& p) const;
  // Replaces the inverse metric of the chains where mask [C] is true (same kind and shape).
  void update(const torch::Tensor& new_inverse, const torch::Tensor& mask);

 private:
  void refresh();
  MetricKind kind_ = MetricKind::diag;
  torch::Tensor inv_;       // M^-1
  torch::Tensor sqrt_inv_;  // diag: 1 / sqrt(M^-1); dense: lower Cholesky factor L of M^-1
};

}  // namespace dslens::samplers

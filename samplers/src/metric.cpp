#include "dslens/samplers/metric.h"

#include <sstream>

#include "dslens/core/errors.h"

namespace dslens::samplers {

Metric Metric::identity(MetricKind kind, int64_t chains, int64_t dim,
                        const torch::TensorOptions& options) {
  Metric m;
  m.kind_ = kind;
  if (kind == MetricKind::diag) {
    m.inv_ = torch::ones({chains, dim}, options);
  } else {
    m.inv_ = torch::eye(dim, options).expand({chains, dim, dim}).contiguous();
  }
  m.refresh();
  return m;
}

Metric Metric::from_inverse(MetricKind kind, const torch::Tensor& inv, int64_t chains, int64_t dim,
                            const torch::TensorOptions& options) {
  Metric m;
  m.kind_ = kind;
  torch::Tensor x = inv.to(options);
  std::ostringstream want;
  if (kind == MetricKind::diag) {
    want << "[" << dim << "] or [" << chains << ", " << dim << "]";
    if (x.dim() == 1 && x.size(0) == dim) x = x.unsqueeze(0).expand({chains, dim});
    if (x.dim() != 2 || x.size(0) != chains || x.size(1) != dim)
      throw InvalidArgument("diag inv_metric must have shape " + want.str());
    if (!(x > 0).all().item<bool>() || !torch::isfinite(x).all().item<bool>())
      throw InvalidArgument("diag inv_metric must be positive and finite");
  } else {
    want << "[" << dim << ", " << dim << "] or [" << chains << ", " << dim << ", " << dim << "]";
    if (x.dim() == 2 && x.size(0) == dim && x.size(1) == dim)
      x = x.unsqueeze(0).expand({chains, dim, dim});
    if (x.dim() != 3 || x.size(0) != chains || x.size(1) != dim || x.size(2) != dim)
      throw InvalidArgument("dense inv_metric must have shape " + want.str());
    // Symmetric to round-off, measured against each entry's scale sqrt(x_ii x_jj): an estimate in
    // float32 (the sampler's own adapted metric, read back from a snapshot on --resume) is off by
    // ~1e-7 of that, where an absolute tolerance (allclose's 1e-8) rejects the entries near 0. The
    // matrix is kept as given, so that a resumed run uses the metric the interrupted one had.
    const auto d = x.diagonal(0, 1, 2).abs();
    const auto scale = (d.unsqueeze(2) * d.unsqueeze(1)).sqrt();
    if (!((x - x.transpose(1, 2)).abs() <= kSymmetryTolerance * scale).all().item<bool>())
      throw InvalidArgument("dense inv_metric must be symmetric (to " +
                            std::to_string(kSymmetryTolerance) + " of sqrt(M_ii M_jj))");
    auto info = std::get<1>(torch::linalg_cholesky_ex(x));
    if ((info != 0).any().item<bool>())
      throw InvalidArgument("dense inv_metric must be positive definite");
  }
  m.inv_ = x.contiguous();
  m.refresh();
  return m;
}

void Metric::refresh() {
  if (kind_ == MetricKind::diag) {
    sqrt_inv_ = torch::rsqrt(inv_);
  } else {
    sqrt_inv_ = torch::linalg_cholesky(inv_);
  }
}

torch::Tensor Metric::momentum_from_normal(const torch::Tensor& z) const {
  if (kind_ == MetricKind::diag) return z * sqrt_inv_;
  // M^-1 = L L^T, so p = L^-T z has covariance (L L^T)^-1 = M.
  return torch::linalg_solve_triangular(sqrt_inv_.transpose(1, 2), z.unsqueeze(-1),
                                        /*upper=*/true)
      .squeeze(-1);
}

torch::Tensor Metric::velocity(const torch::Tensor& p) const {
  if (kind_ == MetricKind::diag) return inv_ * p;
  return torch::matmul(inv_, p.unsqueeze(-1)).squeeze(-1);
}

torch::Tensor Metric::kinetic(const torch::Tensor& p) const {
  return 0.5 * (p * velocity(p)).sum(-1);
}

void Metric::update(const torch::Tensor& new_inverse, const torch::Tensor& mask) {
  if (new_inverse.sizes() != inv_.sizes())
    throw Error("Metric::update: new inverse metric has the wrong shape");
  torch::Tensor m = mask;
  while (m.dim() < inv_.dim()) m = m.unsqueeze(-1);
  inv_ = torch::where(m, new_inverse.to(inv_.options()), inv_).contiguous();
  refresh();
}

}  // namespace dslens::samplers

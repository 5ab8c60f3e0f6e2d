#include "dslens/samplers/laplace.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "dslens/core/errors.h"

namespace dslens::samplers {
namespace {
constexpr int64_t kCpuRowsPerCall = 64;
}  // namespace

torch::Tensor hessian_by_differences(const LogDensityFn& f, const torch::Tensor& x,
                                     const torch::Tensor& h, int64_t max_rows, int64_t& calls,
                                     const HessianBlock& known) {
  const int64_t B = x.size(0), D = x.size(1);
  const int64_t first = known.known() ? known.first : 0;
  const int64_t K = known.known() ? known.value.size(-1) : 0;
  if (known.known() && (known.value.dim() != 3 || known.value.size(0) != B ||
                        known.value.size(1) != K || first < 0 || first + K > D))
    throw InvalidArgument("Hessian by differences: the known block must be [" + std::to_string(B) +
                          ", K, K] within the " + std::to_string(D) + " coordinates");
  // The coordinates stepped: all but the known block's.
  std::vector<int64_t> stepped;
  for (int64_t j = 0; j < D; ++j)
    if (j < first || j >= first + K) stepped.push_back(j);
  const int64_t S = static_cast<int64_t>(stepped.size());
  const auto cpu64 = x.options().dtype(torch::kFloat64).device(torch::kCPU);
  auto H = torch::zeros({B, D, D}, cpu64);
  // On the CPU, calls of more than kCpuRowsPerCall rows cost several times more per row: for a
  // 100 x 100 image supersampled 2 x, 16 to 17 ms per row in calls of 4 to 64 rows, 73 to 86 ms in
  // calls of 256 to 512, and a Laplace approximation at 8 points took 19.9 s in calls of 512
  // rows, 4.3 s in calls of 64 (docs/benchmarks.md, session 52).
  const int64_t rows = x.is_cpu() ? std::min(max_rows, kCpuRowsPerCall) : max_rows;
  const int64_t k = std::max<int64_t>(1, std::min<int64_t>(S, rows / (2 * B)));
  for (int64_t s0 = 0; s0 < S; s0 += k) {
    const int64_t n = std::min(k, S - s0);
    const auto cols = torch::tensor(
        std::vector<int64_t>(stepped.begin() + s0, stepped.begin() + s0 + n), torch::kLong);
    const auto cols_x = cols.to(x.device());
    // Displacements [B, 2n, D]: +h_j e_j for this call's coordinates j, then -h_j e_j.
    auto eye = torch::zeros({n, D}, x.options());
    eye.index_copy_(1, cols_x, torch::eye(n, x.options()));
    auto step = h.index_select(1, cols_x);             // [B, n]
    auto plus = eye.unsqueeze(0) * step.unsqueeze(2);  // [B, n, D]
    auto q = torch::cat({x.unsqueeze(1) + plus, x.unsqueeze(1) - plus}, 1).reshape({-1, D});
    auto v = evaluate_checked(f, q);
    ++calls;
    auto g = v.grad.detach().reshape({B, 2 * n, D}).to(torch::kCPU, torch::kFloat64);
    if (!torch::isfinite(g).all().item<bool>())
      throw NumericalError(
          "Laplace approximation: the gradient is not finite near a mode (coordinates " +
          std::to_string(stepped[static_cast<size_t>(s0)]) + " to " +
          std::to_string(stepped[static_cast<size_t>(s0 + n - 1)]) + ")");
    auto diff = (g.narrow(1, 0, n) - g.narrow(1, n, n)) /
                (2.0 * step.to(torch::kCPU, torch::kFloat64).unsqueeze(2));  // [B, n, D]
    H.index_copy_(2, cols, diff.transpose(1, 2));
  }
  if (K > 0) {
    // The block's rows across the stepped columns are its columns' transposes (H is symmetric);
    // the block itself is the closed form.
    const auto all_stepped = torch::tensor(stepped, torch::kLong);
    if (S > 0) {
      const auto across = H.narrow(1, first, K).index_select(2, all_stepped);  // [B, K, S]
      H.narrow(2, first, K).index_copy_(1, all_stepped, across.transpose(1, 2));
    }
    H.narrow(1, first, K).narrow(2, first, K).copy_(known.value.to(torch::kCPU, torch::kFloat64));
  }
  return 0.5 * (H + H.transpose(1, 2));
}

namespace {
// |-H|^-1 through the eigen-decomposition: eigenvalues in absolute value (SoftAbs), floored at
// eigenvalue_floor x the largest and at 1 / max_variance. non_concave [B]: eigenvalues of -H <= 0.
torch::Tensor soft_abs_covariance(const torch::Tensor& H, const LaplaceSettings& settings,
                                  torch::Tensor& non_concave) {
  auto eig = torch::linalg_eigh(-H, "L");
  auto lambda = std::get<0>(eig), V = std::get<1>(eig);  // ascending
  non_concave = (lambda <= 0).sum(1);
  auto top = std::get<0>(lambda.abs().max(1, /*keepdim=*/true)).clamp_min(1e-300);
  auto floored = torch::maximum(lambda.abs(), settings.eigenvalue_floor * top)
                     .clamp_min(1.0 / settings.max_variance);
  auto cov = V.matmul((1.0 / floored).unsqueeze(2) * V.transpose(1, 2));
  return 0.5 * (cov + cov.transpose(1, 2));
}
}  // namespace

std::vector<NonConcaveDirection> non_concave_directions(const torch::Tensor& hessian) {
  if (!hessian.defined() || hessian.dim() != 3 || hessian.size(1) != hessian.size(2))
    throw InvalidArgument("non_concave_directions: the Hessians must be [B, D, D]");
  const auto eig = torch::linalg_eigh(-hessian.to(torch::kCPU, torch::kFloat64), "L");
  const auto lambda = std::get<0>(eig).contiguous();  // ascending
  const auto share = std::get<1>(eig).square();
  std::vector<NonConcaveDirection> out;
  for (int64_t b = 0; b < lambda.size(0); ++b) {
    for (int64_t k = 0; k < lambda.size(1) && lambda[b][k].item<double>() <= 0; ++k) {
      const auto top = share[b].select(1, k).max(0);
      out.push_back({b, std::get<1>(top).item<int64_t>(), std::get<0>(top).item<double>(),
                     -lambda[b][k].item<double>()});
    }
  }
  return out;
}

torch::Tensor difference_steps(const torch::Tensor& H, double relative_step, double max_step) {
  const auto width = 1.0 / H.diagonal(0, 1, 2).abs().clamp_min(1e-300).sqrt();
  return (relative_step * width).clamp(1e-7, max_step);
}

void LaplaceSettings::validate() const {
  auto positive = [](double v) { return v > 0 && std::isfinite(v); };
  if (!positive(initial_step) || !positive(relative_step) || !positive(max_step) ||
      !(eigenvalue_floor > 0 && eigenvalue_floor < 1) || !(max_variance > 0) || max_rows < 2)
    throw InvalidArgument(
        "Laplace settings: steps and max_variance must be positive, the eigenvalue floor in "
        "(0, 1) and max_rows >= 2");
}

LaplaceApproximation laplace_approximation(const LogDensityFn& f, const torch::Tensor& x,
                                           const LaplaceSettings& settings,
                                           const HessianBlockFn& block) {
  settings.validate();
  if (!x.defined() || x.dim() != 2 || x.size(0) < 1 || x.size(1) < 1 || !x.is_floating_point())
    throw InvalidArgument("Laplace approximation: modes must be a floating-point [B, D] tensor");
  torch::NoGradGuard no_grad;
  const auto xd = x.detach();
  LaplaceApproximation out;

  const HessianBlock known = block ? block(xd) : HessianBlock{};
  // Pass 1: a common small step; its diagonal sets each coordinate's step for pass 2.
  auto h1 = torch::full_like(xd, settings.initial_step);
  auto H1 = hessian_by_differences(f, xd, h1, settings.max_rows, out.log_density_calls, known);
  auto h2 = difference_steps(H1, settings.relative_step, settings.max_step);
  out.hessian = hessian_by_differences(f, xd, h2.to(xd.options()), settings.max_rows,
                                       out.log_density_calls, known);

  out.covariance = soft_abs_covariance(out.hessian, settings, out.non_concave);
  out.variance = out.covariance.diagonal(0, 1, 2).clone();
  return out;
}

torch::Tensor curvature_covariance(const LogDensityFn& f, const torch::Tensor& q,
                                   const torch::Tensor& widths, int64_t group,
                                   const LaplaceSettings& settings, int64_t& calls,
                                   torch::Tensor* non_concave) {
  settings.validate();
  if (!q.defined() || q.dim() != 2 || !widths.defined() || widths.sizes() != q.sizes() ||
      group < 1 || q.size(0) % group != 0)
    throw InvalidArgument(
        "curvature_covariance: points must be [C, D], widths the same shape, and the group size "
        "must divide C");
  torch::NoGradGuard no_grad;
  const int64_t C = q.size(0), D = q.size(1);
  const auto h = (settings.relative_step * widths.detach()).clamp(1e-7, settings.max_step);
  const auto H = hessian_by_differences(f, q.detach(), h.to(q.options()), settings.max_rows, calls);
  torch::Tensor flat;
  auto cov = soft_abs_covariance(H, settings, flat);
  if (non_concave) *non_concave = flat;
  if (group == 1) return cov;
  return cov.view({C / group, group, D, D})
      .mean(1, /*keepdim=*/true)
      .expand({C / group, group, D, D})
      .reshape({C, D, D});
}

std::vector<int64_t> seed_modes(const torch::Tensor& log_mass, int64_t chains, double nats,
                                const torch::Tensor& log_p, double height_nats) {
  if (!log_mass.defined() || log_mass.dim() != 2 || log_mass.size(1) < 1 || chains < 1 ||
      !(nats >= 0) || !(height_nats >= 0) || (log_p.defined() && log_p.sizes() != log_mass.sizes()))
    throw InvalidArgument(
        "seed_modes: log_mass (and log_p, if given) must be [groups, modes], chains >= 1, nats "
        "and height_nats >= 0");
  const auto m_all = log_mass.to(torch::kCPU, torch::kFloat64).contiguous();
  const auto p_all = log_p.defined() ? log_p.to(torch::kCPU, torch::kFloat64).contiguous()
                                     : torch::full_like(m_all, -INFINITY);
  const int64_t groups = m_all.size(0), k_modes = m_all.size(1);
  std::vector<int64_t> rows;
  for (int64_t g = 0; g < groups; ++g) {
    const double* m = m_all.data_ptr<double>() + g * k_modes;
    const double* p = p_all.data_ptr<double>() + g * k_modes;
    std::vector<int64_t> order;
    double best_m = -INFINITY, best_p = -INFINITY;
    for (int64_t k = 0; k < k_modes; ++k) {
      if (!std::isfinite(m[k])) continue;
      order.push_back(k);
      best_m = std::max(best_m, m[k]);
      if (std::isfinite(p[k])) best_p = std::max(best_p, p[k]);
    }
    std::stable_sort(order.begin(), order.end(), [m](int64_t a, int64_t b) { return m[a] > m[b]; });
    std::vector<int64_t> good;
    for (int64_t k : order)
      if (m[k] >= best_m - nats || (std::isfinite(p[k]) && p[k] >= best_p - height_nats))
        good.push_back(k);
    const int64_t n_good = static_cast<int64_t>(good.size());
    for (int64_t c = 0; c < chains; ++c)
      rows.push_back(g * k_modes + (n_good > 0 ? good[c % n_good] : 0));
  }
  return rows;
}

}  // namespace dslens::samplers

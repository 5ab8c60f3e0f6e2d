#include "dslens/model/arcs_placement.h"

#include <cmath>
#include <utility>

#include "dslens/core/errors.h"

namespace dslens::model {

torch::Tensor weighted_quantiles(const torch::Tensor& v, const torch::Tensor& w,
                                 const std::vector<double>& fractions) {
  if (v.dim() != 2 || w.sizes() != v.sizes()) {
    throw InvalidArgument("weighted_quantiles: values and weights must both be [B, P]");
  }
  const int64_t P = v.size(1);
  // Weightless points moved to the weighted mean: they then split a step of the distribution
  // inside its bulk, not in the tails the placement reads, whatever noise put them far out.
  const auto total = w.sum(1, true);
  const auto mean = (w * v).sum(1, true) / total.clamp_min(1e-300);
  const auto placed = torch::where(w > 0, v, mean.expand_as(v));
  const auto [sorted, order] = placed.sort(1);
  const auto cum = w.gather(1, order).cumsum(1);
  std::vector<torch::Tensor> out;
  for (const double f : fractions) {
    const auto target = f * total;
    // The first point whose cumulative weight reaches the target, and the one before it.
    const auto k = (cum < target).sum(1, true).clamp_max(P - 1);
    const auto k0 = (k - 1).clamp_min(0);
    const auto hi_v = sorted.gather(1, k), lo_v = sorted.gather(1, k0);
    const auto hi_c = cum.gather(1, k);
    const auto lo_c = torch::where(k > 0, cum.gather(1, k0), torch::zeros_like(hi_c));
    const auto t = ((target - lo_c) / (hi_c - lo_c).clamp_min(1e-300)).clamp(0.0, 1.0);
    out.push_back(lo_v + t * (hi_v - lo_v));
  }
  return torch::cat(out, 1);
}

torch::Tensor smoothed_weighted_quantiles(const torch::Tensor& v, const torch::Tensor& w,
                                          const std::vector<double>& fractions, double width) {
  if (!(width > 0)) throw InvalidArgument("smoothed_weighted_quantiles: width must be > 0");
  const auto total = w.sum(1, true).clamp_min(1e-300);  // [B, 1]
  const double inv_sqrt2 = 1.0 / std::sqrt(2.0), inv_sqrt_2pi = 1.0 / std::sqrt(2.0 * M_PI);
  // The kernel CDF's excess over f and its density at t [B, 1]. (The fractions stay host scalars:
  // a tensor made from them would be a host-to-device copy, which a captured CUDA graph cannot
  // contain.)
  const auto excess_and_density = [&](const torch::Tensor& t, double f) {
    const auto z = (t - v) / width;
    const auto cdf = (w * 0.5 * torch::erfc(-z * inv_sqrt2)).sum(1, true) / total;
    const auto pdf = (w * torch::exp(-0.5 * z * z)).sum(1, true) * inv_sqrt_2pi / (width * total);
    return std::pair{cdf - f, pdf};
  };
  torch::Tensor start;
  {
    torch::NoGradGuard no_grad;
    start = weighted_quantiles(v.detach(), w.detach(), fractions);
  }
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < fractions.size(); ++i) {
    const double f = fractions[i];
    // Newton's method from the interpolated quantile (within about a width of the root), steps
    // held to two widths where the density is thin, then one step with the gradient: at the root
    // it is the implicit function's, dt = -dF / f.
    torch::Tensor t = start.narrow(1, static_cast<int64_t>(i), 1);
    {
      torch::NoGradGuard no_grad;
      for (int k = 0; k < 6; ++k) {
        const auto [excess, density] = excess_and_density(t, f);
        t = t - (excess / density.clamp_min(1e-300)).clamp(-2.0 * width, 2.0 * width);
      }
    }
    const auto [excess, density] = excess_and_density(t, f);
    out.push_back(t - excess / density.detach().clamp_min(1e-300));
  }
  return torch::cat(out, 1);
}

torch::Tensor magnification_ramp(const torch::Tensor& inverse_mu, double min_mu, double full_mu) {
  if (!(min_mu > 0)) return torch::ones_like(inverse_mu);
  if (!(full_mu > min_mu)) {
    throw InvalidArgument("magnification ramp: full_magnification must exceed min_magnification");
  }
  const double a = 1.0 / min_mu, b = 1.0 / full_mu;
  const auto ramp = ((a - inverse_mu) / (a - b)).clamp(0.0, 1.0);
  return torch::where(torch::isnan(inverse_mu), torch::zeros_like(ramp), ramp);
}

GridPlacement place_on_arcs(const torch::Tensor& bx, const torch::Tensor& by,
                            const torch::Tensor& weight, const ArcsPlacementSpec& spec) {
  if (spec.size < 1) throw InvalidArgument("place_on_arcs: the grid's size must be >= 1");
  const auto w = weight;
  const auto x = bx.expand_as(w), y = by.expand_as(w);
  const double tail = 0.5 * (1.0 - spec.flux_fraction);
  const double h = spec.smoothing;
  const auto qx = smoothed_weighted_quantiles(x, w, {tail, 1.0 - tail}, h);
  const auto qy = smoothed_weighted_quantiles(y, w, {tail, 1.0 - tail}, h);
  const auto half =
      torch::maximum(qx.select(1, 1) - qx.select(1, 0), qy.select(1, 1) - qy.select(1, 0)) * 0.5;
  const auto ok = (w.sum(1) > 0) & (half > 0);
  const double n = static_cast<double>(spec.size);
  GridPlacement p;
  p.center_x = torch::where(ok, 0.5 * (qx.select(1, 0) + qx.select(1, 1)), torch::zeros_like(half));
  p.center_y = torch::where(ok, 0.5 * (qy.select(1, 0) + qy.select(1, 1)), torch::zeros_like(half));
  p.scale = torch::where(ok, spec.side_per_half_width * half / n,
                         torch::full_like(half, spec.fallback_side / n));
  return p;
}

}  // namespace dslens::model

#include "dslens/physics/lens_equation.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace dslens::physics {

std::vector<LensImage> solve_lens_equation(const LensModel& lens, double beta_x, double beta_y,
                                           const PixelGrid& grid, const Compute& compute,
                                           int64_t oversample, double tolerance) {
  torch::NoGradGuard no_grad;
  const auto [gx, gy] = grid.supersampled_coordinates(oversample, compute);
  const int64_t H = gx.size(0), W = gx.size(1);
  const auto [bx, by] = lens.ray_shoot(gx.reshape({1, -1}), gy.reshape({1, -1}));
  auto d2 = ((bx - beta_x).square() + (by - beta_y).square()).reshape({1, 1, H, W});
  d2 = torch::nan_to_num(d2, INFINITY, INFINITY, INFINITY);
  // Local minima over each fine pixel's 3 x 3 neighbourhood (the grid's edge included).
  const auto neighbourhood_min = -torch::max_pool2d(-d2, {3, 3}, {1, 1}, {1, 1}).reshape({H * W});
  const auto flat = d2.reshape({H * W});
  const auto candidates =
      torch::nonzero((flat <= neighbourhood_min) & torch::isfinite(flat)).reshape({-1});
  if (candidates.numel() == 0) return {};
  auto x = gx.reshape({-1}).index_select(0, candidates).unsqueeze(0);
  auto y = gy.reshape({-1}).index_select(0, candidates).unsqueeze(0);
  const double max_step = grid.pixel_scale;
  for (int it = 0; it < 50; ++it) {
    const auto [sx, sy] = lens.ray_shoot(x, y);
    const auto h = lens.hessian(x, y);
    const auto a = 1.0 - h.xx, d = 1.0 - h.yy, c = -h.xy;
    const auto det = a * d - c * c;
    const auto rx = beta_x - sx, ry = beta_y - sy;
    // A is symmetric: A^-1 = [[d, -c], [-c, a]] / det.
    auto dx = (d * rx - c * ry) / det, dy = (a * ry - c * rx) / det;
    const auto len = torch::sqrt(dx * dx + dy * dy);
    const auto shrink = torch::clamp_max(max_step / len.clamp_min(1e-300), 1.0);
    x = x + torch::nan_to_num(dx * shrink, 0.0, 0.0, 0.0);
    y = y + torch::nan_to_num(dy * shrink, 0.0, 0.0, 0.0);
  }
  const auto [sx, sy] = lens.ray_shoot(x, y);
  const auto miss = torch::sqrt((sx - beta_x).square() + (sy - beta_y).square()).reshape({-1});
  const auto mu = lens.magnification(x, y).reshape({-1});
  const auto xs = x.reshape({-1}).to(torch::kCPU, torch::kFloat64);
  const auto ys = y.reshape({-1}).to(torch::kCPU, torch::kFloat64);
  const auto misses = miss.to(torch::kCPU, torch::kFloat64);
  const auto mus = mu.to(torch::kCPU, torch::kFloat64);
  const auto edges = grid.edges();
  const double merge = grid.pixel_scale / static_cast<double>(oversample);
  std::vector<LensImage> out;
  for (int64_t k = 0; k < xs.size(0); ++k) {
    const double px = xs[k].item<double>(), py = ys[k].item<double>();
    const double m = mus[k].item<double>();
    if (!(misses[k].item<double>() <= tolerance) || !std::isfinite(m)) continue;
    if (!edges.contains(px, py)) continue;
    const bool seen = std::any_of(out.begin(), out.end(), [&](const LensImage& o) {
      return std::hypot(o.x - px, o.y - py) < merge;
    });
    if (!seen) out.push_back({px, py, m});
  }
  std::sort(out.begin(), out.end(), [](const LensImage& a, const LensImage& b) {
    return std::abs(a.magnification) > std::abs(b.magnification);
  });
  return out;
}

}  // namespace dslens::physics

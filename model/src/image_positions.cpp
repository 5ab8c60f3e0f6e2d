#include "dslens/model/image_positions.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "per_row.h"

namespace dslens::model {
namespace image_positions_detail {

// sum_p values[r, p] member[r, p, g]: [R, P] -> [R, G].
torch::Tensor sum_over_members(const torch::Tensor& values, const torch::Tensor& member) {
  return torch::bmm(values.unsqueeze(1), member).squeeze(1);
}

// Each image's feature's value: [R, G] -> [R, P].
torch::Tensor of_members(const torch::Tensor& per_group, const torch::Tensor& member) {
  return torch::bmm(member, per_group.unsqueeze(2)).squeeze(2);
}

struct Terms {
  torch::Tensor chi_square;  // [R, G]
  torch::Tensor log_det;     // [R, G]: log det S, 0 for a feature without images
};

Terms terms(const physics::LensModel& lens, const ImagePositions& pos, int64_t per) {
  const auto x = per_row(pos.x, per), y = per_row(pos.y, per);
  const auto w = per_row(pos.inv_var, per);
  const auto member = per_row(pos.member, per);
  const auto [bx, by] = lens.ray_shoot(x, y);
  const auto h = lens.hessian(x, y);
  // A = I - H = [[a, c], [c, d]]; (A A^T)^-1 = adj(A)^T adj(A) / det(A)^2 with
  // adj(A) = [[d, -c], [-c, a]] (Birrer & Treu 2019, eq. 13, inverted in closed form).
  const auto a = 1.0 - h.xx, d = 1.0 - h.yy, c = -h.xy;
  const auto det = a * d - c * c;
  const auto scale = w / (det * det);
  const auto p00 = scale * (d * d + c * c), p11 = scale * (a * a + c * c);
  const auto p01 = -scale * c * (a + d);
  const auto s00 = sum_over_members(p00, member), s01 = sum_over_members(p01, member),
             s11 = sum_over_members(p11, member);
  const auto v0 = sum_over_members(p00 * bx + p01 * by, member),
             v1 = sum_over_members(p01 * bx + p11 * by, member);
  const auto has = member.sum(1) > 0;
  const auto det_s = torch::where(has, s00 * s11 - s01 * s01, torch::ones_like(s00));
  const auto b0 = (s11 * v0 - s01 * v1) / det_s, b1 = (s00 * v1 - s01 * v0) / det_s;
  // The residuals from the fitted source position, not sum_i beta_i^T P_i beta_i - v^T S^-1 v:
  // near a critical curve P_i is large and that difference would cancel its digits away.
  const auto r0 = bx - of_members(b0, member), r1 = by - of_members(b1, member);
  const auto chi = p00 * r0 * r0 + 2.0 * p01 * r0 * r1 + p11 * r1 * r1;
  return {sum_over_members(chi, member),
          torch::where(has, torch::log(det_s), torch::zeros_like(det_s))};
}

std::array<double, 2> position(const ConfigNode& p) {
  if (!p.is_array() || p.size() != 2) {
    p.fail("value " + json_excerpt(p.value()) + " is not allowed; allowed: [x, y] in arcsec");
  }
  return {p.at(size_t{0}).as_number(), p.at(size_t{1}).as_number()};
}

}  // namespace image_positions_detail

using namespace image_positions_detail;

std::vector<ImagePositionGroup> parse_image_positions(const ConfigNode& node) {
  node.require_array();
  std::vector<ImagePositionGroup> out;
  for (const ConfigNode& g : node.elements()) {
    g.require_object();
    g.allow_only({"images", "sigma"});
    ImagePositionGroup group;
    const ConfigNode images = g.at("images");
    images.require_array();
    if (images.size() < 2) {
      images.fail("value " + json_excerpt(images.value()) +
                  " is not allowed; allowed: two or more images [[x, y], [x, y], ...] of one "
                  "source feature (arcsec)");
    }
    for (const ConfigNode& p : images.elements()) group.images.push_back(position(p));
    group.sigma = g.number("sigma", Range::positive());
    out.push_back(std::move(group));
  }
  return out;
}

ImagePositions ImagePositions::to(const torch::TensorOptions& options) const {
  if (!defined()) return *this;
  return {x.to(options), y.to(options), inv_var.to(options), member.to(options)};
}

ImagePositions ImagePositions::with_sigma_scaled(double factor) const {
  if (!defined()) return *this;
  return {x, y, inv_var / (factor * factor), member};
}

ImagePositions batch_image_positions(const std::vector<std::vector<ImagePositionGroup>>& lenses) {
  const int64_t L = static_cast<int64_t>(lenses.size());
  int64_t P = 0, G = 0;
  for (const auto& groups : lenses) {
    int64_t n = 0;
    for (const auto& g : groups) n += static_cast<int64_t>(g.images.size());
    P = std::max(P, n);
    G = std::max(G, static_cast<int64_t>(groups.size()));
  }
  if (P == 0) return {};
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  // Padding sits 10" out, where any lens's Hessian is finite (at 0, 0 an EPL's is not, and its
  // NaN times the padding's weight 0 would still be NaN).
  auto x = torch::full({L, P}, 10.0, f64), y = torch::full({L, P}, 10.0, f64);
  auto inv_var = torch::zeros({L, P}, f64), member = torch::zeros({L, P, G}, f64);
  for (int64_t l = 0; l < L; ++l) {
    int64_t p = 0;
    for (size_t g = 0; g < lenses[l].size(); ++g) {
      const auto& group = lenses[l][g];
      for (const auto& [ix, iy] : group.images) {
        x[l][p] = ix;
        y[l][p] = iy;
        inv_var[l][p] = 1.0 / (group.sigma * group.sigma);
        member[l][p][static_cast<int64_t>(g)] = 1.0;
        ++p;
      }
    }
  }
  return {x, y, inv_var, member};
}

torch::Tensor image_positions_log_likelihood(const physics::LensModel& lens,
                                             const ImagePositions& positions, int64_t per) {
  const auto t = terms(lens, positions, per);
  return -0.5 * (t.chi_square + t.log_det).sum(1);
}

torch::Tensor image_positions_chi_square(const physics::LensModel& lens,
                                         const ImagePositions& positions, int64_t per) {
  return terms(lens, positions, per).chi_square;
}

}  // namespace dslens::model

// LensModel: sums over mass components (lenstronomy's LensModel, single plane).
#include "dslens/physics/lens_model.h"

#include <torch/torch.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "dslens/core/errors.h"

namespace dslens::physics {

namespace lens_model_detail {

// [B, N] zeros for an empty model: B, N from the coordinates.
Tensor zeros_for(const Tensor& x, const Tensor& y) {
  auto shape = std::vector<int64_t>{std::max(x.size(0), y.size(0)), std::max(x.size(1), y.size(1))};
  return torch::zeros(shape, x.options());
}

Tensor add(const Tensor& total, const Tensor& term) {
  return total.defined() ? total + term : term;
}

void check(const MassComponent& c) {
  if (!c.profile) throw InvalidArgument("lens model: a component has no mass profile");
}

}  // namespace lens_model_detail

Deflection LensModel::deflection(const Tensor& x, const Tensor& y) const {
  Tensor ax, ay;
  for (const auto& c : components_) {
    lens_model_detail::check(c);
    auto a = c.profile->deflection(x, y, c.params);
    ax = lens_model_detail::add(ax, a.x);
    ay = lens_model_detail::add(ay, a.y);
  }
  if (!ax.defined())
    return {lens_model_detail::zeros_for(x, y), lens_model_detail::zeros_for(x, y)};
  return {ax, ay};
}

Tensor LensModel::potential(const Tensor& x, const Tensor& y) const {
  Tensor total;
  for (const auto& c : components_) {
    lens_model_detail::check(c);
    total = lens_model_detail::add(total, c.profile->potential(x, y, c.params));
  }
  return total.defined() ? total : lens_model_detail::zeros_for(x, y);
}

Hessian LensModel::hessian(const Tensor& x, const Tensor& y) const {
  Tensor xx, xy, yy;
  for (const auto& c : components_) {
    lens_model_detail::check(c);
    auto h = c.profile->hessian(x, y, c.params);
    xx = lens_model_detail::add(xx, h.xx);
    xy = lens_model_detail::add(xy, h.xy);
    yy = lens_model_detail::add(yy, h.yy);
  }
  if (!xx.defined()) {
    auto z = lens_model_detail::zeros_for(x, y);
    return {z, z, z};
  }
  return {xx, xy, yy};
}

Tensor LensModel::convergence(const Tensor& x, const Tensor& y) const {
  Tensor total;
  for (const auto& c : components_) {
    lens_model_detail::check(c);
    total = lens_model_detail::add(total, c.profile->convergence(x, y, c.params));
  }
  return total.defined() ? total : lens_model_detail::zeros_for(x, y);
}

Tensor LensModel::magnification(const Tensor& x, const Tensor& y) const {
  auto h = hessian(x, y);
  auto det = (1.0 - h.xx) * (1.0 - h.yy) - h.xy * h.xy;
  return 1.0 / det;
}

std::pair<Tensor, Tensor> LensModel::ray_shoot(const Tensor& x, const Tensor& y) const {
  auto a = deflection(x, y);
  return {x - a.x, y - a.y};
}

}  // namespace dslens::physics

// A lens model: a sum of mass profiles, each with its parameters (lenstronomy's LensModel).
#pragma once
#include <memory>
#include <utility>
#include <vector>

#include "dslens/physics/profile.h"

namespace dslens::physics {

struct MassComponent {
  std::shared_ptr<const MassProfile> profile;
  ParamMap params;  // name -> [B]
};

class LensModel {
 public:
  LensModel() = default;
  explicit LensModel(std::vector<MassComponent> components) : components_(std::move(components)) {}
  void add(std::shared_ptr<const MassProfile> profile, ParamMap params) {
    components_.push_back({std::move(profile), std::move(params)});
  }
  const std::vector<MassComponent>& components() const { return components_; }
  bool empty() const { return components_.empty(); }

  // Sums over components; x, y: [B, N] or [1, N] -> [B, N].
  Deflection deflection(const Tensor& x, const Tensor& y) const;
  Tensor potential(const Tensor& x, const Tensor& y) const;
  Hessian hessian(const Tensor& x, const Tensor& y) const;
  Tensor convergence(const Tensor& x, const Tensor& y) const;
  // mu = 1 / det(A), A = I - Hessian.
  Tensor magnification(const Tensor& x, const Tensor& y) const;
  // Lens equation: beta = theta - alpha(theta). Returns (beta_x, beta_y).
  std::pair<Tensor, Tensor> ray_shoot(const Tensor& x, const Tensor& y) const;

 private:
  std::vector<MassComponent> components_;
};

}  // namespace dslens::physics

// Mass-profile registry, parameter helpers and the default (autograd) Hessian.
#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/physics/mass_profiles.h"
#include "dslens/physics/profile.h"

namespace dslens::physics {

namespace mass_registry_detail {

using Factory = std::function<std::shared_ptr<const MassProfile>()>;

const std::map<std::string, Factory>& factories() {
  static const std::map<std::string, Factory> table = {
      {"SIS", [] { return std::make_shared<const SISProfile>(); }},
      {"SIE", [] { return std::make_shared<const SIEProfile>(); }},
      {"EPL", [] { return std::make_shared<const EPLProfile>(); }},
      {"SHEAR", [] { return std::make_shared<const ShearProfile>(); }},
      {"NFW", [] { return std::make_shared<const NFWProfile>(); }},
      {"POINT_MASS", [] { return std::make_shared<const PointMassProfile>(); }},
      {"MULTIPOLE", [] { return std::make_shared<const MultipoleProfile>(); }},
      {"CONVERGENCE", [] { return std::make_shared<const ConvergenceProfile>(); }},
  };
  return table;
}

std::string joined_types() {
  std::string out;
  for (const auto& [name, factory] : factories()) out += (out.empty() ? "" : ", ") + name;
  return out;
}

// A gradient that autograd reports as undefined (output independent of that input) -> zeros.
Tensor or_zeros(const Tensor& g, const std::vector<int64_t>& shape, const Tensor& like) {
  if (g.defined()) return g.expand(shape);
  return torch::zeros(shape, like.options());
}

}  // namespace mass_registry_detail

std::shared_ptr<const MassProfile> make_mass_profile(const std::string& type) {
  const auto& table = mass_registry_detail::factories();
  auto it = table.find(type);
  if (it == table.end())
    throw InvalidArgument("unknown mass profile type '" + type +
                          "'; allowed: " + mass_registry_detail::joined_types());
  return it->second();
}

std::vector<std::string> mass_profile_types() {
  std::vector<std::string> out;
  for (const auto& [name, factory] : mass_registry_detail::factories()) out.push_back(name);
  return out;
}

std::map<std::string, double> mass_profile_defaults(const std::string& type) {
  if (type == "SHEAR" || type == "CONVERGENCE") return {{"ra_0", 0.0}, {"dec_0", 0.0}};
  if (type == "MULTIPOLE") return {{"r_E", 1.0}};
  if (!mass_registry_detail::factories().count(type))
    throw InvalidArgument("unknown mass profile type '" + type +
                          "'; allowed: " + mass_registry_detail::joined_types());
  return {};
}

namespace mass {

Tensor required_param(const ParamMap& p, const std::string& profile, const std::string& name) {
  auto it = p.find(name);
  if (it == p.end() || !it->second.defined())
    throw InvalidArgument("mass profile " + profile + ": missing parameter '" + name + "'");
  return it->second;
}

Tensor optional_param(const ParamMap& p, const std::string& name, double fallback,
                      const Tensor& like) {
  auto it = p.find(name);
  if (it != p.end() && it->second.defined()) return it->second;
  return torch::full({1}, fallback, like.options().requires_grad(false));
}

std::vector<int64_t> result_shape(const Tensor& x, const Tensor& y, const ParamMap& p) {
  if (x.dim() != 2 || y.dim() != 2)
    throw InvalidArgument("mass profile: coordinates must be [B, N] or [1, N]");
  int64_t batch = std::max(x.size(0), y.size(0));
  for (const auto& [name, value] : p)
    if (value.defined() && value.numel() > 1) batch = std::max<int64_t>(batch, value.size(0));
  return {batch, std::max(x.size(1), y.size(1))};
}

}  // namespace mass

// Autograd of the deflection: f_xx = d alpha_x / dx, f_xy = d alpha_x / dy, f_yy = d alpha_y / dy.
// The graph is kept (create_graph) whenever the caller records gradients, so the Hessian stays
// differentiable in the parameters and coordinates.
Hessian MassProfile::hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  const bool outer_grad = torch::GradMode::is_enabled();
  auto shape = mass::result_shape(x, y, p);
  torch::AutoGradMode enable(true);
  auto prepare = [&](const Tensor& c) {
    Tensor base = outer_grad ? c : c.detach();
    Tensor out = base.expand(shape).clone();
    if (!out.requires_grad()) out.requires_grad_(true);
    return out;
  };
  Tensor xe = prepare(x), ye = prepare(y);
  Deflection a = deflection(xe, ye, p);
  Tensor ax = a.x.expand(shape), ay = a.y.expand(shape);
  bool keep = outer_grad;
  auto ones = torch::ones(shape, xe.options().requires_grad(false));
  auto gx = torch::autograd::grad({ax}, {xe, ye}, {ones}, /*retain_graph=*/true,
                                  /*create_graph=*/keep, /*allow_unused=*/true);
  auto gy = torch::autograd::grad({ay}, {ye}, {ones}, /*retain_graph=*/keep,
                                  /*create_graph=*/keep, /*allow_unused=*/true);
  Hessian h{mass_registry_detail::or_zeros(gx[0], shape, xe),
            mass_registry_detail::or_zeros(gx[1], shape, xe),
            mass_registry_detail::or_zeros(gy[0], shape, xe)};
  if (!keep) h = {h.xx.detach(), h.xy.detach(), h.yy.detach()};
  return h;
}

Tensor MassProfile::convergence(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  Hessian h = hessian(x, y, p);
  return 0.5 * (h.xx + h.yy);
}

}  // namespace dslens::physics

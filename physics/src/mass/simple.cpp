// Closed-form mass profiles: SIS, SHEAR, CONVERGENCE, POINT_MASS (lenstronomy's formulas).
#include <torch/torch.h>

#include <string>
#include <vector>

#include "dslens/physics/mass_profiles.h"

namespace dslens::physics {

namespace simple_mass_detail {

// Squared radius floored so that 1/r and sqrt stay finite (and their gradients zero) at r = 0.
constexpr double kTinyR2 = 1e-30;

Tensor radius2(const Tensor& dx, const Tensor& dy) {
  return (dx * dx + dy * dy).clamp_min(kTinyR2);
}

Tensor full(const Tensor& t, const std::vector<int64_t>& shape) {
  return t.expand(shape);
}

}  // namespace simple_mass_detail

// ----------------------------------------------------------------------------------------- SIS
std::vector<std::string> SISProfile::param_names() const {
  return {"theta_E", "center_x", "center_y"};
}

Deflection SISProfile::deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto te = per_batch(mass::required_param(p, "SIS", "theta_E"), x);
  auto dx = x - per_batch(mass::required_param(p, "SIS", "center_x"), x);
  auto dy = y - per_batch(mass::required_param(p, "SIS", "center_y"), y);
  auto a = te * torch::rsqrt(simple_mass_detail::radius2(dx, dy));
  auto shape = mass::result_shape(x, y, p);
  return {simple_mass_detail::full(a * dx, shape), simple_mass_detail::full(a * dy, shape)};
}

Tensor SISProfile::potential(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto te = per_batch(mass::required_param(p, "SIS", "theta_E"), x);
  auto dx = x - per_batch(mass::required_param(p, "SIS", "center_x"), x);
  auto dy = y - per_batch(mass::required_param(p, "SIS", "center_y"), y);
  return simple_mass_detail::full(te * torch::sqrt(simple_mass_detail::radius2(dx, dy)),
                                  mass::result_shape(x, y, p));
}

Hessian SISProfile::hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto te = per_batch(mass::required_param(p, "SIS", "theta_E"), x);
  auto dx = x - per_batch(mass::required_param(p, "SIS", "center_x"), x);
  auto dy = y - per_batch(mass::required_param(p, "SIS", "center_y"), y);
  auto r2 = simple_mass_detail::radius2(dx, dy);
  auto prefac = te * torch::rsqrt(r2) / r2;  // theta_E / r^3
  auto shape = mass::result_shape(x, y, p);
  return {simple_mass_detail::full(dy * dy * prefac, shape),
          simple_mass_detail::full(-dx * dy * prefac, shape),
          simple_mass_detail::full(dx * dx * prefac, shape)};
}

// --------------------------------------------------------------------------------------- SHEAR
std::vector<std::string> ShearProfile::param_names() const {
  return {"gamma1", "gamma2", "ra_0", "dec_0"};
}

Deflection ShearProfile::deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto g1 = per_batch(mass::required_param(p, "SHEAR", "gamma1"), x);
  auto g2 = per_batch(mass::required_param(p, "SHEAR", "gamma2"), x);
  // Without ra_0 / dec_0 (the usual case) the coordinates are used as they are: subtracting a
  // zero would cost operators on every evaluation of the sampler.
  const auto has = [&](const char* name) { return p.count(name) && p.at(name).defined(); };
  auto dx = has("ra_0") ? x - per_batch(p.at("ra_0"), x) : x;
  auto dy = has("dec_0") ? y - per_batch(p.at("dec_0"), y) : y;
  auto shape = mass::result_shape(x, y, p);
  return {simple_mass_detail::full(g1 * dx + g2 * dy, shape),
          simple_mass_detail::full(g2 * dx - g1 * dy, shape)};
}

Tensor ShearProfile::potential(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto g1 = per_batch(mass::required_param(p, "SHEAR", "gamma1"), x);
  auto g2 = per_batch(mass::required_param(p, "SHEAR", "gamma2"), x);
  auto dx = x - per_batch(mass::optional_param(p, "ra_0", 0.0, x), x);
  auto dy = y - per_batch(mass::optional_param(p, "dec_0", 0.0, y), y);
  return simple_mass_detail::full(0.5 * (g1 * dx * dx + 2.0 * g2 * dx * dy - g1 * dy * dy),
                                  mass::result_shape(x, y, p));
}

Hessian ShearProfile::hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto g1 = per_batch(mass::required_param(p, "SHEAR", "gamma1"), x);
  auto g2 = per_batch(mass::required_param(p, "SHEAR", "gamma2"), x);
  auto shape = mass::result_shape(x, y, p);
  // ra_0/dec_0 do not enter the Hessian; keep x, y in the graph with a zero factor.
  auto zero = 0.0 * (x + y);
  return {simple_mass_detail::full(g1 + zero, shape), simple_mass_detail::full(g2 + zero, shape),
          simple_mass_detail::full(-g1 + zero, shape)};
}

// --------------------------------------------------------------------------------- CONVERGENCE
std::vector<std::string> ConvergenceProfile::param_names() const {
  return {"kappa", "ra_0", "dec_0"};
}

Deflection ConvergenceProfile::deflection(const Tensor& x, const Tensor& y,
                                          const ParamMap& p) const {
  auto k = per_batch(mass::required_param(p, "CONVERGENCE", "kappa"), x);
  auto dx = x - per_batch(mass::optional_param(p, "ra_0", 0.0, x), x);
  auto dy = y - per_batch(mass::optional_param(p, "dec_0", 0.0, y), y);
  auto shape = mass::result_shape(x, y, p);
  return {simple_mass_detail::full(k * dx, shape), simple_mass_detail::full(k * dy, shape)};
}

Tensor ConvergenceProfile::potential(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto k = per_batch(mass::required_param(p, "CONVERGENCE", "kappa"), x);
  auto dx = x - per_batch(mass::optional_param(p, "ra_0", 0.0, x), x);
  auto dy = y - per_batch(mass::optional_param(p, "dec_0", 0.0, y), y);
  return simple_mass_detail::full(0.5 * k * (dx * dx + dy * dy), mass::result_shape(x, y, p));
}

Hessian ConvergenceProfile::hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto k = per_batch(mass::required_param(p, "CONVERGENCE", "kappa"), x);
  auto shape = mass::result_shape(x, y, p);
  auto zero = 0.0 * (x + y);
  return {simple_mass_detail::full(k + zero, shape), simple_mass_detail::full(zero, shape),
          simple_mass_detail::full(k + zero, shape)};
}

// ---------------------------------------------------------------------------------- POINT_MASS
std::vector<std::string> PointMassProfile::param_names() const {
  return {"theta_E", "center_x", "center_y"};
}

Deflection PointMassProfile::deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto te = per_batch(mass::required_param(p, "POINT_MASS", "theta_E"), x);
  auto dx = x - per_batch(mass::required_param(p, "POINT_MASS", "center_x"), x);
  auto dy = y - per_batch(mass::required_param(p, "POINT_MASS", "center_y"), y);
  auto a = te * te / simple_mass_detail::radius2(dx, dy);
  auto shape = mass::result_shape(x, y, p);
  return {simple_mass_detail::full(a * dx, shape), simple_mass_detail::full(a * dy, shape)};
}

Tensor PointMassProfile::potential(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto te = per_batch(mass::required_param(p, "POINT_MASS", "theta_E"), x);
  auto dx = x - per_batch(mass::required_param(p, "POINT_MASS", "center_x"), x);
  auto dy = y - per_batch(mass::required_param(p, "POINT_MASS", "center_y"), y);
  return simple_mass_detail::full(0.5 * te * te * torch::log(simple_mass_detail::radius2(dx, dy)),
                                  mass::result_shape(x, y, p));
}

Hessian PointMassProfile::hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto te = per_batch(mass::required_param(p, "POINT_MASS", "theta_E"), x);
  auto dx = x - per_batch(mass::required_param(p, "POINT_MASS", "center_x"), x);
  auto dy = y - per_batch(mass::required_param(p, "POINT_MASS", "center_y"), y);
  auto r2 = simple_mass_detail::radius2(dx, dy);
  auto c = te * te / (r2 * r2);
  auto shape = mass::result_shape(x, y, p);
  auto d = c * (dy * dy - dx * dx);
  return {simple_mass_detail::full(d, shape), simple_mass_detail::full(-2.0 * c * dx * dy, shape),
          simple_mass_detail::full(-d, shape)};
}

}  // namespace dslens::physics

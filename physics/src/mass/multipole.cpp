// MULTIPOLE: lenstronomy's circular multipole (Xu et al. 2013, eq. B12), m >= 1.
//   m >= 2: psi = r a_m/(1-m^2) cos(m(phi - phi_m));
//   m == 1: psi = r ln(r/r_E) a_m/2 cos(phi - phi_m), r_E default 1.
// m is a [B] tensor of integers; batches may mix m = 1 and m >= 2.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "dslens/physics/mass_profiles.h"

namespace dslens::physics {

namespace multipole_detail {

struct Polar {
  // is_one: rows with m = 1, whose closed forms differ. Both forms are evaluated for every row
  // and selected by where: choosing on the host would read m back from the device on every call
  // (a host sync, and nothing a CUDA graph can capture).
  Tensor r, phi, m, a, phi_m, r_E, is_one;
};

Polar polar(const Tensor& x, const Tensor& y, const ParamMap& p, double r_floor) {
  Polar s;
  auto dx = x - per_batch(mass::required_param(p, "MULTIPOLE", "center_x"), x);
  auto dy = y - per_batch(mass::required_param(p, "MULTIPOLE", "center_y"), y);
  auto r2 = dx * dx + dy * dy;
  auto at_centre = r2 < 1e-60;
  s.r = torch::sqrt(r2.clamp_min(r_floor * r_floor));
  s.phi = torch::atan2(dy, torch::where(at_centre, torch::ones_like(dx), dx));
  auto m = mass::required_param(p, "MULTIPOLE", "m");
  s.m = per_batch(m, x);
  s.a = per_batch(mass::required_param(p, "MULTIPOLE", "a_m"), x);
  s.phi_m = per_batch(mass::required_param(p, "MULTIPOLE", "phi_m"), x);
  s.r_E = per_batch(mass::optional_param(p, "r_E", 1.0, x), x);
  s.is_one = (s.m.detach() - 1.0).abs() < 0.5;
  return s;
}

// a_m/(1-m^2) with m = 1 replaced by 2 (that branch is not used there).
Tensor amp(const Polar& s) {
  auto m = torch::where(s.is_one, 2.0 * torch::ones_like(s.m), s.m);
  return s.a / (1.0 - m * m);
}

}  // namespace multipole_detail

std::vector<std::string> MultipoleProfile::param_names() const {
  return {"m", "a_m", "phi_m", "center_x", "center_y", "r_E"};
}

Deflection MultipoleProfile::deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto s = multipole_detail::polar(x, y, p, 1e-15);
  auto k = multipole_detail::amp(s);
  auto c = torch::cos(s.phi), sn = torch::sin(s.phi);
  auto cm = torch::cos(s.m * (s.phi - s.phi_m)), sm = torch::sin(s.m * (s.phi - s.phi_m));
  Tensor fx = k * (c * cm + s.m * sn * sm);
  Tensor fy = k * (sn * cm - s.m * c * sm);
  {  // m = 1
    auto r = s.r.clamp_min(1e-6);
    auto lr = torch::log(r / s.r_E);
    auto c1 = torch::cos(s.phi - s.phi_m);
    auto fx1 = 0.5 * s.a * (torch::cos(s.phi_m) * lr + c1 * c);
    auto fy1 = 0.5 * s.a * (torch::sin(s.phi_m) * lr + c1 * sn);
    fx = torch::where(s.is_one, fx1, fx);
    fy = torch::where(s.is_one, fy1, fy);
  }
  auto shape = mass::result_shape(x, y, p);
  return {fx.expand(shape), fy.expand(shape)};
}

Tensor MultipoleProfile::potential(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto s = multipole_detail::polar(x, y, p, 1e-15);
  Tensor f = s.r * multipole_detail::amp(s) * torch::cos(s.m * (s.phi - s.phi_m));
  {  // m = 1
    auto r = s.r.clamp_min(1e-6);
    auto f1 = r * torch::log(r / s.r_E) * 0.5 * s.a * torch::cos(s.phi - s.phi_m);
    f = torch::where(s.is_one, f1, f);
  }
  return f.expand(mass::result_shape(x, y, p));
}

Hessian MultipoleProfile::hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto s = multipole_detail::polar(x, y, p, 1e-6);
  auto c = torch::cos(s.phi), sn = torch::sin(s.phi);
  auto d = s.a * torch::cos(s.m * (s.phi - s.phi_m)) / s.r;
  Tensor fxx = sn * sn * d, fyy = c * c * d, fxy = -c * sn * d;
  {  // m = 1
    auto k = s.a / (2.0 * s.r);
    auto c1 = torch::cos(s.phi - s.phi_m);
    auto c2 = torch::cos(2.0 * s.phi), s2 = torch::sin(2.0 * s.phi);
    fxx = torch::where(s.is_one, k * (2.0 * torch::cos(s.phi_m) * c - c1 * c2), fxx);
    fyy = torch::where(s.is_one, k * (2.0 * torch::sin(s.phi_m) * sn + c1 * c2), fyy);
    fxy = torch::where(s.is_one, k * (torch::sin(s.phi + s.phi_m) - c1 * s2), fxy);
  }
  auto shape = mass::result_shape(x, y, p);
  return {fxx.expand(shape), fxy.expand(shape), fyy.expand(shape)};
}

}  // namespace dslens::physics

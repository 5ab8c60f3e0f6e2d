// SERSIC and SERSIC_ELLIPSE light profiles (lenstronomy's LightModel/Profiles/sersic.py).
#include <cmath>
#include <string>
#include <vector>

#include "dslens/physics/light_profiles.h"

namespace dslens::physics {

namespace sersic_light_detail {

constexpr double kSmoothing = 1e-5;         // lenstronomy's SersicUtil._s: floor of R and R_sersic
constexpr double kMaxRFrac = 1000.0;        // beyond R / R_sersic = 1000 the profile is 0
constexpr double kMaxEllipticity = 0.9999;  // lenstronomy's cap on sqrt(e1^2 + e2^2)

// amp * exp(-b_n ((R / R_sersic)^(1/n) - 1)) from R^2, with lenstronomy's floors and cut-off.
Tensor sersic_from_r2(const Tensor& r2, const Tensor& amp, const Tensor& r_sersic,
                      const Tensor& n_sersic) {
  // max(sqrt(r2), s) == sqrt(max(r2, s^2)); the latter keeps the gradient finite at R = 0.
  Tensor r = torch::sqrt(torch::clamp_min(r2, kSmoothing * kSmoothing));
  Tensor r_frac = r / torch::clamp_min(r_sersic, kSmoothing);
  Tensor b_n = torch::clamp_min(1.9992 * n_sersic - 0.3271, 1e-5);
  Tensor value = amp * torch::exp(-b_n * (torch::pow(r_frac, 1.0 / n_sersic) - 1.0));
  return torch::where(r_frac <= kMaxRFrac, value, torch::zeros_like(value));
}

// 2 pi n R^2 amp e^b b^(-2n) Gamma(2n) of a profile's amp, R_sersic, n_sersic ([B] or [1]), with
// the floors of sersic_from_r2; `profile` and `names` name them in errors.
Tensor sersic_total_flux(const ParamMap& p, const std::string& profile,
                         const std::vector<std::string>& names) {
  auto get = [&](const char* n) { return light_param(p, n, profile, names).reshape({-1}); };
  Tensor n_sersic = get("n_sersic");
  Tensor r = torch::clamp_min(get("R_sersic"), kSmoothing);
  Tensor b_n = torch::clamp_min(1.9992 * n_sersic - 0.3271, 1e-5);
  return 2.0 * M_PI * n_sersic * r * r * get("amp") *
         torch::exp(b_n - 2.0 * n_sersic * torch::log(b_n) + torch::lgamma(2.0 * n_sersic));
}

}  // namespace sersic_light_detail

std::vector<std::string> SersicLight::param_names() const {
  return {"amp", "R_sersic", "n_sersic", "center_x", "center_y"};
}

Tensor SersicLight::surface_brightness(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  const auto names = param_names();
  auto get = [&](const char* n) { return per_batch(light_param(p, n, type(), names), x); };
  Tensor dx = x - get("center_x");
  Tensor dy = y - get("center_y");
  return sersic_light_detail::sersic_from_r2(dx * dx + dy * dy, get("amp"), get("R_sersic"),
                                             get("n_sersic"));
}

Tensor SersicLight::total_flux(const ParamMap& p) const {
  return sersic_light_detail::sersic_total_flux(p, type(), param_names());
}

std::vector<std::string> SersicEllipseLight::param_names() const {
  return {"amp", "R_sersic", "n_sersic", "e1", "e2", "center_x", "center_y"};
}

// lenstronomy rotates by phi = atan2(e2, e1) / 2 and scales by sqrt(q), 1/sqrt(q) (product
// average), with q = (1 - c) / (1 + c), c = min(|e|, 0.9999). Written out, with c^2 = e1^2 + e2^2:
//   R^2 = [(1 + c^2)(dx^2 + dy^2) - 2 (e1 (dx^2 - dy^2) + 2 e2 dx dy)] / (1 - c^2),
// which is smooth in e1, e2 (no atan2, finite gradients at e = 0).
Tensor SersicEllipseLight::surface_brightness(const Tensor& x, const Tensor& y,
                                              const ParamMap& p) const {
  using namespace sersic_light_detail;
  const auto names = param_names();
  auto get = [&](const char* n) { return per_batch(light_param(p, n, type(), names), x); };
  Tensor e1 = get("e1");
  Tensor e2 = get("e2");
  Tensor c2 = e1 * e1 + e2 * e2;
  const double c2_max = kMaxEllipticity * kMaxEllipticity;
  // Above the cap, scale (e1, e2) onto |e| = 0.9999 keeping the angle (the safe denominator keeps
  // the unused branch's gradient finite).
  Tensor over = c2 > c2_max;
  Tensor shrink = kMaxEllipticity / torch::sqrt(torch::clamp_min(c2, c2_max));
  e1 = torch::where(over, e1 * shrink, e1);
  e2 = torch::where(over, e2 * shrink, e2);
  c2 = torch::where(over, torch::full_like(c2, c2_max), c2);
  Tensor dx = x - get("center_x");
  Tensor dy = y - get("center_y");
  Tensor r2 =
      ((1.0 + c2) * (dx * dx + dy * dy) - 2.0 * (e1 * (dx * dx - dy * dy) + 2.0 * e2 * dx * dy)) /
      (1.0 - c2);
  return sersic_from_r2(r2, get("amp"), get("R_sersic"), get("n_sersic"));
}

// The ellipse's R^2 above has area element dx dy = R dR dtheta (its axes are sqrt(q), 1/sqrt(q)):
// the circle's total flux.
Tensor SersicEllipseLight::total_flux(const ParamMap& p) const {
  return sersic_light_detail::sersic_total_flux(p, type(), param_names());
}

}  // namespace dslens::physics

// NFW (lenstronomy's NFW: Rs, alpha_Rs; rho0 = alpha_Rs / (4 Rs^2 (1 + ln 1/2))).
//
// lenstronomy's piecewise functions of X = R/Rs (arccosh for X < 1, arccos for X > 1) are written
// through one function analytic across X = 1, with v = 1 - X^2:
//   G(X) = atanh(sqrt v)/sqrt v (v > 0) = atan(sqrt -v)/sqrt -v (v < 0) = sum_k v^k/(2k+1),
//   g(X) = ln(X/2) + G,  h(X) = ln(X/2)^2 - v G^2,  F(X) = (G - 1)/v,
// deflection 4 rho0 Rs g/X^2 (dx, dy), potential 2 rho0 Rs^3 h, kappa 2 rho0 Rs F,
// shear amplitude 2 rho0 Rs (2 g/X^2 - F). atanh(sqrt v) is evaluated as ln((1 + sqrt v)/X), which
// stays accurate for small X.
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "dslens/physics/mass_profiles.h"

namespace dslens::physics {

namespace nfw_detail {

constexpr double kSeries = 0.05;  // |v| below which the power series is used
constexpr int kSeriesTerms = 15;  // 0.05^15/31 ~ 1e-21

struct GF {
  Tensor G, F, g, h;  // g = ln(X/2) + G, h = ln(X/2)^2 - v G^2
};

// G and F as functions of X > 0.
GF g_and_f(const Tensor& X) {
  auto v = (1.0 - X) * (1.0 + X);
  auto pos = v > kSeries, neg = v < -kSeries;
  auto small = torch::logical_not(torch::logical_or(pos, neg));
  // v > 0 (X < 1): atanh(s)/s = ln((1+s)/X)/s
  auto Xp = torch::where(pos, X, 0.5 * torch::ones_like(X));
  auto sp = torch::sqrt((1.0 - Xp) * (1.0 + Xp));
  auto Gp = torch::log((1.0 + sp) / Xp) / sp;
  // v < 0 (X > 1): atan(s)/s
  auto Xn = torch::where(neg, X, 2.0 * torch::ones_like(X));
  auto sn = torch::sqrt((Xn - 1.0) * (Xn + 1.0));
  auto Gn = torch::atan(sn) / sn;
  // |v| small: G = sum v^k/(2k+1), F = sum_{k>=1} v^(k-1)/(2k+1)
  auto vs = torch::where(small, v, torch::zeros_like(v));
  Tensor Fs = torch::full_like(v, 1.0 / (2.0 * kSeriesTerms + 1.0));
  for (int k = kSeriesTerms - 1; k >= 1; --k) Fs = Fs * vs + 1.0 / (2.0 * k + 1.0);
  auto Gs = 1.0 + vs * Fs;
  auto G = torch::where(pos, Gp, torch::where(neg, Gn, Gs));
  auto vsafe = torch::where(small, torch::ones_like(v), v);
  auto F = torch::where(small, Fs, (G - 1.0) / vsafe);
  // X < 1 without the cancellation of ln(X/2) + G at small X (1 - s = X^2/(1+s)):
  //   g = [ln((1+s)/2) + (1-s) ln(2/X)] / s,  h = [2 ln X - ln(2(1+s))] ln((1+s)/2)
  auto one_minus_s = Xp * Xp / (1.0 + sp);
  auto l1 = torch::log1p(-0.5 * one_minus_s);  // ln((1+s)/2)
  auto gp = (l1 + one_minus_s * torch::log(2.0 / Xp)) / sp;
  auto hp = (2.0 * torch::log(Xp) - torch::log(2.0 * (1.0 + sp))) * l1;
  auto lx = torch::log(X / 2.0);
  auto g = torch::where(pos, gp, lx + G);
  auto h = torch::where(pos, hp, lx * lx - v * G * G);
  return {G, F, g, h};
}

struct Setup {
  Tensor dx, dy, Rs, rho0;
};

Setup setup(const Tensor& x, const Tensor& y, const ParamMap& p) {
  auto Rs_in = per_batch(mass::required_param(p, "NFW", "Rs"), x);
  auto alpha_Rs = per_batch(mass::required_param(p, "NFW", "alpha_Rs"), x);
  Setup s;
  s.rho0 = alpha_Rs / (4.0 * Rs_in * Rs_in * (1.0 + std::log(0.5)));
  s.Rs = Rs_in.clamp_min(1e-7);
  s.dx = x - per_batch(mass::required_param(p, "NFW", "center_x"), x);
  s.dy = y - per_batch(mass::required_param(p, "NFW", "center_y"), y);
  return s;
}

Tensor radius(const Tensor& dx, const Tensor& dy, double floor) {
  return torch::sqrt((dx * dx + dy * dy).clamp_min(floor * floor));
}

}  // namespace nfw_detail

std::vector<std::string> NFWProfile::param_names() const {
  return {"Rs", "alpha_Rs", "center_x", "center_y"};
}

Deflection NFWProfile::deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto s = nfw_detail::setup(x, y, p);
  auto R = nfw_detail::radius(s.dx, s.dy, 1e-8);
  auto X = R / s.Rs;
  auto Xg = X.clamp_min(1e-6);
  auto gx = nfw_detail::g_and_f(Xg).g;
  auto a = 4.0 * s.rho0 * s.Rs * gx / (X * X);
  auto shape = mass::result_shape(x, y, p);
  return {(a * s.dx).expand(shape), (a * s.dy).expand(shape)};
}

Tensor NFWProfile::potential(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto s = nfw_detail::setup(x, y, p);
  auto X = (nfw_detail::radius(s.dx, s.dy, 1e-15) / s.Rs).clamp_min(1e-6);
  auto h = nfw_detail::g_and_f(X).h;
  return (2.0 * s.rho0 * s.Rs * s.Rs * s.Rs * h).expand(mass::result_shape(x, y, p));
}

Hessian NFWProfile::hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto s = nfw_detail::setup(x, y, p);
  auto R = nfw_detail::radius(s.dx, s.dy, 1e-6);
  auto X = R / s.Rs;
  auto Xg = X.clamp_min(1e-6);
  auto gf = nfw_detail::g_and_f(Xg);
  auto gx = gf.g;
  auto kappa = 2.0 * s.rho0 * s.Rs * gf.F;
  auto amp = 2.0 * s.rho0 * s.Rs * (2.0 * gx / (X * X) - gf.F);
  auto R2 = R * R;
  auto g1 = amp * (s.dy * s.dy - s.dx * s.dx) / R2;
  auto g2 = -amp * 2.0 * s.dx * s.dy / R2;
  auto shape = mass::result_shape(x, y, p);
  return {(kappa + g1).expand(shape), g2.expand(shape), (kappa - g1).expand(shape)};
}

}  // namespace dslens::physics

// EPL: elliptical power law, lenstronomy's conventions, Tessore & Metcalf (2015) series.
//
//   kappa = (2-t)/2 (b/R)^t,  R = sqrt(q^2 x'^2 + y'^2),  b = theta_E sqrt(q),  t = gamma - 1,
// with (x', y') the coordinates rotated onto the major axis. The deflection in the major-axis
// frame, as a complex number, is
//   alpha' = 2/(1+q) b^t R^(1-t) omega(phi),  e^{i phi} = (q x' + i y') / R,
//   omega = sum_n c_n (-f)^n e^{i(2n+1)phi},  c_0 = 1,  c_n = c_{n-1} (2n-2+t)/(2n+2-t),
// f = (1-q)/(1+q); omega = e^{i phi} 2F1(1, t/2; 2-t/2; -f e^{2 i phi}). The series converges like
// f^n; the number of terms is chosen from the largest f of the batch (epl_series_terms).
// Potential: (x . alpha)/(2-t). Hessian: from alpha by Euler's relation H x = (1-t) alpha (alpha is
// homogeneous of degree 1-t) and trace 2 kappa, which gives (in any rotated frame)
//   H = kappa I + [(1-t) S(alpha, x) - kappa S(x, x)] / r^2,
//   S(a, x) = [[a_x x - a_y y, a_x y + a_y x], [a_x y + a_y x, -(a_x x - a_y y)]].
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "dslens/physics/mass_profiles.h"
#include "epl_point.h"

namespace dslens::physics {

namespace epl_detail {

constexpr double kTinyR2 = epl_point::kTinyR2;
// Above this many complex elements (points x series terms, 2^25: 256 MiB in complex64) the
// tensor-op series runs by Horner's rule instead of as one matrix of powers.
constexpr int64_t kPowerFormElements = int64_t{1} << 25;

// Everything the EPL formulas need besides the deflection, broadcast against [B, N].
struct Frame {
  Tensor dx, dy;  // offsets from the centre
  Tensor R;       // elliptical radius sqrt(q^2 x'^2 + y'^2), floored
  Tensor b, t;    // [B, 1]
  Tensor r2;      // dx^2 + dy^2, floored
};

Frame frame(const Tensor& x, const Tensor& y, const ParamMap& p, const std::string& name,
            bool with_gamma) {
  auto theta_E = mass::required_param(p, name, "theta_E");
  Tensor gamma = with_gamma ? mass::required_param(p, name, "gamma")
                            : torch::full({1}, 2.0, theta_E.options().requires_grad(false));
  auto el = mass::ellipse_from_e(mass::required_param(p, name, "e1"),
                                 mass::required_param(p, name, "e2"));
  Frame fr;
  fr.dx = x - per_batch(mass::required_param(p, name, "center_x"), x);
  fr.dy = y - per_batch(mass::required_param(p, name, "center_y"), y);
  auto q = per_batch(el.q, x), cg = per_batch(el.cos_phi, x), sg = per_batch(el.sin_phi, x);
  auto xr = fr.dx * cg + fr.dy * sg;
  auto yr = -fr.dx * sg + fr.dy * cg;
  fr.R = torch::sqrt((q * q * xr * xr + yr * yr).clamp_min(kTinyR2));
  fr.b = per_batch(theta_E * torch::sqrt(el.q), x);
  fr.t = per_batch(gamma - 1.0, x);
  fr.r2 = (fr.dx * fr.dx + fr.dy * fr.dy).clamp_min(kTinyR2);
  return fr;
}

Hessian hessian_from_alpha(const Frame& fr, const Deflection& a, const Tensor& kappa) {
  auto s1 = ((1.0 - fr.t) * (a.x * fr.dx - a.y * fr.dy) - kappa * (fr.dx * fr.dx - fr.dy * fr.dy)) /
            fr.r2;
  auto s2 = ((1.0 - fr.t) * (a.x * fr.dy + a.y * fr.dx) - 2.0 * kappa * fr.dx * fr.dy) / fr.r2;
  return {kappa + s1, s2, kappa - s1};
}

Tensor kappa(const Frame& fr) {
  return 0.5 * (2.0 - fr.t) * torch::pow(fr.b / fr.R, fr.t);
}

}  // namespace epl_detail

namespace mass {

double ellipticity_floor(torch::ScalarType dtype) {
  return dtype == torch::kFloat64 ? kEllipticityFloor : 1e-4;
}

EllipseTensors ellipse_from_e(const Tensor& e1, const Tensor& e2) {
  const double floor = ellipticity_floor(e1.scalar_type());
  auto c2 = e1 * e1 + e2 * e2;
  auto e1s = torch::where(c2 < floor * floor, e1 + 2.0 * floor, e1);
  auto c = torch::sqrt(e1s * e1s + e2 * e2).clamp_max(0.9999);
  auto phi = 0.5 * torch::atan2(e2, e1s);
  return {(1.0 - c) / (1.0 + c), torch::cos(phi), torch::sin(phi)};
}

double epl_series_eps(torch::ScalarType dtype) {
  return dtype == torch::kFloat64 ? 1e-16 : 1e-8;
}

int epl_series_terms(double f, double eps) {
  return epl_point::series_terms(f, eps);
}

Deflection epl_deflection_tensor(const Tensor& x, const Tensor& y, const Tensor& theta_E,
                                 const Tensor& gamma, const Tensor& e1, const Tensor& e2,
                                 const Tensor& center_x, const Tensor& center_y) {
  auto el = ellipse_from_e(e1, e2);
  auto q = per_batch(el.q, x), cg = per_batch(el.cos_phi, x), sg = per_batch(el.sin_phi, x);
  auto b = per_batch(theta_E * torch::sqrt(el.q), x);
  auto t = per_batch(gamma - 1.0, x);
  auto dx = x - per_batch(center_x, x);
  auto dy = y - per_batch(center_y, y);
  auto xr = dx * cg + dy * sg;
  auto yr = -dx * sg + dy * cg;
  auto R = torch::sqrt((q * q * xr * xr + yr * yr).clamp_min(epl_detail::kTinyR2));
  auto f = (1.0 - q) / (1.0 + q);
  // A fixed length (set_epl_series_terms) reads nothing back from the device.
  int nterms = fixed_epl_series_terms();
  if (nterms <= 0) {
    const double fmax = ((1.0 - el.q) / (1.0 + el.q)).detach().max().item<double>();
    nterms = epl_series_terms(fmax, epl_series_eps(x.scalar_type()));
  }
  // This path runs wherever the fused CPU kernel does not (CUDA), where every tensor op costs a
  // kernel launch and an autograd node: the series is a polynomial in w = -f e^{2i phi} with
  // per-lens coefficients c_n, omega = e^{i phi} sum_n c_n w^n, on complex tensors.
  // c_n = prod_{k<=n} (2k-2+t)/(2k+2-t) for n = 1..nterms-1, all at once: [..., nterms-1, 1].
  const auto k = torch::arange(1, nterms, x.options()).unsqueeze(1);
  const auto tt = t.unsqueeze(-2);
  // As sign x exp(cumsum(log|ratio|)), not cumprod, whose backward reads back whether an input
  // is zero (a host sync per call on CUDA). The ratios are positive for 1 < gamma < 3; the sign
  // keeps other slopes' values.
  const auto ratio = (2.0 * k - 2.0 + tt) / (2.0 * k + 2.0 - tt);
  const auto negatives = torch::cumsum((ratio < 0).to(ratio.scalar_type()), -2);
  const auto c_real = (1.0 - 2.0 * torch::fmod(negatives, 2.0)) *
                      torch::exp(torch::cumsum(torch::log(ratio.abs()), -2));
  auto e_iphi = torch::complex(q * xr / R, yr / R);
  auto w = -f * (e_iphi * e_iphi);
  Tensor P;
  if (w.numel() * (nterms - 1) <= epl_detail::kPowerFormElements) {
    // Small batches (where kernel launches, not memory, set the time): all powers at once,
    // w^n = exp(n log w) for n = 1..N-1 as [..., N-1], then one weighted sum; a handful of
    // kernels whatever the number of terms. |w| = f > 0 (the ellipticity floor), so log w is
    // finite.
    const auto n = torch::arange(1, nterms, x.options());
    const auto powers = torch::exp(torch::log(w).unsqueeze(-1) * n);
    P = (powers * c_real.squeeze(-1).unsqueeze(-2)).sum(-1);
  } else {
    // Large batches: Horner's rule, highest term first (P = c_{N-1}; P = P w + c_n down to
    // c_1), with no [..., N-1] intermediate. Complex coefficients once here, so that the
    // additions do not each convert a real one.
    const auto c = torch::complex(c_real, torch::zeros_like(c_real)).unbind(-2);
    P = c.back() * w;
    for (int n = nterms - 2; n >= 1; --n) P = (P + c[n - 1]) * w;
  }
  auto omega = e_iphi * (P + 1.0);
  auto A = 2.0 / (1.0 + q) * b * torch::pow(b / R, t - 1.0);
  // Back to the sky frame in real arithmetic: near a round lens the orientation's derivative is
  // a cancellation of terms of order 1/|e|, and this order of operations keeps float32's rounding
  // there at the level of the real recurrence.
  auto ar = A * torch::real(omega), ai = A * torch::imag(omega);
  return {ar * cg - ai * sg, ar * sg + ai * cg};
}

}  // namespace mass

int epl_series_terms_for(double max_abs_e, torch::ScalarType dtype) {
  // f = (1-q)/(1+q) = |e| for q = (1-|e|)/(1+|e|), with |e| clamped as in ellipse_from_e.
  const double f = std::isfinite(max_abs_e) ? std::clamp(max_abs_e, 0.0, 0.9999) : 0.9999;
  return mass::epl_series_terms(f, mass::epl_series_eps(dtype));
}

std::vector<std::string> EPLProfile::param_names() const {
  return {"theta_E", "gamma", "e1", "e2", "center_x", "center_y"};
}

Deflection EPLProfile::deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto args = std::vector<Tensor>{
      mass::required_param(p, "EPL", "theta_E"),  mass::required_param(p, "EPL", "gamma"),
      mass::required_param(p, "EPL", "e1"),       mass::required_param(p, "EPL", "e2"),
      mass::required_param(p, "EPL", "center_x"), mass::required_param(p, "EPL", "center_y")};
  auto shape = mass::result_shape(x, y, p);
  Deflection a =
      fused_
          ? mass::epl_deflection_fused(x, y, args[0], args[1], args[2], args[3], args[4], args[5])
          : mass::epl_deflection_tensor(x, y, args[0], args[1], args[2], args[3], args[4], args[5]);
  return {a.x.expand(shape), a.y.expand(shape)};
}

Tensor EPLProfile::potential(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto fr = epl_detail::frame(x, y, p, "EPL", true);
  auto a = deflection(x, y, p);
  return (fr.dx * a.x + fr.dy * a.y) / (2.0 - fr.t);
}

Hessian EPLProfile::hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto fr = epl_detail::frame(x, y, p, "EPL", true);
  return epl_detail::hessian_from_alpha(fr, deflection(x, y, p), epl_detail::kappa(fr));
}

Tensor EPLProfile::convergence(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto fr = epl_detail::frame(x, y, p, "EPL", true);
  return epl_detail::kappa(fr).expand(mass::result_shape(x, y, p));
}

// ------------------------------------------------------------------------------------------ SIE
// Closed form (Kormann et al. 1994; lenstronomy's NIE with s -> 0), major-axis frame:
//   alpha'_x = b/u atan(u x'/R),  alpha'_y = b/u atanh(u y'/R),  u = sqrt(1-q^2),
// written as b (x'/R) atan(w)/w with w = u x'/R (and likewise atanh) so that q -> 1 is regular.
namespace sie_detail {

// atan(w)/w and atanh(w)/w, regular at w = 0 (|w| < 1).
Tensor atan_over(const Tensor& w) {
  auto small = w.abs() < 1e-4;
  auto ws = torch::where(small, torch::ones_like(w), w);
  auto w2 = w * w;
  return torch::where(small, 1.0 - w2 / 3.0 + w2 * w2 / 5.0, torch::atan(ws) / ws);
}

Tensor atanh_over(const Tensor& w) {
  auto small = w.abs() < 1e-4;
  auto ws = torch::where(small, 0.5 * torch::ones_like(w), w);
  auto w2 = w * w;
  return torch::where(small, 1.0 + w2 / 3.0 + w2 * w2 / 5.0, torch::atanh(ws) / ws);
}

}  // namespace sie_detail

std::vector<std::string> SIEProfile::param_names() const {
  return {"theta_E", "e1", "e2", "center_x", "center_y"};
}

Deflection SIEProfile::deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto theta_E = mass::required_param(p, "SIE", "theta_E");
  auto el = mass::ellipse_from_e(mass::required_param(p, "SIE", "e1"),
                                 mass::required_param(p, "SIE", "e2"));
  auto dx = x - per_batch(mass::required_param(p, "SIE", "center_x"), x);
  auto dy = y - per_batch(mass::required_param(p, "SIE", "center_y"), y);
  auto q = per_batch(el.q, x), cg = per_batch(el.cos_phi, x), sg = per_batch(el.sin_phi, x);
  auto b = per_batch(theta_E * torch::sqrt(el.q), x);
  auto u = torch::sqrt((1.0 - q * q).clamp_min(0.0));
  auto xr = dx * cg + dy * sg;
  auto yr = -dx * sg + dy * cg;
  auto R = torch::sqrt((q * q * xr * xr + yr * yr).clamp_min(epl_detail::kTinyR2));
  auto ux = xr / R, uy = yr / R;
  auto ar = b * ux * sie_detail::atan_over(u * ux);
  auto ai = b * uy * sie_detail::atanh_over(u * uy);
  auto shape = mass::result_shape(x, y, p);
  return {(ar * cg - ai * sg).expand(shape), (ar * sg + ai * cg).expand(shape)};
}

Tensor SIEProfile::potential(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto dx = x - per_batch(mass::required_param(p, "SIE", "center_x"), x);
  auto dy = y - per_batch(mass::required_param(p, "SIE", "center_y"), y);
  auto a = deflection(x, y, p);
  return dx * a.x + dy * a.y;
}

Hessian SIEProfile::hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  auto fr = epl_detail::frame(x, y, p, "SIE", false);
  auto k2 = fr.b / fr.R / fr.r2;  // 2 kappa / r^2
  auto shape = mass::result_shape(x, y, p);
  return {(k2 * fr.dy * fr.dy).expand(shape), (-k2 * fr.dx * fr.dy).expand(shape),
          (k2 * fr.dx * fr.dx).expand(shape)};
}

}  // namespace dslens::physics

// The EPL deflection and its derivatives at one point, in scalar double arithmetic that compiles
// for both the host and a CUDA device: the fused CUDA kernels (epl_cuda.cu) run it once per
// thread, and the tests run it on the CPU against the SIMD kernel of epl_fused.cpp, whose formulas
// (and their sources: Tessore & Metcalf 2015; lenstronomy's EPL conventions) it repeats term for
// term. No LibTorch here: nvcc compiles this header without LibTorch's.
//
// Outputs, out[0..12]: alpha_x, alpha_y; d alpha_x/dx, d alpha_x/dy (= d alpha_y/dx),
// d alpha_y/dy; then (d alpha_x, d alpha_y) / d theta_E, d gamma, d e1, d e2. The centre's
// derivatives are minus the coordinates'.
#pragma once

#include <cmath>

#include "../host_device.h"

namespace dslens::physics::epl_point {

constexpr int kNumDerivs = 11;
constexpr int kNumOutputs = 2 + kNumDerivs;
constexpr double kTinyR2 = 1e-30;
constexpr int kMaxTerms = 1000;

// The series length that keeps the first neglected term f^n (2n+1)(n+1) below eps: the same
// rule as mass::epl_series_terms.
DSLENS_HOST_DEVICE inline int series_terms(double f, double eps) {
  if (!(f > 0.0)) return 2;
  int n = 1;
  double fn = f;
  while (fn * (2.0 * n + 1.0) * (n + 1.0) > eps && n < kMaxTerms) {
    ++n;
    fn *= f;
  }
  return n > 2 ? n : 2;
}

// Per-lens constants (epl_fused.cpp's Consts without the coefficient tables, which evaluate()
// builds as it sums).
struct Lens {
  double cg, sg, q, f, b, t, sqrt_q, db_dq, dq_de1, dq_de2, dphi_de1, dphi_de2;
  int nterms;
};

// floor: the ellipticity below which e1 is shifted by 2 floor (mass::kEllipticityFloor); eps: the
// series' truncation (mass::epl_series_eps of the dtype).
DSLENS_HOST_DEVICE inline Lens make_lens(double theta_E, double gamma, double e1, double e2,
                                         double floor, double eps) {
  Lens k;
  if (e1 * e1 + e2 * e2 < floor * floor) e1 += 2.0 * floor;
  const double c_raw = sqrt(e1 * e1 + e2 * e2);
  const bool clipped = c_raw > 0.9999;
  const double c = clipped ? 0.9999 : c_raw;
  const double phi = 0.5 * atan2(e2, e1);
  k.cg = cos(phi);
  k.sg = sin(phi);
  k.q = (1.0 - c) / (1.0 + c);
  k.f = (1.0 - k.q) / (1.0 + k.q);
  k.sqrt_q = sqrt(k.q);
  k.b = theta_E * k.sqrt_q;
  k.t = gamma - 1.0;
  k.db_dq = theta_E / (2.0 * k.sqrt_q);
  const double dq_dc = -2.0 / ((1.0 + c) * (1.0 + c));
  k.dq_de1 = clipped ? 0.0 : dq_dc * e1 / c_raw;
  k.dq_de2 = clipped ? 0.0 : dq_dc * e2 / c_raw;
  k.dphi_de1 = -0.5 * e2 / (c_raw * c_raw);
  k.dphi_de2 = 0.5 * e1 / (c_raw * c_raw);
  k.nterms = series_terms(k.f, eps);
  return k;
}

// The point (dx, dy) = (x - center_x, y - center_y). derivs = false fills out[0..1] only. A point
// closer to the centre than sqrt(kTinyR2) gets zeros, as in the SIMD kernel.
DSLENS_HOST_DEVICE inline void evaluate(const Lens& k, double dx, double dy, bool derivs,
                                        double* out) {
  const double cg = k.cg, sg = k.sg, q = k.q, t = k.t, b = k.b, f = k.f;
  const double xr = dx * cg + dy * sg;
  const double yr = dy * cg - dx * sg;
  const double r2 = q * q * xr * xr + yr * yr;
  if (!(r2 >= kTinyR2)) {
    for (int d = 0; d < (derivs ? kNumOutputs : 2); ++d) out[d] = 0.0;
    return;
  }
  const double R = sqrt(r2), invR = 1.0 / R;
  const double c = q * xr * invR, s = yr * invR;  // e^{i phi}
  const double wr = -f * (c * c - s * s), wi = -f * 2.0 * s * c;
  double tr = c, ti = s, om_r = c, om_i = s, p_r = c, p_i = s, l_r = 0.0, l_i = 0.0;
  // T_n = r_n w T_{n-1}, r_n = (2n-2+t)/(2n+2-t); L_n = sum_{k<=n} 1/(2k-2+t) + 1/(2k+2-t).
  double L = 0.0;
  for (int n = 1; n < k.nterms; ++n) {
    const double lo = 2.0 * n - 2.0 + t, hi = 2.0 * n + 2.0 - t;
    const double rn = lo / hi;
    const double nr = rn * (tr * wr - ti * wi);
    const double ni = rn * (tr * wi + ti * wr);
    tr = nr;
    ti = ni;
    om_r += nr;
    om_i += ni;
    if (!derivs) continue;
    L += 1.0 / lo + 1.0 / hi;
    p_r += (2.0 * n + 1.0) * nr;
    p_i += (2.0 * n + 1.0) * ni;
    l_r += L * nr;
    l_i += L * ni;
  }
  const double inv_1pq = 1.0 / (1.0 + q);
  const double lbr = log(b) - 0.5 * log(r2);  // ln(b / R)
  const double A = 2.0 * inv_1pq * b * exp((t - 1.0) * lbr);
  const double ar = A * om_r, ai = A * om_i;
  const double axl = ar * cg - ai * sg, ayl = ar * sg + ai * cg;  // e^{i phi_G} alpha'
  out[0] = axl;
  out[1] = ayl;
  if (!derivs) return;
  // d omega / df = sum n T_n / f = (sum (2n+1) T_n - omega) / (2 f); at f ~ 0 the first term.
  double of_r, of_i;
  if (f > 1e-12) {
    of_r = 0.5 * (p_r - om_r) / f;
    of_i = 0.5 * (p_i - om_i) / f;
  } else {
    const double r1 = t / (4.0 - t);  // r_1
    const double c2 = c * c - s * s, s2 = 2.0 * s * c;
    of_r = -r1 * (c * c2 - s * s2);
    of_i = -r1 * (c * s2 + s * c2);
  }
  const double df_dq = -2.0 * inv_1pq * inv_1pq, t_over_b = t / b;
  const double ip_r = -p_i, ip_i = p_r;  // d omega / dphi = i sum (2n+1) T_n
  const double k1 = (1.0 - t) * A * invR;
  const double dR_dx = q * c, dR_dy = s, dph_dx = -q * s * invR, dph_dy = c * invR;
  const double dax_dxr = k1 * dR_dx * om_r + A * ip_r * dph_dx;
  const double day_dxr = k1 * dR_dx * om_i + A * ip_i * dph_dx;
  const double dax_dyr = k1 * dR_dy * om_r + A * ip_r * dph_dy;
  const double day_dyr = k1 * dR_dy * om_i + A * ip_i * dph_dy;
  const double db_r = t_over_b * ar, db_i = t_over_b * ai;
  const double dt_r = ar * lbr + A * l_r, dt_i = ai * lbr + A * l_i;
  const double dR_dq = xr * c, dph_dq = -xr * s * invR;
  const double dq_r =
      -ar * inv_1pq + k1 * dR_dq * om_r + A * (ip_r * dph_dq + of_r * df_dq) + db_r * k.db_dq;
  const double dq_i =
      -ai * inv_1pq + k1 * dR_dq * om_i + A * (ip_i * dph_dq + of_i * df_dq) + db_i * k.db_dq;
  // wrt x, y: dx'/dx = cg, dy'/dx = -sg, dx'/dy = sg, dy'/dy = cg
  const double gx_r = dax_dxr * cg - dax_dyr * sg, gx_i = day_dxr * cg - day_dyr * sg;
  const double gy_r = dax_dxr * sg + dax_dyr * cg, gy_i = day_dxr * sg + day_dyr * cg;
  out[2] = gx_r * cg - gx_i * sg;
  out[3] = gy_r * cg - gy_i * sg;
  out[4] = gy_r * sg + gy_i * cg;
  // wrt phi_G: i alpha + e^{i phi_G} (d alpha'/dx' y' - d alpha'/dy' x')
  const double ph_r = dax_dxr * yr - dax_dyr * xr;
  const double ph_i = day_dxr * yr - day_dyr * xr;
  const double dphx = ph_r * cg - ph_i * sg - ayl, dphy = axl + ph_r * sg + ph_i * cg;
  const double dqx = dq_r * cg - dq_i * sg, dqy = dq_r * sg + dq_i * cg;
  out[5] = (db_r * cg - db_i * sg) * k.sqrt_q;  // theta_E
  out[6] = (db_r * sg + db_i * cg) * k.sqrt_q;
  out[7] = dt_r * cg - dt_i * sg;  // gamma
  out[8] = dt_r * sg + dt_i * cg;
  out[9] = dqx * k.dq_de1 + dphx * k.dphi_de1;  // e1
  out[10] = dqy * k.dq_de1 + dphy * k.dphi_de1;
  out[11] = dqx * k.dq_de2 + dphx * k.dphi_de2;  // e2
  out[12] = dqy * k.dq_de2 + dphy * k.dphi_de2;
}

}  // namespace dslens::physics::epl_point

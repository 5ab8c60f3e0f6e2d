// Fused EPL deflection: one parallel loop over points computing alpha and its derivatives wrt
// x, y, theta_E, gamma, e1, e2 (and so center_x, center_y) in the same pass; backward contracts the
// saved derivatives with the incoming gradients. See epl.cpp for the formulas.
//
// Derivatives in the major-axis frame (alpha' = A omega, A = 2/(1+q) b^t R^(1-t)):
//   d alpha'/dx' = (1-t) A/R dR/dx' omega + A d omega/dphi dphi/dx'   (same for y', q)
//   d omega/dphi = i sum (2n+1) T_n,  d omega/df = sum n T_n / f,  d omega/dt = sum L_n T_n,
//   L_n = d ln c_n/dt = sum_{k<=n} [1/(2k-2+t) + 1/(2k+2-t)],
//   d alpha'/db = t alpha'/b,  d alpha'/dt |_series-free = alpha' ln(b/R),  dA/dq |_R = -A/(1+q).
// Then alpha = e^{i phi_G} alpha'(x'(phi_G), y'(phi_G)), q(c), c = |e|, phi_G = atan2(e2, e1)/2.
// Arithmetic is in double for both float32 and float64; float32 uses fewer series terms.
// Backward under create_graph (double backward) recomputes with the tensor-op version instead.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/core/simd.h"
#include "dslens/physics/mass_profiles.h"
#include "epl_cuda.h"
#include "epl_cuda_pack.h"
#include "epl_point.h"

#ifdef DSLENS_WITH_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace dslens::physics {

namespace epl_fused_detail {

constexpr double kTinyR2 = epl_point::kTinyR2;
// jxx, jxy, jyy, then (x, y) for theta_E, gamma, e1, e2
constexpr int kNumDerivs = epl_point::kNumDerivs;
constexpr int64_t kBlock = 2048;

// The per-lens constants (epl_point.h, shared with the CUDA kernels) and the series' ratio and
// log-derivative tables.
struct Consts : epl_point::Lens {
  std::vector<double> r, L;  // r[n], L[n] for n = 1 .. nterms-1 (index 0 unused)
};

Consts make_consts(double theta_E, double gamma, double e1, double e2, double eps) {
  Consts k;
  static_cast<epl_point::Lens&>(k) =
      epl_point::make_lens(theta_E, gamma, e1, e2, mass::kEllipticityFloor, eps);
  k.r.assign(k.nterms, 0.0);
  k.L.assign(k.nterms, 0.0);
  double L = 0.0;
  for (int n = 1; n < k.nterms; ++n) {
    const double lo = 2.0 * n - 2.0 + k.t, hi = 2.0 * n + 2.0 - k.t;
    k.r[n] = lo / hi;
    L += 1.0 / lo + 1.0 / hi;
    k.L[n] = L;
  }
  return k;
}

// Points are evaluated kLanes at a time, as kNV SIMD vectors of doubles (dslens/core/simd.h): the
// series recurrence is a serial dependency chain per point, so interleaving independent vectors
// keeps the FPU busy. Every step is branch-free arithmetic on whole vectors (exp and log
// included); a point too close to the centre is evaluated at R = 1 and its results set to 0.
using V = simd::Vec<double>;
constexpr int kVec = simd::kLanes<double>;
constexpr int kNV = 2;
constexpr int kLanes = kNV * kVec;

// Results of one chunk: out[0][l], out[1][l] = alpha_x, alpha_y; out[2 + d][l] = derivative d.
struct Chunk {
  double v[2 + kNumDerivs][kLanes];
};

// derivs = false: alpha only (out.v[0], out.v[1]), for evaluations that need no gradient.
DSLENS_CPU_CLONES void evaluate_chunk(const Consts& k, const double* dxs, const double* dys,
                                      bool derivs, Chunk& out) {
  using simd::splat;
  const double cg = k.cg, sg = k.sg, q = k.q, t = k.t, b = k.b, f = k.f;
  V xr[kNV], yr[kNV], R2[kNV], R[kNV], cph[kNV], sph[kNV], wr[kNV], wi[kNV];
  V tr[kNV], ti[kNV], om_r[kNV], om_i[kNV], p_r[kNV], p_i[kNV], l_r[kNV], l_i[kNV];
  simd::IVec<double> valid[kNV];
  for (int j = 0; j < kNV; ++j) {
    const V dx = simd::load(dxs + j * kVec), dy = simd::load(dys + j * kVec);
    xr[j] = dx * cg + dy * sg;
    yr[j] = dy * cg - dx * sg;
    const V r2 = q * q * xr[j] * xr[j] + yr[j] * yr[j];
    valid[j] = r2 >= kTinyR2;
    R2[j] = valid[j] ? r2 : splat(1.0);
    for (int i = 0; i < kVec; ++i) R[j][i] = std::sqrt(R2[j][i]);
    const V inv = 1.0 / R[j];
    cph[j] = valid[j] ? q * xr[j] * inv : splat(1.0);
    sph[j] = valid[j] ? yr[j] * inv : splat(0.0);
    wr[j] = -f * (cph[j] * cph[j] - sph[j] * sph[j]);
    wi[j] = -f * 2.0 * sph[j] * cph[j];
    tr[j] = om_r[j] = p_r[j] = cph[j];
    ti[j] = om_i[j] = p_i[j] = sph[j];
    l_r[j] = l_i[j] = splat(0.0);
  }
  const double* rr = k.r.data();
  const double* LL = k.L.data();
  // The series T_n = r_n w T_{n-1}; with derivs also sum (2n+1) T_n and sum L_n T_n. (derivs is
  // the same for the whole call: GCC unswitches the loop on it.)
  for (int n = 1; n < k.nterms; ++n) {
    const double rn = rr[n], c2n1 = 2.0 * n + 1.0, Ln = LL[n];
    for (int j = 0; j < kNV; ++j) {
      const V nr = rn * (tr[j] * wr[j] - ti[j] * wi[j]);
      const V ni = rn * (tr[j] * wi[j] + ti[j] * wr[j]);
      tr[j] = nr;
      ti[j] = ni;
      om_r[j] += nr;
      om_i[j] += ni;
      if (!derivs) continue;
      p_r[j] += c2n1 * nr;
      p_i[j] += c2n1 * ni;
      l_r[j] += Ln * nr;
      l_i[j] += Ln * ni;
    }
  }
  const double log_b = std::log(b);
  const double inv_1pq = 1.0 / (1.0 + q), inv_f = f > 1e-12 ? 1.0 / f : 0.0, t_over_b = t / b;
  const double df_dq = -2.0 * inv_1pq * inv_1pq, A0 = 2.0 * inv_1pq * b;
  const V zero = splat(0.0);
  auto put = [&](int d, int j, V value) {
    simd::store(&out.v[d][j * kVec], valid[j] ? value : zero);
  };
  for (int j = 0; j < kNV; ++j) {
    const V c = cph[j], s = sph[j], invR = 1.0 / R[j];
    // d omega / df = sum n T_n / f = (sum (2n+1) T_n - omega) / (2 f)
    V of_r, of_i;
    if (f > 1e-12) {
      of_r = 0.5 * (p_r[j] - om_r[j]) * inv_f;
      of_i = 0.5 * (p_i[j] - om_i[j]) * inv_f;
    } else {  // first term only: -c_1 e^{3 i phi}
      const V c2 = c * c - s * s, s2 = 2.0 * s * c;
      of_r = -rr[1] * (c * c2 - s * s2);
      of_i = -rr[1] * (c * s2 + s * c2);
    }
    const V lbr = log_b - 0.5 * simd::vlog(R2[j]);  // ln(b / R)
    const V A = A0 * simd::vexp((t - 1.0) * lbr);
    const V ar = A * om_r[j], ai = A * om_i[j];
    const V axl = ar * cg - ai * sg, ayl = ar * sg + ai * cg;  // rotate back: e^{i phi_G} alpha'
    put(0, j, axl);
    put(1, j, ayl);
    if (!derivs) continue;
    const V ip_r = -p_i[j], ip_i = p_r[j];  // d omega / dphi = i sum (2n+1) T_n
    const V k1 = (1.0 - t) * A * invR;
    const V dR_dx = q * c, dR_dy = s, dph_dx = -q * s * invR, dph_dy = c * invR;
    const V dax_dxr = k1 * dR_dx * om_r[j] + A * ip_r * dph_dx;
    const V day_dxr = k1 * dR_dx * om_i[j] + A * ip_i * dph_dx;
    const V dax_dyr = k1 * dR_dy * om_r[j] + A * ip_r * dph_dy;
    const V day_dyr = k1 * dR_dy * om_i[j] + A * ip_i * dph_dy;
    const V db_r = t_over_b * ar, db_i = t_over_b * ai;
    const V dt_r = ar * lbr + A * l_r[j], dt_i = ai * lbr + A * l_i[j];
    const V dR_dq = xr[j] * c, dph_dq = -xr[j] * s * invR;
    const V dq_r =
        -ar * inv_1pq + k1 * dR_dq * om_r[j] + A * (ip_r * dph_dq + of_r * df_dq) + db_r * k.db_dq;
    const V dq_i =
        -ai * inv_1pq + k1 * dR_dq * om_i[j] + A * (ip_i * dph_dq + of_i * df_dq) + db_i * k.db_dq;
    // wrt x, y: dx'/dx = cg, dy'/dx = -sg, dx'/dy = sg, dy'/dy = cg
    const V gx_r = dax_dxr * cg - dax_dyr * sg, gx_i = day_dxr * cg - day_dyr * sg;
    const V gy_r = dax_dxr * sg + dax_dyr * cg, gy_i = day_dxr * sg + day_dyr * cg;
    put(2, j, gx_r * cg - gx_i * sg);  // d alpha_x / dx
    put(3, j, gy_r * cg - gy_i * sg);  // d alpha_x / dy (= d alpha_y / dx)
    put(4, j, gy_r * sg + gy_i * cg);  // d alpha_y / dy
    // wrt phi_G: i alpha + e^{i phi_G} (d alpha'/dx' y' - d alpha'/dy' x')
    const V ph_r = dax_dxr * yr[j] - dax_dyr * xr[j];
    const V ph_i = day_dxr * yr[j] - day_dyr * xr[j];
    const V dphx = ph_r * cg - ph_i * sg - ayl, dphy = axl + ph_r * sg + ph_i * cg;
    const V dqx = dq_r * cg - dq_i * sg, dqy = dq_r * sg + dq_i * cg;
    put(5, j, (db_r * cg - db_i * sg) * k.sqrt_q);  // theta_E
    put(6, j, (db_r * sg + db_i * cg) * k.sqrt_q);
    put(7, j, dt_r * cg - dt_i * sg);  // gamma
    put(8, j, dt_r * sg + dt_i * cg);
    put(9, j, dqx * k.dq_de1 + dphx * k.dphi_de1);  // e1
    put(10, j, dqy * k.dq_de1 + dphy * k.dphi_de1);
    put(11, j, dqx * k.dq_de2 + dphx * k.dphi_de2);  // e2
    put(12, j, dqy * k.dq_de2 + dphy * k.dphi_de2);
  }
}

// A parameter's values as doubles. A CPU float tensor is read in place, strides and all: the
// copy through .to(kFloat64) cost five operators per parameter and call.
std::vector<double> to_doubles(const Tensor& t) {
  if (t.device().is_cpu() && t.dim() <= 1 &&
      (t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kFloat64)) {
    const int64_t n = t.numel(), stride = t.dim() == 1 ? t.stride(0) : 0;
    std::vector<double> out(static_cast<size_t>(n));
    AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "epl_params", [&] {
      const scalar_t* p = t.data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i)
        out[static_cast<size_t>(i)] = static_cast<double>(p[i * stride]);
    });
    return out;
  }
  auto c = t.detach().to(torch::kCPU, torch::kFloat64).contiguous().reshape({-1});
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// Forward: x, y [bx, N], [by, N]; params [1] or [B]. Returns ax, ay [B, N] and (with_derivs) the
// kNumDerivs derivatives, each [B, N] (separate tensors: one block of 11 x B x N doubles would
// exceed glibc's mmap threshold and be page-faulted afresh on every call).
std::vector<Tensor> forward_cpu(const Tensor& x, const Tensor& y, const std::vector<Tensor>& params,
                                int64_t B, bool with_derivs) {
  const int64_t N = std::max(x.size(1), y.size(1));
  auto xc = x.contiguous(), yc = y.contiguous();
  std::vector<std::vector<double>> pv;
  for (const auto& p : params) pv.push_back(to_doubles(p));
  auto pick = [&](int i, int64_t b) { return pv[i].size() == 1 ? pv[i][0] : pv[i][b]; };
  const double eps = mass::epl_series_eps(x.scalar_type());
  std::vector<Consts> consts;
  std::vector<double> cx(B), cy(B);
  for (int64_t b = 0; b < B; ++b) {
    consts.push_back(make_consts(pick(0, b), pick(1, b), pick(2, b), pick(3, b), eps));
    cx[b] = pick(4, b);
    cy[b] = pick(5, b);
  }
  auto ax = torch::empty({B, N}, x.options());
  auto ay = torch::empty({B, N}, x.options());
  std::vector<Tensor> derivs;
  for (int d = 0; d < (with_derivs ? kNumDerivs : 0); ++d)
    derivs.push_back(torch::empty({B, N}, x.options()));
  const int64_t xs0 = xc.size(0) == 1 ? 0 : N, ys0 = yc.size(0) == 1 ? 0 : N;
  const int64_t xs1 = xc.size(1) == 1 ? 0 : 1, ys1 = yc.size(1) == 1 ? 0 : 1;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "epl_fused_forward", [&] {
    const scalar_t* px = xc.data_ptr<scalar_t>();
    const scalar_t* py = yc.data_ptr<scalar_t>();
    scalar_t* pax = ax.data_ptr<scalar_t>();
    scalar_t* pay = ay.data_ptr<scalar_t>();
    scalar_t* pd[kNumDerivs] = {};
    for (size_t d = 0; d < derivs.size(); ++d) pd[d] = derivs[d].data_ptr<scalar_t>();
    // Work items: (batch member, run of kLanes points); a run never crosses batch members.
    const int64_t runs_per_b = (N + kLanes - 1) / kLanes;
    at::parallel_for(0, B * runs_per_b, kBlock / kLanes, [&](int64_t begin, int64_t end) {
      Chunk res;
      double dxs[kLanes], dys[kLanes];
      for (int64_t run = begin; run < end; ++run) {
        const int64_t b = run / runs_per_b, n0 = (run % runs_per_b) * kLanes;
        const int count = static_cast<int>(std::min<int64_t>(kLanes, N - n0));
        for (int l = 0; l < kLanes; ++l) {
          const int64_t n = n0 + std::min(l, count - 1);
          dxs[l] = static_cast<double>(px[b * xs0 + n * xs1]) - cx[b];
          dys[l] = static_cast<double>(py[b * ys0 + n * ys1]) - cy[b];
        }
        evaluate_chunk(consts[b], dxs, dys, with_derivs, res);
        const int64_t i0 = b * N + n0;
        for (int l = 0; l < count; ++l) {
          pax[i0 + l] = static_cast<scalar_t>(res.v[0][l]);
          pay[i0 + l] = static_cast<scalar_t>(res.v[1][l]);
        }
        for (int d = 0; d < (with_derivs ? kNumDerivs : 0); ++d)
          for (int l = 0; l < count; ++l) pd[d][i0 + l] = static_cast<scalar_t>(res.v[2 + d][l]);
      }
    });
  });
  std::vector<Tensor> out{ax, ay};
  out.insert(out.end(), derivs.begin(), derivs.end());
  return out;
}

// Backward: grads of ax, ay [B, N] -> grad_x, grad_y [B, N] and per-batch sums [B, 6]
// (theta_E, gamma, e1, e2, center_x, center_y).
std::vector<Tensor> backward_cpu(const Tensor& gax, const Tensor& gay,
                                 const std::vector<Tensor>& derivs) {
  const int64_t B = derivs[0].size(0), N = derivs[0].size(1);
  auto opts = derivs[0].options();
  auto gx_out = torch::empty({B, N}, opts), gy_out = torch::empty({B, N}, opts);
  const int64_t blocks_per_b = (N + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(B * blocks_per_b * 6), 0.0);
  auto gaxc = gax.expand({B, N}).contiguous(), gayc = gay.expand({B, N}).contiguous();
  AT_DISPATCH_FLOATING_TYPES(derivs[0].scalar_type(), "epl_fused_backward", [&] {
    const scalar_t* pgx = gaxc.data_ptr<scalar_t>();
    const scalar_t* pgy = gayc.data_ptr<scalar_t>();
    const scalar_t* pd[kNumDerivs];
    for (int d = 0; d < kNumDerivs; ++d) pd[d] = derivs[d].data_ptr<scalar_t>();
    scalar_t* ox = gx_out.data_ptr<scalar_t>();
    scalar_t* oy = gy_out.data_ptr<scalar_t>();
    at::parallel_for(0, B * blocks_per_b, 1, [&](int64_t begin, int64_t end) {
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t b = blk / blocks_per_b, start = (blk % blocks_per_b) * kBlock;
        const int64_t stop = std::min(N, start + kBlock);
        double s[6] = {0, 0, 0, 0, 0, 0};
        for (int64_t n = start; n < stop; ++n) {
          const int64_t i = b * N + n;
          const double g1 = pgx[i], g2 = pgy[i];
          const double jxx = pd[0][i], jxy = pd[1][i], jyy = pd[2][i];
          const double vx = g1 * jxx + g2 * jxy, vy = g1 * jxy + g2 * jyy;
          ox[i] = static_cast<scalar_t>(vx);
          oy[i] = static_cast<scalar_t>(vy);
          for (int k = 0; k < 4; ++k) s[k] += g1 * pd[3 + 2 * k][i] + g2 * pd[4 + 2 * k][i];
          s[4] -= vx;
          s[5] -= vy;
        }
        for (int k = 0; k < 6; ++k) partial[static_cast<size_t>(blk * 6 + k)] = s[k];
      }
    });
  });
  auto sums = torch::zeros({B, 6}, torch::kFloat64);
  auto ps = sums.accessor<double, 2>();
  for (int64_t blk = 0; blk < B * blocks_per_b; ++blk)
    for (int k = 0; k < 6; ++k)
      ps[blk / blocks_per_b][k] += partial[static_cast<size_t>(blk * 6 + k)];
  return {gx_out, gy_out, sums.to(opts)};
}

#ifdef DSLENS_WITH_CUDA_KERNELS
// The CUDA kernels (epl_cuda.cu) on the caller's current stream, so that a CUDA graph captures
// them. Returns ax, ay [B, N] and (with_derivs) the derivatives as one [11, B, N] tensor. Nothing
// is read back to the host.
std::vector<Tensor> forward_cuda(const Tensor& x, const Tensor& y,
                                 const std::vector<Tensor>& params, int64_t B, bool with_derivs) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto pack = epl_cuda::pack_forward(x, y, params, B, with_derivs);
  const std::string err = epl_cuda::forward(pack.args, c10::cuda::getCurrentCUDAStream().stream());
  if (!err.empty()) throw DeviceError("EPL: the CUDA deflection kernel failed: " + err);
  if (!with_derivs) return {pack.ax, pack.ay};
  return {pack.ax, pack.ay, pack.derivs};
}

// Backward of forward_cuda: as backward_cpu, with the derivatives as one [11, B, N] tensor.
std::vector<Tensor> backward_cuda(const Tensor& gax, const Tensor& gay, const Tensor& derivs) {
  const c10::cuda::CUDAGuard guard(derivs.device());
  const auto pack = epl_cuda::pack_backward(gax, gay, derivs);
  const std::string err = epl_cuda::backward(pack.args, c10::cuda::getCurrentCUDAStream().stream());
  if (!err.empty()) throw DeviceError("EPL: the CUDA backward kernel failed: " + err);
  return {pack.gx, pack.gy, pack.sums.to(derivs.options())};
}
#endif

// Sums a [B, ...] gradient down to the shape of the input it belongs to ([1, ...] or [B, ...]).
Tensor reduce_to(const Tensor& g, const Tensor& input) {
  if (input.sizes() == g.sizes()) return g;
  return g.sum(0, /*keepdim=*/true).reshape(input.sizes());
}

std::vector<Tensor> forward_on_device(const Tensor& x, const Tensor& y,
                                      const std::vector<Tensor>& params, int64_t B,
                                      bool with_derivs) {
#ifdef DSLENS_WITH_CUDA_KERNELS
  if (x.is_cuda()) return forward_cuda(x, y, params, B, with_derivs);
#endif
  return forward_cpu(x, y, params, B, with_derivs);
}

std::vector<Tensor> backward_on_device(const Tensor& gax, const Tensor& gay,
                                       const std::vector<Tensor>& derivs) {
#ifdef DSLENS_WITH_CUDA_KERNELS
  if (derivs.size() == 1) return backward_cuda(gax, gay, derivs[0]);
#endif
  return backward_cpu(gax, gay, derivs);
}

class EPLFusedFunction : public torch::autograd::Function<EPLFusedFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, Tensor x,
                                                Tensor y, Tensor theta_E, Tensor gamma, Tensor e1,
                                                Tensor e2, Tensor center_x, Tensor center_y) {
    std::vector<Tensor> params{theta_E, gamma, e1, e2, center_x, center_y};
    int64_t B = std::max(x.size(0), y.size(0));
    for (const auto& p : params) B = std::max<int64_t>(B, p.numel());
    auto out = forward_on_device(x, y, params, B, /*with_derivs=*/true);
    std::vector<Tensor> saved{x, y, theta_E, gamma, e1, e2, center_x, center_y};
    saved.insert(saved.end(), out.begin() + 2, out.end());
    ctx->save_for_backward(saved);
    return {out[0], out[1]};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    std::vector<Tensor> derivs(saved.begin() + 8, saved.end());
    // The CPU's derivatives are 11 tensors [B, N]; CUDA's one [11, B, N].
    const bool cuda = derivs.size() == 1;
    const int64_t B = derivs[0].size(cuda ? 1 : 0), N = derivs[0].size(cuda ? 2 : 1);
    const auto dtype = derivs[0].scalar_type();
    Tensor gax = grads[0].defined() ? grads[0] : torch::zeros({B, N}, derivs[0].options());
    Tensor gay = grads[1].defined() ? grads[1] : torch::zeros({B, N}, derivs[0].options());
    torch::autograd::variable_list result(8);
    if (torch::GradMode::is_enabled()) {
      // create_graph: recompute by tensor ops so that second derivatives are exact.
      std::vector<Tensor> inputs, wanted;
      std::vector<int> index;
      for (int i = 0; i < 8; ++i)
        if (saved[i].requires_grad()) {
          wanted.push_back(saved[i]);
          index.push_back(i);
        }
      if (wanted.empty()) return result;
      auto a = mass::epl_deflection_tensor(saved[0], saved[1], saved[2], saved[3], saved[4],
                                           saved[5], saved[6], saved[7]);
      auto g = torch::autograd::grad({a.x.expand({B, N}), a.y.expand({B, N})}, wanted, {gax, gay},
                                     /*retain_graph=*/true, /*create_graph=*/true,
                                     /*allow_unused=*/true);
      for (size_t k = 0; k < index.size(); ++k) result[index[k]] = g[k];
      return result;
    }
    auto out = backward_on_device(gax.to(dtype), gay.to(dtype), derivs);
    result[0] = reduce_to(out[0], saved[0]);
    result[1] = reduce_to(out[1], saved[1]);
    for (int k = 0; k < 6; ++k) {
      Tensor col = out[2].select(1, k);  // [B]
      const Tensor& p = saved[2 + k];
      result[2 + k] = (p.numel() == 1 ? col.sum().reshape(p.sizes()) : col.reshape(p.sizes()))
                          .to(p.scalar_type());
    }
    return result;
  }
};

}  // namespace epl_fused_detail

namespace epl_cuda {

ForwardPack pack_forward(const Tensor& x, const Tensor& y, const std::vector<Tensor>& params,
                         int64_t B, bool with_derivs) {
  ForwardPack pack;
  const int64_t N = std::max(x.size(1), y.size(1));
  const auto dtype = x.scalar_type();
  // [1] or [B], on x's device and of its dtype (no copy when they are)
  for (const auto& t : params) pack.inputs.push_back(t.reshape({-1}).to(x.device(), dtype));
  pack.inputs.push_back(x);
  pack.inputs.push_back(y.to(x.device(), dtype));
  const auto strided = [](const Tensor& t) {
    return Strided{t.data_ptr(), t.numel() == 1 ? 0 : t.stride(0)};
  };
  const auto coords = [](const Tensor& t) {
    return Coords{t.data_ptr(), t.size(0) == 1 ? 0 : t.stride(0), t.size(1) == 1 ? 0 : t.stride(1)};
  };
  ForwardArgs& a = pack.args;
  a.float64 = dtype == torch::kFloat64;
  a.B = B;
  a.N = N;
  a.theta_E = strided(pack.inputs[0]);
  a.gamma = strided(pack.inputs[1]);
  a.e1 = strided(pack.inputs[2]);
  a.e2 = strided(pack.inputs[3]);
  a.center_x = strided(pack.inputs[4]);
  a.center_y = strided(pack.inputs[5]);
  a.x = coords(pack.inputs[6]);
  a.y = coords(pack.inputs[7]);
  a.floor = mass::kEllipticityFloor;
  a.eps = mass::epl_series_eps(dtype);
  pack.ax = torch::empty({B, N}, x.options());
  pack.ay = torch::empty({B, N}, x.options());
  a.ax = pack.ax.data_ptr();
  a.ay = pack.ay.data_ptr();
  if (with_derivs) {
    pack.derivs = torch::empty({epl_point::kNumDerivs, B, N}, x.options());
    a.derivs = pack.derivs.data_ptr();
  }
  return pack;
}

BackwardPack pack_backward(const Tensor& gax, const Tensor& gay, const Tensor& derivs) {
  BackwardPack pack;
  const int64_t B = derivs.size(1), N = derivs.size(2);
  const auto opts = derivs.options();
  pack.inputs = {gax.to(opts).expand({B, N}).contiguous(), gay.to(opts).expand({B, N}).contiguous(),
                 derivs.contiguous()};
  pack.gx = torch::empty({B, N}, opts);
  pack.gy = torch::empty({B, N}, opts);
  pack.sums = torch::zeros({B, 6}, opts.dtype(torch::kFloat64));
  BackwardArgs& a = pack.args;
  a.float64 = derivs.scalar_type() == torch::kFloat64;
  a.B = B;
  a.N = N;
  a.gax = pack.inputs[0].data_ptr();
  a.gay = pack.inputs[1].data_ptr();
  a.derivs = pack.inputs[2].data_ptr();
  a.gx = pack.gx.data_ptr();
  a.gy = pack.gy.data_ptr();
  a.sums = pack.sums.data_ptr<double>();
  return pack;
}

}  // namespace epl_cuda

namespace mass {

Deflection epl_deflection_fused(const Tensor& x, const Tensor& y, const Tensor& theta_E,
                                const Tensor& gamma, const Tensor& e1, const Tensor& e2,
                                const Tensor& center_x, const Tensor& center_y) {
  const bool cpu = x.device().is_cpu() && y.device().is_cpu() && cpu_kernels();
  const bool cuda = x.is_cuda() && y.device() == x.device() && cuda_kernels();
  const auto dt = x.scalar_type();
  const bool floating = dt == torch::kFloat32 || dt == torch::kFloat64;
  if (!(cpu || cuda) || !floating || y.scalar_type() != dt)
    return epl_deflection_tensor(x, y, theta_E, gamma, e1, e2, center_x, center_y);
  auto flat = [&](const Tensor& p) { return p.reshape({-1}); };
  std::vector<Tensor> params{flat(theta_E), flat(gamma),    flat(e1),
                             flat(e2),      flat(center_x), flat(center_y)};
  if (x.dim() != 2 || y.dim() != 2 || (x.size(1) != y.size(1) && x.size(1) != 1 && y.size(1) != 1))
    throw InvalidArgument("EPL: coordinates must be [B, N] or [1, N] of the same N");
  int64_t B = std::max(x.size(0), y.size(0));
  bool needs_grad = x.requires_grad() || y.requires_grad();
  for (const auto& p : params) {
    B = std::max<int64_t>(B, p.numel());
    needs_grad = needs_grad || p.requires_grad();
  }
  for (const auto& p : params)
    if (p.numel() != 1 && p.numel() != B)
      throw InvalidArgument("EPL: parameters must have 1 or B = " + std::to_string(B) + " values");
  if ((x.size(0) != 1 && x.size(0) != B) || (y.size(0) != 1 && y.size(0) != B))
    throw InvalidArgument("EPL: coordinates must have 1 or B = " + std::to_string(B) + " rows");
  if (!needs_grad || !torch::GradMode::is_enabled()) {
    auto out = epl_fused_detail::forward_on_device(x, y, params, B, /*with_derivs=*/false);
    return {out[0], out[1]};
  }
  auto out = epl_fused_detail::EPLFusedFunction::apply(x, y, params[0], params[1], params[2],
                                                       params[3], params[4], params[5]);
  return {out[0], out[1]};
}

}  // namespace mass

}  // namespace dslens::physics

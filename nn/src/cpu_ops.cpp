// Hand-written CPU kernels of the VAE layers (see cpu_ops.h).
//
// Layout: the C-channel planes of a batch are copied into buffers where every row of W pixels is
// followed by a zero and every item's rows are preceded by a zero row (so the zeros are the
// borders of both neighbours); channel c of item b starts at base + c * Mr + b * P with
// P = (H+1)(W+1). A convolution tap (dy, dx) is then the constant pointer offset dy*(W+1) + dx,
// and every layer is one "gather" product Y[n][m] = sum_k w[k][n] * X_k[m], X_k a shifted channel
// row, computed for all m (the border positions give junk that is never read back). Stride-2
// convolutions split the fine grid into its four phases (even/odd rows x columns): a 4x4 stride-2
// convolution is a sum of 2x2 taps over the four phase planes, and its transpose four 2x2
// convolutions, one per output phase. Weight gradients are "reduce" products
// dW[p][q] = sum_m X_p[m] G_q[m] over the same rows, with zero borders in G. Batches are done in
// passes of a few items whose planes stay in the L2 cache.
#include "dslens/nn/cpu_ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/core/simd.h"

namespace dslens::nn::cpu_ops_detail {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---- SIMD vectors (dslens/core/simd.h) ----

using simd::IVec;
using simd::kLanes;
using simd::load;
using simd::splat;
using simd::store;
using simd::Vec;
using simd::vexp;

template <typename T>
DSLENS_INLINE T hsum(Vec<T> v) {
  T s = 0;
  for (int i = 0; i < kLanes<T>; ++i) s += v[i];
  return s;
}
// n < kLanes elements; the other lanes are zero.
template <typename T>
DSLENS_INLINE Vec<T> load_part(const T* p, int64_t n) {
  Vec<T> v = Vec<T>{};
  std::memcpy(&v, p, static_cast<size_t>(n) * sizeof(T));
  return v;
}
template <typename T>
DSLENS_INLINE void store_part(T* p, Vec<T> v, int64_t n) {
  std::memcpy(p, &v, static_cast<size_t>(n) * sizeof(T));
}

template <typename T>
DSLENS_INLINE Vec<T> sigmoid(Vec<T> y) {
  return T(1) / (T(1) + vexp(-y));
}

// ---- gather product: ys[n][m] = sum_k w[k * NR + n] * xs[k][m] for m in [m0, m1) ----

template <typename T, int NR, int MV>
DSLENS_INLINE void gather_tile(const T* const* xs, const T* w, int64_t K, T* const* ys, int64_t m0,
                               int64_t m1) {
  constexpr int L = kLanes<T>;
  using V = Vec<T>;
  int64_t m = m0;
  for (; m + MV * L <= m1; m += MV * L) {
    V acc[NR][MV];
    for (int n = 0; n < NR; ++n)
      for (int j = 0; j < MV; ++j) acc[n][j] = V{};
    const T* wk = w;
    for (int64_t k = 0; k < K; ++k, wk += NR) {
      const T* x = xs[k] + m;
      V a[MV];
      for (int j = 0; j < MV; ++j) a[j] = load(x + j * L);
      for (int n = 0; n < NR; ++n) {
        const V b = splat(wk[n]);
        for (int j = 0; j < MV; ++j) acc[n][j] += a[j] * b;
      }
    }
    for (int n = 0; n < NR; ++n)
      for (int j = 0; j < MV; ++j) store(ys[n] + m + j * L, acc[n][j]);
  }
  if constexpr (MV > 1) {
    if (m < m1) gather_tile<T, NR, 1>(xs, w, K, ys, m, m1);
  } else {
    for (; m < m1; ++m) {
      for (int n = 0; n < NR; ++n) {
        T s = 0;
        for (int64_t k = 0; k < K; ++k) s += w[k * NR + n] * xs[k][m];
        ys[n][m] = s;
      }
    }
  }
}

DSLENS_INLINE int block_width(int64_t left) {
  return left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
}

// Every m range handed to the kernels is a multiple of kRound (whole vectors of both dtypes; the
// reduce product needs it); blocks of m are multiples of kBlock (all tile widths divide it).
constexpr int64_t kRound = 8;
constexpr int64_t kBlock = 96;
inline int64_t round_up(int64_t n, int64_t to) {
  return (n + to - 1) / to * to;
}

// y[n * ystride + m] = sum_k W[k][n] xs[k][m], n < N, m < M; W packed by pack_weights().
template <typename T>
DSLENS_INLINE void gather_gemm_impl(const T* const* xs, int64_t K, const T* packed, int64_t N, T* y,
                                    int64_t ystride, int64_t M) {
  // Blocks of m whose K input rows stay in the L2 cache while every output block is computed.
  int64_t chunk = (int64_t{1} << 17) / std::max<int64_t>(1, K * int64_t(sizeof(T)));
  chunk = std::max<int64_t>(kBlock, chunk / kBlock * kBlock);
  T* ys[8];
  for (int64_t c0 = 0; c0 < M; c0 += chunk) {
    const int64_t c1 = std::min(M, c0 + chunk);
    for (int64_t nb = 0; nb < N;) {
      const int nr = block_width(N - nb);
      for (int i = 0; i < nr; ++i) ys[i] = y + (nb + i) * ystride;
      const T* wb = packed + nb * K;
      switch (nr) {
        case 8:
          gather_tile<T, 8, 1>(xs, wb, K, ys, c0, c1);
          break;
        case 4:
          gather_tile<T, 4, 3>(xs, wb, K, ys, c0, c1);
          break;
        case 2:
          gather_tile<T, 2, 4>(xs, wb, K, ys, c0, c1);
          break;
        default:
          gather_tile<T, 1, 6>(xs, wb, K, ys, c0, c1);
          break;
      }
      nb += nr;
    }
  }
}

DSLENS_CPU_CLONES void gather_gemm_f32(const float* const* xs, int64_t K, const float* packed,
                                       int64_t N, float* y, int64_t ystride, int64_t M) {
  gather_gemm_impl<float>(xs, K, packed, N, y, ystride, M);
}
DSLENS_CPU_CLONES void gather_gemm_f64(const double* const* xs, int64_t K, const double* packed,
                                       int64_t N, double* y, int64_t ystride, int64_t M) {
  gather_gemm_impl<double>(xs, K, packed, N, y, ystride, M);
}
inline void gather_gemm(const float* const* xs, int64_t K, const float* packed, int64_t N, float* y,
                        int64_t ystride, int64_t M) {
  gather_gemm_f32(xs, K, packed, N, y, ystride, M);
}
inline void gather_gemm(const double* const* xs, int64_t K, const double* packed, int64_t N,
                        double* y, int64_t ystride, int64_t M) {
  gather_gemm_f64(xs, K, packed, N, y, ystride, M);
}

// W[k][n] = wmat(k, n) in the blocked order gather_gemm reads: for each block of nr outputs
// starting at nb, [K][nr] at offset nb * K.
template <typename T, typename F>
std::vector<T> pack_weights(int64_t K, int64_t N, F&& wmat) {
  std::vector<T> p(static_cast<size_t>(K * N));
  for (int64_t nb = 0; nb < N;) {
    const int nr = block_width(N - nb);
    T* dst = p.data() + nb * K;
    for (int64_t k = 0; k < K; ++k)
      for (int i = 0; i < nr; ++i) dst[k * nr + i] = wmat(k, nb + i);
    nb += nr;
  }
  return p;
}

// ---- reduce product: out[p * Q + q] += sum_{m < M} as[p][m] * bs[q][m] (M a multiple of lanes) --

template <typename T, int RP, int RQ>
DSLENS_INLINE void reduce_tile(const T* const* as, const T* const* bs, int64_t m0, int64_t m1,
                               T* out, int64_t ldo) {
  constexpr int L = kLanes<T>;
  using V = Vec<T>;
  V acc[RP][RQ];
  for (int p = 0; p < RP; ++p)
    for (int q = 0; q < RQ; ++q) acc[p][q] = V{};
  for (int64_t m = m0; m < m1; m += L) {
    V a[RP], b[RQ];
    for (int p = 0; p < RP; ++p) a[p] = load(as[p] + m);
    for (int q = 0; q < RQ; ++q) b[q] = load(bs[q] + m);
    for (int p = 0; p < RP; ++p)
      for (int q = 0; q < RQ; ++q) acc[p][q] += a[p] * b[q];
  }
  for (int p = 0; p < RP; ++p)
    for (int q = 0; q < RQ; ++q) out[p * ldo + q] += hsum<T>(acc[p][q]);
}

template <typename T>
DSLENS_INLINE void reduce_gemm_impl(const T* const* as, int64_t P, const T* const* bs, int64_t Q,
                                    int64_t M, T* out) {
  // (The rows of one pass fit in the L2 cache by construction: no blocking of m.)
  for (int64_t p = 0; p < P;) {
    const int rp = P - p >= 4 ? 4 : 1;
    for (int64_t q = 0; q < Q;) {
      const int rq = Q - q >= 2 ? 2 : 1;
      T* o = out + p * Q + q;
      if (rp == 4 && rq == 2) {
        reduce_tile<T, 4, 2>(as + p, bs + q, 0, M, o, Q);
      } else if (rp == 4) {
        reduce_tile<T, 4, 1>(as + p, bs + q, 0, M, o, Q);
      } else if (rq == 2) {
        reduce_tile<T, 1, 2>(as + p, bs + q, 0, M, o, Q);
      } else {
        reduce_tile<T, 1, 1>(as + p, bs + q, 0, M, o, Q);
      }
      q += rq;
    }
    p += rp;
  }
}

DSLENS_CPU_CLONES void reduce_gemm_f32(const float* const* as, int64_t P, const float* const* bs,
                                       int64_t Q, int64_t M, float* out) {
  reduce_gemm_impl<float>(as, P, bs, Q, M, out);
}
DSLENS_CPU_CLONES void reduce_gemm_f64(const double* const* as, int64_t P, const double* const* bs,
                                       int64_t Q, int64_t M, double* out) {
  reduce_gemm_impl<double>(as, P, bs, Q, M, out);
}
inline void reduce_gemm(const float* const* as, int64_t P, const float* const* bs, int64_t Q,
                        int64_t M, float* out) {
  reduce_gemm_f32(as, P, bs, Q, M, out);
}
inline void reduce_gemm(const double* const* as, int64_t P, const double* const* bs, int64_t Q,
                        int64_t M, double* out) {
  reduce_gemm_f64(as, P, bs, Q, M, out);
}

// ---- GroupNorm + SiLU over contiguous [B, C, HW] ----

// Sum of p[0..n) with 4 vector accumulators.
template <typename T>
DSLENS_INLINE T span_sum(const T* p, int64_t n, T centre, bool squares) {
  constexpr int L = kLanes<T>;
  using V = Vec<T>;
  V a[4] = {V{}, V{}, V{}, V{}};
  const V c = splat(centre);
  int64_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    for (int j = 0; j < 4; ++j) {
      const V d = load(p + i + j * L) - c;
      a[j] += squares ? d * d : d;
    }
  }
  for (; i + L <= n; i += L) {
    const V d = load(p + i) - c;
    a[0] += squares ? d * d : d;
  }
  T s = hsum<T>((a[0] + a[1]) + (a[2] + a[3]));
  for (; i < n; ++i) {
    const T d = p[i] - centre;
    s += squares ? d * d : d;
  }
  return s;
}

// out = silu(x * scale + shift) over n elements.
template <typename T>
DSLENS_INLINE void affine_silu(const T* x, T* out, int64_t n, T scale, T shift) {
  constexpr int L = kLanes<T>;
  using V = Vec<T>;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const V y = load(x + i) * scale + shift;
    store(out + i, y * sigmoid<T>(y));
  }
  if (i < n) {
    const V y = load_part(x + i, n - i) * scale + shift;
    store_part(out + i, y * sigmoid<T>(y), n - i);
  }
}

// gy = gout * silu'(y) for y = x * scale + shift; adds gy and gy * xhat to the sums.
template <typename T>
DSLENS_INLINE Vec<T> silu_grad_step(Vec<T> xv, Vec<T> gv, T scale, T shift, T mean, T rstd,
                                    Vec<T>& sg, Vec<T>& sgx) {
  const Vec<T> y = xv * scale + shift;
  const Vec<T> s = sigmoid<T>(y);
  const Vec<T> out = gv * s * (T(1) + y * (T(1) - s));
  sg += out;
  sgx += out * ((xv - mean) * rstd);
  return out;
}

// Pass 1 of the backward: gy = gout * silu'(y), y = x * scale + shift, written to gy; returns the
// sums of gy and gy * xhat (xhat = (x - mean) * rstd).
template <typename T>
DSLENS_INLINE void silu_grad_span(const T* x, const T* gout, T* gy, int64_t n, T scale, T shift,
                                  T mean, T rstd, T& sum_g, T& sum_gx) {
  constexpr int L = kLanes<T>;
  using V = Vec<T>;
  V sg = V{}, sgx = V{};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    store(gy + i,
          silu_grad_step<T>(load(x + i), load(gout + i), scale, shift, mean, rstd, sg, sgx));
  if (i < n) {
    const V o = silu_grad_step<T>(load_part(x + i, n - i), load_part(gout + i, n - i), scale, shift,
                                  mean, rstd, sg, sgx);
    store_part(gy + i, o, n - i);
  }
  sum_g = hsum<T>(sg);
  sum_gx = hsum<T>(sgx);
}

// gx = rstd * (gy * gamma - a - xhat * b) in place over gy.
template <typename T>
DSLENS_INLINE void norm_grad_span(const T* x, T* g, int64_t n, T gamma, T mean, T rstd, T a, T b) {
  constexpr int L = kLanes<T>;
  using V = Vec<T>;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const V xhat = (load(x + i) - mean) * rstd;
    store(g + i, (load(g + i) * gamma - a - xhat * b) * rstd);
  }
  for (; i < n; ++i) {
    const T xhat = (x[i] - mean) * rstd;
    g[i] = (g[i] * gamma - a - xhat * b) * rstd;
  }
}

template <typename T>
DSLENS_INLINE void gn_silu_forward_impl(const T* x, T* out, T* stats, const T* gamma, const T* beta,
                                        int64_t B, int64_t C, int64_t HW, int64_t G, double eps) {
  if (G == 0) {
    affine_silu<T>(x, out, B * C * HW, T(1), T(0));
    return;
  }
  const int64_t cg = C / G, n = cg * HW;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < G; ++g) {
      const T* xs = x + (b * C + g * cg) * HW;
      const T mean = span_sum<T>(xs, n, T(0), false) / T(n);
      const T var = span_sum<T>(xs, n, mean, true) / T(n);
      const T rstd = T(1) / std::sqrt(var + T(eps));
      stats[(b * G + g) * 2] = mean;
      stats[(b * G + g) * 2 + 1] = rstd;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const T scale = rstd * gamma[c];
        affine_silu<T>(x + (b * C + c) * HW, out + (b * C + c) * HW, HW, scale,
                       beta[c] - mean * scale);
      }
    }
  }
}

template <typename T>
DSLENS_INLINE void gn_silu_backward_impl(const T* x, const T* gout, const T* stats, const T* gamma,
                                         const T* beta, T* gx, T* dgamma, T* dbeta, int64_t B,
                                         int64_t C, int64_t HW, int64_t G) {
  if (G == 0) {
    T sg, sgx;
    silu_grad_span<T>(x, gout, gx, B * C * HW, T(1), T(0), T(0), T(1), sg, sgx);
    return;
  }
  const int64_t cg = C / G, n = cg * HW;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < G; ++g) {
      const T mean = stats[(b * G + g) * 2], rstd = stats[(b * G + g) * 2 + 1];
      T s1 = 0, s2 = 0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const int64_t o = (b * C + c) * HW;
        const T scale = rstd * gamma[c];
        T sg, sgx;
        silu_grad_span<T>(x + o, gout + o, gx + o, HW, scale, beta[c] - mean * scale, mean, rstd,
                          sg, sgx);
        dbeta[c] += sg;
        dgamma[c] += sgx;
        s1 += gamma[c] * sg;
        s2 += gamma[c] * sgx;
      }
      const T a = s1 / T(n), bq = s2 / T(n);
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const int64_t o = (b * C + c) * HW;
        norm_grad_span<T>(x + o, gx + o, HW, gamma[c], mean, rstd, a, bq);
      }
    }
  }
}

DSLENS_CPU_CLONES void gn_silu_forward_f32(const float* x, float* out, float* stats,
                                           const float* gamma, const float* beta, int64_t B,
                                           int64_t C, int64_t HW, int64_t G, double eps) {
  gn_silu_forward_impl<float>(x, out, stats, gamma, beta, B, C, HW, G, eps);
}
DSLENS_CPU_CLONES void gn_silu_forward_f64(const double* x, double* out, double* stats,
                                           const double* gamma, const double* beta, int64_t B,
                                           int64_t C, int64_t HW, int64_t G, double eps) {
  gn_silu_forward_impl<double>(x, out, stats, gamma, beta, B, C, HW, G, eps);
}
DSLENS_CPU_CLONES void gn_silu_backward_f32(const float* x, const float* gout, const float* stats,
                                            const float* gamma, const float* beta, float* gx,
                                            float* dgamma, float* dbeta, int64_t B, int64_t C,
                                            int64_t HW, int64_t G) {
  gn_silu_backward_impl<float>(x, gout, stats, gamma, beta, gx, dgamma, dbeta, B, C, HW, G);
}
DSLENS_CPU_CLONES void gn_silu_backward_f64(const double* x, const double* gout,
                                            const double* stats, const double* gamma,
                                            const double* beta, double* gx, double* dgamma,
                                            double* dbeta, int64_t B, int64_t C, int64_t HW,
                                            int64_t G) {
  gn_silu_backward_impl<double>(x, gout, stats, gamma, beta, gx, dgamma, dbeta, B, C, HW, G);
}
inline void gn_silu_forward(const float* x, float* out, float* stats, const float* gamma,
                            const float* beta, int64_t B, int64_t C, int64_t HW, int64_t G,
                            double eps) {
  gn_silu_forward_f32(x, out, stats, gamma, beta, B, C, HW, G, eps);
}
inline void gn_silu_forward(const double* x, double* out, double* stats, const double* gamma,
                            const double* beta, int64_t B, int64_t C, int64_t HW, int64_t G,
                            double eps) {
  gn_silu_forward_f64(x, out, stats, gamma, beta, B, C, HW, G, eps);
}
inline void gn_silu_backward(const float* x, const float* gout, const float* stats,
                             const float* gamma, const float* beta, float* gx, float* dgamma,
                             float* dbeta, int64_t B, int64_t C, int64_t HW, int64_t G) {
  gn_silu_backward_f32(x, gout, stats, gamma, beta, gx, dgamma, dbeta, B, C, HW, G);
}
inline void gn_silu_backward(const double* x, const double* gout, const double* stats,
                             const double* gamma, const double* beta, double* gx, double* dgamma,
                             double* dbeta, int64_t B, int64_t C, int64_t HW, int64_t G) {
  gn_silu_backward_f64(x, gout, stats, gamma, beta, gx, dgamma, dbeta, B, C, HW, G);
}

// dw[n][k] += sum_b g[b][n] x[b][k] (the weight gradient of a linear layer).
template <typename T>
DSLENS_INLINE void outer_accumulate_impl(const T* g, const T* x, T* dw, int64_t B, int64_t N,
                                         int64_t K) {
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t n = 0; n < N; ++n) {
      const T gn = g[b * N + n];
      if (gn == T(0)) continue;
      T* row = dw + n * K;
      const T* xr = x + b * K;
      for (int64_t k = 0; k < K; ++k) row[k] += gn * xr[k];
    }
  }
}
DSLENS_CPU_CLONES void outer_accumulate_f32(const float* g, const float* x, float* dw, int64_t B,
                                            int64_t N, int64_t K) {
  outer_accumulate_impl<float>(g, x, dw, B, N, K);
}
DSLENS_CPU_CLONES void outer_accumulate_f64(const double* g, const double* x, double* dw, int64_t B,
                                            int64_t N, int64_t K) {
  outer_accumulate_impl<double>(g, x, dw, B, N, K);
}
inline void outer_accumulate(const float* g, const float* x, float* dw, int64_t B, int64_t N,
                             int64_t K) {
  outer_accumulate_f32(g, x, dw, B, N, K);
}
inline void outer_accumulate(const double* g, const double* x, double* dw, int64_t B, int64_t N,
                             int64_t K) {
  outer_accumulate_f64(g, x, dw, B, N, K);
}

// ---- threads ----

// Below this many flops a call stays on the calling thread (waking a pool thread costs ~10 us).
constexpr double kParallelFlops = 4e5;

int64_t chunk_count(int64_t items, double flops) {
  if (items < 2 || flops < kParallelFlops || at::in_parallel_region()) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(items, at::get_num_threads()));
}

// fn(chunk, begin, end) over `chunks` contiguous pieces of [0, items), on the calling thread and
// up to chunks - 1 threads of LibTorch's inter-op pool. The pieces depend only on (items, chunks).
// Chunks are claimed from a counter, so the caller does the work itself when the pool is busy
// (no deadlock when called from a pool thread).
void parallel_chunks(int64_t items, int64_t chunks,
                     const std::function<void(int64_t, int64_t, int64_t)>& fn) {
  if (chunks <= 1) {
    fn(0, 0, items);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    int64_t remaining = 0;
    std::mutex mutex;
    std::condition_variable done;
    std::exception_ptr error;
  };
  auto state = std::make_shared<State>();
  state->remaining = chunks;
  const auto* f = &fn;
  auto work = [state, chunks, items, f]() {
    for (;;) {
      const int64_t i = state->next.fetch_add(1);
      if (i >= chunks) return;  // a late pool task: nothing left, f may be gone
      try {
        (*f)(i, items * i / chunks, items * (i + 1) / chunks);
      } catch (...) {
        std::lock_guard<std::mutex> lock(state->mutex);
        if (!state->error) state->error = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(state->mutex);
      if (--state->remaining == 0) state->done.notify_all();
    }
  };
  for (int64_t i = 1; i < chunks; ++i) at::launch(work);
  work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->done.wait(lock, [&] { return state->remaining == 0; });
  if (state->error) std::rethrow_exception(state->error);
}

// ---- padded planes ----

// Plane geometry: each row of W pixels is followed by one zero (the left and right border of its
// neighbours) and each item's H rows are preceded by one zero row (the top and bottom border), so
// an item takes P = (H + 1)(W + 1) elements; channel c of a pass holds its items at
// c * Mr + b * P. Borders, the slack up to Mr and the margins around the channels are zero.
struct Geom {
  int64_t H, W, Wp, P, items, Mr, margin;
  Geom(int64_t h, int64_t w, int64_t n)
      : H(h),
        W(w),
        Wp(w + 1),
        P((h + 1) * (w + 1)),
        items(n),
        Mr(round_up(n * (h + 1) * (w + 1), kRound)),
        margin(round_up(w + 3, 16)) {}
  int64_t at(int64_t b, int64_t y, int64_t x) const { return b * P + (y + 1) * Wp + x; }
  int64_t off(int64_t dy, int64_t dx) const { return dy * Wp + dx; }
};

// Items per pass so that one pass's input and output planes (`channels` in all) stay in the L2
// cache: the copies in and out then run from cache.
template <typename T>
int64_t items_per_pass(int64_t items, int64_t H, int64_t W, int64_t channels) {
  constexpr int64_t kBytes = 192 * 1024;
  const int64_t P = (H + 1) * (W + 1);
  const int64_t per = kBytes / int64_t(sizeof(T)) / std::max<int64_t>(1, P * channels);
  // ... but at least ~512 outputs per product, or the fixed costs per pass dominate.
  const int64_t least = (512 + P - 1) / P;
  return std::max<int64_t>(1, std::min(items, std::max(per, least)));
}

// An uninitialised buffer reused across passes.
template <typename T>
struct Scratch {
  std::unique_ptr<T[]> data;
  size_t capacity = 0;
  T* get(size_t n) {
    if (n > capacity) {
      data.reset(new T[n]);
      capacity = n;
    }
    return data.get();
  }
};

// C channels of planes in geometry g: returns the base (channel c at base + c * Mr). The margins
// around the channels are zero (taps read into them for border outputs); fill() and
// fill_phases() write everything else.
template <typename T>
T* planes(Scratch<T>& s, const Geom& g, int64_t C) {
  const size_t n = static_cast<size_t>(2 * g.margin + C * g.Mr);
  T* p = s.get(n);
  std::fill(p, p + g.margin, T(0));
  std::fill(p + g.margin + C * g.Mr, p + n, T(0));
  return p + g.margin;
}

// One item's plane: the zero row, then rows y of src[y * src_row + i * step] (i < W) each
// followed by a zero.
template <typename T>
DSLENS_INLINE void fill_plane(const Geom& g, T* plane, const T* src, int64_t src_row,
                              int64_t step) {
  std::fill(plane, plane + g.Wp, T(0));
  for (int64_t y = 0; y < g.H; ++y) {
    T* row = plane + (y + 1) * g.Wp;
    const T* s = src + y * src_row;
    if (step == 1) {
      std::memcpy(row, s, static_cast<size_t>(g.W) * sizeof(T));
    } else {
      for (int64_t i = 0; i < g.W; ++i) row[i] = s[i * step];
    }
    row[g.W] = T(0);
  }
}

// x [items, C, H, W] into C channels of planes (borders and slack zero).
template <typename T>
void fill(const Geom& g, T* base, const T* x, int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    T* ch = base + c * g.Mr;
    for (int64_t b = 0; b < g.items; ++b)
      fill_plane(g, ch + b * g.P, x + (b * C + c) * g.H * g.W, g.W, 1);
    std::fill(ch + g.items * g.P, ch + g.Mr, T(0));
  }
}

// x [items, C, 2H, 2W] split into phase planes: channel c * 4 + a * 2 + d holds x[.., 2y+a, 2x+d].
template <typename T>
void fill_phases(const Geom& g, T* base, const T* x, int64_t C) {
  const int64_t W2 = 2 * g.W;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t a = 0; a < 2; ++a)
      for (int64_t d = 0; d < 2; ++d) {
        T* ch = base + (c * 4 + a * 2 + d) * g.Mr;
        for (int64_t b = 0; b < g.items; ++b)
          fill_plane(g, ch + b * g.P, x + (b * C + c) * 4 * g.H * g.W + a * W2 + d, 2 * W2, 2);
        std::fill(ch + g.items * g.P, ch + g.Mr, T(0));
      }
}

// y [C][Mr] (plane layout) -> out [items, C, H, W] (+ bias[c]).
template <typename T>
void unpad(const Geom& g, const T* y, T* out, int64_t C, const T* bias) {
  for (int64_t b = 0; b < g.items; ++b)
    for (int64_t c = 0; c < C; ++c) {
      const T add = bias ? bias[c] : T(0);
      for (int64_t r = 0; r < g.H; ++r) {
        const T* src = y + c * g.Mr + g.at(b, r, 0);
        T* dst = out + ((b * C + c) * g.H + r) * g.W;
        for (int64_t i = 0; i < g.W; ++i) dst[i] = src[i] + add;
      }
    }
}

// y [C][Mr] (plane layout) -> phase (a, d) of out [items, C, 2H, 2W] (+ bias[c]).
template <typename T>
void interleave(const Geom& g, const T* y, int64_t a, int64_t d, T* out, int64_t C, const T* bias) {
  const int64_t H2 = 2 * g.H, W2 = 2 * g.W;
  for (int64_t b = 0; b < g.items; ++b)
    for (int64_t c = 0; c < C; ++c) {
      const T add = bias ? bias[c] : T(0);
      for (int64_t r = 0; r < g.H; ++r) {
        const T* src = y + c * g.Mr + g.at(b, r, 0);
        T* dst = out + ((b * C + c) * H2 + 2 * r + a) * W2 + d;
        for (int64_t i = 0; i < g.W; ++i) dst[2 * i] = src[i] + add;
      }
    }
}

// Taps of a 4x4 stride-2 (transposed) convolution, per phase a of the fine grid and tap t:
// kernel index kTapK[a][t]; coarse offset kUpD[a][t] for the transposed convolution (fine output
// phase a reads coarse input row i + kUpD) and -kUpD for the convolution (coarse output row i
// reads fine input phase a at coarse row i - kUpD).
constexpr int kTapK[2][2] = {{1, 3}, {2, 0}};
constexpr int kUpD[2][2] = {{0, -1}, {0, 1}};

// Sums per-chunk partial results in chunk order (deterministic for a given chunk count).
template <typename T>
Tensor sum_partials(const std::vector<std::vector<T>>& parts, at::IntArrayRef shape,
                    const torch::TensorOptions& opts) {
  auto out = torch::zeros(shape, opts);
  T* o = out.data_ptr<T>();
  for (const auto& p : parts)
    for (size_t i = 0; i < p.size(); ++i) o[i] += p[i];
  return out;
}

// Runs fn(s0, s1) over [b0, b1) in passes of at most `per` items.
template <typename F>
void for_passes(int64_t b0, int64_t b1, int64_t per, F&& fn) {
  for (int64_t s0 = b0; s0 < b1; s0 += per) fn(s0, std::min(b1, s0 + per));
}

// ---- transposed convolution 4x4, stride 2, padding 1: w [Ci, Co, 4, 4] ----

template <typename T>
Tensor convt_forward(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const int64_t B = x.size(0), Ci = x.size(1), H = x.size(2), W = x.size(3), Co = w.size(1);
  auto out = torch::empty({B, Co, 2 * H, 2 * W}, x.options());
  const T* wp = w.data_ptr<T>();
  std::vector<std::vector<T>> packs;
  for (int a = 0; a < 2; ++a)
    for (int d = 0; d < 2; ++d)
      packs.push_back(pack_weights<T>(Ci * 4, Co, [&](int64_t k, int64_t co) {
        const int64_t ci = k / 4, ty = (k / 2) % 2, tx = k % 2;
        return wp[((ci * Co + co) * 4 + kTapK[a][ty]) * 4 + kTapK[d][tx]];
      }));
  const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const double flops = 32.0 * double(B * Ci * Co * H * W);
  parallel_chunks(B, chunk_count(B, flops), [&](int64_t, int64_t b0, int64_t b1) {
    Scratch<T> sx, sy;
    std::vector<const T*> xs(static_cast<size_t>(Ci * 4));
    for_passes(b0, b1, items_per_pass<T>(b1 - b0, H, W, Ci + Co), [&](int64_t s0, int64_t s1) {
      const Geom g(H, W, s1 - s0);
      T* X = planes(sx, g, Ci);
      fill(g, X, xp + s0 * Ci * H * W, Ci);
      T* Y = sy.get(static_cast<size_t>(Co * g.Mr));
      for (int a = 0; a < 2; ++a)
        for (int d = 0; d < 2; ++d) {
          for (int64_t ci = 0; ci < Ci; ++ci)
            for (int ty = 0; ty < 2; ++ty)
              for (int tx = 0; tx < 2; ++tx)
                xs[ci * 4 + ty * 2 + tx] = X + ci * g.Mr + g.off(kUpD[a][ty], kUpD[d][tx]);
          gather_gemm(xs.data(), Ci * 4, packs[a * 2 + d].data(), Co, Y, g.Mr, g.Mr);
          interleave(g, Y, a, d, op + s0 * Co * 4 * H * W, Co, bp);
        }
    });
  });
  return out;
}

template <typename T>
Tensor convt_grad_input(const Tensor& gout, const Tensor& w, int64_t H, int64_t W) {
  const int64_t B = gout.size(0), Co = gout.size(1), Ci = w.size(0);
  auto gx = torch::empty({B, Ci, H, W}, gout.options());
  const T* wp = w.data_ptr<T>();
  // k = (((co * 2 + a) * 2 + d) * 2 + ty) * 2 + tx
  const auto pack = pack_weights<T>(Co * 16, Ci, [&](int64_t k, int64_t ci) {
    const int64_t co = k / 16, a = (k / 8) % 2, d = (k / 4) % 2, ty = (k / 2) % 2, tx = k % 2;
    return wp[((ci * Co + co) * 4 + kTapK[a][ty]) * 4 + kTapK[d][tx]];
  });
  const T* gp = gout.data_ptr<T>();
  T* op = gx.data_ptr<T>();
  const double flops = 32.0 * double(B * Ci * Co * H * W);
  parallel_chunks(B, chunk_count(B, flops), [&](int64_t, int64_t b0, int64_t b1) {
    Scratch<T> sg, sy;
    std::vector<const T*> xs(static_cast<size_t>(Co * 16));
    for_passes(b0, b1, items_per_pass<T>(b1 - b0, H, W, Co * 4 + Ci), [&](int64_t s0, int64_t s1) {
      const Geom g(H, W, s1 - s0);
      T* G = planes(sg, g, Co * 4);
      fill_phases(g, G, gp + s0 * Co * 4 * H * W, Co);
      for (int64_t k = 0; k < Co * 16; ++k) {
        const int64_t co = k / 16, a = (k / 8) % 2, d = (k / 4) % 2, ty = (k / 2) % 2, tx = k % 2;
        xs[k] = G + (co * 4 + a * 2 + d) * g.Mr + g.off(-kUpD[a][ty], -kUpD[d][tx]);
      }
      T* Y = sy.get(static_cast<size_t>(Ci * g.Mr));
      gather_gemm(xs.data(), Co * 16, pack.data(), Ci, Y, g.Mr, g.Mr);
      unpad(g, Y, op + s0 * Ci * H * W, Ci, static_cast<const T*>(nullptr));
    });
  });
  return gx;
}

template <typename T>
Tensor convt_grad_weight(const Tensor& x, const Tensor& gout) {
  const int64_t B = x.size(0), Ci = x.size(1), H = x.size(2), W = x.size(3), Co = gout.size(1);
  const T* xp = x.data_ptr<T>();
  const T* gp = gout.data_ptr<T>();
  const double flops = 32.0 * double(B * Ci * Co * H * W);
  const int64_t chunks = chunk_count(B, flops);
  std::vector<std::vector<T>> parts(static_cast<size_t>(chunks),
                                    std::vector<T>(static_cast<size_t>(Ci * Co * 16), T(0)));
  parallel_chunks(B, chunks, [&](int64_t chunk, int64_t b0, int64_t b1) {
    Scratch<T> sx, sg;
    std::vector<const T*> as(static_cast<size_t>(Ci * 4)), bs(static_cast<size_t>(Co));
    // Per output phase: sums over this chunk's items of [ci, ty, tx][co].
    std::vector<T> sums(static_cast<size_t>(4 * Ci * 4 * Co), T(0));
    for_passes(b0, b1, items_per_pass<T>(b1 - b0, H, W, Ci + Co * 4), [&](int64_t s0, int64_t s1) {
      const Geom g(H, W, s1 - s0);
      T* X = planes(sx, g, Ci);
      fill(g, X, xp + s0 * Ci * H * W, Ci);
      T* G = planes(sg, g, Co * 4);
      fill_phases(g, G, gp + s0 * Co * 4 * H * W, Co);
      for (int a = 0; a < 2; ++a)
        for (int d = 0; d < 2; ++d) {
          for (int64_t ci = 0; ci < Ci; ++ci)
            for (int ty = 0; ty < 2; ++ty)
              for (int tx = 0; tx < 2; ++tx)
                as[ci * 4 + ty * 2 + tx] = X + ci * g.Mr + g.off(kUpD[a][ty], kUpD[d][tx]);
          for (int64_t co = 0; co < Co; ++co) bs[co] = G + (co * 4 + a * 2 + d) * g.Mr;
          reduce_gemm(as.data(), Ci * 4, bs.data(), Co, g.Mr,
                      sums.data() + (a * 2 + d) * Ci * 4 * Co);
        }
    });
    T* dw = parts[chunk].data();
    for (int a = 0; a < 2; ++a)
      for (int d = 0; d < 2; ++d) {
        const T* t = sums.data() + (a * 2 + d) * Ci * 4 * Co;
        for (int64_t ci = 0; ci < Ci; ++ci)
          for (int ty = 0; ty < 2; ++ty)
            for (int tx = 0; tx < 2; ++tx)
              for (int64_t co = 0; co < Co; ++co)
                dw[((ci * Co + co) * 4 + kTapK[a][ty]) * 4 + kTapK[d][tx]] +=
                    t[(ci * 4 + ty * 2 + tx) * Co + co];
      }
  });
  return sum_partials(parts, {Ci, Co, 4, 4}, x.options());
}

// ---- convolution 4x4, stride 2, padding 1: w [Co, Ci, 4, 4] ----

template <typename T>
Tensor conv4_forward(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const int64_t B = x.size(0), Ci = x.size(1), H = x.size(2) / 2, W = x.size(3) / 2, Co = w.size(0);
  auto out = torch::empty({B, Co, H, W}, x.options());
  const T* wp = w.data_ptr<T>();
  // k = (((ci * 2 + a) * 2 + d) * 2 + ty) * 2 + tx
  const auto pack = pack_weights<T>(Ci * 16, Co, [&](int64_t k, int64_t co) {
    const int64_t ci = k / 16, a = (k / 8) % 2, d = (k / 4) % 2, ty = (k / 2) % 2, tx = k % 2;
    return wp[((co * Ci + ci) * 4 + kTapK[a][ty]) * 4 + kTapK[d][tx]];
  });
  const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const double flops = 32.0 * double(B * Ci * Co * H * W);
  parallel_chunks(B, chunk_count(B, flops), [&](int64_t, int64_t b0, int64_t b1) {
    Scratch<T> sx, sy;
    std::vector<const T*> xs(static_cast<size_t>(Ci * 16));
    for_passes(b0, b1, items_per_pass<T>(b1 - b0, H, W, Ci * 4 + Co), [&](int64_t s0, int64_t s1) {
      const Geom g(H, W, s1 - s0);
      T* X = planes(sx, g, Ci * 4);
      fill_phases(g, X, xp + s0 * Ci * 4 * H * W, Ci);
      for (int64_t k = 0; k < Ci * 16; ++k) {
        const int64_t ci = k / 16, a = (k / 8) % 2, d = (k / 4) % 2, ty = (k / 2) % 2, tx = k % 2;
        xs[k] = X + (ci * 4 + a * 2 + d) * g.Mr + g.off(-kUpD[a][ty], -kUpD[d][tx]);
      }
      T* Y = sy.get(static_cast<size_t>(Co * g.Mr));
      gather_gemm(xs.data(), Ci * 16, pack.data(), Co, Y, g.Mr, g.Mr);
      unpad(g, Y, op + s0 * Co * H * W, Co, bp);
    });
  });
  return out;
}

template <typename T>
Tensor conv4_grad_input(const Tensor& gout, const Tensor& w) {
  const int64_t B = gout.size(0), Co = gout.size(1), H = gout.size(2), W = gout.size(3),
                Ci = w.size(1);
  auto gx = torch::empty({B, Ci, 2 * H, 2 * W}, gout.options());
  const T* wp = w.data_ptr<T>();
  std::vector<std::vector<T>> packs;
  for (int a = 0; a < 2; ++a)
    for (int d = 0; d < 2; ++d)
      packs.push_back(pack_weights<T>(Co * 4, Ci, [&](int64_t k, int64_t ci) {
        const int64_t co = k / 4, ty = (k / 2) % 2, tx = k % 2;
        return wp[((co * Ci + ci) * 4 + kTapK[a][ty]) * 4 + kTapK[d][tx]];
      }));
  const T* gp = gout.data_ptr<T>();
  T* op = gx.data_ptr<T>();
  const double flops = 32.0 * double(B * Ci * Co * H * W);
  parallel_chunks(B, chunk_count(B, flops), [&](int64_t, int64_t b0, int64_t b1) {
    Scratch<T> sg, sy;
    std::vector<const T*> xs(static_cast<size_t>(Co * 4));
    for_passes(b0, b1, items_per_pass<T>(b1 - b0, H, W, Co + Ci), [&](int64_t s0, int64_t s1) {
      const Geom g(H, W, s1 - s0);
      T* G = planes(sg, g, Co);
      fill(g, G, gp + s0 * Co * H * W, Co);
      T* Y = sy.get(static_cast<size_t>(Ci * g.Mr));
      for (int a = 0; a < 2; ++a)
        for (int d = 0; d < 2; ++d) {
          for (int64_t co = 0; co < Co; ++co)
            for (int ty = 0; ty < 2; ++ty)
              for (int tx = 0; tx < 2; ++tx)
                xs[co * 4 + ty * 2 + tx] = G + co * g.Mr + g.off(kUpD[a][ty], kUpD[d][tx]);
          gather_gemm(xs.data(), Co * 4, packs[a * 2 + d].data(), Ci, Y, g.Mr, g.Mr);
          interleave(g, Y, a, d, op + s0 * Ci * 4 * H * W, Ci, static_cast<const T*>(nullptr));
        }
    });
  });
  return gx;
}

template <typename T>
Tensor conv4_grad_weight(const Tensor& x, const Tensor& gout) {
  const int64_t B = x.size(0), Ci = x.size(1), H = gout.size(2), W = gout.size(3),
                Co = gout.size(1);
  const T* xp = x.data_ptr<T>();
  const T* gp = gout.data_ptr<T>();
  const double flops = 32.0 * double(B * Ci * Co * H * W);
  const int64_t chunks = chunk_count(B, flops);
  std::vector<std::vector<T>> parts(static_cast<size_t>(chunks),
                                    std::vector<T>(static_cast<size_t>(Co * Ci * 16), T(0)));
  parallel_chunks(B, chunks, [&](int64_t chunk, int64_t b0, int64_t b1) {
    Scratch<T> sx, sg;
    std::vector<const T*> as(static_cast<size_t>(Ci * 16)), bs(static_cast<size_t>(Co));
    std::vector<T> sums(static_cast<size_t>(Ci * 16 * Co), T(0));  // [ci, a, d, ty, tx][co]
    for_passes(b0, b1, items_per_pass<T>(b1 - b0, H, W, Ci * 4 + Co), [&](int64_t s0, int64_t s1) {
      const Geom g(H, W, s1 - s0);
      T* X = planes(sx, g, Ci * 4);
      fill_phases(g, X, xp + s0 * Ci * 4 * H * W, Ci);
      T* G = planes(sg, g, Co);
      fill(g, G, gp + s0 * Co * H * W, Co);
      for (int64_t k = 0; k < Ci * 16; ++k) {
        const int64_t ci = k / 16, a = (k / 8) % 2, d = (k / 4) % 2, ty = (k / 2) % 2, tx = k % 2;
        as[k] = X + (ci * 4 + a * 2 + d) * g.Mr + g.off(-kUpD[a][ty], -kUpD[d][tx]);
      }
      for (int64_t co = 0; co < Co; ++co) bs[co] = G + co * g.Mr;
      reduce_gemm(as.data(), Ci * 16, bs.data(), Co, g.Mr, sums.data());
    });
    T* dw = parts[chunk].data();
    for (int64_t k = 0; k < Ci * 16; ++k) {
      const int64_t ci = k / 16, a = (k / 8) % 2, d = (k / 4) % 2, ty = (k / 2) % 2, tx = k % 2;
      for (int64_t co = 0; co < Co; ++co)
        dw[((co * Ci + ci) * 4 + kTapK[a][ty]) * 4 + kTapK[d][tx]] += sums[k * Co + co];
    }
  });
  return sum_partials(parts, {Co, Ci, 4, 4}, x.options());
}

// ---- convolution 3x3, stride 1, padding 1: w [Co, Ci, 3, 3] ----

template <typename T>
Tensor conv3_forward(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const int64_t B = x.size(0), Ci = x.size(1), H = x.size(2), W = x.size(3), Co = w.size(0);
  auto out = torch::empty({B, Co, H, W}, x.options());
  const T* wp = w.data_ptr<T>();
  const auto pack = pack_weights<T>(
      Ci * 9, Co, [&](int64_t k, int64_t co) { return wp[(co * Ci + k / 9) * 9 + k % 9]; });
  const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const double flops = 18.0 * double(B * Ci * Co * H * W);
  parallel_chunks(B, chunk_count(B, flops), [&](int64_t, int64_t b0, int64_t b1) {
    Scratch<T> sx, sy;
    std::vector<const T*> xs(static_cast<size_t>(Ci * 9));
    for_passes(b0, b1, items_per_pass<T>(b1 - b0, H, W, Ci + Co), [&](int64_t s0, int64_t s1) {
      const Geom g(H, W, s1 - s0);
      T* X = planes(sx, g, Ci);
      fill(g, X, xp + s0 * Ci * H * W, Ci);
      for (int64_t k = 0; k < Ci * 9; ++k)
        xs[k] = X + (k / 9) * g.Mr + g.off((k % 9) / 3 - 1, k % 3 - 1);
      T* Y = sy.get(static_cast<size_t>(Co * g.Mr));
      gather_gemm(xs.data(), Ci * 9, pack.data(), Co, Y, g.Mr, g.Mr);
      unpad(g, Y, op + s0 * Co * H * W, Co, bp);
    });
  });
  return out;
}

template <typename T>
Tensor conv3_grad_input(const Tensor& gout, const Tensor& w) {
  const int64_t B = gout.size(0), Co = gout.size(1), H = gout.size(2), W = gout.size(3),
                Ci = w.size(1);
  auto gx = torch::empty({B, Ci, H, W}, gout.options());
  const T* wp = w.data_ptr<T>();
  const auto pack = pack_weights<T>(
      Co * 9, Ci, [&](int64_t k, int64_t ci) { return wp[((k / 9) * Ci + ci) * 9 + k % 9]; });
  const T* gp = gout.data_ptr<T>();
  T* op = gx.data_ptr<T>();
  const double flops = 18.0 * double(B * Ci * Co * H * W);
  parallel_chunks(B, chunk_count(B, flops), [&](int64_t, int64_t b0, int64_t b1) {
    Scratch<T> sg, sy;
    std::vector<const T*> xs(static_cast<size_t>(Co * 9));
    for_passes(b0, b1, items_per_pass<T>(b1 - b0, H, W, Ci + Co), [&](int64_t s0, int64_t s1) {
      const Geom g(H, W, s1 - s0);
      T* G = planes(sg, g, Co);
      fill(g, G, gp + s0 * Co * H * W, Co);
      for (int64_t k = 0; k < Co * 9; ++k)
        xs[k] = G + (k / 9) * g.Mr - g.off((k % 9) / 3 - 1, k % 3 - 1);
      T* Y = sy.get(static_cast<size_t>(Ci * g.Mr));
      gather_gemm(xs.data(), Co * 9, pack.data(), Ci, Y, g.Mr, g.Mr);
      unpad(g, Y, op + s0 * Ci * H * W, Ci, static_cast<const T*>(nullptr));
    });
  });
  return gx;
}

template <typename T>
Tensor conv3_grad_weight(const Tensor& x, const Tensor& gout) {
  const int64_t B = x.size(0), Ci = x.size(1), H = x.size(2), W = x.size(3), Co = gout.size(1);
  const T* xp = x.data_ptr<T>();
  const T* gp = gout.data_ptr<T>();
  const double flops = 18.0 * double(B * Ci * Co * H * W);
  const int64_t chunks = chunk_count(B, flops);
  std::vector<std::vector<T>> parts(static_cast<size_t>(chunks),
                                    std::vector<T>(static_cast<size_t>(Co * Ci * 9), T(0)));
  parallel_chunks(B, chunks, [&](int64_t chunk, int64_t b0, int64_t b1) {
    Scratch<T> sx, sg;
    std::vector<const T*> as(static_cast<size_t>(Ci * 9)), bs(static_cast<size_t>(Co));
    std::vector<T> sums(static_cast<size_t>(Ci * 9 * Co), T(0));  // [ci, ky, kx][co]
    for_passes(b0, b1, items_per_pass<T>(b1 - b0, H, W, Ci + Co), [&](int64_t s0, int64_t s1) {
      const Geom g(H, W, s1 - s0);
      T* X = planes(sx, g, Ci);
      fill(g, X, xp + s0 * Ci * H * W, Ci);
      T* G = planes(sg, g, Co);
      fill(g, G, gp + s0 * Co * H * W, Co);
      for (int64_t k = 0; k < Ci * 9; ++k)
        as[k] = X + (k / 9) * g.Mr + g.off((k % 9) / 3 - 1, k % 3 - 1);
      for (int64_t co = 0; co < Co; ++co) bs[co] = G + co * g.Mr;
      reduce_gemm(as.data(), Ci * 9, bs.data(), Co, g.Mr, sums.data());
    });
    T* dw = parts[chunk].data();
    for (int64_t k = 0; k < Ci * 9; ++k)
      for (int64_t co = 0; co < Co; ++co) dw[(co * Ci + k / 9) * 9 + k % 9] += sums[k * Co + co];
  });
  return sum_partials(parts, {Co, Ci, 3, 3}, x.options());
}

// ---- linear: x [B, K], w [N, K] ----

// Rows of a [R, K] matrix as pointers to whole vectors: the rows themselves when K is a multiple
// of kRound, else zero-padded copies in `copy`.
template <typename T>
std::vector<const T*> padded_rows(const T* m, int64_t R, int64_t K, std::vector<T>& copy) {
  std::vector<const T*> rows(static_cast<size_t>(R));
  const int64_t Kr = round_up(K, kRound);
  if (Kr != K) {
    copy.assign(static_cast<size_t>(R * Kr), T(0));
    for (int64_t r = 0; r < R; ++r) std::memcpy(copy.data() + r * Kr, m + r * K, K * sizeof(T));
  }
  for (int64_t r = 0; r < R; ++r) rows[r] = Kr != K ? copy.data() + r * Kr : m + r * K;
  return rows;
}

template <typename T>
Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const int64_t B = x.size(0), K = x.size(1), N = w.size(0);
  auto out = torch::empty({B, N}, x.options());
  std::vector<T> wcopy;
  const auto wrows = padded_rows(w.data_ptr<T>(), N, K, wcopy);
  const T* xp = x.data_ptr<T>();
  const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  // out[b][n] = <w row n, x row b>: a reduce product over k.
  parallel_chunks(B, chunk_count(B, 2.0 * double(B * N * K)), [&](int64_t, int64_t b0, int64_t b1) {
    const int64_t items = b1 - b0;
    std::vector<T> xcopy;
    const auto xrows = padded_rows(xp + b0 * K, items, K, xcopy);
    std::vector<T> sums(static_cast<size_t>(N * items), T(0));
    reduce_gemm(wrows.data(), N, xrows.data(), items, round_up(K, kRound), sums.data());
    for (int64_t j = 0; j < items; ++j)
      for (int64_t n = 0; n < N; ++n)
        op[(b0 + j) * N + n] = sums[n * items + j] + (bp ? bp[n] : T(0));
  });
  return out;
}

template <typename T>
Tensor linear_grad_input(const Tensor& gout, const Tensor& w) {
  const int64_t B = gout.size(0), N = w.size(0), K = w.size(1);
  auto gx = torch::empty({B, K}, gout.options());
  const int64_t Kr = round_up(K, kRound);
  std::vector<T> wcopy;
  const auto xs = padded_rows(w.data_ptr<T>(), N, K, wcopy);
  const T* gp = gout.data_ptr<T>();
  T* op = gx.data_ptr<T>();
  // gx[b][k] = sum_n g[b][n] w[n][k]: a gather product over the rows of w.
  parallel_chunks(B, chunk_count(B, 2.0 * double(B * N * K)), [&](int64_t, int64_t b0, int64_t b1) {
    const int64_t items = b1 - b0;
    const auto pack =
        pack_weights<T>(N, items, [&](int64_t n, int64_t j) { return gp[(b0 + j) * N + n]; });
    std::vector<T> Y(static_cast<size_t>(items * Kr));
    gather_gemm(xs.data(), N, pack.data(), items, Y.data(), Kr, Kr);
    for (int64_t j = 0; j < items; ++j)
      std::memcpy(op + (b0 + j) * K, Y.data() + j * Kr, K * sizeof(T));
  });
  return gx;
}

template <typename T>
Tensor linear_grad_weight(const Tensor& x, const Tensor& gout) {
  const int64_t B = x.size(0), K = x.size(1), N = gout.size(1);
  const int64_t chunks = chunk_count(B, 2.0 * double(B * N * K));
  std::vector<std::vector<T>> parts(static_cast<size_t>(chunks),
                                    std::vector<T>(static_cast<size_t>(N * K), T(0)));
  const T* xp = x.data_ptr<T>();
  const T* gp = gout.data_ptr<T>();
  parallel_chunks(B, chunks, [&](int64_t chunk, int64_t b0, int64_t b1) {
    outer_accumulate(gp + b0 * N, xp + b0 * K, parts[chunk].data(), b1 - b0, N, K);
  });
  return sum_partials(parts, {N, K}, x.options());
}

// ---- group norm + SiLU ----

template <typename T>
std::pair<Tensor, Tensor> gn_forward(const Tensor& x, int64_t G, const Tensor& gamma,
                                     const Tensor& beta, double eps) {
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto out = torch::empty_like(x);
  auto stats = torch::empty({B, std::max<int64_t>(G, 1), 2}, x.options());
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  T* sp = stats.data_ptr<T>();
  const T* gp = G > 0 ? gamma.data_ptr<T>() : nullptr;
  const T* bp = G > 0 ? beta.data_ptr<T>() : nullptr;
  const int64_t Gs = std::max<int64_t>(G, 1);
  parallel_chunks(B, chunk_count(B, 40.0 * double(B * C * HW)),
                  [&](int64_t, int64_t b0, int64_t b1) {
                    gn_silu_forward(xp + b0 * C * HW, op + b0 * C * HW, sp + b0 * Gs * 2, gp, bp,
                                    b1 - b0, C, HW, G, eps);
                  });
  return {out, stats};
}

template <typename T>
std::vector<Tensor> gn_backward(const Tensor& x, const Tensor& gout, const Tensor& stats, int64_t G,
                                const Tensor& gamma, const Tensor& beta) {
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto gx = torch::empty_like(x);
  const T* xp = x.data_ptr<T>();
  const T* gop = gout.data_ptr<T>();
  const T* sp = stats.data_ptr<T>();
  T* gxp = gx.data_ptr<T>();
  const T* gp = G > 0 ? gamma.data_ptr<T>() : nullptr;
  const T* bp = G > 0 ? beta.data_ptr<T>() : nullptr;
  const int64_t Gs = std::max<int64_t>(G, 1);
  const int64_t chunks = chunk_count(B, 60.0 * double(B * C * HW));
  std::vector<std::vector<T>> parts(static_cast<size_t>(chunks),
                                    std::vector<T>(static_cast<size_t>(2 * C), T(0)));
  parallel_chunks(B, chunks, [&](int64_t chunk, int64_t b0, int64_t b1) {
    T* dg = parts[chunk].data();
    gn_silu_backward(xp + b0 * C * HW, gop + b0 * C * HW, sp + b0 * Gs * 2, gp, bp,
                     gxp + b0 * C * HW, dg, dg + C, b1 - b0, C, HW, G);
  });
  if (G == 0) return {gx, Tensor(), Tensor()};
  auto both = sum_partials(parts, {2, C}, x.options());
  return {gx, both[0], both[1]};
}

// ---- autograd functions ----

bool is_float(const Tensor& t) {
  return t.scalar_type() == torch::kFloat;
}

void check_same(const Tensor& x, const Tensor& t, const char* what, const char* op) {
  if (!t.defined()) return;
  if (!t.device().is_cpu() || t.scalar_type() != x.scalar_type()) {
    throw InvalidArgument(std::string("cpu_ops::") + op + ": " + what +
                          " must be a CPU tensor of the input's dtype");
  }
}

// Custom functions of LibTorch 1.13 cannot take undefined tensors: "no bias" is an empty tensor.
Tensor or_empty(const Tensor& t, const Tensor& like) {
  return t.defined() ? t.contiguous() : torch::empty({0}, like.options());
}
Tensor or_undefined(const Tensor& t) {
  return t.numel() > 0 ? t : Tensor();
}

struct LinearFn : public torch::autograd::Function<LinearFn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w,
                        const Tensor& bias) {
    const Tensor b = or_undefined(bias);
    ctx->save_for_backward({x, w});
    ctx->saved_data["bias"] = b.defined();
    return is_float(x) ? linear_forward<float>(x, w, b) : linear_forward<double>(x, w, b);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& w = saved[1];
    const auto g = grads[0].contiguous();
    Tensor gx, gw, gb;
    const bool f = is_float(x);
    if (ctx->needs_input_grad(0))
      gx = f ? linear_grad_input<float>(g, w) : linear_grad_input<double>(g, w);
    if (ctx->needs_input_grad(1))
      gw = f ? linear_grad_weight<float>(x, g) : linear_grad_weight<double>(x, g);
    if (ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2)) gb = g.sum(0);
    return {gx, gw, gb};
  }
};

enum class ConvKind { kTransposed4, kStrided4, kSame3 };

struct ConvFn : public torch::autograd::Function<ConvFn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, const Tensor& bias,
                        int64_t kind) {
    const Tensor b = or_undefined(bias);
    ctx->save_for_backward({x, w});
    ctx->saved_data["bias"] = b.defined();
    ctx->saved_data["kind"] = kind;
    const bool f = is_float(x);
    switch (static_cast<ConvKind>(kind)) {
      case ConvKind::kTransposed4:
        return f ? convt_forward<float>(x, w, b) : convt_forward<double>(x, w, b);
      case ConvKind::kStrided4:
        return f ? conv4_forward<float>(x, w, b) : conv4_forward<double>(x, w, b);
      default:
        return f ? conv3_forward<float>(x, w, b) : conv3_forward<double>(x, w, b);
    }
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& w = saved[1];
    const auto g = grads[0].contiguous();
    const auto kind = static_cast<ConvKind>(ctx->saved_data["kind"].toInt());
    const bool f = is_float(x);
    Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) {
      switch (kind) {
        case ConvKind::kTransposed4:
          gx = f ? convt_grad_input<float>(g, w, x.size(2), x.size(3))
                 : convt_grad_input<double>(g, w, x.size(2), x.size(3));
          break;
        case ConvKind::kStrided4:
          gx = f ? conv4_grad_input<float>(g, w) : conv4_grad_input<double>(g, w);
          break;
        default:
          gx = f ? conv3_grad_input<float>(g, w) : conv3_grad_input<double>(g, w);
      }
    }
    if (ctx->needs_input_grad(1)) {
      switch (kind) {
        case ConvKind::kTransposed4:
          gw = f ? convt_grad_weight<float>(x, g) : convt_grad_weight<double>(x, g);
          break;
        case ConvKind::kStrided4:
          gw = f ? conv4_grad_weight<float>(x, g) : conv4_grad_weight<double>(x, g);
          break;
        default:
          gw = f ? conv3_grad_weight<float>(x, g) : conv3_grad_weight<double>(x, g);
      }
    }
    if (ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2)) gb = g.sum({0, 2, 3});
    return {gx, gw, gb, Tensor()};
  }
};

struct GroupNormSiluFn : public torch::autograd::Function<GroupNormSiluFn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& gamma,
                        const Tensor& beta, int64_t groups, double eps) {
    auto [out, stats] = is_float(x) ? gn_forward<float>(x, groups, gamma, beta, eps)
                                    : gn_forward<double>(x, groups, gamma, beta, eps);
    ctx->save_for_backward({x, gamma, beta, stats});
    ctx->saved_data["groups"] = groups;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const auto g = grads[0].contiguous();
    auto r = is_float(saved[0])
                 ? gn_backward<float>(saved[0], g, saved[3], groups, saved[1], saved[2])
                 : gn_backward<double>(saved[0], g, saved[3], groups, saved[1], saved[2]);
    if (!ctx->needs_input_grad(0)) r[0] = Tensor();
    if (!ctx->needs_input_grad(1)) r[1] = Tensor();
    if (!ctx->needs_input_grad(2)) r[2] = Tensor();
    return {r[0], r[1], r[2], Tensor(), Tensor()};
  }
};

Tensor conv(const Tensor& x, const Tensor& w, const Tensor& b, ConvKind kind, const char* name) {
  if (!cpu_ops::supported(x) || x.dim() != 4 || w.dim() != 4) {
    throw InvalidArgument(std::string("cpu_ops::") + name +
                          ": expected a 4-d float32/float64 CPU input and a 4-d weight");
  }
  check_same(x, w, "weight", name);
  check_same(x, b, "bias", name);
  const int64_t k = kind == ConvKind::kSame3 ? 3 : 4;
  const int64_t in_ch = kind == ConvKind::kTransposed4 ? w.size(0) : w.size(1);
  const int64_t out_ch = kind == ConvKind::kTransposed4 ? w.size(1) : w.size(0);
  if (w.size(2) != k || w.size(3) != k || x.size(1) != in_ch ||
      (b.defined() && (b.dim() != 1 || b.size(0) != out_ch)) ||
      (kind == ConvKind::kStrided4 && (x.size(2) % 2 != 0 || x.size(3) % 2 != 0))) {
    throw InvalidArgument(std::string("cpu_ops::") + name + ": input " + c10::str(x.sizes()) +
                          ", weight " + c10::str(w.sizes()) + " and bias do not fit");
  }
  return ConvFn::apply(x.contiguous(), w.contiguous(), or_empty(b, x), static_cast<int64_t>(kind));
}

}  // namespace dslens::nn::cpu_ops_detail

namespace dslens::nn::cpu_ops {

bool supported(const torch::Tensor& x) {
  return x.defined() && x.device().is_cpu() && x.layout() == torch::kStrided &&
         (x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble);
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  using namespace cpu_ops_detail;
  if (!supported(x) || x.dim() != 2 || w.dim() != 2 || w.size(1) != x.size(1) ||
      (b.defined() && (b.dim() != 1 || b.size(0) != w.size(0)))) {
    throw InvalidArgument(
        "cpu_ops::linear: expected x [B, K] (float32/float64, CPU), w [N, K] "
        "and b [N]; got x " +
        c10::str(x.sizes()) + ", w " + c10::str(w.sizes()));
  }
  check_same(x, w, "weight", "linear");
  check_same(x, b, "bias", "linear");
  return LinearFn::apply(x.contiguous(), w.contiguous(), or_empty(b, x));
}

torch::Tensor conv_transpose4x4s2(const torch::Tensor& x, const torch::Tensor& w,
                                  const torch::Tensor& b) {
  return cpu_ops_detail::conv(x, w, b, cpu_ops_detail::ConvKind::kTransposed4,
                              "conv_transpose4x4s2");
}

torch::Tensor conv4x4s2(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  return cpu_ops_detail::conv(x, w, b, cpu_ops_detail::ConvKind::kStrided4, "conv4x4s2");
}

torch::Tensor conv3x3(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  return cpu_ops_detail::conv(x, w, b, cpu_ops_detail::ConvKind::kSame3, "conv3x3");
}

torch::Tensor group_norm_silu(const torch::Tensor& x, int64_t groups, const torch::Tensor& gamma,
                              const torch::Tensor& beta, double eps) {
  using namespace cpu_ops_detail;
  if (!supported(x) || x.dim() != 4 || groups < 0 || (groups > 0 && x.size(1) % groups != 0)) {
    throw InvalidArgument(
        "cpu_ops::group_norm_silu: expected x [B, C, H, W] (float32/float64, "
        "CPU) with C divisible by groups; got " +
        c10::str(x.sizes()) + ", groups " + std::to_string(groups));
  }
  torch::Tensor g = torch::empty({0}, x.options()), b = g;
  if (groups > 0) {
    const auto opts = x.options();
    g = gamma.defined() ? gamma.contiguous() : torch::ones({x.size(1)}, opts);
    b = beta.defined() ? beta.contiguous() : torch::zeros({x.size(1)}, opts);
    check_same(x, g, "gamma", "group_norm_silu");
    check_same(x, b, "beta", "group_norm_silu");
    if (g.numel() != x.size(1) || b.numel() != x.size(1)) {
      throw InvalidArgument("cpu_ops::group_norm_silu: gamma and beta need one value per channel");
    }
  }
  return GroupNormSiluFn::apply(x.contiguous(), g, b, groups, eps);
}

}  // namespace dslens::nn::cpu_ops

#undef DSLENS_CPU_CLONES
#undef DSLENS_INLINE

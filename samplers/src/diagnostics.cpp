// MCMC diagnostics following the R package posterior (R/convergence.R) step by step; see
// diagnostics.h. Comments name the posterior function each piece mirrors.
#include "dslens/samplers/diagnostics.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <numeric>

#include "dslens/core/errors.h"

namespace dslens::samplers {
namespace diagnostics_detail {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Draws of one quantity, chain-major: v[c * n + i] is draw i of chain c.
struct Matrix {
  int64_t m = 0;  // chains
  int64_t n = 0;  // draws per chain
  std::vector<double> v;
  const double* chain(int64_t c) const { return v.data() + c * n; }
};

Matrix from_tensor(const torch::Tensor& draws) {
  if (!draws.defined()) throw InvalidArgument("diagnostics: draws tensor is undefined");
  if (draws.dim() != 1 && draws.dim() != 2) {
    throw InvalidArgument("diagnostics: draws must be [chains, draws] or [draws], got " +
                          std::to_string(draws.dim()) + " dimensions");
  }
  auto cpu = draws.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  Matrix x;
  x.m = draws.dim() == 1 ? 1 : cpu.size(0);
  x.n = draws.dim() == 1 ? cpu.size(0) : cpu.size(1);
  x.v.assign(cpu.data_ptr<double>(), cpu.data_ptr<double>() + cpu.numel());
  return x;
}

Matrix from_chains(const ChainDraws& chains) {
  Matrix x;
  x.m = static_cast<int64_t>(chains.size());
  x.n = chains.empty() ? 0 : static_cast<int64_t>(chains.front().size());
  x.v.reserve(static_cast<size_t>(x.m * x.n));
  for (size_t c = 0; c < chains.size(); ++c) {
    if (static_cast<int64_t>(chains[c].size()) != x.n) {
      throw InvalidArgument("diagnostics: chain " + std::to_string(c) + " has " +
                            std::to_string(chains[c].size()) + " draws, chain 0 has " +
                            std::to_string(x.n));
    }
    x.v.insert(x.v.end(), chains[c].begin(), chains[c].end());
  }
  return x;
}

// R's mean(): long double sum, then one refinement pass.
double mean_of(const double* x, int64_t n) {
  long double s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  s /= n;
  if (std::isfinite(static_cast<double>(s))) {
    long double t = 0;
    for (int64_t i = 0; i < n; ++i) t += x[i] - s;
    s += t / n;
  }
  return static_cast<double>(s);
}

// R's var(): two-pass sample variance with denominator n - 1.
double var_of(const double* x, int64_t n) {
  if (n < 2) return kNaN;
  const long double mu = mean_of(x, n);
  long double s = 0;
  for (int64_t i = 0; i < n; ++i) s += (x[i] - mu) * (x[i] - mu);
  return static_cast<double>(s / (n - 1));
}

bool any_nonfinite(const std::vector<double>& v) {
  return std::any_of(v.begin(), v.end(), [](double d) { return !std::isfinite(d); });
}

// posterior's is_constant(): |max - min| < .Machine$double.eps.
bool is_constant(const std::vector<double>& v) {
  if (v.empty()) return true;
  auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return std::abs(*hi - *lo) < DBL_EPSILON;
}

// posterior's should_return_NA(), plus the "fewer than 4 draws" rule of dslens.
bool undefined(const Matrix& x) {
  return x.m < 1 || x.n < 4 || any_nonfinite(x.v) || is_constant(x.v);
}

// posterior's .split_chains(): first floor(n/2) draws and last floor(n/2) draws of each chain (the
// middle draw of an odd-length chain is dropped); the halves become separate chains.
Matrix split_chains(const Matrix& x) {
  if (x.n == 1) return x;
  const int64_t half = x.n / 2;
  Matrix out;
  out.m = 2 * x.m;
  out.n = half;
  out.v.resize(static_cast<size_t>(out.m * out.n));
  for (int64_t c = 0; c < x.m; ++c) {
    const double* src = x.chain(c);
    std::copy(src, src + half, out.v.begin() + c * half);
    std::copy(src + (x.n - half), src + x.n, out.v.begin() + (x.m + c) * half);
  }
  return out;
}

// Average ranks (1-based) of all values, ties sharing the mean of their ranks (R's rank(),
// ties.method = "average").
std::vector<double> average_ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  size_t i = 0;
  while (i < order.size()) {
    size_t j = i + 1;
    while (j < order.size() && v[order[j]] == v[order[i]]) ++j;
    const double avg = (static_cast<double>(i + 1) + static_cast<double>(j)) / 2.0;
    for (size_t k = i; k < j; ++k) r[order[k]] = avg;
    i = j;
  }
  return r;
}

// posterior's z_scale(): qnorm((rank - 3/8) / (S - 2 * 3/8 + 1)) over all draws together.
Matrix z_scale(const Matrix& x) {
  Matrix z = x;
  const auto r = average_ranks(x.v);
  const double c = 3.0 / 8.0;
  const double S = static_cast<double>(x.v.size());
  for (size_t i = 0; i < r.size(); ++i)
    z.v[i] = mcmc_stats::normal_quantile((r[i] - c) / (S - 2 * c + 1));
  return z;
}

// R's median(): mean of the two middle values for an even count.
double median_of(std::vector<double> v) {
  const size_t n = v.size();
  const size_t half = (n + 1) / 2;
  std::nth_element(v.begin(), v.begin() + (half - 1), v.end());
  const double a = v[half - 1];
  if (n % 2 == 1) return a;
  const double b = *std::min_element(v.begin() + half, v.end());
  return static_cast<double>((static_cast<long double>(a) + b) / 2);
}

// posterior's fold_draws(): |x - median(x)|.
Matrix fold(const Matrix& x) {
  Matrix f = x;
  const double med = median_of(x.v);
  for (auto& d : f.v) d = std::abs(d - med);
  return f;
}

// posterior's .rhat().
double rhat_of(const Matrix& x) {
  if (x.m < 2 || x.n < 2 || any_nonfinite(x.v) || is_constant(x.v)) return kNaN;
  std::vector<double> means(static_cast<size_t>(x.m)), vars(static_cast<size_t>(x.m));
  for (int64_t c = 0; c < x.m; ++c) {
    means[c] = mean_of(x.chain(c), x.n);
    vars[c] = var_of(x.chain(c), x.n);
  }
  const double n = static_cast<double>(x.n);
  const double var_between = n * var_of(means.data(), x.m);
  const double var_within = mean_of(vars.data(), x.m);
  return std::sqrt((var_between / var_within + n - 1) / n);
}

// posterior's fft_next_good_size() / nextn(): the next integer of the form 2^a 3^b 5^c.
int64_t next_good_size(int64_t n) {
  if (n <= 2) return 2;
  while (true) {
    int64_t m = n;
    while (m % 2 == 0) m /= 2;
    while (m % 3 == 0) m /= 3;
    while (m % 5 == 0) m /= 5;
    if (m <= 1) return n;
    ++n;
  }
}

// posterior's autocovariance() of every chain of x, as a [chains, draws] row-major vector: FFT of
// the centred chain zero-padded to twice a good size, |.|^2, inverse FFT, then scaled so that lag
// 0 is the (biased) variance var(x) (n - 1) / n. Constant chains give zeros.
std::vector<double> autocovariances(const Matrix& x) {
  const int64_t m = x.m, n = x.n;
  std::vector<double> out(static_cast<size_t>(m * n), 0.0);
  if (m == 0 || n == 0) return out;
  const auto t = torch::from_blob(const_cast<double*>(x.v.data()), {m, n}, torch::kFloat64);
  const int64_t L = 2 * next_good_size(n);
  const auto centred = t - t.mean(1, true);
  const auto spectrum = torch::fft::rfft(centred, L, 1);
  const auto raw = torch::fft::irfft(spectrum.abs().square(), L, 1).slice(1, 0, n).contiguous();
  const double* r = raw.data_ptr<double>();
  for (int64_t c = 0; c < m; ++c) {
    const double varx = n > 1 ? var_of(x.chain(c), n) : 0.0;
    if (!(varx != 0) || r[c * n] == 0) {
      if (std::isnan(varx)) std::fill(out.begin() + c * n, out.begin() + (c + 1) * n, kNaN);
      continue;  // constant chain: all autocovariances are 0
    }
    const double scale = varx * static_cast<double>(n - 1) / static_cast<double>(n) / r[c * n];
    for (int64_t k = 0; k < n; ++k) out[c * n + k] = r[c * n + k] * scale;
  }
  return out;
}

// posterior's .ess().
double ess_of(const Matrix& x) {
  if (x.n < 3 || x.m < 1 || any_nonfinite(x.v) || is_constant(x.v)) return kNaN;
  const int64_t n = x.n;
  std::vector<double> acov_means(static_cast<size_t>(n), 0.0);
  std::vector<double> chain_means(static_cast<size_t>(x.m));
  const auto ac = autocovariances(x);
  for (int64_t c = 0; c < x.m; ++c) {
    for (int64_t t = 0; t < n; ++t) acov_means[t] += ac[c * n + t];
    chain_means[c] = mean_of(x.chain(c), n);
  }
  for (auto& a : acov_means) a /= static_cast<double>(x.m);
  const double nd = static_cast<double>(n);
  const double mean_var = acov_means[0] * nd / (nd - 1);
  double var_plus = mean_var * (nd - 1) / nd;
  if (x.m > 1) var_plus += var_of(chain_means.data(), x.m);

  // Geyer's initial positive sequence.
  std::vector<double> rho(static_cast<size_t>(n), 0.0);
  int64_t t = 0;
  double rho_even = 1;
  rho[0] = rho_even;
  double rho_odd = 1 - (mean_var - acov_means[1]) / var_plus;
  rho[1] = rho_odd;
  while (t < n - 5 && !std::isnan(rho_even + rho_odd) && rho_even + rho_odd > 0) {
    t += 2;
    rho_even = 1 - (mean_var - acov_means[t]) / var_plus;
    rho_odd = 1 - (mean_var - acov_means[t + 1]) / var_plus;
    if (rho_even + rho_odd >= 0) {
      rho[t] = rho_even;
      rho[t + 1] = rho_odd;
    }
  }
  const int64_t max_t = t;
  // Used in the improved estimate.
  if (rho_even > 0) rho[max_t] = rho_even;

  // Geyer's initial monotone sequence.
  t = 0;
  while (t <= max_t - 4) {
    t += 2;
    if (rho[t] + rho[t + 1] > rho[t - 2] + rho[t - 1]) {
      rho[t] = (rho[t - 2] + rho[t - 1]) / 2;
      rho[t + 1] = rho[t];
    }
  }
  const double total = static_cast<double>(x.m) * nd;
  // Improved estimate: -1 + 2 * sum(rho[1:max_t]) + rho[max_t + 1] in R's 1-based indexing, where
  // R's 1:0 selects just the first element when max_t is 0.
  double sum = 0;
  for (int64_t k = 0; k < std::max<int64_t>(max_t, 1); ++k) sum += rho[k];
  double tau_hat = -1 + 2 * sum + rho[max_t];
  // Safety bound for negative values, capping the ESS at S * log10(S).
  tau_hat = std::max(tau_hat, 1 / std::log10(total));
  return total / tau_hat;
}

// Indicator draws x <= quantile(x, prob), as 0/1 doubles.
Matrix indicator(const Matrix& x, double prob) {
  if (prob == 1) {
    const double len = static_cast<double>(x.v.size());
    prob = (len - 0.5) / len;
  }
  const double q = mcmc_stats::quantile(x.v, prob);
  Matrix ind = x;
  for (auto& d : ind.v) d = d <= q ? 1.0 : 0.0;
  return ind;
}

void check_prob(double prob) {
  if (!(prob >= 0 && prob <= 1)) {
    throw InvalidArgument("diagnostics: quantile probability must be in [0, 1], got " +
                          std::to_string(prob));
  }
}

// posterior's .ess_quantile().
double ess_quantile_of(const Matrix& x, double prob) {
  check_prob(prob);
  if (undefined(x)) return kNaN;
  return ess_of(split_chains(indicator(x, prob)));
}

// posterior's .mcse_quantile(), given the quantile's ESS.
double mcse_quantile_from(const Matrix& x, double prob, double ess) {
  if (std::isnan(ess)) return kNaN;
  const double a1 = mcmc_stats::beta_quantile(0.1586553, ess * prob + 1, ess * (1 - prob) + 1);
  const double a2 = mcmc_stats::beta_quantile(0.8413447, ess * prob + 1, ess * (1 - prob) + 1);
  std::vector<double> sorted = x.v;
  std::sort(sorted.begin(), sorted.end());
  const double S = static_cast<double>(sorted.size());
  const auto i1 = static_cast<int64_t>(std::max(std::floor(a1 * S), 1.0));
  const auto i2 = static_cast<int64_t>(std::min(std::ceil(a2 * S), S));
  return (sorted[i2 - 1] - sorted[i1 - 1]) / 2;
}

double rhat_bulk_of(const Matrix& x) {
  return undefined(x) ? kNaN : rhat_of(z_scale(split_chains(x)));
}
double rhat_tail_of(const Matrix& x) {
  return undefined(x) ? kNaN : rhat_of(z_scale(split_chains(fold(x))));
}
double max_or_nan(double a, double b) {
  return std::isnan(a) || std::isnan(b) ? kNaN : std::max(a, b);
}
double min_or_nan(double a, double b) {
  return std::isnan(a) || std::isnan(b) ? kNaN : std::min(a, b);
}

double mcse_mean_of(const Matrix& x, double ess_basic) {
  return std::sqrt(var_of(x.v.data(), static_cast<int64_t>(x.v.size()))) / std::sqrt(ess_basic);
}

ConvergenceDiagnostics all_of(const Matrix& x) {
  ConvergenceDiagnostics d;
  if (undefined(x)) return d;
  const Matrix zs = z_scale(split_chains(x));
  d.rhat_bulk = rhat_of(zs);
  d.ess_bulk = ess_of(zs);
  d.rhat_tail = rhat_of(z_scale(split_chains(fold(x))));
  d.rhat = max_or_nan(d.rhat_bulk, d.rhat_tail);
  const double ess_q5 = ess_of(split_chains(indicator(x, 0.05)));
  const double ess_q95 = ess_of(split_chains(indicator(x, 0.95)));
  d.ess_tail = min_or_nan(ess_q5, ess_q95);
  d.ess_basic = ess_of(split_chains(x));
  d.mcse_mean = mcse_mean_of(x, d.ess_basic);
  d.mcse_q5 = mcse_quantile_from(x, 0.05, ess_q5);
  d.mcse_q95 = mcse_quantile_from(x, 0.95, ess_q95);
  return d;
}

std::vector<int64_t> count_per_chain(const torch::Tensor& divergent) {
  if (!divergent.defined() || (divergent.dim() != 1 && divergent.dim() != 2)) {
    throw InvalidArgument("diagnostics: divergent must be [chains, draws] or [draws]");
  }
  auto d = divergent.dim() == 1 ? divergent.unsqueeze(0) : divergent;
  auto counts = (d.detach().to(torch::kCPU) != 0).sum(1).to(torch::kInt64).contiguous();
  return std::vector<int64_t>(counts.data_ptr<int64_t>(),
                              counts.data_ptr<int64_t>() + counts.numel());
}

}  // namespace diagnostics_detail

// ---- stats building blocks ----

namespace mcmc_stats {

std::vector<double> autocovariance(const std::vector<double>& x) {
  diagnostics_detail::Matrix one;
  one.m = 1;
  one.n = static_cast<int64_t>(x.size());
  one.v = x;
  return diagnostics_detail::autocovariances(one);
}

double quantile(std::vector<double> values, double prob) {
  if (values.empty() ||
      std::any_of(values.begin(), values.end(), [](double d) { return std::isnan(d); })) {
    return diagnostics_detail::kNaN;
  }
  std::sort(values.begin(), values.end());
  const double n = static_cast<double>(values.size());
  const double index = 1 + std::max(n - 1, 0.0) * prob;
  const double lo = std::floor(index);
  const double hi = std::ceil(index);
  double q = values[static_cast<size_t>(lo) - 1];
  const double xhi = values[static_cast<size_t>(hi) - 1];
  if (index > lo && xhi != q) {
    const double h = index - lo;
    q = (1 - h) * q + h * xhi;
  }
  return q;
}

double normal_quantile(double p) {
  if (std::isnan(p) || p < 0 || p > 1) return diagnostics_detail::kNaN;
  if (p == 0) return -std::numeric_limits<double>::infinity();
  if (p == 1) return std::numeric_limits<double>::infinity();
  if (p == 0.5) return 0.0;
  // Work in the lower tail: q = min(p, 1 - p), exact for p >= 0.5 (Sterbenz).
  const bool upper = p > 0.5;
  const double q = upper ? 1.0 - p : p;
  const double sqrt2 = 1.41421356237309504880;
  const double inv_sqrt_2pi = 0.39894228040143267794;
  // Start from the tail asymptote, then Newton on Phi(x) = q (Phi is convex for x < 0, so the
  // iterates converge monotonically once they are right of the root).
  const double l = -2 * std::log(q);
  double x = -std::sqrt(std::max(l - std::log(l) - std::log(2 * 3.14159265358979323846), 0.0));
  if (q > 0.1) x = -std::sqrt(2 * 3.14159265358979323846) * (0.5 - q);
  for (int it = 0; it < 50; ++it) {
    const double cdf = 0.5 * std::erfc(-x / sqrt2);
    const double pdf = inv_sqrt_2pi * std::exp(-0.5 * x * x);
    if (pdf == 0) break;
    const double dx = (cdf - q) / pdf;
    // Halley correction (second derivative of Phi is -x * pdf).
    const double step = dx / (1 + 0.5 * x * dx);
    x -= step;
    if (std::abs(step) <= 4e-16 * std::max(1.0, std::abs(x))) break;
  }
  return upper ? -x : x;
}

double incomplete_beta(double x, double a, double b) {
  if (std::isnan(x) || std::isnan(a) || std::isnan(b) || a <= 0 || b <= 0)
    return diagnostics_detail::kNaN;
  if (x <= 0) return 0.0;
  if (x >= 1) return 1.0;
  // Continued fraction (modified Lentz), evaluated where it converges quickly.
  auto continued_fraction = [](double aa, double bb, double xx) {
    const double tiny = 1e-300;
    const double qab = aa + bb, qap = aa + 1, qam = aa - 1;
    double c = 1, d = 1 - qab * xx / qap;
    if (std::abs(d) < tiny) d = tiny;
    d = 1 / d;
    double h = d;
    for (int m = 1; m <= 100000; ++m) {
      const double m2 = 2.0 * m;
      double aa_m = m * (bb - m) * xx / ((qam + m2) * (aa + m2));
      d = 1 + aa_m * d;
      if (std::abs(d) < tiny) d = tiny;
      c = 1 + aa_m / c;
      if (std::abs(c) < tiny) c = tiny;
      d = 1 / d;
      h *= d * c;
      aa_m = -(aa + m) * (qab + m) * xx / ((aa + m2) * (qap + m2));
      d = 1 + aa_m * d;
      if (std::abs(d) < tiny) d = tiny;
      c = 1 + aa_m / c;
      if (std::abs(c) < tiny) c = tiny;
      d = 1 / d;
      const double del = d * c;
      h *= del;
      if (std::abs(del - 1) < 1e-16) break;
    }
    return h;
  };
  const double log_front =
      std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x);
  if (x < (a + 1) / (a + b + 2)) return std::exp(log_front) * continued_fraction(a, b, x) / a;
  return 1 - std::exp(log_front) * continued_fraction(b, a, 1 - x) / b;
}

double beta_quantile(double p, double a, double b) {
  if (std::isnan(p) || std::isnan(a) || std::isnan(b) || p < 0 || p > 1 || a <= 0 || b <= 0) {
    return diagnostics_detail::kNaN;
  }
  if (p == 0) return 0.0;
  if (p == 1) return 1.0;
  // Bisection: I_x(a, b) is increasing in x; 200 halvings reach the double resolution anywhere.
  double lo = 0, hi = 1;
  for (int it = 0; it < 200; ++it) {
    const double mid = 0.5 * (lo + hi);
    if (mid <= lo || mid >= hi) break;
    if (incomplete_beta(mid, a, b) < p) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return 0.5 * (lo + hi);
}

}  // namespace mcmc_stats

// ---- public diagnostics ----

double rhat(const torch::Tensor& d) {
  const auto x = diagnostics_detail::from_tensor(d);
  return diagnostics_detail::max_or_nan(diagnostics_detail::rhat_bulk_of(x),
                                        diagnostics_detail::rhat_tail_of(x));
}
double rhat(const ChainDraws& d) {
  const auto x = diagnostics_detail::from_chains(d);
  return diagnostics_detail::max_or_nan(diagnostics_detail::rhat_bulk_of(x),
                                        diagnostics_detail::rhat_tail_of(x));
}
double rhat_bulk(const torch::Tensor& d) {
  return diagnostics_detail::rhat_bulk_of(diagnostics_detail::from_tensor(d));
}
double rhat_bulk(const ChainDraws& d) {
  return diagnostics_detail::rhat_bulk_of(diagnostics_detail::from_chains(d));
}
double rhat_tail(const torch::Tensor& d) {
  return diagnostics_detail::rhat_tail_of(diagnostics_detail::from_tensor(d));
}
double rhat_tail(const ChainDraws& d) {
  return diagnostics_detail::rhat_tail_of(diagnostics_detail::from_chains(d));
}

namespace diagnostics_detail {
double rhat_basic_of(const Matrix& x) {
  return undefined(x) ? kNaN : rhat_of(split_chains(x));
}
double ess_bulk_of(const Matrix& x) {
  return undefined(x) ? kNaN : ess_of(z_scale(split_chains(x)));
}
double ess_tail_of(const Matrix& x) {
  return min_or_nan(ess_quantile_of(x, 0.05), ess_quantile_of(x, 0.95));
}
double ess_basic_of(const Matrix& x) {
  return undefined(x) ? kNaN : ess_of(split_chains(x));
}
double mcse_mean_checked(const Matrix& x) {
  return undefined(x) ? kNaN : mcse_mean_of(x, ess_basic_of(x));
}
double mcse_quantile_of(const Matrix& x, double prob) {
  return mcse_quantile_from(x, prob, ess_quantile_of(x, prob));
}
}  // namespace diagnostics_detail

double rhat_basic(const torch::Tensor& d) {
  return diagnostics_detail::rhat_basic_of(diagnostics_detail::from_tensor(d));
}
double rhat_basic(const ChainDraws& d) {
  return diagnostics_detail::rhat_basic_of(diagnostics_detail::from_chains(d));
}
double ess_bulk(const torch::Tensor& d) {
  return diagnostics_detail::ess_bulk_of(diagnostics_detail::from_tensor(d));
}
double ess_bulk(const ChainDraws& d) {
  return diagnostics_detail::ess_bulk_of(diagnostics_detail::from_chains(d));
}
double ess_tail(const torch::Tensor& d) {
  return diagnostics_detail::ess_tail_of(diagnostics_detail::from_tensor(d));
}
double ess_tail(const ChainDraws& d) {
  return diagnostics_detail::ess_tail_of(diagnostics_detail::from_chains(d));
}
double ess_basic(const torch::Tensor& d) {
  return diagnostics_detail::ess_basic_of(diagnostics_detail::from_tensor(d));
}
double ess_basic(const ChainDraws& d) {
  return diagnostics_detail::ess_basic_of(diagnostics_detail::from_chains(d));
}
double ess_quantile(const torch::Tensor& d, double prob) {
  return diagnostics_detail::ess_quantile_of(diagnostics_detail::from_tensor(d), prob);
}
double ess_quantile(const ChainDraws& d, double prob) {
  return diagnostics_detail::ess_quantile_of(diagnostics_detail::from_chains(d), prob);
}
double mcse_mean(const torch::Tensor& d) {
  return diagnostics_detail::mcse_mean_checked(diagnostics_detail::from_tensor(d));
}
double mcse_mean(const ChainDraws& d) {
  return diagnostics_detail::mcse_mean_checked(diagnostics_detail::from_chains(d));
}
double mcse_quantile(const torch::Tensor& d, double prob) {
  return diagnostics_detail::mcse_quantile_of(diagnostics_detail::from_tensor(d), prob);
}
double mcse_quantile(const ChainDraws& d, double prob) {
  return diagnostics_detail::mcse_quantile_of(diagnostics_detail::from_chains(d), prob);
}

ConvergenceDiagnostics convergence(const torch::Tensor& d) {
  return diagnostics_detail::all_of(diagnostics_detail::from_tensor(d));
}
ConvergenceDiagnostics convergence(const ChainDraws& d) {
  return diagnostics_detail::all_of(diagnostics_detail::from_chains(d));
}

std::vector<ConvergenceDiagnostics> convergence_per_parameter(const torch::Tensor& draws) {
  if (!draws.defined() || draws.dim() != 3) {
    throw InvalidArgument("diagnostics: draws must be [chains, draws, params]");
  }
  // [params, chains, draws], contiguous: each parameter's matrix is one block.
  auto cpu = draws.detach().to(torch::kCPU, torch::kFloat64).permute({2, 0, 1}).contiguous();
  const int64_t P = cpu.size(0), m = cpu.size(1), n = cpu.size(2);
  const double* base = cpu.data_ptr<double>();
  std::vector<ConvergenceDiagnostics> out(static_cast<size_t>(P));
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      diagnostics_detail::Matrix x;
      x.m = m;
      x.n = n;
      x.v.assign(base + p * m * n, base + (p + 1) * m * n);
      out[p] = diagnostics_detail::all_of(x);
    }
  });
  return out;
}

double log_density_above_draws(double reference, const torch::Tensor& draws_log_density,
                               int64_t dim) {
  if (dim < 1) throw InvalidArgument("log_density_above_draws: dim must be >= 1");
  if (!std::isfinite(reference) || draws_log_density.numel() == 0) return NAN;
  const auto lp = draws_log_density.detach().to(torch::kCPU, torch::kFloat64).reshape({-1});
  const auto finite = lp.masked_select(torch::isfinite(lp));
  if (finite.numel() == 0) return NAN;
  return reference - finite.max().item<double>() - 0.5 * static_cast<double>(dim);
}

std::vector<double> ebfmi(const torch::Tensor& energy) {
  if (!energy.defined() || (energy.dim() != 1 && energy.dim() != 2)) {
    throw InvalidArgument("ebfmi: energy must be [chains, draws] or [draws]");
  }
  const auto x = diagnostics_detail::from_tensor(energy);
  std::vector<double> out(static_cast<size_t>(x.m), diagnostics_detail::kNaN);
  for (int64_t c = 0; c < x.m; ++c) {
    const double* e = x.chain(c);
    if (x.n < 2) continue;
    std::vector<double> chain(e, e + x.n);
    if (diagnostics_detail::any_nonfinite(chain) || diagnostics_detail::is_constant(chain))
      continue;
    long double num = 0;
    for (int64_t i = 1; i < x.n; ++i) num += (e[i] - e[i - 1]) * (e[i] - e[i - 1]);
    num /= (x.n - 1);
    const double var = diagnostics_detail::var_of(e, x.n) * static_cast<double>(x.n - 1) /
                       static_cast<double>(x.n);
    out[c] = static_cast<double>(num) / var;
  }
  return out;
}

int64_t count_divergences(const torch::Tensor& divergent) {
  const auto per = diagnostics_detail::count_per_chain(divergent);
  return std::accumulate(per.begin(), per.end(), int64_t{0});
}

std::vector<int64_t> divergences_per_chain(const torch::Tensor& divergent) {
  return diagnostics_detail::count_per_chain(divergent);
}

torch::Tensor divergence_percentiles(const torch::Tensor& draws, const torch::Tensor& divergent) {
  if (!draws.defined() || draws.dim() != 3 || !divergent.defined() ||
      divergent.sizes() != draws.sizes().slice(0, 2))
    throw InvalidArgument("divergence_percentiles: draws must be [C, N, D] and divergent [C, N]");
  const int64_t D = draws.size(2);
  const auto x = draws.detach().to(torch::kCPU, torch::kFloat64).reshape({-1, D});
  const auto flag = divergent.detach().to(torch::kCPU).reshape({-1}) != 0;
  if (!flag.any().item<bool>()) return torch::full({D}, NAN, torch::kFloat64);
  // Each draw's rank within its column (0 to M - 1), as a fraction of M - 1 draws below the top.
  const int64_t M = x.size(0);
  const auto rank = x.argsort(/*dim=*/int64_t{0}).argsort(/*dim=*/int64_t{0}).to(torch::kFloat64) /
                    static_cast<double>(std::max<int64_t>(M - 1, 1));
  return rank.index({flag}).mean(0);
}

}  // namespace dslens::samplers

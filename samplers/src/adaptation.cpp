#include "dslens/samplers/adaptation.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "dslens/core/errors.h"

namespace dslens::samplers {

DualAveraging::DualAveraging(const StepSizeAdaptSettings& settings, const torch::Tensor& mu)
    : settings_(settings), mu_(mu) {
  restart();
}

void DualAveraging::restart() {
  counter_ = 0;
  s_bar_ = torch::zeros_like(mu_);
  x_bar_ = torch::zeros_like(mu_);
}

void DualAveraging::restore(int64_t counter, const torch::Tensor& mu, const torch::Tensor& s_bar,
                            const torch::Tensor& x_bar) {
  if (counter < 0 || !mu.defined() || !s_bar.defined() || !x_bar.defined() ||
      mu.sizes() != mu_.sizes() || s_bar.sizes() != mu_.sizes() || x_bar.sizes() != mu_.sizes())
    throw InvalidArgument("DualAveraging::restore: state does not match the chains");
  counter_ = counter;
  mu_ = mu.to(mu_.options());
  s_bar_ = s_bar.to(mu_.options());
  x_bar_ = x_bar.to(mu_.options());
}

torch::Tensor DualAveraging::learn(const torch::Tensor& adapt_stat) {
  ++counter_;
  const double n = static_cast<double>(counter_);
  torch::Tensor stat = torch::clamp_max(adapt_stat.to(mu_.options()), 1.0);
  const double eta = 1.0 / (n + settings_.t0);
  s_bar_ = (1.0 - eta) * s_bar_ + eta * (settings_.delta - stat);
  torch::Tensor x = mu_ - s_bar_ * (std::sqrt(n) / settings_.gamma);
  const double x_eta = std::pow(n, -settings_.kappa);
  x_bar_ = (1.0 - x_eta) * x_bar_ + x_eta * x;
  return torch::exp(x);
}

torch::Tensor DualAveraging::learn_rows(const torch::Tensor& adapt_stat,
                                        const std::vector<int64_t>& counter,
                                        const torch::Tensor& keep) {
  const int64_t rows = mu_.size(0);
  if (static_cast<int64_t>(counter.size()) != rows)
    throw InvalidArgument("DualAveraging::learn_rows: one counter per row expected");
  // learn's scalars, per row, computed in double on the host as learn computes them; cast to the
  // state's dtype on the device as learn's scalars are cast by the kernels, so every row's
  // arithmetic is learn's to the bit.
  torch::Tensor coef_host = torch::zeros({6, rows}, torch::kFloat64);
  auto a = coef_host.accessor<double, 2>();
  for (int64_t c = 0; c < rows; ++c) {
    if (counter[static_cast<size_t>(c)] < 0)
      throw InvalidArgument("DualAveraging::learn_rows: counters must be >= 0");
    if (counter[static_cast<size_t>(c)] == 0) continue;
    const double n = static_cast<double>(counter[static_cast<size_t>(c)]);
    const double eta = 1.0 / (n + settings_.t0), x_eta = std::pow(n, -settings_.kappa);
    a[0][c] = 1.0;
    a[1][c] = 1.0 - eta;
    a[2][c] = eta;
    a[3][c] = std::sqrt(n) / settings_.gamma;
    a[4][c] = 1.0 - x_eta;
    a[5][c] = x_eta;
  }
  const torch::Tensor coef_dev = coef_host.to(mu_.device());
  const torch::Tensor m = coef_dev.select(0, 0) > 0.5;
  const torch::Tensor coef = coef_dev.to(mu_.scalar_type());
  torch::Tensor stat = torch::clamp_max(adapt_stat.to(mu_.options()), 1.0);
  torch::Tensor s_bar = coef[1] * s_bar_ + coef[2] * (settings_.delta - stat);
  torch::Tensor x = mu_ - s_bar * coef[3];
  torch::Tensor x_bar = coef[4] * x_bar_ + coef[5] * x;
  s_bar_ = torch::where(m, s_bar, s_bar_);
  x_bar_ = torch::where(m, x_bar, x_bar_);
  return torch::where(m, torch::exp(x), keep.to(mu_.options()));
}

WindowedAdaptation::WindowedAdaptation(int64_t num_warmup, const WindowSettings& settings)
    : num_warmup_(num_warmup),
      init_buffer_(settings.init_buffer),
      term_buffer_(settings.term_buffer),
      base_window_(settings.base_window) {
  restart();
}

void WindowedAdaptation::restart() {
  counter_ = 0;
  window_size_ = base_window_;
  next_window_ = init_buffer_ + window_size_ - 1;
}

bool WindowedAdaptation::adaptation_window() const {
  return counter_ >= init_buffer_ && counter_ < num_warmup_ - term_buffer_ &&
         counter_ != num_warmup_;
}

bool WindowedAdaptation::end_adaptation_window() const {
  return counter_ == next_window_ && counter_ != num_warmup_;
}

void WindowedAdaptation::compute_next_window() {
  if (next_window_ == num_warmup_ - term_buffer_ - 1) return;
  window_size_ *= 2;
  next_window_ = counter_ + window_size_;
  if (next_window_ != num_warmup_ - term_buffer_ - 1) {
    const int64_t next_boundary = next_window_ + 2 * window_size_;
    if (next_boundary >= num_warmup_ - term_buffer_) next_window_ = num_warmup_ - term_buffer_ - 1;
  }
}

WindowedAdaptation::Step WindowedAdaptation::step() {
  Step s;
  s.add_sample = adaptation_window();
  if (end_adaptation_window()) {
    compute_next_window();
    s.end_window = true;
  }
  ++counter_;
  return s;
}

std::vector<std::pair<int64_t, int64_t>> WindowedAdaptation::slow_windows(
    int64_t num_warmup, const WindowSettings& settings) {
  std::vector<std::pair<int64_t, int64_t>> out;
  WindowedAdaptation w(num_warmup, settings);
  int64_t begin = -1;
  for (int64_t i = 0; i < num_warmup; ++i) {
    Step s = w.step();
    if (s.add_sample && begin < 0) begin = i;
    if (s.end_window) {
      out.emplace_back(begin < 0 ? i : begin, i + 1);
      begin = -1;
    }
  }
  return out;
}

WelfordEstimator::WelfordEstimator(MetricKind kind, int64_t chains, int64_t dim,
                                   const torch::TensorOptions& options)
    : kind_(kind), chains_(chains), dim_(dim), options_(options) {
  restart();
}

void WelfordEstimator::restart() {
  n_ = 0;
  mean_ = torch::zeros({chains_, dim_}, options_);
  m2_ = kind_ == MetricKind::diag ? torch::zeros({chains_, dim_}, options_)
                                  : torch::zeros({chains_, dim_, dim_}, options_);
}

void WelfordEstimator::restore(int64_t n, const torch::Tensor& mean, const torch::Tensor& m2) {
  if (n < 0 || !mean.defined() || !m2.defined() || mean.sizes() != mean_.sizes() ||
      m2.sizes() != m2_.sizes())
    throw InvalidArgument("WelfordEstimator::restore: state does not match the estimator");
  n_ = n;
  mean_ = mean.to(options_);
  m2_ = m2.to(options_);
}

void WelfordEstimator::add(const torch::Tensor& q) {
  ++n_;
  torch::Tensor delta = q - mean_;
  mean_ = mean_ + delta / static_cast<double>(n_);
  if (kind_ == MetricKind::diag) {
    m2_ = m2_ + delta * (q - mean_);
  } else {
    // Welford's (q - mean_new)(q - mean_old)^T equals (n - 1)/n delta delta^T in exact arithmetic
    // (q - mean_new = (n - 1)/n delta). Written as the latter it is symmetric to the bit, as a
    // metric must be; the former differed from its transpose by float round-off, which a resumed
    // fit's symmetry check then had to tolerate (session 30).
    const double c = static_cast<double>(n_ - 1) / static_cast<double>(n_);
    m2_ = m2_ + (delta.unsqueeze(-1) * delta.unsqueeze(-2)) * c;
  }
}

torch::Tensor WelfordEstimator::covariance_of_groups(int64_t group) const {
  if (n_ < 2) throw Error("WelfordEstimator: a (co)variance needs at least two draws");
  if (group < 1 || chains_ % group != 0)
    throw InvalidArgument("WelfordEstimator: a pooling group of " + std::to_string(group) +
                          " chains does not divide " + std::to_string(chains_) + " chains");
  if (group == 1) return m2_ / static_cast<double>(n_ - 1);
  // The within-chain covariance of the group (the W of R-hat, Gelman et al. BDA3 eq. 11.3): each
  // chain's squared deviations from its own mean, summed over the group, over group (n - 1)
  // degrees of freedom. The deviations of the chains' means from the group's mean are left out on
  // purpose: chains that sit in different modes (or still drift apart in early warmup) would put
  // the distance between the modes into the metric, which no single trajectory travels, and the
  // step size would shrink by that factor in the whitened frame (docs/benchmarks.md, session 16).
  const int64_t groups = chains_ / group;
  const torch::Tensor m2 = kind_ == MetricKind::diag
                               ? m2_.view({groups, group, dim_}).sum(1, true)
                               : m2_.view({groups, group, dim_, dim_}).sum(1, true);
  const torch::Tensor cov = m2 / static_cast<double>(group * (n_ - 1));
  return kind_ == MetricKind::diag
             ? cov.expand({groups, group, dim_}).reshape({chains_, dim_})
             : cov.expand({groups, group, dim_, dim_}).reshape({chains_, dim_, dim_});
}

torch::Tensor regularize_covariance(const torch::Tensor& var, int64_t n, MetricKind kind,
                                    const torch::Tensor& reference) {
  const double nd = static_cast<double>(n);
  const double w = nd / (nd + 5.0);
  const double shrink = 1e-3 * (5.0 / (nd + 5.0));
  if (!reference.defined()) {
    if (kind == MetricKind::diag) return w * var + shrink;
    const int64_t d = var.size(-1);
    return w * var + shrink * torch::eye(d, var.options());
  }
  if (reference.sizes() != var.sizes())
    throw InvalidArgument("regularize_covariance: reference must have the covariance's shape");
  if (kind == MetricKind::diag) return w * var + shrink * reference.to(var.dtype());
  return w * var + torch::diag_embed(shrink * reference.diagonal(0, -2, -1).to(var.dtype()));
}

StrayChains find_stray_chains(const torch::Tensor& mean_log_p, int64_t group, double nats,
                              const torch::Tensor& mean_se) {
  const int64_t chains = mean_log_p.size(0);
  if (mean_log_p.dim() != 1 || group < 1 || chains % group != 0 || !(nats >= 0) ||
      (mean_se.defined() && mean_se.sizes() != mean_log_p.sizes()))
    throw InvalidArgument("find_stray_chains: mean_log_p (and mean_se) must be [C] with C a " +
                          std::string("multiple of group ") + std::to_string(group) +
                          " >= 1, and nats >= 0");
  const auto opt = mean_log_p.options();
  // NaN ranks below everything, as a chain that left the support would.
  const auto m = torch::nan_to_num(mean_log_p.to(torch::kFloat64), -INFINITY, INFINITY, -INFINITY)
                     .view({chains / group, group});
  const auto best = m.max(1, /*keepdim=*/true);
  const auto& best_value = std::get<0>(best);
  auto gap = best_value - m;  // >= 0; +inf for a -inf chain beside a finite best, NaN if both
  gap = torch::where(torch::isfinite(best_value).expand_as(m), gap, torch::zeros_like(gap));
  auto needed = torch::full_like(gap, nats);
  if (mean_se.defined()) {
    // Chains of one mode share their log density's distribution, so the group's errors are pooled
    // (root mean square): one chain's error from 25 draws is itself uncertain by tens of percent.
    const auto se = torch::nan_to_num(mean_se.to(m.device(), torch::kFloat64), 0.0, 0.0, 0.0)
                        .view({chains / group, group});
    const auto pooled = se.square().mean(1, /*keepdim=*/true).sqrt();
    needed = torch::maximum(needed, kStrayMonteCarloErrors * std::sqrt(2.0) * pooled);
  }
  StrayChains out;
  out.stray = (gap > needed).reshape({chains});
  out.needed = needed.reshape({chains});
  const auto first = torch::arange(chains / group, opt.dtype(torch::kLong)).unsqueeze(1) * group;
  const auto best_row =
      (std::get<1>(best) + first).expand({chains / group, group}).reshape({chains});
  out.source = torch::where(out.stray, best_row, torch::arange(chains, opt.dtype(torch::kLong)));
  out.gap = gap.reshape({chains});
  return out;
}

StrayWindow::StrayWindow(int64_t chains, const torch::TensorOptions& options)
    : sums_(torch::zeros({5, chains}, options.dtype(torch::kFloat64))) {}

StrayWindow::StrayWindow(const torch::Tensor& saved) {
  if (saved.dim() == 2 && saved.size(0) == 5) {
    sums_ = saved.to(torch::kFloat64).clone();
  } else if (saved.dim() == 1) {
    // x_1 = 0, y = x: the sum carries on; sum y^2 NaN marks the error as unknown.
    sums_ = torch::zeros({5, saved.size(0)}, saved.options().dtype(torch::kFloat64));
    sums_[0].copy_(saved);
    sums_[1].fill_(std::nan(""));
  } else {
    throw InvalidArgument("StrayWindow: a saved window must be [5, C] or [C]");
  }
}

void StrayWindow::add(const torch::Tensor& log_p, bool first) {
  const auto x = log_p.detach().to(torch::kFloat64);
  if (first) {  // a new window: the sums start again from x_1
    sums_.zero_();
    sums_[3].copy_(x);
  }
  const auto y = x - sums_[3];  // 0 at the first value, so no lag product crosses windows
  sums_[0] += y;
  sums_[1] += y * y;
  sums_[2] += y * sums_[4];
  sums_[4].copy_(y);
}

std::pair<torch::Tensor, torch::Tensor> StrayWindow::mean_and_error(int64_t n) const {
  const double nd = static_cast<double>(std::max<int64_t>(n, 1));
  const auto y_bar = sums_[0] / nd;
  const auto c0 = (sums_[1] / nd - y_bar * y_bar).clamp_min(0.0);
  // Lag-1 autocovariance over the n - 1 pairs, about the window's mean.
  const auto c1 = sums_[2] / std::max(nd - 1.0, 1.0) - y_bar * y_bar;
  const auto rho = torch::nan_to_num(c1 / c0, 0.0, 0.0, 0.0).clamp(0.0, 0.95);
  const auto tau = (1.0 + rho) / (1.0 - rho);
  return {sums_[3] + y_bar, (c0 * tau / nd).sqrt()};
}

}  // namespace dslens::samplers

#include "chain_summary.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "dslens/core/errors.h"
#include "dslens/samplers/diagnostics.h"

namespace dslens::app {
namespace {

std::string number(double v, const char* format = "%.6g") {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

}  // namespace

ChainSummary summarize_chains(const torch::Tensor& values, const std::vector<std::string>& names,
                              const torch::Tensor& log_density, const torch::Tensor& divergent,
                              const torch::Tensor& step_size) {
  if (values.dim() != 3 || values.size(2) != static_cast<int64_t>(names.size()) ||
      log_density.dim() != 2 || log_density.size(0) != values.size(0)) {
    throw InvalidArgument(
        "summarize_chains: expected values [C, N, K] with K names and a log "
        "density [C, N]");
  }
  ChainSummary s;
  s.names = names;
  const auto v = values.to(torch::kCPU, torch::kFloat64);
  s.means = v.mean(1);
  s.within_sd = v.var(1, /*unbiased=*/true).mean(0).sqrt();
  const auto lp_draws = log_density.to(torch::kCPU, torch::kFloat64);
  const auto lp = lp_draws.mean(1);
  const auto div = divergent.to(torch::kCPU, torch::kInt64).sum(1);
  const auto eps = step_size.to(torch::kCPU, torch::kFloat64).mean(1);
  for (int64_t c = 0; c < values.size(0); ++c) {
    s.mean_log_density.push_back(lp[c].item<double>());
    s.mean_log_density_mcse.push_back(
        lp_draws.size(1) >= 4 ? samplers::mcse_mean(lp_draws.narrow(0, c, 1)) : 0.0);
    s.divergences.push_back(div[c].item<int64_t>());
    s.step_size.push_back(eps[c].item<double>());
  }
  return s;
}

nlohmann::json chains_json(const ChainSummary& s) {
  nlohmann::json out = nlohmann::json::array();
  for (size_t c = 0; c < s.mean_log_density.size(); ++c) {
    nlohmann::json mean = nlohmann::json::object();
    for (size_t k = 0; k < s.names.size(); ++k) {
      mean[s.names[k]] = s.means[static_cast<int64_t>(c)][static_cast<int64_t>(k)].item<double>();
    }
    out.push_back({{"chain", c},
                   {"mean_log_density", s.mean_log_density[c]},
                   {"divergences", s.divergences[c]},
                   {"step_size", s.step_size[c]},
                   {"mean", mean}});
  }
  return out;
}

std::string chains_text(const ChainSummary& s, size_t max_chains) {
  const size_t chains = s.mean_log_density.size();
  if (chains == 0 || chains > max_chains) return "";
  std::string out;
  char cell[64];
  const auto row = [&](const std::string& label, const std::vector<std::string>& cells) {
    std::snprintf(cell, sizeof cell, "%-24s", label.c_str());
    out += cell;
    for (const auto& c : cells) {
      std::snprintf(cell, sizeof cell, " %14s", c.c_str());
      out += cell;
    }
    out += "\n";
  };
  std::vector<std::string> header, lp, div, eps;
  for (size_t c = 0; c < chains; ++c) {
    header.push_back("chain " + std::to_string(c));
    lp.push_back(number(s.mean_log_density[c], "%.2f"));
    div.push_back(std::to_string(s.divergences[c]));
    eps.push_back(number(s.step_size[c], "%.4g"));
  }
  row("", header);
  row("mean log posterior", lp);
  row("divergences", div);
  row("step size", eps);
  for (size_t k = 0; k < s.names.size(); ++k) {
    std::vector<std::string> cells;
    for (size_t c = 0; c < chains; ++c) {
      cells.push_back(
          number(s.means[static_cast<int64_t>(c)][static_cast<int64_t>(k)].item<double>()));
    }
    row(s.names[k], cells);
  }
  return out;
}

std::optional<std::string> split_chains_warning(const ChainSummary& s, double nats) {
  const auto& lp = s.mean_log_density;
  if (lp.size() < 2) return std::nullopt;
  const size_t best = static_cast<size_t>(std::max_element(lp.begin(), lp.end()) - lp.begin());
  std::string text;
  for (size_t c = 0; c < lp.size(); ++c) {
    const double gap = lp[best] - lp[c];
    if (!(gap > nats)) continue;
    // In D dimensions a chain's log posterior has sd about sqrt(D / 2) in the typical set (23 nats
    // for a 32 x 32 pixel grid's 1,037 parameters), so two chains of one mode can differ by more
    // than `nats` in their means over a few hundred correlated draws: the gap must also stand 4
    // Monte Carlo errors clear.
    const double mcse = std::hypot(s.mean_log_density_mcse[c], s.mean_log_density_mcse[best]);
    if (!(gap > 4.0 * mcse)) continue;
    // The quantities furthest from the best chain's means, in pooled within-chain sd.
    std::vector<std::pair<double, size_t>> apart;
    for (size_t k = 0; k < s.names.size(); ++k) {
      const double sd = s.within_sd[static_cast<int64_t>(k)].item<double>();
      const double a = s.means[static_cast<int64_t>(c)][static_cast<int64_t>(k)].item<double>();
      const double b = s.means[static_cast<int64_t>(best)][static_cast<int64_t>(k)].item<double>();
      const double z = sd > 0 ? std::abs(a - b) / sd : 0.0;
      if (z > 3.0) apart.emplace_back(z, k);
    }
    std::sort(apart.rbegin(), apart.rend());
    text += (text.empty() ? "" : "; ") + std::string("chain ") + std::to_string(c) + "'s is " +
            number(gap, "%.1f") + " nats below chain " + std::to_string(best) + "'s";
    for (size_t i = 0; i < apart.size() && i < 3; ++i) {
      const size_t k = apart[i].second;
      text += (i == 0 ? " (" : ", ") + s.names[k] + " " +
              number(s.means[static_cast<int64_t>(c)][static_cast<int64_t>(k)].item<double>()) +
              " against " +
              number(s.means[static_cast<int64_t>(best)][static_cast<int64_t>(k)].item<double>());
      if (i + 1 == std::min<size_t>(3, apart.size())) text += ")";
    }
  }
  if (text.empty()) return std::nullopt;
  return "chains in different modes: the mean log posterior of " + text +
         "; the summary pools chains of a less probable mode with the best one (see 'Per chain' "
         "in summary.txt): rerun with more MAP starts (map.starts, map.placement_starts) or a "
         "longer warmup";
}

std::string divergence_region(const torch::Tensor& draws, const torch::Tensor& divergent,
                              const std::vector<std::string>& names) {
  constexpr int64_t kMinDivergences = 5;
  constexpr double kMinOffset = 0.15;
  if (!draws.defined() || draws.dim() != 3 || draws.size(2) != static_cast<int64_t>(names.size()) ||
      samplers::count_divergences(divergent) < kMinDivergences)
    return "";
  const auto pct = samplers::divergence_percentiles(draws, divergent).contiguous();
  std::vector<std::pair<double, size_t>> offset;
  for (size_t k = 0; k < names.size(); ++k) {
    const double p = pct[static_cast<int64_t>(k)].item<double>();
    if (std::isfinite(p) && std::abs(p - 0.5) > kMinOffset)
      offset.push_back({std::abs(p - 0.5), k});
  }
  if (offset.empty()) return "";
  std::sort(offset.begin(), offset.end(), [](const auto& x, const auto& y) {
    return x.first > y.first || (x.first == y.first && x.second < y.second);  // ties: in order
  });
  std::string text = "; they lie towards";
  for (size_t i = 0; i < offset.size() && i < 3; ++i) {
    const size_t k = offset[i].second;
    const double p = pct[static_cast<int64_t>(k)].item<double>();
    text += (i ? ", " : " ") + std::string(p < 0.5 ? "low " : "high ") + names[k] +
            " (mean percentile " + number(100.0 * p, "%.0f") + " %)";
  }
  return text + " (docs/fit.md, \"Divergences\")";
}

}  // namespace dslens::app

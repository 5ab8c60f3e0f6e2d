#include "dslens/samplers/summary.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "dslens/core/errors.h"
#include "dslens/samplers/diagnostics.h"

namespace dslens::samplers {
namespace summary_detail {

std::string format_number(double v, const char* fmt) {
  if (std::isnan(v)) return "NA";
  if (std::isinf(v)) return v > 0 ? "Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

nlohmann::json number_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

}  // namespace summary_detail

std::vector<SummaryRow> summarize(const torch::Tensor& draws,
                                  const std::vector<std::string>& names) {
  if (!draws.defined() || draws.dim() != 3) {
    throw InvalidArgument("summarize: draws must be [chains, draws, params]");
  }
  if (static_cast<int64_t>(names.size()) != draws.size(2)) {
    throw InvalidArgument("summarize: " + std::to_string(names.size()) + " names for " +
                          std::to_string(draws.size(2)) + " parameters");
  }
  const auto cpu = draws.detach().to(torch::kCPU, torch::kFloat64);
  const auto diag = convergence_per_parameter(cpu);
  // [params, chains * draws]
  const auto flat = cpu.permute({2, 0, 1}).reshape({cpu.size(2), -1}).contiguous();
  std::vector<SummaryRow> rows(names.size());
  for (size_t p = 0; p < names.size(); ++p) {
    const double* x = flat.data_ptr<double>() + static_cast<int64_t>(p) * flat.size(1);
    std::vector<double> v(x, x + flat.size(1));
    SummaryRow& r = rows[p];
    r.name = names[p];
    const auto n = static_cast<double>(v.size());
    if (!v.empty()) {
      long double s = 0;
      for (double d : v) s += d;
      r.mean = static_cast<double>(s / n);
      if (v.size() > 1) {
        long double ss = 0;
        for (double d : v) ss += (d - r.mean) * (d - r.mean);
        r.sd = std::sqrt(static_cast<double>(ss / (n - 1)));
      }
      r.q5 = mcmc_stats::quantile(v, 0.05);
      r.q50 = mcmc_stats::quantile(v, 0.5);
      r.q95 = mcmc_stats::quantile(v, 0.95);
    }
    r.rhat = diag[p].rhat;
    r.ess_bulk = diag[p].ess_bulk;
    r.ess_tail = diag[p].ess_tail;
    r.mcse_mean = diag[p].mcse_mean;
  }
  return rows;
}

nlohmann::json summary_json(const std::vector<SummaryRow>& rows) {
  using summary_detail::number_or_null;
  auto out = nlohmann::json::array();
  for (const auto& r : rows) {
    out.push_back({{"variable", r.name},
                   {"mean", number_or_null(r.mean)},
                   {"sd", number_or_null(r.sd)},
                   {"q5", number_or_null(r.q5)},
                   {"q50", number_or_null(r.q50)},
                   {"q95", number_or_null(r.q95)},
                   {"rhat", number_or_null(r.rhat)},
                   {"ess_bulk", number_or_null(r.ess_bulk)},
                   {"ess_tail", number_or_null(r.ess_tail)},
                   {"mcse_mean", number_or_null(r.mcse_mean)}});
  }
  return out;
}

std::string summary_text(const std::vector<SummaryRow>& rows) {
  using summary_detail::format_number;
  const std::vector<std::string> header = {"variable", "mean", "sd",       "q5",       "q50",
                                           "q95",      "rhat", "ess_bulk", "ess_tail", "mcse_mean"};
  std::vector<std::vector<std::string>> cells;
  cells.push_back(header);
  for (const auto& r : rows) {
    cells.push_back({r.name, format_number(r.mean, "%.4g"), format_number(r.sd, "%.4g"),
                     format_number(r.q5, "%.4g"), format_number(r.q50, "%.4g"),
                     format_number(r.q95, "%.4g"), format_number(r.rhat, "%.3f"),
                     format_number(r.ess_bulk, "%.0f"), format_number(r.ess_tail, "%.0f"),
                     format_number(r.mcse_mean, "%.2g")});
  }
  std::vector<size_t> width(header.size(), 0);
  for (const auto& row : cells) {
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  std::ostringstream os;
  for (const auto& row : cells) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      const std::string pad(width[i] - row[i].size(), ' ');
      if (i == 0) {
        line += row[i] + pad;  // names left-aligned
      } else {
        line += "  " + pad + row[i];
      }
    }
    os << line << "\n";
  }
  return os.str();
}

}  // namespace dslens::samplers

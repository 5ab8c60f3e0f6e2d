// Posterior summary table, one row per parameter (like posterior::summarise_draws): mean, sd,
// 5/50/95 % quantiles (R type 7) over all chains, rank-normalised R-hat (max of bulk and tail),
// bulk and tail ESS and the MCSE of the mean. Undefined diagnostics are NaN ("NA" in text, null in
// JSON).
#pragma once
#include <torch/torch.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace dslens::samplers {

struct SummaryRow {
  std::string name;
  double mean = NAN;
  double sd = NAN;
  double q5 = NAN;
  double q50 = NAN;
  double q95 = NAN;
  double rhat = NAN;
  double ess_bulk = NAN;
  double ess_tail = NAN;
  double mcse_mean = NAN;
};

// draws [chains, draws, params] (any dtype/device), one name per parameter (InvalidArgument
// otherwise).
std::vector<SummaryRow> summarize(const torch::Tensor& draws,
                                  const std::vector<std::string>& names);

// [{"variable": ..., "mean": ..., "sd": ..., "q5": ..., "q50": ..., "q95": ..., "rhat": ...,
//   "ess_bulk": ..., "ess_tail": ..., "mcse_mean": ...}, ...]
nlohmann::json summary_json(const std::vector<SummaryRow>& rows);
// Aligned text table with a header line; numbers right-aligned, one line per parameter.
std::string summary_text(const std::vector<SummaryRow>& rows);

}  // namespace dslens::samplers

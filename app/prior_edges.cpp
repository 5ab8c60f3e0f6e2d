#include "prior_edges.h"

#include <cmath>
#include <map>
#include <string>

namespace dslens::app {

OffPriorEdges off_prior_edges(const model::ParameterSpace& space, const torch::Tensor& x) {
  const auto names = space.coordinate_names();
  auto values = space.constrained(x.detach()).to(torch::kCPU, torch::kFloat64);
  auto at_edge = torch::zeros({values.size(0)}, torch::kBool);
  for (size_t j = 0; j < names.size(); ++j) {
    if (names[j].find('[') != std::string::npos) continue;  // a block's coordinate
    const auto prior = space.prior(names[j]);
    if (!prior || !std::isfinite(prior->lower()) || !std::isfinite(prior->upper())) continue;
    const double lo = prior->lower(), hi = prior->upper(), span = hi - lo;
    auto col = values.select(1, static_cast<int64_t>(j));
    const auto low = col<lo + 0.01 * span, high = col> hi - 0.01 * span;
    col.copy_(torch::where(low, torch::full_like(col, lo + 0.05 * span), col));
    col.copy_(torch::where(high, torch::full_like(col, hi - 0.05 * span), col));
    at_edge = at_edge | low | high;
  }
  OffPriorEdges out{x.detach().clone(), at_edge.to(x.device())};
  if (!at_edge.any().item<bool>()) return out;
  // Back to u through the bijections: every free name's constrained value, moved where it was.
  std::map<std::string, torch::Tensor> by_name;
  const auto un = space.unpack(x.detach());
  for (const auto& name : space.free_names())
    by_name[name] = un.values.at(name).to(torch::kCPU, torch::kFloat64);
  for (size_t j = 0; j < names.size(); ++j) {
    const auto it = by_name.find(names[j]);
    if (it != by_name.end()) it->second = values.select(1, static_cast<int64_t>(j));
  }
  const auto packed = space.pack(by_name).to(x.options());
  out.x = torch::where(out.at_edge.unsqueeze(1), packed, out.x);
  return out;
}

}  // namespace dslens::app

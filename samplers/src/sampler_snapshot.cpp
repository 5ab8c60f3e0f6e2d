// SamplerSnapshot as a flat tensor list (torch::save needs defined tensors): a header of counters,
// the seconds, then every tensor field in a fixed order, undefined ones as empty placeholders
// flagged in the header's bit mask.
#include <type_traits>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/samplers/hmc.h"

namespace dslens::samplers {
namespace sampler_snapshot_detail {

constexpr int64_t kMagic = 0x534E4150;  // "SNAP"
constexpr int64_t kVersion = 2;         // 2: stray_window ([C] before session 49)
constexpr int64_t kHeaderSize = 11;

// Pointers to every tensor field, in file order; const for a const snapshot.
template <class Snapshot, class T = std::conditional_t<std::is_const_v<Snapshot>,
                                                       const torch::Tensor, torch::Tensor>>
std::vector<T*> fields(Snapshot& s) {
  std::vector<T*> f = {&s.q,           &s.log_p,      &s.grad,       &s.step_size,    &s.inv_metric,
                       &s.dual_mu,     &s.dual_s_bar, &s.dual_x_bar, &s.welford_mean, &s.welford_m2,
                       &s.stray_window};
  for (auto* d : {&s.warmup, &s.draws}) {
    for (T* t : {&d->draws, &d->log_density, &d->step_size, &d->tree_depth, &d->n_leapfrog,
                 &d->accept_stat, &d->energy, &d->divergent}) {
      f.push_back(t);
    }
  }
  return f;
}

}  // namespace sampler_snapshot_detail

using namespace sampler_snapshot_detail;

std::vector<torch::Tensor> SamplerSnapshot::to_tensors() const {
  const auto f = fields(*this);
  int64_t mask = 0;
  std::vector<torch::Tensor> out(2);
  for (size_t i = 0; i < f.size(); ++i) {
    if (f[i]->defined()) {
      mask |= int64_t{1} << i;
      out.push_back(f[i]->detach().to(torch::kCPU).contiguous());
    } else {
      out.push_back(torch::zeros({0}));
    }
  }
  out[0] = torch::tensor(std::vector<int64_t>{kMagic, kVersion, iteration, num_warmup, num_draws,
                                              dual_counter, welford_count, calls, warmup_calls,
                                              divergences, mask});
  out[1] = torch::tensor(std::vector<double>{warmup_seconds, sampling_seconds}, torch::kFloat64);
  return out;
}

SamplerSnapshot SamplerSnapshot::from_tensors(const std::vector<torch::Tensor>& tensors) {
  SamplerSnapshot s;
  const auto f = fields(s);
  const auto bad = [] { return InvalidArgument("not a sampler snapshot (or another version)"); };
  if (tensors.size() != 2 + f.size()) throw bad();
  const torch::Tensor h = tensors[0].to(torch::kCPU), sec = tensors[1].to(torch::kCPU);
  if (h.scalar_type() != torch::kInt64 || h.dim() != 1 || h.size(0) != kHeaderSize ||
      sec.scalar_type() != torch::kFloat64 || sec.numel() != 2)
    throw bad();
  const int64_t* v = h.data_ptr<int64_t>();
  if (v[0] != kMagic || v[1] != kVersion) throw bad();
  s.iteration = v[2];
  s.num_warmup = v[3];
  s.num_draws = v[4];
  s.dual_counter = v[5];
  s.welford_count = v[6];
  s.calls = v[7];
  s.warmup_calls = v[8];
  s.divergences = v[9];
  const int64_t mask = v[10];
  s.warmup_seconds = sec[0].item<double>();
  s.sampling_seconds = sec[1].item<double>();
  for (size_t i = 0; i < f.size(); ++i) {
    if (mask & (int64_t{1} << i)) *f[i] = tensors[2 + i];
  }
  if (!s.q.defined() || !s.log_p.defined() || !s.grad.defined() || !s.step_size.defined() ||
      !s.inv_metric.defined() || !s.draws.draws.defined() || s.iteration < 0 ||
      s.iteration > s.num_warmup + s.num_draws)
    throw bad();
  return s;
}

}  // namespace dslens::samplers

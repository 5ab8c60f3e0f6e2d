// The log-density interface of every sampler and optimiser: positions are unconstrained and
// batched, [C, D] for C independent chains (or optimiser starts) in D dimensions. A log-density
// returns log p [C] and its gradient [C, D] on the positions' device and dtype. Non-finite values
// are allowed for some rows: samplers treat them as divergent / rejected transitions.
#pragma once
#include <torch/torch.h>

#include <functional>

namespace dslens::samplers {

struct LogDensityValue {
  torch::Tensor log_p;  // [C]
  torch::Tensor grad;   // [C, D]
};

// q [C, D] -> log p [C] and d log p / dq [C, D].
using LogDensityFn = std::function<LogDensityValue(const torch::Tensor& q)>;
// q [C, D] -> log p [C], differentiable with autograd.
using LogProbFn = std::function<torch::Tensor(const torch::Tensor& q)>;

// Wraps a differentiable log p into a LogDensityFn: evaluates it on a detached copy of q that
// requires grad (autograd is enabled inside even under a NoGradGuard) and returns detached values.
// A log p that does not depend on q gets a zero gradient. Rows are assumed independent (the
// gradient of the sum is the per-row gradient).
LogDensityFn autograd_log_density(LogProbFn log_prob);

// Evaluates f on q and checks the shapes ([C] and [C, D]); throws dslens::Error otherwise.
LogDensityValue evaluate_checked(const LogDensityFn& f, const torch::Tensor& q);

}  // namespace dslens::samplers

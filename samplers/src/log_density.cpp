#include "dslens/samplers/log_density.h"

#include <sstream>

#include "dslens/core/errors.h"

namespace dslens::samplers {

LogDensityFn autograd_log_density(LogProbFn log_prob) {
  return [log_prob = std::move(log_prob)](const torch::Tensor& q) {
    torch::AutoGradMode enable(true);
    torch::Tensor x = q.detach().requires_grad_(true);
    torch::Tensor lp = log_prob(x);
    torch::Tensor grad;
    if (lp.requires_grad()) {
      auto grads = torch::autograd::grad({lp.sum()}, {x}, /*grad_outputs=*/{},
                                         /*retain_graph=*/false, /*create_graph=*/false,
                                         /*allow_unused=*/true);
      grad = grads[0].defined() ? grads[0] : torch::zeros_like(q);
    } else {
      grad = torch::zeros_like(q);
    }
    return LogDensityValue{lp.detach(), grad.detach()};
  };
}

LogDensityValue evaluate_checked(const LogDensityFn& f, const torch::Tensor& q) {
  LogDensityValue v = f(q);
  const int64_t c = q.size(0);
  if (!v.log_p.defined() || v.log_p.dim() != 1 || v.log_p.size(0) != c) {
    std::ostringstream os;
    os << "log-density returned log p of shape "
       << (v.log_p.defined() ? v.log_p.sizes() : c10::IntArrayRef{}) << ", expected [" << c << "]";
    throw Error(os.str());
  }
  if (!v.grad.defined() || v.grad.sizes() != q.sizes()) {
    std::ostringstream os;
    os << "log-density returned a gradient of shape "
       << (v.grad.defined() ? v.grad.sizes() : c10::IntArrayRef{}) << ", expected " << q.sizes();
    throw Error(os.str());
  }
  return v;
}

}  // namespace dslens::samplers

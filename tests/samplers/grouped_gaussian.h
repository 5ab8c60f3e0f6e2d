// A test target for samplers that see rows grouped by lens: rows are split into B equal groups in
// order (as LensPosterior splits rows by lens), and group b is a Gaussian with mean mu[b] and
// precision scale[b] * P.
#pragma once
#include <torch/torch.h>

#include "dslens/samplers/log_density.h"

namespace dslens::testing {

inline samplers::LogDensityFn grouped_gaussian(torch::Tensor P, torch::Tensor scale,
                                               torch::Tensor mu) {
  return [P, scale, mu](const torch::Tensor& q) {
    const int64_t per = q.size(0) / mu.size(0);
    auto group = torch::arange(q.size(0)).div(per, "floor");
    auto d = q - mu.index_select(0, group);
    auto pd = d.matmul(P) * scale.index_select(0, group).unsqueeze(1);
    return samplers::LogDensityValue{-0.5 * (d * pd).sum(1), -pd};
  };
}

}  // namespace dslens::testing

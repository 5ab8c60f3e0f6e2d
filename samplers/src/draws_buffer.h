// Buffers of draws shared by the samplers' loops (defined in hmc.cpp).
#pragma once

#include <torch/torch.h>

#include "dslens/samplers/hmc.h"

namespace dslens::samplers::hmc_detail {

// Uninitialised draws [chains, n, dim] and per-draw statistics [chains, n].
Draws allocate_draws(int64_t chains, int64_t n, int64_t dim, const torch::TensorOptions& opt);

}  // namespace dslens::samplers::hmc_detail

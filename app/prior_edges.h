// Optima at a prior's edge, moved inside (app/map_search.cpp's joint stage for PIXELATED sources).
#pragma once
#include <torch/torch.h>

#include "dslens/model/parameter_space.h"

namespace dslens::app {

// Rows of x [R, D] with a bounded scalar parameter within 1 % of its prior's range from an edge,
// that parameter moved to 5 % inside (through the bijections; other coordinates unchanged, blocks
// never moved); `at_edge` [R] bool says which rows moved. The MAP runs its joint stage again from
// there for a PIXELATED source (docs/fit.md, "Pixel grids").
struct OffPriorEdges {
  torch::Tensor x, at_edge;
};
OffPriorEdges off_prior_edges(const model::ParameterSpace& space, const torch::Tensor& x);

}  // namespace dslens::app

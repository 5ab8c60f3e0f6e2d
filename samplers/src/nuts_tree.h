// Pieces of a NUTS tree shared by the lock-step transition (nuts.cpp) and the out-of-step one
// (nuts_out_of_step.cpp), so that both take the same random numbers and the same arithmetic.
#pragma once

#include <torch/torch.h>

#include "dslens/samplers/nuts.h"

namespace dslens::samplers::nuts_detail {

// Random words for tree depths below kPregenDepth are drawn with the momentum, once per
// transition; deeper levels draw theirs when they start.
constexpr int kPregenDepth = 6;

// First element of tree depth d's block in the kStreamNuts stream (after 3D momentum words): the
// direction, the top-level sampling uniform, then the 2^d - 1 subtree merges in post-order.
inline int64_t depth_base(int64_t dim, int d) {
  return 3 * dim + ((int64_t{1} << d) - 1) + d;
}

// What a subtree proposes: position, gradient, log density and Hamiltonian (the energy reported
// when it is selected; the momentum itself is not needed).
struct Proposal {
  torch::Tensor q, grad, log_p, h;
};

inline Proposal select_proposal(const torch::Tensor& mask, const Proposal& a, const Proposal& b) {
  torch::Tensor m = mask.unsqueeze(-1);
  return Proposal{torch::where(m, a.q, b.q), torch::where(m, a.grad, b.grad),
                  torch::where(mask, a.log_p, b.log_p), torch::where(mask, a.h, b.h)};
}

// Stan's generalised criterion for joining `first` and `second` (adjacent along the trajectory)
// given rho = first.rho + second.rho. [C] bool.
torch::Tensor merged_no_uturn(const SubtreeEnds& first, const SubtreeEnds& second,
                              const torch::Tensor& rho);

// A trajectory end packed into one [C, 4D + 1] tensor, q | grad | log_p | p | sharp, so that
// choosing the end to extend and replacing it are one select each instead of five.
inline torch::Tensor pack_end(const PhasePoint& z, const torch::Tensor& sharp) {
  return torch::cat({z.q, z.grad, z.log_p.unsqueeze(1), z.p, sharp}, 1);
}

inline PhasePoint unpack_state(const torch::Tensor& end, int64_t dim) {
  return PhasePoint{end.narrow(1, 0, dim), end.narrow(1, 2 * dim + 1, dim), end.select(1, 2 * dim),
                    end.narrow(1, dim, dim)};
}

// The trajectory's part that is not the new subtree, oriented along the integration direction:
// it begins at the end opposite to the direction and ends at `start`, where the subtree begins.
// The six checks of merged_no_uturn are unchanged when both trajectories and their order are
// reversed, so (old, new) in integration order is Stan's (backward, forward) check.
inline SubtreeEnds old_trajectory(const torch::Tensor& fwd_col, const torch::Tensor& end_fwd,
                                  const torch::Tensor& end_bck, const torch::Tensor& start,
                                  const torch::Tensor& rho, int64_t dim) {
  torch::Tensor far = torch::where(fwd_col, end_bck.narrow(1, 2 * dim + 1, 2 * dim),
                                   end_fwd.narrow(1, 2 * dim + 1, 2 * dim));
  return SubtreeEnds{far.narrow(1, 0, dim), start.narrow(1, 2 * dim + 1, dim),
                     far.narrow(1, dim, dim), start.narrow(1, 3 * dim + 1, dim), rho};
}

}  // namespace dslens::samplers::nuts_detail

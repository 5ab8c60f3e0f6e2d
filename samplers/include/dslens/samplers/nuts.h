// Batched No-U-Turn sampler as in Stan (stan/mcmc/hmc/nuts/base_nuts.hpp): multinomial sampling
// within subtrees, biased progressive sampling at the top level, the generalised U-turn criterion
// with the extra checks across subtree boundaries, a maximum tree depth and divergences when the
// energy error exceeds max_energy_error. All chains build their trees in lock-step with masks;
// the only host synchronisation in a transition is "is any chain still building" (once per tree
// doubling, and before the second half of subtrees of 8 or more leaves). The chains can instead
// run out of step (NutsSettings::out_of_step, nuts_transitions_out_of_step).
#pragma once
#include <torch/torch.h>

#include "dslens/samplers/hmc.h"

namespace dslens::samplers {

// Stan's compute_criterion per chain: p_sharp_minus . rho > 0 and p_sharp_plus . rho > 0.
// Inputs [C, D]; returns [C] bool.
torch::Tensor no_uturn(const torch::Tensor& p_sharp_minus, const torch::Tensor& p_sharp_plus,
                       const torch::Tensor& rho);

// The two ends of a subtree along the integration direction: momenta, sharp momenta M^-1 p and
// the summed momenta rho, all [C, D].
struct SubtreeEnds {
  torch::Tensor p_beg, p_end, p_sharp_beg, p_sharp_end, rho;
};
// The generalised criterion for joining two adjacent subtrees (`first` then `second` along the
// trajectory): the U-turn check over the merged tree plus the checks of each subtree extended by
// the neighbouring point of the other. [C] bool.
torch::Tensor merged_no_uturn(const SubtreeEnds& first, const SubtreeEnds& second);

// Applies every check NUTS makes when building a balanced tree over a trajectory of momenta
// [C, 2^k, D] (in trajectory order) with a diagonal inverse metric inv_metric [C, D] (undefined:
// identity). True where no subtree makes a U-turn, i.e. where NUTS would keep doubling.
torch::Tensor trajectory_no_uturn(const torch::Tensor& momenta,
                                  const torch::Tensor& inv_metric = {});

// One NUTS transition of all chains; updates state in place.
TransitionStats nuts_transition(HamiltonianSystem& system, ChainState& state,
                                const torch::Tensor& step_size, int64_t iteration, int max_depth);

// `count` NUTS transitions of every chain, the chains out of step: each batched leapfrog step
// advances every chain that has a transition under way by one leaf of its own tree, and a chain
// whose tree has ended begins its next transition at the next step. Step sizes [C] are fixed
// without `learning`; with it (warmup) each group's chains begin a transition together, once the
// group's step sizes have been learnt from its last one, and step_size ends as the last learnt.
// Chain c's transitions are iterations first_iteration, ..., first_iteration + count - 1 of its
// random streams and are nuts_transition's (the same random numbers and the same arithmetic,
// leaf by leaf), but the batch pays for the largest sum of one chain's (one group's) leaves
// instead of the deepest tree of every iteration. One host read-back per leapfrog step (which
// trees go on). Returns the draws and statistics [C, count]; state ends at each chain's last draw.
Draws nuts_transitions_out_of_step(HamiltonianSystem& system, ChainState& state,
                                   torch::Tensor& step_size, int64_t first_iteration, int64_t count,
                                   int max_depth, const SegmentStepSizeLearning* learning = nullptr,
                                   const SegmentProgressFn& on_progress = {});

// NUTS with Stan's warmup. init [C, D] on the device and dtype to run on.
SamplerResult sample_nuts(const LogDensityFn& log_density, const torch::Tensor& init,
                          const NutsSettings& settings);

}  // namespace dslens::samplers

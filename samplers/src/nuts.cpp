#include "dslens/samplers/nuts.h"

#include <cmath>
#include <vector>

#include "dslens/core/errors.h"
#include "nuts_tree.h"

namespace dslens::samplers {
namespace nuts_detail {

// Subtrees with at least 2^kSyncDepth leaves check on the host whether any chain is still valid
// before building their second half.
constexpr int kSyncDepth = 3;
// Deeper levels than kPregenDepth draw their random words when they start, in blocks of at most
// 2^kBlockDepth.
constexpr int kBlockDepth = 12;

struct Subtree {
  Proposal propose;
  SubtreeEnds ends;
  torch::Tensor log_sum_weight;  // [C]
  torch::Tensor valid;           // [C] bool
};

// Below this many elements per [C, D] operand the U-turn products are computed on stacked
// operands (8 tensor operations); above it one product at a time (17 operations, but no [6, C, D]
// copies, which at 1024 x 100 cost three times as much as the products themselves). Both sum each
// row of D products with the same reduction (bitwise equal on the CPU, float32 and float64), so
// the choice, which depends on the number of chains, does not change any chain's result.
constexpr int64_t kStackedUturnElements = 8192;

// Stan's generalised criterion: the merged tree, first extended by second's first point, second
// extended by first's last point (base_nuts.hpp, build_tree and transition).
torch::Tensor merged_no_uturn(const SubtreeEnds& first, const SubtreeEnds& second,
                              const torch::Tensor& rho) {
  torch::Tensor rho_first = first.rho + second.p_beg;
  torch::Tensor rho_second = second.rho + first.p_end;
  if (rho.numel() <= kStackedUturnElements) {
    torch::Tensor sharp = torch::stack({first.p_sharp_beg, second.p_sharp_end, first.p_sharp_beg,
                                        second.p_sharp_beg, first.p_sharp_end, second.p_sharp_end});
    torch::Tensor rhos = torch::stack({rho, rho, rho_first, rho_first, rho_second, rho_second});
    return ((sharp * rhos).sum(-1) > 0).all(0);
  }
  auto dot = [](const torch::Tensor& a, const torch::Tensor& b) { return (a * b).sum(-1); };
  torch::Tensor dots =
      torch::stack({dot(first.p_sharp_beg, rho), dot(second.p_sharp_end, rho),
                    dot(first.p_sharp_beg, rho_first), dot(second.p_sharp_beg, rho_first),
                    dot(first.p_sharp_end, rho_second), dot(second.p_sharp_end, rho_second)});
  return (dots > 0).all(0);
}

struct TreeContext {
  HamiltonianSystem& system;
  int64_t iteration;
  double max_energy_error;
  torch::Tensor eps_col;  // signed step sizes of this doubling, [C, 1]
  torch::Tensor h0;       // [C]
  // Summed leaf by leaf in trajectory order, so a chain's sum does not depend on the batch.
  torch::Tensor sum_metro_prob;
  // Per leaf: which chains integrated it and which of those stayed within max_energy_error;
  // reduced into the leapfrog and divergence counts once per tree doubling.
  std::vector<torch::Tensor> leaf_active, leaf_valid;
  // log-uniforms of merges [block_offset, block_offset + block.size(1)) of this tree depth, whose
  // merge k is element merge_base + k of the stream.
  torch::Tensor block;
  int64_t block_offset = 0;
  int64_t merge_base = 0;
};

bool block_covers(const TreeContext& ctx, int64_t begin, int64_t n) {
  return ctx.block.defined() && begin >= ctx.block_offset &&
         begin + n <= ctx.block_offset + ctx.block.size(1);
}

torch::Tensor log_uniform(const TreeContext& ctx, int64_t element, int64_t n) {
  return torch::log(
      ctx.system.random().uniform(ctx.iteration, kStreamNuts, 0, element, n, ctx.h0.scalar_type()));
}

torch::Tensor merge_log_uniform(const TreeContext& ctx, int64_t index) {
  if (block_covers(ctx, index, 1)) return ctx.block.select(1, index - ctx.block_offset);
  return log_uniform(ctx, ctx.merge_base + index, 1).select(1, 0);
}

// Stan's build_tree for every chain where `active`; z is the integrator state, advanced in place.
// Merges of this subtree have indices [offset, offset + 2^depth - 1) in post-order.
//
// Chains that are not active integrate with a step size of 0, which leaves a finite state as it
// is, instead of computing the step and selecting the old state afterwards (three [C, D] selects
// per leapfrog step). Nothing an inactive chain computes is used: its subtree is invalid, so the
// caller neither samples from it nor extends the trajectory from its end.
Subtree build_tree(TreeContext& ctx, int depth, PhasePoint& z, const torch::Tensor& active,
                   int64_t offset) {
  if (depth == 0) {
    torch::Tensor eps = ctx.eps_col * active.unsqueeze(-1);
    z = ctx.system.leapfrog(z, eps, 0.5 * eps);
    torch::Tensor sharp;
    torch::Tensor h = ctx.system.hamiltonian(z, &sharp);
    torch::Tensor delta = ctx.h0 - h;  // -inf where not finite
    Subtree out;
    // Divergent when h - H0 > max_energy_error (always when h is not finite).
    out.valid = active & (delta >= -ctx.max_energy_error);
    ctx.leaf_active.push_back(active);
    ctx.leaf_valid.push_back(out.valid);
    // Metropolis acceptance min(1, exp(H0 - h)) of the chains that integrated this leaf.
    ctx.sum_metro_prob.add_(torch::exp(torch::clamp_max(delta, 0.0)).mul_(active));
    out.propose = Proposal{z.q, z.grad, z.log_p, h};
    out.ends = SubtreeEnds{z.p, z.p, sharp, sharp, z.p};
    out.log_sum_weight = delta;
    return out;
  }
  const int64_t merges = (int64_t{1} << depth) - 1;
  if (depth <= kBlockDepth && !block_covers(ctx, offset, merges)) {
    ctx.block = log_uniform(ctx, ctx.merge_base + offset, merges);
    ctx.block_offset = offset;
  }
  Subtree init = build_tree(ctx, depth - 1, z, active, offset);
  if (depth - 1 >= kSyncDepth && !init.valid.any().item<bool>()) return init;
  const int64_t half = (int64_t{1} << (depth - 1)) - 1;
  Subtree fin = build_tree(ctx, depth - 1, z, init.valid, offset + half);

  Subtree out;
  out.log_sum_weight = torch::logaddexp(init.log_sum_weight, fin.log_sum_weight);
  // Multinomial sampling: the proposal moves to the second half with probability
  // w_final / (w_init + w_final), i.e. when log u < log w_final - log w_subtree.
  torch::Tensor take_final =
      merge_log_uniform(ctx, offset + 2 * half) < (fin.log_sum_weight - out.log_sum_weight);
  out.propose = select_proposal(take_final, fin.propose, init.propose);
  torch::Tensor rho = init.ends.rho + fin.ends.rho;
  out.valid = fin.valid & merged_no_uturn(init.ends, fin.ends, rho);
  out.ends = SubtreeEnds{init.ends.p_beg, fin.ends.p_end, init.ends.p_sharp_beg,
                         fin.ends.p_sharp_end, rho};
  return out;
}

}  // namespace nuts_detail

torch::Tensor no_uturn(const torch::Tensor& p_sharp_minus, const torch::Tensor& p_sharp_plus,
                       const torch::Tensor& rho) {
  return ((p_sharp_plus * rho).sum(-1) > 0) & ((p_sharp_minus * rho).sum(-1) > 0);
}

torch::Tensor merged_no_uturn(const SubtreeEnds& first, const SubtreeEnds& second) {
  return nuts_detail::merged_no_uturn(first, second, first.rho + second.rho);
}

torch::Tensor trajectory_no_uturn(const torch::Tensor& momenta, const torch::Tensor& inv_metric) {
  if (momenta.dim() != 3) throw InvalidArgument("trajectory_no_uturn: momenta must be [C, n, D]");
  const int64_t n = momenta.size(1);
  if (n < 1 || (n & (n - 1)) != 0)
    throw InvalidArgument("trajectory_no_uturn: the trajectory length must be a power of two");
  torch::Tensor inv = inv_metric.defined() ? inv_metric.unsqueeze(1) : torch::ones_like(momenta);
  torch::Tensor sharp = momenta * inv;
  // Level by level: adjacent subtrees merge into subtrees twice as long.
  std::vector<SubtreeEnds> trees;
  for (int64_t i = 0; i < n; ++i) {
    torch::Tensor p = momenta.select(1, i), s = sharp.select(1, i);
    trees.push_back(SubtreeEnds{p, p, s, s, p});
  }
  torch::Tensor ok = torch::ones({momenta.size(0)}, momenta.options().dtype(torch::kBool));
  while (trees.size() > 1) {
    std::vector<SubtreeEnds> next;
    for (size_t i = 0; i + 1 < trees.size(); i += 2) {
      const SubtreeEnds& a = trees[i];
      const SubtreeEnds& b = trees[i + 1];
      ok = ok & merged_no_uturn(a, b);
      next.push_back(SubtreeEnds{a.p_beg, b.p_end, a.p_sharp_beg, b.p_sharp_end, a.rho + b.rho});
    }
    trees = std::move(next);
  }
  return ok;
}

TransitionStats nuts_transition(HamiltonianSystem& system, ChainState& state,
                                const torch::Tensor& step_size, int64_t iteration, int max_depth) {
  using namespace nuts_detail;
  const int64_t chains = state.q.size(0), dim = state.q.size(1);
  const auto dtype = state.q.scalar_type();
  const auto opt = state.q.options();
  const ChainRandom& random = system.random();
  const double log_half = std::log(0.5);

  // One draw of random words for the momentum and the first tree levels.
  const int pregen = std::min(max_depth, kPregenDepth);
  torch::Tensor words = random.bits(iteration, kStreamNuts, 0, 0, depth_base(dim, pregen));
  torch::Tensor p0 = system.metric().momentum_from_normal(
      ChainRandom::normal_from_bits(words.narrow(1, 0, 3 * dim), dtype));
  torch::Tensor pre_log_u = torch::log(ChainRandom::uniform_from_bits(
      words.narrow(1, 3 * dim, depth_base(dim, pregen) - 3 * dim), dtype));

  PhasePoint z0{state.q, p0, state.log_p, state.grad};
  torch::Tensor sharp0;
  torch::Tensor h0 = system.hamiltonian(z0, &sharp0);
  // The trajectory's backward and forward ends (packed), the draw it proposes so far, its summed
  // momenta and log weight.
  torch::Tensor end_bck = pack_end(z0, sharp0), end_fwd = end_bck;
  Proposal sample{state.q, state.grad, state.log_p, h0};
  torch::Tensor rho = p0;
  torch::Tensor log_sum_weight = torch::zeros({chains}, opt);
  torch::Tensor depth = torch::zeros({chains}, opt.dtype(torch::kInt64));
  torch::Tensor n_leapfrog = torch::zeros({chains}, opt.dtype(torch::kInt64));
  torch::Tensor divergent = torch::zeros({chains}, opt.dtype(torch::kBool));
  torch::Tensor building = torch::ones({chains}, opt.dtype(torch::kBool));

  TreeContext ctx{system, iteration, system.max_energy_error(), {}, h0, {}, {}, {}, {}, 0, 0};
  ctx.sum_metro_prob = torch::zeros({chains}, opt);
  torch::Tensor eps_col = step_size.unsqueeze(-1);
  torch::Tensor neg_eps_col = -eps_col;

  for (int d = 0; d < max_depth; ++d) {
    if (d > 0 && !building.any().item<bool>()) break;
    const int64_t width = (int64_t{1} << d) + 1;  // direction, top-level sampling, merges
    torch::Tensor level;
    if (d < pregen) {
      level = pre_log_u.narrow(1, depth_base(dim, d) - 3 * dim, width);
    } else {
      ctx.block = torch::Tensor();
      level = log_uniform(ctx, depth_base(dim, d), d <= kBlockDepth ? width : 2);
    }
    torch::Tensor forward = level.select(1, 0) > log_half;
    torch::Tensor fwd_col = forward.unsqueeze(-1);
    ctx.eps_col = torch::where(fwd_col, eps_col, neg_eps_col);
    ctx.merge_base = depth_base(dim, d) + 2;
    ctx.block_offset = 0;
    ctx.block = d > 0 && level.size(1) > 2 ? level.narrow(1, 2, width - 2) : torch::Tensor();

    // Extend the trajectory from its end in the chosen direction.
    torch::Tensor start = torch::where(fwd_col, end_fwd, end_bck);
    PhasePoint z = unpack_state(start, dim);
    Subtree sub = build_tree(ctx, d, z, building, 0);

    const SubtreeEnds old = old_trajectory(fwd_col, end_fwd, end_bck, start, rho, dim);
    torch::Tensor rho_merged = rho + sub.ends.rho;
    torch::Tensor persist = merged_no_uturn(old, sub.ends, rho_merged);

    torch::Tensor valid = sub.valid;
    depth = depth + valid;
    // Biased progressive sampling: move to the new subtree with probability
    // min(1, w_subtree / w_old).
    torch::Tensor take = valid & ((sub.log_sum_weight > log_sum_weight) |
                                  (level.select(1, 1) < (sub.log_sum_weight - log_sum_weight)));
    sample = select_proposal(take, sub.propose, sample);
    log_sum_weight =
        torch::where(valid, torch::logaddexp(log_sum_weight, sub.log_sum_weight), log_sum_weight);
    rho = torch::where(valid.unsqueeze(-1), rho_merged, rho);
    // The subtree's far end is the trajectory's new end in this direction (for chains whose
    // subtree is invalid it is never used again: they stop building).
    torch::Tensor new_end = pack_end(z, sub.ends.p_sharp_end);
    torch::Tensor new_fwd = (building & forward).unsqueeze(-1);
    torch::Tensor new_bck = (building & ~forward).unsqueeze(-1);
    end_fwd = torch::where(new_fwd, new_end, end_fwd);
    end_bck = torch::where(new_bck, new_end, end_bck);
    building = valid & persist;

    torch::Tensor leaf_active = torch::stack(ctx.leaf_active);
    n_leapfrog = n_leapfrog + leaf_active.sum(0);
    divergent = divergent | (leaf_active ^ torch::stack(ctx.leaf_valid)).any(0);
    ctx.leaf_active.clear();
    ctx.leaf_valid.clear();
  }

  TransitionStats st;
  st.n_leapfrog = n_leapfrog;
  st.tree_depth = depth;
  st.divergent = divergent;
  st.accept_stat = ctx.sum_metro_prob / n_leapfrog.to(ctx.sum_metro_prob.scalar_type());
  st.energy = sample.h;
  state.q = sample.q;
  state.log_p = sample.log_p;
  state.grad = sample.grad;
  return st;
}

SamplerResult sample_nuts(const LogDensityFn& log_density, const torch::Tensor& init,
                          const NutsSettings& settings) {
  settings.validate();
  const int max_depth = settings.max_depth;
  SegmentFn segment;
  if (settings.out_of_step)
    segment = [max_depth](HamiltonianSystem& system, ChainState& state, torch::Tensor& step_size,
                          int64_t first, int64_t count, const SegmentStepSizeLearning* learning,
                          const SegmentProgressFn& on_progress) {
      return nuts_transitions_out_of_step(system, state, step_size, first, count, max_depth,
                                          learning, on_progress);
    };
  return run_adaptive_sampler(
      log_density, init, settings,
      [max_depth](HamiltonianSystem& system, ChainState& state, const torch::Tensor& step_size,
                  int64_t iteration) {
        return nuts_transition(system, state, step_size, iteration, max_depth);
      },
      "nuts", segment);
}

}  // namespace dslens::samplers

#include "dslens/samplers/nuts.h"

#include <cmath>

#include "dslens/core/errors.h"

namespace dslens::samplers {
namespace nuts_detail {

// Subtrees with at least 2^kSyncDepth leaves check on the host whether any chain is still valid
// before building their second half.
constexpr int kSyncDepth = 3;
// Random words for tree depths below kPregenDepth are drawn with the momentum, once per
// transition; deeper levels draw theirs when they start, in blocks of at most 2^kBlockDepth.
constexpr int kPregenDepth = 6;
constexpr int kBlockDepth = 12;

// First element of tree depth d's block in the kStreamNuts stream (after 3D momentum words).
int64_t depth_base(int64_t dim, int d) {
  return 3 * dim + ((int64_t{1} << d) - 1) + d;
}

struct Subtree {
  PhasePoint propose;
  SubtreeEnds ends;
  torch::Tensor log_sum_weight;  // [C]
  torch::Tensor valid;           // [C] bool
};

struct TreeContext {
  HamiltonianSystem& system;
  int64_t iteration;
  double max_energy_error;
  torch::Tensor eps_col, half_eps_col;  // signed, [C, 1]
  torch::Tensor h0;                     // [C]
  torch::Tensor n_leapfrog, sum_metro_prob, divergent;
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

// Stan's build_tree for every chain where `active`; z is the integrator state, advanced in place
// (frozen for inactive chains). Merges of this subtree have indices [offset, offset + 2^depth - 1)
// in post-order.
Subtree build_tree(TreeContext& ctx, int depth, PhasePoint& z, const torch::Tensor& active,
                   int64_t offset) {
  if (depth == 0) {
    z = select(active, ctx.system.leapfrog(z, ctx.eps_col, ctx.half_eps_col), z);
    torch::Tensor sharp;
    torch::Tensor h = ctx.system.hamiltonian(z, &sharp);
    torch::Tensor delta = ctx.h0 - h;  // -inf where not finite
    Subtree out;
    // Divergent when h - H0 > max_energy_error (always when h is not finite).
    out.valid = active & (delta >= -ctx.max_energy_error);
    ctx.divergent = ctx.divergent | (active ^ out.valid);
    ctx.n_leapfrog = ctx.n_leapfrog + active;
    // Metropolis acceptance min(1, exp(H0 - h)).
    ctx.sum_metro_prob =
        ctx.sum_metro_prob + torch::where(active, torch::exp(torch::clamp_max(delta, 0.0)), 0.0);
    out.propose = z;
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
  out.propose = select(take_final, fin.propose, init.propose);
  out.ends = SubtreeEnds{init.ends.p_beg, fin.ends.p_end, init.ends.p_sharp_beg,
                         fin.ends.p_sharp_end, init.ends.rho + fin.ends.rho};
  out.valid = fin.valid & merged_no_uturn(init.ends, fin.ends);
  return out;
}

}  // namespace nuts_detail

torch::Tensor no_uturn(const torch::Tensor& p_sharp_minus, const torch::Tensor& p_sharp_plus,
                       const torch::Tensor& rho) {
  return ((p_sharp_plus * rho).sum(-1) > 0) & ((p_sharp_minus * rho).sum(-1) > 0);
}

torch::Tensor merged_no_uturn(const SubtreeEnds& first, const SubtreeEnds& second) {
  // The three compute_criterion calls of Stan's build_tree as one batched product:
  // over the merged tree, first + second's first point, second + first's last point.
  torch::Tensor rho = first.rho + second.rho;
  torch::Tensor rho_first = first.rho + second.p_beg;
  torch::Tensor rho_second = second.rho + first.p_end;
  torch::Tensor sharp = torch::stack({first.p_sharp_beg, second.p_sharp_end, first.p_sharp_beg,
                                      second.p_sharp_beg, first.p_sharp_end, second.p_sharp_end});
  torch::Tensor rhos = torch::stack({rho, rho, rho_first, rho_first, rho_second, rho_second});
  return ((sharp * rhos).sum(-1) > 0).all(0);
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
  PhasePoint z_fwd = z0, z_bck = z0, z_sample = z0;
  torch::Tensor p_ff = p0, p_bb = p0, ps_ff = sharp0, ps_bb = sharp0, rho = p0;
  torch::Tensor log_sum_weight = torch::zeros({chains}, opt);
  torch::Tensor depth = torch::zeros({chains}, opt.dtype(torch::kInt64));
  torch::Tensor building = torch::ones({chains}, opt.dtype(torch::kBool));

  TreeContext ctx{system, iteration, system.max_energy_error(), {}, {}, {}, {}, {}, {}, {}, 0, 0};
  ctx.h0 = h0;
  ctx.n_leapfrog = torch::zeros({chains}, opt.dtype(torch::kInt64));
  ctx.sum_metro_prob = torch::zeros({chains}, opt);
  ctx.divergent = torch::zeros({chains}, opt.dtype(torch::kBool));
  torch::Tensor eps_col = step_size.unsqueeze(-1);

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
    ctx.eps_col = torch::where(fwd_col, eps_col, -eps_col);
    ctx.half_eps_col = 0.5 * ctx.eps_col;
    ctx.merge_base = depth_base(dim, d) + 2;
    ctx.block_offset = 0;
    ctx.block = d > 0 && level.size(1) > 2 ? level.narrow(1, 2, width - 2) : torch::Tensor();

    PhasePoint z = select(forward, z_fwd, z_bck);
    Subtree sub = build_tree(ctx, d, z, building, 0);
    z_fwd = select(building & forward, z, z_fwd);
    z_bck = select(building & ~forward, z, z_bck);

    // The old trajectory and the new subtree in trajectory order (backward part first).
    SubtreeEnds bck, fwd;
    bck.rho = torch::where(fwd_col, rho, sub.ends.rho);
    fwd.rho = torch::where(fwd_col, sub.ends.rho, rho);
    bck.p_end = torch::where(fwd_col, p_ff, sub.ends.p_beg);
    bck.p_sharp_end = torch::where(fwd_col, ps_ff, sub.ends.p_sharp_beg);
    bck.p_beg = torch::where(fwd_col, p_bb, sub.ends.p_end);
    bck.p_sharp_beg = torch::where(fwd_col, ps_bb, sub.ends.p_sharp_end);
    fwd.p_beg = torch::where(fwd_col, sub.ends.p_beg, p_bb);
    fwd.p_sharp_beg = torch::where(fwd_col, sub.ends.p_sharp_beg, ps_bb);
    fwd.p_end = torch::where(fwd_col, sub.ends.p_end, p_ff);
    fwd.p_sharp_end = torch::where(fwd_col, sub.ends.p_sharp_end, ps_ff);

    torch::Tensor valid = sub.valid;
    torch::Tensor valid_col = valid.unsqueeze(-1);
    depth = depth + valid;
    // Biased progressive sampling: move to the new subtree with probability
    // min(1, w_subtree / w_old).
    torch::Tensor take = valid & ((sub.log_sum_weight > log_sum_weight) |
                                  (level.select(1, 1) < (sub.log_sum_weight - log_sum_weight)));
    z_sample = select(take, sub.propose, z_sample);
    log_sum_weight =
        torch::where(valid, torch::logaddexp(log_sum_weight, sub.log_sum_weight), log_sum_weight);
    torch::Tensor persist = merged_no_uturn(bck, fwd);
    rho = torch::where(valid_col, bck.rho + fwd.rho, rho);
    p_ff = torch::where(valid_col, fwd.p_end, p_ff);
    ps_ff = torch::where(valid_col, fwd.p_sharp_end, ps_ff);
    p_bb = torch::where(valid_col, bck.p_beg, p_bb);
    ps_bb = torch::where(valid_col, bck.p_sharp_beg, ps_bb);
    building = valid & persist;
  }

  TransitionStats st;
  st.n_leapfrog = ctx.n_leapfrog;
  st.tree_depth = depth;
  st.divergent = ctx.divergent;
  st.accept_stat = ctx.sum_metro_prob / ctx.n_leapfrog.to(ctx.sum_metro_prob.scalar_type());
  st.energy = system.hamiltonian(z_sample);
  state.q = z_sample.q;
  state.log_p = z_sample.log_p;
  state.grad = z_sample.grad;
  return st;
}

SamplerResult sample_nuts(const LogDensityFn& log_density, const torch::Tensor& init,
                          const NutsSettings& settings) {
  settings.validate();
  const int max_depth = settings.max_depth;
  return run_adaptive_sampler(
      log_density, init, settings,
      [max_depth](HamiltonianSystem& system, ChainState& state, const torch::Tensor& step_size,
                  int64_t iteration) {
        return nuts_transition(system, state, step_size, iteration, max_depth);
      },
      "nuts");
}

}  // namespace dslens::samplers

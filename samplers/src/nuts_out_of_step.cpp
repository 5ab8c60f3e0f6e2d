// NUTS with the chains out of step: every batched leapfrog step advances each chain by one leaf of
// its own tree, and a chain whose tree has ended starts its next transition at the next step.
//
// In lock-step (nuts.cpp) a transition of C chains costs the batch the leaves of the deepest tree
// among them: the others integrate with step size 0 and wait. On the CPU those rows are skipped
// (HamiltonianSystem::compact_rows), but a GPU pays for every batched step whatever its rows do,
// and many lenses in one batch make the deepest of their trees the rule. Here the batch pays for
// the largest sum of one chain's leaves instead (the idea of program-counter autobatching, Radul,
// Sountsov et al. 2020, "Automatically batching control-intensive programs for modern
// accelerators", applied to Stan's NUTS).
//
// The recursion of build_tree becomes a walk over the leaves of each doubling in trajectory
// order. After leaf n (0-based) of a doubling, the subtrees that end at it are merged bottom-up:
// t = (number of trailing ones of n) merges, each joining the completed left subtree stored for
// that level with the subtree ending at n, which is Stan's post-order; merge k (1-based) of leaf n
// is merge number n - popcount(n) + k - 1 of the doubling, so it draws the same uniform as the
// recursive build. A subtree that diverges or makes a U-turn ends the transition at once: the
// recursion integrates no further leaf of that doubling either (its later halves run inactive).
//
// In warmup (with SegmentStepSizeLearning) the chains that pool their step-size adaptation wait for
// each other at the end of each transition, learn their group's next step size, and begin the
// next transition together: groups, not chains, are out of step, and every group's step sizes are
// the ones the lock-step warmup learns, iteration by iteration.
#include <algorithm>
#include <cmath>
#include <vector>

#include "draws_buffer.h"
#include "dslens/core/errors.h"
#include "dslens/samplers/nuts.h"
#include "nuts_tree.h"

namespace dslens::samplers {
namespace {

using nuts_detail::depth_base;
using nuts_detail::Proposal;

// A subtree packed into one [C, 7D + 3] tensor, so that keeping or replacing it per chain is one
// select: the proposal q | grad | log_p | h, its ends p_beg | p_end | sharp_beg | sharp_end, the
// summed momenta rho, and its log weight.
struct Packed {
  int64_t d;
  int64_t proposal_width() const { return 2 * d + 2; }
  int64_t width() const { return 7 * d + 3; }
  torch::Tensor pack_leaf(const PhasePoint& z, const torch::Tensor& h, const torch::Tensor& sharp,
                          const torch::Tensor& log_w) const {
    return torch::cat({z.q, z.grad, z.log_p.unsqueeze(1), h.unsqueeze(1), z.p, z.p, sharp, sharp,
                       z.p, log_w.unsqueeze(1)},
                      1);
  }
  Proposal proposal(const torch::Tensor& s) const {
    return Proposal{s.narrow(1, 0, d), s.narrow(1, d, d), s.select(1, 2 * d),
                    s.select(1, 2 * d + 1)};
  }
  SubtreeEnds ends(const torch::Tensor& s) const {
    return SubtreeEnds{s.narrow(1, 2 * d + 2, d), s.narrow(1, 3 * d + 2, d),
                       s.narrow(1, 4 * d + 2, d), s.narrow(1, 5 * d + 2, d),
                       s.narrow(1, 6 * d + 2, d)};
  }
  torch::Tensor log_w(const torch::Tensor& s) const { return s.select(1, 7 * d + 2); }
};

// build_tree's merge of `left` (init) and `right` (fin), with the same operations in the same
// order: returns the merged subtree and the U-turn check (the caller ands it with right's
// validity).
std::pair<torch::Tensor, torch::Tensor> merge(const Packed& pk, const torch::Tensor& left,
                                              const torch::Tensor& right,
                                              const torch::Tensor& log_u) {
  const torch::Tensor left_w = pk.log_w(left), right_w = pk.log_w(right);
  torch::Tensor log_w = torch::logaddexp(left_w, right_w);
  // Multinomial sampling: the proposal moves to the right half with probability
  // w_right / (w_left + w_right).
  torch::Tensor take_right = log_u < (right_w - log_w);
  const int64_t pw = pk.proposal_width();
  torch::Tensor proposal =
      torch::where(take_right.unsqueeze(-1), right.narrow(1, 0, pw), left.narrow(1, 0, pw));
  const SubtreeEnds a = pk.ends(left), b = pk.ends(right);
  torch::Tensor rho = a.rho + b.rho;
  torch::Tensor ok = nuts_detail::merged_no_uturn(a, b, rho);
  torch::Tensor merged = torch::cat(
      {proposal, a.p_beg, b.p_end, a.p_sharp_beg, b.p_sharp_end, rho, log_w.unsqueeze(1)}, 1);
  return {merged, ok};
}

int trailing_ones(int64_t n) {
  return __builtin_ctzll(~static_cast<uint64_t>(n));
}
int64_t popcount(int64_t n) {
  return __builtin_popcountll(static_cast<uint64_t>(n));
}

}  // namespace

Draws nuts_transitions_out_of_step(HamiltonianSystem& system, ChainState& state,
                                   torch::Tensor& step_size, int64_t first_iteration, int64_t count,
                                   int max_depth, const SegmentStepSizeLearning* learning,
                                   const SegmentProgressFn& on_progress) {
  using namespace nuts_detail;
  if (count < 0) throw InvalidArgument("nuts_transitions_out_of_step: count must be >= 0");
  if (max_depth < 1 || max_depth > 30)
    throw InvalidArgument("nuts_transitions_out_of_step: max_depth must be in [1, 30]");
  const int64_t chains = state.q.size(0), dim = state.q.size(1);
  const int64_t group = learning ? learning->group : 1;
  if (learning && (group < 1 || chains % group != 0 || !learning->learn))
    throw InvalidArgument(
        "nuts_transitions_out_of_step: learning needs a function and a group size that divides "
        "the chains");
  const auto opt = state.q.options();
  const auto dtype = state.q.scalar_type();
  const auto device = state.q.device();
  const auto long_opt = opt.dtype(torch::kInt64);
  const ChainRandom& random = system.random();
  const double log_half = std::log(0.5);
  const Packed pk{dim};

  Draws out = hmc_detail::allocate_draws(chains, count, dim, opt);
  if (count == 0) return out;

  // Per chain on the host: transitions done, the doubling in progress (depth) and the leaves of it
  // already integrated, leapfrog steps and divergence of the transition in progress.
  std::vector<int64_t> done(chains, 0), depth(chains, 0), leaf(chains, 0), leaps(chains, 0);
  std::vector<char> diverged(chains, 0), fresh(chains, 1), begins(chains, 0);
  // With learning: the transitions of each group whose step sizes have been learnt. A chain waits
  // (is not live) between transitions until its group's have.
  std::vector<int64_t> learnt(static_cast<size_t>(chains / group), 0);
  std::vector<char> live(chains, 0);
  int64_t reported = 0;  // transitions every chain has ended, as last told to on_progress

  // On the device: the chains' current draws, the transition's start energy h0, the trajectory's
  // packed ends, summed momenta, log weight and proposal, its valid doublings and summed
  // acceptance; the doubling's direction, step and top-level uniform; the integrator's point and
  // the completed left subtrees per level (slot k: 2^k leaves).
  torch::Tensor q = state.q, log_p = state.log_p, grad = state.grad;
  torch::Tensor h0, end_fwd, end_bck, rho, log_w, tree_depth, sum_metro, fwd, u_top, eps_col;
  Proposal sample;
  PhasePoint z;
  torch::Tensor slots = torch::zeros({std::max(max_depth - 1, 1), chains, pk.width()}, opt);
  torch::Tensor eps_now = step_size, eps_pos = eps_now.unsqueeze(-1), eps_neg = -eps_pos;
  torch::Tensor accept_now;  // with learning: each chain's last acceptance statistic
  if (learning) accept_now = torch::zeros({chains}, opt);
  const torch::Tensor zeros = torch::zeros({chains}, long_opt);

  // Each step's host decisions travel to the device in one copy, rows of `plan`:
  enum Row : int64_t {
    kLive,
    kStarting,
    kBeginning,
    kCompleting,
    kIteration,
    kBase,
    kMerge,
    kRows
  };
  for (;;) {
    bool any_live = false;
    for (int64_t c = 0; c < chains; ++c) {
      live[c] = done[c] < count && (!learning || !fresh[c] || learnt[c / group] == done[c]);
      any_live |= live[c];
    }
    if (!any_live) break;
    bool any_start = false, any_begin = false, any_complete = false;
    int max_t = 0;
    std::vector<int> t(chains, 0);
    std::vector<char> completing(chains, 0);
    for (int64_t c = 0; c < chains; ++c) {
      if (!live[c]) continue;
      if (fresh[c]) {  // a transition begins: its first doubling is of one leaf
        any_start = true;
        depth[c] = leaf[c] = 0;
      }
      any_begin |= fresh[c] || begins[c];
      max_t = std::max(max_t, t[c] = trailing_ones(leaf[c]));
      any_complete |= (completing[c] = leaf[c] + 1 == (int64_t{1} << depth[c]));
    }
    // Levels whose slot takes this leaf's subtree (chains whose doubling goes on).
    std::vector<int> store_levels;
    for (int64_t c = 0; c < chains; ++c)
      if (live[c] && !completing[c] &&
          std::find(store_levels.begin(), store_levels.end(), t[c]) == store_levels.end())
        store_levels.push_back(t[c]);
    const int64_t rows = kRows + max_t + static_cast<int64_t>(store_levels.size());
    torch::Tensor plan_host = torch::zeros({rows, chains}, torch::kInt64);
    auto p = plan_host.accessor<int64_t, 2>();
    for (int64_t c = 0; c < chains; ++c) {
      const bool on = live[c];
      p[kLive][c] = on;
      p[kStarting][c] = on && fresh[c];
      p[kBeginning][c] = on && (fresh[c] || begins[c]);
      p[kCompleting][c] = on && completing[c];
      p[kIteration][c] = first_iteration + done[c];
      p[kBase][c] = depth_base(dim, static_cast<int>(depth[c]));
      p[kMerge][c] = p[kBase][c] + 2 + leaf[c] - popcount(leaf[c]);
      for (int k = 1; k <= max_t; ++k) p[kRows + k - 1][c] = on && t[c] >= k;
      for (size_t j = 0; j < store_levels.size(); ++j)
        p[kRows + max_t + static_cast<int64_t>(j)][c] =
            on && !completing[c] && t[c] == store_levels[j];
    }
    const torch::Tensor plan = plan_host.to(device);
    const torch::Tensor masks = plan.to(torch::kBool);
    const torch::Tensor iteration = plan.select(0, kIteration);

    // Transitions that begin: momentum, energy, a trajectory of one point.
    if (any_start) {
      torch::Tensor words = random.bits_per_chain(iteration, kStreamNuts, 0, zeros, 3 * dim);
      torch::Tensor p0 =
          system.metric().momentum_from_normal(ChainRandom::normal_from_bits(words, dtype));
      PhasePoint z0{q, p0, log_p, grad};
      torch::Tensor sharp0;
      torch::Tensor h0_new = system.hamiltonian(z0, &sharp0);
      torch::Tensor end0 = pack_end(z0, sharp0);
      Proposal at_start{q, grad, log_p, h0_new};
      if (!h0.defined()) {  // every chain starts at the first step
        h0 = h0_new;
        end_fwd = end_bck = end0;
        rho = p0;
        log_w = torch::zeros({chains}, opt);
        tree_depth = torch::zeros({chains}, long_opt);
        sum_metro = torch::zeros({chains}, opt);
        sample = at_start;
        fwd = torch::zeros({chains}, opt.dtype(torch::kBool));
        u_top = torch::zeros({chains}, opt);
        z = z0;
      } else {
        const torch::Tensor m = masks.select(0, kStarting), m_col = m.unsqueeze(-1);
        h0 = torch::where(m, h0_new, h0);
        end_fwd = torch::where(m_col, end0, end_fwd);
        end_bck = torch::where(m_col, end0, end_bck);
        rho = torch::where(m_col, p0, rho);
        log_w = torch::where(m, torch::zeros_like(log_w), log_w);
        tree_depth = torch::where(m, torch::zeros_like(tree_depth), tree_depth);
        sum_metro = torch::where(m, torch::zeros_like(sum_metro), sum_metro);
        sample = select_proposal(m, at_start, sample);
      }
      for (int64_t c = 0; c < chains; ++c) {
        if (!live[c] || !fresh[c]) continue;
        fresh[c] = 0;
        leaps[c] = 0;
        diverged[c] = 0;
      }
    }

    // Doublings that begin: direction and top-level uniform, and the end to extend.
    if (any_begin) {
      torch::Tensor level = torch::log(ChainRandom::uniform_from_bits(
          random.bits_per_chain(iteration, kStreamNuts, 0, plan.select(0, kBase), 2), dtype));
      const torch::Tensor m = masks.select(0, kBeginning);
      fwd = torch::where(m, level.select(1, 0) > log_half, fwd);
      u_top = torch::where(m, level.select(1, 1), u_top);
      eps_col = torch::where(fwd.unsqueeze(-1), eps_pos, eps_neg);
      torch::Tensor start = torch::where(fwd.unsqueeze(-1), end_fwd, end_bck);
      z = select(m, unpack_state(start, dim), z);
      for (int64_t c = 0; c < chains; ++c) begins[c] = 0;
    }

    // One leaf for every live chain (the others integrate with step size 0 and are not used).
    const torch::Tensor active = masks.select(0, kLive);
    torch::Tensor eps = eps_col * active.unsqueeze(-1);
    z = system.leapfrog(z, eps, 0.5 * eps);
    torch::Tensor sharp;
    torch::Tensor h = system.hamiltonian(z, &sharp);
    torch::Tensor delta = h0 - h;  // -inf where not finite
    torch::Tensor leaf_valid = delta >= -system.max_energy_error();
    sum_metro.add_(torch::exp(torch::clamp_max(delta, 0.0)).mul_(active));
    torch::Tensor sub = pk.pack_leaf(z, h, sharp, delta);
    torch::Tensor alive = leaf_valid;

    // The merges of the subtrees that end at this leaf, level by level.
    if (max_t > 0) {
      torch::Tensor log_u = torch::log(ChainRandom::uniform_from_bits(
          random.bits_per_chain(iteration, kStreamNuts, 0, plan.select(0, kMerge), max_t), dtype));
      for (int k = 1; k <= max_t; ++k) {
        const torch::Tensor m = masks.select(0, kRows + k - 1);
        auto merged = merge(pk, slots.select(0, k - 1), sub, log_u.select(1, k - 1));
        sub = torch::where(m.unsqueeze(-1), merged.first, sub);
        alive = torch::where(m, alive & merged.second, alive);
      }
    }

    // Doublings that this leaf completes join the trajectory (build_tree's caller in
    // nuts_transition); the others keep their subtree ending here as the left half of the next
    // level.
    torch::Tensor persist = torch::zeros({chains}, opt.dtype(torch::kBool));
    if (any_complete) {
      const torch::Tensor valid = masks.select(0, kCompleting) & alive;
      const torch::Tensor fwd_col = fwd.unsqueeze(-1);
      torch::Tensor start = torch::where(fwd_col, end_fwd, end_bck);
      const SubtreeEnds old = old_trajectory(fwd_col, end_fwd, end_bck, start, rho, dim);
      const SubtreeEnds ends = pk.ends(sub);
      const torch::Tensor sub_w = pk.log_w(sub);
      torch::Tensor rho_merged = rho + ends.rho;
      persist = merged_no_uturn(old, ends, rho_merged);
      tree_depth = tree_depth + valid;
      // Biased progressive sampling: move to the new subtree with probability
      // min(1, w_subtree / w_old).
      torch::Tensor take = valid & ((sub_w > log_w) | (u_top < (sub_w - log_w)));
      sample = select_proposal(take, pk.proposal(sub), sample);
      log_w = torch::where(valid, torch::logaddexp(log_w, sub_w), log_w);
      rho = torch::where(valid.unsqueeze(-1), rho_merged, rho);
      torch::Tensor new_end = pack_end(z, ends.p_sharp_end);
      end_fwd = torch::where((valid & fwd).unsqueeze(-1), new_end, end_fwd);
      end_bck = torch::where((valid & ~fwd).unsqueeze(-1), new_end, end_bck);
    }
    for (size_t j = 0; j < store_levels.size(); ++j) {
      const torch::Tensor m = masks.select(0, kRows + max_t + static_cast<int64_t>(j));
      torch::Tensor level = slots.select(0, store_levels[j]);
      level.copy_(torch::where(m.unsqueeze(-1), sub, level));
    }

    // The one read-back of the step: which chains' trees go on.
    const torch::Tensor flags = torch::stack({leaf_valid, alive, persist}).to(torch::kCPU);
    const auto f = flags.accessor<bool, 2>();
    std::vector<int64_t> ended;
    for (int64_t c = 0; c < chains; ++c) {
      if (!live[c]) continue;
      ++leaps[c];
      if (!f[0][c]) diverged[c] = 1;
      bool ends_here = !f[1][c];
      if (!ends_here && completing[c]) {
        if (f[2][c] && depth[c] + 1 < max_depth) {
          ++depth[c];
          leaf[c] = 0;
          begins[c] = 1;
        } else {
          ends_here = true;
        }
      } else if (!ends_here) {
        ++leaf[c];
      }
      if (ends_here) ended.push_back(c);
    }
    if (ended.empty()) continue;

    // Transitions that ended: record them and move those chains to their draws. Their chain,
    // draw index, leapfrog steps and divergence go to the device in one copy.
    const int64_t n_ended = static_cast<int64_t>(ended.size());
    torch::Tensor rec_host = torch::empty({4, n_ended}, torch::kInt64);
    auto r = rec_host.accessor<int64_t, 2>();
    for (int64_t j = 0; j < n_ended; ++j) {
      const int64_t c = ended[static_cast<size_t>(j)];
      r[0][j] = c;
      r[1][j] = done[c];
      r[2][j] = leaps[c];
      r[3][j] = diverged[c];
      ++done[c];
      fresh[c] = 1;
    }
    const torch::Tensor rec = rec_host.to(device);
    const torch::Tensor ci = rec.select(0, 0), ii = rec.select(0, 1), n_leap = rec.select(0, 2);
    auto put = [&](torch::Tensor& dst, const torch::Tensor& src) {
      dst.index_put_({ci, ii}, src.index_select(0, ci).to(dst.scalar_type()));
    };
    put(out.draws, sample.q);
    put(out.log_density, sample.log_p);
    put(out.step_size, eps_now);
    put(out.tree_depth, tree_depth);
    out.n_leapfrog.index_put_({ci, ii}, n_leap);
    const torch::Tensor accept = sum_metro.index_select(0, ci) / n_leap.to(dtype);
    out.accept_stat.index_put_({ci, ii}, accept);
    if (learning) accept_now.index_put_({ci}, accept);
    put(out.energy, sample.h);
    out.divergent.index_put_({ci, ii}, rec.select(0, 3).to(torch::kBool));
    const torch::Tensor m =
        torch::zeros({chains}, opt.dtype(torch::kBool)).index_fill_(0, ci, true);
    const torch::Tensor m_col = m.unsqueeze(-1);
    q = torch::where(m_col, sample.q, q);
    log_p = torch::where(m, sample.log_p, log_p);
    grad = torch::where(m_col, sample.grad, grad);
    if (on_progress) {
      const int64_t slowest = *std::min_element(done.begin(), done.end());
      if (slowest > reported) on_progress(out, reported = slowest);
    }

    // Groups whose chains have all ended their next transition learn their step sizes, all in
    // one call.
    if (!learning) continue;
    std::vector<int64_t> learns(static_cast<size_t>(chains), 0);
    bool any_learns = false;
    for (int64_t g = 0; g < chains / group; ++g) {
      bool all = true;
      for (int64_t c = g * group; c < (g + 1) * group; ++c) all &= done[c] == learnt[g] + 1;
      if (!all) continue;
      any_learns = true;
      learnt[g] += 1;
      for (int64_t c = g * group; c < (g + 1) * group; ++c) learns[c] = learnt[g];
    }
    if (any_learns) {
      eps_now = learning->learn(accept_now, learns, eps_now).to(eps_now.dtype());
      eps_pos = eps_now.unsqueeze(-1);
      eps_neg = -eps_pos;
    }
  }
  step_size = eps_now;
  state.q = q;
  state.log_p = log_p;
  state.grad = grad;
  return out;
}

}  // namespace dslens::samplers

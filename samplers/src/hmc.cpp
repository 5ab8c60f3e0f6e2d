#include "dslens/samplers/hmc.h"

#include <spdlog/spdlog.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>

#include "draws_buffer.h"
#include "dslens/core/errors.h"
#include "dslens/samplers/adaptation.h"
#include "dslens/samplers/laplace.h"
#include "optimize_common.h"

namespace dslens::samplers {
namespace hmc_detail {

constexpr int64_t kMask32 = 0xFFFFFFFFLL;

// The second counter word of the hash: the stream and its sub-stream.
int64_t stream_word(int64_t stream, int64_t sub) {
  return ((stream & 0xFF) << 24 | (sub & 0xFFFFFF)) & kMask32;
}

// x * c mod 2^32 for x in [0, 2^32) and c in [0, 2^32) (a scalar or a tensor): the int64 product
// wraps modulo 2^64 on overflow, as PyTorch's integer kernels do on CPU and CUDA, and its low 32
// bits are those of the exact product. One multiply instead of four on 16-bit halves: the hash is
// most of a NUTS transition's tensor operations when chains are few.
// (ChainRandom.WordsMatchTheHostReferenceOnEveryPath checks this against uint32 arithmetic.)
torch::Tensor mul32(const torch::Tensor& x, int64_t c) {
  return (x * c).bitwise_and(kMask32);
}
torch::Tensor mul32(const torch::Tensor& x, const torch::Tensor& c) {
  return (x * c).bitwise_and(kMask32);
}

torch::Tensor xorshift(const torch::Tensor& x, int64_t s) {
  return x.bitwise_xor(torch::bitwise_right_shift(x, s));
}
torch::Tensor xorshift(const torch::Tensor& x, const torch::Tensor& s) {
  return x.bitwise_xor(torch::bitwise_right_shift(x, s));
}

// MurmurHash3's 32-bit finaliser.
torch::Tensor fmix_a(torch::Tensor x) {
  x = xorshift(x, 16);
  x = mul32(x, int64_t{0x85EBCA6B});
  x = xorshift(x, 13);
  x = mul32(x, int64_t{0xC2B2AE35});
  return xorshift(x, 16);
}

// Chris Wellons' lowbias32.
torch::Tensor fmix_b(torch::Tensor x) {
  x = xorshift(x, 16);
  x = mul32(x, int64_t{0x7FEB352D});
  x = xorshift(x, 15);
  x = mul32(x, int64_t{0x846CA68B});
  return xorshift(x, 16);
}

// fmix_a on column 0 and fmix_b on column 1 of x [C, 2], in one pass; constants [1, 2] each
// (first multiplier, second shift, second multiplier).
torch::Tensor fmix_ab(torch::Tensor x, const torch::Tensor& m1, const torch::Tensor& s2,
                      const torch::Tensor& m2) {
  x = xorshift(x, 16);
  x = mul32(x, m1);
  x = xorshift(x, s2);
  x = mul32(x, m2);
  return xorshift(x, 16);
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// The finalisers above on host integers (uint32 arithmetic wraps modulo 2^32).
inline uint32_t fmix_a32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x85EBCA6BU;
  x ^= x >> 13;
  x *= 0xC2B2AE35U;
  return x ^ (x >> 16);
}

inline uint32_t fmix_b32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352DU;
  x ^= x >> 15;
  x *= 0x846CA68BU;
  return x ^ (x >> 16);
}

// The host side of the hash, shared by bits_cpu and bits_per_chain: a chain's two keys for a
// counter (c0, c1), an element's hash, and the word of an element.
struct ChainKeys {
  uint32_t a, b;
};
inline ChainKeys chain_keys(const int64_t* key_ab, int64_t chain, uint32_t c0, uint32_t c1) {
  return {fmix_a32(fmix_a32(static_cast<uint32_t>(key_ab[2 * chain]) ^ c0) ^ c1),
          fmix_b32(fmix_b32(static_cast<uint32_t>(key_ab[2 * chain + 1]) ^ c1) ^ c0)};
}
inline uint32_t element_hash(int64_t element) {
  return fmix_b32(static_cast<uint32_t>(element) + 0x632BE5ABU);
}
inline uint32_t word(const ChainKeys& k, uint32_t element_hash) {
  return fmix_b32(fmix_a32(k.a ^ element_hash) ^ k.b);
}

// ChainRandom::bits on CPU tensors in one pass: the same words as the tensor-operation version
// (about 50 passes over [C, n] int64 tensors, which at 1024 chains cost more than the leapfrog
// steps of a short NUTS tree). key_ab [C, 2] int64, contiguous.
torch::Tensor bits_cpu(const torch::Tensor& key_ab, uint32_t c0, uint32_t c1, int64_t offset,
                       int64_t n) {
  const int64_t chains = key_ab.size(0);
  torch::Tensor out = torch::empty({chains, n}, key_ab.options());
  const int64_t* key = key_ab.data_ptr<int64_t>();
  int64_t* words = out.data_ptr<int64_t>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1));
  at::parallel_for(0, chains, grain, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> e(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) e[j] = element_hash(offset + j);
    for (int64_t c = begin; c < end; ++c) {
      const ChainKeys k = chain_keys(key, c, c0, c1);
      int64_t* row = words + c * n;
      for (int64_t j = 0; j < n; ++j) row[j] = word(k, e[j]);
    }
  });
  return out;
}

std::string chain_list(const torch::Tensor& mask) {
  torch::Tensor idx = torch::nonzero(mask.to(torch::kCPU)).flatten();
  std::ostringstream os;
  const int64_t n = idx.size(0);
  for (int64_t i = 0; i < std::min<int64_t>(n, 10); ++i)
    os << (i ? ", " : "") << idx[i].item<int64_t>();
  if (n > 10) os << ", ... (" << n << " chains)";
  return os.str();
}

Draws allocate_draws(int64_t chains, int64_t n, int64_t dim, const torch::TensorOptions& opt) {
  Draws d;
  d.draws = torch::empty({chains, n, dim}, opt);
  d.log_density = torch::empty({chains, n}, opt);
  d.step_size = torch::empty({chains, n}, opt);
  d.tree_depth = torch::empty({chains, n}, opt.dtype(torch::kInt64));
  d.n_leapfrog = torch::empty({chains, n}, opt.dtype(torch::kInt64));
  d.accept_stat = torch::empty({chains, n}, opt);
  d.energy = torch::empty({chains, n}, opt);
  d.divergent = torch::empty({chains, n}, opt.dtype(torch::kBool));
  return d;
}

void record(Draws& d, int64_t i, const ChainState& s, const torch::Tensor& eps,
            const TransitionStats& st) {
  d.draws.select(1, i).copy_(s.q);
  d.log_density.select(1, i).copy_(s.log_p);
  d.step_size.select(1, i).copy_(eps);
  d.tree_depth.select(1, i).copy_(st.tree_depth);
  d.n_leapfrog.select(1, i).copy_(st.n_leapfrog);
  d.accept_stat.select(1, i).copy_(st.accept_stat);
  d.energy.select(1, i).copy_(st.energy);
  d.divergent.select(1, i).copy_(st.divergent);
}

// A copy on `device` that never aliases t (to() alone returns t itself when nothing changes).
torch::Tensor device_copy(const torch::Tensor& t, torch::Device device) {
  return t.defined() ? t.detach().to(device, t.scalar_type(), false, /*copy=*/true) : t;
}

torch::Tensor cpu_copy(const torch::Tensor& t) {
  return device_copy(t, torch::kCPU);
}

// Every tensor of a Draws, in one order, so that copies touch them all.
std::array<torch::Tensor*, 8> fields(Draws& d) {
  return {&d.draws,      &d.log_density, &d.step_size, &d.tree_depth,
          &d.n_leapfrog, &d.accept_stat, &d.energy,    &d.divergent};
}

Draws draws_copy(const Draws& d, torch::Device device) {
  Draws c = d;
  for (torch::Tensor* t : fields(c)) *t = device_copy(*t, device);
  return c;
}

// Writes src's iterations [C, n] into dst at iterations at, ..., at + n - 1.
void put_draws(Draws& dst, int64_t at, Draws src) {
  const auto to = fields(dst), from = fields(src);
  for (size_t k = 0; k < to.size(); ++k) to[k]->narrow(1, at, from[k]->size(1)).copy_(*from[k]);
}

// A snapshot fits a run when it came from the same number of iterations, chains and dimensions,
// and carries the adaptation state the settings need.
void check_snapshot(const SamplerSnapshot& s, const SamplerSettings& settings, int64_t chains,
                    int64_t dim, const std::string& name) {
  const auto fail = [&name](const std::string& what) {
    throw InvalidArgument(name + ": cannot resume from this checkpoint: " + what);
  };
  if (s.num_warmup != settings.num_warmup || s.num_draws != settings.num_draws)
    fail("it is from a run of " + std::to_string(s.num_warmup) + " warmup + " +
         std::to_string(s.num_draws) + " draws, this one has " +
         std::to_string(settings.num_warmup) + " + " + std::to_string(settings.num_draws));
  if (s.q.dim() != 2 || s.q.size(0) != chains || s.q.size(1) != dim)
    fail("its chains are " + std::to_string(s.q.size(0)) + " x " + std::to_string(s.q.size(1)) +
         ", this run has " + std::to_string(chains) + " x " + std::to_string(dim));
  if (s.inv_metric.size(0) != chains ||
      s.inv_metric.dim() != (settings.metric == MetricKind::dense ? 3 : 2))
    fail(std::string("its metric is not a ") + metric_name(settings.metric) + " metric");
  const bool in_warmup = s.iteration <= s.num_warmup && s.num_warmup > 0;
  if (in_warmup && settings.adapt.step_size && !s.dual_mu.defined())
    fail("it has no step-size adaptation state");
  if (in_warmup && settings.adapt.metric && !s.welford_mean.defined())
    fail("it has no metric adaptation state");
  if (settings.save_warmup && !s.warmup.draws.defined()) fail("it has no warmup draws");
}

std::vector<uint64_t> consecutive_ids(int64_t first, int64_t count) {
  std::vector<uint64_t> ids(static_cast<size_t>(std::max<int64_t>(count, 0)));
  for (int64_t c = 0; c < count; ++c) ids[c] = static_cast<uint64_t>(first + c);
  return ids;
}

}  // namespace hmc_detail

ChainRandom::ChainRandom(uint64_t seed, int64_t first_chain_id, int64_t chains,
                         torch::Device device)
    : ChainRandom(seed, hmc_detail::consecutive_ids(first_chain_id, chains), device) {}

ChainRandom::ChainRandom(uint64_t seed, const std::vector<uint64_t>& chain_ids,
                         torch::Device device) {
  const int64_t chains = static_cast<int64_t>(chain_ids.size());
  std::vector<int64_t> ab(2 * chains);
  const uint64_t s = hmc_detail::splitmix64(seed);
  for (int64_t c = 0; c < chains; ++c) {
    const uint64_t k = hmc_detail::splitmix64(s ^ hmc_detail::splitmix64(chain_ids[c]));
    ab[2 * c] = static_cast<int64_t>(k & 0xFFFFFFFFULL);
    ab[2 * c + 1] = static_cast<int64_t>(k >> 32);
  }
  const auto opt = torch::TensorOptions().dtype(torch::kInt64);
  key_ab_ = torch::tensor(ab, opt).view({chains, 2}).to(device);
  mix1_ = torch::tensor({int64_t{0x85EBCA6B}, int64_t{0x7FEB352D}}, opt).view({1, 2}).to(device);
  shift2_ = torch::tensor({int64_t{13}, int64_t{15}}, opt).view({1, 2}).to(device);
  mix2_ = torch::tensor({int64_t{0xC2B2AE35}, int64_t{0x846CA68B}}, opt).view({1, 2}).to(device);
  second_column_ = torch::tensor({int64_t{0}, hmc_detail::kMask32}, opt).view({1, 2}).to(device);
}

torch::Tensor ChainRandom::bits(int64_t iteration, int64_t stream, int64_t sub, int64_t offset,
                                int64_t n) const {
  if (key_ab_.device().is_cpu()) {
    const int64_t c0 = iteration & hmc_detail::kMask32;
    const int64_t c1 = hmc_detail::stream_word(stream, sub);
    return hmc_detail::bits_cpu(key_ab_, static_cast<uint32_t>(c0), static_cast<uint32_t>(c1),
                                offset, n);
  }
  return bits_tensor_ops(iteration, stream, sub, offset, n);
}

torch::Tensor ChainRandom::bits_tensor_ops(int64_t iteration, int64_t stream, int64_t sub,
                                           int64_t offset, int64_t n) const {
  using namespace hmc_detail;
  const int64_t c0 = iteration & kMask32;
  const int64_t c1 = stream_word(stream, sub);
  // Per chain a = fmix_a(fmix_a(key_a ^ c0) ^ c1) and b = fmix_b(fmix_b(key_b ^ c1) ^ c0), both
  // columns at once: column 1 gets c0 ^ (c0 ^ c1) = c1, then c1 ^ (c0 ^ c1) = c0.
  const torch::Tensor swap = second_column_.bitwise_and(c0 ^ c1);
  torch::Tensor ab = fmix_ab(key_ab_.bitwise_xor(c0).bitwise_xor(swap), mix1_, shift2_, mix2_);
  ab = fmix_ab(ab.bitwise_xor(c1).bitwise_xor(swap), mix1_, shift2_, mix2_);
  // The element hash depends only on (offset, n): kept from the previous call (a NUTS transition
  // asks for the same block every time).
  if (!element_hash_.defined() || element_offset_ != offset || element_hash_.size(1) != n) {
    torch::Tensor e = torch::arange(offset, offset + n, key_ab_.options()).view({1, n});
    element_hash_ = fmix_b((e + int64_t{0x632BE5AB}).bitwise_and(kMask32));
    element_offset_ = offset;
  }
  return fmix_b(
      fmix_a(ab.narrow(1, 0, 1).bitwise_xor(element_hash_)).bitwise_xor(ab.narrow(1, 1, 1)));
}

namespace hmc_detail {
// The checks of bits_per_chain's arguments; returns the number of chains.
int64_t check_per_chain(const ChainRandom& random, const torch::Tensor& iteration,
                        const torch::Tensor& offset) {
  const int64_t chains = random.chains();
  for (const torch::Tensor* t : {&iteration, &offset})
    if (!t->defined() || t->dim() != 1 || t->size(0) != chains || t->scalar_type() != torch::kInt64)
      throw InvalidArgument(
          "ChainRandom::bits_per_chain: iteration and offset must be int64 [chains] tensors");
  return chains;
}

}  // namespace hmc_detail

torch::Tensor ChainRandom::bits_per_chain(const torch::Tensor& iteration, int64_t stream,
                                          int64_t sub, const torch::Tensor& offset,
                                          int64_t n) const {
  using namespace hmc_detail;
  const int64_t chains = check_per_chain(*this, iteration, offset);
  if (!key_ab_.device().is_cpu() || !iteration.device().is_cpu() || !offset.device().is_cpu())
    return bits_per_chain_tensor_ops(iteration, stream, sub, offset, n);
  const auto c1 = static_cast<uint32_t>(stream_word(stream, sub));
  torch::Tensor out = torch::empty({chains, n}, key_ab_.options());
  const int64_t* key = key_ab_.data_ptr<int64_t>();
  const torch::Tensor it = iteration.contiguous(), first = offset.contiguous();
  const int64_t* itp = it.data_ptr<int64_t>();
  const int64_t* firstp = first.data_ptr<int64_t>();
  int64_t* words = out.data_ptr<int64_t>();
  for (int64_t c = 0; c < chains; ++c) {
    const ChainKeys k = chain_keys(key, c, static_cast<uint32_t>(itp[c] & kMask32), c1);
    for (int64_t j = 0; j < n; ++j) words[c * n + j] = word(k, element_hash(firstp[c] + j));
  }
  return out;
}

torch::Tensor ChainRandom::bits_per_chain_tensor_ops(const torch::Tensor& iteration, int64_t stream,
                                                     int64_t sub, const torch::Tensor& offset,
                                                     int64_t n) const {
  using namespace hmc_detail;
  const int64_t chains = check_per_chain(*this, iteration, offset);
  const int64_t c1 = stream_word(stream, sub);
  // bits_tensor_ops with a column of iterations and offsets.
  const auto opt = key_ab_.options();
  const torch::Tensor c0 = iteration.to(key_ab_.device()).bitwise_and(kMask32).view({chains, 1});
  const torch::Tensor swap = second_column_.bitwise_and(c0.bitwise_xor(c1));
  torch::Tensor ab = fmix_ab(key_ab_.bitwise_xor(c0).bitwise_xor(swap), mix1_, shift2_, mix2_);
  ab = fmix_ab(ab.bitwise_xor(c1).bitwise_xor(swap), mix1_, shift2_, mix2_);
  const torch::Tensor e = fmix_b((offset.to(key_ab_.device()).view({chains, 1}) +
                                  torch::arange(n, opt).view({1, n}) + int64_t{0x632BE5AB})
                                     .bitwise_and(kMask32));
  return fmix_b(fmix_a(ab.narrow(1, 0, 1).bitwise_xor(e)).bitwise_xor(ab.narrow(1, 1, 1)));
}

torch::Tensor ChainRandom::uniform_from_bits(const torch::Tensor& words, torch::Dtype dtype) {
  return ((words.to(torch::kFloat64) + 0.5) * std::ldexp(1.0, -32)).to(dtype);
}

torch::Tensor ChainRandom::normal_from_bits(const torch::Tensor& words, torch::Dtype dtype) {
  torch::Tensor w = words.view({words.size(0), -1, 3});
  torch::Tensor hi = torch::bitwise_right_shift(w.select(2, 0), 5);
  torch::Tensor lo = torch::bitwise_right_shift(w.select(2, 1), 6);
  torch::Tensor u1 =
      ((hi * int64_t{67108864} + lo).to(torch::kFloat64) + 0.5) * std::ldexp(1.0, -53);
  torch::Tensor u2 = (w.select(2, 2).to(torch::kFloat64) + 0.5) * std::ldexp(1.0, -32);
  return (torch::sqrt(-2.0 * torch::log(u1)) * torch::cos((2.0 * M_PI) * u2)).to(dtype);
}

torch::Tensor ChainRandom::uniform(int64_t iteration, int64_t stream, int64_t sub, int64_t offset,
                                   int64_t n, torch::Dtype dtype) const {
  return uniform_from_bits(bits(iteration, stream, sub, offset, n), dtype);
}

torch::Tensor ChainRandom::normal(int64_t iteration, int64_t stream, int64_t sub, int64_t n,
                                  torch::Dtype dtype) const {
  return normal_from_bits(bits(iteration, stream, sub, 0, 3 * n), dtype);
}

PhasePoint select(const torch::Tensor& mask, const PhasePoint& a, const PhasePoint& b) {
  torch::Tensor m = mask.unsqueeze(-1);
  return PhasePoint{torch::where(m, a.q, b.q), torch::where(m, a.p, b.p),
                    torch::where(mask, a.log_p, b.log_p), torch::where(m, a.grad, b.grad)};
}

HamiltonianSystem::HamiltonianSystem(LogDensityFn f, Metric metric, ChainRandom random,
                                     double max_energy_error)
    : f_(std::move(f)),
      metric_(std::move(metric)),
      random_(std::move(random)),
      max_energy_error_(max_energy_error) {}

LogDensityValue HamiltonianSystem::evaluate(const torch::Tensor& q) {
  ++calls_;
  return evaluate_checked(f_, q);
}

PhasePoint HamiltonianSystem::leapfrog(const PhasePoint& z, const torch::Tensor& eps) {
  torch::Tensor e = eps.unsqueeze(-1);
  return leapfrog(z, e, 0.5 * e);
}

PhasePoint HamiltonianSystem::leapfrog(const PhasePoint& z, const torch::Tensor& eps_col,
                                       const torch::Tensor& half_eps_col) {
  torch::Tensor p_half = torch::addcmul(z.p, half_eps_col, z.grad);
  torch::Tensor q = torch::addcmul(z.q, eps_col, metric_.velocity(p_half));
  if (compact_groups_ > 0 && q.device().is_cpu()) {
    // Chains whose trees have stopped integrate with step size 0 (nuts.cpp): their state stays as
    // it is, so only the others need the log density. Lock-step trees otherwise cost every chain
    // the deepest tree's steps (72-92 % of the rows were live ones on the bench mock,
    // docs/benchmarks.md, session 19). The count stays in calls x chains (hmc.h).
    const torch::Tensor moving = eps_col.squeeze(-1) != 0;
    const int64_t n_moving = moving.sum().item<int64_t>();
    if (n_moving == 0) {
      ++calls_;  // counted as the lock-step call it replaces
      return PhasePoint{q, z.p, z.log_p, z.grad};
    }
    if (n_moving < q.size(0)) {
      const auto rows = optimize_common::pending_rows(moving, compact_groups_);
      const LogDensityValue v = evaluate(q.index_select(0, rows.sel));
      const torch::Tensor at = rows.sel.index_select(0, rows.real);
      torch::Tensor log_p = z.log_p.index_copy(0, at, v.log_p.index_select(0, rows.real));
      torch::Tensor grad = z.grad.index_copy(0, at, v.grad.index_select(0, rows.real));
      return PhasePoint{q, torch::addcmul(p_half, half_eps_col, grad), log_p, grad};
    }
  }
  LogDensityValue v = evaluate(q);
  torch::Tensor p = torch::addcmul(p_half, half_eps_col, v.grad);
  return PhasePoint{q, p, v.log_p, v.grad};
}

torch::Tensor HamiltonianSystem::hamiltonian(const PhasePoint& z, torch::Tensor* velocity) const {
  torch::Tensor v = metric_.velocity(z.p);
  torch::Tensor h = 0.5 * (z.p * v).sum(-1) - z.log_p;
  if (velocity) *velocity = v;
  return torch::nan_to_num(h, INFINITY, INFINITY, INFINITY);
}

torch::Tensor find_reasonable_step_size(HamiltonianSystem& system, const ChainState& state,
                                        const torch::Tensor& step_size, int64_t iteration,
                                        int64_t stream) {
  const int64_t dim = state.q.size(1);
  const auto dtype = state.q.scalar_type();
  const double log_08 = std::log(0.8);
  torch::Tensor eps = step_size.clone();
  // Stan skips the search for step sizes that could loop forever.
  torch::Tensor active = (eps > 0) & (eps <= 1e7) & torch::isfinite(eps);

  auto probe = [&](int64_t k) {
    torch::Tensor z = system.random().normal(iteration, stream, k, dim, dtype);
    PhasePoint z0{state.q, system.metric().momentum_from_normal(z), state.log_p, state.grad};
    torch::Tensor h0 = system.hamiltonian(z0);
    torch::Tensor h = system.hamiltonian(system.leapfrog(z0, eps));
    return h0 - h;  // -inf where the step is not finite
  };

  torch::Tensor up = probe(0) > log_08;  // direction: true doubles, false halves
  for (int64_t k = 1;; ++k) {
    torch::Tensor delta_h = probe(k);
    torch::Tensor stop = torch::where(up, ~(delta_h > log_08), ~(delta_h < log_08));
    active = active & ~stop;
    eps = torch::where(active, torch::where(up, 2.0 * eps, 0.5 * eps), eps);
    torch::Tensor too_big = active & (eps > 1e7);
    torch::Tensor zero = active & (eps == 0);
    torch::Tensor flags = torch::stack({active.any(), too_big.any(), zero.any()}).to(torch::kCPU);
    auto f = flags.accessor<bool, 1>();
    if (f[1])
      throw NumericalError("step-size search: the step size of chain(s) " +
                           hmc_detail::chain_list(too_big) +
                           " grew beyond 1e7; the posterior is improper, check the model");
    if (f[2])
      throw NumericalError(
          "step-size search: no acceptably small step size could be found for "
          "chain(s) " +
          hmc_detail::chain_list(zero) + "; is the log density continuous?");
    if (!f[0]) break;
  }
  return eps;
}

namespace {
// Thrown out of an out-of-step segment when a stop is requested inside it (run_adaptive_sampler).
struct SegmentAbandoned {};

// AdaptSettings::curvature_metric: the inverse metric [C, D] or [C, D, D] (the metric's kind) from
// the local curvature at the chains' positions (laplace.h's curvature_covariance, difference
// steps a tenth of the current metric's marginal sd). Undefined when the Hessian failed (a
// gradient that is not finite nearby): the caller keeps what it had.
torch::Tensor curvature_inverse_metric(HamiltonianSystem& system, const ChainState& state,
                                       const LogDensityFn& log_density,
                                       const SamplerSettings& settings, int64_t group,
                                       const std::string& name, int64_t iteration) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t chains = state.q.size(0);
  const auto& inv = system.metric().inverse();
  const auto widths = (inv.dim() == 3 ? inv.diagonal(0, 1, 2) : inv).sqrt();
  LaplaceSettings ls;
  ls.max_variance = settings.adapt.curvature_max_variance;
  int64_t calls = 0;
  torch::Tensor flat, cov;
  try {
    cov = curvature_covariance(log_density, state.q, widths, group, ls, calls, &flat);
  } catch (const NumericalError& e) {
    spdlog::warn("{}: the metric stays as it was; its local curvature failed: {}", name, e.what());
    return {};
  }
  system.count_rows(2 * state.q.size(1) * chains, chains);
  const auto level =
      iteration <= settings.adapt.windows.init_buffer ? spdlog::level::info : spdlog::level::debug;
  if (spdlog::should_log(level)) {
    const auto sd = cov.diagonal(0, 1, 2).sqrt();
    spdlog::log(level,
                "{}: metric from the local curvature at the chains' positions after warmup "
                "iteration {} ({:.1f} s; marginal sd {:.3g} to {:.3g}; {} non-concave "
                "direction(s) taken in absolute value)",
                name, iteration,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                sd.min().item<double>(), sd.max().item<double>(), flat.sum().item<int64_t>());
  }
  const auto opt = state.q.options();
  return settings.metric == MetricKind::dense ? cov.to(opt)
                                              : cov.diagonal(0, 1, 2).contiguous().to(opt);
}
}  // namespace

SamplerResult run_adaptive_sampler(const LogDensityFn& log_density, const torch::Tensor& init,
                                   const SamplerSettings& settings, const TransitionFn& transition,
                                   const std::string& name, const SegmentFn& segment) {
  using hmc_detail::device_copy;
  settings.validate();
  if (!init.defined() || init.dim() != 2 || init.size(0) < 1 || init.size(1) < 1)
    throw InvalidArgument(name +
                          ": initial positions must be a [chains, dim] tensor with at "
                          "least one chain and one dimension");
  if (!init.is_floating_point())
    throw InvalidArgument(name + ": initial positions must be floating point");
  const int64_t chains = init.size(0), dim = init.size(1);
  const torch::TensorOptions opt = init.options();
  const int64_t num_warmup = settings.num_warmup, num_draws = settings.num_draws;
  const int64_t total = num_warmup + num_draws;
  // Chains adapt in consecutive groups of `group` (1: each on its own).
  const int64_t group = settings.adapt.group_size(chains);
  if (chains % group != 0)
    throw InvalidArgument(name + ": adapt.pool_group = " + std::to_string(group) +
                          " does not divide the " + std::to_string(chains) + " chains");
  // The mean of x [C] over each group, broadcast back to its chains.
  auto group_mean = [chains, group](const torch::Tensor& x) {
    if (group == 1) return x;
    return x.view({chains / group, group})
        .mean(1, true)
        .expand({chains / group, group})
        .reshape({chains});
  };
  if (!settings.chain_ids.empty() && static_cast<int64_t>(settings.chain_ids.size()) != chains)
    throw InvalidArgument(name + ": chain_ids has " + std::to_string(settings.chain_ids.size()) +
                          " ids for " + std::to_string(chains) + " chains");
  const SamplerSnapshot* resume = settings.resume_from.get();
  if (resume) hmc_detail::check_snapshot(*resume, settings, chains, dim, name);

  Metric metric =
      resume ? Metric::from_inverse(settings.metric, resume->inv_metric.to(opt), chains, dim, opt)
      : settings.inv_metric.defined()
          ? Metric::from_inverse(settings.metric, settings.inv_metric, chains, dim, opt)
          : Metric::identity(settings.metric, chains, dim, opt);
  ChainRandom random =
      settings.chain_ids.empty()
          ? ChainRandom(settings.seed, settings.chain_id_offset, chains, init.device())
          : ChainRandom(settings.seed, settings.chain_ids, init.device());
  HamiltonianSystem system(log_density, std::move(metric), std::move(random),
                           settings.max_energy_error);
  if (settings.compact_rows > 0) {
    if (chains % settings.compact_rows != 0)
      throw InvalidArgument(std::string(name) + ": compact_rows (" +
                            std::to_string(settings.compact_rows) + ") must divide the " +
                            std::to_string(chains) + " chains");
    system.compact_rows(settings.compact_rows);
  }

  ChainState state;
  if (resume) {
    state.q = device_copy(resume->q, init.device());
    state.log_p = device_copy(resume->log_p, init.device());
    state.grad = device_copy(resume->grad, init.device());
  } else {
    state.q = init.detach().clone();
    LogDensityValue v = system.evaluate(state.q);
    state.log_p = v.log_p;
    state.grad = v.grad;
    torch::Tensor bad = ~(torch::isfinite(v.log_p) & torch::isfinite(v.grad).all(1)) |
                        ~torch::isfinite(state.q).all(1);
    if (bad.any().item<bool>())
      throw InvalidArgument(name + ": the initial point of chain(s) " +
                            hmc_detail::chain_list(bad) +
                            " has a non-finite position, log density or gradient; choose "
                            "initial values inside the support");
  }

  SamplerResult result;
  result.metric = settings.metric;
  if (resume) {
    if (settings.save_warmup) result.warmup = hmc_detail::draws_copy(resume->warmup, init.device());
    static_cast<Draws&>(result) = hmc_detail::draws_copy(resume->draws, init.device());
  } else {
    if (settings.save_warmup)
      result.warmup = hmc_detail::allocate_draws(chains, num_warmup, dim, opt);
    static_cast<Draws&>(result) = hmc_detail::allocate_draws(chains, num_draws, dim, opt);
  }

  const int64_t refresh =
      settings.refresh > 0 ? settings.refresh : std::max<int64_t>(1, total / 10);
  // Divergences and leapfrog steps accumulate on the device; they are read only when reported.
  torch::Tensor divergences =
      torch::full({}, resume ? resume->divergences : 0, opt.dtype(torch::kLong));
  torch::Tensor leapfrogs = torch::zeros({}, opt.dtype(torch::kLong));
  const int64_t start = resume ? resume->iteration : 0;
  int64_t reported_at = start;
  int64_t refresh_block = start / refresh;  // reports when (i + 1) / refresh moves on
  const auto started = std::chrono::steady_clock::now();
  auto progress = [&](int64_t i, const TransitionStats& st, const torch::Tensor& eps) {
    if (settings.on_progress) {
      divergences += st.divergent.sum();
      leapfrogs += st.n_leapfrog.sum();
    }
    if (!((i + 1) / refresh != refresh_block || i + 1 == total)) return;
    refresh_block = (i + 1) / refresh;
    if (!settings.on_progress) {
      spdlog::info("{}: iteration {:>6} / {} ({})", name, i + 1, total,
                   i < num_warmup ? "warmup" : "sampling");
      return;
    }
    SamplerProgress p;
    p.iteration = i + 1;
    p.total = total;
    p.warmup = i < num_warmup;
    p.divergences = divergences.item<int64_t>();
    p.mean_step_size = torch::exp(torch::log(eps).mean()).item<double>();
    p.mean_leapfrog = static_cast<double>(leapfrogs.item<int64_t>()) /
                      static_cast<double>(std::max<int64_t>(1, (i + 1 - reported_at) * chains));
    leapfrogs.zero_();
    reported_at = i + 1;
    p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    settings.on_progress(p);
  };
  auto pool_step = [&](const torch::Tensor& eps) {
    return group == 1 ? eps : torch::exp(group_mean(torch::log(eps)));
  };

  const bool adapt_step = settings.adapt.step_size && num_warmup > 0;
  const bool adapt_metric = settings.adapt.metric && num_warmup > 0;
  torch::NoGradGuard no_grad;  // a log density built on autograd re-enables it inside
  // Wall time and log-density calls, split at the end of warmup; a resumed run adds its own.
  double warmup_seconds = resume ? resume->warmup_seconds : 0.0;
  double sampling_seconds = resume ? resume->sampling_seconds : 0.0;
  const int64_t calls_before = resume ? resume->calls : 0;
  int64_t warmup_calls = resume ? resume->warmup_calls : 0;
  auto mark = std::chrono::steady_clock::now();
  auto since_mark = [&mark] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - mark).count();
  };

  torch::Tensor eps = resume ? device_copy(resume->step_size, init.device())
                             : torch::full({chains}, settings.step_size, opt);
  if (adapt_step && !resume)
    eps = pool_step(find_reasonable_step_size(system, state, eps, 0, kStreamFirstStepSearch));
  DualAveraging dual(settings.adapt.dual_averaging,
                     torch::full({chains}, std::log(10.0 * settings.step_size), opt));
  WindowedAdaptation windows(num_warmup, settings.adapt.windows);
  WelfordEstimator estimator(settings.metric, adapt_metric ? chains : 1, adapt_metric ? dim : 1,
                             opt);
  if (resume) {
    if (adapt_step && resume->dual_mu.defined())
      dual.restore(resume->dual_counter, resume->dual_mu, resume->dual_s_bar, resume->dual_x_bar);
    if (adapt_metric && resume->welford_mean.defined())
      estimator.restore(resume->welford_count, resume->welford_mean, resume->welford_m2);
    for (int64_t i = 0; i < std::min(start, num_warmup); ++i) windows.step();  // host-side replay
  }
  torch::Tensor all_chains = torch::ones({chains}, opt.dtype(torch::kBool));
  // AdaptSettings::stray_nats: each chain's log density since the last check (StrayWindow).
  const double stray_nats = settings.adapt.stray_nats;
  const int64_t stray_group = settings.adapt.stray_group > 0 ? settings.adapt.stray_group : chains;
  if (stray_nats > 0 && chains % stray_group != 0)
    throw InvalidArgument(name + ": adapt.stray_group = " + std::to_string(stray_group) +
                          " does not divide the " + std::to_string(chains) + " chains");
  StrayWindow stray_window;
  if (stray_nats > 0 && num_warmup > 0)
    stray_window = resume && resume->stray_window.defined()
                       ? StrayWindow(device_copy(resume->stray_window, init.device()))
                       : StrayWindow(chains, opt);
  if (num_warmup == 0 && !resume) {
    warmup_seconds = since_mark();
    warmup_calls = system.calls();
    mark = std::chrono::steady_clock::now();
  }

  // Everything needed to continue after `done` iterations (CPU copies).
  // with_draws false: without the draws so far (a segment's start, kept in case it is abandoned;
  // the draws are added if it is, as the segment has not touched them).
  auto snapshot_after = [&](int64_t done, bool with_draws = true) {
    using hmc_detail::cpu_copy;
    SamplerSnapshot s;
    s.iteration = done;
    s.num_warmup = num_warmup;
    s.num_draws = num_draws;
    s.q = cpu_copy(state.q);
    s.log_p = cpu_copy(state.log_p);
    s.grad = cpu_copy(state.grad);
    s.step_size = cpu_copy(eps);
    s.inv_metric = cpu_copy(system.metric().inverse());
    if (adapt_step) {
      s.dual_counter = dual.counter();
      s.dual_mu = cpu_copy(dual.mu());
      s.dual_s_bar = cpu_copy(dual.s_bar());
      s.dual_x_bar = cpu_copy(dual.x_bar());
    }
    if (adapt_metric) {
      s.welford_count = estimator.num_samples();
      s.welford_mean = cpu_copy(estimator.mean());
      s.welford_m2 = cpu_copy(estimator.m2());
    }
    if (stray_window.defined()) s.stray_window = cpu_copy(stray_window.sums());
    if (with_draws) {
      if (settings.save_warmup) s.warmup = hmc_detail::draws_copy(result.warmup, torch::kCPU);
      s.draws = hmc_detail::draws_copy(result, torch::kCPU);
    }
    s.calls = calls_before + system.calls();
    s.warmup_calls = done <= num_warmup ? s.calls : warmup_calls;
    s.divergences = divergences.item<int64_t>();
    s.warmup_seconds = warmup_seconds + (done < num_warmup ? since_mark() : 0.0);
    s.sampling_seconds = sampling_seconds + (done > num_warmup ? since_mark() : 0.0);
    return s;
  };

  // After a metric update: Stan's step-size search, and dual averaging restarted around it.
  auto restart_step_size = [&](int64_t i) {
    if (!adapt_step) return;
    eps = pool_step(find_reasonable_step_size(system, state, eps, i));
    dual.set_mu(torch::log(10.0 * eps));
    dual.restart();
  };
  // The curvature metric's updates in the initial buffer (after n iterations, 1-based).
  const auto& wins = settings.adapt.windows;
  auto curvature_event = [&](int64_t n) {
    return adapt_metric && settings.adapt.curvature_metric && n <= wins.init_buffer &&
           (n % wins.base_window == 0 || n == wins.init_buffer ||
            n == settings.adapt.curvature_first);
  };
  // Stray chains (AdaptSettings::stray_nats) are compared after these iterations (1-based): in the
  // initial buffer every base_window iterations and at its end, before the curvature metric is
  // taken there, and at the end of each slow window, before its metric.
  std::vector<int64_t> stray_checks;
  if (stray_window.defined()) {
    for (int64_t k = wins.base_window; k < wins.init_buffer; k += wins.base_window)
      stray_checks.push_back(k);
    if (wins.init_buffer > 0 && wins.init_buffer <= num_warmup)
      stray_checks.push_back(wins.init_buffer);
    for (const auto& w : WindowedAdaptation::slow_windows(num_warmup, wins))
      stray_checks.push_back(w.second);
    std::sort(stray_checks.begin(), stray_checks.end());
    stray_checks.erase(std::unique(stray_checks.begin(), stray_checks.end()), stray_checks.end());
  }
  // The check at or after iteration i (0-based; 1-based counts in stray_checks) and the one
  // before it (0: none), the window's start; `at` is end() past the last check.
  auto stray_window_of = [&](int64_t i) {
    const auto at = std::lower_bound(stray_checks.begin(), stray_checks.end(), i + 1);
    const int64_t since = at == stray_checks.begin() ? 0 : *(at - 1);
    return std::make_pair(at, since);
  };
  auto add_to_stray_window = [&](int64_t i, const torch::Tensor& log_p) {
    const auto [at, since] = stray_window_of(i);
    if (at != stray_checks.end()) stray_window.add(log_p, i == since);
  };
  auto regroup_stray_chains = [&](int64_t i) {
    add_to_stray_window(i, state.log_p);
    const auto [at, since] = stray_window_of(i);
    if (at == stray_checks.end() || *at != i + 1) return;
    const auto [mean, error] = stray_window.mean_and_error(i + 1 - since);
    const StrayChains sc = find_stray_chains(mean, stray_group, stray_nats, error);
    if (!sc.stray.any().item<bool>()) return;
    result.stray_moves += sc.stray.sum().item<int64_t>();
    const auto src = sc.source.to(init.device());
    state.q = state.q.index_select(0, src);
    state.log_p = state.log_p.index_select(0, src);
    state.grad = state.grad.index_select(0, src);
    eps = eps.index_select(0, src);
    system.metric().update(system.metric().inverse().index_select(0, src),
                           sc.stray.to(init.device()));
    const auto stray = sc.stray.to(torch::kCPU), source = sc.source.to(torch::kCPU);
    const auto gap = sc.gap.to(torch::kCPU), needed = sc.needed.to(torch::kCPU);
    for (int64_t c = 0; c < chains; ++c) {
      if (!stray[c].item<bool>()) continue;
      spdlog::warn(
          "{}: warmup iteration {}: chain {} averaged {:.1f} nats below chain {} over "
          "iterations {}-{}, more than the {:.1f} that stray_nats ({:g}) and 4 Monte Carlo errors "
          "allow (a mode holding a negligible share of the mass); it continues from chain {}'s "
          "position",
          name, i + 1, c, gap[c].item<double>(), source[c].item<int64_t>(), since + 1, i + 1,
          needed[c].item<double>(), stray_nats, source[c].item<int64_t>());
    }
  };
  // After warmup iteration i's transition (and its step-size update): the stray-chain check, the
  // window's (co)variance estimate and the metric updates, all at the chains' state.
  auto adapt_after = [&](int64_t i) {
    if (stray_window.defined()) regroup_stray_chains(i);
    if (adapt_metric) {
      WindowedAdaptation::Step w = windows.step();
      if (w.add_sample) estimator.add(state.q);
      if (w.end_window) {
        const int64_t n = estimator.effective_count_of_groups(group);
        const double k = settings.adapt.metric_prior_count;
        // With curvature_metric the window's estimate is blended with the local curvature at the
        // chains' positions, not with the metric in use. Either gives the scale of Stan's
        // shrinkage (regularize_covariance).
        torch::Tensor prior;
        if (k > 0 && settings.adapt.curvature_metric)
          prior =
              curvature_inverse_metric(system, state, log_density, settings, group, name, i + 1);
        if (!prior.defined()) prior = system.metric().inverse();
        torch::Tensor cov =
            regularize_covariance(estimator.covariance_of_groups(group), n, settings.metric, prior);
        if (k > 0) {
          const double w = static_cast<double>(n) / (static_cast<double>(n) + k);
          cov = w * cov + (1.0 - w) * prior;
        }
        system.metric().update(cov, all_chains);
        estimator.restart();
        spdlog::debug("{}: metric updated at warmup iteration {}", name, i + 1);
        restart_step_size(i);
      }
    }
    // In the initial buffer the chains travel from their starts to the typical set: the
    // curvature metric follows them after curvature_first iterations, every base_window
    // iterations and at the buffer's end.
    if (curvature_event(i + 1)) {
      const torch::Tensor inv =
          curvature_inverse_metric(system, state, log_density, settings, group, name, i + 1);
      if (inv.defined()) {
        system.metric().update(inv, all_chains);
        restart_step_size(i);
      }
    }
  };
  // What adapt_after does after an iteration i (0-based) that is not the last of its segment,
  // from the segment's draw q [C, D] and log density [C]: no event falls there.
  auto adapt_inside_segment = [&](int64_t i, const torch::Tensor& q, const torch::Tensor& log_p) {
    if (stray_window.defined()) add_to_stray_window(i, log_p);
    if (adapt_metric) {
      const WindowedAdaptation::Step w = windows.step();
      if (w.end_window)
        throw NumericalError(name + ": internal error: a metric window ends inside a segment");
      if (w.add_sample) estimator.add(q);
    }
  };
  // Iterations (1-based counts) after which every chain must be at the same iteration: warmup's
  // adaptation events, the end of warmup and checkpoints.
  std::vector<int64_t> window_ends;
  if (adapt_metric)
    for (const auto& w : WindowedAdaptation::slow_windows(num_warmup, wins))
      window_ends.push_back(w.second);
  auto is_meeting_point = [&](int64_t n) {
    if (n == num_warmup || n == total) return true;
    if (settings.on_checkpoint && settings.checkpoint_every > 0 &&
        n % settings.checkpoint_every == 0)
      return true;
    if (n > num_warmup) return false;
    return curvature_event(n) || std::binary_search(stray_checks.begin(), stray_checks.end(), n) ||
           std::binary_search(window_ends.begin(), window_ends.end(), n);
  };
  // The end of the segment that starts at iteration i: the next meeting point, or at most
  // max(refresh, kMinSegment) iterations on. Chains out of step wait for each other at the end of
  // a segment, so segments are not cut at every progress report.
  constexpr int64_t kMinSegment = 50;
  auto segment_end = [&](int64_t i) {
    const int64_t last = std::min(total, i + std::max(refresh, kMinSegment));
    int64_t end = i + 1;
    while (end < last && !is_meeting_point(end)) ++end;
    return end;
  };
  SegmentStepSizeLearning learning;
  learning.group = group;
  int64_t dual_counter_at = 0;  // the dual averaging's counter at the segment's start
  learning.learn = [&](const torch::Tensor& accept_stat, const std::vector<int64_t>& ended,
                       const torch::Tensor& step_size) {
    std::vector<int64_t> counter(ended.size(), 0);
    for (size_t c = 0; c < ended.size(); ++c)
      if (ended[c] > 0) counter[c] = dual_counter_at + ended[c];
    return dual.learn_rows(group_mean(accept_stat), counter, step_size);
  };
  // Progress inside a segment: the transitions that every chain has ended are reported as
  // lock-step iterations, with their step sizes as recorded.
  int64_t seg_first = 0, seg_counted = 0, seg_count = 0;
  auto segment_progress = [&](const Draws& so_far, int64_t done) {
    TransitionStats st;
    st.n_leapfrog = so_far.n_leapfrog.narrow(1, seg_counted, done - seg_counted).sum(1);
    st.divergent = so_far.divergent.narrow(1, seg_counted, done - seg_counted).sum(1);
    seg_counted = done;
    progress(seg_first + done - 1, st, so_far.step_size.select(1, done - 1));
    // (at the segment's last transition the stop is taken after it, as in lock-step)
    if (done < seg_count && settings.stop_requested && settings.stop_requested())
      throw SegmentAbandoned{};
  };
  // SamplerResult::*_steps_out_of_step. In lock-step: each group's deepest tree per iteration
  // (warmup: a group's chains begin each transition together; sampling: every chain alone) summed
  // over the segment, and the largest of those sums added up on the device. Out of step: the
  // segments' log-density calls. [0]: warmup, [1]: sampling.
  const auto long_opt = opt.dtype(torch::kLong);
  torch::Tensor free_leaves;  // the current segment's sums
  torch::Tensor free_steps = torch::zeros({2}, long_opt);
  int64_t free_calls[2] = {0, 0};
  int64_t free_segment_start = start, free_segment_end = start < total ? segment_end(start) : total;
  auto count_free_leaves = [&](int64_t i, const torch::Tensor& n_leapfrog) {
    const int64_t g = i < num_warmup ? group : 1;
    const torch::Tensor deepest = std::get<0>(n_leapfrog.view({chains / g, g}).max(1));
    free_leaves = i == free_segment_start ? deepest : free_leaves + deepest;
    if (i + 1 != free_segment_end) return;
    free_steps.select(0, i < num_warmup ? 0 : 1).add_(free_leaves.max());
    free_segment_start = i + 1;
    if (free_segment_start < total) free_segment_end = segment_end(free_segment_start);
  };
  // A stop request (settings.stop_requested): a snapshot after `done` iterations (`at_start`: the
  // one taken at the abandoned segment's start), then Interrupted.
  auto interrupt = [&](int64_t done, std::optional<SamplerSnapshot> at_start) {
    std::string saved = "; no snapshot (no checkpoint callback)";
    if (settings.on_checkpoint) {
      SamplerSnapshot snap = at_start ? std::move(*at_start) : snapshot_after(done);
      if (at_start) {
        if (settings.save_warmup) snap.warmup = hmc_detail::draws_copy(result.warmup, torch::kCPU);
        snap.draws = hmc_detail::draws_copy(result, torch::kCPU);
      }
      settings.on_checkpoint(snap);
      saved = "; the snapshot after it was saved";
    }
    std::ostringstream os;
    os << name << ": stopped on request after iteration " << done << " of " << total << " ("
       << (done <= num_warmup ? "warmup" : "sampling") << ")" << saved;
    throw Interrupted(os.str());
  };
  auto last_snapshot = std::chrono::steady_clock::now();
  auto snapshot_due = [&] {
    return settings.checkpoint_seconds > 0 &&
           std::chrono::duration<double>(std::chrono::steady_clock::now() - last_snapshot)
                   .count() >= settings.checkpoint_seconds;
  };
  for (int64_t i = start; i < total; ++i) {
    if (segment) {
      const int64_t first = i, end = segment_end(i);
      const bool warmup = first < num_warmup;
      const bool learn = warmup && adapt_step;
      dual_counter_at = dual.counter();
      seg_first = first;
      seg_counted = 0;
      seg_count = end - first;
      const int64_t calls_at = system.calls();
      // A stop requested inside the segment abandons it: its chains are at different iterations,
      // and the last state they all share is the segment's start.
      std::optional<SamplerSnapshot> at_start;
      if (settings.stop_requested && settings.on_checkpoint)
        at_start = snapshot_after(first, false);
      Draws seg;
      try {
        seg = segment(system, state, eps, first, end - first, learn ? &learning : nullptr,
                      segment_progress);
      } catch (const SegmentAbandoned&) {
        interrupt(first, std::move(at_start));
      }
      free_calls[warmup ? 0 : 1] += system.calls() - calls_at;
      if (learn) dual.set_counter(dual_counter_at + (end - first));
      if (warmup) {
        if (settings.save_warmup) hmc_detail::put_draws(result.warmup, first, seg);
        for (int64_t k = 0; k + 1 < end - first; ++k)
          adapt_inside_segment(first + k, seg.draws.select(1, k), seg.log_density.select(1, k));
        adapt_after(end - 1);
      } else {
        hmc_detail::put_draws(result, first - num_warmup, seg);
      }
      i = end - 1;
      // segment_progress has reported every transition of the segment
      if (seg_counted != end - first)
        throw NumericalError(name + ": internal error: a segment ended with chains behind");
    } else {
      const TransitionStats st = transition(system, state, eps, i);
      count_free_leaves(i, st.n_leapfrog);
      if (i < num_warmup) {
        if (settings.save_warmup) hmc_detail::record(result.warmup, i, state, eps, st);
        if (adapt_step) eps = dual.learn(group_mean(st.accept_stat));
        adapt_after(i);
      } else {
        hmc_detail::record(result, i - num_warmup, state, eps, st);
      }
      progress(i, st, eps);
    }
    if (i + 1 == num_warmup) {
      if (adapt_step) eps = pool_step(dual.final_step_size());
      state.log_p.sum().item<double>();  // waits for the device before reading the clock
      warmup_seconds += since_mark();
      warmup_calls = calls_before + system.calls();
      mark = std::chrono::steady_clock::now();
    }
    if (i + 1 == total) continue;
    if (settings.stop_requested && settings.stop_requested()) interrupt(i + 1, std::nullopt);
    const bool checkpoint =
        settings.on_checkpoint &&
        ((settings.checkpoint_every > 0 && (i + 1) % settings.checkpoint_every == 0) ||
         i + 1 == num_warmup || snapshot_due());
    if (checkpoint) {
      settings.on_checkpoint(snapshot_after(i + 1));
      last_snapshot = std::chrono::steady_clock::now();
    }
  }
  state.log_p.sum().item<double>();
  if (total > num_warmup) sampling_seconds += since_mark();

  result.step_size_adapted = eps;
  result.inv_metric = system.metric().inverse();
  result.log_density_calls = calls_before + system.calls();
  result.gradient_evaluations = result.log_density_calls * chains;
  result.warmup_gradient_evaluations = warmup_calls * chains;
  const torch::Tensor free_host = free_steps.cpu();
  result.warmup_steps_out_of_step = free_calls[0] + free_host[0].item<int64_t>();
  result.sampling_steps_out_of_step = free_calls[1] + free_host[1].item<int64_t>();
  result.warmup_seconds = warmup_seconds;
  result.sampling_seconds = sampling_seconds;
  return result;
}

TransitionStats hmc_transition(HamiltonianSystem& system, ChainState& state,
                               const torch::Tensor& step_size, int64_t iteration, int64_t num_steps,
                               double trajectory_jitter) {
  const int64_t dim = state.q.size(1);
  const auto dtype = state.q.scalar_type();
  torch::Tensor z = system.random().normal(iteration, kStreamMomentum, 0, dim, dtype);
  PhasePoint start{state.q, system.metric().momentum_from_normal(z), state.log_p, state.grad};
  torch::Tensor h0 = system.hamiltonian(start);
  torch::Tensor u = system.random().uniform(iteration, kStreamHmc, 0, 0, 2, torch::kFloat64);

  torch::Tensor steps;
  if (trajectory_jitter > 0) {
    const int64_t lo = std::max<int64_t>(
        1, static_cast<int64_t>(std::ceil((1.0 - trajectory_jitter) * num_steps)));
    steps =
        torch::clamp_max(lo + torch::floor(u.select(1, 1) * static_cast<double>(num_steps - lo + 1))
                                  .to(torch::kInt64),
                         num_steps);
  } else {
    steps = torch::full({state.q.size(0)}, num_steps, state.q.options().dtype(torch::kInt64));
  }

  PhasePoint cur = start;
  for (int64_t s = 0; s < num_steps; ++s) {
    PhasePoint next = system.leapfrog(cur, step_size);
    cur = trajectory_jitter > 0 ? select(steps > s, next, cur) : next;
  }
  torch::Tensor h = system.hamiltonian(cur);
  torch::Tensor delta = h0 - h;  // -inf for non-finite ends
  torch::Tensor accept_prob = torch::where(delta > 0, torch::ones_like(delta), torch::exp(delta));
  torch::Tensor accept = u.select(1, 0).to(accept_prob.scalar_type()) < accept_prob;

  TransitionStats st;
  st.accept_stat = accept_prob;
  st.divergent = (h - h0) > system.max_energy_error();
  st.n_leapfrog = steps;
  st.tree_depth = torch::zeros_like(steps);
  st.energy = torch::where(accept, h, h0);
  torch::Tensor m = accept.unsqueeze(-1);
  state.q = torch::where(m, cur.q, state.q);
  state.log_p = torch::where(accept, cur.log_p, state.log_p);
  state.grad = torch::where(m, cur.grad, state.grad);
  return st;
}

SamplerResult sample_hmc(const LogDensityFn& log_density, const torch::Tensor& init,
                         const HmcSettings& settings) {
  settings.validate();
  const int64_t num_steps = settings.num_steps;
  const double jitter = settings.trajectory_jitter;
  return run_adaptive_sampler(
      log_density, init, settings,
      [num_steps, jitter](HamiltonianSystem& system, ChainState& state,
                          const torch::Tensor& step_size, int64_t iteration) {
        return hmc_transition(system, state, step_size, iteration, num_steps, jitter);
      },
      "hmc");
}

}  // namespace dslens::samplers

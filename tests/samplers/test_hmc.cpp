// Leapfrog accuracy, per-chain random streams, static HMC, settings validation and the log-density
// wrappers.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "dslens/core/errors.h"
#include "dslens/samplers/hmc.h"
#include "dslens/samplers/nuts.h"
#include "dslens/samplers/optimize.h"

namespace hmc_test {

using namespace dslens::samplers;

torch::TensorOptions f64() {
  return torch::TensorOptions().dtype(torch::kFloat64);
}

// Independent Gaussian N(mu, sigma^2) per coordinate.
LogDensityFn gaussian(torch::Tensor mu, torch::Tensor sigma) {
  return [mu, sigma](const torch::Tensor& q) {
    torch::Tensor z = (q - mu) / sigma;
    return LogDensityValue{-0.5 * (z * z).sum(1), -z / sigma};
  };
}

// Mean of x [C, N] with a batch-means Monte Carlo standard error (20 batches per chain).
std::pair<double, double> mean_mcse(const torch::Tensor& x) {
  const int64_t C = x.size(0), N = x.size(1), B = 20, L = N / B;
  torch::Tensor bm = x.narrow(1, 0, B * L).reshape({C, B, L}).mean(2).flatten();
  return {bm.mean().item<double>(), bm.std().item<double>() / std::sqrt(double(bm.numel()))};
}

template <typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const dslens::InvalidArgument& e) {
    return e.what();
  }
  return "<no InvalidArgument thrown>";
}

TEST(Leapfrog, EnergyErrorIsSecondOrder) {
  const int64_t C = 3, D = 4;
  torch::Tensor sigma = torch::tensor({0.5, 1.0, 2.0, 1.5}, f64());
  auto f = gaussian(torch::zeros({D}, f64()), sigma);
  torch::manual_seed(1);
  torch::Tensor q = torch::randn({C, D}, f64()), p = torch::randn({C, D}, f64());
  auto max_error = [&](double eps) {
    HamiltonianSystem sys(f, Metric::identity(MetricKind::diag, C, D, f64()),
                          ChainRandom(0, 0, C, torch::kCPU));
    LogDensityValue v = f(q);
    PhasePoint z{q, p, v.log_p, v.grad};
    torch::Tensor h0 = sys.hamiltonian(z), worst = torch::zeros({C}, f64());
    const int steps = static_cast<int>(std::lround(2.0 / eps));
    for (int s = 0; s < steps; ++s) {
      z = sys.leapfrog(z, torch::full({C}, eps, f64()));
      worst = torch::maximum(worst, (sys.hamiltonian(z) - h0).abs());
    }
    return worst;
  };
  torch::Tensor e1 = max_error(0.1), e2 = max_error(0.05), e3 = max_error(0.025);
  torch::Tensor r1 = e1 / e2, r2 = e2 / e3;
  EXPECT_TRUE(((r1 > 3.5) & (r1 < 4.5)).all().item<bool>()) << r1;
  EXPECT_TRUE(((r2 > 3.5) & (r2 < 4.5)).all().item<bool>()) << r2;
}

TEST(Leapfrog, IsReversible) {
  const int64_t C = 2, D = 3;
  auto f = gaussian(torch::zeros({D}, f64()), torch::tensor({1.0, 0.3, 2.0}, f64()));
  HamiltonianSystem sys(
      f, Metric::from_inverse(MetricKind::diag, torch::tensor({1.0, 0.1, 4.0}, f64()), C, D, f64()),
      ChainRandom(0, 0, C, torch::kCPU));
  torch::Tensor q = torch::ones({C, D}, f64()), p = torch::full({C, D}, 0.7, f64());
  LogDensityValue v = f(q);
  PhasePoint z{q, p, v.log_p, v.grad};
  torch::Tensor eps = torch::tensor({0.1, 0.2}, f64());
  for (int i = 0; i < 7; ++i) z = sys.leapfrog(z, eps);
  for (int i = 0; i < 7; ++i) z = sys.leapfrog(z, -eps);
  EXPECT_TRUE(torch::allclose(z.q, q, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(z.p, p, 1e-12, 1e-12));
}

// A dense inverse metric estimated in float32 is symmetric only to round-off (on a study's
// snapshot, 1e-7 of sqrt(M_ii M_jj) at entries near 0, which allclose's absolute 1e-8 refused on
// --resume); it is accepted as given. An asymmetry of 1e-3 of the scale is refused.
TEST(Metric, DenseInverseIsSymmetricToRoundOffAndKeptAsGiven) {
  const int64_t D = 3;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  auto inv = torch::tensor({{1.0, 1e-6, 0.3}, {1e-6, 4.0, 0.0}, {0.3, 0.0, 2.0}}, f32);
  inv[0][1] = inv[0][1] + 4e-7;  // 2e-7 of sqrt(1 x 4), 40x allclose's absolute tolerance
  const Metric m = Metric::from_inverse(MetricKind::dense, inv, 2, D, f32);
  EXPECT_TRUE(torch::equal(m.inverse()[1], inv));
  auto bad = inv.clone();
  bad[0][1] = bad[0][1] + 2e-3;  // 1e-3 of the scale
  EXPECT_THROW(Metric::from_inverse(MetricKind::dense, bad, 2, D, f32), dslens::InvalidArgument);
}

TEST(ChainRandom, StreamsArePerChainAndWellDistributed) {
  ChainRandom all(42, 0, 8, torch::kCPU), one(42, 5, 1, torch::kCPU), other(43, 0, 8, torch::kCPU);
  torch::Tensor a = all.bits(17, kStreamNuts, 3, 100, 50);
  EXPECT_TRUE(torch::equal(a[5], one.bits(17, kStreamNuts, 3, 100, 50)[0]));
  EXPECT_FALSE(torch::equal(a[4], a[5]));
  EXPECT_FALSE(torch::equal(a, other.bits(17, kStreamNuts, 3, 100, 50)));
  EXPECT_FALSE(torch::equal(a, all.bits(18, kStreamNuts, 3, 100, 50)));
  EXPECT_TRUE(torch::equal(a.narrow(1, 10, 5), all.bits(17, kStreamNuts, 3, 110, 5)));
  EXPECT_TRUE(((a >= 0) & (a < (int64_t{1} << 32))).all().item<bool>());

  const int64_t n = 20000;
  torch::Tensor z = all.normal(3, kStreamMomentum, 0, n, torch::kFloat64);  // [8, n]
  const double se = 1.0 / std::sqrt(8.0 * n);
  EXPECT_NEAR(z.mean().item<double>(), 0.0, 4 * se);
  EXPECT_NEAR(z.var().item<double>(), 1.0, 4 * std::sqrt(2.0) * se);
  EXPECT_NEAR((z * z * z * z).mean().item<double>(), 3.0, 4 * std::sqrt(96.0) * se);
  EXPECT_NEAR((z > 1.959964).to(torch::kFloat64).mean().item<double>(), 0.025, 4 * 0.16 * se);
  // Neighbouring elements and chains are uncorrelated.
  EXPECT_NEAR((z.narrow(1, 0, n - 1) * z.narrow(1, 1, n - 1)).mean().item<double>(), 0.0, 4 * se);
  EXPECT_NEAR((z[0] * z[1]).mean().item<double>(), 0.0, 4 * std::sqrt(8.0) * se);
  torch::Tensor u = all.uniform(3, kStreamNuts, 0, 0, n, torch::kFloat64);
  EXPECT_TRUE(((u > 0) & (u < 1)).all().item<bool>());
  EXPECT_NEAR(u.mean().item<double>(), 0.5, 4 * std::sqrt(1.0 / 12) * se);
}

// The stream's specification on host integers: splitmix64 keys per chain, MurmurHash3's and
// lowbias32's finalisers, word = fmix_b(fmix_a(a ^ fmix_b(element + 0x632BE5AB)) ^ b).
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}
uint32_t fmix_a(uint32_t x) {
  x = (x ^ (x >> 16)) * 0x85EBCA6BU;
  x = (x ^ (x >> 13)) * 0xC2B2AE35U;
  return x ^ (x >> 16);
}
uint32_t fmix_b(uint32_t x) {
  x = (x ^ (x >> 16)) * 0x7FEB352DU;
  x = (x ^ (x >> 15)) * 0x846CA68BU;
  return x ^ (x >> 16);
}
int64_t reference_word(uint64_t seed, int64_t chain, int64_t iteration, int64_t stream, int64_t sub,
                       int64_t element) {
  const uint64_t k = splitmix64(splitmix64(seed) ^ splitmix64(static_cast<uint64_t>(chain)));
  const uint32_t c0 = static_cast<uint32_t>(iteration);
  const uint32_t c1 = static_cast<uint32_t>((stream & 0xFF) << 24 | (sub & 0xFFFFFF));
  const uint32_t a = fmix_a(fmix_a(static_cast<uint32_t>(k) ^ c0) ^ c1);
  const uint32_t b = fmix_b(fmix_b(static_cast<uint32_t>(k >> 32) ^ c1) ^ c0);
  const uint32_t e = fmix_b(static_cast<uint32_t>(element) + 0x632BE5ABU);
  return fmix_b(fmix_a(a ^ e) ^ b);
}

TEST(ChainRandom, WordsMatchTheHostReferenceOnEveryPath) {
  // The CPU computes the words in one fused loop, other devices with int64 tensor operations
  // whose products wrap modulo 2^64; both must give the reference's uint32 words.
  const uint64_t seed = 0xDEADBEEF12345ULL;
  ChainRandom random(seed, 1000, 3, torch::kCPU);
  for (int64_t iteration : {int64_t{0}, int64_t{7}, int64_t{123456789}}) {
    const int64_t offset = iteration == 7 ? (int64_t{1} << 31) - 5 : 11;
    torch::Tensor fused = random.bits(iteration, kStreamNuts, 77, offset, 40);
    torch::Tensor ops = random.bits_tensor_ops(iteration, kStreamNuts, 77, offset, 40);
    EXPECT_TRUE(torch::equal(fused, ops)) << "iteration " << iteration;
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t j : {0, 1, 39})
        EXPECT_EQ(fused[c][j].item<int64_t>(),
                  reference_word(seed, 1000 + c, iteration, kStreamNuts, 77, offset + j))
            << "chain " << c << " element " << j;
  }
}

void check_gaussian_draws(const SamplerResult& r, const torch::Tensor& sigma) {
  for (int64_t d = 0; d < sigma.size(0); ++d) {
    const double s2 = sigma[d].item<double>() * sigma[d].item<double>();
    torch::Tensor x = r.draws.select(2, d);
    auto [m, se] = mean_mcse(x);
    EXPECT_NEAR(m, 0.0, 4 * se) << "mean of coordinate " << d;
    auto [v, sev] = mean_mcse(x * x);
    EXPECT_NEAR(v, s2, 4 * sev) << "variance of coordinate " << d;
  }
}

TEST(Hmc, FixedAndJitteredTrajectoriesSampleAGaussian) {
  const int64_t C = 4, D = 6;
  torch::Tensor sigma = torch::tensor({0.3, 0.5, 1.0, 1.5, 2.0, 4.0}, f64());
  auto f = gaussian(torch::zeros({D}, f64()), sigma);
  HmcSettings s;
  s.num_warmup = 300;
  s.num_draws = 500;
  s.num_steps = 10;
  s.adapt.windows = WindowSettings{50, 25, 50};
  s.seed = 11;
  for (double jitter : {0.0, 0.6}) {
    s.trajectory_jitter = jitter;
    SamplerResult r = sample_hmc(f, torch::zeros({C, D}, f64()), s);
    ASSERT_EQ(r.draws.sizes(), (c10::IntArrayRef{C, 500, D}));
    EXPECT_EQ(r.divergent.sum().item<int64_t>(), 0);
    check_gaussian_draws(r, sigma);
    // The metric adapted to the variances (within sampling error of the last window's 125 draws).
    torch::Tensor ratio = r.inv_metric / (sigma * sigma);
    EXPECT_TRUE(((ratio > 0.4) & (ratio < 2.5)).all().item<bool>()) << ratio;
    if (jitter > 0) {
      EXPECT_EQ(r.n_leapfrog.min().item<int64_t>(), 4);
      EXPECT_EQ(r.n_leapfrog.max().item<int64_t>(), 10);
    } else {
      EXPECT_TRUE((r.n_leapfrog == 10).all().item<bool>());
    }
    const double accept = r.accept_stat.mean().item<double>();
    EXPECT_GT(accept, 0.65);
    EXPECT_LT(accept, 0.95);
  }
}

TEST(Settings, BadValuesAreRejectedWithPreciseMessages) {
  NutsSettings n;
  n.step_size = -0.1;
  EXPECT_NE(message_of([&] { n.validate(); }).find("step_size must be a positive"),
            std::string::npos);
  n = NutsSettings{};
  n.max_depth = 0;
  EXPECT_NE(message_of([&] { n.validate(); }).find("max_depth must be between 1 and 30, got 0"),
            std::string::npos);
  n = NutsSettings{};
  n.num_warmup = 100;
  EXPECT_NE(message_of([&] { n.validate(); }).find("num_warmup = 100 is fewer than"),
            std::string::npos);
  n.adapt.metric = false;
  EXPECT_NO_THROW(n.validate());
  n = NutsSettings{};
  n.adapt.dual_averaging.delta = 1.0;
  EXPECT_NE(message_of([&] { n.validate(); }).find("delta"), std::string::npos);
  n = NutsSettings{};
  n.num_draws = -1;
  EXPECT_NE(message_of([&] { n.validate(); }).find("num_draws"), std::string::npos);
  HmcSettings h;
  h.num_steps = 0;
  EXPECT_NE(message_of([&] { h.validate(); }).find("num_steps must be >= 1"), std::string::npos);
  h = HmcSettings{};
  h.trajectory_jitter = 1.5;
  EXPECT_NE(message_of([&] { h.validate(); }).find("trajectory_jitter"), std::string::npos);
  LbfgsSettings l;
  l.history = 0;
  EXPECT_NE(message_of([&] { l.validate(); }).find("history"), std::string::npos);
  AdamSettings a;
  a.learning_rate = -1;
  EXPECT_NE(message_of([&] { a.validate(); }).find("learning_rate"), std::string::npos);
  // The samplers validate before running.
  NutsSettings bad;
  bad.max_depth = 0;
  auto f = gaussian(torch::zeros({2}, f64()), torch::ones({2}, f64()));
  EXPECT_THROW(sample_nuts(f, torch::zeros({2, 2}, f64()), bad), dslens::InvalidArgument);
  EXPECT_THROW(sample_nuts(f, torch::zeros({2}, f64()), NutsSettings{}), dslens::InvalidArgument);
  NutsSettings wrong_metric;
  wrong_metric.inv_metric = torch::ones({3}, f64());
  EXPECT_THROW(sample_nuts(f, torch::zeros({2, 2}, f64()), wrong_metric), dslens::InvalidArgument);
}

TEST(LogDensity, AutogradWrapperMatchesTheAnalyticGradient) {
  torch::Tensor w = torch::tensor({1.0, 2.0, 3.0}, f64());
  LogDensityFn f = autograd_log_density(
      [w](const torch::Tensor& q) { return -0.5 * (w * q * q).sum(1) + torch::sin(q).sum(1); });
  torch::Tensor q = torch::tensor({{0.1, -0.2, 0.3}, {1.0, 2.0, -3.0}}, f64());
  LogDensityValue v;
  {
    torch::NoGradGuard no_grad;  // callers may hold one; the wrapper still differentiates
    v = f(q);
  }
  EXPECT_TRUE(torch::allclose(v.grad, -w * q + torch::cos(q)));
  EXPECT_TRUE(torch::allclose(v.log_p, -0.5 * (w * q * q).sum(1) + torch::sin(q).sum(1)));
  EXPECT_FALSE(v.log_p.requires_grad());
  LogDensityFn flat = autograd_log_density(
      [](const torch::Tensor& q) { return torch::zeros({q.size(0)}, q.options()); });
  EXPECT_TRUE(torch::equal(flat(q).grad, torch::zeros_like(q)));
}

}  // namespace hmc_test

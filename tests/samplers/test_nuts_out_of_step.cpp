// NUTS with the chains out of step: the same transitions as the lock-step sampler, chain by chain
// (random numbers, trees, draws and statistics bitwise equal on targets whose rows are computed
// independently), in fewer batched leapfrog steps; in warmup the same step sizes and metrics.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <memory>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/samplers/nuts.h"

namespace nuts_out_of_step_test {

using namespace dslens::samplers;

// Independent N(0, sigma^2) coordinates; NaN beyond q0 = wall (a region every trajectory that
// reaches it diverges in), none when wall is infinite.
LogDensityFn walled_gaussian(const torch::Tensor& sigma, double wall) {
  torch::Tensor neg_precision = -1.0 / (sigma * sigma);
  return [neg_precision, wall](const torch::Tensor& q) {
    torch::Tensor g = q * neg_precision.to(q.scalar_type());
    torch::Tensor lp = 0.5 * (q * g).sum(1);
    if (std::isfinite(wall)) {
      torch::Tensor bad = q.select(1, 0) > wall;
      lp = torch::where(bad, torch::full_like(lp, NAN), lp);
      g = torch::where(bad.unsqueeze(1), torch::full_like(q, NAN), g);
    }
    return LogDensityValue{lp, g};
  };
}

void expect_same_draws(const Draws& a, const Draws& b, const std::string& what) {
  EXPECT_TRUE(torch::equal(a.draws, b.draws)) << what;
  EXPECT_TRUE(torch::equal(a.log_density, b.log_density)) << what;
  EXPECT_TRUE(torch::equal(a.step_size, b.step_size)) << what;
  EXPECT_TRUE(torch::equal(a.tree_depth, b.tree_depth)) << what;
  EXPECT_TRUE(torch::equal(a.n_leapfrog, b.n_leapfrog)) << what;
  EXPECT_TRUE(torch::equal(a.divergent, b.divergent)) << what;
  EXPECT_TRUE(torch::equal(a.accept_stat, b.accept_stat)) << what;
  EXPECT_TRUE(torch::equal(a.energy, b.energy)) << what;
}

// An on_checkpoint that keeps every snapshot it is given.
std::function<void(const SamplerSnapshot&)> keep_snapshots(
    std::vector<std::shared_ptr<SamplerSnapshot>>& saved) {
  return [&saved](const SamplerSnapshot& snap) {
    saved.push_back(std::make_shared<SamplerSnapshot>(snap));
  };
}

struct Case {
  const char* name;
  torch::Dtype dtype;
  MetricKind metric;
  int max_depth;
  double wall;
  int64_t pool_group = 0;  // 0: each chain adapts alone
  bool curvature = false;  // the curvature metric and stray-chain checks in warmup
};

TEST(NutsOutOfStep, SameTransitionsAsLockStepInFewerBatchedSteps) {
  const int64_t C = 6, D = 5;
  const torch::Tensor sigma = torch::tensor({0.05, 0.3, 1.0, 2.0, 6.0}, torch::kFloat64);
  for (const Case& k :
       {Case{"float64, diagonal", torch::kFloat64, MetricKind::diag, 10, INFINITY},
        Case{"float32, dense", torch::kFloat32, MetricKind::dense, 10, INFINITY},
        Case{"max depth 3", torch::kFloat64, MetricKind::diag, 3, INFINITY},
        Case{"divergences", torch::kFloat64, MetricKind::diag, 10, 0.05},
        Case{"groups of 3, curvature metric, stray checks", torch::kFloat64, MetricKind::dense, 10,
             INFINITY, 3, true},
        Case{"groups of 2, float32", torch::kFloat32, MetricKind::diag, 10, INFINITY, 2, false}}) {
    const auto opt = torch::TensorOptions().dtype(k.dtype);
    torch::Tensor init =
        0.3 *
        torch::randn({C, D}, torch::Generator(at::detail::createCPUGenerator(11)), torch::kFloat64);
    init = (init * sigma).to(opt);
    NutsSettings s;
    s.num_warmup = 100;
    s.num_draws = 60;
    s.adapt.windows = WindowSettings{20, 15, 25};
    s.metric = k.metric;
    s.max_depth = k.max_depth;
    s.seed = 41;
    s.save_warmup = true;
    s.adapt.pool_group = k.pool_group;
    if (k.curvature) {
      s.adapt.curvature_metric = true;
      s.adapt.curvature_first = 7;
      s.adapt.metric_prior_count = D;
      s.adapt.stray_nats = 1e6;  // checked (and so a meeting point), never stray
    }
    // Segments end at checkpoints: 25, 25 and 10 draws.
    s.checkpoint_every = 25;
    s.on_checkpoint = [](const SamplerSnapshot&) {};
    const auto f = walled_gaussian(sigma.to(opt), k.wall);
    const SamplerResult lock = sample_nuts(f, init, s);
    s.out_of_step = true;
    const SamplerResult free = sample_nuts(f, init, s);
    expect_same_draws(lock, free, k.name);
    expect_same_draws(lock.warmup, free.warmup, std::string(k.name) + ", warmup");
    EXPECT_TRUE(torch::equal(lock.step_size_adapted, free.step_size_adapted)) << k.name;
    EXPECT_TRUE(torch::equal(lock.inv_metric, free.inv_metric)) << k.name;
    // In warmup the groups go out of step between the adaptation's meeting points, and the
    // lock-step run says from its trees how many steps that takes.
    if (k.max_depth > 3) {
      EXPECT_LT(free.warmup_gradient_evaluations, lock.warmup_gradient_evaluations) << k.name;
    }
    EXPECT_EQ(lock.warmup_steps_out_of_step, free.warmup_steps_out_of_step) << k.name;
    EXPECT_EQ(lock.sampling_steps_out_of_step, free.sampling_steps_out_of_step) << k.name;
    EXPECT_LT(free.warmup_steps_out_of_step, free.warmup_gradient_evaluations / C) << k.name;
    EXPECT_GT(free.warmup_steps_out_of_step, 0) << k.name;
    // Batched steps of the sampling phase: lock-step pays at least each iteration's deepest tree
    // (more where a chain's tree stops inside a doubling that another chain completes); out of
    // step exactly the largest sum of one chain's leaves per segment.
    const int64_t lock_calls = lock.log_density_calls - lock.warmup_gradient_evaluations / C;
    const int64_t free_calls = free.log_density_calls - free.warmup_gradient_evaluations / C;
    const int64_t deepest = std::get<0>(lock.n_leapfrog.max(0)).sum().item<int64_t>();
    int64_t busiest = 0;
    for (int64_t a : {0, 25, 50}) {
      const int64_t len = std::min<int64_t>(25, 60 - a);
      busiest += lock.n_leapfrog.narrow(1, a, len).sum(1).max().item<int64_t>();
    }
    EXPECT_GE(lock_calls, deepest) << k.name;
    EXPECT_EQ(free_calls, busiest) << k.name;
    EXPECT_EQ(free.sampling_steps_out_of_step, free_calls) << k.name;
    if (k.max_depth > 3) {
      EXPECT_LT(free_calls, lock_calls) << k.name;
    }
    if (std::isfinite(k.wall)) {
      EXPECT_GT(lock.divergent.sum().item<int64_t>(), 0) << k.name;
    }
    if (k.max_depth == 3) {
      EXPECT_TRUE((lock.tree_depth == 3).any().item<bool>()) << k.name;
    }
  }
}

TEST(NutsOutOfStep, ResumedFromASamplingCheckpointGivesTheUninterruptedRun) {
  const int64_t C = 3, D = 4;
  const torch::Tensor sigma = torch::tensor({0.3, 1.0, 2.0, 4.0}, torch::kFloat64);
  const torch::Tensor init =
      torch::randn({C, D}, torch::Generator(at::detail::createCPUGenerator(3)), torch::kFloat64);
  NutsSettings s;
  s.num_warmup = 60;
  s.num_draws = 50;
  s.adapt.windows = WindowSettings{15, 10, 20};
  s.seed = 5;
  s.out_of_step = true;
  s.checkpoint_every = 35;
  std::vector<std::shared_ptr<SamplerSnapshot>> saved;
  s.on_checkpoint = keep_snapshots(saved);
  const auto f = walled_gaussian(sigma, INFINITY);
  const SamplerResult full = sample_nuts(f, init, s);
  std::vector<int64_t> at;
  for (const auto& snap : saved) at.push_back(snap->iteration);
  EXPECT_EQ(at, (std::vector<int64_t>{35, 60, 70, 105}));
  for (const auto& snap : saved) {
    NutsSettings r = s;
    r.on_checkpoint = nullptr;
    r.resume_from = snap;
    const SamplerResult res = sample_nuts(f, init, r);
    expect_same_draws(res, full, "resumed at " + std::to_string(snap->iteration));
  }
}

// A stop request (NutsSettings::stop_requested, e.g. from SIGTERM): Interrupted, after a snapshot
// of the last iteration every chain has ended (lock-step: the iteration just ended; out of step:
// the start of the segment it abandons), from which a resumed run gives the uninterrupted draws.
TEST(NutsOutOfStep, AStopRequestLeavesASnapshotThatResumesExactly) {
  const int64_t C = 4, D = 3;
  const torch::Tensor sigma = torch::tensor({0.2, 1.0, 3.0}, torch::kFloat64);
  const torch::Tensor init =
      torch::randn({C, D}, torch::Generator(at::detail::createCPUGenerator(4)), torch::kFloat64);
  NutsSettings s;
  s.num_warmup = 60;
  s.num_draws = 50;
  s.adapt.windows = WindowSettings{15, 10, 20};
  s.adapt.pool_group = 2;
  s.seed = 23;
  s.save_warmup = true;
  const auto f = walled_gaussian(sigma, INFINITY);
  const SamplerResult full = sample_nuts(f, init, s);
  for (const bool out_of_step : {false, true}) {
    for (const int64_t stop_at_poll : {20, 70}) {
      const std::string what = std::string(out_of_step ? "out of step" : "lock-step") +
                               ", stop at poll " + std::to_string(stop_at_poll);
      NutsSettings r = s;
      r.out_of_step = out_of_step;
      int64_t polls = 0;
      r.stop_requested = [&polls, stop_at_poll] { return ++polls == stop_at_poll; };
      std::vector<std::shared_ptr<SamplerSnapshot>> saved;
      r.on_checkpoint = keep_snapshots(saved);
      EXPECT_THROW(sample_nuts(f, init, r), dslens::Interrupted) << what;
      ASSERT_FALSE(saved.empty()) << what;
      const auto last = saved.back();
      if (out_of_step) {
        // polled at every transition the slowest chain ends: at most one poll per iteration
        EXPECT_LE(last->iteration, stop_at_poll) << what;
      } else {
        EXPECT_EQ(last->iteration, stop_at_poll) << what;  // polled after every iteration
      }
      EXPECT_EQ(polls, stop_at_poll) << what;
      NutsSettings resumed = s;
      resumed.out_of_step = out_of_step;
      resumed.resume_from = last;
      const SamplerResult res = sample_nuts(f, init, resumed);
      expect_same_draws(res, full, what);
      expect_same_draws(res.warmup, full.warmup, what + ", warmup");
      EXPECT_TRUE(torch::equal(res.inv_metric, full.inv_metric)) << what;
    }
  }
}

// checkpoint_seconds: snapshots where the chains meet, without cutting segments (the same batched
// calls as without them); lock-step meets after every iteration.
TEST(NutsOutOfStep, TimedSnapshotsDoNotEndSegments) {
  const int64_t C = 4, D = 3;
  const torch::Tensor sigma = torch::tensor({0.2, 1.0, 3.0}, torch::kFloat64);
  const torch::Tensor init =
      torch::randn({C, D}, torch::Generator(at::detail::createCPUGenerator(6)), torch::kFloat64);
  NutsSettings s;
  s.num_warmup = 40;
  s.num_draws = 160;
  s.adapt.windows = WindowSettings{15, 10, 15};
  s.seed = 29;
  s.refresh = 5;
  const auto f = walled_gaussian(sigma, INFINITY);
  for (const bool out_of_step : {false, true}) {
    s.out_of_step = out_of_step;
    s.checkpoint_seconds = 0;
    s.on_checkpoint = nullptr;
    const SamplerResult plain = sample_nuts(f, init, s);
    std::vector<std::shared_ptr<SamplerSnapshot>> saved;
    s.checkpoint_seconds = 1e-9;  // due at every meeting point
    s.on_checkpoint = keep_snapshots(saved);
    const SamplerResult timed = sample_nuts(f, init, s);
    expect_same_draws(plain, timed, out_of_step ? "out of step" : "lock-step");
    EXPECT_EQ(plain.log_density_calls, timed.log_density_calls);
    std::vector<int64_t> at;
    for (const auto& snap : saved) at.push_back(snap->iteration);
    if (out_of_step) {
      // Segments of at most max(refresh, 50) iterations that end at warmup's meeting points: its
      // one metric window ends at 15 + 10 = 25, warmup at 40 (the last 15 are its end buffer).
      EXPECT_EQ(at, (std::vector<int64_t>{25, 40, 90, 140, 190})) << ::testing::PrintToString(at);
    } else {
      ASSERT_EQ(at.size(), 199u);
      EXPECT_EQ(at.front(), 1);
      EXPECT_EQ(at.back(), 199);
    }
    NutsSettings r = s;
    r.on_checkpoint = nullptr;
    r.resume_from = saved[saved.size() / 2];
    expect_same_draws(sample_nuts(f, init, r), plain, "resumed from a timed snapshot");
  }
}

// Progress inside the segments: reports at the iterations the lock-step sampler reports, with the
// same divergences and leapfrog steps so far (the step size in sampling; in warmup lock-step
// reports the one learnt for the next iteration, out of step the one the iteration used).
TEST(NutsOutOfStep, ReportsProgressAtTheLockStepIterations) {
  const int64_t C = 4, D = 3;
  const torch::Tensor sigma = torch::tensor({0.1, 1.0, 5.0}, torch::kFloat64);
  const torch::Tensor init =  // below the wall at q0 = 0.2
      -0.5 * sigma *
      torch::randn({C, D}, torch::Generator(at::detail::createCPUGenerator(8)), torch::kFloat64)
          .abs();
  NutsSettings s;
  s.num_warmup = 60;
  s.num_draws = 40;
  s.adapt.windows = WindowSettings{15, 10, 20};
  s.adapt.pool_group = 2;
  s.seed = 17;
  s.refresh = 7;
  std::vector<SamplerProgress> lock, free;
  const auto f = walled_gaussian(sigma, 0.2);
  s.on_progress = [&lock](const SamplerProgress& p) { lock.push_back(p); };
  sample_nuts(f, init, s);
  s.out_of_step = true;
  s.on_progress = [&free](const SamplerProgress& p) { free.push_back(p); };
  sample_nuts(f, init, s);
  ASSERT_EQ(lock.size(), free.size());
  ASSERT_EQ(lock.size(), 15u);  // every 7 iterations, and the last
  for (size_t k = 0; k < lock.size(); ++k) {
    EXPECT_EQ(lock[k].iteration, free[k].iteration) << k;
    EXPECT_EQ(lock[k].warmup, free[k].warmup) << k;
    EXPECT_EQ(lock[k].divergences, free[k].divergences) << k;
    EXPECT_DOUBLE_EQ(lock[k].mean_leapfrog, free[k].mean_leapfrog) << k;
    if (!lock[k].warmup) {
      EXPECT_DOUBLE_EQ(lock[k].mean_step_size, free[k].mean_step_size) << k;
    }
  }
  EXPECT_GT(lock.back().divergences, 0);
}

TEST(ChainRandom, WordsPerChainAreEachChainsRowOfItsIteration) {
  ChainRandom random(99, std::vector<uint64_t>{4, 8, 15, 16}, torch::kCPU);
  const std::vector<int64_t> it{0, 7, 7, 123456}, offset{0, 3, 300, 9};
  const torch::Tensor its = torch::tensor(it), offsets = torch::tensor(offset);
  const torch::Tensor host = random.bits_per_chain(its, 6, 0, offsets, 5);
  const torch::Tensor ops = random.bits_per_chain_tensor_ops(its, 6, 0, offsets, 5);
  for (int64_t c = 0; c < 4; ++c) {
    const torch::Tensor expected = random.bits(it[c], 6, 0, offset[c], 5)[c];
    EXPECT_TRUE(torch::equal(host[c], expected)) << "CPU path, chain " << c;
    EXPECT_TRUE(torch::equal(ops[c], expected)) << "tensor operations, chain " << c;
  }
  ChainRandom two(1, 0, 2, torch::kCPU);
  EXPECT_THROW(two.bits_per_chain(torch::zeros({1}, torch::kInt64), 6, 0,
                                  torch::zeros({2}, torch::kInt64), 3),
               dslens::InvalidArgument);
  EXPECT_THROW(two.bits_per_chain(torch::zeros({2}), 6, 0, torch::zeros({2}, torch::kInt64), 3),
               dslens::InvalidArgument);
}

}  // namespace nuts_out_of_step_test

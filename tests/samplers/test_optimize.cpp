// Batched MAP optimisation: Adam and L-BFGS from many starts.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <deque>
#include <set>
#include <vector>

#include "app/op_census.h"
#include "dslens/core/errors.h"
#include "dslens/samplers/optimize.h"
#include "grouped_gaussian.h"
#include "samplers/src/lbfgs_direction.h"

namespace optimize_test {

using namespace dslens::samplers;

torch::TensorOptions f64() {
  return torch::TensorOptions().dtype(torch::kFloat64);
}

struct Quadratic {
  torch::Tensor a, mode;
  LogDensityFn fn() const {
    return [a = a, m = mode](const torch::Tensor& x) {
      torch::Tensor d = x - m;
      torch::Tensor ad = d.matmul(a);
      return LogDensityValue{-0.5 * (d * ad).sum(1), -ad};
    };
  }
};

Quadratic make_quadratic(int64_t dim) {
  torch::manual_seed(12);
  torch::Tensor b = torch::randn({dim, dim}, f64()) * 0.5;
  return {b.mm(b.t()) + torch::eye(dim, f64()), torch::randn({dim}, f64()) * 2};
}

LogDensityFn rosenbrock() {
  return autograd_log_density([](const torch::Tensor& q) {
    torch::Tensor x = q.select(1, 0), y = q.select(1, 1);
    return -((1 - x).pow(2) + 100 * (y - x * x).pow(2));
  });
}

TEST(Lbfgs, FindsTheModeOfAQuadraticFromEveryStart) {
  Quadratic quad = make_quadratic(5);
  torch::Tensor starts = torch::randn({64, 5}, f64()) * 3;
  OptimizeResult r = maximize_lbfgs(quad.fn(), starts);
  EXPECT_TRUE(r.converged.all().item<bool>());
  EXPECT_LT((r.x - quad.mode).abs().max().item<double>(), 1e-5);
  EXPECT_LT(r.iterations.max().item<int64_t>(), 60);
  EXPECT_TRUE(torch::allclose(r.best_x, quad.mode, 0, 1e-5));
  EXPECT_NEAR(r.best_log_p, 0.0, 1e-10);
}

// 32 starts in [-2, 2]^2, far enough from the valley to backtrack often.
torch::Tensor rosenbrock_starts() {
  torch::manual_seed(5);
  return torch::rand({32, 2}, f64()) * 4 - 2;
}

TEST(Lbfgs, RosenbrockFromManyStarts) {
  const torch::Tensor starts = rosenbrock_starts();
  LbfgsSettings s;
  s.max_iterations = 1000;
  OptimizeResult r = maximize_lbfgs(rosenbrock(), starts, s);
  EXPECT_TRUE(r.converged.all().item<bool>()) << r.grad_norm;
  EXPECT_LT((r.x - 1.0).abs().max().item<double>(), 1e-4);
  EXPECT_NEAR(r.best_x[0].item<double>(), 1.0, 1e-5);
  EXPECT_NEAR(r.best_x[1].item<double>(), 1.0, 1e-5);
  // Starts are independent: one start alone takes the same path.
  OptimizeResult one = maximize_lbfgs(rosenbrock(), starts.narrow(0, 7, 1), s);
  EXPECT_TRUE(torch::allclose(one.x[0], r.x[7], 1e-10, 1e-12));
  EXPECT_EQ(one.iterations[0].item<int64_t>(), r.iterations[7].item<int64_t>());
}

// The batched line search tries k step lengths per call and takes the first that passes: the same
// iterates as one step length per call (Rosenbrock from its usual starts backtracks often), in
// fewer calls, for any k.
TEST(Lbfgs, BatchedLineSearchTakesTheSequentialPathInFewerCalls) {
  const torch::Tensor starts = rosenbrock_starts();
  LbfgsSettings s;
  s.max_iterations = 1000;
  OptimizeResult seq = maximize_lbfgs(rosenbrock(), starts, s);
  for (int64_t k : {2, 5, 8}) {
    SCOPED_TRACE(k);
    s.line_search_batch = k;
    OptimizeResult r = maximize_lbfgs(rosenbrock(), starts, s);
    EXPECT_TRUE(torch::allclose(r.x, seq.x, 1e-9, 1e-12)) << (r.x - seq.x).abs().max();
    EXPECT_TRUE(torch::equal(r.iterations, seq.iterations));
    EXPECT_LT(r.log_density_calls, seq.log_density_calls);
  }
  // A line search cut short by max_line_search still stops where the sequential one does.
  s.max_line_search = 3;
  s.line_search_batch = 1;
  OptimizeResult short_seq = maximize_lbfgs(rosenbrock(), starts, s);
  s.line_search_batch = 2;
  OptimizeResult short_batched = maximize_lbfgs(rosenbrock(), starts, s);
  EXPECT_TRUE(torch::allclose(short_batched.x, short_seq.x, 1e-9, 1e-12));
  EXPECT_TRUE(torch::equal(short_batched.iterations, short_seq.iterations));
}

// A convex log density whose curvature grows exponentially away from its mode: log p = -sum_i
// w_i (exp(u_i) - u_i) with u_i = x_i + 0.9 x_(i+1) (cyclic) and weights w from 1 to 1e4 (all
// elementwise, so a row's arithmetic does not depend on the batch). Far from the mode a
// quasi-Newton step built from the curvature seen so far overshoots into the exponential wall, as
// the MAP's steps do into a lens model's. Here interpolation saves a sixth of the evaluations
// (3,050 rows against 3,699); in the bench mock's MAP, 2.3 times (4.6 rows per start and iteration
// with halving in its source stage, 2.0 with it).
LogDensityFn exponential_wall(int64_t dim) {
  const torch::Tensor w = torch::logspace(0, 4, dim, 10.0, f64());
  return [w](const torch::Tensor& x) {
    const torch::Tensor u = x + 0.9 * torch::roll(x, -1, 1);
    const torch::Tensor du = w * (torch::exp(u) - 1.0);  // d(-log p)/du
    return LogDensityValue{-(w * (torch::exp(u) - u)).sum(1), -(du + 0.9 * torch::roll(du, 1, 1))};
  };
}

// Backtracking by quadratic interpolation reaches the same mode from every start in fewer
// evaluations than halving, and a start alone takes the same path as in the batch. It needs a line
// search of one step per call.
TEST(Lbfgs, InterpolatedBacktrackingNeedsFewerEvaluations) {
  const int64_t D = 8;
  torch::manual_seed(32);
  const torch::Tensor starts = torch::rand({32, D}, f64()) * 2 - 1;
  LbfgsSettings s;
  s.max_iterations = 1000;
  s.grad_tol = 1e-4;  // 1e-8 of the largest weight
  s.compact_line_search = true;
  const OptimizeResult halving = maximize_lbfgs(exponential_wall(D), starts, s);
  s.interpolate = true;
  const OptimizeResult r = maximize_lbfgs(exponential_wall(D), starts, s);
  EXPECT_TRUE(r.converged.all().item<bool>()) << r.grad_norm;
  EXPECT_TRUE(halving.converged.all().item<bool>()) << halving.grad_norm;
  EXPECT_LT(r.x.abs().max().item<double>(), 1e-2);  // the mode: u = 0
  EXPECT_LT(r.rows_evaluated, halving.rows_evaluated * 9 / 10)
      << r.rows_evaluated << " against " << halving.rows_evaluated;
  const OptimizeResult one = maximize_lbfgs(exponential_wall(D), starts.narrow(0, 11, 1), s);
  EXPECT_TRUE(torch::allclose(one.x[0], r.x[11], 1e-10, 1e-12));
  EXPECT_EQ(one.iterations[0].item<int64_t>(), r.iterations[11].item<int64_t>());
  s.line_search_batch = 2;
  EXPECT_THROW(maximize_lbfgs(exponential_wall(D), starts, s), dslens::InvalidArgument);
}

// Trial rows are start-major, so a log density that splits its rows into equal groups in order
// (one group per lens) sees every trial step under its own start's group.
TEST(Lbfgs, BatchedLineSearchKeepsEachStartInItsGroup) {
  const int64_t groups = 3, per = 4, dim = 3;
  torch::manual_seed(8);
  auto b = torch::randn({dim, dim}, f64());
  auto P = b.mm(b.t()) + torch::eye(dim, f64());
  auto scale = torch::tensor({0.5, 2.0, 8.0}, f64());
  auto mu = torch::randn({groups, dim}, f64()) * 3;
  auto target = dslens::testing::grouped_gaussian(P, scale, mu);
  auto starts = torch::randn({groups * per, dim}, f64()) * 4;
  LbfgsSettings s;
  s.line_search_batch = 6;
  OptimizeResult r = maximize_lbfgs(target, starts, s);
  EXPECT_TRUE(r.converged.all().item<bool>());
  auto want = mu.repeat_interleave(per, 0);
  EXPECT_LT((r.x - want).abs().max().item<double>(), 1e-6);
}

// Compacted backtracking evaluates only the starts still searching: the same iterates as
// evaluating every start at every backtrack (Rosenbrock's starts backtrack unevenly), from fewer
// rows, for one and for several trial steps per call.
TEST(Lbfgs, CompactLineSearchTakesTheSamePathFromFewerRows) {
  const torch::Tensor starts = rosenbrock_starts();
  for (int64_t k : {1, 3}) {
    SCOPED_TRACE(k);
    LbfgsSettings s;
    s.max_iterations = 1000;
    s.line_search_batch = k;
    OptimizeResult full = maximize_lbfgs(rosenbrock(), starts, s);
    s.compact_line_search = true;
    OptimizeResult compact = maximize_lbfgs(rosenbrock(), starts, s);
    EXPECT_TRUE(torch::allclose(compact.x, full.x, 1e-10, 1e-12))
        << (compact.x - full.x).abs().max();
    EXPECT_TRUE(torch::equal(compact.iterations, full.iterations));
    EXPECT_EQ(compact.log_density_calls, full.log_density_calls);
    EXPECT_LT(compact.rows_evaluated, full.rows_evaluated * 3 / 4)
        << compact.rows_evaluated << " of " << full.rows_evaluated;
  }
}

// The GPU's line search: the first call of an iteration evaluates every active start, later ones
// only the starts still backtracking, padded to a power of two and each given as many step lengths
// as a row budget allows. The iterates are those of one step length per call, in fewer calls than
// without compaction, from calls of a few shapes only (one CUDA graph each).
TEST(Lbfgs, PowerOfTwoCompactionWithARowBudgetTakesTheSequentialPath) {
  const torch::Tensor starts = rosenbrock_starts();  // 32
  LbfgsSettings s;
  s.max_iterations = 1000;
  const OptimizeResult seq = maximize_lbfgs(rosenbrock(), starts, s);
  s.line_search_batch = 8;
  const OptimizeResult ladder = maximize_lbfgs(rosenbrock(), starts, s);
  std::set<int64_t> shapes;
  const LogDensityFn f = rosenbrock();
  const LogDensityFn recorded = [&](const torch::Tensor& q) {
    shapes.insert(q.size(0));
    return f(q);
  };
  s.compact_line_search = true;
  s.compact_pow2 = true;
  s.line_search_rows = 64;
  const OptimizeResult r = maximize_lbfgs(recorded, starts, s);
  EXPECT_TRUE(torch::allclose(r.x, seq.x, 1e-9, 1e-12)) << (r.x - seq.x).abs().max();
  EXPECT_TRUE(torch::equal(r.iterations, seq.iterations));
  EXPECT_LT(r.log_density_calls, seq.log_density_calls);
  EXPECT_LT(r.rows_evaluated, ladder.rows_evaluated / 2)
      << r.rows_evaluated << " against " << ladder.rows_evaluated << " without compaction";
  // m pending starts (a power of two) with min(8, 64 / m) step lengths each, or the first call's
  // 32 starts x 2 and the inactive starts' compaction down to fewer.
  for (const int64_t rows : shapes) {
    bool allowed = false;
    for (int64_t m = 1; m <= 32; m *= 2) {
      allowed = allowed || rows == m * std::clamp<int64_t>(64 / m, 1, 8);
    }
    EXPECT_TRUE(allowed) << rows << " rows";
  }
  EXPECT_LE(shapes.size(), 6u);
}

// With row groups (lenses), a compacted call pads each group to the same count, so a density that
// reads a row's group from its place still sees every start under its own group's Gaussian.
TEST(Lbfgs, CompactLineSearchKeepsEachStartInItsGroup) {
  const int64_t groups = 3, per = 5, dim = 3;
  torch::manual_seed(9);
  auto b = torch::randn({dim, dim}, f64());
  auto P = b.mm(b.t()) + torch::eye(dim, f64());
  // Very different curvatures per group: their starts backtrack different numbers of times.
  auto scale = torch::tensor({0.05, 2.0, 300.0}, f64());
  auto mu = torch::randn({groups, dim}, f64()) * 3;
  auto target = dslens::testing::grouped_gaussian(P, scale, mu);
  auto starts = torch::randn({groups * per, dim}, f64()) * 4;
  LbfgsSettings s;
  s.compact_line_search = true;
  s.row_groups = groups;
  OptimizeResult r = maximize_lbfgs(target, starts, s);
  EXPECT_TRUE(r.converged.all().item<bool>()) << r.grad_norm;
  // Converged to grad_tol 1e-6 at curvatures down to 0.05 x P: within 1e-4 of the group's mean.
  EXPECT_LT((r.x - mu.repeat_interleave(per, 0)).abs().max().item<double>(), 1e-4);
  s.compact_line_search = false;
  OptimizeResult full = maximize_lbfgs(target, starts, s);
  EXPECT_TRUE(torch::allclose(r.x, full.x, 1e-10, 1e-12));
  EXPECT_LT(r.rows_evaluated, full.rows_evaluated);
  // Padded to a power of two (capped at the group's 5 starts), with a ladder of step lengths.
  s.compact_line_search = true;
  s.compact_pow2 = true;
  s.line_search_batch = 4;
  s.line_search_rows = 24;
  OptimizeResult pow2 = maximize_lbfgs(target, starts, s);
  EXPECT_TRUE(torch::allclose(pow2.x, full.x, 1e-10, 1e-12)) << (pow2.x - full.x).abs().max();
  s.line_search_batch = 1;
  s.line_search_rows = 0;
  s.compact_pow2 = false;
  // Starts that do not split into the groups are refused.
  s.compact_line_search = true;
  s.row_groups = 4;
  EXPECT_THROW(maximize_lbfgs(target, starts, s), dslens::InvalidArgument);
}

// log p = -exp(-x) has no maximum: each quasi-Newton step gains a fixed fraction of what is left,
// so without a stall rule a start runs to max_iterations. With stall_window W a start stops after
// the first iteration t whose log p is less than stall_gain above iteration t - W's, and the
// iterations before are those of a run without the rule.
TEST(Lbfgs, StallRuleStopsAStartWhoseGainOverTheWindowIsSmall) {
  const auto f =
      autograd_log_density([](const torch::Tensor& q) { return -torch::exp(-q.select(1, 0)); });
  const auto starts = torch::tensor({{0.0}, {4.0}, {-3.0}}, f64());
  LbfgsSettings s;
  s.grad_tol = 0;
  s.max_iterations = 300;
  const OptimizeResult free_run = maximize_lbfgs(f, starts, s);
  s.stall_window = 4;
  s.stall_gain = 1e-6;
  const OptimizeResult r = maximize_lbfgs(f, starts, s);
  for (int64_t i = 0; i < starts.size(0); ++i) {
    SCOPED_TRACE(i);
    const int64_t t = r.iterations[i].item<int64_t>();
    ASSERT_GE(t, 5);
    EXPECT_LT(t, free_run.iterations[i].item<int64_t>());
    // log p after k iterations of the run without the rule.
    const auto path = [&](int64_t k) {
      LbfgsSettings p = s;
      p.stall_window = 0;
      p.max_iterations = k;
      return maximize_lbfgs(f, starts.narrow(0, i, 1), p);
    };
    const auto at = path(t);
    EXPECT_TRUE(torch::allclose(at.x[0], r.x[i], 1e-12, 1e-14));
    const double lp = at.log_p.item<double>();
    EXPECT_LT(lp - path(t - 4).log_p.item<double>(), 1e-6);
    EXPECT_GE(path(t - 1).log_p.item<double>() - path(t - 5).log_p.item<double>(), 1e-6);
    EXPECT_FALSE(r.converged[i].item<bool>());
  }
  s.stall_window = -1;
  EXPECT_THROW(maximize_lbfgs(f, starts, s), dslens::InvalidArgument);
  s.stall_window = 4;
  s.stall_gain = NAN;
  EXPECT_THROW(maximize_lbfgs(f, starts, s), dslens::InvalidArgument);
}

TEST(Adam, FindsTheModeOfAQuadraticFromEveryStart) {
  Quadratic quad = make_quadratic(4);
  torch::Tensor starts = torch::randn({32, 4}, f64()) * 3;
  AdamSettings s;
  s.max_iterations = 4000;
  s.learning_rate = 0.05;
  s.grad_tol = 1e-5;
  OptimizeResult r = maximize_adam(quad.fn(), starts, s);
  EXPECT_LT((r.x - quad.mode).abs().max().item<double>(), 1e-3);
  EXPECT_TRUE(torch::allclose(r.best_x, quad.mode, 0, 1e-3));
}

TEST(Optimize, NonFiniteStartsAreReportedNotFatal) {
  Quadratic quad = make_quadratic(3);
  LogDensityFn base = quad.fn();
  LogDensityFn f = [base](const torch::Tensor& x) {
    LogDensityValue v = base(x);
    torch::Tensor bad = x.select(1, 0) > 50;
    v.log_p = torch::where(bad, torch::full_like(v.log_p, NAN), v.log_p);
    return v;
  };
  torch::Tensor starts = torch::zeros({3, 3}, f64());
  starts[1][0] = 100;
  OptimizeResult r = maximize_lbfgs(f, starts);
  EXPECT_FALSE(r.converged[1].item<bool>());
  EXPECT_TRUE(std::isinf(r.log_p[1].item<double>()));
  EXPECT_TRUE(r.converged[0].item<bool>() && r.converged[2].item<bool>());
  EXPECT_NE(r.best, 1);
  OptimizeResult ra = maximize_adam(f, starts);
  EXPECT_TRUE(std::isinf(ra.log_p[1].item<double>()));
  EXPECT_THROW(maximize_lbfgs(f, torch::full({2, 3}, 100.0, f64())), dslens::NumericalError);
  EXPECT_THROW(maximize_lbfgs(f, torch::zeros({3}, f64())), dslens::InvalidArgument);
  LbfgsSettings bad;
  bad.line_search_batch = 0;
  EXPECT_THROW(maximize_lbfgs(f, starts, bad), dslens::InvalidArgument);
}

// Progress reports: L-BFGS's best log p never decreases (every accepted step passes Armijo), the
// iterations count up, and the last report is the result.
TEST(Optimize, ProgressReportsFollowTheOptimisation) {
  const Quadratic quad = make_quadratic(6);
  const torch::Tensor starts = torch::randn({5, 6}, f64()) * 3;
  for (const bool lbfgs : {true, false}) {
    std::vector<OptimizeProgress> seen;
    auto record = [&seen](const OptimizeProgress& p) { seen.push_back(p); };
    OptimizeResult r;
    if (lbfgs) {
      LbfgsSettings s;
      s.on_progress = record;
      r = maximize_lbfgs(quad.fn(), starts, s);
    } else {
      AdamSettings s;
      s.max_iterations = 300;
      s.on_progress = record;
      r = maximize_adam(quad.fn(), starts, s);
    }
    ASSERT_GE(seen.size(), 3u) << (lbfgs ? "lbfgs" : "adam");
    for (size_t i = 1; i < seen.size(); ++i) {
      EXPECT_GE(seen[i].iteration, seen[i - 1].iteration);
      if (lbfgs) {
        EXPECT_GE(seen[i].best_log_p, seen[i - 1].best_log_p);
      }
      EXPECT_EQ(seen[i].starts, 5);
    }
    EXPECT_STREQ(seen.back().method, lbfgs ? "lbfgs" : "adam");
    EXPECT_DOUBLE_EQ(seen.back().best_log_p, r.best_log_p);
    EXPECT_EQ(seen.back().active, lbfgs ? 0 : (~r.converged).sum().item<int64_t>());
    EXPECT_EQ(seen.back().iteration, r.iterations.max().item<int64_t>());
  }
}

// A wavy surface, f = sum_i 0.05 x_i^2 + sin(2 x_i + 0.3 i) + 0.1 x_0 x_1 (minimised; log p = -f):
// many wells, so L-BFGS steps cross concave regions where s.y <= 0 and the pair must be skipped.
double wavy(const std::vector<double>& x, std::vector<double>& g) {
  double f = 0.1 * x[0] * x[1];
  g.assign(x.size(), 0.0);
  for (size_t i = 0; i < x.size(); ++i) {
    const double a = 2.0 * x[i] + 0.3 * static_cast<double>(i);
    f += 0.05 * x[i] * x[i] + std::sin(a);
    g[i] = 0.1 * x[i] + 2.0 * std::cos(a);
  }
  g[0] += 0.1 * x[1];
  g[1] += 0.1 * x[0];
  return f;
}

LogDensityFn wavy_log_density() {
  return [](const torch::Tensor& x) {
    torch::Tensor a = 2.0 * x + 0.3 * torch::arange(x.size(1), x.options());
    torch::Tensor x0 = x.select(1, 0), x1 = x.select(1, 1);
    torch::Tensor f = (0.05 * x * x + torch::sin(a)).sum(1) + 0.1 * x0 * x1;
    torch::Tensor g = 0.1 * x + 2.0 * torch::cos(a);
    g.select(1, 0).add_(0.1 * x1);
    g.select(1, 1).add_(0.1 * x0);
    return LogDensityValue{-f, -g};
  };
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Textbook L-BFGS for one start (Nocedal & Wright, Algorithm 7.4 / 7.5) with the same Armijo
// backtracking and first-step rule as maximize_lbfgs; a pair failing the curvature test is not
// stored. Returns the final point; counts the skips that happen with a full history (the case
// where dropping a stored pair instead would change the next direction).
std::vector<double> reference_lbfgs(std::vector<double> x, const LbfgsSettings& s,
                                    int64_t& iterations, int& full_history_skips) {
  const size_t dim = x.size();
  std::vector<double> g;
  double f = wavy(x, g);
  std::deque<std::array<std::vector<double>, 2>> pairs;  // (s, y), oldest first
  std::deque<double> rhos;
  double gamma = 1.0;
  iterations = 0;
  full_history_skips = 0;
  auto max_abs = [](const std::vector<double>& v) {
    double m = 0;
    for (double e : v) m = std::max(m, std::abs(e));
    return m;
  };
  bool active = max_abs(g) >= s.grad_tol;
  for (int64_t it = 0; it < s.max_iterations && active; ++it) {
    std::vector<double> q = g;
    std::vector<double> alpha(pairs.size());
    for (size_t j = pairs.size(); j-- > 0;) {
      alpha[j] = rhos[j] * dot(pairs[j][0], q);
      for (size_t k = 0; k < dim; ++k) q[k] -= alpha[j] * pairs[j][1][k];
    }
    for (double& e : q) e *= gamma;
    for (size_t j = 0; j < pairs.size(); ++j) {
      const double b = rhos[j] * dot(pairs[j][1], q);
      for (size_t k = 0; k < dim; ++k) q[k] += (alpha[j] - b) * pairs[j][0][k];
    }
    std::vector<double> d(dim);
    for (size_t k = 0; k < dim; ++k) d[k] = -q[k];
    double gd = dot(g, d);
    const bool reset = !(gd < 0) || !std::isfinite(gd);
    if (reset) {
      for (size_t k = 0; k < dim; ++k) d[k] = -g[k];
      gd = -dot(g, g);
    }
    double t = !pairs.empty() && !reset ? 1.0 : std::min(1.0 / std::max(max_abs(g), 1e-300), 1.0);
    bool moved = false;
    std::vector<double> x_new(dim), g_new;
    double f_new = f;
    for (int64_t ls = 0; ls < s.max_line_search; ++ls) {
      for (size_t k = 0; k < dim; ++k) x_new[k] = x[k] + t * d[k];
      f_new = wavy(x_new, g_new);
      if (std::isfinite(f_new) && f_new <= f + s.armijo * t * gd) {
        moved = true;
        break;
      }
      t *= s.backtrack;
    }
    ++iterations;
    if (!moved) break;
    std::vector<double> sv(dim), yv(dim);
    for (size_t k = 0; k < dim; ++k) {
      sv[k] = x_new[k] - x[k];
      yv[k] = g_new[k] - g[k];
    }
    const double sy = dot(sv, yv);
    if (sy > 1e-10 * std::sqrt(dot(sv, sv) * dot(yv, yv)) && sy > 0) {
      if (static_cast<int64_t>(pairs.size()) == s.history) {
        pairs.pop_front();
        rhos.pop_front();
      }
      pairs.push_back({sv, yv});
      rhos.push_back(1.0 / sy);
      gamma = sy / dot(yv, yv);
    } else if (static_cast<int64_t>(pairs.size()) == s.history) {
      ++full_history_skips;
    }
    x = x_new;
    f = f_new;
    g = g_new;
    active = max_abs(g) >= s.grad_tol;
  }
  return x;
}

TEST(Lbfgs, SkipsPairsFailingTheCurvatureTestAndKeepsTheOlderOnes) {
  const int64_t S = 24, D = 4;
  torch::Tensor starts =
      torch::rand({S, D}, torch::Generator(at::detail::createCPUGenerator(21)), f64()) * 8 - 4;
  LbfgsSettings s;
  s.history = 2;
  s.grad_tol = 1e-12;
  int skips = 0;
  // Compared after a few iterations, while the paths still move: near convergence a path that
  // dropped a pair would still end in the same well.
  for (int64_t budget : {4, 7, 10}) {
    s.max_iterations = budget;
    const OptimizeResult r = maximize_lbfgs(wavy_log_density(), starts, s);
    for (int64_t k = 0; k < S; ++k) {
      std::vector<double> x0(D);
      for (int64_t i = 0; i < D; ++i) x0[i] = starts[k][i].item<double>();
      int64_t iterations = 0;
      int start_skips = 0;
      const std::vector<double> x = reference_lbfgs(x0, s, iterations, start_skips);
      if (budget == 10) skips += start_skips;
      for (int64_t i = 0; i < D; ++i) {
        EXPECT_NEAR(r.x[k][i].item<double>(), x[i], 1e-7)
            << "start " << k << ", coordinate " << i << ", " << budget << " iterations";
      }
    }
  }
  // The comparison must cover the case it is about.
  EXPECT_GT(skips, 0);
}

// The best rows of each group (lens) of starts, best first; NaN never wins; keep > n keeps all.
TEST(Optimize, BestRowsPerGroupKeepsEachGroupsBestInOrder) {
  // Two groups of 4 rows; row r holds the value r in both columns.
  const auto x = torch::arange(8, f64()).unsqueeze(1).repeat({1, 2});
  const auto log_p =
      torch::tensor({1.0, 5.0, std::nan(""), 3.0, -2.0, -1.0, 7.0, -HUGE_VAL}, f64());
  const auto two = best_rows_per_group(x, log_p, 2, 2);
  ASSERT_EQ(two.sizes(), (std::vector<int64_t>{4, 2}));
  const std::vector<double> rows = {1, 3, 6, 5};
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(two[i][0].item<double>(), rows[i]) << i;
  const auto all = best_rows_per_group(x, log_p, 2, 10);
  ASSERT_EQ(all.size(0), 8);
  EXPECT_EQ(all[3][1].item<double>(), 2.0);  // the NaN row comes last in its group
  EXPECT_EQ(all[4][0].item<double>(), 6.0);
  EXPECT_THROW(best_rows_per_group(x, log_p, 3, 2), dslens::InvalidArgument);
  EXPECT_THROW(best_rows_per_group(x, log_p, 2, 0), dslens::InvalidArgument);
}

}  // namespace optimize_test

namespace optimize_test {

// Nocedal & Wright's two-loop recursion (Algorithm 7.4) for one start, in scalars; pairs newest
// first, rho 0 marking an empty slot.
std::vector<double> two_loop(std::vector<double> q, const torch::Tensor& s, const torch::Tensor& y,
                             const torch::Tensor& rho, double gamma) {
  const int64_t m = s.size(0), D = s.size(1);
  auto dot = [&](const torch::Tensor& v, const std::vector<double>& w) {
    double acc = 0;
    for (int64_t i = 0; i < D; ++i) acc += v[i].item<double>() * w[i];
    return acc;
  };
  std::vector<double> alpha(m);
  for (int64_t j = 0; j < m; ++j) {
    alpha[j] = rho[j].item<double>() * dot(s[j], q);
    for (int64_t i = 0; i < D; ++i) q[i] -= alpha[j] * y[j][i].item<double>();
  }
  for (double& v : q) v *= gamma;
  for (int64_t j = m - 1; j >= 0; --j) {
    const double b = rho[j].item<double>() * dot(y[j], q);
    for (int64_t i = 0; i < D; ++i) q[i] += (alpha[j] - b) * s[j][i].item<double>();
  }
  return q;
}

TEST(Lbfgs, InverseHessianProductMatchesTheTwoLoopRecursion) {
  const int64_t n = 5, m = 6, D = 7;
  torch::Generator gen(at::detail::createCPUGenerator(8));
  const torch::Tensor g = torch::randn({n, D}, gen, f64());
  const torch::Tensor s = torch::randn({n, m, D}, gen, f64());
  // y = B s + noise with B positive definite, so s . y > 0 as in a stored pair.
  const torch::Tensor b = torch::randn({D, D}, gen, f64());
  const torch::Tensor y =
      s.matmul(b.mm(b.t()) + torch::eye(D, f64())) + 0.1 * torch::randn({n, m, D}, gen, f64());
  torch::Tensor rho = 1.0 / (s * y).sum(2);
  ASSERT_TRUE((rho > 0).all().item<bool>());
  // Empty slots: start 1 has none, start 2 its two oldest, start 3 one in the middle.
  rho[1].zero_();
  rho[2].narrow(0, m - 2, 2).zero_();
  rho[3][2] = 0.0;
  const torch::Tensor gamma = torch::rand({n}, gen, f64()) + 0.5;
  const torch::Tensor r = lbfgs_inverse_hessian_product(g, s, y, rho, gamma);
  ASSERT_EQ(r.sizes(), g.sizes());
  for (int64_t k = 0; k < n; ++k) {
    std::vector<double> q(D);
    for (int64_t i = 0; i < D; ++i) q[i] = g[k][i].item<double>();
    const std::vector<double> want = two_loop(q, s[k], y[k], rho[k], gamma[k].item<double>());
    for (int64_t i = 0; i < D; ++i) {
      EXPECT_NEAR(r[k][i].item<double>(), want[i], 1e-10 * (1 + std::abs(want[i])))
          << "start " << k << ", coordinate " << i;
    }
  }
  // With no pairs the product is gamma g.
  EXPECT_TRUE(torch::allclose(r[1], gamma[1] * g[1], 1e-14, 0));
}

// The optimiser's own operators per iteration (the target's subtracted) do not grow with the
// history's length: on a GPU each is a launch (docs/benchmarks.md, session 41). The slot-by-slot
// two-loop recursion took about 60 more per stored pair.
TEST(Lbfgs, OperatorsPerIterationDoNotGrowWithTheHistory) {
  Quadratic quad = make_quadratic(15);
  torch::manual_seed(3);
  const torch::Tensor starts = torch::randn({64, 15}, f64()) * 3;
  int64_t target_ops = 0;
  {
    dslens::app::OpCensus census;
    (void)quad.fn()(starts);
    target_ops = census.operators();
  }
  std::vector<double> per_iteration;
  for (int64_t history : {2, 20}) {
    LbfgsSettings s;
    s.history = history;
    s.max_iterations = 25;
    s.grad_tol = 0;
    s.line_search_batch = 4;
    dslens::app::OpCensus census;
    const OptimizeResult r = maximize_lbfgs(quad.fn(), starts, s);
    const int64_t iterations = r.iterations.max().item<int64_t>();
    ASSERT_EQ(iterations, 25);
    per_iteration.push_back(
        static_cast<double>(census.operators() - r.log_density_calls * target_ops) / iterations);
  }
  EXPECT_LT(per_iteration[1], per_iteration[0] + 20)
      << "history 2: " << per_iteration[0] << ", history 20: " << per_iteration[1];
}

}  // namespace optimize_test

// Batched MAP optimisation: Adam and L-BFGS from many starts.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "dslens/core/errors.h"
#include "dslens/samplers/optimize.h"

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

TEST(Lbfgs, RosenbrockFromManyStarts) {
  torch::manual_seed(5);
  torch::Tensor starts = torch::rand({32, 2}, f64()) * 4 - 2;
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

}  // namespace optimize_test

// Damped Newton polishing: exact on quadratics, the SoftAbs climb out of positive curvature,
// Rosenbrock's curved valley, rows kept under their own group (lens) in every call.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <utility>

#include "dslens/core/errors.h"
#include "dslens/samplers/newton.h"
#include "dslens/samplers/optimize.h"
#include "grouped_gaussian.h"

namespace newton_test {

using namespace dslens::samplers;

torch::TensorOptions f64() {
  return torch::TensorOptions().dtype(torch::kFloat64);
}

// Gaussians whose precision depends on the group a row is in: rows split into B equal groups in
// order (as LensPosterior splits rows by lens); group b has precision s_b * P, with s spanning
// eight orders of magnitude, and its own mode.
TEST(Newton, QuadraticInOneStepPerGroup) {
  torch::manual_seed(4);
  const int64_t B = 3, D = 6;
  auto a = torch::randn({D, D}, f64());
  auto P = a.mm(a.t()) + 1e-2 * torch::eye(D, f64());
  auto scale = torch::tensor({1.0, 1e4, 1e-4}, f64());
  auto mu = torch::randn({B, D}, f64());
  const LogDensityFn f = dslens::testing::grouped_gaussian(P, scale, mu);
  auto starts = mu + torch::randn({B, D}, f64()) / scale.sqrt().unsqueeze(1) * 3;
  NewtonSettings s;
  s.max_rows = 12;  // several Hessian calls per iteration
  s.gain_tol = 1e-9;
  const auto r = maximize_newton(f, starts, s);
  EXPECT_LT(((r.x - mu) * scale.sqrt().unsqueeze(1)).abs().max().item<double>(), 1e-6);
  EXPECT_LT(r.log_p.abs().max().item<double>(), 1e-10);
  // The first step lands on the mode; the second finds nothing left to gain.
  EXPECT_LE(r.iterations.max().item<int64_t>(), 2);
  EXPECT_TRUE(r.converged.all().item<bool>());
}

// log p = -(x^2 - 1)^2 has positive curvature (4 - 12 x^2) near 0: an undamped Newton step on
// the Hessian jumps to the saddle at 0; with |curvature| it climbs to the mode at +-1.
TEST(Newton, ClimbsOutOfPositiveCurvatureToTheMode) {
  auto f =
      autograd_log_density([](const torch::Tensor& q) { return -(q.pow(2) - 1).pow(2).sum(1); });
  auto starts = torch::tensor({{0.1}, {-0.2}, {0.05}}, f64());
  NewtonSettings s;
  s.max_iterations = 40;
  s.gain_tol = 1e-12;
  const auto r = maximize_newton(f, starts, s);
  const auto expected = torch::tensor({{1.0}, {-1.0}, {1.0}}, f64());
  EXPECT_LT((r.x - expected).abs().max().item<double>(), 1e-6) << r.x;
}

TEST(Newton, RosenbrockValleyFromManyStartsAndRowsAreIndependent) {
  auto f = autograd_log_density([](const torch::Tensor& q) {
    auto x = q.select(1, 0), y = q.select(1, 1);
    return -((1 - x).pow(2) + 100 * (y - x * x).pow(2));
  });
  torch::manual_seed(9);
  auto starts = torch::rand({16, 2}, f64()) * 4 - 2;
  NewtonSettings s;
  s.max_iterations = 100;
  s.gain_tol = 1e-14;
  const auto r = maximize_newton(f, starts, s);
  EXPECT_LT((r.x - 1.0).abs().max().item<double>(), 1e-5) << r.x;
  // Far fewer iterations than L-BFGS needs from the same starts (about 30 to 60).
  EXPECT_LT(r.iterations.max().item<int64_t>(), 60);
  // A start alone takes the same path.
  const auto one = maximize_newton(f, starts.narrow(0, 5, 1), s);
  EXPECT_TRUE(torch::allclose(one.x[0], r.x[5], 1e-9, 1e-12));
}

// compact: the starts still moving are evaluated alone, each under its own group. Rosenbrock's
// valley with a group-dependent mode (a_b, a_b^2): a row evaluated under another group's function
// would go to the wrong mode. The compacted run must take every start along the same path as the
// full one, with fewer rows.
TEST(Newton, CompactEvaluatesOnlyMovingStartsUnderTheirOwnGroup) {
  const int64_t groups = 2, per = 8;
  int64_t rows = 0;
  const auto rosenbrock = autograd_log_density([&rows](const torch::Tensor& q) {
    rows += q.size(0);
    const auto group = torch::arange(q.size(0), torch::kInt64).div(q.size(0) / groups, "floor");
    const auto a = 1.0 + 0.5 * group.to(q.dtype());  // 1 and 1.5
    auto x = q.select(1, 0), y = q.select(1, 1);
    return -((a - x).pow(2) + 100 * (y - x * x).pow(2));
  });
  torch::manual_seed(11);
  const auto starts = torch::rand({groups * per, 2}, f64()) * 4 - 2;
  NewtonSettings s;
  s.max_iterations = 100;
  s.gain_tol = 1e-14;
  s.row_groups = groups;
  const auto full = maximize_newton(rosenbrock, starts, s);
  const int64_t full_rows = rows;
  rows = 0;
  s.compact = true;
  const auto compact = maximize_newton(rosenbrock, starts, s);
  EXPECT_TRUE(torch::allclose(compact.x, full.x, 1e-12, 1e-12)) << compact.x - full.x;
  EXPECT_TRUE(torch::equal(compact.iterations, full.iterations));
  const auto mode_x = torch::cat({torch::full({per}, 1.0, f64()), torch::full({per}, 1.5, f64())});
  EXPECT_LT((compact.x.select(1, 0) - mode_x).abs().max().item<double>(), 1e-5) << compact.x;
  // The starts stop after different numbers of iterations, so the moving ones are fewer later.
  EXPECT_GT(full.iterations.max().item<int64_t>(), full.iterations.min().item<int64_t>() + 2);
  EXPECT_LT(rows, 0.8 * static_cast<double>(full_rows)) << rows << " of " << full_rows;
  // Groups must split the starts evenly.
  s.row_groups = 3;
  EXPECT_THROW(maximize_newton(rosenbrock, starts, s), dslens::InvalidArgument);
}

// log p = -log cosh x: far out the gradient is -sign(x) and the curvature ~4 exp(-2|x|), so the
// undamped step would be ~exp(2|x|) / 4 long. With max_variance = 1 a flat direction's curvature
// counts as 1: each step is at most |gradient| = 1, and the start walks in to the mode at 0.
TEST(Newton, FlatDirectionStepsAreBoundedByMaxVariance) {
  auto f = autograd_log_density([](const torch::Tensor& q) { return -q.cosh().log().sum(1); });
  NewtonSettings s;
  s.max_variance = 1.0;
  s.max_iterations = 1;
  const auto one = maximize_newton(f, torch::tensor({{12.0}}, f64()), s);
  EXPECT_LT(one.x.item<double>(), 12.0);
  EXPECT_GE(one.x.item<double>(), 11.0 - 1e-9);
  s.max_iterations = 40;
  s.gain_tol = 1e-12;
  const auto all = maximize_newton(f, torch::tensor({{12.0}, {-7.0}}, f64()), s);
  EXPECT_LT(all.x.abs().max().item<double>(), 1e-5) << all.x;
  EXPECT_TRUE(all.converged.all().item<bool>());
}

// A Hessian block known in closed form (a pixel grid's, in the fit) is not differenced: on a
// Gaussian whose last four of six coordinates form the block, Newton takes the same steps to the
// mode with a third of the Hessian's gradient rows (2 stepped coordinates of 6).
TEST(Newton, AKnownHessianBlockIsNotDifferenced) {
  torch::manual_seed(7);
  const int64_t B = 3, D = 6, first = 2, K = 4;
  auto a = torch::randn({D, D}, f64());
  auto P = a.mm(a.t()) + 0.5 * torch::eye(D, f64());
  auto mu = torch::randn({B, D}, f64());
  const LogDensityFn gaussian = dslens::testing::grouped_gaussian(P, torch::ones({B}, f64()), mu);
  int64_t hessian_rows = 0;
  // Calls of rows in multiples of 2B are the Hessian's (B starts, +-h per coordinate); the
  // first call has B rows and the ladder's 7B.
  const LogDensityFn counted = [&](const torch::Tensor& q) {
    if (q.size(0) % (2 * B) == 0) hessian_rows += q.size(0);
    return gaussian(q);
  };
  const auto starts = mu + torch::randn({B, D}, f64());
  const auto run = [&](bool with_block) {
    hessian_rows = 0;
    NewtonSettings s;
    s.gain_tol = 1e-9;
    if (with_block) {
      s.hessian_block = [&](const torch::Tensor& x) {
        const auto block = -P.slice(0, first, first + K).slice(1, first, first + K);
        return HessianBlock{first, block.unsqueeze(0).expand({x.size(0), K, K}).clone()};
      };
    }
    const auto r = maximize_newton(counted, starts, s);
    EXPECT_LT((r.x - mu).abs().max().item<double>(), 1e-6) << with_block;
    EXPECT_TRUE(r.converged.all().item<bool>()) << with_block;
    return std::pair{r.iterations.max().item<int64_t>(), hessian_rows};
  };
  const auto [iterations_differenced, rows_differenced] = run(false);
  const auto [iterations_known, rows_known] = run(true);
  EXPECT_EQ(iterations_known, iterations_differenced);
  EXPECT_GT(rows_known, 0);
  EXPECT_EQ(rows_known * D, rows_differenced * (D - K));
}

// log p = -(x0 - x1)^2 / 2 - x2^2 / 2 + 3 x1 rises without end along the ridge x0 = x1 (as a pixel
// grid's strength does in whitened pixels). Free, Newton walks up it and never converges; with x1
// held, every start converges to the maximum given its x1 (x0 = x1, x2 = 0) and x1 stays put.
TEST(Newton, HeldCoordinatesStayAndTheOthersReachTheirConditionalMaximum) {
  auto f = autograd_log_density([](const torch::Tensor& q) {
    const auto x0 = q.select(1, 0), x1 = q.select(1, 1), x2 = q.select(1, 2);
    return -0.5 * (x0 - x1).pow(2) - 0.5 * x2.pow(2) + 3.0 * x1;
  });
  const auto starts = torch::tensor({{0.0, 0.5, 1.0}, {2.0, -1.0, -0.3}}, f64());
  NewtonSettings s;
  s.max_iterations = 20;
  s.max_variance = 1.0;  // as the MAP's polish
  s.gain_tol = 1e-10;
  const auto free = maximize_newton(f, starts, s);
  EXPECT_FALSE(free.converged.any().item<bool>());
  EXPECT_GT((free.x.select(1, 1) - starts.select(1, 1)).min().item<double>(), 1.0);
  s.held_coordinates = {1};
  const auto held = maximize_newton(f, starts, s);
  EXPECT_TRUE(held.converged.all().item<bool>());
  EXPECT_TRUE(torch::equal(held.x.select(1, 1), starts.select(1, 1)));
  EXPECT_LT((held.x.select(1, 0) - starts.select(1, 1)).abs().max().item<double>(), 1e-6);
  EXPECT_LT(held.x.select(1, 2).abs().max().item<double>(), 1e-6);
  s.held_coordinates = {3};
  EXPECT_THROW(maximize_newton(f, starts, s), dslens::InvalidArgument);
  s.held_coordinates = {0, 0};
  EXPECT_THROW(maximize_newton(f, starts, s), dslens::InvalidArgument);
  s.held_coordinates = {0, 1, 2};
  EXPECT_THROW(maximize_newton(f, starts, s), dslens::InvalidArgument);
}

TEST(Newton, RefusesBadSettingsAndStarts) {
  auto f = autograd_log_density([](const torch::Tensor& q) { return -q.pow(2).sum(1); });
  NewtonSettings s;
  s.max_iterations = 0;
  EXPECT_THROW(maximize_newton(f, torch::zeros({2, 2}, f64()), s), dslens::InvalidArgument);
  s = NewtonSettings{};
  s.max_variance = 0;
  EXPECT_THROW(maximize_newton(f, torch::zeros({2, 2}, f64()), s), dslens::InvalidArgument);
  s = NewtonSettings{};
  s.relative_step = -1;
  EXPECT_THROW(maximize_newton(f, torch::zeros({2, 2}, f64()), s), dslens::InvalidArgument);
  EXPECT_THROW(maximize_newton(f, torch::zeros({2}, f64())), dslens::InvalidArgument);
  auto nowhere = autograd_log_density(
      [](const torch::Tensor& q) { return torch::full({q.size(0)}, NAN, q.options()) + q.sum(1); });
  EXPECT_THROW(maximize_newton(nowhere, torch::zeros({2, 2}, f64())), dslens::NumericalError);
}

}  // namespace newton_test

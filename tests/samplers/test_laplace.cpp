// The Laplace approximation: Hessians by gradient differences against closed forms, the floor for
// non-concave directions, and the point-major row order a lens-batched log density relies on.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/samplers/laplace.h"
#include "grouped_gaussian.h"

namespace laplace_test {

using dslens::samplers::autograd_log_density;
using dslens::samplers::laplace_approximation;
using dslens::samplers::LaplaceSettings;
using dslens::samplers::LogDensityFn;
using dslens::samplers::LogDensityValue;
using dslens::samplers::non_concave_directions;
using dslens::samplers::seed_modes;

torch::TensorOptions f64() {
  return torch::TensorOptions().dtype(torch::kFloat64);
}

double max_rel(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).abs() / b.abs().clamp_min(1e-300)).max().item<double>();
}

// Gaussians whose precision depends on which point a row belongs to: rows are split into B equal
// groups in order (as LensPosterior splits rows by lens), group b has precision P_b = s_b * P.
TEST(Laplace, CorrelatedGaussianPerPointPrecisionInPointMajorOrder) {
  torch::manual_seed(3);
  const int64_t B = 3, D = 5;
  auto a = torch::randn({D, D}, f64());
  auto P = a.mm(a.t()) + 0.5 * torch::eye(D, f64());
  auto scale = torch::tensor({1.0, 1e4, 1e-3}, f64());
  auto mu = torch::randn({B, D}, f64());
  const LogDensityFn f = dslens::testing::grouped_gaussian(P, scale, mu);
  LaplaceSettings s;
  s.max_rows = 8;  // several calls per pass: k = 1 coordinate per call
  auto lap = laplace_approximation(f, mu, s);
  for (int64_t b = 0; b < B; ++b) {
    auto cov = torch::linalg_inv(P * scale[b]);
    EXPECT_LT(max_rel(-lap.hessian[b], P * scale[b]), 1e-8) << "point " << b;
    EXPECT_LT(max_rel(lap.covariance[b], cov), 1e-7) << "point " << b;
    EXPECT_LT(max_rel(lap.variance[b], cov.diagonal()), 1e-7) << "point " << b;
  }
  EXPECT_EQ(lap.non_concave.sum().item<int64_t>(), 0);
  EXPECT_EQ(lap.log_density_calls, 2 * D);
}

// log p = -sum x^4 / 4 - sum_i c_i x_i^2 / 2 has Hessian -diag(3 x^2 + c) anywhere; with c spread
// over eight orders of magnitude the per-coordinate steps must keep every entry accurate.
TEST(Laplace, QuarticHessianAwayFromTheModeWithSpreadScales) {
  auto c = torch::tensor({1e-4, 1.0, 1e4}, f64());
  auto f = autograd_log_density(
      [&](const torch::Tensor& q) { return -(q.pow(4) / 4).sum(1) - (c * q * q / 2).sum(1); });
  auto x = torch::tensor({{0.3, -1.2, 0.01}}, f64());
  LaplaceSettings s;
  s.relative_step = 1e-3;  // the error of central differences of x^3 is h^2: keep h << width
  auto lap = laplace_approximation(f, x, s);
  auto expected = -torch::diag(3 * x[0] * x[0] + c);
  EXPECT_LT(((lap.hessian[0] - expected).abs() / expected.diagonal().abs().unsqueeze(0))
                .max()
                .item<double>(),
            1e-4);
}

// float32 gradients: the second pass's steps (a tenth of each width) keep the relative error of
// the variances at the percent level, enough for a starting metric.
TEST(Laplace, Float32WideAndNarrowScales) {
  auto sd = torch::tensor({1e-4, 1e-2, 1.0, 30.0});
  auto f = autograd_log_density([&](const torch::Tensor& q) {
    auto z = q / sd.to(q.options());
    return -0.5 * (z * z).sum(1) + 1e3;  // a large constant, as a likelihood of many pixels has
  });
  auto x = (0.5 * sd).unsqueeze(0);  // near the mode, where the gradient is small
  auto lap = laplace_approximation(f, x);
  EXPECT_LT(max_rel(lap.variance[0].sqrt(), sd.to(torch::kFloat64)), 1e-2)
      << lap.variance[0].sqrt();
}

// A saddle: the non-concave direction is counted and keeps its curvature's scale (|lambda|); a
// flat one is floored at 1 / max_variance.
TEST(Laplace, NonConcaveDirectionIsReflectedAndFlatOneCapped) {
  auto f = autograd_log_density([](const torch::Tensor& q) {
    return 0.5 * q.select(1, 0).pow(2) - 2.0 * q.select(1, 1).pow(2) + 0 * q.select(1, 2);
  });
  LaplaceSettings s;
  s.max_variance = 9.0;
  auto lap = laplace_approximation(f, torch::zeros({1, 3}, f64()), s);
  EXPECT_EQ(lap.non_concave[0].item<int64_t>(), 2);  // the saddle and the flat direction
  EXPECT_NEAR(lap.variance[0][0].item<double>(), 1.0, 1e-8);
  EXPECT_NEAR(lap.variance[0][1].item<double>(), 0.25, 1e-8);
  EXPECT_NEAR(lap.variance[0][2].item<double>(), 9.0, 1e-8);
  EXPECT_LT(lap.covariance[0].triu(1).abs().max().item<double>(), 1e-12);
}

// The non-concave directions name their coordinates: a saddle rotated 0.3 rad between
// coordinates 1 and 2 is 91 % coordinate 2 (cos^2 0.3) and curves up by 3; the second optimum is
// concave; and a Hessian of the wrong shape is an error.
TEST(Laplace, NonConcaveDirectionsNameTheCoordinateThatCarriesThem) {
  const double c = std::cos(0.3), s = std::sin(0.3);
  const auto R = torch::tensor({1.0, 0.0, 0.0, 0.0, c, -s, 0.0, s, c}, f64()).reshape({3, 3});
  const auto saddle = R.matmul(torch::diag(torch::tensor({-1.0, -2.0, 3.0}, f64()))).matmul(R.t());
  const auto H = torch::stack({saddle, -torch::eye(3, f64())});
  const auto d = non_concave_directions(H);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].optimum, 0);
  EXPECT_EQ(d[0].coordinate, 2);
  EXPECT_NEAR(d[0].share, c * c, 1e-12);
  EXPECT_NEAR(d[0].curvature, 3.0, 1e-12);
  EXPECT_TRUE(non_concave_directions(H.narrow(0, 1, 1)).empty());
  EXPECT_THROW(non_concave_directions(saddle), dslens::InvalidArgument);
}

TEST(Laplace, BadInputsAreClearErrors) {
  auto f = autograd_log_density([](const torch::Tensor& q) { return -(q * q).sum(1); });
  EXPECT_THROW(laplace_approximation(f, torch::zeros({3}, f64())), dslens::InvalidArgument);
  LaplaceSettings bad;
  bad.relative_step = -1;
  EXPECT_THROW(laplace_approximation(f, torch::zeros({1, 2}, f64()), bad), dslens::InvalidArgument);
  auto nan_grad = autograd_log_density([](const torch::Tensor& q) { return q.sqrt().sum(1); });
  EXPECT_THROW(laplace_approximation(nan_grad, torch::zeros({1, 2}, f64())),
               dslens::NumericalError);
}

// A block of the Hessian known in closed form is copied in and not differenced: log p =
// -x^T P x / 2 - sum_{j outside} x_j^4 / 4 + sum_{i inside, j outside} C_ij x_i x_j^2 is
// quadratic in the block (coordinates 2 to 4 of 6; its block Hessian is -P there), coupled to the
// others, and quartic in them. The Hessian with the block against autograd's, with one coordinate
// per call: 3 stepped coordinates per pass instead of 6.
TEST(Laplace, AKnownBlockIsCopiedInAndOnlyTheOtherCoordinatesAreStepped) {
  using dslens::samplers::hessian_by_differences;
  using dslens::samplers::HessianBlock;
  torch::manual_seed(5);
  const int64_t B = 2, D = 6, first = 2, K = 3;
  auto a = torch::randn({D, D}, f64());
  const auto P = a.mm(a.t()) + torch::eye(D, f64());
  auto inside = torch::zeros({D}, f64());
  inside.narrow(0, first, K).fill_(1.0);
  const auto outside = 1.0 - inside;
  const auto C = 0.3 * torch::randn({D, D}, f64()) * inside.unsqueeze(1) * outside.unsqueeze(0);
  const auto log_p = [&](const torch::Tensor& q) {
    return -0.5 * (q.matmul(P) * q).sum(1) - (outside * q.pow(4) / 4).sum(1) +
           (q.matmul(C) * q * q).sum(1);
  };
  const auto f = autograd_log_density(log_p);
  const auto x = 0.7 * torch::randn({B, D}, f64());
  // The exact Hessian by autograd, row by row.
  auto exact = torch::empty({B, D, D}, f64());
  for (int64_t b = 0; b < B; ++b) {
    auto q = x.narrow(0, b, 1).clone().requires_grad_(true);
    const auto g = torch::autograd::grad({log_p(q).sum()}, {q}, {}, true, true)[0];
    for (int64_t j = 0; j < D; ++j)
      exact[b][j].copy_(torch::autograd::grad({g[0][j]}, {q}, {}, true)[0][0]);
  }
  const HessianBlock block{first, -P.narrow(0, first, K).narrow(1, first, K).expand({B, K, K})};
  const auto steps = torch::full({B, D}, 1e-4, f64());
  int64_t calls = 0;
  const auto H = hessian_by_differences(f, x, steps, 4, calls, block);
  EXPECT_EQ(calls, D - K);  // 4 rows per call: one coordinate, stepped both ways, per point
  EXPECT_LT((H - exact).abs().max().item<double>(), 1e-6 * exact.abs().max().item<double>());
  // A wrong block changes the block and nothing else.
  const auto wrong =
      hessian_by_differences(f, x, steps, 4, calls, {first, torch::zeros({B, K, K}, f64())});
  auto off = torch::ones({D, D}, torch::kBool);
  off.narrow(0, first, K).narrow(1, first, K).fill_(false);
  EXPECT_TRUE(torch::equal(wrong.masked_select(off.expand({B, D, D})),
                           H.masked_select(off.expand({B, D, D}))));
  EXPECT_GT((wrong - H).abs().max().item<double>(), 0.5);
  // The Laplace approximation with the block: both passes step 3 coordinates, and its covariance
  // is the one without the block's.
  LaplaceSettings s;
  s.max_rows = 4;
  const auto with_block =
      laplace_approximation(f, x, s, [&](const torch::Tensor& at) -> HessianBlock {
        EXPECT_TRUE(torch::equal(at, x));
        return block;
      });
  const auto without = laplace_approximation(f, x, s);
  EXPECT_EQ(with_block.log_density_calls, 2 * (D - K));
  EXPECT_EQ(without.log_density_calls, 2 * D);
  EXPECT_LT((with_block.covariance - without.covariance).abs().max().item<double>(),
            1e-6 * without.covariance.abs().max().item<double>());
  // A block that does not fit is a clear error.
  EXPECT_THROW(
      hessian_by_differences(f, x, steps, 4, calls, {first, torch::zeros({B, K, K + 1}, f64())}),
      dslens::InvalidArgument);
  EXPECT_THROW(
      hessian_by_differences(f, x, steps, 4, calls, {D - 2, torch::zeros({B, K, K}, f64())}),
      dslens::InvalidArgument);
}

// At points away from any mode: the local curvature of log p = -sum x^4 / 4 - sum c x^2 / 2 is
// diag(3 x^2 + c), and each group of consecutive points gets the mean of its members' inverses;
// on a grouped Gaussian every point of a group gets that group's covariance (rows point-major, as
// a lens-batched log density reads them).
TEST(Laplace, CurvatureCovarianceAveragesTheLocalCurvatureOfEachGroup) {
  auto c = torch::tensor({1e-2, 1.0, 1e2}, f64());
  auto quartic = autograd_log_density(
      [&](const torch::Tensor& q) { return -(q.pow(4) / 4).sum(1) - (c * q * q / 2).sum(1); });
  auto q =
      torch::tensor({{0.5, -1.0, 0.1}, {2.0, 0.3, -0.2}, {-1.0, 1.5, 0.0}, {0.0, 0.0, 0.3}}, f64());
  auto curvature = 3 * q * q + c;  // [4, 3]
  LaplaceSettings s;
  s.relative_step = 1e-4;  // the differences of x^3 err by h^2, 1e-4 of c = 1e-2 at x = 0
  int64_t calls = 0;
  torch::Tensor flat;
  auto cov =
      dslens::samplers::curvature_covariance(quartic, q, curvature.rsqrt(), 2, s, calls, &flat);
  ASSERT_EQ(cov.sizes(), (std::vector<int64_t>{4, 3, 3}));
  for (int64_t g = 0; g < 2; ++g) {
    auto expected = (1.0 / curvature.narrow(0, 2 * g, 2)).mean(0);
    for (int64_t k = 2 * g; k < 2 * g + 2; ++k) {
      EXPECT_LT(max_rel(cov[k].diagonal(), expected), 1e-3) << "point " << k;
      EXPECT_LT(cov[k].triu(1).abs().max().item<double>(), 1e-8) << "point " << k;
    }
  }
  EXPECT_EQ(flat.sum().item<int64_t>(), 0);
  EXPECT_EQ(calls, 1);  // 4 points x 6 rows in one call of at most 512

  torch::manual_seed(5);
  const int64_t D = 4;
  auto a = torch::randn({D, D}, f64());
  auto P = a.mm(a.t()) + 0.5 * torch::eye(D, f64());
  auto scale = torch::tensor({1.0, 1e3}, f64());
  auto mu = torch::randn({2, D}, f64());
  const LogDensityFn gauss = dslens::testing::grouped_gaussian(P, scale, mu);
  auto points = torch::randn({6, D}, f64());  // 3 chains per group, anywhere
  auto widths = torch::full({6, D}, 0.03, f64());
  auto per_group = dslens::samplers::curvature_covariance(gauss, points, widths, 3, s, calls);
  for (int64_t k = 0; k < 6; ++k)
    EXPECT_LT(max_rel(per_group[k], torch::linalg_inv(P * scale[k / 3])), 1e-6) << "point " << k;
  EXPECT_THROW(dslens::samplers::curvature_covariance(gauss, points, widths, 4, s, calls),
               dslens::InvalidArgument);
  EXPECT_THROW(
      dslens::samplers::curvature_covariance(gauss, points, widths.narrow(1, 0, 2), 3, s, calls),
      dslens::InvalidArgument);
}

// Chains go to the modes holding a real share of the mass, heaviest first, per group: a mode
// higher in log p but narrower can rank below a lower, wider one, and a mode far below gets none.
TEST(Laplace, SeedModesRoundRobinOverTheHeavyModesOfEachGroup) {
  const double nan = std::nan("");
  // Group 0: modes at log mass 0, -2, -50 and an unusable one; group 1: -1 and +3 (mode 1 is
  // the heaviest), then two far below.
  const auto mass =
      torch::tensor({{0.0, -2.0, -50.0, nan}, {-1.0, 3.0, -40.0, -60.0}}, torch::kFloat64);
  EXPECT_EQ(seed_modes(mass, 4, 4.6), (std::vector<int64_t>{0, 1, 0, 1, 5, 4, 5, 4}));
  // Tighter: only the heaviest of each group.
  EXPECT_EQ(seed_modes(mass, 3, 1.0), (std::vector<int64_t>{0, 0, 0, 5, 5, 5}));
  // More chains than modes within reach, and a group with no finite mass (its mode 0).
  const auto none = torch::tensor({{nan, -HUGE_VAL}}, torch::kFloat64);
  EXPECT_EQ(seed_modes(none, 2, 4.6), (std::vector<int64_t>{0, 0}));
  EXPECT_THROW(seed_modes(torch::zeros({3}), 2, 4.6), dslens::InvalidArgument);
  EXPECT_THROW(seed_modes(mass, 0, 4.6), dslens::InvalidArgument);
  // With log p: group 0's mode 2 (far below in mass) is within 10 nats of the highest log p, and
  // joins the heavy ones after them (mass order); group 1's mode 3 is 12 nats below its highest
  // log p and stays out; an unusable mass stays out whatever its height.
  const auto log_p =
      torch::tensor({{5.0, 1.0, -4.0, 9.0}, {0.0, 2.0, -7.0, -10.0}}, torch::kFloat64);
  EXPECT_EQ(seed_modes(mass, 4, 4.6, log_p, 10.0), (std::vector<int64_t>{0, 1, 2, 0, 5, 4, 6, 5}));
  EXPECT_EQ(seed_modes(mass, 4, 4.6, log_p, 0.0), (std::vector<int64_t>{0, 1, 0, 1, 5, 4, 5, 4}));
  EXPECT_THROW(seed_modes(mass, 4, 4.6, log_p.narrow(1, 0, 3), 10.0), dslens::InvalidArgument);
}

}  // namespace laplace_test

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dslens/core/errors.h"
#include "dslens/core/priors.h"

using dslens::Bijection;
using dslens::Prior;

namespace {

// Trapezoid integral of exp(log_prob) over [a, b].
double integrate_density(const Prior& p, double a, double b, int n = 200001) {
  auto x = torch::linspace(a, b, n, torch::kFloat64);
  auto f = torch::exp(p.log_prob(x));
  return torch::trapezoid(f, x).item<double>();
}

}  // namespace

TEST(Priors, DensitiesAreNormalised) {
  EXPECT_NEAR(integrate_density(Prior::uniform(-1, 3), -2, 4), 1.0, 1e-4);
  EXPECT_NEAR(integrate_density(Prior::normal(0.3, 0.7), -8, 8), 1.0, 1e-8);
  EXPECT_NEAR(integrate_density(Prior::lognormal(0.1, 0.5), 1e-9, 30), 1.0, 1e-6);
  EXPECT_NEAR(integrate_density(Prior::truncated_normal(0.5, 1.0, 0.0, 1.2), -0.5, 2.0), 1.0, 1e-4);
}

TEST(Priors, NormalMatchesClosedForm) {
  auto x = torch::tensor({-1.0, 0.0, 2.5}, torch::kFloat64);
  auto lp = Prior::normal(1.0, 2.0).log_prob(x);
  for (int i = 0; i < 3; ++i) {
    const double v = x[i].item<double>();
    const double expected =
        -0.5 * std::pow((v - 1.0) / 2.0, 2) - std::log(2.0 * std::sqrt(2 * M_PI));
    EXPECT_NEAR(lp[i].item<double>(), expected, 1e-14);
  }
  EXPECT_TRUE(std::isinf(Prior::uniform(0, 1).log_prob(torch::tensor({1.5}))[0].item<double>()));
  EXPECT_TRUE(std::isinf(Prior::lognormal(0, 1).log_prob(torch::tensor({-1.0}))[0].item<double>()));
}

TEST(Bijections, RoundTripAndJacobianMatchAutograd) {
  for (const auto& b :
       {Bijection::identity(), Bijection::lower_bounded(0.2), Bijection::interval(-1.0, 3.0)}) {
    // u = +-3 is 5 hinge widths beyond the interval's bounds (t = -0.25, 1.25); further out the
    // soft clip's slope falls below 1e-2 and autograd's difference of two sigmoids loses digits.
    auto u = torch::linspace(-3, 3, 25, torch::kFloat64).requires_grad_(true);
    auto x = b.forward(u);
    auto back = b.inverse(x.detach());
    EXPECT_LT((back - u.detach()).abs().max().item<double>(), 1e-9) << b.describe();
    auto grad = torch::autograd::grad({x.sum()}, {u})[0];
    auto ladj = b.log_abs_det_jacobian(u.detach());
    EXPECT_LT((ladj - torch::log(grad.abs())).abs().max().item<double>(), 1e-10) << b.describe();
  }
  // The interval's soft clip has slope (upper - lower) / 4 (here 1) at the middle: within 1e-3
  // over the middle 30 % (u in [-0.6, 0.6]), 5 % over the middle 70 % (u in [-1.4, 1.4]), where
  // the logit's falls to 51 %. It reaches the bounds only in the limit: 10 hinge widths beyond
  // them (u = +-4) x is 4 h softplus(-10) = 9.1e-6 inside.
  const auto clip = Bijection::interval(-1.0, 3.0);
  const auto slope = [&](double a, double b) {
    return torch::exp(clip.log_abs_det_jacobian(torch::linspace(a, b, 33, torch::kFloat64)));
  };
  EXPECT_LT((slope(-0.6, 0.6) - 1.0).abs().max().item<double>(), 1e-3);
  EXPECT_LT((slope(-1.4, 1.4) - 1.0).abs().max().item<double>(), 0.05);
  EXPECT_NEAR(clip.forward(torch::zeros({1}, torch::kFloat64)).item<double>(), 1.0, 1e-12);
  const auto ends = clip.forward(torch::tensor({-4.0, 4.0}, torch::kFloat64));
  EXPECT_NEAR(ends[0].item<double>(), -1.0 + 4 * 0.05 * std::log1p(std::exp(-10.0)), 1e-9);
  EXPECT_NEAR(ends[1].item<double>(), 3.0 - 4 * 0.05 * std::log1p(std::exp(-10.0)), 1e-9);
  EXPECT_GT(ends[0].item<double>(), -1.0);
  EXPECT_LT(ends[1].item<double>(), 3.0);
  // Stable far in the tails where a naive log(sigmoid) would underflow.
  auto far = Bijection::interval(0, 1).log_abs_det_jacobian(
      torch::tensor({-800.0, 800.0}, torch::kFloat64));
  EXPECT_TRUE(torch::isfinite(far).all().item<bool>());
}

TEST(Priors, SamplesFollowTheDensity) {
  torch::Generator gen = at::detail::createCPUGenerator(7);
  const auto p = Prior::truncated_normal(0.5, 1.0, 0.0, 1.2);
  auto s = p.sample({200000}, torch::kFloat64, gen);
  EXPECT_GE(s.min().item<double>(), 0.0);
  EXPECT_LE(s.max().item<double>(), 1.2);
  // Mean by quadrature of x p(x).
  auto x = torch::linspace(0.0, 1.2, 20001, torch::kFloat64);
  const double mean = torch::trapezoid(x * torch::exp(p.log_prob(x)), x).item<double>();
  const double se = s.std().item<double>() / std::sqrt(200000.0);
  EXPECT_NEAR(s.mean().item<double>(), mean, 4 * se);
  auto ln = Prior::lognormal(0.2, 0.3).sample({200000}, torch::kFloat64, gen);
  EXPECT_NEAR(torch::log(ln).mean().item<double>(), 0.2, 4 * 0.3 / std::sqrt(200000.0));
  // Half of the mass lies below the median.
  auto below = torch::linspace(0.0, p.median(), 20001, torch::kFloat64);
  EXPECT_NEAR(torch::trapezoid(torch::exp(p.log_prob(below)), below).item<double>(), 0.5, 1e-6);
}

TEST(Priors, ParseErrorsNameThePath) {
  auto j = dslens::json::parse(R"({"theta_E": {"prior": "uniform", "lower": 2, "upper": 1}})");
  auto node = dslens::ConfigNode::root(j).at("theta_E");
  try {
    Prior::parse(node);
    FAIL();
  } catch (const dslens::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/theta_E/upper"), std::string::npos) << e.what();
  }
  auto j2 = dslens::json::parse(R"({"g": {"prior": "cauchy"}})");
  EXPECT_THROW(Prior::parse(dslens::ConfigNode::root(j2).at("g")), dslens::ConfigError);
  auto j3 =
      dslens::json::parse(R"({"g": {"prior": "normal", "mean": 0, "sigma": 1, "init": 0.1}})");
  EXPECT_EQ(Prior::parse(dslens::ConfigNode::root(j3).at("g")).kind(), Prior::Kind::kNormal);
}

TEST(PriorGroup, HoldsPriorsOfOneKind) {
  EXPECT_THROW(dslens::PriorGroup({}), dslens::InvalidArgument);
  EXPECT_THROW(dslens::PriorGroup({dslens::Prior::uniform(0, 1), dslens::Prior::normal(0, 1)}),
               dslens::InvalidArgument);
  const dslens::PriorGroup g({dslens::Prior::normal(0, 1), dslens::Prior::normal(1, 2)});
  EXPECT_EQ(g.size(), 2);
  // log N(0 | 0, 1) + log N(1 | 1, 2), identity bijection.
  const auto r = g.forward(torch::tensor({{0.0, 1.0}}, torch::kFloat64));
  EXPECT_NEAR(r.log_density.item<double>(), -2 * 0.91893853320467274178 - std::log(2.0), 1e-14);
}

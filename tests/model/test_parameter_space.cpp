#include <gtest/gtest.h>
#include <torch/torch.h>

#include "app/op_census.h"
#include "dslens/core/errors.h"
#include "dslens/model/parameter_space.h"

using dslens::Prior;
using dslens::model::ParameterSpace;

namespace {

ParameterSpace example_space() {
  ParameterSpace s;
  s.add_free("theta_E", Prior::uniform(0.5, 2.0), 1.2);
  s.add_fixed("center_x", 0.0);
  s.add_free("gamma", Prior::truncated_normal(2.0, 0.2, 1.5, 2.5));
  s.add_free("R_sersic", Prior::lognormal(-1.0, 0.5));
  s.add_free("gamma1", Prior::normal(0.0, 0.05));
  s.add_standard_normal_block("z", 3);
  return s;
}

}  // namespace

TEST(ParameterSpace, PackUnpackRoundTrip) {
  auto s = example_space();
  EXPECT_EQ(s.dim(), 7);
  EXPECT_EQ(s.coordinate_names()[4], "z[0]");
  torch::Generator gen = at::detail::createCPUGenerator(3);
  auto u = s.sample_prior(5, torch::kFloat64, gen);
  auto un = s.unpack(u);
  EXPECT_TRUE(torch::allclose(s.pack(un.values), u, 1e-10, 1e-10));
  EXPECT_TRUE(torch::all(un.values.at("theta_E") > 0.5).item<bool>());
  EXPECT_TRUE(torch::all(un.values.at("center_x") == 0).item<bool>());
  EXPECT_EQ(un.values.at("z").sizes(), (std::vector<int64_t>{5, 3}));
  auto init = s.unpack(s.initial(2, torch::kFloat64));
  EXPECT_NEAR(init.values.at("theta_E")[1].item<double>(), 1.2, 1e-12);
}

// The density of u must integrate to one along each coordinate when the others are held:
// check the one-dimensional marginal of theta_E's coordinate by quadrature in u.
TEST(ParameterSpace, LogPriorIncludesJacobian) {
  ParameterSpace s;
  s.add_free("q", Prior::uniform(0.2, 1.0));
  auto u = torch::linspace(-40, 40, 400001, torch::kFloat64).reshape({-1, 1});
  auto lp = s.unpack(u).log_prior;
  EXPECT_NEAR(torch::trapezoid(torch::exp(lp), u.reshape({-1})).item<double>(), 1.0, 1e-6);

  ParameterSpace t;
  t.add_free("r", Prior::lognormal(0.0, 0.4));
  auto lpt = t.unpack(u).log_prior;
  EXPECT_NEAR(torch::trapezoid(torch::exp(lpt), u.reshape({-1})).item<double>(), 1.0, 1e-6);
}

TEST(ParameterSpace, GradientOfLogPriorMatchesFiniteDifferences) {
  auto s = example_space();
  torch::Generator gen = at::detail::createCPUGenerator(11);
  auto u = s.sample_prior(1, torch::kFloat64, gen).requires_grad_(true);
  auto g = torch::autograd::grad({s.unpack(u).log_prior.sum()}, {u})[0];
  const double h = 1e-6;
  for (int64_t i = 0; i < s.dim(); ++i) {
    auto e = torch::zeros_like(u);
    e[0][i] = h;
    const double fd =
        (s.unpack(u.detach() + e).log_prior - s.unpack(u.detach() - e).log_prior).item<double>() /
        (2 * h);
    EXPECT_NEAR(g[0][i].item<double>(), fd, 1e-6 * std::max(1.0, std::abs(fd))) << i;
  }
}

TEST(ParameterSpace, RejectsBadDeclarations) {
  ParameterSpace s;
  s.add_fixed("a", 1.0);
  EXPECT_THROW(s.add_fixed("a", 2.0), dslens::InvalidArgument);
  EXPECT_THROW(s.add_free("b", Prior::uniform(0, 1), 3.0), dslens::InvalidArgument);
  EXPECT_THROW(s.unpack(torch::zeros({2, 5})), dslens::InvalidArgument);
}

// unpack evaluates the free scalars by prior kind (PriorGroup): the same values and log prior as
// the per-parameter forms (Bijection::forward, Prior::log_prob + log|J|), and a number of tensor
// operations that does not grow with the number of parameters of a kind.
TEST(ParameterSpace, GroupedUnpackMatchesPerParameterFormsAtAFixedOperatorCount) {
  auto s = example_space();
  s.add_free("e1", Prior::uniform(-0.4, 0.4));
  s.add_free("amp", Prior::lognormal(2.0, 1.0));
  torch::Generator gen = at::detail::createCPUGenerator(5);
  const auto u = s.sample_prior(6, torch::kFloat64, gen) +
                 0.3 * torch::randn({6, s.dim()}, gen, torch::kFloat64);
  const auto un = s.unpack(u);
  auto reference = torch::zeros({6}, torch::kFloat64);
  const auto names = s.coordinate_names();
  for (int64_t i = 0; i < s.dim(); ++i) {
    const auto col = u.select(1, i);
    if (names[i].find('[') != std::string::npos) {  // a latent "z[k]": standard normal
      reference = reference - 0.5 * col * col - 0.91893853320467274178;
      continue;
    }
    const auto prior = s.prior(names[i]);
    ASSERT_TRUE(prior.has_value()) << names[i];
    const auto bij = prior->bijection();
    const auto x = bij.forward(col);
    EXPECT_TRUE(torch::allclose(un.values.at(names[i]), x, 1e-14, 1e-14)) << names[i];
    reference = reference + prior->log_prob(x) + bij.log_abs_det_jacobian(col);
  }
  EXPECT_TRUE(torch::allclose(un.log_prior, reference, 1e-12, 1e-10));
  EXPECT_TRUE(torch::all(un.values.at("center_x") == 0).item<bool>());
  EXPECT_EQ(un.values.at("center_x").sizes(), (std::vector<int64_t>{6}));

  auto operators = [](int n_uniform) {
    ParameterSpace t;
    for (int i = 0; i < n_uniform; ++i) {
      t.add_free("p" + std::to_string(i), Prior::uniform(-1.0 - i, 2.0 + i));
    }
    t.add_free("n", Prior::normal(0.0, 1.0));
    const auto v = torch::zeros({4, t.dim()}, torch::kFloat64).requires_grad_(true);
    (void)t.unpack(v);  // the constants' first copy to the device is not counted
    dslens::app::OpCensus census;
    (void)torch::autograd::grad({t.unpack(v).log_prior.sum()}, {v});
    // Each parameter's value is a view of its group's columns (select): no kernel, not counted.
    return census.operators() - census.count("aten::select") - census.count("aten::as_strided");
  };
  EXPECT_EQ(operators(3), operators(12));
}

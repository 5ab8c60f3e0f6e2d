// app/prior_edges.h: optima at a prior's edge moved 5 % of its range inside, through the
// bijections, on a model with a pixel block (never moved).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <string>

#include "app/prior_edges.h"
#include "dslens/core/config.h"
#include "dslens/model/fit_model.h"

namespace prior_edges_test {

using namespace dslens;

// Row 0: gamma at 2.598 of [1.6, 2.6] (within 1 %): moved to 2.55, nothing else. Row 1: inside
// every range: unchanged. Row 2: theta_E at 0.601 of [0.6, 0.9]: moved to 0.615. A normal prior
// (the source centre) and the pixel block have no edges.
TEST(PriorEdges, OptimaAtAnEdgeMoveFivePercentInside) {
  const Compute compute{torch::kCPU, torch::kFloat64};
  const nlohmann::json model = {
      {"mass",
       {{{"type", "EPL"},
         {"theta_E", {{"prior", "uniform"}, {"lower", 0.6}, {"upper", 0.9}}},
         {"gamma", {{"prior", "uniform"}, {"lower", 1.6}, {"upper", 2.6}}},
         {"e1", 0.0},
         {"e2", 0.0},
         {"center_x", 0.0},
         {"center_y", 0.0}}}},
      {"source",
       {{{"type", "PIXELATED"},
         {"size", 4},
         {"scale", 0.1},
         {"center_x", {{"prior", "normal"}, {"mean", 0.0}, {"sigma", 0.05}}},
         {"sigma", 1.0}}}}};
  const model::FitModel fit = model::parse_fit_model(ConfigNode(model, "/model"), ".", compute);
  const auto& space = fit.space;
  auto values = space.unpack(space.initial(3, compute.options())).values;
  values["theta_E_lens0"] = torch::tensor({0.75, 0.8, 0.601}, torch::kFloat64);
  values["gamma_lens0"] = torch::tensor({2.598, 2.1, 2.0}, torch::kFloat64);
  values["center_x_source_light0"] = torch::tensor({0.3, -0.2, 0.0}, torch::kFloat64);
  std::map<std::string, torch::Tensor> free;
  for (const auto& name : space.free_names()) free[name] = values.at(name);
  free[fit.latent_block] = torch::randn({3, 16}, torch::kFloat64);
  const auto u = space.pack(free);

  const auto moved = app::off_prior_edges(space, u);
  EXPECT_TRUE(torch::equal(moved.at_edge, torch::tensor({true, false, true})));
  const auto before = space.constrained(u), after = space.constrained(moved.x);
  const auto names = space.coordinate_names();
  for (size_t j = 0; j < names.size(); ++j) {
    const auto col = static_cast<int64_t>(j);
    const double expected0 = names[j] == "gamma_lens0" ? 2.55 : before[0][col].item<double>();
    const double expected2 = names[j] == "theta_E_lens0" ? 0.615 : before[2][col].item<double>();
    EXPECT_NEAR(after[0][col].item<double>(), expected0, 1e-9) << names[j];
    EXPECT_NEAR(after[2][col].item<double>(), expected2, 1e-9) << names[j];
  }
  EXPECT_TRUE(torch::equal(moved.x[1], u[1]));
  // Nothing at an edge: x as it was.
  EXPECT_TRUE(torch::equal(app::off_prior_edges(space, u.narrow(0, 1, 1)).x, u.narrow(0, 1, 1)));
}

}  // namespace prior_edges_test

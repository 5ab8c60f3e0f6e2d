// app/chain_seeds.h: which kept optima seed chains besides the heaviest, on session 52's 32 x 32
// pixel-grid fit, where a demagnified lens 55 nats below the best optimum got a chain.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "app/chain_seeds.h"
#include "dslens/core/config.h"
#include "dslens/model/fit_model.h"
#include "dslens/samplers/laplace.h"

namespace chain_seeds_test {

using namespace dslens;

nlohmann::json model_with(const nlohmann::json& source) {
  return {{"mass",
           {{{"type", "EPL"},
             {"theta_E", {{"prior", "uniform"}, {"lower", 0.6}, {"upper", 2.0}}},
             {"gamma", {{"prior", "uniform"}, {"lower", 1.6}, {"upper", 2.6}}},
             {"e1", 0.0},
             {"e2", 0.0},
             {"center_x", 0.0},
             {"center_y", 0.0}}}},
          {"source", {source}}};
}

// The kept optima of that fit, best log posterior first: log p and Laplace log mass relative to
// the best (the fourth is theta_E 0.61, its slope run towards its prior's bound). Counted over all
// 1,038 coordinates the window (519 nats) seeded all four; without the 1,024 pixels, whose share
// of the mass is exact, it is 7 nats and seeds the first two (the second by height, 5.6 nats below
// the best, its mass 5.8 below). A Sersic source keeps the window of all its coordinates.
TEST(ChainSeeds, APixelGridsPixelsDoNotWidenTheWindowOfSeededOptima) {
  const Compute compute{torch::kCPU, torch::kFloat64};
  const auto pixels = model::parse_fit_model(
      ConfigNode(model_with({{"type", "PIXELATED"},
                             {"size", 32},
                             {"regularisation", "curvature"},
                             {"sigma", {{"prior", "lognormal"}, {"mu", 3.9}, {"sigma", 3.0}}}}),
                 "/model"),
      ".", compute);
  const int64_t dim = pixels.space.dim();
  ASSERT_EQ(dim, 2 + 1024 + 1);
  EXPECT_DOUBLE_EQ(app::seed_height_nats(pixels, dim), 1.5);
  EXPECT_DOUBLE_EQ(app::seed_height_nats(pixels, 1038), 7.0);

  const auto log_p = torch::tensor({{0.0, -5.6, -30.4, -54.7}}, torch::kFloat64);
  const auto mass = torch::tensor({{0.0, -5.8, -30.9, -649.1}}, torch::kFloat64);
  const auto seeds = [&](double height) {
    return samplers::seed_modes(mass, 4, 4.605170185988091, log_p, height);
  };
  EXPECT_EQ(seeds(app::seed_height_nats(pixels, 1038)), (std::vector<int64_t>{0, 1, 0, 1}));
  EXPECT_EQ(seeds(0.5 * 1038), (std::vector<int64_t>{0, 1, 2, 3}));

  const auto sersic = model::parse_fit_model(
      ConfigNode(model_with({{"type", "SERSIC_ELLIPSE"},
                             {"amp", {{"prior", "lognormal"}, {"mu", 0.0}, {"sigma", 1.0}}},
                             {"R_sersic", 0.2},
                             {"n_sersic", 1.0},
                             {"e1", 0.0},
                             {"e2", 0.0},
                             {"center_x", 0.0},
                             {"center_y", 0.0}}),
                 "/model"),
      ".", compute);
  EXPECT_DOUBLE_EQ(app::seed_height_nats(sersic, sersic.space.dim()), 1.5);
}

}  // namespace chain_seeds_test

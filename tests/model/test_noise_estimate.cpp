#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "dslens/model/noise_estimate.h"

using dslens::model::residuals_by_brightness;

// Residuals of sd 1 where the model is below 0.5 and of sd 0.5 above it (a noise whose sigma is
// twice the truth on the bright half): the faint five bins have mean square 1, the bright five
// 0.25, each within 4 standard errors (sqrt(2 / 1000) = 0.045 and 0.011). Masked pixels, given
// wild residuals, and non-finite ones are left out.
TEST(NoiseEstimate, ResidualsByBrightnessBinTheMeanSquareByTheModelsValue) {
  const int64_t n = 100;
  torch::manual_seed(3);
  const auto model = torch::randperm(n * n, torch::kFloat64).reshape({n, n}) / double(n * n);
  const auto sd = torch::where(model < 0.5, torch::ones_like(model), 0.5 * torch::ones_like(model));
  auto residuals = sd * torch::randn({n, n}, torch::kFloat64);
  auto mask = torch::ones({n, n}, torch::kBool);
  // One extra row of 100 pixels: masked with residual 1e3, or NaN.
  const auto extra_model = torch::linspace(0, 1, n, torch::kFloat64).unsqueeze(0);
  auto wild = torch::full({1, n}, 1e3, torch::kFloat64);
  wild.slice(1, 0, 10).fill_(std::numeric_limits<double>::quiet_NaN());
  auto extra_mask = torch::ones({1, n}, torch::kBool);
  extra_mask.slice(1, 10, n).fill_(false);
  const auto bins =
      residuals_by_brightness(torch::cat({residuals, wild}), torch::cat({model, extra_model}),
                              torch::cat({mask, extra_mask}), 10);
  ASSERT_EQ(bins.size(), 10u);
  for (size_t b = 0; b < bins.size(); ++b) {
    EXPECT_EQ(bins[b].pixels, 1000) << b;
    const double expected = b < 5 ? 1.0 : 0.25;
    const double se = expected * std::sqrt(2.0 / 1000.0);
    EXPECT_NEAR(bins[b].mean_square, expected, 4 * se) << b;
    EXPECT_LE(bins[b].model_low, bins[b].model_high);
    if (b > 0) {
      EXPECT_GT(bins[b].model_low, bins[b - 1].model_high);
    }
  }
  EXPECT_DOUBLE_EQ(bins[0].model_low, 0.0);
  EXPECT_DOUBLE_EQ(bins[9].model_high, (n * n - 1) / double(n * n));
  // The same residuals, each bin's mean square by hand.
  const auto flat_m = model.flatten(), flat_r = residuals.flatten();
  const auto in_bin = (flat_m >= bins[7].model_low).logical_and(flat_m <= bins[7].model_high);
  EXPECT_NEAR(flat_r.masked_select(in_bin).square().mean().item<double>(), bins[7].mean_square,
              1e-12);
  // Fewer pixels than bins: nothing.
  EXPECT_TRUE(residuals_by_brightness(residuals.slice(0, 0, 1).slice(1, 0, 5),
                                      model.slice(0, 0, 1).slice(1, 0, 5),
                                      mask.slice(0, 0, 1).slice(1, 0, 5), 10)
                  .empty());
}

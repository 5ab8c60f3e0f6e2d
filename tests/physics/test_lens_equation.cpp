#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "dslens/physics/lens_equation.h"
#include "dslens/physics/profile.h"

using namespace dslens;
using namespace dslens::physics;

namespace {

const Compute kCpu{torch::kCPU, torch::kFloat64};

torch::Tensor one(double v) {
  return torch::full({1}, v, torch::kFloat64);
}

}  // namespace

// An SIS images a source at beta (|beta| < theta_E) twice on the line through it: at
// beta_hat (|beta| + theta_E), magnification 1 + theta_E / |beta|, and at -beta_hat (theta_E -
// |beta|), magnification 1 - theta_E / |beta| (Schneider, Ehlers & Falco 1992, Sec. 8.1.4).
TEST(LensEquation, AnSisImagesASourceTwiceWhereItsClosedFormSays) {
  LensModel lens;
  lens.add(make_mass_profile("SIS"),
           {{"theta_E", one(1.0)}, {"center_x", one(0.0)}, {"center_y", one(0.0)}});
  const auto grid = PixelGrid::centered(60, 60, 0.05);
  for (const auto& [bx, by] : {std::pair{0.2, 0.0}, std::pair{0.1, 0.15}}) {
    const double b = std::hypot(bx, by);
    const auto images = solve_lens_equation(lens, bx, by, grid, kCpu);
    ASSERT_EQ(images.size(), 2u) << bx << ", " << by;
    EXPECT_NEAR(images[0].x, bx / b * (b + 1.0), 1e-8);
    EXPECT_NEAR(images[0].y, by / b * (b + 1.0), 1e-8);
    EXPECT_NEAR(images[0].magnification, 1.0 + 1.0 / b, 1e-6);
    EXPECT_NEAR(images[1].x, -bx / b * (1.0 - b), 1e-8);
    EXPECT_NEAR(images[1].y, -by / b * (1.0 - b), 1e-8);
    EXPECT_NEAR(images[1].magnification, 1.0 - 1.0 / b, 1e-6);
  }
  // Off the grid an image is not reported: on a 1.6" field only the inner image of beta 0.2.
  const auto small = solve_lens_equation(lens, 0.2, 0.0, PixelGrid::centered(16, 16, 0.1), kCpu);
  ASSERT_EQ(small.size(), 1u);
  EXPECT_NEAR(small[0].x, -0.8, 1e-8);
}

// configs/epl_shear_pixelated.json's EPL with external shear: a source inside the astroid caustic
// has four images, and the config's own source centre (0.06, 0.04), outside it, two; each traces
// back to the source, half are minima (magnification > 0) and half saddles (< 0), and each
// magnification is LensModel::magnification's there.
TEST(LensEquation, AnEplWithShearHasFourImagesInsideTheCausticAndTwoOutside) {
  LensModel lens;
  lens.add(make_mass_profile("EPL"), {{"theta_E", one(1.2)},
                                      {"gamma", one(2.1)},
                                      {"e1", one(0.04)},
                                      {"e2", one(0.10)},
                                      {"center_x", one(0.02)},
                                      {"center_y", one(-0.03)}});
  lens.add(make_mass_profile("SHEAR"),
           {{"gamma1", one(0.03)}, {"gamma2", one(0.02)}, {"ra_0", one(0.0)}, {"dec_0", one(0.0)}});
  const auto grid = PixelGrid::centered(100, 100, 0.05);
  for (const auto& [bx, by, n] : {std::tuple{0.04, 0.0, 4}, std::tuple{0.06, 0.04, 2}}) {
    const auto images = solve_lens_equation(lens, bx, by, grid, kCpu);
    ASSERT_EQ(static_cast<int>(images.size()), n) << bx << ", " << by;
    int positive = 0;
    for (const auto& im : images) {
      const auto [sx, sy] = lens.ray_shoot(one(im.x).unsqueeze(0), one(im.y).unsqueeze(0));
      EXPECT_NEAR(sx.item<double>(), bx, 1e-9);
      EXPECT_NEAR(sy.item<double>(), by, 1e-9);
      const double mu =
          lens.magnification(one(im.x).unsqueeze(0), one(im.y).unsqueeze(0)).item<double>();
      EXPECT_NEAR(im.magnification, mu, 1e-9 * std::abs(mu));
      positive += im.magnification > 0;
    }
    EXPECT_EQ(positive, n / 2) << bx << ", " << by;
    for (size_t i = 1; i < images.size(); ++i)
      EXPECT_GE(std::abs(images[i - 1].magnification), std::abs(images[i].magnification));
  }
}

// app/model_export.h's lenstronomy.json: what lenstronomy's own code needs to take it as it is
// (Data/image_noise.py raises an exposure time of 0 to 1e-10 s; Sampling/likelihood.py's
// image_likelihood_mask_list; Data/pixel_grid.py numbers x over the first axis of the image's
// shape; LensModel/Profiles/multipole.py takes r_E only in releases with its m = 1 term).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>

#include "app/model_export.h"
#include "dslens/core/errors.h"
#include "dslens/physics/profile.h"

namespace model_export_test {

using namespace dslens;

torch::Tensor one(double v) {
  return torch::full({1}, v, torch::kFloat64);
}

// A 6 x 8 grid (not square), an EPL, MULTIPOLEs of orders 4 and 1, a Sérsic source.
physics::ImageModel small_model() {
  physics::ImageModel m;
  m.grid = physics::PixelGrid::centered(6, 8, 0.1);
  m.lens.add(physics::make_mass_profile("EPL"), {{"theta_E", one(0.5)},
                                                 {"gamma", one(2.0)},
                                                 {"e1", one(0.1)},
                                                 {"e2", one(0.0)},
                                                 {"center_x", one(0.0)},
                                                 {"center_y", one(0.0)}});
  for (const double order : {4.0, 1.0}) {
    m.lens.add(physics::make_mass_profile("MULTIPOLE"), {{"m", one(order)},
                                                         {"a_m", one(0.01)},
                                                         {"phi_m", one(0.2)},
                                                         {"center_x", one(0.0)},
                                                         {"center_y", one(0.0)},
                                                         {"r_E", one(1.0)}});
  }
  m.source_light.push_back({physics::make_light_profile("SERSIC_ELLIPSE"),
                            {{"amp", one(3.0)},
                             {"R_sersic", one(0.2)},
                             {"n_sersic", one(1.5)},
                             {"e1", one(0.0)},
                             {"e2", one(0.0)},
                             {"center_x", one(0.05)},
                             {"center_y", one(0.0)}}});
  return m;
}

bool notes_mention(const nlohmann::json& lt, const std::string& text) {
  return lt.at("notes").dump().find(text) != std::string::npos;
}

// Without a Poisson term the noise goes to lenstronomy as a noise_map: the data's sigma where the
// pixel is fitted and finite, the background elsewhere (finite, so that the mask's 0 removes it),
// and no exposure_time; the fit's mask is image_likelihood_mask_list.
TEST(ModelExport, NoiseWithoutAPoissonTermIsANoiseMapAndTheMaskGoesToTheLikelihood) {
  const auto m = small_model();
  auto sigma = torch::full({6, 8}, 0.02, torch::kFloat64);
  sigma[1][2] = 0.05;
  sigma[4][7] = NAN;  // a pixel whose noise was not finite (masked by the fit)
  auto mask = torch::ones({6, 8}, torch::kBool);
  mask[3][0] = false;
  mask[4][7] = false;
  const physics::NoiseModel noise{0.03, 0.0, 0.0};
  const auto lt = app::export_model(m, 0, noise, {}, {sigma, mask}).lenstronomy;
  const auto& data = lt.at("kwargs_data");
  EXPECT_FALSE(data.contains("exposure_time")) << data.dump();
  EXPECT_EQ(data.at("background_rms").get<double>(), 0.03);
  const auto& map = data.at("noise_map");
  ASSERT_EQ(map.size(), 6u);
  ASSERT_EQ(map[0].size(), 8u);
  EXPECT_EQ(map[1][2].get<double>(), 0.05);  // row = y, as image_data
  EXPECT_EQ(map[0][0].get<double>(), 0.02);
  EXPECT_EQ(map[3][0].get<double>(), 0.03);  // masked
  EXPECT_EQ(map[4][7].get<double>(), 0.03);  // NaN and masked
  const auto& masks = lt.at("kwargs_likelihood").at("image_likelihood_mask_list");
  ASSERT_EQ(masks.size(), 1u);
  for (int64_t i = 0; i < 6; ++i) {
    for (int64_t j = 0; j < 8; ++j) {
      EXPECT_EQ(masks[0][i][j].get<double>(), mask[i][j].item<bool>() ? 1.0 : 0.0) << i << j;
    }
  }
  EXPECT_TRUE(notes_mention(lt, "the grid is not square (6 rows x 8 columns)")) << lt.at("notes");
  EXPECT_NE(lt.at("conventions").get<std::string>().find("NaN (the masked pixels) set to 0"),
            std::string::npos);
}

// With a Poisson term lenstronomy computes the noise itself from background_rms and exposure_time
// (no noise_map); with every pixel fitted and no image positions there is no kwargs_likelihood;
// a square grid has no note about its shape.
TEST(ModelExport, NoiseWithAPoissonTermIsRmsAndExposureTime) {
  auto m = small_model();
  m.grid = physics::PixelGrid::centered(8, 8, 0.1);
  const physics::NoiseModel noise{0.01, 500.0, 0.0};
  const auto lt =
      app::export_model(m, 0, noise, {}, {torch::ones({8, 8}, torch::kFloat64), torch::Tensor()})
          .lenstronomy;
  const auto& data = lt.at("kwargs_data");
  EXPECT_EQ(data.at("exposure_time").get<double>(), 500.0);
  EXPECT_EQ(data.at("background_rms").get<double>(), 0.01);
  EXPECT_FALSE(data.contains("noise_map"));
  EXPECT_FALSE(lt.contains("kwargs_likelihood")) << lt.dump();
  EXPECT_FALSE(notes_mention(lt, "not square"));
  // No data at all and no Poisson term: the background everywhere, still a noise_map.
  const auto bare = app::export_model(m, 0, {0.01, 0.0, 0.0}, {}).lenstronomy;
  EXPECT_EQ(bare.at("kwargs_data").at("noise_map")[7][7].get<double>(), 0.01);
  // A sigma of another shape than the grid is refused.
  EXPECT_THROW(app::export_model(m, 0, noise, {}, {torch::ones({6, 8}, torch::kFloat64), {}}),
               InvalidArgument);
}

// MULTIPOLE's r_E enters only its m = 1 term: left out of the other orders' kwargs (older
// lenstronomy refuses the keyword), kept for m = 1 with a note; the simulate config keeps it.
// kwargs_model holds the model lists together, for create_class_instances(**kwargs_model).
TEST(ModelExport, MultipoleRadiusOnlyForOrderOneAndTheModelListsTogether) {
  const auto e = app::export_model(small_model(), 0, {0.01, 0.0, 0.0}, {});
  const auto& lt = e.lenstronomy;
  const auto& lens = lt.at("kwargs_lens");
  ASSERT_EQ(lens.size(), 3u);
  EXPECT_EQ(lens[1].at("m").get<int64_t>(), 4);
  EXPECT_FALSE(lens[1].contains("r_E")) << lens[1].dump();
  EXPECT_EQ(lens[2].at("m").get<int64_t>(), 1);
  EXPECT_EQ(lens[2].at("r_E").get<double>(), 1.0);
  EXPECT_TRUE(notes_mention(lt, "MULTIPOLE of order m = 1 takes r_E")) << lt.at("notes");
  EXPECT_EQ(e.simulate.at("mass")[1].at("r_E").get<double>(), 1.0);
  const auto& model = lt.at("kwargs_model");
  EXPECT_EQ(model.at("lens_model_list"), nlohmann::json({"EPL", "MULTIPOLE", "MULTIPOLE"}));
  EXPECT_EQ(model.at("source_light_model_list"), nlohmann::json({"SERSIC_ELLIPSE"}));
  EXPECT_EQ(model.at("lens_light_model_list"), nlohmann::json::array());
  EXPECT_FALSE(model.contains("point_source_model_list"));
}

}  // namespace model_export_test

// Draws and sampler statistics on disk: draws.npy + draws.json sidecar, stats.npy + stats.json.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dslens/core/errors.h"
#include "dslens/core/npy.h"
#include "dslens/samplers/draws_io.h"
#include "test_support.h"

namespace draws_io_test {

namespace ds = dslens::samplers;
namespace fs = std::filesystem;

TEST(DrawsIo, RoundTripKeepsValuesNamesAndSettings) {
  const auto dir = dslens::testing::temp_dir("draws_io");
  torch::manual_seed(5);
  ds::LabelledDraws draws;
  draws.values = torch::randn({4, 50, 3}, torch::kFloat64);
  draws.names = {"theta_E", "gamma", "shear[1]"};
  draws.settings = {{"algorithm", "nuts"}, {"max_depth", 10}, {"seed", 42}};
  ds::LabelledDraws stats;
  stats.values = torch::rand({4, 50, 2}, torch::kFloat32);
  stats.names = {"energy__", "divergent__"};
  ds::write_sampler_output(dir, draws, stats);
  for (const char* f : {"draws.npy", "draws.json", "stats.npy", "stats.json"}) {
    EXPECT_TRUE(fs::exists(dir + "/" + f)) << f;
  }
  const auto back = ds::read_draws(dir + "/draws.npy");
  EXPECT_TRUE(torch::equal(back.values, draws.values));
  EXPECT_EQ(back.names, draws.names);
  EXPECT_EQ(back.settings, draws.settings);
  EXPECT_EQ(back.chains(), 4);
  EXPECT_EQ(back.draws(), 50);
  EXPECT_EQ(back.column("gamma"), 1);
  EXPECT_EQ(back.column("nope"), -1);
  EXPECT_TRUE(torch::equal(back.column_values("gamma"), draws.values.select(2, 1)));
  EXPECT_THROW(back.column_values("nope"), dslens::InvalidArgument);

  const auto s = ds::read_stats(dir + "/stats.npy");
  EXPECT_EQ(s.values.scalar_type(), torch::kFloat64);  // stored as float64
  EXPECT_TRUE(torch::equal(s.values, stats.values.to(torch::kFloat64)));
  EXPECT_EQ(s.names, stats.names);

  // The array is a plain [chains, draws, params] float64 .npy that numpy reads as is.
  const auto raw = dslens::read_npy(dir + "/draws.npy");
  EXPECT_EQ(raw.scalar_type(), torch::kFloat64);
  EXPECT_EQ(raw.sizes(), (std::vector<int64_t>{4, 50, 3}));
  std::ifstream in(dir + "/draws.json");
  const auto side = nlohmann::json::parse(in);
  EXPECT_EQ(side["format"], "dslens-draws");
  EXPECT_EQ(side["kind"], "draws");
  EXPECT_EQ(side["names"], nlohmann::json(draws.names));
  EXPECT_EQ(side["shape"], nlohmann::json({4, 50, 3}));
  EXPECT_EQ(side["settings"]["algorithm"], "nuts");
  EXPECT_EQ(ds::sidecar_path("a/b/draws.npy"), "a/b/draws.json");
}

TEST(DrawsIo, WritersRejectBadArguments) {
  const auto dir = dslens::testing::temp_dir("draws_io_args");
  ds::LabelledDraws d;
  d.values = torch::zeros({2, 5, 2}, torch::kFloat64);
  d.names = {"a"};
  EXPECT_THROW(ds::write_draws(dir + "/x.npy", d), dslens::InvalidArgument);
  d.names = {"a", "a"};
  EXPECT_THROW(ds::write_draws(dir + "/x.npy", d), dslens::InvalidArgument);
  d.names = {"a", ""};
  EXPECT_THROW(ds::write_draws(dir + "/x.npy", d), dslens::InvalidArgument);
  d.values = torch::zeros({10, 2});
  d.names = {"a", "b"};
  EXPECT_THROW(ds::write_draws(dir + "/x.npy", d), dslens::InvalidArgument);
  EXPECT_FALSE(fs::exists(dir + "/x.npy"));
}

TEST(DrawsIo, ReadersNameTheBadFile) {
  const auto dir = dslens::testing::temp_dir("draws_io_bad");
  ds::LabelledDraws d;
  d.values = torch::ones({1, 4, 2}, torch::kFloat64);
  d.names = {"a", "b"};
  ds::write_draws(dir + "/draws.npy", d);
  auto expect_error = [](const std::string& path, const std::string& fragment) {
    try {
      ds::read_draws(path);
      ADD_FAILURE() << "no error";
    } catch (const dslens::FileError& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  // Sidecar kind mismatch for read_stats.
  EXPECT_THROW(ds::read_stats(dir + "/draws.npy"), dslens::FileError);
  // Missing array, missing sidecar.
  expect_error(dir + "/none.npy", "none.npy");
  fs::copy_file(dir + "/draws.npy", dir + "/lonely.npy");
  expect_error(dir + "/lonely.npy", "lonely.json");
  // Sidecar that is not JSON, or names that do not match the columns.
  fs::copy_file(dir + "/draws.npy", dir + "/broken.npy");
  std::ofstream(dir + "/broken.json") << "{ not json";
  expect_error(dir + "/broken.npy", "broken.json");
  fs::copy_file(dir + "/draws.npy", dir + "/names.npy");
  std::ofstream(dir + "/names.json")
      << R"({"format": "dslens-draws", "version": 1, "kind": "draws", "names": ["a"]})";
  expect_error(dir + "/names.npy", "1 names");
  // An array of the wrong rank.
  dslens::write_npy(dir + "/flat.npy", torch::zeros({5}, torch::kFloat64));
  std::ofstream(dir + "/flat.json")
      << R"({"format": "dslens-draws", "version": 1, "kind": "draws", "names": ["a"]})";
  expect_error(dir + "/flat.npy", "flat.npy");
}

}  // namespace draws_io_test

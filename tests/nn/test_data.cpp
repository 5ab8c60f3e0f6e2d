#include <fitsio.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include "dslens/core/config.h"
#include "dslens/core/errors.h"
#include "dslens/core/fits.h"
#include "dslens/nn/dataset.h"
#include "test_support.h"

namespace dslens::nn::test_data_detail {

DataConfig parse(const nlohmann::json& j) {
  return parse_data_config(ConfigNode(j, "/data"));
}

// Path of the ConfigError parsing `j` throws, or "(none)".
std::string error_path(const nlohmann::json& j) {
  try {
    parse(j);
  } catch (const ConfigError& e) {
    return e.path();
  }
  return "(none)";
}

template <class E, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "(no exception of the expected type)";
}

// A smooth asymmetric test galaxy [H, W] centred near (r0, c0), on a constant background.
torch::Tensor test_galaxy(int64_t H, int64_t W, double r0, double c0, double background) {
  const auto rows = torch::arange(H, torch::kFloat64).view({H, 1});
  const auto cols = torch::arange(W, torch::kFloat64).view({1, W});
  const auto d2 = (rows - r0).pow(2) + 0.5 * (cols - c0).pow(2);
  const auto clump = (rows - r0 - 3).pow(2) + (cols - c0 + 2).pow(2);
  return background + torch::exp(-d2 / 18.0) + 0.3 * torch::exp(-clump / 2.0);
}

// A GalSim-style catalog (HDU 1 table) naming HDUs of `image_file`, written through CFITSIO.
void write_catalog(const std::string& path, const std::vector<std::string>& files,
                   const std::vector<int>& hdus) {
  fitsfile* f = nullptr;
  int status = 0;
  const std::string target = "!" + path;
  fits_create_file(&f, target.c_str(), &status);
  long naxes[1] = {0};
  fits_create_img(f, 8, 0, naxes, &status);
  char* ttype[] = {const_cast<char*>("GAL_FILENAME"), const_cast<char*>("GAL_HDU"),
                   const_cast<char*>("PIXEL_SCALE"), const_cast<char*>("NOISE_VARIANCE")};
  char* tform[] = {const_cast<char*>("32A"), const_cast<char*>("J"), const_cast<char*>("D"),
                   const_cast<char*>("D")};
  const long n = static_cast<long>(files.size());
  fits_create_tbl(f, BINARY_TBL, n, 4, ttype, tform, nullptr, nullptr, &status);
  std::vector<std::string> copies = files;
  std::vector<char*> names;
  for (auto& s : copies) names.push_back(s.data());
  std::vector<int> h = hdus;
  std::vector<double> scale(files.size(), 0.05), noise(files.size(), 1e-4);
  fits_write_col(f, TSTRING, 1, 1, 1, n, names.data(), &status);
  fits_write_col(f, TINT, 2, 1, 1, n, h.data(), &status);
  fits_write_col(f, TDOUBLE, 3, 1, 1, n, scale.data(), &status);
  fits_write_col(f, TDOUBLE, 4, 1, 1, n, noise.data(), &status);
  fits_close_file(f, &status);
  ASSERT_EQ(status, 0);
}

// Images as consecutive HDUs (0 = primary) of one FITS file.
void write_multi_hdu(const std::string& path, const std::vector<torch::Tensor>& images) {
  fitsfile* f = nullptr;
  int status = 0;
  const std::string target = "!" + path;
  fits_create_file(&f, target.c_str(), &status);
  for (const auto& img : images) {
    auto d = img.contiguous();
    long naxes[2] = {static_cast<long>(d.size(1)), static_cast<long>(d.size(0))};
    fits_create_img(f, DOUBLE_IMG, 2, naxes, &status);
    long first[2] = {1, 1};
    fits_write_pix(f, TDOUBLE, first, d.numel(), d.data_ptr<double>(), &status);
  }
  fits_close_file(f, &status);
  ASSERT_EQ(status, 0);
}

}  // namespace dslens::nn::test_data_detail

namespace tdd = dslens::nn::test_data_detail;

TEST(DataConfig, DefaultsAndErrorsNameThePath) {
  const auto d = tdd::parse(nlohmann::json::object());
  EXPECT_EQ(d.source, "synthetic");
  EXPECT_EQ(d.count, dslens::nn::kDefaultSyntheticCount);
  EXPECT_EQ(d.preprocess.background, "none");  // "auto" resolved for synthetic
  const auto g = tdd::parse({{"source", "galsim"}, {"path", "cat.fits"}});
  EXPECT_EQ(g.preprocess.background, "border_median");
  EXPECT_EQ(g.count, 0);
  const auto rel = dslens::nn::parse_data_config(
      dslens::ConfigNode(nlohmann::json{{"source", "fits_dir"}, {"path", "stamps"}}, "/data"),
      "/configs");
  EXPECT_EQ(rel.path, "/configs/stamps");
  EXPECT_EQ(tdd::error_path({{"source", "hubble"}}), "/data/source");
  EXPECT_EQ(tdd::error_path({{"source", "galsim"}}), "/data/path");
  EXPECT_EQ(tdd::error_path({{"sourc", "galsim"}}), "/data/sourc");
  EXPECT_EQ(tdd::error_path({{"path", "x.fits"}}), "/data/path");  // synthetic takes no path
  EXPECT_EQ(tdd::error_path({{"count", 0}}), "/data/count");
  EXPECT_EQ(tdd::error_path({{"seed", -1}}), "/data/seed");
  EXPECT_EQ(tdd::error_path({{"source", "fits_dir"}, {"path", "d"}, {"hdu", 1}}), "/data/hdu");
  EXPECT_EQ(tdd::error_path({{"preprocess", {{"normalize", "max"}}}}),
            "/data/preprocess/normalize");
  EXPECT_EQ(tdd::error_path({{"preprocess", {{"crop", 3}}}}), "/data/preprocess/crop");
  EXPECT_EQ(tdd::error_path({{"synthetic", {{"clumps", {3, 1}}}}}), "/data/synthetic/clumps");
}

TEST(DataConfig, DescribeRecordsEverything) {
  const auto cfg = tdd::parse({{"count", 5},
                               {"seed", 11},
                               {"preprocess", {{"normalize", "sum"}, {"centre", "peak"}}},
                               {"synthetic", {{"noise_sigma", 0.01}}}});
  const auto j = dslens::nn::describe(cfg);
  EXPECT_EQ(j.at("source"), "synthetic");
  EXPECT_EQ(j.at("count"), 5);
  EXPECT_EQ(j.at("seed"), 11);
  EXPECT_EQ(j.at("preprocess").at("normalize"), "sum");
  EXPECT_EQ(j.at("preprocess").at("centre"), "peak");
  EXPECT_EQ(j.at("preprocess").at("background"), "none");
  EXPECT_EQ(j.at("synthetic").at("noise_sigma"), 0.01);
  EXPECT_TRUE(j.at("synthetic").contains("clumps"));
}

TEST(LoadStamps, SyntheticStampsAreCentredNormalisedAndReproducible) {
  const int64_t S = 40;
  auto cfg = tdd::parse({{"count", 24}, {"seed", 4}, {"synthetic", {{"centre_offset", 0.1}}}});
  const auto x = dslens::nn::load_stamps(cfg, S);
  ASSERT_EQ(x.sizes(), (std::vector<int64_t>{24, S, S}));
  EXPECT_EQ(x.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(torch::equal(x, dslens::nn::load_stamps(cfg, S)));
  // Peak normalisation is exact.
  EXPECT_TRUE(torch::equal(std::get<0>(x.flatten(1).max(1)), torch::ones({24}, torch::kFloat64)));
  // Centroid within the half pixel of integer centring (plus a little lost off the edge).
  const auto idx = torch::arange(S, torch::kFloat64);
  const auto f = x.sum({1, 2});
  const auto cr = (x.sum(2) * idx).sum(1) / f;
  const auto cc = (x.sum(1) * idx).sum(1) / f;
  const double mid = 0.5 * (S - 1);
  EXPECT_LT((cr - mid).abs().max().item<double>(), 0.6);
  EXPECT_LT((cc - mid).abs().max().item<double>(), 0.6);
  // Without centring the 0.1-stamp offsets stay.
  cfg.preprocess.centre = "none";
  const auto y = dslens::nn::load_stamps(cfg, S);
  const auto fy = y.sum({1, 2});
  const auto cy = (y.sum(1) * idx).sum(1) / fy;
  EXPECT_GT((cy - mid).abs().max().item<double>(), 1.5);
  // Total-flux normalisation.
  cfg.preprocess.normalize = "sum";
  const auto z = dslens::nn::load_stamps(cfg, S);
  EXPECT_LT((z.sum({1, 2}) - 1.0).abs().max().item<double>(), 1e-12);
}

TEST(Augment, OnlyDihedralTransformsAndFluxPreserved) {
  const int64_t B = 64, S = 9;
  const auto batch = torch::rand({B, S, S}, torch::kFloat64);
  torch::Generator gen = at::detail::createCPUGenerator(123);
  const auto out = dslens::nn::augment(batch, gen);
  ASSERT_EQ(out.sizes(), batch.sizes());
  std::set<int> used;
  for (int64_t i = 0; i < B; ++i) {
    int matches = 0;
    for (int k = 0; k < 8; ++k) {
      if (torch::equal(out[i], dslens::nn::dihedral_transform(batch[i], k))) {
        ++matches;
        used.insert(k);
      }
    }
    EXPECT_EQ(matches, 1) << "stamp " << i;  // random stamps have no symmetry
  }
  EXPECT_GE(used.size(), 6u);  // all 8 drawn; fewer than 6 in 64 draws has p < 1e-9
  EXPECT_LT((out.sum({1, 2}) - batch.sum({1, 2})).abs().max().item<double>(), 1e-12);
  // Same generator seed -> same transforms.
  torch::Generator gen2 = at::detail::createCPUGenerator(123);
  EXPECT_TRUE(torch::equal(out, dslens::nn::augment(batch, gen2)));
  // The 8 transforms are distinct and closed: rot90 applied 4 times is the identity.
  const auto img = batch[0];
  for (int a = 0; a < 8; ++a) {
    for (int b = a + 1; b < 8; ++b) {
      EXPECT_FALSE(torch::equal(dslens::nn::dihedral_transform(img, a),
                                dslens::nn::dihedral_transform(img, b)));
    }
  }
  EXPECT_THROW(dslens::nn::augment(torch::zeros({2, 3, 4}), gen), dslens::InvalidArgument);
}

TEST(SplitTrainVal, DeterministicDisjointAndComplete) {
  const int64_t N = 20;
  const auto stamps = torch::arange(N, torch::kFloat64).view({N, 1, 1}).expand({N, 4, 4}).clone();
  const auto [train, val] = dslens::nn::split_train_val(stamps, 0.25, 42);
  ASSERT_EQ(train.size(0), 15);
  ASSERT_EQ(val.size(0), 5);
  std::set<int> ids;
  for (int64_t i = 0; i < train.size(0); ++i) ids.insert(int(train[i][0][0].item<double>()));
  for (int64_t i = 0; i < val.size(0); ++i) ids.insert(int(val[i][0][0].item<double>()));
  EXPECT_EQ(ids.size(), 20u);  // disjoint and complete
  const auto again = dslens::nn::split_train_val(stamps, 0.25, 42);
  EXPECT_TRUE(torch::equal(again.first, train));
  EXPECT_TRUE(torch::equal(again.second, val));
  const auto other = dslens::nn::split_train_val(stamps, 0.25, 43);
  EXPECT_FALSE(torch::equal(other.second, val));
  // A tiny fraction still validates on one stamp; zero validates on none.
  EXPECT_EQ(dslens::nn::split_train_val(stamps, 0.001, 1).second.size(0), 1);
  EXPECT_EQ(dslens::nn::split_train_val(stamps, 0.0, 1).first.size(0), N);
  EXPECT_THROW(dslens::nn::split_train_val(stamps, 1.0, 1), dslens::InvalidArgument);
  EXPECT_THROW(dslens::nn::split_train_val(torch::zeros({0, 4, 4}), 0.1, 1), dslens::InputError);
}

TEST(GalaxyReaders, SharedGalSimCatalog) {
  const auto dir = dslens::testing::shared_dir() + "/data/galaxies/cosmos_23.5_n1";
  const auto catalog = dir + "/real_galaxy_catalog_23.5.fits";
  DSLENS_REQUIRE_FILE(catalog);
  const auto images = dslens::nn::read_galsim_catalog(catalog);
  ASSERT_EQ(images.size(), 10u);
  EXPECT_EQ(images[0].image.sizes(), (std::vector<int64_t>{234, 233}));
  EXPECT_EQ(images[4].image.sizes(), (std::vector<int64_t>{46, 45}));
  for (const auto& g : images) {
    EXPECT_NEAR(g.pixel_scale, 0.03, 1e-6) << g.name;
    EXPECT_GT(g.noise_variance, 0.0) << g.name;
    EXPECT_TRUE(torch::isfinite(g.image).all().item<bool>()) << g.name;
  }
  // The folder resolves to its one catalog (not the *_fits.fits parametric one).
  EXPECT_EQ(dslens::nn::resolve_galsim_catalog(dir), catalog);
  auto cfg = tdd::parse({{"source", "galsim"}, {"path", dir}});
  const auto x = dslens::nn::load_stamps(cfg, 32);
  ASSERT_EQ(x.sizes(), (std::vector<int64_t>{10, 32, 32}));
  EXPECT_TRUE(torch::isfinite(x).all().item<bool>());
  EXPECT_TRUE(torch::equal(std::get<0>(x.flatten(1).max(1)), torch::ones({10}, torch::kFloat64)));
  // Each galaxy's brightest pixel lies near the centre after centring.
  const auto peak = x.flatten(1).argmax(1);
  for (int64_t i = 0; i < 10; ++i) {
    const int64_t p = peak[i].item<int64_t>();
    EXPECT_LE(std::abs(p / 32 - 15.5), 4.0) << images[i].name;
    EXPECT_LE(std::abs(p % 32 - 15.5), 4.0) << images[i].name;
  }
  // 64-pixel stamps need the 50 x 49 galaxy of row 3 (the first too small) enlarged: an error
  // naming it, unless allowed.
  const auto msg = tdd::message_of<dslens::InputError>([&] { dslens::nn::load_stamps(cfg, 64); });
  EXPECT_NE(msg.find("HDU 2 (catalog row 3)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("smaller than the stamp size 64"), std::string::npos) << msg;
  cfg.preprocess.allow_upsample = true;
  EXPECT_EQ(dslens::nn::load_stamps(cfg, 64).size(0), 10);
}

TEST(GalaxyReaders, GalSimCatalogWrittenHere) {
  const auto dir = dslens::testing::temp_dir("galsim_cat");
  std::vector<torch::Tensor> imgs = {tdd::test_galaxy(30, 31, 14, 15, 0.0),
                                     tdd::test_galaxy(25, 25, 12, 12, 0.0),
                                     tdd::test_galaxy(40, 36, 20, 17, 0.0)};
  tdd::write_multi_hdu(dir + "/images.fits", imgs);
  tdd::write_catalog(dir + "/real_galaxy_catalog_test.fits", {"images.fits", "images.fits"},
                     {2, 0});
  const auto got = dslens::nn::read_galsim_catalog(dir + "/real_galaxy_catalog_test.fits");
  ASSERT_EQ(got.size(), 2u);
  EXPECT_TRUE(torch::equal(got[0].image, imgs[2]));
  EXPECT_TRUE(torch::equal(got[1].image, imgs[0]));
  EXPECT_DOUBLE_EQ(got[0].pixel_scale, 0.05);
  EXPECT_EQ(dslens::nn::read_galsim_catalog(dir, 1).size(), 1u);  // count limit, folder form
  // A missing image file and a missing HDU name the file, the HDU and the catalog.
  tdd::write_catalog(dir + "/real_galaxy_catalog_test.fits", {"images.fits", "gone.fits"}, {0, 0});
  auto msg = tdd::message_of<dslens::FileError>(
      [&] { dslens::nn::read_galsim_catalog(dir + "/real_galaxy_catalog_test.fits"); });
  EXPECT_NE(msg.find("gone.fits"), std::string::npos) << msg;
  EXPECT_NE(msg.find("real_galaxy_catalog_test.fits"), std::string::npos) << msg;
  tdd::write_catalog(dir + "/real_galaxy_catalog_test.fits", {"images.fits"}, {7});
  msg = tdd::message_of<dslens::FileError>(
      [&] { dslens::nn::read_galsim_catalog(dir + "/real_galaxy_catalog_test.fits"); });
  EXPECT_NE(msg.find("HDU 7"), std::string::npos) << msg;
  EXPECT_NE(msg.find("images.fits"), std::string::npos) << msg;
}

TEST(GalaxyReaders, FitsCubeRoundTrip) {
  const auto dir = dslens::testing::temp_dir("cube");
  std::vector<torch::Tensor> planes;
  for (int k = 0; k < 5; ++k) planes.push_back(tdd::test_galaxy(24, 24, 11.5 + 0.2 * k, 11.5, 0.0));
  const auto cube = torch::stack(planes);
  dslens::write_fits_image(dir + "/cube.fits", cube);
  const auto got = dslens::nn::read_fits_cube(dir + "/cube.fits");
  ASSERT_EQ(got.size(), 5u);
  for (int k = 0; k < 5; ++k) EXPECT_TRUE(torch::equal(got[k].image, planes[k]));
  EXPECT_EQ(dslens::nn::read_fits_cube(dir + "/cube.fits", -1, 2).size(), 2u);
  // With every step off, load_stamps gives back the cube itself.
  const auto cfg = tdd::parse(
      {{"source", "fits_cube"},
       {"path", dir + "/cube.fits"},
       {"preprocess", {{"background", "none"}, {"centre", "none"}, {"normalize", "none"}}}});
  EXPECT_TRUE(torch::equal(dslens::nn::load_stamps(cfg, 24), cube));
  // Shrinking by 2 with area averaging keeps the total flux x 1/4 (mean of 2x2 blocks).
  const auto half = dslens::nn::load_stamps(cfg, 12);
  EXPECT_LT((half.sum({1, 2}) * 4.0 - cube.sum({1, 2})).abs().max().item<double>(), 1e-9);
  // Background subtraction removes a constant pedestal exactly.
  dslens::write_fits_image(dir + "/cube2.fits", cube + 5.0);
  auto cfg2 = cfg;
  cfg2.path = dir + "/cube2.fits";
  cfg2.preprocess.background = "border_median";
  auto cfg1 = cfg;
  cfg1.preprocess.background = "border_median";
  EXPECT_LT((dslens::nn::load_stamps(cfg2, 24) - dslens::nn::load_stamps(cfg1, 24))
                .abs()
                .max()
                .item<double>(),
            1e-12);
}

TEST(GalaxyReaders, FitsDirectoryRoundTripSortedByName) {
  const auto dir = dslens::testing::temp_dir("fitsdir");
  const auto a = tdd::test_galaxy(20, 20, 9, 10, 0.0), b = tdd::test_galaxy(22, 21, 10, 10, 0.0),
             c = tdd::test_galaxy(30, 30, 14, 14, 0.0);
  dslens::write_fits_image(dir + "/b.fits", b);
  dslens::write_fits_image(dir + "/a.fits", a);
  dslens::write_fits_image(dir + "/c.fit", c, {}, true);
  std::ofstream(dir + "/notes.txt") << "not an image";
  const auto got = dslens::nn::read_fits_dir(dir);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_TRUE(torch::equal(got[0].image, a));
  EXPECT_TRUE(torch::equal(got[1].image, b));
  EXPECT_TRUE(torch::allclose(got[2].image, c, 1e-6, 1e-7));  // stored as float32
  EXPECT_NE(got[1].name.find("b.fits"), std::string::npos);
  const auto cfg = tdd::parse({{"source", "fits_dir"}, {"path", dir}});
  const auto x = dslens::nn::load_stamps(cfg, 16);
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{3, 16, 16}));
}

TEST(GalaxyReaders, BadInputsGiveClearErrors) {
  const auto dir = dslens::testing::temp_dir("bad_data");
  // Missing file.
  auto cfg = tdd::parse({{"source", "fits_cube"}, {"path", dir + "/nope.fits"}});
  auto msg = tdd::message_of<dslens::FileError>([&] { dslens::nn::load_stamps(cfg, 16); });
  EXPECT_NE(msg.find("nope.fits"), std::string::npos) << msg;
  // NaN pixel: names the file, the count and the place.
  auto img = tdd::test_galaxy(20, 20, 9, 9, 0.0);
  img[3][4] = std::numeric_limits<double>::quiet_NaN();
  std::filesystem::create_directories(dir + "/nan");
  dslens::write_fits_image(dir + "/nan/a.fits", tdd::test_galaxy(20, 20, 9, 9, 0.0));
  dslens::write_fits_image(dir + "/nan/bad.fits", img);
  cfg = tdd::parse({{"source", "fits_dir"}, {"path", dir + "/nan"}});
  msg = tdd::message_of<dslens::InputError>([&] { dslens::nn::load_stamps(cfg, 16); });
  EXPECT_NE(msg.find("bad.fits"), std::string::npos) << msg;
  EXPECT_NE(msg.find("NaN or infinite"), std::string::npos) << msg;
  EXPECT_NE(msg.find("row 3, column 4"), std::string::npos) << msg;
  // Infinite plane of a cube: names the plane.
  auto cube = torch::stack({tdd::test_galaxy(20, 20, 9, 9, 0.0), img.nan_to_num(0.0)});
  cube[1][0][0] = std::numeric_limits<double>::infinity();
  dslens::write_fits_image(dir + "/inf.fits", cube);
  cfg = tdd::parse({{"source", "fits_cube"}, {"path", dir + "/inf.fits"}});
  msg = tdd::message_of<dslens::InputError>([&] { dslens::nn::load_stamps(cfg, 16); });
  EXPECT_NE(msg.find("plane 1"), std::string::npos) << msg;
  // Too small for the stamp.
  dslens::write_fits_image(dir + "/small.fits", tdd::test_galaxy(12, 14, 6, 6, 0.0));
  cfg = tdd::parse({{"source", "fits_cube"}, {"path", dir + "/small.fits"}});
  msg = tdd::message_of<dslens::InputError>([&] { dslens::nn::load_stamps(cfg, 16); });
  EXPECT_NE(msg.find("small.fits"), std::string::npos) << msg;
  EXPECT_NE(msg.find("smaller than the stamp size 16"), std::string::npos) << msg;
  cfg.preprocess.allow_upsample = true;
  EXPECT_EQ(dslens::nn::load_stamps(cfg, 16).size(1), 16);
  // Empty folder.
  std::filesystem::create_directories(dir + "/empty");
  cfg = tdd::parse({{"source", "fits_dir"}, {"path", dir + "/empty"}});
  msg = tdd::message_of<dslens::InputError>([&] { dslens::nn::load_stamps(cfg, 16); });
  EXPECT_NE(msg.find("holds no FITS images"), std::string::npos) << msg;
  // An image without positive flux cannot be normalised.
  dslens::write_fits_image(dir + "/flat.fits", torch::full({20, 20}, 3.0, torch::kFloat64));
  cfg = tdd::parse({{"source", "fits_cube"}, {"path", dir + "/flat.fits"}});
  msg = tdd::message_of<dslens::InputError>([&] { dslens::nn::load_stamps(cfg, 16); });
  EXPECT_NE(msg.find("flat.fits"), std::string::npos) << msg;
  EXPECT_NE(msg.find("cannot be normalised"), std::string::npos) << msg;
  // No images at all.
  EXPECT_THROW(dslens::nn::preprocess_images({}, dslens::nn::PreprocessConfig{}, 16),
               dslens::InputError);
  std::filesystem::remove_all(dir);
}

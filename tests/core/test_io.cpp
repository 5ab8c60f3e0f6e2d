#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "dslens/core/device.h"
#include "dslens/core/errors.h"
#include "dslens/core/fits.h"
#include "dslens/core/output_dir.h"
#include "test_support.h"

namespace fs = std::filesystem;

TEST(Fits, RoundTripKeepsOrientationAndValues) {
  const auto dir = dslens::testing::temp_dir("fits");
  auto img = torch::arange(12, torch::kFloat64).reshape({3, 4}) * 0.5 - 1.0;
  const auto path = dir + "/a.fits";
  dslens::write_fits_image(path, img, {{"PIXSCALE", 0.05, "arcsec per pixel"}});
  auto back = dslens::read_fits_image(path);
  ASSERT_EQ(back.sizes(), img.sizes());
  EXPECT_TRUE(torch::equal(back, img));
  auto header = dslens::read_fits_numeric_header(path);
  EXPECT_DOUBLE_EQ(header.at("PIXSCALE"), 0.05);
  EXPECT_EQ(header.at("NAXIS1"), 4);  // columns are FITS axis 1
}

TEST(Fits, MissingAndMalformedFilesNameTheFile) {
  const auto dir = dslens::testing::temp_dir("fits_bad");
  try {
    dslens::read_fits_image(dir + "/nope.fits");
    FAIL();
  } catch (const dslens::FileError& e) {
    EXPECT_NE(std::string(e.what()).find("nope.fits"), std::string::npos);
  }
  std::ofstream(dir + "/junk.fits") << "not a fits file";
  EXPECT_THROW(dslens::read_fits_image(dir + "/junk.fits"), dslens::FileError);
  dslens::write_fits_image(dir + "/ok.fits", torch::ones({2, 2}));
  try {
    dslens::read_fits_image(dir + "/ok.fits", dslens::FitsHdu::number(3));
    FAIL();
  } catch (const dslens::FileError& e) {
    EXPECT_NE(std::string(e.what()).find("HDU 3"), std::string::npos) << e.what();
  }
}

TEST(OutputDir, StagedRefusesExistingAndCommitsAtomically) {
  const auto dir = dslens::testing::temp_dir("outdir");
  const auto target = dir + "/run";
  {
    auto out = dslens::OutputDir::staged(target, false);
    std::ofstream(out.file("a.txt")) << "x";
    EXPECT_FALSE(fs::exists(target));  // nothing visible until commit
    out.commit();
  }
  EXPECT_TRUE(fs::exists(target + "/a.txt"));
  EXPECT_THROW(dslens::OutputDir::staged(target, false), dslens::InputError);
  {
    auto out = dslens::OutputDir::staged(target, true);
    std::ofstream(out.file("b.txt")) << "y";
    // abandoned without commit: the old run must survive untouched
  }
  EXPECT_TRUE(fs::exists(target + "/a.txt"));
  EXPECT_FALSE(fs::exists(target + "/b.txt"));
  size_t entries = 0;
  for (auto it = fs::directory_iterator(dir); it != fs::directory_iterator(); ++it) ++entries;
  EXPECT_EQ(entries, 1u);  // no staging leftovers
}

TEST(Device, ParsesAndRejects) {
  EXPECT_EQ(dslens::parse_device("cpu").type(), torch::kCPU);
  EXPECT_THROW(dslens::parse_device("gpu"), dslens::InvalidArgument);
  EXPECT_THROW(dslens::parse_device("cuda:x"), dslens::InvalidArgument);
  if (!torch::cuda::is_available()) {
    EXPECT_THROW(dslens::parse_device("cuda"), dslens::InvalidArgument);
    EXPECT_EQ(dslens::parse_device("auto").type(), torch::kCPU);
  }
  EXPECT_EQ(dslens::parse_dtype("float32"), torch::kFloat32);
  EXPECT_THROW(dslens::parse_dtype("half"), dslens::InvalidArgument);
}

#include <fitsio.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/core/fits.h"
#include "dslens/core/fits_table.h"
#include "test_support.h"

namespace dslens::test_fits_table_detail {

// Writes a table with a string, an integer, a double and a vector column (HDU 1) after an empty
// primary HDU, through CFITSIO directly.
void write_table(const std::string& path) {
  fitsfile* f = nullptr;
  int status = 0;
  const std::string target = "!" + path;
  fits_create_file(&f, target.c_str(), &status);
  long naxes[1] = {0};
  fits_create_img(f, 8, 0, naxes, &status);
  char* ttype[] = {const_cast<char*>("NAME"), const_cast<char*>("Hdu"), const_cast<char*>("SCALE"),
                   const_cast<char*>("VEC")};
  char* tform[] = {const_cast<char*>("12A"), const_cast<char*>("J"), const_cast<char*>("D"),
                   const_cast<char*>("3E")};
  fits_create_tbl(f, BINARY_TBL, 3, 4, ttype, tform, nullptr, "CAT", &status);
  char s0[] = "first.fits", s1[] = "b", s2[] = "third one";
  char* names[] = {s0, s1, s2};
  int hdus[] = {0, 7, 2};
  double scales[] = {0.03, 0.05, 1.5};
  float vec[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  fits_write_col(f, TSTRING, 1, 1, 1, 3, names, &status);
  fits_write_col(f, TINT, 2, 1, 1, 3, hdus, &status);
  fits_write_col(f, TDOUBLE, 3, 1, 1, 3, scales, &status);
  fits_write_col(f, TFLOAT, 4, 1, 1, 9, vec, &status);
  fits_close_file(f, &status);
  ASSERT_EQ(status, 0);
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const FileError& e) {
    return e.what();
  }
  return "(no FileError)";
}

}  // namespace dslens::test_fits_table_detail

namespace tft = dslens::test_fits_table_detail;

TEST(FitsTable, ReadsStringAndNumericColumnsByName) {
  const auto path = dslens::testing::temp_dir("fits_table") + "/cat.fits";
  dslens::test_fits_table_detail::write_table(path);
  const auto info = dslens::read_fits_table_info(path);
  EXPECT_EQ(info.rows, 3);
  EXPECT_EQ(info.columns, (std::vector<std::string>{"NAME", "Hdu", "SCALE", "VEC"}));
  EXPECT_EQ(dslens::read_fits_string_column(path, "name"),
            (std::vector<std::string>{"first.fits", "b", "third one"}));
  EXPECT_EQ(dslens::read_fits_integer_column(path, "HDU"), (std::vector<long long>{0, 7, 2}));
  EXPECT_EQ(dslens::read_fits_numeric_column(path, "SCALE"),
            (std::vector<double>{0.03, 0.05, 1.5}));
  // Selecting the table by EXTNAME reads the same.
  EXPECT_EQ(dslens::read_fits_numeric_column(path, "Hdu", dslens::FitsHdu::named("CAT")),
            (std::vector<double>{0, 7, 2}));
}

TEST(FitsTable, ErrorsNameFileHduAndColumn) {
  const auto dir = dslens::testing::temp_dir("fits_table_bad");
  const auto path = dir + "/cat.fits";
  dslens::test_fits_table_detail::write_table(path);
  auto msg = tft::error_of([&] { dslens::read_fits_numeric_column(path, "PIXEL_SCALE"); });
  EXPECT_NE(msg.find("cat.fits"), std::string::npos) << msg;
  EXPECT_NE(msg.find("HDU 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("PIXEL_SCALE"), std::string::npos) << msg;
  EXPECT_NE(msg.find("SCALE, VEC"), std::string::npos) << msg;  // lists what exists
  msg = tft::error_of([&] { dslens::read_fits_numeric_column(path, "NAME"); });
  EXPECT_NE(msg.find("not a numeric column"), std::string::npos) << msg;
  msg = tft::error_of([&] { dslens::read_fits_string_column(path, "SCALE"); });
  EXPECT_NE(msg.find("not a character column"), std::string::npos) << msg;
  msg = tft::error_of([&] { dslens::read_fits_numeric_column(path, "VEC"); });
  EXPECT_NE(msg.find("vector column"), std::string::npos) << msg;
  msg = tft::error_of([&] { dslens::read_fits_integer_column(path, "SCALE"); });
  EXPECT_NE(msg.find("row 1"), std::string::npos) << msg;
  msg = tft::error_of(
      [&] { dslens::read_fits_string_column(path, "NAME", dslens::FitsHdu::number(0)); });
  EXPECT_NE(msg.find("not a table HDU"), std::string::npos) << msg;
  EXPECT_NE(msg.find("HDU 0"), std::string::npos) << msg;
  msg = tft::error_of(
      [&] { dslens::read_fits_string_column(path, "NAME", dslens::FitsHdu::number(5)); });
  EXPECT_NE(msg.find("HDU 5 does not exist"), std::string::npos) << msg;
  msg = tft::error_of([&] { dslens::read_fits_string_column(dir + "/missing.fits", "NAME"); });
  EXPECT_NE(msg.find("missing.fits"), std::string::npos) << msg;
}

TEST(FitsTable, ReadsManyImageHdusOfOneFile) {
  const auto dir = dslens::testing::temp_dir("fits_hdus");
  const auto path = dir + "/cube.fits";
  // Three HDUs of different sizes written through CFITSIO.
  fitsfile* f = nullptr;
  int status = 0;
  const std::string target = "!" + path;
  fits_create_file(&f, target.c_str(), &status);
  for (int k = 0; k < 3; ++k) {
    long naxes[2] = {3 + k, 2 + k};  // NAXIS1 = columns
    fits_create_img(f, DOUBLE_IMG, 2, naxes, &status);
    auto img = torch::arange((3 + k) * (2 + k), torch::kFloat64) + 100.0 * k;
    long first[2] = {1, 1};
    fits_write_pix(f, TDOUBLE, first, img.numel(), img.data_ptr<double>(), &status);
  }
  fits_close_file(f, &status);
  ASSERT_EQ(status, 0);
  const auto images = dslens::read_fits_image_hdus(path, {2, 0, 1});
  ASSERT_EQ(images.size(), 3u);
  EXPECT_EQ(images[0].sizes(), (std::vector<int64_t>{4, 5}));
  EXPECT_EQ(images[1].sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_DOUBLE_EQ(images[0][0][0].item<double>(), 200.0);
  EXPECT_DOUBLE_EQ(images[2][1][2].item<double>(), 106.0);  // row 1, column 2 of a 3x4 image
  EXPECT_TRUE(torch::equal(images[1], dslens::read_fits_image(path, dslens::FitsHdu::number(0))));
  const auto msg = tft::error_of([&] { dslens::read_fits_image_hdus(path, {0, 3}); });
  EXPECT_NE(msg.find("HDU 3 does not exist"), std::string::npos) << msg;
}

TEST(FitsTable, ReadsTheSharedGalSimCatalog) {
  const auto path =
      dslens::testing::shared_dir() + "/data/galaxies/cosmos_23.5_n1/real_galaxy_catalog_23.5.fits";
  DSLENS_REQUIRE_FILE(path);
  const auto files = dslens::read_fits_string_column(path, "GAL_FILENAME");
  ASSERT_EQ(files.size(), 10u);
  EXPECT_EQ(files[0], "real_galaxy_images_23.5_n1.fits");
  const auto hdus = dslens::read_fits_integer_column(path, "GAL_HDU");
  for (size_t i = 0; i < hdus.size(); ++i) EXPECT_EQ(hdus[i], static_cast<long long>(i));
  for (double s : dslens::read_fits_numeric_column(path, "PIXEL_SCALE")) EXPECT_NEAR(s, 0.03, 1e-6);
}

// write_fits_table: text columns as wide as their longest string, numbers as float64 with NaN for
// empty cells (read back through CFITSIO: the header's TFORMs and the readers above), atomically;
// columns of unequal length and names repeated in another case are refused before anything is
// written.
TEST(FitsTable, WritesTextAndFloat64ColumnsWithNaNForEmptyCells) {
  const auto dir = dslens::testing::temp_dir("fits_table_write");
  const std::string path = dir + "/cat.fits";
  dslens::FitsTableColumn lens{"lens", true, {"a", "SLACS J1430+4105", ""}, {}};
  dslens::FitsTableColumn theta{"theta_E_q50", false, {}, {1.5, NAN, -2.25e-7}};
  dslens::write_fits_table(path, {lens, theta}, "CATALOGUE");
  const auto info = dslens::read_fits_table_info(path);
  EXPECT_EQ(info.rows, 3);
  EXPECT_EQ(info.columns, (std::vector<std::string>{"lens", "theta_E_q50"}));
  EXPECT_EQ(dslens::read_fits_string_column(path, "LENS"), lens.text);
  const auto v = dslens::read_fits_numeric_column(path, "theta_E_q50");
  ASSERT_EQ(v.size(), 3u);
  EXPECT_EQ(v[0], 1.5);
  EXPECT_TRUE(std::isnan(v[1]));
  EXPECT_EQ(v[2], -2.25e-7);
  fitsfile* f = nullptr;
  int status = 0;
  fits_open_table(&f, path.c_str(), READONLY, &status);
  char tform1[FLEN_VALUE] = "", tform2[FLEN_VALUE] = "", extname[FLEN_VALUE] = "";
  fits_read_key(f, TSTRING, "TFORM1", tform1, nullptr, &status);
  fits_read_key(f, TSTRING, "TFORM2", tform2, nullptr, &status);
  fits_read_key(f, TSTRING, "EXTNAME", extname, nullptr, &status);
  fits_close_file(f, &status);
  ASSERT_EQ(status, 0);
  EXPECT_EQ(std::string(tform1), "16A");
  EXPECT_EQ(std::string(tform2), "1D");
  EXPECT_EQ(std::string(extname), "CATALOGUE");

  dslens::FitsTableColumn short_column{"other", false, {}, {1.0}};
  EXPECT_THROW(dslens::write_fits_table(dir + "/bad.fits", {lens, short_column}, "X"),
               dslens::InvalidArgument);
  dslens::FitsTableColumn same_name{"LENS", false, {}, {1.0, 2.0, 3.0}};
  EXPECT_THROW(dslens::write_fits_table(dir + "/bad.fits", {lens, same_name}, "X"),
               dslens::InvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(dir + "/bad.fits"));
  std::filesystem::remove_all(dir);
}

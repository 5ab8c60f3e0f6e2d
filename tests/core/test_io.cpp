#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <variant>
#include <vector>

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

// read_fits_header: every valued keyword as written, strings unquoted (a doubled quote is one).
TEST(Fits, HeaderKeepsStringsAndNumbersAsWritten) {
  const auto dir = dslens::testing::temp_dir("fits_header");
  const auto path = dir + "/h.fits";
  dslens::write_fits_image(path, torch::zeros({2, 3}),
                           {{"CTYPE1", std::string("RA---TAN"), ""},
                            {"OBSERVER", std::string("O'Hara"), ""},
                            {"CD1_1", -8.5e-6, ""},
                            {"NCOMBINE", 4LL, ""}});
  const auto h = dslens::read_fits_header(path);
  EXPECT_EQ(h.at("CTYPE1"), "RA---TAN");
  EXPECT_EQ(h.at("OBSERVER"), "O'Hara");
  EXPECT_DOUBLE_EQ(std::stod(h.at("CD1_1")), -8.5e-6);
  EXPECT_EQ(h.at("NCOMBINE"), "4");
  EXPECT_EQ(h.at("NAXIS1"), "3");
}

// fits_pixel_scale against pixel sizes set by hand through each form of the FITS WCS.
TEST(Fits, PixelScaleFromTheWorldCoordinateSystem) {
  using Header = std::map<std::string, std::string>;
  const auto num = [](double v) {
    char s[40];
    std::snprintf(s, sizeof s, "%.15E", v);
    return std::string(s);
  };
  // An HST-like CD matrix: 0.03" pixels, east left, rotated by 30 degrees; RA/DEC in degrees
  // (no CUNIT: the standard's default for celestial axes).
  const double p = 0.03 / 3600.0, t = 30.0 * M_PI / 180.0;
  Header hst = {{"CTYPE1", "RA---TAN"},           {"CTYPE2", "DEC--TAN"},
                {"CD1_1", num(-p * std::cos(t))}, {"CD1_2", num(p * std::sin(t))},
                {"CD2_1", num(p * std::sin(t))},  {"CD2_2", num(p * std::cos(t))}};
  auto s = dslens::fits_pixel_scale(hst);
  ASSERT_TRUE(s);
  EXPECT_NEAR(s->arcsec, 0.03, 1e-12);
  EXPECT_NEAR(s->aspect, 1.0, 1e-12);
  EXPECT_NE(s->from.find("CD1_1"), std::string::npos) << s->from;
  // The same in Fortran's exponent (old headers), and with a PIXSCALE that the WCS overrides.
  hst["CD2_2"] = "8.333333333333333D-06";
  hst["CD1_2"] = hst["CD2_1"] = "0.0";
  hst["CD1_1"] = "-8.333333333333333D-06";
  hst["PIXSCALE"] = "0.05";
  s = dslens::fits_pixel_scale(hst);
  ASSERT_TRUE(s);
  EXPECT_NEAR(s->arcsec, 0.03, 1e-12);
  // CDELT x PC, rotated: the area, and so the scale, is the CDELTs'; pixels 0.05" x 0.04".
  const Header pc = {{"CTYPE1", "RA---TAN"},        {"CTYPE2", "DEC--TAN"},
                     {"CDELT1", num(-0.05 / 3600)}, {"CDELT2", num(0.04 / 3600)},
                     {"PC1_1", num(std::cos(t))},   {"PC1_2", num(-std::sin(t))},
                     {"PC2_1", num(std::sin(t))},   {"PC2_2", num(std::cos(t))}};
  s = dslens::fits_pixel_scale(pc);
  ASSERT_TRUE(s);
  EXPECT_NEAR(s->arcsec, std::sqrt(0.05 * 0.04), 1e-12);
  // PC turns the pixel axes before CDELT stretches the world's: a pixel's x step on the sky is
  // (-0.05 cos t, 0.04 sin t), its y step (0.05 sin t, 0.04 cos t).
  EXPECT_NEAR(s->aspect,
              std::hypot(0.05 * std::cos(t), 0.04 * std::sin(t)) /
                  std::hypot(0.05 * std::sin(t), 0.04 * std::cos(t)),
              1e-9);
  s = dslens::fits_pixel_scale({{"CTYPE1", "RA---TAN"},
                                {"CTYPE2", "DEC--TAN"},
                                {"CDELT1", num(-0.05 / 3600)},
                                {"CDELT2", num(0.04 / 3600)}});
  ASSERT_TRUE(s);
  EXPECT_NEAR(s->aspect, 1.25, 1e-9);
  // dslens simulate's cards: CDELT in arcsec by CUNIT, no CTYPE.
  s = dslens::fits_pixel_scale(
      {{"CDELT1", "0.05"}, {"CDELT2", "0.05"}, {"CUNIT1", "arcsec"}, {"CUNIT2", "arcsec"}});
  ASSERT_TRUE(s);
  EXPECT_DOUBLE_EQ(s->arcsec, 0.05);
  // CDELT with neither a unit nor a celestial axis (pixels, say) is no scale; PIXSCALE then is.
  EXPECT_FALSE(dslens::fits_pixel_scale({{"CDELT1", "1.0"}, {"CDELT2", "1.0"}}));
  s = dslens::fits_pixel_scale({{"CDELT1", "1.0"}, {"CDELT2", "1.0"}, {"PIXSCALE", "0.1"}});
  ASSERT_TRUE(s);
  EXPECT_DOUBLE_EQ(s->arcsec, 0.1);
  EXPECT_FALSE(dslens::fits_pixel_scale({{"CTYPE1", "RA---TAN"}, {"CD1_1", "0"}}));  // singular
  EXPECT_FALSE(dslens::fits_pixel_scale(
      {{"CDELT1", "1e-5"}, {"CDELT2", "1e-5"}, {"CUNIT1", "m"}, {"CUNIT2", "m"}}));
  EXPECT_FALSE(dslens::fits_pixel_scale({}));
}

// fits_celestial_wcs: a celestial header's WCS keywords, SIP's included, with CRPIX moved by the
// cut-out's offset (so that a cut-out pixel lies where it lay in the image it was cut from), and
// nothing else; a header without celestial axes gives none. Written and read back, the cards are
// themselves again, and the pixel scale is the header's.
TEST(Fits, CelestialWcsMovesWithTheCutout) {
  const double p = 0.03 / 3600.0, t = 30.0 * M_PI / 180.0;
  char cd11[40];
  std::snprintf(cd11, sizeof cd11, "%.15E", -p * std::cos(t));
  const std::map<std::string, std::string> header = {{"SIMPLE", "T"},
                                                     {"NAXIS1", "301"},
                                                     {"OBJECT", "J1430+4105"},
                                                     {"EXPTIME", "2192.0"},
                                                     {"CTYPE1", "RA---TAN-SIP"},
                                                     {"CTYPE2", "DEC--TAN-SIP"},
                                                     {"CRVAL1", "217.5"},
                                                     {"CRVAL2", "41.1"},
                                                     {"CRPIX1", "151.0"},
                                                     {"CRPIX2", "150.5D0"},
                                                     {"CD1_1", cd11},
                                                     {"CD1_2", std::to_string(p * std::sin(t))},
                                                     {"CD2_1", "2.1D-06"},
                                                     {"CD2_2", std::to_string(p * std::cos(t))},
                                                     {"RADESYS", "ICRS"},
                                                     {"EQUINOX", "2000.0"},
                                                     {"A_ORDER", "2"},
                                                     {"A_0_2", "1.5E-07"},
                                                     {"B_ORDER", "2"},
                                                     {"B_2_0", "-3.0E-07"},
                                                     {"MJD-OBS", "53779.1"},
                                                     {"CDELT1A", "0.03"},
                                                     {"PV2_1", "45.0"}};
  const auto cards = dslens::fits_celestial_wcs(header, 80.0, 75.0);
  std::map<std::string, dslens::FitsValue> by_key;
  for (const auto& c : cards) by_key[c.key] = c.value;
  const std::vector<std::string> expected = {
      "A_0_2",  "A_ORDER", "B_2_0",  "B_ORDER", "CD1_1",  "CD1_2",   "CD2_1",   "CD2_2", "CRPIX1",
      "CRPIX2", "CRVAL1",  "CRVAL2", "CTYPE1",  "CTYPE2", "EQUINOX", "MJD-OBS", "PV2_1", "RADESYS"};
  std::vector<std::string> keys;
  for (const auto& [k, v] : by_key) keys.push_back(k);
  EXPECT_EQ(keys, expected);  // OBJECT, EXPTIME, NAXIS1 and the alternate WCS's CDELT1A left out
  EXPECT_DOUBLE_EQ(std::get<double>(by_key["CRPIX1"]), 151.0 - 80.0);
  EXPECT_DOUBLE_EQ(std::get<double>(by_key["CRPIX2"]), 150.5 - 75.0);
  EXPECT_DOUBLE_EQ(std::get<double>(by_key["CD2_1"]), 2.1e-6);  // Fortran's exponent read
  EXPECT_DOUBLE_EQ(std::get<double>(by_key["CD1_1"]), std::stod(cd11));
  EXPECT_EQ(std::get<std::string>(by_key["CTYPE1"]), "RA---TAN-SIP");
  EXPECT_EQ(std::get<std::string>(by_key["RADESYS"]), "ICRS");
  EXPECT_EQ(std::get<long long>(by_key["A_ORDER"]), 2);
  // Written on a cut-out and read back: the same cards (CRPIX moved once), the header's scale.
  const auto dir = dslens::testing::temp_dir("fits_sky");
  dslens::write_fits_image(dir + "/cut.fits", torch::zeros({4, 5}), cards);
  const auto back = dslens::read_fits_header(dir + "/cut.fits");
  const auto again = dslens::fits_celestial_wcs(back);
  ASSERT_EQ(again.size(), cards.size());
  for (const auto& c : again) {
    if (const auto* d = std::get_if<double>(&c.value)) {
      EXPECT_NEAR(*d, std::get<double>(by_key[c.key]), 1e-12 * std::abs(*d)) << c.key;
    } else {
      EXPECT_TRUE(c.value == by_key[c.key]) << c.key;
    }
  }
  const auto scale = dslens::fits_pixel_scale(back);
  ASSERT_TRUE(scale);
  EXPECT_NEAR(scale->arcsec, dslens::fits_pixel_scale(header)->arcsec, 1e-12);
  // No celestial axes (dslens's own linear arcsec frame, or one celestial axis alone): none.
  EXPECT_TRUE(dslens::fits_celestial_wcs({{"CUNIT1", "arcsec"}, {"CDELT1", "0.05"}}).empty());
  EXPECT_TRUE(dslens::fits_celestial_wcs({{"CTYPE1", "RA---TAN"}, {"CTYPE2", "WAVE"}}).empty());
  // CRPIX absent (FITS's default 0): written as minus the offset.
  const auto bare =
      dslens::fits_celestial_wcs({{"CTYPE1", "GLON-CAR"}, {"CTYPE2", "GLAT-CAR"}}, 3, 4);
  std::map<std::string, dslens::FitsValue> bare_keys;
  for (const auto& c : bare) bare_keys[c.key] = c.value;
  EXPECT_DOUBLE_EQ(std::get<double>(bare_keys.at("CRPIX1")), -3.0);
  EXPECT_DOUBLE_EQ(std::get<double>(bare_keys.at("CRPIX2")), -4.0);
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

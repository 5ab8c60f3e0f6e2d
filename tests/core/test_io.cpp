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
#include "dslens/core/sky_position.h"
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

// tan_sky_position against the gnomonic projection written forwards as in spherical astronomy
// texts (standard coordinates xi, eta of a point about the tangent point; Calabretta & Greisen
// 2002 write it inverted and as a rotation): sky points around a tangent point at mid, high and
// southern declinations and across RA = 0 go to pixels through the inverse of a rotated CD matrix
// and come back to within 1e-9 arcsec. CRPIX is CRVAL; SIP's terms move a pixel as the pixel its
// polynomial names; other projections are refused, saying why.
TEST(Fits, TanSkyPositionMatchesTheGnomonicProjection) {
  constexpr double deg = M_PI / 180.0;
  const double p = 0.1 / 3600.0, t = 30.0 * deg;
  const double cd[2][2] = {{-p * std::cos(t), p * std::sin(t)}, {p * std::sin(t), p * std::cos(t)}};
  const double det = cd[0][0] * cd[1][1] - cd[0][1] * cd[1][0];
  for (const auto& [a0, d0] : std::vector<std::pair<double, double>>{
           {217.5, 41.1}, {150.1, 2.2}, {0.01, -62.5}, {80.0, 88.9}}) {
    SCOPED_TRACE("tangent point " + std::to_string(a0) + ", " + std::to_string(d0));
    std::vector<dslens::FitsCard> wcs = {{"CTYPE1", std::string("RA---TAN"), ""},
                                         {"CTYPE2", std::string("DEC--TAN"), ""},
                                         {"CRVAL1", a0, ""},
                                         {"CRVAL2", d0, ""},
                                         {"CRPIX1", 1000.5, ""},
                                         {"CRPIX2", 990.0, ""},
                                         {"CD1_1", cd[0][0], ""},
                                         {"CD1_2", cd[0][1], ""},
                                         {"CD2_1", cd[1][0], ""},
                                         {"CD2_2", cd[1][1], ""}};
    const auto centre = dslens::tan_sky_position(wcs, 1000.5, 990.0);
    ASSERT_TRUE(centre);
    EXPECT_NEAR(centre->ra, a0, 1e-12);
    EXPECT_NEAR(centre->dec, d0, 1e-12);
    for (const auto& [da, dd] : std::vector<std::pair<double, double>>{
             {0.01, 0.0}, {-0.02, 0.015}, {0.0, -0.03}, {0.03, 0.03}}) {
      // The point's offsets on the sky in degrees of great circle, as RA steps grow with 1/cos.
      const double dec = (d0 + dd) * deg, ra = (a0 + da / std::cos(d0 * deg)) * deg;
      const double dra = ra - a0 * deg, sd0 = std::sin(d0 * deg), cd0 = std::cos(d0 * deg);
      const double cosc = sd0 * std::sin(dec) + cd0 * std::cos(dec) * std::cos(dra);
      const double xi = std::cos(dec) * std::sin(dra) / cosc / deg;
      const double eta = (cd0 * std::sin(dec) - sd0 * std::cos(dec) * std::cos(dra)) / cosc / deg;
      const double u = (cd[1][1] * xi - cd[0][1] * eta) / det;
      const double v = (-cd[1][0] * xi + cd[0][0] * eta) / det;
      const auto s = dslens::tan_sky_position(wcs, 1000.5 + u, 990.0 + v);
      ASSERT_TRUE(s);
      double want_ra = std::fmod(ra / deg, 360.0);
      if (want_ra < 0) want_ra += 360.0;
      EXPECT_NEAR(std::remainder(s->ra - want_ra, 360.0) * std::cos(dec), 0.0, 1e-9 / 3600.0);
      EXPECT_NEAR(s->dec, dec / deg, 1e-9 / 3600.0);
    }
    // SIP: A_0_2 v^2 and B_1_1 u v added to the offsets before CD.
    auto sip = wcs;
    sip[0].value = std::string("RA---TAN-SIP");
    sip[1].value = std::string("DEC--TAN-SIP");
    sip.push_back({"A_ORDER", 2LL, ""});
    sip.push_back({"B_ORDER", 2LL, ""});
    sip.push_back({"A_0_2", 2e-5, ""});
    sip.push_back({"B_1_1", -3e-5, ""});
    const double u = 120.0, v = -80.0;
    const auto distorted = dslens::tan_sky_position(sip, 1000.5 + u, 990.0 + v);
    const auto moved =
        dslens::tan_sky_position(wcs, 1000.5 + u + 2e-5 * v * v, 990.0 + v - 3e-5 * u * v);
    ASSERT_TRUE(distorted && moved);
    EXPECT_NEAR(distorted->ra, moved->ra, 1e-12);
    EXPECT_NEAR(distorted->dec, moved->dec, 1e-12);
  }
  std::string why;
  EXPECT_FALSE(dslens::tan_sky_position({{"CTYPE1", std::string("RA---SIN"), ""},
                                         {"CTYPE2", std::string("DEC--SIN"), ""},
                                         {"CRVAL1", 1.0, ""},
                                         {"CRVAL2", 2.0, ""},
                                         {"CDELT1", 1e-5, ""},
                                         {"CDELT2", 1e-5, ""}},
                                        1, 1, &why));
  EXPECT_NE(why.find("RA---SIN"), std::string::npos) << why;
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

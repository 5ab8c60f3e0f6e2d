// FITS cards that place an image on a dslens pixel grid: PIXSCALE (dslens's own, arcsec per
// pixel) and a linear world coordinate system in arcsec (FITS WCS Paper I, Greisen & Calabretta
// 2002: CUNITi, CDELTi, CRPIXi and CRVALi at pixel (1, 1), which is the grid's pixel (0, 0)), so
// that a FITS viewer shows the fit's x and y, and the pixel scale is read back from the header
// (core/fits.h, fits_pixel_scale) when the image is fitted again.
#pragma once
#include <string>
#include <vector>

#include "dslens/core/fits.h"
#include "dslens/physics/image_model.h"

namespace dslens::app {

//
// An image cut from one with a celestial WCS (`sky`, model::Observation::sky_wcs) keeps that as
// its primary WCS, so that a viewer overlays it on the sky, and carries the fit's x and y as the
// alternate WCS "A" (WCSNAMEA = 'DSLENS', Paper I section 2.5): the same cards with the suffix A.
inline std::vector<FitsCard> grid_fits_cards(const physics::PixelGrid& g,
                                             const std::vector<FitsCard>& sky = {}) {
  const std::string a = sky.empty() ? "" : "A";
  std::vector<FitsCard> cards = sky;
  cards.push_back({"PIXSCALE", g.pixel_scale, "arcsec per pixel"});
  if (!sky.empty()) cards.push_back({"WCSNAMEA", std::string("DSLENS"), "the fit's x, y (arcsec)"});
  std::vector<FitsCard> linear = {
      {"CUNIT1" + a, std::string("arcsec"), ""},
      {"CUNIT2" + a, std::string("arcsec"), ""},
      {"CDELT1" + a, g.pixel_scale, "x step per column (arcsec)"},
      {"CDELT2" + a, g.pixel_scale, "y step per row (arcsec)"},
      {"CRPIX1" + a, 1.0, "reference pixel (FITS, 1-based)"},
      {"CRPIX2" + a, 1.0, "reference pixel (FITS, 1-based)"},
      {"CRVAL1" + a, g.ra_at_xy_0, "x of pixel (1,1), ra_at_xy_0 (arcsec)"},
      {"CRVAL2" + a, g.dec_at_xy_0, "y of pixel (1,1), dec_at_xy_0 (arcsec)"}};
  cards.insert(cards.end(), linear.begin(), linear.end());
  return cards;
}

}  // namespace dslens::app

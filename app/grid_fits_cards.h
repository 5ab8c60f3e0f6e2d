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

inline std::vector<FitsCard> grid_fits_cards(const physics::PixelGrid& g) {
  return {{"PIXSCALE", g.pixel_scale, "arcsec per pixel"},
          {"CUNIT1", std::string("arcsec"), ""},
          {"CUNIT2", std::string("arcsec"), ""},
          {"CDELT1", g.pixel_scale, "x step per column (arcsec)"},
          {"CDELT2", g.pixel_scale, "y step per row (arcsec)"},
          {"CRPIX1", 1.0, "reference pixel (FITS, 1-based)"},
          {"CRPIX2", 1.0, "reference pixel (FITS, 1-based)"},
          {"CRVAL1", g.ra_at_xy_0, "x of pixel (1,1), ra_at_xy_0 (arcsec)"},
          {"CRVAL2", g.dec_at_xy_0, "y of pixel (1,1), dec_at_xy_0 (arcsec)"}};
}

}  // namespace dslens::app

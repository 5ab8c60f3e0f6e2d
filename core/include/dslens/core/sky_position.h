// Sky positions of pixels from a celestial WCS in the gnomonic (TAN) projection, the projection of
// HST's drizzled images and Euclid's mosaics, with SIP distortion where the header has it: for
// the RA and Dec of a fitted lens (`dslens fit`'s map.json "sky", `dslens catalogue`).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "dslens/core/fits.h"

namespace dslens {

struct SkyPosition {
  double ra = 0.0;   // degrees, in [0, 360)
  double dec = 0.0;  // degrees
};

// The sky position of the FITS pixel (pixel1, pixel2) (1-based, fractional; axis 1 = columns) under
// the WCS `cards` (fits_celestial_wcs's, or any with the same keywords): CTYPE1 RA---TAN and
// CTYPE2 DEC--TAN (either with -SIP), CRPIXi, CRVALi, and CDi_j, else CDELTi x PCi_j, in CUNITi
// (fits_pixel_to_sky). FITS WCS Paper I (pixel to intermediate coordinates) and Paper II
// (Calabretta & Greisen 2002, A&A 395, 1077: section 5.1.3, TAN; eq. 2, the native to celestial
// rotation, with LONPOLE 180 deg unless given); SIP: Shupe et al. 2005 (A_p_q, B_p_q applied to the
// pixel offsets from CRPIX before CD). nullopt for other projections or axes, or a missing
// keyword; `why`, when given, then says which.
std::optional<SkyPosition> tan_sky_position(const std::vector<FitsCard>& cards, double pixel1,
                                            double pixel2, std::string* why = nullptr);

}  // namespace dslens

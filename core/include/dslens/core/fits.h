// FITS images through CFITSIO. Images map to tensors as [NAXIS2, NAXIS1] (rows, columns), i.e.
// tensor[i][j] is the pixel at FITS (x = j+1, y = i+1); cubes as [NAXIS3, NAXIS2, NAXIS1].
// Errors are FileError naming the file and HDU.
#pragma once
#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace dslens {

// A header card value written with an image.
using FitsValue = std::variant<double, long long, std::string, bool>;
struct FitsCard {
  std::string key;
  FitsValue value;
  std::string comment;
};

// Which HDU to read: an index (0 = primary) or an EXTNAME.
struct FitsHdu {
  int index = -1;    // >= 0 selects by number
  std::string name;  // non-empty selects by EXTNAME
  static FitsHdu primary_or_first_image() { return {}; }
  static FitsHdu number(int i) { return {i, ""}; }
  static FitsHdu named(const std::string& n) { return {-1, n}; }
  std::string describe() const;
};

// Reads a 2-d image (or an N-d array) as float64 on the CPU. With the default HDU, the primary
// HDU is used if it holds data, else the first image extension.
torch::Tensor read_fits_image(const std::string& path,
                              const FitsHdu& hdu = FitsHdu::primary_or_first_image());
// Reads header keywords of the selected HDU (numeric ones only; others skipped).
std::map<std::string, double> read_fits_numeric_header(
    const std::string& path, const FitsHdu& hdu = FitsHdu::primary_or_first_image());
// Reads every valued keyword of the selected HDU as written: strings without their quotes and
// trailing blanks, numbers and logicals as their text.
std::map<std::string, std::string> read_fits_header(
    const std::string& path, const FitsHdu& hdu = FitsHdu::primary_or_first_image());

// The size of an image's pixels on the sky, from its header's world coordinate system.
struct FitsPixelScale {
  double arcsec = 0.0;  // sqrt(|det M|): the side of a square pixel of the same area
  double aspect = 1.0;  // the pixel's x side over its y side (1 = square)
  std::string from;     // the keywords used, e.g. "CD1_1..CD2_2 (deg)"
};
// The linear transform M from pixel to world coordinates is CDi_j where any is present, else
// CDELTi x PCi_j (PC the identity where absent; CROTA2 only rotates, which leaves the area as it
// is), each row i in CUNITi: deg, arcmin, arcsec or mas, and degrees where CUNITi is absent on a
// celestial axis (CTYPEi RA/DEC, GLON/GLAT, ELON/ELAT), as FITS WCS Papers I and II (Greisen &
// Calabretta 2002, A&A 395, 1061 and 1077) define them. Without such a transform, dslens's own
// PIXSCALE card (arcsec per pixel). nullopt when the header gives neither, or a singular M.
// (CFITSIO's fits_read_img_coord returns only the old-style CDELT/CROTA2 equivalents, approximate
// for a skewed CD matrix, and ignores CUNIT.)
std::optional<FitsPixelScale> fits_pixel_scale(const std::map<std::string, std::string>& header);

// The linear part of a header's WCS as above: M (arcsec per pixel; row i = world axis i, column
// j = pixel axis j) from CDi_j, else CDELTi x PCi_j, in CUNITi; `from` names the keywords and
// unit. nullopt without CD or both CDELTs, or where an axis's unit is not an angle.
struct FitsPixelToSky {
  double m[2][2] = {{0.0, 0.0}, {0.0, 0.0}};
  std::string from;
};
std::optional<FitsPixelToSky> fits_pixel_to_sky(const std::map<std::string, std::string>& header);

// A numeric keyword of a header as read_fits_header gives it (Fortran's D exponent read); nullopt
// where absent or not a finite number.
std::optional<double> fits_header_number(const std::map<std::string, std::string>& header,
                                         const std::string& key);

// Cards as read_fits_header would read them back (numbers as text to 17 digits, logicals T/F).
std::map<std::string, std::string> fits_cards_as_header(const std::vector<FitsCard>& cards);

// The celestial world coordinate system of a header (CTYPE1 and CTYPE2 both celestial: RA/DEC,
// GLON/GLAT, ELON/ELAT) as cards to write on an image cut from it whose pixel (1, 1) is the
// header's pixel (1 + column_offset, 1 + row_offset): CRPIXi less the offsets, every other WCS
// keyword as it is (CTYPEi, CUNITi, CRVALi, CDELTi, CROTA2, CDi_j, PCi_j, PVi_m, LONPOLE, LATPOLE,
// RADESYS, RADECSYS, EQUINOX, EPOCH, MJD-OBS, DATE-OBS, WCSNAME, and SIP's A/B/AP/BP terms and
// orders, which are relative to CRPIX and so move with it: Shupe et al. 2005, ASP Conf. 347,
// 491). Empty where the header has no celestial axes.
std::vector<FitsCard> fits_celestial_wcs(const std::map<std::string, std::string>& header,
                                         double column_offset = 0.0, double row_offset = 0.0);

// Writes `image` (any float/int tensor, any device) as a float64 (or float32 when
// `as_float32`) primary image, atomically: to a temporary file renamed into place.
void write_fits_image(const std::string& path, const torch::Tensor& image,
                      const std::vector<FitsCard>& cards = {}, bool as_float32 = false);

// Number of HDUs in a file.
int fits_hdu_count(const std::string& path);

}  // namespace dslens

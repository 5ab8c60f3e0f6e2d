#include "dslens/core/fits.h"

#include <fitsio.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <regex>

#include "dslens/core/atomic_file.h"
#include "dslens/core/errors.h"
#include "fits_file.h"

namespace dslens {
namespace {

// Moves to the requested HDU; for the default, the first HDU that holds image data.
void move_to_hdu(fits_io::FitsFile& f, const std::string& path, const FitsHdu& hdu) {
  int status = 0;
  int type = 0;
  if (!hdu.name.empty()) {
    if (fits_movnam_hdu(f.ptr, ANY_HDU, const_cast<char*>(hdu.name.c_str()), 0, &status)) {
      throw FileError("FITS file '" + path + "': no HDU named '" + hdu.name + "'");
    }
    return;
  }
  if (hdu.index >= 0) {
    if (fits_movabs_hdu(f.ptr, hdu.index + 1, &type, &status)) {
      throw FileError("FITS file '" + path + "': HDU " + std::to_string(hdu.index) +
                      " does not exist (" + std::to_string(fits_hdu_count(path)) + " HDUs)");
    }
    return;
  }
  int count = 0;
  fits_get_num_hdus(f.ptr, &count, &status);
  for (int i = 1; i <= count; ++i) {
    status = 0;
    fits_movabs_hdu(f.ptr, i, &type, &status);
    if (status || type != IMAGE_HDU) continue;
    int naxis = 0;
    fits_get_img_dim(f.ptr, &naxis, &status);
    if (!status && naxis > 0) return;
  }
  throw FileError("FITS file '" + path + "': no HDU holds image data");
}

}  // namespace

std::string FitsHdu::describe() const {
  if (!name.empty()) return "HDU '" + name + "'";
  if (index >= 0) return "HDU " + std::to_string(index);
  return "first image HDU";
}

int fits_hdu_count(const std::string& path) {
  fits_io::FitsFile f;
  fits_io::open_for_read(f, path);
  int status = 0, count = 0;
  fits_get_num_hdus(f.ptr, &count, &status);
  return count;
}

torch::Tensor read_fits_image(const std::string& path, const FitsHdu& hdu) {
  fits_io::FitsFile f;
  fits_io::open_for_read(f, path);
  move_to_hdu(f, path, hdu);
  return fits_io::read_current_image(f, "FITS file '" + path + "', " + hdu.describe());
}

namespace {

// The valued keywords of the selected HDU with their values as CFITSIO gives them (strings still
// in quotes).
std::vector<std::pair<std::string, std::string>> raw_header(const std::string& path,
                                                            const FitsHdu& hdu) {
  fits_io::FitsFile f;
  fits_io::open_for_read(f, path);
  move_to_hdu(f, path, hdu);
  int status = 0, nkeys = 0;
  fits_get_hdrspace(f.ptr, &nkeys, nullptr, &status);
  std::vector<std::pair<std::string, std::string>> out;
  for (int i = 1; i <= nkeys; ++i) {
    char key[FLEN_KEYWORD], value[FLEN_VALUE], comment[FLEN_COMMENT];
    status = 0;
    if (fits_read_keyn(f.ptr, i, key, value, comment, &status) || value[0] == '\0') continue;
    out.emplace_back(key, value);
  }
  return out;
}

}  // namespace

std::map<std::string, double> read_fits_numeric_header(const std::string& path,
                                                       const FitsHdu& hdu) {
  std::map<std::string, double> out;
  for (const auto& [key, value] : raw_header(path, hdu)) {
    char* end = nullptr;
    const double v = std::strtod(value.c_str(), &end);
    if (end != value.c_str() && *end == '\0') out[key] = v;
  }
  return out;
}

std::map<std::string, std::string> read_fits_header(const std::string& path, const FitsHdu& hdu) {
  std::map<std::string, std::string> out;
  for (auto [key, v] : raw_header(path, hdu)) {
    if (v.size() >= 2 && v.front() == '\'') {
      // A string: quotes doubled inside it, blanks after it not significant (FITS 4.0, 4.2.1).
      std::string text;
      for (size_t k = 1; k + 1 < v.size(); ++k) {
        text += v[k];
        if (v[k] == '\'' && v[k + 1] == '\'') ++k;
      }
      while (!text.empty() && text.back() == ' ') text.pop_back();
      v = text;
    }
    out[key] = v;
  }
  return out;
}

namespace {

// Arcsec per unit of a celestial axis's CUNIT; 0 for a unit that is not an angle.
double arcsec_per_unit(std::string unit) {
  for (auto& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (unit == "deg") return 3600.0;
  if (unit == "arcmin") return 60.0;
  if (unit == "arcsec") return 1.0;
  if (unit == "mas") return 1e-3;
  return 0.0;
}

bool celestial_axis(const std::string& ctype) {
  for (const char* prefix : {"RA--", "DEC-", "GLON", "GLAT", "ELON", "ELAT"}) {
    if (ctype.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

}  // namespace

std::optional<double> fits_header_number(const std::map<std::string, std::string>& header,
                                         const std::string& key) {
  const auto it = header.find(key);
  if (it == header.end()) return std::nullopt;
  std::string text = it->second;
  for (auto& c : text) {
    if (c == 'D' || c == 'd') c = 'E';  // Fortran's double-precision exponent (FITS 4.2.4)
  }
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0' || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::optional<FitsPixelToSky> fits_pixel_to_sky(const std::map<std::string, std::string>& header) {
  const auto number = [&header](const std::string& key) { return fits_header_number(header, key); };
  FitsPixelToSky out;
  bool cd = false;
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      if (const auto v = number("CD" + std::to_string(i + 1) + "_" + std::to_string(j + 1))) {
        out.m[i][j] = *v;
        cd = true;
      }
    }
  }
  if (cd) {
    out.from = "CD1_1..CD2_2";
  } else if (const auto d1 = number("CDELT1"), d2 = number("CDELT2"); d1 && d2) {
    const double delt[2] = {*d1, *d2};
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 2; ++j) {
        const auto pc = number("PC" + std::to_string(i + 1) + "_" + std::to_string(j + 1));
        out.m[i][j] = delt[i] * pc.value_or(i == j ? 1.0 : 0.0);
      }
    }
    out.from = "CDELT1, CDELT2";
  } else {
    return std::nullopt;
  }
  std::string units;
  for (int i = 0; i < 2; ++i) {
    const std::string n = std::to_string(i + 1);
    const auto unit = header.find("CUNIT" + n);
    const auto ctype = header.find("CTYPE" + n);
    double factor = 0.0;
    if (unit != header.end() && !unit->second.empty()) {
      factor = arcsec_per_unit(unit->second);
      units = unit->second;
    } else if (ctype != header.end() && celestial_axis(ctype->second)) {
      factor = 3600.0;
      units = "deg";
    }
    if (!(factor > 0.0)) return std::nullopt;
    out.m[i][0] *= factor;
    out.m[i][1] *= factor;
  }
  out.from += " (" + units + ")";
  return out;
}

std::optional<FitsPixelScale> fits_pixel_scale(const std::map<std::string, std::string>& header) {
  if (const auto t = fits_pixel_to_sky(header)) {
    const auto& m = t->m;
    const double area = std::abs(m[0][0] * m[1][1] - m[0][1] * m[1][0]);
    if (area > 0.0) {
      // Column j of M is the step on the sky of one pixel along the image's axis j.
      const double side_x = std::hypot(m[0][0], m[1][0]), side_y = std::hypot(m[0][1], m[1][1]);
      return FitsPixelScale{std::sqrt(area), side_x / side_y, t->from};
    }
  }
  if (const auto p = fits_header_number(header, "PIXSCALE"); p && *p > 0.0) {
    return FitsPixelScale{*p, 1.0, "PIXSCALE (arcsec)"};
  }
  return std::nullopt;
}

std::map<std::string, std::string> fits_cards_as_header(const std::vector<FitsCard>& cards) {
  std::map<std::string, std::string> out;
  for (const auto& c : cards) {
    if (const auto* d = std::get_if<double>(&c.value)) {
      char text[40];
      std::snprintf(text, sizeof text, "%.17g", *d);
      out[c.key] = text;
    } else if (const auto* i = std::get_if<long long>(&c.value)) {
      out[c.key] = std::to_string(*i);
    } else if (const auto* t = std::get_if<std::string>(&c.value)) {
      out[c.key] = *t;
    } else if (const auto* b = std::get_if<bool>(&c.value)) {
      out[c.key] = *b ? "T" : "F";
    }
  }
  return out;
}

std::vector<FitsCard> fits_celestial_wcs(const std::map<std::string, std::string>& header,
                                         double column_offset, double row_offset) {
  const auto ctype = [&header](const char* key) {
    const auto it = header.find(key);
    return it == header.end() ? std::string() : it->second;
  };
  if (!celestial_axis(ctype("CTYPE1")) || !celestial_axis(ctype("CTYPE2"))) return {};
  // FITS WCS Papers I and II (Greisen & Calabretta 2002) and the SIP convention's keywords.
  static const std::regex wcs_key(
      "(CTYPE|CUNIT|CRVAL|CDELT)[12]|CROTA2|(CD|PC)[12]_[12]|PV[12]_[0-9]+|LONPOLE|LATPOLE|"
      "RADESYS|RADECSYS|EQUINOX|EPOCH|MJD-OBS|DATE-OBS|WCSNAME|(A|B|AP|BP)_ORDER|"
      "(A|B|AP|BP)_[0-9]+_[0-9]+");
  static const std::regex text_key("(CTYPE|CUNIT)[12]|RADESYS|RADECSYS|DATE-OBS|WCSNAME");
  static const std::regex order_key("(A|B|AP|BP)_ORDER");
  std::vector<FitsCard> cards;
  for (const auto& [key, value] : header) {
    if (!std::regex_match(key, wcs_key)) continue;
    if (std::regex_match(key, text_key)) {
      cards.push_back({key, value, ""});
    } else if (const auto v = fits_header_number(header, key)) {
      if (std::regex_match(key, order_key))
        cards.push_back({key, static_cast<long long>(std::llround(*v)), ""});
      else
        cards.push_back({key, *v, ""});
    }
  }
  // CRPIXi (0 where absent, FITS's default) moved to the cut-out's pixels.
  cards.push_back({"CRPIX1", fits_header_number(header, "CRPIX1").value_or(0.0) - column_offset,
                   "reference pixel (the image's it was cut from less the cut-out's column)"});
  cards.push_back({"CRPIX2", fits_header_number(header, "CRPIX2").value_or(0.0) - row_offset,
                   "reference pixel (the image's it was cut from less the cut-out's row)"});
  return cards;
}

void write_fits_image(const std::string& path, const torch::Tensor& image,
                      const std::vector<FitsCard>& cards, bool as_float32) {
  if (image.dim() < 1) throw InvalidArgument("write_fits_image: a scalar is not an image");
  torch::Tensor data = image.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  write_file_atomically(path, [&](const std::string& tmp) {
    fits_io::FitsFile f;
    fits_io::create_for_write(f, tmp, path);
    int status = 0;
    std::vector<long> naxes;
    for (int64_t i = data.dim() - 1; i >= 0; --i) naxes.push_back(data.size(i));
    fits_create_img(f.ptr, as_float32 ? FLOAT_IMG : DOUBLE_IMG, static_cast<int>(naxes.size()),
                    naxes.data(), &status);
    for (const auto& card : cards) {
      char* comment = const_cast<char*>(card.comment.c_str());
      char* key = const_cast<char*>(card.key.c_str());
      if (auto* d = std::get_if<double>(&card.value)) {
        double v = *d;
        fits_update_key(f.ptr, TDOUBLE, key, &v, comment, &status);
      } else if (auto* i = std::get_if<long long>(&card.value)) {
        LONGLONG v = *i;
        fits_update_key(f.ptr, TLONGLONG, key, &v, comment, &status);
      } else if (auto* s = std::get_if<std::string>(&card.value)) {
        fits_update_key(f.ptr, TSTRING, key, const_cast<char*>(s->c_str()), comment, &status);
      } else if (auto* b = std::get_if<bool>(&card.value)) {
        int v = *b ? 1 : 0;
        fits_update_key(f.ptr, TLOGICAL, key, &v, comment, &status);
      }
    }
    std::vector<long> first(naxes.size(), 1);
    fits_write_pix(f.ptr, TDOUBLE, first.data(), data.numel(), data.data_ptr<double>(), &status);
    fits_io::finish_write(f, status, path);
  });
}

}  // namespace dslens

#include "dslens/core/sky_position.h"

#include <algorithm>
#include <cmath>
#include <map>

namespace dslens {

std::optional<SkyPosition> tan_sky_position(const std::vector<FitsCard>& cards, double pixel1,
                                            double pixel2, std::string* why) {
  const auto fail = [why](const std::string& what) -> std::optional<SkyPosition> {
    if (why) *why = what;
    return std::nullopt;
  };
  const std::map<std::string, std::string> header = fits_cards_as_header(cards);
  const auto value = [&header](const std::string& key, double fallback) {
    return fits_header_number(header, key).value_or(fallback);
  };
  const auto text = [&header](const char* key) {
    const auto it = header.find(key);
    return it == header.end() ? std::string() : it->second;
  };
  const std::string c1 = text("CTYPE1"), c2 = text("CTYPE2");
  const bool sip = c1 == "RA---TAN-SIP" && c2 == "DEC--TAN-SIP";
  if (!sip && !(c1 == "RA---TAN" && c2 == "DEC--TAN")) {
    return fail("axes '" + c1 + "', '" + c2 +
                "' are not RA---TAN and DEC--TAN (the gnomonic projection, with or without -SIP)");
  }
  for (const char* key : {"CRVAL1", "CRVAL2"}) {
    if (!fits_header_number(header, key)) return fail(std::string("no ") + key);
  }
  // The pixel-to-sky matrix (core/fits.h), arcsec per pixel.
  const auto linear = fits_pixel_to_sky(header);
  if (!linear) return fail("no CDi_j or CDELTi, or an axis's CUNIT is not an angle");
  // Pixel offsets from CRPIX, with SIP's polynomials added (Shupe et al. 2005, eq. 1).
  double u = pixel1 - value("CRPIX1", 0.0), v = pixel2 - value("CRPIX2", 0.0);
  if (sip) {
    double f = 0.0, g = 0.0;
    const auto order_a = static_cast<int>(value("A_ORDER", 0.0));
    const auto order_b = static_cast<int>(value("B_ORDER", 0.0));
    for (int p = 0; p <= std::max(order_a, order_b); ++p) {
      for (int q = 0; p + q <= std::max(order_a, order_b); ++q) {
        const double term = std::pow(u, p) * std::pow(v, q);
        const std::string pq = std::to_string(p) + "_" + std::to_string(q);
        if (p + q <= order_a) f += value("A_" + pq, 0.0) * term;
        if (p + q <= order_b) g += value("B_" + pq, 0.0) * term;
      }
    }
    u += f;
    v += g;
  }
  // Intermediate world coordinates (degrees), Paper I eq. 1 and 3.
  const auto& m = linear->m;
  const double x = (m[0][0] * u + m[0][1] * v) / 3600.0, y = (m[1][0] * u + m[1][1] * v) / 3600.0;
  // TAN (Paper II eq. 54-55, inverted): native longitude phi and latitude theta.
  constexpr double deg = M_PI / 180.0;
  const double r = std::hypot(x, y);
  const double phi = std::atan2(x, -y);
  const double theta = std::atan2(1.0, r * deg);  // R_theta = (180 / pi) cot(theta)
  // Native to celestial (Paper II eq. 2), the native pole at (alpha_0, delta_0) = CRVAL for a
  // zenithal projection, phi_p = LONPOLE (180 deg unless delta_0 >= theta_0 = 90 deg).
  const double a0 = value("CRVAL1", 0.0) * deg, d0 = value("CRVAL2", 0.0) * deg;
  const double phi_p = value("LONPOLE", value("CRVAL2", 0.0) >= 90.0 ? 0.0 : 180.0) * deg;
  const double dphi = phi - phi_p;
  const double ra = a0 + std::atan2(-std::cos(theta) * std::sin(dphi),
                                    std::sin(theta) * std::cos(d0) -
                                        std::cos(theta) * std::sin(d0) * std::cos(dphi));
  const double dec =
      std::asin(std::sin(theta) * std::sin(d0) + std::cos(theta) * std::cos(d0) * std::cos(dphi));
  SkyPosition out{std::fmod(ra / deg, 360.0), dec / deg};
  if (out.ra < 0.0) out.ra += 360.0;
  return out;
}

}  // namespace dslens

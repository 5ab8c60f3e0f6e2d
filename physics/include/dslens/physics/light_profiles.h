// The light profiles behind make_light_profile (lenstronomy's LightModel), for callers that want
// a concrete type or the pixelated-source interpolation on its own.
//
//   SERSIC          amp, R_sersic, n_sersic, center_x, center_y
//   SERSIC_ELLIPSE  amp, R_sersic, n_sersic, e1, e2, center_x, center_y
//                   (lenstronomy's default: R_sersic is the product-average radius sqrt(a*b))
//   GAUSSIAN        amp, sigma, center_x, center_y; amp is the total flux:
//                   I = amp / (2 pi sigma^2) exp(-r^2 / (2 sigma^2))
//   INTERPOL        image [B, h, w] or [1, h, w] (or [h, w]), center_x, center_y, scale,
//                   phi_G (default 0), amp (default 1); see interpolate_source_image.
//   INTERPOL_BICUBIC  the same, interpolated bicubically (PixelInterpolation::kBicubic).
//   UNIFORM         amp: a constant surface brightness (a sky level; any sign). The PSF keeps a
//                   constant, so simulate_image adds it after the convolution, where the zero
//                   padding would have dimmed it within a kernel's half-width of the edges.
//
// Sersic: I = amp exp(-b_n ((R / R_sersic)^(1/n) - 1)), b_n = max(1.9992 n - 0.3271, 1e-5), R and
// R_sersic floored at 1e-5 and I = 0 beyond 1000 R_sersic, as lenstronomy does.
//
// total_flux: Sersic 2 pi n R_sersic^2 amp e^(b_n) b_n^(-2n) Gamma(2n) (Graham & Driver 2005, eq.
// 4, the same for the product-average ellipse, whose area element is the circle's; the cut-off at
// 1000 R_sersic is left out); GAUSSIAN amp; INTERPOL amp scale^2 times the sum of the image's
// pixels (the bilinear tent and Keys's cubic kernel each integrate to 1 per pixel, and the
// rotation by phi_G keeps areas); UNIFORM has none (InvalidArgument).
#pragma once
#include <string>
#include <vector>

#include "dslens/physics/profile.h"

namespace dslens::physics {

// p[name]; throws InvalidArgument naming the profile and its parameters when it is missing or
// undefined.
const Tensor& light_param(const ParamMap& p, const std::string& name, const std::string& profile,
                          const std::vector<std::string>& names);

class SersicLight : public LightProfile {
 public:
  std::string type() const override { return "SERSIC"; }
  std::vector<std::string> param_names() const override;
  Tensor surface_brightness(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Tensor total_flux(const ParamMap& p) const override;
};

class SersicEllipseLight : public LightProfile {
 public:
  std::string type() const override { return "SERSIC_ELLIPSE"; }
  std::vector<std::string> param_names() const override;
  Tensor surface_brightness(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Tensor total_flux(const ParamMap& p) const override;
};

class GaussianLight : public LightProfile {
 public:
  std::string type() const override { return "GAUSSIAN"; }
  std::vector<std::string> param_names() const override;
  Tensor surface_brightness(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Tensor total_flux(const ParamMap& p) const override;
};

class UniformLight : public LightProfile {
 public:
  std::string type() const override { return "UNIFORM"; }
  std::vector<std::string> param_names() const override;
  Tensor surface_brightness(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Tensor total_flux(const ParamMap& p) const override;
  bool psf_invariant() const override { return true; }
};

// Why a config's source may not be UNIFORM: a source needs a finite flux (its magnification).
inline constexpr const char* kUniformSourceRefusal =
    "UNIFORM is a constant sky level, without the finite flux a source has; give it under "
    "lens_light";

// How a pixelated image is sampled between its pixel centres.
enum class PixelInterpolation {
  // lenstronomy's INTERPOL: continuous, but its gradient in the coordinates jumps at every pixel
  // row and column, so a posterior through it is a patchwork of kinks (Newton's polish stalled on
  // them; docs/fit.md, "Source interpolation").
  kBilinear,
  // Keys (1981) cubic convolution with a = -1/2 (Catmull-Rom) over 4 x 4 pixels: value and
  // gradient continuous, linear and quadratic images reproduced exactly.
  kBicubic,
};

class InterpolLight : public LightProfile {
 public:
  explicit InterpolLight(PixelInterpolation order = PixelInterpolation::kBilinear)
      : order_(order) {}
  std::string type() const override {
    return order_ == PixelInterpolation::kBicubic ? "INTERPOL_BICUBIC" : "INTERPOL";
  }
  // "image", "center_x", "center_y", "scale", "phi_G", "amp" (the last two optional).
  std::vector<std::string> param_names() const override;
  Tensor surface_brightness(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Tensor total_flux(const ParamMap& p) const override;

 private:
  PixelInterpolation order_;
};

// Bilinear interpolation of source images at source-pixel coordinates, lenstronomy's INTERPOL
// convention: pixel (row r, col c) of an [h, w] image sits at
//   x_pix = c - (w - 1) / 2,   y_pix = r - (h - 1) / 2,
// the image is surrounded by a one-pixel border of zeros (so values fall linearly to 0 over one
// pixel beyond the outer pixel centres) and is 0 further out.
// image: [B, h, w] or [1, h, w]; x_pix, y_pix: [B, N] or [1, N]; result [B, N]. Exact gradients in
// the image and in the coordinates (float32/float64). On the CPU a loop kernel with a hand-written
// backward, on other devices torch grid_sample (bilinear, zero padding, align_corners = false);
// derivatives of order two and more (create_graph) and tensor_ops = true use an equivalent
// floor + gather tensor-op path. At exact pixel centres (kinks) the gradient is one-sided.
// kBicubic: the 4 x 4 pixels around the point by cubic convolution, taps outside the image 0 (so
// the value falls to 0 within two pixels beyond the outer centres); the gather path on other
// devices.
Tensor interpolate_source_image(const Tensor& image, const Tensor& x_pix, const Tensor& y_pix,
                                bool tensor_ops = false,
                                PixelInterpolation order = PixelInterpolation::kBilinear);

}  // namespace dslens::physics

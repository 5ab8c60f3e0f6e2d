// The data traced back to the source plane, to start a decoded source (VAE latents or free
// pixels) from the data instead of from prior draws.
//
// Lensing conserves surface brightness: a pixel of the lens-light-subtracted data, divided by its
// area, is the source's surface brightness at the pixel's ray-shot position beta = theta -
// alpha(theta) (blurred by the PSF and the pixel). For a candidate lens, the pixels that carry
// signal (data / sigma above a threshold) traced back give the source's flux-weighted centre and,
// averaged on the decoded source's stamp grid, an image of the source that the VAE's encoder maps
// to latents (the amortised inference the encoder was trained for). Near the true lens the
// multiple images land on the same source; far from it they do not, and the stamp is a blur.
#pragma once
#include <torch/torch.h>

#include <optional>
#include <utility>

#include "dslens/model/arcs_placement.h"
#include "dslens/model/lens_posterior.h"
#include "dslens/model/parameter_space.h"

namespace dslens::model {

struct BackProjectionSettings {
  // Pixels whose lens-light-subtracted data exceed this many sigma are traced back.
  double snr_threshold = 3.0;
  int64_t stamp_size = 64;  // the stamp's side in stamp pixels
  // Image pixels are usually coarser than stamp pixels: traced pixels are averaged in cells of
  // cell x cell stamp pixels (a divisor of stamp_size), then interpolated bilinearly to the
  // stamp. 0: the divisor of stamp_size nearest to pixel_scale / stamp pixel size.
  int64_t cell = 0;
  // The footprint's half width holds this fraction of the traced flux (below).
  double footprint_flux_fraction = 0.99;
  // Pixels the lens demagnifies count nothing for the centre, the footprint and the stamp, as for
  // a grid placed on the arcs (ArcsPlacementSpec::min_magnification, model/arcs_placement.h): what
  // the lens light leaves in the lens's core is not the source. min_magnification <= 0: all count.
  double min_magnification = kCoreMagnification;
  double full_magnification = kArcMagnification;
};

struct BackProjection {
  torch::Tensor center_x, center_y;  // [B]: flux-weighted centre; NaN where nothing was traced
  torch::Tensor stamp;               // [B, S, S]: surface brightness on the stamp grid
  torch::Tensor traced;              // [B]: number of pixels traced back (int64)
  // [B]: the half side of the smallest square about the centre that holds footprint_flux_fraction
  // of the traced flux (each pixel at its ray-shot position, weighted by its flux in the image, not
  // by its source-plane area as the centre is), arcsec; NaN where nothing was traced. How large a
  // pixel grid must be to hold the source for that lens.
  torch::Tensor half_width;
};

// For `rows` rows of constrained parameters (lens-major, as LensPosterior::build): the lens light
// of those parameters is subtracted from the data, then the signal pixels are traced through their
// lens. The stamp of row b is centred on its centre (or on stamp_centre's, [B] or [1] each, when
// given: a grid placed elsewhere), with pixels of scale[b] arcsec rotated by phi[b] (lenstronomy's
// INTERPOL convention, physics/light_profiles.h); scale and phi are [B] or [1]. No gradient.
// InvalidArgument for a stamp size < 1 or a cell that does not divide it.
BackProjection back_project(
    const LensPosterior& posterior, const ParameterSpace::Unpacked& values, int64_t rows,
    const torch::Tensor& scale, const torch::Tensor& phi, const BackProjectionSettings& settings,
    const std::optional<std::pair<torch::Tensor, torch::Tensor>>& stamp_centre = std::nullopt);

// The same without a stamp (a 1 x 1 one): the traced pixels' centre, count and footprint
// (half_width) only, pixels above `snr_threshold` sigma.
BackProjection trace_back(const LensPosterior& posterior, const ParameterSpace::Unpacked& values,
                          int64_t rows, double snr_threshold = 3.0);

}  // namespace dslens::model

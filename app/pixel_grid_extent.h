// A PIXELATED grid's extent against the arcs it must hold (docs/fit.md, "A pixel grid's extent").
#pragma once
#include <optional>
#include <string>

#include "dslens/model/fit_model.h"
#include "dslens/model/lens_posterior.h"

namespace dslens::app {

// The grid's side at the MAP, n x scale (arcsec; a grid placed on the arcs: the scale its
// placement gives, model/arcs_placement.h), and the side that holds the arcs traced back
// through the MAP's lens: 2.2 x the half width holding 99 % of the traced image flux
// (model::BackProjection::half_width; a tenth to spare each side). NaN where nothing is traced.
// For a fixed scale, a warning when the side is more than kPixelGridTooWide times that or below
// kPixelGridTooNarrow times it: a grid wider than the arcs' footprint has coarse pixels, which
// favour lenses that enlarge the source in the source plane (the slope of docs/fit.md's 20 x 20
// mock at 2.497 +- 0.020 against a truth of 2.1 with the side 1.55 times the arcs'; with the
// scale free, 2.114 +- 0.033); one narrower leaves arcs off the grid.
struct PixelGridExtent {
  double side = 0.0, arcs_side = 0.0;
  std::optional<std::string> warning;
};
inline constexpr double kPixelGridTooWide = 1.25, kPixelGridTooNarrow = 0.9;
// The side that holds the arcs, in half widths of their traced flux (a tenth to spare each side).
// At the 20 x 20 and 32 x 32 mocks' posterior modes the free grid's side was 1.01 and 1.03 times
// that.
inline constexpr double kPixelGridSidePerHalfWidth = 2.2;
// `values`: the MAP's constrained parameters, one row. Models without a PIXELATED source: nullopt.
std::optional<PixelGridExtent> pixel_grid_extent(const model::FitModel& model,
                                                 const model::LensPosterior& posterior,
                                                 const model::ParameterSpace::Unpacked& values);

}  // namespace dslens::app

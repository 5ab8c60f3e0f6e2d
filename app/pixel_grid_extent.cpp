#include "pixel_grid_extent.h"

#include <cmath>

#include "dslens/model/source_backprojection.h"
#include "dslens/physics/profile.h"

namespace dslens::app {

std::optional<PixelGridExtent> pixel_grid_extent(const model::FitModel& model,
                                                 const model::LensPosterior& posterior,
                                                 const model::ParameterSpace::Unpacked& values) {
  if (model.decoded_kind != "PIXELATED") return std::nullopt;
  const model::ProfileBinding* grid = nullptr;
  for (const auto& b : posterior.spec().source) {
    if (physics::is_pixelated_light(b.type) && b.params.count("scale") &&
        values.values.count(b.params.at("scale")))
      grid = &b;
  }
  const auto arcs = posterior.arcs_grid(values, 1);
  if (grid == nullptr && !arcs) return std::nullopt;
  const auto bp = model::trace_back(posterior, values, 1);
  PixelGridExtent out;
  const double scale =
      arcs ? arcs->scale[0].item<double>()
           : values.values.at(grid->params.at("scale")).reshape({-1})[0].item<double>();
  out.side = double(model.decoded_size) * scale;
  out.arcs_side = kPixelGridSidePerHalfWidth * bp.half_width[0].item<double>();
  if (arcs || !posterior.space().is_fixed(grid->params.at("scale")) ||
      !std::isfinite(out.arcs_side))
    return out;
  const double ratio = out.side / out.arcs_side;
  const double suggested = out.arcs_side / double(model.decoded_size);
  char numbers[256];
  std::snprintf(numbers, sizeof numbers, "side %.3g\" (%lld x %.3g\") is %.2f times the %.3g\"",
                out.side, static_cast<long long>(model.decoded_size), scale, ratio, out.arcs_side);
  char advice[160];
  std::snprintf(
      advice, sizeof advice,
      "; leave out %s/scale to let the grid's extent follow the lens, or set it to about %.3g",
      model.decoded_path.c_str(), suggested);
  if (ratio > kPixelGridTooWide) {
    out.warning =
        std::string("the PIXELATED grid's ") + numbers +
        " that holds the arcs traced back through the MAP's lens: its coarse pixels favour "
        "lenses that enlarge the source in the source plane (steeper slopes; docs/fit.md, "
        "\"A pixel grid's extent\")" +
        advice;
  } else if (ratio < kPixelGridTooNarrow) {
    out.warning = std::string("the PIXELATED grid's ") + numbers +
                  " that holds the arcs traced back through the MAP's lens: arcs fall off the "
                  "grid" +
                  advice;
  }
  return out;
}

}  // namespace dslens::app

// Image panels shared by the lens figures (simulate's preview.png, fit's report.png): overlays of
// curves in arcsec, panel titles, a log-convergence panel and an arcsec scale bar.
#pragma once
#include <array>
#include <string>
#include <utility>
#include <vector>

#include "dslens/core/plot.h"
#include "dslens/physics/image_model.h"

namespace dslens::app::plot_panels {

// Data coordinates (arcsec) of a panel's edges, for overlays.
struct Extent {
  double xmin, xmax, ymin, ymax;
};

// The outer pixel edges of a grid.
Extent grid_extent(const physics::PixelGrid& grid);

// Draws segments (x0, y0, x1, y1) in arcsec over a panel showing `e`; segments with an end
// outside the panel are left out.
void draw_segments(plot::Canvas& canvas, const plot::Box& box, const Extent& e,
                   const std::vector<std::array<double, 4>>& segments, plot::Rgb colour);

// A "+" of half size `half` (arcsec) at each point (x, y), drawn as draw_segments does.
void draw_crosses(plot::Canvas& canvas, const plot::Box& box, const Extent& e,
                  const std::vector<std::array<double, 2>>& points, double half, plot::Rgb colour);

// A title centred above a panel.
void panel_title(plot::Canvas& canvas, const plot::Box& box, const std::string& title);

// log10 of the convergence [H, W] covering `e` (non-positive values blank), viridis between the
// finite minimum and maximum, the critical curves in red over it, the title and a colour bar in
// `bar`. Returns the colour limits.
std::pair<double, double> draw_log_convergence(plot::Canvas& canvas, const plot::Box& box,
                                               const plot::Box& bar, const torch::Tensor& kappa,
                                               const Extent& e,
                                               const std::vector<std::array<double, 4>>& critical,
                                               const std::string& title);

// A horizontal bar of a round length in arcsec (about a quarter of the panel) with its length
// written above it, in the bottom-left corner of the panel.
void scale_bar(plot::Canvas& canvas, const plot::Box& box, const Extent& e, plot::Rgb colour);

}  // namespace dslens::app::plot_panels

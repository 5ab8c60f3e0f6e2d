// Image panels shared by the lens figures (see plot_panels.h).
#include "plot_panels.h"

#include <cmath>
#include <cstdio>

namespace dslens::app::plot_panels {

using plot::Box;
using plot::Canvas;
using plot::Rgb;

Extent grid_extent(const physics::PixelGrid& g) {
  const auto e = g.edges();
  return {e.x_min, e.x_max, e.y_min, e.y_max};
}

void draw_segments(Canvas& canvas, const Box& box, const Extent& e,
                   const std::vector<std::array<double, 4>>& segments, Rgb colour) {
  auto px = [&](double x) { return box.x + (x - e.xmin) / (e.xmax - e.xmin) * box.w; };
  auto py = [&](double y) { return box.y + box.h - (y - e.ymin) / (e.ymax - e.ymin) * box.h; };
  for (const auto& s : segments) {
    double x0 = px(s[0]), y0 = py(s[1]), x1 = px(s[2]), y1 = py(s[3]);
    // Keep overlays inside their panel.
    auto inside = [&](double x, double y) {
      return x >= box.x && x <= box.x + box.w - 1 && y >= box.y && y <= box.y + box.h - 1;
    };
    if (!inside(x0, y0) || !inside(x1, y1)) continue;
    canvas.line(x0, y0, x1, y1, colour, 1);
  }
}

void draw_crosses(Canvas& canvas, const Box& box, const Extent& e,
                  const std::vector<std::array<double, 2>>& points, double half, Rgb colour) {
  std::vector<std::array<double, 4>> segments;
  for (const auto& [x, y] : points) {
    segments.push_back({x - half, y, x + half, y});
    segments.push_back({x, y - half, x, y + half});
  }
  draw_segments(canvas, box, e, segments, colour);
}

void panel_title(Canvas& canvas, const Box& box, const std::string& title) {
  canvas.text(box.x + (box.w - Canvas::text_width(title)) / 2, box.y - 12, title);
}

std::pair<double, double> draw_log_convergence(Canvas& canvas, const Box& box, const Box& bar,
                                               const torch::Tensor& kappa, const Extent& e,
                                               const std::vector<std::array<double, 4>>& critical,
                                               const std::string& title) {
  torch::Tensor logk = torch::where(kappa > 0, torch::log10(torch::clamp_min(kappa, 1e-3)),
                                    torch::full_like(kappa, std::nan("")));
  double kmin = -3.0, kmax = 1.0;
  const torch::Tensor finite = logk.masked_select(torch::isfinite(logk));
  if (finite.numel() > 0) {
    kmin = finite.min().item<double>();
    kmax = finite.max().item<double>();
  }
  if (!(kmax > kmin)) kmax = kmin + 1.0;
  canvas.image(box, logk, "viridis", kmin, kmax);
  draw_segments(canvas, box, e, critical, plot::kRed);
  panel_title(canvas, box, title);
  canvas.colorbar(bar, "viridis", kmin, kmax);
  return {kmin, kmax};
}

void scale_bar(Canvas& canvas, const Box& box, const Extent& e, Rgb colour) {
  const double width = e.xmax - e.xmin;
  if (!(width > 0) || box.w < 40 || box.h < 30) return;
  double length = 0.0;
  for (double m = 1e-3; m <= 1e3; m *= 10) {
    for (double f : {1.0, 2.0, 5.0}) {
      if (f * m <= 0.3 * width) length = f * m;
    }
  }
  if (length <= 0) return;
  const int pixels = static_cast<int>(std::lround(length / width * box.w));
  const int x = box.x + 8, y = box.y + box.h - 10;
  canvas.fill({x, y, pixels, 2}, colour);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g\"", length);
  canvas.text(x + (pixels - Canvas::text_width(buf)) / 2, y - 10, buf, colour);
}

}  // namespace dslens::app::plot_panels

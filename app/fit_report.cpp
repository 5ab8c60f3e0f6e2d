// report.png of `dslens fit` (see fit_report.h).
#include "fit_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>

#include "dslens/core/errors.h"
#include "dslens/core/plot.h"
#include "plot_panels.h"

namespace dslens::app {
namespace fit_report_detail {

using plot::Box;
using plot::Canvas;
using plot::Rgb;
using plot_panels::Extent;

constexpr Rgb kCaustic{0, 230, 255};
constexpr Rgb kPositions{60, 230, 60};  // image positions, and their traced-back source positions

torch::Tensor cpu_image(const torch::Tensor& t, const physics::PixelGrid& g, const char* what) {
  if (!t.defined() || t.dim() != 2 || t.size(0) != g.ny || t.size(1) != g.nx) {
    std::string shape = "undefined";
    if (t.defined()) {
      shape = "[";
      for (int64_t k = 0; k < t.dim(); ++k) shape += (k ? ", " : "") + std::to_string(t.size(k));
      shape += "]";
    }
    throw InvalidArgument(std::string("fit report: ") + what + " must be [" + std::to_string(g.ny) +
                          ", " + std::to_string(g.nx) + "] like the data grid, got " + shape);
  }
  return t.detach().to(torch::kCPU, torch::kFloat64).contiguous();
}

// Finite minimum and maximum, or nullopt when nothing is finite.
std::optional<std::pair<double, double>> finite_range(const torch::Tensor& t) {
  const torch::Tensor f = t.masked_select(torch::isfinite(t));
  if (f.numel() == 0) return std::nullopt;
  return std::make_pair(f.min().item<double>(), f.max().item<double>());
}

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

// Words of `text` in lines of at most `width` characters (longer words are cut).
std::vector<std::string> wrap(const std::string& text, size_t width) {
  std::vector<std::string> lines;
  std::string line, word;
  auto flush_word = [&]() {
    while (word.size() > width) {
      if (!line.empty()) {
        lines.push_back(line);
        line.clear();
      }
      lines.push_back(word.substr(0, width));
      word.erase(0, width);
    }
    if (word.empty()) return;
    if (!line.empty() && line.size() + 1 + word.size() > width) {
      lines.push_back(line);
      line.clear();
    }
    line += (line.empty() ? "" : " ") + word;
    word.clear();
  };
  for (char c : text) {
    if (c == ' ' || c == '\n' || c == '\t') {
      flush_word();
      if (c == '\n' && !line.empty()) {
        lines.push_back(line);
        line.clear();
      }
    } else {
      word += c;
    }
  }
  flush_word();
  if (!line.empty()) lines.push_back(line);
  return lines;
}

// The source window: the given extent, else the caustics' bounding box, else the central quarter
// of the data field.
Extent source_window(const FitReportInputs& in, const Extent& field) {
  const auto& e = in.source_extent;
  if (std::isfinite(e[0]) && std::isfinite(e[1]) && std::isfinite(e[2]) && std::isfinite(e[3]) &&
      e[1] > e[0] && e[3] > e[2]) {
    return {e[0], e[1], e[2], e[3]};
  }
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (const auto& s : in.caustics) {
    for (int k = 0; k < 2; ++k) {
      if (!std::isfinite(s[2 * k]) || !std::isfinite(s[2 * k + 1])) continue;
      xmin = std::min(xmin, s[2 * k]);
      xmax = std::max(xmax, s[2 * k]);
      ymin = std::min(ymin, s[2 * k + 1]);
      ymax = std::max(ymax, s[2 * k + 1]);
    }
  }
  if (xmax > xmin && ymax > ymin) {
    const double cx = 0.5 * (xmin + xmax), cy = 0.5 * (ymin + ymax);
    const double half = 0.6 * std::max(xmax - xmin, ymax - ymin);
    return {cx - half, cx + half, cy - half, cy + half};
  }
  const double cx = 0.5 * (field.xmin + field.xmax), cy = 0.5 * (field.ymin + field.ymax);
  const double half = 0.125 * std::max(field.xmax - field.xmin, field.ymax - field.ymin);
  return {cx - half, cx + half, cy - half, cy + half};
}

// The largest box of the extent's aspect ratio in `outer`, centred horizontally, at its bottom.
Box fit_aspect(const Box& outer, const Extent& e) {
  const double aspect = (e.xmax - e.xmin) / (e.ymax - e.ymin);
  int w = outer.w, h = outer.h;
  if (aspect >= static_cast<double>(outer.w) / outer.h) {
    h = std::max(1, static_cast<int>(std::lround(outer.w / aspect)));
  } else {
    w = std::max(1, static_cast<int>(std::lround(outer.h * aspect)));
  }
  return {outer.x + (outer.w - w) / 2, outer.y + outer.h - h, w, h};
}

void centred_text(Canvas& canvas, const Box& box, const std::string& s, Rgb c) {
  canvas.text(box.x + (box.w - Canvas::text_width(s)) / 2, box.y + box.h / 2 - 3, s, c);
}

void render(const std::string& png_path, const FitReportInputs& in) {
  const auto& g = in.grid;
  if (g.nx < 1 || g.ny < 1 || !(g.pixel_scale > 0)) {
    throw InvalidArgument("fit report: the data grid needs nx, ny >= 1 and pixel_scale > 0");
  }
  const torch::Tensor data = cpu_image(in.data, g, "data");
  const torch::Tensor model = cpu_image(in.model, g, "model");
  torch::Tensor resid = cpu_image(in.normalized_residuals, g, "normalized_residuals");
  if (in.mask.defined()) {
    const torch::Tensor mask = cpu_image(in.mask, g, "mask").to(torch::kBool);
    resid = torch::where(mask, resid, torch::full_like(resid, std::nan("")));
  }
  const bool corner = in.corner_draws.defined();
  const int P =
      corner && in.corner_draws.dim() == 2 ? static_cast<int>(in.corner_draws.size(1)) : 0;

  // Geometry: five panels of S pixels with gaps of G, the corner plot below on the left and the
  // notes on its right (or below it when the corner plot takes the width).
  const int W = 1600, S = 272, G = 40, top = 58;
  const int row_bottom = top + S + 44;
  const int corner_side = corner ? std::clamp(P * 135 + 90, 380, 1100) : 0;
  const int corner_top = row_bottom + 14;
  int notes_x = corner ? 20 + corner_side + 40 : G;
  int notes_y = corner ? corner_top + 14 : row_bottom + 10;
  if (W - 20 - notes_x < 300) {
    notes_x = G;
    notes_y = corner_top + corner_side + 20;
  }
  const size_t chars = static_cast<size_t>((W - 20 - notes_x) / 6);
  std::vector<std::string> lines;
  for (const auto& note : in.notes) {
    const auto wrapped = wrap(note, chars - 2);
    for (size_t k = 0; k < wrapped.size(); ++k) lines.push_back((k ? "  " : "- ") + wrapped[k]);
  }
  if (lines.empty()) lines.push_back("none");
  const size_t note_lines = lines.size();
  if (corner) {
    lines.push_back("");
    for (const auto& l : wrap("Corner plot of the main lens parameters: dark and light blue = 68 % "
                              "and 95 % regions, dashed = 16 / 50 / 84 % quantiles, red = truth "
                              "(an arrow: outside the range), titles = median and 68 % interval.",
                              chars)) {
      lines.push_back(l);
    }
  }
  const int notes_h = 16 + 11 * static_cast<int>(lines.size());
  const int H = std::max(corner ? corner_top + corner_side : row_bottom, notes_y + notes_h) + 16;
  Canvas canvas(W, H);

  // Title: twice the font size when it fits.
  const int title_scale = Canvas::text_width(in.title, 2) <= W - 2 * G ? 2 : 1;
  canvas.text(G, 12, in.title, plot::kBlack, title_scale);

  // Panel slots; the images keep the aspect ratio of what they show.
  auto slot = [&](int k) { return Box{G + k * (S + G), top, S, S}; };
  auto bar_at = [&](int k) { return Box{G + k * (S + G), top + S + 6, S, 8}; };
  const Extent field = plot_panels::grid_extent(g);
  const Box field_box = fit_aspect(slot(0), field);
  auto box_at = [&](int k) {
    Box b = field_box;
    b.x += slot(k).x - slot(0).x;
    return b;
  };
  const std::string fov = number(field.xmax - field.xmin) + "\" x " +
                          number(field.ymax - field.ymin) + "\", " + number(g.pixel_scale) +
                          "\"/px";

  // Data and model share limits; the asinh stretch shows the arcs under the lens light.
  {
    const auto mr = finite_range(model);
    const auto dr = finite_range(data);
    double vmax = std::max(mr ? mr->second : (dr ? dr->second : 1.0), 1e-30);
    double vmin = std::min(dr ? dr->first : 0.0, 0.0);
    if (!(vmax > vmin)) vmax = vmin + 1.0;
    const double stretch = 0.05 * vmax;
    canvas.image(box_at(0), data, "magma", vmin, vmax, stretch);
    plot_panels::panel_title(canvas, box_at(0), "data (asinh)");
    canvas.colorbar(bar_at(0), "magma", vmin, vmax);
    canvas.image(box_at(1), model, "magma", vmin, vmax, stretch);
    plot_panels::panel_title(canvas, box_at(1), "model (asinh, same limits)");
    canvas.colorbar(bar_at(1), "magma", vmin, vmax);
    plot_panels::scale_bar(canvas, box_at(0), field, plot::kWhite);
    plot_panels::scale_bar(canvas, box_at(1), field, plot::kWhite);
  }
  const double field_cross = 0.03 * (field.xmax - field.xmin);
  plot_panels::draw_crosses(canvas, box_at(0), field, in.image_positions, field_cross, kPositions);

  // Normalised residuals; pixels outside the mask are non-finite, drawn grey.
  canvas.image(box_at(2), resid, "coolwarm", -5.0, 5.0);
  plot_panels::panel_title(canvas, box_at(2), "(data - model) / sigma, grey: masked");
  canvas.colorbar(bar_at(2), "coolwarm", -5.0, 5.0);
  plot_panels::scale_bar(canvas, box_at(2), field, plot::kBlack);
  plot_panels::draw_crosses(canvas, box_at(2), field, in.image_positions, field_cross, kPositions);

  // Source with the caustics, in a window of the source's aspect ratio.
  const Extent src = source_window(in, field);
  const Box src_box = fit_aspect(slot(3), src);
  {
    double smin = 0.0, smax = 1.0;
    if (in.source.defined() && in.source.dim() == 2 && in.source.numel() > 0) {
      const torch::Tensor s = in.source.detach().to(torch::kCPU, torch::kFloat64);
      if (const auto r = finite_range(s)) std::tie(smin, smax) = *r;
      if (!(smax > smin)) smax = smin + 1.0;
      canvas.image(src_box, s, "magma", smin, smax);
      canvas.colorbar(bar_at(3), "magma", smin, smax);
    } else {
      canvas.fill(src_box, Rgb{20, 20, 30});
      centred_text(canvas, src_box, "no source image", plot::kWhite);
    }
    plot_panels::draw_segments(canvas, src_box, src, in.caustics, kCaustic);
    plot_panels::draw_crosses(canvas, src_box, src, in.traced_positions,
                              0.03 * (src.xmax - src.xmin), kPositions);
    plot_panels::panel_title(canvas, src_box, in.source_title);
    plot_panels::scale_bar(canvas, src_box, src, plot::kWhite);
  }

  // Convergence with the critical curves.
  if (in.convergence.defined() && in.convergence.dim() == 2 && in.convergence.numel() > 0) {
    const torch::Tensor kappa = in.convergence.detach().to(torch::kCPU, torch::kFloat64);
    plot_panels::draw_log_convergence(canvas, box_at(4), bar_at(4), kappa, field, in.critical,
                                      "log10 convergence + critical curves");
  } else {
    canvas.fill(box_at(4), Rgb{20, 20, 30});
    plot_panels::draw_segments(canvas, box_at(4), field, in.critical, plot::kRed);
    centred_text(canvas, box_at(4), "no convergence map", plot::kWhite);
    plot_panels::panel_title(canvas, box_at(4), "critical curves");
  }
  plot_panels::scale_bar(canvas, box_at(4), field, plot::kWhite);

  for (int k = 0; k < 5; ++k) canvas.rect(k == 3 ? src_box : box_at(k), plot::kBlack);
  const int info_y = top + S + 30;
  canvas.text(slot(0).x, info_y, "field " + fov);
  canvas.text(slot(2).x, info_y, "colour: -5 .. 5 sigma");
  canvas.text(slot(3).x, info_y,
              "window " + number(src.xmax - src.xmin) + "\" x " + number(src.ymax - src.ymin) +
                  "\" at (" + number(0.5 * (src.xmin + src.xmax)) + ", " +
                  number(0.5 * (src.ymin + src.ymax)) + ")");
  canvas.text(slot(4).x, info_y, "field " + fov);
  canvas.line(G, row_bottom + 2, W - G, row_bottom + 2, Rgb{200, 200, 200});

  if (corner) {
    plot::corner_plot(canvas, {20, corner_top, corner_side, corner_side}, in.corner_draws,
                      in.corner_names, in.corner_truths);
  }
  canvas.text(notes_x, notes_y, in.notes.empty() ? "Notes" : "Warnings", plot::kBlack, 1);
  for (size_t k = 0; k < lines.size(); ++k) {
    canvas.text(notes_x, notes_y + 16 + 11 * static_cast<int>(k), lines[k],
                in.notes.empty() || k >= note_lines ? plot::kGrey : plot::kBlack);
  }
  canvas.save_png(png_path);
}

}  // namespace fit_report_detail

void write_fit_report(const std::string& png_path, const FitReportInputs& in) {
  fit_report_detail::render(png_path, in);
}

}  // namespace dslens::app

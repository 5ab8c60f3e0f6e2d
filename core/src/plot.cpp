// Raster plotting: colour maps, a 5x7 bitmap font, image panels, line plots (see plot.h).
#include "dslens/core/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <utility>

#include "dslens/core/atomic_file.h"
#include "dslens/core/errors.h"

namespace dslens::plot {
namespace plot_detail {

// Classic 5x7 font, ASCII 32..126: five column bytes per glyph, bit 0 = top row.
constexpr uint8_t kFont5x7[95][5] = {
    {0x00, 0x00, 0x00, 0x00, 0x00},  // ' '
    {0x00, 0x00, 0x5F, 0x00, 0x00},  // !
    {0x00, 0x07, 0x00, 0x07, 0x00},  // "
    {0x14, 0x7F, 0x14, 0x7F, 0x14},  // #
    {0x24, 0x2A, 0x7F, 0x2A, 0x12},  // $
    {0x23, 0x13, 0x08, 0x64, 0x62},  // %
    {0x36, 0x49, 0x55, 0x22, 0x50},  // &
    {0x00, 0x05, 0x03, 0x00, 0x00},  // '
    {0x00, 0x1C, 0x22, 0x41, 0x00},  // (
    {0x00, 0x41, 0x22, 0x1C, 0x00},  // )
    {0x08, 0x2A, 0x1C, 0x2A, 0x08},  // *
    {0x08, 0x08, 0x3E, 0x08, 0x08},  // +
    {0x00, 0x50, 0x30, 0x00, 0x00},  // ,
    {0x08, 0x08, 0x08, 0x08, 0x08},  // -
    {0x00, 0x60, 0x60, 0x00, 0x00},  // .
    {0x20, 0x10, 0x08, 0x04, 0x02},  // /
    {0x3E, 0x51, 0x49, 0x45, 0x3E},  // 0
    {0x00, 0x42, 0x7F, 0x40, 0x00},  // 1
    {0x42, 0x61, 0x51, 0x49, 0x46},  // 2
    {0x21, 0x41, 0x45, 0x4B, 0x31},  // 3
    {0x18, 0x14, 0x12, 0x7F, 0x10},  // 4
    {0x27, 0x45, 0x45, 0x45, 0x39},  // 5
    {0x3C, 0x4A, 0x49, 0x49, 0x30},  // 6
    {0x01, 0x71, 0x09, 0x05, 0x03},  // 7
    {0x36, 0x49, 0x49, 0x49, 0x36},  // 8
    {0x06, 0x49, 0x49, 0x29, 0x1E},  // 9
    {0x00, 0x36, 0x36, 0x00, 0x00},  // :
    {0x00, 0x56, 0x36, 0x00, 0x00},  // ;
    {0x08, 0x14, 0x22, 0x41, 0x00},  // <
    {0x14, 0x14, 0x14, 0x14, 0x14},  // =
    {0x00, 0x41, 0x22, 0x14, 0x08},  // >
    {0x02, 0x01, 0x51, 0x09, 0x06},  // ?
    {0x32, 0x49, 0x79, 0x41, 0x3E},  // @
    {0x7E, 0x11, 0x11, 0x11, 0x7E},  // A
    {0x7F, 0x49, 0x49, 0x49, 0x36},  // B
    {0x3E, 0x41, 0x41, 0x41, 0x22},  // C
    {0x7F, 0x41, 0x41, 0x22, 0x1C},  // D
    {0x7F, 0x49, 0x49, 0x49, 0x41},  // E
    {0x7F, 0x09, 0x09, 0x01, 0x01},  // F
    {0x3E, 0x41, 0x41, 0x51, 0x32},  // G
    {0x7F, 0x08, 0x08, 0x08, 0x7F},  // H
    {0x00, 0x41, 0x7F, 0x41, 0x00},  // I
    {0x20, 0x40, 0x41, 0x3F, 0x01},  // J
    {0x7F, 0x08, 0x14, 0x22, 0x41},  // K
    {0x7F, 0x40, 0x40, 0x40, 0x40},  // L
    {0x7F, 0x02, 0x04, 0x02, 0x7F},  // M
    {0x7F, 0x04, 0x08, 0x10, 0x7F},  // N
    {0x3E, 0x41, 0x41, 0x41, 0x3E},  // O
    {0x7F, 0x09, 0x09, 0x09, 0x06},  // P
    {0x3E, 0x41, 0x51, 0x21, 0x5E},  // Q
    {0x7F, 0x09, 0x19, 0x29, 0x46},  // R
    {0x46, 0x49, 0x49, 0x49, 0x31},  // S
    {0x01, 0x01, 0x7F, 0x01, 0x01},  // T
    {0x3F, 0x40, 0x40, 0x40, 0x3F},  // U
    {0x1F, 0x20, 0x40, 0x20, 0x1F},  // V
    {0x7F, 0x20, 0x18, 0x20, 0x7F},  // W
    {0x63, 0x14, 0x08, 0x14, 0x63},  // X
    {0x03, 0x04, 0x78, 0x04, 0x03},  // Y
    {0x61, 0x51, 0x49, 0x45, 0x43},  // Z
    {0x00, 0x7F, 0x41, 0x41, 0x00},  // [
    {0x02, 0x04, 0x08, 0x10, 0x20},  // backslash
    {0x00, 0x41, 0x41, 0x7F, 0x00},  // ]
    {0x04, 0x02, 0x01, 0x02, 0x04},  // ^
    {0x40, 0x40, 0x40, 0x40, 0x40},  // _
    {0x00, 0x01, 0x02, 0x04, 0x00},  // `
    {0x20, 0x54, 0x54, 0x54, 0x78},  // a
    {0x7F, 0x48, 0x44, 0x44, 0x38},  // b
    {0x38, 0x44, 0x44, 0x44, 0x20},  // c
    {0x38, 0x44, 0x44, 0x48, 0x7F},  // d
    {0x38, 0x54, 0x54, 0x54, 0x18},  // e
    {0x08, 0x7E, 0x09, 0x01, 0x02},  // f
    {0x08, 0x54, 0x54, 0x54, 0x3C},  // g
    {0x7F, 0x08, 0x04, 0x04, 0x78},  // h
    {0x00, 0x44, 0x7D, 0x40, 0x00},  // i
    {0x20, 0x40, 0x44, 0x3D, 0x00},  // j
    {0x7F, 0x10, 0x28, 0x44, 0x00},  // k
    {0x00, 0x41, 0x7F, 0x40, 0x00},  // l
    {0x7C, 0x04, 0x18, 0x04, 0x78},  // m
    {0x7C, 0x08, 0x04, 0x04, 0x78},  // n
    {0x38, 0x44, 0x44, 0x44, 0x38},  // o
    {0x7C, 0x14, 0x14, 0x14, 0x08},  // p
    {0x08, 0x14, 0x14, 0x18, 0x7C},  // q
    {0x7C, 0x08, 0x04, 0x04, 0x08},  // r
    {0x48, 0x54, 0x54, 0x54, 0x20},  // s
    {0x04, 0x3F, 0x44, 0x40, 0x20},  // t
    {0x3C, 0x40, 0x40, 0x20, 0x7C},  // u
    {0x1C, 0x20, 0x40, 0x20, 0x1C},  // v
    {0x3C, 0x40, 0x30, 0x40, 0x3C},  // w
    {0x44, 0x28, 0x10, 0x28, 0x44},  // x
    {0x0C, 0x50, 0x50, 0x50, 0x3C},  // y
    {0x44, 0x64, 0x54, 0x4C, 0x44},  // z
    {0x00, 0x08, 0x36, 0x41, 0x00},  // {
    {0x00, 0x00, 0x7F, 0x00, 0x00},  // |
    {0x00, 0x41, 0x36, 0x08, 0x00},  // }
    {0x08, 0x04, 0x08, 0x10, 0x08},  // ~
};

constexpr int kGlyphW = 5;
constexpr int kGlyphH = 7;
constexpr int kAdvance = 6;  // glyph plus one column of spacing

const uint8_t* glyph(char ch) {
  int c = static_cast<unsigned char>(ch);
  if (c < 32 || c > 126) c = '?';
  return kFont5x7[c - 32];
}

struct Stop {
  double t;
  uint8_t r, g, b;
};

// Piecewise-linear tables sampled from matplotlib's maps.
const std::vector<Stop>& viridis() {
  static const std::vector<Stop> s = {{0.0, 68, 1, 84},    {0.1, 72, 36, 117},  {0.2, 65, 68, 135},
                                      {0.3, 53, 95, 141},  {0.4, 42, 120, 142}, {0.5, 33, 145, 140},
                                      {0.6, 34, 168, 132}, {0.7, 68, 191, 112}, {0.8, 122, 209, 81},
                                      {0.9, 189, 223, 38}, {1.0, 253, 231, 37}};
  return s;
}
const std::vector<Stop>& magma() {
  static const std::vector<Stop> s = {
      {0.0, 0, 0, 4},       {0.1, 20, 14, 54},    {0.2, 59, 15, 112},  {0.3, 100, 26, 128},
      {0.4, 140, 41, 129},  {0.5, 183, 55, 121},  {0.6, 222, 73, 104}, {0.7, 247, 112, 92},
      {0.8, 254, 159, 109}, {0.9, 254, 207, 146}, {1.0, 252, 253, 191}};
  return s;
}
const std::vector<Stop>& coolwarm() {
  static const std::vector<Stop> s = {
      {0.0, 59, 76, 192},     {0.125, 98, 130, 234}, {0.25, 141, 176, 254},
      {0.375, 192, 212, 245}, {0.5, 221, 221, 221},  {0.625, 242, 203, 183},
      {0.75, 244, 154, 123},  {0.875, 222, 96, 77},  {1.0, 180, 4, 38}};
  return s;
}
const std::vector<Stop>& gray() {
  static const std::vector<Stop> s = {{0.0, 0, 0, 0}, {1.0, 255, 255, 255}};
  return s;
}

const std::vector<Stop>& table(const std::string& name) {
  if (name == "viridis") return viridis();
  if (name == "magma") return magma();
  if (name == "gray" || name == "grey") return gray();
  if (name == "coolwarm") return coolwarm();
  throw InvalidArgument("unknown colour map '" + name +
                        "'; allowed: viridis, magma, gray, coolwarm");
}

bool diverging(const std::string& name) {
  return name == "coolwarm";
}

uint8_t lerp_u8(uint8_t a, uint8_t b, double f) {
  return static_cast<uint8_t>(std::lround(a + (static_cast<double>(b) - a) * f));
}

// Clips the segment to [xmin, xmax] x [ymin, ymax] (Liang-Barsky); false if nothing is left.
bool clip_segment(double& x0, double& y0, double& x1, double& y1, double xmin, double ymin,
                  double xmax, double ymax) {
  if (!std::isfinite(x0) || !std::isfinite(y0) || !std::isfinite(x1) || !std::isfinite(y1)) {
    return false;
  }
  const double dx = x1 - x0, dy = y1 - y0;
  double t0 = 0.0, t1 = 1.0;
  const double p[4] = {-dx, dx, -dy, dy};
  const double q[4] = {x0 - xmin, xmax - x0, y0 - ymin, ymax - y0};
  for (int i = 0; i < 4; ++i) {
    if (p[i] == 0.0) {
      if (q[i] < 0) return false;
      continue;
    }
    const double r = q[i] / p[i];
    if (p[i] < 0) {
      if (r > t1) return false;
      t0 = std::max(t0, r);
    } else {
      if (r < t0) return false;
      t1 = std::min(t1, r);
    }
  }
  const double nx0 = x0 + t0 * dx, ny0 = y0 + t0 * dy;
  x1 = x0 + t1 * dx;
  y1 = y0 + t1 * dy;
  x0 = nx0;
  y0 = ny0;
  return true;
}

std::string format_number(double v) {
  char buf[32];
  if (v == 0.0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e4 || a < 1e-3) {
    std::snprintf(buf, sizeof buf, "%.2e", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.4g", v);
  }
  return buf;
}

// About `target` round tick values covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int target = 5) {
  std::vector<double> ticks;
  if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi)) return ticks;
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * mag;
    if (step >= raw) break;
  }
  const double first = std::ceil(lo / step - 1e-9) * step;
  for (double t = first; t <= hi + step * 1e-9 && ticks.size() < 50; t += step) {
    ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
  }
  return ticks;
}

// Text rotated by 90 degrees counter-clockwise, read bottom to top, starting at (x, y_bottom).
void vertical_text(Canvas& canvas, int x, int y_bottom, const std::string& s, Rgb c) {
  int offset = 0;
  for (char ch : s) {
    const uint8_t* g = glyph(ch);
    for (int col = 0; col < kGlyphW; ++col) {
      for (int row = 0; row < kGlyphH; ++row) {
        if (g[col] & (1u << row)) canvas.set(x + row, y_bottom - offset - col, c);
      }
    }
    offset += kAdvance;
  }
}

}  // namespace plot_detail

Rgb colormap(const std::string& name, double t) {
  const auto& stops = plot_detail::table(name);
  if (!std::isfinite(t)) t = 0.0;
  t = std::clamp(t, 0.0, 1.0);
  for (size_t i = 1; i < stops.size(); ++i) {
    if (t <= stops[i].t) {
      const auto& a = stops[i - 1];
      const auto& b = stops[i];
      const double f = (t - a.t) / (b.t - a.t);
      return {plot_detail::lerp_u8(a.r, b.r, f), plot_detail::lerp_u8(a.g, b.g, f),
              plot_detail::lerp_u8(a.b, b.b, f)};
    }
  }
  const auto& last = stops.back();
  return {last.r, last.g, last.b};
}

Canvas::Canvas(int width, int height, Rgb background) : width_(width), height_(height) {
  if (width <= 0 || height <= 0 || width > 20000 || height > 20000) {
    throw InvalidArgument("Canvas: size " + std::to_string(width) + "x" + std::to_string(height) +
                          " must be in 1..20000");
  }
  rgb_.resize(static_cast<size_t>(width) * height * 3);
  for (size_t i = 0; i < rgb_.size(); i += 3) {
    rgb_[i] = background.r;
    rgb_[i + 1] = background.g;
    rgb_[i + 2] = background.b;
  }
}

void Canvas::set(int x, int y, Rgb c) {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
  const size_t i = (static_cast<size_t>(y) * width_ + x) * 3;
  rgb_[i] = c.r;
  rgb_[i + 1] = c.g;
  rgb_[i + 2] = c.b;
}

void Canvas::fill(const Box& box, Rgb c) {
  const int x0 = std::max(box.x, 0), y0 = std::max(box.y, 0);
  const int x1 = std::min(box.x + box.w, width_), y1 = std::min(box.y + box.h, height_);
  for (int y = y0; y < y1; ++y) {
    for (int x = x0; x < x1; ++x) set(x, y, c);
  }
}

void Canvas::rect(const Box& box, Rgb c) {
  if (box.w <= 0 || box.h <= 0) return;
  for (int x = box.x; x < box.x + box.w; ++x) {
    set(x, box.y, c);
    set(x, box.y + box.h - 1, c);
  }
  for (int y = box.y; y < box.y + box.h; ++y) {
    set(box.x, y, c);
    set(box.x + box.w - 1, y, c);
  }
}

void Canvas::line(double x0, double y0, double x1, double y1, Rgb c, int thickness) {
  thickness = std::max(1, thickness);
  const double margin = thickness;
  if (!plot_detail::clip_segment(x0, y0, x1, y1, -margin, -margin, width_ - 1 + margin,
                                 height_ - 1 + margin)) {
    return;
  }
  const double len = std::max(std::fabs(x1 - x0), std::fabs(y1 - y0));
  const int steps = std::max(1, static_cast<int>(std::ceil(len * 2.0)));
  const int lo = -(thickness - 1) / 2, hi = thickness / 2;
  int last_x = std::numeric_limits<int>::min(), last_y = last_x;
  for (int s = 0; s <= steps; ++s) {
    const double f = static_cast<double>(s) / steps;
    const int x = static_cast<int>(std::lround(x0 + (x1 - x0) * f));
    const int y = static_cast<int>(std::lround(y0 + (y1 - y0) * f));
    if (x == last_x && y == last_y) continue;
    last_x = x;
    last_y = y;
    for (int dy = lo; dy <= hi; ++dy) {
      for (int dx = lo; dx <= hi; ++dx) set(x + dx, y + dy, c);
    }
  }
}

int Canvas::text_width(const std::string& s, int scale) {
  if (s.empty()) return 0;
  scale = std::max(1, scale);
  return (static_cast<int>(s.size()) * plot_detail::kAdvance - 1) * scale;
}

int Canvas::text(int x, int y, const std::string& s, Rgb c, int scale) {
  scale = std::max(1, scale);
  int cx = x;
  for (char ch : s) {
    const uint8_t* g = plot_detail::glyph(ch);
    for (int col = 0; col < plot_detail::kGlyphW; ++col) {
      for (int row = 0; row < plot_detail::kGlyphH; ++row) {
        if (!(g[col] & (1u << row))) continue;
        fill({cx + col * scale, y + row * scale, scale, scale}, c);
      }
    }
    cx += plot_detail::kAdvance * scale;
  }
  return text_width(s, scale);
}

void Canvas::image(const Box& box, const torch::Tensor& img, const std::string& cmap,
                   std::optional<double> vmin, std::optional<double> vmax, double asinh_stretch) {
  plot_detail::table(cmap);  // validates the name
  if (img.dim() != 2 || img.size(0) == 0 || img.size(1) == 0) {
    throw InvalidArgument("Canvas::image: expected a non-empty 2-d tensor [H, W]");
  }
  if (box.w <= 0 || box.h <= 0) return;
  torch::Tensor data = img.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const int64_t H = data.size(0), W = data.size(1);
  const double* v = data.data_ptr<double>();
  auto stretch = [&](double x) { return asinh_stretch > 0 ? std::asinh(x / asinh_stretch) : x; };

  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (int64_t i = 0; i < H * W; ++i) {
    if (!std::isfinite(v[i])) continue;
    lo = std::min(lo, v[i]);
    hi = std::max(hi, v[i]);
  }
  if (!std::isfinite(lo)) lo = hi = 0.0;
  if (plot_detail::diverging(cmap) && !vmin && !vmax) {
    const double m = std::max(std::fabs(lo), std::fabs(hi));
    lo = -m;
    hi = m;
  }
  const double s_lo = stretch(vmin.value_or(lo));
  const double s_hi = stretch(vmax.value_or(hi));
  const double span = s_hi - s_lo;

  for (int py = 0; py < box.h; ++py) {
    // Row 0 of the data is drawn at the bottom of the box.
    const int64_t i = H - 1 - std::min<int64_t>(H - 1, static_cast<int64_t>(py) * H / box.h);
    for (int px = 0; px < box.w; ++px) {
      const int64_t j = std::min<int64_t>(W - 1, static_cast<int64_t>(px) * W / box.w);
      const double x = v[i * W + j];
      Rgb c = kGrey;
      if (std::isfinite(x)) {
        const double t = span > 0 ? (stretch(x) - s_lo) / span : 0.5;
        c = colormap(cmap, t);
      }
      set(box.x + px, box.y + py, c);
    }
  }
}

void Canvas::colorbar(const Box& box, const std::string& cmap, double vmin, double vmax) {
  plot_detail::table(cmap);
  if (box.w <= 0 || box.h <= 0) return;
  const bool vertical = box.h >= box.w;
  if (vertical) {
    for (int py = 0; py < box.h; ++py) {
      const double t = box.h > 1 ? 1.0 - static_cast<double>(py) / (box.h - 1) : 0.5;
      fill({box.x, box.y + py, box.w, 1}, colormap(cmap, t));
    }
    rect(box, kBlack);
    text(box.x + box.w + 3, box.y, plot_detail::format_number(vmax));
    text(box.x + box.w + 3, box.y + box.h - plot_detail::kGlyphH, plot_detail::format_number(vmin));
  } else {
    for (int px = 0; px < box.w; ++px) {
      const double t = box.w > 1 ? static_cast<double>(px) / (box.w - 1) : 0.5;
      fill({box.x + px, box.y, 1, box.h}, colormap(cmap, t));
    }
    rect(box, kBlack);
    const std::string hi = plot_detail::format_number(vmax);
    text(box.x, box.y + box.h + 3, plot_detail::format_number(vmin));
    text(box.x + box.w - text_width(hi), box.y + box.h + 3, hi);
  }
}

void Canvas::save_png(const std::string& path) const {
  const std::vector<uint8_t> png = encode_png(rgb_, width_, height_);
  write_file_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) throw FileError("cannot write PNG file '" + path + "'");
    out.write(reinterpret_cast<const char*>(png.data()), static_cast<std::streamsize>(png.size()));
    out.close();
    if (!out) throw FileError("cannot write PNG file '" + path + "'");
  });
}

Axes::Axes(Canvas& canvas, Box box, double xmin, double xmax, double ymin, double ymax, bool log_y)
    : canvas_(canvas),
      box_(box),
      xmin_(xmin),
      xmax_(xmax),
      ymin_(ymin),
      ymax_(ymax),
      log_y_(log_y) {
  if (!std::isfinite(xmin) || !std::isfinite(xmax) || !std::isfinite(ymin) ||
      !std::isfinite(ymax)) {
    throw InvalidArgument("Axes: limits must be finite");
  }
  if (log_y_ && (ymin_ <= 0 || ymax_ <= 0)) {
    throw InvalidArgument("Axes: a logarithmic y axis needs ymin, ymax > 0");
  }
  if (xmax_ <= xmin_) {
    const double c = 0.5 * (xmin_ + xmax_);
    xmin_ = c - 0.5;
    xmax_ = c + 0.5;
  }
  if (ymax_ <= ymin_) {
    if (log_y_) {
      ymin_ *= 0.5;
      ymax_ = ymin_ * 4;
    } else {
      const double c = 0.5 * (ymin_ + ymax_);
      ymin_ = c - 0.5;
      ymax_ = c + 0.5;
    }
  }
}

double Axes::px(double x) const {
  return box_.x + (x - xmin_) / (xmax_ - xmin_) * (box_.w - 1);
}

double Axes::py(double y) const {
  double f;
  if (log_y_) {
    f = y > 0 ? (std::log10(y) - std::log10(ymin_)) / (std::log10(ymax_) - std::log10(ymin_))
              : -std::numeric_limits<double>::infinity();
  } else {
    f = (y - ymin_) / (ymax_ - ymin_);
  }
  return box_.y + box_.h - 1 - f * (box_.h - 1);
}

void Axes::frame(const std::string& title, const std::string& xlabel, const std::string& ylabel) {
  using plot_detail::format_number;
  canvas_.rect(box_, kBlack);
  const int tick = 4;
  for (double t : plot_detail::nice_ticks(xmin_, xmax_)) {
    const int x = static_cast<int>(std::lround(px(t)));
    canvas_.line(x, box_.y + box_.h - 1, x, box_.y + box_.h - 1 - tick, kBlack);
    const std::string label = format_number(t);
    canvas_.text(x - Canvas::text_width(label) / 2, box_.y + box_.h + 3, label);
  }
  std::vector<double> yticks;
  if (log_y_) {
    const int d0 = static_cast<int>(std::ceil(std::log10(ymin_) - 1e-9));
    const int d1 = static_cast<int>(std::floor(std::log10(ymax_) + 1e-9));
    const int every = std::max(1, (d1 - d0 + 1) / 6 + 1);
    for (int d = d0; d <= d1; d += every) yticks.push_back(std::pow(10.0, d));
  } else {
    yticks = plot_detail::nice_ticks(ymin_, ymax_);
  }
  for (double t : yticks) {
    const int y = static_cast<int>(std::lround(py(t)));
    canvas_.line(box_.x, y, box_.x + tick, y, kBlack);
    const std::string label = format_number(t);
    canvas_.text(box_.x - 3 - Canvas::text_width(label), y - 3, label);
  }
  if (!title.empty()) {
    canvas_.text(box_.x + (box_.w - Canvas::text_width(title)) / 2, box_.y - 11, title);
  }
  if (!xlabel.empty()) {
    canvas_.text(box_.x + (box_.w - Canvas::text_width(xlabel)) / 2, box_.y + box_.h + 14, xlabel);
  }
  if (!ylabel.empty()) {
    const int len = Canvas::text_width(ylabel);
    plot_detail::vertical_text(canvas_, std::max(0, box_.x - 48), box_.y + (box_.h + len) / 2,
                               ylabel, kBlack);
  }
}

void Axes::plot(const std::vector<double>& x, const std::vector<double>& y, Rgb c, int thickness) {
  const size_t n = std::min(x.size(), y.size());
  for (size_t i = 1; i < n; ++i) {
    double x0 = px(x[i - 1]), y0 = py(y[i - 1]), x1 = px(x[i]), y1 = py(y[i]);
    if (!plot_detail::clip_segment(x0, y0, x1, y1, box_.x, box_.y, box_.x + box_.w - 1,
                                   box_.y + box_.h - 1)) {
      continue;
    }
    canvas_.line(x0, y0, x1, y1, c, thickness);
  }
  if (n == 1) scatter(x, y, c, thickness);
}

void Axes::scatter(const std::vector<double>& x, const std::vector<double>& y, Rgb c, int radius) {
  const size_t n = std::min(x.size(), y.size());
  radius = std::max(0, radius);
  for (size_t i = 0; i < n; ++i) {
    const double fx = px(x[i]), fy = py(y[i]);
    if (!std::isfinite(fx) || !std::isfinite(fy)) continue;
    const int cx = static_cast<int>(std::lround(fx)), cy = static_cast<int>(std::lround(fy));
    for (int dy = -radius; dy <= radius; ++dy) {
      for (int dx = -radius; dx <= radius; ++dx) {
        if (dx * dx + dy * dy > radius * radius + radius) continue;
        const int X = cx + dx, Y = cy + dy;
        if (X < box_.x || X >= box_.x + box_.w || Y < box_.y || Y >= box_.y + box_.h) continue;
        canvas_.set(X, Y, c);
      }
    }
  }
}

void Axes::histogram(const std::vector<double>& values, int bins, Rgb c) {
  if (bins <= 0) throw InvalidArgument("Axes::histogram: bins must be positive");
  std::vector<double> counts(bins, 0.0);
  for (double v : values) {
    if (!std::isfinite(v) || v < xmin_ || v > xmax_) continue;
    int b = static_cast<int>((v - xmin_) / (xmax_ - xmin_) * bins);
    counts[std::clamp(b, 0, bins - 1)] += 1.0;
  }
  const double peak = *std::max_element(counts.begin(), counts.end());
  if (peak <= 0) return;
  const double base = py(ymin_);
  for (int b = 0; b < bins; ++b) {
    if (counts[b] <= 0) continue;
    const double top_value = log_y_ ? ymin_ * std::pow(ymax_ / ymin_, counts[b] / peak)
                                    : ymin_ + (ymax_ - ymin_) * counts[b] / peak;
    const int x0 = static_cast<int>(std::lround(px(xmin_ + (xmax_ - xmin_) * b / bins)));
    const int x1 = static_cast<int>(std::lround(px(xmin_ + (xmax_ - xmin_) * (b + 1) / bins)));
    const int top = static_cast<int>(std::lround(py(top_value)));
    const Box bar{x0, top, std::max(1, x1 - x0), static_cast<int>(std::lround(base)) - top + 1};
    canvas_.fill(bar, c);
    canvas_.rect(bar, kBlack);
  }
}

void Axes::vline(double x, Rgb c) {
  const double X = px(x);
  if (X < box_.x || X > box_.x + box_.w - 1) return;
  canvas_.line(X, box_.y, X, box_.y + box_.h - 1, c);
}

void Axes::hline(double y, Rgb c) {
  const double Y = py(y);
  if (!(Y >= box_.y && Y <= box_.y + box_.h - 1)) return;
  canvas_.line(box_.x, Y, box_.x + box_.w - 1, Y, c);
}

void Axes::legend(const std::vector<std::pair<std::string, Rgb>>& entries) {
  if (entries.empty()) return;
  int text_w = 0;
  for (const auto& e : entries) text_w = std::max(text_w, Canvas::text_width(e.first));
  const int row_h = 11, sample_w = 14;
  const Box bg{box_.x + box_.w - text_w - sample_w - 14, box_.y + 4, text_w + sample_w + 10,
               static_cast<int>(entries.size()) * row_h + 4};
  canvas_.fill(bg, kWhite);
  canvas_.rect(bg, kGrey);
  for (size_t i = 0; i < entries.size(); ++i) {
    const int y = bg.y + 3 + static_cast<int>(i) * row_h;
    canvas_.line(bg.x + 3, y + 3, bg.x + 3 + sample_w - 3, y + 3, entries[i].second, 2);
    canvas_.text(bg.x + 3 + sample_w, y, entries[i].first);
  }
}

namespace corner_plot_detail {

constexpr Rgb kHistFill{214, 214, 214};
constexpr Rgb kHistEdge{50, 50, 50};
constexpr Rgb kQuantile{110, 110, 110};
constexpr Rgb kOuter{222, 235, 247};    // drawn bins outside the 95 % region
constexpr Rgb kLevel95{120, 170, 220};  // 68 % .. 95 %
constexpr Rgb kLevel68{33, 90, 170};    // inside 68 %
constexpr Rgb kContour{8, 40, 100};

// Quantile of sorted values, linear interpolation between order statistics (numpy's default).
double quantile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return std::nan("");
  const double at = q * (static_cast<double>(sorted.size()) - 1.0);
  const size_t i = static_cast<size_t>(std::floor(at));
  if (i + 1 >= sorted.size()) return sorted.back();
  return sorted[i] + (sorted[i + 1] - sorted[i]) * (at - static_cast<double>(i));
}

struct Param {
  std::vector<double> sorted;  // finite draws
  double lo = -1.0, hi = 1.0;
  std::optional<double> truth;
  int truth_side = 0;  // -1 / +1: far below / above the range (drawn as an arrow)
  std::vector<double> ticks;
  double tick_step = 1.0;
};

void set_range(Param& p) {
  if (p.sorted.empty()) {
    p.lo = -1.0;
    p.hi = 1.0;
  } else {
    double lo = quantile(p.sorted, 0.005), hi = quantile(p.sorted, 0.995);
    const double c = 0.5 * (lo + hi);
    if (!(hi - lo > 1e-12 * std::max(1.0, std::fabs(c)))) {
      const double half = c != 0.0 ? 0.05 * std::fabs(c) : 0.5;
      lo = c - half;
      hi = c + half;
    } else {
      const double pad = 0.05 * (hi - lo);
      lo -= pad;
      hi += pad;
    }
    p.lo = lo;
    p.hi = hi;
  }
  if (p.truth && std::isfinite(*p.truth)) {
    const double t = *p.truth, span = p.hi - p.lo;
    if (t < p.lo) {
      if (p.lo - t <= span) {
        p.lo = t - 0.05 * span;
      } else {
        p.truth_side = -1;
      }
    } else if (t > p.hi) {
      if (t - p.hi <= span) {
        p.hi = t + 0.05 * span;
      } else {
        p.truth_side = 1;
      }
    }
  }
}

// printf into a string, without the sign of a value that rounds to zero ("-0.00" -> "0.00").
std::string number(const char* format, int decimals, double v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, format, decimals, v);
  std::string s(buf);
  if (!s.empty() && s[0] == '-' && s.find_first_of("123456789") == std::string::npos) s.erase(0, 1);
  return s;
}

// Tick label with as many decimals as the tick step needs.
std::string tick_label(double v, double step) {
  if (v == 0.0) return "0";
  const int decimals = std::clamp(static_cast<int>(std::ceil(-std::log10(step) - 1e-9)), 0, 8);
  if (std::fabs(v) >= 1e6 || (std::fabs(v) < 1e-4 && decimals > 6)) return number("%.*e", 2, v);
  return number("%.*f", decimals, v);
}

}  // namespace corner_plot_detail

std::vector<std::string> corner_titles(const std::vector<double>& sorted) {
  using corner_plot_detail::number;
  using corner_plot_detail::quantile;
  if (sorted.empty()) return {"no finite draws"};
  const double q16 = quantile(sorted, 0.16), q50 = quantile(sorted, 0.5),
               q84 = quantile(sorted, 0.84);
  const double up = q84 - q50, down = q50 - q16, half = 0.5 * (up + down);
  const double scale = std::min(up, down) > 0 ? std::min(up, down) : std::max(up, down);
  const bool resolved = scale > 0 && std::isfinite(scale);
  // Two significant digits of the smaller half-width, and the median to the same place.
  const int decimals =
      resolved ? std::clamp(static_cast<int>(std::ceil(-std::log10(scale) - 1e-9)) + 1, 0, 12) : 3;
  // Fixed notation unless it would need more than 6 decimals (a value of order 1e-7) or the value
  // is 1e6 or more. Scientific notation then gives the median as many digits as reach the
  // half-width's place: 1.10047 +- 0.00046 printed as "1.10e+00" (sessions up to 45, whenever the
  // half-width was below 1e-4) hid the very digits the posterior resolves.
  const bool sci = decimals > 6 || std::fabs(q50) >= 1e6;
  int mantissa = 2;
  if (sci && resolved && q50 != 0.0 && std::isfinite(q50)) {
    mantissa = std::clamp(
        static_cast<int>(std::floor(std::log10(std::fabs(q50))) - std::floor(std::log10(scale))) +
            1,
        1, 10);
  }
  const std::string m = sci ? number("%.*e", mantissa, q50) : number("%.*f", decimals, q50);
  auto err = [&](double e) { return sci ? number("%.*e", 1, e) : number("%.*f", decimals, e); };
  // Longest first; the caller takes the first that fits.
  return {m + " +" + err(up) + " -" + err(down), m + "+/-" + err(half), m};
}

namespace corner_plot_detail {

// Round ticks whose labels fit side by side in a panel `cell` pixels wide.
void choose_ticks(Param& p, int cell) {
  for (int target = 5; target >= 2; --target) {
    std::vector<double> ticks = plot_detail::nice_ticks(p.lo, p.hi, target);
    if (ticks.size() < 2) continue;
    const double step = ticks[1] - ticks[0];
    int widest = 0;
    for (double t : ticks) widest = std::max(widest, Canvas::text_width(tick_label(t, step)));
    const double spacing = step / (p.hi - p.lo) * (cell - 1);
    p.ticks = ticks;
    p.tick_step = step;
    if (spacing >= widest + 6) return;
  }
}

std::string fit_text(const std::string& s, int width) {
  if (Canvas::text_width(s) <= width) return s;
  const int chars = std::max(1, (width + 1) / plot_detail::kAdvance);
  if (chars <= 2) return s.substr(0, chars);
  return s.substr(0, chars - 2) + "..";
}

// Pixel of a value along an axis of `cell` pixels starting at `origin`; y axes run upwards.
double to_px(const Param& p, double v, int origin, int cell) {
  return origin + (v - p.lo) / (p.hi - p.lo) * (cell - 1);
}
double to_py(const Param& p, double v, int origin, int cell) {
  return origin + cell - 1 - (v - p.lo) / (p.hi - p.lo) * (cell - 1);
}

int bin_of(const Param& p, double v, int bins) {
  if (!(v >= p.lo && v <= p.hi)) return -1;
  return std::clamp(static_cast<int>((v - p.lo) / (p.hi - p.lo) * bins), 0, bins - 1);
}

// A small filled triangle pointing left (side -1) or right (+1) with its tip at (x, y).
void arrow(Canvas& canvas, int x, int y, int side, Rgb c) {
  for (int k = 0; k < 6; ++k) {
    const int X = x - side * k;
    canvas.line(X, y - k / 2, X, y + k / 2, c);
  }
}

void diagonal_panel(Canvas& canvas, const Box& b, const Param& p, int bins) {
  std::vector<double> counts(bins, 0.0);
  for (double v : p.sorted) {
    const int k = bin_of(p, v, bins);
    if (k >= 0) counts[k] += 1.0;
  }
  const double peak = *std::max_element(counts.begin(), counts.end());
  const int base = b.y + b.h - 1;
  if (peak > 0) {
    int last_top = base;
    for (int k = 0; k < bins; ++k) {
      const int x0 = b.x + k * (b.w - 1) / bins, x1 = b.x + (k + 1) * (b.w - 1) / bins;
      const int top = base - static_cast<int>(std::lround(0.9 * (b.h - 1) * counts[k] / peak));
      if (x1 > x0) canvas.fill({x0, top, x1 - x0, base - top + 1}, kHistFill);
      canvas.line(x0, last_top, x0, top, kHistEdge);
      canvas.line(x0, top, x1 - 1, top, kHistEdge);
      last_top = top;
    }
    canvas.line(b.x + b.w - 1, last_top, b.x + b.w - 1, base, kHistEdge);
    for (double q : {0.16, 0.5, 0.84}) {
      const double X = std::round(to_px(p, quantile(p.sorted, q), b.x, b.w));
      for (int y = b.y + 2; y < base; y += 4) canvas.line(X, y, X, y + 1, kQuantile);
    }
  }
  if (p.truth && std::isfinite(*p.truth)) {
    if (p.truth_side == 0) {
      const double X = std::round(to_px(p, *p.truth, b.x, b.w));
      canvas.line(X, b.y, X, base, kRed);
    } else {
      arrow(canvas, p.truth_side < 0 ? b.x + 1 : b.x + b.w - 2, b.y + b.h / 2, p.truth_side, kRed);
    }
  }
}

void pair_panel(Canvas& canvas, const Box& b, const Param& px, const Param& py,
                const std::vector<double>& xs, const std::vector<double>& ys, int bins) {
  // 2-d histogram [bins(y)][bins(x)], then a [1 2 1] x [1 2 1] smoothing.
  std::vector<double> h(static_cast<size_t>(bins) * bins, 0.0);
  for (size_t n = 0; n < xs.size(); ++n) {
    const int i = bin_of(px, xs[n], bins), j = bin_of(py, ys[n], bins);
    if (i >= 0 && j >= 0) h[static_cast<size_t>(j) * bins + i] += 1.0;
  }
  auto smooth = [&](bool along_x) {
    std::vector<double> out(h.size(), 0.0);
    for (int j = 0; j < bins; ++j) {
      for (int i = 0; i < bins; ++i) {
        double s = 2.0 * h[static_cast<size_t>(j) * bins + i];
        for (int d : {-1, 1}) {
          const int ii = along_x ? i + d : i, jj = along_x ? j : j + d;
          if (ii >= 0 && ii < bins && jj >= 0 && jj < bins)
            s += h[static_cast<size_t>(jj) * bins + ii];
        }
        out[static_cast<size_t>(j) * bins + i] = 0.25 * s;
      }
    }
    h.swap(out);
  };
  if (bins >= 3) {
    smooth(true);
    smooth(false);
  }
  // Density thresholds of the highest-density regions holding 68 % and 95 % of the draws.
  std::vector<double> sorted(h);
  std::sort(sorted.begin(), sorted.end(), std::greater<double>());
  double total = 0.0;
  for (double v : sorted) total += v;
  auto threshold = [&](double mass) {
    double cum = 0.0;
    for (double v : sorted) {
      cum += v;
      if (cum >= mass * total) return v;
    }
    return sorted.empty() ? 0.0 : sorted.back();
  };
  const double t68 = threshold(0.68), t95 = threshold(0.95);
  // Level of every pixel: 0 empty, 1 outside 95 %, 2 inside 95 %, 3 inside 68 %.
  std::vector<uint8_t> level(static_cast<size_t>(b.w) * b.h, 0);
  if (total > 0) {
    for (int y = 0; y < b.h; ++y) {
      const int j = std::min(bins - 1, (b.h - 1 - y) * bins / (b.h - 1));
      for (int x = 0; x < b.w; ++x) {
        const int i = std::min(bins - 1, x * bins / (b.w - 1));
        const double v = h[static_cast<size_t>(j) * bins + i];
        level[static_cast<size_t>(y) * b.w + x] = v <= 0 ? 0 : v >= t68 ? 3 : v >= t95 ? 2 : 1;
      }
    }
  }
  const Rgb shades[4] = {kWhite, kOuter, kLevel95, kLevel68};
  for (int y = 0; y < b.h; ++y) {
    for (int x = 0; x < b.w; ++x) {
      const uint8_t l = level[static_cast<size_t>(y) * b.w + x];
      if (l == 0) continue;
      bool edge = false;
      if (l >= 2) {
        for (auto [dx, dy] : {std::pair{1, 0}, {-1, 0}, {0, 1}, {0, -1}}) {
          const int X = x + dx, Y = y + dy;
          if (X < 0 || Y < 0 || X >= b.w || Y >= b.h) continue;
          if (level[static_cast<size_t>(Y) * b.w + X] < l) edge = true;
        }
      }
      canvas.set(b.x + x, b.y + y, edge ? kContour : shades[l]);
    }
  }
  // Truths: lines through the panel and a marker where they cross.
  const bool tx = px.truth && std::isfinite(*px.truth) && px.truth_side == 0;
  const bool ty = py.truth && std::isfinite(*py.truth) && py.truth_side == 0;
  const double X = tx ? std::round(to_px(px, *px.truth, b.x, b.w)) : 0.0;
  const double Y = ty ? std::round(to_py(py, *py.truth, b.y, b.h)) : 0.0;
  if (tx) canvas.line(X, b.y, X, b.y + b.h - 1, kRed);
  if (ty) canvas.line(b.x, Y, b.x + b.w - 1, Y, kRed);
  if (tx && ty) canvas.fill({static_cast<int>(X) - 2, static_cast<int>(Y) - 2, 5, 5}, kRed);
}

}  // namespace corner_plot_detail

CornerLayout corner_plot(Canvas& canvas, Box box, const torch::Tensor& draws,
                         const std::vector<std::string>& names,
                         const std::vector<std::optional<double>>& truths, int bins) {
  using namespace corner_plot_detail;
  if (!draws.defined() || draws.dim() != 2 || draws.size(0) < 1 || draws.size(1) < 1) {
    throw InvalidArgument("corner_plot: draws must be a 2-d tensor [N >= 1, P >= 1], got " +
                          (draws.defined() ? std::to_string(draws.dim()) + "-d" : "undefined"));
  }
  const int P = static_cast<int>(draws.size(1));
  const int64_t N = draws.size(0);
  if (names.size() != static_cast<size_t>(P)) {
    throw InvalidArgument("corner_plot: " + std::to_string(names.size()) + " names for " +
                          std::to_string(P) + " parameters");
  }
  if (!truths.empty() && truths.size() != static_cast<size_t>(P)) {
    throw InvalidArgument("corner_plot: " + std::to_string(truths.size()) + " truths for " +
                          std::to_string(P) + " parameters (give none or one per parameter)");
  }
  if (bins < 1 || bins > 1000) {
    throw InvalidArgument("corner_plot: bins must be in 1..1000, got " + std::to_string(bins));
  }
  const torch::Tensor d = draws.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const double* v = d.data_ptr<double>();

  std::vector<Param> params(P);
  for (int k = 0; k < P; ++k) {
    Param& p = params[k];
    p.sorted.reserve(N);
    for (int64_t n = 0; n < N; ++n) {
      const double x = v[n * P + k];
      if (std::isfinite(x)) p.sorted.push_back(x);
    }
    std::sort(p.sorted.begin(), p.sorted.end());
    if (!truths.empty()) p.truth = truths[k];
    set_range(p);
  }

  // Layout: y tick labels and names on the left, x tick labels and names below, a title row
  // above every diagonal panel.
  const int gap_x = 6, gap_y = 14, top = 14, right = 10;
  const int bottom = 3 + plot_detail::kGlyphH + 5 + plot_detail::kGlyphH + 2;
  const int name_w = plot_detail::kGlyphH + 5;
  auto cell_for = [&](int left) {
    return std::min((box.w - left - right - (P - 1) * gap_x) / P,
                    (box.h - top - bottom - (P - 1) * gap_y) / P);
  };
  int cell = cell_for(name_w + 40);
  if (cell >= 24) {
    for (auto& p : params) choose_ticks(p, cell);
  }
  int label_w = 0;
  for (int k = 1; k < P; ++k) {
    for (double t : params[k].ticks) {
      label_w = std::max(label_w, Canvas::text_width(tick_label(t, params[k].tick_step)));
    }
  }
  const int left = P > 1 ? name_w + label_w + 5 : 4;
  cell = cell_for(left);
  if (cell < 24) {
    throw InvalidArgument("corner_plot: a box of " + std::to_string(box.w) + "x" +
                          std::to_string(box.h) + " pixels is too small for " + std::to_string(P) +
                          " parameters (panels need at least 24 pixels)");
  }
  const int grid_w = P * cell + (P - 1) * gap_x;
  const int x0 = box.x + left + std::max(0, (box.w - left - right - grid_w) / 2);
  const int y0 = box.y + top;

  CornerLayout layout;
  layout.parameters = P;
  layout.cell = cell;
  layout.panels.assign(static_cast<size_t>(P) * P, Box{});
  for (const auto& p : params) layout.ranges.emplace_back(p.lo, p.hi);
  for (int i = 0; i < P; ++i) {
    for (int j = 0; j <= i; ++j) {
      layout.panels[static_cast<size_t>(i) * P + j] =
          Box{x0 + j * (cell + gap_x), y0 + i * (cell + gap_y), cell, cell};
    }
  }

  std::vector<double> xs, ys;
  for (int i = 0; i < P; ++i) {
    for (int j = 0; j <= i; ++j) {
      const Box& b = layout.panel(i, j);
      if (i == j) {
        diagonal_panel(canvas, b, params[i], bins);
        // Title: the widest summary that fits over the panel and its gaps.
        const std::vector<std::string> titles = corner_titles(params[i].sorted);
        for (size_t k = 0; k < titles.size(); ++k) {
          const int w = Canvas::text_width(titles[k]);
          if (w > cell + 2 * gap_x && k + 1 < titles.size()) continue;
          canvas.text(b.x + (b.w - w) / 2, b.y - plot_detail::kGlyphH - 4, titles[k]);
          break;
        }
      } else {
        xs.clear();
        ys.clear();
        for (int64_t n = 0; n < N; ++n) {
          const double a = v[n * P + j], c = v[n * P + i];
          if (std::isfinite(a) && std::isfinite(c)) {
            xs.push_back(a);
            ys.push_back(c);
          }
        }
        pair_panel(canvas, b, params[j], params[i], xs, ys, bins);
      }
      // Frame and tick marks (x on every panel, y on the pair panels).
      canvas.rect(b, kBlack);
      for (double t : params[j].ticks) {
        const double X = std::round(to_px(params[j], t, b.x, b.w));
        canvas.line(X, b.y + b.h - 1, X, b.y + b.h - 4, kBlack);
      }
      if (i != j) {
        for (double t : params[i].ticks) {
          const double Y = std::round(to_py(params[i], t, b.y, b.h));
          canvas.line(b.x, Y, b.x + 3, Y, kBlack);
        }
      }
    }
  }

  // Tick labels and names: x along the bottom row, y along the left column (rows below the first).
  const int grid_bottom = y0 + (P - 1) * (cell + gap_y) + cell;
  for (int j = 0; j < P; ++j) {
    const Param& p = params[j];
    const Box& b = layout.panel(P - 1, j);
    // Labels stay under their own column (half the gap either side) and never overlap.
    const int lo_x = j == 0 ? box.x : b.x - gap_x / 2;
    const int hi_x = j == P - 1 ? box.x + box.w : b.x + b.w + gap_x / 2;
    int last_right = std::numeric_limits<int>::min();
    for (double t : p.ticks) {
      const std::string s = tick_label(t, p.tick_step);
      const int w = Canvas::text_width(s);
      const int x = static_cast<int>(std::lround(to_px(p, t, b.x, b.w))) - w / 2;
      if (x < lo_x || x + w > hi_x || x < last_right + 4) continue;
      canvas.text(x, grid_bottom + 3, s);
      last_right = x + w;
    }
    const std::string name = fit_text(names[j], cell + gap_x - 2);
    canvas.text(b.x + (b.w - Canvas::text_width(name)) / 2,
                grid_bottom + 3 + plot_detail::kGlyphH + 5, name);
  }
  for (int i = 1; i < P; ++i) {
    const Param& p = params[i];
    const Box& b = layout.panel(i, 0);
    int last_y = std::numeric_limits<int>::max();
    for (auto it = p.ticks.begin(); it != p.ticks.end(); ++it) {
      const std::string s = tick_label(*it, p.tick_step);
      const int y = static_cast<int>(std::lround(to_py(p, *it, b.y, b.h)));
      if (y > last_y - plot_detail::kGlyphH - 3) continue;
      canvas.text(b.x - 3 - Canvas::text_width(s), y - plot_detail::kGlyphH / 2, s);
      last_y = y;
    }
    const std::string name = fit_text(names[i], cell + gap_y - 2);
    plot_detail::vertical_text(canvas, b.x - left, b.y + (b.h + Canvas::text_width(name)) / 2, name,
                               kBlack);
  }
  return layout;
}

}  // namespace dslens::plot

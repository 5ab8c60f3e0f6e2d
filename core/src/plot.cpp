// Raster plotting: colour maps, a 5x7 bitmap font, image panels, line plots (see plot.h).
#include "dslens/core/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>

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

}  // namespace dslens::plot

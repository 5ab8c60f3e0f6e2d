// Raster figures written as PNG, with no plotting library: image panels with colour maps,
// line plots, scatter and histograms, and text in a built-in bitmap font. Used for simulate's
// preview, training reports, and fit reports (residuals, corner plots).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dslens::plot {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};
inline constexpr Rgb kWhite{255, 255, 255};
inline constexpr Rgb kBlack{0, 0, 0};
inline constexpr Rgb kRed{220, 40, 40};
inline constexpr Rgb kBlue{40, 90, 220};
inline constexpr Rgb kGreen{40, 160, 60};
inline constexpr Rgb kOrange{240, 150, 20};
inline constexpr Rgb kGrey{128, 128, 128};

// A colour map lookup: "viridis", "magma", "gray", "coolwarm" (diverging, for residuals).
Rgb colormap(const std::string& name, double t /* in [0, 1] */);

// Pixel rectangle on a canvas; (x, y) is the top-left corner.
struct Box {
  int x = 0, y = 0, w = 0, h = 0;
};

class Canvas {
 public:
  Canvas(int width, int height, Rgb background = kWhite);
  int width() const { return width_; }
  int height() const { return height_; }

  void set(int x, int y, Rgb c);
  void fill(const Box& box, Rgb c);
  void rect(const Box& box, Rgb c);  // outline
  void line(double x0, double y0, double x1, double y1, Rgb c, int thickness = 1);
  // Text in a 5x7 bitmap font (ASCII 32..126), scaled by an integer factor; returns the width.
  int text(int x, int y, const std::string& s, Rgb c = kBlack, int scale = 1);
  static int text_width(const std::string& s, int scale = 1);

  // Draws a 2-d tensor [H, W] into `box` (nearest-neighbour resampled) with row 0 at the
  // BOTTOM (astronomical orientation: dec increases upwards). Limits default to the data's
  // min/max (or symmetric about 0 for diverging maps); `asinh_stretch` > 0 applies
  // asinh(x / stretch) for high-dynamic-range images. Non-finite pixels are drawn grey.
  void image(const Box& box, const torch::Tensor& img, const std::string& cmap = "viridis",
             std::optional<double> vmin = std::nullopt, std::optional<double> vmax = std::nullopt,
             double asinh_stretch = 0.0);
  // A colour bar with min/max labels.
  void colorbar(const Box& box, const std::string& cmap, double vmin, double vmax);

  // Encodes as PNG (8-bit RGB) and writes atomically.
  void save_png(const std::string& path) const;
  const std::vector<uint8_t>& pixels() const { return rgb_; }  // row-major RGB

 private:
  int width_, height_;
  std::vector<uint8_t> rgb_;
};

// Maps data coordinates to a canvas box for line/scatter plots, and draws frames and ticks.
class Axes {
 public:
  Axes(Canvas& canvas, Box box, double xmin, double xmax, double ymin, double ymax,
       bool log_y = false);
  double px(double x) const;
  double py(double y) const;
  void frame(const std::string& title = "", const std::string& xlabel = "",
             const std::string& ylabel = "");
  void plot(const std::vector<double>& x, const std::vector<double>& y, Rgb c, int thickness = 1);
  void scatter(const std::vector<double>& x, const std::vector<double>& y, Rgb c, int radius = 1);
  // Histogram of `values` with `bins` bins over [xmin, xmax], heights scaled to the y range.
  void histogram(const std::vector<double>& values, int bins, Rgb c);
  void vline(double x, Rgb c);
  void hline(double y, Rgb c);
  void legend(const std::vector<std::pair<std::string, Rgb>>& entries);

 private:
  Canvas& canvas_;
  Box box_;
  double xmin_, xmax_, ymin_, ymax_;
  bool log_y_;
};

// Where corner_plot drew: the panel of each parameter pair and each parameter's axis range.
struct CornerLayout {
  int parameters = 0;
  int cell = 0;                                   // side of every panel, pixels
  std::vector<Box> panels;                        // row-major [P * P]; empty above the diagonal
  std::vector<std::pair<double, double>> ranges;  // axis range [lo, hi] of every parameter
  // Panel of row `row` (parameter on the y axis) and column `col` (on the x axis), col <= row;
  // the diagonal panels hold the 1-d histograms.
  const Box& panel(int row, int col) const { return panels.at(row * parameters + col); }
};

// Corner plot of posterior draws [N, P] (any dtype and device) in `box`, labels included: the
// lower triangle of a P x P grid, 1-d histograms with the 16/50/84 % quantiles on the diagonal
// (titled median +/- the 68 % half-widths), 2-d histograms (smoothed by one bin) shaded by the
// 68 % and 95 % highest-density regions below it, truths as red lines (a red arrow at the edge of
// the histogram when a truth lies far outside the range), tick values on the left column and
// bottom row, and the names as axis labels. Axis ranges span the 0.5 % to 99.5 % quantiles of the
// finite draws, padded by 5 % (widened to take in a truth no further than one range away).
// Non-finite draws are left out. Throws InvalidArgument for draws that are not [N >= 1, P >= 1],
// names or truths (when given) not of length P, bins outside 1..1000, or a box too small for
// panels of 24 pixels.
CornerLayout corner_plot(Canvas& canvas, Box box, const torch::Tensor& draws,
                         const std::vector<std::string>& names,
                         const std::vector<std::optional<double>>& truths = {}, int bins = 30);

// The titles corner_plot may put over a parameter's histogram, longest first (it takes the first
// that fits): "median +a -b", "median+/-h" and "median", where a and b are the distances to the 84
// and 16 % quantiles of the sorted finite draws and h their mean. Two significant digits of the
// smaller of a and b, and the median to the same decimal place; scientific notation only where
// that would take more than 6 decimals or the median is 1e6 or more, with the median's mantissa
// again reaching the half-width's place.
std::vector<std::string> corner_titles(const std::vector<double>& sorted_draws);

// PNG encoding of 8-bit RGB pixels (row-major, width*height*3 bytes) with zlib.
std::vector<uint8_t> encode_png(const std::vector<uint8_t>& rgb, int width, int height);

}  // namespace dslens::plot

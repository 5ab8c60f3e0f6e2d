// PNG encoding (decoded back with zlib), colour maps, image orientation and the bitmap font.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/core/plot.h"
#include "test_support.h"

namespace {

using dslens::plot::Canvas;
using dslens::plot::Rgb;

uint32_t read_u32(const std::vector<uint8_t>& b, size_t at) {
  return (uint32_t(b.at(at)) << 24) | (uint32_t(b.at(at + 1)) << 16) |
         (uint32_t(b.at(at + 2)) << 8) | uint32_t(b.at(at + 3));
}

struct Chunk {
  std::string type;
  std::vector<uint8_t> data;
};

// Splits a PNG into chunks, checking the signature and every CRC.
std::vector<Chunk> parse_png(const std::vector<uint8_t>& png) {
  const std::vector<uint8_t> sig = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  EXPECT_TRUE(png.size() > 8 && std::equal(sig.begin(), sig.end(), png.begin()));
  std::vector<Chunk> chunks;
  size_t at = 8;
  while (at + 12 <= png.size()) {
    const uint32_t len = read_u32(png, at);
    Chunk c;
    c.type.assign(png.begin() + at + 4, png.begin() + at + 8);
    c.data.assign(png.begin() + at + 8, png.begin() + at + 8 + len);
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, png.data() + at + 4, 4 + len);
    EXPECT_EQ(read_u32(png, at + 8 + len), static_cast<uint32_t>(crc)) << "CRC of " << c.type;
    chunks.push_back(std::move(c));
    at += 12 + len;
  }
  EXPECT_EQ(at, png.size());
  return chunks;
}

}  // namespace

TEST(Png, DecodesToTheExactPixelsWithFilterBytes) {
  const int w = 3, h = 2;
  std::vector<uint8_t> rgb(w * h * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<uint8_t>(i * 13 + 7);
  const auto png = dslens::plot::encode_png(rgb, w, h);
  const auto chunks = parse_png(png);
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(chunks[0].type, "IHDR");
  ASSERT_EQ(chunks[0].data.size(), 13u);
  EXPECT_EQ(read_u32(chunks[0].data, 0), 3u);  // width
  EXPECT_EQ(read_u32(chunks[0].data, 4), 2u);  // height
  EXPECT_EQ(chunks[0].data[8], 8);             // bit depth
  EXPECT_EQ(chunks[0].data[9], 2);             // RGB
  EXPECT_EQ(chunks[0].data[10], 0);
  EXPECT_EQ(chunks[0].data[11], 0);
  EXPECT_EQ(chunks[0].data[12], 0);
  EXPECT_EQ(chunks[1].type, "IDAT");
  EXPECT_EQ(chunks[2].type, "IEND");
  EXPECT_TRUE(chunks[2].data.empty());

  std::vector<uint8_t> raw(h * (1 + w * 3) + 16);
  uLongf raw_len = raw.size();
  ASSERT_EQ(uncompress(raw.data(), &raw_len, chunks[1].data.data(), chunks[1].data.size()), Z_OK);
  ASSERT_EQ(raw_len, static_cast<uLongf>(h * (1 + w * 3)));
  std::vector<uint8_t> expected;
  for (int y = 0; y < h; ++y) {
    expected.push_back(0);  // filter type None
    expected.insert(expected.end(), rgb.begin() + y * w * 3, rgb.begin() + (y + 1) * w * 3);
  }
  raw.resize(raw_len);
  EXPECT_EQ(raw, expected);
}

TEST(Png, RejectsWrongSizesAndSavesTheFile) {
  EXPECT_THROW(dslens::plot::encode_png(std::vector<uint8_t>(5), 2, 1), dslens::InvalidArgument);
  EXPECT_THROW(dslens::plot::encode_png({}, 0, 1), dslens::InvalidArgument);
  Canvas canvas(4, 3, dslens::plot::kBlue);
  const auto dir = dslens::testing::temp_dir("png");
  canvas.save_png(dir + "/a.png");
  std::ifstream in(dir + "/a.png", std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  EXPECT_EQ(bytes, dslens::plot::encode_png(canvas.pixels(), 4, 3));
  std::filesystem::remove_all(dir);
}

TEST(Colormap, EndpointsAndMonotoneGray) {
  auto eq = [](Rgb a, Rgb b) { return a.r == b.r && a.g == b.g && a.b == b.b; };
  using dslens::plot::colormap;
  EXPECT_TRUE(eq(colormap("viridis", 0.0), Rgb{68, 1, 84}));
  EXPECT_TRUE(eq(colormap("viridis", 1.0), Rgb{253, 231, 37}));
  EXPECT_TRUE(eq(colormap("magma", 0.0), Rgb{0, 0, 4}));
  EXPECT_TRUE(eq(colormap("magma", 1.0), Rgb{252, 253, 191}));
  EXPECT_TRUE(eq(colormap("gray", 0.0), Rgb{0, 0, 0}));
  EXPECT_TRUE(eq(colormap("gray", 1.0), Rgb{255, 255, 255}));
  EXPECT_TRUE(eq(colormap("gray", 0.5), Rgb{128, 128, 128}));
  EXPECT_TRUE(eq(colormap("coolwarm", 0.0), Rgb{59, 76, 192}));
  EXPECT_TRUE(eq(colormap("coolwarm", 1.0), Rgb{180, 4, 38}));
  EXPECT_TRUE(eq(colormap("coolwarm", 0.5), Rgb{221, 221, 221}));
  // Out-of-range t is clamped.
  EXPECT_TRUE(eq(colormap("viridis", -3.0), colormap("viridis", 0.0)));
  EXPECT_TRUE(eq(colormap("viridis", 7.0), colormap("viridis", 1.0)));
  int last = -1;
  for (int i = 0; i <= 100; ++i) {
    const int v = colormap("gray", i / 100.0).r;
    EXPECT_GE(v, last);
    last = v;
  }
  EXPECT_THROW(colormap("jet", 0.5), dslens::InvalidArgument);
}

TEST(Canvas, ImageRowZeroIsDrawnAtTheBottom) {
  Canvas canvas(2, 2);
  // 2x2 data: row 0 = [0, 1], row 1 = [2, 3]; grey map over [0, 3].
  auto img = torch::tensor({0.0, 1.0, 2.0, 3.0}).reshape({2, 2});
  canvas.image({0, 0, 2, 2}, img, "gray");
  const auto& p = canvas.pixels();
  auto r_at = [&](int x, int y) { return p[(y * 2 + x) * 3]; };
  EXPECT_EQ(r_at(0, 1), 0);    // bottom-left: row 0, col 0 (minimum)
  EXPECT_EQ(r_at(1, 1), 85);   // bottom-right: row 0, col 1
  EXPECT_EQ(r_at(0, 0), 170);  // top-left: row 1, col 0
  EXPECT_EQ(r_at(1, 0), 255);  // top-right: row 1, col 1 (maximum)

  // Nearest-neighbour upsampling into a bigger box, explicit limits, and NaN drawn grey.
  Canvas big(4, 4);
  auto img2 = torch::tensor({0.0, std::nan(""), 10.0, 10.0}).reshape({2, 2});
  big.image({0, 0, 4, 4}, img2, "gray", 0.0, 10.0);
  const auto& q = big.pixels();
  auto q_at = [&](int x, int y) {
    return Rgb{q[(y * 4 + x) * 3], q[(y * 4 + x) * 3 + 1], q[(y * 4 + x) * 3 + 2]};
  };
  EXPECT_EQ(q_at(0, 3).r, 0);
  EXPECT_EQ(q_at(1, 2).r, 0);
  EXPECT_EQ(q_at(3, 3).r, dslens::plot::kGrey.r);
  EXPECT_EQ(q_at(0, 0).r, 255);
  EXPECT_THROW(big.image({0, 0, 4, 4}, torch::zeros({3}), "gray"), dslens::InvalidArgument);
}

TEST(Canvas, DivergingMapIsSymmetricAboutZero) {
  Canvas canvas(3, 1);
  canvas.image({0, 0, 3, 1}, torch::tensor({-1.0, 0.0, 4.0}).reshape({1, 3}), "coolwarm");
  const auto& p = canvas.pixels();
  const Rgb mid = dslens::plot::colormap("coolwarm", 0.5);
  EXPECT_EQ(p[3], mid.r);  // 0 maps to the centre of the map, not to 0.2
  EXPECT_EQ(p[6], 180);    // the maximum
}

TEST(Canvas, TextWidthAndGlyphs) {
  EXPECT_EQ(Canvas::text_width(""), 0);
  EXPECT_EQ(Canvas::text_width("A"), 5);
  EXPECT_EQ(Canvas::text_width("Hello"), 5 * 6 - 1);
  EXPECT_EQ(Canvas::text_width("Hello", 2), (5 * 6 - 1) * 2);
  Canvas canvas(40, 10);
  EXPECT_EQ(canvas.text(1, 1, "I|", dslens::plot::kBlack), 11);
  // 'I' has a full-height bar in its middle column (x = 1 + 2) and '|' too (x = 1 + 6 + 2).
  const auto& p = canvas.pixels();
  for (int y = 1; y < 8; ++y) {
    EXPECT_EQ(p[(y * 40 + 3) * 3], 0) << y;
    EXPECT_EQ(p[(y * 40 + 9) * 3], 0) << y;
  }
  EXPECT_EQ(p[(8 * 40 + 3) * 3], 255);  // nothing below the 7 rows
  // A space draws nothing; every printable character draws within its 5x7 cell.
  Canvas blank(10, 10);
  blank.text(0, 0, " ");
  for (uint8_t v : blank.pixels()) EXPECT_EQ(v, 255);
  for (int c = 33; c <= 126; ++c) {
    Canvas one(8, 9);
    one.text(1, 1, std::string(1, static_cast<char>(c)));
    int inked = 0;
    for (int y = 0; y < 9; ++y) {
      for (int x = 0; x < 8; ++x) {
        const bool dark = one.pixels()[(y * 8 + x) * 3] == 0;
        inked += dark;
        if (dark) {
          EXPECT_TRUE(x >= 1 && x <= 5 && y >= 1 && y <= 7) << "char " << c;
        }
      }
    }
    EXPECT_GT(inked, 0) << "char " << c;
  }
}

TEST(Axes, MapsDataToPixelsAndDrawsInsideTheBox) {
  Canvas canvas(120, 100);
  dslens::plot::Axes axes(canvas, {10, 10, 101, 81}, 0.0, 10.0, 1.0, 100.0, true);
  EXPECT_DOUBLE_EQ(axes.px(0.0), 10.0);
  EXPECT_DOUBLE_EQ(axes.px(10.0), 110.0);
  EXPECT_DOUBLE_EQ(axes.py(1.0), 90.0);    // bottom
  EXPECT_DOUBLE_EQ(axes.py(100.0), 10.0);  // top
  EXPECT_NEAR(axes.py(10.0), 50.0, 1e-9);  // one decade of two: the middle
  axes.frame("t", "x", "y");
  axes.plot({0.0, 10.0}, {1.0, 100.0}, dslens::plot::kRed);
  axes.histogram({1.0, 1.5, 2.0, 9.0}, 5, dslens::plot::kGreen);
  axes.legend({{"a", dslens::plot::kRed}});
  const auto& p = canvas.pixels();
  // The diagonal passes through the middle of the box.
  const size_t mid = (50 * 120 + 60) * 3;
  EXPECT_EQ(p[mid], dslens::plot::kRed.r);
  EXPECT_EQ(p[mid + 1], dslens::plot::kRed.g);
  EXPECT_THROW(dslens::plot::Axes(canvas, {0, 0, 10, 10}, 0, 1, 0, 1, true),
               dslens::InvalidArgument);
}

namespace corner_plot_test {

using dslens::plot::Box;
using dslens::plot::CornerLayout;

struct Pixels {
  const Canvas& c;
  Rgb at(int x, int y) const {
    const size_t i = (static_cast<size_t>(y) * c.width() + x) * 3;
    return {c.pixels()[i], c.pixels()[i + 1], c.pixels()[i + 2]};
  }
};
// The 68 % region and the contour lines of the 2-d panels: dark blue.
bool dark_blue(Rgb p) {
  return p.r < 60 && p.b > p.r + 60;
}
// Any shade of the 2-d panels (68 %, 95 %, outer bins, contours).
bool blue_shade(Rgb p) {
  return p.b > p.r + 20 && p.b >= p.g;
}
bool red(Rgb p) {
  return p.r > 200 && p.g < 80 && p.b < 80;
}

// Correlated standard normals [n, 2] with correlation rho.
torch::Tensor correlated(int64_t n, double rho, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  torch::Tensor z = torch::randn({n, 2}, gen, torch::kFloat64);
  torch::Tensor x = z.select(1, 0);
  torch::Tensor y = rho * x + std::sqrt(1 - rho * rho) * z.select(1, 1);
  return torch::stack({x, y}, 1);
}

// Pearson correlation of the dark pixels' positions (x right, y up) inside `b`.
double pixel_correlation(const Canvas& canvas, const Box& b, int* count) {
  Pixels px{canvas};
  std::vector<double> xs, ys;
  for (int y = b.y + 1; y < b.y + b.h - 1; ++y) {
    for (int x = b.x + 1; x < b.x + b.w - 1; ++x) {
      if (dark_blue(px.at(x, y))) {
        xs.push_back(x);
        ys.push_back(-y);
      }
    }
  }
  *count = static_cast<int>(xs.size());
  auto t = torch::stack({torch::tensor(xs, torch::kFloat64), torch::tensor(ys, torch::kFloat64)});
  return torch::corrcoef(t)[0][1].item<double>();
}

}  // namespace corner_plot_test

using namespace corner_plot_test;

TEST(CornerPlot, CorrelatedGaussianIsShadedAlongTheCorrelation) {
  for (double rho : {0.9, -0.9}) {
    Canvas canvas(420, 420);
    const torch::Tensor draws = correlated(4000, rho, 11);
    const CornerLayout layout =
        dslens::plot::corner_plot(canvas, {0, 0, 420, 420}, draws, {"a", "b"});
    ASSERT_EQ(layout.parameters, 2);
    const Box& pair = layout.panel(1, 0);
    EXPECT_GT(layout.cell, 150);
    int dark = 0;
    const double r = pixel_correlation(canvas, pair, &dark);
    EXPECT_GT(dark, 500) << rho;
    EXPECT_GT(r * rho / std::fabs(rho), 0.8) << "rho " << rho << ": pixel correlation " << r;

    // The share of draws on the 68 % shade and inside the shaded 95 % region.
    Pixels px{canvas};
    const auto [xlo, xhi] = layout.ranges[0];
    const auto [ylo, yhi] = layout.ranges[1];
    int in68 = 0, in95 = 0;
    auto a = draws.accessor<double, 2>();
    for (int64_t n = 0; n < draws.size(0); ++n) {
      const double fx = (a[n][0] - xlo) / (xhi - xlo), fy = (a[n][1] - ylo) / (yhi - ylo);
      if (fx < 0 || fx > 1 || fy < 0 || fy > 1) continue;
      const int x = pair.x + static_cast<int>(std::lround(fx * (pair.w - 1)));
      const int y = pair.y + pair.h - 1 - static_cast<int>(std::lround(fy * (pair.h - 1)));
      const Rgb p = px.at(x, y);
      in68 += dark_blue(p);
      in95 += blue_shade(p) && p.r < 150;
    }
    const double n = static_cast<double>(draws.size(0));
    EXPECT_NEAR(in68 / n, 0.68, 0.1) << rho;
    EXPECT_NEAR(in95 / n, 0.95, 0.05) << rho;
    // Nothing shaded in the diagonal panels, nothing drawn above the diagonal.
    for (int k = 0; k < 2; ++k) {
      const Box& d = layout.panel(k, k);
      for (int y = d.y; y < d.y + d.h; ++y) {
        for (int x = d.x; x < d.x + d.w; ++x) ASSERT_FALSE(blue_shade(px.at(x, y)));
      }
    }
    const Box above{layout.panel(1, 1).x, layout.panel(0, 0).y, layout.cell, layout.cell};
    for (int y = above.y; y < above.y + above.h; ++y) {
      for (int x = above.x; x < above.x + above.w; ++x) {
        const Rgb p = px.at(x, y);
        ASSERT_TRUE(p.r == 255 && p.g == 255 && p.b == 255) << x << "," << y;
      }
    }
  }
}

TEST(CornerPlot, TruthsAreRedLinesAtTheirValues) {
  const torch::Tensor draws = correlated(2000, 0.0, 5);
  auto red_columns_rows = [](const Canvas& canvas, const Box& b, std::map<int, int>& cols,
                             std::map<int, int>& rows) {
    Pixels px{canvas};
    for (int y = b.y; y < b.y + b.h; ++y) {
      for (int x = b.x; x < b.x + b.w; ++x) {
        if (red(px.at(x, y))) {
          ++cols[x];
          ++rows[y];
        }
      }
    }
  };
  {
    Canvas canvas(400, 400);
    const auto layout = dslens::plot::corner_plot(canvas, {0, 0, 400, 400}, draws, {"x", "y"},
                                                  {0.37, std::nullopt});
    const auto [lo, hi] = layout.ranges[0];
    for (int row = 0; row < 2; ++row) {
      const Box& b = layout.panel(row, 0);
      const int expected_x =
          static_cast<int>(std::lround(b.x + (0.37 - lo) / (hi - lo) * (b.w - 1)));
      std::map<int, int> cols, rows;
      red_columns_rows(canvas, b, cols, rows);
      ASSERT_EQ(cols.size(), 1u) << "panel row " << row;
      EXPECT_EQ(cols.begin()->first, expected_x);
      EXPECT_EQ(cols.begin()->second, b.h - 2);  // the full height inside the frame
    }
    std::map<int, int> cols, rows;
    red_columns_rows(canvas, layout.panel(1, 1), cols, rows);
    EXPECT_TRUE(cols.empty());  // no truth for y
  }
  {
    Canvas canvas(400, 400);
    const auto layout = dslens::plot::corner_plot(canvas, {0, 0, 400, 400}, draws, {"x", "y"},
                                                  {std::nullopt, -0.43});
    const auto [lo, hi] = layout.ranges[1];
    const Box& pair = layout.panel(1, 0);
    std::map<int, int> cols, rows;
    red_columns_rows(canvas, pair, cols, rows);
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows.begin()->first,
              static_cast<int>(
                  std::lround(pair.y + pair.h - 1 - (-0.43 - lo) / (hi - lo) * (pair.h - 1))));
    EXPECT_EQ(rows.begin()->second, pair.w - 2);
    const Box& diag = layout.panel(1, 1);
    cols.clear();
    rows.clear();
    red_columns_rows(canvas, diag, cols, rows);
    ASSERT_EQ(cols.size(), 1u);
    EXPECT_EQ(cols.begin()->first,
              static_cast<int>(std::lround(diag.x + (-0.43 - lo) / (hi - lo) * (diag.w - 1))));
  }
  {
    // A truth far outside the draws keeps the range and is marked by an arrow at the edge.
    Canvas canvas(400, 400);
    const auto layout =
        dslens::plot::corner_plot(canvas, {0, 0, 400, 400}, draws, {"x", "y"}, {50.0, 4.0});
    EXPECT_LT(layout.ranges[0].second, 5.0);
    EXPECT_GT(layout.ranges[1].second, 4.0);  // near enough: the range takes it in
    std::map<int, int> cols, rows;
    red_columns_rows(canvas, layout.panel(0, 0), cols, rows);
    ASSERT_FALSE(cols.empty());
    EXPECT_GE(cols.begin()->first, layout.panel(0, 0).x + layout.cell - 10);
  }
}

TEST(CornerPlot, RangesFollowTheQuantilesAndIgnoreOutliers) {
  torch::Tensor a = torch::linspace(-1.0, 1.0, 1001, torch::kFloat64);
  torch::Tensor b = torch::full({1001}, 3.0, torch::kFloat64);  // a constant parameter
  torch::Tensor draws = torch::stack({a, b}, 1);
  draws[0][0] = 1e6;
  draws[1][0] = std::nan("");
  Canvas canvas(300, 300);
  const auto layout =
      dslens::plot::corner_plot(canvas, {0, 0, 300, 300}, draws, {"a", "b"}, {}, 20);
  const auto [lo, hi] = layout.ranges[0];
  // 0.5 % / 99.5 % quantiles of the finite draws, padded by 5 % of their distance.
  EXPECT_NEAR(lo, -0.99 - 0.05 * 1.98, 0.01);
  EXPECT_NEAR(hi, 0.99 + 0.05 * 1.98, 0.01);
  EXPECT_NEAR(layout.ranges[1].first, 2.85, 1e-9);
  EXPECT_NEAR(layout.ranges[1].second, 3.15, 1e-9);
  // Tick labels and names leave ink below the bottom row and left of the first column.
  Pixels px{canvas};
  const Box& pair = layout.panel(1, 0);
  int below = 0, left = 0;
  for (int y = pair.y + pair.h + 1; y < 300; ++y)
    for (int x = 0; x < 300; ++x) below += px.at(x, y).r == 0;
  for (int y = pair.y; y < pair.y + pair.h; ++y)
    for (int x = 0; x < pair.x - 1; ++x) left += px.at(x, y).r == 0;
  EXPECT_GT(below, 100);
  EXPECT_GT(left, 50);
}

TEST(CornerPlot, RejectsBadShapes) {
  using dslens::InvalidArgument;
  using dslens::plot::corner_plot;
  Canvas canvas(300, 300);
  const Box box{0, 0, 300, 300};
  const torch::Tensor ok = torch::zeros({10, 2});
  EXPECT_NO_THROW(corner_plot(canvas, box, ok, {"a", "b"}));
  // Degenerate but valid: one draw of one parameter, all-NaN draws, integer draws.
  EXPECT_NO_THROW(corner_plot(canvas, box, torch::ones({1, 1}), {"one"}, {2.0}, 1));
  EXPECT_NO_THROW(corner_plot(canvas, box, torch::full({5, 2}, std::nan("")), {"a", "b"}));
  EXPECT_NO_THROW(corner_plot(canvas, box, torch::arange(20).reshape({10, 2}), {"a", "b"}));
  EXPECT_THROW(corner_plot(canvas, box, torch::zeros({10}), {"a"}), InvalidArgument);
  EXPECT_THROW(corner_plot(canvas, box, torch::zeros({2, 3, 4}), {"a"}), InvalidArgument);
  EXPECT_THROW(corner_plot(canvas, box, torch::zeros({0, 2}), {"a", "b"}), InvalidArgument);
  EXPECT_THROW(corner_plot(canvas, box, torch::Tensor(), {}), InvalidArgument);
  EXPECT_THROW(corner_plot(canvas, box, ok, {"a"}), InvalidArgument);
  EXPECT_THROW(corner_plot(canvas, box, ok, {"a", "b"}, {1.0}), InvalidArgument);
  EXPECT_THROW(corner_plot(canvas, box, ok, {"a", "b"}, {}, 0), InvalidArgument);
  EXPECT_THROW(corner_plot(canvas, {0, 0, 60, 60}, ok, {"a", "b"}), InvalidArgument);
}

// corner_titles: the median printed in a title must carry the digits the posterior resolves (to a
// tenth of the smaller half-width), and the half-widths two significant digits, whatever the
// value's magnitude. Until session 46 a half-width below 1e-4 switched to "%.2e", so theta_E =
// 1.10047 +- 0.00046 read "1.10e+00".
TEST(CornerPlot, TitlesResolveTheMedianToItsHalfWidth) {
  struct Case {
    double mean, sd;
  };
  for (const Case& c : {Case{1.10047, 4.6e-4}, Case{-3.3758e-3, 8.66e-4}, Case{58.5426, 2.34},
                        Case{3.2e-9, 1.1e-9}, Case{1.23456e6, 3.1e3}, Case{0.7339, 0.0035},
                        Case{-0.016069, 0.0011}, Case{4.2e-5, 2.5e-7}}) {
    // Draws at the normal's quantiles: the 16/50/84 % quantiles are mean - sd, mean, mean + sd.
    const int64_t n = 2001;
    const torch::Tensor p = (torch::arange(n, torch::kFloat64) + 0.5) / n;
    const torch::Tensor x = c.mean + c.sd * std::sqrt(2.0) * torch::erfinv(2.0 * p - 1.0);
    const std::vector<double> sorted(x.data_ptr<double>(), x.data_ptr<double>() + n);
    const std::vector<std::string> titles = dslens::plot::corner_titles(sorted);
    ASSERT_EQ(titles.size(), 3u);
    SCOPED_TRACE(titles[0]);
    const double median = std::strtod(titles[2].c_str(), nullptr);
    EXPECT_LE(std::fabs(median - c.mean), 0.1 * c.sd) << titles[2];
    EXPECT_EQ(titles[0].rfind(titles[2] + " +", 0), 0u);
    EXPECT_EQ(titles[1].rfind(titles[2] + "+/-", 0), 0u);
    // "m +a -b": a and b within 5 % of sd (two digits, the quantiles' own error below 1 %).
    const auto plus = titles[0].find(" +"), minus = titles[0].find(" -", plus + 2);
    ASSERT_NE(minus, std::string::npos);
    const double a = std::strtod(titles[0].c_str() + plus + 2, nullptr);
    const double b = std::strtod(titles[0].c_str() + minus + 2, nullptr);
    EXPECT_NEAR(a, c.sd, 0.05 * c.sd);
    EXPECT_NEAR(b, c.sd, 0.05 * c.sd);
    // No more than a few characters beyond what that precision needs.
    EXPECT_LE(titles[0].size(), 30u);
  }
  EXPECT_EQ(dslens::plot::corner_titles({}), std::vector<std::string>{"no finite draws"});
}

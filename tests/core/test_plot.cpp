// PNG encoding (decoded back with zlib), colour maps, image orientation and the bitmap font.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
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

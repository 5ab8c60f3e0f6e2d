// PNG encoding on top of zlib (no libpng): signature, IHDR, one IDAT with the zlib stream of the
// filtered scanlines (filter type 0, "None", on every row), IEND; chunk CRCs by zlib's crc32.
#include <zlib.h>

#include <cstdint>
#include <string>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/core/plot.h"

namespace dslens::plot {
namespace png_detail {

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  out.push_back(static_cast<uint8_t>(v >> 24));
  out.push_back(static_cast<uint8_t>(v >> 16));
  out.push_back(static_cast<uint8_t>(v >> 8));
  out.push_back(static_cast<uint8_t>(v));
}

void put_chunk(std::vector<uint8_t>& out, const char type[4], const std::vector<uint8_t>& data) {
  put_u32(out, static_cast<uint32_t>(data.size()));
  const size_t type_start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, out.data() + type_start, static_cast<uInt>(4 + data.size()));
  put_u32(out, static_cast<uint32_t>(crc));
}

}  // namespace png_detail

std::vector<uint8_t> encode_png(const std::vector<uint8_t>& rgb, int width, int height) {
  using namespace png_detail;
  if (width <= 0 || height <= 0) {
    throw InvalidArgument("encode_png: image size " + std::to_string(width) + "x" +
                          std::to_string(height) + " must be positive");
  }
  const size_t row_bytes = static_cast<size_t>(width) * 3;
  if (rgb.size() != row_bytes * static_cast<size_t>(height)) {
    throw InvalidArgument("encode_png: expected " + std::to_string(row_bytes * height) +
                          " bytes of RGB for " + std::to_string(width) + "x" +
                          std::to_string(height) + ", got " + std::to_string(rgb.size()));
  }
  // Scanlines, each preceded by its filter byte (0 = None).
  std::vector<uint8_t> raw;
  raw.reserve((row_bytes + 1) * height);
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), rgb.begin() + y * row_bytes, rgb.begin() + (y + 1) * row_bytes);
  }
  uLongf compressed_size = compressBound(static_cast<uLong>(raw.size()));
  std::vector<uint8_t> compressed(compressed_size);
  const int rc = compress2(compressed.data(), &compressed_size, raw.data(),
                           static_cast<uLong>(raw.size()), Z_DEFAULT_COMPRESSION);
  if (rc != Z_OK) throw Error("encode_png: zlib compress2 failed with code " + std::to_string(rc));
  compressed.resize(compressed_size);

  std::vector<uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::vector<uint8_t> ihdr;
  put_u32(ihdr, static_cast<uint32_t>(width));
  put_u32(ihdr, static_cast<uint32_t>(height));
  ihdr.push_back(8);  // bit depth
  ihdr.push_back(2);  // colour type: truecolour RGB
  ihdr.push_back(0);  // compression: deflate
  ihdr.push_back(0);  // filter method 0
  ihdr.push_back(0);  // no interlace
  put_chunk(out, "IHDR", ihdr);
  put_chunk(out, "IDAT", compressed);
  put_chunk(out, "IEND", {});
  return out;
}

}  // namespace dslens::plot

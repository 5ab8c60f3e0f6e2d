// Pixel grids in lenstronomy's orientation and supersampling.
#include <string>
#include <utility>

#include "dslens/core/errors.h"
#include "dslens/physics/image_model.h"

namespace dslens::physics {

namespace grid_detail {

void check_grid(const PixelGrid& g) {
  if (g.ny < 1 || g.nx < 1) {
    throw InvalidArgument("pixel grid: sizes must be positive, got " + std::to_string(g.ny) +
                          " x " + std::to_string(g.nx));
  }
  if (!(g.pixel_scale > 0.0)) {
    throw InvalidArgument("pixel grid: pixel_scale must be positive, got " +
                          std::to_string(g.pixel_scale));
  }
}

// Centres along one axis of n pixels split in `factor`: origin + ((k + 0.5) / factor - 0.5) * scale
// for sub-pixel k of pixel j at index j * factor + k. Computed in float64, then cast.
Tensor axis(int64_t n, int64_t factor, double origin, double scale, const Compute& compute) {
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(compute.device);
  Tensor k = torch::arange(n * factor, f64);
  Tensor v = origin + ((k + 0.5) / static_cast<double>(factor) - 0.5) * scale;
  return v.to(compute.dtype);
}

}  // namespace grid_detail

PixelGrid PixelGrid::centered(int64_t ny, int64_t nx, double pixel_scale) {
  PixelGrid g;
  g.ny = ny;
  g.nx = nx;
  g.pixel_scale = pixel_scale;
  grid_detail::check_grid(g);
  g.ra_at_xy_0 = -0.5 * static_cast<double>(nx - 1) * pixel_scale;
  g.dec_at_xy_0 = -0.5 * static_cast<double>(ny - 1) * pixel_scale;
  return g;
}

std::pair<Tensor, Tensor> PixelGrid::coordinates(const Compute& compute) const {
  return supersampled_coordinates(1, compute);
}

PixelGrid::Edges PixelGrid::edges() const {
  grid_detail::check_grid(*this);
  const double h = 0.5 * pixel_scale;
  return {ra_at_xy_0 - h, ra_at_xy_0 + static_cast<double>(nx) * pixel_scale - h, dec_at_xy_0 - h,
          dec_at_xy_0 + static_cast<double>(ny) * pixel_scale - h};
}

std::pair<Tensor, Tensor> PixelGrid::supersampled_coordinates(int64_t factor,
                                                              const Compute& compute) const {
  grid_detail::check_grid(*this);
  if (factor < 1) {
    throw InvalidArgument("supersampling factor must be >= 1, got " + std::to_string(factor));
  }
  Tensor ra = grid_detail::axis(nx, factor, ra_at_xy_0, pixel_scale, compute);    // columns
  Tensor dec = grid_detail::axis(ny, factor, dec_at_xy_0, pixel_scale, compute);  // rows
  Tensor x = ra.unsqueeze(0).expand({ny * factor, nx * factor}).contiguous();
  Tensor y = dec.unsqueeze(1).expand({ny * factor, nx * factor}).contiguous();
  return {x, y};
}

Tensor bin_supersampled(const Tensor& image, int64_t factor) {
  if (factor < 1) {
    throw InvalidArgument("supersampling factor must be >= 1, got " + std::to_string(factor));
  }
  if (image.dim() < 2) throw InvalidArgument("bin_supersampled: image needs at least 2 dimensions");
  if (factor == 1) return image;
  const int64_t hs = image.size(-2), ws = image.size(-1);
  if (hs % factor != 0 || ws % factor != 0) {
    throw InvalidArgument("bin_supersampled: image size " + std::to_string(hs) + " x " +
                          std::to_string(ws) + " is not a multiple of the factor " +
                          std::to_string(factor));
  }
  auto shape = image.sizes().vec();
  // Two reductions that each run over well-strided memory (faster on the CPU than one reduction
  // over the two strided block axes): rows of each block, then columns.
  Tensor rows = image.reshape({-1, hs / factor, factor, ws}).sum(2);
  Tensor blocks = rows.reshape({-1, hs / factor, ws / factor, factor}).sum(3);
  shape[shape.size() - 2] = hs / factor;
  shape[shape.size() - 1] = ws / factor;
  return (blocks * (1.0 / static_cast<double>(factor * factor))).reshape(shape);
}

}  // namespace dslens::physics

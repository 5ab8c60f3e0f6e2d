// Whole-image simulation (lenstronomy's ImageModel): lens light + lensed source light on a
// supersampled grid, binned to pixels (mean surface brightness times pixel area), PSF convolution.
#include <algorithm>
#include <string>
#include <tuple>

#include "dslens/core/errors.h"
#include "dslens/physics/image_model.h"

namespace dslens::physics {

namespace image_simulation_detail {

void accumulate(Tensor& total, const Tensor& term) {
  total = total.defined() ? total + term : term;
}

// The model's precomputed sub-pixel centres when they fit its grid, dtype and device; else made
// here (which also validates the grid and factor).
std::pair<Tensor, Tensor> coordinates_of(const ImageModel& model, const Compute& compute) {
  const PixelGrid& g = model.grid;
  const int64_t f = model.supersampling;
  if (model.coordinates) {
    const auto& [x, y] = *model.coordinates;
    const std::vector<int64_t> shape{g.ny * f, g.nx * f};
    if (f >= 1 && x.sizes() == shape && y.sizes() == shape && x.device() == compute.device &&
        x.scalar_type() == compute.dtype && y.device() == compute.device &&
        y.scalar_type() == compute.dtype) {
      return *model.coordinates;
    }
  }
  return g.supersampled_coordinates(f, compute);
}

}  // namespace image_simulation_detail

Tensor simulate_unconvolved(const ImageModel& model, int64_t batch, const Compute& compute) {
  using image_simulation_detail::accumulate;
  using image_simulation_detail::coordinates_of;
  if (batch < 1) throw InvalidArgument("simulate_image: batch must be >= 1");
  const int64_t f = model.supersampling;
  const PixelGrid& g = model.grid;
  auto [xs, ys] = coordinates_of(model, compute);
  Tensor x = xs.reshape({1, -1});
  Tensor y = ys.reshape({1, -1});

  Tensor total;
  for (const auto& c : model.lens_light) {
    if (!c.profile) throw InvalidArgument("simulate_image: lens light component without profile");
    accumulate(total, c.profile->surface_brightness(x, y, c.params));
  }
  if (!model.source_light.empty()) {
    Tensor bx = x, by = y;
    if (!model.lens.empty()) std::tie(bx, by) = model.lens.ray_shoot(x, y);
    for (const auto& c : model.source_light) {
      if (!c.profile) throw InvalidArgument("simulate_image: source component without profile");
      accumulate(total, c.profile->surface_brightness(bx, by, c.params));
    }
  }
  if (!total.defined()) return torch::zeros({batch, g.ny, g.nx}, compute.options());

  const int64_t b = total.size(0);
  if (b != 1 && b != batch) {
    throw InvalidArgument("simulate_image: parameters have batch " + std::to_string(b) +
                          ", expected " + std::to_string(batch) + " or 1");
  }
  Tensor image =
      bin_supersampled(total.reshape({b, g.ny * f, g.nx * f}), f) * (g.pixel_scale * g.pixel_scale);
  if (b != batch) image = image.expand({batch, g.ny, g.nx});
  return image;
}

Tensor simulate_image(const ImageModel& model, int64_t batch, const Compute& compute) {
  if (!model.psf_kernel || !model.psf_kernel->defined()) {
    return simulate_unconvolved(model, batch, compute);
  }
  // Lens light the PSF leaves unchanged (a sky level) is added after the convolution: through the
  // zero padding it would dim within a kernel's half-width of the edges, as no sky does.
  const auto invariant = [](const LightComponent& c) {
    return c.profile && c.profile->psf_invariant();
  };
  if (std::any_of(model.lens_light.begin(), model.lens_light.end(), invariant)) {
    ImageModel convolved = model, flat = model;
    convolved.lens_light.clear();
    flat.lens_light.clear();
    flat.source_light.clear();
    for (const auto& c : model.lens_light)
      (invariant(c) ? flat : convolved).lens_light.push_back(c);
    const Tensor sky = simulate_unconvolved(flat, batch, compute);
    if (convolved.lens_light.empty() && convolved.source_light.empty()) return sky;
    const Tensor image = simulate_image(convolved, batch, compute);
    if (image.stride(0) == 0 && sky.stride(0) == 0) {
      return (image.slice(0, 0, 1) + sky.slice(0, 0, 1))
          .expand({batch, image.size(1), image.size(2)});
    }
    return image + sky;
  }
  Tensor image = simulate_unconvolved(model, batch, compute);
  const Tensor& k = *model.psf_kernel;
  // A single kernel on an image shared by the batch: convolve once.
  if (k.dim() == 2 && batch > 1 && image.stride(0) == 0) {
    return convolve_psf(image.slice(0, 0, 1), k).expand({batch, image.size(1), image.size(2)});
  }
  return convolve_psf(image, k);
}

}  // namespace dslens::physics

// The source's total magnification as the model images it (image_model.h).
#include <cmath>

#include "dslens/core/errors.h"
#include "dslens/physics/image_model.h"

namespace dslens::physics {

Tensor source_magnification(const ImageModel& model, int64_t batch, const Compute& compute) {
  if (model.source_light.empty()) {
    throw InvalidArgument("source_magnification: the model has no source light");
  }
  ImageModel source_only = model;
  source_only.lens_light.clear();
  source_only.psf_kernel.reset();
  const Tensor lensed = simulate_unconvolved(source_only, batch, compute).sum({1, 2});
  Tensor intrinsic;
  for (const auto& c : model.source_light) {
    const Tensor f = c.profile->total_flux(c.params).to(lensed.options());
    intrinsic = intrinsic.defined() ? intrinsic + f : f;
  }
  // A free pixel grid can sum to zero or less: no magnification is defined then.
  return torch::where(intrinsic > 0, lensed / intrinsic, torch::full_like(lensed, NAN));
}

}  // namespace dslens::physics

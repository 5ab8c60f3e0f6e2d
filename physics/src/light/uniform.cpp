// UNIFORM light profile (lenstronomy's LightModel/Profiles/uniform.py): a constant surface
// brightness amp, the sky level left in a reduced image (amp may be negative: over-subtracted).
#include <string>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/physics/light_profiles.h"

namespace dslens::physics {

std::vector<std::string> UniformLight::param_names() const {
  return {"amp"};
}

Tensor UniformLight::surface_brightness(const Tensor& x, const Tensor& y, const ParamMap& p) const {
  const Tensor amp = per_batch(light_param(p, "amp", type(), param_names()), x);
  // Broadcast to [B, N] and made whole, as the other profiles return: x and y may be [1, N].
  return amp + torch::zeros_like(x + y);
}

Tensor UniformLight::total_flux(const ParamMap&) const {
  throw InvalidArgument(
      "light profile UNIFORM: a constant surface brightness has no finite total flux (it is a sky "
      "level for the lens light, not a source)");
}

}  // namespace dslens::physics

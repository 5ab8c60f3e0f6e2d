// GAUSSIAN light profile (lenstronomy's LightModel/Profiles/gaussian.py): amp is the total flux.
#include <cmath>
#include <string>
#include <vector>

#include "dslens/physics/light_profiles.h"

namespace dslens::physics {

std::vector<std::string> GaussianLight::param_names() const {
  return {"amp", "sigma", "center_x", "center_y"};
}

Tensor GaussianLight::surface_brightness(const Tensor& x, const Tensor& y,
                                         const ParamMap& p) const {
  const auto names = param_names();
  auto get = [&](const char* n) { return per_batch(light_param(p, n, type(), names), x); };
  Tensor sigma = get("sigma");
  Tensor var = sigma * sigma;
  Tensor dx = x - get("center_x");
  Tensor dy = y - get("center_y");
  return get("amp") / (2.0 * M_PI * var) * torch::exp(-(dx * dx + dy * dy) / (2.0 * var));
}

Tensor GaussianLight::total_flux(const ParamMap& p) const {
  return light_param(p, "amp", type(), param_names()).reshape({-1});
}

}  // namespace dslens::physics

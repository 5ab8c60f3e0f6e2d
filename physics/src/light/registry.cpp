// Light-profile registry (lenstronomy names) and the shared parameter lookup.
#include <memory>
#include <string>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/physics/light_profiles.h"
#include "dslens/physics/profile.h"

namespace dslens::physics {

namespace light_registry_detail {

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace light_registry_detail

const Tensor& light_param(const ParamMap& p, const std::string& name, const std::string& profile,
                          const std::vector<std::string>& names) {
  auto it = p.find(name);
  if (it == p.end() || !it->second.defined()) {
    throw InvalidArgument("light profile " + profile + ": missing parameter '" + name +
                          "' (parameters: " + light_registry_detail::join_names(names) + ")");
  }
  return it->second;
}

std::vector<std::string> light_profile_types() {
  return {"SERSIC", "SERSIC_ELLIPSE", "GAUSSIAN", "INTERPOL", "INTERPOL_BICUBIC", "UNIFORM"};
}

bool is_pixelated_light(const std::string& type) {
  return type == "INTERPOL" || type == "INTERPOL_BICUBIC";
}

std::shared_ptr<const LightProfile> make_light_profile(const std::string& type) {
  if (type == "SERSIC") return std::make_shared<SersicLight>();
  if (type == "SERSIC_ELLIPSE") return std::make_shared<SersicEllipseLight>();
  if (type == "GAUSSIAN") return std::make_shared<GaussianLight>();
  if (type == "INTERPOL") return std::make_shared<InterpolLight>();
  if (type == "INTERPOL_BICUBIC")
    return std::make_shared<InterpolLight>(PixelInterpolation::kBicubic);
  if (type == "UNIFORM") return std::make_shared<UniformLight>();
  throw InvalidArgument("unknown light profile '" + type + "' (allowed: " +
                        light_registry_detail::join_names(light_profile_types()) + ")");
}

}  // namespace dslens::physics

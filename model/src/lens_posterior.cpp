#include "dslens/model/lens_posterior.h"

#include <cmath>

#include "dslens/core/errors.h"

namespace dslens::model {
namespace lens_posterior_detail {

// Profile parameters from the bound ParameterSpace values, converting q/phi to e1/e2.
physics::ParamMap bind(const ProfileBinding& binding,
                       const std::map<std::string, torch::Tensor>& values) {
  physics::ParamMap p;
  for (const auto& [param, source] : binding.params) {
    if (param == "q" || param == "phi") continue;
    p[param] = values.at(source);
  }
  if (binding.params.count("q")) {
    const auto q = values.at(binding.params.at("q"));
    const auto phi = values.at(binding.params.at("phi"));
    const auto f = (1 - q) / (1 + q);
    p["e1"] = f * torch::cos(2 * phi);
    p["e2"] = f * torch::sin(2 * phi);
  }
  return p;
}

void check_binding(const ProfileBinding& b, const ParameterSpace& space) {
  if (b.params.count("q") != b.params.count("phi")) {
    throw InvalidArgument("profile " + b.type + ": q and phi must be given together");
  }
  for (const auto& [param, source] : b.params) {
    if (!space.has(source)) {
      throw InvalidArgument("profile " + b.type + ": parameter '" + param +
                            "' is bound to unknown model parameter '" + source + "'");
    }
  }
}

}  // namespace lens_posterior_detail

using namespace lens_posterior_detail;

LensPosterior::LensPosterior(LensModelSpec spec, ParameterSpace space, ImagingData data,
                             Compute compute)
    : spec_(std::move(spec)), space_(std::move(space)), data_(std::move(data)), compute_(compute) {
  const auto& g = spec_.grid;
  for (const auto* t : {&data_.image, &data_.sigma, &data_.mask}) {
    if (!t->defined() || t->dim() != 2 || t->size(0) != g.ny || t->size(1) != g.nx) {
      throw InvalidArgument("imaging data must be [" + std::to_string(g.ny) + ", " +
                            std::to_string(g.nx) + "] like the pixel grid");
    }
  }
  for (const auto* list : {&spec_.mass, &spec_.lens_light, &spec_.source}) {
    for (const auto& b : *list) check_binding(b, space_);
  }
  if (!spec_.latent_block.empty() && (!spec_.decoder || !space_.has(spec_.latent_block))) {
    throw InvalidArgument("a decoded source needs a decoder and the latent block '" +
                          spec_.latent_block + "'");
  }
  const auto opts = compute_.options();
  data_.image = data_.image.to(opts);
  data_.sigma = data_.sigma.to(opts);
  data_.mask = data_.mask.to(compute_.device, torch::kBool);
  // Masked pixels may hold NaN or zero sigma: they get weight 0 and do not enter the norm.
  const auto used = data_.mask & torch::isfinite(data_.image) & (data_.sigma > 0);
  if (!torch::equal(used, data_.mask)) {
    throw InvalidArgument("unmasked pixels must have a finite value and a positive sigma");
  }
  const auto safe_sigma = torch::where(used, data_.sigma, torch::ones_like(data_.sigma));
  weight_ = used.to(opts) / (safe_sigma * safe_sigma);
  data_.image = torch::where(used, data_.image, torch::zeros_like(data_.image));
  n_pixels_ = used.sum().item<int64_t>();
  if (n_pixels_ == 0) throw InvalidArgument("the mask leaves no pixel to fit");
  log_norm_ = -(torch::log(safe_sigma) * used.to(opts)).sum().item<double>() -
              0.5 * static_cast<double>(n_pixels_) * std::log(2 * M_PI);
}

physics::ImageModel LensPosterior::build(const ParameterSpace::Unpacked& un) const {
  physics::ImageModel m;
  m.grid = spec_.grid;
  m.supersampling = spec_.supersampling;
  m.psf_kernel = spec_.psf_kernel;
  for (const auto& b : spec_.mass)
    m.lens.add(physics::make_mass_profile(b.type), bind(b, un.values));
  for (const auto& b : spec_.lens_light) {
    m.lens_light.push_back({physics::make_light_profile(b.type), bind(b, un.values)});
  }
  for (const auto& b : spec_.source) {
    auto params = bind(b, un.values);
    if (b.type == "INTERPOL" && !spec_.latent_block.empty()) {
      params["image"] = spec_.decoder(un.values.at(spec_.latent_block));
    }
    m.source_light.push_back({physics::make_light_profile(b.type), std::move(params)});
  }
  return m;
}

torch::Tensor LensPosterior::model_image(const ParameterSpace::Unpacked& values) const {
  const int64_t chains = values.log_prior.size(0);
  return physics::simulate_image(build(values), chains, compute_);
}

torch::Tensor LensPosterior::chi_square(const torch::Tensor& u) const {
  const auto un = space_.unpack(u);
  const auto r = model_image(un) - data_.image;
  return (r * r * weight_).sum({1, 2});
}

torch::Tensor LensPosterior::log_likelihood(const torch::Tensor& u) const {
  return -0.5 * chi_square(u) + log_norm_;
}

torch::Tensor LensPosterior::log_prob(const torch::Tensor& u) const {
  const auto un = space_.unpack(u);
  const auto r = model_image(un) - data_.image;
  return un.log_prior - 0.5 * (r * r * weight_).sum({1, 2}) + log_norm_;
}

samplers::LogDensityFn LensPosterior::log_density() const {
  return samplers::autograd_log_density([this](const torch::Tensor& u) { return log_prob(u); });
}

}  // namespace dslens::model

#include "noise_correlation.h"

#include <algorithm>
#include <cmath>

#include "dslens/physics/image_model.h"

namespace dslens::app {

MapImages map_images(const model::Observation& obs, const model::LensPosterior& posterior,
                     const model::ParameterSpace::Unpacked& un, const Compute& compute) {
  torch::NoGradGuard no_grad;
  MapImages out;
  out.model = posterior.model_image(un)[0].to(torch::kCPU, torch::kFloat64);
  physics::ImageModel lensed_source = posterior.build(un, 1);
  lensed_source.lens_light.clear();
  out.arc_light =
      physics::simulate_image(lensed_source, 1, compute)[0].to(torch::kCPU, torch::kFloat64);
  out.residuals = torch::where(obs.mask, (obs.image - out.model) / obs.sigma_at(out.model),
                               torch::full_like(out.model, NAN));
  return out;
}

MapNoiseCorrelation map_noise_correlation(const model::Observation& obs, const MapImages& images) {
  const auto off_arcs = obs.mask & (images.arc_light < 0.1 * obs.sigma_at(images.model));
  const auto& model_image = images.model;
  const auto quiet =
      off_arcs.any().item<bool>()
          ? off_arcs & (model_image <= model_image.masked_select(off_arcs).median().item<double>())
          : off_arcs;
  return {model::residual_correlation(images.residuals, quiet, kCorrelationWindow,
                                      kCorrelationHighpass),
          model::residual_correlation(images.residuals, obs.mask, kCorrelationWindow,
                                      kCorrelationHighpass)};
}

bool correlation_is_significant(const model::ResidualCorrelation& c) {
  return c.pixels >= 400 && c.sum_ratio - 1.0 > std::max(0.3, 3.0 * c.sum_ratio_se);
}

double correlation_kernel_fwhm(const model::ResidualCorrelation& c) {
  const double rho = 0.5 * (c.rho_x + c.rho_y);
  if (!std::isfinite(rho) || rho > physics::noise_correlation_lag1(10.0)) return NAN;
  return physics::noise_correlation_fwhm_for_lag1(rho);
}

nlohmann::json NoiseScaleMeasurement::to_json() const {
  const auto number = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nullptr; };
  return {{"factor", factor},
          {"significant", correlation_is_significant(quiet)},
          {"pixels", quiet.pixels},
          {"mean_square", number(quiet.mean_square)},
          {"sum_ratio", number(quiet.sum_ratio)},
          {"sum_ratio_se_if_independent", number(quiet.sum_ratio_se)},
          {"noise_scale", number(quiet.noise_scale)},
          {"definition",
           "data.noise_scale \"auto\": the quiet pixels' residual correlation at the MAP found "
           "with sigma as given (noise_correlation's definition); factor: the noise_scale that "
           "sigma was then multiplied by for the MAP's second optimisation and the chains, where "
           "the sum ratio exceeds 1 by more than 0.3 and 3 standard errors over 400 or more "
           "pixels, else 1 (docs/fit.md, \"Correlated noise\")"}};
}

NoiseScaleMeasurement measure_noise_scale(const model::Observation& obs,
                                          const model::LensPosterior& posterior,
                                          const torch::Tensor& u, const Compute& compute) {
  NoiseScaleMeasurement m;
  m.quiet =
      map_noise_correlation(obs, map_images(obs, posterior, posterior.space().unpack(u), compute))
          .quiet;
  if (correlation_is_significant(m.quiet) && std::isfinite(m.quiet.noise_scale) &&
      m.quiet.noise_scale > 0.0)
    m.factor = m.quiet.noise_scale;
  return m;
}

}  // namespace dslens::app

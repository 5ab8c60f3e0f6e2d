// The noise's correlation between neighbouring pixels, measured on a fit's normalised residuals at
// the MAP (docs/fit.md, "Correlated noise: noise_scale"): for map.json's noise_correlation, the
// fit's warning, the exported model's noise, and data.noise_scale "auto", which widens sigma by
// the measured factor before the chains run.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "dslens/core/device.h"
#include "dslens/model/lens_posterior.h"
#include "dslens/model/noise_estimate.h"
#include "dslens/model/observation.h"

namespace dslens::app {

// Lags up to 2 pixels (a drizzled image's noise correlation reaches about 1.5: SLACS
// J1430+4105's sky has 0.34-0.40 at lag 1 and 0.02-0.04 at lag 2), each residual less its
// 15 x 15 local mean (misfit smoother than that is not noise; docs/fit.md).
constexpr int64_t kCorrelationWindow = 2;
constexpr int64_t kCorrelationHighpass = 15;

struct MapNoiseCorrelation {
  // The quiet pixels, where the residuals are least touched by misfit: the fitted pixels off the
  // arcs (the MAP's lensed source below a tenth of sigma) and, of those, the half where the MAP
  // model is faintest (off the lens galaxy's core). On SLACS J1430+4105's cut-out the arcs'
  // misfit took the half where the model is faintest to a sum ratio of 9 (high-passed), where its
  // sky's noise has 3.
  model::ResidualCorrelation quiet;
  model::ResidualCorrelation fitted;  // every fitted pixel
};

// A fit's images at a point `un` of the one-lens `posterior` (a grid on the arcs already fixed),
// [ny, nx] float64 on the CPU: the model image; the lensed source alone (no lens light), convolved
// with the PSF; and the normalised residuals (data - model) / sigma, NaN where masked (sigma at
// the model image where the Poisson term follows it: Observation::sigma_at).
struct MapImages {
  torch::Tensor model, arc_light, residuals;
};
MapImages map_images(const model::Observation& obs, const model::LensPosterior& posterior,
                     const model::ParameterSpace::Unpacked& un, const Compute& compute);

MapNoiseCorrelation map_noise_correlation(const model::Observation& obs, const MapImages& images);

// The correlation the warning, the exported noise and "auto" take as measured: 400 or more
// pixels, a sum ratio above 1 by more than 0.3 and 3 of its standard errors for independent
// pixels.
bool correlation_is_significant(const model::ResidualCorrelation& c);

// The FWHM (px) of dslens simulate's noise kernel (physics::noise_correlation_kernel) whose noise
// has the residuals' mean lag-1 correlation, so that a mock of the fitted lens gets noise like the
// data's; NaN where none is measured or no kernel up to 10 px reaches it.
double correlation_kernel_fwhm(const model::ResidualCorrelation& c);

// data.noise_scale "auto": the quiet pixels' correlation at the MAP `u` [1, D] of the one-lens
// `posterior` (a grid on the arcs already fixed), and the factor on sigma it calls for, the
// correlation's noise_scale = sqrt(C(0) R) where the correlation is significant (above), else 1:
// a measurement the test cannot tell from independent noise leaves sigma as given.
struct NoiseScaleMeasurement {
  model::ResidualCorrelation quiet;
  double factor = 1.0;
  nlohmann::json to_json() const;  // map.json's "noise_scale_auto"
};
NoiseScaleMeasurement measure_noise_scale(const model::Observation& obs,
                                          const model::LensPosterior& posterior,
                                          const torch::Tensor& u, const Compute& compute);

}  // namespace dslens::app

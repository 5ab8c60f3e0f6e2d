#include "dslens/samplers/sampler_settings.h"

#include <cmath>
#include <sstream>
#include <string>

#include "dslens/core/errors.h"

namespace dslens::samplers {
namespace sampler_settings_detail {

template <typename T>
std::string str(T v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

void require(bool ok, const std::string& message) {
  if (!ok) throw InvalidArgument(message);
}

}  // namespace sampler_settings_detail

const char* metric_name(MetricKind kind) {
  return kind == MetricKind::dense ? "dense" : "diag";
}

void StepSizeAdaptSettings::validate() const {
  using sampler_settings_detail::require;
  using sampler_settings_detail::str;
  require(delta > 0 && delta < 1,
          "adapt.dual_averaging.delta (target acceptance) must be in (0, 1), got " + str(delta));
  require(gamma > 0 && std::isfinite(gamma),
          "adapt.dual_averaging.gamma must be positive, got " + str(gamma));
  require(kappa > 0 && kappa <= 1,
          "adapt.dual_averaging.kappa must be in (0, 1], got " + str(kappa));
  require(t0 > 0 && std::isfinite(t0), "adapt.dual_averaging.t0 must be positive, got " + str(t0));
}

void WindowSettings::validate() const {
  using sampler_settings_detail::require;
  using sampler_settings_detail::str;
  require(init_buffer >= 0, "adapt.windows.init_buffer must be >= 0, got " + str(init_buffer));
  require(term_buffer >= 0, "adapt.windows.term_buffer must be >= 0, got " + str(term_buffer));
  require(base_window >= 2,
          "adapt.windows.base_window must be >= 2 (a variance needs two draws), got " +
              str(base_window));
}

void AdaptSettings::validate(int64_t num_warmup) const {
  using sampler_settings_detail::require;
  using sampler_settings_detail::str;
  if (step_size) dual_averaging.validate();
  require(pool_group >= 0, "pool_group must be >= 0, got " + str(pool_group));
  require(stray_nats >= 0 && std::isfinite(stray_nats),
          "stray_nats must be a finite number >= 0, got " + str(stray_nats));
  require(stray_group >= 0, "stray_group must be >= 0, got " + str(stray_group));
  if (metric) {
    windows.validate();
    require(metric_prior_count >= 0 && std::isfinite(metric_prior_count),
            "metric_prior_count must be a finite number >= 0, got " + str(metric_prior_count));
    require(curvature_max_variance > 0,
            "curvature_max_variance must be > 0, got " + str(curvature_max_variance));
    require(curvature_first >= 0, "curvature_first must be >= 0, got " + str(curvature_first));
    require(num_warmup == 0 || num_warmup >= windows.required_warmup(),
            "num_warmup = " + str(num_warmup) +
                " is fewer than the metric adaptation needs: init_buffer + base_window + "
                "term_buffer = " +
                str(windows.init_buffer) + " + " + str(windows.base_window) + " + " +
                str(windows.term_buffer) + " = " + str(windows.required_warmup()) +
                "; raise num_warmup, shrink the windows or disable adapt.metric");
  }
}

void SamplerSettings::validate() const {
  using sampler_settings_detail::require;
  using sampler_settings_detail::str;
  require(num_warmup >= 0, "num_warmup must be >= 0, got " + str(num_warmup));
  require(num_draws >= 0, "num_draws must be >= 0, got " + str(num_draws));
  require(step_size > 0 && std::isfinite(step_size),
          "step_size must be a positive finite number, got " + str(step_size));
  require(max_energy_error > 0, "max_energy_error must be positive, got " + str(max_energy_error));
  require(chain_id_offset >= 0, "chain_id_offset must be >= 0, got " + str(chain_id_offset));
  require(refresh >= 0, "refresh must be >= 0, got " + str(refresh));
  require(checkpoint_every >= 0, "checkpoint_every must be >= 0, got " + str(checkpoint_every));
  require(checkpoint_seconds >= 0 && std::isfinite(checkpoint_seconds),
          "checkpoint_seconds must be a finite number >= 0, got " + str(checkpoint_seconds));
  require(compact_rows >= 0, "compact_rows must be >= 0, got " + str(compact_rows));
  if (inv_metric.defined()) {
    const int64_t want = metric == MetricKind::dense ? 2 : 1;
    require(inv_metric.dim() == want || inv_metric.dim() == want + 1,
            std::string("inv_metric for a ") + metric_name(metric) + " metric must have " +
                str(want) + " or " + str(want + 1) + " dimensions, got " + str(inv_metric.dim()));
  }
  adapt.validate(num_warmup);
}

void NutsSettings::validate() const {
  using sampler_settings_detail::require;
  using sampler_settings_detail::str;
  SamplerSettings::validate();
  require(max_depth >= 1 && max_depth <= 30,
          "max_depth must be between 1 and 30, got " + str(max_depth));
}

void HmcSettings::validate() const {
  using sampler_settings_detail::require;
  using sampler_settings_detail::str;
  SamplerSettings::validate();
  require(num_steps >= 1, "num_steps must be >= 1, got " + str(num_steps));
  require(trajectory_jitter >= 0 && trajectory_jitter <= 1,
          "trajectory_jitter must be in [0, 1], got " + str(trajectory_jitter));
}

}  // namespace dslens::samplers

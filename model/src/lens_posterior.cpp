#include "dslens/model/lens_posterior.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "dslens/core/errors.h"
#include "dslens/samplers/row_parallel.h"

#include "per_row.h"

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
  if (data_.image.defined() && data_.image.dim() == 2) {
    for (auto* t : {&data_.image, &data_.sigma, &data_.mask, &data_.model_noise.background_variance,
                    &data_.model_noise.inverse_exposure}) {
      if (t->defined()) *t = t->unsqueeze(0);
    }
  }
  n_lenses_ = data_.image.defined() ? data_.image.size(0) : 0;
  for (const auto* t : {&data_.image, &data_.sigma, &data_.mask}) {
    if (!t->defined() || t->dim() != 3 || t->size(0) != n_lenses_ || t->size(1) != g.ny ||
        t->size(2) != g.nx) {
      throw InvalidArgument("imaging data must be [" + std::to_string(g.ny) + ", " +
                            std::to_string(g.nx) + "] like the pixel grid (or [L, ny, nx])");
    }
  }
  if (n_lenses_ < 1) throw InvalidArgument("imaging data hold no lens");
  if (spec_.psf_kernel && spec_.psf_kernel->dim() == 3 && spec_.psf_kernel->size(0) != n_lenses_) {
    throw InvalidArgument("one PSF per lens is needed: got " +
                          std::to_string(spec_.psf_kernel->size(0)) + " kernels for " +
                          std::to_string(n_lenses_) + " lenses");
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
  pixels_per_lens_ = used.sum({1, 2}).to(torch::kCPU, torch::kLong);
  n_pixels_ = pixels_per_lens_.sum().item<int64_t>();
  if ((pixels_per_lens_ == 0).any().item<bool>()) {
    throw InvalidArgument("the mask leaves no pixel to fit");
  }
  log_norm_ = -(torch::log(safe_sigma) * used.to(opts)).sum({1, 2}) -
              0.5 * pixels_per_lens_.to(opts) * std::log(2 * M_PI);
  if (data_.model_noise.defined()) {
    auto& mn = data_.model_noise;
    for (const auto* t : {&mn.background_variance, &mn.inverse_exposure}) {
      if (!t->defined() || t->sizes() != data_.image.sizes()) {
        throw InvalidArgument(
            "a model-image noise needs a background variance and an inverse "
            "exposure like the image, [L, ny, nx]");
      }
    }
    mn.background_variance = mn.background_variance.to(opts);
    mn.inverse_exposure = mn.inverse_exposure.to(opts);
    if (!(mn.background_variance.masked_select(used) > 0).all().item<bool>() ||
        !(mn.inverse_exposure.masked_select(used) >= 0).all().item<bool>()) {
      throw InvalidArgument(
          "a model-image noise needs a positive background variance and a "
          "non-negative inverse exposure on every unmasked pixel");
    }
    // Masked pixels: variance 1 and no Poisson term, so that log var = 0 there.
    mn.background_variance =
        torch::where(used, mn.background_variance, torch::ones_like(mn.background_variance));
    mn.inverse_exposure =
        torch::where(used, mn.inverse_exposure, torch::zeros_like(mn.inverse_exposure));
    // What each evaluation needs, once: var = b (1 + max(m, 0) k / b).
    inverse_background_ = used.to(opts) / mn.background_variance;
    poisson_ratio_ = mn.inverse_exposure / mn.background_variance;
    model_log_norm_ = -0.5 * (torch::log(mn.background_variance) * used.to(opts)).sum({1, 2}) -
                      0.5 * pixels_per_lens_.to(opts) * std::log(2 * M_PI);
  }
  if (spec_.psf_kernel) spec_.psf_kernel = spec_.psf_kernel->to(opts);
  if (data_.positions.defined()) {
    if (data_.positions.x.size(0) != n_lenses_) {
      throw InvalidArgument("image positions are needed for each of the " +
                            std::to_string(n_lenses_) + " lenses (padded), got " +
                            std::to_string(data_.positions.x.size(0)));
    }
    data_.positions = data_.positions.to(opts);
  }
  coordinates_ = g.supersampled_coordinates(spec_.supersampling, compute_);
  if (spec_.arcs_placement) {
    if (spec_.arcs_placement->source_index >= spec_.source.size()) {
      throw InvalidArgument("arcs placement: the model has no source component " +
                            std::to_string(spec_.arcs_placement->source_index));
    }
    if (!(spec_.arcs_placement->smoothing > 0)) spec_.arcs_placement->smoothing = g.pixel_scale;
    if (!spec_.arcs_placement->lens_light)
      spec_.arcs_placement->lens_light = std::make_shared<torch::Tensor>();
    if (!spec_.arcs_placement->counted)
      spec_.arcs_placement->counted = std::make_shared<torch::Tensor>();
    const auto [x, y] = g.coordinates(compute_);
    pixel_centres_ = {x.reshape({1, -1}), y.reshape({1, -1})};
  }
}

std::optional<double> LensPosterior::epl_ellipticity_bound() const {
  double bound = 0.0;
  const auto largest_abs = [this](const std::string& name) {
    const auto [lo, hi] = space_.range(name);
    return std::max(std::abs(lo), std::abs(hi));
  };
  for (const auto& b : spec_.mass) {
    if (b.type != "EPL") continue;
    double e = 0.0;
    if (b.params.count("q")) {
      // |e| = (1-q)/(1+q) falls with q, whatever phi is.
      const double q_lo = std::clamp(space_.range(b.params.at("q")).first, 0.0, 1.0);
      e = (1.0 - q_lo) / (1.0 + q_lo);
    } else if (b.params.count("e1") && b.params.count("e2")) {
      e = std::hypot(largest_abs(b.params.at("e1")), largest_abs(b.params.at("e2")));
    } else {
      return std::nullopt;  // the physics will name what is missing
    }
    if (!std::isfinite(e)) return std::nullopt;
    bound = std::max(bound, e);
  }
  return bound;
}

LensPosterior LensPosterior::with_noise_scaled(double factor) const {
  if (!(factor > 0.0) || !std::isfinite(factor)) {
    throw InvalidArgument("noise scale factor must be a positive number, got " +
                          std::to_string(factor));
  }
  ImagingData scaled = data_;
  scaled.sigma = data_.sigma * factor;
  if (data_.model_noise.defined()) {
    scaled.model_noise.background_variance =
        data_.model_noise.background_variance * factor * factor;
    scaled.model_noise.inverse_exposure = data_.model_noise.inverse_exposure * factor * factor;
  }
  scaled.positions = data_.positions.with_sigma_scaled(factor);
  LensModelSpec spec = spec_;
  if (spec.arcs_placement) spec.arcs_placement->noise_factor *= factor;
  return LensPosterior(spec, space_, scaled, compute_);
}

int64_t LensPosterior::rows_per_lens(int64_t batch) const {
  if (batch % n_lenses_ != 0) {
    throw InvalidArgument("a batch of " + std::to_string(batch) + " rows cannot be split over " +
                          std::to_string(n_lenses_) + " lenses");
  }
  return batch / n_lenses_;
}

physics::ImageModel LensPosterior::build(const ParameterSpace::Unpacked& un, int64_t batch,
                                         bool with_sources) const {
  physics::ImageModel m;
  m.grid = spec_.grid;
  m.supersampling = spec_.supersampling;
  m.psf_kernel = spec_.psf_kernel;
  m.coordinates = coordinates_;
  if (m.psf_kernel && m.psf_kernel->dim() == 3) {
    m.psf_kernel = per_row(*m.psf_kernel, rows_per_lens(batch));
  }
  for (const auto& b : spec_.mass)
    m.lens.add(physics::make_mass_profile(b.type), bind(b, un.values));
  for (const auto& b : spec_.lens_light) {
    m.lens_light.push_back({physics::make_light_profile(b.type), bind(b, un.values)});
  }
  std::optional<GridPlacement> placement;
  if (with_sources && spec_.arcs_placement) placement = place_grid(m, batch);
  for (size_t i = 0; i < spec_.source.size(); ++i) {
    if (!with_sources) break;
    const auto& b = spec_.source[i];
    auto params = bind(b, un.values);
    if (placement && i == spec_.arcs_placement->source_index) {
      params["center_x"] = placement->center_x;
      params["center_y"] = placement->center_y;
      params["scale"] = placement->scale;
    }
    if (physics::is_pixelated_light(b.type) && !spec_.latent_block.empty()) {
      params["image"] = spec_.decoder(un.values.at(spec_.latent_block));
    }
    m.source_light.push_back({physics::make_light_profile(b.type), std::move(params)});
  }
  return m;
}

GridPlacement LensPosterior::place_grid(const physics::ImageModel& m, int64_t rows) const {
  const auto& a = *spec_.arcs_placement;
  const auto& [x, y] = pixel_centres_;
  torch::Tensor bx = x, by = y;
  if (!m.lens.empty()) std::tie(bx, by) = m.lens.ray_shoot(x, y);
  const int64_t per = rows_per_lens(rows);
  auto signal = per_row(data_.image.reshape({n_lenses_, -1}), per);
  // Less the lens light as the model images it (supersampled, convolved): read at the pixel
  // centres alone, a Sersic core's residuals cleared the threshold by tens of sigma and, traced
  // far out, tripled the grid on the 20 x 20 mock. Fixed once a fit has set it.
  if (a.lens_light->defined()) {
    signal = signal - per_row(*a.lens_light, per);
  } else if (!m.lens_light.empty()) {
    physics::ImageModel light = m;
    light.source_light.clear();
    signal = signal - physics::simulate_image(light, rows, compute_).reshape({rows, -1});
  }
  const auto root_weight = per_row(weight_.sqrt().reshape({n_lenses_, -1}), per);
  const auto snr = signal * root_weight * a.noise_factor;
  const auto counted = a.counted->defined() ? per_row(*a.counted, per) : magnification_weight(m);
  const auto w = signal.clamp_min(0.0) * (snr - a.snr_threshold).clamp(0.0, 1.0) * counted;
  return place_on_arcs(bx, by, w, a);
}

torch::Tensor LensPosterior::magnification_weight(const physics::ImageModel& m) const {
  const auto& a = *spec_.arcs_placement;
  const auto& [x, y] = pixel_centres_;
  torch::NoGradGuard no_grad;
  if (m.lens.empty() || !(a.min_magnification > 0)) return torch::ones_like(x);
  const auto inverse_mu = (1.0 / m.lens.magnification(x, y)).abs();
  // A singular centre's non-finite |det A| is the most demagnified of all.
  return magnification_ramp(torch::nan_to_num(inverse_mu, INFINITY, INFINITY, INFINITY),
                            a.min_magnification, a.full_magnification);
}

void LensPosterior::fix_arcs_lens_light(const ParameterSpace::Unpacked& values) const {
  if (!spec_.arcs_placement) return;
  torch::NoGradGuard no_grad;
  physics::ImageModel m = build(values, n_lenses_, /*with_sources=*/false);
  auto light = torch::zeros({n_lenses_, spec_.grid.ny * spec_.grid.nx}, compute_.options());
  if (!m.lens_light.empty())
    light = physics::simulate_image(m, n_lenses_, compute_).reshape({n_lenses_, -1}).clone();
  // In place once set, so that a captured CUDA graph reads the new values.
  const auto set = [](torch::Tensor& fixed, const torch::Tensor& value) {
    if (fixed.defined() && fixed.sizes() == value.sizes()) {
      fixed.copy_(value);
    } else {
      fixed = value;
    }
  };
  set(*spec_.arcs_placement->lens_light, light);
  set(*spec_.arcs_placement->counted,
      magnification_weight(m).expand({n_lenses_, spec_.grid.ny * spec_.grid.nx}).clone());
}

std::optional<GridPlacement> LensPosterior::arcs_grid(const ParameterSpace::Unpacked& values,
                                                      int64_t rows) const {
  if (!spec_.arcs_placement) return std::nullopt;
  return place_grid(build(values, rows, /*with_sources=*/false), rows);
}

torch::Tensor LensPosterior::model_image(const ParameterSpace::Unpacked& values) const {
  const int64_t rows = values.log_prior.size(0);
  return physics::simulate_image(build(values, rows), rows, compute_);
}

torch::Tensor LensPosterior::chi_square_of(const ParameterSpace::Unpacked& un, int64_t rows,
                                           double blur_pixels, torch::Tensor* log_norm) const {
  const int64_t per = rows_per_lens(rows);
  const auto& g = spec_.grid;
  const auto model = model_image(un).reshape({n_lenses_, per, g.ny, g.nx});
  const auto r = model - data_.image.unsqueeze(1);
  // The pixels' inverse variances, [L, 1 or per, ny, nx]: fixed, or from the model image.
  torch::Tensor weight = weight_.unsqueeze(1);
  if (data_.model_noise.defined()) {
    // var = b (1 + x), x = max(m, 0) k / b: log var = log b + log1p(x), with sum log b fixed
    // (model_log_norm_). Summed whole, 1,600 pixels' log var of about -4.6 each left the log
    // posterior with rounding noise that L-BFGS's line search could not see past: a 40 x 40
    // mock's MAP starts stopped at |grad| 4e-5, backtracking 25 times per iteration.
    const auto x = model.clamp_min(0.0) * poisson_ratio_.unsqueeze(1);
    weight = inverse_background_.unsqueeze(1) / (1.0 + x);
    // Masked pixels have k = 0 (constructor): log1p(0) = 0 adds nothing there.
    if (log_norm) {
      *log_norm =
          (model_log_norm_.unsqueeze(1) - 0.5 * torch::log1p(x).sum({2, 3})).reshape({rows});
    }
  } else if (log_norm) {
    *log_norm = per_row(log_norm_, per);
  }
  if (!(blur_pixels > 0)) return (r * r * weight).sum({2, 3}).reshape({rows});
  // Masked pixels carry no residual; the blur then spreads only fitted ones.
  const auto rm = torch::where(weight_.unsqueeze(1) > 0, r, torch::zeros_like(r))
                      .reshape({rows, 1, g.ny, g.nx});
  const int64_t half = static_cast<int64_t>(std::ceil(3.0 * blur_pixels));
  // The normalisations in plain float64 on the host, so that nothing is read back from the
  // device or copied to it (a captured CUDA graph can contain neither).
  double norm = 0.0, sum_sq = 0.0;
  for (int64_t i = -half; i <= half; ++i) {
    const double w = std::exp(-0.5 * double(i * i) / (blur_pixels * blur_pixels));
    norm += w;
    sum_sq += w * w;
  }
  const double sum_g2 = std::pow(sum_sq / (norm * norm), 2);  // of the 2-d kernel
  auto k = torch::arange(-half, half + 1, model.options());
  k = torch::exp(-0.5 * k * k / (blur_pixels * blur_pixels)) / norm;
  const torch::Tensor no_bias;
  auto rb = torch::conv2d(rm, k.view({1, 1, 1, -1}), no_bias, torch::IntArrayRef{1, 1},
                          torch::IntArrayRef{0, half});
  rb = torch::conv2d(rb, k.view({1, 1, -1, 1}), no_bias, torch::IntArrayRef{1, 1},
                     torch::IntArrayRef{half, 0});
  const auto w = weight.expand({n_lenses_, per, g.ny, g.nx}).reshape({rows, 1, g.ny, g.nx});
  return (rb * rb * w).sum({1, 2, 3}) / sum_g2;
}

torch::Tensor LensPosterior::chi_square(const torch::Tensor& u) const {
  return chi_square_of(space_.unpack(u), u.size(0), 0.0);
}

torch::Tensor LensPosterior::image_positions_term(const ParameterSpace::Unpacked& un,
                                                  int64_t rows) const {
  if (!data_.positions.defined()) return torch::zeros({rows}, compute_.options());
  return image_positions_log_likelihood(build(un, rows, /*with_sources=*/false).lens,
                                        data_.positions, rows_per_lens(rows));
}

torch::Tensor LensPosterior::log_likelihood(const torch::Tensor& u) const {
  const auto un = space_.unpack(u);
  const int64_t rows = u.size(0);
  torch::Tensor log_norm;
  const auto chi2 = chi_square_of(un, rows, 0.0, &log_norm);
  return -0.5 * chi2 + log_norm + image_positions_term(un, rows);
}

torch::Tensor LensPosterior::log_prob(const torch::Tensor& u) const {
  return log_prob_smoothed(u, 0.0);
}

torch::Tensor LensPosterior::log_prob_smoothed(const torch::Tensor& u, double blur_pixels) const {
  const auto un = space_.unpack(u);
  const int64_t rows = u.size(0);
  torch::Tensor log_norm;
  const auto chi2 = chi_square_of(un, rows, blur_pixels, &log_norm);
  auto log_p = un.log_prior - 0.5 * chi2 + log_norm;
  if (data_.positions.defined()) log_p = log_p + image_positions_term(un, rows);
  return log_p;
}

samplers::LogDensityFn LensPosterior::log_density_smoothed(double blur_pixels) const {
  // On the CPU each thread evaluates a slice of every lens's rows (samplers/row_parallel.h).
  return samplers::row_parallel(
      samplers::autograd_log_density([this, blur_pixels](const torch::Tensor& u) {
        return log_prob_smoothed(u, blur_pixels);
      }),
      n_lenses_, samplers::row_parallel_threads(compute_.device));
}

samplers::LogDensityFn LensPosterior::log_density() const {
  return log_density_smoothed(0.0);
}

}  // namespace dslens::model

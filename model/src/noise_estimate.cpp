#include "dslens/model/noise_estimate.h"

#include "dslens/core/errors.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

namespace dslens::model {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The median of each pixel's width x width neighbourhood over its finite values (NaN where none).
torch::Tensor local_nanmedian(const torch::Tensor& values, int64_t width) {
  const int64_t h = width / 2, ny = values.size(0), nx = values.size(1);
  const auto padded = torch::constant_pad_nd(values, {h, h, h, h}, kNaN);
  const auto windows = padded.unfold(0, width, 1).unfold(1, width, 1).reshape({ny, nx, -1});
  return std::get<0>(torch::nanmedian(windows, -1));
}

std::string format(const char* fmt, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, a);
  return buf;
}

}  // namespace

torch::Tensor local_mean(const torch::Tensor& image, int64_t width) {
  if (width <= 1) return image;
  namespace F = torch::nn::functional;
  const int64_t ny = image.size(0), nx = image.size(1);
  const auto finite = torch::isfinite(image);
  const auto values = torch::where(finite, image, torch::zeros_like(image)).view({1, 1, ny, nx});
  const auto count = finite.to(image.scalar_type()).view({1, 1, ny, nx});
  // Zero padding with count_include_pad: both pools divide by width^2, which the ratio cancels.
  const auto pool = F::AvgPool2dFuncOptions(width).stride(1).padding(width / 2);
  const auto sum = F::avg_pool2d(values, pool), n = F::avg_pool2d(count, pool);
  const double one_pixel = 0.5 / static_cast<double>(width * width);
  return torch::where(n > one_pixel, sum / n, torch::full_like(sum, kNaN)).view({ny, nx});
}

ImagePoissonBias image_poisson_bias(const torch::Tensor& box_mean, const torch::Tensor& sigma,
                                    const torch::Tensor& mask, double exposure_time, int64_t width,
                                    double noise_scale) {
  ImagePoissonBias out;
  out.shift = 1.0 / (static_cast<double>(width * width) * exposure_time);
  // The box mean's noise is about sigma / k: a pixel 2 of those above 0 holds light.
  const auto lit = mask.logical_and(torch::isfinite(box_mean))
                       .logical_and(sigma > 0)
                       .logical_and(box_mean > 2.0 * sigma / static_cast<double>(width));
  const auto g = box_mean.masked_select(lit).to(torch::kFloat64);
  const auto w = sigma.masked_select(lit).to(torch::kFloat64).square().reciprocal();
  out.pixels = g.numel();
  const double s1 = (g * w).sum().item<double>(), s2 = (g * g * w).sum().item<double>();
  if (s2 > 0) {
    out.relative = out.shift * s1 / s2;
    out.z = out.shift * s1 / std::sqrt(s2) / noise_scale;
  }
  return out;
}

std::string describe_image_poisson_bias(const ImagePoissonBias& bias,
                                        const std::string& shift_formula, double background_rms) {
  return "pulls each fitted pixel's light low by about " + shift_formula + " = " +
         format("%.3g", bias.shift) + " (" + format("%.2g", bias.shift / background_rms) +
         " background_rms), so the light of the " + std::to_string(bias.pixels) +
         " pixels 2 sigma above 0 comes out at least " + format("%.2g", 100.0 * bias.relative) +
         " % too faint, " + format("%.2g", bias.z) +
         " standard deviations of its amplitude (first order, a lower bound)";
}

NoiseMapForm fit_noise_map_form(const torch::Tensor& image, const torch::Tensor& sigma,
                                const torch::Tensor& mask) {
  NoiseMapForm out;
  const auto used = mask.logical_and(torch::isfinite(image))
                        .logical_and(torch::isfinite(sigma))
                        .logical_and(sigma > 0);
  const auto d = image.masked_select(used).to(torch::kFloat64);
  const auto v = sigma.masked_select(used).to(torch::kFloat64).square();
  constexpr int64_t kBins = 20;
  const int64_t n = d.numel();
  out.background_rms = out.exposure_time = kNaN;
  if (n < 3 * kBins) return out;
  const auto order = torch::argsort(d);
  const auto ds = d.index_select(0, order), vs = v.index_select(0, order);
  std::vector<double> x, y;
  for (int64_t b = 0; b < kBins; ++b) {
    const int64_t lo = b * n / kBins, hi = (b + 1) * n / kBins;
    const double xb = ds.slice(0, lo, hi).median().item<double>();
    if (xb <= 0) continue;
    x.push_back(xb);
    y.push_back(vs.slice(0, lo, hi).median().item<double>());
  }
  out.bins = static_cast<int>(x.size());
  if (out.bins < 3) return out;
  // Weighted least squares for y = a + b x, weights 1 / y^2.
  double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double w = 1.0 / (y[i] * y[i]);
    sw += w, sx += w * x[i], sy += w * y[i], sxx += w * x[i] * x[i], sxy += w * x[i] * y[i];
  }
  const double det = sw * sxx - sx * sx;
  if (!(det > 0)) return out;
  const double a = (sxx * sy - sx * sxy) / det, b = (sw * sxy - sx * sy) / det;
  for (size_t i = 0; i < x.size(); ++i) {
    out.max_relative_misfit =
        std::max(out.max_relative_misfit, std::abs(a + b * x[i] - y[i]) / y[i]);
  }
  if (a > 0) out.background_rms = std::sqrt(a);
  if (b > 0) out.exposure_time = 1.0 / b;
  return out;
}

std::optional<std::string> underestimated_noise_warning(
    const std::string& label, const std::string& key, const torch::Tensor& image,
    const torch::Tensor& sigma, const torch::Tensor& mask, double max_weight_share) {
  const auto s = sigma.to(torch::kFloat64);
  const auto fitted = mask.logical_and(torch::isfinite(s)).logical_and(s > 0);
  // Neighbourhood medians say little on a few pixels, and a few low pixels are noise themselves.
  constexpr int64_t kMinFitted = 400, kMinLow = 10;
  if (fitted.sum().item<int64_t>() < kMinFitted) return std::nullopt;
  const auto neighbours = local_nanmedian(torch::where(fitted, s, torch::full_like(s, kNaN)), 5);
  const auto low = fitted.logical_and(s < 0.5 * neighbours);
  const int64_t n_low = low.sum().item<int64_t>();
  if (n_low < kMinLow) return std::nullopt;
  const auto weight = torch::where(fitted, 1.0 / s.square(), torch::zeros_like(s));
  const double share = (weight.masked_select(low).sum() / weight.sum()).item<double>();
  if (!(share > max_weight_share)) return std::nullopt;
  const double lowest = (s / neighbours).masked_select(low).min().item<double>();
  std::string msg =
      "'" + label + "': " + std::to_string(n_low) + " of " +
      std::to_string(fitted.sum().item<int64_t>()) +
      " fitted pixels have a sigma below half the median of their 5x5 neighbourhood (down to " +
      format("%.2g", lowest) + " of it), and they hold " + format("%.0f", 100.0 * share) +
      " % of the likelihood's weight (sum of 1/sigma^2). A noise map whose Poisson term was "
      "computed from the noisy image gives pixels that fluctuated low a smaller sigma, so the fit "
      "follows them and the model (a sky level above all) comes out low";
  const NoiseMapForm form = fit_noise_map_form(image, s, fitted.logical_and(low.logical_not()));
  if (std::isfinite(form.background_rms) && std::isfinite(form.exposure_time) &&
      form.max_relative_misfit <= 0.1) {
    msg += ". The map follows sigma^2 = " + format("%.3g", form.background_rms) + "^2 + image / " +
           format("%.4g", form.exposure_time) + " (to " +
           format("%.0f", 100.0 * form.max_relative_misfit) +
           " % over the binned image values): to take the Poisson term from the model instead, "
           "give \"background_rms\": " +
           format("%.3g", form.background_rms) +
           ", \"exposure_time\": " + format("%.4g", form.exposure_time) +
           ", \"poisson_term\": \"model\" in place of \"" + key +
           "\", or, with a pixelated source, \"poisson_smoothing\": 5 for the image's local "
           "mean (docs/fit.md)";
  }
  return msg;
}

std::optional<std::string> image_poisson_noise_map_warning(
    const std::string& label, const std::string& key, const torch::Tensor& image,
    const torch::Tensor& sigma, const torch::Tensor& mask, double noise_scale) {
  const auto d = image.to(torch::kFloat64), s = sigma.to(torch::kFloat64);
  const auto fitted =
      mask.logical_and(torch::isfinite(d)).logical_and(torch::isfinite(s)).logical_and(s > 0);
  const NoiseMapForm form = fit_noise_map_form(d, s, fitted);
  if (!std::isfinite(form.background_rms) || !std::isfinite(form.exposure_time) ||
      form.max_relative_misfit > 0.1)
    return std::nullopt;
  const double rms = form.background_rms, t = form.exposure_time;
  const auto bright = fitted.logical_and(d > 3.0 * s);
  constexpr int64_t kMinBright = 100;
  if (bright.sum().item<int64_t>() < kMinBright) return std::nullopt;
  const auto r = ((s.square() - rms * rms) * t - d) / s;
  const double r_rms = r.masked_select(bright).square().mean().sqrt().item<double>();
  if (!(r_rms < 0.3)) return std::nullopt;
  const ImagePoissonBias b = image_poisson_bias(d, s, fitted, t, 1, noise_scale);
  if (b.z < 1.0) return std::nullopt;
  return "'" + label + "': its sigma follows sigma^2 = " + format("%.3g", rms) + "^2 + image / " +
         format("%.4g", t) + " pixel by pixel (rms " + format("%.2g", r_rms) +
         " sigma where the image is 3 sigma above 0): its Poisson term was computed from this "
         "noisy image, which " +
         describe_image_poisson_bias(b, "1 / t", rms) +
         ". To take the "
         "Poisson term from the model instead, give \"background_rms\": " +
         format("%.3g", rms) + ", \"exposure_time\": " + format("%.4g", t) +
         ", \"poisson_term\": \"model\" in place of \"" + key +
         "\" (docs/fit.md, \"The noise: a Poisson term from the image\")";
}

std::vector<BrightnessBin> residuals_by_brightness(const torch::Tensor& normalised_residuals,
                                                   const torch::Tensor& model_image,
                                                   const torch::Tensor& mask, int64_t bins) {
  const auto r = normalised_residuals.to(torch::kCPU, torch::kFloat64);
  const auto m = model_image.to(torch::kCPU, torch::kFloat64);
  const auto used =
      mask.to(torch::kCPU).logical_and(torch::isfinite(r)).logical_and(torch::isfinite(m));
  const auto order = torch::argsort(m.masked_select(used));
  const auto ms = m.masked_select(used).index_select(0, order);
  const auto r2 = r.masked_select(used).index_select(0, order).square();
  const int64_t n = ms.numel();
  std::vector<BrightnessBin> out;
  if (bins < 1 || n < bins) return out;
  for (int64_t b = 0; b < bins; ++b) {
    const int64_t lo = b * n / bins, hi = (b + 1) * n / bins;
    BrightnessBin bin;
    bin.model_low = ms[lo].item<double>();
    bin.model_high = ms[hi - 1].item<double>();
    bin.mean_square = r2.slice(0, lo, hi).mean().item<double>();
    bin.pixels = hi - lo;
    out.push_back(bin);
  }
  return out;
}

ResidualCorrelation residual_correlation(const torch::Tensor& normalised_residuals,
                                         const torch::Tensor& mask, int64_t window,
                                         int64_t highpass) {
  const auto r = normalised_residuals.to(torch::kCPU, torch::kFloat64);
  const auto used = mask.to(torch::kCPU).to(torch::kBool).logical_and(torch::isfinite(r));
  ResidualCorrelation out;
  out.window = window;
  out.highpass = highpass;
  out.pixels = used.sum().item<int64_t>();
  if (out.pixels < 2 || window < 0) return out;
  if (highpass < 0 || (highpass > 0 && highpass % 2 == 0) ||
      (highpass > 0 && highpass <= 2 * window)) {
    throw InvalidArgument(
        "residual_correlation: highpass must be 0 or odd and wider than 2 x window (" +
        std::to_string(2 * window) + "), got " + std::to_string(highpass));
  }
  const int64_t ny = r.size(0), nx = r.size(1), h = highpass / 2;
  const auto u = used.to(torch::kFloat64);
  // Used pixels in the rectangle of rows p_y + r0 .. p_y + r1 and columns p_x + c0 .. p_x + c1
  // around each pixel p, from the integral image of u padded by the largest offset, pad.
  const int64_t pad = h + window;
  const auto padded = torch::constant_pad_nd(u, {pad + 1, pad, pad + 1, pad});
  const auto integral = padded.cumsum(0).cumsum(1);
  const auto rect = [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    const auto at = [&](int64_t row, int64_t col) {
      return integral.slice(0, pad + row, pad + row + ny).slice(1, pad + col, pad + col + nx);
    };
    return at(r1 + 1, c1 + 1) - at(r0, c1 + 1) - at(r1 + 1, c0) + at(r0, c0);
  };
  // The residuals less their mean, or less the mean m_p of the used ones in the box B(p) of side
  // highpass around each pixel.
  torch::Tensor centred, in_box;
  if (highpass > 0) {
    in_box = torch::clamp_min(rect(-h, h, -h, h), 1.0);  // n_p
    const auto nan = torch::full_like(r, std::numeric_limits<double>::quiet_NaN());
    centred = torch::where(used, r - local_mean(torch::where(used, r, nan), highpass),
                           torch::zeros_like(r));
  } else {
    centred = torch::where(used, r - r.masked_select(used).mean(), torch::zeros_like(r));
  }
  // C'(d), the measured autocovariance over the pixel pairs (p, p + d) both used, and W(d): for
  // unit independent noise, what subtracting the local means takes from C(d), cov(r_p, m_{p+d}) +
  // cov(m_p, r_{p+d}) - cov(m_p, m_{p+d}) = 1 / n_{p+d} + 1 / n_p - |B(p) & B(p+d)| / (n_p
  // n_{p+d}) (counting used pixels), averaged over the same pairs: exact for independent noise on
  // this mask, and R C0 W(d) for noise correlated over lengths short beside the box.
  struct Lag {
    double c = 0.0, w = 0.0;
  };
  const auto lag = [&](int64_t dx, int64_t dy) {
    Lag out_lag;
    const int64_t x0 = std::max<int64_t>(0, -dx), x1 = std::min(nx, nx - dx);
    const int64_t y0 = std::max<int64_t>(0, -dy), y1 = std::min(ny, ny - dy);
    if (x1 <= x0 || y1 <= y0) return out_lag;
    const auto here = [&](const torch::Tensor& t) { return t.slice(0, y0, y1).slice(1, x0, x1); };
    const auto there = [&](const torch::Tensor& t) {
      return t.slice(0, y0 + dy, y1 + dy).slice(1, x0 + dx, x1 + dx);
    };
    const auto pair = here(u) * there(u);
    const double pairs = pair.sum().item<double>();
    if (!(pairs > 0)) return out_lag;
    out_lag.c = (here(centred) * there(centred)).sum().item<double>() / pairs;
    if (highpass > 0) {
      const auto overlap = rect(std::max(-h, dy - h), std::min(h, dy + h), std::max(-h, dx - h),
                                std::min(h, dx + h));
      const auto n_p = here(in_box), n_q = there(in_box);
      out_lag.w =
          (pair * (1.0 / n_q + 1.0 / n_p - here(overlap) / (n_p * n_q))).sum().item<double>() /
          pairs;
    }
    return out_lag;
  };
  const Lag zero = lag(0, 0);
  if (!(zero.c > 0)) return out;
  double sum = zero.c, taken = zero.w;
  Lag x1, y1;
  int64_t half_lags = 0;
  for (int64_t dy = 0; dy <= window; ++dy) {
    for (int64_t dx = -window; dx <= window; ++dx) {
      if (dy == 0 && dx <= 0) continue;
      const Lag l = lag(dx, dy);
      if (dx == 1 && dy == 0) x1 = l;
      if (dx == 0 && dy == 1) y1 = l;
      sum += 2.0 * l.c;
      taken += 2.0 * l.w;
      ++half_lags;
    }
  }
  // With C'(d) = C(d) - R C0 W(d): sum_d C' = R C0 (1 - sum_d W) and C'(0) = C0 (1 - R W(0)), so
  // R = R' / (1 - sum_d W + R' W(0)) and sum_d C = sum_d C' / (1 - sum_d W).
  const double measured_ratio = sum / zero.c;
  out.sum_ratio = measured_ratio / (1.0 - taken + measured_ratio * zero.w);
  const double total = sum / (1.0 - taken);
  out.mean_square = total / out.sum_ratio;
  out.rho_x = (x1.c + total * x1.w) / out.mean_square;
  out.rho_y = (y1.c + total * y1.w) / out.mean_square;
  // The plain estimate's standard error for independent pixels, 2 sqrt(lags' half / n), grown by
  // the correction's 1 / (1 - sum_d W) (its derivative there).
  out.sum_ratio_se = 2.0 * std::sqrt(static_cast<double>(half_lags) / out.pixels) / (1.0 - taken);
  out.noise_scale = std::sqrt(std::max(total, 0.0));
  return out;
}

}  // namespace dslens::model

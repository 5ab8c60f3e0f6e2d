#include "dslens/core/priors.h"

#include <cmath>

#include "dslens/core/device.h"
#include "dslens/core/errors.h"

namespace dslens {
namespace priors_detail {

constexpr double kLogSqrt2Pi = 0.91893853320467274178;  // log(sqrt(2 pi))

// Standard normal CDF, for the truncated normal's normalising constant.
double normal_cdf(double z) {
  return 0.5 * std::erfc(-z / std::sqrt(2.0));
}

// Inverse of the standard normal CDF (Acklam's rational approximation refined by one Halley
// step, accurate to ~1e-15), for sampling the truncated normal by inversion.
double normal_quantile(double p) {
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,  -2.759285104469687e+02,
                             1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01, -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
  double x;
  if (p < 0.02425) {
    const double q = std::sqrt(-2 * std::log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else if (p > 1 - 0.02425) {
    const double q = std::sqrt(-2 * std::log(1 - p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  }
  const double e = normal_cdf(x) - p;
  const double u = e * std::sqrt(2 * M_PI) * std::exp(x * x / 2);
  return x - u / (1 + x * u / 2);
}

// The interval bijection, a soft clip (priors.h): x = lower + (upper - lower) g(t), t = u / 4 +
// 1/2, g(t) = h [softplus(t / h) - softplus((t - 1) / h)] in (0, 1), h = kSoftClipHinge.
constexpr double kSoftClipHinge = 0.05;

// softplus with LibTorch's linear cut-over moved from 20 to 40: at 20 its slope jumps from
// 1 - 2e-9 to 1, a relative error of 3e-9 in the soft clip's slope 5 hinges beyond a bound;
// at 40 the jump (4e-18) is below double rounding.
torch::Tensor softplus40(const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  return F::softplus(x, F::SoftplusFuncOptions().threshold(40));
}

// g(t) and log dg/du from one pair of softplus: with s = t / h, g = h [softplus(s) -
// softplus(s - 1/h)], and g'(t) = sigmoid(s) - sigmoid(s - 1/h) = sigmoid(s) sigmoid(-(s - 1/h))
// (1 - e^(-1/h)), whose log is s - softplus(s) - softplus(s - 1/h) + log(1 - e^(-1/h)) (as
// log sigmoid(s) = s - softplus(s)), times dt/du = 1/4. Sharing the two softplus halves the
// operators of the separate forms (a fit's log density evaluates both at every call).
struct SoftClip {
  torch::Tensor unit, log_slope;
};

SoftClip soft_clip(const torch::Tensor& u) {
  const auto s = u * (0.25 / kSoftClipHinge) + 0.5 / kSoftClipHinge;
  const auto a = softplus40(s), b = softplus40(s - 1 / kSoftClipHinge);
  return {kSoftClipHinge * (a - b),
          s - (a + b) + (std::log(0.25) + std::log1p(-std::exp(-1 / kSoftClipHinge)))};
}

torch::Tensor soft_clip_unit(const torch::Tensor& u) {
  return soft_clip(u).unit;
}

torch::Tensor log_soft_clip_slope(const torch::Tensor& u) {
  return soft_clip(u).log_slope;
}

// u for g in (0, 1): with Y = g / h, softplus(p) - softplus(p - 1/h) = Y solves to p = t / h =
// log(expm1(Y)) - log1p(-exp(Y - 1/h)).
torch::Tensor soft_clip_unit_inverse(const torch::Tensor& g) {
  const auto Y = g / kSoftClipHinge;
  const auto t = kSoftClipHinge *
                 (torch::log(torch::expm1(Y)) - torch::log1p(-torch::exp(Y - 1 / kSoftClipHinge)));
  return 4 * (t - 0.5);
}

}  // namespace priors_detail

using namespace priors_detail;

Bijection Bijection::lower_bounded(double lower) {
  Bijection b;
  b.kind_ = Kind::kLower;
  b.lower_ = lower;
  return b;
}

Bijection Bijection::interval(double lower, double upper) {
  if (!(upper > lower)) throw InvalidArgument("interval bijection needs upper > lower");
  Bijection b;
  b.kind_ = Kind::kInterval;
  b.lower_ = lower;
  b.upper_ = upper;
  return b;
}

Bijection Bijection::for_support(double lower, double upper) {
  const bool lo = std::isfinite(lower), hi = std::isfinite(upper);
  if (lo && hi) return interval(lower, upper);
  if (lo) return lower_bounded(lower);
  if (hi) throw InvalidArgument("supports bounded only above are not used by any dslens prior");
  return identity();
}

torch::Tensor Bijection::forward(const torch::Tensor& u) const {
  switch (kind_) {
    case Kind::kIdentity:
      return u;
    case Kind::kLower:
      return lower_ + torch::exp(u);
    case Kind::kInterval:
      return lower_ + (upper_ - lower_) * soft_clip_unit(u);
  }
  return u;
}

torch::Tensor Bijection::inverse(const torch::Tensor& x) const {
  switch (kind_) {
    case Kind::kIdentity:
      return x;
    case Kind::kLower:
      return torch::log(x - lower_);
    case Kind::kInterval:
      return soft_clip_unit_inverse((x - lower_) / (upper_ - lower_));
  }
  return x;
}

torch::Tensor Bijection::log_abs_det_jacobian(const torch::Tensor& u) const {
  switch (kind_) {
    case Kind::kIdentity:
      return torch::zeros_like(u);
    case Kind::kLower:
      return u;
    case Kind::kInterval:
      return std::log(upper_ - lower_) + log_soft_clip_slope(u);
  }
  return u;
}

std::string Bijection::describe() const {
  switch (kind_) {
    case Kind::kIdentity:
      return "identity";
    case Kind::kLower:
      return "lower_bounded";
    case Kind::kInterval:
      return "soft_clip";
  }
  return "?";
}

Prior Prior::uniform(double lower, double upper) {
  if (!(std::isfinite(lower) && std::isfinite(upper) && upper > lower)) {
    throw InvalidArgument("uniform prior needs finite lower < upper");
  }
  Prior p;
  p.kind_ = Kind::kUniform;
  p.a_ = lower;
  p.b_ = upper;
  p.lower_ = lower;
  p.upper_ = upper;
  return p;
}

Prior Prior::normal(double mean, double sigma) {
  if (!(sigma > 0) || !std::isfinite(mean)) throw InvalidArgument("normal prior needs sigma > 0");
  Prior p;
  p.kind_ = Kind::kNormal;
  p.a_ = mean;
  p.b_ = sigma;
  return p;
}

Prior Prior::lognormal(double mu, double sigma) {
  if (!(sigma > 0) || !std::isfinite(mu)) throw InvalidArgument("lognormal prior needs sigma > 0");
  Prior p;
  p.kind_ = Kind::kLogNormal;
  p.a_ = mu;
  p.b_ = sigma;
  p.lower_ = 0.0;
  return p;
}

Prior Prior::truncated_normal(double mean, double sigma, double lower, double upper) {
  if (!(sigma > 0) || !(upper > lower) || !std::isfinite(lower) || !std::isfinite(upper)) {
    throw InvalidArgument("truncated normal prior needs sigma > 0 and finite lower < upper");
  }
  Prior p;
  p.kind_ = Kind::kTruncatedNormal;
  p.a_ = mean;
  p.b_ = sigma;
  p.lower_ = lower;
  p.upper_ = upper;
  return p;
}

Prior Prior::parse(const ConfigNode& node) {
  node.require_object();
  const std::string kind =
      node.choice("prior", {"uniform", "normal", "lognormal", "truncated_normal"});
  if (kind == "uniform") {
    node.allow_only({"prior", "lower", "upper", "init"});
    const double lo = node.number("lower");
    const double hi = node.number("upper", Range{lo, INFINITY, true, false});
    return uniform(lo, hi);
  }
  if (kind == "normal") {
    node.allow_only({"prior", "mean", "sigma", "init"});
    return normal(node.number("mean"), node.number("sigma", Range::positive()));
  }
  if (kind == "lognormal") {
    node.allow_only({"prior", "mu", "sigma", "init"});
    return lognormal(node.number("mu"), node.number("sigma", Range::positive()));
  }
  node.allow_only({"prior", "mean", "sigma", "lower", "upper", "init"});
  const double lo = node.number("lower");
  const double hi = node.number("upper", Range{lo, INFINITY, true, false});
  return truncated_normal(node.number("mean"), node.number("sigma", Range::positive()), lo, hi);
}

torch::Tensor Prior::log_prob(const torch::Tensor& x) const {
  const double inf = std::numeric_limits<double>::infinity();
  torch::Tensor lp;
  switch (kind_) {
    case Kind::kUniform:
      lp = torch::full_like(x, -std::log(b_ - a_));
      break;
    case Kind::kNormal: {
      const auto z = (x - a_) / b_;
      lp = -0.5 * z * z - std::log(b_) - kLogSqrt2Pi;
      break;
    }
    case Kind::kLogNormal: {
      // Clamp inside the log so x <= 0 gives finite intermediate values (masked below).
      const auto lx = torch::log(torch::clamp_min(x, 1e-300));
      const auto z = (lx - a_) / b_;
      lp = -0.5 * z * z - std::log(b_) - kLogSqrt2Pi - lx;
      break;
    }
    case Kind::kTruncatedNormal: {
      const auto z = (x - a_) / b_;
      const double mass = normal_cdf((upper_ - a_) / b_) - normal_cdf((lower_ - a_) / b_);
      lp = -0.5 * z * z - std::log(b_) - kLogSqrt2Pi - std::log(mass);
      break;
    }
  }
  const auto inside = kind_ == Kind::kLogNormal  ? (x > 0)
                      : (kind_ == Kind::kNormal) ? torch::isfinite(x)
                                                 : (x >= lower_) & (x <= upper_);
  return torch::where(inside, lp, torch::full_like(lp, -inf));
}

torch::Tensor Prior::sample(at::IntArrayRef shape, const torch::TensorOptions& options,
                            torch::Generator& gen) const {
  const auto cpu = torch::TensorOptions().dtype(torch::kFloat64);
  torch::Tensor out;
  switch (kind_) {
    case Kind::kUniform:
      out = a_ + (b_ - a_) * torch::rand(shape, gen, cpu);
      break;
    case Kind::kNormal:
      out = a_ + b_ * torch::randn(shape, gen, cpu);
      break;
    case Kind::kLogNormal:
      out = torch::exp(a_ + b_ * torch::randn(shape, gen, cpu));
      break;
    case Kind::kTruncatedNormal: {
      // Inversion: u uniform between the CDF values of the bounds.
      const double plo = normal_cdf((lower_ - a_) / b_), phi = normal_cdf((upper_ - a_) / b_);
      auto u = (plo + (phi - plo) * torch::rand(shape, gen, cpu)).contiguous();
      auto* p = u.data_ptr<double>();
      for (int64_t i = 0; i < u.numel(); ++i) {
        p[i] = std::clamp(a_ + b_ * normal_quantile(std::clamp(p[i], 1e-300, 1 - 1e-16)), lower_,
                          upper_);
      }
      out = u;
      break;
    }
  }
  return out.to(options);
}

double Prior::median() const {
  switch (kind_) {
    case Kind::kUniform:
      return 0.5 * (a_ + b_);
    case Kind::kNormal:
      return a_;
    case Kind::kLogNormal:
      return std::exp(a_);
    case Kind::kTruncatedNormal: {
      const double plo = normal_cdf((lower_ - a_) / b_), phi = normal_cdf((upper_ - a_) / b_);
      return std::clamp(a_ + b_ * normal_quantile(0.5 * (plo + phi)), lower_, upper_);
    }
  }
  return 0.0;
}

nlohmann::json Prior::to_json() const {
  switch (kind_) {
    case Kind::kUniform:
      return {{"prior", "uniform"}, {"lower", a_}, {"upper", b_}};
    case Kind::kNormal:
      return {{"prior", "normal"}, {"mean", a_}, {"sigma", b_}};
    case Kind::kLogNormal:
      return {{"prior", "lognormal"}, {"mu", a_}, {"sigma", b_}};
    case Kind::kTruncatedNormal:
      return {{"prior", "truncated_normal"},
              {"mean", a_},
              {"sigma", b_},
              {"lower", lower_},
              {"upper", upper_}};
  }
  return {};
}

PriorGroup::PriorGroup(std::vector<Prior> priors) : priors_(std::move(priors)) {
  if (priors_.empty()) throw InvalidArgument("a prior group needs at least one prior");
  kind_ = priors_.front().kind();
  for (const auto& p : priors_) {
    if (p.kind() != kind_) throw InvalidArgument("a prior group holds priors of one kind");
    switch (kind_) {
      case Prior::Kind::kUniform:
        break;  // -log(b - a) cancels against the interval bijection's log(b - a)
      case Prior::Kind::kNormal:
      case Prior::Kind::kLogNormal:
        log_norm_ += -std::log(p.b_) - kLogSqrt2Pi;
        break;
      case Prior::Kind::kTruncatedNormal: {
        const double mass =
            normal_cdf((p.upper_ - p.a_) / p.b_) - normal_cdf((p.lower_ - p.a_) / p.b_);
        log_norm_ += -std::log(p.b_) - kLogSqrt2Pi - std::log(mass) + std::log(p.upper_ - p.lower_);
        break;
      }
    }
  }
}

const PriorGroup::Constants& PriorGroup::constants(const torch::TensorOptions& options) const {
  const std::string key = device_dtype_key(options);
  std::lock_guard<std::mutex> lock(*mutex_);
  auto it = cache_->find(key);
  if (it != cache_->end()) return it->second;
  std::vector<double> lower, upper, loc, scale;
  for (const auto& p : priors_) {
    lower.push_back(p.lower_);
    upper.push_back(p.upper_);
    loc.push_back(p.a_);
    scale.push_back(p.b_);
  }
  const auto to = [&options](const std::vector<double>& v) {
    return torch::tensor(v, torch::kFloat64).to(options);
  };
  return (*cache_)[key] = Constants{to(lower), to(upper), to(loc), to(scale)};
}

PriorGroup::Result PriorGroup::forward(const torch::Tensor& u) const {
  const auto& c = constants(u.options());
  const double inf = std::numeric_limits<double>::infinity();
  torch::Tensor x, ld, inside;
  switch (kind_) {
    case Prior::Kind::kUniform:
    case Prior::Kind::kTruncatedNormal: {
      // Interval bijection (the soft clip): x = lower + (upper - lower) g(u), log|J| =
      // log(upper - lower) + log g'(u); log(upper - lower) is folded into log_norm_ (uniform: it
      // cancels the density -log(upper - lower)).
      const SoftClip clip = soft_clip(u);
      x = c.lower + (c.upper - c.lower) * clip.unit;
      ld = clip.log_slope;
      if (kind_ == Prior::Kind::kTruncatedNormal) {
        const auto z = (x - c.loc) / c.scale;
        ld = ld - 0.5 * z * z;
      }
      inside = (x >= c.lower) & (x <= c.upper);
      break;
    }
    case Prior::Kind::kNormal: {
      x = u;
      const auto z = (x - c.loc) / c.scale;
      ld = -0.5 * z * z;
      inside = torch::isfinite(x);
      break;
    }
    case Prior::Kind::kLogNormal: {
      // Lower-bounded bijection at 0: x = exp(u), log|J| = u; log p = -z^2/2 - log x + const.
      x = torch::exp(u);
      const auto lx = torch::log(torch::clamp_min(x, 1e-300));
      const auto z = (lx - c.loc) / c.scale;
      ld = -0.5 * z * z - lx + u;
      inside = x > 0;
      break;
    }
  }
  ld = torch::where(inside, ld, torch::full_like(ld, -inf));
  return {x, ld.sum(1) + log_norm_};
}

}  // namespace dslens

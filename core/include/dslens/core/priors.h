// Priors on model parameters and the bijections that map them to an unconstrained space, where
// the samplers work. For a parameter x = T(u) with prior p(x), the density of u is
//   log p_u(u) = log p(T(u)) + log |dT/du|,
// so the log-Jacobian enters the posterior (Stan reference manual, "Change of variables").
//
// Config form of a free parameter (a plain number means the parameter is fixed):
//   {"prior": "uniform",          "lower": a, "upper": b}
//   {"prior": "normal",           "mean": m, "sigma": s}
//   {"prior": "lognormal",        "mu": m, "sigma": s}          (log x ~ N(mu, sigma))
//   {"prior": "truncated_normal", "mean": m, "sigma": s, "lower": a, "upper": b}
// with an optional "init" (a starting value inside the support).
#pragma once
#include <torch/torch.h>

#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "dslens/core/config.h"

namespace dslens {

// Support-matching transform from R to (lower, upper), (lower, inf) or R.
//
// The interval's is a soft clip (TensorFlow Probability's SoftClip bijector, made to reach the
// bounds exactly): x = lower + (upper - lower) g(u / 4 + 1/2), g(t) = h [softplus(t / h) -
// softplus((t - 1) / h)], h = 0.05. It is linear, with the logit's slope at the middle
// ((upper - lower) / 4), except within a few h of a bound, where it bends exponentially onto it.
// The logit map x = lower + (upper - lower) sigmoid(u) bends everywhere: a posterior that spans a
// sizeable part of its interval (a power law's slope, whose degeneracy with the source's size is
// linear in the slope) became a curved ridge in u, and on the bench mock that ridge set the NUTS
// step size (docs/benchmarks.md, session 21).
class Bijection {
 public:
  static Bijection identity() { return Bijection(); }
  static Bijection lower_bounded(double lower);           // x = lower + exp(u)
  static Bijection interval(double lower, double upper);  // the soft clip above
  static Bijection for_support(double lower, double upper);

  torch::Tensor forward(const torch::Tensor& u) const;  // u -> x
  torch::Tensor inverse(const torch::Tensor& x) const;  // x -> u
  // log |dx/du| evaluated at u, elementwise.
  torch::Tensor log_abs_det_jacobian(const torch::Tensor& u) const;
  std::string describe() const;

 private:
  enum class Kind { kIdentity, kLower, kInterval };
  Kind kind_ = Kind::kIdentity;
  double lower_ = 0.0, upper_ = 0.0;
};

class PriorGroup;

class Prior {
 public:
  enum class Kind { kUniform, kNormal, kLogNormal, kTruncatedNormal };

  static Prior uniform(double lower, double upper);
  static Prior normal(double mean, double sigma);
  static Prior lognormal(double mu, double sigma);
  static Prior truncated_normal(double mean, double sigma, double lower, double upper);
  // Parses the object form above; errors name the JSON path.
  static Prior parse(const ConfigNode& node);

  Kind kind() const { return kind_; }
  double lower() const { return lower_; }  // support bounds (may be infinite)
  double upper() const { return upper_; }
  // Normalised log density of the constrained value, elementwise; -inf outside the support.
  torch::Tensor log_prob(const torch::Tensor& x) const;
  // Draws with the given shape, dtype/device of `options`, from `gen` (CPU generator; values are
  // generated on the CPU then moved, so a seed gives the same draws on any device).
  torch::Tensor sample(at::IntArrayRef shape, const torch::TensorOptions& options,
                       torch::Generator& gen) const;
  Bijection bijection() const { return Bijection::for_support(lower_, upper_); }
  // A representative value (median), used when no "init" is given.
  double median() const;
  nlohmann::json to_json() const;

 private:
  friend class PriorGroup;
  Kind kind_ = Kind::kUniform;
  double a_ = 0.0, b_ = 1.0;  // uniform: lower/upper; (log)normal: location/scale
  double lower_ = -std::numeric_limits<double>::infinity();
  double upper_ = std::numeric_limits<double>::infinity();
};

// Several free scalars with priors of one kind, transformed and evaluated together on the columns
// of u [C, n]: each step is one tensor op for all n (on a GPU, one kernel instead of n). Equal to
// the per-parameter forms (Bijection::forward, Prior::log_prob + Bijection::log_abs_det_jacobian)
// up to rounding. The per-column constants live on the device of the first call of each device
// and dtype and are reused, so later calls copy nothing from the host (a CUDA graph can replay
// them).
class PriorGroup {
 public:
  // All of `priors` must have the same kind(); InvalidArgument otherwise or when empty.
  explicit PriorGroup(std::vector<Prior> priors);

  struct Result {
    torch::Tensor x;            // [C, n] constrained values
    torch::Tensor log_density;  // [C]: sum over columns of log p(x) + log |dx/du|
  };
  Result forward(const torch::Tensor& u) const;  // u [C, n]
  Prior::Kind kind() const { return kind_; }
  int64_t size() const { return static_cast<int64_t>(priors_.size()); }

 private:
  struct Constants {
    torch::Tensor lower, upper, loc, scale;  // [n] each, where the kind uses them
  };
  const Constants& constants(const torch::TensorOptions& options) const;

  Prior::Kind kind_;
  std::vector<Prior> priors_;
  double log_norm_ = 0.0;  // the columns' constant terms of log p, summed
  // Shared by copies; keyed by device and dtype.
  std::shared_ptr<std::mutex> mutex_ = std::make_shared<std::mutex>();
  std::shared_ptr<std::map<std::string, Constants>> cache_ =
      std::make_shared<std::map<std::string, Constants>>();
};

}  // namespace dslens

#include "mock_population.h"

#include <cmath>
#include <cstdio>

namespace dslens::app::mock_study {

uint64_t mix(uint64_t a, uint64_t b) {
  return Rng(a * 0xD1B54A32D192ED03ULL + b).next();
}

// Mock k of a study: its draws depend on (seed, k) only.
Truth draw_truth(uint64_t seed, int64_t k) {
  Rng rng(mix(seed, static_cast<uint64_t>(k)));
  Truth t{};
  t.theta_e = rng.uniform(kThetaE.lower, kThetaE.upper);
  t.gamma = rng.uniform(kGamma.lower, kGamma.upper);
  t.e1 = rng.uniform(kE12.lower, kE12.upper);
  t.e2 = rng.uniform(kE12.lower, kE12.upper);
  t.gamma1 = rng.normal(kShear.mean, kShear.sigma);
  t.gamma2 = rng.normal(kShear.mean, kShear.sigma);
  t.center_x = rng.normal(kLensCentre.mean, kLensCentre.sigma);
  t.center_y = rng.normal(kLensCentre.mean, kLensCentre.sigma);
  t.source_x = rng.normal(kSourceCentre.mean, kSourceCentre.sigma);
  t.source_y = rng.normal(kSourceCentre.mean, kSourceCentre.sigma);
  t.amp = std::exp(rng.normal(kLogAmp.mean, kLogAmp.sigma));
  t.scale = std::exp(rng.normal(std::log(kSourceScale), kLogScaleSigma));
  t.z_seed = static_cast<int64_t>(rng.next() >> 33);  // < 2^31
  return t;
}

namespace {

json uniform_prior(double lower, double upper) {
  return {{"prior", "uniform"}, {"lower", lower}, {"upper", upper}};
}
json normal_prior(double mean, double sigma) {
  return {{"prior", "normal"}, {"mean", mean}, {"sigma", sigma}};
}

}  // namespace

// The simulate config of a mock, without "noise" and "seed".
json simulate_config(const Truth& t, const Settings& s) {
  return {{"comment", "dslens mock-study mock (EPL + shear, VAE source)"},
          {"grid",
           {{"nx", s.pixels},
            {"ny", s.pixels},
            {"pixel_scale", kPixelScale},
            {"supersampling", s.supersampling}}},
          {"psf", {{"fwhm", kPsfFwhm}}},
          {"mass",
           {{{"type", "EPL"},
             {"theta_E", t.theta_e},
             {"gamma", t.gamma},
             {"e1", t.e1},
             {"e2", t.e2},
             {"center_x", t.center_x},
             {"center_y", t.center_y}},
            {{"type", "SHEAR"}, {"gamma1", t.gamma1}, {"gamma2", t.gamma2}}}},
          {"source",
           {{{"type", "VAE"},
             {"checkpoint", s.vae},
             {"z_seed", t.z_seed},
             {"center_x", t.source_x},
             {"center_y", t.source_y},
             {"scale", t.scale},
             {"phi_G", 0.0},
             {"amp", t.amp}}}}};
}

// The fit config of a mock: EPL (e1/e2) + shear, VAE source with free centre, scale and amplitude.
// `snr`: the level's SNR, for the likelihood annealing of the MAP (Settings::anneal_snr).
json fit_config(const std::string& simulation, const Settings& s, uint64_t seed, double snr) {
  // The stamp pixel is free, with the population's distribution as prior: the scale carries the
  // slope's degeneracy with the source's size (docs/fit.md, "The VAE source's scale").
  const json scale_prior = {
      {"prior", "lognormal"}, {"mu", std::log(kSourceScale)}, {"sigma", kLogScaleSigma}};
  json fit = {
      {"comment", "dslens mock-study fit"},
      {"data", {{"simulation", simulation}}},
      {"model",
       {{"supersampling", s.supersampling},
        {"mass",
         {{{"type", "EPL"},
           {"theta_E", uniform_prior(kThetaE.lower, kThetaE.upper)},
           {"gamma", uniform_prior(kGamma.lower, kGamma.upper)},
           {"e1", uniform_prior(kE12.lower, kE12.upper)},
           {"e2", uniform_prior(kE12.lower, kE12.upper)},
           {"center_x", normal_prior(kLensCentre.mean, kLensCentre.sigma)},
           {"center_y", normal_prior(kLensCentre.mean, kLensCentre.sigma)}},
          {{"type", "SHEAR"},
           {"gamma1", normal_prior(kShear.mean, kShear.sigma)},
           {"gamma2", normal_prior(kShear.mean, kShear.sigma)}}}},
        {"source",
         {{{"type", "VAE"},
           {"checkpoint", s.vae},
           {"center_x", normal_prior(kSourceCentre.mean, kSourceCentre.sigma)},
           {"center_y", normal_prior(kSourceCentre.mean, kSourceCentre.sigma)},
           {"scale", scale_prior},
           {"phi_G", 0.0},
           {"amp", {{"prior", "lognormal"}, {"mu", kLogAmp.mean}, {"sigma", kLogAmp.sigma}}}}}}}},
      {"map",
       {{"starts", s.starts},
        {"adam_iterations", 300},
        {"learning_rate", 0.05},
        {"lbfgs_iterations", 200},
        {"seed", seed}}},
      {"sampler",
       {{"algorithm", "nuts"},
        {"chains", s.chains},
        {"warmup", s.warmup},
        {"draws", s.draws},
        {"max_depth", s.max_depth},
        {"metric", s.metric},
        {"target_accept", 0.8},
        {"seed", seed}}}};
  // Always written: without it the fit's default (4 x starts) would replace --placement-starts 0.
  fit["map"]["placement_starts"] = s.placement_starts;
  fit["map"]["retry_rounds"] = s.search_rounds;
  if (s.anneal_snr > 0 && snr > s.anneal_snr)
    fit["map"]["anneal_noise"] = json::array({snr / s.anneal_snr});
  return fit;
}

std::string num(double v, int precision) {
  if (!std::isfinite(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", precision, v);
  return buf;
}
// "U(0.8, 1.6)" from the population's constants, so the study's text cannot drift from its draws.
std::string text(const Uniform& u, const std::string& unit) {
  return "U(" + num(u.lower) + ", " + num(u.upper) + unit + ")";
}
std::string text(const Normal& n, const std::string& unit) {
  return "N(" + num(n.mean) + ", " + num(n.sigma) + unit + ")";
}
}  // namespace dslens::app::mock_study

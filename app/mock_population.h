// The population of `dslens mock-study` (docs/mock_study.md): the distributions its mock lenses
// are drawn from, which are also its fits' priors, how mock k is drawn, and the `dslens simulate`
// and `dslens fit` configs of a mock.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "dslens/core/config.h"

namespace dslens::app::mock_study {

constexpr double kPi = 3.14159265358979323846;
constexpr double kPixelScale = 0.05;    // arcsec / pixel (HST-like)
constexpr double kPsfFwhm = 0.1;        // arcsec
constexpr double kSourceScale = 0.012;  // arcsec per VAE stamp pixel, as configs/demo

// The population the mocks are drawn from, which is also the fit's prior: a credible interval
// covers the truth at its nominal rate on average only over truths drawn from the fit's prior
// (simulation-based calibration). Until session 30 the truths came from narrower distributions
// than the priors (theta_E U(0.8, 1.6) against U(0.6, 1.8), shear N(0, 0.03) against
// U(-0.15, 0.15), ...), and at SNR 10 the 68 % intervals of the first 10 mocks held 0.43 of the
// lens truths, theta_E leaning low and gamma high (docs/mock_study.md, session 30).
struct Uniform {
  double lower, upper;
};
struct Normal {
  double mean, sigma;  // for a log-normal: of the logarithm
};
constexpr Uniform kThetaE{0.8, 1.6};        // arcsec
constexpr Uniform kGamma{1.8, 2.3};         // EPL slope
constexpr Uniform kE12{-0.2, 0.2};          // e1, e2 each (q >= 0.56)
constexpr Normal kLensCentre{0.0, 0.02};    // arcsec, each axis
constexpr Normal kShear{0.0, 0.03};         // gamma1, gamma2 each
constexpr Normal kSourceCentre{0.0, 0.15};  // arcsec, each axis
constexpr Normal kLogAmp{4.6, 0.25};
constexpr double kLogScaleSigma = 0.3;  // log of the stamp pixel ~ N(ln kSourceScale, 0.3)
// Settings "population": the version of the above; a study drawn from another is not resumed.
constexpr int64_t kPopulation = 2;

// A reproducible generator independent of the standard library's distributions (splitmix64).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double uniform(double a, double b) { return a + (b - a) * uniform(); }
  double normal(double mean, double sigma) {  // Box-Muller
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return mean + sigma * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
  }

 private:
  uint64_t state_;
};

uint64_t mix(uint64_t a, uint64_t b);

// The true parameters of one mock lens.
struct Truth {
  double theta_e, gamma, e1, e2, center_x, center_y, gamma1, gamma2;
  double source_x, source_y, amp, scale;
  int64_t z_seed;
};

// Mock k of a study: its draws depend on (seed, k) only.
Truth draw_truth(uint64_t seed, int64_t k);

struct Settings {
  std::string vae;
  int64_t first = 0;  // the index of the first mock (--first): a study may be run in parts
  int64_t mocks, pixels, chains, warmup, draws, starts, supersampling, max_depth;
  std::string metric;
  uint64_t seed;
  std::vector<double> snr;
  int64_t placement_starts = 0;  // MapSettings::placement_starts (0: as many as starts)
  double anneal_snr = 0.0;       // > 0: levels above it anneal the MAP's likelihood down to it
  int64_t search_rounds = 2;     // MapSettings::retry_rounds (the fit's default)
  // --only: these mocks (sorted, distinct) instead of first .. first + mocks - 1, e.g. to refit
  // some lenses of a study with a newer binary (--combine --replace then takes them).
  std::vector<int64_t> only;
  std::vector<int64_t> indices() const {
    if (!only.empty()) return only;
    std::vector<int64_t> ks;
    for (int64_t k = first; k < first + mocks; ++k) ks.push_back(k);
    return ks;
  }
  json to_json() const {
    json j = {{"vae", vae},
              {"mocks", mocks},
              {"pixels", pixels},
              {"chains", chains},
              {"warmup", warmup},
              {"draws", draws},
              {"starts", starts},
              {"seed", seed},
              {"snr", snr},
              {"supersampling", supersampling},
              {"max_depth", max_depth},
              {"metric", metric},
              {"population", kPopulation}};
    // Only when set, so that studies started before these options resume unchanged.
    if (placement_starts > 0) j["placement_starts"] = placement_starts;
    if (anneal_snr > 0) j["anneal_snr"] = anneal_snr;
    if (first > 0) j["first"] = first;
    if (search_rounds != 2) j["search_rounds"] = search_rounds;
    if (!only.empty()) j["only"] = only;
    return j;
  }
};

inline constexpr const char* kSnrDefinition =
    "SNR = P / background_rms, where P is the brightest pixel of the noise-free lensed-source "
    "image of the mock (no lens light); background_rms = P / SNR. The exposure time is set so "
    "that the Poisson noise of that pixel is half the background rms (t = P / (0.5 P / SNR)^2), "
    "so its total signal-to-noise is SNR / sqrt(1.25) = 0.89 SNR; fainter arc pixels are "
    "background-dominated.";

// The simulate config of a mock, without "noise" and "seed".
json simulate_config(const Truth& t, const Settings& s);

// The fit config of a mock: EPL (e1/e2) + shear, VAE source with free centre, scale and amplitude.
// `snr`: the level's SNR, for the likelihood annealing of the MAP (Settings::anneal_snr).
json fit_config(const std::string& simulation, const Settings& s, uint64_t seed, double snr);

// A number for the tables and texts: %.4g by default, "n/a" when not finite.
std::string num(double v, int precision = 4);
// "U(0.8, 1.6)" from the population's constants, so the study's text cannot drift from its draws.
std::string text(const Uniform& u, const std::string& unit = "");
std::string text(const Normal& n, const std::string& unit = "");

}  // namespace dslens::app::mock_study

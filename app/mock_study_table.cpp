#include "mock_study_table.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <map>
#include <sstream>

#include "coverage_range.h"
#include "dslens/core/atomic_file.h"
#include "dslens/core/errors.h"
#include "dslens/core/version.h"
#include "dslens/samplers/diagnostics.h"
#include "dslens/samplers/draws_io.h"
#include "mock_population.h"

namespace fs = std::filesystem;

namespace dslens::app::mock_study {

std::string fixed(double v, int decimals) {
  if (!std::isfinite(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}
std::string percent(double v, int decimals) {
  return std::isfinite(v) ? fixed(100.0 * v, decimals) + " %" : "n/a";
}

// Median of |x| for x ~ N(0, 1): Phi^-1(0.75).
constexpr double kHalfNormalMedian = 0.6744897501960817;

double median(std::vector<double> v) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return !std::isfinite(x); }), v.end());
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The sum of v, NaN if v is empty or holds a non-finite value (a partial sum would understate).
static double summed(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return v.empty() ? NAN : sum;
}

double number_or_nan(const json& j, const std::string& key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}

std::string utc_date() {
  char date[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  return date;
}

namespace {

// One table row: a fitted parameter (from summary.json) or one derived from the draws.
struct RowSpec {
  std::string label;     // in the table
  std::string key;       // in mock_study.json
  std::string variable;  // summary.json variable; empty for derived quantities
  bool relative;         // whether the relative error is meaningful (truth bounded away from 0)
};

const std::vector<RowSpec>& row_specs() {
  static const std::vector<RowSpec> rows = {
      {"Einstein radius theta_E", "theta_E", "theta_E_lens0", true},
      {"slope gamma", "gamma", "gamma_lens0", true},
      {"axis ratio q (from e1, e2)", "q", "", true},
      {"shear strength gamma_ext (from gamma1, gamma2)", "gamma_ext", "", true},
      {"shear gamma1", "gamma1", "gamma1_lens1", false},
      {"shear gamma2", "gamma2", "gamma2_lens1", false},
      // summary.json's derived row (the lensed source's flux over its own); absent in the records
      // of fits before session 45 and where a pixel grid has no positive flux.
      {"source magnification", "magnification", "", true},
      {"lens centre x", "lens_center_x", "center_x_lens0", false},
      {"lens centre y", "lens_center_y", "center_y_lens0", false},
      {"source centre x", "source_center_x", "center_x_source_light0", false},
      {"source centre y", "source_center_y", "center_y_source_light0", false},
  };
  return rows;
}

// Whether a level's tables show this row: not when none of its lenses' records has it (the
// magnification of fits before session 45).
bool row_shown(const json& level, const RowSpec& spec) {
  const json& a = level.at("aggregate");
  return a.contains(spec.key) && a.at(spec.key).value("lenses", int64_t{0}) > 0;
}

// The truth's normalised rank among a parameter's draws, the fraction of draws below it: over a
// population drawn from the prior it is uniform on [0, 1] for an exact posterior (simulation-based
// calibration, Talts et al. 2018, arXiv:1804.06788), so truths in the outer 1 % of their draws
// flag tails that are too light, which the 68 % and 95 % coverage barely see.
double truth_rank(const torch::Tensor& draws, double truth) {
  return (draws.reshape({-1}).to(torch::kFloat64) < truth)
      .to(torch::kFloat64)
      .mean()
      .item<double>();
}

// Posterior summary of a derived quantity, computed like summary.json's rows.
json derived_row(const torch::Tensor& draws /* [C, N] */, double truth) {
  const auto flat = draws.reshape({-1}).to(torch::kFloat64);
  const double mean = flat.mean().item<double>();
  const auto q = flat.quantile(torch::tensor({0.025, 0.16, 0.5, 0.84, 0.975}, torch::kFloat64));
  json r{{"truth", truth},
         {"mean", mean},
         {"sd", flat.std().item<double>()},
         {"q2.5", q[0].item<double>()},
         {"q16", q[1].item<double>()},
         {"q50", q[2].item<double>()},
         {"q84", q[3].item<double>()},
         {"q97.5", q[4].item<double>()},
         {"error", mean - truth},
         {"in_68", truth >= q[1].item<double>() && truth <= q[3].item<double>()},
         {"in_95", truth >= q[0].item<double>() && truth <= q[4].item<double>()}};
  const double rh = samplers::rhat(draws);
  r["rhat"] = std::isfinite(rh) ? json(rh) : json(nullptr);
  r["relative_error"] = truth != 0.0 ? json((mean - truth) / std::abs(truth)) : json(nullptr);
  r["rank"] = truth_rank(draws, truth);
  return r;
}

// The fields of a summary.json row (a parameter's or a derived quantity's) that a table row keeps.
json summary_fields(const json& row) {
  json r;
  for (const char* k : {"truth", "mean", "sd", "q2.5", "q16", "q50", "q84", "q97.5", "error",
                        "relative_error", "in_68", "in_95", "rhat"}) {
    r[k] = row.value(k, json(nullptr));
  }
  return r;
}

}  // namespace

// One lens's rows (keyed by RowSpec::key), divergences and times, from its fit folder.
json read_lens(const fs::path& lens_dir, const fs::path& sim_dir) {
  const json summary = load_json_file((lens_dir / "summary.json").string());
  const json truth = load_json_file((sim_dir / "truth.json").string());
  std::map<std::string, json> by_variable;
  for (const auto& row : summary.at("parameters")) {
    by_variable[row.at("variable").get<std::string>()] = row;
  }
  json out;
  out["name"] = summary.value("lens", lens_dir.filename().string());
  out["folder"] = lens_dir.string();
  out["divergences"] = summary.value("divergences", int64_t{0});
  out["seconds"] = summary.at("seconds");
  out["reduced_chi_square_map"] = summary.value("reduced_chi_square_map", json(nullptr));
  out["warnings"] = summary.value("warnings", json::array());
  // The log posterior at the MAP and at the truth (dslens fit scores the truth of a mock).
  const json map = load_json_file((lens_dir / "map.json").string());
  out["map_log_posterior"] = map.value("log_posterior", json(nullptr));
  out["truth_log_posterior"] =
      map.contains("truth") ? map.at("truth").value("log_posterior", json(nullptr)) : json(nullptr);
  out["search_rounds"] = map.value("search_rounds", json(nullptr));
  // How galaxy-like the true source is (dslens simulate's summary; absent in older mocks).
  if (truth.contains("source_plane")) {
    const json& sp = truth.at("source_plane");
    for (const char* k : {"negative_flux_fraction", "peak_over_mean"})
      if (sp.contains(k)) out["source_" + std::string(k)] = sp.at(k).at("value");
  }
  const auto draws = samplers::read_draws((lens_dir / "draws.npy").string());
  json params;
  for (const auto& spec : row_specs()) {
    json r;
    if (spec.key == "q") {
      const auto e1 = draws.column_values("e1_lens0"), e2 = draws.column_values("e2_lens0");
      const auto e = torch::sqrt(e1 * e1 + e2 * e2);
      const double t = truth.at("mass").at(0).at("derived_from_e1_e2").at("q").at("value");
      r = derived_row((1.0 - e) / (1.0 + e), t);
    } else if (spec.key == "gamma_ext") {
      const auto g1 = draws.column_values("gamma1_lens1"), g2 = draws.column_values("gamma2_lens1");
      const auto& s = truth.at("mass").at(1);
      const double t = std::hypot(s.at("gamma1").at("value").get<double>(),
                                  s.at("gamma2").at("value").get<double>());
      r = derived_row(torch::sqrt(g1 * g1 + g2 * g2), t);
    } else if (spec.key == "magnification") {
      json row;
      if (summary.contains("derived")) {
        for (const auto& d : summary.at("derived"))
          if (d.value("variable", std::string()) == "magnification") row = d;
      }
      if (!row.contains("truth")) continue;  // left out of its aggregates
      r = summary_fields(row);
    } else {
      const auto it = by_variable.find(spec.variable);
      if (it == by_variable.end() || !it->second.contains("truth")) {
        throw Error("mock-study: " + (lens_dir / "summary.json").string() + " has no '" +
                    spec.variable + "' with a truth");
      }
      r = summary_fields(it->second);
      if (r["truth"].is_number())
        r["rank"] = truth_rank(draws.column_values(spec.variable), r["truth"].get<double>());
    }
    params[spec.key] = r;
  }
  out["parameters"] = params;
  return out;
}

// Per-parameter aggregates of a level's lenses.
json aggregate(const json& lenses) {
  json out;
  for (const auto& spec : row_specs()) {
    std::vector<double> rel, abs_err, width_rel, width_abs;
    double in68 = 0, in95 = 0, max_rhat = NAN, sum_z = 0, sum_z2 = 0;
    int64_t n = 0, n_z = 0, ranked = 0, outside_99 = 0;
    for (const auto& l : lenses) {
      // A row a lens's record lacks (the magnification of older fits) leaves that lens out.
      if (!l.at("parameters").contains(spec.key)) continue;
      const json& r = l.at("parameters").at(spec.key);
      rel.push_back(std::abs(number_or_nan(r, "relative_error")));
      abs_err.push_back(std::abs(number_or_nan(r, "error")));
      // The error a calibrated posterior of this width makes, as a median: |N(0, sd^2)| has median
      // 0.674 sd (relative only where the record has a relative error: truth away from 0).
      const double typical = kHalfNormalMedian * number_or_nan(r, "sd");
      width_abs.push_back(typical);
      width_rel.push_back(std::isfinite(number_or_nan(r, "relative_error"))
                              ? typical / std::abs(number_or_nan(r, "truth"))
                              : NAN);
      const double z = number_or_nan(r, "error") / number_or_nan(r, "sd");
      if (std::isfinite(z)) {
        sum_z += z;
        sum_z2 += z * z;
        ++n_z;
      }
      const double rank = number_or_nan(r, "rank");  // absent in records of older binaries
      if (std::isfinite(rank)) {
        ++ranked;
        outside_99 += rank < 0.005 || rank > 0.995 ? 1 : 0;
      }
      in68 += r.contains("in_68") && r["in_68"].is_boolean() && r["in_68"].get<bool>() ? 1 : 0;
      in95 += r.contains("in_95") && r["in_95"].is_boolean() && r["in_95"].get<bool>() ? 1 : 0;
      const double rh = number_or_nan(r, "rhat");
      if (std::isfinite(rh)) max_rhat = std::isfinite(max_rhat) ? std::max(max_rhat, rh) : rh;
      ++n;
    }
    auto nn = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
    out[spec.key] = {
        {"lenses", n},
        {"median_abs_relative_error", nn(median(rel))},
        {"median_abs_error", nn(median(abs_err))},
        // What the posteriors' own widths make the two medians above, for a calibrated fit: an
        // error target below these asks for more than the data say.
        {"median_typical_relative_error", nn(median(width_rel))},
        {"median_typical_error", nn(median(width_abs))},
        {"coverage_68", n ? json(in68 / n) : json(nullptr)},
        {"coverage_95", n ? json(in95 / n) : json(nullptr)},
        {"max_rhat", nn(max_rhat)},
        // z = (posterior mean - truth) / posterior sd. For an exact posterior and
        // truths from the prior, E[z^2 | data] = 1 (the posterior variance is the
        // expected squared distance of the truth from the mean), so over the mocks
        // z has mean 0 and mean square 1: a mean away from 0 is a bias, an rms
        // above 1 intervals too narrow.
        {"mean_z", n_z ? json(sum_z / static_cast<double>(n_z)) : json(nullptr)},
        {"rms_z", n_z ? json(std::sqrt(sum_z2 / static_cast<double>(n_z))) : json(nullptr)},
        {"lenses_z", n_z},
        {"lenses_ranked", ranked},
        {"outside_99", outside_99}};
  }
  return out;
}

// Divergent transitions after warmup from which a fit counts as divergent in the level's split
// (level_entry): 0.5 % of the study's 4 x 500 draws.
constexpr int64_t kManyDivergences = 10;

// A level's entry of mock_study.json from its lenses' records (read_lens, with the noise).
json level_entry(double snr, const std::string& folder, const json& lenses, double fit_wall) {
  std::vector<double> times;
  int64_t divergences = 0, with_divergences = 0, scored = 0, below_truth = 0;
  json in_mode = json::array(), few_divergences = json::array(), many_divergences = json::array();
  for (const auto& lens : lenses) {
    const int64_t d = lens.at("divergences").get<int64_t>();
    divergences += d;
    with_divergences += d > 0 ? 1 : 0;
    (d < kManyDivergences ? few_divergences : many_divergences).push_back(lens);
    // A MAP less probable than the truth (by more than 1 nat) missed the truth's mode.
    const double lp_map = number_or_nan(lens, "map_log_posterior");
    const double lp_truth = number_or_nan(lens, "truth_log_posterior");
    if (std::isfinite(lp_map) && std::isfinite(lp_truth)) {
      ++scored;
      below_truth += lp_map < lp_truth - 1.0 ? 1 : 0;
      if (lp_map >= lp_truth - 1.0) in_mode.push_back(lens);
    }
    const json& sec = lens.at("seconds");
    times.push_back(number_or_nan(sec, "map") + number_or_nan(sec, "warmup") +
                    number_or_nan(sec, "sampling"));
  }
  return {{"snr", snr},
          {"folder", folder},
          {"lenses", lenses},
          {"aggregate", aggregate(lenses)},
          {"divergences_total", divergences},
          {"lenses_with_divergences", with_divergences},
          {"lenses_truth_scored", scored},
          {"lenses_map_below_truth", below_truth},
          // The same aggregates over the lenses whose search reached the truth's mode: a missed
          // search puts the truth hundreds of sd away and dominates a level's z-scores and
          // coverage, so this separates the sampler's calibration from the search's misses. Not
          // a target: the selection depends on the data, so it is not exactly calibrated either.
          {"lenses_in_truth_mode", static_cast<int64_t>(in_mode.size())},
          {"aggregate_in_truth_mode", aggregate(in_mode)},
          // The same aggregates apart for the fits with fewer and with at least
          // kManyDivergences divergent transitions after warmup: in the study's SNR-30 level the
          // 8 fits with more carried the slope's miscalibration (rms z 2.27 against 1.07 over the
          // other 22; docs/mock_study.md, session 55). A diagnostic, not a target.
          {"many_divergences", kManyDivergences},
          {"lenses_few_divergences", static_cast<int64_t>(few_divergences.size())},
          {"aggregate_few_divergences", aggregate(few_divergences)},
          {"aggregate_many_divergences", aggregate(many_divergences)},
          {"median_seconds_per_lens", median(times)},
          // The lenses' times summed: the level's batches' wall times, each carried across
          // --resume by its checkpoints, where fit_wall_seconds is one invocation's clock.
          {"summed_seconds_per_lens", summed(times)},
          {"fit_wall_seconds", std::isfinite(fit_wall) ? json(fit_wall) : json(nullptr)}};
}

// Targets of issue 5 at the highest SNR (errors) and at every level (coverage).
constexpr double kTargetRelativeError = 0.01, kTargetShearError = 0.01;
constexpr double kCoverageLow = 0.60, kCoverageHigh = 0.76, kNominalCoverage = 0.68;
// Issue 5 states its coverage target "over at least 30 mocks"; the error targets are medians over
// the same population, so a level with fewer mocks is reported but not judged.
constexpr int64_t kTargetMinMocks = 30;
const std::vector<std::string> kErrorTargets = {"theta_E", "gamma", "q", "gamma_ext"};
const std::vector<std::string> kCoverageTargets = {"theta_E", "gamma", "q", "gamma1", "gamma2"};

json check_targets(const json& levels) {
  json out = json::array();
  if (levels.empty()) return out;
  const json* top = &levels[0];
  for (const auto& l : levels) {
    if (l.at("snr").get<double>() > top->at("snr").get<double>()) top = &l;
  }
  // A target's row: its value (null if not finite) and verdict, null with a note below
  // kTargetMinMocks mocks.
  auto judged = [](const std::string& target, double v, int64_t mocks, bool pass) {
    json t{{"target", target}, {"value", std::isfinite(v) ? json(v) : json(nullptr)}};
    if (mocks < kTargetMinMocks) {
      t["pass"] = nullptr;
      t["note"] = "not evaluated: " + std::to_string(mocks) + (mocks == 1 ? " mock" : " mocks") +
                  " (needs >= " + std::to_string(kTargetMinMocks) + ")";
    } else {
      t["pass"] = pass;
    }
    return t;
  };
  const auto top_mocks = static_cast<int64_t>(top->at("lenses").size());
  for (const auto& key : kErrorTargets) {
    const json& a = top->at("aggregate").at(key);
    const double v = number_or_nan(a, "median_abs_relative_error");
    json t = judged("median abs. relative error of " + key + " < 1 % at SNR " +
                        num(top->at("snr").get<double>()),
                    v, top_mocks, std::isfinite(v) && v < kTargetRelativeError);
    t["calibrated_typical"] = a.value("median_typical_relative_error", json(nullptr));
    out.push_back(t);
  }
  // The shear strength's truths reach down to 0 (gamma1, gamma2 ~ N(0, 0.03)), where a relative
  // error means little: at SNR 100 its posterior sd is 0.002-0.005 (session 29's fits in the
  // truth's mode), 5-10 % of a typical 0.04. "1 % shear" in the lensing sense is 0.01 absolute,
  // so that reading is checked beside the relative one; both are reported.
  {
    const json& a = top->at("aggregate").at("gamma_ext");
    const double v = number_or_nan(a, "median_abs_error");
    json t = judged("median abs. error of gamma_ext < " + num(kTargetShearError) +
                        " (1 % shear) at SNR " + num(top->at("snr").get<double>()),
                    v, top_mocks, std::isfinite(v) && v < kTargetShearError);
    t["calibrated_typical"] = a.value("median_typical_error", json(nullptr));
    out.push_back(t);
  }
  for (const auto& l : levels) {
    const int64_t n = static_cast<int64_t>(l.at("lenses").size());
    const std::string at_snr = " at SNR " + num(l.at("snr").get<double>());
    // One parameter's coverage over n mocks is a binomial fraction: with 30 mocks a calibrated
    // fit lands anywhere in [0.50, 0.83] (95 %), outside [0.60, 0.76] about a third of the time.
    // Each row says that range; the pooled row (every coverage parameter of every mock, 5 n
    // intervals) has a calibrated range close to [0.60, 0.76] itself (0.61-0.75 for 150
    // independent intervals; a mock's parameters are correlated, so a little wider).
    auto coverage_row = [&](const std::string& what, double v, int64_t intervals) {
      json t = judged("68 % coverage of " + what + " in [" + fixed(kCoverageLow, 2) + ", " +
                          fixed(kCoverageHigh, 2) + "]" + at_snr,
                      v, n, v >= kCoverageLow && v <= kCoverageHigh);
      if (intervals > 0) {
        const auto r = binomial_coverage_range(intervals, kNominalCoverage);
        t["calibrated_range_95"] = {r.lower, r.upper};
        t["intervals"] = intervals;
      }
      return t;
    };
    double pooled = 0;
    for (const auto& key : kCoverageTargets) {
      const double v = number_or_nan(l.at("aggregate").at(key), "coverage_68");
      pooled += v;
      out.push_back(coverage_row(key, v, n));
    }
    std::string names;
    for (const auto& key : kCoverageTargets) names += (names.empty() ? "" : ", ") + key;
    const auto count = static_cast<int64_t>(kCoverageTargets.size());
    out.push_back(
        coverage_row(names + " (pooled)", pooled / static_cast<double>(count), count * n));
  }
  return out;
}

namespace {

// "0-7, 9, 12-14" from lens records named mock<k>: which mocks a level holds.
std::string mock_ranges(const json& lenses) {
  std::vector<int64_t> ks;
  for (const auto& l : lenses) {
    const std::string name = l.at("name").get<std::string>();
    const size_t digits = name.find_first_of("0123456789");
    if (name.rfind("mock", 0) != 0 || digits == std::string::npos)
      return std::to_string(lenses.size()) + " lenses";
    ks.push_back(std::stoll(name.substr(digits)));
  }
  std::sort(ks.begin(), ks.end());
  std::string out;
  for (size_t i = 0; i < ks.size();) {
    size_t j = i;
    while (j + 1 < ks.size() && ks[j + 1] == ks[j] + 1) ++j;
    out += (out.empty() ? "" : ", ") + std::to_string(ks[i]) +
           (j > i ? "-" + std::to_string(ks[j]) : std::string());
    i = j + 1;
  }
  return out;
}

// ", weights fnv1a64 `...`": the VAE's path is the machine's that fitted it (a part's run folder),
// so its weights' fingerprint is what ties the table to a VAE elsewhere (docs/mock_study/vae).
std::string weights_note(const json& study) {
  const json d = study.value("vae_weights_fnv1a64", json(nullptr));
  return d.is_string() ? ", weights fnv1a64 `" + d.get<std::string>() + "`" : std::string();
}

// "3, 7, 10" from --only's indices.
std::string joined_indices(const json& ks) {
  std::string out;
  for (const auto& k : ks) out += (out.empty() ? "" : ", ") + std::to_string(k.get<int64_t>());
  return out;
}

// "+0.62": a signed z-score mean.
std::string signed_fixed(double v) {
  if (!std::isfinite(v)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%+.2f", v);
  return buf;
}

// "4 of 30 (<= 2)": truths outside their draws' central 99 %, and in brackets the most that a
// calibrated fit shows in 97.5 % of studies with as many mocks (Binomial(n, 0.01)).
std::string tails_cell(const json& a) {
  const int64_t n = a.value("lenses_ranked", int64_t{0});
  if (n == 0) return "-";
  const auto r = binomial_coverage_range(n, 0.01);
  return std::to_string(a.at("outside_99").get<int64_t>()) + " of " + std::to_string(n) +
         " (<= " + std::to_string(std::llround(r.upper * static_cast<double>(n))) + ")";
}

// A level's rms z-scores apart for the fits with fewer and with at least many_divergences
// divergent transitions (level_entry), shown only where both groups have fits.
std::string divergences_paragraph(const json& l) {
  if (!l.contains("aggregate_few_divergences")) return "";
  const int64_t few = l.at("lenses_few_divergences").get<int64_t>();
  const auto all = static_cast<int64_t>(l.at("lenses").size());
  if (few == 0 || few == all) return "";
  const int64_t many = l.at("many_divergences").get<int64_t>();
  std::ostringstream md;
  md << "**Fits with and without divergences.** rms z-scores over the " << all - few
     << " fits with " << many << " or more divergent transitions after warmup and over the " << few
     << " with fewer (a diagnostic, not a target: divergences mark posteriors whose tails the "
        "sampler could not integrate).\n\n| parameter | rms z, "
     << many << " or more divergences | rms z, fewer |\n| --- | ---: | ---: |\n";
  for (const auto& spec : row_specs()) {
    if (!row_shown(l, spec)) continue;
    md << "| " << spec.label << " | "
       << fixed(number_or_nan(l.at("aggregate_many_divergences").at(spec.key), "rms_z"), 2) << " | "
       << fixed(number_or_nan(l.at("aggregate_few_divergences").at(spec.key), "rms_z"), 2)
       << " |\n";
  }
  md << "\n";
  return md.str();
}

// A level's calibration over the lenses whose search reached the truth's mode (level_entry), shown
// only where some search missed it: the pooled 68 % coverage of the target parameters and each
// one's coverage, z-scores and tails.
std::string truth_mode_paragraph(const json& l) {
  if (l.value("lenses_map_below_truth", int64_t{0}) == 0 || !l.contains("aggregate_in_truth_mode"))
    return "";
  const int64_t k = l.at("lenses_in_truth_mode").get<int64_t>();
  const json& agg = l.at("aggregate_in_truth_mode");
  std::ostringstream md;
  double pooled = 0;
  std::string names;
  for (const auto& key : kCoverageTargets) {
    pooled += number_or_nan(agg.at(key), "coverage_68");
    names += (names.empty() ? "" : ", ") + key;
  }
  const auto intervals = static_cast<int64_t>(kCoverageTargets.size()) * k;
  md << "**In the truth's mode.** Over the " << k << " of "
     << l.value("lenses_truth_scored", int64_t{0})
     << " lenses whose MAP is not less probable than the truth (a diagnostic that separates the "
        "sampler's calibration from the search's misses; not a target, since the selection "
        "depends on the data): pooled 68 % coverage of "
     << names << " " << fixed(pooled / static_cast<double>(kCoverageTargets.size()), 2);
  if (intervals > 0) {
    const auto r = binomial_coverage_range(intervals, kNominalCoverage);
    md << " (a calibrated fit: " << fixed(r.lower, 2) << " - " << fixed(r.upper, 2) << " over "
       << intervals << " intervals)";
  }
  md << ".\n\n| parameter | coverage 68 % | coverage 95 % | mean z-score | rms z-score | truth "
        "outside central 99 % |\n| --- | ---: | ---: | ---: | ---: | ---: |\n";
  for (const auto& spec : row_specs()) {
    if (!row_shown(l, spec)) continue;
    const json& a = agg.at(spec.key);
    md << "| " << spec.label << " | " << fixed(number_or_nan(a, "coverage_68"), 2) << " | "
       << fixed(number_or_nan(a, "coverage_95"), 2) << " | "
       << signed_fixed(number_or_nan(a, "mean_z")) << " | " << fixed(number_or_nan(a, "rms_z"), 2)
       << " | " << tails_cell(a) << " |\n";
  }
  md << "\n";
  return md.str();
}

}  // namespace

std::string searched_again_line(const json& lenses) {
  json again = json::array();
  size_t unknown = 0;
  for (const auto& l : lenses) {
    const json rounds = l.value("search_rounds", json(nullptr));
    if (!rounds.is_number_integer() || rounds.get<int64_t>() < 0) {
      ++unknown;
    } else if (rounds.get<int64_t>() > 1) {
      again.push_back(l);
    }
  }
  if (unknown == lenses.size()) return "";
  std::string line = "Searched again (more than one MAP search round): " +
                     (again.empty() ? std::string("none") : "mocks " + mock_ranges(again));
  if (unknown > 0) line += "; not recorded for " + std::to_string(unknown) + " older fit(s)";
  return line + ".\n\n";
}

std::string level_section(const json& l) {
  std::ostringstream md;
  md << "## SNR " << num(l.at("snr").get<double>()) << "\n\n"
     << "Mocks: " << mock_ranges(l.at("lenses")) << ".\n\n"
     << searched_again_line(l.at("lenses"))
     << "| parameter | median abs. relative error | median abs. error | coverage 68 % | "
        "coverage 95 % | mean z-score | rms z-score | truth outside central 99 % | max R-hat | "
        "total divergences | median time per lens (s) |\n"
     << "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  for (const auto& spec : row_specs()) {
    if (!row_shown(l, spec)) continue;
    const json& a = l.at("aggregate").at(spec.key);
    // A row over fewer fits than the level's (a magnification some fits did not summarise).
    const auto over = a.value("lenses", int64_t{0});
    const auto all = static_cast<int64_t>(l.at("lenses").size());
    md << "| " << spec.label
       << (over < all ? " (" + std::to_string(over) + " of " + std::to_string(all) + " fits)"
                      : std::string())
       << " | " << (spec.relative ? percent(number_or_nan(a, "median_abs_relative_error")) : "-")
       << " | " << num(number_or_nan(a, "median_abs_error"), 3) << " | "
       << fixed(number_or_nan(a, "coverage_68"), 2) << " | "
       << fixed(number_or_nan(a, "coverage_95"), 2) << " | "
       << signed_fixed(number_or_nan(a, "mean_z")) << " | " << fixed(number_or_nan(a, "rms_z"), 2)
       << " | " << tails_cell(a) << " | " << fixed(number_or_nan(a, "max_rhat"), 3) << " | "
       << l.at("divergences_total").get<int64_t>() << " | "
       << fixed(number_or_nan(l, "median_seconds_per_lens"), 1) << " |\n";
  }
  md << "\n" << truth_mode_paragraph(l) << divergences_paragraph(l);
  return md.str();
}

std::string render_markdown(const json& study) {
  std::ostringstream md;
  const json& s = study.at("settings");
  md << "# Mock study: parameter recovery and coverage of `dslens fit`\n\n"
     << "Produced by `dslens " << study.at("dslens_version").get<std::string>() << "` on "
     << study.at("device").get<std::string>() << " (" << study.at("dtype").get<std::string>()
     << "), " << study.at("date").get<std::string>() << ":\n\n```\n"
     << study.at("command").get<std::string>() << "\n```\n\n"
     << "(`scripts/mock_study.sh` runs this command with the study's VAE, docs/mock_study/vae, "
        "unless given another.)\n\n"
     << "**Mocks.** " << s.at("mocks").get<int64_t>()
     << (s.at("mocks").get<int64_t>() == 1 ? " lens" : " lenses") << " (seed "
     << s.at("seed").get<uint64_t>()
     << (s.value("first", int64_t{0}) > 0
             ? "; mocks " + std::to_string(s.at("first").get<int64_t>()) + " to " +
                   std::to_string(s.at("first").get<int64_t>() + s.at("mocks").get<int64_t>() - 1)
             : std::string())
     << (s.contains("only") ? "; only mocks " + joined_indices(s.at("only")) : std::string())
     << "); mock k is the same lens at every SNR level, only its noise differs: EPL with "
     << "theta_E ~ " << text(kThetaE, "\"") << ", gamma ~ " << text(kGamma) << ", e1, e2 ~ "
     << text(kE12) << ", centre ~ " << text(kLensCentre, "\"")
     << "; external shear gamma1, gamma2 ~ " << text(kShear) << "; a source decoded by the VAE (`"
     << s.at("vae").get<std::string>() << "`" << weights_note(study)
     << ") from z ~ N(0, I), amplitude ~ log" << text(kLogAmp) << ", stamp pixel ~ logN(ln "
     << num(kSourceScale) << "\", " << num(kLogScaleSigma) << "), centre ~ "
     << text(kSourceCentre, "\"") << ". " << s.at("pixels").get<int64_t>() << "x"
     << s.at("pixels").get<int64_t>() << " pixels of " << kPixelScale << "\", Gaussian PSF of FWHM "
     << kPsfFwhm << "\", supersampling " << s.at("supersampling").get<int64_t>()
     << " (the same in simulation and fit).\n\n"
     << "**SNR.** " << study.at("snr_definition").get<std::string>() << "\n\n"
     << "**Fit.** EPL + shear + the VAE source (latents N(0, I); phi_G fixed at the truth), every "
     << "free parameter with the mocks' distribution above as its prior, so that the intervals' "
     << "coverage is the nominal one on average (simulation-based calibration); MAP from "
     << s.at("starts").get<int64_t>() << " prior draws"
     << (s.value("placement_starts", int64_t{0}) > 0
             ? " (the best of " + std::to_string(s.at("placement_starts").get<int64_t>()) +
                   " placements)"
             : std::string())
     << (s.value("anneal_snr", 0.0) > 0
             ? ", its likelihood annealed from SNR " + num(s.at("anneal_snr").get<double>()) +
                   " at levels above it"
             : std::string())
     << ", then NUTS (" << s.value("metric", std::string("diag")) << " metric, maximum tree depth "
     << s.value("max_depth", int64_t{10}) << "), " << s.at("chains").get<int64_t>() << " chains x ("
     << s.at("warmup").get<int64_t>() << " warmup + " << s.at("draws").get<int64_t>()
     << " draws). The mocks of one level are fitted in batches "
     << "(`dslens fit --max-batch`); a lens's random streams, and so its result, do not depend "
     << "on its batch.\n\n"
     << "**Columns.** Error: posterior mean - truth; relative error: error / |truth| (shown only "
     << "where the truth is bounded away from 0); coverage: fraction of mocks whose truth lies in "
     << "the central 68 % (16-84 %) or 95 % (2.5-97.5 %) posterior interval (binomial sd with "
     << "30 mocks: 0.085 at 68 %); R-hat: the largest rank-normalised split R-hat over the mocks. "
     << "The axis ratio is derived per draw from the fitted e1, e2 (q = (1 - |e|) / (1 + |e|)), "
     << "the shear strength from gamma1, gamma2 (gamma_ext = sqrt(gamma1^2 + gamma2^2)); the "
     << "source magnification is the fit's summary of the lensed source's flux in the image over "
     << "its own, per draw, against the same at the truth (no rank: the draws file holds only the "
     << "parameters; shown where the fits summarised it). "
     << "z-score: error / posterior sd; for an exact posterior over truths drawn from its prior "
     << "z has mean 0 and mean square 1 (the posterior variance is the expected squared distance "
     << "of the truth from the posterior mean), so the mean z over n mocks has sd 1/sqrt(n) "
     << "(0.18 with 30) and says whether the errors lean one way, and the rms z says whether the "
     << "intervals are too narrow (above 1; about 1 +- 0.13 with 30 mocks if z is near normal, "
     << "more skewed where posteriors have long tails). Truth outside the "
     << "central 99 %: mocks whose truth lies below 0.5 % or above 99.5 % of its draws (its rank, "
     << "as in simulation-based calibration), in brackets the most a calibrated fit shows in 97.5 "
     << "% of studies with as many mocks. Time per "
     << "lens: the lens's share of its batch (MAP + warmup + sampling). Total fit time: the "
     << "level's lens times summed, i.e. its batches' wall times summed across every --resume "
     << "(core hours when each fit has one thread). MAP less probable than "
     << "the truth: mocks whose best MAP optimum has a log posterior more than 1 below the "
     << "truth's (the search missed the truth's mode; map.json of each fit).\n\n";

  if (study.value("partial", false)) {
    md << "**Partial.** The study was still running: only the fits finished by then are "
          "tabulated (`--partial`), so a level's mocks may be fewer than asked.\n\n";
  }
  if (study.contains("combined_from")) {
    bool any_replaced = false;
    for (const auto& p : study.at("combined_from")) any_replaced |= p.contains("replaced");
    md << "**Parts.** This table joins the lenses of " << study.at("combined_from").size()
       << " parts of the study (`dslens mock-study --combine`; the same population, settings and "
          "VAE"
       << weights_note(study)
       << "); aggregates and targets are recomputed over all their lenses. Total fit time: "
          "that of the lenses taken"
       << (any_replaced ? ", replaced fits left out. A mock fitted in several parts is taken from "
                          "the last of them (`--replace`); the parts it replaced say which"
                        : "")
       << ".\n\n| part | date | fitted by |\n| --- | --- | --- |\n";
    for (const auto& p : study.at("combined_from")) {
      std::string replaced;
      for (const auto& r : p.value("replaced", json::array()))
        replaced += (replaced.empty() ? "" : ", ") + r.get<std::string>();
      md << "| `" << p.value("file", std::string()) << "`"
         << (p.value("partial", false) ? " (partial)" : "")
         << (replaced.empty() ? std::string() : " (replaced by a later part: " + replaced + ")")
         << " | " << p.value("date", std::string()) << " | `" << p.value("command", std::string())
         << "` |\n";
    }
    md << "\n";
  }
  md << "## Overview\n\n"
     << "| SNR | mocks | MAP less probable than the truth | total divergences | mocks with "
        "divergences | max R-hat (rows below) | median time per lens (s) | total fit time (h) |\n"
     << "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  for (const auto& l : study.at("levels")) {
    double max_rhat = NAN;
    for (const auto& [k, a] : l.at("aggregate").items()) {
      const double r = number_or_nan(a, "max_rhat");
      if (std::isfinite(r)) max_rhat = std::isfinite(max_rhat) ? std::max(max_rhat, r) : r;
    }
    const int64_t scored = l.value("lenses_truth_scored", int64_t{0});
    md << "| " << num(l.at("snr").get<double>()) << " | " << l.at("lenses").size() << " | "
       << (scored > 0 ? std::to_string(l.at("lenses_map_below_truth").get<int64_t>()) + " of " +
                            std::to_string(scored)
                      : std::string("-"))
       << " | " << l.at("divergences_total").get<int64_t>() << " | "
       << l.at("lenses_with_divergences").get<int64_t>() << " | " << fixed(max_rhat, 3) << " | "
       << fixed(number_or_nan(l, "median_seconds_per_lens"), 1) << " | "
       << fixed(number_or_nan(l, "summed_seconds_per_lens") / 3600.0, 1) << " |\n";
  }
  md << "\n";

  for (const auto& l : study.at("levels")) md << level_section(l);

  md << "## Targets (issue 5)\n\n"
     << "A calibrated fit's coverage over n intervals is a binomial fraction, so each coverage row "
        "also gives the range that holds 95 % of a calibrated fit's studies with as many "
        "intervals: one parameter over 30 mocks may fall outside [0.60, 0.76] by chance alone; "
        "the pooled row (all coverage parameters of all mocks) is the one the target's width "
        "fits. Each error row gives the median error a calibrated fit would make with the "
        "posterior widths these fits found (|N(0, sd^2)| has median 0.674 sd): an error target "
        "below it asks for more than the data hold.\n\n"
     << "| target | value | result | a calibrated fit (coverage: 95 % of studies; errors: its "
        "median) |\n"
     << "| --- | ---: | --- | --- |\n";
  for (const auto& t : study.at("targets")) {
    const std::string target = t.at("target");
    const double v = number_or_nan(t, "value");
    const bool is_relative = target.rfind("median abs. relative", 0) == 0;
    const bool is_absolute = !is_relative && target.rfind("median", 0) == 0;
    std::string chance = "-";
    const double typical = number_or_nan(t, "calibrated_typical");
    if (std::isfinite(typical)) {
      chance = "about " + (is_relative ? percent(typical) : num(typical, 3)) +
               " (median of 0.674 sd" + (is_relative ? " / abs(truth)" : "") + ")";
    }
    if (t.contains("calibrated_range_95")) {
      const double lo = t.at("calibrated_range_95").at(0), hi = t.at("calibrated_range_95").at(1);
      chance = fixed(lo, 2) + " - " + fixed(hi, 2) + " over " +
               std::to_string(t.at("intervals").get<int64_t>()) + " intervals" +
               (std::isfinite(v) ? (v >= lo && v <= hi ? ": inside" : ": OUTSIDE") : "");
    }
    md << "| " << target << " | "
       << (is_relative   ? percent(v)
           : is_absolute ? num(v, 3)
                         : fixed(v, 2))
       << " | "
       << (t.at("pass").is_null() ? t.value("note", std::string("n/a"))
                                  : (t.at("pass").get<bool>() ? "pass" : "FAIL"))
       << " | " << chance << " |\n";
  }
  md << "\nRaw numbers per mock: `mock_study.json`; fits: `snr<S>/fit/mock<k>/` (summary.txt, "
        "report.png).\n";
  return md.str();
}

void write_study(const fs::path& out, json study) {
  study["targets"] = check_targets(study.at("levels"));
  const std::string md = render_markdown(study);
  write_text_atomically((out / "mock_study.json").string(), study.dump(2) + "\n");
  write_text_atomically((out / "mock_study.md").string(), md);
  std::cout << "\n"
            << md << "\nwrote " << (out / "mock_study.md").string() << " and "
            << (out / "mock_study.json").string() << "\n";
}

}  // namespace dslens::app::mock_study

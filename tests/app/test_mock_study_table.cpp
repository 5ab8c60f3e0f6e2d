// The mock study's calibration columns (app/mock_study_table.h, aggregate): the mean and rms of the
// z-scores and the count of truths outside their draws' central 99 %, on records made by hand and
// on a conjugate normal model whose posterior is exact, where the z-scores must have mean 0 and
// mean square 1 and 1 % of the truths must fall outside the central 99 %.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "app/mock_study_table.h"

namespace mock_study_table_test {

using dslens::json;
using dslens::app::mock_study::aggregate;

// A lens record whose every row (theta_E, gamma, ..., source centre) has this error, sd and rank;
// a NaN rank leaves it out, as in the records of binaries before the rank.
json lens_record(double error, double sd, double rank) {
  json params;
  for (const char* key : {"theta_E", "gamma", "q", "gamma_ext", "gamma1", "gamma2", "lens_center_x",
                          "lens_center_y", "source_center_x", "source_center_y"}) {
    json r{{"error", error}, {"sd", sd}, {"relative_error", nullptr}, {"rhat", 1.0}};
    if (std::isfinite(rank)) r["rank"] = rank;
    params[key] = r;
  }
  return {{"parameters", params}};
}

TEST(MockStudyTable, ZScoresAndTailsFromHandMadeRecords) {
  json lenses = json::array({lens_record(1.0, 1.0, 0.5), lens_record(-3.0, 1.0, 0.001),
                             lens_record(2.0, 2.0, 0.999), lens_record(0.0, 1.0, NAN),
                             lens_record(0.5, 0.0, 0.3)});  // sd 0: no z-score
  const json a = aggregate(lenses).at("gamma");
  EXPECT_EQ(a.at("lenses_z"), 4);
  EXPECT_DOUBLE_EQ(a.at("mean_z").get<double>(), (1.0 - 3.0 + 1.0 + 0.0) / 4.0);
  EXPECT_DOUBLE_EQ(a.at("rms_z").get<double>(), std::sqrt((1.0 + 9.0 + 1.0 + 0.0) / 4.0));
  EXPECT_EQ(a.at("lenses_ranked"), 4);  // the record without a rank is not counted
  EXPECT_EQ(a.at("outside_99"), 2);     // 0.001 and 0.999; 0.5 and 0.3 are inside
}

// A row that some lenses' records lack (the source's magnification, summarised only since session
// 45) is aggregated over the lenses that have it, and over none where no record has it.
TEST(MockStudyTable, ARowSomeRecordsLackIsAggregatedOverTheOthers) {
  json with = lens_record(1.0, 1.0, 0.5), other = lens_record(-1.0, 2.0, 0.5);
  with["parameters"]["magnification"] = {{"truth", 4.0},          {"error", 0.4},   {"sd", 0.2},
                                         {"relative_error", 0.1}, {"in_68", false}, {"in_95", true},
                                         {"rhat", 1.02}};
  const json without = lens_record(3.0, 1.0, 0.5);
  const json a = aggregate(json::array({with, without, other}));
  EXPECT_EQ(a.at("magnification").at("lenses"), 1);
  EXPECT_DOUBLE_EQ(a.at("magnification").at("mean_z").get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(a.at("magnification").at("coverage_95").get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(a.at("magnification").at("median_abs_relative_error").get<double>(), 0.1);
  EXPECT_EQ(a.at("gamma").at("lenses"), 3);
  EXPECT_EQ(aggregate(json::array({without})).at("magnification").at("lenses"), 0);
}

// A level's table labels a row over fewer fits than the level's "(N of M fits)", leaves the label
// off rows every fit has, and leaves out a row no fit has (stored parts before session 45 tabulate
// as they did).
TEST(MockStudyTable, ALevelsTableSaysOverHowManyFitsARowIs) {
  auto fit = [](json lens, const std::string& name) {
    lens["name"] = name;
    lens["divergences"] = 0;
    lens["seconds"] = {{"map", 1.0}, {"warmup", 1.0}, {"sampling", 1.0}};
    return lens;
  };
  json with = fit(lens_record(1.0, 1.0, 0.5), "mock0");
  with["parameters"]["magnification"] = {{"truth", 4.0},          {"error", 0.4},   {"sd", 0.2},
                                         {"relative_error", 0.1}, {"in_68", false}, {"in_95", true},
                                         {"rhat", 1.02}};
  const json without = fit(lens_record(-1.0, 1.0, 0.5), "mock1");
  using dslens::app::mock_study::level_section;
  const std::string some =
      level_section(dslens::app::mock_study::level_entry(100.0, "f", {with, without}, 1.0));
  EXPECT_NE(some.find("| source magnification (1 of 2 fits) | 10.00 % |"), std::string::npos)
      << some;
  EXPECT_NE(some.find("Mocks: 0-1."), std::string::npos) << some;
  EXPECT_EQ(some.find("of 2 fits)", some.find("of 2 fits)") + 1), std::string::npos) << some;
  const std::string all =
      level_section(dslens::app::mock_study::level_entry(100.0, "f", {with, with}, 1.0));
  EXPECT_NE(all.find("| source magnification | 10.00 % |"), std::string::npos) << all;
  const std::string none =
      level_section(dslens::app::mock_study::level_entry(100.0, "f", {without, without}, 1.0));
  EXPECT_EQ(none.find("magnification"), std::string::npos) << none;
  EXPECT_NE(none.find("| slope gamma |"), std::string::npos) << none;
}

// The error a calibrated fit makes with the posteriors' widths: the median over lenses of 0.674 sd
// (|N(0, sd^2)| has median Phi^-1(0.75) sd) and of 0.674 sd / |truth| where the record has a
// relative error; the error targets carry it. Checked against a simulation of calibrated errors.
TEST(MockStudyTable, ErrorTargetsCarryTheErrorTheWidthsAllow) {
  std::mt19937_64 rng(41);
  std::normal_distribution<double> normal(0.0, 1.0);
  json lenses = json::array();
  std::vector<double> rel_sim;
  const int64_t n = 2001;
  for (int64_t i = 0; i < n; ++i) {
    json lens = lens_record(0.0, 1.0, 0.5);
    const double truth = 1.0 + 0.001 * static_cast<double>(i), sd = 0.02 * truth;
    const double error = sd * normal(rng);
    for (auto& [key, r] : lens["parameters"].items()) {
      r["truth"] = truth;
      r["sd"] = sd;
      r["error"] = error;
      r["relative_error"] = error / truth;
    }
    lens["divergences"] = 0;
    lens["seconds"] = {{"map", 1.0}, {"warmup", 1.0}, {"sampling", 1.0}};
    lenses.push_back(lens);
  }
  // The shear's truth at 0: no relative error, so no relative width either.
  lenses[0]["parameters"]["gamma_ext"]["relative_error"] = nullptr;
  const json level = dslens::app::mock_study::level_entry(100.0, "f", lenses, 1.0);
  const json& a = level.at("aggregate").at("theta_E");
  // sd / truth is 0.02 for every lens: the typical relative error is 0.674 x 0.02 exactly, and the
  // simulated errors' median agrees within its sampling sd (about 1.6 % of it at n = 2001).
  EXPECT_NEAR(a.at("median_typical_relative_error").get<double>(), 0.6744897501960817 * 0.02,
              1e-12);
  EXPECT_NEAR(a.at("median_abs_relative_error").get<double>(),
              a.at("median_typical_relative_error").get<double>(), 0.08 * 0.0135);
  // Absolute: the median of 0.674 sd over sd = 0.02 (1 + 0.001 i), i.e. at i = 1000.
  EXPECT_NEAR(a.at("median_typical_error").get<double>(), 0.6744897501960817 * 0.02 * 2.0, 1e-12);
  const json targets = dslens::app::mock_study::check_targets(json::array({level}));
  int carried = 0;
  for (const auto& t : targets) {
    const std::string name = t.at("target");
    if (name.rfind("median abs. relative error of theta_E", 0) == 0) {
      EXPECT_NEAR(t.at("calibrated_typical").get<double>(), 0.6744897501960817 * 0.02, 1e-12);
      ++carried;
    }
    if (name.rfind("median abs. error of gamma_ext", 0) == 0) {
      EXPECT_NEAR(t.at("calibrated_typical").get<double>(), 0.6744897501960817 * 0.04, 1e-12);
      ++carried;
    }
  }
  EXPECT_EQ(carried, 2);
}

// level_entry's aggregates over the lenses whose MAP reached the truth's mode: a lens whose MAP is
// more than 1 nat less probable than the truth is left out, one within 1 nat kept, one without
// log posteriors (not scored) left out.
TEST(MockStudyTable, TruthModeAggregatesLeaveOutMissedSearches) {
  auto scored = [](json lens, double lp_map, double lp_truth) {
    lens["divergences"] = 0;
    lens["seconds"] = {{"map", 1.0}, {"warmup", 1.0}, {"sampling", 1.0}};
    lens["map_log_posterior"] = std::isfinite(lp_map) ? json(lp_map) : json(nullptr);
    lens["truth_log_posterior"] = std::isfinite(lp_truth) ? json(lp_truth) : json(nullptr);
    return lens;
  };
  const json lenses = json::array({scored(lens_record(1.0, 1.0, 0.2), 100.0, 90.0),
                                   scored(lens_record(-50.0, 1.0, 1.0), 80.0, 90.0),  // missed
                                   scored(lens_record(-2.0, 1.0, 0.9), 89.5, 90.0),
                                   scored(lens_record(7.0, 1.0, 0.0), NAN, 90.0)});
  const json level = dslens::app::mock_study::level_entry(100.0, "f", lenses, 10.0);
  EXPECT_EQ(level.at("lenses_truth_scored"), 3);
  EXPECT_EQ(level.at("lenses_map_below_truth"), 1);
  EXPECT_EQ(level.at("lenses_in_truth_mode"), 2);
  EXPECT_DOUBLE_EQ(level.at("summed_seconds_per_lens").get<double>(), 4 * 3.0);
  EXPECT_DOUBLE_EQ(level.at("fit_wall_seconds").get<double>(), 10.0);
  const json& all = level.at("aggregate").at("gamma");
  const json& in_mode = level.at("aggregate_in_truth_mode").at("gamma");
  EXPECT_EQ(all.at("lenses_z"), 4);
  EXPECT_EQ(in_mode.at("lenses_z"), 2);
  EXPECT_DOUBLE_EQ(in_mode.at("mean_z").get<double>(), (1.0 - 2.0) / 2.0);
  EXPECT_DOUBLE_EQ(in_mode.at("rms_z").get<double>(), std::sqrt((1.0 + 4.0) / 2.0));
  EXPECT_EQ(in_mode.at("outside_99"), 0);
  EXPECT_EQ(all.at("outside_99"), 2);
}

// level_entry's aggregates apart for the fits with fewer than 10 divergent transitions and with 10
// or more: 9 counts as few, 10 as many, and each group's z-scores are its own lenses'.
TEST(MockStudyTable, DivergentFitsAreAggregatedApart) {
  auto with = [](json lens, int64_t divergences) {
    lens["divergences"] = divergences;
    lens["seconds"] = {{"map", 1.0}, {"warmup", 1.0}, {"sampling", 1.0}};
    return lens;
  };
  const json lenses =
      json::array({with(lens_record(1.0, 1.0, 0.5), 0), with(lens_record(-2.0, 1.0, 0.5), 9),
                   with(lens_record(3.0, 1.0, 0.5), 10), with(lens_record(-4.0, 2.0, 0.5), 250)});
  const json level = dslens::app::mock_study::level_entry(30.0, "f", lenses, 1.0);
  EXPECT_EQ(level.at("many_divergences"), 10);
  EXPECT_EQ(level.at("lenses_few_divergences"), 2);
  const json& few = level.at("aggregate_few_divergences").at("gamma");
  const json& many = level.at("aggregate_many_divergences").at("gamma");
  EXPECT_EQ(few.at("lenses_z"), 2);
  EXPECT_EQ(many.at("lenses_z"), 2);
  EXPECT_DOUBLE_EQ(few.at("rms_z").get<double>(), std::sqrt((1.0 + 4.0) / 2.0));
  EXPECT_DOUBLE_EQ(many.at("rms_z").get<double>(), std::sqrt((9.0 + 4.0) / 2.0));
  EXPECT_DOUBLE_EQ(level.at("aggregate").at("gamma").at("rms_z").get<double>(),
                   std::sqrt((1.0 + 4.0 + 9.0 + 4.0) / 4.0));
}

// The level's line of mocks searched again: those with more than one search round, by name; lenses
// without a count (older fits) are counted, and a level without any count has no line.
TEST(MockStudyTable, SearchedAgainLineNamesTheMocksOfLaterRounds) {
  auto lens = [](const std::string& name, json rounds) {
    json l{{"name", name}};
    if (!rounds.is_null()) l["search_rounds"] = rounds;
    return l;
  };
  using dslens::app::mock_study::searched_again_line;
  EXPECT_EQ(searched_again_line(json::array(
                {lens("mock000", 1), lens("mock003", 3), lens("mock004", 2), lens("mock007", 2)})),
            "Searched again (more than one MAP search round): mocks 3-4, 7.\n\n");
  EXPECT_EQ(searched_again_line(json::array({lens("mock000", 1), lens("mock001", 0)})),
            "Searched again (more than one MAP search round): none.\n\n");
  EXPECT_EQ(searched_again_line(
                json::array({lens("mock000", 2), lens("mock001", nullptr), lens("mock002", -1)})),
            "Searched again (more than one MAP search round): mocks 0; not recorded for 2 older "
            "fit(s).\n\n");
  EXPECT_EQ(searched_again_line(json::array({lens("mock000", nullptr)})), "");
}

// Prior theta ~ N(0, 1), one datum y ~ N(theta, sigma^2): the posterior is N(m, s^2) with
// s^2 = 1 / (1 + 1 / sigma^2), m = s^2 y / sigma^2, and the truth's rank is Phi((theta - m) / s).
// A fit that reports sd = width * s is calibrated only at width 1.
json conjugate_study(double width, int64_t mocks) {
  std::mt19937_64 rng(20261204);
  std::normal_distribution<double> normal(0.0, 1.0);
  const double sigma = 0.5, s = 1.0 / std::sqrt(1.0 + 1.0 / (sigma * sigma));
  json lenses = json::array();
  for (int64_t i = 0; i < mocks; ++i) {
    const double theta = normal(rng), y = theta + sigma * normal(rng);
    const double m = s * s * y / (sigma * sigma), sd = width * s;
    lenses.push_back(
        lens_record(m - theta, sd, 0.5 * std::erfc(-(theta - m) / sd / std::sqrt(2.0))));
  }
  return aggregate(lenses).at("theta_E");
}

TEST(MockStudyTable, ExactPosteriorHasZScoresOfMeanZeroAndRmsOne) {
  const int64_t n = 4000;
  const json calibrated = conjugate_study(1.0, n);
  // Sampling sd of the mean z: 1/sqrt(n) = 0.016; of the rms: about 1/sqrt(2n) = 0.011; of the
  // tail count: sqrt(0.0099 n) = 6.3 around 40. Bounds at about 4 sd.
  EXPECT_NEAR(calibrated.at("mean_z").get<double>(), 0.0, 0.065);
  EXPECT_NEAR(calibrated.at("rms_z").get<double>(), 1.0, 0.045);
  EXPECT_NEAR(calibrated.at("outside_99").get<double>(), 0.01 * n, 25.0);
  // Intervals 30 % too narrow: rms z 1 / 0.7 = 1.43, and truths outside the central 99 % of
  // N(m, (0.7 s)^2) with probability 2 Phi(-2.576 * 0.7) = 0.071.
  const json narrow = conjugate_study(0.7, n);
  EXPECT_NEAR(narrow.at("rms_z").get<double>(), 1.0 / 0.7, 0.06);
  EXPECT_NEAR(narrow.at("outside_99").get<double>(), 0.071 * n, 65.0);
}

}  // namespace mock_study_table_test

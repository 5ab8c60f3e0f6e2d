// Stan CSV reading (reference chains and malformed input) and the summary table.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dslens/core/errors.h"
#include "dslens/samplers/diagnostics.h"
#include "dslens/samplers/stan_csv.h"
#include "dslens/samplers/summary.h"
#include "test_support.h"

namespace diagnostics_summary_test {

namespace ds = dslens::samplers;

std::string bern(int i) {
  return dslens::testing::shared_dir() + "/reference/mcmc_diagnostics/bern" + std::to_string(i) +
         ".csv";
}

void expect_file_error(const std::function<void()>& f, const std::vector<std::string>& fragments) {
  try {
    f();
    ADD_FAILURE() << "no FileError";
  } catch (const dslens::FileError& e) {
    for (const auto& frag : fragments) {
      EXPECT_NE(std::string(e.what()).find(frag), std::string::npos)
          << "'" << frag << "' not in: " << e.what();
    }
  }
}

const char* kSmallCsv =
    "# model = toy\n"
    "lp__,accept_stat__,divergent__,mu,sigma\n"
    "# Adaptation terminated\n"
    "# Step size = 0.5\n"
    "-1.5,0.9,0,0.1,1.2\n"
    "-1.7,0.8,0,0.2,1.1\n"
    "-1.2,1,1,nan,inf\n"
    "\n"
    "# Elapsed Time: 0.1 seconds\n";

TEST(DiagnosticsStanCsv, ReadsReferenceChains) {
  for (int i = 1; i <= 4; ++i) DSLENS_REQUIRE_FILE(bern(i));
  const auto one = ds::read_stan_csv(bern(1));
  const std::vector<std::string> names = {"lp__",        "accept_stat__", "stepsize__",
                                          "treedepth__", "n_leapfrog__",  "divergent__",
                                          "energy__",    "theta"};
  EXPECT_EQ(one.names, names);
  ASSERT_EQ(one.draws.sizes(), (std::vector<int64_t>{1000, 8}));
  EXPECT_EQ(one.warmup.size(0), 0);
  ASSERT_TRUE(one.step_size.has_value());
  EXPECT_DOUBLE_EQ(*one.step_size, 0.883328);
  // First and last rows of bern1.csv.
  EXPECT_DOUBLE_EQ(one.draws[0][0].item<double>(), -6.80778);
  EXPECT_DOUBLE_EQ(one.draws[0][7].item<double>(), 0.208532);
  EXPECT_DOUBLE_EQ(one.draws[999][6].item<double>(), 7.80575);
  EXPECT_DOUBLE_EQ(one.draws[999][7].item<double>(), 0.239427);
  EXPECT_TRUE(ds::is_sampler_column("lp__"));
  EXPECT_FALSE(ds::is_sampler_column("theta"));

  const auto all = ds::read_stan_csv_chains({bern(1), bern(2), bern(3), bern(4)});
  EXPECT_EQ(all.names, names);
  ASSERT_EQ(all.draws.sizes(), (std::vector<int64_t>{4, 1000, 8}));
  EXPECT_TRUE(torch::equal(all.draws[0], one.draws));
}

TEST(DiagnosticsStanCsv, ParsesSpecialValuesAndWarmup) {
  const auto dir = dslens::testing::temp_dir("stan_csv");
  std::ofstream(dir + "/a.csv") << kSmallCsv;
  const auto a = ds::read_stan_csv(dir + "/a.csv");
  ASSERT_EQ(a.draws.sizes(), (std::vector<int64_t>{3, 5}));
  EXPECT_TRUE(std::isnan(a.draws[2][3].item<double>()));
  EXPECT_TRUE(std::isinf(a.draws[2][4].item<double>()));
  EXPECT_EQ(*a.step_size, 0.5);
  // save_warmup: rows before "# Adaptation terminated" are warmup. CRLF line ends are fine.
  std::ofstream(dir + "/w.csv") << "lp__,mu\r\n-1,0.5\r\n-2,0.6\r\n# Adaptation terminated\r\n"
                                   "# Step size = 0.7\r\n-3,0.7\r\n";
  const auto w = ds::read_stan_csv(dir + "/w.csv");
  ASSERT_EQ(w.warmup.sizes(), (std::vector<int64_t>{2, 2}));
  ASSERT_EQ(w.draws.sizes(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(w.draws[0][1].item<double>(), 0.7);
}

TEST(DiagnosticsStanCsv, MalformedInputNamesFileAndLine) {
  const auto dir = dslens::testing::temp_dir("stan_csv_bad");
  const std::string header = "# comment\nlp__,mu,sigma\n";
  std::ofstream(dir + "/short.csv") << header << "1,2,3\n4,5\n";
  expect_file_error([&] { ds::read_stan_csv(dir + "/short.csv"); },
                    {"short.csv", "line 4", "expected 3 values, found 2"});
  std::ofstream(dir + "/word.csv") << header << "1,2,3\n4,abc,6\n";
  expect_file_error([&] { ds::read_stan_csv(dir + "/word.csv"); },
                    {"word.csv", "line 4", "'mu'", "abc"});
  std::ofstream(dir + "/empty.csv") << "# only comments\n";
  expect_file_error([&] { ds::read_stan_csv(dir + "/empty.csv"); }, {"empty.csv", "no header"});
  std::ofstream(dir + "/nodraws.csv") << header;
  expect_file_error([&] { ds::read_stan_csv(dir + "/nodraws.csv"); }, {"nodraws.csv", "no draws"});
  std::ofstream(dir + "/noheader.csv") << "1,2,3\n4,5,6\n";
  expect_file_error([&] { ds::read_stan_csv(dir + "/noheader.csv"); },
                    {"noheader.csv", "line 1", "header"});
  std::ofstream(dir + "/dup.csv") << "a,b,a\n1,2,3\n";
  expect_file_error([&] { ds::read_stan_csv(dir + "/dup.csv"); }, {"dup.csv", "repeats"});
  expect_file_error([&] { ds::read_stan_csv(dir + "/missing.csv"); },
                    {"missing.csv", "does not exist"});

  // Chains that do not match.
  std::ofstream(dir + "/c1.csv") << header << "1,2,3\n4,5,6\n";
  std::ofstream(dir + "/c2.csv") << "lp__,mu,tau\n1,2,3\n4,5,6\n";
  std::ofstream(dir + "/c3.csv") << header << "1,2,3\n";
  expect_file_error(
      [&] {
        ds::read_stan_csv_chains({dir + "/c1.csv", dir + "/c2.csv"});
      },
      {"c2.csv", "c1.csv", "columns"});
  expect_file_error(
      [&] {
        ds::read_stan_csv_chains({dir + "/c1.csv", dir + "/c3.csv"});
      },
      {"c3.csv", "1 draws", "c1.csv", "2"});
}

TEST(DiagnosticsSummary, TableAndJsonOfReferenceChains) {
  for (int i = 1; i <= 4; ++i) DSLENS_REQUIRE_FILE(bern(i));
  const auto chains = ds::read_stan_csv_chains({bern(1), bern(2), bern(3), bern(4)});
  const auto rows = ds::summarize(chains.draws, chains.names);
  ASSERT_EQ(rows.size(), 8u);
  const auto& theta = rows[7];
  EXPECT_EQ(theta.name, "theta");
  const auto th = chains.draws.select(2, 7);
  EXPECT_NEAR(theta.mean, th.mean().item<double>(), 1e-12);
  EXPECT_NEAR(theta.sd, th.std().item<double>(), 1e-12);  // n - 1 denominator
  const auto sorted = std::get<0>(th.flatten().sort());
  // Type-7 quantiles of 4000 draws: q50 = mean of the two middle values.
  EXPECT_NEAR(theta.q50, 0.5 * (sorted[1999].item<double>() + sorted[2000].item<double>()), 1e-15);
  EXPECT_LT(theta.q5, theta.q50);
  EXPECT_LT(theta.q50, theta.q95);
  EXPECT_NEAR(theta.rhat, 1.006789, 1e-4);
  EXPECT_NEAR(theta.ess_bulk, 1407.5124, 0.15);
  EXPECT_NEAR(theta.ess_tail, 1291.7131, 0.13);
  EXPECT_DOUBLE_EQ(theta.mcse_mean, ds::mcse_mean(th));
  EXPECT_TRUE(std::isnan(rows[5].rhat));  // divergent__ is constant

  const auto j = ds::summary_json(rows);
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 8u);
  EXPECT_EQ(j[7]["variable"], "theta");
  EXPECT_DOUBLE_EQ(j[7]["rhat"].get<double>(), theta.rhat);
  EXPECT_DOUBLE_EQ(j[7]["q95"].get<double>(), theta.q95);
  for (const char* key :
       {"mean", "sd", "q5", "q50", "q95", "rhat", "ess_bulk", "ess_tail", "mcse_mean"}) {
    EXPECT_TRUE(j[0].contains(key)) << key;
  }
  EXPECT_TRUE(j[5]["rhat"].is_null());
  EXPECT_TRUE(j[5]["ess_bulk"].is_null());
  EXPECT_EQ(j[5]["mean"].get<double>(), 0.0);
  // The JSON is valid JSON (NaN would not be).
  EXPECT_NO_THROW(nlohmann::json::parse(j.dump()));

  const auto text = ds::summary_text(rows);
  std::istringstream is(text);
  std::vector<std::string> lines;
  for (std::string l; std::getline(is, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 9u);
  EXPECT_EQ(lines[0].rfind("variable", 0), 0u);
  for (const char* col :
       {"mean", "sd", "q5", "q50", "q95", "rhat", "ess_bulk", "ess_tail", "mcse_mean"}) {
    EXPECT_NE(lines[0].find(col), std::string::npos) << col;
  }
  for (const auto& l : lines) EXPECT_EQ(l.size(), lines[0].size()) << "not aligned: " << l;
  EXPECT_EQ(lines[8].rfind("theta", 0), 0u);
  EXPECT_NE(lines[8].find("1.007"), std::string::npos) << lines[8];
  EXPECT_NE(lines[8].find("1408"), std::string::npos) << lines[8];
  EXPECT_NE(lines[8].find("1292"), std::string::npos) << lines[8];
  EXPECT_NE(lines[6].find("NA"), std::string::npos) << lines[6];  // divergent__
}

TEST(DiagnosticsSummary, RejectsMismatchedNames) {
  EXPECT_THROW(ds::summarize(torch::zeros({2, 10, 3}), {"a", "b"}), dslens::InvalidArgument);
  EXPECT_THROW(ds::summarize(torch::zeros({10, 3}), {"a", "b", "c"}), dslens::InvalidArgument);
}

}  // namespace diagnostics_summary_test

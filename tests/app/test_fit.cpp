// `dslens fit` end to end on a small mock (SIE lens, elliptical Sersic source, 7 free parameters,
// 32x32 pixels): the truth must lie inside the 95 % intervals, an interrupted fit resumed with
// --resume (after MAP, then after warmup, then after a SIGTERM) must give the same draws as an
// uninterrupted one, two lenses are fitted as one batch and each gets the draws it gets alone, a
// decoded (pixelated) source's three-stage MAP lands on the true lens, and bad input exits 2
// without writing anything.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "dslens/core/fits.h"
#include "dslens/core/fits_table.h"
#include "dslens/core/npy.h"
#include "dslens/core/sky_position.h"
#include "dslens/model/noise_estimate.h"
#include "run_dslens.h"
#include "test_support.h"
#include "tiny_vae_config.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace test_fit_detail {

using dslens::testing::quote;
using dslens::testing::read_json;
using dslens::testing::run_dslens;
using dslens::testing::RunResult;
using dslens::testing::write_json;

// A whole text file (empty if it cannot be read).
std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A CSV file without quoted fields, as rows of fields.
std::vector<std::vector<std::string>> read_csv(const std::string& path) {
  std::vector<std::vector<std::string>> rows;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> fields;
    std::stringstream ss(line);
    std::string f;
    while (std::getline(ss, f, ',')) fields.push_back(f);
    if (!line.empty() && line.back() == ',') fields.push_back("");
    rows.push_back(fields);
  }
  return rows;
}

json mock_config(int seed, double theta_e) {
  return {{"grid", {{"nx", 32}, {"ny", 32}, {"pixel_scale", 0.1}}},
          {"psf", {{"fwhm", 0.12}}},
          {"mass",
           {{{"type", "SIE"},
             {"theta_E", theta_e},
             {"e1", 0.08},
             {"e2", -0.05},
             {"center_x", 0.0},
             {"center_y", 0.0}}}},
          {"source",
           {{{"type", "SERSIC_ELLIPSE"},
             {"amp", 20.0},
             {"R_sersic", 0.15},
             {"n_sersic", 1.0},
             {"e1", 0.0},
             {"e2", 0.0},
             {"center_x", 0.05},
             {"center_y", 0.02}}}},
          {"noise", {{"background_rms", 0.2}, {"exposure_time", 0.0}}},
          {"seed", seed}};
}

json prior(const std::string& kind, double a, double b) {
  if (kind == "uniform") return {{"prior", kind}, {"lower", a}, {"upper", b}};
  if (kind == "lognormal") return {{"prior", kind}, {"mu", a}, {"sigma", b}};
  return {{"prior", kind}, {"mean", a}, {"sigma", b}};
}

json fit_config(const std::string& simulation) {
  return {
      {"data", {{"simulation", simulation}}},
      {"model",
       {{"mass",
         {{{"type", "SIE"},
           {"theta_E", prior("uniform", 0.5, 1.5)},
           {"e1", prior("uniform", -0.3, 0.3)},
           {"e2", prior("uniform", -0.3, 0.3)},
           {"center_x", 0.0},
           {"center_y", 0.0}}}},
        {"source",
         {{{"type", "SERSIC_ELLIPSE"},
           {"amp", prior("lognormal", std::log(20.0), 1.0)},
           {"R_sersic", prior("lognormal", std::log(0.15), 0.5)},
           {"n_sersic", 1.0},
           {"e1", 0.0},
           {"e2", 0.0},
           {"center_x", prior("normal", 0.0, 0.2)},
           {"center_y", prior("normal", 0.0, 0.2)}}}}}},
      {"map", {{"starts", 4}, {"adam_iterations", 80}, {"lbfgs_iterations", 40}}},
      {"sampler", {{"chains", 2}, {"warmup", 80}, {"draws", 120}, {"max_depth", 6}, {"seed", 3}}}};
}

// Simulates a mock into dir/name and writes dir/name.json fitting it.
std::string make_mock(const std::string& dir, const std::string& name, int seed, double theta_e) {
  write_json(dir + "/" + name + "-sim.json", mock_config(seed, theta_e));
  const RunResult r = run_dslens("simulate " + quote(dir + "/" + name + "-sim.json") + " --out " +
                                 quote(dir + "/" + name + "-data"));
  EXPECT_EQ(r.code, 0) << r.output;
  fs::create_directories(dir + "/configs");
  const std::string cfg = dir + "/configs/" + name + ".json";
  write_json(cfg, fit_config("../" + name + "-data"));
  return cfg;
}

// `dslens fit CONFIG --out OUT` with one short chain (30 warmup + 30 draws): for tests of the
// MAP's outputs and warnings, which the chains' length does not change.
RunResult short_fit(const std::string& config, const std::string& out) {
  return run_dslens("fit " + quote(config) + " --out " + quote(out) +
                    " --warmup 30 --draws 30 --chains 1");
}

// Mocks "a" (theta_E 0.9) and "b" (1.1) in dir/configs with the MAP's optimisers off, so that
// their optima are their prior draws; `edit` changes each config before it is written.
void make_raw_map_mocks(const std::string& dir,
                        const std::function<void(const std::string&, json&)>& edit) {
  for (const auto& [name, seed, theta_e] :
       {std::tuple{std::string("a"), 21, 0.9}, std::tuple{std::string("b"), 22, 1.1}}) {
    const std::string cfg = make_mock(dir, name, seed, theta_e);
    json c = read_json(cfg);
    c["map"] = {
        {"starts", 4}, {"adam_iterations", 0}, {"lbfgs_iterations", 0}, {"newton_iterations", 0}};
    edit(name, c);
    write_json(cfg, c);
  }
}

TEST(FitCommand, SmallMockRecoversTheTruthAndResumesExactly) {
  const std::string dir = dslens::testing::temp_dir("fit");
  const std::string cfg = make_mock(dir, "mock", 11, 1.0);

  const RunResult full = run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/fit"));
  ASSERT_EQ(full.code, 0) << full.output;
  for (const char* f : {"draws.npy", "draws.json", "stats.npy", "stats.json", "summary.json",
                        "summary.txt", "map.json", "data.fits", "model.fits", "residuals.fits",
                        "source.fits", "report.png", "warnings.json", "index.json", "fit.log"}) {
    EXPECT_TRUE(fs::exists(dir + "/fit/" + f)) << f;
  }
  EXPECT_FALSE(fs::exists(dir + "/fit/checkpoint"));

  const json summary = read_json(dir + "/fit/summary.json");
  int with_truth = 0;
  for (const auto& row : summary["parameters"]) {
    ASSERT_TRUE(row.contains("truth")) << row.dump();
    ++with_truth;
    EXPECT_TRUE(row["in_95"].get<bool>()) << row.dump();
    EXPECT_LT(row["rhat"].get<double>(), 1.1) << row.dump();  // 2 short chains
  }
  EXPECT_EQ(with_truth, 7);
  EXPECT_LE(summary["divergences"].get<int64_t>(), 2);
  const json map = read_json(dir + "/fit/map.json");
  const double chi2 = map["reduced_chi_square"].get<double>();
  EXPECT_GT(chi2, 0.85);
  EXPECT_LT(chi2, 1.15);
  // The truth scored by the same posterior: the simulated noise is the noise the fit assumes
  // (reduced chi-square 1 within 3.4 sd for 1024 pixels), and the MAP is at least as probable.
  ASSERT_TRUE(map.contains("truth")) << map.dump();
  const double chi2_truth = map["truth"]["reduced_chi_square"].get<double>();
  EXPECT_GT(chi2_truth, 0.85);
  EXPECT_LT(chi2_truth, 1.15);
  EXPECT_GE(map["log_posterior"].get<double>(), map["truth"]["log_posterior"].get<double>() - 1e-6)
      << map.dump();
  const auto draws = dslens::read_npy(dir + "/fit/draws.npy");
  EXPECT_EQ(draws.sizes(), (std::vector<int64_t>{2, 120, 7}));

  // Interrupted after MAP, resumed and interrupted again after warmup (a snapshot of the sampler),
  // then resumed to the end: the same draws as the uninterrupted run.
  const RunResult stop =
      run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/fit2") + " --stop-after map");
  ASSERT_EQ(stop.code, 0) << stop.output;
  EXPECT_TRUE(fs::exists(dir + "/fit2/checkpoint/batch0-map.pt"));
  EXPECT_FALSE(fs::exists(dir + "/fit2/summary.json"));
  const RunResult again = run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/fit2"));
  EXPECT_EQ(again.code, 2) << again.output;  // exists: refused without --resume/--overwrite
  const RunResult warm = run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/fit2") +
                                    " --resume --stop-after warmup");
  ASSERT_EQ(warm.code, 0) << warm.output;
  EXPECT_TRUE(fs::exists(dir + "/fit2/checkpoint/batch0-sampler.pt"));
  EXPECT_FALSE(fs::exists(dir + "/fit2/checkpoint/batch0-chains.pt"));
  const RunResult resumed =
      run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/fit2") + " --resume", "info");
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("sampling resumes at iteration 80"), std::string::npos)
      << resumed.output;
  const auto draws2 = dslens::read_npy(dir + "/fit2/draws.npy");
  EXPECT_TRUE(torch::allclose(draws, draws2, 1e-9, 1e-12));

  // SIGTERM (as SLURM sends at a time limit) while NUTS runs: exit 128 + 15 after a snapshot,
  // and --resume ends with the uninterrupted draws. The signal comes once the first progress line
  // is out (20 of 200 iterations; the rest take seconds), at whatever iteration it lands.
  const std::string log = dir + "/fit3.log";
  const pid_t pid = dslens::testing::spawn_dslens({"fit", cfg, "--out", dir + "/fit3"}, log);
  ASSERT_GT(pid, 0);
  const auto read_log = [&log] { return read_text(log); };
  std::string seen;
  for (int k = 0; k < 6000 && seen.find("NUTS [") == std::string::npos; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    seen = read_log();
  }
  ASSERT_NE(seen.find("NUTS ["), std::string::npos) << seen;
  kill(pid, SIGTERM);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  seen = read_log();
  ASSERT_TRUE(WIFEXITED(status)) << seen;
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGTERM) << seen;
  EXPECT_NE(seen.find("stopped on request after iteration"), std::string::npos) << seen;
  // The command that continues it: the same arguments with --resume.
  EXPECT_NE(seen.find("continue with: dslens fit " + cfg + " --out " + dir + "/fit3 --resume"),
            std::string::npos)
      << seen;
  EXPECT_TRUE(fs::exists(dir + "/fit3/checkpoint/batch0-sampler.pt"));
  EXPECT_FALSE(fs::exists(dir + "/fit3/summary.json"));
  const RunResult after_signal =
      run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/fit3") + " --resume", "info");
  ASSERT_EQ(after_signal.code, 0) << after_signal.output;
  EXPECT_NE(after_signal.output.find("sampling resumes at iteration"), std::string::npos)
      << after_signal.output;
  EXPECT_TRUE(torch::allclose(draws, dslens::read_npy(dir + "/fit3/draws.npy"), 1e-9, 1e-12));
  fs::remove_all(dir);
}

// A sky level left in the data (over-subtracted: negative, 0.2 noise sd per pixel, unseen in any
// one pixel) is fitted by a UNIFORM lens light: its truth lies within the 95 % interval. Its sd
// cannot be below what 1024 pixels of noise 0.2 allow with everything else known, 0.2 / sqrt(1024)
// / 0.01 arcsec^2 = 0.625; the lensed source's flux and size share some of that information
// (1.05 when written).
TEST(FitCommand, ASkyLevelIsFittedByAUniformLensLight) {
  const std::string dir = dslens::testing::temp_dir("fit_sky");
  json sim = mock_config(12, 1.0);
  sim["lens_light"] = {{{"type", "UNIFORM"}, {"amp", -4.0}}};
  write_json(dir + "/sky-sim.json", sim);
  RunResult r =
      run_dslens("simulate " + quote(dir + "/sky-sim.json") + " --out " + quote(dir + "/sky-data"));
  ASSERT_EQ(r.code, 0) << r.output;
  json cfg = fit_config("sky-data");
  cfg["model"]["lens_light"] = {{{"type", "UNIFORM"}, {"amp", prior("normal", 0.0, 10.0)}}};
  write_json(dir + "/sky.json", cfg);
  r = run_dslens("fit " + quote(dir + "/sky.json") + " --out " + quote(dir + "/fit"));
  ASSERT_EQ(r.code, 0) << r.output;
  const json summary = read_json(dir + "/fit/summary.json");
  bool found = false;
  for (const auto& row : summary["parameters"]) {
    EXPECT_TRUE(row["in_95"].get<bool>()) << row.dump();
    if (row["variable"] != "amp_lens_light0") continue;
    found = true;
    EXPECT_DOUBLE_EQ(row["truth"].get<double>(), -4.0);
    EXPECT_GT(row["sd"].get<double>(), 0.625 * 0.9) << row.dump();  // 2 short chains' sd
    EXPECT_LT(row["sd"].get<double>(), 1.5) << row.dump();
  }
  EXPECT_TRUE(found) << summary.dump();
  const json map = read_json(dir + "/fit/map.json");
  const double chi2 = map["reduced_chi_square"].get<double>();
  EXPECT_GT(chi2, 0.85);
  EXPECT_LT(chi2, 1.15);
  // lenstronomy has the profile by the same name, and convolves it: the export says so.
  const json lt = read_json(dir + "/fit/map_model/lenstronomy.json");
  EXPECT_EQ(lt["lens_light_model_list"], json::array({"UNIFORM"})) << lt.dump();
  EXPECT_DOUBLE_EQ(lt["kwargs_lens_light"][0]["amp"].get<double>(),
                   map["parameters"]["amp_lens_light0"].get<double>());
  EXPECT_NE(lt["notes"].dump().find("added after the PSF"), std::string::npos) << lt.dump();
  fs::remove_all(dir);
}

// "poisson_term": "model" on a mock whose noise is Poisson-dominated on the arcs (t = 1: a
// pixel of 0.9 has variance 0.04 + 0.9): the MAP's residuals divide by the MAP model's sigma, as
// the likelihood does, and the fit finds the truth with a reduced chi-square of about 1.
TEST(FitCommand, PoissonTermFromTheModelIsTheFitsNoiseAndItsResidualsSigma) {
  const std::string dir = dslens::testing::temp_dir("fit_poisson_model");
  json sim = mock_config(17, 1.0);
  sim["noise"]["exposure_time"] = 1.0;
  write_json(dir + "/sim.json", sim);
  RunResult r =
      run_dslens("simulate " + quote(dir + "/sim.json") + " --out " + quote(dir + "/data"));
  ASSERT_EQ(r.code, 0) << r.output;
  json cfg = fit_config("data");
  cfg["data"]["poisson_term"] = "model";
  write_json(dir + "/fit.json", cfg);
  r = short_fit(dir + "/fit.json", dir + "/fit");
  ASSERT_EQ(r.code, 0) << r.output;
  const json map = read_json(dir + "/fit/map.json");
  ASSERT_TRUE(map.contains("poisson_term")) << map.dump();
  EXPECT_EQ(map["poisson_term"]["from"], "model");
  EXPECT_DOUBLE_EQ(map["poisson_term"]["background_rms"].get<double>(), 0.2);
  EXPECT_DOUBLE_EQ(map["poisson_term"]["exposure_time"].get<double>(), 1.0);
  EXPECT_EQ(read_json(dir + "/fit/summary.json")["poisson_term"], "model");
  EXPECT_NE(read_text(dir + "/fit/summary.txt").find("max(model, 0) / 1 at each point"),
            std::string::npos);
  const double chi2 = map["reduced_chi_square"].get<double>();
  EXPECT_GT(chi2, 0.85) << map.dump();
  EXPECT_LT(chi2, 1.15) << map.dump();
  EXPECT_NEAR(map["parameters"]["theta_E_lens0"].get<double>(), 1.0, 0.02) << map.dump();
  // The residuals' sigma is the MAP model's: sqrt(0.2^2 + max(model, 0) / 1).
  const auto data = dslens::read_fits_image(dir + "/fit/data.fits");
  const auto model = dslens::read_fits_image(dir + "/fit/model.fits");
  const auto resid = dslens::read_fits_image(dir + "/fit/residuals.fits");
  const auto expected = (data - model) / torch::sqrt(0.04 + model.clamp_min(0));
  ASSERT_GT(model.max().item<double>(), 0.5);  // the arcs' Poisson term dominates
  EXPECT_TRUE(torch::allclose(resid, expected, 1e-6, 1e-6))
      << (resid - expected).abs().max().item<double>();
  fs::remove_all(dir);
}

TEST(FitCommand, TwoLensesShareOneBatch) {
  const std::string dir = dslens::testing::temp_dir("fit_batch");
  make_mock(dir, "a", 21, 0.9);
  make_mock(dir, "b", 22, 1.1);
  const RunResult r = run_dslens("fit " + quote(dir + "/configs") + " --out " +
                                 quote(dir + "/fit") + " --warmup 40 --draws 60 --starts 3");
  ASSERT_EQ(r.code, 0) << r.output;
  for (const std::string lens : {"a", "b"}) {
    const json s = read_json(dir + "/fit/" + lens + "/summary.json");
    EXPECT_EQ(s["lenses_in_batch"].get<int64_t>(), 2);
    // Several lenses in a batch on the CPU sample with their chains out of step (fit_config.h).
    EXPECT_TRUE(read_json(dir + "/fit/" + lens + "/stats.json")["settings"]["out_of_step"]);
    for (const auto& row : s["parameters"]) {
      if (row["variable"] == "theta_E_lens0") {
        EXPECT_NEAR(row["mean"].get<double>(), lens == "a" ? 0.9 : 1.1,
                    5 * row["sd"].get<double>());
      }
    }
  }
  // --shard 1/2 fits only the second config. Alone (in lock-step) it samples the posterior it
  // sampled beside "a" (out of step): every mean within 4 standard errors of the batch's (Monte
  // Carlo errors of the two runs added). The draws themselves agree only until a rounding
  // difference flips one of NUTS's discrete choices: ATen's reductions are not bitwise independent
  // of the batch's size.
  const RunResult sh =
      run_dslens("fit " + quote(dir + "/configs") + " --out " + quote(dir + "/shard") +
                 " --shard 1/2 --warmup 40 --draws 60 --starts 3");
  ASSERT_EQ(sh.code, 0) << sh.output;
  EXPECT_TRUE(fs::exists(dir + "/shard/summary.json"));
  const json alone = read_json(dir + "/shard/summary.json");
  const json batched = read_json(dir + "/fit/b/summary.json");
  EXPECT_EQ(alone["lens"], "b");
  EXPECT_FALSE(read_json(dir + "/shard/stats.json")["settings"]["out_of_step"]);
  ASSERT_EQ(alone["parameters"].size(), batched["parameters"].size());
  for (size_t i = 0; i < alone["parameters"].size(); ++i) {
    const json& x = alone["parameters"][i];
    const json& y = batched["parameters"][i];
    ASSERT_EQ(x["variable"], y["variable"]);
    const double se = std::hypot(x["mcse_mean"].get<double>(), y["mcse_mean"].get<double>());
    EXPECT_LT(std::abs(x["mean"].get<double>() - y["mean"].get<double>()), 4 * se)
        << x["variable"] << ": alone " << x.dump() << "\nbatched " << y.dump();
  }

  // The run's catalogue.csv: a row per lens with summary.json's medians and intervals, and the
  // derived axis ratio q = (1 - |e|) / (1 + |e|) computed here from the draws' e1, e2.
  const auto table = read_csv(dir + "/fit/catalogue.csv");
  ASSERT_EQ(table.size(), 3u);  // header and two lenses
  const auto col = [&table](const std::string& name) {
    const auto it = std::find(table[0].begin(), table[0].end(), name);
    EXPECT_NE(it, table[0].end()) << name;
    return static_cast<size_t>(it - table[0].begin());
  };
  for (size_t k = 1; k < table.size(); ++k) {
    const std::string lens = table[k][col("lens")];
    const json s = read_json(dir + "/fit/" + lens + "/summary.json");
    for (const auto& row : s["parameters"]) {
      if (row["variable"] != "theta_E_lens0") continue;
      EXPECT_NEAR(std::stod(table[k][col("theta_E_lens0_q50")]), row["q50"].get<double>(), 1e-9);
      EXPECT_NEAR(std::stod(table[k][col("theta_E_lens0_q16")]), row["q16"].get<double>(), 1e-9);
    }
    const json map = read_json(dir + "/fit/" + lens + "/map.json");
    EXPECT_NEAR(std::stod(table[k][col("theta_E_lens0_map")]),
                map["parameters"]["theta_E_lens0"].get<double>(), 1e-9);
    const auto draws = dslens::read_npy(dir + "/fit/" + lens + "/draws.npy");
    const json names = read_json(dir + "/fit/" + lens + "/draws.json")["names"];
    const auto index = [&names](const std::string& n) {
      for (size_t i = 0; i < names.size(); ++i)
        if (names[i] == n) return static_cast<int64_t>(i);
      ADD_FAILURE() << n << " not in " << names.dump();
      return int64_t{0};
    };
    const auto e =
        torch::hypot(draws.select(2, index("e1_lens0")), draws.select(2, index("e2_lens0")))
            .reshape({-1});
    const auto q = ((1 - e) / (1 + e)).quantile(torch::tensor({0.16, 0.84}, torch::kFloat64));
    EXPECT_NEAR(std::stod(table[k][col("q_lens0_q16")]), q[0].item<double>(), 1e-9);
    EXPECT_NEAR(std::stod(table[k][col("q_lens0_q84")]), q[1].item<double>(), 1e-9);
    const double e_true = std::hypot(0.08, -0.05);  // mock_config's e1, e2
    EXPECT_NEAR(std::stod(table[k][col("q_lens0_truth")]), (1 - e_true) / (1 + e_true), 1e-9);
    // summary.txt lists q in its derived table and against the truth.
    const std::string text = read_text(dir + "/fit/" + lens + "/summary.txt");
    const auto derived_at = text.find("\nDerived (q = ");
    EXPECT_NE(derived_at, std::string::npos) << text;
    EXPECT_NE(text.find("\nq_lens0 ", derived_at), std::string::npos) << text;
    EXPECT_NE(text.find("q_lens0                      0.827586"), std::string::npos) << text;

    // The source's magnification (lensed flux over intrinsic flux): its MAP value in the catalogue
    // as in map.json (with q's), and its truth against the simulation's own image: the mock has
    // no lens light, so model.fits sums to the lensed source's flux (less what the PSF spreads
    // over the edges), and the circular exponential source's flux is 2 pi R^2 amp e^b / b^2.
    EXPECT_NEAR(std::stod(table[k][col("magnification_map")]),
                map["derived"]["magnification"].get<double>(), 1e-8);  // the CSV's 10 digits
    EXPECT_NEAR(std::stod(table[k][col("q_lens0_map")]), map["derived"]["q_lens0"].get<double>(),
                1e-9);
    json mu;
    for (const auto& d : s["derived"])
      if (d["variable"] == "magnification") mu = d;
    ASSERT_TRUE(mu.is_object()) << s["derived"].dump();
    const double b = 1.9992 - 0.3271;
    const double intrinsic = 2 * M_PI * 0.15 * 0.15 * 20.0 * std::exp(b) / (b * b);
    const double lensed =
        dslens::read_fits_image(dir + "/" + lens + "-data/model.fits").sum().item<double>();
    EXPECT_NEAR(mu["truth"].get<double>() / (lensed / intrinsic), 1.0, 0.01) << mu.dump();
    EXPECT_GT(mu["truth"].get<double>(), 2.0);  // a source inside the caustic: four images
    EXPECT_LT(std::abs(mu["mean"].get<double>() - mu["truth"].get<double>()),
              4 * mu["sd"].get<double>())
        << mu.dump();

    // Each chain on its own (summary.json's "chains"): its mean log posterior as stats.npy's
    // lp__, its theta_E as draws.npy's, and the table in summary.txt.
    const auto stats = dslens::read_npy(dir + "/fit/" + lens + "/stats.npy");
    const json chains = s["chains"];
    ASSERT_EQ(chains.size(), static_cast<size_t>(draws.size(0)));
    for (int64_t c = 0; c < draws.size(0); ++c) {
      const json& row = chains[static_cast<size_t>(c)];
      EXPECT_NEAR(row["mean_log_density"].get<double>(),
                  stats[c].select(1, 0).mean().item<double>(), 1e-6);
      EXPECT_NEAR(row["mean"]["theta_E_lens0"].get<double>(),
                  draws[c].select(1, index("theta_E_lens0")).mean().item<double>(), 1e-12);
      EXPECT_TRUE(row["mean"].contains("magnification")) << row.dump();
    }
    EXPECT_NE(text.find("\nPer chain (means over its draws):\n"), std::string::npos) << text;

    // The source's posterior mean and sd (source_mean.fits, source_sd.fits, on source.fits's
    // grid) against the circular exponential's brightness amp exp(-b (r / R - 1)) evaluated here
    // for every draw at three pixels.
    const std::string base = dir + "/fit/" + lens + "/";
    const auto mean_img = dslens::read_fits_image(base + "source_mean.fits");
    const auto sd_img = dslens::read_fits_image(base + "source_sd.fits");
    ASSERT_EQ(mean_img.sizes(), dslens::read_fits_image(base + "source.fits").sizes());
    const auto header = dslens::read_fits_numeric_header(base + "source_mean.fits");
    const double pix = header.at("PIXSCALE"), x0 = header.at("X_MIN"), y0 = header.at("Y_MIN");
    const auto col_of = [&](const std::string& n) {
      return draws.select(2, index(n)).reshape({-1});
    };
    for (const auto& [i, j] : {std::pair{64, 64}, std::pair{70, 50}, std::pair{20, 100}}) {
      const double x = x0 + (j + 0.5) * pix, y = y0 + (i + 0.5) * pix;
      const auto r =
          torch::hypot(x - col_of("center_x_source_light0"), y - col_of("center_y_source_light0"))
              .clamp_min(1e-5);
      const auto sb = col_of("amp_source_light0") *
                      torch::exp(-b * (r / col_of("R_sersic_source_light0") - 1.0));
      const double m = sb.mean().item<double>(), sd = sb.std(/*unbiased=*/false).item<double>();
      EXPECT_NEAR(mean_img[i][j].item<double>(), m, 1e-4 * std::abs(m) + 1e-9) << i << "," << j;
      EXPECT_NEAR(sd_img[i][j].item<double>(), sd, 1e-3 * sd + 1e-7) << i << "," << j;
    }
    EXPECT_GT(sd_img.max().item<double>(), 0.0);
  }

  // `dslens catalogue` joins the runs under a folder (the batch and the shard: b twice) and names
  // the ones that have not finished.
  const RunResult cut =
      run_dslens("fit " + quote(dir + "/configs") + " --out " + quote(dir + "/unfinished") +
                 " --shard 0/2 --starts 3 " + "--stop-after map");
  ASSERT_EQ(cut.code, 0) << cut.output;
  const RunResult joined =
      run_dslens("catalogue " + quote(dir) + " --out " + quote(dir + "/all.csv"), "");
  ASSERT_EQ(joined.code, 0) << joined.output;
  EXPECT_NE(joined.output.find("3 lens(es) from 2 finished fit output(s)"), std::string::npos)
      << joined.output;
  EXPECT_NE(joined.output.find("lens 'b' has 2 rows"), std::string::npos) << joined.output;
  EXPECT_NE(joined.output.find(dir + "/unfinished"), std::string::npos) << joined.output;
  const auto all = read_csv(dir + "/all.csv");
  EXPECT_EQ(all.size(), 4u);
  // The same table as a FITS binary table (--out *.fits), read back through CFITSIO: the same
  // columns in the same order, text columns as text, numbers as float64 with NaN for empty cells.
  const RunResult fits =
      run_dslens("catalogue " + quote(dir) + " --out " + quote(dir + "/all.fits"), "");
  ASSERT_EQ(fits.code, 0) << fits.output;
  const auto info = dslens::read_fits_table_info(dir + "/all.fits");
  EXPECT_EQ(info.rows, 3);
  ASSERT_EQ(info.columns, all[0]);
  EXPECT_EQ(dslens::read_fits_string_column(dir + "/all.fits", "lens"),
            (std::vector<std::string>{all[1][0], all[2][0], all[3][0]}));
  size_t numeric_columns = 0;
  for (size_t c = 2; c < all[0].size(); ++c) {
    const auto values = dslens::read_fits_numeric_column(dir + "/all.fits", all[0][c]);
    ASSERT_EQ(values.size(), 3u);
    for (size_t r = 0; r < 3; ++r) {
      const std::string& csv = all[r + 1][c];
      if (csv.empty()) {
        EXPECT_TRUE(std::isnan(values[r])) << all[0][c];
      } else {
        EXPECT_NEAR(values[r], std::stod(csv), 1e-9 * std::max(1.0, std::abs(values[r])))
            << all[0][c];
      }
    }
    ++numeric_columns;
  }
  EXPECT_GT(numeric_columns, 20u);
  const RunResult again =
      run_dslens("catalogue " + quote(dir) + " --out " + quote(dir + "/all.csv"), "");
  EXPECT_EQ(again.code, 2) << again.output;  // an existing file is not replaced without --overwrite
  fs::remove_all(dir);
}

// A lens's random streams follow its name, not its place in the batch: with the MAP's optimisers
// off, its best starts are its prior draws, the same alone (--shard) as beside another lens.
TEST(FitCommand, MapStartsFollowTheLensNameNotItsPlaceInTheBatch) {
  const std::string dir = dslens::testing::temp_dir("fit_streams");
  make_raw_map_mocks(dir, [](const std::string&, json&) {});
  const std::string quick = " --warmup 10 --draws 10";
  const RunResult both =
      run_dslens("fit " + quote(dir + "/configs") + " --out " + quote(dir + "/both") + quick);
  ASSERT_EQ(both.code, 0) << both.output;
  const RunResult one = run_dslens("fit " + quote(dir + "/configs") + " --out " +
                                   quote(dir + "/one") + " --shard 1/2" + quick);
  ASSERT_EQ(one.code, 0) << one.output;
  const json a = read_json(dir + "/both/a/map.json")["best_starts"];
  const json b = read_json(dir + "/both/b/map.json")["best_starts"];
  const json alone = read_json(dir + "/one/map.json")["best_starts"];
  ASSERT_GE(alone.size(), 2u);
  ASSERT_EQ(alone.size(), b.size());
  for (size_t i = 0; i < alone.size(); ++i) {
    for (const auto& [name, value] : alone[i].items()) {
      if (name == "log_posterior") continue;
      EXPECT_DOUBLE_EQ(value.get<double>(), b[i][name].get<double>()) << name << ", start " << i;
      // Lens "a" has other draws (its own name): the comparison above can fail.
      EXPECT_NE(value.get<double>(), a[i][name].get<double>()) << name << ", start " << i;
    }
  }
  fs::remove_all(dir);
}

// Search rounds (app/map_rounds.h): with the optimisers off a lens's optima are its prior draws,
// and round r draws from the streams of seed + 2r. Lens "a" (the usual noise) leaves a reduced
// chi-square far above the threshold at its best draw and is searched twice more; lens "b"
// (noise x 50: any draw fits) is not. So "a"'s best starts must be the best of the draws of its
// three rounds, each fitted alone with retry_rounds 0 and seeds 5, 7 and 9, and "b"'s those of
// its single round, beside "a" as alone.
TEST(FitCommand, SearchRoundsRetryOnlyTheLensesThatFitBadly) {
  const std::string dir = dslens::testing::temp_dir("fit_rounds");
  const std::string quick = " --warmup 2 --draws 2 --chains 1";
  const auto map_settings = [](int seed, int retry_rounds) {
    return json{{"starts", 4},
                {"adam_iterations", 0},
                {"lbfgs_iterations", 0},
                {"newton_iterations", 0},
                {"seed", seed},
                {"retry_rounds", retry_rounds},
                {"retry_reduced_chi_square", 1.3},
                // the fixed threshold alone: b's raw draws leave 1.11, 2.5 sd above 1 (sigma rule)
                {"retry_chi_square_sigma", 0.0}};
  };
  for (const auto& [name, seed, rms] :
       {std::tuple{std::string("a"), 21, 0.2}, std::tuple{std::string("b"), 22, 10.0}}) {
    json sim = mock_config(seed, 1.0);
    sim["noise"]["background_rms"] = rms;
    write_json(dir + "/" + name + "-sim.json", sim);
    const RunResult r = run_dslens("simulate " + quote(dir + "/" + name + "-sim.json") + " --out " +
                                   quote(dir + "/" + name + "-data"));
    ASSERT_EQ(r.code, 0) << r.output;
    json c = fit_config("../../" + name + "-data");
    c["map"] = map_settings(5, 2);
    fs::create_directories(dir + "/batch/configs");
    write_json(dir + "/batch/configs/" + name + ".json", c);
    for (const int s : {5, 7, 9}) {
      if (name == "b" && s != 5) continue;  // "b" has one round
      const std::string alone = dir + "/seed" + std::to_string(s) + "/configs";
      fs::create_directories(alone);
      c["map"] = map_settings(s, 0);
      write_json(alone + "/" + name + ".json", c);
    }
  }
  const RunResult batch = run_dslens(
      "fit " + quote(dir + "/batch/configs") + " --out " + quote(dir + "/batch/fit") + quick,
      "info");
  ASSERT_EQ(batch.code, 0) << batch.output;
  EXPECT_NE(batch.output.find("round 2 of 3: 1 of 2 lens(es)"), std::string::npos) << batch.output;
  EXPECT_NE(batch.output.find("round 3 of 3: 1 of 2 lens(es)"), std::string::npos) << batch.output;

  // Every start of "a"'s three rounds, and of "b"'s first, fitted alone.
  std::map<std::string, std::vector<json>> alone;
  for (const int s : {5, 7, 9}) {
    const std::string base = dir + "/seed" + std::to_string(s);
    const RunResult r =
        run_dslens("fit " + quote(base + "/configs") + " --out " + quote(base + "/fit") + quick);
    ASSERT_EQ(r.code, 0) << r.output;
    for (const std::string name : {"a", "b"}) {
      if (name == "b" && s != 5) continue;
      // One lens alone writes its outputs into the folder itself.
      const json map = read_json(base + "/fit/" + (s == 5 ? name + "/" : "") + "map.json");
      for (const auto& start : map["best_starts"]) alone[name].push_back(start);
    }
  }
  for (const std::string name : {"a", "b"}) {
    auto& expected = alone[name];
    std::stable_sort(expected.begin(), expected.end(), [](const json& x, const json& y) {
      return x["log_posterior"].get<double>() > y["log_posterior"].get<double>();
    });
    const json got = read_json(dir + "/batch/fit/" + name + "/map.json")["best_starts"];
    ASSERT_EQ(got.size(), 4u) << got.dump();
    ASSERT_EQ(expected.size(), name == "a" ? 12u : 4u);
    for (size_t i = 0; i < got.size(); ++i) {
      for (const auto& [param, value] : got[i].items()) {
        // Log posteriors: a batch's reductions may round differently from a lone lens's.
        const double tol = param == "log_posterior" ? 1e-6 : 1e-12;
        EXPECT_NEAR(value.get<double>(), expected[i][param].get<double>(),
                    tol * (1 + std::abs(value.get<double>())))
            << name << ", start " << i << ", " << param;
      }
    }
  }
  // map.json counts each lens's rounds: "a" three, "b" one, each lens alone one.
  EXPECT_EQ(read_json(dir + "/batch/fit/a/map.json")["search_rounds"], 3);
  EXPECT_EQ(read_json(dir + "/batch/fit/b/map.json")["search_rounds"], 1);
  EXPECT_EQ(read_json(dir + "/seed7/fit/map.json")["search_rounds"], 1);
  // At least one of "a"'s best four comes from a later round (else the test proves little).
  const json a_first = read_json(dir + "/seed5/fit/a/map.json")["best_starts"];
  EXPECT_NE(read_json(dir + "/batch/fit/a/map.json")["best_starts"], a_first);

  // Interrupted during the second round (its checkpoint and the MAP's removed, as a kill then
  // leaves them) and resumed: the search continues at round 2 and ends at the same optima.
  const std::string cut = dir + "/batch/cut", configs = quote(dir + "/batch/configs");
  const RunResult stop =
      run_dslens("fit " + configs + " --out " + quote(cut) + quick + " --stop-after map");
  ASSERT_EQ(stop.code, 0) << stop.output;
  const std::string saved = cut + "/checkpoint/batch0-map";
  ASSERT_TRUE(fs::exists(saved + "-round1.pt"));
  ASSERT_TRUE(fs::exists(saved + "-round2.pt"));
  EXPECT_FALSE(fs::exists(saved + "-round3.pt"));  // the last round's state is the MAP's
  fs::remove(saved + ".pt");
  fs::remove(saved + "-round2.pt");
  // A round of another search (other starts) is refused, naming the file.
  const RunResult other =
      run_dslens("fit " + configs + " --out " + quote(cut) + quick + " --resume --starts 3");
  EXPECT_NE(other.code, 0) << other.output;
  EXPECT_NE(other.output.find("batch0-map-round1.pt' cannot be used"), std::string::npos)
      << other.output;
  const RunResult resumed =
      run_dslens("fit " + configs + " --out " + quote(cut) + quick + " --resume", "info");
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("MAP: resumed after round 1"), std::string::npos) << resumed.output;
  EXPECT_NE(resumed.output.find("round 2 of 3: 1 of 2 lens(es)"), std::string::npos);
  for (const std::string name : {"a", "b"}) {
    EXPECT_EQ(read_json(cut + "/" + name + "/map.json")["best_starts"],
              read_json(dir + "/batch/fit/" + name + "/map.json")["best_starts"])
        << name;
    // The round counts come through the round-1 checkpoint too.
    EXPECT_EQ(read_json(cut + "/" + name + "/map.json")["search_rounds"],
              read_json(dir + "/batch/fit/" + name + "/map.json")["search_rounds"])
        << name;
  }
  fs::remove_all(dir);
}

// The sigma rule of the search rounds (app/map_rounds.h): with the fixed threshold out of reach
// (retry_reduced_chi_square 1e6), lens "a" (a raw prior draw as optimum, reduced chi-square 1.68)
// is still searched again under the default retry_chi_square_sigma 1.5, at the threshold
// 1 + 1.5 sqrt(2 / dof) of its 32 x 32 pixels less 7 free parameters (1.067). With the rule off
// (0) it is not.
TEST(FitCommand, SearchRoundsRetryWhereTheChiSquareIsImprobableForItsDegreesOfFreedom) {
  const std::string dir = dslens::testing::temp_dir("fit_rounds_sigma");
  for (const double sigma : {-1.0, 0.0}) {  // -1: the default
    const std::string sub = dir + (sigma < 0 ? "/default" : "/off");
    fs::create_directories(sub);
    make_raw_map_mocks(sub, [&](const std::string&, json& c) {
      c["map"]["retry_rounds"] = 1;
      c["map"]["retry_reduced_chi_square"] = 1e6;
      if (sigma >= 0) c["map"]["retry_chi_square_sigma"] = sigma;
    });
    fs::remove(sub + "/configs/b.json");  // "a" alone
    const RunResult r =
        run_dslens("fit " + quote(sub + "/configs") + " --out " + quote(sub + "/fit") +
                       " --warmup 2 --draws 2 --chains 1 --stop-after map",
                   "info");
    ASSERT_EQ(r.code, 0) << r.output;
    const bool retried = r.output.find("round 2 of 2: 1 of 1 lens(es)") != std::string::npos;
    EXPECT_EQ(retried, sigma < 0) << r.output;
    if (sigma < 0) {
      const double dof = 32 * 32 - 7;
      const auto at = r.output.find("above [");
      ASSERT_NE(at, std::string::npos) << r.output;
      const double logged = std::strtod(r.output.c_str() + at + 7, nullptr);
      EXPECT_NEAR(logged, 1.0 + 1.5 * std::sqrt(2.0 / dof), 1e-9) << r.output;
    }
  }
  fs::remove_all(dir);
}

// Goodness of fit between the search rounds' threshold and the fixed band [0.8, 1.25]
// (app/fit_outputs.cpp): the simulation's image fitted with a noise sigma 7 % below the simulated
// 0.2 leaves a reduced chi-square near 1 / 0.93^2 = 1.16 at any good fit, above the threshold
// 1 + 1.5 sqrt(2 / 1017) = 1.067 of 32 x 32 pixels less 7 parameters, and the fit must warn; with
// sigma 5 % above it (near 0.91) it must not.
// The fit on the arcs alone (map.json's "arcs", summary.json's reduced_chi_square_arcs): the
// mock's own model fits its arcs to the noise; a source with a bright compact knot that the fit's
// one Sersic cannot make leaves them far above it, and the fit warns.
TEST(FitCommand, WarnsWhenTheArcsAreFittedWorseThanTheNoise) {
  const std::string dir = dslens::testing::temp_dir("fit_arcs");
  for (const bool knot : {false, true}) {
    const std::string name = knot ? "knot" : "plain";
    json sim = mock_config(31, 1.0);
    if (knot) {
      sim["source"].push_back({{"type", "GAUSSIAN"},
                               {"amp", 5.0},
                               {"sigma", 0.03},
                               {"center_x", 0.12},
                               {"center_y", -0.02}});
    }
    write_json(dir + "/" + name + "-sim.json", sim);
    const RunResult s = run_dslens("simulate " + quote(dir + "/" + name + "-sim.json") + " --out " +
                                   quote(dir + "/" + name + "-data"));
    ASSERT_EQ(s.code, 0) << s.output;
    json c = fit_config("../" + name + "-data");
    c["map"]["retry_rounds"] = 0;
    fs::create_directories(dir + "/configs");
    write_json(dir + "/configs/" + name + ".json", c);
    const RunResult r = short_fit(dir + "/configs/" + name + ".json", dir + "/" + name);
    ASSERT_EQ(r.code, 0) << r.output;
    const json arcs = read_json(dir + "/" + name + "/map.json").at("arcs");
    const double chi2 = arcs.at("reduced_chi_square").get<double>();
    EXPECT_GT(arcs.at("pixels").get<int64_t>(), 50) << arcs.dump();
    EXPECT_EQ(
        read_json(dir + "/" + name + "/summary.json")["reduced_chi_square_arcs"].get<double>(),
        chi2);
    bool warned = false;
    for (const auto& w : read_json(dir + "/" + name + "/warnings.json"))
      warned = warned || w.get<std::string>().find("the arcs are fitted worse than the noise") !=
                             std::string::npos;
    EXPECT_EQ(warned, knot) << arcs.dump() << "\n" << r.output;
    if (knot) {
      EXPECT_GT(chi2, 1.5) << arcs.dump();  // 1.79 when written
    } else {
      // n pixels of pure noise: sd sqrt(2 / n), under 0.2 here.
      EXPECT_NEAR(chi2, 1.0, 0.3) << arcs.dump();
    }
  }
  fs::remove_all(dir);
}

TEST(FitCommand, WarnsOfAChiSquareImprobableForItsDegreesOfFreedom) {
  const std::string dir = dslens::testing::temp_dir("fit_chi_square");
  const std::string cfg = make_mock(dir, "a", 21, 0.9);
  for (const double scale : {0.93, 1.05}) {
    json c = read_json(cfg);
    c["data"] = {{"image", "../a-data/image.fits"},
                 {"background_rms", 0.2 * scale},
                 {"exposure_time", 1e12},  // a negligible Poisson part: none was simulated
                 {"psf", {{"fwhm", 0.12}}},
                 {"pixel_scale", 0.1}};
    c["map"]["retry_rounds"] = 0;
    const std::string sub = dir + "/scale" + std::to_string(scale);
    fs::create_directories(sub);
    write_json(sub + "/a.json", c);
    const RunResult r = short_fit(sub + "/a.json", sub + "/fit");
    ASSERT_EQ(r.code, 0) << r.output;
    const json map = read_json(sub + "/fit/map.json");
    const double chi2 = map.at("reduced_chi_square");
    EXPECT_NEAR(chi2, 1.0 / (scale * scale), 0.1) << map.dump();
    bool warned = false;
    for (const auto& w : read_json(sub + "/fit/warnings.json"))
      warned = warned || w.get<std::string>().find(
                             "above the MAP search rounds' threshold 1.067") != std::string::npos;
    EXPECT_EQ(warned, scale < 1) << "scale " << scale << "\n" << r.output;
    // map.json's residuals by brightness: 10 bins of the fitted pixels, faintest first, each
    // near the mean square the noise's scale makes (sd sqrt(2 / 102) = 0.14 per bin).
    const json bins = map.at("residuals_by_brightness").at("bins");
    ASSERT_EQ(bins.size(), 10u) << map.dump();
    int64_t pixels = 0;
    for (size_t b = 0; b < bins.size(); ++b) {
      pixels += bins[b].at("pixels").get<int64_t>();
      EXPECT_NEAR(bins[b].at("mean_square").get<double>(), 1.0 / (scale * scale), 0.5) << b;
      if (b > 0) {
        EXPECT_GE(bins[b].at("model_low"), bins[b - 1].at("model_high"));
      }
    }
    EXPECT_EQ(pixels, map.at("pixels").get<int64_t>());
  }
  // A noise too large where the image is bright, sigma^2 = 0.2^2 + model / 0.5 (the simulation's
  // noise-free image, a Poisson term of a far too short exposure): the warning says which term.
  const auto model = dslens::read_fits_image(dir + "/a-data/model.fits");
  dslens::write_fits_image(dir + "/a-data/sigma.fits",
                           torch::sqrt(0.04 + torch::clamp_min(model, 0.0) / 0.5));
  json c = read_json(cfg);
  c["data"] = {{"image", "../a-data/image.fits"},
               {"noise_map", "../a-data/sigma.fits"},
               {"psf", {{"fwhm", 0.12}}},
               {"pixel_scale", 0.1}};
  c["map"]["retry_rounds"] = 0;
  write_json(dir + "/configs/bright.json", c);
  const RunResult r = short_fit(dir + "/configs/bright.json", dir + "/bright");
  ASSERT_EQ(r.code, 0) << r.output;
  const json bins = read_json(dir + "/bright/map.json").at("residuals_by_brightness").at("bins");
  ASSERT_EQ(bins.size(), 10u);
  EXPECT_NEAR(bins[0].at("mean_square").get<double>(), 1.0, 0.5) << bins.dump();
  EXPECT_LT(bins[9].at("mean_square").get<double>(), 0.25) << bins.dump();
  bool poisson = false;
  for (const auto& w : read_json(dir + "/bright/warnings.json")) {
    poisson = poisson || w.get<std::string>().find(
                             "falling from faint to bright, the noise's brightness-dependent "
                             "(Poisson) term is too large") != std::string::npos;
  }
  EXPECT_TRUE(poisson) << r.output;
  // With a data.noise_scale the warning judges the noise as given: the same chi-square and bins
  // as without it, the label saying so.
  c["data"]["noise_scale"] = 2.0;
  write_json(dir + "/configs/bright-scaled.json", c);
  const RunResult rs = short_fit(dir + "/configs/bright-scaled.json", dir + "/bright-scaled");
  ASSERT_EQ(rs.code, 0) << rs.output;
  const double unscaled = read_json(dir + "/bright/map.json").at("reduced_chi_square");
  bool labelled = false;
  for (const auto& w : read_json(dir + "/bright-scaled/warnings.json")) {
    const std::string text = w.get<std::string>();
    const std::string head =
        "reduced chi-square at MAP (sigma as given, before data.noise_scale 2) is ";
    if (text.rfind(head, 0) != 0) continue;
    labelled = true;
    EXPECT_NEAR(std::stod(text.substr(head.size())), unscaled, 0.01) << text;
    const std::string bins_at = "from faint to bright, is ";
    const auto at = text.find(bins_at);
    ASSERT_NE(at, std::string::npos) << text;
    EXPECT_NEAR(std::stod(text.substr(at + bins_at.size())),
                bins[0].at("mean_square").get<double>(), 0.02)
        << text;
  }
  EXPECT_TRUE(labelled) << rs.output;
  fs::remove_all(dir);
}

// Noise correlated between neighbouring pixels (`dslens simulate`'s noise.correlation_fwhm, as
// drizzling makes): map.json's noise_correlation measures it on the quiet pixels' residuals (off
// the arcs, the fainter half), as model::residual_correlation measures it on the simulation's own
// noise there (image - model.fits, the truth's residuals), and the fit warns with the
// data.noise_scale that gives the right widths. Refitted with that noise_scale, the reduced
// chi-square falls by its square, map.json's noise_scale stays, and the warning goes. The same
// mock with independent noise: a sum ratio within 4 standard errors of 1 and no warning. 64x64
// pixels, so that the quiet pixels are well above the 400 the warning needs.
TEST(FitCommand, CorrelatedNoiseIsMeasuredAndWarnedOfWithTheNoiseScaleThatWidensThePosterior) {
  const std::string dir = dslens::testing::temp_dir("fit_correlated_noise");
  const auto has_warning = [](const std::string& fit) {
    for (const auto& w : read_json(fit + "/warnings.json")) {
      if (w.get<std::string>().find("the noise is correlated between neighbouring pixels") !=
          std::string::npos)
        return true;
    }
    return false;
  };
  double suggested = 0.0;
  for (const double fwhm : {0.0, 1.5}) {
    json sim = mock_config(21, 0.9);
    sim["grid"] = {{"nx", 64}, {"ny", 64}, {"pixel_scale", 0.05}};
    sim["noise"]["correlation_fwhm"] = fwhm;
    const std::string name = fwhm > 0 ? "corr" : "white";
    write_json(dir + "/" + name + "-sim.json", sim);
    RunResult r = run_dslens("simulate " + quote(dir + "/" + name + "-sim.json") + " --out " +
                             quote(dir + "/" + name + "-data"));
    ASSERT_EQ(r.code, 0) << r.output;
    json c = fit_config(dir + "/" + name + "-data");
    c["map"]["retry_rounds"] = 0;
    write_json(dir + "/" + name + ".json", c);
    r = short_fit(dir + "/" + name + ".json", dir + "/" + name + "-fit");
    ASSERT_EQ(r.code, 0) << r.output;
    const json nc = read_json(dir + "/" + name + "-fit/map.json").at("noise_correlation");
    const json faint = nc.at("quiet");
    ASSERT_GE(faint.at("pixels").get<int64_t>(), 400) << nc.dump();
    // The truth's residuals over the same pixels.
    const auto image = dslens::read_fits_image(dir + "/" + name + "-data/image.fits");
    const auto model = dslens::read_fits_image(dir + "/" + name + "-data/model.fits");
    const auto sigma = dslens::read_fits_image(dir + "/" + name + "-data/noise_map.fits");
    // Off the arcs (the noise-free image is the lensed source alone), the fainter half.
    const auto off_arcs = model < 0.1 * sigma;
    const auto truth_faint = off_arcs & (model <= model.masked_select(off_arcs).median());
    const auto truth = dslens::model::residual_correlation((image - model) / sigma, truth_faint);
    const double ratio = faint.at("sum_ratio").get<double>();
    // The exported model's noise block carries the simulation's own correlation (none: no key).
    const json exported = read_json(dir + "/" + name + "-fit/map_model/simulate.json");
    if (fwhm == 0.0) {
      EXPECT_NEAR(ratio, 1.0, 4 * faint.at("sum_ratio_se_if_independent").get<double>())
          << nc.dump();
      EXPECT_FALSE(has_warning(dir + "/white-fit")) << nc.dump() << "\n" << r.output;
      EXPECT_FALSE(exported.at("noise").contains("correlation_fwhm")) << exported.at("noise");
      continue;
    }
    EXPECT_EQ(exported.at("noise").value("correlation_fwhm", 0.0), fwhm) << exported.at("noise");
    // The kernel whose noise has the measured lag-1 correlation is the simulation's.
    EXPECT_NEAR(faint.at("kernel_fwhm").get<double>(), fwhm, 0.2) << nc.dump();
    EXPECT_GT(truth.sum_ratio, 3.0);  // strongly correlated: the test can tell
    EXPECT_NEAR(ratio, truth.sum_ratio, 0.15 * truth.sum_ratio) << nc.dump();
    EXPECT_NEAR(faint.at("rho_x").get<double>(), truth.rho_x, 0.08) << nc.dump();
    suggested = faint.at("noise_scale").get<double>();
    EXPECT_NEAR(suggested, truth.noise_scale, 0.1 * truth.noise_scale) << nc.dump();
    EXPECT_TRUE(has_warning(dir + "/corr-fit")) << r.output;
    bool names_scale = false;
    for (const auto& w : read_json(dir + "/corr-fit/warnings.json")) {
      char text[64];
      std::snprintf(text, sizeof text, "data.noise_scale %.3g", suggested);
      names_scale = names_scale || w.get<std::string>().find(text) != std::string::npos;
    }
    EXPECT_TRUE(names_scale) << r.output;
  }
  ASSERT_GT(suggested, 1.5);
  // Refitted with the suggested scale, from the FITS files (no truth.json: the exported model's
  // noise correlation is then the one measured, and its noise the config's background_rms and
  // exposure_time; a Poisson term of 1e-9 of the sky's variance leaves sigma the noise map's).
  json c = read_json(dir + "/corr.json");
  const std::string data = dir + "/corr-data/";
  c["data"] = {{"image", {{"fits", data + "image.fits"}}},
               {"background_rms", 0.2},
               {"exposure_time", 1e9},
               {"psf", {{"fits", data + "psf.fits"}}},
               {"pixel_scale", 0.05},
               {"noise_scale", suggested}};
  c["map"]["retry_rounds"] = 1;  // so that the search's rounds judge the chi-square (below)
  write_json(dir + "/scaled.json", c);
  const RunResult r = short_fit(dir + "/scaled.json", dir + "/scaled-fit");
  ASSERT_EQ(r.code, 0) << r.output;
  const json before = read_json(dir + "/corr-fit/map.json");
  const json after = read_json(dir + "/scaled-fit/map.json");
  EXPECT_NEAR(after.at("reduced_chi_square").get<double>() * suggested * suggested,
              before.at("reduced_chi_square").get<double>(), 0.05)
      << after.dump();
  EXPECT_NEAR(after.at("noise_correlation").at("quiet").at("noise_scale").get<double>(), suggested,
              0.05 * suggested);
  EXPECT_FALSE(has_warning(dir + "/scaled-fit")) << r.output;
  const json measured = after.at("noise_correlation").at("quiet");
  const json exported = read_json(dir + "/scaled-fit/map_model/simulate.json").at("noise");
  EXPECT_NEAR(exported.value("correlation_fwhm", 0.0), 1.5, 0.2) << exported;
  EXPECT_EQ(exported.value("background_rms", 0.0), 0.2) << exported;
  EXPECT_EQ(exported.value("exposure_time", 0.0), 1e9) << exported;
  EXPECT_EQ(exported.value("correlation_fwhm", 0.0), measured.at("kernel_fwhm").get<double>());
  // The catalogue's noise columns: the scale used, the one suggested, the sum ratio.
  const auto table = read_csv(dir + "/scaled-fit/catalogue.csv");
  ASSERT_EQ(table.size(), 2u);
  const auto cell = [&table](const std::string& name) {
    const auto it = std::find(table[0].begin(), table[0].end(), name);
    EXPECT_NE(it, table[0].end()) << name;
    return it == table[0].end() ? NAN : std::stod(table[1][it - table[0].begin()]);
  };
  EXPECT_NEAR(cell("noise_scale"), suggested, 1e-9);
  EXPECT_NEAR(cell("noise_scale_suggested"), measured.at("noise_scale").get<double>(), 1e-8);
  EXPECT_NEAR(cell("noise_sum_ratio"), measured.at("sum_ratio").get<double>(), 1e-8);
  // The goodness of fit is judged with the noise as given: map.json keeps the reduced chi-square
  // before the scale, no warning calls the noise overestimated, and the MAP's search rounds
  // compare the unscaled value with their threshold (the log's list).
  EXPECT_DOUBLE_EQ(after.at("noise_scale").get<double>(), suggested);
  EXPECT_NEAR(after.at("reduced_chi_square_before_noise_scale").get<double>(),
              before.at("reduced_chi_square").get<double>(), 0.05);
  EXPECT_FALSE(before.contains("reduced_chi_square_before_noise_scale"));
  for (const auto& w : read_json(dir + "/scaled-fit/warnings.json")) {
    EXPECT_EQ(w.get<std::string>().find("reduced chi-square"), std::string::npos) << w;
  }
  // map.json's bins stay the fit's own (the scaled sigma's): a mean square near 1 / s^2.
  for (const auto& b : after.at("residuals_by_brightness").at("bins")) {
    EXPECT_NEAR(b.at("mean_square").get<double>() * suggested * suggested, 1.0, 0.6) << b;
  }
  const std::string within = "leaves a reduced chi-square within its threshold ([";
  const std::string log = read_text(dir + "/scaled-fit/fit.log");
  const auto at = log.find(within);
  ASSERT_NE(at, std::string::npos) << log;
  EXPECT_NEAR(std::stod(log.substr(at + within.size())),
              before.at("reduced_chi_square").get<double>(), 0.05)
      << log.substr(at, 200);
  // summary.json and summary.txt say which scale the widths include (the unscaled fit: none).
  EXPECT_DOUBLE_EQ(read_json(dir + "/scaled-fit/summary.json").at("noise_scale").get<double>(),
                   suggested);
  EXPECT_DOUBLE_EQ(read_json(dir + "/corr-fit/summary.json").at("noise_scale").get<double>(), 1.0);
  char scale_text[64];
  std::snprintf(scale_text, sizeof scale_text, "data.noise_scale %g (", suggested);
  const std::string scaled_summary = read_text(dir + "/scaled-fit/summary.txt");
  EXPECT_NE(scaled_summary.find(scale_text), std::string::npos) << scaled_summary;
  EXPECT_NE(scaled_summary.find("with sigma as given, before data.noise_scale"), std::string::npos)
      << scaled_summary;
  const std::string unscaled_summary = read_text(dir + "/corr-fit/summary.txt");
  EXPECT_EQ(unscaled_summary.find("sigma times data.noise_scale"), std::string::npos);
  EXPECT_EQ(unscaled_summary.find("before data.noise_scale)"), std::string::npos);

  // "noise_scale": "auto" does the two fits' work in one: the factor measured at the MAP with
  // sigma as given is the first fit's suggestion (the same MAP), the kept optima are optimised
  // again with it and the chains sample the scaled posterior, so that the outputs are the scaled
  // fit's (within that fit's own MAP search, which started again from prior draws).
  // dir/NAME.json with "auto", fitted into dir/NAME-auto-fit: its map.json.
  const auto fit_auto = [&dir](const std::string& name) {
    json c = read_json(dir + "/" + name + ".json");
    c["data"]["noise_scale"] = "auto";
    write_json(dir + "/" + name + "-auto.json", c);
    const RunResult r = short_fit(dir + "/" + name + "-auto.json", dir + "/" + name + "-auto-fit");
    EXPECT_EQ(r.code, 0) << r.output;
    return r.code == 0 ? read_json(dir + "/" + name + "-auto-fit/map.json") : json::object();
  };
  const json automatic = fit_auto("corr");
  ASSERT_TRUE(automatic.contains("noise_scale_auto")) << automatic;
  const json record = automatic.at("noise_scale_auto");
  const double factor = record.at("factor").get<double>();
  EXPECT_TRUE(record.at("significant").get<bool>()) << record;
  EXPECT_NEAR(factor, suggested, 0.02 * suggested) << record;
  EXPECT_DOUBLE_EQ(record.at("noise_scale").get<double>(), factor);
  EXPECT_DOUBLE_EQ(automatic.at("noise_scale").get<double>(), factor);
  EXPECT_NE(automatic.at("origin").get<std::string>().find("optimised again with sigma x"),
            std::string::npos)
      << automatic.at("origin");
  EXPECT_NEAR(automatic.at("reduced_chi_square").get<double>() * factor * factor,
              before.at("reduced_chi_square").get<double>(), 0.05)
      << automatic.dump();
  EXPECT_NEAR(automatic.at("noise_correlation").at("quiet").at("noise_scale").get<double>(), factor,
              0.05 * factor);
  for (const std::string name : {"theta_E_lens0", "e1_lens0", "e2_lens0"}) {
    EXPECT_NEAR(automatic.at("parameters").at(name).get<double>(),
                after.at("parameters").at(name).get<double>(), 0.01)
        << name;
  }
  EXPECT_FALSE(has_warning(dir + "/corr-auto-fit"));
  EXPECT_DOUBLE_EQ(read_json(dir + "/corr-auto-fit/summary.json").at("noise_scale").get<double>(),
                   factor);
  const std::string auto_summary = read_text(dir + "/corr-auto-fit/summary.txt");
  EXPECT_NE(auto_summary.find("(\"auto\": measured on the MAP's residuals)"), std::string::npos)
      << auto_summary;
  // Interrupted after warmup and resumed, the same draws: the measurement is repeated from the
  // MAP checkpoint, the second optimisation read from its own.
  const std::string args =
      " --out " + quote(dir + "/auto-resumed") + " --warmup 30 --draws 30 --chains 1";
  ASSERT_EQ(
      run_dslens("fit " + quote(dir + "/corr-auto.json") + args + " --stop-after warmup").code, 0);
  EXPECT_TRUE(fs::exists(dir + "/auto-resumed/checkpoint/batch0-map-noise-scaled.pt"));
  const RunResult rr = run_dslens("fit " + quote(dir + "/corr-auto.json") + args + " --resume");
  ASSERT_EQ(rr.code, 0) << rr.output;
  EXPECT_EQ(read_json(dir + "/auto-resumed/summary.json").at("parameters"),
            read_json(dir + "/corr-auto-fit/summary.json").at("parameters"));
  EXPECT_EQ(read_json(dir + "/auto-resumed/map.json").at("noise_scale_auto"), record);
  // A white-noise lens's "auto" leaves sigma as given (its correlation is not significant).
  const json white_auto = fit_auto("white");
  ASSERT_TRUE(white_auto.contains("noise_scale_auto")) << white_auto;
  EXPECT_FALSE(white_auto.at("noise_scale_auto").at("significant").get<bool>()) << white_auto;
  EXPECT_EQ(white_auto.at("noise_scale_auto").at("factor").get<double>(), 1.0);
  EXPECT_FALSE(white_auto.contains("noise_scale")) << white_auto;
  EXPECT_EQ(white_auto.at("origin").get<std::string>().find("optimised again"), std::string::npos);
  // In one batch with a lens whose sigma is given, each lens keeps its own: the correlated one
  // scaled by its own measurement, the other as given.
  const RunResult rb =
      run_dslens("fit " + quote(dir + "/corr-auto.json") + " " + quote(dir + "/white.json") +
                 " --out " + quote(dir + "/batch") + " --warmup 30 --draws 30 --chains 1");
  ASSERT_EQ(rb.code, 0) << rb.output;
  const json batched = read_json(dir + "/batch/corr-auto/map.json");
  EXPECT_NEAR(batched.at("noise_scale_auto").at("factor").get<double>(), suggested,
              0.02 * suggested);
  EXPECT_DOUBLE_EQ(batched.at("noise_scale").get<double>(),
                   batched.at("noise_scale_auto").at("factor").get<double>());
  const json given = read_json(dir + "/batch/white/map.json");
  EXPECT_FALSE(given.contains("noise_scale") || given.contains("noise_scale_auto")) << given;
  EXPECT_EQ(read_json(dir + "/batch/corr-auto/summary.json").at("lenses_in_batch"), 2);
  fs::remove_all(dir);
}

// FITS data with a celestial WCS (an HST image's RA and Dec): the fit's data, model and residual
// images keep it, CRPIX moved by the cut-out, so that a viewer overlays them on the sky, and carry
// the fit's own x, y (arcsec) as the alternate WCS "A"; the pixel scale comes from the CD matrix.
TEST(FitCommand, FitImagesKeepTheDataSkyCoordinatesThroughACutout) {
  const std::string dir = dslens::testing::temp_dir("fit_sky_wcs");
  const std::string cfg = make_mock(dir, "a", 21, 0.9);
  const double p = 0.1 / 3600.0, t = 30.0 * M_PI / 180.0;
  const std::vector<dslens::FitsCard> sky = {{"CTYPE1", std::string("RA---TAN"), ""},
                                             {"CTYPE2", std::string("DEC--TAN"), ""},
                                             {"CRVAL1", 217.5, ""},
                                             {"CRVAL2", 41.1, ""},
                                             {"CRPIX1", 10.0, ""},
                                             {"CRPIX2", 20.0, ""},
                                             {"CD1_1", -p * std::cos(t), ""},
                                             {"CD1_2", p * std::sin(t), ""},
                                             {"CD2_1", p * std::sin(t), ""},
                                             {"CD2_2", p * std::cos(t), ""},
                                             {"RADESYS", std::string("ICRS"), ""}};
  dslens::write_fits_image(dir + "/a-data/sky.fits",
                           dslens::read_fits_image(dir + "/a-data/image.fits"), sky);
  json c = read_json(cfg);
  // Columns 2..29 and rows 3..28 of the 32 x 32 image: the cut-out's centre is the image's.
  c["data"] = {{"image", "../a-data/sky.fits"},
               {"background_rms", 0.2},
               {"exposure_time", 1e12},
               {"psf", {{"fwhm", 0.12}}},
               {"cutout", {{"center", {16, 16}}, {"size", {28, 26}}}}};
  c["map"]["retry_rounds"] = 0;
  write_json(dir + "/configs/sky.json", c);
  const RunResult r = short_fit(dir + "/configs/sky.json", dir + "/fit");
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* image : {"data", "model", "residuals"}) {
    SCOPED_TRACE(image);
    const auto h = dslens::read_fits_header(dir + "/fit/" + image + ".fits");
    const auto number = [&h](const std::string& key) { return std::stod(h.at(key)); };
    EXPECT_EQ(h.at("CTYPE1"), "RA---TAN");
    EXPECT_EQ(h.at("CTYPE2"), "DEC--TAN");
    EXPECT_EQ(h.at("RADESYS"), "ICRS");
    EXPECT_DOUBLE_EQ(number("CRVAL1"), 217.5);
    EXPECT_DOUBLE_EQ(number("CRVAL2"), 41.1);
    EXPECT_DOUBLE_EQ(number("CRPIX1"), 10.0 - 2);
    EXPECT_DOUBLE_EQ(number("CRPIX2"), 20.0 - 3);
    EXPECT_NEAR(number("CD1_1"), -p * std::cos(t), 1e-18);
    EXPECT_NEAR(number("CD2_1"), p * std::sin(t), 1e-18);
    EXPECT_NEAR(dslens::fits_pixel_scale(h)->arcsec, 0.1, 1e-12);
    // The fit's frame: pixel (1, 1) at x = -(28 - 1) / 2 x 0.1", y = -(26 - 1) / 2 x 0.1".
    EXPECT_EQ(h.at("WCSNAMEA"), "DSLENS");
    EXPECT_EQ(h.at("CUNIT1A"), "arcsec");
    EXPECT_NEAR(number("CDELT1A"), 0.1, 1e-12);
    EXPECT_NEAR(number("CRVAL1A"), -1.35, 1e-12);
    EXPECT_NEAR(number("CRVAL2A"), -1.25, 1e-12);
    EXPECT_DOUBLE_EQ(number("CRPIX1A"), 1.0);
    EXPECT_EQ(h.count("CDELT1"), 0u);  // the primary WCS is the sky's alone
  }
  // The sky's fit is the mock's: the lens where it was simulated.
  const json map = read_json(dir + "/fit/map.json");
  EXPECT_NEAR(map.at("parameters").at("theta_E_lens0").get<double>(), 0.9, 0.02) << map.dump();
  // Its centre, fixed at the grid's origin, is the whole image's FITS pixel (16.5, 16.5): its RA
  // and Dec through the whole image's WCS (core/sky_position.h), in map.json and the catalogue.
  const auto want = dslens::tan_sky_position(sky, 16.5, 16.5);
  ASSERT_TRUE(want);
  const json centre = map.at("sky").at("lens_center");
  EXPECT_NEAR(centre.at("ra").get<double>(), want->ra, 1e-10) << centre;
  EXPECT_NEAR(centre.at("dec").get<double>(), want->dec, 1e-10) << centre;
  // Not the reference pixel's: 7.4 pixels away.
  EXPECT_GT(std::hypot((want->ra - 217.5) * std::cos(41.1 * M_PI / 180.0), want->dec - 41.1),
            7.0 * p);
  const RunResult rc =
      run_dslens("catalogue " + quote(dir + "/fit") + " --out " + quote(dir + "/cat.csv"), "");
  ASSERT_EQ(rc.code, 0) << rc.output;
  const auto table = read_csv(dir + "/cat.csv");
  ASSERT_EQ(table.size(), 2u);
  for (const auto& [column, value] :
       {std::pair{"ra_lens_center", want->ra}, std::pair{"dec_lens_center", want->dec}}) {
    const auto it = std::find(table[0].begin(), table[0].end(), column);
    ASSERT_NE(it, table[0].end()) << column;
    // The CSV's 10 significant digits: 1e-7 degrees, 0.4 mas.
    EXPECT_NEAR(std::stod(table[1][it - table[0].begin()]), value, 1e-7) << column;
  }
  fs::remove_all(dir);
}

// Measured image positions (data's "image_positions", model/image_positions.h): the images of the
// mock's source centre from its truth.json come back to one place through the MAP's lens
// (map.json's chi-square within 5 sd of its 2 (n - 1) degrees of freedom, no warning), while a
// "feature" of two points on one ray from the lens centre, 0.7" and 1.3" out, is warned of by its
// index: an SIE's deflection is the same all along a ray, so no SIE brings them closer than 0.6"
// (chi-square about 0.6^2 / (2 x 0.03^2) = 200), and they cannot pull the lens either. (A pair one
// round lens can join, the first true image and its mirror through the centre, did: the MAP's
// lens went round, and the true images' chi-square rose to 25.6.)
TEST(FitCommand, ImagePositionsAreFittedAndAFeatureTheLensCannotJoinIsWarnedOf) {
  const std::string dir = dslens::testing::temp_dir("fit_positions");
  const std::string cfg = make_mock(dir, "a", 21, 0.9);
  const json truth = read_json(dir + "/a-data/truth.json").at("image_positions");
  ASSERT_EQ(truth.size(), 1u) << truth.dump();
  const json images = truth[0].at("images");
  ASSERT_GE(images.size(), 2u) << truth.dump();
  const double ray = std::sqrt(0.5);
  json c = read_json(cfg);
  c["data"]["image_positions"] = {
      {{"images", images}, {"sigma", 0.02}},
      {{"images", {{-0.7 * ray, 0.7 * ray}, {-1.3 * ray, 1.3 * ray}}}, {"sigma", 0.03}}};
  write_json(cfg, c);
  const RunResult r = short_fit(cfg, dir + "/fit");
  ASSERT_EQ(r.code, 0) << r.output;
  const json map = read_json(dir + "/fit/map.json");
  const json features = map.at("image_positions").at("features");
  ASSERT_EQ(features.size(), 2u) << map.dump();
  const double n = static_cast<double>(images.size());
  EXPECT_EQ(features[0].at("images").get<double>(), n);
  EXPECT_EQ(features[0].at("dof").get<double>(), 2.0 * (n - 1.0));
  const double dof = 2.0 * (n - 1.0);
  EXPECT_LT(features[0].at("chi_square").get<double>(), dof + 5.0 * std::sqrt(2.0 * dof))
      << map.dump();
  EXPECT_GT(features[1].at("chi_square").get<double>(), 50.0) << map.dump();
  // The true images traced back (what report.png crosses on the source) land near the mock's
  // source centre (0.05, 0.02); the ray's two points stay 0.6" apart.
  for (const auto& b : features[0].at("traced_back")) {
    EXPECT_NEAR(b[0].get<double>(), 0.05, 0.02) << map.dump();
    EXPECT_NEAR(b[1].get<double>(), 0.02, 0.02) << map.dump();
  }
  const json ray_back = features[1].at("traced_back");
  ASSERT_EQ(ray_back.size(), 2u);
  EXPECT_NEAR(std::hypot(ray_back[0][0].get<double>() - ray_back[1][0].get<double>(),
                         ray_back[0][1].get<double>() - ray_back[1][1].get<double>()),
              0.6, 0.01);
  EXPECT_NEAR(map.at("parameters").at("theta_E_lens0").get<double>(), 0.9, 0.01);
  std::string joined;
  for (const auto& w : read_json(dir + "/fit/warnings.json")) joined += w.get<std::string>() + "\n";
  EXPECT_NE(joined.find("data/image_positions/1 back to one source position"), std::string::npos)
      << joined;
  EXPECT_EQ(joined.find("data/image_positions/0"), std::string::npos) << joined;
  // lenstronomy.json carries both features as LENSED_POSITION point sources of no light, with
  // lenstronomy's source_position_likelihood at the larger sigma, and says so.
  const json lt = read_json(dir + "/fit/map_model/lenstronomy.json");
  EXPECT_EQ(lt.at("point_source_model_list"), json({"LENSED_POSITION", "LENSED_POSITION"}));
  const json& ps = lt.at("kwargs_ps");
  ASSERT_EQ(ps.size(), 2u);
  for (size_t i = 0; i < images.size(); ++i) {
    EXPECT_EQ(ps[0].at("ra_image")[i], images[i][0]);
    EXPECT_EQ(ps[0].at("dec_image")[i], images[i][1]);
    EXPECT_EQ(ps[0].at("point_amp")[i], 0.0);
  }
  EXPECT_EQ(ps[1].at("ra_image"), json({-0.7 * ray, -1.3 * ray}));
  EXPECT_EQ(lt.at("kwargs_likelihood"),
            json({{"source_position_likelihood", true}, {"source_position_sigma", 0.03}}));
  EXPECT_NE(lt.at("notes").dump().find("range from 0.02 to 0.03, so the largest is written"),
            std::string::npos)
      << lt.at("notes").dump();
  fs::remove_all(dir);
}

// Chain rounds (app/fit_chains.h): chains started from raw prior draws and run without warmup
// end apart on lens "a" (mean log posteriors 74 nats apart) and together on "b" (4 nats). With
// the default sampler.retry_rounds, "a" alone is run again from its chains' best draw, optimised,
// and "b" keeps its first chains; a's second run is the same alone as in the batch.
TEST(FitCommand, ChainsThatEndApartRunAgainFromTheBestOptimum) {
  const std::string dir = dslens::testing::temp_dir("fit_chain_rounds");
  fs::create_directories(dir + "/alone");
  fs::create_directories(dir + "/once");
  make_raw_map_mocks(dir, [&dir](const std::string& name, json& c) {
    c["map"]["retry_rounds"] = 0;
    // The premise below (which lens's chains end apart) was found with the diagonal metric.
    c["sampler"] = {{"chains", 2},    {"warmup", 0}, {"draws", 20},
                    {"max_depth", 6}, {"seed", 3},   {"metric", "diag"}};
    if (name == "a") write_json(dir + "/alone/a.json", c);  // same relative data path
    json once = c;
    once["sampler"]["retry_rounds"] = 0;
    write_json(dir + "/once/" + name + ".json", once);
  });
  // Each chain's mean lp__ (the stats' first column) over its draws: [chains].
  const auto chain_means = [](const std::string& fit) {
    return dslens::read_npy(fit + "/stats.npy").select(-1, 0).mean(1);
  };
  const auto spread = [](const torch::Tensor& m) { return (m.max() - m.min()).item<double>(); };
  const RunResult once =
      run_dslens("fit " + quote(dir + "/once") + " --out " + quote(dir + "/fit_once"));
  ASSERT_EQ(once.code, 0) << once.output;
  // The test's premise: the first chains of "a" end apart, those of "b" do not (stray_nats 20).
  const torch::Tensor a_once = chain_means(dir + "/fit_once/a");
  ASSERT_GT(spread(a_once), 20.0) << a_once;
  ASSERT_LT(spread(chain_means(dir + "/fit_once/b")), 20.0);

  const RunResult rounds =
      run_dslens("fit " + quote(dir + "/configs") + " --out " + quote(dir + "/fit"), "info");
  ASSERT_EQ(rounds.code, 0) << rounds.output;
  EXPECT_NE(rounds.output.find("chain round 2 of 2: the chains of [\"a\"] ended"),
            std::string::npos)
      << rounds.output;
  EXPECT_EQ(read_json(dir + "/fit/a/stats.json")["settings"]["round"], 2);
  EXPECT_EQ(read_json(dir + "/fit/b/stats.json")["settings"]["round"], 1);
  // "b" keeps its first chains.
  EXPECT_TRUE(torch::equal(dslens::read_npy(dir + "/fit/b/draws.npy"),
                           dslens::read_npy(dir + "/fit_once/b/draws.npy")));
  // "a" starts again at an optimum above every draw of its first chains, and its chains now
  // end together; the MAP is at least as high as all its draws.
  const auto a_stats = dslens::read_npy(dir + "/fit/a/stats.npy").select(-1, 0);
  const auto a_first = dslens::read_npy(dir + "/fit_once/a/stats.npy").select(-1, 0);
  EXPECT_GT(a_stats.min().item<double>(), a_first.max().item<double>());
  EXPECT_LT(spread(chain_means(dir + "/fit/a")), 20.0);
  const json a_map = read_json(dir + "/fit/a/map.json");
  EXPECT_GE(a_map["log_posterior"].get<double>(), a_stats.max().item<double>() - 1e-6);
  // The second round of "a" alone: the same draws as in the batch.
  const RunResult alone =
      run_dslens("fit " + quote(dir + "/alone/a.json") + " --out " + quote(dir + "/fit_alone"));
  ASSERT_EQ(alone.code, 0) << alone.output;
  EXPECT_TRUE(torch::allclose(dslens::read_npy(dir + "/fit_alone/draws.npy"),
                              dslens::read_npy(dir + "/fit/a/draws.npy"), 1e-9, 1e-12));
  fs::remove_all(dir);
}

// The mock of the decoded-source tests: theta_E 1.0, e1 0.08, e2 -0.05, a PIXELATED source (144
// free pixels) and the given `map` settings (iteration counts added); fitted with a short NUTS.
// Returns the fit's output and its map.json, and checks that the best MAP optimum is the true lens
// with the data's reduced chi-square.
std::pair<RunResult, json> fit_pixelated_mock(const std::string& dir, json map) {
  const std::string cfg = make_mock(dir, "pix", 31, 1.0);
  json c = read_json(cfg);
  c["model"]["source"] = {{{"type", "PIXELATED"},
                           {"size", 12},
                           {"scale", 0.05},
                           {"sigma", 30.0},
                           {"center_x", prior("normal", 0.0, 0.2)},
                           {"center_y", prior("normal", 0.0, 0.2)}}};
  map.update({{"adam_iterations", 150},
              {"lbfgs_iterations", 60},
              {"source_adam_iterations", 150},
              {"source_lbfgs_iterations", 60}});
  c["map"] = map;
  write_json(cfg, c);
  const RunResult r = run_dslens(
      "fit " + quote(cfg) + " --out " + quote(dir + "/fit") + " --chains 2 --warmup 2 --draws 4",
      "info");
  EXPECT_EQ(r.code, 0) << r.output;
  if (r.code != 0) return {r, json()};
  const json result = read_json(dir + "/fit/map.json");
  EXPECT_FALSE(result.contains("truth"));  // a Sersic was simulated: no truth for 144 pixels
  const json& best = result["best_starts"][0];
  EXPECT_NEAR(best["theta_E_lens0"].get<double>(), 1.0, 0.03) << best.dump();
  EXPECT_NEAR(best["e1_lens0"].get<double>(), 0.08, 0.05) << best.dump();
  EXPECT_NEAR(best["e2_lens0"].get<double>(), -0.05, 0.05) << best.dump();
  const double chi2 = result["reduced_chi_square"].get<double>();
  EXPECT_LT(chi2, 1.1) << result.dump();
  EXPECT_GT(chi2, 0.8) << result.dump();
  return {r, result};
}

// A decoded source is fitted in three MAP stages: the lens placed with a Sersic stand-in source,
// the pixels fitted with that lens held, then everything (app/map_search.h). The MAP must land on
// the true lens. (Six lens names, i.e. six sets of starts: 6 of 6 land there with 8 starts, 5 of 6
// with 4; with "placement": "none" 1 of 6 with 8 starts, the others trading e2 for a pixel source
// that absorbs it; docs/fit.md; measured with as many placements as starts, before their default
// became 4 x starts.)
TEST(FitCommand, DecodedSourceMapPlacesTheLensWithASersicStandIn) {
  const std::string dir = dslens::testing::temp_dir("fit_placement");
  const auto [r, map] = fit_pixelated_mock(dir, {{"starts", 8}});
  EXPECT_NE(r.output.find("1/3 placement: lens with a Sersic stand-in"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("2/3 source"), std::string::npos) << r.output;
  // By default 4 x starts placements, ranked by the full model with the source pixels begun at
  // the data traced back through each placed lens; the best 8 go on.
  EXPECT_NE(r.output.find("from 32 prior draws"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("source of 32 of 32 starts begins at the data traced back"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("the best 8 of 32 placements per lens go on, ranked by the full model"),
            std::string::npos)
      << r.output;
  // The best 4 optima are polished by Newton steps (152 free parameters, under the 400 limit).
  EXPECT_NE(r.output.find("Newton polishing of the best 4 optima per lens"), std::string::npos)
      << r.output;
  // sigma 30 is of the order of the source's peak (about 110): the data prefer the MAP's source
  // about as bright as it is, and no prior is said to hold it down.
  const double scale = map.at("source_flux_scale_preferred_by_data").get<double>();
  EXPECT_GT(scale, 0.9) << map.dump();
  EXPECT_LT(scale, 1.2) << map.dump();
  EXPECT_EQ(r.output.find("a prior holds the source down"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

// The test mock fitted with a 12 x 12 PIXELATED source of extra keys `source` (sigma, ...; a null
// removes a key) and a short MAP from prior draws (no placement stage unless `map` says so),
// `sampler` the fit's options; fitted into dir/fit.
void fit_pixel_grid_mock(const std::string& dir, const json& source, const std::string& sampler,
                         const json& map = json::object()) {
  fs::create_directories(dir);
  const std::string cfg = make_mock(dir, "pix", 31, 1.0);
  json c = read_json(cfg);
  json grid = {{"type", "PIXELATED"}, {"size", 12}, {"scale", 0.05}};
  for (const auto& [key, value] : source.items()) {
    if (value.is_null()) {
      grid.erase(key);
    } else {
      grid[key] = value;
    }
  }
  c["model"]["source"] = {grid};
  c["map"] = {{"starts", 2},
              {"placement", "none"},
              {"adam_iterations", 100},
              {"lbfgs_iterations", 20},
              {"newton_iterations", 0},
              {"retry_rounds", 0}};
  c["map"].update(map);
  write_json(cfg, c);
  const RunResult r =
      run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/fit") + " " + sampler);
  ASSERT_EQ(r.code, 0) << r.output;
}

// A PIXELATED grid's extent follows the arcs (docs/fit.md, "A pixel grid's extent"). Placed on
// them (the default without scale or centre) it has no placement parameters and its side at the
// MAP is near the one that holds the arcs traced back through the MAP's lens (map.json's
// pixel_grid); so is a free one's, which the MAP starts there and the chains sample. A fixed grid
// 1.6 times as wide is warned of, with the scale that fits the arcs; the others are not.
TEST(FitCommand, APixelGridsExtentFollowsTheArcsAndAFixedWideOneIsWarnedOf) {
  const std::string dir = dslens::testing::temp_dir("fit_pixel_extent");
  const json placed = {{"placement", "sersic"}, {"placement_starts", 4}};
  double arcs = 0.0;
  for (const std::string placement : {"arcs", "free"}) {
    const std::string run = dir + "/" + placement;
    json source = {{"scale", nullptr}, {"sigma", 30.0}};
    if (placement == "free") source["placement"] = "free";
    ASSERT_NO_FATAL_FAILURE(
        fit_pixel_grid_mock(run, source, "--chains 2 --warmup 2 --draws 2", placed));
    const json map = read_json(run + "/fit/map.json");
    const double side = map.at("pixel_grid").at("side").get<double>();
    arcs = map.at("pixel_grid").at("arcs_side").get<double>();
    EXPECT_GT(side / arcs, 0.8) << placement << " " << map.at("pixel_grid").dump();
    EXPECT_LT(side / arcs, 1.25) << placement << " " << map.at("pixel_grid").dump();
    for (const auto& w : read_json(run + "/fit/warnings.json"))
      EXPECT_EQ(w.get<std::string>().find("PIXELATED grid's side"), std::string::npos) << w;
    // A free grid's scale and centre are sampled; one on the arcs has none.
    std::set<std::string> sampled;
    const json summary = read_json(run + "/fit/summary.json");
    for (const auto& p : summary.at("parameters"))
      sampled.insert(p.at("variable").get<std::string>());
    for (const std::string name :
         {"scale_source_light0", "center_x_source_light0", "center_y_source_light0"}) {
      EXPECT_EQ(sampled.count(name), placement == "free" ? 1u : 0u)
          << placement << ": " << name << " in " << json(sampled).dump();
    }
  }

  const double wide = 1.6 * arcs / 12.0;
  ASSERT_NO_FATAL_FAILURE(fit_pixel_grid_mock(dir + "/wide", {{"scale", wide}, {"sigma", 30.0}},
                                              "--chains 2 --warmup 2 --draws 2", placed));
  std::string found;
  for (const auto& w : read_json(dir + "/wide/fit/warnings.json"))
    if (w.get<std::string>().find("PIXELATED grid's side") != std::string::npos)
      found = w.get<std::string>();
  EXPECT_NE(found.find("its coarse pixels favour lenses that enlarge the source"),
            std::string::npos)
      << found;
  const auto at = found.find("set it to about ");
  ASSERT_NE(at, std::string::npos) << found;
  const double suggested = std::stod(found.substr(at + 16));
  const double arcs_wide = read_json(dir + "/wide/fit/map.json").at("pixel_grid").at("arcs_side");
  EXPECT_NEAR(suggested, arcs_wide / 12.0, 0.01 * arcs_wide / 12.0) << found;
  EXPECT_NEAR(arcs_wide, arcs, 0.15 * arcs);
  fs::remove_all(dir);
}

// A grid on the arcs traces the data less a lens light fixed at the MAP search's best optimum
// (model/arcs_placement.h), which --resume after the MAP must fix again the same way: the test
// mock with a lens-light Sersic of free amplitude, fitted whole and in two (--stop-after map, then
// --resume), gives the same draws. With each draw's own lens light the resumed chains would differ.
TEST(FitCommand, APixelGridOnTheArcsResumesWithTheSameLensLight) {
  const std::string dir = dslens::testing::temp_dir("fit_pixel_arcs_resume");
  fs::create_directories(dir + "/configs");
  json sim = mock_config(41, 1.0);
  sim["lens_light"] = {{{"type", "SERSIC"},
                        {"amp", 8.0},
                        {"R_sersic", 0.5},
                        {"n_sersic", 2.0},
                        {"center_x", 0.0},
                        {"center_y", 0.0}}};
  write_json(dir + "/lit-sim.json", sim);
  const RunResult simulated =
      run_dslens("simulate " + quote(dir + "/lit-sim.json") + " --out " + quote(dir + "/lit-data"));
  ASSERT_EQ(simulated.code, 0) << simulated.output;
  json c = fit_config("../lit-data");
  c["model"]["lens_light"] = {{{"type", "SERSIC"},
                               {"amp", prior("lognormal", std::log(8.0), 0.5)},
                               {"R_sersic", 0.5},
                               {"n_sersic", 2.0},
                               {"center_x", 0.0},
                               {"center_y", 0.0}}};
  c["model"]["source"] = {{{"type", "PIXELATED"}, {"size", 10}, {"sigma", 30.0}}};
  c["map"] = {{"starts", 2},
              {"placement", "sersic"},
              {"placement_starts", 4},
              {"adam_iterations", 60},
              {"lbfgs_iterations", 20},
              {"newton_iterations", 0},
              // A second search round whatever the fit (app/map_rounds.h): each round traces its
              // own grid, and the lens keeps the one of the round that gave its best optimum.
              {"retry_rounds", 1},
              {"retry_reduced_chi_square", 0.01}};
  c["sampler"] = {{"chains", 2}, {"warmup", 20}, {"draws", 20}, {"max_depth", 5}, {"seed", 5}};
  const std::string cfg = dir + "/configs/lit.json";
  write_json(cfg, c);
  const RunResult whole =
      run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/whole"), "info");
  ASSERT_EQ(whole.code, 0) << whole.output;
  const json map = read_json(dir + "/whole/map.json");
  ASSERT_TRUE(map.contains("pixel_grid")) << map.dump();
  EXPECT_FALSE(map.at("parameters").contains("scale_source_light0")) << map.dump();
  EXPECT_NE(whole.output.find("round 2 of 2"), std::string::npos) << whole.output;
  const RunResult stop =
      run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/split") + " --stop-after map");
  ASSERT_EQ(stop.code, 0) << stop.output;
  // Resumed from the MAP's checkpoint ("split") and from the first round's ("rounds": the MAP's
  // removed, so the second round runs again).
  fs::copy(dir + "/split", dir + "/rounds", fs::copy_options::recursive);
  ASSERT_TRUE(fs::remove(dir + "/rounds/checkpoint/batch0-map.pt"));
  ASSERT_TRUE(fs::exists(dir + "/rounds/checkpoint/batch0-map-round1.pt"));
  for (const std::string run : {"split", "rounds"}) {
    const RunResult resumed =
        run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/" + run) + " --resume", "info");
    ASSERT_EQ(resumed.code, 0) << resumed.output;
    if (run == "rounds") {
      EXPECT_NE(resumed.output.find("MAP: resumed after round 1"), std::string::npos)
          << resumed.output;
    }
    const auto a = dslens::read_npy(dir + "/whole/draws.npy");
    const auto b = dslens::read_npy(dir + "/" + run + "/draws.npy");
    ASSERT_EQ(a.sizes(), b.sizes());
    EXPECT_TRUE(torch::allclose(a, b, 1e-9, 1e-12)) << run;
    EXPECT_EQ(read_json(dir + "/" + run + "/map.json").at("log_posterior").get<double>(),
              map.at("log_posterior").get<double>())
        << run;
  }
  // map.json records the lens light the grid was traced from: the free amplitude, the same after
  // --resume.
  const json traced = map.at("pixel_grid").value("lens_light_traced_from", json());
  ASSERT_TRUE(traced.is_object() && traced.contains("amp_lens_light0")) << map.dump();
  EXPECT_EQ(traced.size(), 1u) << traced.dump();
  EXPECT_GT(traced.at("amp_lens_light0").get<double>(), 0.0);
  for (const std::string run : {"split", "rounds"})
    EXPECT_EQ(
        read_json(dir + "/" + run + "/map.json").at("pixel_grid").at("lens_light_traced_from"),
        traced)
        << run;
  // Traced once, from the best placement's lens light (app/map_search.h), not re-fixed at the
  // joint stage's optimum: the MAP's amplitude moved on from it.
  EXPECT_GT(std::abs(traced.at("amp_lens_light0").get<double>() /
                         map.at("parameters").at("amp_lens_light0").get<double>() -
                     1.0),
            1e-6)
      << map.dump();
  // The outputs' posterior, built again, gives the MAP the fit's log posterior (its grid traced
  // from the chains' lens light): no "internal inconsistency" warning.
  for (const std::string run : {"whole", "split", "rounds"})
    for (const auto& w : read_json(dir + "/" + run + "/warnings.json"))
      EXPECT_EQ(w.get<std::string>().find("internal inconsistency"), std::string::npos) << w;
  fs::remove_all(dir);
}

// A free pixel grid whose prior sd per pixel is far below the source's surface brightness cannot
// reach the data. The prior then dominates every pixel (the MAP's pixels sit near 2 sd whatever
// sigma is, 0.02 to 2 here), so the pixels' own values cannot tell; the likelihood along the MAP's
// lensed source can: it peaks at a source many times brighter. The fit names the cause and the
// sigma to try, besides the chi-square.
TEST(FitCommand, WarnsWhenAPriorHoldsTheSourceDown) {
  const std::string dir = dslens::testing::temp_dir("fit_pixel_prior");
  ASSERT_NO_FATAL_FAILURE(
      fit_pixel_grid_mock(dir, {{"sigma", 0.2}}, "--chains 2 --warmup 2 --draws 2"));
  const json map = read_json(dir + "/fit/map.json");
  const double scale = map.at("source_flux_scale_preferred_by_data").get<double>();
  EXPECT_GT(scale, 10.0) << map.dump();
  std::string found;
  for (const auto& w : read_json(dir + "/fit/warnings.json"))
    if (w.get<std::string>().find("holds the source down") != std::string::npos)
      found = w.get<std::string>();
  EXPECT_NE(found.find("the PIXELATED source's prior (sigma 0.2 per pixel, in surface "
                       "brightness) is too narrow; set /model/source/0/sigma to about "),
            std::string::npos)
      << found;
  // The suggested sigma: the source's peak surface brightness is about 110.
  const auto at = found.find("to about ");
  ASSERT_NE(at, std::string::npos);
  const double suggested = std::stod(found.substr(at + 9));
  EXPECT_GT(suggested, 20.0) << found;
  EXPECT_LT(suggested, 1000.0) << found;
  fs::remove_all(dir);
}

// The same mock with the grid's strength free (curvature regularisation, sigma's prior median the
// 0.2 that held the source down above): the source reaches the data's brightness, and the MAP's
// sigma, at the evidence's maximum for its lens (there is no finite joint mode in non-centred
// coordinates, docs/fit.md "Pixel grids"), lies in sigma's posterior (13.8 +- 2.4 in 4 x 300
// draws), which the chains find.
TEST(FitCommand, FreePixelSigmaReachesTheDataAndNutsFindsItsPosterior) {
  const std::string dir = dslens::testing::temp_dir("fit_pixel_strength");
  ASSERT_NO_FATAL_FAILURE(fit_pixel_grid_mock(
      dir,
      {{"regularisation", "curvature"},
       {"sigma", {{"prior", "lognormal"}, {"mu", std::log(0.2)}, {"sigma", 5.0}}}},
      "--chains 2 --warmup 100 --draws 50"));
  const json map = read_json(dir + "/fit/map.json");
  const double scale = map.at("source_flux_scale_preferred_by_data").get<double>();
  EXPECT_GT(scale, 0.8) << map.dump();
  EXPECT_LT(scale, 1.25) << map.dump();
  for (const auto& w : read_json(dir + "/fit/warnings.json"))
    EXPECT_EQ(w.get<std::string>().find("holds the source down"), std::string::npos) << w;
  double median = NAN;
  const json summary = read_json(dir + "/fit/summary.json");
  for (const auto& p : summary.at("parameters"))
    if (p.at("variable") == "sigma_source_light0") median = p.at("q50").get<double>();
  EXPECT_GT(median, 5.0);
  EXPECT_LT(median, 40.0);
  // The MAP reports sigma at its evidence's maximum for the MAP's lens, where the chains start
  // (the joint mode's sigma runs up until its prior stops it: 3,018 in session 47, against a
  // posterior of 13.8 +- 2.4).
  const double at_map = map.at("parameters").at("sigma_source_light0").get<double>();
  EXPECT_LT(std::abs(std::log(at_map / median)), 0.4) << at_map << " against " << median;
  const std::string log = read_text(dir + "/fit/fit.log");
  EXPECT_NE(log.find("sigma_source_light0 at the maximum of its evidence times its prior"),
            std::string::npos)
      << log;
  fs::remove_all(dir);
}

// "metric": "auto" is dense up to 2,048 free parameters (kDenseMetricMaxDimension), diagonal
// above: a 21 x 21 PIXELATED grid (441 pixels and the lens's 3, above the Hessian limit of 400
// that was also the metric's until session 46) gets the dense one, a 46 x 46 grid (2,119) the
// diagonal one. stats.json says which ran; the fits themselves are a few iterations.
TEST(FitCommand, AutoMetricIsDenseUpTo2048FreeParameters) {
  const std::string dir = dslens::testing::temp_dir("fit_auto_metric");
  const std::string cfg = make_mock(dir, "pix", 31, 1.0);
  for (const auto& [size, expected] : {std::pair<int, std::string>{21, "dense"}, {46, "diag"}}) {
    json c = read_json(cfg);
    c["model"]["source"] = {
        {{"type", "PIXELATED"}, {"size", size}, {"scale", 0.05}, {"sigma", 30.0}}};
    c["map"] = {{"starts", 1},           {"placement", "none"},    {"adam_iterations", 5},
                {"lbfgs_iterations", 0}, {"newton_iterations", 0}, {"retry_rounds", 0}};
    c["sampler"] = {
        {"chains", 2}, {"warmup", 2}, {"draws", 2}, {"max_depth", 3}, {"retry_rounds", 0}};
    write_json(cfg, c);
    const std::string out = dir + "/fit" + std::to_string(size);
    const RunResult r = run_dslens("fit " + quote(cfg) + " --out " + quote(out));
    ASSERT_EQ(r.code, 0) << r.output;
    const json stats = read_json(out + "/stats.json");
    EXPECT_EQ(stats.dump().find("\"metric\":\"" + expected + "\"") != std::string::npos, true)
        << size << ": " << stats.dump().substr(0, 2000);
  }
  fs::remove_all(dir);
}

// Newton's polish on a pixel grid above the differencing limit: a 21 x 21 grid with a free
// strength is 445 free parameters, of which the Hessian differences only the lens's 3 and sigma
// (the pixel block is known in closed form) and each step holds sigma, along which the posterior
// in whitened pixels has no maximum. From a short L-BFGS the polish must raise the log posterior,
// and the optima it leaves must be the ones reported.
TEST(FitCommand, NewtonPolishesAPixelGridAboveTheDifferencingLimit) {
  const std::string dir = dslens::testing::temp_dir("fit_pixel_newton");
  const std::string cfg = make_mock(dir, "pix", 31, 1.0);
  json c = read_json(cfg);
  c["model"]["source"] = {{{"type", "PIXELATED"},
                           {"size", 21},
                           {"scale", 0.05},
                           {"sigma", prior("lognormal", std::log(30.0), 1.0)}}};
  c["map"] = {{"starts", 2},
              {"placement", "none"},
              {"adam_iterations", 30},
              {"lbfgs_iterations", 10},
              {"newton_iterations", 8},
              {"newton_starts", 2},
              {"retry_rounds", 0}};
  write_json(cfg, c);
  const RunResult r = run_dslens(
      "fit " + quote(cfg) + " --out " + quote(dir + "/fit") + " --stop-after map", "info");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string polish = "MAP: Newton polishing of the best 2 optima per lens in ";
  const size_t at = r.output.find(polish);
  ASSERT_NE(at, std::string::npos) << r.output;
  const std::string line = r.output.substr(at, r.output.find('\n', at) - at);
  EXPECT_NE(line.find("the pixel grid's Hessian block in closed form, 4 coordinates differenced, "
                      "sigma_source_light0 held"),
            std::string::npos)
      << line;
  // "best log posterior per lens [before] -> [after]"
  const size_t open1 = line.find('[', line.find("best log posterior per lens"));
  const size_t open2 = line.find('[', line.find("->"));
  ASSERT_NE(open1, std::string::npos) << line;
  ASSERT_NE(open2, std::string::npos) << line;
  const double before = std::stod(line.substr(open1 + 1));
  const double after = std::stod(line.substr(open2 + 1));
  EXPECT_GT(after, before + 1.0) << line;
  fs::remove_all(dir);
}

// The same mock through both MAP options: 2 starts for the source and joint stages, taken from 16
// placements, and the likelihood annealed (noise x2 for the first stages, then x1), and one search
// round forced by a threshold no fit meets, which places the lens from twice as many draws
// (app/map_search.h). It must still end on the true lens with the data's reduced chi-square. (This
// mock is easy enough that even the 2 worst placements get there, checked by hand; the choice of
// the best (by the full model, the pixels solved exactly for each placement) is tested in
// Optimize.BestRowsPerGroupKeepsEachGroupsBestInOrder, the tempering in
// LensPosterior.NoiseScaledPosteriorTempersTheLikelihood.)
TEST(FitCommand, DecodedSourceMapKeepsTheBestPlacementsAndEndsOnTheDataNoise) {
  const std::string dir = dslens::testing::temp_dir("fit_anneal");
  const auto [r, map] = fit_pixelated_mock(dir, {{"starts", 2},
                                                 {"placement_starts", 16},
                                                 {"anneal_noise", json::array({2.0})},
                                                 {"retry_rounds", 1},
                                                 {"retry_reduced_chi_square", 0.01}});
  EXPECT_NE(r.output.find("from 16 prior draws"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("the best 2 go on"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("the best 2 of 16 placements per lens go on, ranked by the full model "
                          "with the pixels solved"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("round 2 of 2: 1 of 1 lens(es)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("the best 2 of 32 placements per lens go on, ranked by the full model"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("noise multiplied by 2"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

// The outputs' MAP is the highest optimum known: when the MAP search ends below the mode that the
// chains sample (here it does not optimise at all: its one start is a prior draw), the chains'
// best draw, optimised by L-BFGS, replaces it in map.json and the images made from it.
TEST(FitCommand, ChainsBestDrawReplacesAMapBelowTheirMode) {
  const std::string dir = dslens::testing::temp_dir("fit_chains_mode");
  const std::string cfg = make_mock(dir, "raw", 17, 1.0);
  json c = read_json(cfg);
  c["map"] = {
      {"starts", 1}, {"adam_iterations", 0}, {"lbfgs_iterations", 0}, {"newton_iterations", 0}};
  write_json(cfg, c);
  const RunResult r = run_dslens(
      "fit " + quote(cfg) + " --out " + quote(dir + "/fit") + " --chains 2 --warmup 80 --draws 20",
      "info");
  ASSERT_EQ(r.code, 0) << r.output;
  const json map = read_json(dir + "/fit/map.json");
  EXPECT_EQ(map["origin"], "the chains' best draw, optimised by L-BFGS") << map.dump();
  const double lp = map["log_posterior"].get<double>();
  EXPECT_GT(lp, map["map_search_log_posterior"].get<double>() + 1.0) << map.dump();
  // At least as high as every draw (lp__ is the stats' first column), and at the data's noise.
  const auto stats = dslens::read_npy(dir + "/fit/stats.npy");
  EXPECT_GE(lp, stats.select(-1, 0).max().item<double>() - 1e-6);
  EXPECT_NEAR(map["reduced_chi_square"].get<double>(), 1.0, 0.15) << map.dump();
  EXPECT_NEAR(map["parameters"]["theta_E_lens0"].get<double>(), 1.0, 0.03) << map.dump();
  EXPECT_NE(r.output.find("the chains' best draw, optimised, is"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

// A VAE source goes from `dslens simulate` to `dslens fit` unchanged: the fit's posterior scores
// the simulation's truth (lens, latents, centre, scale, amplitude) at a reduced chi-square of 1,
// with noise so small (peak SNR about 3000) that any difference between the two commands'
// source models (interpolation, flux normalisation, stamp placement) shows. As a check that it
// would show: fitted as bilinear, the same truth's reduced chi-square must be far above 1.
TEST(FitCommand, VaeMockFromSimulateIsTheFitsModelAtTheTruth) {
  const std::string dir = dslens::testing::temp_dir("fit_vae_roundtrip");
  write_json(dir + "/vae.json", dslens::testing::tiny_vae_config());
  RunResult r =
      run_dslens("train-vae " + quote(dir + "/vae.json") + " --out " + quote(dir + "/vae"));
  ASSERT_EQ(r.code, 0) << r.output;
  const json source = {{"type", "VAE"},    {"checkpoint", "vae"}, {"z_seed", 4},
                       {"center_x", 0.04}, {"center_y", -0.03},   {"scale", 0.04},
                       {"amp", 20.0}};
  write_json(dir + "/sim.json", {{"grid", {{"nx", 32}, {"ny", 32}, {"pixel_scale", 0.08}}},
                                 {"psf", {{"fwhm", 0.12}}},
                                 {"mass",
                                  {{{"type", "EPL"},
                                    {"theta_E", 0.9},
                                    {"gamma", 2.1},
                                    {"e1", 0.06},
                                    {"e2", -0.04},
                                    {"center_x", 0.01},
                                    {"center_y", 0.0}},
                                   {{"type", "SHEAR"}, {"gamma1", 0.02}, {"gamma2", -0.01}}}},
                                 {"source", {source}},
                                 {"noise", {{"background_rms", 3e-4}, {"exposure_time", 0.0}}},
                                 {"seed", 11}});
  r = run_dslens("simulate " + quote(dir + "/sim.json") + " --out " + quote(dir + "/mock"));
  ASSERT_EQ(r.code, 0) << r.output;

  const auto truth_chi2 = [&](const std::string& name, const json& interpolation) {
    json src = {{"type", "VAE"},
                {"checkpoint", "../vae"},
                {"center_x", prior("normal", 0.0, 0.2)},
                {"center_y", prior("normal", 0.0, 0.2)},
                {"scale", prior("lognormal", std::log(0.04), 0.3)},
                {"amp", prior("lognormal", std::log(20.0), 1.0)}};
    if (!interpolation.is_null()) src["interpolation"] = interpolation;
    fs::create_directories(dir + "/configs");
    const std::string cfg = dir + "/configs/" + name + ".json";
    write_json(cfg, {{"data", {{"simulation", "../mock"}}},
                     {"model",
                      {{"mass",
                        {{{"type", "EPL"},
                          {"theta_E", prior("uniform", 0.5, 1.5)},
                          {"gamma", prior("uniform", 1.6, 2.5)},
                          {"e1", prior("uniform", -0.3, 0.3)},
                          {"e2", prior("uniform", -0.3, 0.3)},
                          {"center_x", prior("uniform", -0.2, 0.2)},
                          {"center_y", prior("uniform", -0.2, 0.2)}},
                         {{"type", "SHEAR"},
                          {"gamma1", prior("uniform", -0.1, 0.1)},
                          {"gamma2", prior("uniform", -0.1, 0.1)}}}},
                       {"source", {src}}}},
                     {"map",
                      {{"placement", "none"},
                       {"starts", 2},
                       {"adam_iterations", 2},
                       {"lbfgs_iterations", 0},
                       {"newton_iterations", 0}}}});
    const RunResult f = run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/" + name) +
                                   " --chains 2 --warmup 2 --draws 2");
    EXPECT_EQ(f.code, 0) << f.output;
    const json map = read_json(dir + "/" + name + "/map.json");
    EXPECT_TRUE(map.contains("truth")) << map.dump();
    return map.value("truth", json::object()).value("reduced_chi_square", -1.0);
  };
  // 1024 pixels: the reduced chi-square of pure noise has sd sqrt(2 / 1024) = 0.044.
  EXPECT_NEAR(truth_chi2("bicubic", json()), 1.0, 0.2);
  EXPECT_GT(truth_chi2("bilinear", "bilinear"), 10.0);
  // The fit says why (summary.json's data_warnings): the simulation read its stamp bicubically.
  const auto data_warnings = [&](const std::string& name) {
    return read_json(dir + "/" + name + "/summary.json").at("data_warnings").dump();
  };
  EXPECT_EQ(data_warnings("bicubic"), "[]");
  EXPECT_NE(data_warnings("bilinear")
                .find("the simulation read its VAE source 0 with interpolation bicubic but "
                      "/model/source/0/interpolation is bilinear"),
            std::string::npos)
      << data_warnings("bilinear");

  // The MAP model exported (app/model_export.h): `dslens simulate` of map_model/simulate.json
  // makes the fit's model image again (the decoded stamp, its placement, the PSF kernel and every
  // lens parameter travel through the files), and lenstronomy.json holds the same model in
  // lenstronomy's kwargs.
  for (const std::string name : {"bicubic", "bilinear"}) {
    const std::string exported = dir + "/" + name + "/map_model";
    const RunResult sim = run_dslens("simulate " + quote(exported + "/simulate.json") + " --out " +
                                     quote(dir + "/remodel-" + name));
    ASSERT_EQ(sim.code, 0) << sim.output;
    const auto fitted = dslens::read_fits_image(dir + "/" + name + "/model.fits");
    const auto again = dslens::read_fits_image(dir + "/remodel-" + name + "/model.fits");
    ASSERT_EQ(fitted.sizes(), again.sizes());
    const double peak = fitted.abs().max().item<double>();
    EXPECT_GT(peak, 0.0);
    // The fit computes in float32, simulate in float64.
    EXPECT_LT((fitted - again).abs().max().item<double>(), 1e-4 * peak) << name;

    const json lt = read_json(exported + "/lenstronomy.json");
    const json params = read_json(dir + "/" + name + "/map.json")["parameters"];
    EXPECT_EQ(lt["lens_model_list"], json({"EPL", "SHEAR"}));
    const json& epl = lt["kwargs_lens"][0];
    EXPECT_EQ(epl.size(), 6u) << epl.dump();
    for (const std::string p : {"theta_E", "gamma", "e1", "e2", "center_x", "center_y"}) {
      EXPECT_NEAR(epl.at(p).get<double>(), params.at(p + "_lens0").get<double>(), 1e-12) << p;
    }
    EXPECT_NEAR(lt["kwargs_lens"][1].at("gamma1").get<double>(),
                params.at("gamma1_lens1").get<double>(), 1e-12);
    // lenstronomy interpolates stamps bilinearly only: a bicubic fit says its image differs.
    EXPECT_EQ(lt["source_light_model_list"], json({"INTERPOL"}));
    EXPECT_EQ(lt["notes"].size(), name == "bicubic" ? 1u : 0u) << lt["notes"].dump();
    const json& src = lt["kwargs_source"][0];
    for (const std::string p : {"center_x", "center_y", "scale", "amp"}) {
      EXPECT_NEAR(src.at(p).get<double>(), params.at(p + "_source_light0").get<double>(), 1e-12)
          << p;
    }
    // The stamp: lenstronomy's array[row][col] with row = y, as the FITS file beside it.
    const auto stamp = dslens::read_fits_image(exported + "/source0.fits");
    ASSERT_EQ(src["image"].size(), static_cast<size_t>(stamp.size(0)));
    for (int64_t i = 0; i < stamp.size(0); i += 5) {
      for (int64_t j = 0; j < stamp.size(1); j += 3) {
        EXPECT_EQ(src["image"][i][j].get<double>(), stamp[i][j].item<double>()) << i << "," << j;
      }
    }
    EXPECT_GT(stamp.sum().item<double>(), 0.0);
    // The grid: 32 pixels of 0.08" centred on (0, 0), pixel (0, 0) at -15.5 pixels.
    EXPECT_NEAR(lt["kwargs_data"]["ra_at_xy_0"].get<double>(), -1.24, 1e-12);
    EXPECT_NEAR(lt["kwargs_data"]["dec_at_xy_0"].get<double>(), -1.24, 1e-12);
    EXPECT_EQ(lt["kwargs_data"]["transform_pix2angle"], json({{0.08, 0.0}, {0.0, 0.08}}));
    // The fit's FITS images carry the same grid as a linear WCS in arcsec, from which a fit of
    // them takes its pixel scale.
    const auto header = dslens::read_fits_header(dir + "/" + name + "/data.fits");
    const auto scale = dslens::fits_pixel_scale(header);
    ASSERT_TRUE(scale.has_value());
    EXPECT_DOUBLE_EQ(scale->arcsec, 0.08);
    EXPECT_NE(scale->from.find("CDELT1"), std::string::npos) << scale->from;
    EXPECT_NEAR(std::stod(header.at("CRVAL1")), -1.24, 1e-12);
    EXPECT_NEAR(std::stod(header.at("CRVAL2")), -1.24, 1e-12);
    const auto psf = dslens::read_fits_image(exported + "/psf.fits");
    EXPECT_NEAR(psf.sum().item<double>(), 1.0, 1e-12);
    EXPECT_EQ(lt["kwargs_psf"]["kernel_point_source"].size(), static_cast<size_t>(psf.size(0)));
  }
  fs::remove_all(dir);
}

// The mock of the --init tests (theta_E 1.0) in dir, its MAP's optimisers off; the config's path.
std::string make_unoptimised_mock(const std::string& dir) {
  const std::string cfg = make_mock(dir, "mock", 11, 1.0);
  json c = read_json(cfg);
  c["map"] = {
      {"starts", 4}, {"adam_iterations", 0}, {"lbfgs_iterations", 0}, {"newton_iterations", 0}};
  write_json(cfg, c);
  return cfg;
}

// Each edit of `start`'s "parameters", given to `dslens fit cfg --init`, is refused with exit code
// 2 and its message, and nothing is written.
void expect_init_refused(
    const std::string& cfg, const std::string& dir, const json& start,
    const std::vector<std::pair<std::function<void(json&)>, std::string>>& bad) {
  for (const auto& [edit, message] : bad) {
    json p = start;
    edit(p["parameters"]);
    write_json(dir + "/bad.json", p);
    const RunResult r = run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/o") +
                                   " --init " + quote(dir + "/bad.json"));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find(message), std::string::npos) << message << "\n" << r.output;
    EXPECT_FALSE(fs::exists(dir + "/o"));
  }
}

constexpr const char* kShortRun = " --chains 1 --warmup 10 --draws 10";

// --init: the MAP starts at the truth or at a file's point instead of searching. With the
// optimisers off the MAP is that point exactly; with them on, a start off the truth climbs to the
// truth's mode; a file that misnames, omits or misplaces a parameter is refused before anything
// is written.
TEST(FitCommand, InitStartsTheMapAtTheGivenPoint) {
  const std::string dir = dslens::testing::temp_dir("fit_init");
  const std::string cfg = make_unoptimised_mock(dir);
  json c = read_json(cfg);

  // map.json's "best_starts" are the MAP stage's optima (its MAP may be the chains' best draw).
  const auto start_of = [](const json& map) { return map["best_starts"][0]; };
  RunResult r = run_dslens(
      "fit " + quote(cfg) + " --out " + quote(dir + "/truth") + " --init truth" + kShortRun,
      "info");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("from the given start (--init)"), std::string::npos) << r.output;
  const json at_truth = read_json(dir + "/truth/map.json");
  EXPECT_EQ(at_truth["best_starts"].size(), 1u);
  EXPECT_EQ(at_truth["search_rounds"], 0);  // no search
  EXPECT_NEAR(start_of(at_truth)["log_posterior"].get<double>(),
              at_truth["truth"]["log_posterior"].get<double>(), 1e-6);
  EXPECT_NEAR(start_of(at_truth)["theta_E_lens0"].get<double>(), 1.0, 1e-9);
  EXPECT_NEAR(start_of(at_truth)["center_x_source_light0"].get<double>(), 0.05, 1e-9);

  // A start written as a map.json, theta_E moved off the truth.
  json start = {{"parameters", start_of(at_truth)}};
  start["parameters"].erase("log_posterior");
  start["parameters"]["theta_E_lens0"] = 1.04;
  write_json(dir + "/start.json", start);
  r = run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/file") + " --init " +
                 quote(dir + "/start.json") + kShortRun);
  ASSERT_EQ(r.code, 0) << r.output;
  const json at_file = read_json(dir + "/file/map.json");
  EXPECT_NEAR(start_of(at_file)["theta_E_lens0"].get<double>(), 1.04, 1e-9);
  EXPECT_NEAR(start_of(at_file)["amp_source_light0"].get<double>(),
              start_of(at_truth)["amp_source_light0"].get<double>(), 1e-6);
  EXPECT_LT(start_of(at_file)["log_posterior"].get<double>(),
            start_of(at_truth)["log_posterior"].get<double>() - 1.0);

  // The same start optimised: L-BFGS and Newton climb to the truth's mode.
  c["map"]["lbfgs_iterations"] = 60;
  c["map"].erase("newton_iterations");
  write_json(cfg, c);
  r = run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/climbed") + " --init " +
                 quote(dir + "/start.json") + kShortRun);
  ASSERT_EQ(r.code, 0) << r.output;
  const json climbed = read_json(dir + "/climbed/map.json");
  EXPECT_GE(start_of(climbed)["log_posterior"].get<double>(),
            at_truth["truth"]["log_posterior"].get<double>());
  EXPECT_NEAR(start_of(climbed)["theta_E_lens0"].get<double>(), 1.0, 0.01);

  // Refused, naming why, with nothing written.
  expect_init_refused(
      cfg, dir, start,
      {{[](json& p) { p["theta_E_lens9"] = 1.0; }, "'theta_E_lens9' is not a parameter"},
       {[](json& p) { p.erase("e1_lens0"); }, "no value for the free parameter(s) e1_lens0"},
       {[](json& p) { p["theta_E_lens0"] = 2.0; }, "'theta_E_lens0' lies outside"},
       {[](json& p) { p["e2_lens0"] = "small"; }, "'e2_lens0' is \"small\""}});
  r = run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/o") + " --init " +
                 quote(dir + "/none.json"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("no such file"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir + "/o"));
  r = run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/o") + " --init " +
                 quote(dir + "/configs"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("a folder without map.json"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir + "/o"));

  // A sky level the file lacks starts at 0, no sky: the start's model image is the file's, so
  // with the optimisers off its log posterior is the file's plus the sky prior's log density at 0
  // (normal(0, 10): -log(10 sqrt(2 pi)) = -3.2215).
  json sky = read_json(cfg);
  sky["map"] = {
      {"starts", 4}, {"adam_iterations", 0}, {"lbfgs_iterations", 0}, {"newton_iterations", 0}};
  sky["model"]["lens_light"] = {{{"type", "UNIFORM"}, {"amp", prior("normal", 0.0, 10.0)}}};
  write_json(dir + "/configs/sky.json", sky);
  r = run_dslens("fit " + quote(dir + "/configs/sky.json") + " --out " + quote(dir + "/sky") +
                     " --init " + quote(dir + "/start.json") + kShortRun,
                 "info");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("'amp_lens_light0', a sky level, not given: it starts at 0"),
            std::string::npos)
      << r.output;
  const json at_sky = read_json(dir + "/sky/map.json");
  EXPECT_NEAR(start_of(at_sky)["amp_lens_light0"].get<double>(), 0.0, 1e-9);
  EXPECT_NEAR(
      start_of(at_sky)["log_posterior"].get<double>(),
      start_of(at_file)["log_posterior"].get<double>() - std::log(10.0 * std::sqrt(2 * M_PI)),
      1e-6);
  fs::remove_all(dir);
}

// --init with a parametric source's map.json seeds a pixel grid's fit: the grid's pixels and
// sigma, which the file lacks, are solved for its lens before the optimisers move it, and its
// Sersic source's parameters are set aside. With the optimisers off the MAP keeps the file's lens
// and the solved grid fits the data (pixels left at their prior's median, a blank source, would
// leave the arcs in the residuals); a file that misnames or omits a lens parameter is still
// refused.
TEST(FitCommand, InitSeedsAPixelGridFromAFitWithAParametricSource) {
  const std::string dir = dslens::testing::temp_dir("fit_init_pixel");
  const std::string cfg = make_unoptimised_mock(dir);
  json c = read_json(cfg);
  RunResult r = run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/sersic") +
                           " --init truth" + kShortRun);
  ASSERT_EQ(r.code, 0) << r.output;
  const json sersic = read_json(dir + "/sersic/map.json");
  ASSERT_TRUE(sersic["parameters"].contains("amp_source_light0")) << sersic.dump();

  c["model"]["source"] = {{{"type", "PIXELATED"},
                           {"size", 12},
                           {"scale", 0.05},
                           {"sigma", prior("lognormal", std::log(30.0), 1.0)}}};
  const std::string pix = dir + "/configs/pix.json";
  write_json(pix, c);
  // The fit's folder stands for its map.json.
  r = run_dslens("fit " + quote(pix) + " --out " + quote(dir + "/pix") + " --init " +
                     quote(dir + "/sersic") + kShortRun,
                 "info");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("145 coordinate(s) of the pixel grid not given, solved for the start's "
                          "lens; its source parameters (R_sersic_source_light0, amp_source_light0"),
            std::string::npos)
      << r.output;
  // Solved at the start, before L-BFGS: the start's log posterior rises from a blank source's.
  const std::string solved_at = "MAP (--init) start: sigma_source_light0 at the maximum";
  const auto at = r.output.find(solved_at);
  ASSERT_NE(at, std::string::npos) << r.output;
  const auto line = r.output.substr(at, r.output.find('\n', at) - at);
  const auto from = line.rfind("log posterior [");
  ASSERT_NE(from, std::string::npos) << line;
  const double before = std::stod(line.substr(from + 15));
  const double after = std::stod(line.substr(line.rfind("-> [") + 4));
  EXPECT_GT(after, before + 100.0) << line;
  const json map = read_json(dir + "/pix/map.json");
  const json& best = map["best_starts"][0];
  for (const std::string p : {"theta_E_lens0", "e1_lens0", "e2_lens0"}) {
    EXPECT_NEAR(best[p].get<double>(), sersic["parameters"][p].get<double>(), 1e-9) << p;
  }
  const double chi2 = map["reduced_chi_square"].get<double>();
  EXPECT_GT(chi2, 0.8) << map.dump();
  EXPECT_LT(chi2, 1.1) << map.dump();

  expect_init_refused(
      pix, dir, sersic,
      {{[](json& p) { p["theta_E_lens9"] = 1.0; }, "'theta_E_lens9' is not a parameter"},
       {[](json& p) { p.erase("e1_lens0"); }, "no value for the free parameter(s) e1_lens0"}});
  fs::remove_all(dir);
}

// --init with the folder of a fit of several lenses starts each lens from its own sub-folder's
// map.json (a catalogue's grid configs from the same catalogue's Sersic fits); a lens the folder
// has no fit of is refused, naming the lenses it has, and so is one file for several lenses.
TEST(FitCommand, InitFromAFitOfSeveralLensesStartsEachFromItsOwn) {
  const std::string dir = dslens::testing::temp_dir("fit_init_lenses");
  make_raw_map_mocks(dir, [](const std::string&, json&) {});
  RunResult r = run_dslens("fit " + quote(dir + "/configs") + " --out " + quote(dir + "/first") +
                           " --init truth" + kShortRun);
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_dslens("fit " + quote(dir + "/configs") + " --out " + quote(dir + "/again") + " --init " +
                 quote(dir + "/first") + kShortRun);
  ASSERT_EQ(r.code, 0) << r.output;
  // Each lens's start (the optimisers are off) is its own first fit's MAP (map.json's
  // "parameters"); their theta_E are near 0.9 and 1.1, so neither took the other's.
  for (const auto& [lens, theta_e] :
       {std::pair{std::string("a"), 0.9}, std::pair{std::string("b"), 1.1}}) {
    const json first = read_json(dir + "/first/" + lens + "/map.json")["parameters"];
    const json again = read_json(dir + "/again/" + lens + "/map.json")["best_starts"][0];
    for (const std::string p : {"theta_E_lens0", "e1_lens0", "amp_source_light0"})
      EXPECT_NEAR(again[p].get<double>(), first[p].get<double>(), 1e-9) << lens << " " << p;
    EXPECT_NEAR(again["theta_E_lens0"].get<double>(), theta_e, 0.02) << lens;
  }

  fs::copy_file(dir + "/configs/b.json", dir + "/configs/c.json");
  r = run_dslens("fit " + quote(dir + "/configs") + " --out " + quote(dir + "/o") + " --init " +
                 quote(dir + "/first"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("for lens 'c': the folder has no fit of this lens (c/map.json); its "
                          "lenses: a, b"),
            std::string::npos)
      << r.output;
  r = run_dslens("fit " + quote(dir + "/configs") + " --out " + quote(dir + "/o") + " --init " +
                 quote(dir + "/first/a/map.json"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("give the folder of a fit of these lenses"), std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir + "/o"));
  fs::remove_all(dir);
}

// A model that samples the pixels unlike the simulation it fits is warned of (--check shows it
// beside the config; summary.json keeps it in data_warnings); the same supersampling is not.
TEST(FitCommand, CheckWarnsWhenTheModelSupersamplesUnlikeTheSimulation) {
  const std::string dir = dslens::testing::temp_dir("fit_supersampling");
  const std::string cfg = make_mock(dir, "m", 5, 1.0);  // simulated with supersampling 1
  RunResult r = run_dslens("fit " + quote(cfg) + " --check");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("warning"), std::string::npos) << r.output;
  json c = read_json(cfg);
  c["model"]["supersampling"] = 3;
  write_json(cfg, c);
  r = run_dslens("fit " + quote(cfg) + " --check");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("     warning: the simulation was made with supersampling 1 but "
                          "/model/supersampling is 3"),
            std::string::npos)
      << r.output;
  fs::remove_all(dir);
}

// The shipped configs of the real lens (docs/slacs.md) pass --check with the model they say: its
// data read from ../shared (wherever DSLENS_SHARED_DIR puts it), its free parameters counted.
TEST(FitCommand, ShippedSlacsConfigsPassTheCheck) {
  const std::string folder = dslens::testing::shared_dir() + "/data/lenses/slacs_j1430+4105";
  DSLENS_REQUIRE_FILE(folder + "/image.fits");
  const std::string dir = dslens::testing::temp_dir("fit_slacs_check");
  // EPL (4) + shear (2) + lens-light Sersic (7; the EPL's centre is tied to it) + the source:
  // a Sersic (7), or a 32 x 32 pixel grid placed on the arcs with its free strength (1,025); the
  // SIE of Bolton et al. has the EPL's slope fixed and no shear (3 fewer than the first); the
  // whole image's config adds a second, concentric Sersic (5) and a sky level (1).
  for (const auto& [name, free, shape] : std::vector<std::tuple<std::string, int, std::string>>{
           {"slacs_j1430+4105", 20, "140x140"},
           {"slacs_j1430+4105_sie", 17, "140x140"},
           {"slacs_j1430+4105_pixelated", 1038, "140x140"},
           {"slacs_j1430+4105_full", 26, "301x301"}}) {
    SCOPED_TRACE(name);
    json c = read_json(std::string(DSLENS_SOURCE_DIR) + "/configs/" + name + ".json");
    for (const char* file : {"image", "noise_map", "psf"}) {
      if (c["data"].contains(file)) c["data"][file]["fits"] = folder + "/" + file + ".fits";
    }
    const std::string cfg = dir + "/" + name + ".json";
    write_json(cfg, c);
    const RunResult r = run_dslens("fit " + quote(cfg) + " --check");
    EXPECT_EQ(r.code, 0) << r.output;
    // No data warning: the whole image's noise is rebuilt where the shared noise map's low
    // pixels would be warned about, and its Poisson term is the model's where the image's would
    // be warned about for the bias it gives the light (model/noise_estimate.h).
    EXPECT_EQ(r.output.find("warning:"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("ok   " + cfg + ": " + shape + " px (rows x columns) of 0.03\""),
              std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find(", " + std::to_string(free) + " free parameters; log posterior "),
              std::string::npos)
        << r.output;
  }
  fs::remove_all(dir);
}

// configs/euclid_like_fit.json and hst_like_fit.json fit the simulations of
// configs/euclid_like.json and hst_like.json, which they find at ../runs/<name>, where the README's
// commands write them:
// --check passes without a warning (the truths inside the priors, the simulations' supersampling)
// and gives the log posterior at the truth. A prior that excludes a truth or is centred far from
// it, and a parameter fixed elsewhere than its truth, are warned of with the parameter's JSON path
// (app/fit_config.cpp).
TEST(FitCommand, ShippedMockFitConfigsCheckOnTheirSimulations) {
  const std::string dir = dslens::testing::temp_dir("fit_shipped_mocks");
  const std::string configs = std::string(DSLENS_SOURCE_DIR) + "/configs/";
  fs::create_directories(dir + "/configs");
  for (const auto& [name, free] :
       std::vector<std::pair<std::string, int>>{{"euclid_like", 19}, {"hst_like", 24}}) {
    SCOPED_TRACE(name);
    RunResult r = run_dslens("simulate " + quote(configs + name + ".json") + " --out " +
                             quote(dir + "/runs/" + name));
    ASSERT_EQ(r.code, 0) << r.output;
    const std::string cfg = dir + "/configs/" + name + "_fit.json";
    fs::copy_file(configs + name + "_fit.json", cfg);
    r = run_dslens("fit " + quote(cfg) + " --check");
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(r.output.find("warning"), std::string::npos) << r.output;
    const std::string counted = ", " + std::to_string(free) + " free parameters; log posterior ";
    const auto at = r.output.find(counted);
    ASSERT_NE(at, std::string::npos) << r.output;
    const auto truth = r.output.find(" at the initial point, ", at);
    ASSERT_NE(truth, std::string::npos) << r.output;
    EXPECT_TRUE(std::isfinite(std::stod(r.output.substr(truth + 23)))) << r.output;
  }
  json c = read_json(dir + "/configs/euclid_like_fit.json");
  c["model"]["mass"][0]["theta_E"] = prior("uniform", 0.5, 1.5);       // the truth is 1.6
  c["model"]["lens_light"][0]["amp"] = prior("lognormal", -2.0, 1.0);  // and 40: 5.7 sd
  c["model"]["source"][0]["center_x"] = prior("normal", 0.0, 0.04);    // and 0.15: 3.75 sd
  c["model"]["lens_light"][0]["n_sersic"] = 3.0;                       // and 4
  write_json(dir + "/configs/priors.json", c);
  const RunResult r = run_dslens("fit " + quote(dir + "/configs/priors.json") + " --check");
  EXPECT_EQ(r.code, 0) << r.output;  // a warning: the config can be fitted
  EXPECT_NE(r.output.find("warning: the simulation's truth of theta_E_lens0 (/model/mass/0/"
                          "theta_E), 1.6 lies outside its prior's support (0.5, 1.5)"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("warning: the simulation's truth of amp_lens_light0 (/model/lens_light/"
                          "0/amp), 40 lies 5.7 prior sds above the prior's centre"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("truth of center_x_source_light0"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("warning: the simulation's truth of n_sersic_lens_light0 (/model/"
                          "lens_light/0/n_sersic) is 4, but the config fixes it at 3"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("free parameters; log posterior "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(" at the initial point, the truth outside the priors"), std::string::npos)
      << r.output;
  fs::remove_all(dir);
}

TEST(FitCommand, BadInputExitsTwoAndWritesNothing) {
  const std::string dir = dslens::testing::temp_dir("fit_bad");
  const std::string cfg = make_mock(dir, "m", 5, 1.0);
  // Each edit of a good config must be refused (exit 2, nothing written) with these words.
  const std::vector<std::pair<std::function<void(json&)>, std::vector<std::string>>> bad = {
      {[](json& j) { j["model"]["mass"][0]["theta_e"] = 1.0; },  // misspelt
       {"/model/mass/0", "theta_e"}},
      {[](json& j) {
         j["model"]["mass"][0]["theta_E"] = {{"prior", "uniform"}, {"lower", 2.0}, {"upper", 1.0}};
       },
       {"/model/mass/0/theta_E"}},
      {[](json& j) { j["data"]["simulation"] = "../nowhere"; }, {"/data/simulation"}},
      {[](json& j) { j["map"]["placement"] = "ring"; }, {"/map/placement", "ring"}},
      {[](json& j) {
         j["map"]["anneal_noise"] = {2.0, 5.0};
       },
       {"/map/anneal_noise", "decreasing"}},
      {[](json& j) { j["map"]["anneal_noise"] = {0.5}; }, {"/map/anneal_noise/0", "0.5"}},
      {[](json& j) { j["map"]["placement_starts"] = -3; }, {"/map/placement_starts", "-3"}},
      {[](json& j) { j["map"]["backproject"] = "yes"; }, {"/map/backproject", "yes"}},
      {[](json& j) { j["map"]["newton_iterations"] = -1; }, {"/map/newton_iterations", "-1"}},
      {[](json& j) { j["map"]["newton_starts"] = 0; }, {"/map/newton_starts", "0"}},
      {[](json& j) { j["sampler"]["cuda_graphs"] = "on"; }, {"/sampler/cuda_graphs", "on"}},
      {[](json& j) { j["sampler"]["adaptation"] = "pooled"; },
       {"/sampler/adaptation", "pooled", "per_lens"}},
      {[](json& j) { j["sampler"]["curvature_metric"] = 1; }, {"/sampler/curvature_metric", "1"}},
      {[](json& j) {
         j["model"]["source"][0] = {{"type", "UNIFORM"}, {"amp", 1.0}};
       },
       {"/model/source/0/type", "UNIFORM", "lens_light"}},
      {[](json& j) { j["data"]["poisson_term"] = "models"; }, {"/data/poisson_term", "models"}},
      {[](json& j) {
         j["data"]["poisson_term"] = "model";
         j["model"]["source"][0] = {{"type", "PIXELATED"}, {"size", 8},       {"scale", 0.05},
                                    {"sigma", 30.0},       {"center_x", 0.0}, {"center_y", 0.0}};
       },
       {"/data/poisson_term", "PIXELATED", "/model/source/0"}},
  };
  RunResult r;
  for (size_t k = 0; k < bad.size(); ++k) {
    json c = read_json(cfg);
    bad[k].first(c);
    const std::string path = dir + "/configs/bad" + std::to_string(k) + ".json";
    write_json(path, c);
    r = run_dslens("fit " + quote(path) + " --out " + quote(dir + "/o"));
    EXPECT_EQ(r.code, 2) << r.output;
    for (const auto& words : bad[k].second)
      EXPECT_NE(r.output.find(words), std::string::npos) << words << "\n" << r.output;
    EXPECT_FALSE(fs::exists(dir + "/o"));
  }

  r = run_dslens("fit " + quote(cfg) + " --out " + quote(dir + "/o") + " --shard 2/2");
  EXPECT_EQ(r.code, 2) << r.output;

  // --check reads the whole folder and names every problem, with the good config's data, model and
  // log posterior at its initial point; nothing is fitted or written, and no --out is needed.
  r = run_dslens("fit " + quote(dir + "/configs") + " --check");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("ok   " + cfg +
                          ": 32x32 px (rows x columns) of 0.1\" (1024 fitted), "
                          "mass SIE; source SERSIC_ELLIPSE, 7 free parameters; log posterior "),
            std::string::npos)
      << r.output;
  for (size_t k = 0; k < bad.size(); ++k) {
    const std::string line = "BAD  " + dir + "/configs/bad" + std::to_string(k) + ".json: ";
    const auto at = r.output.find(line);
    ASSERT_NE(at, std::string::npos) << line << "\n" << r.output;
    const std::string rest = r.output.substr(at, r.output.find('\n', at) - at);
    for (const auto& words : bad[k].second)
      EXPECT_NE(rest.find(words), std::string::npos) << words << "\n" << rest;
  }
  EXPECT_NE(r.output.find(std::to_string(bad.size() + 1) + " config(s): 1 ready to fit (1 " +
                          "batch(es) of at most 64 lenses), " + std::to_string(bad.size()) +
                          " with problems"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir + "/o"));
  EXPECT_EQ(run_dslens("fit " + quote(cfg) + " --check").code, 0);
  fs::remove_all(dir);
}

TEST(MockStudyCommand, BadOptionsExitTwoNamingTheOption) {
  const std::string dir = dslens::testing::temp_dir("mock_study_bad");
  const std::string base = "mock-study --vae " + quote(dir) + " --out " + quote(dir + "/o");
  for (const auto& [option, named] : std::vector<std::pair<std::string, std::string>>{
           {"--metric euclid", "--metric 'euclid'"},
           {"--max-depth 0", "--max-depth"},
           {"--max-batch 0", "--max-batch"},
           {"--snr 0", "--snr level 0"},
           {"--placement-starts -4", "--placement-starts"},
           {"--anneal-snr -30", "--anneal-snr"}}) {
    const RunResult r = run_dslens(base + " " + option);
    EXPECT_EQ(r.code, 2) << option << "\n" << r.output;
    EXPECT_NE(r.output.find(named), std::string::npos) << option << "\n" << r.output;
  }
  // A folder without checkpoint.json is not a VAE.
  const RunResult r = run_dslens(base);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("is not a trained VAE"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir + "/o"));
  fs::remove_all(dir);
}

}  // namespace test_fit_detail

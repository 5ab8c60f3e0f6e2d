// The operator census of the benches (app/op_census.h), `bench simulate --cpu-kernels`, which
// sends CPU tensors down the tensor-op paths that CUDA tensors take, `bench sampler --count-ops`,
// and `bench fit`'s options.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "app/op_census.h"
#include "run_dslens.h"

namespace bench_test {

TEST(OpCensus, CountsTheOperatorsRunWhileAliveByName) {
  const auto a = torch::ones({3}), b = torch::full({3}, 2.0);
  const auto x = torch::ones({3}).requires_grad_(true);
  const auto y = (x * x).sum();
  {
    dslens::app::OpCensus census;
    const auto c = a + b;
    const auto d = c * b;
    EXPECT_EQ(census.count("aten::add"), 1);
    EXPECT_EQ(census.count("aten::mul"), 1);
    EXPECT_EQ(census.operators(), 2);
    // The backward pass's operators count too (MulBackward multiplies by the other factor).
    y.backward();
    EXPECT_GE(census.count("aten::mul"), 2);
    EXPECT_GT(census.operators(), 3);
  }
  // Nothing is counted between censuses; a new one starts from zero.
  const auto between = a - b;
  dslens::app::OpCensus census;
  EXPECT_EQ(census.operators(), 0);
  const auto e = a - b;
  EXPECT_EQ(census.count("aten::sub"), 1);
}

nlohmann::json bench_simulate(const std::string& kernels) {
  const auto r = dslens::testing::run_dslens(
      "bench simulate --device cpu --dtype float32 --batches 1 --min-time 0 --json --cpu-kernels " +
      kernels);
  EXPECT_EQ(r.code, 0) << r.output;
  return nlohmann::json::parse(r.output);
}

// Without the fused CPU kernels (EPL, INTERPOL) and with the direct PSF convolution, the same
// image costs several times the operators: the count a GPU pays in kernel launches.
TEST(BenchSimulate, CpuKernelsOffCountsTheGpuPathsOperators) {
  const auto on = bench_simulate("on"), off = bench_simulate("off");
  EXPECT_EQ(on["cpu_kernels"], "on");
  EXPECT_EQ(off["cpu_kernels"], "off");
  const auto ops_on = on["results"][0]["gradient_operators"].get<int64_t>();
  const auto ops_off = off["results"][0]["gradient_operators"].get<int64_t>();
  EXPECT_GT(ops_on, 100);
  EXPECT_GT(ops_off, 2 * ops_on) << ops_on << " " << ops_off;
  const auto bad = dslens::testing::run_dslens("bench simulate --cpu-kernels maybe");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.output.find("--cpu-kernels"), std::string::npos) << bad.output;
}

// --interpolation picks the source profile the bench times (bilinear by default: lenstronomy's
// INTERPOL, the figures of docs/benchmarks.md), and says so in the JSON.
TEST(BenchSimulate, InterpolationOptionSelectsTheSourceProfile) {
  const auto r = dslens::testing::run_dslens(
      "bench simulate --device cpu --dtype float32 --batches 1 --min-time 0 --json "
      "--interpolation bicubic");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["interpolation"], "bicubic");
  EXPECT_NE(j["setup"].get<std::string>().find("INTERPOL_BICUBIC 64x64"), std::string::npos)
      << j.dump();
  EXPECT_EQ(bench_simulate("on")["interpolation"], "bilinear");
  const auto bad = dslens::testing::run_dslens("bench simulate --interpolation nearest");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.output.find("--interpolation: 'nearest'"), std::string::npos) << bad.output;
}

TEST(BenchFit, BadSnrExitsTwoNamingTheOption) {
  for (const std::string v : {"-1", "-0.5"}) {
    const auto r = dslens::testing::run_dslens("bench fit --snr " + v);
    EXPECT_EQ(r.code, 2) << v << "\n" << r.output;
    EXPECT_NE(r.output.find("--snr must be a number >= 0"), std::string::npos) << r.output;
  }
}

TEST(BenchFit, BadStartsExitsTwoNamingTheOption) {
  const auto r = dslens::testing::run_dslens("bench fit --starts 0");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--starts must be >= 1, got 0"), std::string::npos) << r.output;
}

// Without --vae the bench builds the demo architecture with random weights, whose decoded stamps
// have no positive total flux: the bench must not ask for flux normalisation then (sessions 21 to
// 41 it did, and `dslens bench fit` without --vae stopped with a config error). A tiny mock, a
// few iterations: the figures are read back from the JSON.
TEST(BenchFit, RandomWeightsVaeRunsEndToEnd) {
  // --json: stdout is the JSON alone (the simulation's and the fit's "wrote ..." / "fitted ..."
  // lines came before it until session 46), so it parses whole.
  const auto r = dslens::testing::run_dslens_stdout(
      "bench fit --pixels 12 --starts 1 --chains 2 --warmup 2 --draws 3 --json --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j.at("lenses").get<int64_t>(), 1);
  EXPECT_EQ(j.at("pixels").get<int64_t>(), 12);
  EXPECT_GT(j.at("map_seconds").get<double>(), 0.0);
  EXPECT_GT(j.at("gradient_evaluations_per_second").get<double>(), 0.0);
  EXPECT_FALSE(j.contains("kept"));
}

// --map-start truth: the fit starts its MAP at the mock's truth (fit --init truth) and runs no
// search, so a GPU run can time NUTS on many lenses within its minutes.
TEST(BenchFit, MapStartTruthSkipsTheSearch) {
  const auto r = dslens::testing::run_dslens_stdout(
      "bench fit --pixels 12 --starts 1 --chains 2 --warmup 2 --draws 3 --map-start truth --keep "
      "--json --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j.at("map_start").get<std::string>(), "truth");
  const std::string dir = j.at("kept").get<std::string>();
  const auto map = nlohmann::json::parse(std::ifstream(dir + "/fit/map.json"));
  EXPECT_EQ(map.at("origin").get<std::string>(), "optimised from --init truth");
  EXPECT_EQ(map.at("search_rounds").get<int64_t>(), 0);
  // The divergences it prints are the fit's, after warmup.
  const auto summary = nlohmann::json::parse(std::ifstream(dir + "/fit/summary.json"));
  EXPECT_EQ(j.at("divergences_after_warmup").get<int64_t>(),
            summary.at("divergences").get<int64_t>());
  std::filesystem::remove_all(dir);
  EXPECT_EQ(dslens::testing::run_dslens("bench fit --map-start prior").code, 2);
}

TEST(BenchFit, BadInterpolationExitsTwoNamingTheOption) {
  const auto r = dslens::testing::run_dslens("bench fit --interpolation cubic");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--interpolation: expected bicubic or bilinear, got 'cubic'"),
            std::string::npos)
      << r.output;
}

// --count-ops: the operators NUTS dispatches per batched gradient besides the target's. With the
// diagonal metric nothing in a step loops over chains, so 64 chains cost about what 4 do (on a GPU
// each operator is a kernel launch whatever the batch).
TEST(BenchSampler, CountOpsGivesTheSamplersOwnOperatorsPerStep) {
  const auto r = dslens::testing::run_dslens(
      "bench sampler --device cpu --chains 4,64 --targets funnel --warmup 20 --draws 20 "
      "--count-ops --json");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output);
  ASSERT_EQ(j["results"].size(), 2u);
  const double at4 = j["results"][0]["sampler_ops_per_batched_gradient"].get<double>();
  const double at64 = j["results"][1]["sampler_ops_per_batched_gradient"].get<double>();
  // A leapfrog step alone updates momentum and position and sums the kinetic energy.
  EXPECT_GT(at4, 10.0);
  EXPECT_LT(at4, 1000.0);
  EXPECT_LT(at64, 1.5 * at4) << at4 << " " << at64;
  const auto bad = dslens::testing::run_dslens("bench sampler --metric full");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.output.find("--metric: expected diag or dense, got 'full'"), std::string::npos)
      << bad.output;
}

}  // namespace bench_test

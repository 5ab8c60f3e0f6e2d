// `dslens bench sampler`: NUTS throughput with Stan's warmup on a 100-d Gaussian with scales spread
// over four orders of magnitude and on Neal's funnel (non-centred, 10-d), for several chain counts:
// draws/s, gradient evaluations/s, bulk ESS/s and bulk ESS per gradient evaluation (min over
// coordinates), all over the sampling phase.
//
// Warmup and draws can be set per chain count. The defaults keep Stan's 1000 + 1000 for 4 and 64
// chains, and give 1024 chains 200 warmup iterations and 100 draws (102,400 draws in all): until
// the first metric update the Gaussian's identity metric needs ~10^4 leapfrog steps per U-turn, so
// every warmup iteration before it costs 2^max_depth - 1 = 1023 gradient evaluations per chain,
// about 10^8 per 1024 chains for Stan's 75 + 25 such iterations, over an hour on two CPU cores.
// A warmup shorter than 1000 scales Stan's windows (75 / 25 / 50) in proportion.
#include <spdlog/spdlog.h>

#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "command.h"
#include "dslens/core/errors.h"
#include "dslens/samplers/diagnostics.h"
#include "dslens/samplers/nuts.h"
#include "op_census.h"

namespace dslens::app {
namespace bench_sampler_detail {

using samplers::LogDensityFn;
using samplers::LogDensityValue;

struct Target {
  std::string name;
  int64_t dim;
  LogDensityFn fn;
};

Target gaussian_target(const Compute& compute) {
  const int64_t dim = 100;
  torch::Tensor sigma = torch::pow(10.0, torch::linspace(-2, 2, dim, compute.options()));
  torch::Tensor neg_precision = -1.0 / (sigma * sigma);
  return {"gaussian100", dim, [neg_precision](const torch::Tensor& q) {
            torch::Tensor g = q * neg_precision;
            return LogDensityValue{0.5 * (q * g).sum(1), g};
          }};
}

// v ~ N(0, 3^2), z ~ N(0, I_9); the funnel's x = exp(v / 2) z is a deterministic function.
Target funnel_target(const Compute& compute) {
  torch::Tensor neg_w = -torch::ones({10}, compute.options());
  neg_w[0] = -1.0 / 9.0;
  return {"funnel10", 10, [neg_w](const torch::Tensor& q) {
            torch::Tensor g = q * neg_w;
            return LogDensityValue{0.5 * (q * g).sum(1), g};
          }};
}

std::vector<int64_t> parse_list(const std::string& text, const std::string& flag) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      const long long v = std::stoll(item, &used);
      if (used != item.size() || v < 1 || v > 1000000) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      throw InvalidArgument(flag + ": '" + item + "' is not a count in 1..1000000");
    }
  }
  if (out.empty()) throw InvalidArgument(flag + ": expected a list like 4,64,1024");
  return out;
}

// One value for every chain count, or one per chain count.
std::vector<int64_t> per_chain_count(const std::string& text, const std::string& flag,
                                     size_t counts, int64_t min_value) {
  std::vector<int64_t> v;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      const long long x = std::stoll(item, &used);
      if (used != item.size() || x < min_value || x > 1000000) throw std::invalid_argument(item);
      v.push_back(x);
    } catch (const std::exception&) {
      throw InvalidArgument(flag + ": '" + item + "' is not a count in " +
                            std::to_string(min_value) + "..1000000");
    }
  }
  if (v.size() == 1) v.assign(counts, v[0]);
  if (v.size() != counts)
    throw InvalidArgument(flag + ": give one value or one per chain count (" +
                          std::to_string(counts) + ")");
  return v;
}

// Stan's windows (75 / 25 / 50 at 1000 warmup iterations) scaled to a shorter warmup, so the
// metric is re-estimated as often (5 slow windows doubling in length).
samplers::WindowSettings windows_for(int64_t warmup) {
  samplers::WindowSettings w;
  if (warmup >= 1000) return w;
  w.init_buffer = std::max<int64_t>(1, warmup * 75 / 1000);
  w.base_window = std::max<int64_t>(2, warmup * 25 / 1000);
  w.term_buffer = std::max<int64_t>(1, warmup * 50 / 1000);
  return w;
}

// The ATen operators NUTS dispatches per batched log-density call besides the target's own: a short
// run (20 + 20) under an OpCensus, less the calls times one call's count; and the same for the
// sampling phase alone, from the difference with a run of 20 + 1 (the same warmup). Untimed: the
// census's callbacks slow every operator.
struct SamplerOps {
  double per_call = 0, per_sampling_call = 0;
};

SamplerOps sampler_ops_per_call(const Target& target, const torch::Tensor& init,
                                samplers::NutsSettings settings) {
  settings.num_warmup = 20;
  settings.adapt.windows = windows_for(settings.num_warmup);
  int64_t target_ops = 0;
  {
    OpCensus census;
    (void)target.fn(init);
    target_ops = census.operators();
  }
  auto count = [&](int64_t draws, bool log) {
    settings.num_draws = draws;
    settings.refresh = settings.num_warmup + settings.num_draws;
    OpCensus census;
    const samplers::SamplerResult r = samplers::sample_nuts(target.fn, init, settings);
    if (log)
      census.log_most_frequent(
          "bench sampler:   " + target.name + " x" + std::to_string(init.size(0)) + ": ", 12);
    return std::make_pair(static_cast<double>(census.operators()),
                          static_cast<double>(r.gradient_evaluations / init.size(0)));
  };
  const auto [all, calls] = count(20, true);
  const auto [warm_all, warm_calls] = count(1, false);
  const double t = static_cast<double>(target_ops);
  return {(all - calls * t) / calls, (all - warm_all) / (calls - warm_calls) - t};
}

int bench_sampler(int argc, char** argv) {
  cxxopts::Options options(argv[0],
                           "NUTS with Stan's warmup on a 100-d Gaussian (scales 1e-2..1e2) and a "
                           "non-centred 10-d funnel: draws/s, gradient evaluations/s, bulk ESS/s, "
                           "bulk ESS per gradient evaluation");
  options.add_options()("json", "print the results as JSON on stdout")(
      "chains", "comma-separated chain counts",
      cxxopts::value<std::string>()->default_value("4,64,1024"))(
      "targets", "gaussian, funnel or both (comma-separated)",
      cxxopts::value<std::string>()->default_value("gaussian,funnel"))(
      "warmup",
      "warmup iterations, one value or one per chain count (below 1000, Stan's windows are "
      "scaled down in proportion)",
      cxxopts::value<std::string>()->default_value("1000,1000,200"))(
      "draws", "draws per chain, one value or one per chain count",
      cxxopts::value<std::string>()->default_value("1000,1000,100"))(
      "max-depth", "NUTS maximum tree depth", cxxopts::value<int>()->default_value("10"))(
      "metric", "diag|dense: the sampler's metric (dslens fit's default is dense)",
      cxxopts::value<std::string>()->default_value("diag"))(
      "count-ops",
      "after each timed run, a short untimed one (20 warmup + 20 draws) counts the ATen operators "
      "the sampler itself dispatches per batched gradient, the target's own subtracted: on a GPU "
      "each is a kernel launch and 5-10 us of CPU (docs/benchmarks.md, \"On a GPU\")")(
      "out-of-step",
      "the chains out of step (each batched leapfrog step advances every chain by one leaf of "
      "its own tree; in warmup between the adaptation's meeting points) instead of in "
      "lock-step; the same draws")("seed", "random seed",
                                   cxxopts::value<uint64_t>()->default_value("1"));
  add_compute_options(options);
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  const Compute compute = compute_from(args);
  const std::vector<int64_t> chain_counts =
      parse_list(args["chains"].as<std::string>(), "--chains");
  const std::vector<int64_t> warmups =
      per_chain_count(args["warmup"].as<std::string>(), "--warmup", chain_counts.size(), 0);
  const std::vector<int64_t> draw_counts =
      per_chain_count(args["draws"].as<std::string>(), "--draws", chain_counts.size(), 4);
  std::vector<Target> targets;
  {
    std::stringstream ss(args["targets"].as<std::string>());
    std::string item;
    while (std::getline(ss, item, ',')) {
      if (item == "gaussian")
        targets.push_back(gaussian_target(compute));
      else if (item == "funnel")
        targets.push_back(funnel_target(compute));
      else
        throw InvalidArgument("--targets: unknown target '" + item + "' (gaussian, funnel)");
    }
  }
  samplers::NutsSettings base;
  base.max_depth = args["max-depth"].as<int>();
  const std::string metric = args["metric"].as<std::string>();
  if (metric != "diag" && metric != "dense")
    throw InvalidArgument("--metric: expected diag or dense, got '" + metric + "'");
  base.metric = metric == "dense" ? samplers::MetricKind::dense : samplers::MetricKind::diag;
  base.seed = args["seed"].as<uint64_t>();
  base.out_of_step = args.count("out-of-step") > 0;

  nlohmann::json results = nlohmann::json::array();
  for (const Target& target : targets) {
    for (size_t k = 0; k < chain_counts.size(); ++k) {
      const int64_t chains = chain_counts[k];
      samplers::NutsSettings settings = base;
      settings.num_warmup = warmups[k];
      settings.num_draws = draw_counts[k];
      settings.adapt.windows = windows_for(settings.num_warmup);
      settings.refresh = settings.num_warmup + settings.num_draws;
      settings.validate();
      torch::Tensor init = (torch::rand({chains, target.dim},
                                        torch::Generator(at::detail::createCPUGenerator(base.seed)),
                                        torch::TensorOptions().dtype(torch::kFloat64)) *
                                4 -
                            2)
                               .to(compute.options());
      spdlog::info("bench sampler: {} with {} chains, {} warmup + {} draws", target.name, chains,
                   settings.num_warmup, settings.num_draws);
      samplers::SamplerResult r = samplers::sample_nuts(target.fn, init, settings);
      const int64_t sampling_calls =
          (r.gradient_evaluations - r.warmup_gradient_evaluations) / chains;
      const double computed_grads = static_cast<double>(sampling_calls * chains);
      const double leapfrogs = r.n_leapfrog.sum().item<double>();
      torch::Tensor draws = r.draws.to(torch::kCPU, torch::kFloat64);
      double min_ess = INFINITY;
      for (int64_t d = 0; d < target.dim; ++d)
        min_ess = std::min(min_ess, samplers::ess_bulk(draws.select(2, d)));
      const double secs = r.sampling_seconds;
      nlohmann::json j = {
          {"target", target.name},
          {"dim", target.dim},
          {"chains", chains},
          {"warmup", settings.num_warmup},
          {"draws", settings.num_draws},
          {"warmup_s", r.warmup_seconds},
          // Warmup's batched log-density calls: leapfrog steps and step-size searches.
          {"warmup_batched_calls", r.warmup_gradient_evaluations / chains},
          {"sampling_s", secs},
          {"draws_per_s", chains * settings.num_draws / secs},
          {"leapfrog_steps", leapfrogs},
          {"gradient_evaluations", computed_grads},
          {"batched_steps", sampling_calls},
          // The share of the rows computed in the sampling phase that were some chain's leaf.
          {"live_row_share", leapfrogs / computed_grads},
          {"gradient_evaluations_per_s", computed_grads / secs},
          {"ms_per_batched_gradient", 1e3 * secs / static_cast<double>(sampling_calls)},
          {"us_per_gradient_evaluation", 1e6 * secs / computed_grads},
          {"min_ess_bulk", min_ess},
          {"min_ess_bulk_per_s", min_ess / secs},
          {"min_ess_bulk_per_leapfrog", min_ess / leapfrogs},
          {"min_ess_bulk_per_gradient_evaluation", min_ess / computed_grads},
          {"mean_tree_depth", r.tree_depth.to(torch::kFloat64).mean().item<double>()},
          {"max_tree_depth", r.tree_depth.max().item<int64_t>()},
          {"mean_accept_stat", r.accept_stat.mean().item<double>()},
          {"divergences", r.divergent.sum().item<int64_t>()},
          {"step_size_median", r.step_size_adapted.median().item<double>()}};
      spdlog::info(
          "bench sampler: {} x{}: {:.0f} draws/s, {:.3g} grad/s, min bulk ESS {:.0f} ({:.3g}/s, "
          "{:.3f} per grad eval); warmup {:.1f} s, sampling {:.1f} s",
          target.name, chains, j["draws_per_s"].get<double>(),
          j["gradient_evaluations_per_s"].get<double>(), min_ess, min_ess / secs,
          min_ess / computed_grads, r.warmup_seconds, secs);
      if (args.count("count-ops")) {
        const SamplerOps ops = sampler_ops_per_call(target, init, settings);
        j["sampler_ops_per_batched_gradient"] = ops.per_call;
        j["sampler_ops_per_batched_gradient_sampling"] = ops.per_sampling_call;
        spdlog::info(
            "bench sampler: {} x{}: {:.0f} ATen operators of the sampler's own per batched "
            "gradient ({:.0f} in the sampling phase)",
            target.name, chains, ops.per_call, ops.per_sampling_call);
      }
      results.push_back(j);
    }
  }

  nlohmann::json report = {
      {"benchmark", "sampler"},
      {"sampler", "NUTS, Stan warmup, " + metric + " metric, per-chain step sizes" +
                      (base.out_of_step ? ", chains out of step" : "")},
      {"device", compute.device.str()},
      {"dtype", dtype_name(compute.dtype)},
      {"threads", torch::get_num_threads()},
      {"max_depth", base.max_depth},
      {"results", results}};
  if (args.count("json")) {
    std::cout << report.dump(2) << std::endl;
    return 0;
  }
  std::cout << "dslens bench sampler: " << report["sampler"].get<std::string>() << "; device "
            << compute.device.str() << ", " << dtype_name(compute.dtype) << ", "
            << torch::get_num_threads() << " threads, max depth " << base.max_depth << "\n"
            << "figures over the sampling phase; grad evals count every chain of every batched "
               "call (masked chains included); ESS is the minimum bulk ESS over coordinates\n\n"
            << std::left << std::setw(12) << "target" << std::right << std::setw(7) << "chains"
            << std::setw(7) << "warmup" << std::setw(6) << "draws" << std::setw(9) << "warmup s"
            << std::setw(8) << "samp s" << std::setw(10) << "draws/s" << std::setw(10) << "grad/s"
            << std::setw(10) << "ms/batch" << std::setw(9) << "min ESS" << std::setw(9) << "ESS/s"
            << std::setw(9) << "ESS/grad" << std::setw(6) << "depth" << std::setw(5) << "div"
            << std::setw(9) << "batched" << std::setw(6) << "live"
            << "\n";
  for (const auto& r : results) {
    std::cout << std::left << std::setw(12) << r["target"].get<std::string>() << std::right
              << std::setw(7) << r["chains"].get<int64_t>() << std::setw(7)
              << r["warmup"].get<int64_t>() << std::setw(6) << r["draws"].get<int64_t>()
              << std::fixed << std::setprecision(1) << std::setw(9) << r["warmup_s"].get<double>()
              << std::setw(8) << r["sampling_s"].get<double>() << std::setprecision(0)
              << std::setw(10) << r["draws_per_s"].get<double>() << std::setw(10)
              << r["gradient_evaluations_per_s"].get<double>() << std::setprecision(3)
              << std::setw(10) << r["ms_per_batched_gradient"].get<double>() << std::setprecision(0)
              << std::setw(9) << r["min_ess_bulk"].get<double>() << std::setw(9)
              << r["min_ess_bulk_per_s"].get<double>() << std::setprecision(3) << std::setw(9)
              << r["min_ess_bulk_per_gradient_evaluation"].get<double>() << std::setprecision(2)
              << std::setw(6) << r["mean_tree_depth"].get<double>() << std::setw(5)
              << r["divergences"].get<int64_t>() << std::setw(9)
              << r["batched_steps"].get<int64_t>() << std::setw(6)
              << r["live_row_share"].get<double>() << "\n";
  }
  return 0;
}

}  // namespace bench_sampler_detail

DSLENS_BENCH(sampler, "NUTS draws/s, gradient evaluations/s and bulk ESS per gradient evaluation",
             bench_sampler_detail::bench_sampler);

}  // namespace dslens::app

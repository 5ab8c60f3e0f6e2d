// `dslens bench sampler`: NUTS throughput with Stan's warmup on a 100-d Gaussian with scales spread
// over four orders of magnitude and on Neal's funnel (non-centred, 10-d), for several chain counts:
// draws/s, gradient evaluations/s, bulk ESS/s and bulk ESS per gradient evaluation (min over
// coordinates).
#include <spdlog/spdlog.h>

#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "command.h"
#include "dslens/core/errors.h"
#include "dslens/samplers/diagnostics.h"
#include "dslens/samplers/nuts.h"

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
  torch::Tensor inv_var = 1.0 / (sigma * sigma);
  return {"gaussian100", dim, [inv_var](const torch::Tensor& q) {
            torch::Tensor g = -q * inv_var;
            return LogDensityValue{0.5 * (q * g).sum(1), g};
          }};
}

// v ~ N(0, 3^2), z ~ N(0, I_9); the funnel's x = exp(v / 2) z is a deterministic function.
Target funnel_target(const Compute& compute) {
  torch::Tensor w = torch::ones({10}, compute.options());
  w[0] = 1.0 / 9.0;
  return {"funnel10", 10, [w](const torch::Tensor& q) {
            torch::Tensor g = -q * w;
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
      "warmup", "warmup iterations", cxxopts::value<int64_t>()->default_value("1000"))(
      "draws", "draws per chain", cxxopts::value<int64_t>()->default_value("1000"))(
      "max-depth", "NUTS maximum tree depth", cxxopts::value<int>()->default_value("10"))(
      "seed", "random seed", cxxopts::value<uint64_t>()->default_value("1"));
  add_compute_options(options);
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  const Compute compute = compute_from(args);
  const std::vector<int64_t> chain_counts =
      parse_list(args["chains"].as<std::string>(), "--chains");
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
  samplers::NutsSettings settings;
  settings.num_warmup = args["warmup"].as<int64_t>();
  settings.num_draws = args["draws"].as<int64_t>();
  settings.max_depth = args["max-depth"].as<int>();
  settings.seed = args["seed"].as<uint64_t>();
  settings.refresh = std::max<int64_t>(1, settings.num_warmup + settings.num_draws);
  settings.validate();
  if (settings.num_draws < 4) throw InvalidArgument("--draws must be >= 4 for ESS");

  nlohmann::json results = nlohmann::json::array();
  for (const Target& target : targets) {
    for (const int64_t chains : chain_counts) {
      torch::Tensor init =
          (torch::rand({chains, target.dim}, torch::TensorOptions().dtype(torch::kFloat64)) * 4 - 2)
              .to(compute.options());
      spdlog::info("bench sampler: {} with {} chains", target.name, chains);
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
          {"sampling_s", secs},
          {"draws_per_s", chains * settings.num_draws / secs},
          {"leapfrog_steps", leapfrogs},
          {"gradient_evaluations", computed_grads},
          {"gradient_evaluations_per_s", computed_grads / secs},
          {"ms_per_batched_gradient", 1e3 * secs / static_cast<double>(sampling_calls)},
          {"min_ess_bulk", min_ess},
          {"min_ess_bulk_per_s", min_ess / secs},
          {"min_ess_bulk_per_leapfrog", min_ess / leapfrogs},
          {"min_ess_bulk_per_gradient_evaluation", min_ess / computed_grads},
          {"mean_tree_depth", r.tree_depth.to(torch::kFloat64).mean().item<double>()},
          {"mean_accept_stat", r.accept_stat.mean().item<double>()},
          {"divergences", r.divergent.sum().item<int64_t>()},
          {"step_size_median", r.step_size_adapted.median().item<double>()}};
      spdlog::info(
          "bench sampler: {} x{}: {:.0f} draws/s, {:.3g} grad/s, min bulk ESS {:.0f} ({:.3g}/s, "
          "{:.3f} per leapfrog)",
          target.name, chains, j["draws_per_s"].get<double>(),
          j["gradient_evaluations_per_s"].get<double>(), min_ess, min_ess / secs,
          min_ess / leapfrogs);
      results.push_back(j);
    }
  }

  nlohmann::json report = {{"benchmark", "sampler"},
                           {"sampler", "NUTS, Stan warmup, diag metric, per-chain step sizes"},
                           {"device", compute.device.str()},
                           {"dtype", dtype_name(compute.dtype)},
                           {"threads", torch::get_num_threads()},
                           {"results", results}};
  if (args.count("json")) {
    std::cout << report.dump(2) << std::endl;
    return 0;
  }
  std::cout << "dslens bench sampler: " << report["sampler"].get<std::string>() << "; device "
            << compute.device.str() << ", " << dtype_name(compute.dtype) << ", warmup "
            << settings.num_warmup << ", draws " << settings.num_draws << "\n"
            << "grad evals count every chain of every batched call (masked chains included); "
               "ESS/leapfrog divides by the chains' own leapfrog steps (Stan's n_leapfrog)\n\n"
            << std::left << std::setw(13) << "target" << std::right << std::setw(7) << "chains"
            << std::setw(11) << "draws/s" << std::setw(12) << "grad/s" << std::setw(11)
            << "ms/batch" << std::setw(11) << "min ESS" << std::setw(11) << "ESS/s" << std::setw(12)
            << "ESS/leapfrg" << std::setw(11) << "ESS/grad" << std::setw(7) << "depth"
            << std::setw(6) << "div"
            << "\n";
  for (const auto& r : results) {
    std::cout << std::left << std::setw(13) << r["target"].get<std::string>() << std::right
              << std::setw(7) << r["chains"].get<int64_t>() << std::fixed << std::setprecision(0)
              << std::setw(11) << r["draws_per_s"].get<double>() << std::setw(12)
              << r["gradient_evaluations_per_s"].get<double>() << std::setprecision(3)
              << std::setw(11) << r["ms_per_batched_gradient"].get<double>() << std::setprecision(0)
              << std::setw(11) << r["min_ess_bulk"].get<double>() << std::setw(11)
              << r["min_ess_bulk_per_s"].get<double>() << std::setprecision(4) << std::setw(12)
              << r["min_ess_bulk_per_leapfrog"].get<double>() << std::setw(11)
              << r["min_ess_bulk_per_gradient_evaluation"].get<double>() << std::setprecision(2)
              << std::setw(7) << r["mean_tree_depth"].get<double>() << std::setw(6)
              << r["divergences"].get<int64_t>() << "\n";
  }
  return 0;
}

}  // namespace bench_sampler_detail

DSLENS_BENCH(sampler, "NUTS draws/s, gradient evaluations/s and bulk ESS per gradient evaluation",
             bench_sampler_detail::bench_sampler);

}  // namespace dslens::app

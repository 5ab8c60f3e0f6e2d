// `dslens fit CONFIG... --out DIR`: MAP then NUTS on one or many lenses (docs/fit.md).
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>
#include <utility>
#include <vector>

#include "catalogue.h"
#include "command.h"
#include "dslens/core/atomic_file.h"
#include "dslens/core/errors.h"
#include "dslens/core/logging.h"
#include "dslens/core/output_dir.h"
#include "dslens/core/version.h"
#include "dslens/model/fit_model.h"
#include "dslens/model/lens_posterior.h"
#include "duration_text.h"
#include "fit_config.h"
#include "fit_run.h"
#include "map_init.h"
#include "stop_signal.h"

namespace fs = std::filesystem;

namespace dslens::app {
namespace fit_detail {

// "i/n" -> (i, n) with 0 <= i < n.
std::pair<int64_t, int64_t> parse_shard(const std::string& text, const std::string& origin) {
  const auto slash = text.find('/');
  try {
    if (slash != std::string::npos) {
      size_t used_i = 0, used_n = 0;
      const long long i = std::stoll(text.substr(0, slash), &used_i);
      const long long n = std::stoll(text.substr(slash + 1), &used_n);
      if (used_i == slash && used_n == text.size() - slash - 1 && n >= 1 && i >= 0 && i < n) {
        return {i, n};
      }
    }
  } catch (const std::exception&) {
  }
  throw InputError(origin + " '" + text +
                   "' is not a shard; expected i/n with 0 <= i < n, e.g. 3/16");
}

// --shard, else a SLURM job array's task id and count; (0, 1) otherwise.
std::pair<int64_t, int64_t> shard_from(const cxxopts::ParseResult& args) {
  if (args.count("shard")) return parse_shard(args["shard"].as<std::string>(), "--shard");
  const char* id = std::getenv("SLURM_ARRAY_TASK_ID");
  if (!id) return {0, 1};
  const char* count = std::getenv("SLURM_ARRAY_TASK_COUNT");
  if (!count) {
    throw InputError(
        "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard "
        "i/n explicitly");
  }
  return parse_shard(std::string(id) + "/" + count, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT");
}

// --check: one line per config (its data, model and the log posterior at its initial point, or
// what is wrong), then how the good ones would be batched. Exit 2 if any config has a problem.
int check_configs(const std::vector<FitConfig>& configs,
                  std::vector<std::pair<std::string, std::string>> bad, int64_t max_batch,
                  const Compute& compute) {
  std::map<std::string, int64_t> batch_sizes;
  int64_t batches = 0, ready = 0;
  for (const auto& c : configs) {
    // The model's components, as the config names them.
    std::string model;
    for (const char* part : {"mass", "lens_light", "source"}) {
      const auto& m = c.config.at("model");
      if (!m.contains(part)) continue;
      std::string types;
      for (const auto& comp : m.at(part)) {
        types += (types.empty() ? "" : " + ") + comp.value("type", std::string("?"));
      }
      model += (model.empty() ? "" : "; ") + std::string(part) + " " + types;
    }
    const model::LensPosterior post(c.model.spec(c.data.grid, c.data.psf), c.model.space,
                                    c.data.imaging(), compute);
    torch::NoGradGuard no_grad;
    const double lp = post.log_prob(c.model.space.initial(1, compute.options())).item<double>();
    if (!std::isfinite(lp)) {
      bad.emplace_back(c.path,
                       "the log posterior at the initial point (each parameter's init or "
                       "prior median) is " +
                           std::to_string(lp) + "; check the priors against the data");
      continue;
    }
    // A simulation's truth, where it gives every free parameter: how far the initial point is
    // from it, and whether the priors allow it (warned of at load, fit_config.cpp).
    std::string at_truth;
    if (const auto truth = model::truth_point(c.model, c.data.truth)) {
      const double lp_truth =
          post.log_prob(c.model.space.pack(*truth).to(compute.options())).item<double>();
      std::ostringstream text;
      text << ", " << lp_truth << " at the truth";
      at_truth = std::isfinite(lp_truth) ? text.str() : ", the truth outside the priors";
    }
    std::cout << "ok   " << c.path << ": " << c.data.image.size(0) << "x" << c.data.image.size(1)
              << " px (rows x columns) of " << c.data.grid.pixel_scale << "\" ("
              << c.data.n_fitted() << " fitted), " << model << ", " << c.model.space.dim()
              << " free parameters; log posterior " << lp << " at the initial point" << at_truth
              << "\n";
    for (const auto& w : c.data.warnings) std::cout << "     warning: " << w << "\n";
    if (batch_sizes[batch_key(c)]++ % max_batch == 0) ++batches;
    ++ready;
  }
  for (const auto& [path, what] : bad) std::cout << "BAD  " << path << ": " << what << "\n";
  std::cout << ready + static_cast<int64_t>(bad.size()) << " config(s): " << ready
            << " ready to fit (" << batches << " batch(es) of at most " << max_batch << " lenses), "
            << bad.size() << " with problems\n";
  return bad.empty() ? 0 : 2;
}

int run_fit(int argc, char** argv) {
  cxxopts::Options options(argv[0], "Fit lenses: MAP from many prior draws, then NUTS chains");
  options.positional_help("CONFIG... (files or folders of *.json)").show_positional_help();
  options.add_options()("configs", "fit configs", cxxopts::value<std::vector<std::string>>())(
      "o,out", "output folder to create (refused if it exists)", cxxopts::value<std::string>())(
      "overwrite", "replace an existing output folder")(
      "check",
      "check the configs and their data and report every problem, without fitting (no --out "
      "needed; exit 2 if any config has one)")(
      "resume", "continue an interrupted fit in --out from its last finished stage")(
      "shard", "fit only slice i of n of the configs (default: SLURM_ARRAY_TASK_ID/COUNT)",
      cxxopts::value<std::string>())("chains", "override sampler.chains",
                                     cxxopts::value<int64_t>())("warmup", "override sampler.warmup",
                                                                cxxopts::value<int64_t>())(
      "draws", "override sampler.draws", cxxopts::value<int64_t>())("starts", "override map.starts",
                                                                    cxxopts::value<int64_t>())(
      "stop-after", "stop after a stage ('map' or 'warmup'), leaving the checkpoint for --resume",
      cxxopts::value<std::string>())(
      "init",
      "start the MAP at a point instead of searching: an earlier fit's folder or map.json (or a "
      "JSON object of parameter values), or 'truth' on a simulation; a parametric source's fit "
      "seeds a pixel grid's",
      cxxopts::value<std::string>())("max-batch", "most lenses fitted together in one batch",
                                     cxxopts::value<int64_t>()->default_value("64"));
  add_compute_options(options);
  options.parse_positional({"configs"});
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  if (!args.count("configs")) throw InputError("missing CONFIG (see dslens fit --help)");
  const bool check = args.count("check") > 0;
  if (!check && !args.count("out")) throw InputError("missing --out DIR (see dslens fit --help)");
  if (!args.unmatched().empty()) {
    throw InputError("unexpected argument '" + args.unmatched().front() + "' (see --help)");
  }
  const Compute compute = compute_from(args);
  const std::string out_path = args.count("out") ? args["out"].as<std::string>() : "";
  const bool resume = args.count("resume") > 0, overwrite = args.count("overwrite") > 0;
  if (resume && overwrite) throw InputError("--resume and --overwrite exclude each other");
  const auto [shard_index, shard_count] = shard_from(args);
  const int64_t max_batch = args["max-batch"].as<int64_t>();
  if (max_batch < 1) throw InputError("--max-batch must be at least 1");

  const std::string stop_after =
      args.count("stop-after") ? args["stop-after"].as<std::string>() : "";
  if (!stop_after.empty() && stop_after != "map" && stop_after != "warmup")
    throw InputError("--stop-after '" + stop_after + "' is not a stage; allowed: map, warmup");
  const bool stopping = !stop_after.empty();
  if (resume && !check && fs::exists(fs::path(out_path) / "index.json")) {
    std::cout << "'" << out_path << "' holds a finished fit (index.json); nothing to resume\n";
    return 0;
  }

  auto paths = expand_config_paths(args["configs"].as<std::vector<std::string>>());
  const size_t all = paths.size();
  paths = shard(paths, shard_index, shard_count);
  if (paths.empty()) {
    std::cout << "shard " << shard_index << "/" << shard_count << " of " << all
              << " config(s) is empty; nothing to fit\n";
    return 0;
  }

  // Parse everything before creating the output folder: a config error leaves nothing behind.
  std::vector<FitConfig> configs;
  std::vector<std::pair<std::string, std::string>> bad;  // --check: config, what is wrong
  const auto load = [&](const std::string& p) {
    FitConfig c = load_fit_config(p, compute);
    if (args.count("chains")) c.sampler.chains = args["chains"].as<int64_t>();
    if (args.count("warmup")) c.sampler.warmup = args["warmup"].as<int64_t>();
    if (args.count("draws")) c.sampler.draws = args["draws"].as<int64_t>();
    if (args.count("starts")) c.map.starts = args["starts"].as<int64_t>();
    if (c.sampler.chains < 1 || c.sampler.draws < 1 || c.sampler.warmup < 0 || c.map.starts < 1) {
      throw InputError("--chains, --draws and --starts must be >= 1 and --warmup >= 0");
    }
    return c;
  };
  for (const auto& p : paths) {
    if (!check) {
      configs.push_back(load(p));
      continue;
    }
    try {
      configs.push_back(load(p));
    } catch (const InputError& e) {
      bad.emplace_back(p, e.what());
    }
  }
  if (check) return check_configs(configs, bad, max_batch, compute);
  std::map<std::string, int> names;
  for (auto& c : configs) {
    if (names[c.name]++) c.name += "-" + std::to_string(names[c.name]);
  }

  // --init: every lens's start is checked before the output folder exists.
  std::map<const FitConfig*, torch::Tensor> init;
  std::string init_source;
  if (args.count("init")) {
    const MapInit m = read_map_init(args["init"].as<std::string>());
    if (!m.truth && m.per_lens.empty() && configs.size() > 1) {
      throw InputError("--init FILE gives one lens's parameters; fit one config with it (" +
                       std::to_string(configs.size()) +
                       " given), give the folder of a fit of these lenses, or use --init truth");
    }
    for (const auto& c : configs) init[&c] = map_init_point(c, m);
    init_source = m.source;
  }

  OutputDir out = OutputDir::live(out_path, overwrite, resume);
  const std::string dir = out.working_dir();
  const ScopedLogFile log_file(dir + "/fit.log");
  // SIGINT/SIGTERM: the MAP stops after its last saved round, NUTS after a snapshot
  // (stop_signal.h).
  const StopOnSignal stop_on_signal;
  const std::string checkpoint_dir = dir + "/checkpoint";
  fs::create_directories(checkpoint_dir);
  spdlog::info("dslens {} fit: {} lens(es) (shard {}/{} of {}) on {} {}", version(), configs.size(),
               shard_index, shard_count, all, compute.device.str(), dtype_name(compute.dtype));

  // Batches: lenses with the same model, settings, grid and PSF size, at most --max-batch each.
  std::vector<std::vector<const FitConfig*>> batches;
  std::map<std::string, size_t> open;
  for (const auto& c : configs) {
    const std::string key = batch_key(c);
    auto it = open.find(key);
    if (it == open.end() || static_cast<int64_t>(batches[it->second].size()) >= max_batch) {
      open[key] = batches.size();
      batches.push_back({});
    }
    batches[open[key]].push_back(&c);
  }

  const bool single = configs.size() == 1;
  nlohmann::json index = nlohmann::json::array();
  const auto t0 = std::chrono::steady_clock::now();
  FitRunOptions run{compute, checkpoint_dir, resume, stop_after, init, init_source};
  int64_t lenses_done = 0;  // by this run (not read back from an earlier one's markers)
  for (size_t b = 0; b < batches.size(); ++b) {
    const std::string done_marker = checkpoint_dir + "/batch" + std::to_string(b) + ".done.json";
    if (resume && fs::exists(done_marker)) {
      for (const auto& line : load_json_file(done_marker)) index.push_back(line);
      spdlog::info("batch {}: already written, skipped", b);
      continue;
    }
    spdlog::info("batch {} of {}: {} lens(es)", b + 1, batches.size(), batches[b].size());
    std::vector<LensFitResult> results;
    try {
      throw_if_stop_requested("fit: batch " + std::to_string(b));
      results = fit_batch(batches[b], static_cast<int64_t>(b), run);
    } catch (const Interrupted& e) {
      spdlog::warn("{}", e.what());
      throw Interrupted(std::string(e.what()) + "; continue with: " + resume_command(argc, argv));
    }
    if (stopping) continue;
    nlohmann::json lines = nlohmann::json::array();
    for (const auto& r : results) {
      const std::string lens_dir = single ? dir : dir + "/" + r.config->name;
      fs::create_directories(lens_dir);
      lines.push_back(write_lens_outputs(lens_dir, r, compute));
    }
    write_text_atomically(done_marker, lines.dump(2) + "\n");
    for (const auto& l : lines) index.push_back(l);
    // A catalogue's progress: lenses done and, from this run's lenses per second, the rest.
    lenses_done += static_cast<int64_t>(batches[b].size());
    int64_t lenses_left = 0;
    for (size_t k = b + 1; k < batches.size(); ++k)
      lenses_left += static_cast<int64_t>(batches[k].size());
    if (lenses_left > 0) {
      const double spent =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      spdlog::info("fit: {} of {} lens(es) done in {}; about {} to go", index.size(),
                   index.size() + static_cast<size_t>(lenses_left), duration_text(spent),
                   duration_text(spent / static_cast<double>(lenses_done) *
                                 static_cast<double>(lenses_left)));
    }
  }
  if (stopping) {
    std::cout << "stopped after " << stop_after << "; continue with: " << resume_command(argc, argv)
              << "\n";
    return 0;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json run_json{{"dslens_version", version()},         {"lenses", index},
                          {"shard", {shard_index, shard_count}}, {"device", compute.device.str()},
                          {"dtype", dtype_name(compute.dtype)},  {"seconds", seconds}};
  write_text_atomically(dir + "/index.json", run_json.dump(2) + "\n");
  write_text_atomically(dir + "/catalogue.csv", catalogue_csv(fit_lens_folders(dir)).csv);
  fs::remove_all(checkpoint_dir);
  out.commit();

  std::cout << "fitted " << index.size() << " lens(es) in " << static_cast<int64_t>(seconds)
            << " s; results in " << out.final_dir() << "\n";
  for (const auto& l : index) {
    std::cout << "  " << l["lens"].get<std::string>() << ": reduced chi2 "
              << l["reduced_chi_square"].get<double>() << ", " << l["divergences"].get<int64_t>()
              << " divergences, " << l["warnings"].get<int64_t>()
              << " warning(s); report: " << l["folder"].get<std::string>() << "/report.png\n";
  }
  return 0;
}

}  // namespace fit_detail

DSLENS_COMMAND(fit, "Fit lenses: MAP, then NUTS/HMC (docs/fit.md)", fit_detail::run_fit);

}  // namespace dslens::app

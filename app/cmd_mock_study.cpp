// `dslens mock-study --vae DIR --out DIR`: the mock study of issue 5 (docs/mock_study.md). Draws N
// mock lenses (EPL + external shear, a VAE source decoded from a random latent vector, an HST-like
// 0.05"/px grid and a Gaussian PSF of FWHM 0.1"), observes each at several signal-to-noise levels,
// fits every level's mocks in batches (--max-batch) through the real `dslens simulate` and
// `dslens fit` commands, and tabulates per parameter and level the median absolute relative error,
// the coverage of the 68 % and 95 % central intervals, the largest R-hat, the divergences and the
// time per lens (OUT/mock_study.md, raw numbers in OUT/mock_study.json).
//
// The truths of mock k depend only on --seed and k: the same N lenses are observed at every level,
// only the noise differs. SNR := P / background_rms, where P is the brightest pixel of the
// noise-free lensed-source image; the exposure time is set so that the Poisson noise at that pixel
// is half the background rms, so the total signal-to-noise of the brightest pixel is SNR /
// sqrt(1.25).
//
// A study may run in parts (--first K: mocks K.., as the whole study would fit them; --only K1,K2:
// those mocks), be tabulated while unfinished (--resume --partial) and be joined (--combine;
// mock_study_combine.cpp; --replace lets a later part's fit of a mock replace an earlier one's).
//
// OUT/
//   settings.json             what was asked (checked by --resume)
//   snr<S>/sim-configs/       `dslens simulate` configs, one per mock
//   snr<S>/sims/mock<k>/      the simulated mocks (image.fits, truth.json, ...)
//   snr<S>/fit-configs/       `dslens fit` configs, one per mock
//   snr<S>/fit/               the `dslens fit` output of the level (fit/mock<k>/summary.json ...)
//   mock_study.md, mock_study.json
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "command.h"
#include "dslens/core/atomic_file.h"
#include "dslens/core/errors.h"
#include "dslens/core/logging.h"
#include "dslens/core/version.h"
#include "mock_noise.h"
#include "mock_population.h"
#include "mock_study_table.h"
#include "stop_signal.h"

namespace fs = std::filesystem;

namespace dslens::app {
namespace mock_study {
namespace {

// The VAE's identity across machines: the hash of its weights archive that train-vae records in
// checkpoint.json (its path differs between machines; its weights decide the mocks' sources).
json vae_digest(const std::string& vae) {
  const json sidecar = load_json_file((fs::path(vae) / "checkpoint.json").string());
  if (sidecar.contains("weights") && sidecar["weights"].contains("fnv1a64"))
    return sidecar["weights"]["fnv1a64"];
  return nullptr;
}

}  // namespace

int run(int argc, char** argv) {
  cxxopts::Options options(
      argv[0], "Mock study: simulate and fit N mock lenses at several SNR levels (issue 5)");
  options.add_options()("vae", "trained VAE checkpoint folder (dslens train-vae output)",
                        cxxopts::value<std::string>())(
      "o,out", "output folder (refused if it exists, unless --resume)",
      cxxopts::value<std::string>())("mocks", "mock lenses per SNR level",
                                     cxxopts::value<int64_t>()->default_value("30"))(
      "snr", "SNR levels: peak lensed-source pixel / background rms",
      cxxopts::value<std::vector<double>>()->default_value("10,30,100"))(
      "pixels", "image side in pixels (0.05\"/px)", cxxopts::value<int64_t>()->default_value("80"))(
      "supersampling", "rays per pixel side, in simulation and fit",
      cxxopts::value<int64_t>()->default_value("1"))("chains", "NUTS chains per lens",
                                                     cxxopts::value<int64_t>()->default_value("4"))(
      "warmup", "warmup iterations", cxxopts::value<int64_t>()->default_value("500"))(
      "draws", "draws per chain", cxxopts::value<int64_t>()->default_value("500"))(
      "starts", "MAP starts per lens", cxxopts::value<int64_t>()->default_value("16"))(
      "placement-starts",
      "prior draws of the MAP's placement stage per lens, the best --starts go on (0: --starts)",
      cxxopts::value<int64_t>()->default_value("64"))(
      "search-rounds",
      "most search rounds after the first for a lens that fits badly (map.retry_rounds)",
      cxxopts::value<int64_t>()->default_value("2"))(
      "anneal-snr",
      "levels above this SNR start the MAP with the noise scaled to it (map.anneal_noise; 0: off)",
      cxxopts::value<double>()->default_value("33"))(
      "max-depth", "NUTS maximum tree depth", cxxopts::value<int64_t>()->default_value("10"))(
      "metric", "NUTS metric: dense or diag",
      cxxopts::value<std::string>()->default_value("dense"))(
      "max-batch",
      "most mocks fitted together in one batch (on a CPU, 1 saves the lock-step cost of the "
      "deepest tree; results do not depend on it)",
      cxxopts::value<int64_t>()->default_value("64"))(
      "seed", "seed of the truths, the noise and the fits",
      cxxopts::value<uint64_t>()->default_value("1"))(
      "resume",
      "continue a study in --out: keep finished levels and mocks, resume fits "
      "(other --snr levels may be given)")(
      "first",
      "index of the first mock (a study may run in parts: --first 10 --mocks 10 fits mocks 10-19 "
      "as the whole study would; --combine joins the parts)",
      cxxopts::value<int64_t>()->default_value("0"))(
      "only",
      "fit only these mocks (comma-separated indices, e.g. 3,7,10: refits of a study's lenses; "
      "instead of --first and --mocks)",
      cxxopts::value<std::vector<int64_t>>())(
      "partial",
      "with --resume: tabulate the fits finished so far, simulate and fit nothing (e.g. before an "
      "interrupted study is moved)")(
      "combine",
      "join the mock_study.json of parts of one study (folders or files, comma-separated) into "
      "--out; no --vae needed",
      cxxopts::value<std::vector<std::string>>())(
      "replace",
      "with --combine: a mock fitted in several parts is taken from the last of them (e.g. a "
      "refit with --only); without it such a mock is an error");
  add_compute_options(options, "float32");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  if (!args.unmatched().empty()) {
    throw InvalidArgument("unexpected argument '" + args.unmatched().front() + "' (see --help)");
  }
  if (!args.count("out")) throw InvalidArgument("missing --out DIR (see dslens mock-study --help)");
  std::string command = "dslens mock-study";
  for (int i = 1; i < argc; ++i) command += " " + shell_quote(argv[i]);
  if (args.count("combine")) {
    combine_studies(args["combine"].as<std::vector<std::string>>(),
                    fs::absolute(args["out"].as<std::string>()).lexically_normal(), command,
                    args.count("replace") > 0);
    return 0;
  }
  if (args.count("replace")) throw InvalidArgument("--replace goes with --combine only");
  if (!args.count("vae")) throw InvalidArgument("missing --vae DIR (see dslens mock-study --help)");
  const bool partial = args.count("partial") > 0;
  const Compute compute = compute_from(args);
  const std::string log_level = args["log-level"].as<std::string>();
  const std::string threads = std::to_string(args["threads"].as<int>());
  const std::string device = compute.device.str(), dtype = dtype_name(compute.dtype);
  // Passed on: each simulate and fit run in this process sets the kernels from its own options.
  const std::string cuda_kernels = args["cuda-kernels"].as<std::string>();

  Settings s;
  s.vae = fs::absolute(args["vae"].as<std::string>()).lexically_normal().string();
  s.mocks = args["mocks"].as<int64_t>();
  s.first = args["first"].as<int64_t>();
  s.pixels = args["pixels"].as<int64_t>();
  s.supersampling = args["supersampling"].as<int64_t>();
  s.chains = args["chains"].as<int64_t>();
  s.warmup = args["warmup"].as<int64_t>();
  s.draws = args["draws"].as<int64_t>();
  s.starts = args["starts"].as<int64_t>();
  s.placement_starts = args["placement-starts"].as<int64_t>();
  s.anneal_snr = args["anneal-snr"].as<double>();
  s.search_rounds = args["search-rounds"].as<int64_t>();
  if (s.search_rounds < 0 || s.search_rounds > 8)
    throw InvalidArgument("--search-rounds must be in [0, 8]");
  if (s.placement_starts < 0) throw InvalidArgument("--placement-starts must be at least 0");
  if (!(s.anneal_snr >= 0) || !std::isfinite(s.anneal_snr))
    throw InvalidArgument("--anneal-snr must be a number >= 0 (0: off)");
  s.seed = args["seed"].as<uint64_t>();
  s.max_depth = args["max-depth"].as<int64_t>();
  s.metric = args["metric"].as<std::string>();
  const int64_t max_batch = args["max-batch"].as<int64_t>();
  s.snr = args["snr"].as<std::vector<double>>();
  if (s.max_depth < 1 || s.max_depth > 30) throw InvalidArgument("--max-depth must be in [1, 30]");
  if (s.metric != "dense" && s.metric != "diag")
    throw InvalidArgument("--metric '" + s.metric + "' is not a metric; allowed: dense, diag");
  if (max_batch < 1) throw InvalidArgument("--max-batch must be at least 1");
  if (s.mocks < 1 || s.mocks > 9999) throw InvalidArgument("--mocks must be in [1, 9999]");
  if (s.first < 0 || s.first + s.mocks > 9999)
    throw InvalidArgument("--first must be >= 0, with --first + --mocks <= 9999");
  if (args.count("only")) {
    if (args.count("first") || args.count("mocks"))
      throw InvalidArgument("--only names the mocks itself: give it without --first and --mocks");
    s.only = args["only"].as<std::vector<int64_t>>();
    std::sort(s.only.begin(), s.only.end());
    for (size_t i = 0; i < s.only.size(); ++i) {
      if (s.only[i] < 0 || s.only[i] > 9998)
        throw InvalidArgument("--only: mock " + std::to_string(s.only[i]) +
                              " is not an index in [0, 9998]");
      if (i > 0 && s.only[i] == s.only[i - 1])
        throw InvalidArgument("--only: mock " + std::to_string(s.only[i]) + " is named twice");
    }
    if (s.only.empty()) throw InvalidArgument("--only needs at least one mock");
    s.mocks = static_cast<int64_t>(s.only.size());
  }
  const std::vector<int64_t> ks = s.indices();
  if (s.pixels < 16) throw InvalidArgument("--pixels must be at least 16");
  if (s.supersampling < 1 || s.supersampling > 16) {
    throw InvalidArgument("--supersampling must be in [1, 16]");
  }
  if (s.chains < 1 || s.draws < 4 || s.warmup < 0 || s.starts < 1) {
    throw InvalidArgument("--chains >= 1, --draws >= 4, --warmup >= 0 and --starts >= 1 needed");
  }
  if (s.snr.empty()) throw InvalidArgument("--snr needs at least one level");
  for (double v : s.snr) {
    if (!(v > 0) || !std::isfinite(v)) {
      throw InvalidArgument("--snr level " + num(v) + " is not a positive number");
    }
  }
  std::sort(s.snr.begin(), s.snr.end());
  s.snr.erase(std::unique(s.snr.begin(), s.snr.end()), s.snr.end());
  if (!fs::exists(fs::path(s.vae) / "checkpoint.json")) {
    throw InputError("--vae '" + s.vae +
                     "' is not a trained VAE (no checkpoint.json); train one with dslens "
                     "train-vae configs/train_vae_default.json --out DIR");
  }

  const fs::path out = fs::absolute(args["out"].as<std::string>()).lexically_normal();
  const bool resume = args.count("resume") > 0;
  const json settings = s.to_json();
  if (partial && (!resume || !fs::exists(out / "settings.json"))) {
    throw InputError("--partial tabulates a study begun in --out ('" + out.string() +
                     "' needs settings.json) and needs --resume with that study's options");
  }
  if (fs::exists(out)) {
    if (!resume) {
      throw InputError("output folder '" + out.string() +
                       "' already exists; pass --resume to continue that study, or choose "
                       "another --out");
    }
    // Levels are independent: --resume may add or drop SNR levels, nothing else may change.
    const fs::path old = out / "settings.json";
    if (fs::exists(old)) {
      json previous = load_json_file(old.string()), asked = settings;
      previous.erase("snr");
      asked.erase("snr");
      if (previous != asked) {
        throw InputError("--resume: '" + old.string() + "' holds other settings (" +
                         previous.dump() + ") than asked (" + asked.dump() +
                         "); rerun with those, or choose another --out");
      }
    }
  }
  fs::create_directories(out);
  if (!partial) write_text_atomically((out / "settings.json").string(), settings.dump(2) + "\n");

  const int width = ks.back() + 1 > 999 ? 4 : 3;
  auto mock_name = [&](int64_t k) {
    std::string n = std::to_string(k);
    return "mock" + std::string(std::max<int>(0, width - static_cast<int>(n.size())), '0') + n;
  };

  // Truths and noise-free peaks, shared by every level.
  std::vector<Truth> truths;
  std::vector<double> peaks;
  for (const int64_t k : ks) truths.push_back(draw_truth(s.seed, k));

  // SIGINT/SIGTERM: the running fit stops with its checkpoint; --resume continues the study.
  const StopOnSignal stop_on_signal;
  json levels = json::array();
  const auto study_t0 = std::chrono::steady_clock::now();
  for (size_t li = 0; li < s.snr.size(); ++li) {
    const double snr = s.snr[li];
    // Noise and fit seeds depend on the level's value, not its place in --snr (--resume may add
    // levels).
    uint64_t level_key = 0;
    std::memcpy(&level_key, &snr, sizeof level_key);
    const fs::path level = out / ("snr" + num(snr, 6));
    const fs::path fit_dir = level / "fit";
    const bool fitted = fs::exists(fit_dir / "index.json");
    std::cout << "mock-study [" << li + 1 << "/" << s.snr.size() << "] SNR " << num(snr) << ": "
              << (fitted ? "already fitted (--resume), reading " : "") << level.string() << "\n"
              << std::flush;
    double fit_wall = NAN;
    if (partial && !fitted && !fs::exists(level)) {
      std::cout << "mock-study: SNR " << num(snr) << " not started (--partial)\n";
      continue;
    }
    if (!fitted && !partial) {
      fs::create_directories(level / "sim-configs");
      fs::create_directories(level / "sims");
      fs::create_directories(level / "fit-configs");
      for (size_t i = 0; i < ks.size(); ++i) {
        const int64_t k = ks[i];
        const std::string name = mock_name(k);
        const fs::path sim_dir = level / "sims" / name;
        if (fs::exists(sim_dir / "truth.json")) continue;  // only with --resume
        if (peaks.empty()) {
          for (const auto& t : truths)
            peaks.push_back(noise_free_peak(simulate_config(t, s), "mock-study"));
        }
        json sim = simulate_config(truths[i], s);
        const double peak = peaks[i];
        sim["noise"] = noise_at_snr(peak, snr);
        sim["seed"] = mix(mix(s.seed, level_key), static_cast<uint64_t>(k)) >> 12;
        sim["comment"] = "dslens mock-study: mock " + std::to_string(k) + " at SNR " + num(snr) +
                         " (noise-free peak " + num(peak) + " counts/s)";
        const fs::path sim_cfg = level / "sim-configs" / (name + ".json");
        write_text_atomically(sim_cfg.string(), sim.dump(2) + "\n");
        if (run_command("simulate", {sim_cfg.string(), "--out", sim_dir.string(), "--device",
                                     device, "--dtype", "float64", "--threads", threads,
                                     "--log-level", "warn", "--cuda-kernels", cuda_kernels}) != 0) {
          throw Error("mock-study: simulating " + sim_cfg.string() + " failed");
        }
      }
      for (const int64_t k : ks) {
        const std::string name = mock_name(k);
        const json fit =
            fit_config((level / "sims" / name).string(), s, mix(s.seed, level_key) >> 12, snr);
        write_text_atomically((level / "fit-configs" / (name + ".json")).string(),
                              fit.dump(2) + "\n");
      }
      std::vector<std::string> fit_args = {(level / "fit-configs").string(),
                                           "--out",
                                           fit_dir.string(),
                                           "--device",
                                           device,
                                           "--dtype",
                                           dtype,
                                           "--threads",
                                           threads,
                                           "--log-level",
                                           log_level,
                                           "--max-batch",
                                           std::to_string(max_batch),
                                           "--cuda-kernels",
                                           cuda_kernels};
      if (fs::exists(fit_dir)) fit_args.push_back("--resume");
      std::cout << "mock-study: fitting " << s.mocks << " mocks at SNR " << num(snr) << " ("
                << max_batch << " per batch) into " << fit_dir.string() << "\n"
                << std::flush;
      const auto t0 = std::chrono::steady_clock::now();
      int rc = 0;
      try {
        rc = run_command("fit", fit_args);
      } catch (const Interrupted&) {
        throw Interrupted(
            "the fits at SNR " + num(snr) + " stopped on request (" + fit_dir.string() +
            " keeps their checkpoints); continue with: " + resume_command(argc, argv));
      }
      fit_wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (rc != 0) throw Error("mock-study: fitting " + fit_dir.string() + " failed");
    }
    if (fitted)  // fitted by an earlier run: its wall time is in index.json
      fit_wall = number_or_nan(load_json_file((fit_dir / "index.json").string()), "seconds");

    json lenses = json::array();
    for (const int64_t k : ks) {
      const std::string name = mock_name(k);
      const fs::path lens_dir = s.mocks == 1 ? fit_dir : fit_dir / name;
      // --partial: only the lenses whose fit has finished (summary.json is written after map.json
      // and draws.npy).
      if (partial && !fitted && !fs::exists(lens_dir / "summary.json")) continue;
      json lens = read_lens(lens_dir, level / "sims" / name);
      const json truth = load_json_file((level / "sims" / name / "truth.json").string());
      lens["background_rms"] = truth.at("noise").at("background_rms").at("value");
      lens["exposure_time"] = truth.at("noise").at("exposure_time").at("value");
      lenses.push_back(lens);
    }
    if (lenses.empty()) {
      std::cout << "mock-study: no finished fit at SNR " << num(snr) << " yet (--partial)\n";
      continue;
    }
    const json lv = level_entry(snr, level.string(), lenses, fit_wall);
    levels.push_back(lv);
  }

  json study{{"command", command},
             {"dslens_version", version()},
             {"date", utc_date()},
             {"device", device},
             {"dtype", dtype},
             {"settings", settings},
             {"vae_weights_fnv1a64", vae_digest(s.vae)},
             {"snr_definition", kSnrDefinition},
             {"levels", levels},
             {"seconds",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - study_t0).count()}};
  if (partial) study["partial"] = true;
  write_study(out, study);
  return 0;
}

}  // namespace mock_study

// The name has a dash, which DSLENS_COMMAND cannot paste into an identifier.
static CommandRegistrar mock_study_registrar(
    commands(), "mock-study", "Simulate and fit N mocks at several SNR levels (docs/mock_study.md)",
    mock_study::run);

}  // namespace dslens::app

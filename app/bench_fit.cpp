// `dslens bench fit`: the whole fit (MAP, then NUTS) on the standard mock of the fit issue —
// 100x100 pixels, EPL + shear, a VAE source (64 latents), 4 chains, 500 warmup + 500 draws — run
// through the real `dslens simulate` and `dslens fit` commands in a temporary folder. Prints the
// time per lens, gradient evaluations per second and bulk ESS per second. With --lenses L, L mocks
// (different noise and Einstein radii) are fitted together as one batch.
#include <spdlog/fmt/fmt.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>

#include "command.h"
#include "dslens/core/config.h"
#include "dslens/core/errors.h"
#include "dslens/nn/checkpoint.h"
#include "dslens/nn/vae.h"
#include "mock_noise.h"

namespace fs = std::filesystem;

namespace dslens::app {
namespace bench_fit_detail {

// The random-weights VAE's seed (bench fit without --vae): its mocks have positive flux.
constexpr uint64_t kRandomVaeSeed = 0;

json prior(double lower, double upper) {
  return {{"prior", "uniform"}, {"lower", lower}, {"upper", upper}};
}

int run(int argc, char** argv) {
  cxxopts::Options options(argv[0], "Time MAP + NUTS on the standard mock (docs/benchmarks.md)");
  options.add_options()("vae",
                        "a trained VAE checkpoint; default: the demo architecture with "
                        "random weights (the same cost)",
                        cxxopts::value<std::string>())(
      "lenses", "mocks fitted together in one batch",
      cxxopts::value<int64_t>()->default_value("1"))(
      "pixels", "image side in pixels", cxxopts::value<int64_t>()->default_value("100"))(
      "snr",
      "peak signal-to-noise: brightest noise-free lensed-source pixel / background rms, as "
      "`dslens mock-study` (0: the bench's fixed noise before session 16, background rms 0.01, "
      "peak SNR 3.9 with the demo VAE)",
      cxxopts::value<double>()->default_value("30"))("chains", "chains per lens",
                                                     cxxopts::value<int64_t>()->default_value("4"))(
      "warmup", "warmup iterations", cxxopts::value<int64_t>()->default_value("500"))(
      "draws", "draws per chain", cxxopts::value<int64_t>()->default_value("500"))(
      "starts",
      "MAP starts per lens (the fit's default: 32; the benches of sessions 16 to 22 used 16, "
      "docs/benchmarks.md)",
      cxxopts::value<int64_t>()->default_value("32"))(
      "max-depth", "NUTS maximum tree depth (the fit's default: 10)",
      cxxopts::value<int64_t>()->default_value("10"))(
      "cuda-graphs", "on|off: replay the sampler's log density from CUDA graphs (CUDA only)",
      cxxopts::value<std::string>()->default_value("on"))(
      "metric", "dense|diag: the sampler's metric (64 correlated latents want dense)",
      cxxopts::value<std::string>()->default_value("dense"))(
      "adaptation", "per_lens|per_chain: the chains of a lens pool their warmup adaptation or not",
      cxxopts::value<std::string>()->default_value("per_lens"))(
      "interpolation",
      "bicubic|bilinear: how the VAE source's stamp is read, in the mock and in the fit "
      "(docs/fit.md, \"Source interpolation\")",
      cxxopts::value<std::string>()->default_value("bicubic"))(
      "out-of-step",
      "on|off|auto: NUTS with the chains out of step (sampler.out_of_step; in warmup the lenses; "
      "auto: the fit's default, on for more than one lens on the CPU)",
      cxxopts::value<std::string>()->default_value("auto"))(
      "map-start",
      "search|truth: the MAP searches from prior draws (the fit's way), or starts at each mock's "
      "truth (dslens fit --init truth), which times the optimiser's polish and NUTS without the "
      "search",
      cxxopts::value<std::string>()->default_value("search"))(
      "keep", "keep the temporary folder and print its path")("json", "print the results as JSON");
  add_compute_options(options, "float32");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  const Compute compute = compute_from(args);
  const int64_t lenses = args["lenses"].as<int64_t>(), pixels = args["pixels"].as<int64_t>();
  if (lenses < 1 || pixels < 8) throw InvalidArgument("--lenses >= 1 and --pixels >= 8 needed");
  const int64_t starts = args["starts"].as<int64_t>();
  if (starts < 1) throw InvalidArgument("--starts must be >= 1, got " + std::to_string(starts));
  const double snr = args["snr"].as<double>();
  if (!(snr >= 0) || !std::isfinite(snr))
    throw InvalidArgument("--snr must be a number >= 0 (0: the fixed noise), got " +
                          std::to_string(snr));
  // The value of a two-valued option, or InvalidArgument naming both.
  auto either = [&args](const std::string& option, const std::string& a, const std::string& b) {
    const std::string v = args[option].as<std::string>();
    if (v != a && v != b)
      throw InvalidArgument("--" + option + ": expected " + a + " or " + b + ", got '" + v + "'");
    return v;
  };
  const std::string graphs = either("cuda-graphs", "on", "off");
  const std::string metric = either("metric", "dense", "diag");
  // "on" or "off" (compute_from has checked it), passed on to the simulation and the fit.
  const std::string cuda_kernels = args["cuda-kernels"].as<std::string>();
  const std::string adaptation = either("adaptation", "per_lens", "per_chain");
  const std::string interpolation = either("interpolation", "bicubic", "bilinear");
  const std::string out_of_step = args["out-of-step"].as<std::string>();
  const std::string map_start = either("map-start", "search", "truth");
  // With --json stdout holds the JSON alone: the simulation's and the fit's own lines are dropped
  // (their warnings still reach stderr) and a --keep folder is named in the JSON ("kept").
  const bool json_out = args.count("json") > 0;
  if (out_of_step != "on" && out_of_step != "off" && out_of_step != "auto")
    throw InvalidArgument("--out-of-step: expected on, off or auto, got '" + out_of_step + "'");

  // A new folder of its own (mkdtemp): a --keep folder of an earlier run, whose process id may
  // come round again, is never reused or removed.
  std::string dir_template = (fs::temp_directory_path() / "dslens-bench-fit-XXXXXX").string();
  if (::mkdtemp(dir_template.data()) == nullptr)
    throw FileError("bench fit: cannot create a folder like " + dir_template +
                    " for the mocks: " + std::strerror(errno));
  const fs::path dir = dir_template;
  fs::create_directories(dir / "configs");
  std::string vae_dir;
  if (args.count("vae")) {
    vae_dir = fs::absolute(args["vae"].as<std::string>()).string();
  } else {
    // The demo config's architecture (configs/train_vae_default.json), untrained.
    nn::VaeArch arch;
    arch.stamp_size = 64;
    arch.latent_dim = 64;
    arch.channels = {8, 16, 32, 64};
    arch.groups = 4;
    // Seeded: LibTorch's default generator starts from another seed in every process here, and
    // some random decoders put no positive flux in the mock (the bench then stopped with an error).
    torch::manual_seed(kRandomVaeSeed);
    nn::Vae vae(arch, nn::PixelNorm{0.0, 1.0});
    vae_dir = (dir / "vae").string();
    fs::create_directories(vae_dir);
    nn::save_checkpoint(vae_dir, *vae, nullptr, 0, json{{"source", "random weights (bench)"}},
                        json::object());
  }

  const double scale = 3.0 / static_cast<double>(pixels) * 1.666;  // about 5" field at 100 px
  const std::string dev = compute.device.str(), dtype = dtype_name(compute.dtype);
  for (int64_t l = 0; l < lenses; ++l) {
    const double theta_e = 1.0 + 0.3 * static_cast<double>(l % 7) / 7.0;
    json sim = {{"grid", {{"nx", pixels}, {"ny", pixels}, {"pixel_scale", scale}}},
                {"psf", {{"fwhm", 2 * scale}}},
                {"mass",
                 {{{"type", "EPL"},
                   {"theta_E", theta_e},
                   {"gamma", 2.05},
                   {"e1", 0.08},
                   {"e2", -0.04},
                   {"center_x", 0.01},
                   {"center_y", -0.02}},
                  {{"type", "SHEAR"}, {"gamma1", 0.03}, {"gamma2", -0.02}}}},
                {"source",
                 {{{"type", "VAE"},
                   {"checkpoint", vae_dir},
                   {"z_seed", 100 + l},
                   {"center_x", 0.05},
                   {"center_y", 0.03},
                   {"scale", 0.015},
                   {"amp", 100.0},
                   {"interpolation", interpolation}}}},
                {"noise", {{"background_rms", 0.01}, {"exposure_time", 2000.0}}},
                {"seed", 1000 + l}};
    // Untrained decoders' stamps have no positive total flux to rescale to (docs/fit.md, "The
    // VAE source's flux"): they are used as decoded, at the same cost.
    if (!args.count("vae")) sim["source"][0]["normalise_flux"] = false;
    if (snr > 0) sim["noise"] = noise_at_snr(noise_free_peak(sim, "bench fit"), snr);
    const std::string name = "mock" + std::to_string(l);
    std::ofstream(dir / (name + "-sim.json")) << sim.dump(2);
    if (run_command(
            "simulate",
            {(dir / (name + "-sim.json")).string(), "--out", (dir / name).string(), "--device", dev,
             "--dtype", "float64", "--log-level", "warn", "--cuda-kernels", cuda_kernels},
            json_out) != 0) {
      throw Error("bench fit: simulating the mock failed");
    }
    json fit = {
        {"data", {{"simulation", (dir / name).string()}}},
        {"model",
         {{"mass",
           {{{"type", "EPL"},
             {"theta_E", prior(0.6, 1.8)},
             {"gamma", prior(1.6, 2.5)},
             {"e1", prior(-0.4, 0.4)},
             {"e2", prior(-0.4, 0.4)},
             {"center_x", prior(-0.2, 0.2)},
             {"center_y", prior(-0.2, 0.2)}},
            {{"type", "SHEAR"}, {"gamma1", prior(-0.15, 0.15)}, {"gamma2", prior(-0.15, 0.15)}}}},
          {"source",
           {{{"type", "VAE"},
             {"checkpoint", vae_dir},
             {"center_x", prior(-0.3, 0.3)},
             {"center_y", prior(-0.3, 0.3)},
             // Free around the truth's 0.015 (docs/fit.md, "The VAE source's scale").
             {"scale", {{"prior", "lognormal"}, {"mu", std::log(0.015)}, {"sigma", 0.3}}},
             {"amp", {{"prior", "lognormal"}, {"mu", 4.6}, {"sigma", 0.5}}},
             {"interpolation", interpolation}}}}}},
        {"map", {{"starts", starts}, {"adam_iterations", 300}, {"lbfgs_iterations", 200}}},
        {"sampler",
         {{"chains", args["chains"].as<int64_t>()},
          {"warmup", args["warmup"].as<int64_t>()},
          {"draws", args["draws"].as<int64_t>()},
          {"max_depth", args["max-depth"].as<int64_t>()},
          {"metric", metric},
          {"adaptation", adaptation},
          {"cuda_graphs", graphs == "on"}}}};
    if (out_of_step != "auto") fit["sampler"]["out_of_step"] = out_of_step == "on";
    if (!args.count("vae")) fit["model"]["source"][0]["normalise_flux"] = false;
    std::ofstream(dir / "configs" / (name + ".json")) << fit.dump(2);
  }

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::string> fit_args = {(dir / "configs").string(),
                                       "--out",
                                       (dir / "fit").string(),
                                       "--device",
                                       dev,
                                       "--dtype",
                                       dtype,
                                       "--log-level",
                                       "warn",
                                       "--cuda-kernels",
                                       cuda_kernels};
  if (map_start == "truth") {
    fit_args.push_back("--init");
    fit_args.push_back("truth");
  }
  const int rc = run_command("fit", fit_args, json_out);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (rc != 0) throw Error("bench fit: the fit failed");

  double map_s = 0, warm_s = 0, samp_s = 0, min_ess = INFINITY, grads = 0, max_rhat = 0;
  // Divergent transitions after warmup, all lenses: the posterior's tails the chains could not
  // integrate, which ESS and R-hat do not show (docs/fit.md, "Divergences").
  int64_t divergences = 0;
  double max_theta_e_error = 0;  // |posterior mean - truth| / truth, the worst lens
  for (int64_t l = 0; l < lenses; ++l) {
    const fs::path lens_dir =
        lenses == 1 ? dir / "fit" : dir / "fit" / ("mock" + std::to_string(l));
    const json s = load_json_file((lens_dir / "summary.json").string());
    map_s += s["seconds"]["map"].get<double>();
    warm_s += s["seconds"]["warmup"].get<double>();
    samp_s += s["seconds"]["sampling"].get<double>();
    grads += s["gradient_evaluations"].get<double>();
    divergences += s["divergences"].get<int64_t>();
    for (const auto& row : s["parameters"]) {
      const std::string n = row["variable"];
      if (n.rfind("z_", 0) == 0 || !row["ess_bulk"].is_number()) continue;
      min_ess = std::min(min_ess, row["ess_bulk"].get<double>());
      if (row["rhat"].is_number()) max_rhat = std::max(max_rhat, row["rhat"].get<double>());
      if (n.rfind("theta_E", 0) == 0 && row["relative_error"].is_number())
        max_theta_e_error =
            std::max(max_theta_e_error, std::abs(row["relative_error"].get<double>()));
    }
  }
  // What the CUDA graphs did (fit.log keeps the info lines the console did not show).
  json graph_lines = json::array();
  {
    std::ifstream log(dir / "fit" / "fit.log");
    for (std::string line; std::getline(log, line);) {
      const auto at = line.find("cuda graphs:");
      if (at != std::string::npos) graph_lines.push_back(line.substr(at));
    }
  }
  const double per_lens = total / static_cast<double>(lenses);
  // Leapfrog steps per chain and iteration: with the evaluations per second, what a longer run of
  // the same trees costs.
  const double chain_iterations =
      static_cast<double>(lenses * args["chains"].as<int64_t>() *
                          (args["warmup"].as<int64_t>() + args["draws"].as<int64_t>()));
  json out = {
      {"device", dev},
      {"dtype", dtype},
      {"lenses", lenses},
      {"pixels", pixels},
      {"chains_per_lens", args["chains"].as<int64_t>()},
      {"warmup", args["warmup"].as<int64_t>()},
      {"draws", args["draws"].as<int64_t>()},
      {"total_seconds", total},
      {"seconds_per_lens", per_lens},
      {"map_seconds", map_s},
      {"warmup_seconds", warm_s},
      {"sampling_seconds", samp_s},
      {"max_depth", args["max-depth"].as<int64_t>()},
      {"metric", metric},
      {"adaptation", adaptation},
      {"interpolation", interpolation},
      {"map_starts", starts},
      {"map_start", map_start},
      {"cuda_graphs", graphs},
      {"out_of_step", out_of_step == "auto"
                          ? (lenses > 1 && compute.device.is_cpu() ? "auto (on)" : "auto (off)")
                          : out_of_step},
      {"cuda_kernels", cuda_kernels},
      {"cuda_graphs_log", graph_lines},
      {"gradient_evaluations_per_second", grads / (warm_s + samp_s)},
      {"leapfrog_steps_per_iteration", grads / chain_iterations},
      {"min_bulk_ess_lens_params", min_ess},
      {"min_bulk_ess_per_second_sampling", min_ess / (samp_s / lenses)},
      {"max_rhat_lens_params", max_rhat},
      {"divergences_after_warmup", divergences},
      {"max_theta_e_relative_error", max_theta_e_error},
      {"snr", snr > 0 ? json(snr) : json("fixed noise: background rms 0.01")}};
  if (args.count("keep")) out["kept"] = dir.string();
  if (json_out) {
    std::cout << out.dump(2) << "\n";
  } else {
    std::cout << std::fixed << std::setprecision(2) << "bench fit on " << dev << " " << dtype
              << ": " << lenses << " lens(es) of " << pixels << "x" << pixels << " px at "
              << (snr > 0 ? fmt::format("peak SNR {:g}", snr) : "fixed noise") << ", "
              << out["chains_per_lens"] << " chains x (" << out["warmup"] << " warmup + "
              << out["draws"] << " draws)"
              << (map_start == "truth" ? ", the MAP started at the truths (no search)" : "")
              << "\n  total " << total << " s, " << per_lens << " s per lens (MAP " << map_s
              << " s, warmup " << warm_s << " s, sampling " << samp_s << " s, summed over lenses)\n"
              << "  gradient evaluations per second (chain-steps): "
              << out["gradient_evaluations_per_second"].get<double>() << " ("
              << out["leapfrog_steps_per_iteration"].get<double>()
              << " leapfrog steps per chain and iteration, maximum depth " << out["max_depth"]
              << ", " << metric << " metric adapted " << adaptation << ")\n"
              << "  smallest bulk ESS of the lens and source parameters: " << min_ess << " ("
              << out["min_bulk_ess_per_second_sampling"].get<double>()
              << " per second of sampling per lens)\n"
              << "  largest R-hat of the lens and source parameters: " << std::setprecision(3)
              << max_rhat << (max_rhat > 1.01 ? " (not converged)" : "")
              << "; theta_E's posterior mean off the truth by up to " << 100.0 * max_theta_e_error
              << " %\n"
              << "  divergent transitions after warmup: " << divergences << " of "
              << lenses * args["chains"].as<int64_t>() * args["draws"].as<int64_t>() << "\n";
    for (const auto& line : graph_lines) std::cout << "  " << line.get<std::string>() << "\n";
  }
  if (args.count("keep")) {
    if (!json_out) std::cout << "kept " << dir.string() << "\n";
  } else {
    fs::remove_all(dir);
  }
  return 0;
}

}  // namespace bench_fit_detail

DSLENS_BENCH(fit, "MAP + NUTS on the standard 100x100 VAE-source mock", bench_fit_detail::run);

}  // namespace dslens::app

// `dslens train-vae CONFIG --out DIR [--resume] [--overwrite]`: trains the source-prior VAE on
// galaxy stamps and writes checkpoints, a log, loss curves, reconstructions, prior samples and
// metrics.json into DIR.
//
// Config: {"data": {...} (see nn/dataset.h), "model": {stamp_size, latent_dim, channels, norm,
// groups}, "train": {steps, batch_size, lr, lr_final_fraction, seed, pixel_sigma, beta,
// val_fraction, augment, checkpoint_every, eval_every, log_every, eval_batch, dtype},
// "evaluate": {"NAME": {a data object}, ...}, "report": {"rows": 8, "samples": 16}}.
//
// Data parallel: start W processes with WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT (or under srun
// with SLURM_NTASKS/SLURM_PROCID and MASTER_ADDR); rank 0 writes DIR.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "command.h"
#include "dslens/core/atomic_file.h"
#include "dslens/core/config.h"
#include "dslens/core/errors.h"
#include "dslens/core/logging.h"
#include "dslens/core/output_dir.h"
#include "dslens/core/plot.h"
#include "dslens/core/version.h"
#include "dslens/nn/checkpoint.h"
#include "dslens/nn/dataset.h"
#include "dslens/nn/distributed.h"
#include "dslens/nn/trainer.h"
#include "duration_text.h"
#include "stop_signal.h"

namespace fs = std::filesystem;

namespace dslens::app {
namespace train_vae_detail {

using plot::Box;
using plot::Canvas;

// A progress bar on stderr: redrawn in place on a terminal, a line every 10% otherwise.
class ProgressBar {
 public:
  ProgressBar() : tty_(::isatty(2) != 0) {}
  void update(const nn::Progress& p) {
    const auto now = std::chrono::steady_clock::now();
    const int decile = static_cast<int>(10 * p.step / std::max<int64_t>(1, p.steps));
    if (tty_) {
      if (!p.done && now - last_ < std::chrono::milliseconds(200)) return;
    } else if (!p.done && decile == last_decile_) {
      return;
    }
    last_ = now;
    last_decile_ = decile;
    const int width = 24;
    const int filled = static_cast<int>(width * p.step / std::max<int64_t>(1, p.steps));
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(width, '.');
    char line[256];
    std::snprintf(line, sizeof line,
                  "[%s] step %lld/%lld  -elbo %.4g  recon %.4g  kl %.4g  mse %.3g  %.0f stamps/s  "
                  "ETA %s",
                  bar.c_str(), static_cast<long long>(p.step), static_cast<long long>(p.steps),
                  p.last.loss, p.last.recon, p.last.kl, p.last.mse, p.stamps_per_s,
                  duration_text(p.eta_s).c_str());
    if (tty_) {
      std::cerr << "\r" << line << "\033[K" << (p.done ? "\n" : "") << std::flush;
    } else {
      std::cerr << line << "\n" << std::flush;
    }
  }

 private:
  bool tty_;
  std::chrono::steady_clock::time_point last_{};
  int last_decile_ = -1;
};

struct Report {
  int64_t rows = 8;
  int64_t samples = 16;
};

Report parse_report(const ConfigNode& node) {
  node.require_object();
  node.allow_only({"rows", "samples"});
  Report r;
  r.rows = node.integer_or("rows", r.rows, Range::closed(1, 32));
  r.samples = node.integer_or("samples", r.samples, Range::closed(1, 64));
  return r;
}

// Loss curves: -ELBO (left) and pixel MSE on a log axis (right), train and validation.
void plot_losses(const std::string& path, const std::vector<nn::LossPoint>& train,
                 const std::vector<nn::LossPoint>& val) {
  Canvas canvas(1000, 420);
  auto panel = [&](int x0, const char* title, bool mse) {
    std::vector<double> tx, ty, vx, vy;
    for (const auto& p : train) {
      const double v = mse ? p.mse : p.loss;
      if (std::isfinite(v) && (!mse || v > 0)) tx.push_back(double(p.step)), ty.push_back(v);
    }
    for (const auto& p : val) {
      const double v = mse ? p.mse : p.loss;
      if (std::isfinite(v) && (!mse || v > 0)) vx.push_back(double(p.step)), vy.push_back(v);
    }
    if (tx.empty() && vx.empty()) return;
    double xmax = 1, ymin = INFINITY, ymax = -INFINITY;
    for (auto* xs : {&tx, &vx})
      for (double x : *xs) xmax = std::max(xmax, x);
    // Skip the first 5% of the train curve when choosing the y range, so the start's large
    // values do not flatten the rest.
    const size_t skip = tx.size() / 20;
    for (size_t i = skip; i < ty.size(); ++i)
      ymin = std::min(ymin, ty[i]), ymax = std::max(ymax, ty[i]);
    for (double y : vy) ymin = std::min(ymin, y), ymax = std::max(ymax, y);
    if (!(ymax > ymin)) ymax = ymin + 1;
    if (mse) {
      ymin /= 1.5;
      ymax *= 1.5;
    } else {
      const double pad = 0.05 * (ymax - ymin);
      ymin -= pad;
      ymax += pad;
    }
    plot::Axes ax(canvas, Box{x0 + 105, 40, 370, 320}, 0, xmax, ymin, ymax, mse);
    ax.frame(title, "step", mse ? "pixel MSE" : "-ELBO (nats/stamp)");
    if (!tx.empty()) ax.plot(tx, ty, plot::kBlue, 1);
    if (!vx.empty()) {
      ax.plot(vx, vy, plot::kOrange, 2);
      ax.scatter(vx, vy, plot::kOrange, 2);
    }
    ax.legend({{"train", plot::kBlue}, {"validation", plot::kOrange}});
  };
  panel(0, "negative ELBO", false);
  panel(500, "reconstruction MSE", true);
  canvas.save_png(path);
}

// Rows of validation stamp | reconstruction (posterior mean) | residual.
void plot_reconstructions(const std::string& path, nn::VaeImpl& vae, const torch::Tensor& stamps,
                          int64_t rows) {
  torch::NoGradGuard guard;
  const int64_t n = std::min<int64_t>(rows, stamps.size(0));
  auto x = stamps.narrow(0, 0, n).to(vae.options());
  auto recon = vae.decode(vae.encode(x).first);
  x = x.to(torch::kCPU, torch::kFloat64);
  recon = recon.to(torch::kCPU, torch::kFloat64);
  auto res = x - recon;
  const int cell = 120, pad = 6, top = 28, left = 8, text_w = 150;
  Canvas canvas(left + 3 * (cell + pad) + text_w, top + static_cast<int>(n) * (cell + pad) + pad);
  const char* headers[3] = {"stamp", "reconstruction", "residual"};
  for (int c = 0; c < 3; ++c)
    canvas.text(left + c * (cell + pad) + 4, 8, headers[c], plot::kBlack, 2 - (c > 0));
  for (int64_t i = 0; i < n; ++i) {
    const int y = top + static_cast<int>(i) * (cell + pad);
    const double vmax = std::max(x[i].max().item<double>(), recon[i].max().item<double>());
    const double vmin = std::min(x[i].min().item<double>(), recon[i].min().item<double>());
    canvas.image(Box{left, y, cell, cell}, x[i], "viridis", vmin, vmax);
    canvas.image(Box{left + cell + pad, y, cell, cell}, recon[i], "viridis", vmin, vmax);
    // Residuals on the stamp's own scale (+-20% of its peak) so that their size is visible.
    const double r = 0.2 * std::max(std::abs(vmax), 1e-30);
    canvas.image(Box{left + 2 * (cell + pad), y, cell, cell}, res[i], "coolwarm", -r, r);
    const double rel = std::sqrt(res[i].pow(2).sum().item<double>() /
                                 std::max(x[i].pow(2).sum().item<double>(), 1e-300));
    char buf[64];
    std::snprintf(buf, sizeof buf, "|res|/|x| %.3f", rel);
    canvas.text(left + 3 * (cell + pad), y + cell / 2 - 10, buf);
    canvas.text(left + 3 * (cell + pad), y + cell / 2 + 4, "res scale +-20%");
  }
  canvas.save_png(path);
}

void plot_samples(const std::string& path, nn::VaeImpl& vae, int64_t count, uint64_t seed) {
  torch::NoGradGuard guard;
  auto gen = at::detail::createCPUGenerator(nn::mix_seed(seed, 99, 0));
  auto imgs = vae.sample(count, gen).to(torch::kCPU, torch::kFloat64);
  const int cols = static_cast<int>(std::ceil(std::sqrt(double(count))));
  const int rows = static_cast<int>((count + cols - 1) / cols);
  const int cell = 110, pad = 6, top = 30;
  Canvas canvas(pad + cols * (cell + pad), top + rows * (cell + pad));
  canvas.text(pad, 8, "samples from the prior: decode(z), z ~ N(0, I)", plot::kBlack, 2);
  for (int64_t k = 0; k < count; ++k) {
    const int r = static_cast<int>(k) / cols, c = static_cast<int>(k) % cols;
    canvas.image(Box{pad + c * (cell + pad), top + r * (cell + pad), cell, cell}, imgs[k],
                 "viridis");
  }
  canvas.save_png(path);
}

int run(int argc, char** argv) {
  cxxopts::Options options(argv[0], "Train the source-prior VAE on galaxy stamps");
  options.add_options()("config", "JSON config", cxxopts::value<std::string>())(
      "out", "output folder", cxxopts::value<std::string>())(
      "resume", "continue the run in --out from its last checkpoint")("overwrite",
                                                                      "replace an existing --out");
  add_compute_options(options, "float32");
  options.parse_positional({"config"});
  options.positional_help("CONFIG");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  if (!args.count("config"))
    throw InvalidArgument("no config given (dslens train-vae CONFIG --out DIR)");
  if (!args.count("out")) throw InvalidArgument("no output folder given (--out DIR)");
  const bool resume = args.count("resume") > 0;
  const bool overwrite = args.count("overwrite") > 0;
  if (resume && overwrite) throw InvalidArgument("--resume and --overwrite exclude each other");
  Compute compute = compute_from(args);

  // ---- config ----
  const std::string config_path = args["config"].as<std::string>();
  const json config = load_json_file(config_path);
  const auto root = ConfigNode::root(config);
  root.require_object();
  root.allow_only({"data", "model", "train", "evaluate", "report"});
  const std::string base_dir = fs::absolute(config_path).parent_path().string();
  const json empty = json::object();
  const auto node_or_empty = [&](const char* key) {
    return root.has(key) ? root.at(key) : ConfigNode(empty, root.child_path(key));
  };
  const nn::VaeArch arch = nn::vae_arch_from_config(node_or_empty("model"));
  nn::TrainConfig train_cfg = nn::TrainConfig::from_config(node_or_empty("train"));
  if (args.count("dtype")) train_cfg.dtype = dtype_name(compute.dtype);
  const nn::DataConfig data_cfg = nn::parse_data_config(node_or_empty("data"), base_dir);
  std::vector<std::pair<std::string, nn::DataConfig>> extra_sets;
  if (root.has("evaluate")) {
    const auto ev = root.at("evaluate");
    ev.require_object();
    for (const auto& key : ev.keys())
      extra_sets.emplace_back(key, nn::parse_data_config(ev.at(key), base_dir));
  }
  const Report report = parse_report(node_or_empty("report"));

  // ---- processes and output ----
  const auto env = nn::DistributedEnv::from_environment();
  const bool rank0 = env.rank == 0;
  const std::string out_arg = args["out"].as<std::string>();
  std::optional<OutputDir> out;
  std::optional<ScopedLogFile> log_file;
  std::string out_dir = fs::absolute(out_arg).lexically_normal().string();
  if (rank0) {
    out.emplace(OutputDir::live(out_arg, overwrite, resume));
    out_dir = out->working_dir();
    log_file.emplace(out->file("train.log"));
    write_text_atomically(out->file("config.json"), config.dump(2) + "\n");
  }
  spdlog::info("dslens {} train-vae: config {}, output {}{}", version(), config_path, out_dir,
               resume ? " (resuming)" : "");
  auto comm = nn::make_communicator(env, compute.device);
  if (env.active())
    spdlog::info("rank {} of {} ({} backend)", env.rank, env.world_size, comm->backend());

  // ---- data ----
  const auto t_data = std::chrono::steady_clock::now();
  const torch::Tensor stamps = nn::load_stamps(data_cfg, arch.stamp_size);
  auto [train, val] = nn::split_train_val(stamps, train_cfg.val_fraction, train_cfg.seed);
  std::vector<std::pair<std::string, torch::Tensor>> extra_stamps;
  if (rank0) {
    for (const auto& [name, cfg] : extra_sets)
      extra_stamps.emplace_back(name, nn::load_stamps(cfg, arch.stamp_size));
  }
  spdlog::info("data: {} stamps of {}x{} ({} train, {} validation) in {:.1f} s", stamps.size(0),
               arch.stamp_size, arch.stamp_size, train.size(0), val.size(0),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t_data).count());

  // ---- training ----
  nn::TrainOptions topts;
  topts.compute = compute;
  topts.checkpoint_dir = out_dir;
  topts.resume = resume;
  topts.data_description = nn::describe(data_cfg);
  topts.augment = [](const torch::Tensor& b, torch::Generator& g) { return nn::augment(b, g); };
  topts.comm = comm.get();
  ProgressBar bar;
  if (rank0) topts.on_progress = [&](const nn::Progress& p) { bar.update(p); };
  // SIGINT/SIGTERM: a checkpoint after the current step, then exit 128 + N (stop_signal.h).
  const StopOnSignal stop_on_signal;
  topts.stop_requested = stop_requested;
  nn::TrainResult result;
  try {
    result = nn::train_vae(train_cfg, arch, train, val, topts);
  } catch (const Interrupted& e) {
    throw Interrupted(std::string(e.what()) + "; continue with: " + resume_command(argc, argv));
  }
  if (!rank0) return 0;

  // ---- report ----
  auto& vae = *result.vae;
  json metrics = {{"dslens_version", version()},
                  {"checkpoint", nn::kCheckpointSidecar},
                  {"step", result.step},
                  {"training",
                   {{"seconds", result.seconds},
                    {"world_size", env.world_size},
                    {"device", compute.device.str()},
                    {"train_count", train.size(0)},
                    {"val_count", val.size(0)},
                    {"parameters", vae.parameter_count()}}}};
  if (result.val.count > 0) metrics["validation"] = result.val.to_json();
  json extra = json::object();
  for (const auto& [name, s] : extra_stamps) {
    extra[name] =
        nn::evaluate_vae(vae, s, train_cfg.pixel_sigma, train_cfg.seed, train_cfg.eval_batch)
            .to_json();
  }
  if (!extra.empty()) metrics["evaluate"] = extra;
  write_text_atomically(out->file("metrics.json"), metrics.dump(2) + "\n");
  plot_losses(out->file("loss_curves.png"), result.train_history, result.val_history);
  plot_reconstructions(out->file("reconstructions.png"), vae, val.size(0) > 0 ? val : train,
                       report.rows);
  plot_samples(out->file("samples.png"), vae, report.samples, train_cfg.seed);

  if (result.val.count > 0) {
    spdlog::info("validation: ELBO {:.6g} nats/stamp, MSE {:.4g} (relative {:.4g})",
                 result.val.elbo, result.val.mse, result.val.relative_mse);
  }
  for (const auto& [name, m] : extra.items()) {
    spdlog::info("{}: ELBO {:.6g}, MSE {:.4g} (relative {:.4g})", name, m["elbo"].get<double>(),
                 m["mse"].get<double>(), m["relative_mse"].get<double>());
  }
  std::cout << "trained " << result.step << " steps in " << duration_text(result.seconds)
            << "; wrote " << out_dir
            << "/{checkpoint.json, metrics.json, loss_curves.png, reconstructions.png, "
            << "samples.png, train.log}\n";
  return 0;
}

}  // namespace train_vae_detail

// The name has a dash, which DSLENS_COMMAND cannot paste into an identifier.
static CommandRegistrar train_vae_registrar(commands(), "train-vae",
                                            "Train the source-prior VAE on galaxy stamps",
                                            train_vae_detail::run);

}  // namespace dslens::app

// `dslens bench vae`: VAE decoder throughput in latents per second, forward alone and forward plus
// the gradient with respect to z (what a fitter needs; the weights are frozen), at several batch
// sizes. Uses the default architecture (that of configs/train_vae_default.json) with random
// weights, the "model" of a train-vae --config, or a trained --checkpoint. --kernels libtorch runs
// LibTorch's own layers instead of the CPU kernels of nn/cpu_ops.h, for comparison.
#include <spdlog/spdlog.h>

#include <chrono>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "command.h"
#include "dslens/core/config.h"
#include "dslens/core/errors.h"
#include "dslens/nn/checkpoint.h"
#include "dslens/nn/trainer.h"
#include "dslens/nn/vae.h"
#include "op_census.h"

namespace dslens::app {
namespace bench_vae_detail {

struct Row {
  int64_t batch;
  double forward_per_s;
  double gradient_per_s;
  // ATen operators per call (app/op_census.h): each a kernel launch or more on a GPU.
  int64_t forward_ops = 0, gradient_ops = 0;
  double forward_ms() const { return 1e3 * double(batch) / forward_per_s; }
  double gradient_ms() const { return 1e3 * double(batch) / gradient_per_s; }
};

// Repeats `fn` (which must synchronise) until `min_seconds` have passed; returns calls per second.
double rate(const std::function<void()>& fn, double min_seconds) {
  fn();  // warm-up
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  int64_t calls = 0;
  double secs = 0;
  do {
    fn();
    ++calls;
    secs = std::chrono::duration<double>(clock::now() - t0).count();
  } while (secs < min_seconds);
  return static_cast<double>(calls) / secs;
}

int run(int argc, char** argv) {
  cxxopts::Options options(argv[0],
                           "VAE decoder throughput (latents/s), forward and forward+grad wrt z");
  options.add_options()("batches", "comma-separated batch sizes",
                        cxxopts::value<std::vector<int64_t>>()->default_value("1,4,64,1024"))(
      "seconds", "minimum time per measurement", cxxopts::value<double>()->default_value("1.0"))(
      "checkpoint", "a trained VAE checkpoint (folder or checkpoint.json); default: random weights",
      cxxopts::value<std::string>())("config",
                                     "a train-vae config whose \"model\" to use (random weights)",
                                     cxxopts::value<std::string>())(
      "kernels", "CPU layers: dslens (nn/cpu_ops.h) or libtorch",
      cxxopts::value<std::string>()->default_value("dslens"))("json", "print the results as JSON");
  add_compute_options(options, "float32");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  const Compute compute = compute_from(args);
  const double min_seconds = args["seconds"].as<double>();
  if (!(min_seconds > 0)) throw InvalidArgument("--seconds must be > 0");

  const std::string kernels = args["kernels"].as<std::string>();
  if (kernels != "dslens" && kernels != "libtorch") {
    throw InvalidArgument("--kernels must be dslens or libtorch, got '" + kernels + "'");
  }
  if (args.count("checkpoint") && args.count("config")) {
    throw InvalidArgument("--checkpoint and --config exclude each other");
  }

  nn::Vae vae{nullptr};
  std::string source = "random weights, default architecture";
  if (args.count("checkpoint")) {
    source = args["checkpoint"].as<std::string>();
    vae = nn::load_vae(source, compute).vae;
  } else {
    nn::VaeArch arch;
    if (args.count("config")) {
      const std::string path = args["config"].as<std::string>();
      const json config = load_json_file(path);
      const auto root = ConfigNode::root(config);
      root.require_object();
      if (root.has("model")) arch = nn::vae_arch_from_config(root.at("model"));
      source = "random weights, model of " + path;
    }
    torch::manual_seed(0);
    vae = nn::Vae(arch);
    vae->to(compute.device, compute.dtype);
  }
  vae->eval();
  vae->set_cpu_kernels(kernels == "dslens");
  for (auto& p : vae->parameters()) p.requires_grad_(false);
  const int64_t d = vae->arch().latent_dim;

  std::vector<Row> rows;
  for (int64_t batch : args["batches"].as<std::vector<int64_t>>()) {
    if (batch < 1) throw InvalidArgument("--batches must be >= 1");
    auto z = torch::randn({batch, d}, compute.options());
    auto w =
        torch::randn({batch, vae->arch().stamp_size, vae->arch().stamp_size}, compute.options());
    Row r{batch, 0, 0};
    const auto forward = [&] {
      torch::NoGradGuard guard;
      return vae->decode(z).sum();
    };
    const auto gradient = [&] {
      auto zz = z.detach().requires_grad_(true);
      auto loss = (vae->decode(zz) * w).sum();
      return torch::autograd::grad({loss}, {zz})[0].sum();
    };
    // .item() synchronises (and is counted by neither census).
    r.forward_per_s = batch * rate([&] { (void)forward().item<double>(); }, min_seconds);
    r.gradient_per_s = batch * rate([&] { (void)gradient().item<double>(); }, min_seconds);
    {
      OpCensus census;
      (void)forward();
      r.forward_ops = census.operators();
    }
    {
      OpCensus census;
      (void)gradient();
      r.gradient_ops = census.operators();
      census.log_most_frequent("batch " + std::to_string(batch) + ": forward + gradient: ", 25);
    }
    rows.push_back(r);
    spdlog::debug("batch {}: {:.4g} latents/s forward, {:.4g} with gradient", batch,
                  r.forward_per_s, r.gradient_per_s);
  }

  if (args.count("json")) {
    json j = {{"benchmark", "vae"},
              {"device", compute.device.str()},
              {"dtype", dtype_name(compute.dtype)},
              {"threads", torch::get_num_threads()},
              {"kernels", kernels},
              {"model", source},
              {"architecture", vae->arch().to_json()},
              {"stamp_size", vae->arch().stamp_size},
              {"latent_dim", d},
              {"parameters", vae->parameter_count()},
              {"results", json::array()}};
    for (const auto& r : rows) {
      j["results"].push_back({{"batch", r.batch},
                              {"forward_latents_per_s", r.forward_per_s},
                              {"forward_ms", r.forward_ms()},
                              {"forward_grad_latents_per_s", r.gradient_per_s},
                              {"forward_grad_ms", r.gradient_ms()},
                              {"forward_ops", r.forward_ops},
                              {"forward_grad_ops", r.gradient_ops}});
    }
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << "VAE decoder (" << source << ", " << vae->arch().stamp_size << "x"
            << vae->arch().stamp_size << ", latent " << d << ", channels "
            << vae->arch().to_json()["channels"].dump() << ", " << vae->parameter_count()
            << " parameters) on " << compute.device.str() << ", " << dtype_name(compute.dtype)
            << ", " << torch::get_num_threads() << " threads, " << kernels << " kernels\n";
  std::cout << "(ops: ATen operators per call, each a kernel launch or more on a GPU)\n";
  std::cout << std::setw(8) << "batch" << std::setw(14) << "fwd lat/s" << std::setw(12) << "fwd ms"
            << std::setw(8) << "ops" << std::setw(20) << "fwd+grad(z) lat/s" << std::setw(15)
            << "fwd+grad ms" << std::setw(8) << "ops\n";
  for (const auto& r : rows) {
    std::cout << std::setw(8) << r.batch << std::fixed << std::setprecision(1) << std::setw(14)
              << r.forward_per_s << std::setprecision(3) << std::setw(12) << r.forward_ms()
              << std::setw(8) << r.forward_ops << std::setprecision(1) << std::setw(20)
              << r.gradient_per_s << std::setprecision(3) << std::setw(15) << r.gradient_ms()
              << std::setw(8) << r.gradient_ops << "\n";
  }
  return 0;
}

}  // namespace bench_vae_detail

DSLENS_BENCH(vae, "VAE decoder latents per second, forward and with gradient wrt z",
             bench_vae_detail::run);

}  // namespace dslens::app

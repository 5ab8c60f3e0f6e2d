// `dslens bench vae`: VAE decoder throughput in latents per second, forward alone and forward plus
// the gradient with respect to z (what a fitter needs), at several batch sizes. Uses the default
// architecture (64x64 stamps, 64 latents) with random weights, or a trained --checkpoint.
#include <spdlog/spdlog.h>

#include <chrono>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "command.h"
#include "dslens/core/config.h"
#include "dslens/core/errors.h"
#include "dslens/nn/checkpoint.h"
#include "dslens/nn/vae.h"

namespace dslens::app {
namespace bench_vae_detail {

struct Row {
  int64_t batch;
  double forward_per_s;
  double gradient_per_s;
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
                        cxxopts::value<std::vector<int64_t>>()->default_value("1,64,1024"))(
      "seconds", "minimum time per measurement", cxxopts::value<double>()->default_value("1.0"))(
      "checkpoint", "a trained VAE checkpoint (folder or checkpoint.json); default: random weights",
      cxxopts::value<std::string>())("json", "print the results as JSON");
  add_compute_options(options, "float32");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  const Compute compute = compute_from(args);
  const double min_seconds = args["seconds"].as<double>();
  if (!(min_seconds > 0)) throw InvalidArgument("--seconds must be > 0");

  nn::Vae vae{nullptr};
  std::string source = "random weights, default architecture";
  if (args.count("checkpoint")) {
    source = args["checkpoint"].as<std::string>();
    vae = nn::load_vae(source, compute).vae;
  } else {
    torch::manual_seed(0);
    vae = nn::Vae(nn::VaeArch());
    vae->to(compute.device, compute.dtype);
  }
  vae->eval();
  for (auto& p : vae->parameters()) p.requires_grad_(false);
  const int64_t d = vae->arch().latent_dim;

  std::vector<Row> rows;
  for (int64_t batch : args["batches"].as<std::vector<int64_t>>()) {
    if (batch < 1) throw InvalidArgument("--batches must be >= 1");
    auto z = torch::randn({batch, d}, compute.options());
    auto w =
        torch::randn({batch, vae->arch().stamp_size, vae->arch().stamp_size}, compute.options());
    Row r{batch, 0, 0};
    r.forward_per_s = batch * rate(
                                  [&] {
                                    torch::NoGradGuard guard;
                                    (void)vae->decode(z).sum().item<double>();  // synchronises
                                  },
                                  min_seconds);
    r.gradient_per_s = batch * rate(
                                   [&] {
                                     auto zz = z.detach().requires_grad_(true);
                                     auto loss = (vae->decode(zz) * w).sum();
                                     auto g = torch::autograd::grad({loss}, {zz})[0];
                                     (void)g.sum().item<double>();
                                   },
                                   min_seconds);
    rows.push_back(r);
    spdlog::debug("batch {}: {:.4g} latents/s forward, {:.4g} with gradient", batch,
                  r.forward_per_s, r.gradient_per_s);
  }

  if (args.count("json")) {
    json j = {{"benchmark", "vae"},
              {"device", compute.device.str()},
              {"dtype", dtype_name(compute.dtype)},
              {"threads", torch::get_num_threads()},
              {"model", source},
              {"stamp_size", vae->arch().stamp_size},
              {"latent_dim", d},
              {"parameters", vae->parameter_count()},
              {"results", json::array()}};
    for (const auto& r : rows) {
      j["results"].push_back({{"batch", r.batch},
                              {"forward_latents_per_s", r.forward_per_s},
                              {"forward_grad_latents_per_s", r.gradient_per_s}});
    }
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << "VAE decoder (" << source << ", " << vae->arch().stamp_size << "x"
            << vae->arch().stamp_size << ", latent " << d << ", " << vae->parameter_count()
            << " parameters) on " << compute.device.str() << ", " << dtype_name(compute.dtype)
            << ", " << torch::get_num_threads() << " threads\n";
  std::cout << std::setw(8) << "batch" << std::setw(20) << "forward latents/s" << std::setw(24)
            << "fwd+grad(z) latents/s\n";
  for (const auto& r : rows) {
    std::cout << std::setw(8) << r.batch << std::setw(20) << std::setprecision(4) << r.forward_per_s
              << std::setw(23) << r.gradient_per_s << "\n";
  }
  return 0;
}

}  // namespace bench_vae_detail

DSLENS_BENCH(vae, "VAE decoder latents per second, forward and with gradient wrt z",
             bench_vae_detail::run);

}  // namespace dslens::app

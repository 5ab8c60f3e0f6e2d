// `dslens bench simulate`: images per second of the forward model (EPL + SHEAR lens, 64x64
// pixelated INTERPOL source, 11x11 PSF, 100x100 pixels at 0.05"/px, supersampling 2), alone and
// with the gradient wrt every lens and source parameter and every source pixel.
#include <spdlog/spdlog.h>

#include <chrono>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "command.h"
#include "dslens/core/config.h"
#include "dslens/core/errors.h"
#include "dslens/physics/image_model.h"
#include "op_census.h"

namespace dslens::app {
namespace bench_simulate_detail {

using physics::Tensor;

// A deterministic 64x64 galaxy-like source: a bulge, a disc and a few clumps.
Tensor synthetic_source(int64_t n, const Compute& compute) {
  auto opts = compute.options();
  Tensor r = torch::arange(n, opts) - 0.5 * static_cast<double>(n - 1);
  Tensor x = r.unsqueeze(0).expand({n, n}) / (0.25 * n);
  Tensor y = r.unsqueeze(1).expand({n, n}) / (0.25 * n);
  Tensor img = torch::exp(-torch::sqrt(x * x + 4.0 * y * y) * 2.0) * 2.0 +
               torch::exp(-(x * x + y * y) * 8.0) * 4.0;
  const double clumps[4][3] = {
      {0.6, 0.3, 1.5}, {-0.5, -0.4, 1.0}, {0.1, -0.7, 0.8}, {-0.7, 0.5, 0.6}};
  for (const auto& c : clumps) {
    img = img + torch::exp(-((x - c[0]) * (x - c[0]) + (y - c[1]) * (y - c[1])) * 40.0) * c[2];
  }
  return img;
}

struct Setup {
  physics::ImageModel model;
  std::vector<Tensor> leaves;  // everything the gradient is taken with respect to
};

Setup make_setup(int64_t batch, bool grad, const Compute& compute, const std::string& source_type) {
  auto param = [&](double v) {
    return torch::full({batch}, v, compute.options()).requires_grad_(grad);
  };
  Setup s;
  s.model.grid = physics::PixelGrid::centered(100, 100, 0.05);
  s.model.supersampling = 2;
  s.model.psf_kernel = physics::gaussian_psf_kernel(0.1, 0.05, compute, 11);
  physics::ParamMap epl = {{"theta_E", param(1.2)},   {"gamma", param(2.05)},
                           {"e1", param(0.08)},       {"e2", param(-0.05)},
                           {"center_x", param(0.02)}, {"center_y", param(-0.01)}};
  physics::ParamMap shear = {{"gamma1", param(0.03)}, {"gamma2", param(-0.02)}};
  Tensor pixels = synthetic_source(64, compute).unsqueeze(0).expand({batch, 64, 64}).clone();
  pixels.requires_grad_(grad);
  physics::ParamMap src = {{"image", pixels},         {"center_x", param(0.05)},
                           {"center_y", param(0.02)}, {"scale", param(0.02)},
                           {"phi_G", param(0.3)},     {"amp", param(1.0)}};
  for (auto* m : {&epl, &shear, &src}) {
    for (auto& [name, t] : *m) s.leaves.push_back(t);
  }
  s.model.lens.add(physics::make_mass_profile("EPL"), epl);
  s.model.lens.add(physics::make_mass_profile("SHEAR"), shear);
  s.model.source_light.push_back({physics::make_light_profile(source_type), src});
  return s;
}

// Seconds per call of `fn`, after one warm-up call, over at least `min_reps` calls and
// `min_seconds` of wall time.
double time_per_call(const std::function<void()>& fn, double min_seconds, int min_reps) {
  fn();
  int reps = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double elapsed = 0.0;
  while (reps < min_reps || elapsed < min_seconds) {
    fn();
    ++reps;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return elapsed / reps;
}

std::vector<int64_t> parse_batches(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      const long long v = std::stoll(item, &used);
      if (used != item.size() || v < 1 || v > 100000) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      throw InvalidArgument("--batches: '" + item + "' is not a batch size in 1..100000");
    }
  }
  if (out.empty()) throw InvalidArgument("--batches: expected a list like 1,16,256");
  return out;
}

int bench_simulate(int argc, char** argv) {
  cxxopts::Options options(argv[0],
                           "Images per second of the forward model: 100x100 px at 0.05\"/px, "
                           "supersampling 2, EPL+SHEAR, 64x64 pixelated source, 11x11 PSF");
  options.add_options()("json", "print the results as JSON on stdout")(
      "batches", "comma-separated batch sizes",
      cxxopts::value<std::string>()->default_value("1,16,256"))(
      "min-time", "seconds of timing per measurement (at least 3 calls)",
      cxxopts::value<double>()->default_value("1.0"))(
      "cpu-kernels",
      "on: the fused CPU kernels; off: the tensor-op paths a GPU takes (to time them and count "
      "their operators on a CPU)",
      cxxopts::value<std::string>()->default_value("on"))(
      "interpolation",
      "bilinear|bicubic: the source stamp read as lenstronomy's INTERPOL or as "
      "INTERPOL_BICUBIC (dslens fit's default for VAE sources)",
      cxxopts::value<std::string>()->default_value("bilinear"));
  add_compute_options(options);
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  const Compute compute = compute_from(args);
  const std::vector<int64_t> batches = parse_batches(args["batches"].as<std::string>());
  const double min_time = args["min-time"].as<double>();
  if (!(min_time >= 0.0)) throw InvalidArgument("--min-time must be >= 0");
  const int threads = torch::get_num_threads();
  // The value of a two-valued option, or InvalidArgument naming the option and both values.
  auto either = [&args](const std::string& option, const std::string& a, const std::string& b) {
    const std::string v = args[option].as<std::string>();
    if (v != a && v != b)
      throw InvalidArgument("--" + option + ": '" + v + "' is not one of " + a + ", " + b);
    return v;
  };
  const std::string kernels = either("cpu-kernels", "on", "off");
  physics::set_cpu_kernels(kernels == "on");
  const std::string interpolation = either("interpolation", "bilinear", "bicubic");
  const std::string source_type = interpolation == "bicubic" ? "INTERPOL_BICUBIC" : "INTERPOL";

  json results = json::array();
  for (const int64_t batch : batches) {
    Setup fwd = make_setup(batch, false, compute, source_type);
    const auto forward = [&] {
      torch::NoGradGuard no_grad;
      Tensor img = physics::simulate_image(fwd.model, batch, compute);
      img.sum().item<double>();  // synchronises with the device
    };
    const double t_fwd = time_per_call(forward, min_time, 3);
    Setup bwd = make_setup(batch, true, compute, source_type);
    const auto gradient = [&] {
      for (auto& t : bwd.leaves) t.mutable_grad() = Tensor();
      Tensor img = physics::simulate_image(bwd.model, batch, compute);
      img.square().sum().backward();
      double check = 0.0;
      for (auto& t : bwd.leaves) {
        if (!t.grad().defined()) {
          throw NumericalError("bench simulate: no gradient reached a parameter");
        }
      }
      check += bwd.leaves.front().grad().sum().item<double>();  // synchronises
      (void)check;
    };
    const double t_grad = time_per_call(gradient, min_time, 3);
    // ATen operators per call: on a GPU each is a kernel launch with its CPU overhead.
    int64_t forward_ops = 0, gradient_ops = 0;
    {
      OpCensus census;
      forward();
      forward_ops = census.operators();
    }
    {
      OpCensus census;
      gradient();
      gradient_ops = census.operators();
      census.log_most_frequent(
          "bench simulate: batch " + std::to_string(batch) + ": forward + gradient: ", 25);
    }
    json r = {{"batch", batch},
              {"forward_ms_per_batch", 1e3 * t_fwd},
              {"forward_images_per_s", batch / t_fwd},
              {"gradient_ms_per_batch", 1e3 * t_grad},
              {"gradient_images_per_s", batch / t_grad},
              {"forward_operators", forward_ops},
              {"gradient_operators", gradient_ops}};
    spdlog::info(
        "bench simulate: batch {}: forward {:.1f} img/s ({} operators), forward+gradient {:.1f} "
        "img/s ({} operators)",
        batch, batch / t_fwd, forward_ops, batch / t_grad, gradient_ops);
    results.push_back(r);
  }

  json report = {
      {"benchmark", "simulate"},
      {"setup", "100x100 px at 0.05\"/px, supersampling 2, EPL+SHEAR, " + source_type +
                    " 64x64 source, 11x11 PSF; gradient wrt all lens and source parameters and "
                    "source pixels"},
      {"device", compute.device.str()},
      {"dtype", dtype_name(compute.dtype)},
      {"threads", threads},
      {"cpu_kernels", kernels},
      {"cuda_kernels", !physics::cuda_kernels_built() ? "not built"
                       : physics::cuda_kernels()      ? "on"
                                                      : "off"},
      {"interpolation", interpolation},
      {"results", results}};
  if (args.count("json")) {
    std::cout << report.dump(2) << std::endl;
    return 0;
  }
  std::cout << "dslens bench simulate: " << report["setup"].get<std::string>() << "\n"
            << "device " << compute.device.str() << ", " << dtype_name(compute.dtype) << ", "
            << threads << " CPU threads, CPU kernels " << kernels
            << " (ops: ATen operators per call, each a kernel launch on a GPU)\n\n"
            << std::right << std::setw(6) << "batch" << std::setw(16) << "forward img/s"
            << std::setw(12) << "ms/batch" << std::setw(8) << "ops" << std::setw(18)
            << "fwd+grad img/s" << std::setw(12) << "ms/batch" << std::setw(8) << "ops"
            << "\n";
  std::cout << std::fixed;
  for (const auto& r : results) {
    std::cout << std::setw(6) << r["batch"].get<int64_t>() << std::setw(16) << std::setprecision(1)
              << r["forward_images_per_s"].get<double>() << std::setw(12) << std::setprecision(2)
              << r["forward_ms_per_batch"].get<double>() << std::setw(8)
              << r["forward_operators"].get<int64_t>() << std::setw(18) << std::setprecision(1)
              << r["gradient_images_per_s"].get<double>() << std::setw(12) << std::setprecision(2)
              << r["gradient_ms_per_batch"].get<double>() << std::setw(8)
              << r["gradient_operators"].get<int64_t>() << "\n";
  }
  return 0;
}

}  // namespace bench_simulate_detail

DSLENS_BENCH(simulate, "Images per second of the forward model and its gradient",
             bench_simulate_detail::bench_simulate);

}  // namespace dslens::app

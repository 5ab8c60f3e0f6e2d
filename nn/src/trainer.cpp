#include "dslens/nn/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <mutex>

#include "dslens/core/errors.h"
#include "dslens/nn/checkpoint.h"

namespace dslens::nn {
namespace trainer_detail {

// Generator streams: which random quantity of a step a seed is for.
constexpr uint64_t kStreamOrder = 0;
constexpr uint64_t kStreamAugment = 1;
constexpr uint64_t kStreamNoise = 2;
constexpr uint64_t kStreamEval = 3;

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

torch::Generator generator(uint64_t seed) {
  return at::detail::createCPUGenerator(seed);
}

nlohmann::json history_json(const std::vector<LossPoint>& h) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& p : h) a.push_back({p.step, p.loss, p.recon, p.kl, p.mse});
  return a;
}

std::vector<LossPoint> history_from_json(const nlohmann::json& a) {
  std::vector<LossPoint> h;
  if (!a.is_array()) return h;
  for (const auto& r : a) {
    if (!r.is_array() || r.size() != 5) continue;
    h.push_back({r[0].get<int64_t>(), r[1].get<double>(), r[2].get<double>(), r[3].get<double>(),
                 r[4].get<double>()});
  }
  return h;
}

// Keys of the training config that must agree for a resumed run to continue the same run.
void check_resumable(const nlohmann::json& saved, const nlohmann::json& now,
                     const std::string& dir) {
  for (const char* key : {"seed", "batch_size", "lr", "lr_final_fraction", "pixel_sigma", "beta",
                          "augment", "dtype"}) {
    if (!saved.contains(key)) continue;
    if (saved[key] != now[key]) {
      throw InvalidArgument("cannot resume from '" + dir + "': train." + key + " is " +
                            now[key].dump() + " in the config but " + saved[key].dump() +
                            " in the checkpoint");
    }
  }
}

}  // namespace trainer_detail

// ---- configuration ----

void TrainConfig::validate() const {
  if (steps < 1) throw InvalidArgument("train.steps must be >= 1");
  if (batch_size < 1) throw InvalidArgument("train.batch_size must be >= 1");
  if (!(lr > 0)) throw InvalidArgument("train.lr must be > 0");
  if (!(pixel_sigma > 0)) throw InvalidArgument("train.pixel_sigma must be > 0");
  if (!(beta >= 0)) throw InvalidArgument("train.beta must be >= 0");
  if (checkpoint_every < 1 || eval_every < 1 || log_every < 1 || eval_batch < 1) {
    throw InvalidArgument(
        "train.checkpoint_every, eval_every, log_every and eval_batch must be >= 1");
  }
}

nlohmann::json TrainConfig::to_json() const {
  return {{"steps", steps},
          {"batch_size", batch_size},
          {"lr", lr},
          {"lr_final_fraction", lr_final_fraction},
          {"seed", seed},
          {"pixel_sigma", pixel_sigma},
          {"beta", beta},
          {"val_fraction", val_fraction},
          {"augment", augment},
          {"checkpoint_every", checkpoint_every},
          {"eval_every", eval_every},
          {"log_every", log_every},
          {"eval_batch", eval_batch},
          {"dtype", dtype}};
}

TrainConfig TrainConfig::from_config(const ConfigNode& node) {
  node.require_object();
  node.allow_only({"steps", "batch_size", "lr", "lr_final_fraction", "seed", "pixel_sigma", "beta",
                   "val_fraction", "augment", "checkpoint_every", "eval_every", "log_every",
                   "eval_batch", "dtype"});
  TrainConfig c;
  const auto at_least_1 = Range{1, std::numeric_limits<double>::infinity(), false, false};
  c.steps = node.integer_or("steps", c.steps, at_least_1);
  c.batch_size = node.integer_or("batch_size", c.batch_size, at_least_1);
  c.lr = node.number_or("lr", c.lr, Range::positive());
  c.lr_final_fraction =
      node.number_or("lr_final_fraction", c.lr_final_fraction, Range::closed(0, 1));
  c.seed = static_cast<uint64_t>(node.integer_or("seed", 0, Range::non_negative()));
  c.pixel_sigma = node.number_or("pixel_sigma", c.pixel_sigma, Range::positive());
  c.beta = node.number_or("beta", c.beta, Range::non_negative());
  c.val_fraction = node.number_or("val_fraction", c.val_fraction, Range{0, 1, false, true});
  c.augment = node.boolean_or("augment", c.augment);
  c.checkpoint_every = node.integer_or("checkpoint_every", c.checkpoint_every, at_least_1);
  c.eval_every = node.integer_or("eval_every", c.eval_every, at_least_1);
  c.log_every = node.integer_or("log_every", c.log_every, at_least_1);
  c.eval_batch = node.integer_or("eval_batch", c.eval_batch, at_least_1);
  c.dtype = node.choice_or("dtype", c.dtype, {"float32", "float64"});
  return c;
}

VaeArch vae_arch_from_config(const ConfigNode& node) {
  node.require_object();
  node.allow_only({"stamp_size", "latent_dim", "channels", "norm", "groups"});
  VaeArch a;
  const auto at_least_1 = Range{1, std::numeric_limits<double>::infinity(), false, false};
  a.stamp_size = node.integer_or("stamp_size", a.stamp_size, at_least_1);
  a.latent_dim = node.integer_or("latent_dim", a.latent_dim, at_least_1);
  if (node.has("channels")) {
    const auto ch = node.at("channels");
    ch.require_array();
    if (ch.size() == 0) ch.fail("must list at least one level");
    a.channels.clear();
    for (size_t i = 0; i < ch.size(); ++i) {
      const auto& v = ch.at(i).value();
      if (!v.is_number_integer() || v.get<long long>() < 1) {
        ch.at(i).fail("expected an integer >= 1, got " + json_excerpt(v));
      }
      a.channels.push_back(v.get<int64_t>());
    }
  }
  a.norm = node.choice_or("norm", a.norm, {"group", "none"});
  a.groups = node.integer_or("groups", a.groups, at_least_1);
  try {
    a.validate();
  } catch (const InvalidArgument& e) {
    node.fail(e.what());
  }
  return a;
}

// ---- helpers ----

uint64_t mix_seed(uint64_t seed, uint64_t stream, uint64_t counter) {
  using trainer_detail::splitmix64;
  return splitmix64(splitmix64(seed) ^ splitmix64(stream * 0x632be59bd9b4e019ULL + counter));
}

torch::Tensor batch_indices(int64_t n, int64_t batch, int64_t step, uint64_t seed) {
  if (n < 1) throw InvalidArgument("batch_indices: no stamps");
  std::vector<int64_t> out(static_cast<size_t>(batch));
  const int64_t pos = step * batch;
  int64_t epoch = -1;
  torch::Tensor perm;
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t e = (pos + i) / n;
    if (e != epoch) {
      auto gen = trainer_detail::generator(mix_seed(seed, trainer_detail::kStreamOrder, e));
      perm = torch::randperm(n, gen, torch::TensorOptions().dtype(torch::kLong));
      epoch = e;
    }
    out[static_cast<size_t>(i)] = perm.data_ptr<int64_t>()[(pos + i) % n];
  }
  return torch::tensor(out, torch::TensorOptions().dtype(torch::kLong));
}

double learning_rate(const TrainConfig& c, int64_t step) {
  const double t =
      std::min(1.0, static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, c.steps)));
  const double f = c.lr_final_fraction;
  return c.lr * (f + (1.0 - f) * 0.5 * (1.0 + std::cos(3.141592653589793 * t)));
}

nlohmann::json EvalMetrics::to_json() const {
  return {{"count", count}, {"elbo", elbo}, {"neg_elbo", -elbo},           {"recon_nll", recon},
          {"kl", kl},       {"mse", mse},   {"relative_mse", relative_mse}};
}

EvalMetrics evaluate_vae(VaeImpl& vae, const torch::Tensor& stamps, double pixel_sigma,
                         uint64_t seed, int64_t batch) {
  check_stamps(stamps, vae.arch().stamp_size, "evaluation stamps");
  torch::NoGradGuard no_grad;
  const bool was_training = vae.is_training();
  vae.eval();
  auto gen = trainer_detail::generator(mix_seed(seed, trainer_detail::kStreamEval, 0));
  const int64_t n = stamps.size(0);
  double sum_recon = 0, sum_kl = 0, sum_sq = 0, sum_x2 = 0;
  for (int64_t start = 0; start < n; start += batch) {
    const int64_t b = std::min(batch, n - start);
    auto x = stamps.narrow(0, start, b).to(vae.options());
    auto eps = torch::randn({b, vae.arch().latent_dim}, gen,
                            torch::TensorOptions().dtype(torch::kFloat64));
    auto out = vae.forward(x, eps.to(vae.options()));
    auto terms = elbo_terms(out, x, vae.pixel_norm(), pixel_sigma, 1.0);
    sum_recon += terms.recon.item<double>() * static_cast<double>(b);
    sum_kl += terms.kl.item<double>() * static_cast<double>(b);
    auto mean_recon = vae.decode(out.mean);
    sum_sq += (mean_recon - x).to(torch::kFloat64).pow(2).sum().item<double>();
    sum_x2 += x.to(torch::kFloat64).pow(2).sum().item<double>();
  }
  vae.train(was_training);
  EvalMetrics m;
  m.count = n;
  m.recon = sum_recon / static_cast<double>(n);
  m.kl = sum_kl / static_cast<double>(n);
  m.elbo = -(m.recon + m.kl);
  m.mse = sum_sq / static_cast<double>(stamps.numel());
  m.relative_mse = sum_x2 > 0 ? sum_sq / sum_x2 : 0.0;
  return m;
}

// ---- training ----

TrainResult train_vae(const TrainConfig& config, const VaeArch& arch, const torch::Tensor& train,
                      const torch::Tensor& val, const TrainOptions& options) {
  using namespace trainer_detail;
  using clock = std::chrono::steady_clock;
  config.validate();
  arch.validate();
  check_stamps(train, arch.stamp_size, "training stamps");
  const bool has_val = val.defined() && val.numel() > 0;
  if (has_val) check_stamps(val, arch.stamp_size, "validation stamps");
  const int world = options.comm ? options.comm->world_size() : 1;
  const int rank = options.comm ? options.comm->rank() : 0;
  if (config.batch_size % world != 0) {
    throw InvalidArgument("train.batch_size " + std::to_string(config.batch_size) +
                          " is not divisible by the number of processes " + std::to_string(world));
  }
  const int64_t global_batch = config.batch_size;
  const int64_t local_batch = global_batch / world;
  Compute compute = options.compute;
  compute.dtype = config.dtype == "float64" ? torch::kFloat64 : torch::kFloat32;
  const auto topts = compute.options();
  const auto train_cpu = train.to(torch::kCPU, torch::kFloat64).contiguous();
  const int64_t n_train = train_cpu.size(0);

  TrainResult res;
  {
    // The initial weights come from the global generator: seed it and draw under a lock so that
    // ranks running as threads of one process (tests) get the same initial weights.
    static std::mutex init_mutex;
    std::lock_guard<std::mutex> lock(init_mutex);
    torch::manual_seed(config.seed);
    res.vae = Vae(arch, PixelNorm::fit(train_cpu));
  }
  auto& vae = res.vae;
  vae->to(compute.device, compute.dtype);
  torch::optim::Adam optimizer(vae->parameters(), torch::optim::AdamOptions(config.lr));

  const auto config_json = config.to_json();
  int64_t step = 0;
  double seconds_before = 0;
  if (options.resume) {
    if (options.checkpoint_dir.empty() || !checkpoint_exists(options.checkpoint_dir)) {
      throw InputError("cannot resume: no checkpoint in '" + options.checkpoint_dir + "'");
    }
    const auto meta = read_checkpoint_meta(options.checkpoint_dir);
    if (meta.arch.to_json() != arch.to_json()) {
      throw InvalidArgument("cannot resume from '" + meta.dir + "': its architecture " +
                            meta.arch.to_json().dump() + " differs from the config's " +
                            arch.to_json().dump());
    }
    check_resumable(meta.training.value("config", nlohmann::json::object()), config_json, meta.dir);
    const int64_t saved_n = meta.training.value("train_count", n_train);
    if (saved_n != n_train) {
      throw InvalidArgument("cannot resume from '" + meta.dir + "': it was trained on " +
                            std::to_string(saved_n) + " stamps, the data now has " +
                            std::to_string(n_train));
    }
    load_weights(meta, *vae);
    load_optimizer_state(meta, optimizer);
    step = meta.step;
    const auto& hist = meta.training.value("history", nlohmann::json::object());
    res.train_history = history_from_json(hist.value("train", nlohmann::json::array()));
    res.val_history = history_from_json(hist.value("val", nlohmann::json::array()));
    seconds_before = meta.training.value("seconds", 0.0);
    spdlog::info("resuming from step {} of {} ({})", step, config.steps, meta.dir);
  }
  res.start_step = step;
  if (world > 1) {
    // Every rank starts from rank 0's weights.
    for (auto& p : vae->parameters()) options.comm->broadcast(p, 0);
  }

  const int64_t end = config.steps;
  const int64_t stop = options.stop_after_step >= 0 ? std::min(end, options.stop_after_step) : end;
  const bool write = !options.checkpoint_dir.empty() && rank == 0;
  const auto t0 = clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(clock::now() - t0).count(); };

  auto training_json = [&](int64_t at_step) {
    nlohmann::json j = {{"config", config_json},
                        {"train_count", n_train},
                        {"val_count", has_val ? val.size(0) : 0},
                        {"world_size", world},
                        {"device", compute.device.str()},
                        {"seconds", seconds_before + elapsed()},
                        {"rng",
                         {{"scheme",
                           "data order, augmentation and noise of step t use generators seeded by "
                           "(seed, t): resume needs only the step"},
                          {"seed", config.seed},
                          {"next_step", at_step}}},
                        {"history",
                         {{"columns", {"step", "loss", "recon", "kl", "mse"}},
                          {"train", history_json(res.train_history)},
                          {"val", history_json(res.val_history)}}}};
    if (!res.val_history.empty()) {
      const auto& v = res.val_history.back();
      j["last_val"] = {{"step", v.step}, {"neg_elbo", v.loss}, {"mse", v.mse}};
    }
    return j;
  };

  vae->train();
  const int64_t d = arch.latent_dim;
  const auto params = vae->parameters();
  double acc[4] = {0, 0, 0, 0};
  int64_t acc_n = 0;
  spdlog::info(
      "training VAE ({} parameters) on {} stamps, {} validation, steps {} -> {}, batch {}{}",
      vae->parameter_count(), n_train, has_val ? val.size(0) : 0, step, stop, global_batch,
      world > 1 ? fmt::format(" over {} processes", world) : std::string());
  while (step < stop) {
    for (auto& group : optimizer.param_groups()) {
      static_cast<torch::optim::AdamOptions&>(group.options()).lr(learning_rate(config, step));
    }
    auto x = train_cpu.index_select(0, batch_indices(n_train, global_batch, step, config.seed));
    if (config.augment && options.augment) {
      auto gen = generator(mix_seed(config.seed, kStreamAugment, static_cast<uint64_t>(step)));
      x = options.augment(x, gen);
    }
    auto noise_gen = generator(mix_seed(config.seed, kStreamNoise, static_cast<uint64_t>(step)));
    auto eps =
        torch::randn({global_batch, d}, noise_gen, torch::TensorOptions().dtype(torch::kFloat64));
    if (world > 1) {
      x = x.narrow(0, rank * local_batch, local_batch);
      eps = eps.narrow(0, rank * local_batch, local_batch);
    }
    x = x.to(topts);
    eps = eps.to(topts);

    auto out = vae->forward(x, eps);
    auto terms = elbo_terms(out, x, vae->pixel_norm(), config.pixel_sigma, config.beta);
    optimizer.zero_grad();
    terms.loss.backward();
    // [4]: this rank's stop request, so that the all-reduce tells every rank whether any asked.
    const bool asked = options.stop_requested && options.stop_requested();
    auto stats = torch::stack({terms.loss.detach(), terms.recon.detach(), terms.kl.detach(),
                               terms.mse, torch::full_like(terms.mse, asked ? 1.0 : 0.0)})
                     .to(torch::kFloat64);
    if (world > 1) {
      std::vector<torch::Tensor> flat;
      flat.reserve(params.size());
      for (const auto& p : params) {
        flat.push_back(p.grad().defined() ? p.grad().reshape({-1})
                                          : torch::zeros({p.numel()}, p.options()));
      }
      auto all = torch::cat(flat);
      options.comm->allreduce_mean(all);
      int64_t offset = 0;
      for (const auto& p : params) {
        if (p.grad().defined()) p.mutable_grad().copy_(all.narrow(0, offset, p.numel()).view_as(p));
        offset += p.numel();
      }
      options.comm->allreduce_mean(stats);
    }
    stats = stats.cpu();
    const double* s = stats.data_ptr<double>();
    if (!std::isfinite(s[0])) {
      throw NumericalError("VAE training diverged at step " + std::to_string(step) +
                           " (loss is not finite); lower train.lr or raise train.pixel_sigma");
    }
    optimizer.step();
    ++step;
    for (int k = 0; k < 4; ++k) acc[k] += s[k];
    ++acc_n;

    LossPoint last{step, acc[0] / acc_n, acc[1] / acc_n, acc[2] / acc_n, acc[3] / acc_n};
    if (step % config.log_every == 0 || step == stop) {
      res.train_history.push_back(last);
      spdlog::debug("step {}: loss {:.6g} recon {:.6g} kl {:.6g} mse {:.4g}", step, last.loss,
                    last.recon, last.kl, last.mse);
      acc[0] = acc[1] = acc[2] = acc[3] = 0;
      acc_n = 0;
    }
    if (rank == 0 && has_val && (step % config.eval_every == 0 || step == end)) {
      const auto m = evaluate_vae(*vae, val, config.pixel_sigma, config.seed, config.eval_batch);
      res.val_history.push_back({step, -m.elbo, m.recon, m.kl, m.mse});
      spdlog::debug("step {}: validation -ELBO {:.6g} mse {:.4g}", step, -m.elbo, m.mse);
    }
    const bool stopping = s[4] > 0 && step < stop;
    if (write && (step % config.checkpoint_every == 0 || step == stop || stopping)) {
      save_checkpoint(options.checkpoint_dir, *vae, &optimizer, step, options.data_description,
                      training_json(step));
    }
    if (stopping) {
      // The other ranks wait for rank 0's checkpoint: a launcher that ends every rank when one
      // exits (srun --kill-on-bad-exit) would otherwise cut the write short.
      if (world > 1) options.comm->barrier();
      throw Interrupted("VAE training stopped on request after step " + std::to_string(step) +
                        " of " + std::to_string(end) +
                        (write ? "; checkpoint saved in " + options.checkpoint_dir
                               : std::string("; no checkpoint (no checkpoint folder)")));
    }
    if (options.on_progress) {
      Progress p;
      p.step = step;
      p.steps = end;
      p.last = last;
      const double secs = elapsed();
      const double steps_done = static_cast<double>(step - res.start_step);
      p.stamps_per_s = secs > 0 ? steps_done * static_cast<double>(global_batch) / secs : 0;
      p.eta_s = steps_done > 0 ? secs / steps_done * static_cast<double>(end - step) : 0;
      p.done = step == stop;
      options.on_progress(p);
    }
  }
  if (world > 1) options.comm->barrier();
  vae->eval();
  res.step = step;
  res.seconds = seconds_before + elapsed();
  if (has_val && rank == 0)
    res.val = evaluate_vae(*vae, val, config.pixel_sigma, config.seed, config.eval_batch);
  return res;
}

}  // namespace dslens::nn

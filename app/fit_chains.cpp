#include "fit_chains.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>

#include "chain_seeds.h"
#include "cuda_graphs.h"
#include "dslens/core/errors.h"
#include "dslens/samplers/adaptation.h"
#include "dslens/samplers/diagnostics.h"
#include "dslens/samplers/laplace.h"
#include "dslens/samplers/nuts.h"
#include "dslens/samplers/optimize.h"
#include "duration_text.h"
#include "lens_streams.h"
#include "op_census.h"
#include "stop_signal.h"
#include "stopwatch.h"

namespace fs = std::filesystem;

namespace dslens::app {

void save_tensors(const std::string& path, const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> cpu;
  for (const auto& t : tensors) cpu.push_back(t.detach().to(torch::kCPU));
  const std::string tmp = path + ".tmp";
  torch::save(cpu, tmp);
  fs::rename(tmp, path);
}

std::vector<torch::Tensor> load_tensors(const std::string& path) {
  std::vector<torch::Tensor> out;
  try {
    torch::load(out, path);
  } catch (const c10::Error& e) {
    throw FileError("checkpoint '" + path + "' cannot be read (" + e.what_without_backtrace() +
                    "); remove it, or run without --resume");
  }
  return out;
}

namespace {

// Thrown from the sampler's checkpoint callback to stop after warmup (--stop-after warmup).
struct StopAfterWarmup {};

// The sampler's snapshots come at least this often (where the chains meet): a run killed without
// warning (out of memory, a node lost) loses at most this much sampling. A snapshot of 64 lenses x
// 4 chains x 1000 draws x 100 parameters in float32 is about 100 MB.
constexpr double kCheckpointSeconds = 120.0;

// A one-line progress bar on stderr (redrawn in place on a terminal, every 10 % otherwise).
class SamplerBar {
 public:
  explicit SamplerBar(std::string label) : label_(std::move(label)), tty_(isatty(2)) {}
  void update(const samplers::SamplerProgress& p) {
    const int width = 24;
    const int filled = static_cast<int>(width * p.iteration / std::max<int64_t>(1, p.total));
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(width, '.');
    const double eta =
        p.seconds / std::max<int64_t>(1, p.iteration) * static_cast<double>(p.total - p.iteration);
    char line[320];
    std::snprintf(line, sizeof line,
                  "%s [%s] %lld/%lld %s  step %.3g  leapfrog/iter %.1f  divergences %lld  ETA %s",
                  label_.c_str(), bar.c_str(), static_cast<long long>(p.iteration),
                  static_cast<long long>(p.total), p.warmup ? "warmup  " : "sampling",
                  p.mean_step_size, p.mean_leapfrog, static_cast<long long>(p.divergences),
                  duration_text(eta).c_str());
    const bool done = p.iteration == p.total;
    if (tty_) {
      std::cerr << "\r" << line << "\033[K" << (done ? "\n" : "") << std::flush;
    } else {
      std::cerr << line << "\n" << std::flush;
    }
  }

 private:
  std::string label_;
  bool tty_;
};

// Stan's rule for short warmups (stan/mcmc/windowed_adaptation.hpp): when the default buffers
// do not fit, use 15 % / 75 % / 10 % of the warmup.
samplers::WindowSettings windows_for(int64_t warmup) {
  samplers::WindowSettings w;
  if (warmup >= w.required_warmup()) return w;
  w.init_buffer = static_cast<int64_t>(0.15 * static_cast<double>(warmup));
  w.term_buffer = static_cast<int64_t>(0.1 * static_cast<double>(warmup));
  w.base_window = warmup - (w.init_buffer + w.term_buffer);
  return w;
}

// The starting metric and chain dispersion from the Laplace approximation at each chain's starting
// optimum (rows lens-major, as the log density expects): inv_metric [C, D] (diag: marginal
// variances) or [C, D, D], and a square root of the covariance [C, D, D] for the displacements.
// Eigen-variances are capped at 1 (unconstrained units; the priors' own scales are of that order),
// so a direction the data and prior leave flat cannot send a chain far away.
struct LaplaceMetric {
  torch::Tensor inv_metric, cholesky, sd;
};

// "name (share %)" for the first 8 non-concave directions, for the warning.
std::vector<std::string> along(const std::vector<samplers::NonConcaveDirection>& directions,
                               const std::vector<std::string>& names) {
  std::vector<std::string> out;
  for (const auto& d : directions) {
    if (out.size() == 8) break;
    const auto j = static_cast<size_t>(d.coordinate);
    out.push_back(fmt::format("{} ({:.0f} %)", j < names.size() ? names[j] : std::to_string(j),
                              100.0 * d.share));
  }
  return out;
}

LaplaceMetric laplace_metric(const samplers::LogDensityFn& log_density,
                             const samplers::HessianBlockFn& block, const torch::Tensor& modes,
                             bool dense, const std::vector<std::string>& names) {
  samplers::LaplaceSettings settings;
  settings.max_variance = 1.0;
  const auto lap = samplers::laplace_approximation(log_density, modes, settings, block);
  const int64_t flat = lap.non_concave.sum().item<int64_t>();
  if (flat > 0)
    spdlog::warn(
        "Laplace approximation: {} direction(s) are not concave at the optima (a saddle "
        "or a parameter the data do not constrain), each mostly along {}; the starting metric "
        "uses |curvature|",
        flat, nlohmann::json(along(samplers::non_concave_directions(lap.hessian), names)).dump());
  const auto& cov = lap.covariance;
  const auto var = lap.variance;
  LaplaceMetric m;
  m.sd = var.sqrt();
  m.inv_metric = dense ? cov : var;
  try {
    m.cholesky = torch::linalg_cholesky(cov);
  } catch (const c10::Error&) {
    m.cholesky = torch::diag_embed(m.sd);
  }
  return m;
}

// A kept optimum seeds chains when its Laplace mass, log p + log det(Sigma) / 2, is within this
// many nats of the lens's largest: a mode holding at least 1 % of the best mode's mass. Height
// alone (log p within D nats, before session 16) seeded half the chains of the 100x100 bench mock
// at SNR 30 in a false lens whose draws sat 115 nats below the true mode's, where they stayed
// (docs/benchmarks.md). Since session 22 an optimum within D / 2 nats of the best log p is seeded
// too, and such chains no longer stay: warmup moves them (samplers::AdaptSettings::stray_nats).
constexpr double kSeedMassNats = 4.605170185988091;  // ln 100

// Where the chains start: each lens's kept optima (best_x [L, K, D], best_lp [L, K]) whose Laplace
// mass is within kSeedMassNats of the largest seed its chains round-robin, the heaviest first,
// each displaced by 0.3 x a draw from the Laplace approximation there, whose covariance is the
// chain's initial inverse metric. Rows lens-major, [L * chains, D].
struct ChainStarts {
  torch::Tensor init, inv_metric;
};

ChainStarts chain_starts(const samplers::LogDensityFn& log_density,
                         const samplers::HessianBlockFn& block,
                         const std::vector<const FitConfig*>& lenses, const torch::Tensor& best_x,
                         const torch::Tensor& best_lp, bool dense, int64_t round,
                         const torch::TensorOptions& opts) {
  const int64_t n_lenses = best_x.size(0), keep = best_x.size(1), dim = best_x.size(2);
  const int64_t chains = lenses.front()->sampler.chains;
  const auto t_laplace = std::chrono::steady_clock::now();
  // The Laplace approximation at every kept optimum (lens-major rows, as the log density wants).
  const auto laplace = laplace_metric(log_density, block, best_x.reshape({n_lenses * keep, dim}),
                                      dense, lenses.front()->model.space.coordinate_names());
  spdlog::info(
      "Laplace approximation at the {} optima in {:.1f} s: marginal sd from {:.3g} to {:.3g} "
      "(unconstrained)",
      n_lenses * keep, seconds_since(t_laplace), laplace.sd.min().item<double>(),
      laplace.sd.max().item<double>());
  const auto log_det = 2.0 * laplace.cholesky.diagonal(0, -2, -1).log().sum(-1);
  const auto mass = (best_lp.to(torch::kCPU, torch::kFloat64).reshape({-1}) +
                     0.5 * log_det.to(torch::kCPU, torch::kFloat64))
                        .reshape({n_lenses, keep});
  // Also seeded: optima within seed_height_nats of the best log p, whatever their Laplace mass;
  // the stray chains of warmup then keep the one whose draws have the higher log densities.
  const double height_nats = seed_height_nats(lenses.front()->model, dim);
  const std::vector<int64_t> seed_rows = samplers::seed_modes(
      mass, chains, kSeedMassNats,
      best_lp.to(torch::kCPU, torch::kFloat64).reshape({n_lenses, keep}), height_nats);
  std::vector<int64_t> seeds_used;
  for (int64_t l = 0; l < n_lenses; ++l) {
    std::vector<int64_t> distinct(seed_rows.begin() + l * chains,
                                  seed_rows.begin() + (l + 1) * chains);
    std::sort(distinct.begin(), distinct.end());
    seeds_used.push_back(std::unique(distinct.begin(), distinct.end()) - distinct.begin());
  }
  // Each kept optimum's log mass relative to its lens's largest, to 0.1 nats, for the log.
  const auto relative = ((mass - std::get<0>(mass.max(1, /*keepdim=*/true))) * 10).round() / 10;
  std::vector<std::vector<double>> relative_mass(n_lenses);
  for (int64_t l = 0; l < n_lenses; ++l) {
    const auto row = relative[l].contiguous();
    relative_mass[l].assign(row.data_ptr<double>(), row.data_ptr<double>() + keep);
  }
  spdlog::info(
      "chains start from {} optimum(s) per lens (Laplace mass within {:.1f} nats of the "
      "largest, or log posterior within {:.1f} of the best; the kept optima's log masses "
      "relative to the largest, best log posterior first: {})",
      nlohmann::json(seeds_used).dump(), kSeedMassNats, height_nats,
      nlohmann::json(relative_mass).dump());
  const auto rows_cpu = torch::tensor(seed_rows);
  // (A free pixel-grid strength's optima are already at its evidence's maximum, where its chains
  // start: app/map_search.h, with_exact_pixel_source.)
  const torch::Tensor seeds =
      best_x.reshape({n_lenses * keep, dim}).index_select(0, rows_cpu.to(best_x.device()));
  std::vector<torch::Tensor> eps;
  for (const auto* c : lenses) {
    // Round 1's streams are those of the fits before chain rounds existed.
    const uint64_t salt = static_cast<uint64_t>(round - 1) * 1000003ULL;
    auto gen = lens_generator(c->sampler.seed + 7919 + salt, *c);
    eps.push_back(torch::randn({chains, dim}, gen, torch::kFloat64));
  }
  const torch::Tensor cholesky = laplace.cholesky.index_select(0, rows_cpu);
  const torch::Tensor jitter = 0.3 * cholesky.matmul(torch::cat(eps).unsqueeze(2)).squeeze(2);
  return {seeds + jitter.to(opts), laplace.inv_metric.index_select(0, rows_cpu).to(opts)};
}

}  // namespace

std::optional<ChainRun> run_chains(const std::vector<const FitConfig*>& lenses,
                                   const samplers::LogDensityFn& log_density,
                                   const samplers::HessianBlockFn& hessian_block,
                                   const torch::Tensor& best_x, const torch::Tensor& best_lp,
                                   int64_t round, const ChainRunFiles& files,
                                   const FitRunOptions& options, const std::string& label) {
  const FitConfig& first = *lenses.front();
  const auto& sc = first.sampler;
  const Compute& compute = options.compute;
  const auto opts = compute.options();
  const int64_t n_lenses = static_cast<int64_t>(lenses.size());
  const int64_t dim = best_x.size(2), chains = sc.chains;
  const bool dense =
      sc.metric == "dense" || (sc.metric == "auto" && dim <= kDenseMetricMaxDimension);
  ChainRun run;
  const bool have_chains = options.resume && fs::exists(files.chains);
  std::shared_ptr<samplers::SamplerSnapshot> snapshot;
  if (!have_chains && options.resume && fs::exists(files.sampler)) {
    try {
      snapshot = std::make_shared<samplers::SamplerSnapshot>(
          samplers::SamplerSnapshot::from_tensors(load_tensors(files.sampler)));
    } catch (const InvalidArgument& e) {
      throw FileError("checkpoint '" + files.sampler + "' cannot be used (" + e.what() +
                      "); remove it to restart sampling from the MAP");
    }
    spdlog::info("{}: sampling resumes at iteration {} of {} from {}", label, snapshot->iteration,
                 snapshot->num_warmup + snapshot->num_draws, files.sampler);
  }
  samplers::NutsSettings nuts;
  samplers::HmcSettings hmc;
  samplers::SamplerSettings& s =
      sc.algorithm == "nuts" ? static_cast<samplers::SamplerSettings&>(nuts) : hmc;
  torch::Tensor init;
  if (snapshot) {
    init = snapshot->q.to(opts);
    s.resume_from = snapshot;
  } else if (!have_chains) {
    const ChainStarts starts_of_chains =
        chain_starts(log_density, hessian_block, lenses, best_x, best_lp, dense, round, opts);
    init = starts_of_chains.init;
    s.inv_metric = starts_of_chains.inv_metric;
  }
  if (init.defined() && spdlog::should_log(spdlog::level::debug)) {
    // What one leapfrog step costs on a GPU: the operators of one batched log density and its
    // gradient (docs/benchmarks.md, "On a GPU").
    OpCensus census;
    (void)log_density(init);
    spdlog::debug("{}: one log density + gradient of {} rows: {} ATen operators", label,
                  init.size(0), census.operators());
    census.log_most_frequent(label + ":   ", 40);
  }
  s.num_warmup = sc.warmup;
  s.num_draws = sc.draws;
  s.seed = sc.seed;
  for (const auto* c : lenses) {
    for (int64_t k = 0; k < chains; ++k) {
      uint64_t id = mix64(lens_key(*c) + static_cast<uint64_t>(k));
      if (round > 1) id = mix64(id + static_cast<uint64_t>(round));
      s.chain_ids.push_back(id);
    }
  }
  s.metric = dense ? samplers::MetricKind::dense : samplers::MetricKind::diag;
  s.adapt.dual_averaging.delta = sc.target_accept;
  s.adapt.windows = windows_for(sc.warmup);
  // The Laplace metric is worth D draws in the dense windows' estimates: a 25-draw first
  // window cannot estimate a D x D covariance for D ~ 75 alone (samplers/sampler_settings.h).
  const double prior_count =
      sc.metric_prior_count >= 0 ? sc.metric_prior_count : (dense ? static_cast<double>(dim) : 0.0);
  s.adapt.metric_prior_count = prior_count;
  s.adapt.curvature_metric = sc.curvature_metric && dim <= kHessianMaxDimension;
  if (sc.curvature_metric && !s.adapt.curvature_metric && round == 1)
    spdlog::info("warmup: no curvature metric: {} free parameters (more than {})", dim,
                 kHessianMaxDimension);
  s.adapt.curvature_max_variance = 1.0;  // as the Laplace start's (laplace_metric)
  // Chains started at a MAP optimum leave it within a few iterations; its curvature (the Laplace
  // start) is then too sharp. On the bench mock the first 75 warmup iterations took 102 s
  // without this and 70 s with it (docs/benchmarks.md, session 24).
  s.adapt.curvature_first = 10;
  s.adapt.stray_nats = sc.stray_nats;
  s.adapt.stray_group = chains;  // a lens's chains
  // Rows are lens-major: a lens's chains are consecutive and pool their adaptation.
  s.adapt.pool_group = sc.adaptation == "per_lens" ? chains : 1;
  // On the CPU only the chains still building their trees are evaluated (lens-major rows).
  s.compact_rows = compute.device.is_cpu() ? n_lenses : 0;
  if (sc.warmup < 20) s.adapt.metric = false;  // as Stan: too short to estimate a metric
  s.refresh = std::max<int64_t>(1, (sc.warmup + sc.draws) / (isatty(2) ? 200 : 10));
  // Snapshots every kCheckpointSeconds where the chains meet, at the end of warmup, and when a
  // stop signal arrives (stop_signal.h). They used to come every (warmup + draws) / 20 iterations,
  // which ended the out-of-step segments that often (12 iterations on the bench's 250).
  s.checkpoint_seconds = kCheckpointSeconds;
  s.stop_requested = stop_requested;
  const bool stop_after_warmup = options.stop_after == "warmup";
  const std::string sampler_file = files.sampler;
  s.on_checkpoint = [sampler_file, stop_after_warmup](const samplers::SamplerSnapshot& snap) {
    save_tensors(sampler_file, snap.to_tensors());
    if (stop_after_warmup && snap.iteration == snap.num_warmup) throw StopAfterWarmup{};
  };
  nuts.max_depth = sc.max_depth;
  nuts.out_of_step = sc.out_of_step.value_or(n_lenses > 1 && compute.device.is_cpu());
  hmc.num_steps = sc.num_steps;
  run.settings = {{"algorithm", sc.algorithm},
                  {"chains", chains},
                  {"num_warmup", sc.warmup},
                  {"num_draws", sc.draws},
                  {"max_depth", sc.max_depth},
                  {"out_of_step", sc.algorithm == "nuts" && nuts.out_of_step},
                  {"num_steps", sc.algorithm == "hmc" ? nlohmann::json(sc.num_steps) : nullptr},
                  {"target_accept", sc.target_accept},
                  {"metric", dense ? "dense" : "diag"},
                  {"metric_prior_count", prior_count},
                  {"curvature_metric", s.adapt.curvature_metric},
                  {"stray_nats", sc.stray_nats},
                  {"retry_rounds", sc.retry_rounds},
                  {"round", round},
                  {"adaptation", sc.adaptation},
                  {"seed", sc.seed},
                  {"device", compute.device.str()},
                  {"dtype", dtype_name(compute.dtype)},
                  {"lenses_in_batch", n_lenses}};
  samplers::SamplerResult& sampled = run.sampled;
  if (have_chains) {
    auto t = load_tensors(files.chains);
    sampled.draws = t.at(0);
    sampled.log_density = t.at(1);
    sampled.step_size = t.at(2);
    sampled.tree_depth = t.at(3);
    sampled.n_leapfrog = t.at(4);
    sampled.accept_stat = t.at(5);
    sampled.energy = t.at(6);
    sampled.divergent = t.at(7);
    const auto times = t.at(8);
    sampled.warmup_seconds = times[0].item<double>();
    sampled.sampling_seconds = times[1].item<double>();
    sampled.gradient_evaluations = static_cast<int64_t>(times[2].item<double>());
    spdlog::info("{}: chains read from {}", label, files.chains);
    return run;
  }
  SamplerBar bar(sc.algorithm == "nuts" ? "NUTS" : "HMC ");
  s.on_progress = [&bar](const samplers::SamplerProgress& p) { bar.update(p); };
  spdlog::info("{}: {} lens(es) x {} chains, {} warmup + {} draws", sc.algorithm, n_lenses, chains,
               sc.warmup, sc.draws);
  auto graph_stats = std::make_shared<samplers::CudaGraphStats>();
  const auto sampling_density = graphed_if_active(log_density, graph_stats);
  try {
    sampled = sc.algorithm == "nuts" ? samplers::sample_nuts(sampling_density, init, nuts)
                                     : samplers::sample_hmc(sampling_density, init, hmc);
  } catch (const StopAfterWarmup&) {
    spdlog::info("{}: stopped after warmup; sampler state in {}", label, files.sampler);
    return std::nullopt;
  }
  if (const auto& g = *graph_stats; g.captured + g.eager_shapes > 0) {
    spdlog::info("{}: cuda graphs: {} shape(s) captured, {} replayed calls, {} eager", label,
                 g.captured, g.replays, g.eager_calls);
  }
  // What the batch paid for the sampling phase's trees: its batched leapfrog steps, and the share
  // of their rows that were some chain's leaf (lock-step chains wait for the deepest tree;
  // sampler.out_of_step, docs/benchmarks.md, session 42).
  const bool out_of_step = nuts.out_of_step && sc.algorithm == "nuts";
  if (const int64_t rows = sampled.draws.size(0); sampled.warmup_gradient_evaluations > 0) {
    std::string steps;  // NUTS: what the chains out of step took or would take
    if (sc.algorithm == "nuts" && out_of_step)
      steps = fmt::format("; chains out of step: {} of them leapfrog steps",
                          sampled.warmup_steps_out_of_step);
    else if (sc.algorithm == "nuts")
      steps = fmt::format("; out of step the same trees would take {} leapfrog steps",
                          sampled.warmup_steps_out_of_step);
    spdlog::info(
        "{}: warmup took {} batched log-density calls of {} chains (leapfrog steps, step-size "
        "searches and curvature metrics){}",
        label, sampled.warmup_gradient_evaluations / rows, rows, steps);
  }
  if (const int64_t rows = sampled.draws.size(0),
      steps = (sampled.gradient_evaluations - sampled.warmup_gradient_evaluations) / rows;
      steps > 0) {
    const double leaves = sampled.n_leapfrog.sum().item<double>();
    std::string would;
    if (!out_of_step && sc.algorithm == "nuts")
      would = fmt::format("; out of step the same trees would take {} steps",
                          sampled.sampling_steps_out_of_step);
    spdlog::info(
        "{}: sampling took {} batched leapfrog steps of {} chains; {:.1f} % of the rows "
        "were leaves of a chain's tree{}{}",
        label, steps, rows, 100.0 * leaves / static_cast<double>(steps * rows),
        out_of_step ? " (chains out of step)" : "", would);
  }
  save_tensors(files.chains,
               {sampled.draws, sampled.log_density, sampled.step_size, sampled.tree_depth,
                sampled.n_leapfrog, sampled.accept_stat, sampled.energy, sampled.divergent,
                torch::tensor({sampled.warmup_seconds, sampled.sampling_seconds,
                               static_cast<double>(sampled.gradient_evaluations)},
                              torch::kFloat64)});
  return run;
}

ChainsMode chains_mode(const samplers::LogDensityFn& log_density,
                       const samplers::SamplerResult& sampled, int64_t n_lenses) {
  const int64_t dim = sampled.draws.size(2);
  const auto lp = torch::nan_to_num(sampled.log_density.to(torch::kFloat64), -INFINITY)
                      .reshape({n_lenses, -1});  // [L, chains x N]
  const auto best = std::get<1>(lp.max(1));
  const auto x = sampled.draws.reshape({n_lenses, -1, dim})
                     .index({torch::arange(n_lenses, best.options()), best});
  samplers::LbfgsSettings lbfgs;
  lbfgs.max_iterations = 300;
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = samplers::maximize_lbfgs(log_density, x.contiguous(), lbfgs);
  spdlog::debug("the chains' best draws optimised in {:.1f} s", seconds_since(t0));
  const auto out_lp = r.log_p.detach().to(torch::kCPU, torch::kFloat64);
  return {r.x.detach(),
          torch::where(torch::isfinite(out_lp), out_lp, torch::full_like(out_lp, -INFINITY))};
}

std::vector<int64_t> lenses_with_chains_apart(const torch::Tensor& log_density, int64_t chains,
                                              double nats) {
  const auto lp = log_density.to(torch::kCPU, torch::kFloat64);
  const auto mean = lp.mean(1);
  auto error = torch::zeros_like(mean);  // mcse_mean needs 4 draws
  if (lp.size(1) >= 4)
    for (int64_t c = 0; c < lp.size(0); ++c) error[c] = samplers::mcse_mean(lp.narrow(0, c, 1));
  const auto stray =
      samplers::find_stray_chains(mean, chains, nats, error).stray.reshape({-1, chains});
  const auto any = stray.any(1).contiguous();
  std::vector<int64_t> out;
  for (int64_t l = 0; l < any.size(0); ++l) {
    if (any[l].item<bool>()) out.push_back(l);
  }
  return out;
}

}  // namespace dslens::app

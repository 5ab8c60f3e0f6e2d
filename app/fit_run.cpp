#include "fit_run.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>

#include "cuda_graphs.h"
#include "dslens/core/errors.h"
#include "dslens/core/output_dir.h"
#include "dslens/model/lens_posterior.h"
#include "dslens/model/pixel_source_solve.h"
#include "fit_chains.h"
#include "map_rounds.h"
#include "map_search.h"
#include "noise_correlation.h"
#include "stopwatch.h"

namespace fs = std::filesystem;

namespace dslens::app {
namespace fit_run_detail {

// The posterior of lenses that share a model: data [L, ny, nx]; one PSF for all lenses when they
// agree, else one per lens.
BatchPosterior batch_posterior(const std::vector<const FitConfig*>& lenses,
                               const Compute& compute) {
  std::vector<torch::Tensor> images, sigmas, masks, psfs;
  std::vector<std::vector<model::ImagePositionGroup>> positions;
  bool same_psf = true;
  for (const auto* c : lenses) {
    positions.push_back(c->data.image_positions);
    images.push_back(c->data.image);
    sigmas.push_back(c->data.sigma);
    masks.push_back(c->data.mask);
    if (c->data.psf) {
      psfs.push_back(*c->data.psf);
      same_psf = same_psf && torch::equal(psfs.front(), psfs.back());
    }
  }
  std::optional<torch::Tensor> psf;
  if (!psfs.empty()) psf = same_psf ? psfs.front() : torch::stack(psfs);
  model::ImagingData data{torch::stack(images), torch::stack(sigmas), torch::stack(masks),
                          model::batch_image_positions(positions)};
  // A lens whose Poisson term follows the model makes the whole batch's variance a ModelNoise;
  // the others' is their fixed sigma^2 in it.
  if (std::any_of(lenses.begin(), lenses.end(),
                  [](const FitConfig* c) { return c->data.poisson_from_model; })) {
    std::vector<torch::Tensor> background, inverse_exposure;
    for (const auto* c : lenses) {
      const model::ModelNoise n = c->data.model_noise();
      background.push_back(n.background_variance);
      inverse_exposure.push_back(n.inverse_exposure);
    }
    data.model_noise = {torch::stack(background), torch::stack(inverse_exposure)};
  }
  const FitConfig& first = *lenses.front();
  return {model::LensPosterior(first.model.spec(first.data.grid, psf), first.model.space, data,
                               compute),
          psf};
}

// The --init starts of a batch's lenses, [L, D] on the device (lens-major).
torch::Tensor init_starts(const std::vector<const FitConfig*>& lenses, const FitRunOptions& options,
                          const torch::TensorOptions& opts) {
  std::vector<torch::Tensor> rows;
  for (const auto* c : lenses) rows.push_back(options.init.at(c));
  return torch::cat(rows).to(opts);
}

// Each lens's best `keep` rows of a lens-major optimisation result [L * per_lens, D], best first:
// [L, keep, D] and their log posteriors [L, keep] (float64, CPU; non-finite ones as -inf).
std::pair<torch::Tensor, torch::Tensor> best_rows_per_lens(const samplers::OptimizeResult& res,
                                                           int64_t n_lenses, int64_t keep) {
  const int64_t per_lens = res.x.size(0) / n_lenses;
  const int64_t kept = std::min(keep, per_lens);
  auto lp = res.log_p.to(torch::kCPU, torch::kFloat64).reshape({n_lenses, per_lens});
  lp = torch::where(torch::isfinite(lp), lp, torch::full_like(lp, -INFINITY));
  const auto order = std::get<1>(lp.sort(1, /*descending=*/true)).narrow(1, 0, kept);
  const auto rows = (order + torch::arange(n_lenses).unsqueeze(1) * per_lens).reshape({-1});
  return {res.x.detach().index_select(0, rows.to(res.x.device())).reshape({n_lenses, kept, -1}),
          lp.gather(1, order)};
}

}  // namespace fit_run_detail

using namespace fit_run_detail;

std::vector<LensFitResult> fit_batch(const std::vector<const FitConfig*>& lenses,
                                     int64_t batch_index, const FitRunOptions& options) {
  const FitConfig& first = *lenses.front();
  const int64_t n_lenses = static_cast<int64_t>(lenses.size());
  const Compute& compute = options.compute;
  const auto opts = compute.options();
  const auto& space = first.model.space;
  const int64_t dim = space.dim();

  const BatchPosterior batch = batch_posterior(lenses, compute);
  const model::LensPosterior& posterior = batch.first;
  const std::optional<torch::Tensor>& psf = batch.second;
  const auto log_density = posterior.log_density();
  // MAP and sampler calls replayed from CUDA graphs on a GPU (app/cuda_graphs.h).
  const CudaGraphScope graphs(posterior, first.sampler.cuda_graphs);

  const std::string tag = options.checkpoint_dir + "/batch" + std::to_string(batch_index);
  const std::string map_file = tag + "-map.pt";
  const int64_t starts = first.map.starts;
  const int64_t keep = std::min<int64_t>(starts, std::max<int64_t>(first.sampler.chains, 4));
  const int64_t chains = first.sampler.chains;
  std::vector<LensFitResult> results(lenses.size());

  // 1. MAP: `starts` prior draws per lens, optimised together.
  torch::Tensor best_x, best_lp;  // [L, keep, D], [L, keep]
  double map_seconds = 0.0;
  // Each lens's search rounds; kept in the MAP checkpoint since they were recorded (an older
  // one has three tensors, and the counts are unknown).
  std::vector<int64_t> search_rounds(static_cast<size_t>(n_lenses), -1);
  // [L, D] a grid on the arcs: the rows whose lens light the search traced it from (map_search);
  // undefined for other models and in a MAP checkpoint written before it was kept.
  torch::Tensor traced_from;
  if (options.resume && fs::exists(map_file)) {
    auto t = load_tensors(map_file);
    best_x = t.at(0).to(opts);
    best_lp = t.at(1);
    map_seconds = t.at(2).item<double>();
    if (t.size() > 3 && t[3].numel() == n_lenses) {
      const auto c = t[3].to(torch::kCPU, torch::kLong).contiguous();
      search_rounds.assign(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + n_lenses);
    }
    if (t.size() > 4 && t[4].sizes() == torch::IntArrayRef({n_lenses, dim}))
      traced_from = t[4].to(opts);
    spdlog::info("batch {}: MAP optima read from {}", batch_index, map_file);
  } else {
    // Search rounds leave their state in tag-map-roundK.pt (K rounds done), so that --resume
    // continues an interrupted search at its next round; the latest one present is used.
    const auto round_file = [&tag](int64_t k) {
      return tag + "-map-round" + std::to_string(k) + ".pt";
    };
    std::optional<MapRoundState> resumed;
    for (int64_t k = kMaxRetryRounds + 1; options.resume && k >= 1 && !resumed; --k) {
      if (!fs::exists(round_file(k))) continue;
      try {
        resumed = MapRoundState::from_tensors(load_tensors(round_file(k)), n_lenses, starts, dim);
      } catch (const InvalidArgument& e) {
        throw FileError("checkpoint '" + round_file(k) + "' cannot be used (" + e.what() +
                        "); remove it to search again from the start");
      }
    }
    const auto t0 = std::chrono::steady_clock::now();
    const samplers::OptimizeResult res =
        options.init.empty()
            ? map_search_in_rounds(
                  lenses, posterior, psf,
                  [&compute](const std::vector<const FitConfig*>& subset) {
                    return batch_posterior(subset, compute);
                  },
                  resumed ? &*resumed : nullptr,
                  [&round_file](const MapRoundState& state) {
                    save_tensors(round_file(state.round), state.to_tensors());
                  },
                  &search_rounds, &traced_from)
            : map_from_start(lenses, posterior, init_starts(lenses, options, opts), &traced_from);
    if (!options.init.empty()) search_rounds.assign(search_rounds.size(), 0);
    std::tie(best_x, best_lp) = best_rows_per_lens(res, n_lenses, keep);
    map_seconds = seconds_since(t0) + (resumed ? resumed->seconds : 0.0);
    // The best optimum of each lens: column 0 of [L, keep], strided by `keep` until copied.
    const auto best_per_lens = best_lp.select(1, 0).contiguous();
    spdlog::info("MAP done in {:.1f} s; best log posterior per lens: {}", map_seconds,
                 nlohmann::json(std::vector<double>(best_per_lens.data_ptr<double>(),
                                                    best_per_lens.data_ptr<double>() + n_lenses))
                     .dump());
    if (!torch::isfinite(best_lp.select(1, 0)).all().item<bool>()) {
      std::string which;
      for (int64_t l = 0; l < n_lenses; ++l) {
        if (std::isfinite(best_per_lens[l].item<double>())) continue;
        which += (which.empty() ? "" : ", ") + lenses[static_cast<size_t>(l)]->path;
      }
      throw NumericalError("MAP found no start with a finite log posterior for " + which +
                           "; check the priors against the data (e.g. ellipticity priors allowing "
                           "|e| >= 1; `dslens fit CONFIG --check` evaluates the initial point)");
    }
    std::vector<torch::Tensor> saved = {best_x, best_lp,
                                        torch::tensor(map_seconds, torch::kFloat64),
                                        torch::tensor(search_rounds, torch::kLong)};
    if (traced_from.defined()) saved.push_back(traced_from);
    save_tensors(map_file, saved);
  }
  if (options.stop_after == "map") return {};
  // A grid placed on the arcs: the lens light it is traced from fixed, for the chains and the
  // outputs (model/arcs_placement.h), at that of the rows the search traced it from (each lens's
  // best optimum, when a search fixed none or an older checkpoint did not keep them), and the kept
  // optima's pixels solved for the grids that gives. Solved again, the optima can change rank
  // (session 56's SLACS fit: the search's 59,530 became 59,618 and another optimum rose to
  // 60,180), so the row traced from is kept apart (LensFitResult::arcs_lens_light_u).
  torch::Tensor arcs_from;  // [L, D] each lens's row whose lens light the grid is traced from
  if (posterior.spec().arcs_placement) {
    arcs_from = traced_from.defined() ? traced_from.clone() : best_x.select(1, 0).clone();
    posterior.fix_arcs_lens_light(space.unpack(arcs_from));
    samplers::OptimizeResult kept;
    kept.x = best_x.reshape({-1, dim});
    kept.log_p = best_lp.reshape({-1}).to(opts);
    kept = with_exact_pixel_source(first.model, posterior, kept, "");
    auto lp = kept.log_p.to(torch::kCPU, torch::kFloat64).reshape({n_lenses, -1});
    lp = torch::where(torch::isfinite(lp), lp, torch::full_like(lp, -INFINITY));
    const auto order = std::get<1>(lp.sort(1, /*descending=*/true));
    best_lp = lp.gather(1, order);
    best_x = kept.x.reshape({n_lenses, -1, dim})
                 .gather(1, order.to(compute.device).unsqueeze(2).expand({-1, -1, dim}));
  }

  // 1b. data.noise_scale "auto" (app/noise_correlation.h): each such lens's noise correlation is
  // measured on its best optimum's residuals with sigma as given, its sigma is multiplied by the
  // factor that calls for, and the kept optima are optimised again under the scaled posterior
  // (the prior's weight against the data's changes by the factor squared, which moves a VAE's
  // latents); the chains and the outputs then use the scaled data, as a config with that number
  // would. The measurement is repeated on --resume (it is deterministic in the MAP checkpoint);
  // the second optimisation is kept in tag-map-noise-scaled.pt.
  std::vector<const FitConfig*> run_lenses = lenses;  // the configs the chains sample
  std::vector<std::shared_ptr<const FitConfig>> scaled_configs(lenses.size());
  std::vector<nlohmann::json> noise_records(lenses.size());
  std::optional<BatchPosterior> scaled_batch;
  for (int64_t l = 0; l < n_lenses; ++l) {
    const FitConfig& c = *lenses[static_cast<size_t>(l)];
    if (!c.data.noise_scale_auto) continue;
    const BatchPosterior one = batch_posterior({&c}, compute);
    if (arcs_from.defined()) one.first.fix_arcs_lens_light(space.unpack(arcs_from.narrow(0, l, 1)));
    const NoiseScaleMeasurement m =
        measure_noise_scale(c.data, one.first, best_x[l].narrow(0, 0, 1), compute);
    noise_records[static_cast<size_t>(l)] = m.to_json();
    spdlog::info(
        "{}: data.noise_scale \"auto\": on {} quiet pixels at the MAP the residuals' sum ratio is "
        "{:.2f} (+- {:.2f} for independent pixels) and their mean square {:.2f}: {}",
        c.name, m.quiet.pixels, m.quiet.sum_ratio, m.quiet.sum_ratio_se, m.quiet.mean_square,
        m.factor != 1.0 ? fmt::format("sigma x {:.3f} for the chains", m.factor)
                        : std::string("not a correlation this test can tell, sigma as given"));
    if (m.factor == 1.0) continue;
    auto scaled = std::make_shared<FitConfig>(c);
    scaled->data = c.data.with_noise_scaled(m.factor);
    run_lenses[static_cast<size_t>(l)] = scaled.get();
    scaled_configs[static_cast<size_t>(l)] = std::move(scaled);
  }
  if (run_lenses != lenses) {
    scaled_batch.emplace(batch_posterior(run_lenses, compute));
    if (arcs_from.defined()) scaled_batch->first.fix_arcs_lens_light(space.unpack(arcs_from));
    const std::string scaled_file = tag + "-map-noise-scaled.pt";
    if (options.resume && fs::exists(scaled_file)) {
      auto t = load_tensors(scaled_file);
      best_x = t.at(0).to(opts);
      best_lp = t.at(1);
      map_seconds += t.at(2).item<double>();
      spdlog::info("batch {}: MAP optima under the scaled noise read from {}", batch_index,
                   scaled_file);
    } else {
      const auto t0 = std::chrono::steady_clock::now();
      const int64_t kept = best_x.size(1);
      std::tie(best_x, best_lp) = best_rows_per_lens(
          map_reoptimised(run_lenses, scaled_batch->first, best_x.reshape({-1, dim})), n_lenses,
          kept);
      const double seconds = seconds_since(t0);
      map_seconds += seconds;
      save_tensors(scaled_file, {best_x, best_lp, torch::tensor(seconds, torch::kFloat64)});
    }
  }
  const model::LensPosterior& run_posterior = scaled_batch ? scaled_batch->first : posterior;
  const samplers::LogDensityFn run_density =
      scaled_batch ? run_posterior.log_density() : log_density;

  // 2. Chains: the best few optima of a lens seed its chains (round-robin over the kept optima
  // whose Laplace mass is within ln 100 of the largest, so that a second mode of similar mass gets
  // chains and R-hat can see it, while a mode holding a negligible share does not). Each chain
  // starts at its optimum displaced by 0.3 x a draw from the Laplace approximation there, and that
  // approximation's covariance is its initial metric: warmup then begins at the posterior's
  // scales instead of the identity's. The sampler leaves snapshots in the sampler file, from
  // which --resume continues an interrupted run exactly (app/fit_chains.h).
  const std::string label = "batch " + std::to_string(batch_index);
  const std::optional<ChainRun> first_run =
      run_chains(run_lenses, run_density, pixel_hessian_block(first.model, run_posterior), best_x,
                 best_lp, 1, {tag + "-chains.pt", tag + "-sampler.pt"}, options, label);
  if (!first_run) return {};

  // Each lens's share of a run of `subset` (indices into `lenses`): its chains, and the optimised
  // best draw as the MAP where it is higher than the MAP so far.
  const auto adopt = [&](const std::vector<int64_t>& subset, const ChainRun& run,
                         const samplers::LogDensityFn& density,
                         const model::LensPosterior& chains_posterior) {
    const int64_t n = static_cast<int64_t>(subset.size());
    ChainsMode mode = chains_mode(density, run.sampled, n);
    // A pixel grid's pixels solved, as at the MAP's optima (a free sigma at its evidence's
    // maximum, where the MAP is reported); other models unchanged.
    samplers::OptimizeResult o;
    o.x = mode.x;
    o.log_p = mode.log_p.to(mode.x.device());
    o = with_exact_pixel_source(first.model, chains_posterior, o,
                                "the chains' best draws, optimised");
    mode.x = o.x;
    mode.log_p = o.log_p.to(torch::kCPU, torch::kFloat64);
    for (int64_t j = 0; j < n; ++j) {
      LensFitResult& r = results[static_cast<size_t>(subset[static_cast<size_t>(j)])];
      const double chains_lp = mode.log_p[j].item<double>();
      // Both are optima; within 0.01 nats they are the same one.
      if (std::isfinite(chains_lp) && chains_lp > r.map_log_p + 0.01) {
        spdlog::info(
            "{}: the chains' best draw, optimised, is {:.1f} nats above the best optimum so far "
            "({:.1f} against {:.1f}): it is the MAP of the outputs (map.json, model, residuals, "
            "source, report)",
            r.config->name, chains_lp - r.map_log_p, chains_lp, r.map_log_p);
        r.map_u = mode.x.narrow(0, j, 1).to(torch::kCPU, torch::kFloat64);
        r.map_log_p = chains_lp;
        r.map_origin = "the chains' best draw, optimised by L-BFGS";
      }
      auto slice = [&](const torch::Tensor& t) {
        return t.narrow(0, j * chains, chains).to(torch::kCPU);
      };
      const samplers::SamplerResult& sampled = run.sampled;
      r.chains.draws = slice(sampled.draws).to(torch::kFloat64);
      r.chains.log_density = slice(sampled.log_density);
      r.chains.step_size = slice(sampled.step_size);
      r.chains.tree_depth = slice(sampled.tree_depth);
      r.chains.n_leapfrog = slice(sampled.n_leapfrog);
      r.chains.accept_stat = slice(sampled.accept_stat);
      r.chains.energy = slice(sampled.energy);
      r.chains.divergent = slice(sampled.divergent);
      r.sampler_settings = run.settings;
      // Every round's time and gradients count.
      r.warmup_seconds += sampled.warmup_seconds / static_cast<double>(n);
      r.sampling_seconds += sampled.sampling_seconds / static_cast<double>(n);
      r.gradient_evaluations += sampled.gradient_evaluations / n;
    }
  };
  std::vector<int64_t> all(static_cast<size_t>(n_lenses));
  for (int64_t l = 0; l < n_lenses; ++l) {
    LensFitResult& r = results[static_cast<size_t>(l)];
    all[static_cast<size_t>(l)] = l;
    r.config = lenses[static_cast<size_t>(l)];
    r.noise_scaled_config = scaled_configs[static_cast<size_t>(l)];
    r.noise_scale_auto = noise_records[static_cast<size_t>(l)];
    r.starts_u = best_x[l].to(torch::kCPU, torch::kFloat64);
    r.starts_log_p = best_lp[l];
    if (arcs_from.defined()) r.arcs_lens_light_u = arcs_from.narrow(0, l, 1).to(torch::kCPU);
    r.map_u = r.starts_u.narrow(0, 0, 1);
    r.map_log_p = best_lp[l][0].item<double>();
    r.map_seconds = map_seconds / static_cast<double>(n_lenses);
    r.search_rounds = search_rounds[static_cast<size_t>(l)];
    if (!options.init.empty()) r.map_origin = "optimised from --init " + options.init_source;
    if (r.noise_scaled_config)
      r.map_origin += ", optimised again with sigma x " +
                      fmt::format("{:.3g}", r.noise_scaled_config->data.noise_scale) +
                      " (data.noise_scale \"auto\")";
    r.batch_size = n_lenses;
  }
  adopt(all, *first_run, run_density, run_posterior);

  // 3. Chain rounds: a lens whose chains ended apart, some in a mode tens of nats below another's
  // (lenses_with_chains_apart), is run again with all its chains started from its best optimum so
  // far, at most `sampler.retry_rounds` more times. The stray rule moves such chains only during
  // warmup; on an SNR-100 mock of the study, one chain of four found the truth's mode 100 draws
  // after warmup and the other three stayed 47 nats below (docs/mock_study.md, session 29).
  const auto& sc = first.sampler;
  for (int64_t round = 2; round <= 1 + sc.retry_rounds && sc.stray_nats > 0; ++round) {
    std::vector<int64_t> apart;
    std::vector<const FitConfig*> subset;
    std::vector<torch::Tensor> lp_rows;
    for (const int64_t l : all)
      lp_rows.push_back(results[static_cast<size_t>(l)].chains.log_density);
    for (const int64_t l : lenses_with_chains_apart(torch::cat(lp_rows), chains, sc.stray_nats)) {
      apart.push_back(l);
      subset.push_back(run_lenses[static_cast<size_t>(l)]);
    }
    if (apart.empty()) break;
    std::vector<std::string> names;
    std::vector<torch::Tensor> seed_x, seed_lp;
    for (const int64_t l : apart) {
      const LensFitResult& r = results[static_cast<size_t>(l)];
      names.push_back(r.config->name);
      seed_x.push_back(r.map_u.to(opts));
      seed_lp.push_back(torch::tensor({r.map_log_p}, torch::kFloat64));
    }
    spdlog::warn(
        "{}: chain round {} of {}: the chains of {} ended more than {:g} nats, and more than 4 "
        "Monte Carlo errors, apart in mean log posterior; they run again, all from the lens's "
        "best optimum so far",
        label, round, 1 + sc.retry_rounds, nlohmann::json(names).dump(), sc.stray_nats);
    const std::string suffix = "-round" + std::to_string(round) + ".pt";
    // The retried lenses run as a batch of their own (when all are retried, the batch itself).
    std::optional<BatchPosterior> sub;
    if (apart.size() < lenses.size()) sub.emplace(batch_posterior(subset, compute));
    const model::LensPosterior& round_posterior = sub ? sub->first : run_posterior;
    if (sub && round_posterior.spec().arcs_placement) {
      // The same lens light as the first round's (LensFitResult::arcs_lens_light_u).
      std::vector<torch::Tensor> light;
      for (const int64_t l : apart)
        light.push_back(results[static_cast<size_t>(l)].arcs_lens_light_u.to(opts));
      round_posterior.fix_arcs_lens_light(space.unpack(torch::cat(light)));
    }
    const samplers::LogDensityFn density = sub ? round_posterior.log_density() : run_density;
    const std::optional<ChainRun> run =
        run_chains(subset, density, pixel_hessian_block(first.model, round_posterior),
                   torch::stack(seed_x), torch::stack(seed_lp), round,
                   {tag + "-chains" + suffix, tag + "-sampler" + suffix}, options, label);
    if (!run) return {};
    adopt(apart, *run, density, round_posterior);
  }
  return results;
}

}  // namespace dslens::app

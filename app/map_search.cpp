#include "map_search.h"

#include "cuda_graphs.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>

#include "dslens/model/pixel_source_solve.h"
#include "dslens/model/source_backprojection.h"
#include "dslens/model/source_inversion.h"
#include "dslens/samplers/newton.h"
#include "duration_text.h"
#include "lens_streams.h"
#include "pixel_grid_extent.h"
#include "placement_model.h"
#include "prior_edges.h"
#include "stop_signal.h"

namespace fs = std::filesystem;

namespace dslens::app {
namespace map_search_detail {

// The MAP's progress line: stage, optimiser, iterations, best log posterior over all starts of
// the batch (of that stage's objective), and how many starts still move.
class MapBar {
 public:
  MapBar() : tty_(isatty(2)), t0_(std::chrono::steady_clock::now()) {}
  void set_stage(std::string stage) { stage_ = std::move(stage); }
  // A stop signal ends the search here; --resume continues after its last saved round.
  void update(const samplers::OptimizeProgress& p) {
    throw_if_stop_requested("MAP search (" + stage_ + ")");
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const bool done = p.iteration >= p.max_iterations || p.active == 0;
    // Off a terminal: every 10 % and at the end of each optimiser.
    const int64_t tenth = std::max<int64_t>(1, p.max_iterations / 10);
    if (!tty_ && !done && p.iteration / tenth == last_tenth_) return;
    last_tenth_ = done ? -1 : p.iteration / tenth;
    char line[320];
    std::snprintf(
        line, sizeof line, "MAP %s %-5s %lld/%lld  best log posterior %.6g  moving %lld/%lld  %s",
        stage_.c_str(), p.method, static_cast<long long>(p.iteration),
        static_cast<long long>(p.max_iterations), p.best_log_p, static_cast<long long>(p.active),
        static_cast<long long>(p.starts), duration_text(s).c_str());
    if (tty_) {
      std::cerr << "\r" << line << "\033[K" << (done ? "\n" : "") << std::flush;
    } else {
      std::cerr << line << "\n" << std::flush;
    }
  }

 private:
  bool tty_;
  std::chrono::steady_clock::time_point t0_;
  int64_t last_tenth_ = -1;
  std::string stage_;
};

// The objective of a stage: blur 0 = exact; > 0 = residuals blurred by that sigma (pixels).
using Objective = std::function<samplers::LogDensityFn(double blur)>;

// Replayed from CUDA graphs inside the fit's CudaGraphScope (app/cuda_graphs.h).
Objective objective_of(const model::LensPosterior& posterior) {
  return [&posterior](double blur) {
    return graphed_if_active(blur > 0 ? posterior.log_density_smoothed(blur)
                                      : posterior.log_density());
  };
}

// Rows of one batched line-search call on a GPU (see optimise). At 256 the placement stage's 128
// starts tried 2 step lengths per call and L-BFGS made 8.6 calls per iteration, waiting for the
// start that backtracks longest (H200, docs/benchmarks.md "On a GPU, second run"); at 1024 they
// try 8. The ladder accepts the longest passing step, as one-at-a-time backtracking does, so the
// path is the same with fewer calls. 64 lenses' 2,048 placements, which leave 1 step length per
// call, are why later calls take only the starts still backtracking.
constexpr int64_t kGpuLineSearchRows = 1024;

// Adam stages (coarse to fine when blur_pixels is set: residuals blurred by each sigma in turn,
// then by final_blur, 0 = exact; the iterations split evenly) followed by L-BFGS on the
// final_blur objective. x holds `row_groups` lenses' starts, lens-major. `grad_mask` (when defined,
// [D] of 0/1) holds the coordinates with 0 fixed.
samplers::OptimizeResult optimise(const Objective& objective, torch::Tensor x, int64_t row_groups,
                                  int64_t adam_iterations, double learning_rate,
                                  const std::vector<double>& blur_pixels, int64_t lbfgs_iterations,
                                  const torch::Tensor& grad_mask, const std::string& stage,
                                  MapBar& bar, double final_blur = 0.0, int64_t stall_window = 0,
                                  double stall_gain = 0.0) {
  const auto masked = [&grad_mask](samplers::LogDensityFn f) -> samplers::LogDensityFn {
    if (!grad_mask.defined()) return f;
    return [f, grad_mask](const torch::Tensor& q) {
      auto v = f(q);
      v.grad = v.grad * grad_mask;
      return v;
    };
  };
  const auto show = [&bar](const samplers::OptimizeProgress& p) { bar.update(p); };
  std::vector<double> blurs = blur_pixels;
  blurs.push_back(final_blur);
  const int64_t stages = static_cast<int64_t>(blurs.size());
  for (int64_t k = 0; k < stages && adam_iterations > 0; ++k) {
    samplers::AdamSettings adam;
    adam.on_progress = show;
    adam.max_iterations = adam_iterations / stages + (k < adam_iterations % stages ? 1 : 0);
    adam.learning_rate = learning_rate;
    if (adam.max_iterations < 1) continue;
    bar.set_stage(blurs[k] > 0 ? stage + " (blur " + std::to_string(blurs[k]).substr(0, 4) + " px)"
                               : stage);
    x = samplers::maximize_adam(masked(objective(blurs[k])), x, adam).x;
  }
  bar.set_stage(stage);
  if (lbfgs_iterations > 0) {
    samplers::LbfgsSettings lbfgs;
    lbfgs.max_iterations = lbfgs_iterations;
    lbfgs.on_progress = show;
    lbfgs.stall_window = stall_window;
    lbfgs.stall_gain = stall_gain;
    // On a GPU a call's cost is set by its operator count up to a few hundred rows (bench
    // simulate: forward + gradient 14 ms at 16 images, 22 ms at 256), so the line search tries
    // up to 8 step lengths per call there; on a CPU the cost grows with the rows, so 1.
    if (!x.device().is_cpu()) {
      // The first call of an iteration tries min(8, 1024 / starts) step lengths for every start;
      // later ones only the starts still backtracking (per lens, padded to a power of two: a few
      // shapes, one CUDA graph each), 8 step lengths each within the 1,024 rows. Without the
      // compaction every backtrack of any start re-evaluated all 2,048 placements of 64 lenses:
      // 2.3 s per iteration there (session 39).
      lbfgs.line_search_batch = 8;
      lbfgs.line_search_rows = kGpuLineSearchRows;
      lbfgs.compact_line_search = true;
      lbfgs.compact_pow2 = true;
      lbfgs.row_groups = row_groups;
    } else {
      // Backtracks evaluate only the starts still searching (a CPU's cost is per row; a GPU's
      // CUDA graphs want one shape), the lenses' rows kept lens-major and equal in number. They
      // halve the step: interpolating (LbfgsSettings::interpolate) took 1.8 times fewer rows in
      // the bench mock's source and joint stages, but its MAP then ended in the mock's second mode
      // and the chains with it (docs/benchmarks.md, session 22); one mock cannot tell which
      // search finds the true mode more often.
      lbfgs.compact_line_search = true;
      lbfgs.row_groups = row_groups;
    }
    auto r = samplers::maximize_lbfgs(masked(objective(final_blur)), x, lbfgs);
    spdlog::debug("MAP {}: L-BFGS made {} calls of {} rows in all ({:.1f} per start and iteration)",
                  stage, r.log_density_calls, r.rows_evaluated,
                  static_cast<double>(r.rows_evaluated) /
                      static_cast<double>(
                          x.size(0) * std::max<int64_t>(1, r.iterations.max().item<int64_t>())));
    return r;
  }
  // Only the log posterior at x.
  samplers::AdamSettings none;
  none.max_iterations = 1;
  none.learning_rate = 1e-12;
  return samplers::maximize_adam(objective(0.0), x, none);
}

// Prior draws of `space`, `per_lens` per lens, from each lens's own stream (lens-major).
torch::Tensor prior_starts(const std::vector<const FitConfig*>& lenses,
                           const model::ParameterSpace& space, uint64_t salt,
                           const torch::TensorOptions& opts, int64_t per_lens) {
  std::vector<torch::Tensor> draws;
  for (const auto* c : lenses) {
    auto gen = lens_generator(c->map.seed + salt, *c);
    draws.push_back(space.sample_prior(per_lens, opts, gen));
  }
  return torch::cat(draws);
}

// The value of `param` of `binding` for every row: its bound parameter's values, or `fallback`.
torch::Tensor bound_value(const model::ProfileBinding& binding, const std::string& param,
                          const std::map<std::string, torch::Tensor>& values, double fallback,
                          const torch::TensorOptions& opts) {
  const auto it = binding.params.find(param);
  if (it == binding.params.end() || !values.count(it->second))
    return torch::full({1}, fallback, opts);
  return values.at(it->second);
}

// values[name of binding's param] = where(ok, replacement, current), if that parameter is free.
void replace_free(std::map<std::string, torch::Tensor>& values, const model::ParameterSpace& space,
                  const model::ProfileBinding& binding, const std::string& param,
                  const torch::Tensor& ok, const torch::Tensor& replacement) {
  const auto it = binding.params.find(param);
  if (it == binding.params.end() || !values.count(it->second) || space.is_fixed(it->second)) return;
  auto& v = values[it->second];
  const auto mask = v.dim() == 2 ? ok.unsqueeze(1) : ok;
  v = torch::where(mask, replacement.to(v.options()), v);
}

// Each row's source centre moved to the flux-weighted centre of the data traced back through its
// lens (model/source_backprojection.h): a prior draw of the centre far from where the lens maps
// the arcs gives the source no overlap with them, and no gradient towards them. `source_index`:
// the source component whose centre moves. Rows with nothing traced keep their draw.
torch::Tensor centred_on_data(const model::LensPosterior& posterior, torch::Tensor x,
                              size_t source_index, double snr_threshold) {
  const auto& space = posterior.space();
  auto un = space.unpack(x);
  const int64_t rows = x.size(0);
  const auto bp = model::trace_back(posterior, un, rows, snr_threshold);
  const auto& binding = posterior.spec().source.at(source_index);
  for (const auto& [param, c] :
       {std::pair{"center_x", bp.center_x}, std::pair{"center_y", bp.center_y}})
    replace_free(un.values, space, binding, param, torch::isfinite(c), c);
  return torch::nan_to_num(space.pack(un.values), 0.0, 30.0, -30.0);
}

// Each row's pixel grid placed on the arcs traced back through its lens: the size where the grid
// holds them with a tenth to spare each side, the centre at their flux-weighted centre (free
// placement coordinates only; rows with nothing traced keep theirs). `values`: constrained.
void grid_on_arcs(const model::LensPosterior& posterior, const model::FitModel& fit,
                  size_t source_index, std::map<std::string, torch::Tensor>& values, int64_t rows,
                  double snr_threshold) {
  const auto& space = posterior.space();
  const auto opts = posterior.compute().options();
  const model::ProfileBinding& binding = posterior.spec().source.at(source_index);
  const auto fp =
      model::trace_back(posterior, {values, torch::zeros({rows}, opts)}, rows, snr_threshold);
  const auto ok = (fp.traced > 0) & torch::isfinite(fp.half_width) & (fp.half_width > 0);
  replace_free(values, space, binding, "scale", ok,
               kPixelGridSidePerHalfWidth * torch::nan_to_num(fp.half_width, 1.0) /
                   double(fit.decoded_size));
  replace_free(values, space, binding, "center_x", ok, torch::nan_to_num(fp.center_x, 0.0));
  replace_free(values, space, binding, "center_y", ok, torch::nan_to_num(fp.center_y, 0.0));
}

// Rows of `r` (their pixels solved) with the grid placed on the arcs traced back through their
// lens and the pixels solved again, where that raises the log posterior. The joint stage's L-BFGS
// moves the lens while the grid's size and centre lag behind it.
samplers::OptimizeResult with_grid_on_arcs(const model::FitModel& fit,
                                           const model::LensPosterior& posterior,
                                           size_t source_index, samplers::OptimizeResult r,
                                           double snr_threshold);

// The decoded source (component `source_index`) of every row started from the data traced back
// through its (placed) lens: centre, latents (the VAE's encoder) and amplitude; rows with nothing
// traced keep their draws. Returns the number of rows started so.
int64_t decoded_source_from_data(const model::LensPosterior& posterior, const model::FitModel& fit,
                                 size_t source_index, std::map<std::string, torch::Tensor>& values,
                                 int64_t rows, double snr_threshold) {
  const auto& space = posterior.space();
  const auto opts = posterior.compute().options();
  const model::ProfileBinding* binding = &posterior.spec().source.at(source_index);
  if (!fit.encoder) return 0;
  model::BackProjectionSettings bs;
  bs.snr_threshold = snr_threshold;
  bs.stamp_size = fit.decoded_size;
  // A free grid placement starts on the traced arcs (a prior draw of the size can leave arcs off
  // a small grid, or the source on a few pixels of a large one).
  if (fit.decoded_kind == "PIXELATED")
    grid_on_arcs(posterior, fit, source_index, values, rows, snr_threshold);
  const model::ParameterSpace::Unpacked un{values, torch::zeros({rows}, opts)};
  // A grid placed on the arcs by the model itself: the stamp is that grid.
  const auto arcs = posterior.arcs_grid(un, rows);
  const auto bp = model::back_project(
      posterior, un, rows, arcs ? arcs->scale : bound_value(*binding, "scale", values, 1.0, opts),
      bound_value(*binding, "phi_G", values, 0.0, opts), bs,
      arcs ? std::optional{std::pair{arcs->center_x, arcs->center_y}} : std::nullopt);
  const auto ok = bp.traced > 0;
  const auto encoded = fit.encoder(bp.stamp);
  if (space.has(fit.latent_block) && !space.is_fixed(fit.latent_block)) {
    auto& z = values.at(fit.latent_block);
    z = torch::where(ok.unsqueeze(1), encoded.latents.to(z.options()), z);
  }
  if (encoded.amp.defined()) replace_free(values, space, *binding, "amp", ok, encoded.amp);
  for (const auto& [param, c] :
       {std::pair{"center_x", bp.center_x}, std::pair{"center_y", bp.center_y}})
    replace_free(values, space, *binding, param, ok, c);
  return ok.sum().item<int64_t>();
}

// Each lens's best log posterior over its rows (lens-major, `n_lenses` lenses), for the log.
std::vector<double> best_per_lens(const torch::Tensor& log_p, int64_t n_lenses) {
  const auto lp = torch::nan_to_num(log_p.detach().to(torch::kCPU, torch::kFloat64), -INFINITY)
                      .reshape({n_lenses, -1});
  const auto best = std::get<0>(lp.max(1)).contiguous();
  return std::vector<double>(best.data_ptr<double>(), best.data_ptr<double>() + n_lenses);
}

// The last stage's optima polished by damped Newton steps (samplers/newton.h): each lens's best
// `newton_starts` rows (lens-major, `per_lens` rows per lens) move, the others stay. A pixel
// grid's block of the Hessian is known in closed form and not differenced, and a free strength
// sigma is held: in whitened pixels the posterior rises without end along sigma (docs/fit.md,
// "Pixel grids"), and the optima's sigma is set at its evidence maximum afterwards.
samplers::OptimizeResult polished(const model::FitModel& model,
                                  const model::LensPosterior& posterior,
                                  samplers::OptimizeResult result, int64_t n_lenses,
                                  const MapSettings& ms, MapBar& bar) {
  if (ms.newton_iterations <= 0) return result;
  const int64_t dim = posterior.space().dim();
  const auto block = pixel_hessian_block(model, posterior);
  const int64_t differenced = dim - (block ? model.decoded_size * model.decoded_size : 0);
  if (differenced > kHessianMaxDimension) {
    spdlog::info("MAP: no Newton polishing: {} free parameters to difference (more than {})",
                 differenced, kHessianMaxDimension);
    return result;
  }
  const int64_t per_lens = result.x.size(0) / n_lenses;
  const int64_t k = std::min(ms.newton_starts, per_lens);
  const auto lp = torch::nan_to_num(result.log_p.detach(), -INFINITY).reshape({n_lenses, per_lens});
  const auto order = std::get<1>(lp.topk(k, 1));
  const auto rows =
      (order + torch::arange(n_lenses, order.options()).unsqueeze(1) * per_lens).reshape({-1});
  samplers::NewtonSettings newton;
  newton.max_iterations = ms.newton_iterations;
  // Unconstrained coordinates have unit prior scales (latents N(0, 1), bijected bounds): a
  // direction flatter than that is not trusted for a longer step (as the chains' Laplace metric).
  newton.max_variance = 1.0;
  // On a CPU only the starts still moving are evaluated (CUDA graphs want one shape).
  newton.compact = result.x.device().is_cpu();
  newton.row_groups = n_lenses;
  newton.hessian_block = block;
  if (model.has_free_pixel_strength()) {
    const auto names = posterior.space().coordinate_names();
    const auto at = std::find(names.begin(), names.end(), model.pixel_sigma_name);
    newton.held_coordinates = {static_cast<int64_t>(at - names.begin())};
  }
  newton.on_progress = [&bar](const samplers::OptimizeProgress& p) { bar.update(p); };
  bar.set_stage("polish");
  const auto before = best_per_lens(result.log_p, n_lenses);
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = samplers::maximize_newton(posterior.log_density(),
                                           result.x.detach().index_select(0, rows), newton);
  // The polished rows replace their originals in every per-start field, and the best is redone.
  const auto put = [&rows](const torch::Tensor& all, const torch::Tensor& some) {
    return all.detach().index_copy(0, rows.to(all.device()), some.to(all.options()));
  };
  result.x = put(result.x, r.x);
  result.log_p = put(result.log_p, r.log_p);
  result.grad_norm = put(result.grad_norm, r.grad_norm);
  result.converged = put(result.converged, r.converged);
  result.iterations = put(result.iterations,
                          result.iterations.index_select(0, rows.to(result.iterations.device())) +
                              r.iterations.to(result.iterations.device()));
  result.best = torch::nan_to_num(result.log_p, -INFINITY).argmax().item<int64_t>();
  result.best_x = result.x[result.best].clone();
  result.best_log_p = result.log_p[result.best].item<double>();
  result.log_density_calls += r.log_density_calls;
  std::string how;
  if (block) {
    how = "; the pixel grid's Hessian block in closed form, " + std::to_string(differenced) +
          " coordinates differenced";
    if (model.has_free_pixel_strength()) how += ", " + model.pixel_sigma_name + " held";
  }
  spdlog::info(
      "MAP: Newton polishing of the best {} optima per lens in {:.1f} s ({} iterations at most, {} "
      "of {} converged{}): best log posterior per lens {} -> {}",
      k, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
      r.iterations.max().item<int64_t>(), r.converged.sum().item<int64_t>(), r.x.size(0), how,
      nlohmann::json(before).dump(), nlohmann::json(best_per_lens(result.log_p, n_lenses)).dump());
  return result;
}

}  // namespace map_search_detail

using namespace map_search_detail;

samplers::OptimizeResult with_exact_pixel_source(const model::FitModel& model,
                                                 const model::LensPosterior& posterior,
                                                 samplers::OptimizeResult result,
                                                 const std::string& what) {
  if (model.decoded_kind != "PIXELATED") return result;
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n_lenses = posterior.n_lenses(), rows = result.x.size(0);
  const auto before = best_per_lens(result.log_p, n_lenses);
  torch::Tensor sigma;
  result.x =
      model::with_pixel_source_at_evidence_maximum(model, posterior, result.x.detach(), &sigma);
  {
    torch::NoGradGuard no_grad;
    result.log_p = posterior.log_prob(result.x).detach();
  }
  result.best = torch::nan_to_num(result.log_p, -INFINITY).argmax().item<int64_t>();
  result.best_x = result.x[result.best].clone();
  result.best_log_p = result.log_p[result.best].item<double>();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto level = what.empty() ? spdlog::level::debug : spdlog::level::info;
  if (!model.has_free_pixel_strength()) {
    spdlog::log(
        level,
        "{}: the {} pixels of the grid solved exactly for each optimum's lens in {:.1f} s: best "
        "log posterior per lens {} -> {}",
        what.empty() ? "MAP joint" : what, model.decoded_size * model.decoded_size, seconds,
        nlohmann::json(before).dump(),
        nlohmann::json(best_per_lens(result.log_p, n_lenses)).dump());
    return result;
  }
  // Each lens's best row's sigma, for the log.
  const auto lp =
      torch::nan_to_num(result.log_p.detach().to(torch::kCPU, torch::kFloat64), -INFINITY)
          .reshape({n_lenses, rows / n_lenses});
  const auto best_row = std::get<1>(lp.max(1));
  std::vector<double> chosen;
  for (int64_t l = 0; l < n_lenses; ++l)
    chosen.push_back(sigma[l * (rows / n_lenses) + best_row[l].item<int64_t>()].item<double>());
  spdlog::log(
      level,
      "{}: {} at the maximum of its evidence times its prior for each optimum's lens, the {} "
      "pixels of the grid solved exactly there ({:.1f} s; docs/fit.md, \"Pixel grids\"): at the "
      "best optimum per lens {} = {}; log posterior {} -> {}",
      what.empty() ? "MAP joint" : what, model.pixel_sigma_name,
      model.decoded_size * model.decoded_size, seconds, model.pixel_sigma_name,
      nlohmann::json(chosen).dump(), nlohmann::json(before).dump(),
      nlohmann::json(best_per_lens(result.log_p, n_lenses)).dump());
  return result;
}

samplers::HessianBlockFn pixel_hessian_block(const model::FitModel& model,
                                             const model::LensPosterior& posterior) {
  if (model.decoded_kind != "PIXELATED") return nullptr;
  return [&model, &posterior](const torch::Tensor& x) {
    const auto t0 = std::chrono::steady_clock::now();
    auto block = model::pixel_source_hessian(model, posterior, x);
    spdlog::debug("pixel grid's Hessian block at {} points in {:.2f} s", x.size(0),
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return block;
  };
}

namespace {

// The grid each lens's row of `x` [L, D] gets once the lens light is fixed: the one number that
// shows a grid traced from a poor lens light (docs/slacs.md: 3.22" against the 1.59" that holds
// the arcs).
void log_arcs_grid_side(const model::FitModel& model, const model::LensPosterior& posterior,
                        const torch::Tensor& x, const std::string& what) {
  // Only when it is logged: the trace and the read-backs are not free.
  if (!spdlog::default_logger_raw()->should_log(spdlog::level::debug)) return;
  torch::NoGradGuard no_grad;
  const auto grid = posterior.arcs_grid(posterior.space().unpack(x), x.size(0));
  if (!grid) return;
  const auto side = (grid->scale * double(model.decoded_size)).to(torch::kCPU, torch::kFloat64);
  // With the lens it was traced through (its mass parameters, constrained), per lens.
  const auto& space = posterior.space();
  const auto names = space.coordinate_names();
  const auto values = space.constrained(x.detach()).to(torch::kCPU, torch::kFloat64);
  nlohmann::json lenses = nlohmann::json::array();
  for (int64_t l = 0; l < x.size(0); ++l) {
    nlohmann::json lens = nlohmann::json::object();
    for (size_t j = 0; j < names.size(); ++j) {
      const bool mass = names[j].find("_lens") != std::string::npos &&
                        names[j].find("_lens_light") == std::string::npos;
      if (mass) lens[names[j]] = values[l][static_cast<int64_t>(j)].item<double>();
    }
    lenses.push_back(lens);
  }
  spdlog::debug(
      "{}the pixel grid on the arcs, traced from the fixed lens light: side {} arcsec "
      "per lens, through the lens {}",
      what.empty() ? "" : what + ": ",
      nlohmann::json(
          std::vector<double>(side.data_ptr<double>(), side.data_ptr<double>() + side.numel()))
          .dump(),
      lenses.dump());
}

// Each lens's best row [L, D] of `r` (rows lens-major).
torch::Tensor best_rows(const model::LensPosterior& posterior, const samplers::OptimizeResult& r) {
  return samplers::best_rows_per_group(r.x.detach(), r.log_p.detach(), posterior.n_lenses(), 1);
}

// The joint stage: every coordinate optimised, Adam then L-BFGS. A pixel grid's L-BFGS runs in
// kPixelSegments segments with its pixels solved exactly after each: L-BFGS moves the lens and
// leaves the pixels far from their optimum for it (on the 20 x 20 grid of docs/benchmarks.md,
// session 48, the solve after 200 iterations gained 407 to 8,060 nats). In segments the MAP there
// ended 27 nats below the chains' best draw optimised, against 191 nats.
struct JointStage {
  static constexpr int64_t kPixelSegments = 4;
  const model::FitModel& fit;
  size_t decoded_index;
  double snr_threshold;
  bool log_grid;  // a grid on the arcs: its side logged after each segment
  int64_t n_lenses;
  const MapSettings& ms;

  samplers::OptimizeResult run(const model::LensPosterior& post, torch::Tensor from,
                               int64_t adam_iterations, const std::string& stage,
                               MapBar& bar) const {
    if (fit.decoded_kind != "PIXELATED" || ms.lbfgs_iterations < kPixelSegments) {
      return optimise(objective_of(post), from, n_lenses, adam_iterations, ms.joint_learning_rate,
                      {}, ms.lbfgs_iterations, {}, stage, bar);
    }
    bool grid_placement_free = false;
    for (const auto& [param, name] : fit.source.at(decoded_index).params)
      grid_placement_free |= (param == "scale" || param == "center_x" || param == "center_y") &&
                             fit.space.has(name) && !fit.space.is_fixed(name);
    samplers::OptimizeResult r;
    int64_t done = 0;
    for (int64_t k = 0; k < kPixelSegments; ++k) {
      const int64_t iterations = ms.lbfgs_iterations * (k + 1) / kPixelSegments - done;
      done += iterations;
      r = optimise(objective_of(post), from, n_lenses, k == 0 ? adam_iterations : 0,
                   ms.joint_learning_rate, {}, iterations, {}, stage, bar);
      if (k + 1 < kPixelSegments) {
        auto solved = with_exact_pixel_source(fit, post, r, "");
        if (log_grid) log_arcs_grid_side(fit, post, best_rows(post, solved), "MAP joint segment");
        if (grid_placement_free)
          solved = with_grid_on_arcs(fit, post, decoded_index, std::move(solved), snr_threshold);
        from = solved.x;
      }
    }
    return r;
  }

  // A pixel grid's optima with a bounded parameter at its prior's edge (within 1 % of the range):
  // on the 20 x 20 grid of docs/fit.md ("Pixel grids") every kept optimum of the first search
  // round had the slope at 2.6 of [1.6, 2.6], where the data push it up and the soft clip's
  // log-Jacobian back, while an inner optimum lay 31 nats higher (docs/benchmarks.md, session 49).
  // Such rows are moved 5 % of the range inside, their pixels solved, and the joint stage run
  // again; each row keeps the higher of its two optima. Other models: `joined` as it is.
  samplers::OptimizeResult off_prior_edges(const model::LensPosterior& post,
                                           samplers::OptimizeResult joined, int64_t adam_iterations,
                                           MapBar& bar) const {
    if (fit.decoded_kind != "PIXELATED") return joined;
    const auto [inside, at_edge] = app::off_prior_edges(post.space(), joined.x.detach());
    if (!at_edge.any().item<bool>()) return joined;
    const auto again = run(post, model::with_pixel_source_solved(fit, post, inside),
                           adam_iterations, "joint (off the prior's edges)", bar);
    // Every row ran again, those not at an edge from their own optimum: each keeps the higher.
    // (Until session 50 only the moved rows could; on the 20 x 20 mock the best optimum, not at an
    // edge, rose from 23,719 to 23,784 in the second run and was thrown away.)
    const auto better =
        torch::nan_to_num(again.log_p, -INFINITY) > torch::nan_to_num(joined.log_p, -INFINITY);
    spdlog::info(
        "MAP: {} optima had a parameter within 1 % of its prior's range from an edge; run again "
        "from 5 % inside (the others from where they were), {} of them rose ({} of the others); "
        "best log posterior per lens {} -> {}",
        at_edge.sum().item<int64_t>(), (better & at_edge).sum().item<int64_t>(),
        (better & ~at_edge).sum().item<int64_t>(),
        nlohmann::json(best_per_lens(joined.log_p, n_lenses)).dump(),
        nlohmann::json(best_per_lens(torch::where(better, again.log_p, joined.log_p), n_lenses))
            .dump());
    joined.x = torch::where(better.unsqueeze(1), again.x, joined.x);
    joined.log_p = torch::where(better, again.log_p, joined.log_p);
    return joined;
  }
};

// The index of the decoded source component (a VAE stamp or a pixel grid; 0 if none).
size_t decoded_source_index(const model::FitModel& fit) {
  size_t index = 0;
  for (size_t i = 0; i < fit.source.size(); ++i)
    if (physics::is_pixelated_light(fit.source[i].type)) index = i;
  return index;
}

// L-BFGS from `x` as the search's joint stage (in segments for a pixel grid), without its Adam,
// then Newton's polish and a pixel grid solved exactly: map_from_start and map_reoptimised.
samplers::OptimizeResult lbfgs_then_newton(const std::vector<const FitConfig*>& lenses,
                                           const model::LensPosterior& posterior,
                                           const torch::Tensor& x, const std::string& stage,
                                           MapBar& bar) {
  const MapSettings& ms = lenses.front()->map;
  const auto n_lenses = static_cast<int64_t>(lenses.size());
  const model::FitModel& model = lenses.front()->model;
  const JointStage joint{model,    decoded_source_index(model),
                         3.0,      posterior.spec().arcs_placement.has_value(),
                         n_lenses, ms};
  return with_exact_pixel_source(
      model, posterior,
      polished(model, posterior,
               joint.off_prior_edges(posterior, joint.run(posterior, x, 0, stage, bar), 0, bar),
               n_lenses, ms, bar),
      "MAP");
}

}  // namespace

samplers::OptimizeResult map_from_start(const std::vector<const FitConfig*>& lenses,
                                        const model::LensPosterior& posterior,
                                        const torch::Tensor& x0, torch::Tensor* arcs_from) {
  const MapSettings& ms = lenses.front()->map;
  const auto n_lenses = static_cast<int64_t>(lenses.size());
  spdlog::info(
      "MAP: {} lens(es) from the given start (--init): L-BFGS ({} iterations), then Newton",
      n_lenses, ms.lbfgs_iterations);
  MapBar bar;
  const model::FitModel& model = lenses.front()->model;
  // A grid on the arcs: traced from the start's lens light (and its lens's core), for the whole
  // search.
  if (posterior.spec().arcs_placement) {
    posterior.fix_arcs_lens_light(posterior.space().unpack(x0));
    log_arcs_grid_side(model, posterior, x0, "MAP (--init)");
    if (arcs_from) *arcs_from = x0.detach().clone();
  }
  // A pixel grid solved exactly for the start's lens before L-BFGS moves it: a start may leave the
  // pixels out (an earlier fit with a parametric source, app/map_init.h), and L-BFGS would
  // otherwise fit the lens to whatever they were. The MAP's pixels are solved again at its end.
  samplers::OptimizeResult start;
  start.x = x0;
  if (model.decoded_kind == "PIXELATED") {
    {
      torch::NoGradGuard no_grad;
      start.log_p = posterior.log_prob(x0).detach();
    }
    start = with_exact_pixel_source(model, posterior, std::move(start), "MAP (--init) start");
  }
  return lbfgs_then_newton(lenses, posterior, start.x, "init", bar);
}

samplers::OptimizeResult map_reoptimised(const std::vector<const FitConfig*>& lenses,
                                         const model::LensPosterior& posterior,
                                         const torch::Tensor& x) {
  spdlog::info("MAP: {} optima of {} lens(es) optimised again: L-BFGS ({} iterations), then Newton",
               x.size(0), lenses.size(), lenses.front()->map.lbfgs_iterations);
  MapBar bar;
  return lbfgs_then_newton(lenses, posterior, x, "again", bar);
}

samplers::OptimizeResult map_search(const std::vector<const FitConfig*>& lenses,
                                    const model::LensPosterior& posterior,
                                    const std::optional<torch::Tensor>& psf, uint64_t round,
                                    torch::Tensor* arcs_from) {
  if (arcs_from) *arcs_from = torch::Tensor();
  // Round r draws its placements and starts from the streams seed + 2r and seed + 2r + 1.
  const uint64_t salt = 2 * round;
  const FitConfig& first = *lenses.front();
  const MapSettings& ms = first.map;
  const auto opts = posterior.compute().options();
  const auto& space = posterior.space();
  const int64_t n_lenses = static_cast<int64_t>(lenses.size());
  MapBar bar;
  const bool staged = !first.model.decoded_kind.empty() && ms.placement != "none";
  if (!staged) {
    spdlog::info(
        "MAP: {} lens(es) x {} starts, {} parameters: Adam ({} iterations) then L-BFGS "
        "({} iterations)",
        n_lenses, ms.starts, space.dim(), ms.adam_iterations, ms.lbfgs_iterations);
    return with_exact_pixel_source(
        first.model, posterior,
        polished(
            first.model, posterior,
            optimise(objective_of(posterior), prior_starts(lenses, space, salt, opts, ms.starts),
                     n_lenses, ms.adam_iterations, ms.learning_rate, ms.blur_pixels,
                     ms.lbfgs_iterations, {}, "", bar),
            n_lenses, ms, bar),
        "MAP");
  }

  // Likelihood annealing: stages 1 and 2 and the first joint stage see the noise scaled by
  // anneal_noise[0], the next joint stages by the next factors, the last one the data's noise.
  std::vector<model::LensPosterior> tempered;
  for (const double factor : ms.anneal_noise)
    tempered.push_back(posterior.with_noise_scaled(factor));
  const model::LensPosterior& early = tempered.empty() ? posterior : tempered.front();

  // 1. Placement, with a Sersic stand-in source or with the source marginalised (inversion). The
  // stand-in's amplitude prior is centred on the surface brightness of the brightest fitted pixel
  // (image = surface brightness x pixel area).
  const auto& data = posterior.data();
  const double ps = first.data.grid.pixel_scale;
  const double peak =
      torch::where(data.mask, data.image, torch::zeros_like(data.image)).max().item<double>();
  const double amp_median = std::max(peak, 1e-30) / (ps * ps);
  const bool inversion = ms.placement == "inversion";
  const fs::path base = fs::path(first.path).parent_path();
  const PlacementModel stand_in = placement_model(first.config.at("model"), amp_median, inversion);
  const model::FitModel aux =
      model::parse_fit_model(ConfigNode(stand_in.model, "/model (placement stand-in)"),
                             base.string(), posterior.compute());
  const model::LensPosterior placement(aux.spec(first.data.grid, psf), aux.space, early.data(),
                                       posterior.compute());
  model::InversionSettings inv;
  inv.pixels = ms.inversion_pixels;
  inv.half_width = ms.inversion_half_width;
  inv.center_x = stand_in.center_x;
  inv.center_y = stand_in.center_y;
  std::optional<model::SourceInversion> marginal;
  if (inversion) marginal.emplace(placement, inv);
  const int64_t placement_adam =
      ms.placement_adam_iterations >= 0 ? ms.placement_adam_iterations : ms.adam_iterations;
  const int64_t placement_lbfgs =
      ms.placement_lbfgs_iterations >= 0 ? ms.placement_lbfgs_iterations : ms.lbfgs_iterations;
  // placement_starts < 0 (the default): 4 x starts where the full model ranks the placements
  // (backproject), else starts. On the 100x100 bench mock at SNR 30 (16 starts, four MAP seeds), 16
  // placements ended 120 to 1467 nats below the truth's log posterior at wrong lenses (three with
  // e1 at 0.36-0.40 against 0.08), 64 placements between 70 below and 22 above it (theta_E within
  // 1.7 %, the centre within 0.045"). The MAP then took 169-201 s on 2 threads instead of 110-135 s
  // (docs/benchmarks.md, session 19).
  // Search rounds after the first (app/map_rounds.h) place from 2^round times as many draws, at
  // most 16 times: they run only for lenses whose search failed, and which placements reach the
  // source stage decides the basin. On SNR-100 mock 10 of docs/mock_study.md six rounds of 64
  // placements ended 538 to 1050 nats below the truth's log posterior, while one round of 192
  // found the truth's mode from both MAP seeds tried (session 36).
  const int64_t widen = int64_t{1} << std::min<uint64_t>(round, 4);
  const int64_t n_place =
      widen * (ms.placement_starts < 0 ? (ms.backproject && !inversion ? 4 * ms.starts : ms.starts)
                                       : std::max(ms.starts, ms.placement_starts));
  spdlog::info(
      "MAP: {} lens(es) x {} starts. 1/3 placement: lens with {} ({} parameters) from {} prior "
      "draws, Adam ({}) then L-BFGS ({}), the best {} go on; 2/3 source: {}; "
      "3/3 joint: {} parameters, Adam ({}, learning rate {}) then L-BFGS ({})",
      n_lenses, ms.starts,
      inversion ? fmt::format("the source marginalised on {0}x{0} pixels", inv.pixels)
                : std::string("a Sersic stand-in source"),
      aux.space.dim(), n_place, placement_adam, placement_lbfgs, ms.starts,
      first.model.decoded_kind == "PIXELATED"
          ? std::string("the pixel grid solved exactly with the lens held")
          : fmt::format("the {} source with the lens held, Adam ({}) then L-BFGS ({})",
                        first.model.decoded_kind, ms.source_adam_iterations,
                        ms.source_lbfgs_iterations),
      space.dim(), ms.adam_iterations, ms.joint_learning_rate, ms.lbfgs_iterations);
  if (!tempered.empty()) {
    std::string factors;
    for (const double f : ms.anneal_noise)
      factors += fmt::format("{}x{:g}", factors.empty() ? "" : ", ", f);
    spdlog::info(
        "MAP: likelihood annealed: placement and source stages with the noise multiplied by {:g}, "
        "then the joint stage at noise {} and x1",
        ms.anneal_noise.front(), factors);
  }
  const Objective placement_objective =
      inversion ? Objective([&marginal](double) { return marginal->log_density(); })
                : objective_of(placement);
  // Signal pixels are those above 3 sigma of the data's own noise, whatever the annealing.
  const double snr_threshold = 3.0 / (tempered.empty() ? 1.0 : ms.anneal_noise.front());
  torch::Tensor place_from = prior_starts(lenses, aux.space, salt, opts, n_place);
  const size_t decoded_index = decoded_source_index(first.model);
  if (ms.backproject && !inversion && aux.lens_light.empty()) {
    place_from = centred_on_data(placement, place_from, decoded_index, snr_threshold);
    spdlog::info(
        "MAP: the placements' source centres start at the data traced back through each drawn "
        "lens");
  }
  // A placement stops when it gained less than kPlacementStallGain nats over its last
  // kPlacementStallWindow L-BFGS iterations. On the bench mock's 128 placements every one ran all
  // 200 iterations before, though the best stopped moving after 120. Replayed on their recorded
  // paths (session 25), the rule leaves 73 % of the start-iterations and the same 32 best by the
  // stand-in's log posterior, with the median start where it would have ended; a few stall and
  // would later have left a plateau (one by 4,494 nats). The decoded model re-ranks all the
  // placements afterwards. The bench's placement L-BFGS took 30 s instead of 53 s.
  constexpr int64_t kPlacementStallWindow = 20;
  constexpr double kPlacementStallGain = 0.5;
  auto placed = optimise(
      placement_objective, place_from, n_lenses, placement_adam, ms.learning_rate,
      inversion ? std::vector<double>{} : ms.blur_pixels, placement_lbfgs, {}, "placement", bar,
      inversion ? 0.0 : ms.placement_blur_pixels, kPlacementStallWindow, kPlacementStallGain);

  // The stand-in's optima -> the full model: every parameter the two share by name, except the
  // stand-in's own shape and amplitude, is taken over; the rest (latents, the decoded source's
  // amplitude, scale ...) come from prior draws.
  // With placement_starts > starts only each lens's best `starts` placements go on; otherwise
  // every placement goes on in its own row, paired with the same latent draws as before.
  // With the decoded source started from the data (backproject), the placements are ranked by
  // the full model instead: the stand-in's own optimum is biased towards wrong lenses (it trades
  // the source's structure for the lens's shape, docs/mock_study.md), while the decoded source
  // encoded from the traced-back data fits well only where the lens maps the images onto one
  // source.
  const bool rank_decoded = ms.backproject && !inversion && n_place > ms.starts;
  if (n_place > ms.starts && !rank_decoded)
    placed.x = samplers::best_rows_per_group(placed.x.detach(), placed.log_p, n_lenses, ms.starts);
  const int64_t go_on = rank_decoded ? n_place : ms.starts;
  const auto placed_values = aux.space.unpack(placed.x.detach()).values;
  auto values = space.unpack(prior_starts(lenses, space, salt + 1, opts, go_on)).values;
  std::vector<double> source_mask;
  const std::string decoded_suffix = "_source_light";
  for (const auto& name : space.coordinate_names())
    source_mask.push_back(name.find(decoded_suffix) != std::string::npos ? 1.0 : 0.0);
  for (auto& [name, v] : values) {
    const bool own_shape =
        name.find(decoded_suffix) != std::string::npos && name.rfind("center_", 0) != 0;
    if (own_shape || !aux.space.has(name) || aux.space.is_fixed(name)) continue;
    const auto it = placed_values.find(name);
    if (it != placed_values.end() && it->second.sizes() == v.sizes()) v = it->second;
  }
  if (inversion) {
    // The marginalised source's centre: the flux-weighted centroid of its positive pixels.
    const auto src = marginal->solve(placed.x.detach()).source.detach().clamp_min(0.0);
    const auto [sx, sy] = marginal->source_coordinates();
    const auto flux = src.sum({1, 2}).clamp_min(1e-300);
    const torch::Tensor cx = (src * sx).sum({1, 2}) / flux;
    const torch::Tensor cy = (src * sy).sum({1, 2}) / flux;
    const auto every_row = torch::ones_like(cx, torch::kBool);
    const auto& decoded = first.model.source.at(decoded_index);
    for (const auto& [param, centre] : {std::pair{"center_x", cx}, std::pair{"center_y", cy}})
      replace_free(values, space, decoded, param, every_row, centre);
  }
  if (ms.backproject && !inversion) {
    const int64_t rows = n_lenses * go_on;
    const int64_t started =
        decoded_source_from_data(early, first.model, decoded_index, values, rows, snr_threshold);
    spdlog::info(
        "MAP: the {} source of {} of {} starts begins at the data traced back through its placed "
        "lens",
        first.model.decoded_kind, started, rows);
  }
  // A value that rounded onto a bound of its support packs to +-inf; keep it finite.
  torch::Tensor x = torch::nan_to_num(space.pack(values), 0.0, 30.0, -30.0);
  // 2. The decoded source with the lens held. A pixel grid is linear in its pixels: solved
  // exactly for every placement (model/pixel_source_solve.h; a free sigma at its evidence's
  // maximum) before the placements are ranked, then its other free coordinates (centre, scale),
  // if any, by the optimiser, and the pixels solved again. On the 20 x 20 grid of
  // docs/benchmarks.md (session 48) Adam (300) and L-BFGS (200) ended this stage 576 and 256 nats
  // below the exact solve (search rounds 1 and 2), in 20 s against 2 s; ranked with the pixels
  // solved rather than at the traced-back start, the first round's placements found the lens.
  const bool pixelated = first.model.decoded_kind == "PIXELATED";
  samplers::OptimizeResult start;
  start.x = x;
  if (pixelated || rank_decoded) {
    torch::NoGradGuard no_grad;
    start.log_p = early.log_prob(x).detach();
  }
  // The solve leaves the solved rows' log posteriors in start.log_p, which the ranking reads.
  if (pixelated) start = with_exact_pixel_source(first.model, early, start, "MAP source stage");
  x = start.x;
  if (rank_decoded) {
    torch::Tensor key = start.log_p.detach().clone();
    if (early.spec().arcs_placement) {
      // Each lens's best placement by the stand-in's own log posterior goes on first, whatever
      // the full model's ranking: a grid on the arcs is traced from its lens light (below).
      const auto lp =
          torch::nan_to_num(placed.log_p.detach(), -INFINITY).reshape({n_lenses, n_place});
      const auto first_rows = torch::arange(n_lenses, lp.options().dtype(torch::kLong)) * n_place;
      key.index_fill_(0, (std::get<1>(lp.max(1)) + first_rows).to(key.device()), INFINITY);
    }
    x = samplers::best_rows_per_group(x, key, n_lenses, ms.starts);
    spdlog::info("MAP: the best {} of {} placements per lens go on, ranked by the full model{}",
                 ms.starts, n_place, pixelated ? " with the pixels solved" : "");
  }
  // A grid on the arcs: traced from the lens light of each lens's best placement by the
  // stand-in's log posterior (session 60; before, the best by the full model with the pixels
  // solved, whose lens light on SLACS J1430+4105 had taken up the clumps the stand-in could not:
  // R 18.8", n 8), for the rest of the search and for the chains. Until session 57 the joint
  // stage re-fixed it at each segment's best optimum; there the grid took up what the lens light
  // missed, the next trace counted that as arcs, and on SLACS J1430+4105 the grid widened from
  // 0.96" to 3.58" (docs/ slacs.md, "The grid's extent, traced again"). The lens's core left out
  // stays that of the placement too: made to follow the best optimum's lens (session 58), it let
  // the search drift to grids 4.6" wide and ended its joint stage 1,000 nats lower (docs/slacs.md).
  torch::Tensor traced_from;
  if (early.spec().arcs_placement) {
    samplers::OptimizeResult ranked;
    ranked.x = x;
    {
      torch::NoGradGuard no_grad;
      ranked.log_p = early.log_prob(x).detach();
    }
    // Each lens's rows begin with its stand-in best: ranked so above, or, without the full
    // model's ranking, the placements were cut to the stand-in's best, best first.
    const int64_t per_lens = x.size(0) / n_lenses;
    traced_from =
        x.index_select(
             0, torch::arange(n_lenses,
                              torch::TensorOptions().dtype(torch::kLong).device(x.device())) *
                    per_lens)
            .clone();
    early.fix_arcs_lens_light(space.unpack(traced_from));
    log_arcs_grid_side(first.model, early, traced_from, "MAP placements (the stand-in's best)");
    x = with_exact_pixel_source(first.model, early, std::move(ranked), "").x;
  }
  if (pixelated) {
    const auto names = space.coordinate_names();
    bool other_source_coordinates = false;
    for (size_t j = 0; j < names.size(); ++j) {
      other_source_coordinates |= source_mask[j] > 0 &&
                                  names[j].rfind(first.model.latent_block + "[", 0) != 0 &&
                                  names[j] != first.model.pixel_sigma_name;
    }
    if (other_source_coordinates) {
      x = optimise(objective_of(early), x, n_lenses, ms.source_adam_iterations, ms.learning_rate,
                   {}, ms.source_lbfgs_iterations, torch::tensor(source_mask, opts), "source", bar)
              .x;
      x = model::with_pixel_source_solved(first.model, early, x);
    }
  } else {
    x = optimise(objective_of(early), x, n_lenses, ms.source_adam_iterations, ms.learning_rate, {},
                 ms.source_lbfgs_iterations, torch::tensor(source_mask, opts), "source", bar)
            .x;
  }
  // 3. Everything (joint_stage).
  const JointStage joint{first.model,           decoded_index, snr_threshold,
                         traced_from.defined(), n_lenses,      ms};
  for (size_t k = 0; k < tempered.size(); ++k)
    x = joint
            .run(tempered[k], x, ms.adam_iterations,
                 fmt::format("joint (noise x{:g})", ms.anneal_noise[k]), bar)
            .x;
  auto joined =
      joint.off_prior_edges(posterior, joint.run(posterior, x, ms.adam_iterations, "joint", bar),
                            ms.adam_iterations, bar);
  if (arcs_from) *arcs_from = traced_from;
  auto optimum = with_exact_pixel_source(
      first.model, posterior, polished(first.model, posterior, joined, n_lenses, ms, bar), "MAP");
  if (traced_from.defined())
    log_arcs_grid_side(first.model, posterior, best_rows(posterior, optimum), "MAP");
  return optimum;
}

samplers::OptimizeResult map_search_detail::with_grid_on_arcs(const model::FitModel& fit,
                                                              const model::LensPosterior& posterior,
                                                              size_t source_index,
                                                              samplers::OptimizeResult r,
                                                              double snr_threshold) {
  auto un = posterior.space().unpack(r.x.detach());
  grid_on_arcs(posterior, fit, source_index, un.values, r.x.size(0), snr_threshold);
  samplers::OptimizeResult moved;
  moved.x = torch::nan_to_num(posterior.space().pack(un.values), 0.0, 30.0, -30.0);
  moved.log_p = torch::full_like(r.log_p, -INFINITY);
  moved = with_exact_pixel_source(fit, posterior, std::move(moved), "");
  const auto better =
      torch::nan_to_num(moved.log_p, -INFINITY) > torch::nan_to_num(r.log_p, -INFINITY);
  spdlog::debug("MAP joint: the grid placed on the traced arcs raised {} of {} rows",
                better.sum().item<int64_t>(), better.numel());
  r.x = torch::where(better.unsqueeze(1), moved.x, r.x.detach());
  r.log_p = torch::where(better, moved.log_p, r.log_p.detach());
  r.best = torch::nan_to_num(r.log_p, -INFINITY).argmax().item<int64_t>();
  r.best_x = r.x[r.best].clone();
  r.best_log_p = r.log_p[r.best].item<double>();
  return r;
}

}  // namespace dslens::app

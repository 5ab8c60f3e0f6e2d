#include "map_rounds.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "dslens/core/errors.h"
#include "dslens/model/pixel_source_solve.h"
#include "map_search.h"
#include "stopwatch.h"

namespace dslens::app {
namespace {

// Rows [L * S, ...] of `all` with the rows of the lenses `index` ([m]) replaced: each of those
// lenses keeps the S rows of its old ([S, ...]) and new ([S, ...] in `fresh`, [m * S, ...]) ones
// that `pick` ([m, S], into the 2S candidates, old first) selects.
torch::Tensor merged(const torch::Tensor& all, const torch::Tensor& fresh,
                     const torch::Tensor& index, const torch::Tensor& pick, int64_t lenses,
                     int64_t per_lens) {
  if (!all.defined() || !fresh.defined()) return all;
  std::vector<int64_t> shape = {lenses, per_lens};
  for (int64_t d = 1; d < all.dim(); ++d) shape.push_back(all.size(d));
  auto by_lens = all.detach().reshape(shape).clone();
  shape[0] = index.size(0);
  const auto candidates = torch::cat({by_lens.index_select(0, index.to(all.device())),
                                      fresh.detach().to(all.device()).reshape(shape)},
                                     1);
  std::vector<int64_t> view = {pick.size(0), pick.size(1)};
  view.resize(static_cast<size_t>(candidates.dim()), 1);
  const auto gather_index = pick.to(all.device()).reshape(view).expand(shape);
  by_lens.index_copy_(0, index.to(all.device()), candidates.gather(1, gather_index));
  return by_lens.reshape(all.sizes());
}

std::vector<double> host_values(const torch::Tensor& t) {
  const auto h = t.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  return {h.data_ptr<double>(), h.data_ptr<double>() + h.numel()};
}

// Each lens's reduced chi-square at its best row of `x` ([L * per_lens, D], lens-major), and the
// degrees of freedom it was reduced by ([L] each, float64 on the CPU).
std::pair<torch::Tensor, torch::Tensor> best_reduced_chi_square(
    const model::FitModel& model, const model::LensPosterior& posterior, const torch::Tensor& x,
    const torch::Tensor& log_p) {
  torch::NoGradGuard no_grad;
  const int64_t lenses = posterior.n_lenses();
  const int64_t per = x.size(0) / lenses;
  const auto lp = torch::nan_to_num(log_p.detach(), -INFINITY).reshape({lenses, per});
  const auto rows =
      std::get<1>(lp.max(1)) + torch::arange(lenses, lp.options().dtype(torch::kLong)) * per;
  const auto best = x.detach().index_select(0, rows.to(x.device()));
  const auto chi2 = posterior.chi_square(best).to(torch::kCPU, torch::kFloat64);
  const auto dof = degrees_of_freedom(model, posterior, best);
  return {chi2 / dof, dof};
}

}  // namespace

torch::Tensor degrees_of_freedom(const model::FitModel& model,
                                 const model::LensPosterior& posterior, const torch::Tensor& rows) {
  const auto pixels = posterior.data()
                          .mask.reshape({posterior.n_lenses(), -1})
                          .sum(1)
                          .to(torch::kCPU, torch::kFloat64);
  auto parameters = torch::full_like(pixels, static_cast<double>(posterior.space().dim()));
  if (model.decoded_kind == "PIXELATED") {
    const double k = static_cast<double>(model.decoded_size * model.decoded_size);
    parameters = parameters - k + model::pixel_source_effective_parameters(model, posterior, rows);
  }
  return (pixels - parameters).clamp_min(1.0);
}

torch::Tensor search_round_thresholds(const torch::Tensor& dof, const MapSettings& ms) {
  const auto nu = dof.to(torch::kFloat64);
  const auto cap = torch::full_like(nu, ms.retry_reduced_chi_square);
  if (!(ms.retry_chi_square_sigma > 0)) return cap;
  // chi^2 over nu degrees of freedom has mean nu and sd sqrt(2 nu): its reduced value sd
  // sqrt(2 / nu).
  return torch::minimum(cap, 1.0 + ms.retry_chi_square_sigma * (nu.reciprocal() * 2.0).sqrt());
}

std::vector<torch::Tensor> MapRoundState::to_tensors() const {
  const auto header = torch::tensor(
      {static_cast<double>(round), seconds, static_cast<double>(result.log_density_calls),
       static_cast<double>(result.rows_evaluated)},
      torch::kFloat64);
  std::vector<torch::Tensor> out = {header};
  for (const auto* t :
       {&result.x, &result.log_p, &result.grad_norm, &result.converged, &result.iterations})
    out.push_back(t->defined() ? t->detach().to(torch::kCPU) : torch::empty({0}));
  if (lens_rounds.defined() || arcs_from.defined())
    out.push_back(lens_rounds.defined() ? lens_rounds.to(torch::kCPU, torch::kLong)
                                        : torch::empty({0}, torch::kLong));
  if (arcs_from.defined()) out.push_back(arcs_from.detach().to(torch::kCPU));
  return out;
}

MapRoundState MapRoundState::from_tensors(const std::vector<torch::Tensor>& tensors, int64_t lenses,
                                          int64_t starts, int64_t dim) {
  const int64_t rows = lenses * starts;
  const auto fail = [&](const std::string& why) {
    throw InvalidArgument("not a MAP round of " + std::to_string(lenses) + " lens(es) x " +
                          std::to_string(starts) + " starts x " + std::to_string(dim) +
                          " parameters: " + why);
  };
  // 8 tensors since a grid on the arcs' traced-from rows were kept (7 for other models), 7 since
  // the per-lens round counts were kept, 6 before.
  if (tensors.size() < 6 || tensors.size() > 8)
    fail(std::to_string(tensors.size()) + " tensors, not 6 to 8");
  const auto& header = tensors[0];
  if (!header.defined() || header.numel() != 4) fail("no header");
  const auto h = header.to(torch::kFloat64).contiguous();
  const double* v = h.data_ptr<double>();
  MapRoundState s;
  s.round = static_cast<int64_t>(v[0]);
  s.seconds = v[1];
  s.result.log_density_calls = static_cast<int64_t>(v[2]);
  s.result.rows_evaluated = static_cast<int64_t>(v[3]);
  s.result.x = tensors[1];
  s.result.log_p = tensors[2];
  const auto optional = [rows](const torch::Tensor& t) {
    return t.defined() && t.numel() == 0 && rows > 0 ? torch::Tensor() : t;
  };
  s.result.grad_norm = optional(tensors[3]);
  s.result.converged = optional(tensors[4]);
  s.result.iterations = optional(tensors[5]);
  if (s.round < 1) fail("round " + std::to_string(s.round));
  if (!s.result.x.defined() || s.result.x.sizes() != torch::IntArrayRef({rows, dim}))
    fail("positions of another shape");
  if (!s.result.log_p.defined() || s.result.log_p.sizes() != torch::IntArrayRef({rows}))
    fail("log posteriors of another shape");
  if (tensors.size() >= 7 && tensors[6].numel() > 0) {
    s.lens_rounds = tensors[6].to(torch::kLong);
    if (s.lens_rounds.sizes() != torch::IntArrayRef({lenses}))
      fail("round counts of another shape");
  }
  if (tensors.size() == 8) {
    s.arcs_from = tensors[7];
    if (s.arcs_from.sizes() != torch::IntArrayRef({lenses, dim}))
      fail("traced-from rows of another shape");
  }
  return s;
}

samplers::OptimizeResult map_search_in_rounds(
    const std::vector<const FitConfig*>& lenses, const model::LensPosterior& posterior,
    const std::optional<torch::Tensor>& psf, const BatchPosteriorFn& make,
    const MapRoundState* resume, const MapRoundFn& on_round, std::vector<int64_t>* lens_rounds,
    torch::Tensor* arcs_from) {
  const MapSettings& ms = lenses.front()->map;
  const int64_t n_lenses = static_cast<int64_t>(lenses.size());
  const int64_t per = ms.starts;
  const auto t_run = std::chrono::steady_clock::now();
  double seconds_before = 0.0;  // search time of earlier runs (--resume)
  samplers::OptimizeResult result;
  int64_t first_round = 1;
  auto rounds = torch::ones({n_lenses}, torch::kLong);  // each lens's rounds so far
  torch::Tensor traced;  // [L, D] a grid on the arcs' traced-from rows (MapRoundState::arcs_from)
  // The batch's posterior traced from them.
  const auto fix_traced = [&]() {
    posterior.fix_arcs_lens_light(posterior.space().unpack(traced));
  };
  if (resume) {
    rounds = resume->lens_rounds.defined() ? resume->lens_rounds.clone()
                                           : torch::full({n_lenses}, -1, torch::kLong);
    result = resume->result;
    const auto device = posterior.data().image.device();
    for (auto* t :
         {&result.x, &result.log_p, &result.grad_norm, &result.converged, &result.iterations})
      if (t->defined()) *t = t->to(device);
    result.x = result.x.to(posterior.data().image.scalar_type());
    first_round = resume->round;
    seconds_before = resume->seconds;
    if (resume->arcs_from.defined()) {
      traced = resume->arcs_from.to(device, result.x.scalar_type());
      fix_traced();
    }
    spdlog::info("MAP: resumed after round {} ({:.1f} s of search so far)", resume->round,
                 resume->seconds);
  } else {
    result = map_search(lenses, posterior, psf, 0, &traced);
  }
  const auto report = [&](int64_t completed) {
    if (on_round && completed <= ms.retry_rounds)
      on_round(MapRoundState{completed, result, seconds_before + seconds_since(t_run),
                             rounds.clone(), traced});
  };
  if (!resume) report(1);
  for (int64_t round = first_round; round <= ms.retry_rounds; ++round) {
    const auto [reduced, dof] =
        best_reduced_chi_square(lenses.front()->model, posterior, result.x, result.log_p);
    // Judged against the noise as given: a data.noise_scale (correlated noise) divides the
    // chi-square by its square, and would hide a misfit (or, below 1, call a good fit bad).
    auto chi = host_values(reduced);
    for (size_t k = 0; k < chi.size() && k < lenses.size(); ++k) {
      chi[k] *= lenses[k]->data.noise_scale * lenses[k]->data.noise_scale;
    }
    const auto thresholds = host_values(search_round_thresholds(dof, ms));
    std::vector<int64_t> retry;
    std::vector<double> retry_chi, retry_threshold;
    for (int64_t i = 0; i < n_lenses; ++i) {
      const auto k = static_cast<size_t>(i);
      if (!(chi[k] <= thresholds[k])) {  // NaN too
        retry.push_back(i);
        retry_chi.push_back(chi[k]);
        retry_threshold.push_back(thresholds[k]);
      }
    }
    if (retry.empty()) {
      spdlog::info(
          "MAP: every lens's best optimum leaves a reduced chi-square within its threshold ({} "
          "over {} degrees of freedom, thresholds {}): no more search rounds",
          nlohmann::json(chi).dump(), nlohmann::json(host_values(dof)).dump(),
          nlohmann::json(thresholds).dump());
      break;
    }
    const auto t0 = std::chrono::steady_clock::now();
    spdlog::info(
        "MAP: round {} of {}: {} of {} lens(es) with a reduced chi-square above their threshold "
        "at the best optimum ({} above {}) searched again from other prior draws",
        round + 1, ms.retry_rounds + 1, retry.size(), n_lenses, nlohmann::json(retry_chi).dump(),
        nlohmann::json(retry_threshold).dump());
    std::vector<const FitConfig*> subset;
    for (const int64_t i : retry) subset.push_back(lenses[static_cast<size_t>(i)]);
    {
      auto count = rounds.accessor<int64_t, 1>();
      for (const int64_t i : retry)
        if (count[i] > 0) ++count[i];  // an unknown count (-1) stays unknown
    }
    samplers::OptimizeResult again;
    torch::Tensor again_traced;
    if (static_cast<int64_t>(retry.size()) == n_lenses) {
      again = map_search(lenses, posterior, psf, static_cast<uint64_t>(round), &again_traced);
    } else {
      const BatchPosterior sub = make(subset);
      again =
          map_search(subset, sub.first, sub.second, static_cast<uint64_t>(round), &again_traced);
    }
    // Each retried lens keeps its best `per` optima of the old and new rounds.
    const auto index = torch::tensor(retry, torch::kLong).to(result.x.device());
    const int64_t m = index.size(0);
    const auto old_lp = result.log_p.detach().reshape({n_lenses, per}).index_select(0, index);
    const auto new_lp = again.log_p.detach().reshape({m, per}).to(old_lp.device());
    const auto candidates = torch::nan_to_num(torch::cat({old_lp, new_lp}, 1), -INFINITY);
    const auto pick = std::get<1>(candidates.topk(per, 1));
    const auto before = old_lp.max(1);
    result.x = merged(result.x, again.x, index, pick, n_lenses, per);
    result.log_p = merged(result.log_p, again.log_p, index, pick, n_lenses, per);
    result.grad_norm = merged(result.grad_norm, again.grad_norm, index, pick, n_lenses, per);
    result.converged = merged(result.converged, again.converged, index, pick, n_lenses, per);
    result.iterations = merged(result.iterations, again.iterations, index, pick, n_lenses, per);
    result.log_density_calls += again.log_density_calls;
    result.rows_evaluated += again.rows_evaluated;
    const auto after = result.log_p.reshape({n_lenses, per}).index_select(0, index).max(1);
    if (traced.defined() && again_traced.defined()) {
      // A grid on the arcs: each retried lens is traced from the round of its best optimum, and
      // the batch's posterior is left traced from those rows (a subset's round fixed its own).
      const auto from_new = (pick.select(1, 0) >= per).to(traced.device());
      const auto rows = traced.index_select(0, index.to(traced.device()));
      traced = traced.index_copy(
          0, index.to(traced.device()),
          torch::where(from_new.unsqueeze(1), again_traced.to(traced.device()), rows));
      fix_traced();
    }
    spdlog::info("MAP: round {} took {:.1f} s; best log posterior of the retried lens(es) {} -> {}",
                 round + 1, seconds_since(t0),
                 nlohmann::json(host_values(std::get<0>(before))).dump(),
                 nlohmann::json(host_values(std::get<0>(after))).dump());
    report(round + 1);
  }
  if (lens_rounds) {
    const auto count = rounds.accessor<int64_t, 1>();
    lens_rounds->assign(static_cast<size_t>(n_lenses), 0);
    for (int64_t i = 0; i < n_lenses; ++i) (*lens_rounds)[static_cast<size_t>(i)] = count[i];
  }
  if (arcs_from) *arcs_from = traced;
  const auto finite = torch::nan_to_num(result.log_p, -INFINITY);
  result.best = finite.argmax().item<int64_t>();
  result.best_x = result.x[result.best].clone();
  result.best_log_p = result.log_p[result.best].item<double>();
  return result;
}

}  // namespace dslens::app

// Search rounds of the MAP (docs/fit.md, "Search rounds"). At high signal-to-noise the staged
// search from one set of prior draws misses the truth's mode on a share of lenses, and when it
// does the data say so: on the 12 SNR-100 mocks of docs/mock_study.md (session 27) the misses
// thousands of nats below the truth left reduced chi-squares of 1.30 to 2.66 at their optimum,
// the searches in or next to the mode 0.99 to 1.04. A lens whose best optimum leaves a reduced
// chi-square above its threshold (search_round_thresholds, below) is therefore searched again
// from fresh prior draws (app/map_search.h, `round`), at most `map.retry_rounds` more times, and
// keeps its best `starts` optima over all its rounds. Only the lenses still above the threshold
// take part in a round, as a batch of their own.
#pragma once
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "dslens/model/lens_posterior.h"
#include "dslens/samplers/optimize.h"
#include "fit_config.h"

namespace dslens::app {

// The posterior of a batch of lenses (data stacked lens-major) and the PSF it was built with.
using BatchPosterior = std::pair<model::LensPosterior, std::optional<torch::Tensor>>;
using BatchPosteriorFn = std::function<BatchPosterior(const std::vector<const FitConfig*>&)>;

// The search after a completed round: what a checkpoint holds and --resume continues from. The
// rounds after it draw from streams keyed by their own number (map_search's `round`), so a search
// resumed from this state ends where the uninterrupted one does.
struct MapRoundState {
  int64_t round = 0;  // rounds completed: 1 after the first search
  samplers::OptimizeResult result;
  double seconds = 0.0;  // search time so far, over all runs
  // [L] int64: the rounds each lens was searched in so far; undefined in a checkpoint written
  // before it was kept (the count is then unknown, -1).
  torch::Tensor lens_rounds;
  // [L, D]: a grid on the arcs' traced-from rows (map_search's `arcs_from`), each lens's from the
  // round that gave its best optimum; undefined for other models and in older checkpoints.
  torch::Tensor arcs_from;

  std::vector<torch::Tensor> to_tensors() const;
  // Throws dslens::InvalidArgument when the tensors are not a state of `lenses` x `starts` rows
  // of `dim` parameters.
  static MapRoundState from_tensors(const std::vector<torch::Tensor>& tensors, int64_t lenses,
                                    int64_t starts, int64_t dim);
};
using MapRoundFn = std::function<void(const MapRoundState&)>;

// Each lens's degrees of freedom at its row of `rows` ([L, D], one per lens, lens-major), for the
// reduced chi-square a fit reports and warns of: its fitted pixels less its free parameters, at
// least 1, a PIXELATED source's pixels counted by their effective number, the trace of the hat
// matrix (model::pixel_source_effective_parameters), not one each: the chi-square of a correct fit
// at its maximum has that expectation. On the 20 x 20 grid of docs/fit.md ("Pixel grids") 400
// pixels counted as 400 gave 1.037 and a warning of a missed mode; their 222 effective ones give
// 1.018. The search rounds use it too.
torch::Tensor degrees_of_freedom(const model::FitModel& model,
                                 const model::LensPosterior& posterior, const torch::Tensor& rows);

// The reduced chi-square above which a lens is searched again, per lens from its degrees of
// freedom ([L]): the smaller of `retry_reduced_chi_square` and, when `retry_chi_square_sigma` > 0,
// 1 + retry_chi_square_sigma sqrt(2 / dof), the value a correct optimum exceeds only by chance
// (its chi-square has mean dof and sd sqrt(2 dof)). At SNR 10 over 80x80 pixels a search that
// ended 174 nats below the truth left 1.032 while the correct ones left 0.983 to 1.027
// (docs/mock_study.md, session 31): a fixed 1.1 passes misses the data cannot show that loudly.
torch::Tensor search_round_thresholds(const torch::Tensor& dof, const MapSettings& ms);

// map_search (round 0) on the whole batch, then the rounds above; `make` builds the posterior of
// the lenses a round retries. Same result layout as map_search. With `resume`, the rounds it
// completed are not searched again; `on_round` receives the state after every round that more
// rounds may follow. `lens_rounds`, when given, receives the rounds each lens was searched in
// (1: the first search sufficed; -1: unknown, resumed from a checkpoint that did not keep them).
// `arcs_from`, when given, receives MapRoundState::arcs_from at the end; a grid on the arcs is then
// left traced from those rows in `posterior`.
samplers::OptimizeResult map_search_in_rounds(
    const std::vector<const FitConfig*>& lenses, const model::LensPosterior& posterior,
    const std::optional<torch::Tensor>& psf, const BatchPosteriorFn& make,
    const MapRoundState* resume = nullptr, const MapRoundFn& on_round = {},
    std::vector<int64_t>* lens_rounds = nullptr, torch::Tensor* arcs_from = nullptr);

}  // namespace dslens::app

// Search rounds of the MAP (docs/fit.md, "Search rounds"). At high signal-to-noise the staged
// search from one set of prior draws misses the truth's mode on a share of lenses, and when it
// does the data say so: on the 12 SNR-100 mocks of docs/mock_study.md (session 27) the misses
// thousands of nats below the truth left reduced chi-squares of 1.30 to 2.66 at their optimum,
// the searches in or next to the mode 0.99 to 1.04. A lens whose best optimum leaves a reduced
// chi-square above `map.retry_reduced_chi_square` is therefore searched again from fresh prior
// draws (app/map_search.h, `round`), at most `map.retry_rounds` more times, and keeps its best
// `starts` optima over all its rounds. Only the lenses still above the threshold take part in a
// round, as a batch of their own.
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

// map_search (round 0) on the whole batch, then the rounds above; `make` builds the posterior of
// the lenses a round retries. Same result layout as map_search.
samplers::OptimizeResult map_search_in_rounds(const std::vector<const FitConfig*>& lenses,
                                              const model::LensPosterior& posterior,
                                              const std::optional<torch::Tensor>& psf,
                                              const BatchPosteriorFn& make);

}  // namespace dslens::app

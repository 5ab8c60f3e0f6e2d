// The MAP stage of `dslens fit` (docs/fit.md, "MAP"): prior draws of every lens optimised together
// as one batch, in stages.
//
// A parametric model is optimised in one stage: Adam (optionally on blurred residuals first,
// coarse to fine), then L-BFGS. A model with a decoded source (VAE or PIXELATED) needs more: at
// high signal-to-noise its joint optimum from a prior draw almost never reaches the lens's basin,
// because while the 64 latents still describe a wrong galaxy the likelihood drags the lens
// parameters far from any basin (docs/mock_study.md). Its MAP is therefore three stages:
//   1. placement: the same lens (and lens light) from `starts` prior draws, with an elliptical
//      Sersic stand-in for the source ("sersic": a 7-parameter source cannot absorb a wrong lens)
//      or with the source marginalised on a coarse pixel grid ("inversion",
//      model/source_inversion.h: no assumption on the source's shape);
//   2. source: the decoded source's parameters (latents, amplitude, centre) fitted with the lens
//      held at each placement optimum (Adam then L-BFGS on the source coordinates only);
//   3. joint: every parameter, by Adam at a small learning rate (steps of the posterior's scale,
//      not the prior's) and L-BFGS.
// With `backproject` (model/source_backprojection.h) the placements' source centres and the
// decoded source's start (the VAE's encoder) come from the data traced back through each lens,
// and surplus placements (`placement_starts`) are ranked by the full model at those starts.
#pragma once
#include <optional>
#include <vector>

#include "dslens/core/device.h"
#include "dslens/model/lens_posterior.h"
#include "dslens/samplers/laplace.h"
#include "dslens/samplers/optimize.h"
#include "fit_config.h"
#include "placement_model.h"

namespace dslens::app {

// Optimises `lenses[0].map.starts` starts per lens of `posterior` (rows lens-major); returns the
// final positions [L * starts, D] and their log posteriors. `round` > 0 draws other starts (the
// search rounds of app/map_rounds.h) and, for a decoded source, places the lens from 2^round
// times as many draws (at most 16 times). A PIXELATED grid on the arcs (model/arcs_placement.h) is
// traced, from the source stage on, from the lens light of each lens's best placement (its lens's
// core left out), left fixed in `posterior`; `arcs_from`, when given, receives those rows [L, D]
// (undefined for any other model, and for a search without placements, which fixes none).
samplers::OptimizeResult map_search(const std::vector<const FitConfig*>& lenses,
                                    const model::LensPosterior& posterior,
                                    const std::optional<torch::Tensor>& psf, uint64_t round = 0,
                                    torch::Tensor* arcs_from = nullptr);

// The MAP from one given start per lens instead of a search (`dslens fit --init`, app/map_init.h):
// `x0` [L, D] (unconstrained, lens-major) optimised by L-BFGS (map.lbfgs_iterations) and Newton
// polishing. Same result layout as map_search with one start per lens. A grid on the arcs is
// traced from the start's lens light (`arcs_from` receives `x0`); a pixel grid is solved exactly
// for the start's lens (a free sigma at its evidence's maximum) before L-BFGS, so its pixels in
// `x0` need not be meaningful.
samplers::OptimizeResult map_from_start(const std::vector<const FitConfig*>& lenses,
                                        const model::LensPosterior& posterior,
                                        const torch::Tensor& x0,
                                        torch::Tensor* arcs_from = nullptr);

// Optima of one posterior optimised again under another of the same model and the same lenses
// (data.noise_scale "auto", app/noise_correlation.h: sigma scaled after the MAP): `x` [L * K, D]
// (lens-major), by L-BFGS (map.lbfgs_iterations) and Newton polishing as map_from_start. A grid on
// the arcs must already be fixed in `posterior`. Same result layout as `x`.
samplers::OptimizeResult map_reoptimised(const std::vector<const FitConfig*>& lenses,
                                         const model::LensPosterior& posterior,
                                         const torch::Tensor& x);

// For Hessians at a batch's points (Newton's polish, the Laplace approximation at the optima): a
// pixel grid's block in closed form (model::pixel_source_hessian), so that only the other
// coordinates are differenced. On the 32 x 32 grid of docs/benchmarks.md (session 52) 14 of the
// 1,038 coordinates are, and the Laplace approximation at 4 optima took 11 s instead of 1,524 s.
// nullptr for other sources. `posterior` must outlive the function.
samplers::HessianBlockFn pixel_hessian_block(const model::FitModel& model,
                                             const model::LensPosterior& posterior);

// Optima of a model with a PIXELATED source, the grid solved exactly for each row's lens and lens
// light (model/pixel_source_solve.h): the pixels of a fixed sigma at their conditional maximum (no
// row's log posterior falls); a free sigma at the maximum of its evidence times its prior, with the
// pixels at their maximum there (the joint posterior has no mode in sigma: docs/fit.md, "Pixel
// grids"). Log posteriors recomputed; `what` names the optima in the log. Other models: `result`.
samplers::OptimizeResult with_exact_pixel_source(const model::FitModel& model,
                                                 const model::LensPosterior& posterior,
                                                 samplers::OptimizeResult result,
                                                 const std::string& what);

}  // namespace dslens::app

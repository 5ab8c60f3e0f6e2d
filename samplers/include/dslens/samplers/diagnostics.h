// MCMC convergence and efficiency diagnostics after Vehtari, Gelman, Simpson, Carpenter and Bürkner
// (2021), "Rank-normalization, folding, and localization: an improved R-hat", computed exactly as
// the R package posterior does (R/convergence.R): split chains, rank normalisation with Blom's
// offset 3/8, folding around the median, FFT autocovariances and Geyer's initial monotone sequence
// with the improved (antithetic-aware) truncation and the ESS cap S*log10(S).
//
// Draws of one quantity are [chains, draws] (a 1-d tensor is one chain), of any dtype and device;
// they are copied to the CPU as float64. Every function returns NaN where the quantity is
// undefined: fewer than 4 draws per chain, any non-finite draw (NaN, +-Inf), or constant draws
// (max - min < machine epsilon). Tensors of another rank throw dslens::InvalidArgument.
#pragma once
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace dslens::samplers {

// Draws of one quantity as plain vectors: chains[c][i] is draw i of chain c. All chains must have
// the same length (else dslens::InvalidArgument).
using ChainDraws = std::vector<std::vector<double>>;

// Rank-normalised split R-hat: max(rhat_bulk, rhat_tail) (posterior::rhat).
double rhat(const torch::Tensor& draws);
double rhat(const ChainDraws& draws);
// R-hat of the rank-normalised split chains.
double rhat_bulk(const torch::Tensor& draws);
double rhat_bulk(const ChainDraws& draws);
// R-hat of the rank-normalised split chains folded around the median, |x - median(x)|.
double rhat_tail(const torch::Tensor& draws);
double rhat_tail(const ChainDraws& draws);
// Classic split R-hat (Gelman et al. 2013) of the raw draws (posterior::rhat_basic).
double rhat_basic(const torch::Tensor& draws);
double rhat_basic(const ChainDraws& draws);

// Bulk ESS: ESS of the rank-normalised split chains (posterior::ess_bulk).
double ess_bulk(const torch::Tensor& draws);
double ess_bulk(const ChainDraws& draws);
// Tail ESS: min of the ESS of the 5 % and 95 % quantile indicators (posterior::ess_tail).
double ess_tail(const torch::Tensor& draws);
double ess_tail(const ChainDraws& draws);
// Basic ESS of the raw split chains, i.e. the ESS for the mean (posterior::ess_basic, ess_mean).
double ess_basic(const torch::Tensor& draws);
double ess_basic(const ChainDraws& draws);
// ESS of the indicator draws <= quantile(prob) (posterior::ess_quantile), prob in [0, 1].
double ess_quantile(const torch::Tensor& draws, double prob);
double ess_quantile(const ChainDraws& draws, double prob);

// Monte Carlo standard error of the mean: sd(draws) / sqrt(ess_basic) (posterior::mcse_mean).
double mcse_mean(const torch::Tensor& draws);
double mcse_mean(const ChainDraws& draws);
// Monte Carlo standard error of a quantile from the Beta posterior of the indicator's mean
// (posterior::mcse_quantile), prob in [0, 1].
double mcse_quantile(const torch::Tensor& draws, double prob);
double mcse_quantile(const ChainDraws& draws, double prob);

// All convergence diagnostics of one quantity, computed together.
struct ConvergenceDiagnostics {
  double rhat = NAN;  // max(rhat_bulk, rhat_tail)
  double rhat_bulk = NAN;
  double rhat_tail = NAN;
  double ess_bulk = NAN;
  double ess_tail = NAN;
  double ess_basic = NAN;  // ESS for the mean
  double mcse_mean = NAN;
  double mcse_q5 = NAN;   // MCSE of the 5 % quantile
  double mcse_q95 = NAN;  // MCSE of the 95 % quantile
};
// draws [chains, draws] (or 1-d: one chain).
ConvergenceDiagnostics convergence(const torch::Tensor& draws);
ConvergenceDiagnostics convergence(const ChainDraws& draws);
// Batched over parameters: draws [chains, draws, params] -> one entry per parameter.
std::vector<ConvergenceDiagnostics> convergence_per_parameter(const torch::Tensor& draws);

// Energy Bayesian fraction of missing information per chain (as ArviZ computes it):
// mean((E[t] - E[t-1])^2) / var(E) with the population variance. energy [chains, draws] (1-d: one
// chain). NaN for a chain with fewer than 2 draws, a non-finite energy or a constant energy.
std::vector<double> ebfmi(const torch::Tensor& energy);
// Number of divergent transitions (non-zero entries) in total and per chain; divergent
// [chains, draws] (1-d: one chain), any dtype.
int64_t count_divergences(const torch::Tensor& divergent);
std::vector<int64_t> divergences_per_chain(const torch::Tensor& divergent);
// Where the divergent transitions lie, per parameter: the mean, over the draws of divergent
// transitions, of each one's rank percentile among all draws of that parameter (in [0, 1]; about
// 0.5 when they are spread like the posterior), [D] float64; NaN without divergences. draws
// [C, N, D] (any monotone transform of the parameters gives the same), divergent [C, N]. The text
// form of Stan's pairs plot with divergences marked: a region the sampler cannot integrate, such
// as a funnel's neck, shows as percentiles far from 0.5 in the parameters that lead into it.
torch::Tensor divergence_percentiles(const torch::Tensor& draws, const torch::Tensor& divergent);

// How far (in nats) a reference point's log density, e.g. a simulation's truth, lies above the
// highest of the draws' log densities (any shape), beyond a margin of D / 2: the height of a
// D-dimensional Gaussian's mode above the mean of its typical set. A point of the mode the draws
// explore lies among their log densities like a draw, and none lies more than D / 2 above their
// mean (less so above their best), so a positive value says the draws sit in another mode than the
// point's. The margin is that wide because chains still settling after a short warmup sit below
// their typical set: on the bench mock, 4 chains x (150 + 100) in the truth's mode had their best
// draw 13 nats below the truth (D = 76), while chains in a false mode had theirs 107 nats below.
// Negative otherwise; NaN when the reference is not finite or there are no finite draws.
double log_density_above_draws(double reference, const torch::Tensor& draws_log_density,
                               int64_t dim);

// Building blocks, exposed for tests and for callers that need them.
namespace mcmc_stats {
// Autocovariance of a sequence at every lag t, sum_i (x_i - m)(x_{i+t} - m) / N (Geyer's biased
// estimate, via FFT as posterior::autocovariance). Zeros for a constant sequence.
std::vector<double> autocovariance(const std::vector<double>& x);
// Quantile of the values with R's default (type 7) linear interpolation. NaN if any value is NaN
// or the vector is empty.
double quantile(std::vector<double> values, double prob);
// Standard normal quantile function (inverse CDF), accurate to a few ulp; -inf / +inf at 0 / 1.
double normal_quantile(double p);
// Regularised incomplete beta function I_x(a, b) and its inverse in x (R's pbeta / qbeta).
double incomplete_beta(double x, double a, double b);
double beta_quantile(double p, double a, double b);
}  // namespace mcmc_stats

}  // namespace dslens::samplers

// The exact solve of a PIXELATED source (model/pixel_source_solve.h), against autograd: the
// normal equations' G and b against the model image's Jacobian in the pixel block, the solved
// block against the log posterior's gradient, and the free strength's choice against the
// marginal likelihood computed densely in pixel space.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "dslens/core/config.h"
#include "dslens/model/fit_model.h"
#include "dslens/model/lens_posterior.h"
#include "dslens/model/pixel_source_solve.h"
#include "dslens/physics/image_model.h"
#include "dslens/samplers/laplace.h"

using namespace dslens;
using namespace dslens::model;

namespace {

// An SIE (free theta_E and e1) with Sersic lens light (free amp) and a 6 x 6 curvature-regularised
// pixel grid (pixels of `scale`", free centre_x); `sigma` is the grid's "sigma" node.
nlohmann::json model_json(const nlohmann::json& sigma, double scale) {
  return {{"supersampling", 2},
          {"mass",
           {{{"type", "SIE"},
             {"theta_E", {{"prior", "uniform"}, {"lower", 0.6}, {"upper", 0.9}}},
             {"e1", {{"prior", "uniform"}, {"lower", -0.15}, {"upper", 0.15}}},
             {"e2", 0.05},
             {"center_x", 0.0},
             {"center_y", 0.0}}}},
          {"lens_light",
           {{{"type", "SERSIC_ELLIPSE"},
             {"amp", {{"prior", "lognormal"}, {"mu", 0.0}, {"sigma", 0.5}}},
             {"R_sersic", 0.4},
             {"n_sersic", 2.0},
             {"e1", 0.0},
             {"e2", 0.0},
             {"center_x", 0.0},
             {"center_y", 0.0}}}},
          {"source",
           {{{"type", "PIXELATED"},
             {"size", 6},
             {"scale", scale},
             {"center_x", {{"prior", "normal"}, {"mean", 0.0}, {"sigma", 0.05}}},
             {"sigma", sigma},
             {"regularisation", "curvature"}}}}};
}

// model_json's model on 20 x 20 pixels of 0.1", supersampled 2 x, Gaussian PSF; two lenses with
// their own data and a masked corner, three rows each.
struct PixelProblem {
  Compute compute{torch::kCPU, torch::kFloat64};
  FitModel fit;
  std::optional<LensPosterior> posterior;
  torch::Tensor u;  // [6, D]
  static constexpr int64_t kSide = 20, kLenses = 2, kPer = 3;

  explicit PixelProblem(const nlohmann::json& sigma, double scale = 0.1) {
    fit = parse_fit_model(ConfigNode(model_json(sigma, scale), "/model"), ".", compute);
    const auto grid = physics::PixelGrid::centered(kSide, kSide, 0.1);
    const auto psf = physics::gaussian_psf_kernel(0.15, 0.1, compute);
    auto gen = at::detail::createCPUGenerator(11);
    u = fit.space.initial(kLenses * kPer, compute.options()) +
        0.3 * torch::randn({kLenses * kPer, fit.space.dim()}, gen, torch::kFloat64);
    // Data: the model at rows 0 and 3, plus noise of sd 0.02; the top-left 4 x 4 corner masked.
    const auto noise = torch::full({kLenses, kSide, kSide}, 0.02, torch::kFloat64);
    auto mask = torch::ones({kLenses, kSide, kSide}, torch::kBool);
    mask.narrow(1, 0, 4).narrow(2, 0, 4).fill_(false);
    ImagingData blank{torch::zeros({kLenses, kSide, kSide}, torch::kFloat64), noise, mask};
    const LensPosterior maker(fit.spec(grid, psf), fit.space, blank, compute);
    const auto truth = u.index_select(0, torch::tensor({0, 3}));
    auto image = maker.model_image(fit.space.unpack(truth)).detach() +
                 0.02 * torch::randn({kLenses, kSide, kSide}, gen, torch::kFloat64);
    posterior.emplace(fit.spec(grid, psf), fit.space, ImagingData{image, noise, mask}, compute);
  }

  int64_t block_first() const {
    const auto names = fit.space.coordinate_names();
    for (size_t j = 0; j < names.size(); ++j)
      if (names[j].rfind(fit.latent_block + "[", 0) == 0) return static_cast<int64_t>(j);
    return -1;
  }
  int64_t k() const { return fit.decoded_size * fit.decoded_size; }

  // The model image's Jacobian in the pixel block, [R, P, K], by autograd (one backward pass per
  // pixel), and the image with the block at 0, [R, P].
  std::pair<torch::Tensor, torch::Tensor> jacobian(const torch::Tensor& at) const {
    auto x = at.detach().clone().requires_grad_(true);
    const auto image = posterior->model_image(fit.space.unpack(x)).reshape({at.size(0), -1});
    const int64_t p = image.size(1);
    std::vector<torch::Tensor> rows;
    for (int64_t i = 0; i < p; ++i) {
      const auto g = torch::autograd::grad({image.select(1, i).sum()}, {x}, {}, true)[0];
      rows.push_back(g.narrow(1, block_first(), k()));
    }
    auto zero = at.detach().clone();
    zero.narrow(1, block_first(), k()).zero_();
    torch::NoGradGuard no_grad;
    const auto m0 = posterior->model_image(fit.space.unpack(zero)).reshape({at.size(0), -1});
    return {torch::stack(rows, 1), m0};
  }
  torch::Tensor weight_rows() const {  // [R, P]: mask / noise^2, each lens's rows
    const auto& d = posterior->data();
    return (d.mask.to(torch::kFloat64) / d.sigma.square())
        .repeat_interleave(kPer, 0)
        .reshape({kLenses * kPer, -1});
  }
  torch::Tensor data_rows() const {
    return posterior->data().image.repeat_interleave(kPer, 0).reshape({kLenses * kPer, -1});
  }
  torch::Tensor block_gradient(const torch::Tensor& at) const {
    auto x = at.detach().clone().requires_grad_(true);
    const auto g = torch::autograd::grad({posterior->log_prob(x).sum()}, {x})[0];
    return g.narrow(1, block_first(), k());
  }
};

const nlohmann::json kFreeSigma = {{"prior", "lognormal"}, {"mu", 0.0}, {"sigma", 2.0}};

void free_strength_against_dense_marginal_likelihood(double scale);

}  // namespace

TEST(PixelSourceSolve, NormalEquationsMatchAutogradsJacobian) {
  PixelProblem p(kFreeSigma);
  const auto system = pixel_source_system(p.fit, *p.posterior, p.u);
  const auto [j, m0] = p.jacobian(p.u);
  const auto sigma = p.fit.space.unpack(p.u).values.at(p.fit.pixel_sigma_name);
  // J per unit sigma.
  const auto j1 = j / sigma.view({-1, 1, 1});
  const auto jw = j1.transpose(1, 2) * p.weight_rows().unsqueeze(1);
  const auto gram = torch::bmm(jw, j1);
  const auto rhs = torch::bmm(jw, (p.data_rows() - m0).unsqueeze(2)).squeeze(2);
  EXPECT_EQ(system.first_column, p.block_first());
  EXPECT_TRUE(torch::allclose(system.sigma, sigma, 1e-12, 0.0));
  EXPECT_LT((system.gram - gram).abs().max().item<double>(),
            1e-9 * gram.abs().max().item<double>());
  EXPECT_LT((system.rhs - rhs).abs().max().item<double>(), 1e-9 * rhs.abs().max().item<double>());
  // The masked corner carries no weight: G is not what the unmasked J would give.
  const auto unmasked = torch::bmm(j1.transpose(1, 2), j1) / (0.02 * 0.02);
  EXPECT_GT((unmasked - gram).abs().max().item<double>(), 1e-3 * gram.abs().max().item<double>());
}

TEST(PixelSourceSolve, SolvedPixelsZeroTheBlocksGradientAndRaiseTheLogPosterior) {
  for (const nlohmann::json& sigma : {nlohmann::json(0.5), kFreeSigma}) {
    PixelProblem p(sigma);
    const auto solved = with_pixel_source_solved(p.fit, *p.posterior, p.u);
    const auto before = p.block_gradient(p.u).abs().max().item<double>();
    const auto after = p.block_gradient(solved).abs().max().item<double>();
    EXPECT_GT(before, 1.0) << sigma.dump();
    EXPECT_LT(after, 1e-6 * before) << sigma.dump();
    // Only the block moved; every row's log posterior rose.
    const int64_t first = p.block_first(), k = p.k();
    const auto others = (solved - p.u).abs();
    EXPECT_EQ(others.narrow(1, 0, first).max().item<double>(), 0.0);
    EXPECT_EQ(others.narrow(1, first + k, p.fit.space.dim() - first - k).numel() == 0
                  ? 0.0
                  : others.narrow(1, first + k, p.fit.space.dim() - first - k).max().item<double>(),
              0.0);
    torch::NoGradGuard no_grad;
    EXPECT_TRUE((p.posterior->log_prob(solved) > p.posterior->log_prob(p.u)).all().item<bool>());
  }
}

// Also with a grid of 3.6" on the 2" image, whose outer pixels no image pixel sees: G is singular
// there, and the rounding of b in its null space once sent sigma to the candidates' edge.
TEST(PixelSourceSolve, FreeStrengthGoesToTheDenseMarginalLikelihoodsMaximum) {
  for (const double scale : {0.1, 0.6}) {
    SCOPED_TRACE("pixel scale " + std::to_string(scale));
    free_strength_against_dense_marginal_likelihood(scale);
  }
}

namespace {

void free_strength_against_dense_marginal_likelihood(double scale) {
  PixelProblem p(kFreeSigma, scale);
  torch::Tensor chosen;
  const auto moved = with_pixel_source_at_evidence_maximum(p.fit, *p.posterior, p.u, &chosen);
  const auto [j, m0] = p.jacobian(p.u);
  const auto sigma = p.fit.space.unpack(p.u).values.at(p.fit.pixel_sigma_name);
  const auto j1 = j / sigma.view({-1, 1, 1});
  const auto w = p.weight_rows();
  const auto r = p.data_rows() - m0;
  const auto names = p.fit.space.coordinate_names();
  const int64_t col = std::find(names.begin(), names.end(), p.fit.pixel_sigma_name) - names.begin();
  for (int64_t row = 0; row < p.u.size(0); ++row) {
    // log N(r; 0, N + sigma^2 J J^T) over the unmasked pixels, plus sigma's log prior in the
    // sampler's coordinate, on a grid of that coordinate around the chosen one.
    const auto keep = torch::nonzero(w[row] > 0).squeeze(1);
    const auto jk = j1[row].index_select(0, keep);
    const auto rk = r[row].index_select(0, keep);
    const auto nk = torch::diag(1.0 / w[row].index_select(0, keep));
    const double at = moved[row][col].item<double>();
    double best_t = 0.0, best = -INFINITY;
    for (int i = -10; i <= 10; ++i) {
      auto x = p.u[row].unsqueeze(0).clone();
      x[0][col] = at + 0.005 * i;
      const auto un = p.fit.space.unpack(x);
      const double s = un.values.at(p.fit.pixel_sigma_name).item<double>();
      const auto cov = nk + s * s * jk.matmul(jk.t());
      const auto chol = torch::linalg_cholesky(cov);
      const auto y = torch::linalg_solve_triangular(chol, rk.unsqueeze(1), false).squeeze(1);
      const double log_ev = -0.5 * y.square().sum().item<double>() -
                            chol.diagonal().log().sum().item<double>() +
                            un.log_prior.item<double>();
      if (log_ev > best) best = log_ev, best_t = x[0][col].item<double>();
    }
    // The chosen coordinate is on a 0.01 grid: the dense maximum lies within one step of it, and
    // not at the scan's edges.
    EXPECT_LE(std::abs(best_t - at), 0.0101) << "row " << row;
    EXPECT_NEAR(chosen[row].item<double>(),
                p.fit.space.unpack(moved).values.at(p.fit.pixel_sigma_name)[row].item<double>(),
                1e-12);
  }
  // And the pixels are at their maximum for the chosen sigma.
  EXPECT_LT(p.block_gradient(moved).abs().max().item<double>(),
            1e-6 * p.block_gradient(p.u).abs().max().item<double>());
}

}  // namespace

// Rows are solved in groups that bound the working memory (pixel_source_system); groups of 1 and
// of 4 (6 rows: the last group short) give what one group gives.
TEST(PixelSourceSolve, GroupsOfRowsGiveWhatOneGroupGives) {
  PixelProblem p(kFreeSigma);
  torch::Tensor sigma_all;
  const auto all = with_pixel_source_at_evidence_maximum(p.fit, *p.posterior, p.u, &sigma_all);
  const auto system = pixel_source_system(p.fit, *p.posterior, p.u);
  for (const int64_t group : {1, 4}) {
    torch::Tensor sigma;
    const auto grouped =
        with_pixel_source_at_evidence_maximum(p.fit, *p.posterior, p.u, &sigma, group);
    EXPECT_TRUE(torch::allclose(grouped, all, 1e-10, 1e-12)) << group;
    EXPECT_TRUE(torch::allclose(sigma, sigma_all, 1e-12, 0.0)) << group;
    EXPECT_TRUE(torch::allclose(with_pixel_source_solved(p.fit, *p.posterior, p.u, group),
                                with_pixel_source_solved(p.fit, *p.posterior, p.u), 1e-10, 1e-12))
        << group;
    const auto parts = pixel_source_system(p.fit, *p.posterior, p.u, group);
    EXPECT_TRUE(torch::allclose(parts.gram, system.gram, 1e-12, 0.0)) << group;
    EXPECT_TRUE(torch::allclose(parts.rhs, system.rhs, 1e-12, 0.0)) << group;
  }
}

// The effective number of pixel parameters, against its definition and its meaning. Definition:
// the trace of the hat matrix sigma^2 G (I + sigma^2 G)^-1, with G from autograd's Jacobian (no
// eigenvalues). Meaning: 240 lenses with one lens and lens light, each with its own data drawn
// from the model (pixels z ~ N(0, I), noise 0.02): the chi-square at the solved pixels averages
// N - N_eff, not N - K (K = 36 pixels, N = 384 unmasked pixels). At sigma 0.3 N_eff is 3.9, and
// N - K lies 19 standard errors of the mean below the mean (N - N_eff: 0.4).
TEST(PixelSourceSolve, EffectiveParametersAreTheHatMatrixTraceAndSetTheExpectedChiSquare) {
  PixelProblem p(nlohmann::json(0.3));
  const auto n_eff = pixel_source_effective_parameters(p.fit, *p.posterior, p.u);
  const auto [j, m0] = p.jacobian(p.u);
  const auto a = j * p.weight_rows().sqrt().unsqueeze(2);  // sigma W^1/2 J, [R, P, K]
  const auto ata = torch::bmm(a.transpose(1, 2), a);
  const auto eye = torch::eye(p.k(), torch::kFloat64).expand_as(ata);
  const auto trace =
      torch::linalg_solve(ata + eye, ata).diagonal(0, 1, 2).sum(1);  // tr((A'A + I)^-1 A'A)
  EXPECT_LT((n_eff - trace).abs().max().item<double>(), 1e-8 * p.k());

  // The prior predictive: one row of parameters for every lens, its own pixels and noise.
  const int64_t L = 240, side = PixelProblem::kSide;
  const auto grid = physics::PixelGrid::centered(side, side, 0.1);
  const auto psf = physics::gaussian_psf_kernel(0.15, 0.1, p.compute);
  auto gen = at::detail::createCPUGenerator(5);
  auto u = p.u[0].unsqueeze(0).repeat({L, 1});
  u.narrow(1, p.block_first(), p.k()).copy_(torch::randn({L, p.k()}, gen, torch::kFloat64));
  const auto noise = torch::full({L, side, side}, 0.02, torch::kFloat64);
  auto mask = torch::ones({L, side, side}, torch::kBool);
  mask.narrow(1, 0, 4).narrow(2, 0, 4).fill_(false);
  const LensPosterior maker(
      p.fit.spec(grid, psf), p.fit.space,
      ImagingData{torch::zeros({L, side, side}, torch::kFloat64), noise, mask}, p.compute);
  const auto image = maker.model_image(p.fit.space.unpack(u)).detach() +
                     0.02 * torch::randn({L, side, side}, gen, torch::kFloat64);
  const LensPosterior lenses(p.fit.spec(grid, psf), p.fit.space, ImagingData{image, noise, mask},
                             p.compute);
  const auto solved = with_pixel_source_solved(p.fit, lenses, u);
  torch::NoGradGuard no_grad;
  const auto chi2 = lenses.chi_square(solved).to(torch::kFloat64);
  const double n = 384.0, k = static_cast<double>(p.k());
  const double effective = pixel_source_effective_parameters(p.fit, lenses, u)[0].item<double>();
  const double mean = chi2.mean().item<double>();
  const double error = chi2.std().item<double>() / std::sqrt(static_cast<double>(L));
  EXPECT_LT(effective, k - 4.0 * error) << "premise: N_eff well below K";
  EXPECT_NEAR(mean, n - effective, 3.0 * error) << "N_eff " << effective << ", K " << k;
  EXPECT_GT(std::abs(mean - (n - k)), 3.0 * error);
}

// The pixel block's Hessian in closed form, -(I + sigma^2 G), against central differences of the
// log posterior's gradient (exact for a quadratic, up to rounding), at rows whose pixels are not
// solved, with a free sigma and a masked corner; then the Laplace approximation with the block,
// which steps only the lens, lens light, centre and sigma coordinates, against the one that
// differences all of them.
TEST(PixelSourceSolve, ThePixelBlocksHessianIsExactAndSparesTheLaplaceItsColumns) {
  PixelProblem p(kFreeSigma);
  const auto f = p.posterior->log_density();
  const int64_t dim = p.fit.space.dim(), first = p.block_first(), k = p.k();
  const auto block = pixel_source_hessian(p.fit, *p.posterior, p.u);
  ASSERT_EQ(block.first, first);
  ASSERT_EQ(block.value.sizes(), (std::vector<int64_t>{p.u.size(0), k, k}));
  int64_t calls = 0;
  const auto differenced =
      samplers::hessian_by_differences(f, p.u, torch::full_like(p.u, 1e-3), 512, calls)
          .narrow(1, first, k)
          .narrow(2, first, k);
  const double scale = differenced.abs().max().item<double>();
  EXPECT_LT((block.value - differenced).abs().max().item<double>(), 1e-7 * scale);
  // Premise: sigma is far enough from 1 that G without its sigma^2, (sigma^2 - 1) G away, would
  // fail the comparison above.
  const auto sigma = p.fit.space.unpack(p.u).values.at(p.fit.pixel_sigma_name).view({-1, 1, 1});
  const auto eye = torch::eye(k, torch::kFloat64);
  EXPECT_GT(((block.value + eye) / sigma.square() - (block.value + eye)).abs().max().item<double>(),
            1e-2 * scale);

  // The Laplace approximation's Hessian with the block against a reference by differences of
  // step 1e-5 in every coordinate: the block exact, the rest as accurate as the plain approximation
  // (whose steps, 0.1 of each width, set its error in the lens coordinates), at 2 (41 - 36)
  // gradients per row instead of 2 x 41.
  samplers::LaplaceSettings s;
  s.max_rows = 12;  // one coordinate per call for the 6 rows
  const auto fast = samplers::laplace_approximation(f, p.u, s, [&](const torch::Tensor& x) {
    return pixel_source_hessian(p.fit, *p.posterior, x);
  });
  const auto plain = samplers::laplace_approximation(f, p.u, s);
  EXPECT_EQ(fast.log_density_calls, 2 * (dim - k));
  EXPECT_EQ(plain.log_density_calls, 2 * dim);
  int64_t reference_calls = 0;
  const auto reference =
      samplers::hessian_by_differences(f, p.u, torch::full_like(p.u, 1e-5), 512, reference_calls);
  const double top = reference.abs().max().item<double>();
  const auto error = [&](const torch::Tensor& H, int64_t r0, int64_t nr, int64_t c0, int64_t nc) {
    return (H - reference).narrow(1, r0, nr).narrow(2, c0, nc).abs().max().item<double>();
  };
  EXPECT_LT(error(fast.hessian, first, k, first, k), 1e-7 * top);
  EXPECT_LT(error(fast.hessian, first, k, 0, first), 1e-3 * top);
  EXPECT_LE(error(fast.hessian, 0, dim, 0, dim), error(plain.hessian, 0, dim, 0, dim) * (1 + 1e-9));
}

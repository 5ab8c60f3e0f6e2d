#include "dslens/model/source_inversion.h"

#include <cmath>

#include "dslens/core/errors.h"
#include "dslens/model/pixel_regulariser.h"

namespace dslens::model {

SourceInversion::SourceInversion(const LensPosterior& lens_only, InversionSettings settings)
    : posterior_(lens_only), settings_(std::move(settings)) {
  const int64_t n = settings_.pixels;
  if (n < 2 || !(settings_.half_width > 0) || settings_.log10_lambda_offsets.empty()) {
    throw InvalidArgument(
        "source inversion: pixels >= 2, half_width > 0 and at least one regularisation "
        "strength are needed");
  }
  regulariser_ =
      pixel_regulariser(settings_.regularisation, n, torch::TensorOptions().dtype(torch::kFloat64));
  logdet_regulariser_ = std::get<1>(torch::linalg_slogdet(regulariser_)).item<double>();
  regulariser_ = regulariser_.to(posterior_.compute().device);
}

std::pair<torch::Tensor, torch::Tensor> SourceInversion::source_coordinates() const {
  const int64_t n = settings_.pixels;
  const double h = 2.0 * settings_.half_width / static_cast<double>(n);
  const auto opts = posterior_.compute().options();
  const auto t = (torch::arange(n, opts) - 0.5 * static_cast<double>(n - 1)) * h;
  const auto yx = torch::meshgrid({t + settings_.center_y, t + settings_.center_x}, "ij");
  return {yx[1], yx[0]};
}

SourceInversion::Solution SourceInversion::solve(const torch::Tensor& u) const {
  const auto un = posterior_.space().unpack(u);
  const int64_t rows = u.size(0);
  const int64_t lenses = posterior_.n_lenses();
  if (rows % lenses != 0) {
    throw InvalidArgument("source inversion: " + std::to_string(rows) +
                          " rows cannot be split over " + std::to_string(lenses) + " lenses");
  }
  const int64_t per = rows / lenses;
  const Compute& compute = posterior_.compute();
  const auto opts = compute.options();
  physics::ImageModel m = posterior_.build(un, rows);
  m.source_light.clear();
  const auto& g = m.grid;
  const int64_t f = m.supersampling, px = g.ny * g.nx;
  const torch::Tensor light =
      m.lens_light.empty() ? torch::zeros({rows, g.ny, g.nx}, opts)
                           : physics::simulate_image(m, rows, compute).expand({rows, g.ny, g.nx});

  // Bilinear weights of every (sub-)pixel's ray-shot position on the source grid: the lensing
  // operator before binning and PSF, dense [rows, N, K] (4 non-zeros per row; K = n^2 is small).
  auto [xs, ys] = g.supersampled_coordinates(f, compute);
  auto [bx, by] = m.lens.ray_shoot(xs.reshape({1, -1}), ys.reshape({1, -1}));
  const int64_t sub = xs.numel();
  bx = bx.expand({rows, sub});
  by = by.expand({rows, sub});
  const int64_t n = settings_.pixels, k = n * n;
  const double h = 2.0 * settings_.half_width / static_cast<double>(n);
  const auto fx = (bx - (settings_.center_x - 0.5 * static_cast<double>(n - 1) * h)) / h;
  const auto fy = (by - (settings_.center_y - 0.5 * static_cast<double>(n - 1) * h)) / h;
  const auto jx = fx.detach().floor(), iy = fy.detach().floor();
  const auto tx = fx - jx, ty = fy - iy;
  const auto j0 = jx.to(torch::kLong), i0 = iy.to(torch::kLong);
  std::vector<torch::Tensor> index, weight;
  for (int di = 0; di < 2; ++di) {
    for (int dj = 0; dj < 2; ++dj) {
      const auto ii = i0 + di, jj = j0 + dj;
      const auto inside = (ii >= 0) & (ii < n) & (jj >= 0) & (jj < n);
      const auto w = (di ? ty : 1 - ty) * (dj ? tx : 1 - tx);
      weight.push_back(torch::where(inside, w, torch::zeros_like(w)));
      index.push_back(torch::where(inside, ii * n + jj, torch::zeros_like(ii)));
    }
  }
  auto basis = torch::zeros({rows, sub, k}, opts)
                   .scatter_add(2, torch::stack(index, 2), torch::stack(weight, 2))
                   .permute({0, 2, 1})
                   .reshape({rows * k, g.ny * f, g.nx * f});
  // Each source pixel's image, as the simulator makes images (image_model.h): mean over
  // sub-pixels times the pixel area, then the PSF.
  if (f > 1) basis = physics::bin_supersampled(basis, f);
  basis = basis * (g.pixel_scale * g.pixel_scale);
  if (m.psf_kernel) {
    torch::Tensor kernel = *m.psf_kernel;
    if (kernel.dim() == 3) kernel = kernel.repeat_interleave(k, 0);
    basis = physics::convolve_psf(basis, kernel);
  }
  // Normal equations in float64 (they are small: K x K), A = F + lambda C, F = M W M^T.
  const auto mat = basis.reshape({rows, k, px}).to(torch::kFloat64);
  const auto& data = posterior_.data();
  const auto sigma = torch::where(data.mask, data.sigma, torch::ones_like(data.sigma));
  const auto w = (data.mask.to(torch::kFloat64) / (sigma * sigma).to(torch::kFloat64))
                     .repeat_interleave(per, 0)
                     .reshape({rows, px});
  const auto d =
      (data.image.repeat_interleave(per, 0) - light).reshape({rows, px}).to(torch::kFloat64);
  const auto mw = mat * w.unsqueeze(1);
  const auto fmat = torch::bmm(mw, mat.transpose(1, 2));
  const auto b = torch::bmm(mw, d.unsqueeze(2)).squeeze(2);
  const auto& c = regulariser_;
  const auto scale = (fmat.diagonal(0, 1, 2).sum(1) / c.trace()).clamp_min(1e-300);  // [rows]
  const int64_t nl = static_cast<int64_t>(settings_.log10_lambda_offsets.size());
  const auto offsets =
      torch::tensor(settings_.log10_lambda_offsets, torch::kFloat64).to(compute.device);
  const auto lambda = scale.unsqueeze(1) * torch::pow(10.0, offsets).unsqueeze(0);  // [rows, nl]
  const auto a = fmat.unsqueeze(1) + lambda.unsqueeze(2).unsqueeze(3) * c;  // [rows, nl, K, K]
  const auto chol = torch::linalg_cholesky(a);
  const auto s =
      torch::cholesky_solve(b.unsqueeze(1).expand({rows, nl, k}).unsqueeze(3), chol).squeeze(3);
  const auto model = torch::bmm(s, mat);  // [rows, nl, P]
  const auto r = d.unsqueeze(1) - model;
  const auto chi2 = (r * r * w.unsqueeze(1)).sum(2);
  const auto e_s = 0.5 * (s * torch::matmul(s, c)).sum(2);
  const auto logdet_a = 2.0 * chol.diagonal(0, 2, 3).log().sum(2);
  // Suyu et al. (2006) eq. 19 without the terms that depend on neither the lens nor lambda.
  const auto log_ev = -0.5 * chi2 - lambda * e_s - 0.5 * logdet_a +
                      0.5 * static_cast<double>(k) * lambda.log() + 0.5 * logdet_regulariser_;
  Solution out;
  out.log_evidence =
      (torch::logsumexp(log_ev, 1) - std::log(static_cast<double>(nl))).to(opts.dtype());
  const auto best = std::get<1>(log_ev.detach().max(1));
  out.source = s.gather(1, best.view({rows, 1, 1}).expand({rows, 1, k}))
                   .reshape({rows, n, n})
                   .to(opts.dtype());
  out.chi_square = chi2.gather(1, best.view({rows, 1})).squeeze(1).to(opts.dtype());
  return out;
}

torch::Tensor SourceInversion::log_prob(const torch::Tensor& u) const {
  return posterior_.space().unpack(u).log_prior + solve(u).log_evidence;
}

samplers::LogDensityFn SourceInversion::log_density() const {
  return samplers::autograd_log_density([this](const torch::Tensor& u) { return log_prob(u); });
}

}  // namespace dslens::model

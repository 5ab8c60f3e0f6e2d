#include "dslens/model/pixel_source_solve.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "dslens/core/errors.h"

namespace dslens::model {
namespace {

// Working-memory budgets, in float64 values: the responses J of a group of rows, and one slice
// of source-light evaluations on the supersampled grid.
constexpr int64_t kResponseValues = int64_t{1} << 26;  // 512 MB
constexpr int64_t kSliceValues = int64_t{1} << 24;     // 128 MB

// A parameter of batch 1 (or a scalar) broadcasts over the rows; otherwise it is per row.
torch::Tensor rows_of(const torch::Tensor& t, int64_t rows) {
  if (t.dim() == 0) return t.reshape({1}).expand({rows});
  return t.size(0) == 1 ? t.expand({rows}) : t;
}

size_t pixelated_component(const FitModel& model, const LensPosterior& posterior) {
  if (model.decoded_kind != "PIXELATED") {
    throw InvalidArgument("pixel source solve: the model's source is not PIXELATED");
  }
  const auto& sources = posterior.spec().source;
  for (size_t i = 0; i < sources.size(); ++i)
    if (physics::is_pixelated_light(sources[i].type)) return i;
  throw InvalidArgument("pixel source solve: the posterior has no pixel-grid source");
}

int64_t first_block_column(const FitModel& model) {
  const auto names = model.space.coordinate_names();
  const std::string prefix = model.latent_block + "[";
  for (size_t j = 0; j < names.size(); ++j)
    if (names[j].rfind(prefix, 0) == 0) return static_cast<int64_t>(j);
  throw InvalidArgument("pixel source solve: block '" + model.latent_block +
                        "' has no coordinates");
}

}  // namespace

PixelSourceSystem pixel_source_system(const FitModel& model, const LensPosterior& posterior,
                                      const torch::Tensor& u) {
  torch::NoGradGuard no_grad;
  const size_t index = pixelated_component(model, posterior);
  const Compute& compute = posterior.compute();
  const auto opts = compute.options();
  const auto f64 = opts.dtype(torch::kFloat64);
  const int64_t rows = u.size(0), lenses = posterior.n_lenses();
  if (rows % lenses != 0) {
    throw InvalidArgument("pixel source solve: " + std::to_string(rows) +
                          " rows cannot be split over " + std::to_string(lenses) + " lenses");
  }
  const int64_t per = rows / lenses;
  const auto un = posterior.space().unpack(u.to(opts));
  physics::ImageModel m = posterior.build(un, rows);
  physics::LightComponent pixels = m.source_light.at(index);
  const auto& binding = posterior.spec().source.at(index);

  PixelSourceSystem out;
  out.first_column = first_block_column(model);
  out.sigma = rows_of(un.values.at(binding.params.at("amp")), rows).to(torch::kFloat64).clone();

  // d - m0: the data less everything but the pixel grid (lens light, other sources).
  m.source_light.erase(m.source_light.begin() + static_cast<std::ptrdiff_t>(index));
  const auto& data = posterior.data();
  const auto& g = m.grid;
  const int64_t f = m.supersampling, px = g.ny * g.nx;
  const auto m0 = physics::simulate_image(m, rows, compute).expand({rows, g.ny, g.nx});
  const auto residual =
      (data.image.repeat_interleave(per, 0) - m0).reshape({rows, px}).to(torch::kFloat64);
  const auto noise = torch::where(data.mask, data.sigma, torch::ones_like(data.sigma));
  const auto weight = (data.mask.to(torch::kFloat64) / noise.square().to(torch::kFloat64))
                          .repeat_interleave(per, 0)
                          .reshape({rows, px});

  // The ray-shot sub-pixel positions, once for all of J's columns.
  const auto [xs, ys] = m.coordinates ? *m.coordinates : g.supersampled_coordinates(f, compute);
  torch::Tensor bx = xs.reshape({1, -1}), by = ys.reshape({1, -1});
  if (!m.lens.empty()) std::tie(bx, by) = m.lens.ray_shoot(bx, by);
  const int64_t sub = xs.numel();
  bx = bx.expand({rows, sub});
  by = by.expand({rows, sub});

  const int64_t k = un.values.at(model.latent_block).size(1);
  std::optional<torch::Tensor> kernel = m.psf_kernel;
  const int64_t group =
      std::clamp<int64_t>(kResponseValues / std::max<int64_t>(1, k * px), 1, rows);
  const int64_t slice = std::max<int64_t>(1, kSliceValues / std::max<int64_t>(1, group * sub));
  std::vector<torch::Tensor> grams, rhss;
  for (int64_t r0 = 0; r0 < rows; r0 += group) {
    const int64_t rg = std::min(group, rows - r0);
    auto response = torch::empty({rg, k, px}, f64);
    for (int64_t k0 = 0; k0 < k; k0 += slice) {
      const int64_t kc = std::min(slice, k - k0);
      // The decoder's columns k0 .. k0 + kc - 1 as source images, for each row of the group.
      const auto columns =
          torch::zeros({kc, k}, opts)
              .scatter_(1, torch::arange(k0, k0 + kc, opts.dtype(torch::kLong)).unsqueeze(1), 1.0);
      const auto images = model.decoder(columns).repeat({rg, 1, 1});
      physics::ParamMap p;
      for (const auto& [name, t] : pixels.params) {
        if (name == "image") continue;
        p[name] = rows_of(t, rows).narrow(0, r0, rg).repeat_interleave(kc, 0);
      }
      p["image"] = images;
      p["amp"] = torch::ones({rg * kc}, opts);
      const auto sb =
          pixels.profile->surface_brightness(bx.narrow(0, r0, rg).repeat_interleave(kc, 0),
                                             by.narrow(0, r0, rg).repeat_interleave(kc, 0), p);
      auto img = physics::bin_supersampled(sb.reshape({rg * kc, g.ny * f, g.nx * f}), f) *
                 (g.pixel_scale * g.pixel_scale);
      if (kernel && kernel->defined()) {
        torch::Tensor kk = *kernel;
        if (kk.dim() == 3) kk = kk.narrow(0, r0, rg).repeat_interleave(kc, 0);
        img = physics::convolve_psf(img, kk);
      }
      response.narrow(1, k0, kc).copy_(img.reshape({rg, kc, px}));
    }
    const auto weighted = response * weight.narrow(0, r0, rg).unsqueeze(1);
    grams.push_back(torch::bmm(weighted, response.transpose(1, 2)));
    rhss.push_back(torch::bmm(weighted, residual.narrow(0, r0, rg).unsqueeze(2)).squeeze(2));
  }
  out.gram = torch::cat(grams);
  out.rhs = torch::cat(rhss);
  // A row whose model is not finite (a lens that ray-shoots to NaN) is left as it is.
  out.finite = torch::isfinite(out.gram).all(2).all(1) & torch::isfinite(out.rhs).all(1) &
               torch::isfinite(out.sigma);
  const auto ok = out.finite.view({-1, 1});
  out.gram = torch::where(ok.unsqueeze(2), out.gram, torch::zeros_like(out.gram));
  out.rhs = torch::where(ok, out.rhs, torch::zeros_like(out.rhs));
  out.sigma = torch::where(out.finite, out.sigma, torch::ones_like(out.sigma));
  return out;
}

namespace {

// G's eigenbasis, G = Q diag(lambda) Q^T, in which the solves below are exact for any sigma. G is
// positive semi-definite, but its rounding is not: eigenvalues below kNullEigenvalue times the
// largest are the data's null space (pixels no image pixel sees), where b, in G's range, has only
// rounding. Kept, that rounding made the evidence grow without bound in sigma (1/2 sigma^2 c^2
// with lambda = 0) on 6 of the 8 starts of the 20 x 20 grid of docs/benchmarks.md (session 48).
// The cut only drops directions with sigma^2 lambda < 1 while sigma^2 times the largest is below
// 10^11.
constexpr double kNullEigenvalue = 1e-11;

struct GramEigen {
  torch::Tensor lambda, q, seen;  // [R, K], [R, K, K], [R, K] bool: outside the null space
  explicit GramEigen(const torch::Tensor& gram) {
    auto [l, v] = torch::linalg_eigh(0.5 * (gram + gram.transpose(1, 2)));
    seen = l > kNullEigenvalue * std::get<0>(l.max(1, /*keepdim=*/true)).clamp_min(1e-300);
    lambda = torch::where(seen, l, torch::zeros_like(l));
    q = v;
  }
  // Q^T b, [R, K], without its null-space rounding.
  torch::Tensor rotated(const torch::Tensor& b) const {
    const auto c = q.transpose(1, 2).matmul(b.unsqueeze(2)).squeeze(2);
    return torch::where(seen, c, torch::zeros_like(c));
  }
};

torch::Tensor conditional_source(const PixelSourceSystem& s, const GramEigen& e) {
  const auto s2 = s.sigma.square().unsqueeze(1);
  const auto c = e.rotated(s.rhs) / (1.0 + s2 * e.lambda);
  return s.sigma.unsqueeze(1) * e.q.matmul(c.unsqueeze(2)).squeeze(2);
}

torch::Tensor with_block(const torch::Tensor& u, const PixelSourceSystem& s,
                         const torch::Tensor& z) {
  auto out = u.clone();
  auto block = out.narrow(1, s.first_column, z.size(1));
  block.copy_(torch::where(s.finite.to(u.device()).view({-1, 1}), z.to(u.options()), block));
  return out;
}

}  // namespace

torch::Tensor with_pixel_source_solved(const FitModel& model, const LensPosterior& posterior,
                                       const torch::Tensor& u) {
  torch::NoGradGuard no_grad;
  const auto system = pixel_source_system(model, posterior, u);
  return with_block(u.detach(), system, conditional_source(system, GramEigen(system.gram)));
}

torch::Tensor with_pixel_source_at_evidence_maximum(const FitModel& model,
                                                    const LensPosterior& posterior,
                                                    const torch::Tensor& u, torch::Tensor* chosen) {
  torch::NoGradGuard no_grad;
  PixelSourceSystem system = pixel_source_system(model, posterior, u);
  const GramEigen eigen(system.gram);
  if (!model.has_free_pixel_strength()) {
    if (chosen) *chosen = system.sigma.clone();
    return with_block(u.detach(), system, conditional_source(system, eigen));
  }
  const auto& space = model.space;
  const auto names = space.coordinate_names();
  const auto col = std::find(names.begin(), names.end(), model.pixel_sigma_name) - names.begin();
  // log p(d | sigma) up to a constant: 1/2 sigma^2 b^T (I + sigma^2 G)^-1 b
  // - 1/2 log det(I + sigma^2 G), in G's eigenbasis (G = Q diag(lambda) Q^T, c = Q^T b). The
  // candidates: sigma's coordinate from 25 below to 25 above the row's, 0.01 apart (a log-normal
  // prior's sigma from e^-25 to e^25 times the row's).
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(u.device());
  const auto steps = torch::arange(-2500, 2501, f64) * 0.01;
  const auto& lam = eigen.lambda;
  const auto c2 = eigen.rotated(system.rhs).square();
  auto x = u.detach().clone();
  for (int64_t r = 0; r < u.size(0); ++r) {
    auto cand = u[r].detach().unsqueeze(0).repeat({steps.size(0), 1});
    cand.select(1, col).add_(steps.to(cand.options()));
    const auto un = space.unpack(cand);
    const auto s2 =
        un.values.at(model.pixel_sigma_name).to(torch::kFloat64).square().reshape({-1, 1});
    const auto one_plus = 1.0 + s2 * lam[r].unsqueeze(0);
    // The candidates' log priors differ only in sigma's term (nothing else moves).
    const auto objective = 0.5 * (s2.squeeze(1) * (c2[r].unsqueeze(0) / one_plus).sum(1)) -
                           0.5 * one_plus.log().sum(1) + un.log_prior.to(torch::kFloat64);
    if (!system.finite[r].item<bool>() || !torch::isfinite(objective).any().item<bool>()) continue;
    const int64_t best =
        torch::nan_to_num(objective, -INFINITY, INFINITY, -INFINITY).argmax().item<int64_t>();
    x[r][col] = cand[best][col];
    system.sigma[r] = std::sqrt(s2[best].item<double>());
    spdlog::debug("pixel source solve: row {}: sigma {:.4g} -> {:.4g} (candidate {} of {})", r,
                  un.values.at(model.pixel_sigma_name)[2500].item<double>(),
                  system.sigma[r].item<double>(), best, steps.size(0));
  }
  if (chosen) *chosen = system.sigma.clone();
  return with_block(x, system, conditional_source(system, eigen));
}

}  // namespace dslens::model

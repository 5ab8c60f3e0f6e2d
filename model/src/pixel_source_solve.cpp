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

// Working-memory budgets, in float64 values: a group of rows' J, G and G's eigenvectors, and one
// slice of source-light evaluations on the supersampled grid.
constexpr int64_t kWorkValues = int64_t{1} << 26;   // 512 MB
constexpr int64_t kSliceValues = int64_t{1} << 24;  // 128 MB

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

// The responses of one set of rows u: everything but J is made once for all rows; J, G and b a
// group of rows at a time (`group_rows`), so that the working memory stays within kWorkValues
// whatever the number of rows.
class ResponseMaker {
 public:
  ResponseMaker(const FitModel& model, const LensPosterior& posterior, const torch::Tensor& u,
                int64_t max_group_rows)
      : model_(model), compute_(posterior.compute()), rows_(u.size(0)), max_group_(max_group_rows) {
    const size_t index = pixelated_component(model, posterior);
    const auto opts = compute_.options();
    const int64_t lenses = posterior.n_lenses();
    if (rows_ % lenses != 0) {
      throw InvalidArgument("pixel source solve: " + std::to_string(rows_) +
                            " rows cannot be split over " + std::to_string(lenses) + " lenses");
    }
    const int64_t per = rows_ / lenses;
    const auto un = posterior.space().unpack(u.to(opts));
    physics::ImageModel m = posterior.build(un, rows_);
    pixels_ = m.source_light.at(index);
    const auto& binding = posterior.spec().source.at(index);
    sigma_ = rows_of(un.values.at(binding.params.at("amp")), rows_).to(torch::kFloat64).clone();
    k_ = un.values.at(model.latent_block).size(1);
    first_column_ = first_block_column(model);

    // d - m0: the data less everything but the pixel grid (lens light, other sources).
    m.source_light.erase(m.source_light.begin() + static_cast<std::ptrdiff_t>(index));
    const auto& data = posterior.data();
    grid_ = m.grid;
    f_ = m.supersampling;
    px_ = grid_.ny * grid_.nx;
    const auto m0 = physics::simulate_image(m, rows_, compute_).expand({rows_, grid_.ny, grid_.nx});
    residual_ =
        (data.image.repeat_interleave(per, 0) - m0).reshape({rows_, px_}).to(torch::kFloat64);
    const auto noise = torch::where(data.mask, data.sigma, torch::ones_like(data.sigma));
    weight_ = (data.mask.to(torch::kFloat64) / noise.square().to(torch::kFloat64))
                  .repeat_interleave(per, 0)
                  .reshape({rows_, px_});

    // The ray-shot sub-pixel positions, once for all of J's columns.
    const auto [xs, ys] =
        m.coordinates ? *m.coordinates : grid_.supersampled_coordinates(f_, compute_);
    bx_ = xs.reshape({1, -1});
    by_ = ys.reshape({1, -1});
    if (!m.lens.empty()) std::tie(bx_, by_) = m.lens.ray_shoot(bx_, by_);
    sub_ = xs.numel();
    bx_ = bx_.expand({rows_, sub_});
    by_ = by_.expand({rows_, sub_});
    kernel_ = m.psf_kernel;
  }

  int64_t rows() const { return rows_; }
  int64_t k() const { return k_; }
  // Rows per group: J [g, K, P], then G and its eigenvectors [g, K, K] each.
  int64_t group_rows() const {
    const int64_t fit = kWorkValues / std::max<int64_t>(1, k_ * (px_ + 2 * k_));
    return std::clamp<int64_t>(max_group_ > 0 ? std::min(fit, max_group_) : fit, 1, rows_);
  }

  // G, b, sigma and the finite rows for rows r0 .. r0 + rg - 1.
  PixelSourceSystem system(int64_t r0, int64_t rg) const {
    const auto opts = compute_.options();
    const int64_t slice = std::max<int64_t>(1, kSliceValues / std::max<int64_t>(1, rg * sub_));
    auto response = torch::empty({rg, k_, px_}, opts.dtype(torch::kFloat64));
    for (int64_t k0 = 0; k0 < k_; k0 += slice) {
      const int64_t kc = std::min(slice, k_ - k0);
      // The decoder's columns k0 .. k0 + kc - 1 as source images, for each row of the group.
      const auto columns =
          torch::zeros({kc, k_}, opts)
              .scatter_(1, torch::arange(k0, k0 + kc, opts.dtype(torch::kLong)).unsqueeze(1), 1.0);
      physics::ParamMap p;
      for (const auto& [name, t] : pixels_.params) {
        if (name == "image") continue;
        p[name] = rows_of(t, rows_).narrow(0, r0, rg).repeat_interleave(kc, 0);
      }
      p["image"] = model_.decoder(columns).repeat({rg, 1, 1});
      p["amp"] = torch::ones({rg * kc}, opts);
      const auto sb =
          pixels_.profile->surface_brightness(bx_.narrow(0, r0, rg).repeat_interleave(kc, 0),
                                              by_.narrow(0, r0, rg).repeat_interleave(kc, 0), p);
      auto img =
          physics::bin_supersampled(sb.reshape({rg * kc, grid_.ny * f_, grid_.nx * f_}), f_) *
          (grid_.pixel_scale * grid_.pixel_scale);
      if (kernel_ && kernel_->defined()) {
        torch::Tensor kk = *kernel_;
        if (kk.dim() == 3) kk = kk.narrow(0, r0, rg).repeat_interleave(kc, 0);
        img = physics::convolve_psf(img, kk);
      }
      response.narrow(1, k0, kc).copy_(img.reshape({rg, kc, px_}));
    }
    const auto weighted = response * weight_.narrow(0, r0, rg).unsqueeze(1);
    PixelSourceSystem out;
    out.gram = torch::bmm(weighted, response.transpose(1, 2));
    out.rhs = torch::bmm(weighted, residual_.narrow(0, r0, rg).unsqueeze(2)).squeeze(2);
    out.sigma = sigma_.narrow(0, r0, rg).clone();
    // A row whose model is not finite (a lens that ray-shoots to NaN) is left as it is.
    out.finite = torch::isfinite(out.gram).all(2).all(1) & torch::isfinite(out.rhs).all(1) &
                 torch::isfinite(out.sigma);
    const auto ok = out.finite.view({-1, 1});
    out.gram = torch::where(ok.unsqueeze(2), out.gram, torch::zeros_like(out.gram));
    out.rhs = torch::where(ok, out.rhs, torch::zeros_like(out.rhs));
    out.sigma = torch::where(out.finite, out.sigma, torch::ones_like(out.sigma));
    out.first_column = first_column_;
    return out;
  }

 private:
  const FitModel& model_;
  Compute compute_;
  int64_t rows_ = 0, max_group_ = 0, k_ = 0, first_column_ = 0, f_ = 1, px_ = 0, sub_ = 0;
  physics::LightComponent pixels_;
  physics::PixelGrid grid_;
  torch::Tensor sigma_, residual_, weight_, bx_, by_;
  std::optional<torch::Tensor> kernel_;
};

}  // namespace

PixelSourceSystem pixel_source_system(const FitModel& model, const LensPosterior& posterior,
                                      const torch::Tensor& u, int64_t max_group_rows) {
  torch::NoGradGuard no_grad;
  const ResponseMaker maker(model, posterior, u, max_group_rows);
  std::vector<PixelSourceSystem> parts;
  for (int64_t r0 = 0; r0 < maker.rows(); r0 += maker.group_rows())
    parts.push_back(maker.system(r0, std::min(maker.group_rows(), maker.rows() - r0)));
  PixelSourceSystem out = parts.front();
  std::vector<torch::Tensor> gram, rhs, sigma, finite;
  for (const auto& p : parts) {
    gram.push_back(p.gram);
    rhs.push_back(p.rhs);
    sigma.push_back(p.sigma);
    finite.push_back(p.finite);
  }
  out.gram = torch::cat(gram);
  out.rhs = torch::cat(rhs);
  out.sigma = torch::cat(sigma);
  out.finite = torch::cat(finite);
  return out;
}

samplers::HessianBlock pixel_source_hessian(const FitModel& model, const LensPosterior& posterior,
                                            const torch::Tensor& u, int64_t max_group_rows) {
  const PixelSourceSystem s = pixel_source_system(model, posterior, u, max_group_rows);
  const auto gram = s.gram.to(torch::kCPU, torch::kFloat64);
  const auto s2 = s.sigma.to(torch::kCPU, torch::kFloat64).square().view({-1, 1, 1});
  const auto eye = torch::eye(gram.size(1), gram.options()).expand_as(gram);
  return {s.first_column, -(eye + s2 * 0.5 * (gram + gram.transpose(1, 2)))};
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
                                       const torch::Tensor& u, int64_t max_group_rows) {
  torch::NoGradGuard no_grad;
  const ResponseMaker maker(model, posterior, u, max_group_rows);
  auto x = u.detach().clone();
  for (int64_t r0 = 0; r0 < maker.rows(); r0 += maker.group_rows()) {
    const int64_t rg = std::min(maker.group_rows(), maker.rows() - r0);
    const auto system = maker.system(r0, rg);
    x.narrow(0, r0, rg).copy_(with_block(x.narrow(0, r0, rg), system,
                                         conditional_source(system, GramEigen(system.gram))));
  }
  return x;
}

torch::Tensor with_pixel_source_at_evidence_maximum(const FitModel& model,
                                                    const LensPosterior& posterior,
                                                    const torch::Tensor& u, torch::Tensor* chosen,
                                                    int64_t max_group_rows) {
  torch::NoGradGuard no_grad;
  const ResponseMaker maker(model, posterior, u, max_group_rows);
  const auto& space = model.space;
  const auto names = space.coordinate_names();
  const auto col = std::find(names.begin(), names.end(), model.pixel_sigma_name) - names.begin();
  const bool free = model.has_free_pixel_strength();
  // log p(d | sigma) up to a constant: 1/2 sigma^2 b^T (I + sigma^2 G)^-1 b
  // - 1/2 log det(I + sigma^2 G), in G's eigenbasis (G = Q diag(lambda) Q^T, c = Q^T b). The
  // candidates: sigma's coordinate from 25 below to 25 above the row's, 0.01 apart (a log-normal
  // prior's sigma from e^-25 to e^25 times the row's).
  const auto steps = torch::arange(-2500, 2501, torch::kFloat64) * 0.01;
  auto x = u.detach().clone();
  std::vector<torch::Tensor> sigmas;
  for (int64_t r0 = 0; r0 < maker.rows(); r0 += maker.group_rows()) {
    const int64_t rg = std::min(maker.group_rows(), maker.rows() - r0);
    PixelSourceSystem system = maker.system(r0, rg);
    const GramEigen eigen(system.gram);
    const auto lam = eigen.lambda.to(torch::kCPU);
    const auto c2 = eigen.rotated(system.rhs).square().to(torch::kCPU);
    for (int64_t i = 0; i < rg && free; ++i) {
      const int64_t r = r0 + i;
      if (!system.finite[i].item<bool>()) continue;
      auto cand =
          u[r].detach().to(torch::kCPU, torch::kFloat64).unsqueeze(0).repeat({steps.size(0), 1});
      cand.select(1, col).add_(steps);
      const auto un = space.unpack(cand);
      const auto s2 =
          un.values.at(model.pixel_sigma_name).to(torch::kFloat64).square().reshape({-1, 1});
      const auto one_plus = 1.0 + s2 * lam[i].unsqueeze(0);
      // The candidates' log priors differ only in sigma's term (nothing else moves).
      const auto objective = 0.5 * (s2.squeeze(1) * (c2[i].unsqueeze(0) / one_plus).sum(1)) -
                             0.5 * one_plus.log().sum(1) + un.log_prior.to(torch::kFloat64);
      if (!torch::isfinite(objective).any().item<bool>()) continue;
      const int64_t best =
          torch::nan_to_num(objective, -INFINITY, INFINITY, -INFINITY).argmax().item<int64_t>();
      x[r][col] = cand[best][col].item<double>();
      system.sigma[i] = std::sqrt(s2[best].item<double>());
      spdlog::debug("pixel source solve: row {}: sigma {:.4g} -> {:.4g} (candidate {} of {})", r,
                    un.values.at(model.pixel_sigma_name)[2500].item<double>(),
                    system.sigma[i].item<double>(), best, steps.size(0));
    }
    x.narrow(0, r0, rg).copy_(
        with_block(x.narrow(0, r0, rg), system, conditional_source(system, eigen)));
    sigmas.push_back(system.sigma);
  }
  if (chosen) *chosen = torch::cat(sigmas);
  return x;
}

torch::Tensor pixel_source_effective_parameters(const FitModel& model,
                                                const LensPosterior& posterior,
                                                const torch::Tensor& u, int64_t max_group_rows) {
  torch::NoGradGuard no_grad;
  const ResponseMaker maker(model, posterior, u, max_group_rows);
  std::vector<torch::Tensor> out;
  for (int64_t r0 = 0; r0 < maker.rows(); r0 += maker.group_rows()) {
    const int64_t rg = std::min(maker.group_rows(), maker.rows() - r0);
    const PixelSourceSystem system = maker.system(r0, rg);
    const auto g = torch::linalg_eigvalsh(system.gram).clamp_min(0.0);
    const auto s2g = system.sigma.square().unsqueeze(1) * g;
    const auto n_eff = (s2g / (1.0 + s2g)).sum(1);
    // A row whose model is not finite counts every pixel, as a parameter count would.
    out.push_back(torch::where(system.finite, n_eff,
                               torch::full_like(n_eff, static_cast<double>(g.size(1)))));
  }
  return torch::cat(out).to(torch::kCPU);
}

}  // namespace dslens::model

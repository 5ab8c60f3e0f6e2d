#include "dslens/nn/vae.h"

#include <cmath>
#include <variant>

#include "dslens/core/errors.h"
#include "dslens/nn/cpu_ops.h"

namespace dslens::nn {
namespace vae_detail {

// Largest divisor of `channels` that is <= `groups`.
int64_t group_count(int64_t channels, int64_t groups) {
  int64_t g = std::max<int64_t>(1, std::min(groups, channels));
  while (channels % g != 0) --g;
  return g;
}

void add_norm(torch::nn::Sequential& seq, const VaeArch& arch, int64_t channels) {
  if (arch.norm == "group") {
    seq->push_back(torch::nn::GroupNorm(
        torch::nn::GroupNormOptions(group_count(channels, arch.groups), channels)));
  }
}

// LibTorch 1.13's convolution options hold c10::variant, 2.x's std::variant (c10::variant was
// removed in 2.2): unqualified get_if finds c10::get_if by argument-dependent lookup on 1.13 and
// std::get_if on 2.x; the using-declaration makes `get_if<T>(...)` parse as a template call.
using std::get_if;

bool is_pad1(const torch::nn::detail::ConvNdOptions<2>& o) {
  const auto* p = get_if<torch::ExpandingArray<2>>(&o.padding());
  return p && (**p)[0] == 1 && (**p)[1] == 1;
}

// seq->forward(h) with the CPU kernels of cpu_ops.h for the layers the VAE uses: 4x4 stride-2 and
// 3x3 convolutions, 4x4 stride-2 transposed convolutions, GroupNorm followed by SiLU, SiLU.
torch::Tensor run_cpu(torch::nn::Sequential& seq, torch::Tensor h) {
  namespace ops = cpu_ops;
  const size_t n = seq->size();
  for (size_t i = 0; i < n; ++i) {
    const auto& m = seq->ptr(i);
    if (auto* conv = m->as<torch::nn::Conv2d>()) {
      const auto& o = conv->options;
      const bool plain = o.groups() == 1 && (*o.dilation())[0] == 1 && (*o.dilation())[1] == 1 &&
                         is_pad1(o) && get_if<torch::enumtype::kZeros>(&o.padding_mode());
      const auto k = *o.kernel_size();
      const auto st = *o.stride();
      if (plain && k[0] == 4 && k[1] == 4 && st[0] == 2 && st[1] == 2) {
        h = ops::conv4x4s2(h, conv->weight, conv->bias);
        continue;
      }
      if (plain && k[0] == 3 && k[1] == 3 && st[0] == 1 && st[1] == 1) {
        h = ops::conv3x3(h, conv->weight, conv->bias);
        continue;
      }
    } else if (auto* convt = m->as<torch::nn::ConvTranspose2d>()) {
      const auto& o = convt->options;
      const auto k = *o.kernel_size();
      const auto st = *o.stride();
      const auto out_pad = *o.output_padding();
      if (o.groups() == 1 && k[0] == 4 && k[1] == 4 && st[0] == 2 && st[1] == 2 && is_pad1(o) &&
          out_pad[0] == 0 && out_pad[1] == 0 && (*o.dilation())[0] == 1 &&
          (*o.dilation())[1] == 1) {
        h = ops::conv_transpose4x4s2(h, convt->weight, convt->bias);
        continue;
      }
    } else if (auto* gn = m->as<torch::nn::GroupNorm>()) {
      if (i + 1 < n && seq->ptr(i + 1)->as<torch::nn::SiLU>()) {
        h = ops::group_norm_silu(h, gn->options.num_groups(), gn->weight, gn->bias,
                                 gn->options.eps());
        ++i;
        continue;
      }
    } else if (m->as<torch::nn::SiLU>()) {
      h = ops::group_norm_silu(h, 0, {}, {}, 0.0);
      continue;
    }
    h = (seq->begin() + static_cast<std::ptrdiff_t>(i))->forward(h);  // any other layer: LibTorch
  }
  return h;
}

const nlohmann::json& require_key(const nlohmann::json& j, const char* key, const char* what) {
  if (!j.is_object() || !j.contains(key)) {
    throw InvalidArgument(std::string(what) + ": missing key '" + key + "'");
  }
  return j.at(key);
}

}  // namespace vae_detail

// ---- VaeArch ----

void VaeArch::validate() const {
  if (latent_dim < 1)
    throw InvalidArgument("VAE latent_dim must be >= 1, got " + std::to_string(latent_dim));
  if (channels.empty()) throw InvalidArgument("VAE channels must list at least one level");
  for (auto c : channels) {
    if (c < 1) throw InvalidArgument("VAE channels must be >= 1, got " + std::to_string(c));
  }
  if (norm != "group" && norm != "none") {
    throw InvalidArgument("VAE norm must be 'group' or 'none', got '" + norm + "'");
  }
  if (groups < 1) throw InvalidArgument("VAE groups must be >= 1");
  const int64_t factor = int64_t{1} << channels.size();
  if (stamp_size < factor || stamp_size % factor != 0) {
    throw InvalidArgument("VAE stamp_size " + std::to_string(stamp_size) +
                          " must be a multiple of 2^" + std::to_string(channels.size()) + " = " +
                          std::to_string(factor) + " (one halving per entry of channels)");
  }
}

int64_t VaeArch::coarse_size() const {
  return stamp_size >> channels.size();
}

nlohmann::json VaeArch::to_json() const {
  return {{"stamp_size", stamp_size},
          {"latent_dim", latent_dim},
          {"channels", channels},
          {"norm", norm},
          {"groups", groups}};
}

VaeArch VaeArch::from_json(const nlohmann::json& j) {
  using vae_detail::require_key;
  VaeArch a;
  try {
    a.stamp_size = require_key(j, "stamp_size", "VAE architecture").get<int64_t>();
    a.latent_dim = require_key(j, "latent_dim", "VAE architecture").get<int64_t>();
    a.channels = require_key(j, "channels", "VAE architecture").get<std::vector<int64_t>>();
    a.norm = require_key(j, "norm", "VAE architecture").get<std::string>();
    a.groups = require_key(j, "groups", "VAE architecture").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(std::string("VAE architecture: bad value: ") + e.what());
  }
  a.validate();
  return a;
}

// ---- PixelNorm ----

nlohmann::json PixelNorm::to_json() const {
  return {{"offset", offset}, {"scale", scale}};
}

PixelNorm PixelNorm::from_json(const nlohmann::json& j) {
  PixelNorm n;
  try {
    n.offset = vae_detail::require_key(j, "offset", "pixel normalisation").get<double>();
    n.scale = vae_detail::require_key(j, "scale", "pixel normalisation").get<double>();
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(std::string("pixel normalisation: bad value: ") + e.what());
  }
  if (!(n.scale > 0) || !std::isfinite(n.scale) || !std::isfinite(n.offset)) {
    throw InvalidArgument("pixel normalisation: scale must be finite and > 0");
  }
  return n;
}

PixelNorm PixelNorm::fit(const torch::Tensor& stamps) {
  PixelNorm n;
  if (stamps.numel() == 0) return n;
  const double s = stamps.detach()
                       .abs()
                       .reshape({stamps.size(0), -1})
                       .amax(1)
                       .to(torch::kFloat64)
                       .mean()
                       .item<double>();
  n.scale = (s > 0 && std::isfinite(s)) ? s : 1.0;
  return n;
}

// ---- VaeImpl ----

VaeImpl::VaeImpl(const VaeArch& arch, const PixelNorm& norm) : arch_(arch), norm_(norm) {
  arch_.validate();
  const auto& ch = arch_.channels;
  const int64_t levels = static_cast<int64_t>(ch.size());
  const int64_t coarse = arch_.coarse_size();
  const int64_t flat = ch.back() * coarse * coarse;

  torch::nn::Sequential enc;
  int64_t in = 1;
  for (int64_t i = 0; i < levels; ++i) {
    enc->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, ch[i], 4).stride(2).padding(1)));
    vae_detail::add_norm(enc, arch_, ch[i]);
    enc->push_back(torch::nn::SiLU());
    in = ch[i];
  }
  encoder_ = register_module("encoder", enc);
  to_moments_ = register_module("to_moments", torch::nn::Linear(flat, 2 * arch_.latent_dim));
  from_latent_ = register_module("from_latent", torch::nn::Linear(arch_.latent_dim, flat));

  torch::nn::Sequential dec;
  vae_detail::add_norm(dec, arch_, ch.back());
  dec->push_back(torch::nn::SiLU());
  for (int64_t i = levels - 1; i >= 0; --i) {
    const int64_t out = i > 0 ? ch[i - 1] : ch[0];
    dec->push_back(torch::nn::ConvTranspose2d(
        torch::nn::ConvTranspose2dOptions(ch[i], out, 4).stride(2).padding(1)));
    vae_detail::add_norm(dec, arch_, out);
    dec->push_back(torch::nn::SiLU());
  }
  dec->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(ch[0], 1, 3).padding(1)));
  decoder_ = register_module("decoder", dec);
}

torch::TensorOptions VaeImpl::options() const {
  const auto params = parameters();
  return params.front().options();
}

bool VaeImpl::use_cpu_kernels(const torch::Tensor& x) const {
  return cpu_kernels_ && cpu_ops::supported(x) && options().device().is_cpu();
}

int64_t VaeImpl::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

std::pair<torch::Tensor, torch::Tensor> VaeImpl::encode(const torch::Tensor& x) {
  if (x.dim() != 3 || x.size(1) != arch_.stamp_size || x.size(2) != arch_.stamp_size) {
    throw InvalidArgument("VAE encode: expected stamps [B, " + std::to_string(arch_.stamp_size) +
                          ", " + std::to_string(arch_.stamp_size) + "], got " +
                          c10::str(x.sizes()));
  }
  auto xn = ((x.to(options()) - norm_.offset) / norm_.scale).unsqueeze(1);
  torch::Tensor moments;
  if (use_cpu_kernels(xn)) {
    auto h = vae_detail::run_cpu(encoder_, xn).flatten(1);
    moments = cpu_ops::linear(h, to_moments_->weight, to_moments_->bias);
  } else {
    moments = to_moments_->forward(encoder_->forward(xn).flatten(1));
  }
  auto mean = moments.narrow(1, 0, arch_.latent_dim);
  auto logvar = moments.narrow(1, arch_.latent_dim, arch_.latent_dim).clamp(-30.0, 20.0);
  return {mean, logvar};
}

torch::Tensor VaeImpl::decode(const torch::Tensor& z) {
  if (z.dim() != 2 || z.size(1) != arch_.latent_dim) {
    throw InvalidArgument("VAE decode: expected latents [B, " + std::to_string(arch_.latent_dim) +
                          "], got " + c10::str(z.sizes()));
  }
  const int64_t coarse = arch_.coarse_size();
  const auto zz = z.to(options());
  torch::Tensor img;
  if (use_cpu_kernels(zz)) {
    auto h = cpu_ops::linear(zz, from_latent_->weight, from_latent_->bias)
                 .view({z.size(0), arch_.channels.back(), coarse, coarse});
    img = vae_detail::run_cpu(decoder_, h);
  } else {
    auto h = from_latent_->forward(zz).view({z.size(0), arch_.channels.back(), coarse, coarse});
    img = decoder_->forward(h);
  }
  return img.squeeze(1) * norm_.scale + norm_.offset;
}

VaeOutput VaeImpl::forward(const torch::Tensor& x, const torch::Tensor& eps) {
  VaeOutput out;
  std::tie(out.mean, out.logvar) = encode(x);
  if (eps.defined()) {
    out.z = out.mean + torch::exp(0.5 * out.logvar) * eps.to(out.mean.options());
  } else {
    out.z = out.mean;
  }
  out.recon = decode(out.z);
  return out;
}

torch::Tensor VaeImpl::sample(int64_t n, torch::Generator& gen) {
  auto eps =
      torch::randn({n, arch_.latent_dim}, gen, torch::TensorOptions().dtype(torch::kFloat64));
  return decode(eps.to(options()));
}

torch::Tensor VaeImpl::decode_with_total(const torch::Tensor& z, double total) {
  if (!(total > 0) || !std::isfinite(total)) {
    throw InvalidArgument("VAE decode_with_total: the total must be positive and finite, got " +
                          std::to_string(total));
  }
  const auto img = decode(z);
  return img * (total / img.sum({1, 2}, /*keepdim=*/true).clamp_min(1e-6 * total));
}

double VaeImpl::median_prior_total(int64_t n, uint64_t seed) {
  if (n < 1) throw InvalidArgument("VAE median_prior_total: n must be >= 1");
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(seed);
  const auto totals = sample(n, gen).sum({1, 2}).to(torch::kCPU, torch::kFloat64);
  return totals.median().item<double>();
}

double VaeImpl::source_flux_total() {
  const double total = median_prior_total();
  if (!(total > 0)) {
    throw InvalidArgument(
        "the checkpoint's decoded stamps have a median total of " + std::to_string(total) +
        " over prior draws; flux normalisation needs positive totals (a VAE "
        "trained on galaxy images); set it to false to use the stamps as decoded");
  }
  return total;
}

// ---- losses ----

torch::Tensor kl_to_standard_normal(const torch::Tensor& mean, const torch::Tensor& logvar) {
  return 0.5 * (torch::exp(logvar) + mean * mean - 1.0 - logvar).sum(1);
}

ElboTerms elbo_terms(const VaeOutput& out, const torch::Tensor& x, const PixelNorm& norm,
                     double pixel_sigma, double beta) {
  if (!(pixel_sigma > 0)) throw InvalidArgument("pixel_sigma must be > 0");
  const auto xd = x.to(out.recon.options());
  const auto diff = out.recon - xd;
  const auto r = diff / norm.scale;
  const double npix = static_cast<double>(x.size(1) * x.size(2));
  const double log_norm = npix * (std::log(pixel_sigma) + 0.5 * 1.8378770664093453 /* log(2 pi) */);
  ElboTerms t;
  t.recon = (0.5 / (pixel_sigma * pixel_sigma) * r.pow(2).sum({1, 2}) + log_norm).mean();
  t.kl = kl_to_standard_normal(out.mean, out.logvar).mean();
  t.loss = t.recon + beta * t.kl;
  t.mse = diff.detach().pow(2).mean();
  return t;
}

void check_stamps(const torch::Tensor& stamps, int64_t stamp_size, const std::string& what) {
  if (!stamps.defined() || stamps.numel() == 0) {
    throw InvalidArgument(what + ": no stamps (the data set is empty)");
  }
  if (stamps.dim() != 3 || stamps.size(1) != stamp_size || stamps.size(2) != stamp_size) {
    throw InvalidArgument(what + ": expected stamps [N, " + std::to_string(stamp_size) + ", " +
                          std::to_string(stamp_size) + "], got " + c10::str(stamps.sizes()));
  }
  const auto bad = (~torch::isfinite(stamps)).reshape({stamps.size(0), -1}).any(1);
  const int64_t nbad = bad.sum().item<int64_t>();
  if (nbad > 0) {
    const int64_t first = bad.nonzero().flatten()[0].item<int64_t>();
    throw InvalidArgument(what + ": " + std::to_string(nbad) +
                          " stamp(s) contain NaN or infinite pixels (first: stamp " +
                          std::to_string(first) + ")");
  }
}

}  // namespace dslens::nn

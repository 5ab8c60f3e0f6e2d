// Convolutional variational auto-encoder for single-band galaxy stamps (Chianese et al. 2020).
//
// Encoder: one stride-2 4x4 convolution per level (GroupNorm, SiLU), then a linear layer to the
// mean and log-variance of q(z|x). Decoder: linear layer to the coarsest feature map, one
// stride-2 4x4 transposed convolution per level (GroupNorm, SiLU), a 3x3 convolution to one band.
// SiLU keeps the decoder smooth in z (the fitter differentiates it); GroupNorm has no running
// statistics, so train and eval modes compute the same function and one latent's image never
// depends on the others in its batch.
//
// Pixels are normalised as (x - offset) / scale before encoding and decode() returns
// scale * net(z) + offset, i.e. stamps in the units of the training data.
//
// On the CPU every layer runs on the hand-written kernels of cpu_ops.h (float32 and float64,
// training included); elsewhere (CUDA) on LibTorch's layers. Both compute the same function.
// The default architecture (channels 8, 16, 32, 64; 64x64 stamps; 64 latents) is that of
// configs/train_vae_default.json: about 2.9 M multiply-adds per decoded stamp (docs/vae.md).
//
//   dslens::nn::Vae vae(arch);                      // or load_vae(checkpoint) (checkpoint.h)
//   vae->eval();
//   torch::Tensor img = vae->decode(z);             // z [B, d] -> [B, S, S], differentiable in z
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace dslens::nn {

// Everything needed to rebuild the network (stored in the checkpoint sidecar).
struct VaeArch {
  int64_t stamp_size = 64;
  int64_t latent_dim = 64;
  std::vector<int64_t> channels = {8, 16, 32, 64};  // per level; each level halves the size
  std::string norm = "group";                       // "group" or "none"
  int64_t groups = 4;                               // GroupNorm groups (capped at channels)

  // Throws InvalidArgument when the sizes do not fit (stamp_size not divisible by 2^levels, ...).
  void validate() const;
  int64_t coarse_size() const;  // stamp_size / 2^levels
  nlohmann::json to_json() const;
  // Throws InvalidArgument naming the missing or bad key.
  static VaeArch from_json(const nlohmann::json& j);
};

// Pixel normalisation: network pixels = (data - offset) / scale.
struct PixelNorm {
  double offset = 0.0;
  double scale = 1.0;
  nlohmann::json to_json() const;
  static PixelNorm from_json(const nlohmann::json& j);
  // offset 0, scale = mean over stamps of the stamp's max |pixel| (1 if all zero).
  static PixelNorm fit(const torch::Tensor& stamps /* [N, S, S] */);
};

struct VaeOutput {
  torch::Tensor mean;    // [B, d]
  torch::Tensor logvar;  // [B, d]
  torch::Tensor z;       // [B, d] sampled (or the mean when no noise is given)
  torch::Tensor recon;   // [B, S, S] in data units
};

// Scalars are means over the batch of per-stamp quantities (nats per stamp).
struct ElboTerms {
  torch::Tensor loss;   // recon + beta * kl (the negative ELBO when beta = 1)
  torch::Tensor recon;  // Gaussian negative log-likelihood of the pixels, with its constant
  torch::Tensor kl;     // KL(q(z|x) || N(0, I))
  torch::Tensor mse;    // mean squared pixel residual, data units (no gradient needed)
};

class VaeImpl : public torch::nn::Module {
 public:
  explicit VaeImpl(const VaeArch& arch = VaeArch(), const PixelNorm& norm = PixelNorm());

  // x [B, S, S] (data units) -> mean, logvar [B, d].
  std::pair<torch::Tensor, torch::Tensor> encode(const torch::Tensor& x);
  // z [B, d] -> stamps [B, S, S] in data units. Differentiable with respect to z.
  torch::Tensor decode(const torch::Tensor& z);
  // Encodes, draws z = mean + exp(logvar/2) * eps (eps [B, d] given by the caller, so that
  // training is reproducible; an undefined eps uses z = mean), decodes.
  VaeOutput forward(const torch::Tensor& x, const torch::Tensor& eps = {});
  // Draws n stamps from the prior with `gen` (CPU generator).
  torch::Tensor sample(int64_t n, torch::Generator& gen);
  // z [B, d] -> stamps [B, S, S] each rescaled to the total `total`: decode(z) * total / sum of
  // decode(z), differentiable in z. The flux of a lensed VAE source is then its amplitude's alone,
  // and the latents set only its shape (docs/fit.md, "The VAE source's flux"). A row whose decoded
  // total is not positive is rescaled as if it were 1e-6 * total.
  torch::Tensor decode_with_total(const torch::Tensor& z, double total);
  // The median total of n stamps drawn from the prior with a fixed seed (a CPU generator seeded
  // with `seed`): the reference total that decode_with_total() gives a VAE source, so that its
  // amplitude keeps the scale of the decoded stamps. Deterministic for given weights.
  double median_prior_total(int64_t n = 256, uint64_t seed = 0);
  // median_prior_total(), checked: InvalidArgument naming the value when it is not positive (an
  // untrained decoder), since no flux can be normalised to it.
  double source_flux_total();

  const VaeArch& arch() const { return arch_; }
  const PixelNorm& pixel_norm() const { return norm_; }
  void set_pixel_norm(const PixelNorm& norm) { norm_ = norm; }
  // dtype/device of the parameters.
  torch::TensorOptions options() const;
  int64_t parameter_count() const;

  // On the CPU (float32/float64) every layer runs on the kernels of cpu_ops.h: the same function
  // as LibTorch's layers, 5-20x faster (LibTorch 1.13 sends these layers to the reference BLAS).
  // Off: LibTorch's layers everywhere (for comparisons and benchmarks). Default on.
  void set_cpu_kernels(bool on) { cpu_kernels_ = on; }
  bool cpu_kernels() const { return cpu_kernels_; }

 private:
  bool use_cpu_kernels(const torch::Tensor& x) const;

  VaeArch arch_;
  PixelNorm norm_;
  bool cpu_kernels_ = true;
  torch::nn::Sequential encoder_{nullptr};
  torch::nn::Linear to_moments_{nullptr};
  torch::nn::Linear from_latent_{nullptr};
  torch::nn::Sequential decoder_{nullptr};
};
TORCH_MODULE(Vae);

// KL(N(mean, exp(logvar)) || N(0, I)) per row: [B].
torch::Tensor kl_to_standard_normal(const torch::Tensor& mean, const torch::Tensor& logvar);

// Negative ELBO with an isotropic Gaussian pixel likelihood of standard deviation
// `pixel_sigma` (in normalised pixel units, i.e. data units / PixelNorm::scale) and weight `beta`
// on the KL term. `x` in data units, as given to forward().
ElboTerms elbo_terms(const VaeOutput& out, const torch::Tensor& x, const PixelNorm& norm,
                     double pixel_sigma, double beta);

// Checks a stamp batch for shape [N, S, S] with the VAE's S, and finite values; throws
// InvalidArgument naming `what`.
void check_stamps(const torch::Tensor& stamps, int64_t stamp_size, const std::string& what);

}  // namespace dslens::nn

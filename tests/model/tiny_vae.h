// A small untrained VAE checkpoint (16x16 stamps, 4 latents) for the model tests that need a
// decoded source: cheap to build, and the same architecture wherever it is used.
#pragma once
#include <torch/torch.h>

#include <string>

#include "dslens/nn/checkpoint.h"
#include "dslens/nn/vae.h"
#include "test_support.h"

namespace dslens::testing {

// Writes the checkpoint into a new temporary folder named after `tag` and returns its path. The
// untrained decoder's pixels scatter around norm.offset: with the default 0 its stamps' totals
// may be negative, which a flux-normalised VAE source refuses (model/fit_model.h).
inline std::string tiny_vae_checkpoint(const std::string& tag, uint64_t seed,
                                       const nn::PixelNorm& norm = nn::PixelNorm{0.0, 1.0}) {
  const auto dir = temp_dir(tag);
  torch::manual_seed(seed);
  nn::VaeArch arch;
  arch.stamp_size = 16;
  arch.latent_dim = 4;
  arch.channels = {4, 8};
  arch.groups = 2;
  nn::Vae vae(arch, norm);
  nn::save_checkpoint(dir, *vae, nullptr, 1, {}, {});
  return dir;
}

}  // namespace dslens::testing

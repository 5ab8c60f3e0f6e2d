// VAE checkpoints: a weights archive (torch::save format of the module), an optional optimizer
// archive, and a JSON sidecar `checkpoint.json` holding everything needed to rebuild and use the
// network: architecture, stamp size, latent dim, pixel normalisation, data description, training
// configuration and statistics, code version, step, and the names, sizes and FNV-1a hashes of the
// archives. Archives carry the step in their names and are written first; the sidecar is written
// last (atomically), so a folder whose sidecar exists always describes a complete checkpoint.
//
//   auto [vae, meta] = dslens::nn::load_vae("runs/vae", {torch::kCPU, torch::kFloat64});
//   auto img = vae->decode(z);
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <string>

#include "dslens/core/device.h"
#include "dslens/nn/vae.h"

namespace dslens::nn {

inline constexpr const char* kCheckpointSidecar = "checkpoint.json";
inline constexpr const char* kCheckpointFormat = "dslens-vae-checkpoint";

struct CheckpointMeta {
  std::string dir;  // folder holding the sidecar and archives
  VaeArch arch;
  PixelNorm norm;
  int64_t step = 0;
  std::string dtype;           // dtype the weights were saved in
  std::string version;         // dslens version that wrote it
  std::string weights_file;    // absolute path
  std::string optimizer_file;  // absolute path; empty when not saved
  nlohmann::json data;         // data description
  nlohmann::json training;     // training configuration, statistics and history
  nlohmann::json sidecar;      // the whole sidecar
};

// Writes the archives and then the sidecar into `dir` (which must exist); removes the archives of
// older checkpoints afterwards. `optimizer` may be null.
void save_checkpoint(const std::string& dir, VaeImpl& vae, torch::optim::Optimizer* optimizer,
                     int64_t step, const nlohmann::json& data, const nlohmann::json& training);

// `path`: a checkpoint folder or its sidecar. FileError when the sidecar is missing, unparsable,
// of another format, or names archives that are missing or whose size/hash differ.
CheckpointMeta read_checkpoint_meta(const std::string& path);
bool checkpoint_exists(const std::string& dir);

// Copies the weights archive into `vae`, which must have the sidecar's architecture. FileError
// naming the tensor when the archive lacks a tensor, has an extra one, or a shape differs.
void load_weights(const CheckpointMeta& meta, VaeImpl& vae);
void load_optimizer_state(const CheckpointMeta& meta, torch::optim::Optimizer& optimizer);

struct LoadedVae {
  Vae vae{nullptr};
  CheckpointMeta meta;
};
// Rebuilds the VAE from a checkpoint, on compute.device in compute.dtype, in eval mode, with
// every parameter's requires_grad off (decode(z) is differentiable in z only; turn it back on to
// fine-tune).
LoadedVae load_vae(const std::string& path,
                   const Compute& compute = Compute{torch::kCPU, torch::kFloat32});

// FNV-1a 64-bit hash of a file's bytes, as 16 hex digits (FileError when unreadable).
std::string file_fnv1a64(const std::string& path);

}  // namespace dslens::nn

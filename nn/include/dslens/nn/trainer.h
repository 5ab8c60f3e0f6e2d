// Training the VAE: Adam on the negative ELBO, checkpoints every N steps, exact resume, optional
// data parallelism (distributed.h).
//
// Reproducibility: the data order, the augmentation and the reparameterisation noise of step t
// come from generators seeded by (seed, t) alone, so a run resumed from a checkpoint ends with the
// same weights as an uninterrupted one, and W processes each taking 1/W of the global batch end
// with the weights of one process taking it all (up to floating-point summation order).
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dslens/core/config.h"
#include "dslens/core/device.h"
#include "dslens/nn/distributed.h"
#include "dslens/nn/vae.h"

namespace dslens::nn {

struct TrainConfig {
  int64_t steps = 2000;
  int64_t batch_size = 64;  // global batch (split over ranks)
  double lr = 1e-3;
  double lr_final_fraction = 0.1;  // cosine decay from lr to lr * this at the last step
  uint64_t seed = 0;
  double pixel_sigma = 0.05;  // Gaussian pixel noise, normalised pixel units
  double beta = 1.0;          // weight of the KL term
  double val_fraction = 0.1;  // used by the caller to split the data
  bool augment = true;        // random flips / 90-degree rotations of training stamps
  int64_t checkpoint_every = 500;
  int64_t eval_every = 100;
  int64_t log_every = 10;
  int64_t eval_batch = 256;
  std::string dtype = "float32";

  void validate() const;
  nlohmann::json to_json() const;
  // The config's "train" object; ConfigError naming the JSON path.
  static TrainConfig from_config(const ConfigNode& node);
};

// The config's "model" object (stamp_size, latent_dim, channels, norm, groups).
VaeArch vae_arch_from_config(const ConfigNode& node);

struct LossPoint {
  int64_t step = 0;
  double loss = 0, recon = 0, kl = 0, mse = 0;
};

struct EvalMetrics {
  int64_t count = 0;
  double elbo = 0;          // mean ELBO per stamp (nats, normalised pixel units; beta = 1)
  double recon = 0;         // mean Gaussian NLL per stamp
  double kl = 0;            // mean KL per stamp
  double mse = 0;           // mean squared residual per pixel of the posterior-mean reconstruction
  double relative_mse = 0;  // sum of squared residuals / sum of squared pixels
  nlohmann::json to_json() const;
};

struct Progress {
  int64_t step = 0;  // steps done
  int64_t steps = 0;
  LossPoint last;           // averages since the previous report
  double stamps_per_s = 0;  // global stamps per second in this session
  double eta_s = 0;
  bool done = false;
};

using AugmentFn = std::function<torch::Tensor(const torch::Tensor&, torch::Generator&)>;

struct TrainOptions {
  Compute compute{torch::kCPU, torch::kFloat32};  // dtype is taken from TrainConfig::dtype
  std::string checkpoint_dir;                     // empty: no checkpoints
  bool resume = false;                            // continue from checkpoint_dir's checkpoint
  nlohmann::json data_description;                // stored in the sidecar
  AugmentFn augment;                              // used when TrainConfig::augment
  std::function<void(const Progress&)> on_progress;
  int64_t stop_after_step = -1;  // stop (with a checkpoint) after this step; < 0: run to the end
  // Polled after every step; when it returns true on any rank the run writes a checkpoint after
  // that step and throws Interrupted (e.g. a flag set by a SIGTERM handler). Every rank stops at
  // the same step: the flag travels with the step's all-reduced loss statistics.
  std::function<bool()> stop_requested;
  Communicator* comm = nullptr;  // null: single process
};

struct TrainResult {
  Vae vae{nullptr};
  int64_t step = 0;
  int64_t start_step = 0;
  std::vector<LossPoint> train_history;
  std::vector<LossPoint> val_history;
  EvalMetrics val;  // final validation metrics (count 0 without validation stamps)
  double seconds = 0;
};

// stamps: [N, S, S] float64 CPU (preprocessed); val may be empty. InvalidArgument for empty or
// non-finite training data, stamps of the wrong size, or a batch not divisible by the world size.
TrainResult train_vae(const TrainConfig& config, const VaeArch& arch, const torch::Tensor& train,
                      const torch::Tensor& val, const TrainOptions& options);

// Metrics of `vae` on `stamps` (ELBO with noise from `seed`; MSE of the posterior mean).
EvalMetrics evaluate_vae(VaeImpl& vae, const torch::Tensor& stamps, double pixel_sigma,
                         uint64_t seed, int64_t batch = 256);

// Seed of the generator for (seed, stream, counter): splitmix64 mixing.
uint64_t mix_seed(uint64_t seed, uint64_t stream, uint64_t counter);
// Indices [batch] of the global batch of `step`: epochs are permutations seeded by (seed, epoch).
torch::Tensor batch_indices(int64_t n, int64_t batch, int64_t step, uint64_t seed);
// Learning rate at `step` (cosine decay).
double learning_rate(const TrainConfig& config, int64_t step);

}  // namespace dslens::nn

// The `dslens train-vae` config of the app tests: 48 synthetic 16x16 stamps, 4 latents, 6 steps
// (a second or two on one core).
#pragma once
#include <nlohmann/json.hpp>

namespace dslens::testing {

inline nlohmann::json tiny_vae_config() {
  return nlohmann::json::parse(R"({
    "data": {"source": "synthetic", "count": 48, "seed": 3},
    "model": {"stamp_size": 16, "latent_dim": 4, "channels": [8, 16], "groups": 4},
    "train": {"steps": 6, "batch_size": 8, "lr": 0.003, "seed": 5, "pixel_sigma": 0.1,
              "checkpoint_every": 2, "eval_every": 3, "log_every": 1, "val_fraction": 0.25},
    "report": {"rows": 3, "samples": 4}
  })");
}

}  // namespace dslens::testing

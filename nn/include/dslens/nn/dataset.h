// The galaxy data the source VAE learns from: a config ("data" object of the training config),
// loading and preprocessing into [N, S, S] stamps, a description for checkpoint sidecars,
// dihedral augmentation and a fixed-seed train/validation split.
//
//   "data": {"source": "synthetic" | "galsim" | "fits_cube" | "fits_dir",
//            "path": "...", "count": 2048, "seed": 0, "hdu": -1,
//            "preprocess": {...}, "synthetic": {...}}
//
// See docs/data.md for every key and its default.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "dslens/nn/galaxy_readers.h"
#include "dslens/nn/preprocess.h"
#include "dslens/nn/synthetic_galaxies.h"

namespace dslens {
class ConfigNode;
}

namespace dslens::nn {

struct DataConfig {
  std::string source = "synthetic";  // "synthetic" | "galsim" | "fits_cube" | "fits_dir"
  std::string path;                  // catalog / cube / folder (not for synthetic)
  int64_t count = 0;                 // synthetic: how many (0 -> 2048); files: at most (0 = all)
  uint64_t seed = 0;                 // synthetic generation seed
  int hdu = -1;                      // fits_cube: HDU (-1: first image HDU)
  PreprocessConfig preprocess;       // background "auto" already resolved for the source
  SyntheticConfig synthetic;
};

inline constexpr int64_t kDefaultSyntheticCount = 2048;

// Parses the "data" object. Unknown keys and bad values throw ConfigError naming the path. A
// relative "path" is resolved against `base_dir` when that is non-empty (e.g. the config's
// folder), else left relative to the working directory.
DataConfig parse_data_config(const dslens::ConfigNode& node, const std::string& base_dir = "");

// All stamps, [N, S, S] float64 CPU, preprocessed (centred, cropped, resized, normalised), in
// source order, without augmentation. InputError for an empty data set or bad images.
torch::Tensor load_stamps(const DataConfig& cfg, int64_t stamp_size);

// As load_stamps, with the per-stamp names, normalisation factors and (where known) pixel scales.
struct GalaxyDataset {
  torch::Tensor stamps;             // [N, S, S]
  torch::Tensor scale;              // [N] divisor applied by the flux normalisation
  std::vector<std::string> names;   // provenance of each stamp
  std::vector<double> pixel_scale;  // native arcsec/pixel (NaN when unknown)
};
GalaxyDataset load_dataset(const DataConfig& cfg, int64_t stamp_size);

// Everything about the data and its preprocessing, for the checkpoint sidecar.
nlohmann::json describe(const DataConfig& cfg);

// Each stamp of `batch` [B, S, S] (any device/dtype) gets one of the 8 dihedral transforms
// (4 rotations by 90 degrees, each with or without a horizontal flip), drawn from `gen`.
torch::Tensor augment(const torch::Tensor& batch, torch::Generator& gen);
// Applies dihedral transform `k` in [0, 8) to the last two dims: rot90(k % 4), then flip if k >= 4.
torch::Tensor dihedral_transform(const torch::Tensor& x, int64_t k);

// {train, val}: a fixed-seed permutation of the stamps, round(N * val_fraction) of them for
// validation (at least 1 if val_fraction > 0 and N >= 2; at most N - 1). val_fraction in [0, 1).
std::pair<torch::Tensor, torch::Tensor> split_train_val(const torch::Tensor& stamps,
                                                        double val_fraction, uint64_t seed);

}  // namespace dslens::nn

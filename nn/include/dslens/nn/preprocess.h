// Preprocessing of galaxy images into training stamps for the source VAE:
//   1. finiteness check (NaN/inf -> InputError naming the image),
//   2. background subtraction (median of the border pixels),
//   3. centring on the flux-weighted centroid or on the peak (integer-pixel shift),
//   4. square crop around the centre (zero padding where the window leaves the image),
//   5. resize to the stamp size (area averaging when shrinking, bilinear when enlarging, which
//      must be allowed explicitly; a smaller stamp is otherwise an InputError),
//   6. optional clipping of negative pixels, 7. flux normalisation (peak or total flux to 1).
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "dslens/nn/galaxy_readers.h"

namespace dslens {
class ConfigNode;
}

namespace dslens::nn {

struct PreprocessConfig {
  std::string background = "auto";  // "border_median" | "none" | "auto" (none for synthetic)
  int64_t border_width = 3;         // border pixels (of the raw image) for the median
  std::string centre = "centroid";  // "centroid" | "peak" | "none"
  double centroid_clip = 0.0;       // centroid weights: pixels above clip * peak only
  int64_t crop_pixels = 0;          // raw pixels of the square crop; 0: min(H, W)
  std::string resize = "area";      // "area" | "bilinear" (shrinking); enlarging is bilinear
  bool allow_upsample = false;      // crop smaller than the stamp: enlarge instead of error
  bool clip_negative = false;       // set negative pixels to 0 after resizing
  std::string normalize = "peak";   // "peak" | "sum" | "none"
};

// Parses the "preprocess" object; unknown keys and bad values throw ConfigError naming the path.
PreprocessConfig parse_preprocess_config(const dslens::ConfigNode& node);
nlohmann::json describe(const PreprocessConfig& cfg);
// `background` "auto" resolved for a source ("synthetic" -> "none", else "border_median").
PreprocessConfig resolve_for_source(PreprocessConfig cfg, const std::string& source);

struct PreprocessedStamps {
  torch::Tensor stamps;  // [N, S, S] float64 CPU
  torch::Tensor scale;   // [N] what each stamp was divided by (peak or total flux; 1 for none)
  torch::Tensor centre;  // [N, 2] (row, column) centre used, in raw pixels
};

// Throws InputError naming the image for NaN/inf pixels, a non-2-d image, a crop smaller than
// `stamp_size` without allow_upsample, a stamp without positive flux to normalise, or no images.
PreprocessedStamps preprocess_images(const std::vector<GalaxyImage>& images,
                                     const PreprocessConfig& cfg, int64_t stamp_size);

// Flux normalisation of [N, S, S] stamps in place of a copy; returns {stamps, scale}.
std::pair<torch::Tensor, torch::Tensor> normalize_flux(const torch::Tensor& stamps,
                                                       const std::string& mode,
                                                       const std::vector<std::string>& names);

}  // namespace dslens::nn

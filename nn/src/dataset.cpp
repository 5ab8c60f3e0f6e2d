#include "dslens/nn/dataset.h"

#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>

#include "dslens/core/config.h"
#include "dslens/core/errors.h"

namespace dslens::nn::dataset_detail {

// A key that only some sources use: error when given with another source.
void only_for(const ConfigNode& node, const std::string& key, const std::string& source,
              const std::vector<std::string>& users) {
  if (!node.has(key)) return;
  for (const auto& u : users) {
    if (u == source) return;
  }
  std::string list;
  for (const auto& u : users) list += (list.empty() ? "\"" : ", \"") + u + "\"";
  node.fail_at(key, "not used with source \"" + source + "\" (only with " + list + ")");
}

}  // namespace dslens::nn::dataset_detail

namespace dslens::nn {

DataConfig parse_data_config(const ConfigNode& node, const std::string& base_dir) {
  node.allow_only({"source", "path", "count", "seed", "hdu", "preprocess", "synthetic"});
  DataConfig c;
  c.source =
      node.choice_or("source", "synthetic", {"synthetic", "galsim", "fits_cube", "fits_dir"});
  dataset_detail::only_for(node, "path", c.source, {"galsim", "fits_cube", "fits_dir"});
  dataset_detail::only_for(node, "hdu", c.source, {"fits_cube"});
  dataset_detail::only_for(node, "seed", c.source, {"synthetic"});
  dataset_detail::only_for(node, "synthetic", c.source, {"synthetic"});
  if (c.source == "synthetic") {
    c.count = node.integer_or("count", kDefaultSyntheticCount, Range::closed(1, 1e8));
    c.seed =
        static_cast<uint64_t>(node.integer_or("seed", 0, Range::closed(0, 9007199254740992.0)));
    if (node.has("synthetic")) c.synthetic = parse_synthetic_config(node.at("synthetic"));
  } else {
    c.count = node.integer_or("count", 0, Range::closed(0, 1e9));
    c.path = node.string("path");
    if (c.path.empty()) node.fail_at("path", "must not be empty");
    const std::filesystem::path p(c.path);
    if (!base_dir.empty() && p.is_relative()) {
      c.path = (std::filesystem::path(base_dir) / p).lexically_normal().string();
    }
    c.hdu = static_cast<int>(node.integer_or("hdu", -1, Range::closed(-1, 1e6)));
  }
  if (node.has("preprocess")) c.preprocess = parse_preprocess_config(node.at("preprocess"));
  c.preprocess = resolve_for_source(c.preprocess, c.source);
  return c;
}

GalaxyDataset load_dataset(const DataConfig& cfg, int64_t stamp_size) {
  if (stamp_size < 8) {
    throw InvalidArgument("stamp size must be >= 8, got " + std::to_string(stamp_size));
  }
  std::vector<GalaxyImage> images;
  if (cfg.source == "synthetic") {
    const auto all = generate_synthetic_galaxies(cfg.synthetic, cfg.count, stamp_size, cfg.seed);
    images.resize(static_cast<size_t>(all.size(0)));
    for (int64_t i = 0; i < all.size(0); ++i) {
      images[i].image = all[i];
      images[i].name =
          "synthetic #" + std::to_string(i) + " (seed " + std::to_string(cfg.seed) + ")";
    }
  } else if (cfg.source == "galsim") {
    images = read_galsim_catalog(cfg.path, cfg.count);
  } else if (cfg.source == "fits_cube") {
    images = read_fits_cube(cfg.path, cfg.hdu, cfg.count);
  } else if (cfg.source == "fits_dir") {
    images = read_fits_dir(cfg.path, cfg.count);
  } else {
    throw InvalidArgument("data source '" + cfg.source +
                          "' is unknown; allowed: synthetic, galsim, fits_cube, fits_dir");
  }
  if (images.empty()) throw InputError("the galaxy data set from '" + cfg.source + "' is empty");
  // "auto" is resolved by parse_data_config; resolve again for hand-built configs.
  const PreprocessConfig pp = resolve_for_source(cfg.preprocess, cfg.source);
  auto pre = preprocess_images(images, pp, stamp_size);
  GalaxyDataset out;
  out.stamps = pre.stamps;
  out.scale = pre.scale;
  for (const auto& g : images) {
    out.names.push_back(g.name);
    out.pixel_scale.push_back(g.pixel_scale);
  }
  spdlog::info("data: {} stamps of {}x{} from {}{} (centre {}, background {}, normalize {})",
               out.stamps.size(0), stamp_size, stamp_size, cfg.source,
               cfg.path.empty() ? std::string() : " '" + cfg.path + "'", pp.centre, pp.background,
               pp.normalize);
  return out;
}

torch::Tensor load_stamps(const DataConfig& cfg, int64_t stamp_size) {
  return load_dataset(cfg, stamp_size).stamps;
}

nlohmann::json describe(const DataConfig& cfg) {
  nlohmann::json j = {{"source", cfg.source},
                      {"count", cfg.count},
                      {"stamps", "[N, S, S] float64, one galaxy per stamp"},
                      {"preprocess", describe(resolve_for_source(cfg.preprocess, cfg.source))},
                      {"augmentation", "random dihedral transform per stamp (4 rotations x flip)"}};
  if (cfg.source == "synthetic") {
    j["seed"] = cfg.seed;
    j["synthetic"] = describe(cfg.synthetic);
  } else {
    j["path"] = cfg.path;
    if (cfg.source == "galsim") {
      j["reader"] = "GalSim RealGalaxyCatalog: HDU 1 columns GAL_FILENAME, GAL_HDU, PIXEL_SCALE";
    }
    if (cfg.source == "fits_cube") j["hdu"] = cfg.hdu;
  }
  return j;
}

torch::Tensor dihedral_transform(const torch::Tensor& x, int64_t k) {
  if (k < 0 || k >= 8) throw InvalidArgument("dihedral transform index must be in [0, 8)");
  const int64_t d = x.dim();
  torch::Tensor y = (k % 4) ? torch::rot90(x, k % 4, {d - 2, d - 1}) : x;
  if (k >= 4) y = torch::flip(y, {d - 1});
  return y;
}

torch::Tensor augment(const torch::Tensor& batch, torch::Generator& gen) {
  if (batch.dim() != 3 || batch.size(1) != batch.size(2)) {
    throw InvalidArgument("augment: expected square stamps [B, S, S]");
  }
  const int64_t B = batch.size(0);
  const auto k =
      torch::randint(0, 8, {B}, gen, torch::TensorOptions(torch::kLong).device(gen.device()))
          .to(batch.device())
          .view({B, 1, 1});
  // Every class applied to the whole batch and selected by mask: no host sync, any device.
  torch::Tensor out = batch;
  for (int64_t c = 1; c < 8; ++c) out = torch::where(k == c, dihedral_transform(batch, c), out);
  return out;
}

std::pair<torch::Tensor, torch::Tensor> split_train_val(const torch::Tensor& stamps,
                                                        double val_fraction, uint64_t seed) {
  if (!(val_fraction >= 0.0 && val_fraction < 1.0)) {
    throw InvalidArgument("validation fraction must be in [0, 1), got " +
                          std::to_string(val_fraction));
  }
  if (!stamps.defined() || stamps.dim() < 1 || stamps.size(0) == 0) {
    throw InputError("cannot split an empty galaxy data set");
  }
  const int64_t N = stamps.size(0);
  int64_t n_val = static_cast<int64_t>(std::llround(double(N) * val_fraction));
  if (val_fraction > 0 && N >= 2) n_val = std::clamp<int64_t>(n_val, 1, N - 1);
  if (N < 2) n_val = 0;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const auto perm = torch::randperm(N, gen, torch::kLong).to(stamps.device());
  return {stamps.index_select(0, perm.slice(0, n_val, N)),
          stamps.index_select(0, perm.slice(0, 0, n_val))};
}

}  // namespace dslens::nn

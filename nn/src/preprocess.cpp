#include "dslens/nn/preprocess.h"

#include <cmath>

#include "dslens/core/config.h"
#include "dslens/core/errors.h"

namespace dslens::nn::preprocess_detail {

std::string shape_text(const torch::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

void require_finite(const torch::Tensor& img, const std::string& name) {
  const auto bad = torch::logical_not(torch::isfinite(img));
  const int64_t count = bad.sum().item<int64_t>();
  if (count == 0) return;
  const int64_t first = bad.flatten().nonzero()[0][0].item<int64_t>();
  throw InputError("galaxy image " + name + ": " + std::to_string(count) +
                   " pixel(s) are NaN or infinite (first at row " +
                   std::to_string(first / img.size(1)) + ", column " +
                   std::to_string(first % img.size(1)) + ")");
}

// Median of the pixels within `width` of the edge.
double border_median(const torch::Tensor& img, int64_t width) {
  const int64_t H = img.size(0), W = img.size(1);
  const int64_t b = std::max<int64_t>(1, std::min({width, H / 2, W / 2}));
  std::vector<torch::Tensor> parts = {img.slice(0, 0, b).flatten(),
                                      img.slice(0, H - b, H).flatten()};
  if (H > 2 * b) {
    const auto mid = img.slice(0, b, H - b);
    parts.push_back(mid.slice(1, 0, b).flatten());
    parts.push_back(mid.slice(1, W - b, W).flatten());
  }
  return torch::cat(parts).median().item<double>();
}

// (row, column) of the peak pixel.
std::pair<double, double> peak_position(const torch::Tensor& img) {
  const int64_t i = img.flatten().argmax().item<int64_t>();
  return {double(i / img.size(1)), double(i % img.size(1))};
}

// Flux-weighted centroid of the positive pixels (above clip * peak when clip > 0).
std::pair<double, double> centroid(const torch::Tensor& img, double clip) {
  auto w = img.clamp_min(0.0);
  if (clip > 0) w = w * (img > clip * img.max()).to(img.scalar_type());
  const double total = w.sum().item<double>();
  if (!(total > 0)) return peak_position(img);
  const auto opts = img.options();
  const auto rows = torch::arange(img.size(0), opts).view({-1, 1});
  const auto cols = torch::arange(img.size(1), opts).view({1, -1});
  return {(w * rows).sum().item<double>() / total, (w * cols).sum().item<double>() / total};
}

// The C x C window whose centre is nearest (row, col); zero outside the image.
torch::Tensor crop(const torch::Tensor& img, double row, double col, int64_t C) {
  const int64_t H = img.size(0), W = img.size(1);
  const int64_t r0 = static_cast<int64_t>(std::llround(row - 0.5 * double(C - 1)));
  const int64_t c0 = static_cast<int64_t>(std::llround(col - 0.5 * double(C - 1)));
  auto out = torch::zeros({C, C}, img.options());
  const int64_t rs = std::max<int64_t>(r0, 0), re = std::min<int64_t>(r0 + C, H);
  const int64_t cs = std::max<int64_t>(c0, 0), ce = std::min<int64_t>(c0 + C, W);
  if (rs < re && cs < ce) {
    out.slice(0, rs - r0, re - r0)
        .slice(1, cs - c0, ce - c0)
        .copy_(img.slice(0, rs, re).slice(1, cs, ce));
  }
  return out;
}

torch::Tensor resize(const torch::Tensor& img, int64_t S, const std::string& mode) {
  const int64_t C = img.size(0);
  if (C == S) return img;
  namespace F = torch::nn::functional;
  auto opts = F::InterpolateFuncOptions().size(std::vector<int64_t>{S, S});
  if (C > S && mode == "area") {
    opts = opts.mode(torch::kArea);
  } else {
    opts = opts.mode(torch::kBilinear).align_corners(false);
  }
  return F::interpolate(img.view({1, 1, C, C}), opts).view({S, S});
}

}  // namespace dslens::nn::preprocess_detail

namespace dslens::nn {

PreprocessConfig parse_preprocess_config(const ConfigNode& node) {
  node.allow_only({"background", "border_width", "centre", "centroid_clip", "crop_pixels", "resize",
                   "allow_upsample", "clip_negative", "normalize"});
  PreprocessConfig d;
  PreprocessConfig c;
  c.background = node.choice_or("background", d.background, {"auto", "border_median", "none"});
  c.border_width = node.integer_or("border_width", d.border_width, Range::closed(1, 1e6));
  c.centre = node.choice_or("centre", d.centre, {"centroid", "peak", "none"});
  c.centroid_clip = node.number_or("centroid_clip", d.centroid_clip, Range{0.0, 1.0, false, true});
  c.crop_pixels = node.integer_or("crop_pixels", d.crop_pixels, Range::closed(0, 1e6));
  c.resize = node.choice_or("resize", d.resize, {"area", "bilinear"});
  c.allow_upsample = node.boolean_or("allow_upsample", d.allow_upsample);
  c.clip_negative = node.boolean_or("clip_negative", d.clip_negative);
  c.normalize = node.choice_or("normalize", d.normalize, {"peak", "sum", "none"});
  return c;
}

PreprocessConfig resolve_for_source(PreprocessConfig cfg, const std::string& source) {
  if (cfg.background == "auto") cfg.background = source == "synthetic" ? "none" : "border_median";
  return cfg;
}

nlohmann::json describe(const PreprocessConfig& c) {
  return {{"background", c.background},
          {"border_width", c.border_width},
          {"centre", c.centre},
          {"centroid_clip", c.centroid_clip},
          {"centring", "integer-pixel shift of the crop window"},
          {"crop_pixels", c.crop_pixels},
          {"resize", c.resize},
          {"allow_upsample", c.allow_upsample},
          {"clip_negative", c.clip_negative},
          {"normalize", c.normalize},
          {"order", "finite check, background, centre, crop, resize, clip, normalize"}};
}

std::pair<torch::Tensor, torch::Tensor> normalize_flux(const torch::Tensor& stamps,
                                                       const std::string& mode,
                                                       const std::vector<std::string>& names) {
  const int64_t N = stamps.size(0);
  if (mode == "none") return {stamps, torch::ones({N}, stamps.options())};
  if (mode != "peak" && mode != "sum") {
    throw InvalidArgument("normalize: unknown mode '" + mode + "'; allowed: peak, sum, none");
  }
  const auto flat = stamps.flatten(1);
  const auto scale = mode == "peak" ? std::get<0>(flat.max(1)) : flat.sum(1);
  const auto bad = torch::logical_not(torch::isfinite(scale) & (scale > 0));
  if (bad.any().item<bool>()) {
    const int64_t i = bad.nonzero()[0][0].item<int64_t>();
    const std::string name = i < static_cast<int64_t>(names.size()) ? names[i] : std::to_string(i);
    throw InputError("galaxy stamp " + name + ": its " + mode + " is " +
                     std::to_string(scale[i].item<double>()) +
                     ", so it cannot be normalised (no positive flux after preprocessing)");
  }
  return {stamps / scale.view({N, 1, 1}), scale};
}

PreprocessedStamps preprocess_images(const std::vector<GalaxyImage>& images,
                                     const PreprocessConfig& cfg, int64_t S) {
  namespace pd = preprocess_detail;
  if (images.empty()) throw InputError("the galaxy data set is empty: no images to preprocess");
  if (S < 1) throw InvalidArgument("stamp size must be >= 1, got " + std::to_string(S));
  const auto N = static_cast<int64_t>(images.size());
  std::vector<torch::Tensor> stamps;
  stamps.reserve(images.size());
  std::vector<std::string> names;
  auto centres = torch::zeros({N, 2}, torch::kFloat64);
  for (int64_t i = 0; i < N; ++i) {
    const auto& g = images[i];
    const std::string& name = g.name.empty() ? "#" + std::to_string(i) : g.name;
    names.push_back(name);
    if (!g.image.defined() || g.image.dim() != 2 || g.image.numel() == 0) {
      throw InputError("galaxy image " + name + ": expected a non-empty 2-d image, got shape " +
                       (g.image.defined() ? pd::shape_text(g.image) : std::string("(none)")));
    }
    auto img = g.image.to(torch::kCPU, torch::kFloat64);
    pd::require_finite(img, name);
    if (cfg.background == "border_median") img = img - pd::border_median(img, cfg.border_width);
    const int64_t H = img.size(0), W = img.size(1);
    std::pair<double, double> c{0.5 * double(H - 1), 0.5 * double(W - 1)};
    if (cfg.centre == "centroid") c = pd::centroid(img, cfg.centroid_clip);
    if (cfg.centre == "peak") c = pd::peak_position(img);
    centres[i][0] = c.first;
    centres[i][1] = c.second;
    const int64_t C = cfg.crop_pixels > 0 ? cfg.crop_pixels : std::min(H, W);
    if (C < S && !cfg.allow_upsample) {
      throw InputError("galaxy image " + name + " (" + std::to_string(H) + " x " +
                       std::to_string(W) + " pixels): its " + std::to_string(C) + " x " +
                       std::to_string(C) + " crop is smaller than the stamp size " +
                       std::to_string(S) +
                       "; use a smaller stamp size or set preprocess.allow_upsample");
    }
    stamps.push_back(pd::resize(pd::crop(img, c.first, c.second, C), S, cfg.resize));
  }
  auto batch = torch::stack(stamps);
  if (cfg.clip_negative) batch = batch.clamp_min(0.0);
  auto [normed, scale] = normalize_flux(batch, cfg.normalize, names);
  return {normed.contiguous(), scale, centres};
}

}  // namespace dslens::nn

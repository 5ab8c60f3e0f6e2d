#include "dslens/nn/synthetic_galaxies.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "dslens/core/config.h"
#include "dslens/core/errors.h"

namespace dslens::nn::synthetic_detail {

constexpr double kPi = 3.14159265358979323846;
// Budget of elements per rendered [chunk, F, F] tensor (F = size * oversample); small enough
// that the ~60 elementwise passes per chunk run from cache rather than from memory.
constexpr int64_t kChunkElements = int64_t{1} << 17;  // ~1 MB: cache-resident passes

// A [lo, hi] pair (or one number meaning lo = hi) within `allowed`.
UniformRange parse_range(const ConfigNode& node, const std::string& key, UniformRange fallback,
                         const Range& allowed) {
  if (!node.has(key)) return fallback;
  const ConfigNode child = node.at(key);
  if (child.value().is_number()) {
    const double v = child.as_number(allowed);
    return {v, v};
  }
  if (!child.is_array()) child.fail("expected [lo, hi] or a number");
  const auto v = node.numbers(key, allowed);
  if (v.size() != 2) {
    child.fail("expected [lo, hi], got " + std::to_string(v.size()) + " values");
  }
  if (v[0] > v[1]) child.fail("lo > hi in [lo, hi]");
  return {v[0], v[1]};
}

std::pair<int64_t, int64_t> parse_int_range(const ConfigNode& node, const std::string& key,
                                            std::pair<int64_t, int64_t> fallback,
                                            const Range& allowed) {
  const UniformRange r =
      parse_range(node, key, {double(fallback.first), double(fallback.second)}, allowed);
  if (std::floor(r.lo) != r.lo || std::floor(r.hi) != r.hi) {
    node.fail_at(key, "expected integers [lo, hi]");
  }
  return {static_cast<int64_t>(r.lo), static_cast<int64_t>(r.hi)};
}

nlohmann::json range_json(const UniformRange& r) {
  return nlohmann::json::array({r.lo, r.hi});
}

// Draws [n] values uniform in r.
torch::Tensor uniform(const UniformRange& r, int64_t n, at::Generator& gen) {
  auto u = torch::rand({n}, gen, torch::TensorOptions().dtype(torch::kFloat64));
  return r.lo + (r.hi - r.lo) * u;
}

// Sérsic b_n (Ciotti & Bertin 1999 asymptotic series; accurate to <1e-4 for n >= 0.36).
torch::Tensor sersic_b(const torch::Tensor& n) {
  return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n) +
         131.0 / (1148175.0 * n * n * n);
}

// Unit-sum Sérsic images [C, F, F] for per-galaxy parameters [C] (radius along the major axis).
torch::Tensor sersic(const torch::Tensor& dx, const torch::Tensor& dy, const torch::Tensor& phi,
                     const torch::Tensor& q, const torch::Tensor& re, const torch::Tensor& n) {
  auto v = [](const torch::Tensor& t) { return t.view({-1, 1, 1}); };
  const auto c = torch::cos(v(phi)), s = torch::sin(v(phi));
  const auto xp = (c * dx + s * dy) / v(re);
  const auto yp = (c * dy - s * dx) / v(q * re);
  // (r / re)^(1/n) as (r^2 / re^2)^(1/(2n)): no square root.
  auto img = torch::exp(-v(sersic_b(n)) * (torch::pow(xp * xp + yp * yp, 0.5 / v(n)) - 1.0));
  return img / img.sum({1, 2}, true);
}

// Normalised circular Gaussian kernel [1, 1, K, K] with the given FWHM in pixels.
torch::Tensor gaussian_kernel(double fwhm_pixels) {
  const double sigma = fwhm_pixels / (2.0 * std::sqrt(2.0 * std::log(2.0)));
  const int64_t half = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(4.0 * sigma)));
  auto t = torch::arange(-half, half + 1, torch::TensorOptions().dtype(torch::kFloat64));
  auto g = torch::exp(-0.5 * t * t / (sigma * sigma));
  auto k = torch::outer(g, g);
  return (k / k.sum()).view({1, 1, 2 * half + 1, 2 * half + 1});
}

}  // namespace dslens::nn::synthetic_detail

namespace dslens::nn {

SyntheticConfig parse_synthetic_config(const ConfigNode& node) {
  namespace sd = synthetic_detail;
  node.allow_only({"oversample", "bulge_fraction", "bulge_radius", "bulge_sersic_n",
                   "bulge_axis_ratio", "disk_radius", "disk_sersic_n", "disk_axis_ratio",
                   "spiral_probability", "spiral_arms", "spiral_pitch_deg", "spiral_amplitude",
                   "clumps", "clump_radius", "clump_flux_fraction", "clump_distance",
                   "centre_offset", "psf_fwhm_pixels", "noise_sigma"});
  SyntheticConfig d;
  SyntheticConfig c;
  c.oversample = node.integer_or("oversample", d.oversample, Range::closed(1, 8));
  c.bulge_fraction = sd::parse_range(node, "bulge_fraction", d.bulge_fraction, Range::closed(0, 1));
  c.bulge_radius = sd::parse_range(node, "bulge_radius", d.bulge_radius, Range::left_open(0, 2));
  c.bulge_sersic_n =
      sd::parse_range(node, "bulge_sersic_n", d.bulge_sersic_n, Range::closed(0.3, 8));
  c.bulge_axis_ratio =
      sd::parse_range(node, "bulge_axis_ratio", d.bulge_axis_ratio, Range::left_open(0, 1));
  c.disk_radius = sd::parse_range(node, "disk_radius", d.disk_radius, Range::left_open(0, 2));
  c.disk_sersic_n = sd::parse_range(node, "disk_sersic_n", d.disk_sersic_n, Range::closed(0.3, 8));
  c.disk_axis_ratio =
      sd::parse_range(node, "disk_axis_ratio", d.disk_axis_ratio, Range::left_open(0, 1));
  c.spiral_probability =
      node.number_or("spiral_probability", d.spiral_probability, Range::closed(0, 1));
  c.spiral_arms = sd::parse_int_range(node, "spiral_arms", d.spiral_arms, Range::closed(1, 12));
  c.spiral_pitch_deg =
      sd::parse_range(node, "spiral_pitch_deg", d.spiral_pitch_deg, Range::closed(1, 80));
  c.spiral_amplitude =
      sd::parse_range(node, "spiral_amplitude", d.spiral_amplitude, Range::closed(0, 0.99));
  c.clumps = sd::parse_int_range(node, "clumps", d.clumps, Range::closed(0, 64));
  c.clump_radius = sd::parse_range(node, "clump_radius", d.clump_radius, Range::left_open(0, 1));
  c.clump_flux_fraction =
      sd::parse_range(node, "clump_flux_fraction", d.clump_flux_fraction, Range::closed(0, 1));
  c.clump_distance =
      sd::parse_range(node, "clump_distance", d.clump_distance, Range::closed(0, 10));
  c.centre_offset = node.number_or("centre_offset", d.centre_offset, Range::closed(0, 0.5));
  c.psf_fwhm_pixels = node.number_or("psf_fwhm_pixels", d.psf_fwhm_pixels, Range::closed(0, 100));
  c.noise_sigma = node.number_or("noise_sigma", d.noise_sigma, Range::non_negative());
  return c;
}

nlohmann::json describe(const SyntheticConfig& c) {
  namespace sd = synthetic_detail;
  return {{"model", "sersic bulge + sersic disk with logarithmic spiral arms + gaussian clumps"},
          {"size_unit", "fraction of the stamp side"},
          {"oversample", c.oversample},
          {"bulge_fraction", sd::range_json(c.bulge_fraction)},
          {"bulge_radius", sd::range_json(c.bulge_radius)},
          {"bulge_sersic_n", sd::range_json(c.bulge_sersic_n)},
          {"bulge_axis_ratio", sd::range_json(c.bulge_axis_ratio)},
          {"disk_radius", sd::range_json(c.disk_radius)},
          {"disk_sersic_n", sd::range_json(c.disk_sersic_n)},
          {"disk_axis_ratio", sd::range_json(c.disk_axis_ratio)},
          {"spiral_probability", c.spiral_probability},
          {"spiral_arms", {c.spiral_arms.first, c.spiral_arms.second}},
          {"spiral_pitch_deg", sd::range_json(c.spiral_pitch_deg)},
          {"spiral_amplitude", sd::range_json(c.spiral_amplitude)},
          {"clumps", {c.clumps.first, c.clumps.second}},
          {"clump_radius", sd::range_json(c.clump_radius)},
          {"clump_flux_fraction", sd::range_json(c.clump_flux_fraction)},
          {"clump_distance", sd::range_json(c.clump_distance)},
          {"centre_offset", c.centre_offset},
          {"psf_fwhm_pixels", c.psf_fwhm_pixels},
          {"noise_sigma", c.noise_sigma}};
}

torch::Tensor generate_synthetic_galaxies(const SyntheticConfig& c, int64_t count, int64_t size,
                                          uint64_t seed) {
  namespace sd = synthetic_detail;
  if (count < 1)
    throw InvalidArgument("synthetic galaxies: count must be >= 1, got " + std::to_string(count));
  if (size < 8)
    throw InvalidArgument("synthetic galaxies: stamp size must be >= 8, got " +
                          std::to_string(size));
  if (c.oversample < 1) throw InvalidArgument("synthetic galaxies: oversample must be >= 1");
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t N = count;

  // Every per-galaxy parameter drawn up front, in a fixed order.
  const auto bulge_frac = sd::uniform(c.bulge_fraction, N, gen);
  const auto bulge_re = sd::uniform(c.bulge_radius, N, gen);
  const auto bulge_n = sd::uniform(c.bulge_sersic_n, N, gen);
  const auto bulge_q = sd::uniform(c.bulge_axis_ratio, N, gen);
  const auto disk_re = sd::uniform(c.disk_radius, N, gen);
  const auto disk_n = sd::uniform(c.disk_sersic_n, N, gen);
  const auto disk_q = sd::uniform(c.disk_axis_ratio, N, gen);
  const auto disk_phi = sd::uniform({0.0, sd::kPi}, N, gen);
  const auto bulge_phi = disk_phi + sd::uniform({-0.35, 0.35}, N, gen);
  const auto cx = sd::uniform({-c.centre_offset, c.centre_offset}, N, gen);
  const auto cy = sd::uniform({-c.centre_offset, c.centre_offset}, N, gen);
  const auto spiral_on = (torch::rand({N}, gen, f64) < c.spiral_probability).to(torch::kFloat64);
  const auto arms = torch::randint(c.spiral_arms.first, c.spiral_arms.second + 1, {N}, gen, f64);
  const auto pitch = sd::uniform(c.spiral_pitch_deg, N, gen) * (sd::kPi / 180.0);
  const auto handed = 1.0 - 2.0 * (torch::rand({N}, gen, f64) < 0.5).to(torch::kFloat64);
  const auto amp = sd::uniform(c.spiral_amplitude, N, gen) * spiral_on;
  const auto arm_phase = sd::uniform({0.0, 2.0 * sd::kPi}, N, gen);
  const int64_t K = c.clumps.second;
  const auto n_clumps = torch::randint(c.clumps.first, c.clumps.second + 1, {N}, gen, f64);
  const auto clump_frac = sd::uniform(c.clump_flux_fraction, N, gen);
  torch::Tensor clump_x, clump_y, clump_sigma, clump_w;
  if (K > 0) {
    const auto kk = torch::arange(K, f64).view({1, K});
    const auto active = (kk < n_clumps.view({N, 1})).to(torch::kFloat64);
    const auto dist = (c.clump_distance.lo + (c.clump_distance.hi - c.clump_distance.lo) *
                                                 torch::rand({N, K}, gen, f64)) *
                      disk_re.view({N, 1});
    const auto ang = 2.0 * sd::kPi * torch::rand({N, K}, gen, f64);
    clump_sigma =
        c.clump_radius.lo + (c.clump_radius.hi - c.clump_radius.lo) * torch::rand({N, K}, gen, f64);
    auto w = (0.2 + torch::rand({N, K}, gen, f64)) * active;
    clump_w = w / w.sum(1, true).clamp_min(1e-300);
    // In the disk plane, then projected with the disk's inclination and orientation.
    const auto u = dist * torch::cos(ang);
    const auto v = dist * torch::sin(ang) * disk_q.view({N, 1});
    const auto cp = torch::cos(disk_phi).view({N, 1}), sp = torch::sin(disk_phi).view({N, 1});
    clump_x = cx.view({N, 1}) + cp * u - sp * v;
    clump_y = cy.view({N, 1}) + sp * u + cp * v;
  }
  const auto has_clumps = (n_clumps > 0).to(torch::kFloat64);
  const auto fc = clump_frac * has_clumps;

  // Fine grid in stamp units: pixel centres in [-0.5, 0.5]; x along columns, y along rows.
  const int64_t O = c.oversample, F = size * O;
  const auto t = (torch::arange(F, f64) + 0.5) / double(F) - 0.5;
  const auto X = t.view({1, 1, F}), Y = t.view({1, F, 1});
  const auto psf = c.psf_fwhm_pixels > 0 ? sd::gaussian_kernel(c.psf_fwhm_pixels) : torch::Tensor();
  const int64_t chunk = std::max<int64_t>(1, sd::kChunkElements / (F * F));
  auto v = [](const torch::Tensor& x) { return x.view({-1, 1, 1}); };
  std::vector<torch::Tensor> parts;
  for (int64_t b0 = 0; b0 < N; b0 += chunk) {
    const int64_t b1 = std::min(N, b0 + chunk);
    auto sl = [&](const torch::Tensor& x) { return x.slice(0, b0, b1); };
    const auto dx = X - v(sl(cx)), dy = Y - v(sl(cy));
    const auto bulge = sd::sersic(dx, dy, sl(bulge_phi), sl(bulge_q), sl(bulge_re), sl(bulge_n));
    // Disk with logarithmic spiral modulation, in the deprojected disk plane.
    const auto cphi = torch::cos(v(sl(disk_phi))), sphi = torch::sin(v(sl(disk_phi)));
    const auto xp = (cphi * dx + sphi * dy) / v(sl(disk_re));
    const auto yp = (cphi * dy - sphi * dx) / v(sl(disk_q) * sl(disk_re));
    const auto rr2 = xp * xp + yp * yp;  // (r / disk radius)^2 in the disk plane
    const auto nd = sl(disk_n);
    auto disk = torch::exp(-v(sd::sersic_b(nd)) * (torch::pow(rr2, 0.5 / v(nd)) - 1.0));
    const auto theta = torch::atan2(yp, xp);
    // Winding angle cot(pitch) ln r = 0.5 cot(pitch) ln r^2, signed by the handedness.
    const auto wind =
        torch::log(rr2.clamp_min(1e-12)) * v(sl(handed) * 0.5 / torch::tan(sl(pitch)));
    const auto arm = 0.5 * (1.0 + torch::cos(v(sl(arms)) * (theta - wind) - v(sl(arm_phase))));
    // Arms narrowed by a cube (mean 0.3125 over a turn), faded in towards the bulge.
    const auto amp_eff = v(sl(amp)) * rr2 / (rr2 + 0.25);
    disk = disk * ((1.0 - amp_eff) + amp_eff * arm.pow(3) * (1.0 / 0.3125));
    disk = disk / disk.sum({1, 2}, true);
    const auto bf = v(sl(bulge_frac));
    auto img = (1.0 - v(sl(fc))) * (bf * bulge + (1.0 - bf) * disk);
    if (K > 0) {
      // Gaussian clumps are separable: sum_k w_k gy_k(row) gx_k(col) is one batched matmul.
      const auto s = sl(clump_sigma).unsqueeze(2);  // [C, K, 1]
      const auto gx = torch::exp(-(X.view({1, 1, F}) - sl(clump_x).unsqueeze(2)).pow(2) /
                                 (2.0 * s * s));  // [C, K, F]
      // Analytic normalisation (unit integral), so clumps near the edge are not brightened.
      const auto w = sl(fc).view({-1, 1, 1}) * sl(clump_w).unsqueeze(2) /
                     (2.0 * sd::kPi * s * s * double(F) * double(F));
      const auto gy =
          torch::exp(-(Y.view({1, 1, F}) - sl(clump_y).unsqueeze(2)).pow(2) / (2.0 * s * s)) *
          w;  // [C, K, F]
      img = img + torch::bmm(gy.transpose(1, 2), gx);
    }
    if (O > 1) img = torch::avg_pool2d(img.unsqueeze(1), {O, O}).squeeze(1) * double(O * O);
    if (psf.defined()) {
      const int64_t pad = psf.size(-1) / 2;
      img = torch::conv2d(img.unsqueeze(1), psf, {}, std::vector<int64_t>{1, 1},
                          std::vector<int64_t>{pad, pad})
                .squeeze(1);
    }
    parts.push_back(img);
  }
  auto out = torch::cat(parts, 0);
  if (c.noise_sigma > 0) {
    const auto peak = std::get<0>(out.flatten(1).max(1)).view({N, 1, 1});
    out = out + c.noise_sigma * peak * torch::randn(out.sizes(), gen, f64);
  }
  return out.contiguous();
}

}  // namespace dslens::nn

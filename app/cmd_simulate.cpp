// `dslens simulate CONFIG --out DIR`: a strong-lens image from a JSON config (see lens_config.h),
// written with its noise-free model, noise map, PSF, the true parameters and a preview figure.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>

#include "command.h"
#include "dslens/core/atomic_file.h"
#include "dslens/core/errors.h"
#include "dslens/core/fits.h"
#include "dslens/core/output_dir.h"
#include "dslens/core/plot.h"
#include "dslens/core/version.h"
#include "dslens/physics/lens_equation.h"
#include "grid_fits_cards.h"
#include "lens_config.h"
#include "plot_panels.h"

namespace fs = std::filesystem;

namespace dslens::app {
namespace simulate_detail {

using plot::Box;
using plot::Canvas;
using plot::Rgb;

using plot_panels::draw_segments;
using plot_panels::Extent;
using plot_panels::panel_title;

// Square source-plane window covering the caustics and the configured sources.
Extent source_window(const LensConfig& cfg, const CriticalCurves& curves) {
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  auto include = [&](double x, double y) {
    if (!std::isfinite(x) || !std::isfinite(y)) return;
    xmin = std::min(xmin, x);
    xmax = std::max(xmax, x);
    ymin = std::min(ymin, y);
    ymax = std::max(ymax, y);
  };
  for (const auto& s : curves.caustic) {
    include(s[0], s[1]);
    include(s[2], s[3]);
  }
  for (const auto& c : cfg.source) {
    if (!c.params.count("center_x") || !c.params.count("center_y")) continue;
    double r = 0.0;
    if (c.params.count("R_sersic")) r = 2.5 * c.params.at("R_sersic");
    if (c.params.count("sigma")) r = 3.0 * c.params.at("sigma");
    if ((physics::is_pixelated_light(c.type) || c.type == "VAE") && c.image_shape.size() == 2) {
      r = 0.5 * c.params.at("scale") * std::max(c.image_shape[0], c.image_shape[1]);
    }
    include(c.params.at("center_x") - r, c.params.at("center_y") - r);
    include(c.params.at("center_x") + r, c.params.at("center_y") + r);
  }
  const auto& g = cfg.model.grid;
  const double fov = g.pixel_scale * std::max(g.nx, g.ny);
  if (!std::isfinite(xmin)) return {-fov / 4, fov / 4, -fov / 4, fov / 4};
  const double cx = 0.5 * (xmin + xmax), cy = 0.5 * (ymin + ymax);
  double half = 0.55 * std::max(xmax - xmin, ymax - ymin);
  half = std::min(std::max(half, 4.0 * g.pixel_scale), std::max(fov, 4.0 * g.pixel_scale));
  return {cx - half, cx + half, cy - half, cy + half};
}

torch::Tensor source_brightness(const LensConfig& cfg, const Extent& e, int64_t n,
                                const Compute& compute) {
  auto opts = compute.options();
  const double dx = (e.xmax - e.xmin) / n, dy = (e.ymax - e.ymin) / n;
  torch::Tensor xs = torch::arange(n, opts) * dx + (e.xmin + 0.5 * dx);
  torch::Tensor ys = torch::arange(n, opts) * dy + (e.ymin + 0.5 * dy);
  torch::Tensor x = xs.unsqueeze(0).expand({n, n}).reshape({1, -1});
  torch::Tensor y = ys.unsqueeze(1).expand({n, n}).reshape({1, -1});
  torch::Tensor total = torch::zeros({1, n * n}, opts);
  for (const auto& c : cfg.model.source_light)
    total = total + c.profile->surface_brightness(x, y, c.params);
  return total.detach().reshape({n, n}).to(torch::kCPU, torch::kFloat64);
}

std::string fmt(double v, int precision = 3) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", precision, v);
  return buf;
}

// The true source plane as drawn in the preview: surface brightness on a 200 x 200 window.
struct SourcePlane {
  Extent extent;
  torch::Tensor brightness;  // [200, 200] float64 on the CPU, rows along y
  double pixel() const {
    return (extent.xmax - extent.xmin) / static_cast<double>(brightness.size(1));
  }
};

// Writes preview.png; returns the source plane of its third panel.
SourcePlane write_preview(const std::string& path, const LensConfig& cfg,
                          const torch::Tensor& image, const torch::Tensor& model,
                          const Compute& compute) {
  const auto& g = cfg.model.grid;
  const int64_t oversample = std::clamp<int64_t>(400 / std::max(g.nx, g.ny), 1, 4);
  const CriticalCurves curves = critical_curves(cfg.model.lens, g, oversample, compute);
  const Extent image_extent = plot_panels::grid_extent(g);
  const Extent src_extent = source_window(cfg, curves);
  const torch::Tensor source = source_brightness(cfg, src_extent, 200, compute);

  const int S = 256, gap = 36, top = 52;
  Canvas canvas(4 * S + 5 * gap, top + S + 60);
  std::string header = "dslens " + version() + " simulate";
  if (!cfg.config_path.empty()) header += "  " + fs::path(cfg.config_path).filename().string();
  header += "  " + std::to_string(g.nx) + "x" + std::to_string(g.ny) + " px at " +
            fmt(g.pixel_scale) + "\"/px, supersampling " + std::to_string(cfg.model.supersampling);
  header +=
      cfg.psf.kind == "gaussian" ? ", PSF FWHM " + fmt(cfg.psf.fwhm) + "\"" : ", PSF from FITS";
  canvas.text(gap, 10, header);

  auto box_at = [&](int k) { return Box{gap + k * (S + gap), top, S, S}; };
  auto bar_at = [&](int k) { return Box{gap + k * (S + gap), top + S + 6, S, 8}; };

  // Noisy image and model share limits; asinh stretch shows the arcs under the lens light.
  const torch::Tensor img_cpu = image.detach().to(torch::kCPU, torch::kFloat64);
  const torch::Tensor mod_cpu = model.detach().to(torch::kCPU, torch::kFloat64);
  const double vmax = std::max(mod_cpu.max().item<double>(), 1e-30);
  const double vmin = std::min(img_cpu.min().item<double>(), 0.0);
  const double stretch = 0.05 * vmax;
  canvas.image(box_at(0), img_cpu, "magma", vmin, vmax, stretch);
  panel_title(canvas, box_at(0), "noisy image (asinh)");
  canvas.colorbar(bar_at(0), "magma", vmin, vmax);
  canvas.image(box_at(1), mod_cpu, "magma", vmin, vmax, stretch);
  panel_title(canvas, box_at(1), "model, noise-free (asinh)");
  canvas.colorbar(bar_at(1), "magma", vmin, vmax);

  const double smin = source.min().item<double>(), smax = source.max().item<double>();
  canvas.image(box_at(2), source, "magma", smin, smax > smin ? smax : smin + 1.0);
  draw_segments(canvas, box_at(2), src_extent, curves.caustic, Rgb{0, 230, 255});
  panel_title(canvas, box_at(2), "source plane + caustics");
  canvas.colorbar(bar_at(2), "magma", smin, smax);

  plot_panels::draw_log_convergence(canvas, box_at(3), bar_at(3), curves.convergence, image_extent,
                                    curves.critical, "log10 convergence + critical curves");

  for (int k = 0; k < 4; ++k) canvas.rect(box_at(k), plot::kBlack);
  const std::string fov = fmt(image_extent.xmax - image_extent.xmin) + "\" x " +
                          fmt(image_extent.ymax - image_extent.ymin) + "\"";
  const std::string sfov = fmt(src_extent.xmax - src_extent.xmin) + "\" x " +
                           fmt(src_extent.ymax - src_extent.ymin) + "\" at (" +
                           fmt(0.5 * (src_extent.xmin + src_extent.xmax)) + ", " +
                           fmt(0.5 * (src_extent.ymin + src_extent.ymax)) + ")";
  const int ly = top + S + 30;
  canvas.text(box_at(0).x, ly, "field " + fov);
  canvas.text(box_at(1).x, ly, "field " + fov);
  canvas.text(box_at(2).x, ly, sfov);
  canvas.text(box_at(3).x, ly, "field " + fov);
  canvas.save_png(path);
  return {src_extent, source};
}

// How galaxy-like the true source is, for telling mock populations apart: a VAE decodes latents
// far in its prior's tail into knots scattered over the stamp on a background of both signs
// rather than one galaxy (docs/mock_study.md, session 27). negative_flux_fraction: the flux in
// pixels below zero over that above; peak_over_mean: the brightest pixel over the mean of the
// positive pixels' brightness, weighted by brightness (a compact galaxy's core is a few times
// its flux-weighted mean, a spray of knots' much more).
json source_plane_summary(const SourcePlane& sp) {
  const auto& s = sp.brightness;
  const auto pos = s.clamp_min(0.0);
  const double positive = pos.sum().item<double>();
  const double negative = (-s).clamp_min(0.0).sum().item<double>();
  const double weighted_mean = positive > 0 ? (pos * pos).sum().item<double>() / positive : 0.0;
  const double peak = s.max().item<double>();
  return {{"pixel", {{"value", sp.pixel()}, {"unit", "arcsec"}}},
          {"peak", {{"value", peak}, {"unit", "counts/s/arcsec^2"}}},
          {"minimum", {{"value", s.min().item<double>()}, {"unit", "counts/s/arcsec^2"}}},
          {"negative_flux_fraction",
           {{"value", positive > 0 ? negative / positive : 0.0}, {"unit", "dimensionless"}}},
          {"peak_over_mean",
           {{"value", weighted_mean > 0 ? peak / weighted_mean : 0.0}, {"unit", "dimensionless"}}}};
}

// The images of each source component's centre through the true lens, on the grid
// (physics::solve_lens_equation): positions a fit's data may take as "image_positions"
// (model/image_positions.h) where the centre is a compact feature, and the truth to compare
// measured ones with. Brightest first; magnifications signed (negative: saddle points).
json source_centre_images(const LensConfig& cfg, const Compute& compute) {
  json out = json::array();
  if (cfg.model.lens.empty()) return out;
  for (size_t i = 0; i < cfg.model.source_light.size(); ++i) {
    const auto& p = cfg.model.source_light[i].params;
    if (!p.count("center_x") || !p.count("center_y")) continue;
    const double bx = p.at("center_x").reshape({-1})[0].item<double>();
    const double by = p.at("center_y").reshape({-1})[0].item<double>();
    json images = json::array(), magnifications = json::array();
    for (const auto& im :
         physics::solve_lens_equation(cfg.model.lens, bx, by, cfg.model.grid, compute)) {
      images.push_back({im.x, im.y});
      magnifications.push_back(im.magnification);
    }
    out.push_back({{"source", i},
                   {"center", {bx, by}},
                   {"images", images},
                   {"magnifications", magnifications},
                   {"unit", "arcsec"}});
  }
  return out;
}

std::vector<FitsCard> image_cards(const LensConfig& cfg, const std::string& content) {
  std::vector<FitsCard> cards = {{"CONTENT", content, "what this image holds"},
                                 {"BUNIT", std::string("counts/s"), "image units per pixel"}};
  for (auto& c : grid_fits_cards(cfg.model.grid)) cards.push_back(std::move(c));
  for (auto& c : std::vector<FitsCard>{
           {"SUPERSMP", static_cast<long long>(cfg.model.supersampling), "supersampling factor"},
           {"BKGRMS", cfg.noise.background_rms, "background noise rms (counts/s)"},
           {"EXPTIME", cfg.noise.exposure_time, "exposure time (s); 0 = no Poisson noise"},
           {"NOISCORR", cfg.noise.correlation_fwhm, "noise correlation kernel FWHM (px); 0 = none"},
           {"SEED", static_cast<long long>(cfg.seed), "noise seed"},
           {"ORIGIN", std::string("dslens ") + version(), ""}}) {
    cards.push_back(std::move(c));
  }
  return cards;
}

int run_simulate(int argc, char** argv) {
  cxxopts::Options options(argv[0], "Simulate a strong-lens image from a JSON config");
  options.positional_help("CONFIG").show_positional_help();
  options.add_options()("config", "JSON config file", cxxopts::value<std::string>())(
      "o,out", "output folder to create (refused if it exists)", cxxopts::value<std::string>())(
      "overwrite", "replace an existing output folder");
  add_compute_options(options);
  options.parse_positional({"config"});
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  if (!args.count("config")) throw InvalidArgument("missing CONFIG (see dslens simulate --help)");
  if (!args.count("out")) throw InvalidArgument("missing --out DIR (see dslens simulate --help)");
  if (!args.unmatched().empty()) {
    throw InvalidArgument("unexpected argument '" + args.unmatched().front() + "' (see --help)");
  }
  const Compute compute = compute_from(args);
  const std::string config_path = args["config"].as<std::string>();
  const std::string out_path = args["out"].as<std::string>();
  const bool overwrite = args.count("overwrite") > 0;
  if (fs::exists(out_path) && !overwrite) {
    throw InputError("output folder '" + out_path +
                     "' already exists; choose another --out, or pass --overwrite to replace it");
  }

  const auto t0 = std::chrono::steady_clock::now();
  const LensConfig cfg = load_lens_config(config_path, compute);
  const auto& g = cfg.model.grid;
  spdlog::info(
      "simulate: {} ({}x{} px at {}\"/px, supersampling {}, {} mass, {} lens-light, {} "
      "source components) on {} {}",
      config_path, g.nx, g.ny, g.pixel_scale, cfg.model.supersampling, cfg.mass.size(),
      cfg.lens_light.size(), cfg.source.size(), compute.device.str(), dtype_name(compute.dtype));

  torch::Tensor model, image, sigma;
  {
    torch::NoGradGuard no_grad;
    model = physics::simulate_image(cfg.model, 1, compute)[0].contiguous();
    image = physics::add_noise(model.unsqueeze(0), cfg.noise, cfg.seed)[0].contiguous();
    sigma = physics::noise_map(model, cfg.noise).contiguous();
  }
  if (!torch::isfinite(model).all().item<bool>()) {
    throw NumericalError("the simulated model image has non-finite pixels; check the config");
  }

  OutputDir out = OutputDir::staged(out_path, overwrite);
  write_fits_image(out.file("image.fits"), image, image_cards(cfg, "noisy image: model + noise"));
  write_fits_image(out.file("model.fits"), model, image_cards(cfg, "noise-free model image"));
  write_fits_image(out.file("noise_map.fits"), sigma,
                   image_cards(cfg, "per-pixel noise standard deviation"));
  std::vector<FitsCard> psf_cards = {
      {"CONTENT", std::string("PSF kernel, normalised to sum 1"), ""},
      {"PIXSCALE", g.pixel_scale, "arcsec per pixel"},
      {"PSFTYPE", std::string(cfg.psf.kind == "gaussian" ? "GAUSSIAN" : "FITS"), ""},
      {"ORIGIN", std::string("dslens ") + version(), ""}};
  if (cfg.psf.kind == "gaussian") psf_cards.push_back({"FWHM", cfg.psf.fwhm, "arcsec"});
  write_fits_image(out.file("psf.fits"), *cfg.model.psf_kernel, psf_cards);

  json truth = lens_config_truth(cfg);
  truth["config"] = cfg.config;
  truth["device"] = compute.device.str();
  truth["dtype"] = dtype_name(compute.dtype);
  truth["model_total_flux"] = {{"value", model.sum().item<double>()}, {"unit", "counts/s"}};
  const SourcePlane sp = write_preview(out.file("preview.png"), cfg, image, model, compute);
  truth["source_plane"] = source_plane_summary(sp);
  truth["image_positions"] = source_centre_images(cfg, compute);
  write_text_atomically(out.file("truth.json"), truth.dump(2) + "\n");
  // As the fit's source.fits (app/fit_outputs.cpp), so the two can be compared pixel by pixel.
  write_fits_image(out.file("source.fits"), sp.brightness,
                   {{"CONTENT", std::string("true source-plane surface brightness"), ""},
                    {"BUNIT", std::string("counts/s/arcsec^2"), ""},
                    {"PIXSCALE", sp.pixel(), "arcsec per pixel"},
                    {"X_MIN", sp.extent.xmin, "left edge, arcsec"},
                    {"Y_MIN", sp.extent.ymin, "bottom edge, arcsec"},
                    {"ORIGIN", std::string("dslens ") + version(), ""}});
  out.commit();

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  spdlog::info("simulate: wrote {} in {:.2f} s", out.final_dir(), seconds);
  std::cout << "wrote " << out.final_dir()
            << " (image.fits, model.fits, noise_map.fits, psf.fits, source.fits, truth.json, "
               "preview.png)\n";
  return 0;
}

}  // namespace simulate_detail

DSLENS_COMMAND(simulate, "Simulate a strong-lens image from a JSON config",
               simulate_detail::run_simulate);

}  // namespace dslens::app

// What `dslens fit` writes for one lens (docs/fit.md, "Output").
#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <sstream>
#include <tuple>

#include "chain_summary.h"
#include "dslens/core/atomic_file.h"
#include "dslens/core/fits.h"
#include "dslens/core/output_dir.h"
#include "dslens/core/sky_position.h"
#include "dslens/core/version.h"
#include "dslens/model/lens_posterior.h"
#include "dslens/model/noise_estimate.h"
#include "dslens/samplers/diagnostics.h"
#include "dslens/samplers/draws_io.h"
#include "dslens/samplers/summary.h"
#include "fit_report.h"
#include "fit_run.h"
#include "grid_fits_cards.h"
#include "lens_config.h"
#include "map_rounds.h"
#include "model_export.h"
#include "noise_correlation.h"
#include "pixel_grid_extent.h"

namespace fs = std::filesystem;

namespace dslens::app {
namespace fit_outputs_detail {

nlohmann::json number_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nullptr;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// The source light at MAP on a square source-plane grid centred on the source, wide enough for
// the decoded stamp (or 1.5x the caustics) — the "reconstructed source" panel and source.fits.
struct SourceImage {
  torch::Tensor image;  // [n, n] CPU float64, row 0 at the bottom (y increasing)
  std::array<double, 4> extent{};
  double pixel = 0.0;
  int64_t n = 128;
};

// The source components' summed surface brightness at the pixel centres of `window` (its extent,
// pixel and n), [rows, n * n] on the compute device.
torch::Tensor source_light_on(const std::vector<physics::LightComponent>& source,
                              const SourceImage& window, int64_t rows, const Compute& compute) {
  const auto axis = [&](double low) {
    return torch::arange(window.n, torch::kFloat64) * window.pixel + (low + 0.5 * window.pixel);
  };
  const auto grid = torch::meshgrid({axis(window.extent[2]), axis(window.extent[0])}, "ij");
  const auto y = grid[0].reshape({1, -1}).to(compute.options());
  const auto x = grid[1].reshape({1, -1}).to(compute.options());
  torch::Tensor total = torch::zeros({rows, window.n * window.n}, compute.options());
  for (const auto& c : source) total = total + c.profile->surface_brightness(x, y, c.params);
  return total.detach();
}

SourceImage evaluate_source(const physics::ImageModel& m, const model::FitModel& fm,
                            const std::map<std::string, torch::Tensor>& values,
                            const CriticalCurves& cc, const Compute& compute) {
  double cx = 0.0, cy = 0.0, half = 0.0;
  if (!m.source_light.empty()) {
    const auto& p = m.source_light.front().params;
    if (p.count("center_x")) cx = p.at("center_x").reshape({-1})[0].item<double>();
    if (p.count("center_y")) cy = p.at("center_y").reshape({-1})[0].item<double>();
    if (fm.decoded_size > 0 && p.count("scale")) {
      half = 0.5 * static_cast<double>(fm.decoded_size) *
             p.at("scale").reshape({-1})[0].item<double>();
    }
  }
  for (const auto& s : cc.caustic) {
    for (int k = 0; k < 2; ++k) {
      half = std::max(half, 0.75 * std::hypot(s[2 * k] - cx, s[2 * k + 1] - cy));
    }
  }
  if (!(half > 0)) half = 0.25 * m.grid.pixel_scale * static_cast<double>(m.grid.nx);
  half = std::min(half, 0.5 * m.grid.pixel_scale * static_cast<double>(m.grid.nx));
  SourceImage out;
  out.extent = {cx - half, cx + half, cy - half, cy + half};
  out.pixel = 2.0 * half / static_cast<double>(out.n);
  out.image = source_light_on(m.source_light, out, 1, compute)[0]
                  .reshape({out.n, out.n})
                  .to(torch::kCPU, torch::kFloat64);
  return out;
}

// Where the noise is too large: the normalised residuals' mean square in tenths of the fitted
// pixels by the MAP model's value (model/noise_estimate.h). Falling from the faint tenths to the
// bright ones, the noise's Poisson term is too large; a rise in the brightest is misfit there.
// SLACS J1430+4105's whole image, its noise rebuilt from the shared map's form, goes 0.86, 0.63,
// ..., 0.23, 0.47, 0.72: a Poisson term of too short an exposure, and the arcs' misfit
// (docs/slacs.md).
std::string noise_by_brightness(const std::vector<model::BrightnessBin>& bins) {
  if (bins.size() != 10) return "";
  std::string out =
      "; the normalised residuals' mean square by tenths of the fitted pixels, by the MAP model's "
      "value from faint to bright, is";
  double bright_min = bins.back().mean_square;
  for (size_t b = 0; b < bins.size(); ++b) {
    out += (b ? ", " : " ") + fmt("%.2f", bins[b].mean_square);
    if (b >= 5) bright_min = std::min(bright_min, bins[b].mean_square);
  }
  if (bright_min < 0.5 * bins.front().mean_square) {
    out +=
        ": falling from faint to bright, the noise's brightness-dependent (Poisson) term is too "
        "large";
  }
  return out;
}

// Noise correlated between neighbouring pixels (drizzled images): the likelihood counts each pixel
// as independent, so the posterior widths of parameters set by many pixels are off by the factor
// sqrt(sum of the residuals' autocovariance) (model/noise_estimate.h). Warned where the sum ratio
// exceeds 1 by more than 0.3 and 3 of its standard errors for independent pixels, over 400 or
// more pixels, and the factor is outside [0.9, 1.1]: a noise map that overestimates each pixel's
// variance can balance the correlation (then the widths are about right and nothing is said).
std::optional<std::string> correlated_noise_warning(const model::ResidualCorrelation& c,
                                                    double config_scale) {
  if (!correlation_is_significant(c)) return std::nullopt;
  if (c.noise_scale >= 0.9 && c.noise_scale <= 1.1) return std::nullopt;
  return "the noise is correlated between neighbouring pixels off the arcs where the MAP model is "
         "faintest (" +
         std::to_string(c.pixels) + " pixels): lag-1 correlation " + fmt("%.2f", c.rho_x) +
         " along x and " + fmt("%.2f", c.rho_y) + " along y, and a sum over many pixels varies " +
         fmt("%.2f", c.sum_ratio) + " times as much as independent pixels' (+- " +
         fmt("%.2f", c.sum_ratio_se) +
         " if they were). The likelihood counts pixels as independent, so the posterior widths of "
         "parameters set by many pixels are off by about sqrt(mean square " +
         fmt("%.2f", c.mean_square) + " x " + fmt("%.2f", c.sum_ratio) +
         ") = " + fmt("%.2f", c.noise_scale) +
         (c.noise_scale > 1 ? " (too narrow)" : " (too wide)") + "; data.noise_scale " +
         fmt("%.3g", c.noise_scale * config_scale) +
         " scales sigma to match (docs/fit.md, \"Correlated noise\")";
}

// Modeller's warnings (docs/fit.md): convergence, sampler health, prior bounds, goodness of fit.
// `round_threshold`: the reduced chi-square above which the MAP search is repeated for `dof`
// degrees of freedom (app/map_rounds.h). `reduced_chi2` is the noise's as given, before a
// data.noise_scale, which `chi2_label` then says.
std::vector<std::string> fit_warnings(const std::vector<samplers::SummaryRow>& rows,
                                      const model::ParameterSpace& space,
                                      const samplers::Draws& chains, double reduced_chi2,
                                      int64_t dof, double round_threshold, int64_t n_draws_total,
                                      const std::vector<model::BrightnessBin>& by_brightness,
                                      const std::string& chi2_label) {
  std::vector<std::string> w;
  std::vector<std::string> high_rhat, low_ess, at_bound, row_names;
  for (const auto& r : rows) row_names.push_back(r.name);
  const double ess_floor = std::min(100.0, 0.1 * static_cast<double>(n_draws_total));
  for (const auto& r : rows) {
    if (std::isfinite(r.rhat) && r.rhat > 1.01)
      high_rhat.push_back(r.name + " " + fmt("%.3f", r.rhat));
    if (std::isfinite(r.ess_bulk) && r.ess_bulk < ess_floor) {
      low_ess.push_back(r.name + " " + fmt("%.0f", r.ess_bulk));
    }
    if (r.name.find('[') != std::string::npos) continue;
    const auto prior = space.prior(r.name);
    if (prior && std::isfinite(prior->lower()) && std::isfinite(prior->upper())) {
      const double span = prior->upper() - prior->lower();
      if (r.q50 - prior->lower() < 0.01 * span || prior->upper() - r.q50 < 0.01 * span) {
        at_bound.push_back(r.name + " (median " + fmt("%.4g", r.q50) + ", prior [" +
                           fmt("%.4g", prior->lower()) + ", " + fmt("%.4g", prior->upper()) + "])");
      }
    }
  }
  auto join = [](const std::vector<std::string>& v, size_t max = 6) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < max; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > max) s += ", ... (" + std::to_string(v.size()) + " in all)";
    return s;
  };
  if (!high_rhat.empty()) w.push_back("R-hat above 1.01: " + join(high_rhat));
  if (!low_ess.empty()) {
    w.push_back("bulk ESS below " + fmt("%.0f", ess_floor) + ": " + join(low_ess));
  }
  const int64_t div = samplers::count_divergences(chains.divergent);
  if (div > 0) {
    w.push_back(std::to_string(div) +
                " divergent transitions after warmup: the posterior may be "
                "biased; raise target_accept or reparameterise" +
                divergence_region(chains.draws, chains.divergent, row_names));
  }
  const auto bfmi = samplers::ebfmi(chains.energy);
  for (size_t c = 0; c < bfmi.size(); ++c) {
    if (std::isfinite(bfmi[c]) && bfmi[c] < 0.3) {
      w.push_back("E-BFMI of chain " + std::to_string(c) + " is " + fmt("%.2f", bfmi[c]) +
                  " (< 0.3): the momentum resampling explores the energy poorly");
    }
  }
  if (!at_bound.empty()) w.push_back("parameters at a prior bound: " + join(at_bound));
  if (!(reduced_chi2 > 0.8 && reduced_chi2 < 1.25)) {
    w.push_back(chi2_label + " is " + fmt("%.3f", reduced_chi2) +
                (reduced_chi2 > 1 ? ": the model does not describe the data (or the noise is "
                                    "underestimated)"
                                  : ": the noise map overestimates the noise" +
                                        noise_by_brightness(by_brightness)));
  } else if (reduced_chi2 > round_threshold) {
    // Inside the fixed band but improbable for its degrees of freedom: a missed mode or a misfit.
    // SNR-100 mock 10 of docs/mock_study.md ended its three search rounds at 1.237 over 6,324
    // degrees of freedom (13 sd above 1), 791 nats below the truth's log posterior, and only the
    // truth's warning, which real data do not have, said so.
    w.push_back(chi2_label + " is " + fmt("%.3f", reduced_chi2) + ", " +
                fmt("%.1f", (reduced_chi2 - 1.0) / std::sqrt(2.0 / static_cast<double>(dof))) +
                " sd above 1 for " + std::to_string(dof) +
                " degrees of freedom and above the MAP search rounds' threshold " +
                fmt("%.3f", round_threshold) +
                ": the search may have missed the posterior's main mode (raise "
                "map.placement_starts or map.retry_rounds), or the model lacks structure the data "
                "have, or the noise map underestimates the noise");
  }
  return w;
}

std::string truth_table(const std::vector<samplers::SummaryRow>& rows,
                        const std::map<std::string, double>& truth) {
  std::ostringstream s;
  char line[256];
  std::snprintf(line, sizeof line, "%-24s %12s %12s %12s %12s %8s\n", "parameter", "truth", "mean",
                "sd", "error", "z");
  s << line;
  for (const auto& r : rows) {
    auto it = truth.find(r.name);
    if (it == truth.end()) continue;
    const double err = r.mean - it->second;
    std::snprintf(line, sizeof line, "%-24s %12.6g %12.6g %12.4g %12.4g %8.2f\n", r.name.c_str(),
                  it->second, r.mean, r.sd, err, err / r.sd);
    s << line;
  }
  return s.str();
}

std::vector<FitsCard> grid_cards(const physics::PixelGrid& g, const std::vector<FitsCard>& sky,
                                 const std::string& what) {
  std::vector<FitsCard> cards = {{"CONTENT", what, ""}};
  for (auto& c : grid_fits_cards(g, sky)) cards.push_back(std::move(c));
  cards.push_back({"RA_XY0", g.ra_at_xy_0, "x of pixel (0,0), arcsec"});
  cards.push_back({"DEC_XY0", g.dec_at_xy_0, "y of pixel (0,0), arcsec"});
  cards.push_back({"ORIGIN", std::string("dslens ") + version(), ""});
  return cards;
}

// Adds to each summary row its central 68 % and 95 % intervals from flat [draws, K] (columns
// named by `cols`) and, where `truth` has the row's variable, the truth, error, z-score, relative
// error and whether the intervals hold it.
void annotate_summary(nlohmann::json& rows, const torch::Tensor& flat,
                      const std::vector<std::string>& cols,
                      const std::map<std::string, double>& truth) {
  const auto q =
      flat.quantile(torch::tensor({0.025, 0.16, 0.84, 0.975}, torch::kFloat64), 0).contiguous();
  for (auto& row : rows) {
    const std::string name = row["variable"].get<std::string>();
    const auto col = std::find(cols.begin(), cols.end(), name) - cols.begin();
    const double lo95 = q[0][col].item<double>(), lo68 = q[1][col].item<double>(),
                 hi68 = q[2][col].item<double>(), hi95 = q[3][col].item<double>();
    row["q2.5"] = number_or_null(lo95);
    row["q16"] = number_or_null(lo68);
    row["q84"] = number_or_null(hi68);
    row["q97.5"] = number_or_null(hi95);
    const auto it = truth.find(name);
    if (it == truth.end()) continue;
    row["truth"] = it->second;
    if (row["mean"].is_number() && row["sd"].is_number()) {
      const double err = row["mean"].get<double>() - it->second;
      row["error"] = err;
      row["z_score"] = number_or_null(err / row["sd"].get<double>());
      row["relative_error"] = number_or_null(err / std::abs(it->second));
      row["in_68"] = it->second >= lo68 && it->second <= hi68;
      row["in_95"] = it->second >= lo95 && it->second <= hi95;
    }
  }
}

struct DerivedDraws {
  std::vector<std::string> names;
  torch::Tensor values;  // [draws, K]
  std::map<std::string, double> truth;
};

// q_X from e1_X, e2_X and gamma_ext_X from gamma1_X, gamma2_X, where both are free parameters
// (columns of flat [draws, D]); their truth where both components have one.
DerivedDraws derived_draws(const torch::Tensor& flat, const std::vector<std::string>& names,
                           const std::map<std::string, double>& truth) {
  DerivedDraws out;
  std::vector<torch::Tensor> cols;
  const auto column = [&names](const std::string& n) -> int64_t {
    const auto it = std::find(names.begin(), names.end(), n);
    return it == names.end() ? -1 : it - names.begin();
  };
  const auto q_of = [](double e) { return (1.0 - e) / (1.0 + e); };
  for (const auto& [first, second, derived] :
       {std::tuple{std::string("e1_"), std::string("e2_"), std::string("q_")},
        std::tuple{std::string("gamma1_"), std::string("gamma2_"), std::string("gamma_ext_")}}) {
    for (const auto& n : names) {
      if (n.rfind(first, 0) != 0) continue;
      const std::string suffix = n.substr(first.size());
      const int64_t a = column(n), b = column(second + suffix);
      if (b < 0) continue;
      const auto modulus = torch::sqrt(flat.select(1, a).square() + flat.select(1, b).square());
      const bool is_q = derived == "q_";
      cols.push_back(is_q ? (1.0 - modulus) / (1.0 + modulus) : modulus);
      out.names.push_back(derived + suffix);
      const auto ta = truth.find(n), tb = truth.find(second + suffix);
      if (ta != truth.end() && tb != truth.end()) {
        const double m = std::hypot(ta->second, tb->second);
        out.truth[out.names.back()] = is_q ? q_of(m) : m;
      }
    }
  }
  if (!cols.empty()) out.values = torch::stack(cols, 1);
  return out;
}

// What every draw's model gives beyond its parameters, from one model per draw (built in batches
// of at most 256 rows): the source's total magnification (physics::source_magnification) and,
// with a `window` (source.fits's grid), the source plane's posterior mean and standard deviation
// over the draws.
struct DrawProducts {
  torch::Tensor magnification;           // [n] CPU float64
  torch::Tensor source_mean, source_sd;  // [window.n, window.n] CPU float64, when asked
};

DrawProducts draw_products(const model::LensPosterior& post, const torch::Tensor& u,
                           const Compute& compute, const SourceImage* window = nullptr) {
  std::vector<torch::Tensor> magnification;
  torch::Tensor sum, sum_sq;
  for (int64_t at = 0; at < u.size(0); at += 256) {
    const int64_t rows = std::min<int64_t>(256, u.size(0) - at);
    const auto un = post.space().unpack(u.narrow(0, at, rows).to(compute.options()));
    const physics::ImageModel m = post.build(un, rows);
    magnification.push_back(
        physics::source_magnification(m, rows, compute).to(torch::kCPU, torch::kFloat64));
    if (!window) continue;
    const auto light = source_light_on(m.source_light, *window, rows, compute).to(torch::kFloat64);
    const auto s = light.sum(0), q = light.square().sum(0);
    sum = sum.defined() ? sum + s : s;
    sum_sq = sum_sq.defined() ? sum_sq + q : q;
  }
  DrawProducts out;
  out.magnification = torch::cat(magnification);
  if (!window) return out;
  const double n = static_cast<double>(u.size(0));
  const auto mean = sum / n;
  // Population variance of the draws, clamped at 0 against rounding.
  const auto sd = (sum_sq / n - mean.square()).clamp_min(0.0).sqrt();
  const auto image = [&](const torch::Tensor& t) {
    return t.reshape({window->n, window->n}).to(torch::kCPU, torch::kFloat64);
  };
  out.source_mean = image(mean);
  out.source_sd = image(sd);
  return out;
}

// map.json's "sky": the first mass component's centre at the MAP (`parameters`, fixed ones
// included) as RA and Dec through the data's celestial WCS (core/sky_position.h), for a catalogue
// to cross-match; where the WCS is not TAN, or no mass component has a centre, why not.
nlohmann::json lens_centre_on_sky(const model::Observation& obs, const nlohmann::json& parameters) {
  std::string ctype;
  for (const auto& c : obs.sky_wcs)
    if (c.key == "CTYPE1" || c.key == "CTYPE2")
      ctype += (ctype.empty() ? "" : ", ") + std::get<std::string>(c.value);
  nlohmann::json sky = {{"wcs", ctype + " (the data image's header, CRPIX moved to the cut-out)"}};
  for (int k = 0; k < 100; ++k) {
    const std::string cx = "center_x_lens" + std::to_string(k);
    const std::string cy = "center_y_lens" + std::to_string(k);
    if (!parameters.contains(cx) || !parameters.contains(cy)) continue;
    const double x = parameters.at(cx).get<double>(), y = parameters.at(cy).get<double>();
    // The grid's pixel (0, 0) is FITS pixel (1, 1).
    const double pixel1 = 1.0 + (x - obs.grid.ra_at_xy_0) / obs.grid.pixel_scale;
    const double pixel2 = 1.0 + (y - obs.grid.dec_at_xy_0) / obs.grid.pixel_scale;
    std::string why;
    const auto at = tan_sky_position(obs.sky_wcs, pixel1, pixel2, &why);
    if (!at) {
      sky["unavailable"] = why;
      return sky;
    }
    sky["lens_center"] = {{"component", "lens" + std::to_string(k)},
                          {"x", x},
                          {"y", y},
                          {"ra", at->ra},
                          {"dec", at->dec},
                          {"definition",
                           "the MAP's centre (center_x, center_y, arcsec on the fit's grid) of "
                           "this mass component, the first with one, at FITS pixel (" +
                               fmt("%.3f", pixel1) + ", " + fmt("%.3f", pixel2) +
                               ") of data.fits; ra, dec in degrees (the WCS's RADESYS)"}};
    return sky;
  }
  sky["unavailable"] = "no mass component has a center_x and center_y";
  return sky;
}

// The most the data may prefer to scale the MAP's lensed source by before the fit warns that a
// prior holds the source down. A prior that fits its source shrinks only the pixels the data
// barely constrain, whose share of the arcs is small (the test mocks: 1.0 to 1.15).
constexpr double kSourceFluxScaleWarn = 1.5;

// map.json's "poisson_term" for data.poisson_term "model": the noise's form and where its
// Poisson term came from.
nlohmann::json poisson_term_json(const model::Observation& obs) {
  return {{"from", "model"},
          {"background_rms", obs.noise_model->background_rms},
          {"exposure_time", obs.noise_model->exposure_time},
          {"definition",
           "sigma^2 = (background_rms^2 + max(model, 0) / exposure_time) x noise_scale^2 at each "
           "point of the fit, with the Gaussian normalisation -1/2 sum log(2 pi sigma^2) in the "
           "likelihood (docs/fit.md, \"The noise: a Poisson term from the model\"); the MAP's "
           "residuals divide by the MAP model's sigma"}};
}

}  // namespace fit_outputs_detail

using namespace fit_outputs_detail;

nlohmann::json write_lens_outputs(const std::string& dir, const LensFitResult& r,
                                  const Compute& compute) {
  const FitConfig& cfg = r.fitted_config();
  const auto& space = cfg.model.space;
  const auto names = space.coordinate_names();
  const int64_t C = r.chains.draws.size(0), N = r.chains.draws.size(1), D = r.chains.draws.size(2);

  // A one-lens posterior for this lens's images.
  const model::LensPosterior post(cfg.model.spec(cfg.data.grid, cfg.data.psf), space,
                                  cfg.data.imaging(), compute);
  const auto opts = compute.options();
  // A grid on the arcs traced from the same lens light as the chains' (LensFitResult).
  if (r.arcs_lens_light_u.defined())
    post.fix_arcs_lens_light(space.unpack(r.arcs_lens_light_u.to(opts)));
  torch::NoGradGuard no_grad;

  // Draws in the constrained space, [C, N, D].
  const auto u_all = r.chains.draws.reshape({C * N, D});
  const auto x_all = space.constrained(u_all.to(opts)).to(torch::kCPU, torch::kFloat64);
  const auto draws = x_all.reshape({C, N, D});
  samplers::LabelledDraws labelled{draws, names, r.sampler_settings};
  labelled.settings["parameters"] = space.describe();
  labelled.settings["space"] =
      "constrained (the prior's support); the sampler ran in the "
      "unconstrained space of the bijections in 'parameters'";
  samplers::LabelledDraws stats;
  stats.names = {"lp__",         "accept_stat__", "stepsize__", "treedepth__",
                 "n_leapfrog__", "divergent__",   "energy__"};
  stats.values = torch::stack(
      {r.chains.log_density.to(torch::kFloat64), r.chains.accept_stat.to(torch::kFloat64),
       r.chains.step_size.to(torch::kFloat64), r.chains.tree_depth.to(torch::kFloat64),
       r.chains.n_leapfrog.to(torch::kFloat64), r.chains.divergent.to(torch::kFloat64),
       r.chains.energy.to(torch::kFloat64)},
      2);
  stats.settings = r.sampler_settings;
  samplers::write_sampler_output(dir, labelled, stats);

  // MAP and its images.
  const auto map_u = r.map_u.to(opts);
  const auto un = space.unpack(map_u);
  const MapImages images = map_images(cfg.data, post, un, compute);
  const auto& model_img = images.model;
  const double chi2 = post.chi_square(map_u).item<double>();
  // Degrees of freedom: a pixel grid's pixels by their effective number (app/map_rounds.h).
  const int64_t dof = std::llround(degrees_of_freedom(cfg.model, post, map_u)[0].item<double>());
  const double reduced_chi2 = chi2 / static_cast<double>(dof);
  // The goodness-of-fit warnings judge the noise as given: a data.noise_scale for correlated noise
  // divides every chi-square by its square.
  const double given_variance = cfg.data.noise_scale * cfg.data.noise_scale;
  const std::string chi2_label =
      cfg.data.noise_scale == 1.0
          ? std::string("reduced chi-square at MAP")
          : "reduced chi-square at MAP (sigma as given, before data.noise_scale " +
                fmt("%.3g", cfg.data.noise_scale) + ")";
  // With "poisson_term": "model", the noise at the MAP's model image: the residuals' sigma.
  const model::Observation obs = cfg.data.at_model(model_img);
  const auto& resid = images.residuals;

  const auto by_brightness = model::residuals_by_brightness(resid, model_img, obs.mask);

  const physics::ImageModel m = post.build(un, 1);
  const double magnification_map = physics::source_magnification(m, 1, compute).item<double>();
  const CriticalCurves cc = critical_curves(m.lens, obs.grid, 2, compute);
  const SourceImage source = evaluate_source(m, cfg.model, un.values, cc, compute);
  // The fit on the arcs alone: the unmasked pixels where the MAP's lensed source (with the PSF)
  // is brighter than the noise sigma. Most pixels of a cut-out are background, so the whole
  // image's reduced chi-square can be near 1 while the arcs' structure is missed.
  const auto& arc_light = images.arc_light;
  const auto arcs = obs.mask & (arc_light > obs.sigma);
  const int64_t arc_pixels = arcs.sum().item<int64_t>();
  // The noise's correlation between neighbouring pixels (app/noise_correlation.h).
  const auto [correlation_quiet, correlation_all] = map_noise_correlation(obs, images);
  // The source's brightness the data prefer along the MAP's own lensed source: the model image is
  // linear in it, lens light + s x lensed source, so the likelihood alone peaks at s = <d - lens
  // light, m> / <m, m> in the noise's metric, over the fitted pixels. Well above 1, a prior holds
  // the source down (a free pixel grid's sigma far below its surface brightness).
  const auto weight = obs.mask.to(torch::kFloat64) / obs.sigma.square();
  const double arc_norm = (arc_light.square() * weight).sum().item<double>();
  const double source_flux_scale =
      arc_norm > 0
          ? ((obs.image - (model_img - arc_light)) * arc_light * weight).sum().item<double>() /
                arc_norm
          : NAN;
  const double arc_chi2 = arc_pixels >= 10
                              ? resid.masked_select(arcs).square().sum().item<double>() /
                                    static_cast<double>(arc_pixels)
                              : NAN;

  const auto truth = model::truth_values(cfg.model, obs.truth);
  nlohmann::json map_json;
  map_json["log_posterior"] = number_or_null(r.map_log_p);
  map_json["origin"] = r.map_origin;
  map_json["map_search_log_posterior"] = number_or_null(r.starts_log_p[0].item<double>());
  map_json["chi_square"] = chi2;
  map_json["pixels"] = post.n_pixels();
  map_json["free_parameters"] = D;
  map_json["degrees_of_freedom"] = dof;  // pixels less parameters; a pixel grid's effective ones
  map_json["reduced_chi_square"] = reduced_chi2;
  if (cfg.data.noise_scale != 1.0) {
    map_json["noise_scale"] = cfg.data.noise_scale;
    map_json["reduced_chi_square_before_noise_scale"] = reduced_chi2 * given_variance;
  }
  if (!r.noise_scale_auto.is_null()) map_json["noise_scale_auto"] = r.noise_scale_auto;
  if (obs.poisson_from_model) map_json["poisson_term"] = poisson_term_json(obs);
  map_json["source_flux_scale_preferred_by_data"] = number_or_null(source_flux_scale);
  map_json["arcs"] = {
      {"pixels", arc_pixels},
      {"reduced_chi_square", number_or_null(arc_chi2)},
      {"definition",
       "the unmasked pixels where the MAP's lensed source, convolved with the PSF, exceeds the "
       "noise sigma (at least 10); chi-square over them divided by their number"}};
  nlohmann::json brightness_bins = nlohmann::json::array();
  for (const auto& b : by_brightness) {
    brightness_bins.push_back({{"model_low", b.model_low},
                               {"model_high", b.model_high},
                               {"mean_square", b.mean_square},
                               {"pixels", b.pixels}});
  }
  map_json["residuals_by_brightness"] = {
      {"bins", brightness_bins},
      {"definition",
       "the fitted pixels in 10 equal-count bins of the MAP model image's value, faintest first; "
       "mean square of (data - model) / sigma in each: about 1 where the noise is right, below 1 "
       "where it is too large (model/noise_estimate.h)"}};
  const auto correlation_json = [&](const model::ResidualCorrelation& c) {
    return nlohmann::json{{"pixels", c.pixels},
                          {"mean_square", c.mean_square},
                          {"rho_x", c.rho_x},
                          {"rho_y", c.rho_y},
                          {"sum_ratio", c.sum_ratio},
                          {"sum_ratio_se_if_independent", c.sum_ratio_se},
                          {"noise_scale", c.noise_scale * obs.noise_scale},
                          {"kernel_fwhm", number_or_null(correlation_kernel_fwhm(c))}};
  };
  map_json["noise_correlation"] = {
      {"quiet", correlation_json(correlation_quiet)},
      {"fitted", correlation_json(correlation_all)},
      {"window", correlation_quiet.window},
      {"highpass", correlation_quiet.highpass},
      {"definition",
       "autocovariance C(dx, dy) of (data - model) / sigma over pixel pairs, lags |dx|, |dy| <= "
       "window, each residual less the mean of those in the highpass x highpass box around it "
       "(misfit smoother than the box left out; the autocovariances corrected for what that takes "
       "from the noise); rho_x, rho_y: lag-1 correlations along x and y; sum_ratio: sum of C "
       "over the lags / C(0) (1 for independent pixels); noise_scale: the data.noise_scale (this "
       "fit's times sqrt(sum of C)) that gives parameters set by many pixels the posterior width "
       "of correlated noise; quiet: the fitted pixels off the arcs (the MAP's lensed source below "
       "0.1 sigma) where the MAP model is at or below its median over them; kernel_fwhm: the "
       "FWHM (px) of dslens simulate's noise.correlation_fwhm whose noise has the mean of rho_x "
       "and rho_y (model/noise_estimate.h, physics::noise_correlation_lag1)"}};
  const auto grid_extent = pixel_grid_extent(cfg.model, post, un);
  if (grid_extent) {
    map_json["pixel_grid"] = {
        {"side", grid_extent->side},
        {"arcs_side", number_or_null(grid_extent->arcs_side)},
        {"definition",
         "side: the PIXELATED grid's side at the MAP (size x scale, arcsec); arcs_side: the side "
         "that holds 99 % of the image flux traced back through the MAP's lens (pixels above 3 "
         "sigma after the lens light, less those the lens demagnifies, |mu| < 1/2), with a tenth "
         "to spare each side; lens_light_traced_from: the free lens-light parameters of the "
         "row whose lens light (and lens's core, left out) the grid is traced from: the MAP "
         "search's best placement, held for the search's later stages, the chains and here"}};
    // Which lens light placed the grid: session 57 could not tell from session 56's outputs why
    // the SLACS grid was 3.22" wide (docs/slacs.md).
    if (r.arcs_lens_light_u.defined()) {
      const auto from =
          space.constrained(r.arcs_lens_light_u.to(opts)).to(torch::kCPU, torch::kFloat64);
      nlohmann::json light = nlohmann::json::object();
      for (size_t j = 0; j < names.size(); ++j) {
        if (names[j].find("_lens_light") != std::string::npos)
          light[names[j]] = from[0][static_cast<int64_t>(j)].item<double>();
      }
      map_json["pixel_grid"]["lens_light_traced_from"] = light;
    }
  }
  // The measured image positions (model/image_positions.h) at the MAP's lens: each feature's
  // chi-square about its fitted source position, against its 2 (n - 1) degrees of freedom.
  std::vector<std::string> position_warnings;
  std::vector<std::array<double, 2>> image_positions, traced_positions;  // for report.png
  if (post.data().positions.defined()) {
    const auto chi = model::image_positions_chi_square(m.lens, post.data().positions, 1)[0].to(
        torch::kCPU, torch::kFloat64);
    nlohmann::json features = nlohmann::json::array();
    for (size_t g = 0; g < cfg.data.image_positions.size(); ++g) {
      const auto n = static_cast<int64_t>(cfg.data.image_positions[g].images.size());
      const double c = chi[static_cast<int64_t>(g)].item<double>();
      const double dof = 2.0 * static_cast<double>(n - 1);
      nlohmann::json traced = nlohmann::json::array();
      for (const auto& [x, y] : cfg.data.image_positions[g].images) {
        const auto at = [&](double v) { return torch::full({1, 1}, v, opts); };
        const auto [bx, by] = m.lens.ray_shoot(at(x), at(y));
        image_positions.push_back({x, y});
        traced_positions.push_back({bx.item<double>(), by.item<double>()});
        traced.push_back({traced_positions.back()[0], traced_positions.back()[1]});
      }
      features.push_back({{"images", n},
                          {"chi_square", number_or_null(c)},
                          {"dof", dof},
                          {"traced_back", traced}});
      if (!(c <= dof + 5.0 * std::sqrt(2.0 * dof))) {
        position_warnings.push_back(
            "the MAP's lens does not bring the images of data/image_positions/" +
            std::to_string(g) + " back to one source position: chi-square " + fmt("%.1f", c) +
            " for " + fmt("%.0f", dof) +
            " degrees of freedom; check that they are images of one feature, in arcsec on the "
            "fit's grid, and their sigma");
      }
    }
    map_json["image_positions"] = {
        {"features", features},
        {"definition",
         "per feature of data/image_positions: chi-square of its images about the source position "
         "that fits them best, through the MAP's lens, each image's error mapped to the source "
         "plane (model/image_positions.h); expected about dof = 2 (images - 1); traced_back: "
         "each image ray-shot through the MAP's lens (arcsec in the source plane)"}};
  }
  nlohmann::json best, starts = nlohmann::json::array();
  const auto x_map = space.constrained(map_u).to(torch::kCPU, torch::kFloat64)[0];
  for (int64_t d = 0; d < D; ++d) best[names[d]] = x_map[d].item<double>();
  for (const auto& [n, v] : un.values) {
    if (space.is_fixed(n)) best[n] = v.reshape({-1})[0].item<double>();
  }
  map_json["parameters"] = best;
  if (!obs.sky_wcs.empty()) map_json["sky"] = lens_centre_on_sky(obs, best);
  // The derived quantities of the summary's `derived` list at the MAP.
  nlohmann::json derived_map = nlohmann::json::object();
  const DerivedDraws at_map = derived_draws(x_map.unsqueeze(0), names, {});
  for (size_t k = 0; k < at_map.names.size(); ++k) {
    derived_map[at_map.names[k]] = at_map.values[0][static_cast<int64_t>(k)].item<double>();
  }
  if (std::isfinite(magnification_map)) derived_map["magnification"] = magnification_map;
  map_json["derived"] = derived_map;
  const auto x_starts = space.constrained(r.starts_u.to(opts)).to(torch::kCPU, torch::kFloat64);
  for (int64_t k = 0; k < x_starts.size(0); ++k) {
    nlohmann::json s{{"log_posterior", number_or_null(r.starts_log_p[k].item<double>())}};
    for (const auto& n : space.free_names()) {
      if (n.find("z_") == 0 || n.find("pixels_") == 0) continue;
      const auto it = std::find(names.begin(), names.end(), n);
      if (it != names.end()) s[n] = x_starts[k][it - names.begin()].item<double>();
    }
    starts.push_back(s);
  }
  map_json["best_starts"] = starts;
  map_json["seconds"] = r.map_seconds;
  // Search rounds this lens took part in (docs/fit.md, "Search rounds"): above 1, its first
  // search left a reduced chi-square above the threshold.
  map_json["search_rounds"] = r.search_rounds >= 0 ? nlohmann::json(r.search_rounds) : nullptr;
  // A simulation's truth, scored by the same posterior: a MAP below it has missed the truth's mode
  // (a search failure), a MAP above it found a mode the data prefer (a degeneracy), and the truth's
  // reduced chi-square checks that the simulated noise is the noise the fit assumes.
  std::optional<double> lp_truth;
  double magnification_truth = NAN;
  if (const auto point = model::truth_point(cfg.model, obs.truth)) {
    std::map<std::string, torch::Tensor> on_device;
    for (const auto& [n, v] : *point) on_device[n] = v.to(opts);
    const auto u_truth = space.pack(on_device);
    lp_truth = post.log_prob(u_truth).item<double>();
    magnification_truth = draw_products(post, u_truth, compute).magnification[0].item<double>();
    const double chi2_truth = post.chi_square(u_truth).item<double>() / static_cast<double>(dof);
    map_json["truth"] = {{"log_posterior", number_or_null(*lp_truth)},
                         {"reduced_chi_square", number_or_null(chi2_truth)}};
    spdlog::info(
        "{}: log posterior at the MAP {:.1f}, at the simulation's truth {:.1f} (reduced "
        "chi-square {:.3f} and {:.3f})",
        cfg.name, r.map_log_p, *lp_truth, reduced_chi2, chi2_truth);
  }
  write_text_atomically(dir + "/map.json", map_json.dump(2) + "\n");

  // Summary (with truth, error and z-score for mocks) and warnings. Every row gets the central
  // 68 % and 95 % intervals (q16, q84, q2.5, q97.5), mocks' rows whether they hold the truth.
  const auto rows = samplers::summarize(draws, names);
  nlohmann::json summary = samplers::summary_json(rows);
  annotate_summary(summary, x_all, names, truth);
  // Derived quantities, summarised like the parameters (summary.json's "derived"): the axis ratio
  // q_X = (1 - |e|) / (1 + |e|) of each free (e1_X, e2_X) pair and the shear strength
  // gamma_ext_X = |(gamma1_X, gamma2_X)| (lenstronomy's param_util.ellipticity2phi_q and
  // shear_cartesian2polar). Angles are left out: near q = 1 or gamma_ext = 0 they wrap around.
  DerivedDraws derived = derived_draws(x_all, names, truth);
  // The source's total magnification per draw: the lensed source's flux in the model image over
  // its own (physics::source_magnification), left out where a free pixel grid has no positive flux.
  const DrawProducts per_draw = draw_products(post, u_all, compute, &source);
  const torch::Tensor& magnification = per_draw.magnification;
  if (torch::isfinite(magnification).all().item<bool>()) {
    derived.values = derived.values.defined()
                         ? torch::cat({derived.values, magnification.unsqueeze(1)}, 1)
                         : magnification.unsqueeze(1);
    derived.names.push_back("magnification");
    if (std::isfinite(magnification_truth)) derived.truth["magnification"] = magnification_truth;
  }
  nlohmann::json derived_summary = nlohmann::json::array();
  std::vector<samplers::SummaryRow> derived_rows;
  if (!derived.names.empty()) {
    derived_rows = samplers::summarize(derived.values.reshape({C, N, -1}), derived.names);
    derived_summary = samplers::summary_json(derived_rows);
    annotate_summary(derived_summary, derived.values, derived.names, derived.truth);
  }
  const double round_threshold =
      search_round_thresholds(torch::full({1}, static_cast<double>(dof), torch::kFloat64), cfg.map)
          .item<double>();
  auto by_brightness_given = by_brightness;  // the warning's bins, with the noise as given too
  for (auto& b : by_brightness_given) b.mean_square *= given_variance;
  auto warnings = fit_warnings(rows, space, r.chains, reduced_chi2 * given_variance, dof,
                               round_threshold, C * N, by_brightness_given, chi2_label);
  if (auto w = correlated_noise_warning(correlation_quiet, obs.noise_scale)) {
    warnings.push_back(*w);
  }
  // The outputs' posterior is built again from the config, so it must give the MAP the log
  // posterior the fit found; where it does not, the images and chi-squares above are not the
  // fit's. Session 56's SLACS fit on a pixel grid traced its grid here from another optimum's lens
  // light than the chains had, and reported a reduced chi-square of 8.0 for a MAP of 0.23.
  // Every fit of the test suite (float32 and float64) stayed within the tolerance when this was an
  // exception (session 56).
  const double map_lp_outputs = post.log_prob(map_u)[0].item<double>();
  if (std::isfinite(r.map_log_p) &&
      !(std::abs(map_lp_outputs - r.map_log_p) <= std::max(1.0, 1e-4 * std::abs(r.map_log_p)))) {
    const std::string text = "internal inconsistency: the outputs' log posterior at the MAP is " +
                             fmt("%.2f", map_lp_outputs) + ", the fit's " +
                             fmt("%.2f", r.map_log_p) +
                             "; the model, residuals and chi-squares written may not be the "
                             "fit's (please report this)";
    spdlog::error("{}: {}", cfg.name, text);
    warnings.push_back(text);
  }
  // The chains in another mode than a simulation's truth: the MAP search missed the truth's mode,
  // which R-hat and ESS cannot show when every chain sits in the wrong one (`bench fit`'s mock in
  // session 18: all four chains at a lens 0.13" off the true centre, their best draw 107 nats below
  // the truth; docs/benchmarks.md, session 19).
  const double truth_above =
      lp_truth ? samplers::log_density_above_draws(*lp_truth, r.chains.log_density, D) : NAN;
  if (truth_above > 0) {
    const double over_best_draw = truth_above + 0.5 * static_cast<double>(D);  // undo the margin
    warnings.push_back("the simulation's truth has log posterior " + fmt("%.1f", *lp_truth) + ", " +
                       fmt("%.1f", over_best_draw) + " nats above the best draw's and " +
                       fmt("%.1f", *lp_truth - r.map_log_p) +
                       " above the MAP's: the chains sit in another mode than the truth's, which "
                       "the MAP search missed (raise map.starts or map.placement_starts)");
  }
  // The arcs fitted worse than the noise allows while the whole image may look fine: more than 5
  // sd (sqrt(2 / n) each) above 1 and above 1.25.
  const double arc_chi2_given = arc_chi2 * given_variance;
  if (std::isfinite(arc_chi2_given) && arc_chi2_given > 1.25 &&
      (arc_chi2_given - 1.0) / std::sqrt(2.0 / static_cast<double>(arc_pixels)) > 5.0) {
    warnings.push_back("the arcs are fitted worse than the noise: " + chi2_label + " " +
                       fmt("%.3f", arc_chi2_given) + " over the " + std::to_string(arc_pixels) +
                       " pixels where the lensed source exceeds the noise (the whole image: " +
                       fmt("%.3f", reduced_chi2 * given_variance) +
                       "): the source or lens model lacks structure the arcs have, or the noise "
                       "map leaves out noise on the arcs (the source's Poisson noise)");
  }
  if (grid_extent && grid_extent->warning) warnings.push_back(*grid_extent->warning);
  warnings.insert(warnings.end(), position_warnings.begin(), position_warnings.end());
  // A prior that holds the source down: the fit cannot reach the data, and the chi-square warning
  // alone does not say why (a PIXELATED source of peak 394 counts/s/arcsec^2 under sigma 1 ended
  // at reduced chi-square 10.4; docs/fit.md, "A prior that holds the source down").
  // s has sd 1 / sqrt(<m, m>): a source barely above the noise is not warned of by chance.
  if (source_flux_scale > kSourceFluxScaleWarn &&
      (source_flux_scale - 1.0) * std::sqrt(arc_norm) > 5.0) {
    std::string advice = "widen the prior of the source's amp";
    if (cfg.model.decoded_kind == "PIXELATED") {
      const auto& m = cfg.model;
      const auto z = un.values.find(m.latent_block), sigma = un.values.find(m.pixel_sigma_name);
      const bool known = z != un.values.end() && sigma != un.values.end();
      const double sigma_map = known ? sigma->second.max().item<double>() : NAN;
      const double brightest =
          known ? m.decoder(z->second).abs().max().item<double>() * sigma_map : NAN;
      const std::string suggestion = fmt("%.3g", source_flux_scale * brightest);
      if (!m.has_free_pixel_strength()) {
        advice = "the PIXELATED source's prior (sigma " + fmt("%g", sigma_map) +
                 (m.pixel_regularisation == "identity" ? " per pixel" : "") +
                 ", in surface brightness) is too narrow; set " + m.decoded_path +
                 "/sigma to about " + suggestion +
                 " (the brightest pixel's value at MAP times that factor), or give it a prior";
      } else {
        advice = "the prior of " + m.pixel_sigma_name + " (" + fmt("%g", sigma_map) +
                 " at MAP) holds it down; widen it to reach about " + suggestion;
      }
    }
    warnings.push_back("the data prefer a lensed source " + fmt("%.2f", source_flux_scale) +
                       " times as bright as the MAP's: a prior holds the source down; " + advice);
  }
  // Each chain on its own (app/chain_summary.h): the scalar parameters (not latents or a grid's
  // pixels) and the derived quantities, and a warning when a chain sits in a lower mode.
  std::vector<std::string> scalar_names;
  std::vector<int64_t> scalar_columns;
  for (int64_t d = 0; d < D; ++d) {
    if (names[static_cast<size_t>(d)].find('[') != std::string::npos) continue;
    scalar_names.push_back(names[static_cast<size_t>(d)]);
    scalar_columns.push_back(d);
  }
  torch::Tensor scalar_draws = draws.index_select(2, torch::tensor(scalar_columns, torch::kLong));
  if (!derived.names.empty()) {
    scalar_draws = torch::cat({scalar_draws, derived.values.reshape({C, N, -1})}, 2);
    scalar_names.insert(scalar_names.end(), derived.names.begin(), derived.names.end());
  }
  const ChainSummary per_chain = summarize_chains(scalar_draws, scalar_names, r.chains.log_density,
                                                  r.chains.divergent, r.chains.step_size);
  if (const auto split = split_chains_warning(per_chain)) warnings.push_back(*split);
  for (const auto& w : warnings) spdlog::warn("{}: {}", cfg.name, w);
  nlohmann::json summary_file;
  summary_file["lens"] = cfg.name;
  summary_file["config"] = cfg.path;
  summary_file["data"] = obs.description;
  summary_file["parameters"] = summary;
  summary_file["derived"] = derived_summary;
  summary_file["chains"] = chains_json(per_chain);
  summary_file["reduced_chi_square_map"] = reduced_chi2;
  summary_file["noise_scale"] = obs.noise_scale;  // the widths above include it
  summary_file["poisson_term"] = obs.poisson_from_model ? "model" : "image";
  summary_file["reduced_chi_square_arcs"] = number_or_null(arc_chi2);
  summary_file["divergences"] = samplers::count_divergences(r.chains.divergent);
  summary_file["ebfmi"] = samplers::ebfmi(r.chains.energy);
  summary_file["gradient_evaluations"] = r.gradient_evaluations;
  summary_file["seconds"] = {
      {"map", r.map_seconds}, {"warmup", r.warmup_seconds}, {"sampling", r.sampling_seconds}};
  summary_file["lenses_in_batch"] = r.batch_size;
  summary_file["warnings"] = warnings;
  summary_file["data_warnings"] = obs.warnings;
  write_text_atomically(dir + "/summary.json", summary_file.dump(2) + "\n");
  std::string text = cfg.name + " (" + obs.description + ")\n";
  // A noise_scale sets every width below: say so before them.
  if (obs.noise_scale != 1.0) {
    text += "every pixel's sigma times data.noise_scale " + fmt("%g", obs.noise_scale) +
            (obs.noise_scale_auto ? " (\"auto\": measured on the MAP's residuals)" : "") +
            " (noise correlated between pixels, docs/fit.md \"Correlated noise\"); the widths "
            "below include it\n";
  }
  if (obs.poisson_from_model) {
    text += obs.model_noise_formula() +
            " at each point of the fit (data.poisson_term \"model\"); the residuals' sigma is "
            "the MAP model's\n";
  }
  text += "\n" + samplers::summary_text(rows);
  if (!derived_rows.empty())
    text +=
        "\nDerived (q = (1 - |e|) / (1 + |e|), gamma_ext = |(gamma1, gamma2)|, magnification = "
        "the lensed source's flux in the model image over the source's own):\n" +
        samplers::summary_text(derived_rows);
  if (!truth.empty()) {
    std::vector<samplers::SummaryRow> all = rows;
    all.insert(all.end(), derived_rows.begin(), derived_rows.end());
    std::map<std::string, double> all_truth = truth;
    all_truth.insert(derived.truth.begin(), derived.truth.end());
    text += "\nAgainst the truth of the simulation:\n" + truth_table(all, all_truth);
  }
  const std::string chains_table = chains_text(per_chain);
  if (!chains_table.empty()) text += "\nPer chain (means over its draws):\n" + chains_table;
  text += "\nreduced chi-square at MAP: " + fmt("%.4f", reduced_chi2);
  if (obs.noise_scale != 1.0) {
    text += " (" + fmt("%.4f", reduced_chi2 * given_variance) +
            " with sigma as given, before data.noise_scale)";
  }
  text += "\n";
  if (std::isfinite(arc_chi2)) {
    text += "reduced chi-square on the arcs at MAP: " + fmt("%.4f", arc_chi2) + " (" +
            std::to_string(arc_pixels) + " pixels where the lensed source exceeds the noise)\n";
  }
  for (const auto& w : warnings) text += "WARNING: " + w + "\n";
  write_text_atomically(dir + "/summary.txt", text);
  write_text_atomically(dir + "/warnings.json", nlohmann::json(warnings).dump(2) + "\n");

  // FITS images.
  write_fits_image(dir + "/data.fits",
                   torch::where(obs.mask, obs.image, torch::full_like(obs.image, NAN)),
                   grid_cards(obs.grid, obs.sky_wcs, "data (masked pixels NaN)"));
  write_fits_image(dir + "/model.fits", model_img,
                   grid_cards(obs.grid, obs.sky_wcs, "model image at MAP"));
  write_fits_image(
      dir + "/residuals.fits", resid,
      grid_cards(obs.grid, obs.sky_wcs, "(data - model) / sigma at MAP, NaN where masked"));
  // The MAP model as a `dslens simulate` config and as lenstronomy's kwargs (app/model_export.h).
  // Its noise block: a simulation's own; else the data's background_rms + exposure_time where the
  // config gives them, or its median noise sigma as a background, and, where the quiet pixels'
  // correlation is significant (as for the warning), its kernel FWHM.
  physics::NoiseModel noise{NAN, 0.0, 0.0};
  if (obs.noise_model) noise = *obs.noise_model;
  if (obs.truth.contains("noise")) {
    const auto& n = obs.truth["noise"];
    const auto truth_value = [&n](const char* key, double otherwise) {
      return n.value(key, nlohmann::json::object()).value("value", otherwise);
    };
    noise.background_rms = truth_value("background_rms", NAN);
    noise.exposure_time = truth_value("exposure_time", 0.0);
    noise.correlation_fwhm = truth_value("correlation_fwhm", 0.0);
  }
  if (!std::isfinite(noise.background_rms)) {
    // The data's own sigma, before a correlated-noise noise_scale widened it.
    noise.background_rms =
        obs.sigma.masked_select(obs.mask).median().item<double>() / obs.noise_scale;
  }
  const double measured_fwhm = correlation_kernel_fwhm(correlation_quiet);
  if (!obs.truth.contains("noise") && correlation_is_significant(correlation_quiet) &&
      std::isfinite(measured_fwhm)) {
    noise.correlation_fwhm = measured_fwhm;
  }
  write_exported_model(
      export_model(m, 0, noise, cfg.data.image_positions, {obs.sigma / obs.noise_scale, obs.mask}),
      dir + "/map_model");
  const auto source_cards = [&source](const std::string& content) {
    return std::vector<FitsCard>{{"CONTENT", content, ""},
                                 {"PIXSCALE", source.pixel, "arcsec per pixel"},
                                 {"X_MIN", source.extent[0], "left edge, arcsec"},
                                 {"Y_MIN", source.extent[2], "bottom edge, arcsec"}};
  };
  write_fits_image(dir + "/source.fits", source.image,
                   source_cards("source-plane surface brightness at MAP"));
  // The source's posterior: its mean and sd over the draws, on the same grid (a VAE source's
  // morphology with its uncertainty).
  write_fits_image(dir + "/source_mean.fits", per_draw.source_mean,
                   source_cards("source-plane surface brightness, posterior mean over the draws"));
  write_fits_image(dir + "/source_sd.fits", per_draw.source_sd,
                   source_cards("source-plane surface brightness, posterior sd over the draws"));

  // The report figure.
  FitReportInputs rep;
  rep.title = cfg.name + "   reduced chi2 = " + fmt("%.3f", reduced_chi2) +
              (std::isfinite(arc_chi2) ? " (arcs " + fmt("%.3f", arc_chi2) + ")" : "") +
              (obs.noise_scale != 1.0 ? ", sigma x " + fmt("%.3g", obs.noise_scale) +
                                            (obs.noise_scale_auto ? " (auto)" : "")
                                      : "") +
              "   " + std::to_string(C) + " chains x " + std::to_string(N) +
              " draws   MAP: " + r.map_origin;
  rep.grid = obs.grid;
  rep.data = obs.image;
  rep.model = model_img;
  rep.normalized_residuals = resid;
  rep.mask = obs.mask;
  rep.source = source.image;
  // A free pixel-grid strength has no finite joint mode: the MAP's sigma runs up and its source is
  // barely regularised (docs/fit.md, "Pixel grids"); the report shows the posterior mean instead.
  if (cfg.model.has_free_pixel_strength() && per_draw.source_mean.defined()) {
    rep.source = per_draw.source_mean;
    rep.source_title = "source (posterior mean) + caustics";
  }
  rep.source_extent = source.extent;
  rep.caustics = cc.caustic;
  rep.critical = cc.critical;
  rep.image_positions = image_positions;
  rep.traced_positions = traced_positions;
  rep.convergence = cc.convergence;
  std::vector<int64_t> cols;
  for (const auto& n : cfg.model.free_mass_parameters()) {
    const auto it = std::find(names.begin(), names.end(), n);
    if (it != names.end() && cols.size() < 8) {
      cols.push_back(it - names.begin());
      rep.corner_names.push_back(n);
      const auto t = truth.find(n);
      rep.corner_truths.push_back(t == truth.end() ? std::nullopt
                                                   : std::optional<double>(t->second));
    }
  }
  if (!cols.empty()) rep.corner_draws = x_all.index_select(1, torch::tensor(cols));
  rep.notes = warnings;
  write_fit_report(dir + "/report.png", rep);

  return {{"lens", cfg.name},
          {"folder", dir},
          {"reduced_chi_square", reduced_chi2},
          {"divergences", summary_file["divergences"]},
          {"warnings", warnings.size()}};
}

}  // namespace dslens::app

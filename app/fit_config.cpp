#include "fit_config.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "dslens/core/errors.h"

namespace fs = std::filesystem;

namespace dslens::app {

void parse_fit_settings(const ConfigNode& root, MapSettings& map, SamplerChoice& sampler) {
  if (root.has("map")) {
    const ConfigNode m = root.at("map");
    m.allow_only({"starts",
                  "adam_iterations",
                  "learning_rate",
                  "blur_pixels",
                  "lbfgs_iterations",
                  "seed",
                  "placement",
                  "placement_blur_pixels",
                  "placement_adam_iterations",
                  "placement_lbfgs_iterations",
                  "inversion_pixels",
                  "inversion_half_width",
                  "source_adam_iterations",
                  "source_lbfgs_iterations",
                  "joint_learning_rate",
                  "anneal_noise",
                  "placement_starts",
                  "backproject",
                  "newton_iterations",
                  "newton_starts",
                  "retry_rounds",
                  "retry_reduced_chi_square",
                  "retry_chi_square_sigma"});
    map.starts = m.integer_or("starts", map.starts, Range::closed(1, 100000));
    map.adam_iterations =
        m.integer_or("adam_iterations", map.adam_iterations, Range::closed(0, 1e7));
    map.learning_rate = m.number_or("learning_rate", map.learning_rate, Range::positive());
    if (m.has("blur_pixels")) map.blur_pixels = m.numbers("blur_pixels", Range::closed(0.0, 100.0));
    map.lbfgs_iterations =
        m.integer_or("lbfgs_iterations", map.lbfgs_iterations, Range::closed(0, 1e7));
    map.seed = static_cast<uint64_t>(m.integer_or("seed", 0, Range::closed(0, 9.0e15)));
    map.placement = m.choice_or("placement", map.placement, {"sersic", "inversion", "none"});
    map.backproject = m.boolean_or("backproject", map.backproject);
    map.placement_starts =
        m.integer_or("placement_starts", map.placement_starts, Range::closed(0, 1000000));
    map.newton_iterations =
        m.integer_or("newton_iterations", map.newton_iterations, Range::closed(0, 10000));
    map.newton_starts = m.integer_or("newton_starts", map.newton_starts, Range::closed(1, 100000));
    map.retry_rounds =
        m.integer_or("retry_rounds", map.retry_rounds, Range::closed(0, kMaxRetryRounds));
    map.retry_reduced_chi_square =
        m.number_or("retry_reduced_chi_square", map.retry_reduced_chi_square, Range::positive());
    map.retry_chi_square_sigma =
        m.number_or("retry_chi_square_sigma", map.retry_chi_square_sigma, Range::closed(0.0, 1e6));
    map.placement_adam_iterations = m.integer_or(
        "placement_adam_iterations", map.placement_adam_iterations, Range::closed(0, 1e7));
    map.placement_lbfgs_iterations = m.integer_or(
        "placement_lbfgs_iterations", map.placement_lbfgs_iterations, Range::closed(0, 1e7));
    map.inversion_pixels =
        m.integer_or("inversion_pixels", map.inversion_pixels, Range::closed(3, 64));
    map.inversion_half_width =
        m.number_or("inversion_half_width", map.inversion_half_width, Range::positive());
    map.placement_blur_pixels =
        m.number_or("placement_blur_pixels", map.placement_blur_pixels, Range::closed(0.0, 100.0));
    map.source_adam_iterations =
        m.integer_or("source_adam_iterations", map.source_adam_iterations, Range::closed(0, 1e7));
    map.source_lbfgs_iterations =
        m.integer_or("source_lbfgs_iterations", map.source_lbfgs_iterations, Range::closed(0, 1e7));
    map.joint_learning_rate =
        m.number_or("joint_learning_rate", map.joint_learning_rate, Range::positive());
    if (m.has("anneal_noise")) {
      map.anneal_noise = m.numbers("anneal_noise", Range::closed(1.0, 1e6));
      if (!std::is_sorted(map.anneal_noise.rbegin(), map.anneal_noise.rend())) {
        m.fail_at("anneal_noise", "got " + m.at("anneal_noise").value().dump() +
                                      "; allowed: noise factors >= 1 in decreasing order "
                                      "(the largest first)");
      }
    }
  }
  if (root.has("sampler")) {
    const ConfigNode s = root.at("sampler");
    s.allow_only({"algorithm", "chains", "warmup", "draws", "max_depth", "target_accept", "metric",
                  "metric_prior_count", "seed", "num_steps", "cuda_graphs", "adaptation",
                  "curvature_metric", "stray_nats", "retry_rounds", "out_of_step"});
    sampler.algorithm = s.choice_or("algorithm", sampler.algorithm, {"nuts", "hmc"});
    sampler.chains = s.integer_or("chains", sampler.chains, Range::closed(1, 100000));
    sampler.warmup = s.integer_or("warmup", sampler.warmup, Range::closed(0, 1e7));
    sampler.draws = s.integer_or("draws", sampler.draws, Range::closed(1, 1e7));
    sampler.max_depth =
        static_cast<int>(s.integer_or("max_depth", sampler.max_depth, Range::closed(1, 30)));
    sampler.target_accept =
        s.number_or("target_accept", sampler.target_accept, Range::open(0.0, 1.0));
    sampler.metric = s.choice_or("metric", sampler.metric, {"auto", "diag", "dense"});
    sampler.metric_prior_count =
        s.number_or("metric_prior_count", sampler.metric_prior_count, Range::closed(0.0, 1e9));
    sampler.seed = static_cast<uint64_t>(s.integer_or("seed", 0, Range::closed(0, 9.0e15)));
    sampler.num_steps = s.integer_or("num_steps", sampler.num_steps, Range::closed(1, 100000));
    sampler.cuda_graphs = s.boolean_or("cuda_graphs", sampler.cuda_graphs);
    sampler.adaptation = s.choice_or("adaptation", sampler.adaptation, {"per_lens", "per_chain"});
    sampler.curvature_metric = s.boolean_or("curvature_metric", sampler.curvature_metric);
    sampler.stray_nats = s.number_or("stray_nats", sampler.stray_nats, Range::closed(0.0, 1e9));
    sampler.retry_rounds =
        s.integer_or("retry_rounds", sampler.retry_rounds, Range::closed(0, kMaxRetryRounds));
    if (s.has("out_of_step")) sampler.out_of_step = s.boolean("out_of_step");
  }
}

namespace {

void warn_of(FitConfig& c, const std::string& message) {
  spdlog::warn("{}: {}", c.path, message);
  c.data.warnings.push_back(message);
}

// A model that samples the pixels unlike the simulation it fits cannot reproduce the data even at
// the truth: the difference is systematic, larger than the noise near a steep lens light or a
// compact source (a Sersic n = 4 lens light simulated with supersampling 2 and fitted with 1 puts
// the truth's reduced chi-square at 1.06 over 6,400 pixels, 3.5 sd above 1, and z-scores up to 5).
// The default of 1 is for real data, so a fit of a simulation made otherwise says so.
void warn_of_other_supersampling(FitConfig& c) {
  const json& t = c.data.truth;
  if (!t.is_object() || !t.contains("grid") || !t["grid"].is_object()) return;
  const json& g = t["grid"];
  if (!g.contains("supersampling")) return;
  const json& v = g["supersampling"].is_object() ? g["supersampling"].value("value", json())
                                                 : g["supersampling"];
  if (!v.is_number()) return;
  const auto simulated = static_cast<int64_t>(v.get<double>());
  if (simulated == c.model.supersampling) return;
  warn_of(c, "the simulation was made with supersampling " + std::to_string(simulated) +
                 " but /model/supersampling is " + std::to_string(c.model.supersampling) +
                 (c.config.at("model").contains("supersampling") ? "" : " (the default)") +
                 ": the model cannot reproduce the data exactly, even at the truth; set "
                 "/model/supersampling to " +
                 std::to_string(simulated) + " to fit with the simulation's forward model");
}

// The same for a VAE source read with another interpolation or flux normalisation than the
// simulation's (a bicubic stamp read bilinearly differs by up to 0.22 of its peak, session 45's
// export test). Both configs take the same defaults (model::decoded_source_light_type), so only
// a setting given in one of them can differ.
void warn_of_other_vae_reading(FitConfig& c) {
  const json& t = c.data.truth;
  if (!t.is_object() || !t.contains("config") || !t["config"].is_object()) return;
  const json& simulated = t["config"].value("source", json::array());
  const json& fitted = c.config.at("model").value("source", json::array());
  if (!simulated.is_array() || !fitted.is_array()) return;
  for (size_t i = 0; i < std::min(simulated.size(), fitted.size()); ++i) {
    const json &a = simulated[i], &b = fitted[i];
    if (!a.is_object() || !b.is_object() || a.value("type", "") != "VAE" ||
        b.value("type", "") != "VAE")
      continue;
    const std::string path = "/model/source/" + std::to_string(i);
    const auto text = [](const json& o, const char* key, const json& fallback) {
      const json v = o.value(key, fallback);
      return v.is_string() ? v.get<std::string>() : v.dump();
    };
    for (const auto& [key, fallback] :
         {std::pair<const char*, json>{"interpolation", "bicubic"}, {"normalise_flux", true}}) {
      const std::string sim = text(a, key, fallback), fit = text(b, key, fallback);
      if (sim == fit) continue;
      warn_of(c, "the simulation read its VAE source " + std::to_string(i) + " with " + key + " " +
                     sim + " but " + path + "/" + key + " is " + fit +
                     ": the model cannot reproduce the data exactly, even at the truth; set it "
                     "to " +
                     sim + " to fit with the simulation's forward model");
    }
  }
}

// A simulation's truth that its fit fixes elsewhere, or whose prior excludes it or puts it far in a
// tail, cannot be recovered:
// the intervals of a fit whose prior is not the population the truth came from are not calibrated
// (the mock study's coverage assumes that they are, docs/mock_study.md), and a truth outside the
// support is never inside them. Said at load, so that --check finds it before hours of fitting.
// A tail is 4 prior sds from the prior's centre (a normal's two-sided 6e-5; for a lognormal in
// log x): priors centred far from a mock's truth, such as a lognormal amplitude on the wrong
// scale, are the usual cause.
void warn_of_truths_the_priors_exclude(FitConfig& c) {
  constexpr double kTailSds = 4.0;
  // Only where the fitted profile is the simulated one: a Sersic source's amp is not a VAE's.
  const auto same_profile = [&c](const model::FitModel::Origin& o) {
    const json fitted = c.config.at("model").value(o.list, json::array());
    const json simulated = c.data.truth.value(o.list, json::array());
    const auto i = static_cast<size_t>(o.index);
    return fitted.is_array() && simulated.is_array() && i < fitted.size() && i < simulated.size() &&
           fitted[i].is_object() && simulated[i].is_object() &&
           fitted[i].value("type", "") == simulated[i].value("type", "?");
  };
  for (const auto& [name, value] : model::truth_values(c.model, c.data.truth)) {
    const auto o = c.model.origins.find(name);
    if (o == c.model.origins.end() || !same_profile(o->second)) continue;
    const std::string path =
        "/model/" + o->second.list + "/" + std::to_string(o->second.index) + "/" + o->second.param;
    char text[160];
    const auto prior = c.model.space.prior(name);
    if (!prior) {
      // Fixed elsewhere than the truth (a tie has no origin): the model cannot reach the image.
      // Rounding of q, phi derived from e1, e2 stays far below the tolerance.
      const double fixed = c.model.space.range(name).first;
      if (std::abs(fixed - value) <= 1e-6 * (1.0 + std::abs(value))) continue;
      std::snprintf(text, sizeof text, "is %.6g, but the config fixes it at %.6g", value, fixed);
      warn_of(c, "the simulation's truth of " + name + " (" + path + ") " + text +
                     ": the model cannot reproduce the data exactly, even at the truth; free it "
                     "or fix it at the truth");
      continue;
    }
    const json p = prior->to_json();
    if (!(value > prior->lower() && value < prior->upper()) &&
        !(std::isinf(prior->lower()) && std::isinf(prior->upper()))) {
      std::snprintf(text, sizeof text, "%.6g lies outside its prior's support (%.6g, %.6g)", value,
                    prior->lower(), prior->upper());
      warn_of(c, "the simulation's truth of " + name + " (" + path + "), " + text +
                     ": the fit cannot recover it; widen the prior to hold it");
      continue;
    }
    const std::string kind = p.value("prior", "");
    double sds = 0.0;
    if (kind == "normal" || kind == "truncated_normal")
      sds = (value - p.at("mean").get<double>()) / p.at("sigma").get<double>();
    else if (kind == "lognormal")
      sds = (std::log(value) - p.at("mu").get<double>()) / p.at("sigma").get<double>();
    if (std::abs(sds) < kTailSds) continue;
    std::snprintf(text, sizeof text, "%.6g lies %.1f prior sds %s the prior's centre", value,
                  std::abs(sds), sds > 0 ? "above" : "below");
    warn_of(c, "the simulation's truth of " + name + " (" + path + "), " + text + " (" + p.dump() +
                   "): the prior pulls the fit away from it; centre the prior nearer");
  }
}

}  // namespace

FitConfig load_fit_config(const std::string& path, const Compute& compute) {
  FitConfig out;
  out.path = path;
  out.name = fs::path(path).stem().string();
  out.config = load_json_file(path);
  const std::string base = fs::absolute(path).parent_path().string();
  const ConfigNode root = ConfigNode::root(out.config);
  root.require_object();
  root.allow_only({"comment", "data", "model", "map", "sampler"});
  if (root.has("comment")) root.string("comment");
  out.data = model::load_observation(root.at("data"), base);
  out.model = model::parse_fit_model(root.at("model"), base, compute);
  if (out.data.poisson_from_model && out.model.decoded_kind == "PIXELATED") {
    // Its pixels are solved linearly for a fixed sigma (model/pixel_source_solve.h).
    throw ConfigError("/data/poisson_term",
                      "\"model\" is not allowed with the PIXELATED source at " +
                          out.model.decoded_path +
                          ", whose pixels are solved linearly for a fixed noise; allowed: "
                          "\"image\" (the default) with a PIXELATED source");
  }
  warn_of_other_supersampling(out);
  warn_of_other_vae_reading(out);
  warn_of_truths_the_priors_exclude(out);
  parse_fit_settings(root, out.map, out.sampler);
  return out;
}

std::string batch_key(const FitConfig& c) {
  json key;
  key["model"] = c.config.at("model");
  key["map"] = c.config.value("map", json::object());
  key["sampler"] = c.config.value("sampler", json::object());
  key["grid"] = {c.data.grid.ny, c.data.grid.nx, c.data.grid.pixel_scale, c.data.grid.ra_at_xy_0,
                 c.data.grid.dec_at_xy_0};
  key["psf"] = c.data.psf ? json(c.data.psf->sizes().vec()) : json(nullptr);
  // Relative checkpoint paths name the same network only from the same folder.
  key["folder"] = fs::absolute(c.path).parent_path().string();
  return key.dump();
}

std::vector<std::string> expand_config_paths(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  for (const auto& a : args) {
    if (fs::is_directory(a)) {
      std::vector<std::string> found;
      for (const auto& e : fs::directory_iterator(a)) {
        if (e.is_regular_file() && e.path().extension() == ".json") found.push_back(e.path());
      }
      std::sort(found.begin(), found.end());
      if (found.empty()) throw InputError("folder '" + a + "' holds no *.json fit config");
      out.insert(out.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(a)) {
      out.push_back(a);
    } else {
      throw InputError("config '" + a + "' does not exist (expected a JSON file or a folder)");
    }
  }
  if (out.empty()) throw InputError("no config given; usage: dslens fit CONFIG... --out DIR");
  return out;
}

std::vector<std::string> shard(const std::vector<std::string>& paths, int64_t index,
                               int64_t count) {
  std::vector<std::string> out;
  for (size_t k = 0; k < paths.size(); ++k) {
    if (static_cast<int64_t>(k % static_cast<size_t>(count)) == index) out.push_back(paths[k]);
  }
  return out;
}

}  // namespace dslens::app

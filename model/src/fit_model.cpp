#include "dslens/model/fit_model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>

#include "dslens/core/errors.h"
#include "dslens/model/pixel_regulariser.h"
#include "dslens/nn/checkpoint.h"
#include "dslens/physics/light_profiles.h"
#include "dslens/physics/mass_profiles.h"
#include "dslens/physics/profile.h"

namespace fs = std::filesystem;

namespace dslens::model {
namespace fit_model_detail {

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

std::string suffix(const std::string& list) {
  if (list == "mass") return "_lens";
  if (list == "lens_light") return "_lens_light";
  return "_source_light";
}

// A pending {"same_as": NAME}: resolved once every component has declared its parameters.
struct Tie {
  ConfigNode node;
  std::vector<ProfileBinding>* list;  // indices, not pointers: the lists grow while parsing
  size_t index;
  std::string param;
  std::string target;
};

class Builder {
 public:
  Builder(FitModel& out, const std::string& base_dir, const Compute& compute)
      : out_(out), base_dir_(base_dir), compute_(compute) {}

  // One scalar parameter of a profile: fixed number, prior object or tie.
  // Absent, it is `fallback` (fixed) or else free with `default_prior`, or else an error.
  void scalar(const ConfigNode& node, const std::string& key, const std::string& name,
              ProfileBinding& binding, const std::string& param, const std::string& list,
              int64_t index, std::optional<double> fallback = std::nullopt,
              std::optional<Prior> default_prior = std::nullopt) {
    out_.origins[name] = {list, index, param};
    binding.params[param] = name;
    if (!node.has(key)) {
      if (default_prior) {
        out_.space.add_free(name, *default_prior, std::nullopt);
        return;
      }
      if (!fallback) node.at(key);  // "missing required key"
      out_.space.add_fixed(name, *fallback);
      return;
    }
    const ConfigNode v = node.at(key);
    if (v.value().is_number()) {
      out_.space.add_fixed(name, v.as_number());
    } else if (v.is_object() && v.has("same_as")) {
      v.allow_only({"same_as"});
      ties_.push_back({v, current_list_, current_list_->size() - 1, param, v.string("same_as")});
      out_.origins.erase(name);
    } else if (v.is_object()) {
      const Prior prior = Prior::parse(v);
      std::optional<double> init;
      if (v.has("init")) init = v.number("init");
      try {
        out_.space.add_free(name, prior, init);
      } catch (const InvalidArgument& e) {
        v.fail(e.what());
      }
    } else {
      v.fail("value " + json_excerpt(v.value()) +
             " is not allowed; expected a number (fixed), a prior object such as "
             "{\"prior\": \"uniform\", \"lower\": 0, \"upper\": 1}, or {\"same_as\": NAME}");
    }
  }

  void component(const ConfigNode& node, const std::string& list, int64_t index) {
    node.require_object();
    const bool is_mass = list == "mass";
    std::vector<std::string> types =
        is_mass ? physics::mass_profile_types() : physics::light_profile_types();
    types.erase(std::remove_if(types.begin(), types.end(), physics::is_pixelated_light),
                types.end());
    if (list == "source") {
      types.push_back("VAE");
      types.push_back("PIXELATED");
    }
    const std::string type = node.choice("type", types);
    if (list == "source" && type == "UNIFORM") node.fail_at("type", physics::kUniformSourceRefusal);
    const std::string sfx = suffix(list) + std::to_string(index);
    auto& bindings = is_mass ? out_.mass : (list == "lens_light" ? out_.lens_light : out_.source);
    bindings.push_back({type, {}});
    if (type == "VAE" || type == "PIXELATED") {
      bindings.back().type = decoded_source_light_type(node);
    }
    ProfileBinding& b = bindings.back();
    current_list_ = &bindings;
    const bool arcs = type == "PIXELATED" && on_arcs(node);

    std::vector<std::string> names;
    std::map<std::string, double> defaults;
    std::map<std::string, Prior> default_priors;
    if (type == "VAE") {
      names = {"center_x", "center_y", "scale", "phi_G", "amp"};
      defaults = {{"phi_G", 0.0}};
    } else if (type == "PIXELATED") {
      if (!arcs) {
        names = {"center_x", "center_y", "scale"};
        default_priors = pixel_grid_placement_priors(node);
        if (!default_priors.count("center_x")) defaults = {{"center_x", 0.0}, {"center_y", 0.0}};
      }
    } else {
      names = is_mass ? physics::make_mass_profile(type)->param_names()
                      : physics::make_light_profile(type)->param_names();
      if (is_mass) defaults = physics::mass_profile_defaults(type);
    }
    const bool elliptical = contains(names, "e1") && contains(names, "e2");
    std::vector<std::string> allowed = {"type"};
    allowed.insert(allowed.end(), names.begin(), names.end());
    if (elliptical) {
      allowed.push_back("q");
      allowed.push_back("phi");
    }
    if (type == "VAE") {
      allowed.push_back("checkpoint");
      allowed.push_back("normalise_flux");
    }
    if (type == "PIXELATED") {
      allowed.push_back("size");
      allowed.push_back("sigma");
      allowed.push_back("regularisation");
      allowed.push_back("placement");
      allowed.push_back("arcs_extent");
    }
    if (type == "VAE" || type == "PIXELATED") allowed.push_back("interpolation");
    node.allow_only(allowed);

    for (const auto& n : names) {
      if (elliptical && (n == "e1" || n == "e2")) continue;
      std::optional<double> fallback;
      if (defaults.count(n)) fallback = defaults.at(n);
      std::optional<Prior> default_prior;
      if (default_priors.count(n)) default_prior = default_priors.at(n);
      scalar(node, n, n + sfx, b, n, list, index, fallback, default_prior);
    }
    if (elliptical) {
      const bool has_q = node.has("q") || node.has("phi");
      const bool has_e = node.has("e1") || node.has("e2");
      if (has_q && has_e) {
        node.fail_at(node.has("q") ? "q" : "phi",
                     "give the ellipticity either as e1/e2 or as q/phi, not both");
      }
      if (!has_q && !has_e)
        node.fail_at("e1", "missing required key (give e1 and e2, or q and phi)");
      for (const std::string& n :
           has_q ? std::vector<std::string>{"q", "phi"} : std::vector<std::string>{"e1", "e2"}) {
        scalar(node, n, n + sfx, b, n, list, index);
      }
    }
    if (type == "VAE") {
      decoded_vae(node, sfx);
      // A simulation's truth.json gives the latents as the component's "z" (truth_point).
      out_.origins[out_.latent_block] = {list, index, "z"};
    }
    if (type == "PIXELATED") decoded_pixels(node, sfx, b, list, index, arcs);
  }

  // Whether a PIXELATED node's grid is placed on the traced arcs (model/arcs_placement.h):
  // "placement": "arcs", or by default when none of scale, center_x, center_y is given; "free"
  // makes them parameters (below). ConfigError for "arcs" with any of them given.
  bool on_arcs(const ConfigNode& node) const {
    const bool given = node.has("scale") || node.has("center_x") || node.has("center_y");
    const std::string placement =
        node.choice_or("placement", given ? "free" : kDefaultPixelGridPlacement, {"arcs", "free"});
    if (placement != "arcs") {
      if (node.has("arcs_extent"))
        node.fail_at("arcs_extent",
                     "only allowed with \"placement\": \"arcs\" (it sizes the grid placed on "
                     "the arcs); remove it, or remove the grid's scale and centre");
      return false;
    }
    for (const std::string k : {"scale", "center_x", "center_y"}) {
      if (node.has(k)) {
        node.fail_at(k,
                     "not allowed with \"placement\": \"arcs\" (the grid's centre and size "
                     "follow the arcs traced back through the lens); remove it, or set "
                     "\"placement\": \"free\" to make the placement parameters");
      }
    }
    return true;
  }

  // A pixel grid's placement when the config leaves it out: its pixel size free, so that its
  // extent follows the arcs traced back through each lens, and with a free size its centre too
  // (a fixed `scale` keeps the fixed centre 0, 0 of before). A grid of fixed extent wider than
  // the arcs' footprint biased the slope of docs/fit.md's 20 x 20 mock to 2.497 +- 0.020 (truth
  // 2.1): coarse pixels favour lenses that enlarge the source in the source plane. With the
  // placement free the posterior gave 2.114 +- 0.033 (docs/fit.md, "A pixel grid's extent").
  // The prior: the grid's side n * scale log-normal about 1.5" (a factor e either way at 1 sd);
  // the centre normal(0, 0.5") about the coordinates' origin. The centre is free too: held at 0,
  // 0 it biased the same mock's slope to 2.026 +- 0.032 (z -2.3), and a 32 x 32 grid's MAP needed
  // a second search round. A free centre has a mode every pixel (a grid shifted by one holds
  // nearly the same source): on 32 x 32 the chains sat in different ones (center_y R-hat 2.12)
  // while the lens parameters stayed right (slope 2.108 +- 0.030).
  std::map<std::string, Prior> pixel_grid_placement_priors(const ConfigNode& node) const {
    std::map<std::string, Prior> out;
    if (node.has("scale") && node.at("scale").value().is_number()) return out;
    const int64_t n = node.integer("size", Range::closed(2, 256));
    out.emplace("scale", Prior::lognormal(std::log(kPixelGridSide / double(n)), 1.0));
    out.emplace("center_x", Prior::normal(0.0, kPixelGridCentreSigma));
    out.emplace("center_y", Prior::normal(0.0, kPixelGridCentreSigma));
    return out;
  }

  void decoded_vae(const ConfigNode& node, const std::string& sfx) {
    if (!out_.decoded_kind.empty()) node.fail("only one VAE or PIXELATED source is supported");
    std::string path = node.string("checkpoint");
    if (!path.empty() && fs::path(path).is_relative() && !base_dir_.empty()) {
      path = (fs::path(base_dir_) / path).lexically_normal().string();
    }
    nn::LoadedVae loaded;
    try {
      loaded = nn::load_vae(path, compute_);
    } catch (const FileError& e) {
      node.fail_at("checkpoint", e.what());
    }
    // Only gradients with respect to z are needed: the weights are constants of the model.
    for (auto& p : loaded.vae->parameters()) p.set_requires_grad(false);
    out_.decoded_kind = "VAE";
    out_.latent_block = "z" + sfx;
    out_.decoded_size = loaded.meta.arch.stamp_size;
    out_.vae_checkpoint = path;
    out_.vae_description = {{"checkpoint", path},
                            {"architecture", loaded.meta.arch.to_json()},
                            {"pixel_norm", loaded.meta.norm.to_json()},
                            {"step", loaded.meta.step},
                            {"data", loaded.meta.data}};
    out_.space.add_standard_normal_block(out_.latent_block, loaded.meta.arch.latent_dim);
    nn::Vae vae = loaded.vae;
    const auto opts = compute_.options();
    // The decoded stamp rescaled to one total flux (nn::VaeImpl::decode_with_total): the data fix
    // the source's flux tightly, and with amp x sum(decode(z)) that constraint is a curved ridge
    // in (amp, z) whose direction turns with z; no constant metric follows it, and it set the
    // NUTS step size on the bench mock (docs/benchmarks.md, session 21). Normalised, amp alone
    // carries the flux.
    std::optional<double> total;
    if (node.boolean_or("normalise_flux", true)) {
      try {
        total = vae->source_flux_total();
      } catch (const InvalidArgument& e) {
        node.fail_at("normalise_flux", e.what());
      }
      out_.vae_description["flux_total"] = *total;
    }
    auto decode = [vae, opts, total](const torch::Tensor& z) mutable {
      return total ? vae->decode_with_total(z.to(opts), *total) : vae->decode(z.to(opts));
    };
    out_.decoder = decode;
    out_.encoder = [vae, opts, decode](const torch::Tensor& images) mutable {
      torch::NoGradGuard no_grad;
      const auto x = images.to(opts);
      const auto peak = x.flatten(1).amax(1).clamp_min(1e-30);
      const auto z = vae->encode(x / peak.view({-1, 1, 1})).first;
      const auto decoded_peak = decode(z).flatten(1).amax(1).clamp_min(1e-30);
      return FitModel::EncodedSource{z, peak / decoded_peak};
    };
  }

  // A free pixel grid s ~ N(0, sigma^2 C^-1), C the regulariser (model/pixel_regulariser.h): Suyu
  // et al. (2006)'s prior with strength lambda = 1 / sigma^2. Non-centred in C's eigenbasis:
  // s = sigma V (Lambda^-1/2 * Z) V^T with Z the block "pixels<sfx>" ~ N(0, I) as an n x n image,
  // so that the block stays standard normal (what the samplers' metric starts from) and sigma can
  // be free ("sigma<sfx>", the INTERPOL profile's amp) with its posterior setting the strength from
  // the data: the hierarchical form of Suyu et al.'s evidence. Centred (the pixels themselves as
  // coordinates, their prior depending on sigma) NUTS met a funnel on the 12 x 12 test mock:
  // E-BFMI 0.21-0.27, 377 leapfrog steps per iteration early in warmup and R-hat 1.031 for
  // sigma, against no warning and 44 s for the whole fit non-centred. The price: a free sigma has
  // no finite joint mode here (sigma up and Z down keep the image), so the MAP reports, and the
  // chains start from, the evidence's maximum instead (model/pixel_source_solve.h; docs/fit.md,
  // "Pixel grids").
  void decoded_pixels(const ConfigNode& node, const std::string& sfx, ProfileBinding& binding,
                      const std::string& list, int64_t index, bool placed_on_arcs) {
    if (!out_.decoded_kind.empty()) node.fail("only one VAE or PIXELATED source is supported");
    const int64_t n = node.integer("size", Range::closed(2, 256));
    const std::string kind =
        node.choice_or("regularisation", "identity", pixel_regulariser_kinds());
    if (kind != "identity" && n < 3) {
      node.fail_at("size",
                   "value 2 is not allowed with regularisation '" + kind + "'; allowed: 3 to 256");
    }
    const std::string sigma_name = "sigma" + sfx;
    if (node.has("sigma")) {
      const ConfigNode v = node.at("sigma");
      if (v.is_object() && v.has("same_as"))
        v.fail("a tie is not allowed here; allowed: a number (fixed) or a prior object");
      if (v.value().is_number() && !(v.as_number() > 0))
        v.fail("value " + json_excerpt(v.value()) + " is not allowed; allowed: > 0");
    }
    scalar(node, "sigma", sigma_name, binding, "amp", list, index, 1.0);
    // Matched to no simulation's parameter: neither an INTERPOL stamp's amp (the key it binds)
    // nor a GAUSSIAN source's width "sigma", which a simulation's truth.json would give it.
    out_.origins[sigma_name].param = "pixel_grid_sigma";
    // Nor is the grid's placement a simulation's INTERPOL stamp's: its pixel size and centre are
    // the grid's, not the source's (the 20 x 20 grid's 0.042" pixels read as 17 sd from the
    // mock's 0.02" stamp in the summary's truth table).
    for (const std::string p : {"scale", "center_x", "center_y"}) {
      const auto it = out_.origins.find(p + sfx);
      if (it != out_.origins.end()) it->second.param = "pixel_grid_" + p;
    }
    const auto prior = out_.space.prior(sigma_name);
    if (prior && prior->lower() < 0) {
      node.at("sigma").fail(
          "sigma's prior must be positive; allowed: lognormal, or uniform or truncated normal with "
          "lower >= 0");
    }
    const bool sigma_free = prior.has_value();
    const double sigma_fixed = out_.space.range(sigma_name).first;
    if (placed_on_arcs) {
      ArcsPlacementSpec arcs;
      arcs.source_index = size_t(index);
      arcs.size = n;
      // "arcs_extent": the grid's side over the side of the box that holds the traced arcs
      // (ArcsPlacementSpec::side_per_half_width / 2). Wider catches a source's faint outskirts,
      // below the placement's threshold pixel by pixel, that the lens light otherwise takes up;
      // coarser pixels are its price (docs/fit.md, "A pixel grid's extent").
      arcs.side_per_half_width =
          2.0 * node.number_or("arcs_extent", 0.5 * arcs.side_per_half_width,
                               Range::closed(kArcsExtentRange.first, kArcsExtentRange.second));
      out_.arcs_placement = arcs;
    }
    out_.decoded_kind = "PIXELATED";
    out_.pixel_regularisation = kind;
    out_.pixel_sigma_name = sigma_name;
    out_.decoded_path = node.path();
    out_.latent_block = "pixels" + sfx;
    out_.decoded_size = n;
    out_.space.add_standard_normal_block(out_.latent_block, n * n);
    const auto eig = pixel_regulariser_eigen(kind, n, compute_.options());
    const auto v = eig.basis, inv_sqrt = eig.eigenvalues.rsqrt(), sqrt_lam = eig.eigenvalues.sqrt();
    const bool identity = kind == "identity";
    out_.decoder = [n, v, inv_sqrt, identity](const torch::Tensor& z) {
      const auto zz = z.reshape({-1, n, n});
      if (identity) return zz;
      return v.to(z.dtype()).matmul(zz * inv_sqrt.to(z.dtype())).matmul(v.t().to(z.dtype()));
    };
    // Back: Z = Lambda^1/2 * (V^T S V) / sigma, and a free sigma its most probable value for S,
    // sqrt(s^T C s / n^2) (where |Z|^2 = n^2).
    out_.encoder = [n, v, sqrt_lam, identity, sigma_free,
                    sigma_fixed](const torch::Tensor& images) {
      const auto s = images.reshape({-1, n, n}).to(v.options());
      const auto white = identity ? s : v.t().matmul(s).matmul(v) * sqrt_lam;
      const auto sigma = sigma_free ? white.square().mean({1, 2}).sqrt().clamp_min(1e-30)
                                    : torch::full({s.size(0)}, sigma_fixed, s.options());
      return FitModel::EncodedSource{(white / sigma.view({-1, 1, 1})).reshape({-1, n * n}),
                                     sigma_free ? sigma : torch::Tensor()};
    };
  }

  void resolve_ties() {
    for (const auto& t : ties_) {
      if (!out_.space.has(t.target)) {
        t.node.fail_at("same_as", "value '" + t.target +
                                      "' names no parameter; allowed: a parameter declared in "
                                      "this model, e.g. center_x_lens0");
      }
      (*t.list)[t.index].params[t.param] = t.target;
    }
  }

 private:
  FitModel& out_;
  std::string base_dir_;
  Compute compute_;
  std::vector<Tie> ties_;
  std::vector<ProfileBinding>* current_list_ = nullptr;
};

}  // namespace fit_model_detail

std::vector<std::string> FitModel::free_mass_parameters() const {
  std::vector<std::string> out;
  for (const auto& name : space.free_names()) {
    auto it = origins.find(name);
    if (it != origins.end() && it->second.list == "mass") out.push_back(name);
  }
  return out;
}

LensModelSpec FitModel::spec(const physics::PixelGrid& grid,
                             const std::optional<torch::Tensor>& psf_kernel) const {
  LensModelSpec s;
  s.grid = grid;
  s.supersampling = supersampling;
  s.psf_kernel = psf_kernel;
  s.mass = mass;
  s.lens_light = lens_light;
  s.source = source;
  s.latent_block = latent_block;
  s.decoder = decoder;
  s.arcs_placement = arcs_placement;
  return s;
}

// Bicubic unless the config asks for bilinear (lenstronomy's INTERPOL), whose gradient jumps at
// every source-pixel edge: in the bench mock's true mode NUTS took half the leapfrog steps per draw
// bicubically (docs/fit.md, "Source interpolation").
std::string decoded_source_light_type(const ConfigNode& source) {
  return source.choice_or("interpolation", "bicubic", {"bicubic", "bilinear"}) == "bicubic"
             ? "INTERPOL_BICUBIC"
             : "INTERPOL";
}

FitModel parse_fit_model(const ConfigNode& model, const std::string& base_dir,
                         const Compute& compute) {
  using namespace fit_model_detail;
  model.require_object();
  model.allow_only({"supersampling", "mass", "lens_light", "source"});
  FitModel out;
  out.supersampling = model.integer_or("supersampling", 1, Range::closed(1, 16));
  Builder builder(out, base_dir, compute);
  for (const std::string list : {"mass", "lens_light", "source"}) {
    if (list == "lens_light" && !model.has(list)) continue;
    const ConfigNode arr = model.at(list);
    arr.require_array();
    if (list != "lens_light" && arr.size() == 0) arr.fail("needs at least one component");
    int64_t i = 0;
    for (const auto& c : arr.elements()) builder.component(c, list, i++);
  }
  builder.resolve_ties();
  if (out.space.dim() == 0) model.fail("no free parameter: give at least one a prior");
  return out;
}

std::map<std::string, double> truth_values(const FitModel& model, const nlohmann::json& truth) {
  std::map<std::string, double> out;
  if (!truth.is_object()) return out;
  for (const auto& [name, o] : model.origins) {
    if (!truth.contains(o.list) || !truth[o.list].is_array() ||
        o.index >= static_cast<int64_t>(truth[o.list].size())) {
      continue;
    }
    const auto& c = truth[o.list][o.index];
    const nlohmann::json* v = nullptr;
    if (c.contains(o.param)) {
      v = &c[o.param];
    } else if (c.contains("derived_from_e1_e2") && c["derived_from_e1_e2"].contains(o.param)) {
      v = &c["derived_from_e1_e2"][o.param];
    }
    if (v && v->is_object() && v->contains("value") && (*v)["value"].is_number()) {
      out[name] = (*v)["value"].get<double>();
    }
  }
  return out;
}

std::optional<std::map<std::string, torch::Tensor>> truth_point(const FitModel& model,
                                                                const nlohmann::json& truth) {
  if (!truth.is_object()) return std::nullopt;
  const auto scalars = truth_values(model, truth);
  std::map<std::string, torch::Tensor> out;
  for (const auto& name : model.space.free_names()) {
    const auto s = scalars.find(name);
    if (s != scalars.end()) {
      out[name] = torch::tensor({s->second}, torch::kFloat64);
      continue;
    }
    const auto o = model.origins.find(name);
    if (name != model.latent_block || o == model.origins.end()) return std::nullopt;
    const auto list = truth.value(o->second.list, nlohmann::json());
    if (!list.is_array() || o->second.index >= static_cast<int64_t>(list.size()))
      return std::nullopt;
    const auto& component = list[o->second.index];
    if (!component.is_object()) return std::nullopt;
    const auto z = component.value(o->second.param, nlohmann::json());
    if (!z.is_array()) return std::nullopt;
    const auto latent = torch::tensor(z.get<std::vector<double>>(), torch::kFloat64);
    int64_t size = 0;
    for (const auto& c : model.space.coordinate_names()) size += c.rfind(name + "[", 0) == 0;
    if (latent.numel() != size) return std::nullopt;
    out[name] = latent.unsqueeze(0);
  }
  return out;
}

}  // namespace dslens::model

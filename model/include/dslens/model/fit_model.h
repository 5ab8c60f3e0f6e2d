// The "model" section of a `dslens fit` config (docs/fit.md) -> the parameter space and the
// profile bindings of a LensPosterior.
//
// Every profile parameter is a number (fixed), a prior object (free) or {"same_as": NAME} (tied).
// Names follow lenstronomy's Param class: "<p>_lens<i>", "<p>_lens_light<i>",
// "<p>_source_light<i>". Source types beyond the light profiles:
//   VAE:       {"type": "VAE", "checkpoint": DIR, center_x, center_y, scale, phi_G, amp,
//              "normalise_flux": true}: the decoder of a `dslens train-vae` checkpoint maps the
//              latent block "z_source_light<i>" ~ N(0, I) to the source stamp (Chianese et al.
//              2020, Sec. 3), rescaled to the checkpoint's reference total (nn::VaeImpl::
//              decode_with_total) unless "normalise_flux" is false: amp alone sets the flux.
//   PIXELATED: {"type": "PIXELATED", "size": n, "scale": s, "sigma": s_pix, center_x, center_y,
//              "regularisation": "identity"}: n x n free pixels with the prior N(0, s_pix^2 C^-1),
//              C the regulariser (model/pixel_regulariser.h; identity: independent pixels of sd
//              s_pix), sampled as the standard normal block "pixels_source_light<i>" in C's
//              eigenbasis. "sigma" (default 1) is fixed or, with a prior, the free
//              "sigma_source_light<i>". "placement": "arcs" (model/arcs_placement.h): the grid's
//              centre and pixel size are functions of the lens, the square about the data's arcs
//              traced back through it, and no parameters; "free": scale ~
//              lognormal(ln(kPixelGridSide / n), 1) and, unless given, center_x, center_y ~
//              normal(0, kPixelGridCentreSigma), or the given values (a fixed scale's centre
//              defaults to 0, 0). Without "placement": "free" when any of scale, center_x,
//              center_y is given, else kDefaultPixelGridPlacement. "arcs_extent" (arcs only;
//              default 1.1, kArcsExtentRange): the grid's side over the traced arcs' box's.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dslens/core/config.h"
#include "dslens/core/device.h"
#include "dslens/model/lens_posterior.h"
#include "dslens/model/parameter_space.h"

namespace dslens::model {

// A PIXELATED grid's default placement prior (above): its side's median, arcsec, and its centre's
// sd, arcsec.
inline constexpr double kPixelGridSide = 1.5;
inline constexpr double kPixelGridCentreSigma = 0.5;
// A PIXELATED grid's placement when the config gives none of scale, center_x, center_y.
inline constexpr const char* kDefaultPixelGridPlacement = "arcs";
// The "arcs_extent" a config may give: a grid narrower than half the arcs' box drops most of the
// arcs, and one four times as wide spends 15 of 16 pixels on sky.
inline constexpr std::pair<double, double> kArcsExtentRange = {0.5, 4.0};

struct FitModel {
  ParameterSpace space;
  int64_t supersampling = 1;
  std::vector<ProfileBinding> mass, lens_light, source;
  // The decoded source, if any: "VAE" or "PIXELATED", its latent block and decoder.
  std::string decoded_kind;
  std::string latent_block;
  SourceDecoder decoder;
  // The decoded source's parameters for given source images [B, S, S] in surface brightness (a
  // back-projection, model/source_backprojection.h): VAE: latents = the encoder's mean for the
  // peak-normalised stamp (the training data's normalisation), amp = the amplitude that gives the
  // decoded stamp the same peak; PIXELATED: the block whose decoded image times sigma is the
  // image, and amp = sigma: a free one as sqrt(s^T C s / n^2), its most probable value for the
  // image; a fixed one undefined.
  struct EncodedSource {
    torch::Tensor latents;  // [B, k]
    torch::Tensor amp;      // [B] or undefined
  };
  std::function<EncodedSource(const torch::Tensor& images)> encoder;
  int64_t decoded_size = 0;          // stamp side in source pixels
  std::string pixel_regularisation;  // PIXELATED: "identity", "gradient" or "curvature"
  std::string pixel_sigma_name;      // PIXELATED: the prior's scale sigma (the INTERPOL amp)
  std::string decoded_path;          // the decoded source's JSON path, e.g. "/model/source/0"
  // PIXELATED with "placement": "arcs": the grid's centre and size follow the lens.
  std::optional<ArcsPlacementSpec> arcs_placement;
  std::string vae_checkpoint;      // resolved path, VAE only
  nlohmann::json vae_description;  // the checkpoint's architecture and data, VAE only
  // Where each named parameter sits: list ("mass", "lens_light", "source"), index, profile
  // parameter — how a simulation's truth.json is matched to fitted names.
  struct Origin {
    std::string list;
    int64_t index = 0;
    std::string param;
  };
  std::map<std::string, Origin> origins;

  // A PIXELATED source whose strength sigma is free (docs/fit.md, "Pixel grids").
  bool has_free_pixel_strength() const {
    return decoded_kind == "PIXELATED" && !space.is_fixed(pixel_sigma_name);
  }
  // Free scalar parameters of the mass profiles, in config order (the corner plot's choice).
  std::vector<std::string> free_mass_parameters() const;
  // The posterior's model for a given grid and PSF ([h, w] or [L, h, w]).
  LensModelSpec spec(const physics::PixelGrid& grid,
                     const std::optional<torch::Tensor>& psf_kernel) const;
};

// Parses the "model" node. VAE checkpoints are loaded on compute's device and dtype; relative
// paths are resolved against base_dir. Errors are ConfigErrors naming the JSON path.
FitModel parse_fit_model(const ConfigNode& model, const std::string& base_dir,
                         const Compute& compute);

// The light profile a decoded (VAE, PIXELATED) source node is lensed as, from its "interpolation"
// key: "bicubic" (the default) INTERPOL_BICUBIC, "bilinear" INTERPOL (docs/fit.md, "Source
// interpolation"). `dslens simulate` reads its VAE sources' key with the same function. ConfigError
// for another value.
std::string decoded_source_light_type(const ConfigNode& source);

// The true value of every fitted scalar parameter found in a `dslens simulate` truth.json
// (q/phi read from "derived_from_e1_e2" when the fit uses them). Missing ones are absent.
std::map<std::string, double> truth_values(const FitModel& model, const nlohmann::json& truth);
// Every free parameter's truth, as values for ParameterSpace::pack ([1] scalars, [1, k] for the
// VAE's latents, read from the source's "z"), or nullopt when the truth lacks any of them (not a
// simulation, or a model that differs from the simulated one).
std::optional<std::map<std::string, torch::Tensor>> truth_point(const FitModel& model,
                                                                const nlohmann::json& truth);

}  // namespace dslens::model

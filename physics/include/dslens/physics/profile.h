// The contract shared by every mass and light profile.
//
// Shapes. Parameters are a ParamMap: lenstronomy's parameter name -> tensor of shape [B] (one value
// per lens or chain in the batch). Coordinates x, y are tensors [B, N] (N points per batch member)
// or [1, N] (the same points for every batch member); results are [B, N]. Everything follows the
// dtype and device of the inputs and is differentiable by autograd in every parameter and in x, y.
// Angles are in arcsec, position angles in radians, lenstronomy's conventions throughout
// (e1 = (1-q)/(1+q) cos 2phi, e2 = (1-q)/(1+q) sin 2phi).
#pragma once
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace dslens::physics {

using torch::Tensor;
using ParamMap = std::map<std::string, Tensor>;

// Second derivatives of the lensing potential: f_xx, f_xy, f_yy.
struct Hessian {
  Tensor xx, xy, yy;
};

struct Deflection {
  Tensor x, y;  // alpha_x, alpha_y
};

class MassProfile {
 public:
  virtual ~MassProfile() = default;
  virtual std::string type() const = 0;  // lenstronomy's name: "SIE", "EPL", "SHEAR", ...
  virtual std::vector<std::string> param_names() const = 0;
  virtual Deflection deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const = 0;
  virtual Tensor potential(const Tensor& x, const Tensor& y, const ParamMap& p) const = 0;
  // Default: analytic where a profile overrides, else autograd of the deflection.
  virtual Hessian hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const;
  // kappa = (f_xx + f_yy) / 2.
  virtual Tensor convergence(const Tensor& x, const Tensor& y, const ParamMap& p) const;
};

class LightProfile {
 public:
  virtual ~LightProfile() = default;
  virtual std::string type() const = 0;  // "SERSIC", "SERSIC_ELLIPSE", "GAUSSIAN", "INTERPOL", ...
  virtual std::vector<std::string> param_names() const = 0;
  // Surface brightness at (x, y), [B, N].
  virtual Tensor surface_brightness(const Tensor& x, const Tensor& y, const ParamMap& p) const = 0;
  // The integral of the surface brightness over the whole plane, [B] (or [1] when every
  // parameter has one row), in closed form (light_profiles.h gives each profile's).
  virtual Tensor total_flux(const ParamMap& p) const = 0;
  // Whether convolution with a normalised PSF leaves the profile as it is (a constant), so that
  // simulate_image adds it after convolving the rest rather than through the zero padding.
  virtual bool psf_invariant() const { return false; }
};

// Registries: lenstronomy name -> profile. Throw InvalidArgument naming the allowed types.
std::shared_ptr<const MassProfile> make_mass_profile(const std::string& type);
std::shared_ptr<const LightProfile> make_light_profile(const std::string& type);
std::vector<std::string> mass_profile_types();
std::vector<std::string> light_profile_types();
// Whether a light profile type is INTERPOL or INTERPOL_BICUBIC (an "image" parameter).
bool is_pixelated_light(const std::string& type);

// Whether CPU tensors go through the fused CPU kernels (EPL deflection, INTERPOL sampling) and the
// FFT convolution (default: on). Off, the CPU takes the tensor-op paths that CUDA tensors always
// take, so that those paths can be timed and their operators counted on a machine without a GPU
// (`dslens bench simulate --cpu-kernels off`). Process-wide; not meant to be switched mid-fit.
void set_cpu_kernels(bool on);
bool cpu_kernels();

// Whether CUDA tensors go through dslens's fused CUDA kernels (the EPL deflection and its
// backward: 2 kernels where the tensor-op series takes hundreds) where they were built
// (cuda_kernels_built: CMake's DSLENS_WITH_CUDA_KERNELS against a CUDA LibTorch). Off, CUDA takes
// the tensor-op paths, e.g. to compare the two on a GPU. Process-wide, default on.
void set_cuda_kernels(bool on);
bool cuda_kernels();
bool cuda_kernels_built();

// The EPL's tensor-op series (the CUDA path) takes its length from the batch's largest
// ellipticity, which reads one number back from the device on every call: a host sync, and an
// operation a captured CUDA graph cannot contain. With a fixed length n > 0 every call takes n
// terms and reads nothing back; 0 restores the choice per batch. A fixed length is exact to the
// dtype's precision for |e| up to the bound it was chosen for (epl_series_terms_for).
// Process-wide, like set_cpu_kernels.
void set_epl_series_terms(int n);
int fixed_epl_series_terms();
// Terms that keep the series' truncation below the dtype's precision for every |e| <= max_abs_e
// (|e| = sqrt(e1^2 + e2^2) = (1-q)/(1+q), the ratio the series converges with).
int epl_series_terms_for(double max_abs_e, torch::ScalarType dtype);

// A parameter of shape [B] reshaped to broadcast against coordinates of shape [B, N] (or [1, N]).
inline Tensor per_batch(const Tensor& param, const Tensor& like) {
  std::vector<int64_t> shape(like.dim(), 1);
  shape[0] = param.numel() == 1 ? 1 : param.size(0);
  return param.reshape(shape);
}

}  // namespace dslens::physics

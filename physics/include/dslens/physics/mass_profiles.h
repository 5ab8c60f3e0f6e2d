// The mass profiles (lenstronomy's conventions and names) and the fused EPL deflection.
//
// Every profile follows profile.h: parameters name -> [B], coordinates [B, N] or [1, N], results
// [B, N] in the dtype/device of the inputs, differentiable in every parameter and in x, y.
// Optional parameters (SHEAR ra_0/dec_0, CONVERGENCE ra_0/dec_0, MULTIPOLE r_E) take lenstronomy's
// defaults when absent; a missing required parameter throws InvalidArgument naming both.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "dslens/physics/profile.h"

namespace dslens::physics {

// Optional parameters of a mass profile type and the value used when they are absent.
std::map<std::string, double> mass_profile_defaults(const std::string& type);

namespace mass {

// Parameter access shared by the profiles.
Tensor required_param(const ParamMap& p, const std::string& profile, const std::string& name);
// An absent optional parameter becomes a [1] tensor of `fallback` with the dtype/device of `like`.
Tensor optional_param(const ParamMap& p, const std::string& name, double fallback,
                      const Tensor& like);
// The [B, N] shape of a result: B from the coordinates and every parameter, N from x, y.
std::vector<int64_t> result_shape(const Tensor& x, const Tensor& y, const ParamMap& p);

// lenstronomy's ellipticity -> (q, orientation): c = min(|e|, 0.9999), q = (1-c)/(1+c),
// phi = atan2(e2, e1)/2. Below |e| < kEllipticityFloor, e1 is shifted by 2*kEllipticityFloor so
// that the orientation (and the gradient wrt e1, e2) stays defined at e = 0; the effect on values
// is O(1e-9) relative. All [B] (or [1]) tensors. In float32 the tensor-op path uses a floor of 1e-4
// (ellipticity_floor): below that the orientation derivative cancels to rounding noise in the
// rotated-frame arithmetic; the fused CPU kernel computes in double and always uses 1e-9.
constexpr double kEllipticityFloor = 1e-9;
double ellipticity_floor(torch::ScalarType dtype);
struct EllipseTensors {
  Tensor q, cos_phi, sin_phi;
};
EllipseTensors ellipse_from_e(const Tensor& e1, const Tensor& e2);

// Number of terms of the Tessore & Metcalf (2015) series for an ellipticity f = (1-q)/(1+q) such
// that f^n (2n+1) (the largest neglected term, including the angular-derivative series) < eps.
int epl_series_terms(double f, double eps);
// eps used for a dtype: 1e-16 for float64, 1e-8 otherwise.
double epl_series_eps(torch::ScalarType dtype);

// EPL deflection by tensor operations (any device; autograd through every op).
Deflection epl_deflection_tensor(const Tensor& x, const Tensor& y, const Tensor& theta_E,
                                 const Tensor& gamma, const Tensor& e1, const Tensor& e2,
                                 const Tensor& center_x, const Tensor& center_y);
// EPL deflection as one custom autograd Function: on CPU a single parallel loop over points that
// also computes the derivatives wrt x, y and every parameter (used by backward); elsewhere it falls
// back to epl_deflection_tensor. Parameters are [B] or [1]; x, y [B, N] or [1, N].
Deflection epl_deflection_fused(const Tensor& x, const Tensor& y, const Tensor& theta_E,
                                const Tensor& gamma, const Tensor& e1, const Tensor& e2,
                                const Tensor& center_x, const Tensor& center_y);

}  // namespace mass

class SISProfile : public MassProfile {
 public:
  std::string type() const override { return "SIS"; }
  std::vector<std::string> param_names() const override;
  Deflection deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Tensor potential(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Hessian hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
};

// lenstronomy's SIE: the isothermal ellipse (NIE with a vanishing core, = EPL with gamma = 2),
// theta_E the product-averaged Einstein radius, b = theta_E sqrt(q).
class SIEProfile : public MassProfile {
 public:
  std::string type() const override { return "SIE"; }
  std::vector<std::string> param_names() const override;
  Deflection deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Tensor potential(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Hessian hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
};

class EPLProfile : public MassProfile {
 public:
  // fused: the CPU fused deflection (default); false: tensor operations only.
  explicit EPLProfile(bool fused = true) : fused_(fused) {}
  std::string type() const override { return "EPL"; }
  std::vector<std::string> param_names() const override;
  Deflection deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Tensor potential(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Hessian hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Tensor convergence(const Tensor& x, const Tensor& y, const ParamMap& p) const override;

 private:
  bool fused_;
};

class ShearProfile : public MassProfile {
 public:
  std::string type() const override { return "SHEAR"; }
  std::vector<std::string> param_names() const override;
  Deflection deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Tensor potential(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Hessian hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
};

class ConvergenceProfile : public MassProfile {
 public:
  std::string type() const override { return "CONVERGENCE"; }
  std::vector<std::string> param_names() const override;
  Deflection deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Tensor potential(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Hessian hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
};

class PointMassProfile : public MassProfile {
 public:
  std::string type() const override { return "POINT_MASS"; }
  std::vector<std::string> param_names() const override;
  Deflection deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Tensor potential(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Hessian hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
};

class NFWProfile : public MassProfile {
 public:
  std::string type() const override { return "NFW"; }
  std::vector<std::string> param_names() const override;
  Deflection deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Tensor potential(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Hessian hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
};

// lenstronomy's (circular) MULTIPOLE, m >= 1 (m = 1 uses r_E, default 1).
class MultipoleProfile : public MassProfile {
 public:
  std::string type() const override { return "MULTIPOLE"; }
  std::vector<std::string> param_names() const override;
  Deflection deflection(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Tensor potential(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
  Hessian hessian(const Tensor& x, const Tensor& y, const ParamMap& p) const override;
};

}  // namespace dslens::physics

// Profile bindings shared by the model tests: an SIE centred at the origin and an elliptical
// Sersic with e1 = e2 = 0, bound to the ParameterSpace names given.
#pragma once
#include <string>

#include "dslens/model/lens_posterior.h"

namespace dslens::testing {

// theta_E, q and phi bound to the same names; the centre to "zero".
inline model::ProfileBinding centred_sie() {
  return {"SIE",
          {{"theta_E", "theta_E"},
           {"q", "q"},
           {"phi", "phi"},
           {"center_x", "zero"},
           {"center_y", "zero"}}};
}

// A round Sersic on the x axis; e1, e2 and center_y bound to "zero".
inline model::ProfileBinding round_sersic(const std::string& amp, const std::string& r_sersic,
                                          const std::string& n_sersic,
                                          const std::string& center_x) {
  return {"SERSIC_ELLIPSE",
          {{"amp", amp},
           {"R_sersic", r_sersic},
           {"n_sersic", n_sersic},
           {"e1", "zero"},
           {"e2", "zero"},
           {"center_x", center_x},
           {"center_y", "zero"}}};
}

}  // namespace dslens::testing

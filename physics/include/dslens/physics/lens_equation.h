// The images of a point in the source plane: the solutions theta of the lens equation
// beta = theta - alpha(theta) (lenstronomy's LensEquationSolver.image_position_from_source).
#pragma once
#include <array>
#include <vector>

#include "dslens/core/device.h"
#include "dslens/physics/image_model.h"
#include "dslens/physics/lens_model.h"

namespace dslens::physics {

struct LensImage {
  double x = 0.0, y = 0.0;     // arcsec
  double magnification = 0.0;  // signed: 1 / det(A); negative for saddle-point images
};

// The images of (beta_x, beta_y) through the lens (parameters of batch 1) that fall on `grid`:
// every local minimum of |beta(theta) - beta| on the grid's pixels subdivided `oversample` times
// a side is refined by Newton's method, theta += A^-1 (beta - beta(theta)) with steps of at most
// one coarse pixel, and kept where it converged to within `tolerance` arcsec in the source plane;
// solutions closer than a fine pixel are one image. Brightest (largest |magnification|) first. An
// image closer to another than a fine pixel, or in a region the grid's sampling misses (a
// demagnified core image inside a fine pixel of the centre), can be missed, as lenstronomy's
// grid search can.
std::vector<LensImage> solve_lens_equation(const LensModel& lens, double beta_x, double beta_y,
                                           const PixelGrid& grid, const Compute& compute,
                                           int64_t oversample = 4, double tolerance = 1e-9);

}  // namespace dslens::physics

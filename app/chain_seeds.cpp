#include "chain_seeds.h"

namespace dslens::app {

// Optima whose log p is within D / 2 nats of the best (a Gaussian mode's height above its typical
// set) are seeded whatever their Laplace mass, which is distrusted because the optima have not
// converged. A pixel grid's pixels have: every kept optimum has them at their exact maximum given
// the rest, where the log posterior is exactly Gaussian in them, so their share of the mass is
// exact and D counts only the other coordinates. Counting all 1,038 of a 32 x 32 grid (519 nats)
// seeded a demagnified lens, theta_E 0.61 against 1.20, 55 nats below the best and 649 below in
// log mass; its chain sat at the slope's prior bound, divergent at every draw (docs/benchmarks.md,
// session 52).
double seed_height_nats(const model::FitModel& model, int64_t dim) {
  const int64_t exact =
      model.decoded_kind == "PIXELATED" ? model.decoded_size * model.decoded_size : 0;
  return 0.5 * static_cast<double>(dim - exact);
}

}  // namespace dslens::app

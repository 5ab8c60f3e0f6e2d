// Which kept MAP optima seed chains besides those of the largest Laplace mass (app/fit_chains.cpp,
// samplers::seed_modes).
#pragma once
#include <cstdint>

#include "dslens/model/fit_model.h"

namespace dslens::app {

// The log-posterior window, in nats below a lens's best kept optimum, within which an optimum
// seeds chains whatever its Laplace mass: half the free parameters, less a pixel grid's pixels,
// whose share of the mass is exact at the optima.
double seed_height_nats(const model::FitModel& model, int64_t dim);

}  // namespace dslens::app

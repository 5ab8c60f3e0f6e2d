// A batched log-density evaluated on several CPU threads at once, each thread taking a slice of
// every group's rows (a group is one lens: its chains or optimiser starts).
//
// Why: on a CPU a sampler's batch is a few chains of a few thousand pixels each. Most ATen ops on
// tensors that small run below their parallel grain size, so one thread does nearly all the work:
// `perf` of the demo's fit (80x80 px, 4 chains, 2 intra-op threads) found 1.3 of 2 cores busy.
// Slices evaluated on separate threads, each with one intra-op thread, keep every core busy.
// Rows are independent (the interface's contract, log_density.h), so the slices' results are the
// rows of the whole batch.
#pragma once
#include "dslens/samplers/log_density.h"

namespace dslens::samplers {

// The rows of q [G * R, D] are G groups of R (group-major). Each of min(threads, R) slices takes
// about R / slices rows of every group, so that f sees G groups of rows in each call (a model that
// maps rows to groups by position keeps working), and runs with threads / slices intra-op threads
// (on a many-core node with few chains the slices' ops still use every core). With threads <= 1,
// R < 2 or q not on the CPU, f is called as it is. Exceptions from any slice are rethrown on the
// calling thread.
LogDensityFn row_parallel(LogDensityFn f, int64_t groups, int threads);

// The number of threads row_parallel should use for a model on `device`: the intra-op thread
// count on the CPU (at::get_num_threads()), 1 elsewhere.
int row_parallel_threads(const torch::Device& device);

}  // namespace dslens::samplers

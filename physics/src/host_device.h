// DSLENS_HOST_DEVICE: marks a function of the per-point headers (epl_point.h, interpol_taps.h)
// for both the host and a CUDA device under nvcc, and is empty for the host compiler.
#pragma once

#if defined(__CUDACC__)
#define DSLENS_HOST_DEVICE __host__ __device__
#else
#define DSLENS_HOST_DEVICE
#endif

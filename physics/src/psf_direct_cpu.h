// Direct 'same'-size PSF convolution on the CPU (internal to physics; see psf.cpp).
#pragma once

#include <torch/torch.h>

namespace dslens::physics::psf_detail {

// Whether convolve_direct_cpu takes these inputs: CPU float32/float64 images [B, H, W], a kernel
// [h, w] or [B, h, w] of odd sizes that needs no gradient, at most 17 x 17 taps.
bool direct_cpu_applies(const torch::Tensor& images, const torch::Tensor& kernel);

// True (flipped-kernel) convolution, zero padded, as scipy.signal.fftconvolve(mode='same'):
// differentiable in the images (to any order: the adjoint is the same operation with the kernel
// flipped), not in the kernel.
torch::Tensor convolve_direct_cpu(const torch::Tensor& images, const torch::Tensor& kernel);

}  // namespace dslens::physics::psf_detail

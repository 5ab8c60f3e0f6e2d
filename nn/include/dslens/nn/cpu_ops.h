// Hand-written CPU kernels for the VAE's layers, differentiable (first order) with respect to every
// input, weight and bias, in float32 and float64.
//
// Why: LibTorch 1.13 on the CPU sends transposed convolutions (always), float64 convolutions and
// every matrix product to the system BLAS, which on Debian is the unoptimised reference BLAS
// unless OpenBLAS is installed (about 2 GFLOP/s, one thread); float32 convolutions go to oneDNN.
// These kernels are register-blocked "gather" matrix products over zero-padded planes (the
// convolution taps are pointer offsets), compiled for x86-64-v3 (AVX2 + FMA) with a portable
// fallback chosen at load time, and split the batch over at::get_num_threads() threads of the
// inter-op pool. No result depends on the thread count or on the other items of the batch: every
// item's arithmetic is the same sequence of operations wherever it sits in the batch (weight
// gradients are sums over items and differ in the last bits between thread counts).
//
//   namespace ops = dslens::nn::cpu_ops;
//   if (ops::supported(x)) y = ops::conv_transpose4x4s2(x, w, b);   // == conv_transpose2d(x, w, b,
//   2, 1)
#pragma once
#include <torch/torch.h>

namespace dslens::nn::cpu_ops {

// True for a CPU tensor of float32 or float64.
bool supported(const torch::Tensor& x);

// x [B, K], w [N, K], b [N] or undefined -> [B, N]; == torch::linear(x, w, b).
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b);

// x [B, Ci, H, W], w [Ci, Co, 4, 4], b [Co] -> [B, Co, 2H, 2W];
// == torch::conv_transpose2d(x, w, b, /*stride=*/2, /*padding=*/1).
torch::Tensor conv_transpose4x4s2(const torch::Tensor& x, const torch::Tensor& w,
                                  const torch::Tensor& b);

// x [B, Ci, H, W] (H, W even), w [Co, Ci, 4, 4], b [Co] -> [B, Co, H/2, W/2];
// == torch::conv2d(x, w, b, /*stride=*/2, /*padding=*/1).
torch::Tensor conv4x4s2(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b);

// x [B, Ci, H, W], w [Co, Ci, 3, 3], b [Co] -> [B, Co, H, W]; == torch::conv2d(x, w, b, 1, 1).
torch::Tensor conv3x3(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b);

// silu(group_norm(x, groups, gamma, beta, eps)) for x [B, C, H, W] (C divisible by groups);
// groups = 0: silu(x) (gamma, beta ignored).
torch::Tensor group_norm_silu(const torch::Tensor& x, int64_t groups, const torch::Tensor& gamma,
                              const torch::Tensor& beta, double eps);

}  // namespace dslens::nn::cpu_ops

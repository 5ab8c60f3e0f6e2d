// INTERPOL light profile: a pixelated source drawn by bilinear interpolation
// (lenstronomy's LightModel/Profiles/interpolation.py), or INTERPOL_BICUBIC by Keys's cubic
// convolution. One autograd function: on the CPU a loop kernel with a hand-written backward, on
// CUDA the same per-point code as two kernels (interpol_cuda.cu, where built), elsewhere torch
// grid_sample (bilinear) or the floor + gather tensor-op path (bicubic); derivatives of order two
// and more (create_graph) go through the gather path.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/physics/light_profiles.h"
#include "interpol_cuda.h"
#include "interpol_cuda_pack.h"
#include "interpol_taps.h"

#ifdef DSLENS_WITH_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace dslens::physics {

namespace interpol_light_detail {

namespace F = torch::nn::functional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Taps per axis: 2 (bilinear) or 4 (bicubic). Tap j of an axis sits at pixel floor(col) + j - off
// with off = taps / 2 - 1.
int64_t taps_of(PixelInterpolation order) {
  return order == PixelInterpolation::kBicubic ? 4 : 2;
}

// Keys's cubic convolution with a = -1/2 (interpol_taps.h says why): grid_sample's bicubic has
// a = -0.75, so the bicubic path is ours on every device.
using interpol_taps::Axis;
using interpol_taps::cubic_weights;
using interpol_taps::locate_axis;
using interpol_taps::sample_taps;
using interpol_taps::scatter_taps;

// Bilinear grid_sample path (any device; first derivatives only: grid_sampler_2d_backward has no
// derivative in LibTorch 1.13). Verified against the lenstronomy reference on the CPU before the
// CPU kernel replaced it there. With align_corners = false, normalised -1 and 1 are the outer
// edges of the outer pixels, so the centre of pixel c is at (2 c + 1) / w - 1 = 2 x_pix / w; zero
// padding reproduces lenstronomy's one-pixel zero border (the value falls linearly to 0 one pixel
// beyond the outer centres).
Tensor sample_grid(const Tensor& image, const Tensor& x_pix, const Tensor& y_pix) {
  const int64_t h = image.size(1), w = image.size(2);
  const int64_t b_img = image.size(0), b_pts = x_pix.size(0), n = x_pix.size(1);
  const int64_t b = std::max(b_img, b_pts);
  Tensor gx = x_pix * (2.0 / static_cast<double>(w));
  Tensor gy = y_pix * (2.0 / static_cast<double>(h));
  auto opts = F::GridSampleFuncOptions()
                  .mode(torch::kBilinear)
                  .padding_mode(torch::kZeros)
                  .align_corners(false);
  if (b_img == 1) {
    // One image for every batch member: a single [1, 1, B*N] sampling pass.
    Tensor grid = torch::stack({gx, gy}, -1).reshape({1, 1, b_pts * n, 2});
    return F::grid_sample(image.unsqueeze(1), grid, opts).reshape({b_pts, n});
  }
  Tensor grid = torch::stack({gx, gy}, -1).unsqueeze(1);  // [b, 1, N, 2]
  if (b_pts == 1) grid = grid.expand({b, 1, n, 2});
  return F::grid_sample(image.unsqueeze(1), grid, opts).reshape({b, n});
}

// The weights of an axis's taps at fractional position t in [0, 1), as tensors (any order of
// derivatives in t).
std::vector<Tensor> tap_weights(const Tensor& t, int64_t taps) {
  if (taps == 2) return {1 - t, t};
  Tensor w[4];
  cubic_weights<Tensor, double>(t, w);
  return {w[0], w[1], w[2], w[3]};
}

// Tensor-op path differentiable to any order (any device): floor + gather on the image padded with
// `taps` rows/columns of zeros on each side, cells clamped into the padding far outside (every tap
// 0). All taps x taps values of a point come from one gather and one weighted sum: on a GPU every
// operator is a kernel launch, and a gather, a product and a sum per tap made the bicubic path
// about 1,000 of the log density's 2,569 operators (forward + gradient; docs/benchmarks.md, "On a
// GPU, second run").
Tensor sample_gather(const Tensor& image, const Tensor& x_pix, const Tensor& y_pix, int64_t taps) {
  const int64_t h = image.size(1), w = image.size(2);
  const int64_t b_img = image.size(0), b_pts = x_pix.size(0), n = x_pix.size(1);
  const int64_t b = std::max(b_img, b_pts);
  const int64_t pad = taps, off = taps / 2 - 1;
  const int64_t wp = w + 2 * pad, hp = h + 2 * pad;
  Tensor flat = F::pad(image, F::PadFuncOptions({pad, pad, pad, pad})).reshape({b_img, hp * wp});
  if (b_img != b) flat = flat.expand({b, hp * wp});
  Tensor col = x_pix + 0.5 * static_cast<double>(w - 1);
  Tensor row = y_pix + 0.5 * static_cast<double>(h - 1);
  Tensor c0 = torch::floor(col).detach(), r0 = torch::floor(row).detach();
  const Tensor wx = torch::stack(tap_weights(col - c0, taps), -1);  // [., n, taps]
  const Tensor wy = torch::stack(tap_weights(row - r0, taps), -1);
  // The first tap's padded index; in range for every cell with a tap inside the image.
  Tensor pc = torch::clamp(c0 + (pad - off), 0, w + 2 * pad - taps).to(torch::kLong);
  Tensor pr = torch::clamp(r0 + (pad - off), 0, h + 2 * pad - taps).to(torch::kLong);
  // Tap (i, j) at idx + i wp + j, offsets made on the device (a captured CUDA graph cannot copy
  // from host memory).
  const Tensor step = torch::arange(taps, pc.options());
  const Tensor offsets = ((step * wp).unsqueeze(1) + step.unsqueeze(0)).reshape({taps * taps});
  Tensor idx = (pr * wp + pc).unsqueeze(2) + offsets;  // [., n, taps * taps]
  if (b_pts != b) idx = idx.expand({b, n, taps * taps});
  const Tensor values =
      flat.gather(1, idx.reshape({b, n * taps * taps})).reshape({b, n, taps, taps});
  return (values * (wy.unsqueeze(3) * wx.unsqueeze(2))).sum({2, 3});
}

// The per-batch map from source-plane (x, y) to centred source-pixel coordinates, and the
// amplitude, as [B, 7] (or [1, 7]) rows:
//   x_pix = a00 (x - cx) + a01 (y - cy),   y_pix = a10 (x - cx) + a11 (y - cy),   value * amp.
using interpol_cuda::kA00;
using interpol_cuda::kA01;
using interpol_cuda::kA10;
using interpol_cuda::kA11;
using interpol_cuda::kAffineColumns;
using interpol_cuda::kAmp;
using interpol_cuda::kCx;
using interpol_cuda::kCy;

// The same map with tensor ops (other devices, higher-order derivatives).
std::pair<Tensor, Tensor> pixel_coords(const Tensor& xs, const Tensor& ys, const Tensor& aff) {
  auto col = [&](int64_t k) { return aff.select(1, k).unsqueeze(1); };
  Tensor dx = xs - col(kCx), dy = ys - col(kCy);
  return {col(kA00) * dx + col(kA01) * dy, col(kA10) * dx + col(kA11) * dy};
}

Tensor sample_tensor_ops(const Tensor& image, const Tensor& xs, const Tensor& ys, const Tensor& aff,
                         bool gather, int64_t taps) {
  auto [px, py] = pixel_coords(xs, ys, aff);
  // Bicubic always gathers (grid_sample's bicubic has another a: interpol_taps.h).
  Tensor v = gather || taps == 4 ? sample_gather(image, px, py, taps) : sample_grid(image, px, py);
  return v * aff.select(1, kAmp).unsqueeze(1);
}

// CPU kernel: the same interpolation as a tight loop with a hand-written backward; the affine map
// and the amplitude are applied on the fly (no [B, N] temporaries). K taps per axis (2 bilinear, 4
// bicubic). Pixel (r, c) at x_pix = c - (w - 1) / 2, y_pix = r - (h - 1) / 2; zero outside. The
// per-point arithmetic (interpol_taps.h) is the CUDA kernels' too.

// Shapes and pointers shared by the forward and backward loops.
template <typename T>
struct Batch {
  int64_t b_all, n, h, w;
  bool img_batched, pts_batched, aff_batched;
  const T *ip, *xp, *yp, *ap;
  Batch(const Tensor& image, const Tensor& xs, const Tensor& ys, const Tensor& aff, int64_t b)
      : b_all(b),
        n(xs.size(1)),
        h(image.size(1)),
        w(image.size(2)),
        img_batched(image.size(0) > 1),
        pts_batched(xs.size(0) > 1),
        aff_batched(aff.size(0) > 1),
        ip(image.data_ptr<T>()),
        xp(xs.data_ptr<T>()),
        yp(ys.data_ptr<T>()),
        ap(aff.data_ptr<T>()) {}
  const T* image(int64_t b) const { return ip + (img_batched ? b * h * w : 0); }
  const T* x(int64_t b) const { return xp + (pts_batched ? b * n : 0); }
  const T* y(int64_t b) const { return yp + (pts_batched ? b * n : 0); }
  const T* affine(int64_t b) const { return ap + (aff_batched ? b * kAffineColumns : 0); }
};

template <typename T, int K>
void forward_cpu(const Batch<T>& bt, T* op) {
  const T half_w = T(0.5) * T(bt.w - 1), half_h = T(0.5) * T(bt.h - 1);
  at::parallel_for(0, bt.b_all, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T *im = bt.image(b), *xb = bt.x(b), *yb = bt.y(b), *a = bt.affine(b);
      // Parameters in registers (the output pointer could alias them as far as the compiler knows).
      const T a00 = a[kA00], a01 = a[kA01], a10 = a[kA10], a11 = a[kA11];
      const T cx = a[kCx], cy = a[kCy], amp = a[kAmp];
      const int64_t h = bt.h, w = bt.w, n = bt.n;
      T* ob = op + b * n;
      for (int64_t k = 0; k < n; ++k) {
        const T dx = xb[k] - cx, dy = yb[k] - cy;
        const T col = a00 * dx + a01 * dy + half_w;
        const T row = a10 * dx + a11 * dy + half_h;
        Axis<T, K> ac, ar;
        T unused_col, unused_row;
        ob[k] = locate_axis(col, w, ac) && locate_axis(row, h, ar)
                    ? amp * sample_taps<T, K, false>(im, h, w, ac, ar, unused_col, unused_row)
                    : T(0);
      }
    }
  });
}

// Gradients per batch member: image [B, h, w], x and y [B, N], affine [B, 7]; summed over the
// batch afterwards for inputs shared by the batch.
template <typename T, int K>
void backward_cpu(const Batch<T>& bt, const T* gp, T* gip, T* gxp, T* gyp, T* gap) {
  using Acc = at::acc_type<T, false>;
  const T half_w = T(0.5) * T(bt.w - 1), half_h = T(0.5) * T(bt.h - 1);
  const int64_t h = bt.h, w = bt.w, n = bt.n;
  at::parallel_for(0, bt.b_all, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T *im = bt.image(b), *xb = bt.x(b), *yb = bt.y(b), *a = bt.affine(b);
      const T a00 = a[kA00], a01 = a[kA01], a10 = a[kA10], a11 = a[kA11];
      const T cx = a[kCx], cy = a[kCy], amp = a[kAmp];
      const T* gb = gp + b * n;
      T* gi = gip + b * h * w;
      T* gx = gxp + b * n;
      T* gy = gyp + b * n;
      Acc s00 = 0, s01 = 0, s10 = 0, s11 = 0, scx = 0, scy = 0, samp = 0;
      for (int64_t k = 0; k < n; ++k) {
        const T dx = xb[k] - cx, dy = yb[k] - cy;
        const T col = a00 * dx + a01 * dy + half_w;
        const T row = a10 * dx + a11 * dy + half_h;
        Axis<T, K> ac, ar;
        if (!locate_axis(col, w, ac) || !locate_axis(row, h, ar)) {
          gx[k] = T(0);
          gy[k] = T(0);
          continue;
        }
        const T gk = gb[k];
        const T ga = gk * amp;
        // d value / d col and d value / d row.
        T d_col, d_row;
        const T value = sample_taps<T, K, true>(im, h, w, ac, ar, d_col, d_row);
        samp += static_cast<Acc>(gk * value);
        const T gc = ga * d_col, gr = ga * d_row;
        const T gxk = a00 * gc + a10 * gr, gyk = a01 * gc + a11 * gr;
        gx[k] = gxk;
        gy[k] = gyk;
        s00 += static_cast<Acc>(gc * dx);
        s01 += static_cast<Acc>(gc * dy);
        s10 += static_cast<Acc>(gr * dx);
        s11 += static_cast<Acc>(gr * dy);
        scx -= static_cast<Acc>(gxk);
        scy -= static_cast<Acc>(gyk);
        scatter_taps(h, w, ac, ar, ga, [gi](int64_t i, T v) { gi[i] += v; });
      }
      T* ga_out = gap + b * kAffineColumns;
      ga_out[kA00] = static_cast<T>(s00);
      ga_out[kA01] = static_cast<T>(s01);
      ga_out[kA10] = static_cast<T>(s10);
      ga_out[kA11] = static_cast<T>(s11);
      ga_out[kCx] = static_cast<T>(scx);
      ga_out[kCy] = static_cast<T>(scy);
      ga_out[kAmp] = static_cast<T>(samp);
    }
  });
}

// Whether the fused kernels (CPU loops or CUDA kernels) take points on xs's device.
bool cuda_kernel_applies(const Tensor& xs) {
#ifdef DSLENS_WITH_CUDA_KERNELS
  return xs.is_cuda() && cuda_kernels();
#else
  (void)xs;
  return false;
#endif
}

bool kernel_applies(const Tensor& xs) {
  return (xs.device().is_cpu() && cpu_kernels()) || cuda_kernel_applies(xs);
}

#ifdef DSLENS_WITH_CUDA_KERNELS
Tensor forward_cuda(const Tensor& image, const Tensor& xs, const Tensor& ys, const Tensor& aff,
                    int64_t b, int64_t taps) {
  const c10::cuda::CUDAGuard guard(xs.device());
  Tensor out = torch::empty({b, xs.size(1)}, xs.options());
  const std::string err =
      interpol_cuda::forward(interpol_cuda::pack(image, xs, ys, aff, b, taps), out.data_ptr(),
                             c10::cuda::getCurrentCUDAStream().stream());
  if (!err.empty()) throw DeviceError("INTERPOL: the CUDA sampling kernel failed: " + err);
  return out;
}

// Gradients wrt the image, xs, ys and aff, each of its input's shape (the batch's contributions
// to a shared input are summed by the kernel's atomics).
torch::autograd::variable_list backward_cuda(const Tensor& g, const Tensor& image, const Tensor& xs,
                                             const Tensor& ys, const Tensor& aff, int64_t taps) {
  const c10::cuda::CUDAGuard guard(xs.device());
  const auto out = interpol_cuda::gradient_buffers(image, xs, ys, aff);
  const std::string err = interpol_cuda::backward(
      interpol_cuda::pack(image, xs, ys, aff, g.size(0), taps), g.data_ptr(), out.image.data_ptr(),
      out.x.data_ptr(), out.y.data_ptr(), out.affine.data_ptr<double>(),
      c10::cuda::getCurrentCUDAStream().stream());
  if (!err.empty()) throw DeviceError("INTERPOL: the CUDA backward kernel failed: " + err);
  return {out.image, out.x, out.y, out.affine.to(aff.scalar_type()), Tensor()};
}
#endif

// image [Bi, h, w], xs/ys [Bp, N], aff [Ba, 7] (each batch 1 or B) -> [B, N]; `taps` 2 or 4.
struct PixelSample : public torch::autograd::Function<PixelSample> {
  static Tensor forward(AutogradContext* ctx, const Tensor& image, const Tensor& xs,
                        const Tensor& ys, const Tensor& aff, int64_t taps) {
    ctx->save_for_backward({image, xs, ys, aff});
    ctx->saved_data["taps"] = taps;
    const int64_t b = std::max({image.size(0), xs.size(0), aff.size(0)});
#ifdef DSLENS_WITH_CUDA_KERNELS
    if (cuda_kernel_applies(xs)) return forward_cuda(image, xs, ys, aff, b, taps);
#endif
    if (!kernel_applies(xs)) return sample_tensor_ops(image, xs, ys, aff, false, taps);
    Tensor out = torch::empty({b, xs.size(1)}, xs.options());
    AT_DISPATCH_FLOATING_TYPES(xs.scalar_type(), "interpol_forward", [&] {
      const Batch<scalar_t> bt(image, xs, ys, aff, b);
      if (taps == 4) {
        forward_cpu<scalar_t, 4>(bt, out.data_ptr<scalar_t>());
      } else {
        forward_cpu<scalar_t, 2>(bt, out.data_ptr<scalar_t>());
      }
    });
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const int64_t taps = ctx->saved_data["taps"].toInt();
    const Tensor &image = saved[0], &xs = saved[1], &ys = saved[2], &aff = saved[3];
    if (torch::GradMode::is_enabled()) {
      // create_graph: differentiate the gather path, which is differentiable to any order
      // (grid_sample's backward has no derivative in LibTorch 1.13).
      std::vector<Tensor> wrt;
      for (const auto& t : saved)
        if (t.requires_grad()) wrt.push_back(t);
      variable_list out(5);
      if (wrt.empty()) return out;
      auto g = torch::autograd::grad({sample_tensor_ops(image, xs, ys, aff, true, taps)}, wrt,
                                     {grads[0]}, true, true, true);
      for (size_t i = 0, j = 0; i < 4; ++i)
        if (saved[i].requires_grad()) out[i] = g[j++];
      return out;
    }
#ifdef DSLENS_WITH_CUDA_KERNELS
    if (cuda_kernel_applies(xs))
      return backward_cuda(grads[0].contiguous(), image, xs, ys, aff, taps);
#endif
    if (!kernel_applies(xs)) {
      // Other devices: grid_sample's own backward on a re-run of the forward.
      torch::AutoGradMode enable(true);
      std::vector<Tensor> in;
      for (const auto& t : saved) in.push_back(t.detach().requires_grad_(true));
      auto g = torch::autograd::grad({sample_tensor_ops(in[0], in[1], in[2], in[3], false, taps)},
                                     in, {grads[0]}, false, false, true);
      return {g[0], g[1], g[2], g[3], Tensor()};
    }
    Tensor g = grads[0].contiguous();
    const int64_t b = g.size(0), n = g.size(1);
    Tensor g_img = torch::zeros({b, image.size(1), image.size(2)}, image.options());
    Tensor g_x = torch::empty({b, n}, xs.options());
    Tensor g_y = torch::empty({b, n}, xs.options());
    Tensor g_aff = torch::empty({b, kAffineColumns}, aff.options());
    AT_DISPATCH_FLOATING_TYPES(xs.scalar_type(), "interpol_backward", [&] {
      const Batch<scalar_t> bt(image, xs, ys, aff, b);
      auto run = [&](auto kernel) {
        kernel(bt, g.data_ptr<scalar_t>(), g_img.data_ptr<scalar_t>(), g_x.data_ptr<scalar_t>(),
               g_y.data_ptr<scalar_t>(), g_aff.data_ptr<scalar_t>());
      };
      if (taps == 4) {
        run(backward_cpu<scalar_t, 4>);
      } else {
        run(backward_cpu<scalar_t, 2>);
      }
    });
    if (image.size(0) != b) g_img = g_img.sum(0, true);
    if (xs.size(0) != b) {
      g_x = g_x.sum(0, true);
      g_y = g_y.sum(0, true);
    }
    if (aff.size(0) != b) g_aff = g_aff.sum(0, true);
    return {g_img, g_x, g_y, g_aff, Tensor()};
  }
};

// Checks shapes, aligns dtype/device, and samples: image [Bi, h, w] (or [h, w]), xs/ys [Bp, N],
// aff [Ba, 7].
Tensor sample(const Tensor& image_in, const Tensor& xs, const Tensor& ys, const Tensor& aff,
              bool tensor_ops, PixelInterpolation order) {
  Tensor image = image_in.dim() == 2 ? image_in.unsqueeze(0) : image_in;
  if (image.dim() != 3) {
    throw InvalidArgument("INTERPOL: 'image' must be [B, h, w], [1, h, w] or [h, w]; got " +
                          std::to_string(image_in.dim()) + " dimensions");
  }
  if (xs.dim() != 2 || xs.sizes() != ys.sizes()) {
    throw InvalidArgument("INTERPOL: coordinates must be two tensors of the same shape [B, N]");
  }
  if (image.size(1) < 1 || image.size(2) < 1) throw InvalidArgument("INTERPOL: empty source image");
  const bool floating = xs.scalar_type() == torch::kFloat || xs.scalar_type() == torch::kDouble;
  if (!floating) throw InvalidArgument("INTERPOL: coordinates must be float32 or float64");
  const int64_t b = std::max({image.size(0), xs.size(0), aff.size(0)});
  for (int64_t bi : {image.size(0), xs.size(0), aff.size(0)}) {
    if (bi != 1 && bi != b) {
      throw InvalidArgument("INTERPOL: batch sizes of the image (" + std::to_string(image.size(0)) +
                            "), the coordinates (" + std::to_string(xs.size(0)) +
                            ") and the parameters (" + std::to_string(aff.size(0)) +
                            ") do not match");
    }
  }
  auto align = [&](const Tensor& t) {
    return t.scalar_type() == xs.scalar_type() && t.device() == xs.device()
               ? t
               : t.to(xs.device(), xs.scalar_type());
  };
  image = align(image);
  Tensor a = align(aff);
  const int64_t taps = taps_of(order);
  // The gather path is differentiable to any order by autograd itself, so without a fused kernel
  // (a CPU build's CUDA tensors, or the kernels switched off) bicubic sampling skips PixelSample,
  // whose backward would run the forward again (about 300 more operators per call of the bench's
  // image model, each a kernel launch on a GPU).
  if (tensor_ops || (taps == 4 && !kernel_applies(xs))) {
    return sample_tensor_ops(image, xs, ys, a, true, taps);
  }
  return PixelSample::apply(image.contiguous(), xs.contiguous(), ys.contiguous(), a.contiguous(),
                            taps);
}

}  // namespace interpol_light_detail

namespace interpol_cuda {

Args pack(const Tensor& image, const Tensor& xs, const Tensor& ys, const Tensor& affine, int64_t b,
          int64_t taps) {
  Args a;
  a.float64 = xs.scalar_type() == torch::kFloat64;
  a.taps = static_cast<int>(taps);
  a.B = b;
  a.N = xs.size(1);
  a.h = image.size(1);
  a.w = image.size(2);
  a.image = image.data_ptr();
  a.image_batched = image.size(0) > 1;
  a.x = xs.data_ptr();
  a.y = ys.data_ptr();
  a.points_batched = xs.size(0) > 1;
  a.affine = affine.data_ptr();
  a.affine_batched = affine.size(0) > 1;
  return a;
}

Gradients gradient_buffers(const Tensor& image, const Tensor& xs, const Tensor& ys,
                           const Tensor& affine) {
  const bool batched = xs.size(0) > 1;
  return {torch::zeros_like(image), batched ? torch::empty_like(xs) : torch::zeros_like(xs),
          batched ? torch::empty_like(ys) : torch::zeros_like(ys),
          torch::zeros(affine.sizes(), affine.options().dtype(torch::kFloat64))};
}

}  // namespace interpol_cuda

Tensor interpolate_source_image(const Tensor& image, const Tensor& x_pix, const Tensor& y_pix,
                                bool tensor_ops, PixelInterpolation order) {
  auto identity =
      torch::tensor({1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0}, x_pix.options().dtype(torch::kFloat64))
          .reshape({1, interpol_light_detail::kAffineColumns});
  return interpol_light_detail::sample(image, x_pix, y_pix, identity, tensor_ops, order);
}

std::vector<std::string> InterpolLight::param_names() const {
  return {"image", "center_x", "center_y", "scale", "phi_G", "amp"};
}

Tensor InterpolLight::surface_brightness(const Tensor& x, const Tensor& y,
                                         const ParamMap& p) const {
  const auto names = param_names();
  auto flat = [&](const Tensor& t) { return t.reshape({-1}).to(x.device(), x.scalar_type()); };
  auto get = [&](const char* n) { return flat(light_param(p, n, type(), names)); };
  // lenstronomy: (x_pix, y_pix) = rotate((x - cx) / scale, (y - cy) / scale, phi_G), with
  // util.rotate(x, y, phi) = (x cos + y sin, -x sin + y cos).
  Tensor inv_scale = 1.0 / get("scale");
  Tensor cx = get("center_x"), cy = get("center_y");
  Tensor c = inv_scale, s = torch::zeros_like(inv_scale);
  auto phi = p.find("phi_G");
  if (phi != p.end() && phi->second.defined()) {
    Tensor angle = flat(phi->second);
    c = torch::cos(angle) * inv_scale;
    s = torch::sin(angle) * inv_scale;
  }
  auto amp_it = p.find("amp");
  Tensor amp = amp_it != p.end() && amp_it->second.defined() ? flat(amp_it->second)
                                                             : torch::ones_like(inv_scale);
  auto parts = torch::broadcast_tensors({c, s, -s, c, cx, cy, amp});
  Tensor aff = torch::stack(parts, 1);  // [Ba, 7]
  return interpol_light_detail::sample(light_param(p, "image", type(), names), x, y, aff, false,
                                       order_);
}

// amp scale^2 sum(image): see light_profiles.h.
Tensor InterpolLight::total_flux(const ParamMap& p) const {
  const auto names = param_names();
  const Tensor& image = light_param(p, "image", type(), names);
  const Tensor pixels = image.dim() == 2 ? image.sum().reshape({1}) : image.sum({-2, -1});
  const Tensor scale = light_param(p, "scale", type(), names).reshape({-1});
  auto amp_it = p.find("amp");
  const Tensor amp = amp_it != p.end() && amp_it->second.defined()
                         ? amp_it->second.reshape({-1})
                         : torch::ones({1}, scale.options());
  return amp * scale * scale * pixels.to(scale.dtype());
}

}  // namespace dslens::physics

// 32-byte SIMD vectors (GCC/Clang vector extensions: one AVX register or two SSE ones) and
// branch-free exp and log on them, for the hand-written CPU kernels of physics and nn. Compiled
// inside the kernels' target clones (x86-64-v4, x86-64-v3 and the baseline), so the same source
// gives AVX-512VL or AVX2 + FMA code where the CPU has it. Internal to the kernels: no call passes
// these types across a function boundary that is not inlined.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__)
// GCC notes that the 32-byte vector ABI changed; the vectors only live in always-inlined helpers.
// (GCC reports this note at the end of the translation unit, so it stays off to the end.)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// The arithmetic kernels are compiled three times: for x86-64-v4 (the same 32-byte vectors, with
// AVX-512VL's 32 registers instead of 16; on an AVX-512 Xeon the VAE decoder's forward + gradient
// wrt z at batch 2, 1 thread, went from 1.84 to 1.15 ms, EPL's kernel unchanged), for x86-64-v3
// (AVX2 + FMA) and for the baseline; the loader picks one per machine (GNU ifunc).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define DSLENS_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DSLENS_CPU_CLONES
#endif
#define DSLENS_INLINE inline __attribute__((always_inline))

namespace dslens::simd {

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef int32_t itype __attribute__((vector_size(32)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef int64_t itype __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
using IVec = typename VecOf<T>::itype;
template <typename T>
constexpr int kLanes = 32 / static_cast<int>(sizeof(T));

template <typename T>
DSLENS_INLINE Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
DSLENS_INLINE void store(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof v);
}
// (Not Vec<T>{} + x: GCC keeps that addition of +0.0 in the inner loops.)
DSLENS_INLINE Vec<float> splat(float x) {
  return Vec<float>{x, x, x, x, x, x, x, x};
}
DSLENS_INLINE Vec<double> splat(double x) {
  return Vec<double>{x, x, x, x};
}

// exp(x): Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a polynomial for exp(r), and 2^n built
// in the exponent bits. float: Cephes' minimax polynomial (~1 ulp); double: Taylor series to r^12
// (truncation < 2e-16 relative). Arguments are clamped to the finite range.
DSLENS_INLINE Vec<float> vexp(Vec<float> x) {
  using V = Vec<float>;
  using I = IVec<float>;
  const V hi = splat(88.0f), lo = splat(-87.0f);
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  const V magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const V t = x * 1.44269504088896341f + magic;
  const V n = t - magic;
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const V y = p * (r * r) + r + 1.0f;
  const I e = ((I)t - (I)magic + 127) << 23;
  return y * (V)e;
}

DSLENS_INLINE Vec<double> vexp(Vec<double> x) {
  using V = Vec<double>;
  using I = IVec<double>;
  const V hi = splat(709.0), lo = splat(-708.0);
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  const V magic = splat(6755399441055744.0);  // 1.5 * 2^52
  const V t = x * 1.4426950408889634 + magic;
  const V n = t - magic;
  V r = x - n * 6.93145751953125e-1;
  r = r - n * 1.42860682030941723212e-6;
  V p = splat(1.0 / 479001600.0);
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const I e = ((I)t - (I)magic + 1023) << 52;
  return p * (V)e;
}

// log(x) for positive, finite, normal x (the caller guarantees it). x = m 2^e with m in
// [sqrt(1/2), sqrt(2)), log m = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = (m-1)/(m+1),
// |s| <= 0.1716: the series to s^23 truncates below 1e-17 relative (fdlibm's reduction, Taylor
// coefficients instead of its minimax ones); ln 2 split in two so that e ln2 adds no rounding.
DSLENS_INLINE Vec<double> vlog(Vec<double> x) {
  using V = Vec<double>;
  using I = IVec<double>;
  const I bits = (I)x;
  // Mantissa in [1, 2) and the biased exponent, converted to double through 2^52's bit pattern
  // (AVX2 has no int64 -> double conversion).
  V m = (V)((bits & 0x000FFFFFFFFFFFFFLL) | 0x3FF0000000000000LL);
  V e = (V)((bits >> 52) | 0x4330000000000000LL) - splat(4503599627370496.0 + 1023.0);
  const auto big = m > splat(1.4142135623730951);
  m = big ? m * 0.5 : m;
  e = big ? e + 1.0 : e;
  const V s = (m - 1.0) / (m + 1.0);
  const V z = s * s;
  V p = splat(1.0 / 23.0);
  p = p * z + 1.0 / 21.0;
  p = p * z + 1.0 / 19.0;
  p = p * z + 1.0 / 17.0;
  p = p * z + 1.0 / 15.0;
  p = p * z + 1.0 / 13.0;
  p = p * z + 1.0 / 11.0;
  p = p * z + 1.0 / 9.0;
  p = p * z + 1.0 / 7.0;
  p = p * z + 1.0 / 5.0;
  p = p * z + 1.0 / 3.0;
  const V log_m = 2.0 * s + 2.0 * s * z * p;
  return e * 6.93147180369123816490e-01 + (e * 1.90821492927058770002e-10 + log_m);
}

}  // namespace dslens::simd

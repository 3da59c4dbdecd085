// AVX2 + FMA helpers of the CPU kernels of both op libraries
// (custom_ops/psroi_pool/psroi_pool_kernels.cc,
// custom_ops/deformable/deformable_kernels.cc): run-time ISA dispatch and the
// register-blocked channel loops over one bin's C contiguous float channels.
//
// Why run-time dispatch: the .so is built with the compile flags of the
// TensorFlow wheel (baseline x86-64, SSE2), so loops built with those flags
// are 4-wide without FMA. Functions marked RFCN_SIMD_TARGET_AVX2 are compiled
// for AVX2 + FMA (GCC / clang function target attribute) and called only
// where CpuHasAvx2Fma(), so the library still runs on any x86-64.
//
// Register blocking: a bin's C <= 8 * NV channels live in NV ymm registers
// (Lanes<NV>) across all of the bin's cells; the last register is loaded and
// stored with TailMask(C), so no lane reads or writes past the bin's channels
// (the next bin's channels, or the end of the buffer). FMA rounds once per
// multiply-add, so these loops differ from the baseline build by float
// rounding (~1e-7 relative), never run to run.
#ifndef RFCN_TF_CUSTOM_OPS_COMMON_CPU_SIMD_UTIL_H_
#define RFCN_TF_CUSTOM_OPS_COMMON_CPU_SIMD_UTIL_H_

#if defined(__GNUC__) || defined(__clang__)
#define RFCN_SIMD_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define RFCN_SIMD_ALWAYS_INLINE inline
#endif

#if (defined(__GNUC__) || defined(__clang__)) && \
    (defined(__x86_64__) || defined(_M_X64))
#define RFCN_SIMD_HAVE_AVX2_DISPATCH 1
#define RFCN_SIMD_TARGET_AVX2 __attribute__((target("avx2,fma")))
#include <immintrin.h>
#else
#define RFCN_SIMD_HAVE_AVX2_DISPATCH 0
#define RFCN_SIMD_TARGET_AVX2
#endif

namespace rfcn_simd {

#if RFCN_SIMD_HAVE_AVX2_DISPATCH

// True where the CPU executes AVX2 and FMA (CPUID, checked once).
inline bool CpuHasAvx2Fma() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}

// Lane mask of the last of the ceil(C / 8) registers: its 1..8 used lanes.
RFCN_SIMD_TARGET_AVX2 inline __m256i TailMask(int C) {
  const int rem = C - 8 * ((C - 1) / 8);
  alignas(32) int lanes[8];
  for (int l = 0; l < 8; ++l) lanes[l] = l < rem ? -1 : 0;
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
}

// C <= 8 * NV float channels held in registers.
template <int NV>
struct Lanes {
  __m256 v[NV];
};

template <int NV>
RFCN_SIMD_TARGET_AVX2 RFCN_SIMD_ALWAYS_INLINE void Zero(Lanes<NV>* a) {
  for (int k = 0; k < NV; ++k) a->v[k] = _mm256_setzero_ps();
}

// a = channels p[0, C) (masked tail).
template <int NV>
RFCN_SIMD_TARGET_AVX2 RFCN_SIMD_ALWAYS_INLINE void Load(Lanes<NV>* a,
                                                        const float* p,
                                                        __m256i mask) {
  for (int k = 0; k < NV - 1; ++k) a->v[k] = _mm256_loadu_ps(p + 8 * k);
  a->v[NV - 1] = _mm256_maskload_ps(p + 8 * (NV - 1), mask);
}

// p[0, C) = a * s (masked tail).
template <int NV>
RFCN_SIMD_TARGET_AVX2 RFCN_SIMD_ALWAYS_INLINE void StoreScaled(
    float* p, const Lanes<NV>& a, __m256 s, __m256i mask) {
  for (int k = 0; k < NV - 1; ++k) {
    _mm256_storeu_ps(p + 8 * k, _mm256_mul_ps(a.v[k], s));
  }
  _mm256_maskstore_ps(p + 8 * (NV - 1), mask, _mm256_mul_ps(a.v[NV - 1], s));
}

// acc += w * p[0, C) (one fused multiply-add per lane).
template <int NV>
RFCN_SIMD_TARGET_AVX2 RFCN_SIMD_ALWAYS_INLINE void LoadAdd(Lanes<NV>* acc,
                                                           const float* p,
                                                           __m256 w,
                                                           __m256i mask) {
  for (int k = 0; k < NV - 1; ++k) {
    acc->v[k] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 8 * k), acc->v[k]);
  }
  acc->v[NV - 1] = _mm256_fmadd_ps(
      w, _mm256_maskload_ps(p + 8 * (NV - 1), mask), acc->v[NV - 1]);
}

// p[0, C) += w * a (read-modify-write of one bin's channels).
template <int NV>
RFCN_SIMD_TARGET_AVX2 RFCN_SIMD_ALWAYS_INLINE void AddScaledTo(
    float* p, const Lanes<NV>& a, __m256 w, __m256i mask) {
  for (int k = 0; k < NV - 1; ++k) {
    _mm256_storeu_ps(p + 8 * k, _mm256_fmadd_ps(w, a.v[k],
                                                _mm256_loadu_ps(p + 8 * k)));
  }
  float* d = p + 8 * (NV - 1);
  _mm256_maskstore_ps(
      d, mask,
      _mm256_fmadd_ps(w, a.v[NV - 1], _mm256_maskload_ps(d, mask)));
}

// acc += w * a, lane by lane.
template <int NV>
RFCN_SIMD_TARGET_AVX2 RFCN_SIMD_ALWAYS_INLINE void Fma(Lanes<NV>* acc,
                                                       __m256 w,
                                                       const Lanes<NV>& a) {
  for (int k = 0; k < NV; ++k) acc->v[k] = _mm256_fmadd_ps(w, a.v[k], acc->v[k]);
}

// a *= s, lane by lane.
template <int NV>
RFCN_SIMD_TARGET_AVX2 RFCN_SIMD_ALWAYS_INLINE void Scale(Lanes<NV>* a,
                                                         __m256 s) {
  for (int k = 0; k < NV; ++k) a->v[k] = _mm256_mul_ps(a->v[k], s);
}

// p[0, C) += w * a like AddScaledTo, but with full-width loads and stores:
// the lanes past C are loaded and stored back unchanged (a blend keeps them).
// A masked store (VMASKMOVPS) is microcoded on AMD Zen: measured here 6 ns
// per read-modify-write against 1.4 ns for this form. Only where the
// 8 * NV floats from p are valid memory that no other thread writes
// meanwhile (the caller's own row or scratch).
template <int NV>
RFCN_SIMD_TARGET_AVX2 RFCN_SIMD_ALWAYS_INLINE void AddScaledToOwned(
    float* p, const Lanes<NV>& a, __m256 w, __m256i mask) {
  for (int k = 0; k < NV - 1; ++k) {
    _mm256_storeu_ps(p + 8 * k, _mm256_fmadd_ps(w, a.v[k],
                                                _mm256_loadu_ps(p + 8 * k)));
  }
  float* d = p + 8 * (NV - 1);
  const __m256 old = _mm256_loadu_ps(d);
  _mm256_storeu_ps(d, _mm256_blendv_ps(old, _mm256_fmadd_ps(w, a.v[NV - 1], old),
                                       _mm256_castsi256_ps(mask)));
}

// Full-width forms for buffers whose slices are padded to 8 * NV floats
// (no mask: the padding lanes are the caller's, kept 0).
template <int NV>
RFCN_SIMD_TARGET_AVX2 RFCN_SIMD_ALWAYS_INLINE void LoadPadded(Lanes<NV>* a,
                                                              const float* p) {
  for (int k = 0; k < NV; ++k) a->v[k] = _mm256_loadu_ps(p + 8 * k);
}

template <int NV>
RFCN_SIMD_TARGET_AVX2 RFCN_SIMD_ALWAYS_INLINE void AddScaledToPadded(
    float* p, const Lanes<NV>& a, __m256 w) {
  for (int k = 0; k < NV; ++k) {
    _mm256_storeu_ps(p + 8 * k, _mm256_fmadd_ps(w, a.v[k],
                                                _mm256_loadu_ps(p + 8 * k)));
  }
}

// p[0, C) = a without a masked store: whole registers, then the tail lanes
// in 4 / 2 / 1 float pieces (writes nothing past p[C)). For the last
// register rem = C - 8 * (NV - 1) lanes are written.
template <int NV>
RFCN_SIMD_TARGET_AVX2 RFCN_SIMD_ALWAYS_INLINE void StoreFirst(
    float* p, const Lanes<NV>& a, int C) {
  for (int k = 0; k < NV - 1; ++k) _mm256_storeu_ps(p + 8 * k, a.v[k]);
  float* d = p + 8 * (NV - 1);
  const int rem = C - 8 * (NV - 1);
  if (rem == 8) {
    _mm256_storeu_ps(d, a.v[NV - 1]);
    return;
  }
  __m128 x = _mm256_castps256_ps128(a.v[NV - 1]);
  int done = 0;
  if (rem & 4) {
    _mm_storeu_ps(d, x);
    x = _mm256_extractf128_ps(a.v[NV - 1], 1);
    done = 4;
  }
  if (rem & 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(d + done), x);
    x = _mm_movehl_ps(x, x);
    done += 2;
  }
  if (rem & 1) _mm_store_ss(d + done, x);
}

// sum_c a[c] * b[c], in a fixed order (lane-wise products summed over the
// registers, then the 8 lanes in a fixed tree): deterministic. Masked-off
// lanes are 0 in a and b (maskload zeroes them).
template <int NV>
RFCN_SIMD_TARGET_AVX2 RFCN_SIMD_ALWAYS_INLINE float Dot(const Lanes<NV>& a,
                                                        const Lanes<NV>& b) {
  __m256 s = _mm256_mul_ps(a.v[0], b.v[0]);
  for (int k = 1; k < NV; ++k) s = _mm256_fmadd_ps(a.v[k], b.v[k], s);
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(s),
                              _mm256_extractf128_ps(s, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
}

#endif  // RFCN_SIMD_HAVE_AVX2_DISPATCH

}  // namespace rfcn_simd

#endif  // RFCN_TF_CUSTOM_OPS_COMMON_CPU_SIMD_UTIL_H_

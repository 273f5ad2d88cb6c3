// The AVX2 int8 inner loop shared by the conv driver (onestep_conv_q8_avx2.c) and the row-major linear GEMM
// (onestep_linear.c): exact int32 sums of u8 x s8 products through int16 (vpmaddwd: two products summed into
// int32, |255 * 127 * 2| < 2^31, never saturating) + vpaddd, on operands widened once by the callers' packing.
// Internal: not part of the public header.
#ifndef ONESTEP_Q8_AVX2_H
#define ONESTEP_Q8_AVX2_H

#include "onestep_isa.h"

#if OSK_X86
#include <stdint.h>

/// 4 broadcast rows x 8 vector columns over kc k-quads. Row r of k-quad kq: 4 int16 (k = 4kq..4kq+3) at
/// a + r * ars + kq * aks, broadcast as one qword; the 8 columns of k-quad kq: 32 int16 at b + 32 kq (aligned),
/// columns 0..3 then 4..7, each column's 4 values. 8 ymm accumulators: per k-quad 2 loads, 4 vpbroadcastq, 8
/// vpmaddwd + 8 vpaddd. A lane sums one column and one parity of the k pairs (c0p0 c0p1 c1p0 ...), so the
/// parities are added once at the end (vphaddd) and s[r] is row r's 8 sums in column order.
OSK_AVX2_TARGET static inline __attribute__((always_inline)) void q8_sums_4x8_avx2(int kc, const int16_t *a, int64_t ars,
                                                                                   int64_t aks, const int16_t *b, __m256i s[4]) {
    __m256i l0 = _mm256_setzero_si256(), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0, l3 = l0, h3 = l0;
    const int16_t *a0 = a, *a1 = a + ars, *a2 = a + 2 * ars, *a3 = a + 3 * ars;
    for (int kq = 0; kq < kc; kq++, b += 32) {
        const __m256i b0 = _mm256_load_si256((const __m256i *)b), b1 = _mm256_load_si256((const __m256i *)(b + 16));
        const int64_t o = (int64_t)kq * aks;
#define OSK_Q8_STEP(r) { const __m256i av = _mm256_set1_epi64x(*(const long long *)(a##r + o)); \
                         l##r = _mm256_add_epi32(l##r, _mm256_madd_epi16(b0, av)); h##r = _mm256_add_epi32(h##r, _mm256_madd_epi16(b1, av)); }
        OSK_Q8_STEP(0) OSK_Q8_STEP(1) OSK_Q8_STEP(2) OSK_Q8_STEP(3)
#undef OSK_Q8_STEP
    }
    // l = [c0p0 c0p1 c1p0 c1p1 | c2p0 c2p1 c3p0 c3p1]; hadd -> [c0 c1 c4 c5 | c2 c3 c6 c7]; permute to column order.
    s[0] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(l0, h0), _MM_SHUFFLE(3, 1, 2, 0));
    s[1] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(l1, h1), _MM_SHUFFLE(3, 1, 2, 0));
    s[2] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(l2, h2), _MM_SHUFFLE(3, 1, 2, 0));
    s[3] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(l3, h3), _MM_SHUFFLE(3, 1, 2, 0));
}

/// Lanes 0..n-1 set (n <= 8), as a vector mask for maskload / maskstore.
OSK_AVX2_TARGET static inline __m256i q8_mask_first_avx2(int n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);
}

/// Folds n floats at p into per-lane minima / maxima (lanes past n read 0, which every quantization range holds).
OSK_AVX2_TARGET static inline void q8_minmax_avx2(const float *p, int64_t n, __m256 *lo, __m256 *hi) {
    __m256 l = *lo, h = *hi;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 v = _mm256_loadu_ps(p + j);
        l = _mm256_min_ps(l, v);
        h = _mm256_max_ps(h, v);
    }
    if (j < n) {
        const __m256 v = _mm256_maskload_ps(p + j, q8_mask_first_avx2((int)(n - j)));
        l = _mm256_min_ps(l, v);
        h = _mm256_max_ps(h, v);
    }
    *lo = l;
    *hi = h;
}

/// The minimum of lo's lanes and the maximum of hi's (min / max are exact: any order gives the same values).
OSK_AVX2_TARGET static inline void q8_reduce_minmax_avx2(__m256 lo, __m256 hi, float *l_out, float *h_out) {
    float l[8], h[8];
    _mm256_storeu_ps(l, lo);
    _mm256_storeu_ps(h, hi);
    float a = l[0], b = h[0];
    for (int k = 1; k < 8; k++) { a = l[k] < a ? l[k] : a; b = h[k] > b ? h[k] : b; }
    *l_out = a;
    *h_out = b;
}
#endif

#endif

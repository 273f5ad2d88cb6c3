// The GEGLU arithmetic shared by onestep_geglu.c (the GEGLU pass) and onestep_linear_q8.c (GEGLU fused into the
// int8 feed-forward projection's epilogue): one definition, so both give the same bits. Internal header.
//
// erf is a rational approximation (x P(x^2) / Q(x^2) on x clamped to [-4, 4], where erf is +-1 in float;
// the coefficients of Eigen's / XLA's generic_fast_erf_float).
#ifndef ONESTEP_GEGLU_H
#define ONESTEP_GEGLU_H

#include "onestep_isa.h"

#define GEGLU_A1 -1.60960333262415e-02f
#define GEGLU_A3 -2.95459980854025e-03f
#define GEGLU_A5 -7.34990630326855e-04f
#define GEGLU_A7 -5.69250639462346e-05f
#define GEGLU_A9 -2.10102402082508e-06f
#define GEGLU_A11 2.77068142495902e-08f
#define GEGLU_A13 -2.72614225801306e-10f
#define GEGLU_B0 -1.42647390514189e-02f
#define GEGLU_B2 -7.37332916720468e-03f
#define GEGLU_B4 -1.68282697438203e-03f
#define GEGLU_B6 -2.13374055278905e-04f
#define GEGLU_B8 -1.45660718464996e-05f
#define GEGLU_RSQRT2 0.70710678118654752f

#if OSK_X86
/// a * gelu(g) on 16 lanes, the same operations as geglu_scalar1 in onestep_geglu.c.
OSK_AVX512_TARGET static inline __m512 geglu_avx512_16(__m512 a, __m512 g) {
    __m512 t = _mm512_mul_ps(g, _mm512_set1_ps(GEGLU_RSQRT2));
    // max / min return the second operand on NaN: clamp(NaN) would become 4; keep NaN as the scalar path does.
    t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-4.0f)), _mm512_set1_ps(4.0f));
    t = _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask(g, g, _CMP_UNORD_Q), g);
    const __m512 x2 = _mm512_mul_ps(t, t);
    __m512 p = _mm512_fmadd_ps(x2, _mm512_set1_ps(GEGLU_A13), _mm512_set1_ps(GEGLU_A11));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(GEGLU_A9));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(GEGLU_A7));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(GEGLU_A5));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(GEGLU_A3));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(GEGLU_A1));
    p = _mm512_mul_ps(t, p);
    __m512 q = _mm512_fmadd_ps(x2, _mm512_set1_ps(GEGLU_B8), _mm512_set1_ps(GEGLU_B6));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(GEGLU_B4));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(GEGLU_B2));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(GEGLU_B0));
    const __m512 e = _mm512_div_ps(p, q), h = _mm512_mul_ps(_mm512_set1_ps(0.5f), g);
    return _mm512_mul_ps(a, _mm512_fmadd_ps(h, e, h));
}

/// a * gelu(g) on 8 lanes (the CPUs without AVX-512), the same operations as geglu_avx512_16.
OSK_AVX2_TARGET static inline __m256 geglu_avx2_8(__m256 a, __m256 g) {
    __m256 t = _mm256_mul_ps(g, _mm256_set1_ps(GEGLU_RSQRT2));
    t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-4.0f)), _mm256_set1_ps(4.0f));
    t = _mm256_blendv_ps(t, g, _mm256_cmp_ps(g, g, _CMP_UNORD_Q));   // NaN stays NaN, as in the scalar path
    const __m256 x2 = _mm256_mul_ps(t, t);
    __m256 p = _mm256_fmadd_ps(x2, _mm256_set1_ps(GEGLU_A13), _mm256_set1_ps(GEGLU_A11));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(GEGLU_A9));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(GEGLU_A7));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(GEGLU_A5));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(GEGLU_A3));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(GEGLU_A1));
    p = _mm256_mul_ps(t, p);
    __m256 q = _mm256_fmadd_ps(x2, _mm256_set1_ps(GEGLU_B8), _mm256_set1_ps(GEGLU_B6));
    q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(GEGLU_B4));
    q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(GEGLU_B2));
    q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(GEGLU_B0));
    const __m256 e = _mm256_div_ps(p, q), h = _mm256_mul_ps(_mm256_set1_ps(0.5f), g);
    return _mm256_mul_ps(a, _mm256_fmadd_ps(h, e, h));
}

#endif

#endif

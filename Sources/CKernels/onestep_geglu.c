// GEGLU of the latent UNets' feed-forward (diffusers attention.py GEGLU: hidden, gate = proj(x).chunk(2);
// hidden * gelu(gate), gelu exact, i.e. with erf), channel-major, on a range of columns so a thread team can split
// it, with the per-image min / max of its output folded in on the way (the int8 ff.net.2 that reads it then
// skips its range pass).
//
// erf is a rational approximation (x P(x^2) / Q(x^2) on x clamped to [-4, 4], where erf is +-1 in float;
// the coefficients of Eigen's / XLA's generic_fast_erf_float), evaluated by the same fmaf chain at every level,
// so the scalar and AVX-512 paths give the same bits. Error against the double-precision reference:
// LatentKernelsTests (gegluMaxAbsError).
#include "onestep_kernels.h"
#include "onestep_isa.h"

#include <math.h>

#define A1 -1.60960333262415e-02f
#define A3 -2.95459980854025e-03f
#define A5 -7.34990630326855e-04f
#define A7 -5.69250639462346e-05f
#define A9 -2.10102402082508e-06f
#define A11 2.77068142495902e-08f
#define A13 -2.72614225801306e-10f
#define B0 -1.42647390514189e-02f
#define B2 -7.37332916720468e-03f
#define B4 -1.68282697438203e-03f
#define B6 -2.13374055278905e-04f
#define B8 -1.45660718464996e-05f
#define RSQRT2 0.70710678118654752f

/// a * gelu(g) = a * (h + h * erf(g / sqrt 2)), h = g / 2; every step one rounding, fmaf where two are fused.
static inline float geglu_scalar1(float a, float g) {
    float t = g * RSQRT2;
    t = t > 4.0f ? 4.0f : t < -4.0f ? -4.0f : t;   // NaN stays NaN
    const float x2 = t * t;
    float p = fmaf(x2, A13, A11);
    p = fmaf(x2, p, A9);
    p = fmaf(x2, p, A7);
    p = fmaf(x2, p, A5);
    p = fmaf(x2, p, A3);
    p = fmaf(x2, p, A1);
    p = t * p;
    float q = fmaf(x2, B8, B6);
    q = fmaf(x2, q, B4);
    q = fmaf(x2, q, B2);
    q = fmaf(x2, q, B0);
    const float e = p / q, h = 0.5f * g;
    const float gelu = fmaf(h, e, h);
    return a * gelu;
}

static void geglu_scalar(const float *proj, int64_t inner, int64_t cols, int64_t j0, int64_t j1, int64_t length,
                         float *out, float *range) {
    const float *gate = proj + inner * cols;
    for (int64_t r = 0; r < inner; r++)
        for (int64_t j = j0; j < j1; j++) {
            const float v = geglu_scalar1(proj[r * cols + j], gate[r * cols + j]);
            out[r * cols + j] = v;
            if (range) {
                float *p = range + 2 * (j / length);
                p[0] = v < p[0] ? v : p[0];
                p[1] = v > p[1] ? v : p[1];
            }
        }
}

#if OSK_X86
OSK_AVX512_TARGET static inline __m512 geglu_avx512_16(__m512 a, __m512 g) {
    __m512 t = _mm512_mul_ps(g, _mm512_set1_ps(RSQRT2));
    // max / min return the second operand on NaN: clamp(NaN) would become 4; keep NaN as the scalar path does.
    t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-4.0f)), _mm512_set1_ps(4.0f));
    t = _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask(g, g, _CMP_UNORD_Q), g);
    const __m512 x2 = _mm512_mul_ps(t, t);
    __m512 p = _mm512_fmadd_ps(x2, _mm512_set1_ps(A13), _mm512_set1_ps(A11));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(A9));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(A7));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(A5));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(A3));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(A1));
    p = _mm512_mul_ps(t, p);
    __m512 q = _mm512_fmadd_ps(x2, _mm512_set1_ps(B8), _mm512_set1_ps(B6));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(B4));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(B2));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(B0));
    const __m512 e = _mm512_div_ps(p, q), h = _mm512_mul_ps(_mm512_set1_ps(0.5f), g);
    return _mm512_mul_ps(a, _mm512_fmadd_ps(h, e, h));
}

OSK_AVX512_TARGET static void geglu_avx512(const float *proj, int64_t inner, int64_t cols, int64_t j0, int64_t j1,
                                           int64_t length, float *out, float *range) {
    const float *gate = proj + inner * cols;
    // Columns in runs that stay within one image, so each run folds its range into one image's slot.
    for (int64_t s = j0; s < j1;) {
        const int64_t image = s / length, e = (image + 1) * length < j1 ? (image + 1) * length : j1;
        __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
        for (int64_t r = 0; r < inner; r++) {
            const float *a = proj + r * cols, *g = gate + r * cols;
            float *o = out + r * cols;
            for (int64_t j = s; j < e; j += 16) {
                const __mmask16 m = (__mmask16)(e - j >= 16 ? 0xffff : (1u << (e - j)) - 1);
                const __m512 v = geglu_avx512_16(_mm512_maskz_loadu_ps(m, a + j), _mm512_maskz_loadu_ps(m, g + j));
                _mm512_mask_storeu_ps(o + j, m, v);
                lo = _mm512_mask_min_ps(lo, m, lo, v);
                hi = _mm512_mask_max_ps(hi, m, hi, v);
            }
        }
        if (range) {
            float *p = range + 2 * image, l = _mm512_reduce_min_ps(lo), h = _mm512_reduce_max_ps(hi);
            p[0] = l < p[0] ? l : p[0];
            p[1] = h > p[1] ? h : p[1];
        }
        s = e;
    }
}
#endif

void osk_geglu(int level, const float *proj, int64_t inner, int64_t cols, int64_t j0, int64_t j1, int64_t length,
               float *out, float *range) {
    if (j1 <= j0) return;
#if OSK_X86
    if (level == OSK_AVX512) { geglu_avx512(proj, inner, cols, j0, j1, length, out, range); return; }
#endif
    (void)level;
    geglu_scalar(proj, inner, cols, j0, j1, length, out, range);
}

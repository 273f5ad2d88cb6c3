// GEGLU of the latent UNets' feed-forward (diffusers attention.py GEGLU: hidden, gate = proj(x).chunk(2);
// hidden * gelu(gate), gelu exact, i.e. with erf), channel-major, on a range of columns so a thread team can split
// it, with the per-image min / max of its output folded in on the way (the int8 ff.net.2 that reads it then
// skips its range pass).
//
// erf is a rational approximation (x P(x^2) / Q(x^2) on x clamped to [-4, 4], where erf is +-1 in float;
// the coefficients of Eigen's / XLA's generic_fast_erf_float), evaluated by the same fmaf chain at every level,
// so the scalar, AVX2 and AVX-512 paths give the same bits. Error against the double-precision reference:
// LatentKernelsTests (gegluMaxAbsError).
#include "onestep_kernels.h"
#include "onestep_isa.h"
#include "onestep_geglu.h"

#include <math.h>

// Coefficients and the 16-lane AVX-512 form: onestep_geglu.h.

/// a * gelu(g) = a * (h + h * erf(g / sqrt 2)), h = g / 2; every step one rounding, fmaf where two are fused.
static inline float geglu_scalar1(float a, float g) {
    float t = g * GEGLU_RSQRT2;
    t = t > 4.0f ? 4.0f : t < -4.0f ? -4.0f : t;   // NaN stays NaN
    const float x2 = t * t;
    float p = fmaf(x2, GEGLU_A13, GEGLU_A11);
    p = fmaf(x2, p, GEGLU_A9);
    p = fmaf(x2, p, GEGLU_A7);
    p = fmaf(x2, p, GEGLU_A5);
    p = fmaf(x2, p, GEGLU_A3);
    p = fmaf(x2, p, GEGLU_A1);
    p = t * p;
    float q = fmaf(x2, GEGLU_B8, GEGLU_B6);
    q = fmaf(x2, q, GEGLU_B4);
    q = fmaf(x2, q, GEGLU_B2);
    q = fmaf(x2, q, GEGLU_B0);
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

/// geglu_avx512 on 8 lanes (the CPUs without AVX-512): the same operations, so the same bits.
OSK_AVX2_TARGET static void geglu_avx2(const float *proj, int64_t inner, int64_t cols, int64_t j0, int64_t j1,
                                       int64_t length, float *out, float *range) {
    const float *gate = proj + inner * cols;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t s = j0; s < j1;) {
        const int64_t image = s / length, e = (image + 1) * length < j1 ? (image + 1) * length : j1;
        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
        for (int64_t r = 0; r < inner; r++) {
            const float *a = proj + r * cols, *g = gate + r * cols;
            float *o = out + r * cols;
            for (int64_t j = s; j < e; j += 8) {
                const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(e - j < 8 ? e - j : 8)), lane);
                const __m256 v = geglu_avx2_8(_mm256_maskload_ps(a + j, m), _mm256_maskload_ps(g + j, m));
                _mm256_maskstore_ps(o + j, m, v);
                const __m256 vm = _mm256_and_ps(v, _mm256_castsi256_ps(m));   // masked lanes: 0, in every range
                lo = _mm256_min_ps(lo, vm);
                hi = _mm256_max_ps(hi, vm);
            }
        }
        if (range) {
            float l8[8], h8[8];
            _mm256_storeu_ps(l8, lo);
            _mm256_storeu_ps(h8, hi);
            float *p = range + 2 * image;
            for (int k = 0; k < 8; k++) {
                p[0] = l8[k] < p[0] ? l8[k] : p[0];
                p[1] = h8[k] > p[1] ? h8[k] : p[1];
            }
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
    if (level == OSK_AVX2) { geglu_avx2(proj, inner, cols, j0, j1, length, out, range); return; }
#endif
    (void)level;
    geglu_scalar(proj, inner, cols, j0, j1, length, out, range);
}

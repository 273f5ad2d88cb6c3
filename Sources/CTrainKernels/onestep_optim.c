// Optimizer kernels for training (include/onestep_train_kernels.h): the gradient norm's sum of squares and the
// Adam update, over a ParameterStore's flat buffers (about a million floats for the default model: memory-bound
// passes that the Swift loops ran as a serial double chain and scalar element updates).
//
// Adam: every step is a separately rounded IEEE operation (mul, add, sqrt, div; this file is compiled with FP
// contraction off, the vector paths use no FMA), so scalar, AVX2 and AVX-512 give the bits of the Swift loop it
// replaces (Optimizer.referenceAdam, OptimizerKernelTests).
#include "onestep_train_kernels.h"

#include <math.h>

#include "onestep_isa.h"

#pragma STDC FP_CONTRACT OFF
#pragma clang fp contract(off)

#if OSK_X86
#define AVX512 OSK_AVX512_TARGET
#define AVX2 OSK_AVX2_TARGET
#endif

// MARK: - Sum of squares: 8 double lanes in a fixed order

static double fold8(const double l[8]) { return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7])); }

static double sum_squares_scalar(const float *g, int64_t n) {
    double l[8] = {0};
    int64_t full = n / 8 * 8;
    for (int64_t i = 0; i < full; i += 8)
        for (int j = 0; j < 8; j++) { double d = (double)g[i + j]; l[j] = l[j] + d * d; }
    for (int64_t i = full; i < n; i++) { double d = (double)g[i]; l[i - full] = l[i - full] + d * d; }
    return fold8(l);
}

#if OSK_X86
AVX512 static double sum_squares_avx512(const float *g, int64_t n) {
    __m512d acc = _mm512_setzero_pd();
    int64_t full = n / 8 * 8;
    for (int64_t i = 0; i < full; i += 8) {
        __m512d d = _mm512_cvtps_pd(_mm256_loadu_ps(g + i));
        acc = _mm512_add_pd(acc, _mm512_mul_pd(d, d));
    }
    double l[8];
    _mm512_storeu_pd(l, acc);
    for (int64_t i = full; i < n; i++) { double d = (double)g[i]; l[i - full] = l[i - full] + d * d; }
    return fold8(l);
}

AVX2 static double sum_squares_avx2(const float *g, int64_t n) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int64_t full = n / 8 * 8;
    for (int64_t i = 0; i < full; i += 8) {
        __m256d d0 = _mm256_cvtps_pd(_mm_loadu_ps(g + i)), d1 = _mm256_cvtps_pd(_mm_loadu_ps(g + i + 4));
        a0 = _mm256_add_pd(a0, _mm256_mul_pd(d0, d0));
        a1 = _mm256_add_pd(a1, _mm256_mul_pd(d1, d1));
    }
    double l[8];
    _mm256_storeu_pd(l, a0);
    _mm256_storeu_pd(l + 4, a1);
    for (int64_t i = full; i < n; i++) { double d = (double)g[i]; l[i - full] = l[i - full] + d * d; }
    return fold8(l);
}
#endif

double osk_sum_squares(int level, const float *g, int64_t n) {
#if OSK_X86
    if (level == OSK_AVX512) return sum_squares_avx512(g, n);
    if (level == OSK_AVX2) return sum_squares_avx2(g, n);
#endif
    (void)level;
    return sum_squares_scalar(g, n);
}

// MARK: - Adam

static inline void adam_one(float *w, const float *g, float *m, float *v, int64_t i, float clip, float b1, float b2,
                            float step_size, float sqrt_bc2, float eps) {
    float gi = g[i] * clip;
    float mi = b1 * m[i] + (1 - b1) * gi;
    float vi = b2 * v[i] + (1 - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] = w[i] - step_size * mi / (sqrtf(vi) / sqrt_bc2 + eps);
}

#if OSK_X86
AVX512 static void adam_avx512(float *w, const float *g, float *m, float *v, int64_t n, float clip, float b1, float b2,
                               float step_size, float sqrt_bc2, float eps) {
    const __m512 vc = _mm512_set1_ps(clip), vb1 = _mm512_set1_ps(b1), vb2 = _mm512_set1_ps(b2);
    const __m512 v1b1 = _mm512_set1_ps(1 - b1), v1b2 = _mm512_set1_ps(1 - b2), vs = _mm512_set1_ps(step_size);
    const __m512 vq = _mm512_set1_ps(sqrt_bc2), ve = _mm512_set1_ps(eps);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 gi = _mm512_mul_ps(_mm512_loadu_ps(g + i), vc);
        __m512 mi = _mm512_add_ps(_mm512_mul_ps(vb1, _mm512_loadu_ps(m + i)), _mm512_mul_ps(v1b1, gi));
        __m512 vi = _mm512_add_ps(_mm512_mul_ps(vb2, _mm512_loadu_ps(v + i)), _mm512_mul_ps(_mm512_mul_ps(v1b2, gi), gi));
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        __m512 den = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), vq), ve);
        _mm512_storeu_ps(w + i, _mm512_sub_ps(_mm512_loadu_ps(w + i), _mm512_div_ps(_mm512_mul_ps(vs, mi), den)));
    }
    for (; i < n; i++) adam_one(w, g, m, v, i, clip, b1, b2, step_size, sqrt_bc2, eps);
}

AVX2 static void adam_avx2(float *w, const float *g, float *m, float *v, int64_t n, float clip, float b1, float b2,
                           float step_size, float sqrt_bc2, float eps) {
    const __m256 vc = _mm256_set1_ps(clip), vb1 = _mm256_set1_ps(b1), vb2 = _mm256_set1_ps(b2);
    const __m256 v1b1 = _mm256_set1_ps(1 - b1), v1b2 = _mm256_set1_ps(1 - b2), vs = _mm256_set1_ps(step_size);
    const __m256 vq = _mm256_set1_ps(sqrt_bc2), ve = _mm256_set1_ps(eps);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), vc);
        __m256 mi = _mm256_add_ps(_mm256_mul_ps(vb1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(v1b1, gi));
        __m256 vi = _mm256_add_ps(_mm256_mul_ps(vb2, _mm256_loadu_ps(v + i)), _mm256_mul_ps(_mm256_mul_ps(v1b2, gi), gi));
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), vq), ve);
        _mm256_storeu_ps(w + i, _mm256_sub_ps(_mm256_loadu_ps(w + i), _mm256_div_ps(_mm256_mul_ps(vs, mi), den)));
    }
    for (; i < n; i++) adam_one(w, g, m, v, i, clip, b1, b2, step_size, sqrt_bc2, eps);
}
#endif

void osk_adam_update(int level, float *w, const float *g, float *m, float *v, int64_t n, float clip, float b1, float b2,
                     float step_size, float sqrt_bc2, float eps) {
#if OSK_X86
    if (level == OSK_AVX512) { adam_avx512(w, g, m, v, n, clip, b1, b2, step_size, sqrt_bc2, eps); return; }
    if (level == OSK_AVX2) { adam_avx2(w, g, m, v, n, clip, b1, b2, step_size, sqrt_bc2, eps); return; }
#endif
    (void)level;
    for (int64_t i = 0; i < n; i++) adam_one(w, g, m, v, i, clip, b1, b2, step_size, sqrt_bc2, eps);
}

// GroupNorm statistics for the serving path: the mean and variance of one group of one image, read from
// channel-major planes. Each plane is summed in 16 interleaved float lanes (element i goes to lane i mod 16) and
// the lanes are folded in a fixed tree, on every level: the AVX-512 code keeps the 16 lanes in one register, the
// scalar code in an array, with the same additions in the same order (no FMA), so both give identical bits and a
// plane's statistics never depend on where it sits in the batch. Planes are combined in double, as before.
#include "onestep_kernels.h"
#include "onestep_isa.h"

/// Folds 16 lanes: s[j] += s[j + w] for w = 8, 4, 2, 1.
static float fold16(float *s) {
    for (int w = 8; w >= 1; w >>= 1)
        for (int j = 0; j < w; j++) s[j] += s[j + w];
    return s[0];
}

static float plane_sum_scalar(const float *x, int32_t n) {
    float s[16] = {0};
    for (int32_t i = 0; i < n; i++) s[i & 15] += x[i];
    return fold16(s);
}

static float plane_centered_squares_scalar(const float *x, int32_t n, float offset) {
    float s[16] = {0};
    for (int32_t i = 0; i < n; i++) {
        float d = x[i] + offset;
        float dd = d * d;
        s[i & 15] += dd;
    }
    return fold16(s);
}

#if OSK_X86
OSK_AVX512_TARGET static float plane_sum_avx512(const float *x, int32_t n) {
    __m512 acc = _mm512_setzero_ps();
    for (int32_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        acc = _mm512_mask_add_ps(acc, m, acc, _mm512_maskz_loadu_ps(m, x + i));
    }
    float s[16];
    _mm512_storeu_ps(s, acc);
    return fold16(s);
}

OSK_AVX512_TARGET static float plane_centered_squares_avx512(const float *x, int32_t n, float offset) {
    __m512 acc = _mm512_setzero_ps(), off = _mm512_set1_ps(offset);
    for (int32_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 d = _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + i), off);
        acc = _mm512_mask_add_ps(acc, m, acc, _mm512_mul_ps(d, d));
    }
    float s[16];
    _mm512_storeu_ps(s, acc);
    return fold16(s);
}

/// The AVX2 forms: lanes 0-7 and 8-15 in two registers (element i still goes to lane i mod 16), the tail into the
/// same lanes one element at a time, then fold16: the scalar code's additions in its order, so its bits.
OSK_AVX2_TARGET static float plane_sum_avx2(const float *x, int32_t n) {
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) acc[(i >> 3) & 1] = _mm256_add_ps(acc[(i >> 3) & 1], _mm256_loadu_ps(x + i));
    float s[16];
    _mm256_storeu_ps(s, acc[0]); _mm256_storeu_ps(s + 8, acc[1]);
    for (; i < n; i++) s[i & 15] += x[i];
    return fold16(s);
}

OSK_AVX2_TARGET static float plane_centered_squares_avx2(const float *x, int32_t n, float offset) {
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, off = _mm256_set1_ps(offset);
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 d = _mm256_add_ps(_mm256_loadu_ps(x + i), off);
        acc[(i >> 3) & 1] = _mm256_add_ps(acc[(i >> 3) & 1], _mm256_mul_ps(d, d));
    }
    float s[16];
    _mm256_storeu_ps(s, acc[0]); _mm256_storeu_ps(s + 8, acc[1]);
    for (; i < n; i++) {
        float d = x[i] + offset;
        float dd = d * d;   // its own statement: not contracted into an FMA with the add
        s[i & 15] += dd;
    }
    return fold16(s);
}
#endif

static float plane_sum(int level, const float *x, int32_t n) {
#if OSK_X86
    if (level >= OSK_AVX512) return plane_sum_avx512(x, n);
    if (level == OSK_AVX2) return plane_sum_avx2(x, n);
#endif
    (void)level;
    return plane_sum_scalar(x, n);
}

static float plane_centered_squares(int level, const float *x, int32_t n, float offset) {
#if OSK_X86
    if (level >= OSK_AVX512) return plane_centered_squares_avx512(x, n, offset);
    if (level == OSK_AVX2) return plane_centered_squares_avx2(x, n, offset);
#endif
    (void)level;
    return plane_centered_squares_scalar(x, n, offset);
}

void osk_group_moments(int level, const float *x, int64_t plane_stride, int32_t planes, int32_t hw,
                       const float *shift, double *mean, double *variance) {
    double sum = 0;
    for (int32_t p = 0; p < planes; p++) {
        const float *plane = x + p * plane_stride;
        float s = plane_sum(level, plane, hw);
        sum += (double)s + (shift ? (double)shift[p] * hw : 0.0);
    }
    const double count = (double)planes * hw, m = sum / count;
    double squares = 0;
    for (int32_t p = 0; p < planes; p++) {
        const float *plane = x + p * plane_stride;
        float offset = (float)((shift ? (double)shift[p] : 0.0) - m);
        squares += plane_centered_squares(level, plane, hw, offset);
    }
    *mean = m;
    *variance = squares / count;
}

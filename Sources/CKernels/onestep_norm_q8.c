// GroupNorm (+ SiLU) written straight as the int8 convolution's activation codes (see include/onestep_kernels.h:
// osk_silu_range, osk_plane_range, osk_affine_bounds, osk_affine_q8_encode).
//
// Why: in the int8 pixel UNet every GroupNorm feeds an int8 convolution (norm1 -> conv1, norm2 -> conv2, the
// attention norm -> q/k/v). Done apart, the norm read x and wrote h (fp32), then the quantizer read h for its
// range and again for its codes: five passes over an fp32 activation for one pass of useful output. Here the
// range of y = f(x * a + b) (f = SiLU or identity, a / b the per-channel affine GroupNorm reduces to) comes from
// a pass of compares over x (in L2 after the norm's moments), no e^x: for the identity the endpoint values of
// x's min and max; for SiLU, which falls to one minimum then rises, the values at the smallest and largest
// pre-activation z and at the z nearest that minimum from either side. Those are values of the map, so the
// range is the one the quantizer's own pass would find. The codes are then written in one pass from x.
//
// Arithmetic: y is computed exactly as the fp32 path computes it (SiLU: fmaf(x, a, b) then v / (1 + e^-v) as
// osk_affine_silu; identity: x * a rounded, then + b, as ChannelMajor.groupNorm's Swift loop), and the code
// as osk_q8_encode (round to nearest even of y / s, + zero point, clamped), so with the same (scale, zero point)
// the codes are those of the separate passes; the AVX-512 and scalar levels give the same bits.
#include <math.h>

#include "onestep_kernels.h"
#include "onestep_isa.h"
#include "onestep_simd_math.h"

#if OSK_X86
#define AVX512 OSK_AVX512_TARGET
#endif

/// SiLU's minimum: silu(z) >= -0.278464543 for every z (at z = -1.278464543). Rounded down, so values the
/// polynomial e^x gives a hair below the exact minimum still lie inside the bound.
#define SILU_MIN_Z (-1.2784645f)
#define SILU_MIN_BOUND (-0.2784700f)

/// e^x exactly as osk_exp512 computes it, lane by lane (explicit fmaf: no reliance on contraction).
static inline float exp_like_avx512(float x) {
    x = fminf(fmaxf(x, -87.3f), 88.7f);
    float n = nearbyintf(x * 1.44269504f);
    float r = fmaf(-n, 0.693359375f, x);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    float rr = r * r;
    float er = fmaf(p, rr, r) + 1.0f;
    union { uint32_t u; float f; } s = { .u = (uint32_t)((int32_t)n + 127) << 23 };
    return er * s.f;
}

/// y for one value: the fp32 path's arithmetic (see the file comment).
static inline float affine_value(float x, float a, float b, int silu) {
    if (silu) {
        float v = fmaf(x, a, b);
        float d = 1.0f + exp_like_avx512(0.0f - v);
        return v / d;
    }
    float t = x * a;   // two statements: never contracted into an fma
    return t + b;
}

static inline float silu_of(float z) {
    float d = 1.0f + exp_like_avx512(0.0f - z);
    return z / d;
}

/// Folds the exact min / max of silu(z) over the candidates a plane's pass found: SiLU falls to its minimum at
/// SILU_MIN_Z and rises after, so the largest value is at zmin or zmax and the smallest at the z nearest that
/// minimum from below or from above.
static void fold_silu_candidates(float zmin, float zmax, float below, float above, float *vlo, float *vhi) {
    float e0 = silu_of(zmin), e1 = silu_of(zmax);
    float h = e0 > e1 ? e0 : e1, l = INFINITY;
    if (below > -INFINITY) { float v = silu_of(below); l = v < l ? v : l; }
    if (above < INFINITY) { float v = silu_of(above); l = v < l ? v : l; }
    *vlo = l < *vlo ? l : *vlo;
    *vhi = h > *vhi ? h : *vhi;
}

static void silu_range_scalar(const float *x, int32_t hw, float a, float b, float *vlo, float *vhi) {
    float zmin = INFINITY, zmax = -INFINITY, below = -INFINITY, above = INFINITY;
    for (int32_t j = 0; j < hw; j++) {
        float z = fmaf(x[j], a, b);
        zmin = z < zmin ? z : zmin;
        zmax = z > zmax ? z : zmax;
        if (z <= SILU_MIN_Z) below = z > below ? z : below;
        if (z >= SILU_MIN_Z) above = z < above ? z : above;
    }
    fold_silu_candidates(zmin, zmax, below, above, vlo, vhi);
}

static inline uint32_t code_of(float v, float inv, int32_t zp) {
    long q = lrintf(v * inv) + zp;
    return (uint32_t)(q < 0 ? 0 : q > 255 ? 255 : q);
}

static void plane_range_scalar(const float *x, int32_t hw, float *lo, float *hi) {
    float l = x[0], h = x[0];
    for (int32_t j = 1; j < hw; j++) { l = x[j] < l ? x[j] : l; h = x[j] > h ? x[j] : h; }
    *lo = l;
    *hi = h;
}

static void encode_scalar(const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t q0, int32_t q1,
                          const float *a, const float *b, int silu, uint32_t *xq, float inv, int32_t zp) {
    for (int q = q0; q < q1; q++) {
        uint32_t *d = xq + ((int64_t)q * n + i) * hw;
        for (int32_t j = 0; j < hw; j++) {
            uint32_t word = 0;
            for (int k = 0; k < 4; k++) {
                int ch = 4 * q + k;
                uint32_t v = ch < c ? code_of(affine_value(x[((int64_t)ch * n + i) * hw + j], a[ch], b[ch], silu), inv, zp)
                                    : (uint32_t)zp;
                word |= v << (8 * k);
            }
            d[j] = word;
        }
    }
}

#if OSK_X86
AVX512 static void plane_range_avx512(const float *x, int32_t hw, float *lo, float *hi) {
    __m512 l = _mm512_set1_ps(x[0]), h = l;   // masked-off lanes keep x[0], a value of the plane
    for (int32_t j = 0; j < hw; j += 16) {
        __mmask16 m = (__mmask16)(hw - j >= 16 ? 0xffff : (1u << (hw - j)) - 1);
        __m512 v = _mm512_mask_loadu_ps(l, m, x + j);
        l = _mm512_min_ps(l, v);
        v = _mm512_mask_loadu_ps(h, m, x + j);
        h = _mm512_max_ps(h, v);
    }
    *lo = _mm512_reduce_min_ps(l);
    *hi = _mm512_reduce_max_ps(h);
}

AVX512 static void silu_range_avx512(const float *x, int32_t hw, float a, float b, float *vlo, float *vhi) {
    const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), zs = _mm512_set1_ps(SILU_MIN_Z);
    __m512 zmin = _mm512_set1_ps(INFINITY), zmax = _mm512_set1_ps(-INFINITY), below = zmax, above = zmin;
    for (int32_t j = 0; j < hw; j += 16) {
        __mmask16 m = (__mmask16)(hw - j >= 16 ? 0xffff : (1u << (hw - j)) - 1);
        __m512 z = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + j), va, vb);
        zmin = _mm512_mask_min_ps(zmin, m, zmin, z);
        zmax = _mm512_mask_max_ps(zmax, m, zmax, z);
        below = _mm512_mask_max_ps(below, m & _mm512_cmp_ps_mask(z, zs, _CMP_LE_OQ), below, z);
        above = _mm512_mask_min_ps(above, m & _mm512_cmp_ps_mask(z, zs, _CMP_GE_OQ), above, z);
    }
    fold_silu_candidates(_mm512_reduce_min_ps(zmin), _mm512_reduce_max_ps(zmax), _mm512_reduce_max_ps(below),
                         _mm512_reduce_min_ps(above), vlo, vhi);
}

AVX512 static void encode_avx512(const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t q0, int32_t q1,
                                 const float *a, const float *b, int silu, uint32_t *xq, float inv, int32_t zp) {
    const __m512 vinv = _mm512_set1_ps(inv), one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    const __m512i vzp = _mm512_set1_epi32(zp), v0 = _mm512_setzero_si512(), v255 = _mm512_set1_epi32(255);
    for (int q = q0; q < q1; q++) {
        uint32_t *d = xq + ((int64_t)q * n + i) * hw;
        const float *src[4];
        __m512 va[4], vb[4];
        for (int k = 0; k < 4; k++) {
            int ch = 4 * q + k < c ? 4 * q + k : c - 1;   // channels past C are never read (their code is zp)
            src[k] = x + ((int64_t)ch * n + i) * hw;
            va[k] = _mm512_set1_ps(a[ch]);
            vb[k] = _mm512_set1_ps(b[ch]);
        }
        for (int32_t j = 0; j < hw; j += 16) {
            __mmask16 m = (__mmask16)(hw - j >= 16 ? 0xffff : (1u << (hw - j)) - 1);
            __m512i word = _mm512_setzero_si512();
            for (int k = 0; k < 4; k++) {
                __m512i code = vzp;
                if (4 * q + k < c) {
                    __m512 xv = _mm512_maskz_loadu_ps(m, src[k] + j), v;
                    if (silu) {
                        __m512 z = _mm512_fmadd_ps(xv, va[k], vb[k]);
                        v = _mm512_div_ps(z, _mm512_add_ps(one, osk_exp512(_mm512_sub_ps(zero, z))));
                    } else {
                        v = _mm512_add_ps(_mm512_mul_ps(xv, va[k]), vb[k]);
                    }
                    code = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, vinv)), vzp);   // nearest-even
                    code = _mm512_min_epi32(_mm512_max_epi32(code, v0), v255);
                }
                word = _mm512_or_si512(word, _mm512_slli_epi32(code, 8 * k));
            }
            _mm512_mask_storeu_epi32(d + j, m, word);
        }
    }
}

// The avx2 level (CPUs without AVX-512): the AVX-512 functions above on 8 lanes, masked lanes blended to values
// that change no minimum / maximum; osk_exp256 is osk_exp512's operations, so the same bits.
#define AVX2 OSK_AVX2_TARGET

AVX2 static inline __m256i tail_mask_avx2(int32_t left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

AVX2 static float hmin_avx2(__m256 v) {
    float f[8];
    _mm256_storeu_ps(f, v);
    float r = f[0];
    for (int k = 1; k < 8; k++) r = f[k] < r ? f[k] : r;
    return r;
}

AVX2 static float hmax_avx2(__m256 v) {
    float f[8];
    _mm256_storeu_ps(f, v);
    float r = f[0];
    for (int k = 1; k < 8; k++) r = f[k] > r ? f[k] : r;
    return r;
}

AVX2 static void plane_range_avx2(const float *x, int32_t hw, float *lo, float *hi) {
    const __m256 first = _mm256_set1_ps(x[0]);   // masked-off lanes read x[0], a value of the plane
    __m256 l = first, h = first;
    for (int32_t j = 0; j < hw; j += 8) {
        const __m256 m = _mm256_castsi256_ps(tail_mask_avx2(hw - j));
        const __m256 v = _mm256_blendv_ps(first, _mm256_maskload_ps(x + j, _mm256_castps_si256(m)), m);
        l = _mm256_min_ps(l, v);
        h = _mm256_max_ps(h, v);
    }
    *lo = hmin_avx2(l);
    *hi = hmax_avx2(h);
}

AVX2 static void silu_range_avx2(const float *x, int32_t hw, float a, float b, float *vlo, float *vhi) {
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b), zs = _mm256_set1_ps(SILU_MIN_Z);
    const __m256 inf = _mm256_set1_ps(INFINITY), ninf = _mm256_set1_ps(-INFINITY);
    __m256 zmin = inf, zmax = ninf, below = ninf, above = inf;
    for (int32_t j = 0; j < hw; j += 8) {
        const __m256 m = _mm256_castsi256_ps(tail_mask_avx2(hw - j));
        const __m256 z = _mm256_fmadd_ps(_mm256_maskload_ps(x + j, _mm256_castps_si256(m)), va, vb);
        zmin = _mm256_min_ps(zmin, _mm256_blendv_ps(inf, z, m));
        zmax = _mm256_max_ps(zmax, _mm256_blendv_ps(ninf, z, m));
        below = _mm256_max_ps(below, _mm256_blendv_ps(ninf, z, _mm256_and_ps(m, _mm256_cmp_ps(z, zs, _CMP_LE_OQ))));
        above = _mm256_min_ps(above, _mm256_blendv_ps(inf, z, _mm256_and_ps(m, _mm256_cmp_ps(z, zs, _CMP_GE_OQ))));
    }
    fold_silu_candidates(hmin_avx2(zmin), hmax_avx2(zmax), hmax_avx2(below), hmin_avx2(above), vlo, vhi);
}

AVX2 static void encode_avx2(const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t q0, int32_t q1,
                             const float *a, const float *b, int silu, uint32_t *xq, float inv, int32_t zp) {
    const __m256 vinv = _mm256_set1_ps(inv), one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256i vzp = _mm256_set1_epi32(zp), v0 = _mm256_setzero_si256(), v255 = _mm256_set1_epi32(255);
    for (int q = q0; q < q1; q++) {
        uint32_t *d = xq + ((int64_t)q * n + i) * hw;
        const float *src[4];
        __m256 va[4], vb[4];
        for (int k = 0; k < 4; k++) {
            int ch = 4 * q + k < c ? 4 * q + k : c - 1;   // channels past C are never read (their code is zp)
            src[k] = x + ((int64_t)ch * n + i) * hw;
            va[k] = _mm256_set1_ps(a[ch]);
            vb[k] = _mm256_set1_ps(b[ch]);
        }
        for (int32_t j = 0; j < hw; j += 8) {
            const __m256i m = tail_mask_avx2(hw - j);
            __m256i word = _mm256_setzero_si256();
            for (int k = 0; k < 4; k++) {
                __m256i code = vzp;
                if (4 * q + k < c) {
                    __m256 xv = _mm256_maskload_ps(src[k] + j, m), v;
                    if (silu) {
                        __m256 z = _mm256_fmadd_ps(xv, va[k], vb[k]);
                        v = _mm256_div_ps(z, _mm256_add_ps(one, osk_exp256(_mm256_sub_ps(zero, z))));
                    } else {
                        v = _mm256_add_ps(_mm256_mul_ps(xv, va[k]), vb[k]);
                    }
                    code = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v, vinv)), vzp);   // nearest-even
                    code = _mm256_min_epi32(_mm256_max_epi32(code, v0), v255);
                }
                word = _mm256_or_si256(word, _mm256_slli_epi32(code, 8 * k));
            }
            _mm256_maskstore_epi32((int *)(d + j), m, word);
        }
    }
}
#endif

void osk_plane_range(int level, const float *x, int32_t hw, float *lo, float *hi) {
    if (hw <= 0) { *lo = 0; *hi = 0; return; }
#if OSK_X86
    if (level >= OSK_AVX512) { plane_range_avx512(x, hw, lo, hi); return; }
    if (level == OSK_AVX2) { plane_range_avx2(x, hw, lo, hi); return; }
#endif
    (void)level;
    plane_range_scalar(x, hw, lo, hi);
}

void osk_silu_range(int level, const float *x, int32_t hw, float a, float b, float *vlo, float *vhi) {
    if (hw <= 0) return;
#if OSK_X86
    if (level >= OSK_AVX512) { silu_range_avx512(x, hw, a, b, vlo, vhi); return; }
    if (level == OSK_AVX2) { silu_range_avx2(x, hw, a, b, vlo, vhi); return; }
#endif
    (void)level;
    silu_range_scalar(x, hw, a, b, vlo, vhi);
}

void osk_affine_bounds(float lo, float hi, float a, float b, int silu, float *vlo, float *vhi) {
    float e0 = affine_value(lo, a, b, silu), e1 = affine_value(hi, a, b, silu);
    float l = e0 < e1 ? e0 : e1, h = e0 > e1 ? e0 : e1;
    if (silu) {
        // The pre-activations z = x * a + b span [z(lo), z(hi)] (either order); SiLU falls then rises.
        float z0 = fmaf(lo, a, b), z1 = fmaf(hi, a, b);
        float zl = z0 < z1 ? z0 : z1, zh = z0 > z1 ? z0 : z1;
        if (zl < SILU_MIN_Z && zh > SILU_MIN_Z) l = SILU_MIN_BOUND;
    }
    *vlo = l < *vlo ? l : *vlo;
    *vhi = h > *vhi ? h : *vhi;
}

void osk_affine_q8_encode(int level, const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t q0, int32_t q1,
                          const float *a, const float *b, int32_t silu, uint32_t *xq, float scale, int32_t zp) {
    if (q1 <= q0 || hw <= 0) return;
    const float inv = 1.0f / scale;   // as osk_q8_encode
#if OSK_X86
    if (level >= OSK_AVX512) { encode_avx512(x, c, n, hw, i, q0, q1, a, b, silu, xq, inv, zp); return; }
    if (level == OSK_AVX2) { encode_avx2(x, c, n, hw, i, q0, q1, a, b, silu, xq, inv, zp); return; }
#endif
    (void)level;
    encode_scalar(x, c, n, hw, i, q0, q1, a, b, silu, xq, inv, zp);
}

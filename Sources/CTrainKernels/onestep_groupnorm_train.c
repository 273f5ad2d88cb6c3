// GroupNorm (+ fused SiLU) forward and backward of the training layers (TrainableGroupNorm): the per-plane passes,
// a layer in one call, and either layout of each operand. Serving never runs these; they live in CTrainKernels so
// onestep-serve links none of them. e^x as the serving SiLU computes it (onestep_simd_math.h).
#include "onestep_kernels.h"
#include "onestep_train_kernels.h"
#include "onestep_isa.h"
#include "onestep_simd_math.h"
#include <math.h>
#include <string.h>

#if OSK_X86
#define AVX512 OSK_AVX512_TARGET
#define AVX2 OSK_AVX2_TARGET
#endif

// The 16 lanes summed as _mm512_reduce_add_ps does (halves added: 8, then 4, 2, 1 lanes apart), in place.
static float lanes_tree16(float *l) {
    for (int w = 8; w >= 1; w >>= 1)
        for (int j = 0; j < w; j++) l[j] = l[j] + l[j + w];
    return l[0];
}

// GroupNorm (+ fused SiLU) backward of one channel plane, the training layers' (TrainableGroupNorm):
//   xhat = (x - mean) * rstd;  z = xhat * gamma + beta;  dz = dy * silu'(z) (or dy without SiLU)
// writes dz and returns sum(dz) and sum(dz * xhat), summed in 16 lanes then the lanes as a tree (fixed for a given n).
// gn_grad_lanes runs elements i0 ..< n into the 16 partial sums; never inlined, so that the AVX2 path calling it for
// its tail does not contract its products into FMAs (its own target has FMA): both keep the scalar build's bits.
__attribute__((noinline)) static void gn_grad_lanes(const float *x, const float *dy, float *dz, int64_t i0, int64_t n, float mean,
                                                    float rstd, float gamma, float beta, int silu, float lanes_dz[16],
                                                    float lanes_dzx[16]) {
    for (int64_t i = i0; i < n; i++) {
        float xh = (x[i] - mean) * rstd, d = dy[i];
        if (silu) {
            float z = xh * gamma + beta, s = 1.0f / (1.0f + osk_exp_poly(-z));
            d = d * (s * (1.0f + z * (1.0f - s)));
        }
        dz[i] = d;
        lanes_dz[i & 15] += d;
        lanes_dzx[i & 15] += d * xh;
    }
}

static void gn_grad_scalar(const float *x, const float *dy, float *dz, int64_t n, float mean, float rstd, float gamma,
                           float beta, int silu, float *sum_dz, float *sum_dzx) {
    float lanes_dz[16] = {0}, lanes_dzx[16] = {0};
    gn_grad_lanes(x, dy, dz, 0, n, mean, rstd, gamma, beta, silu, lanes_dz, lanes_dzx);
    *sum_dz = lanes_tree16(lanes_dz); *sum_dzx = lanes_tree16(lanes_dzx);
}

// dx = rstd * (dz * gamma - mean_g - xhat * mean_gx), in place over dz (not inlined: see gn_grad_lanes).
__attribute__((noinline)) static void gn_finish_scalar(const float *x, float *d, int64_t n, float mean, float rstd, float gamma,
                                                       float mean_g, float mean_gx) {
    for (int64_t i = 0; i < n; i++) {
        float xh = (x[i] - mean) * rstd;
        d[i] = rstd * (d[i] * gamma - mean_g - xh * mean_gx);
    }
}

#if OSK_X86
AVX512 static void gn_grad_avx512(const float *x, const float *dy, float *dz, int64_t n, float mean, float rstd, float gamma,
                                  float beta, int silu, float *sum_dz, float *sum_dzx) {
    const __m512 vm = _mm512_set1_ps(mean), vr = _mm512_set1_ps(rstd), vg = _mm512_set1_ps(gamma), vb = _mm512_set1_ps(beta);
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 acc = _mm512_setzero_ps(), accx = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm), vr);
        __m512 d = _mm512_maskz_loadu_ps(m, dy + i);
        if (silu) {
            __m512 z = _mm512_fmadd_ps(xh, vg, vb);
            // s = 1 / (1 + e^-z) by rcp14 and one Newton step (relative error ~2^-23) instead of a vdivps, which
            // was most of this loop's time; osk_exp512 clamps its input, so the denominator is finite and a * r is not NaN.
            __m512 den = _mm512_add_ps(one, osk_exp512(_mm512_sub_ps(_mm512_setzero_ps(), z)));
            __m512 s = _mm512_rcp14_ps(den);
            s = _mm512_fmadd_ps(s, _mm512_fnmadd_ps(den, s, one), s);
            d = _mm512_mul_ps(d, _mm512_mul_ps(s, _mm512_fmadd_ps(z, _mm512_sub_ps(one, s), one)));
        }
        _mm512_mask_storeu_ps(dz + i, m, d);
        acc = _mm512_add_ps(acc, d);
        accx = _mm512_fmadd_ps(d, xh, accx);
    }
    // In registers: a 64-byte store read back as 32 scalars in one chain cost more than the loop on small planes.
    *sum_dz = _mm512_reduce_add_ps(acc); *sum_dzx = _mm512_reduce_add_ps(accx);
}

// dx = rstd * (dz * gamma - mean_g - xhat * mean_gx), in place over dz.
AVX512 static void gn_finish_avx512(const float *x, float *d, int64_t n, float mean, float rstd, float gamma, float mean_g,
                                    float mean_gx) {
    const __m512 vm = _mm512_set1_ps(mean), vr = _mm512_set1_ps(rstd), vg = _mm512_set1_ps(gamma);
    const __m512 mg = _mm512_set1_ps(mean_g), mgx = _mm512_set1_ps(mean_gx);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm), vr);
        __m512 v = _mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, d + i), vg, mg);
        v = _mm512_fnmadd_ps(xh, mgx, v);
        _mm512_mask_storeu_ps(d + i, m, _mm512_mul_ps(vr, v));
    }
}
#endif

#if OSK_X86
/// gn_grad_scalar on 8 lanes with its bits: the same operations, each rounded on its own (no FMA; the scalar e^x's
/// bits, an IEEE division), lanes 0-7 and 8-15 of its 16 partial sums in two registers and the same tree at the
/// end. The AVX2 level thus keeps the scalar level's results (it ran the scalar loop before).
AVX2 static void gn_grad_avx2(const float *x, const float *dy, float *dz, int64_t n, float mean, float rstd, float gamma,
                              float beta, int silu, float *sum_dz, float *sum_dzx) {
    const __m256 vm = _mm256_set1_ps(mean), vr = _mm256_set1_ps(rstd), vg = _mm256_set1_ps(gamma), vb = _mm256_set1_ps(beta);
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, accx[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const int half = (int)(i >> 3) & 1;   // lanes i & 15: 0-7 or 8-15
        __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vr);
        __m256 d = _mm256_loadu_ps(dy + i);
        if (silu) {
            __m256 z = _mm256_add_ps(_mm256_mul_ps(xh, vg), vb);
            __m256 sg = _mm256_div_ps(one, _mm256_add_ps(one, osk_exp256_poly(osk_neg256(z))));
            d = _mm256_mul_ps(d, _mm256_mul_ps(sg, _mm256_add_ps(one, _mm256_mul_ps(z, _mm256_sub_ps(one, sg)))));
        }
        _mm256_storeu_ps(dz + i, d);
        acc[half] = _mm256_add_ps(acc[half], d);
        accx[half] = _mm256_add_ps(accx[half], _mm256_mul_ps(d, xh));
    }
    float lanes_dz[16], lanes_dzx[16];
    _mm256_storeu_ps(lanes_dz, acc[0]); _mm256_storeu_ps(lanes_dz + 8, acc[1]);
    _mm256_storeu_ps(lanes_dzx, accx[0]); _mm256_storeu_ps(lanes_dzx + 8, accx[1]);
    gn_grad_lanes(x, dy, dz, i, n, mean, rstd, gamma, beta, silu, lanes_dz, lanes_dzx);   // the tail
    *sum_dz = lanes_tree16(lanes_dz); *sum_dzx = lanes_tree16(lanes_dzx);
}

/// gn_finish_scalar on 8 lanes, each operation rounded on its own: the scalar bits.
AVX2 static void gn_finish_avx2(const float *x, float *d, int64_t n, float mean, float rstd, float gamma, float mean_g,
                                float mean_gx) {
    const __m256 vm = _mm256_set1_ps(mean), vr = _mm256_set1_ps(rstd), vg = _mm256_set1_ps(gamma);
    const __m256 mg = _mm256_set1_ps(mean_g), mgx = _mm256_set1_ps(mean_gx);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vr);
        __m256 v = _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(d + i), vg), mg);
        v = _mm256_sub_ps(v, _mm256_mul_ps(xh, mgx));
        _mm256_storeu_ps(d + i, _mm256_mul_ps(vr, v));
    }
    gn_finish_scalar(x + i, d + i, n - i, mean, rstd, gamma, mean_g, mean_gx);
}
#endif

void osk_groupnorm_grad(int level, const float *x, const float *dy, float *dz, int64_t n, float mean, float rstd,
                        float gamma, float beta, int silu, float *sum_dz, float *sum_dzx) {
#if OSK_X86
    if (level >= OSK_AVX512) { gn_grad_avx512(x, dy, dz, n, mean, rstd, gamma, beta, silu, sum_dz, sum_dzx); return; }
    if (level == OSK_AVX2) { gn_grad_avx2(x, dy, dz, n, mean, rstd, gamma, beta, silu, sum_dz, sum_dzx); return; }
#endif
    gn_grad_scalar(x, dy, dz, n, mean, rstd, gamma, beta, silu, sum_dz, sum_dzx);
}

void osk_groupnorm_backward(int level, const float *x, const float *dy, float *dx, int32_t n, int32_t c, int32_t groups,
                            int32_t hw, const float *stats, const float *gamma, const float *beta, int silu, float *dgamma,
                            float *dbeta) {
    osk_groupnorm_backward_layouts(level, x, 0, dy, 0, dx, 0, n, c, groups, hw, stats, gamma, beta, silu, dgamma, dbeta);
}

// Offset of channel `ch` of image i: (N, C, HW) or, channel-major, (C, N, HW). The planes are visited in the same
// order in either layout, so the results are the same bits; only where each plane lives changes.
static inline int64_t gn_plane(int cm, int32_t n, int32_t c, int32_t hw, int32_t i, int32_t ch) {
    return (cm ? (int64_t)ch * n + i : (int64_t)i * c + ch) * hw;
}

// The first pass is bound by loading x and dy (the forward's input, long out of cache, and the gradient that the
// conv before it wrote): perf annotate put two thirds of its samples on those two loads. Each plane is 1 KiB or less
// (16x16 and smaller), and in the channel-major layout the next plane lives elsewhere, so the hardware prefetcher
// starts late: fetch the planes two ahead in (image, channel) order. A hint only: the results do not change.
#define GN_PREFETCH_PLANES 2
/// Prefetches plane q = image * C + channel of x (nothing past the last).
static inline void gn_prefetch_plane(const float *x, int x_cm, int32_t n, int32_t c, int32_t hw, int64_t q) {
    if (q >= (int64_t)n * c) return;
    const char *p = (const char *)(x + gn_plane(x_cm, n, c, hw, (int32_t)(q / c), (int32_t)(q % c)));
    for (int64_t b = 0; b < (int64_t)hw * (int64_t)sizeof(float); b += 64) __builtin_prefetch(p + b, 0, 3);
}

static inline void gn_prefetch_ahead(const float *x, int x_cm, const float *dy, int dy_cm, int32_t n, int32_t c, int32_t hw,
                                     int32_t i, int32_t ch) {
    const int64_t q = (int64_t)i * c + ch + GN_PREFETCH_PLANES;
    if (q >= (int64_t)n * c) return;
    const int32_t i2 = (int32_t)(q / c), ch2 = (int32_t)(q % c);
    const char *px = (const char *)(x + gn_plane(x_cm, n, c, hw, i2, ch2));
    const char *pd = (const char *)(dy + gn_plane(dy_cm, n, c, hw, i2, ch2));
    for (int64_t b = 0; b < (int64_t)hw * (int64_t)sizeof(float); b += 64) {
        __builtin_prefetch(px + b, 0, 3);
        __builtin_prefetch(pd + b, 0, 3);
    }
}

void osk_groupnorm_forward_layouts(int level, const float *x, int x_cm, float *y, int y_cm, int32_t n, int32_t c,
                                   int32_t groups, int32_t hw, float eps, const float *gamma, const float *beta, int silu,
                                   float *stats) {
    const int cpg = c / groups;
    const int64_t stride = x_cm ? (int64_t)n * hw : hw;  // between channels ch and ch + 1 of one image
    for (int i = 0; i < n; i++) {
        for (int gi = 0; gi < groups; gi++) {
            double mean, variance;
            osk_group_moments(level, x + gn_plane(x_cm, n, c, hw, i, gi * cpg), stride, cpg, hw, NULL, &mean, &variance);
            const double rstd = 1.0 / sqrt(variance + (double)eps);
            stats[((int64_t)i * groups + gi) * 2] = (float)mean;
            stats[((int64_t)i * groups + gi) * 2 + 1] = (float)rstd;
            for (int cc = 0; cc < cpg; cc++) {
                const int ch = gi * cpg + cc;
                // The next group's plane cc, so that its statistics read it from cache (see gn_prefetch_ahead).
                gn_prefetch_plane(x, x_cm, n, c, hw, (int64_t)i * c + ch + cpg);
                // Each product its own statement (no contraction into an FMA): the rounding of the Swift loop this
                // replaces, scale = Float(rstd * gamma), shift = Float(beta - mean * rstd * gamma) in double.
                const double g = (double)gamma[ch];
                const float scale = (float)(rstd * g);
                double t = mean * rstd;
                t = t * g;
                const float shift = (float)((double)beta[ch] - t);
                const float *src = x + gn_plane(x_cm, n, c, hw, i, ch);
                float *dst = y + gn_plane(y_cm, n, c, hw, i, ch);
                if (silu) {
                    osk_affine_silu(level, src, dst, hw, scale, shift);
                } else {
                    for (int32_t j = 0; j < hw; j++) {
                        const float p = src[j] * scale;
                        dst[j] = p + shift;
                    }
                }
            }
        }
    }
}

void osk_groupnorm_backward_layouts(int level, const float *x, int x_cm, const float *dy, int dy_cm, float *dx, int dx_cm,
                                    int32_t n, int32_t c, int32_t groups, int32_t hw, const float *stats, const float *gamma,
                                    const float *beta, int silu, float *dgamma, float *dbeta) {
    const int cpg = c / groups;
    const float m = (float)(cpg * hw);
    for (int i = 0; i < n; i++) {
        for (int gi = 0; gi < groups; gi++) {
            const float mean = stats[((int64_t)i * groups + gi) * 2], rstd = stats[((int64_t)i * groups + gi) * 2 + 1];
            // First pass: dz into dx, the per-channel parameter sums and the two group means (products kept in
            // separate statements so they are not contracted into FMAs: the Swift loop this replaces rounded them).
            float sum_g = 0, sum_gx = 0;
            for (int cc = 0; cc < cpg; cc++) {
                const int ch = gi * cpg + cc;
                gn_prefetch_ahead(x, x_cm, dy, dy_cm, n, c, hw, i, ch);
                float sdz, sdzx;
                osk_groupnorm_grad(level, x + gn_plane(x_cm, n, c, hw, i, ch), dy + gn_plane(dy_cm, n, c, hw, i, ch),
                                   dx + gn_plane(dx_cm, n, c, hw, i, ch), hw, mean, rstd, gamma[ch], beta[ch], silu, &sdz, &sdzx);
                dgamma[ch] += sdzx;
                dbeta[ch] += sdz;
                const float tg = sdz * gamma[ch], tgx = sdzx * gamma[ch];
                sum_g += tg;
                sum_gx += tgx;
            }
            const float mean_g = sum_g / m, mean_gx = sum_gx / m;
            for (int cc = 0; cc < cpg; cc++) {
                const int ch = gi * cpg + cc;
                osk_groupnorm_grad_finish(level, x + gn_plane(x_cm, n, c, hw, i, ch), dx + gn_plane(dx_cm, n, c, hw, i, ch), hw,
                                          mean, rstd, gamma[ch], mean_g, mean_gx);
            }
        }
    }
}

void osk_groupnorm_grad_finish(int level, const float *x, float *d, int64_t n, float mean, float rstd, float gamma,
                               float mean_g, float mean_gx) {
#if OSK_X86
    if (level >= OSK_AVX512) { gn_finish_avx512(x, d, n, mean, rstd, gamma, mean_g, mean_gx); return; }
    if (level == OSK_AVX2) { gn_finish_avx2(x, d, n, mean, rstd, gamma, mean_g, mean_gx); return; }
#endif
    gn_finish_scalar(x, d, n, mean, rstd, gamma, mean_g, mean_gx);
}

// Element-wise activations for the serving path. y = silu(x * a + b), the tail of every fused GroupNorm.
// e^v is computed the same way on every path: v = n ln2 + r (Cody-Waite split of ln2), e^r by the Cephes expf
// polynomial, 2^n from the exponent bits; relative error < 2e-7 over [-87.3, 88.7]. The AVX-512 path handles the
// tail with a mask, so every element of a row gets the same arithmetic wherever it sits.
#include "onestep_kernels.h"
#include "onestep_train_kernels.h"
#include "onestep_isa.h"
#include "onestep_simd_math.h"
#include <math.h>
#include <string.h>

#if OSK_X86
#define AVX512 OSK_AVX512_TARGET
#endif

static inline float exp_poly(float x) {
    x = fminf(fmaxf(x, -87.3f), 88.7f);
    float n = nearbyintf(x * 1.44269504f);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float er = p * (r * r) + r + 1.0f;
    union { uint32_t u; float f; } s = { .u = (uint32_t)((int32_t)n + 127) << 23 };
    return er * s.f;
}

static void silu_scalar(const float *x, float *y, int64_t n, float a, float b) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i] * a + b;
        y[i] = v / (1.0f + exp_poly(-v));
    }
}

#if OSK_X86

AVX512 static void silu_avx512(const float *x, float *y, int64_t n, float a, float b) {
    const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), va, vb);
        __m512 d = _mm512_add_ps(one, osk_exp512(_mm512_sub_ps(_mm512_setzero_ps(), v)));
        _mm512_mask_storeu_ps(y + i, m, _mm512_div_ps(v, d));
    }
}

#endif

/* ReLU as the latent runner's reference writes it: x > 0 ? x : +0, so NaN and -0 become +0. AVX-512 vmaxps
   returns its second operand when either is NaN or both are zero, which gives those same bits. */
static void relu_scalar(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

#if OSK_X86
AVX512 static void relu_avx512(float *x, int64_t n) {
    const __m512 zero = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        __m512 c = _mm512_loadu_ps(x + i + 32), d = _mm512_loadu_ps(x + i + 48);
        _mm512_storeu_ps(x + i, _mm512_max_ps(a, zero));
        _mm512_storeu_ps(x + i + 16, _mm512_max_ps(b, zero));
        _mm512_storeu_ps(x + i + 32, _mm512_max_ps(c, zero));
        _mm512_storeu_ps(x + i + 48, _mm512_max_ps(d, zero));
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, m, _mm512_max_ps(_mm512_maskz_loadu_ps(m, x + i), zero));
    }
}
#endif

void osk_relu(int level, float *x, int64_t n) {
#if OSK_X86
    if (level >= OSK_AVX512) { relu_avx512(x, n); return; }
#endif
    relu_scalar(x, n);
}

void osk_affine_silu(int level, const float *x, float *y, int64_t n, float a, float b) {
#if OSK_X86
    if (level >= OSK_AVX512) { silu_avx512(x, y, n, a, b); return; }
#endif
    silu_scalar(x, y, n, a, b);
}

// One attention head of one image, channel-major: q, k, v are (D, L) with row stride ld (the activation's
// N*L), out is (D, L) with the same stride. p is L*L scratch. scores = scale * Q^T K, softmax per query row
// (max subtracted, polynomial exp), out = V P^T. Every (image, head) runs the same code whatever the batch, so
// results are batch-invariant. Replaces three tiny OpenBLAS calls whose packing dominated at L = 16..256.
static void attention_head_scalar(const float *q, const float *k, const float *v, int64_t ld, int l, int d,
                                  float *out, float *p) {
    for (int i = 0; i < l; i++) {
        float *row = p + (int64_t)i * l;
        for (int j = 0; j < l; j++) row[j] = 0;
        for (int c = 0; c < d; c++) {
            float qi = q[c * ld + i];
            for (int j = 0; j < l; j++) row[j] += qi * k[c * ld + j];
        }
        float m = row[0];
        for (int j = 1; j < l; j++) m = row[j] > m ? row[j] : m;
        float s = 0;
        for (int j = 0; j < l; j++) { row[j] = exp_poly(row[j] - m); s += row[j]; }
        float inv = 1.0f / s;
        for (int j = 0; j < l; j++) row[j] *= inv;
        for (int c = 0; c < d; c++) {
            float acc = 0;
            for (int j = 0; j < l; j++) acc += v[c * ld + j] * row[j];
            out[c * ld + i] = acc;
        }
    }
}

// The AVX-512 head works on contiguous copies: q (D, L) already scaled, k (D, L), vt = V^T (L, D), and writes
// ot = O^T (L, D). Rows of queries go in blocks of R so that R independent FMA chains hide the FMA latency and each
// load of K or V^T is shared by R rows; both passes broadcast a scalar against a row (no horizontal sums).
#define ATT_R 8

#if OSK_X86
AVX512 static inline __attribute__((always_inline)) void attention_rows_avx512(
    const float *q, const float *k, const float *vt, int l, int d, int i0, const int rows, float *p, float *ot) {
    __m512 acc[ATT_R];
    // scores (rows, L) = Q[:, i0..]^T K
    for (int j = 0; j < l; j += 16) {
        __mmask16 mk = l - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (l - j)) - 1);
        for (int r = 0; r < rows; r++) acc[r] = _mm512_setzero_ps();
        for (int c = 0; c < d; c++) {
            __m512 kv = _mm512_maskz_loadu_ps(mk, k + (int64_t)c * l + j);
            for (int r = 0; r < rows; r++) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[(int64_t)c * l + i0 + r]), kv, acc[r]);
        }
        for (int r = 0; r < rows; r++) _mm512_mask_storeu_ps(p + (int64_t)(i0 + r) * l + j, mk, acc[r]);
    }
    // softmax of each row (max subtracted, polynomial exp); 1/sum is applied to the output
    float inv[ATT_R];
    for (int r = 0; r < rows; r++) {
        float *row = p + (int64_t)(i0 + r) * l;
        __m512 vmax = _mm512_set1_ps(-INFINITY);
        for (int j = 0; j < l; j += 16) {
            __mmask16 mk = l - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (l - j)) - 1);
            vmax = _mm512_mask_max_ps(vmax, mk, vmax, _mm512_maskz_loadu_ps(mk, row + j));
        }
        __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(vmax)), vsum = _mm512_setzero_ps();
        for (int j = 0; j < l; j += 16) {
            __mmask16 mk = l - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (l - j)) - 1);
            __m512 e = _mm512_maskz_mov_ps(mk, osk_exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, row + j), m)));
            _mm512_mask_storeu_ps(row + j, mk, e);
            vsum = _mm512_add_ps(vsum, e);
        }
        inv[r] = 1.0f / _mm512_reduce_add_ps(vsum);
    }
    // O^T[i0.., :] = P V^T, then scaled by 1/sum
    for (int c = 0; c < d; c += 16) {
        __mmask16 mk = d - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (d - c)) - 1);
        for (int r = 0; r < rows; r++) acc[r] = _mm512_setzero_ps();
        for (int j = 0; j < l; j++) {
            __m512 vv = _mm512_maskz_loadu_ps(mk, vt + (int64_t)j * d + c);
            for (int r = 0; r < rows; r++) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(p[(int64_t)(i0 + r) * l + j]), vv, acc[r]);
        }
        for (int r = 0; r < rows; r++)
            _mm512_mask_storeu_ps(ot + (int64_t)(i0 + r) * d + c, mk, _mm512_mul_ps(acc[r], _mm512_set1_ps(inv[r])));
    }
}

AVX512 static void attention_head_avx512(const float *q, const float *k, const float *vt, int l, int d, float *ot, float *p) {
    int i = 0;
    for (; i + ATT_R <= l; i += ATT_R) attention_rows_avx512(q, k, vt, l, d, i, ATT_R, p, ot);
    for (; i < l; i++) attention_rows_avx512(q, k, vt, l, d, i, 1, p, ot);
}
#endif

void osk_attention_head(int level, const float *q, const float *k, const float *v, int64_t ld, int32_t l, int32_t d,
                        float scale, float *out, float *scratch) {
    // The head's rows sit ld floats apart (N*L for a batch): with ld*4 a multiple of 4 KiB they alias in L1, so
    // they are first copied to contiguous blocks (q scaled on the way, V transposed for the AVX-512 path), and the
    // result is copied back — at the same cost for every batch size.
    float *p = scratch, *qc = p + (int64_t)l * l, *kc = qc + (int64_t)d * l, *vc = kc + (int64_t)d * l, *oc = vc + (int64_t)d * l;
    const int fast = OSK_X86 && level >= OSK_AVX2;   // avx2: osk_attention_head_f32_avx2 (onestep_attention.c)
    for (int c = 0; c < d; c++) {
        for (int j = 0; j < l; j++) qc[(int64_t)c * l + j] = q[c * ld + j] * scale;
        memcpy(kc + (int64_t)c * l, k + c * ld, sizeof(float) * (size_t)l);
        if (fast) { for (int j = 0; j < l; j++) vc[(int64_t)j * d + c] = v[c * ld + j]; }
        else memcpy(vc + (int64_t)c * l, v + c * ld, sizeof(float) * (size_t)l);
    }
#if OSK_X86
    if (fast) {
        if (level >= OSK_AVX512) attention_head_avx512(qc, kc, vc, l, d, oc, p);
        else osk_attention_head_f32_avx2(qc, kc, vc, l, d, oc, p);
        for (int c = 0; c < d; c++) for (int i = 0; i < l; i++) out[c * ld + i] = oc[(int64_t)i * d + c];
    } else
#endif
    {
        attention_head_scalar(qc, kc, vc, l, l, d, oc, p);
        for (int c = 0; c < d; c++) memcpy(out + c * ld, oc + (int64_t)c * l, sizeof(float) * (size_t)l);
    }
}

// The 16 lanes summed as _mm512_reduce_add_ps does (halves added: 8, then 4, 2, 1 lanes apart), in place.
static float lanes_tree16(float *l) {
    for (int w = 8; w >= 1; w >>= 1)
        for (int j = 0; j < w; j++) l[j] = l[j] + l[j + w];
    return l[0];
}

// GroupNorm (+ fused SiLU) backward of one channel plane, the training layers' (TrainableGroupNorm):
//   xhat = (x - mean) * rstd;  z = xhat * gamma + beta;  dz = dy * silu'(z) (or dy without SiLU)
// writes dz and returns sum(dz) and sum(dz * xhat), summed in 16 lanes then the lanes as a tree (fixed for a given n).
static void gn_grad_scalar(const float *x, const float *dy, float *dz, int64_t n, float mean, float rstd, float gamma,
                           float beta, int silu, float *sum_dz, float *sum_dzx) {
    float lanes_dz[16] = {0}, lanes_dzx[16] = {0};
    for (int64_t i = 0; i < n; i++) {
        float xh = (x[i] - mean) * rstd, d = dy[i];
        if (silu) {
            float z = xh * gamma + beta, s = 1.0f / (1.0f + exp_poly(-z));
            d = d * (s * (1.0f + z * (1.0f - s)));
        }
        dz[i] = d;
        lanes_dz[i & 15] += d;
        lanes_dzx[i & 15] += d * xh;
    }
    *sum_dz = lanes_tree16(lanes_dz); *sum_dzx = lanes_tree16(lanes_dzx);
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

void osk_groupnorm_grad(int level, const float *x, const float *dy, float *dz, int64_t n, float mean, float rstd,
                        float gamma, float beta, int silu, float *sum_dz, float *sum_dzx) {
#if OSK_X86
    if (level >= OSK_AVX512) { gn_grad_avx512(x, dy, dz, n, mean, rstd, gamma, beta, silu, sum_dz, sum_dzx); return; }
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
#endif
    for (int64_t i = 0; i < n; i++) {
        float xh = (x[i] - mean) * rstd;
        d[i] = rstd * (d[i] * gamma - mean_g - xh * mean_gx);
    }
}

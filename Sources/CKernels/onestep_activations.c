// Element-wise activations for the serving path. y = silu(x * a + b), the tail of every fused GroupNorm.
// e^v is computed the same way on every path: v = n ln2 + r (Cody-Waite split of ln2), e^r by the Cephes expf
// polynomial, 2^n from the exponent bits; relative error < 2e-7 over [-87.3, 88.7]. The AVX-512 path handles the
// tail with a mask, so every element of a row gets the same arithmetic wherever it sits.
#include "onestep_kernels.h"
#include "onestep_isa.h"
#include "onestep_simd_math.h"
#include <math.h>
#include <string.h>

#if OSK_X86
#define AVX512 OSK_AVX512_TARGET
#define AVX2 OSK_AVX2_TARGET
#endif


// Not inlined: silu_avx2 runs its tail here, and inlined into that FMA-target function x * a + b would be contracted
// into an FMA (other bits than this scalar build's).
__attribute__((noinline)) static void silu_scalar(const float *x, float *y, int64_t n, float a, float b) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i] * a + b;
        y[i] = v / (1.0f + osk_exp_poly(-v));
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

/// silu_scalar's arithmetic on 8 lanes (no FMA, the scalar e^x's bits): the same bits as the scalar level, so the AVX2
/// level's results do not change; the tail runs the scalar loop.
AVX2 static void silu_avx2(const float *x, float *y, int64_t n, float a, float b) {
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b), one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), va), vb);
        _mm256_storeu_ps(y + i, _mm256_div_ps(v, _mm256_add_ps(one, osk_exp256_poly(osk_neg256(v)))));
    }
    silu_scalar(x + i, y + i, n - i, a, b);
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
    if (level == OSK_AVX2) { silu_avx2(x, y, n, a, b); return; }
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
        for (int j = 0; j < l; j++) { row[j] = osk_exp_poly(row[j] - m); s += row[j]; }
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

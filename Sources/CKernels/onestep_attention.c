// Attention heads in bf16 products (vdpbf16ps), for the policies that run attention in bf16 (Int8Policy,
// Quant/LatentInt8.swift): out (D, Lq) = V softmax(scale Q^T K)^T for one image and one head, the same maths as
// osk_attention_head (onestep_activations.c, fp32) with Q, K, V and the probabilities rounded to bf16 (nearest
// even) and every product summed in fp32.
//
// Shape legend: D head dimension, Lq queries, Lk keys (Lq = Lk for self-attention), all channel-major (D, L)
// slices of the activation with row strides ldq (Q, out) and ldk (K, V). DP = ceil(D/2) channel pairs,
// LKP = Lk rounded up to 32 keys, DPAD = D rounded up to 16 channels.
//
// How it runs (no Lq x Lk matrix in memory): K and V are packed once per head to bf16 pairs (K as tiles
// [LKP/32][DP][32] words, V as [LKP/2][DPAD] words, zero-padded), then queries go in blocks of AR = 8 rows:
//   1. scores S (8, LKP) fp32 = Q_block^T K: per channel pair 2 K loads, 8 broadcasts of a query's bf16 pair,
//      16 vdpbf16ps (an 8 x 32 register block, as the bf16 conv kernel);
//   2. per row: max, e = exp(scale * (s - max)) in fp32, e rounded to bf16 pairs P (8, LKP/2 words), the row sum
//      taken over the rounded values (so the weights applied sum to 1 in the arithmetic actually done);
//   3. O^T (8, DPAD) = P V^T: per key pair 2 V loads, 8 broadcasts of a row's bf16 pair, 16 vdpbf16ps; each row
//      scaled by 1/sum and written back transposed to out.
// The strip S / P of one block is 8 x LKP floats (128 KiB at Lk = 4096), in L2; K and V in bf16 are half the fp32
// bytes. Every (image, head) runs the same code whatever the batch, the row stride or the thread, so the bytes are
// batch- and thread-invariant. Without AVX512-BF16 (or below the avx512 level) the call does nothing and returns 0:
// the caller (Kernels/FastAttention.swift) checks osk_attention_bf16_runs first and runs the fp32 head instead.
#include "onestep_kernels.h"
#include "onestep_isa.h"
#include "onestep_simd_math.h"
#include <math.h>
#include <string.h>

#define AR 8      // query rows per block
#define AKT 32    // keys per score tile (two zmm of fp32 sums)

static inline int64_t round_up(int64_t a, int64_t m) { return (a + m - 1) / m * m; }

int64_t osk_attention_bf16_scratch(int32_t lq, int32_t lk, int32_t d) {
    const int64_t dp = (d + 1) / 2, lkp = round_up(lk, AKT), dpad = round_up(d, 16);
    (void)lq;
    return dp * lkp            // kt: K tiles, words
           + lkp / 2 * dpad    // vp: V pairs, words
           + AR * dp           // qp: the block's query pairs, words
           + AR * lkp          // s: the block's scores, floats
           + AR * lkp / 2      // pp: the block's probability pairs, words
           + AR * dpad         // ot: the block's output rows, floats
           + 6 * 16;           // 64-byte alignment of each part
}

#if OSK_X86
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))


static inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}

/// Words whose low halves hold bf16(lo) and high halves bf16(hi), lane by lane.
BF16_TARGET static inline __m512i pair_words(__m512 lo, __m512 hi) {
    __m512i a = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
    __m512i b = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
    return _mm512_or_si512(a, _mm512_slli_epi32(b, 16));
}

/// kt [LKP/32][DP][32]: word (tile, cp, jj) = bf16 K[2cp][32 tile + jj] | bf16 K[2cp+1][...] << 16, zero padded.
BF16_TARGET static void att_pack_k(const float *k, int64_t ldk, int lk, int d, uint32_t *kt) {
    const int dp = (d + 1) / 2, tiles = (int)(round_up(lk, AKT) / AKT);
    for (int t = 0; t < tiles; t++)
        for (int cp = 0; cp < dp; cp++) {
            const float *r0 = k + (int64_t)(2 * cp) * ldk, *r1 = r0 + ldk;
            const int has1 = 2 * cp + 1 < d;
            uint32_t *dst = kt + ((int64_t)t * dp + cp) * AKT;
            for (int v = 0; v < 2; v++) {
                const int j = t * AKT + 16 * v;
                __mmask16 m = tail_mask(lk - j);
                __m512 a = _mm512_maskz_loadu_ps(m, r0 + j), b = has1 ? _mm512_maskz_loadu_ps(m, r1 + j) : _mm512_setzero_ps();
                _mm512_storeu_si512(dst + 16 * v, pair_words(a, b));
            }
        }
}

/// vp [LKP/2][DPAD]: word (jp, c) = bf16 V[c][2jp] | bf16 V[c][2jp+1] << 16, zero padded.
BF16_TARGET static void att_pack_v(const float *v, int64_t ldk, int lk, int d, uint32_t *vp) {
    const int64_t lkp = round_up(lk, AKT), dpad = round_up(d, 16);
    memset(vp, 0, sizeof(uint32_t) * (size_t)(lkp / 2 * dpad));
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)dpad));
    for (int c = 0; c < d; c++) {
        const float *row = v + (int64_t)c * ldk;
        for (int64_t j = 0; j < lkp; j += 32) {
            __m512 a = _mm512_maskz_loadu_ps(tail_mask(lk - j), row + j);
            __m512 b = _mm512_maskz_loadu_ps(tail_mask(lk - j - 16), row + j + 16);
            // 32 consecutive keys in order: word w = (key j + 2w, key j + 2w + 1)
            __m512i w = (__m512i)_mm512_cvtne2ps_pbh(b, a);
            _mm512_i32scatter_epi32(vp + (j / 2) * dpad + c, idx, w, 4);
        }
    }
}

/// One block of `rows` (<= AR, a compile-time constant after inlining) queries starting at i0.
BF16_TARGET static inline __attribute__((always_inline)) void attention_block_bf16(
    const float *q, int64_t ldq, int i0, const int rows, const uint32_t *kt, const uint32_t *vp, int lk, int d,
    float scale, float *out, uint32_t *qp, float *s, uint32_t *pp, float *ot) {
    const int dp = (d + 1) / 2;
    const int64_t lkp = round_up(lk, AKT), dpad = round_up(d, 16), half = lkp / 2;
    // the block's queries as bf16 channel pairs: qp[r][cp]
    for (int r = 0; r < rows; r++)
        for (int cp = 0; cp < dp; cp++) {
            float a = q[(int64_t)(2 * cp) * ldq + i0 + r], b = 2 * cp + 1 < d ? q[(int64_t)(2 * cp + 1) * ldq + i0 + r] : 0.0f;
            __m128i w = (__m128i)_mm_cvtneps_pbh(_mm_setr_ps(a, b, 0, 0));
            qp[r * dp + cp] = (uint32_t)_mm_cvtsi128_si32(w);
        }
    // 1. scores, and each row's running max over the real keys (pad keys score 0 and are masked out)
    __m512 a0[AR], a1[AR], mx[AR];
    for (int r = 0; r < rows; r++) mx[r] = _mm512_set1_ps(-INFINITY);
    for (int64_t jt = 0; jt < lkp; jt += AKT) {
        const uint32_t *tile = kt + jt / AKT * dp * AKT;
        for (int r = 0; r < rows; r++) { a0[r] = _mm512_setzero_ps(); a1[r] = _mm512_setzero_ps(); }
        for (int cp = 0; cp < dp; cp++) {
            __m512bh k0 = (__m512bh)_mm512_loadu_si512(tile + cp * AKT), k1 = (__m512bh)_mm512_loadu_si512(tile + cp * AKT + 16);
            for (int r = 0; r < rows; r++) {
                __m512bh qb = (__m512bh)_mm512_set1_epi32((int)qp[r * dp + cp]);
                a0[r] = _mm512_dpbf16_ps(a0[r], qb, k0);
                a1[r] = _mm512_dpbf16_ps(a1[r], qb, k1);
            }
        }
        const __mmask16 m0 = tail_mask(lk - jt), m1 = tail_mask(lk - jt - 16);
        for (int r = 0; r < rows; r++) {
            _mm512_storeu_ps(s + r * lkp + jt, a0[r]);
            _mm512_storeu_ps(s + r * lkp + jt + 16, a1[r]);
            mx[r] = _mm512_mask_max_ps(mx[r], m0, mx[r], a0[r]);
            mx[r] = _mm512_mask_max_ps(mx[r], m1, mx[r], a1[r]);
        }
    }
    // 2. softmax numerators in bf16 pairs, sums of the rounded values
    float inv[AR];
    const __m512 vs = _mm512_set1_ps(scale);
    const __m512i himask = _mm512_set1_epi32((int)0xFFFF0000u);
    for (int r = 0; r < rows; r++) {
        const float *row = s + r * lkp;
        const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx[r]));
        __m512 vsum = _mm512_setzero_ps(), vsum1 = _mm512_setzero_ps();
        for (int64_t j = 0; j < lkp; j += 32) {
            __m512 e0 = _mm512_maskz_mov_ps(tail_mask(lk - j), osk_exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(row + j), m), vs)));
            __m512 e1 = _mm512_maskz_mov_ps(tail_mask(lk - j - 16), osk_exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(row + j + 16), m), vs)));
            __m512i w = (__m512i)_mm512_cvtne2ps_pbh(e1, e0);
            _mm512_storeu_si512(pp + r * half + j / 2, w);
            vsum = _mm512_add_ps(vsum, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
            vsum1 = _mm512_add_ps(vsum1, _mm512_castsi512_ps(_mm512_and_si512(w, himask)));
        }
        inv[r] = 1.0f / _mm512_reduce_add_ps(_mm512_add_ps(vsum, vsum1));
    }
    // 3. O^T = P V^T over the key pairs that hold keys
    const int64_t pairs = (lk + 1) / 2;
    for (int64_t c0 = 0; c0 < dpad; c0 += 32) {
        const int two = dpad - c0 >= 32;
        for (int r = 0; r < rows; r++) { a0[r] = _mm512_setzero_ps(); a1[r] = _mm512_setzero_ps(); }
        if (two) {
            for (int64_t jp = 0; jp < pairs; jp++) {
                __m512bh v0 = (__m512bh)_mm512_loadu_si512(vp + jp * dpad + c0), v1 = (__m512bh)_mm512_loadu_si512(vp + jp * dpad + c0 + 16);
                for (int r = 0; r < rows; r++) {
                    __m512bh pb = (__m512bh)_mm512_set1_epi32((int)pp[r * half + jp]);
                    a0[r] = _mm512_dpbf16_ps(a0[r], pb, v0);
                    a1[r] = _mm512_dpbf16_ps(a1[r], pb, v1);
                }
            }
        } else {
            for (int64_t jp = 0; jp < pairs; jp++) {
                __m512bh v0 = (__m512bh)_mm512_loadu_si512(vp + jp * dpad + c0);
                for (int r = 0; r < rows; r++)
                    a0[r] = _mm512_dpbf16_ps(a0[r], (__m512bh)_mm512_set1_epi32((int)pp[r * half + jp]), v0);
            }
        }
        for (int r = 0; r < rows; r++) {
            __m512 sc = _mm512_set1_ps(inv[r]);
            _mm512_storeu_ps(ot + r * dpad + c0, _mm512_mul_ps(a0[r], sc));
            if (two) _mm512_storeu_ps(ot + r * dpad + c0 + 16, _mm512_mul_ps(a1[r], sc));
        }
    }
    for (int c = 0; c < d; c++) {
        float *dst = out + (int64_t)c * ldq + i0;
        for (int r = 0; r < rows; r++) dst[r] = ot[r * dpad + c];
    }
}

static inline void *align64(void *p) { return (void *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

BF16_TARGET static void attention_bf16_avx512(const float *q, int64_t ldq, int lq, const float *k, const float *v,
                                              int64_t ldk, int lk, int d, float scale, float *out, float *scratch) {
    const int64_t dp = (d + 1) / 2, lkp = round_up(lk, AKT), dpad = round_up(d, 16);
    uint32_t *kt = align64(scratch);
    uint32_t *vp = align64(kt + dp * lkp);
    uint32_t *qp = align64(vp + lkp / 2 * dpad);
    float *s = align64(qp + AR * dp);
    uint32_t *pp = align64(s + AR * lkp);
    float *ot = align64(pp + AR * lkp / 2);
    att_pack_k(k, ldk, lk, d, kt);
    att_pack_v(v, ldk, lk, d, vp);
    int i = 0;
    for (; i + AR <= lq; i += AR) attention_block_bf16(q, ldq, i, AR, kt, vp, lk, d, scale, out, qp, s, pp, ot);
    for (; i < lq; i++) attention_block_bf16(q, ldq, i, 1, kt, vp, lk, d, scale, out, qp, s, pp, ot);
}
#endif

// MARK: - fp32 head, AVX2 (osk_attention_head's avx2 level; its avx512 and scalar paths are in onestep_activations.c)
//
// The same layout and order as attention_rows_avx512 there, 8 lanes wide: q (D, L) already scaled, k (D, L),
// vt = V^T (L, D) contiguous copies; ot = O^T (L, D). Blocks of 6 query rows; both passes broadcast a scalar
// against 2 vectors of 8 (12 accumulators), the softmax takes its max and sum over 8 lanes then across them.
#if OSK_X86
#define AVX2_TARGET OSK_AVX2_TARGET


/// Lanes < left set (all lanes from 8 on), as a maskload/maskstore mask.
AVX2_TARGET static inline __m256i att_mask8(int64_t left) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(left > 8 ? 8 : left)), lanes);
}

AVX2_TARGET static inline float att_hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

AVX2_TARGET static inline float att_hsum8(__m256 v) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/// Scores of R (<= 6) query rows i0.. against 16 keys j.. (2 vectors): 12 accumulators, per channel 2 loads of k
/// and R broadcasts of q for 2R fmas (the 8 x 8 tile it replaced did 9 loads per 8 fmas). Each score is the same
/// fma chain over c as before, so the same bits. Full tiles load plainly: masks would not fit the 16 registers.
AVX2_TARGET static inline __attribute__((always_inline)) void scores_rx16(const float *q, const float *k, int l, int d, int i0,
                                                                          const int rows, int j, const int full, float *p) {
    const __m256i m0 = att_mask8(l - j), m1 = att_mask8(l - j - 8);
    __m256 a[6][2];
    for (int r = 0; r < rows; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
    for (int c = 0; c < d; c++) {
        const float *kr = k + (int64_t)c * l + j;
        const __m256 k0 = full ? _mm256_loadu_ps(kr) : _mm256_maskload_ps(kr, m0);
        const __m256 k1 = full ? _mm256_loadu_ps(kr + 8) : _mm256_maskload_ps(kr + 8, m1);
        for (int r = 0; r < rows; r++) {
            const __m256 qv = _mm256_set1_ps(q[(int64_t)c * l + i0 + r]);
            a[r][0] = _mm256_fmadd_ps(qv, k0, a[r][0]);
            a[r][1] = _mm256_fmadd_ps(qv, k1, a[r][1]);
        }
    }
    for (int r = 0; r < rows; r++) {
        float *pr = p + (int64_t)(i0 + r) * l + j;
        _mm256_maskstore_ps(pr, m0, a[r][0]);
        _mm256_maskstore_ps(pr + 8, m1, a[r][1]);
    }
}

/// O^T rows i0.. (R <= 6) x channels c..c+15 (2 vectors) = P V, then scaled by 1 / row sum: per key 2 loads of V^T
/// and R broadcasts of P for 2R fmas; the same chain over j per output as before.
AVX2_TARGET static inline __attribute__((always_inline)) void values_rx16(const float *vt, const float *p, int l, int d, int i0,
                                                                          const int rows, int c, const int full, const float *inv,
                                                                          float *ot) {
    const __m256i m0 = att_mask8(d - c), m1 = att_mask8(d - c - 8);
    __m256 a[6][2];
    for (int r = 0; r < rows; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
    for (int j = 0; j < l; j++) {
        const float *vr = vt + (int64_t)j * d + c;
        const __m256 v0 = full ? _mm256_loadu_ps(vr) : _mm256_maskload_ps(vr, m0);
        const __m256 v1 = full ? _mm256_loadu_ps(vr + 8) : _mm256_maskload_ps(vr + 8, m1);
        for (int r = 0; r < rows; r++) {
            const __m256 pv = _mm256_set1_ps(p[(int64_t)(i0 + r) * l + j]);
            a[r][0] = _mm256_fmadd_ps(pv, v0, a[r][0]);
            a[r][1] = _mm256_fmadd_ps(pv, v1, a[r][1]);
        }
    }
    for (int r = 0; r < rows; r++) {
        float *o = ot + (int64_t)(i0 + r) * d + c;
        const __m256 s = _mm256_set1_ps(inv[r]);
        _mm256_maskstore_ps(o, m0, _mm256_mul_ps(a[r][0], s));
        _mm256_maskstore_ps(o + 8, m1, _mm256_mul_ps(a[r][1], s));
    }
}

/// Rows i0..i0+rows-1 (rows <= 6, a compile-time constant where inlined).
AVX2_TARGET static inline __attribute__((always_inline)) void attention_rows_avx2(
    const float *q, const float *k, const float *vt, int l, int d, int i0, const int rows, float *p, float *ot) {
    int j = 0;
    for (; j + 16 <= l; j += 16) scores_rx16(q, k, l, d, i0, rows, j, 1, p);
    if (j < l) scores_rx16(q, k, l, d, i0, rows, j, 0, p);
    float inv[6];
    for (int r = 0; r < rows; r++) {
        float *row = p + (int64_t)(i0 + r) * l;
        __m256 vmax = _mm256_set1_ps(-INFINITY);
        for (int j = 0; j < l; j += 8) {
            const __m256i mk = att_mask8(l - j);
            vmax = _mm256_blendv_ps(vmax, _mm256_max_ps(vmax, _mm256_maskload_ps(row + j, mk)), _mm256_castsi256_ps(mk));
        }
        const __m256 m = _mm256_set1_ps(att_hmax8(vmax));
        __m256 vsum = _mm256_setzero_ps();
        for (int j = 0; j < l; j += 8) {
            const __m256i mk = att_mask8(l - j);
            __m256 e = _mm256_and_ps(osk_exp256(_mm256_sub_ps(_mm256_maskload_ps(row + j, mk), m)), _mm256_castsi256_ps(mk));
            _mm256_maskstore_ps(row + j, mk, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        inv[r] = 1.0f / att_hsum8(vsum);
    }
    int c = 0;
    for (; c + 16 <= d; c += 16) values_rx16(vt, p, l, d, i0, rows, c, 1, inv, ot);
    if (c < d) values_rx16(vt, p, l, d, i0, rows, c, 0, inv, ot);
}

AVX2_TARGET void osk_attention_head_f32_avx2(const float *q, const float *k, const float *vt, int32_t l, int32_t d,
                                             float *ot, float *p) {
    int i = 0;
    for (; i + 6 <= l; i += 6) attention_rows_avx2(q, k, vt, l, d, i, 6, p, ot);
    for (; i < l; i++) attention_rows_avx2(q, k, vt, l, d, i, 1, p, ot);
}
#endif

int osk_attention_bf16_runs(int level) { return level >= OSK_AVX512 && osk_bf16_supported(); }

int osk_attention_head_bf16(int level, const float *q, int64_t ldq, int32_t lq, const float *k, const float *v,
                            int64_t ldk, int32_t lk, int32_t d, float scale, float *out, float *scratch) {
#if OSK_X86
    if (osk_attention_bf16_runs(level)) {
        attention_bf16_avx512(q, ldq, lq, k, v, ldk, lk, d, scale, out, scratch);
        return 1;
    }
#endif
    (void)q; (void)ldq; (void)lq; (void)k; (void)v; (void)ldk; (void)lk; (void)d; (void)scale; (void)out; (void)scratch;
    return 0;
}

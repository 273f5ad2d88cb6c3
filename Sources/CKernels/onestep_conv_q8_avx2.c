// The AVX2 driver of int8 convolutions (every conv osk_conv_q8_fused runs at the avx2 level): same sums, same
// dequantization and fused epilogue as the scalar tiles of onestep_conv_q8.c and the AVX-512 drivers, so the same
// bits (Int8ConvAVX2Tests, ConvQ8 and fused-epilogue tests at every level).
//
// Without VNNI the exact product of u8 codes and s8 weights is vpmaddwd on int16 (two products summed into int32,
// never saturating: |255 * 127 * 2| < 2^31) followed by vpaddd into the accumulator. The per-tile kernel this
// replaces widened B (vpmovzxbw) and every row's A word (vmovd + vpmovsxbw) on every k step, so 6 shuffles fed 8
// vpmaddwd, and it streamed the whole of A from L3 for every 32 output columns. Here, in the manner of
// GotoBLAS (and of run_q8_blocked for AVX-512): a block of QNB2 columns x QKC2 k-quads of the im2col matrix is
// gathered and widened to int16 once ([tile of 8 columns][kq][8 x 4 int16], 256 KiB: L2), each 8-row panel's A
// sliver is widened once per k block ([kq][8 rows x 4 int16], 8 KiB: L1), and a 4-row x 8-column kernel runs
// with 8 ymm accumulators: per k-quad 2 aligned B loads and 4 vpbroadcastq of A for 8 vpmaddwd + 8 vpaddd, no
// shuffle. A vector lane holds one column and one parity of the k-pair (c0p0 c0p1 c1p0 ...), so the two
// parities are summed once per tile (vphaddd), not per k step. Measured on Zen 3 (L1-resident microbenchmark):
// the madd + add pair issues about 1.6 per cycle whatever the register tile (4x8, 6x8, 4x12 alike), the
// pair's own peak (MachinePeaks' AVX2 int8 figure); vpmaddwd alone issues 2 per cycle.
//
// Partial sums between k blocks are exact int32 in a per-thread scratch ([panel][tile][8][8]), so the result is
// the same integer as one sum: identical bits.
#include "onestep_conv_internal.h"
#include "onestep_q8_avx2.h"

#include <stdlib.h>

#if OSK_X86

#ifndef QNB2
#define QNB2 256   // columns per block: 8 tap tiles of 32, 32 kernel tiles of 8
#endif
#ifndef QKC2
#define QKC2 128   // k quads per block (512 products of each output)
#endif
#define QT2 (QNB2 / NR)   // tap tiles per block
#define KT 8              // columns per kernel tile
#define SUBS (NR / KT)    // kernel tiles per tap tile

typedef osk_qcols cols2_t;

/// Rows kb..<kb+kc of one tap tile's B (32 columns), widened: sub-tile s (columns 8s..8s+7) at bw + s * kc * 32,
/// row kq at + kq * 32 int16: columns 0..3 then 4..7, each as its 4 codes (k = 4q..4q+3) zero-extended.
AVX2 static void pack_widen(const geo_t *g, const tap_t *taps, const cols2_t *qc, const uint32_t *xq, int kb, int kc,
                            int16_t *bw) {
    int q = kb / g->taps, t = kb % g->taps;
    for (int kq = 0; kq < kc; kq++) {
        const int *p = (const int *)(xq + (int64_t)q * g->plane);
        const tap_t *tp = &taps[t];
        for (int v = 0; v < SUBS; v++) {
            const uint32_t bits = (tp->valid >> (8 * v)) & 0xff;
            __m256i val;
            if (tp->contiguous && bits == 0xff) {
                val = _mm256_loadu_si256((const __m256i *)(p + tp->base + 8 * v));
            } else {
                const __m256i m = mask8_avx2(bits), z = _mm256_loadu_si256((const __m256i *)(qc->zp4 + 8 * v));
                if (!bits) val = z;
                else if (tp->contiguous) val = _mm256_blendv_epi8(z, _mm256_maskload_epi32(p + tp->base + 8 * v, m), m);
                else val = _mm256_mask_i32gather_epi32(z, p, _mm256_loadu_si256((const __m256i *)(tp->off + 8 * v)), m, 4);
            }
            int16_t *d = bw + ((size_t)v * kc + kq) * 32;
            _mm256_store_si256((__m256i *)d, _mm256_cvtepu8_epi16(_mm256_castsi256_si128(val)));
            _mm256_store_si256((__m256i *)(d + 16), _mm256_cvtepu8_epi16(_mm256_extracti128_si256(val, 1)));
        }
        if (++t == g->taps) { t = 0; q++; }
    }
}

/// A panel's sliver (kc k-quads x 8 rows of packed words) widened to int16: row r of k-quad kq at aw + kq * 32 + 4r.
AVX2 static void widen_a(const int32_t *a, int kc, int16_t *aw) {
    for (int kq = 0; kq < kc; kq++, a += MR, aw += 32) {
        _mm256_store_si256((__m256i *)aw, _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a)));
        _mm256_store_si256((__m256i *)(aw + 16), _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a + 4))));
    }
}

/// Where a tile's results go when its last k block is done.
typedef struct {
    const osk_q8_epilogue *ep;   // NULL: y += sum (osk_conv_q8_part)
    const int32_t *rowsum;       // the panel's 8
    const float *wscale;         // the panel's 8
    const float *bias;           // the panel's 8, or NULL
    const cols2_t *qc;           // the tap tile's columns
    int sub;                     // kernel tile within the tap tile
    int mr, nc, row0;            // valid rows of the panel, valid columns of the kernel tile, panel's first row
    float *y;                    // output row row0, column j0
    int64_t ldc, j0, howo;
} out2_t;

/// Folds per-column (lane) minima / maxima of a tile into the images' ranges (ep_fold_lanes of onestep_conv_q8.c).
AVX2 static void fold_lanes(const out2_t *o, __m256 lo, __m256 hi) {
    float l[KT], h[KT];
    _mm256_storeu_ps(l, lo);
    _mm256_storeu_ps(h, hi);
    const int64_t first = o->j0 / o->howo, last = (o->j0 + o->nc - 1) / o->howo;
    float *range = o->ep->range;
    for (int jj = 0; jj < o->nc; jj++) {
        float *p = range + 2 * (first == last ? first : (o->j0 + jj) / o->howo);
        p[0] = l[jj] < p[0] ? l[jj] : p[0];
        p[1] = h[jj] > p[1] ? h[jj] : p[1];
    }
}

/// Rows r0..<r0+4 of the panel x the kernel tile's 8 columns over kc k-quads. The sums start at 0 (`first`) or from
/// acc and end in acc or, on the last k block, dequantized: y = fmaf((float)(sum - zp * rowsum), s_w * s_x, init)
/// with init = y (no epilogue) or residual (+ bias) / bias / 0, then ReLU and the range (kernel_q8_scalar's and
/// ep_init / ep_finish's operations, in their order).
AVX2 static void kernel_4x8(int kc, const int16_t *aw, const int16_t *bw, int32_t *acc, int first, int last, int r0,
                            const out2_t *o, __m256 *lo_io, __m256 *hi_io) {
    __m256i s[4];
    q8_sums_4x8_avx2(kc, aw + 4 * r0, 4, 32, bw, s);
    acc += 8 * r0;
    for (int r = 0; r < 4; r++) {
        if (!first) s[r] = _mm256_add_epi32(s[r], _mm256_load_si256((const __m256i *)(acc + 8 * r)));
        if (!last) _mm256_store_si256((__m256i *)(acc + 8 * r), s[r]);
    }
    if (!last) return;
    const int nc = o->nc;
    const __m256i m = mask8_avx2(nc >= 8 ? 0xff : (1u << nc) - 1);
    const __m256i zp = _mm256_loadu_si256((const __m256i *)(o->qc->zp + KT * o->sub));
    const __m256 sx = _mm256_loadu_ps(o->qc->scale + KT * o->sub), zero = _mm256_setzero_ps();
    const osk_q8_epilogue *ep = o->ep;
    __m256 lo = *lo_io, hi = *hi_io;
    for (int r = 0; r < 4 && r0 + r < o->mr; r++) {
        const int row = r0 + r;
        float *yp = o->y + (int64_t)row * o->ldc;
        const __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(s[r], _mm256_mullo_epi32(zp, _mm256_set1_epi32(o->rowsum[row]))));
        const __m256 sc = _mm256_mul_ps(_mm256_set1_ps(o->wscale[row]), sx);
        __m256 init;
        if (!ep) init = _mm256_maskload_ps(yp, m);
        else {
            const __m256 b = _mm256_set1_ps(o->bias ? o->bias[row] : 0.0f);
            init = b;
            if (ep->residual) {
                init = _mm256_maskload_ps(ep->residual + (int64_t)(o->row0 + row) * o->ldc + o->j0, m);
                if (o->bias) init = _mm256_add_ps(init, b);
            }
        }
        __m256 v = _mm256_fmadd_ps(f, sc, init);
        if (ep && ep->relu) v = _mm256_max_ps(v, zero);   // second operand on NaN or equal: v > 0 ? v : +0
        _mm256_maskstore_ps(yp, m, v);
        if (ep && ep->range) {
            const __m256 vm = _mm256_blendv_ps(zero, v, _mm256_castsi256_ps(m));   // masked lanes: 0, in every range
            lo = _mm256_min_ps(lo, vm);
            hi = _mm256_max_ps(hi, vm);
        }
    }
    *lo_io = lo;
    *hi_io = hi;
}

AVX2 void osk_conv_q8_avx2(const geo_t *g, const int32_t *packed, const int32_t *rowsum, const float *wscale,
                      const uint32_t *xq, const float *xscale, const int32_t *xzp, int m, float *y, int64_t ldc,
                      int64_t n0, int64_t n1, int p0, int p1, const osk_q8_epilogue *ep) {
    const int k4 = (g->c + 3) / 4 * g->taps, kblocks = (k4 + QKC2 - 1) / QKC2;
    const int kcmax = k4 < QKC2 ? k4 : QKC2;
    tap_t *taps = osk_ws_get(OSK_WS_TAPS, (size_t)QT2 * g->taps * sizeof(tap_t));
    int16_t *bb = osk_ws_get(OSK_WS_BLOCK, (size_t)QT2 * kcmax * NR * 4 * sizeof(int16_t));
    int16_t *aw = osk_ws_get(OSK_WS_TILE, (size_t)kcmax * MR * 4 * sizeof(int16_t));
    int32_t *acc = kblocks > 1 ? osk_ws_get(OSK_WS_ACC, (size_t)(p1 - p0) * QT2 * SUBS * MR * KT * sizeof(int32_t)) : NULL;
    if (!taps || !bb || !aw || (kblocks > 1 && !acc)) abort();
    cols2_t qc[QT2];
    for (int64_t jb = n0; jb < n1; jb += QNB2) {
        const int nb = (int)(n1 - jb < QNB2 ? n1 - jb : QNB2), tiles = (nb + NR - 1) / NR;
        for (int t = 0; t < tiles; t++) {
            const int64_t j0 = jb + (int64_t)t * NR;
            const int nc = nb - t * NR < NR ? nb - t * NR : NR;
            osk_tile_taps(g, j0, nc, taps + (size_t)t * g->taps);
            osk_q8_tile_cols(g, j0, nc, xscale, xzp, &qc[t]);
        }
        for (int kb = 0; kb < k4; kb += QKC2) {
            const int kc = k4 - kb < QKC2 ? k4 - kb : QKC2, first = kb == 0, last = kb + kc == k4;
            for (int t = 0; t < tiles; t++)
                pack_widen(g, taps + (size_t)t * g->taps, &qc[t], xq, kb, kc, bb + (size_t)t * SUBS * kc * 32);
            for (int p = p0; p < p1; p++) {
                const int mr = m - p * MR < MR ? m - p * MR : MR;
                widen_a(packed + ((size_t)p * k4 + kb) * MR, kc, aw);
                out2_t o = { ep, rowsum + p * MR, wscale + p * MR, ep && ep->bias ? ep->bias + p * MR : NULL, NULL, 0, mr, 0,
                             p * MR, NULL, ldc, 0, g->howo };
                for (int t = 0; t < tiles; t++) {
                    const int nct = nb - t * NR < NR ? nb - t * NR : NR;
                    o.qc = &qc[t];
                    for (int s = 0; s * KT < nct; s++) {
                        o.sub = s;
                        o.nc = nct - s * KT < KT ? nct - s * KT : KT;
                        o.j0 = jb + (int64_t)t * NR + s * KT;
                        o.y = y + (int64_t)p * MR * ldc + o.j0;
                        int32_t *ap = acc ? acc + (((size_t)(p - p0) * QT2 + t) * SUBS + s) * MR * KT : NULL;
                        const int16_t *bt = bb + ((size_t)t * SUBS + s) * kc * 32;
                        __m256 lo = _mm256_setzero_ps(), hi = lo;   // lanes = columns; 0 is in every range
                        kernel_4x8(kc, aw, bt, ap, first, last, 0, &o, &lo, &hi);
                        if (mr > 4) kernel_4x8(kc, aw, bt, ap, first, last, 4, &o, &lo, &hi);
                        if (last && ep && ep->range) fold_lanes(&o, lo, hi);
                    }
                }
            }
        }
    }
}

// MARK: - activation range and codes (osk_q8_range / osk_q8_encode at the avx2 level; range_scalar / encode_scalar
// of onestep_conv_q8.c are the reference: min / max are exact, cvtps rounds to nearest even as lrintf does)

AVX2 void osk_q8_range_avx2(const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t j0, int32_t j1,
                            float *lo_io, float *hi_io) {
    __m256 lo = _mm256_set1_ps(*lo_io), hi = _mm256_set1_ps(*hi_io);
    for (int ch = 0; ch < c; ch++) q8_minmax_avx2(x + ((size_t)ch * n + i) * hw + j0, j1 - j0, &lo, &hi);
    q8_reduce_minmax_avx2(lo, hi, lo_io, hi_io);
}

AVX2 void osk_q8_encode_avx2(const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t j0, int32_t j1,
                             uint32_t *xq, float inv, int32_t zp) {
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i vzp = _mm256_set1_epi32(zp), v0 = _mm256_setzero_si256(), v255 = _mm256_set1_epi32(255);
    const int c4 = (c + 3) / 4;
    for (int q = 0; q < c4; q++) {
        uint32_t *d = xq + ((size_t)q * n + i) * hw;
        for (int j = j0; j < j1; j += 8) {
            const __m256i m = mask8_avx2(j1 - j >= 8 ? 0xff : (1u << (j1 - j)) - 1);
            __m256i word = _mm256_setzero_si256();
            for (int b = 0; b < 4; b++) {
                const int ch = 4 * q + b;
                __m256i code = vzp;
                if (ch < c) {
                    const __m256 v = _mm256_maskload_ps(x + ((size_t)ch * n + i) * hw + j, m);
                    code = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v, vinv)), vzp);   // nearest-even, as lrintf
                    code = _mm256_min_epi32(_mm256_max_epi32(code, v0), v255);
                }
                word = _mm256_or_si256(word, _mm256_slli_epi32(code, 8 * b));
            }
            _mm256_maskstore_epi32((int *)(d + j), m, word);
        }
    }
}

#endif

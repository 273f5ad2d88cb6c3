// int8 convolutions (see include/onestep_kernels.h for layouts): weights packed per output channel, activations
// quantized to uint8 per image, exact int32 sums with vpdpbusd (AVX-512 VNNI), vpmaddwd (AVX2) or scalar code.
//
// Determinism: sums are exact integers whatever the blocking, and the dequantization
// y = fmaf((float)(acc - zp * rowsum), s_w * s_x, y) is the same at every level, so outputs are bit-identical
// across levels, batch sizes, column splits and block sizes.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "onestep_conv_internal.h"

// MARK: - int8 weights and activations

size_t osk_q8_packed_count(int32_t m, int32_t cin, int32_t taps) {
    return (size_t)((m + MR - 1) / MR) * MR * (size_t)((cin + 3) / 4) * taps;
}

void osk_q8_pack(const float *w, int32_t m, int32_t cin, int32_t taps, int32_t *packed, int32_t *rowsum,
                 float *scale) {
    const int panels = (m + MR - 1) / MR, c4 = (cin + 3) / 4, k4 = c4 * taps;
    memset(packed, 0, osk_q8_packed_count(m, cin, taps) * sizeof(int32_t));
    for (int row = 0; row < panels * MR; row++) {
        rowsum[row] = 0;
        scale[row] = 0;
        if (row >= m) continue;
        const float *wr = w + (size_t)row * cin * taps;
        float amax = 0;
        for (int i = 0; i < cin * taps; i++) amax = fmaxf(amax, fabsf(wr[i]));
        float s = amax > 0 ? amax / 127.0f : 1.0f, inv = 1.0f / s;
        int32_t sum = 0;
        for (int c = 0; c < cin; c++)
            for (int t = 0; t < taps; t++) {
                long q = lrintf(wr[c * taps + t] * inv);
                q = q > 127 ? 127 : q < -127 ? -127 : q;
                sum += (int32_t)q;
                int kq = (c / 4) * taps + t;
                uint8_t *word = (uint8_t *)&packed[((size_t)(row / MR) * k4 + kq) * MR + row % MR];
                word[c % 4] = (uint8_t)(int8_t)q;
            }
        rowsum[row] = sum;
        scale[row] = s;
    }
}

/// Per-image range, widened to hold 0 (so 0 and the conv's zero padding are exactly the zero point).
static void q8_params(float lo, float hi, float *scale, int32_t *zp, float *inv) {
    float s = hi > lo ? (hi - lo) / 255.0f : 1.0f;
    long z = lrintf(-lo / s);
    *scale = s;
    *zp = (int32_t)(z < 0 ? 0 : z > 255 ? 255 : z);
    *inv = 1.0f / s;
}

/// code = clamp(round_to_nearest_even(v * inv) + zp, 0, 255), the same at every level.
static inline uint32_t q8_code(float v, float inv, int32_t zp) {
    long q = lrintf(v * inv) + zp;
    return (uint32_t)(q < 0 ? 0 : q > 255 ? 255 : q);
}

/* Per image i: the range (min, max, widened to hold 0) over positions j0..<j1 of every channel, folded into
   *lo / *hi; then the codes of positions j0..<j1. The range is a min / max, exact in any order, so splitting the
   positions between threads (osk_q8_range per part, then osk_q8_encode per part) gives the same scale, zero point
   and codes as one pass (for finite inputs). */
static void range_scalar(const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t j0, int32_t j1,
                         float *lo_io, float *hi_io) {
    float lo = *lo_io, hi = *hi_io;
    for (int ch = 0; ch < c; ch++) {
        const float *p = x + ((size_t)ch * n + i) * hw;
        for (int j = j0; j < j1; j++) { lo = p[j] < lo ? p[j] : lo; hi = p[j] > hi ? p[j] : hi; }
    }
    *lo_io = lo;
    *hi_io = hi;
}

static void encode_scalar(const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t j0, int32_t j1,
                          uint32_t *xq, float inv, int32_t zp) {
    const int c4 = (c + 3) / 4;
    for (int q = 0; q < c4; q++) {
        uint32_t *d = xq + ((size_t)q * n + i) * hw;
        for (int j = j0; j < j1; j++) {
            uint32_t word = 0;
            for (int b = 0; b < 4; b++) {
                int ch = 4 * q + b;
                uint32_t v = ch < c ? q8_code(x[((size_t)ch * n + i) * hw + j], inv, zp) : (uint32_t)zp;
                word |= v << (8 * b);
            }
            d[j] = word;
        }
    }
}

#if OSK_X86
AVX512 static void range_avx512(const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t j0, int32_t j1,
                                float *lo_io, float *hi_io) {
    __m512 vlo = _mm512_set1_ps(*lo_io), vhi = _mm512_set1_ps(*hi_io);
    for (int ch = 0; ch < c; ch++) {
        const float *p = x + ((size_t)ch * n + i) * hw;
        for (int j = j0; j < j1; j += 16) {
            __mmask16 m = (__mmask16)(j1 - j >= 16 ? 0xffff : (1u << (j1 - j)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(m, p + j);  // masked lanes read 0, which the range holds anyway
            vlo = _mm512_min_ps(vlo, v);
            vhi = _mm512_max_ps(vhi, v);
        }
    }
    *lo_io = _mm512_reduce_min_ps(vlo);
    *hi_io = _mm512_reduce_max_ps(vhi);
}

AVX512 static void encode_avx512(const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t j0, int32_t j1,
                                 uint32_t *xq, float inv, int32_t zp) {
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i vzp = _mm512_set1_epi32(zp), v0 = _mm512_setzero_si512(), v255 = _mm512_set1_epi32(255);
    const int c4 = (c + 3) / 4;
    for (int q = 0; q < c4; q++) {
        uint32_t *d = xq + ((size_t)q * n + i) * hw;
        for (int j = j0; j < j1; j += 16) {
            __mmask16 m = (__mmask16)(j1 - j >= 16 ? 0xffff : (1u << (j1 - j)) - 1);
            __m512i word = _mm512_setzero_si512();
            for (int b = 0; b < 4; b++) {
                int ch = 4 * q + b;
                __m512i code = vzp;
                if (ch < c) {
                    __m512 v = _mm512_maskz_loadu_ps(m, x + ((size_t)ch * n + i) * hw + j);
                    code = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, vinv)), vzp);  // nearest-even, as lrintf
                    code = _mm512_min_epi32(_mm512_max_epi32(code, v0), v255);
                }
                word = _mm512_or_si512(word, _mm512_slli_epi32(code, 8 * b));
            }
            _mm512_mask_storeu_epi32(d + j, m, word);
        }
    }
}
#endif

void osk_q8_range(int level, const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t j0, int32_t j1,
                  float *lo, float *hi) {
    if (j1 <= j0) return;
#if OSK_X86
    if (level == OSK_AVX512) { range_avx512(x, c, n, hw, i, j0, j1, lo, hi); return; }
    if (level == OSK_AVX2) { osk_q8_range_avx2(x, c, n, hw, i, j0, j1, lo, hi); return; }
#endif
    range_scalar(x, c, n, hw, i, j0, j1, lo, hi);
}

void osk_q8_set_params(float lo, float hi, float *scale, int32_t *zp) {
    float inv;
    q8_params(lo, hi, scale, zp, &inv);
}

void osk_q8_encode(int level, const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t j0, int32_t j1,
                   uint32_t *xq, const float *scale, const int32_t *zp) {
    if (j1 <= j0) return;
    const float inv = 1.0f / scale[i];   // what q8_params computed
#if OSK_X86
    if (level == OSK_AVX512) { encode_avx512(x, c, n, hw, i, j0, j1, xq, inv, zp[i]); return; }
    if (level == OSK_AVX2) { osk_q8_encode_avx2(x, c, n, hw, i, j0, j1, xq, inv, zp[i]); return; }
#endif
    encode_scalar(x, c, n, hw, i, j0, j1, xq, inv, zp[i]);
}

void osk_q8_quantize(int level, const float *x, int32_t c, int32_t n, int32_t hw, int32_t i0, int32_t i1,
                     uint32_t *xq, float *scale, int32_t *zp) {
    for (int i = i0; i < i1; i++) {
        float lo = 0, hi = 0;
        osk_q8_range(level, x, c, n, hw, i, 0, hw, &lo, &hi);
        osk_q8_set_params(lo, hi, &scale[i], &zp[i]);
        osk_q8_encode(level, x, c, n, hw, i, 0, hw, xq, scale, zp);
    }
}

// MARK: - int8 tile packing: bt (C4 * taps, NR) uint32, row kq = q * taps + t; padding = zero point

typedef osk_qcols qcols_t;

void osk_q8_tile_cols(const geo_t *g, int64_t j0, int nc, const float *xscale, const int32_t *xzp, osk_qcols *qc) {
    for (int jj = 0; jj < NR; jj++) {
        int32_t i = jj < nc ? (int32_t)((j0 + jj) / g->howo) : -1;
        qc->zp[jj] = i >= 0 ? xzp[i] : 0;
        qc->zp4[jj] = (uint32_t)qc->zp[jj] * 0x01010101u;
        qc->scale[jj] = i >= 0 ? xscale[i] : 0;
    }
}

static void pack_q8_scalar(const geo_t *g, const tap_t *taps, const qcols_t *qc, const uint32_t *xq, uint32_t *bt) {
    const int c4 = (g->c + 3) / 4;
    for (int q = 0; q < c4; q++) {
        const uint32_t *p = xq + (int64_t)q * g->plane;
        for (int t = 0; t < g->taps; t++) {
            uint32_t *d = bt + ((size_t)q * g->taps + t) * NR;
            for (int jj = 0; jj < NR; jj++) { int32_t o = taps[t].off[jj]; d[jj] = o >= 0 ? p[o] : qc->zp4[jj]; }
        }
    }
}

#if OSK_X86
AVX512 static void pack_q8_avx512(const geo_t *g, const tap_t *taps, const qcols_t *qc, const uint32_t *xq, uint32_t *bt) {
    const int c4 = (g->c + 3) / 4;
    const __m512i z0 = _mm512_loadu_si512(qc->zp4), z1 = _mm512_loadu_si512(qc->zp4 + 16);
    for (int q = 0; q < c4; q++) {
        const uint32_t *p = xq + (int64_t)q * g->plane;
        for (int t = 0; t < g->taps; t++) {
            const tap_t *tp = &taps[t];
            uint32_t *d = bt + ((size_t)q * g->taps + t) * NR;
            __mmask16 m0 = (__mmask16)tp->valid, m1 = (__mmask16)(tp->valid >> 16);
            if (tp->contiguous) {
                const uint32_t *s = p + tp->base;
                _mm_prefetch((const char *)(s + 2 * NR), _MM_HINT_T0);
                _mm_prefetch((const char *)(s + 2 * NR + 16), _MM_HINT_T0);
                _mm512_store_si512(d, _mm512_mask_loadu_epi32(z0, m0, s));
                _mm512_store_si512(d + 16, _mm512_mask_loadu_epi32(z1, m1, s + 16));
            } else {
                __m512i i0 = _mm512_loadu_si512(tp->off), i1 = _mm512_loadu_si512(tp->off + 16);
                _mm512_store_si512(d, _mm512_mask_i32gather_epi32(z0, m0, i0, p, 4));
                _mm512_store_si512(d + 16, _mm512_mask_i32gather_epi32(z1, m1, i1, p, 4));
            }
        }
    }
}

AVX2 static void pack_q8_avx2(const geo_t *g, const tap_t *taps, const qcols_t *qc, const uint32_t *xq, uint32_t *bt) {
    const int c4 = (g->c + 3) / 4;
    for (int q = 0; q < c4; q++) {
        const int *p = (const int *)(xq + (int64_t)q * g->plane);
        for (int t = 0; t < g->taps; t++) {
            const tap_t *tp = &taps[t];
            uint32_t *d = bt + ((size_t)q * g->taps + t) * NR;
            for (int v = 0; v < NR / 8; v++) {
                __m256i m = mask8_avx2(tp->valid >> (8 * v));
                __m256i z = _mm256_loadu_si256((const __m256i *)(qc->zp4 + 8 * v)), val;
                if (tp->contiguous) val = _mm256_blendv_epi8(z, _mm256_maskload_epi32(p + tp->base + 8 * v, m), m);
                else val = _mm256_mask_i32gather_epi32(z, p, _mm256_loadu_si256((const __m256i *)(tp->off + 8 * v)), m, 4);
                _mm256_store_si256((__m256i *)(d + 8 * v), val);
            }
        }
    }
}
#endif

// MARK: - int8 microkernels: y += (float)(sum - zp * rowsum) * (s_w * s_x), as one fmaf per element

static void kernel_q8_scalar(int k4, const int32_t *a, const uint32_t *bt, const int32_t *rowsum, const float *wscale,
                             const qcols_t *qc, float *const crow[MR], int mr, int nc) {
    for (int r = 0; r < mr; r++)
        for (int jj = 0; jj < nc; jj++) {
            int32_t acc = 0;
            for (int kq = 0; kq < k4; kq++) {
                uint32_t bw = bt[(size_t)kq * NR + jj];
                int32_t aw = a[(size_t)kq * MR + r];
                for (int b = 0; b < 4; b++) acc += (int32_t)((bw >> (8 * b)) & 0xff) * (int32_t)(int8_t)(aw >> (8 * b));
            }
            float f = (float)(acc - qc->zp[jj] * rowsum[r]);
            crow[r][jj] = fmaf(f, wscale[r] * qc->scale[jj], crow[r][jj]);
        }
}

#if OSK_X86
/// 4 rows x 8 columns. Exact without saturation: codes widened to 16 bits, vpmaddwd sums pairs into int32.
AVX2 static void kernel_q8_avx2_4x8(int k4, const int32_t *a, const uint32_t *bt, __m256i acc[4]) {
    __m256i lo[4], hi[4];
    for (int r = 0; r < 4; r++) { lo[r] = _mm256_setzero_si256(); hi[r] = _mm256_setzero_si256(); }
    for (int kq = 0; kq < k4; kq++) {
        __m256i braw = _mm256_load_si256((const __m256i *)bt);
        __m256i bl = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(braw));       // columns 0..3 x 4 k
        __m256i bh = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(braw, 1));  // columns 4..7 x 4 k
        for (int r = 0; r < 4; r++) {
            __m256i aw = _mm256_cvtepi8_epi16(_mm_set1_epi32(a[r]));
            lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(bl, aw));
            hi[r] = _mm256_add_epi32(hi[r], _mm256_madd_epi16(bh, aw));
        }
        a += MR; bt += NR;
    }
    // lo = [c0a c0b c1a c1b | c2a c2b c3a c3b]; hadd -> [c0 c1 c4 c5 | c2 c3 c6 c7]; permute to column order.
    for (int r = 0; r < 4; r++)
        acc[r] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(lo[r], hi[r]), _MM_SHUFFLE(3, 1, 2, 0));
}

AVX2 static void kernel_q8_avx2(int k4, const int32_t *a, const uint32_t *bt, const int32_t *rowsum, const float *wscale,
                                const qcols_t *qc, float *const crow[MR], int mr, int nc) {
    uint32_t cols = nc >= 32 ? 0xffffffffu : (1u << nc) - 1;
    for (int v = 0; v < NR / 8 && 8 * v < nc; v++) {
        __m256i m = mask8_avx2(cols >> (8 * v));
        __m256i zp = _mm256_loadu_si256((const __m256i *)(qc->zp + 8 * v));
        __m256 sx = _mm256_loadu_ps(qc->scale + 8 * v);
        for (int rg = 0; rg < 2 && 4 * rg < mr; rg++) {
            __m256i acc[4];
            kernel_q8_avx2_4x8(k4, a + 4 * rg, bt + 8 * v, acc);
            for (int r = 0; r < 4; r++) {
                int row = 4 * rg + r;
                float *cp = crow[row] + 8 * v;
                __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[r], _mm256_mullo_epi32(zp, _mm256_set1_epi32(rowsum[row]))));
                __m256 s = _mm256_mul_ps(_mm256_set1_ps(wscale[row]), sx);
                _mm256_maskstore_ps(cp, m, _mm256_fmadd_ps(f, s, _mm256_maskload_ps(cp, m)));
            }
        }
    }
}
#endif

// MARK: - fused epilogue (osk_conv_q8_fused)
//
// Per output tile (up to 8 rows x 32 columns), in L1: before the tile's last k block the tile of y is set to
// init = residual (+ bias) or bias (or 0), so the kernel's fmaf(sum, s, y) computes what prepareOutput + the
// kernel computed; after it, ReLU (v > 0 ? v : +0) and the min / max of each image's values are folded in. Those
// were separate passes over the whole (64, N, 512, 512) output for TAESD. Same bits as the unfused calls.

typedef struct {
    const osk_q8_epilogue *ep;
    const float *bias;   // ep->bias + row of the panel's first row, or NULL
    int64_t j0, howo, ldc;
    int mr, nc, row0;    // row0: first output row of the panel
} ep_tile_t;

static void ep_init_scalar(const ep_tile_t *e, float *const crow[MR]) {
    for (int r = 0; r < e->mr; r++) {
        const float b = e->bias ? e->bias[r] : 0.0f;
        const float *res = e->ep->residual ? e->ep->residual + (int64_t)(e->row0 + r) * e->ldc + e->j0 : NULL;
        for (int jj = 0; jj < e->nc; jj++) crow[r][jj] = res ? (e->bias ? res[jj] + b : res[jj]) : b;
    }
}

/// Folds value v of column j0 + jj into its image's range.
static inline void ep_fold(float *range, int64_t image, float lo, float hi) {
    float *p = range + 2 * image;
    p[0] = lo < p[0] ? lo : p[0];
    p[1] = hi > p[1] ? hi : p[1];
}

static void ep_finish_scalar(const ep_tile_t *e, float *const crow[MR]) {
    const osk_q8_epilogue *ep = e->ep;
    for (int r = 0; r < e->mr; r++)
        for (int jj = 0; jj < e->nc; jj++) {
            float v = crow[r][jj];
            if (ep->relu) crow[r][jj] = v = v > 0.0f ? v : 0.0f;
            if (ep->range) ep_fold(ep->range, (e->j0 + jj) / e->howo, v, v);
        }
}

#if OSK_X86
AVX512 static void ep_init_avx512(const ep_tile_t *e, float *const crow[MR]) {
    const __mmask16 m0 = (__mmask16)(e->nc >= 16 ? 0xffff : (1u << e->nc) - 1);
    const __mmask16 m1 = (__mmask16)(e->nc >= 32 ? 0xffff : e->nc > 16 ? (1u << (e->nc - 16)) - 1 : 0);
    for (int r = 0; r < e->mr; r++) {
        __m512 b = _mm512_set1_ps(e->bias ? e->bias[r] : 0.0f), v0 = b, v1 = b;
        if (e->ep->residual) {
            const float *res = e->ep->residual + (int64_t)(e->row0 + r) * e->ldc + e->j0;
            v0 = _mm512_maskz_loadu_ps(m0, res);
            v1 = _mm512_maskz_loadu_ps(m1, res + 16);
            if (e->bias) { v0 = _mm512_add_ps(v0, b); v1 = _mm512_add_ps(v1, b); }
        }
        _mm512_mask_storeu_ps(crow[r], m0, v0);
        _mm512_mask_storeu_ps(crow[r] + 16, m1, v1);
    }
}

/// Folds per-column (lane) minima / maxima of a tile into the images' ranges.
AVX512 static void ep_fold_lanes(const ep_tile_t *e, __m512 lo0, __m512 lo1, __m512 hi0, __m512 hi1) {
    const osk_q8_epilogue *ep = e->ep;
    if (!ep->range) return;
    const int64_t first = e->j0 / e->howo, last = (e->j0 + e->nc - 1) / e->howo;
    if (first == last) {
        ep_fold(ep->range, first, _mm512_reduce_min_ps(_mm512_min_ps(lo0, lo1)), _mm512_reduce_max_ps(_mm512_max_ps(hi0, hi1)));
        return;
    }
    float l[32], h[32];   // the tile straddles images: fold column by column
    _mm512_storeu_ps(l, lo0); _mm512_storeu_ps(l + 16, lo1);
    _mm512_storeu_ps(h, hi0); _mm512_storeu_ps(h + 16, hi1);
    for (int jj = 0; jj < e->nc; jj++) ep_fold(ep->range, (e->j0 + jj) / e->howo, l[jj], h[jj]);
}

AVX512 static void ep_finish_avx512(const ep_tile_t *e, float *const crow[MR]) {
    const osk_q8_epilogue *ep = e->ep;
    const __mmask16 m0 = (__mmask16)(e->nc >= 16 ? 0xffff : (1u << e->nc) - 1);
    const __mmask16 m1 = (__mmask16)(e->nc >= 32 ? 0xffff : e->nc > 16 ? (1u << (e->nc - 16)) - 1 : 0);
    const __m512 zero = _mm512_setzero_ps();
    __m512 lo0 = zero, lo1 = zero, hi0 = zero, hi1 = zero;   // lanes = columns; 0 is in every range
    for (int r = 0; r < e->mr; r++) {
        __m512 v0 = _mm512_maskz_loadu_ps(m0, crow[r]), v1 = _mm512_maskz_loadu_ps(m1, crow[r] + 16);
        if (ep->relu) {
            v0 = _mm512_max_ps(v0, zero);   // second operand on NaN or equal: v > 0 ? v : +0
            v1 = _mm512_max_ps(v1, zero);
            _mm512_mask_storeu_ps(crow[r], m0, v0);
            _mm512_mask_storeu_ps(crow[r] + 16, m1, v1);
        }
        lo0 = _mm512_min_ps(lo0, v0); lo1 = _mm512_min_ps(lo1, v1);   // masked lanes read 0
        hi0 = _mm512_max_ps(hi0, v0); hi1 = _mm512_max_ps(hi1, v1);
    }
    ep_fold_lanes(e, lo0, lo1, hi0, hi1);
}
#endif

static void ep_init(int level, const ep_tile_t *e, float *const crow[MR]) {
#if OSK_X86
    if (level == OSK_AVX512) { ep_init_avx512(e, crow); return; }
#endif
    (void)level;
    ep_init_scalar(e, crow);
}

static void ep_finish(int level, const ep_tile_t *e, float *const crow[MR]) {
#if OSK_X86
    if (level == OSK_AVX512) { ep_finish_avx512(e, crow); return; }
#endif
    (void)level;
    ep_finish_scalar(e, crow);
}

static ep_tile_t ep_tile(const osk_q8_epilogue *ep, int p, int m, int64_t j0, int nc, int64_t howo, int64_t ldc) {
    ep_tile_t e = { ep, ep->bias ? ep->bias + p * MR : NULL, j0, howo, ldc, m - p * MR < MR ? m - p * MR : MR, nc, p * MR };
    return e;
}

#if OSK_X86
// MARK: - AVX-512 blocked driver
//
// The per-tile driver below streams all of A (M x K, up to 15 MB) from L3 for every 32 output columns and
// touches 8 rows of y, ldc apart, per panel: on large layers (1280 channels at 16x16, 2560 x 4096 1x1) that ran
// at 7-50% of the VNNI peak. Here, in the manner of GotoBLAS: a block of QNB columns and QKC k-quads of the
// im2col matrix is packed once ([tile][kq][32] words, 192 KiB: L2), then every 8-row panel runs over the
// block's tiles with its A sliver (QKC x 8 words, 6 KiB) held in L1, so A is read once per QNB columns and y is
// written in runs of QNB contiguous columns. Partial sums between k blocks are exact int32 in a per-thread
// scratch ([panel][tile][8][32]), so the result is the same integer as the unblocked sum: identical bits.
#ifndef QNB
#define QNB 256   // columns per block: 8 tiles
#endif
#ifndef QKC
#define QKC 192   // k quads per block (768 products of each output)
#endif
#define QTILES (QNB / NR)

/// bt rows kb..<kb+kc of one tile: row kq = q * taps + t (channel quad q, tap t); padding = the zero point.
AVX512 static void pack_q8_range_avx512(const geo_t *g, const tap_t *taps, const qcols_t *qc, const uint32_t *xq,
                                        int kb, int kc, uint32_t *bt) {
    const __m512i z0 = _mm512_loadu_si512(qc->zp4), z1 = _mm512_loadu_si512(qc->zp4 + 16);
    int q = kb / g->taps, t = kb % g->taps;
    for (int kq = 0; kq < kc; kq++) {
        const uint32_t *p = xq + (int64_t)q * g->plane;
        const tap_t *tp = &taps[t];
        uint32_t *d = bt + (size_t)kq * NR;
        __mmask16 m0 = (__mmask16)tp->valid, m1 = (__mmask16)(tp->valid >> 16);
        if (tp->contiguous) {
            const uint32_t *src = p + tp->base;
            _mm512_store_si512(d, _mm512_mask_loadu_epi32(z0, m0, src));
            _mm512_store_si512(d + 16, _mm512_mask_loadu_epi32(z1, m1, src + 16));
        } else if (tp->pairs) {
            // Valid columns lo..hi-1 read source words (lo + odd) >> 1 .. (hi - 1 + odd) >> 1 of pbase (at most
            // 17): two masked loads of exactly those words (no read outside the row), then a permute doubles them.
            const int lo = __builtin_ctz(tp->valid), hi = 32 - __builtin_clz(tp->valid);
            const int slo = (lo + tp->odd) >> 1, shi = (hi - 1 + tp->odd) >> 1;
            const uint64_t smask = ((2ull << shi) - 1) & ~((1ull << slo) - 1);
            const uint32_t *src = p + tp->pbase;
            const __m512i w0 = _mm512_maskz_loadu_epi32((__mmask16)smask, src);
            const __m512i w1 = _mm512_maskz_loadu_epi32((__mmask16)(smask >> 16), src + 16);
            const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            const __m512i odd = _mm512_set1_epi32(tp->odd);
            const __m512i i0 = _mm512_srli_epi32(_mm512_add_epi32(lane, odd), 1);
            const __m512i i1 = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32(16)), odd), 1);
            _mm512_store_si512(d, _mm512_mask_mov_epi32(z0, m0, _mm512_permutex2var_epi32(w0, i0, w1)));
            _mm512_store_si512(d + 16, _mm512_mask_mov_epi32(z1, m1, _mm512_permutex2var_epi32(w0, i1, w1)));
        } else {
            __m512i i0 = _mm512_loadu_si512(tp->off), i1 = _mm512_loadu_si512(tp->off + 16);
            _mm512_store_si512(d, _mm512_mask_i32gather_epi32(z0, m0, i0, p, 4));
            _mm512_store_si512(d + 16, _mm512_mask_i32gather_epi32(z1, m1, i1, p, 4));
        }
        if (++t == g->taps) { t = 0; q++; }
    }
}

/// 8 rows x 32 columns over kc k-quads: 16 zmm accumulators, per k-quad 2 loads of bt and 8 broadcasts of a
/// (folded into vpdpbusd's memory operand) for 16 vpdpbusd. The sums start at 0 (`first`) or from acc, and end
/// in acc or, on the last k block, dequantized onto y (kernel_q8_scalar's formula). With first and last set (acc
/// unused) it is the per-tile kernel of run_q8_tiles too.
/// Where a tile's B rows come from when it is not packed: every tap of a full tile is a contiguous, fully valid
/// run of the code planes (an interior tile of a stride-1 conv), so row kq = (q, t) is xq + q * plane + base[t]
/// and the kernel reads it in place. Packing those rows (pack_q8_range_avx512) took 14% of the int8 TAESD
/// decoder; the same words are read, so the sums and the bits are the same.
typedef struct {
    const uint32_t *xq;
    int64_t plane;
    int32_t c4, taps;
    int64_t base[16];   // per tap (taps <= 16: 3x3 and 1x1)
} direct_b_t;

AVX512 static void kernel_q8_block_avx512(int kc, const int32_t *a, const uint32_t *bt, int32_t *acc, int first, int last,
                                          const int32_t *rowsum, const float *wscale, const qcols_t *qc,
                                          float *const crow[MR], int nc, const ep_tile_t *e, const direct_b_t *direct) {
#define INIT(r) __m512i c##r##0 = first ? _mm512_setzero_si512() : _mm512_load_si512(acc + 32 * r), \
                        c##r##1 = first ? _mm512_setzero_si512() : _mm512_load_si512(acc + 32 * r + 16);
    INIT(0) INIT(1) INIT(2) INIT(3) INIT(4) INIT(5) INIT(6) INIT(7)
#define STEP(r) { __m512i av = _mm512_set1_epi32(a[r]); c##r##0 = _mm512_dpbusd_epi32(c##r##0, b0, av); c##r##1 = _mm512_dpbusd_epi32(c##r##1, b1, av); }
    if (direct) {   // the whole k range (one k block), rows read in place
        for (int q = 0; q < direct->c4; q++) {
            const uint32_t *pq = direct->xq + (int64_t)q * direct->plane;
            for (int t = 0; t < direct->taps; t++) {
                const uint32_t *src = pq + direct->base[t];
                __m512i b0 = _mm512_loadu_si512(src), b1 = _mm512_loadu_si512(src + 16);
                STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
                a += MR;
            }
        }
    } else {
        for (int kq = 0; kq < kc; kq++) {
            __m512i b0 = _mm512_load_si512(bt), b1 = _mm512_load_si512(bt + 16);
            STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
            a += MR; bt += NR;
        }
    }
    if (!last) {
#define SAVE(r) _mm512_store_si512(acc + 32 * r, c##r##0); _mm512_store_si512(acc + 32 * r + 16, c##r##1);
        SAVE(0) SAVE(1) SAVE(2) SAVE(3) SAVE(4) SAVE(5) SAVE(6) SAVE(7)
        return;
    }
    __mmask16 m0 = (__mmask16)(nc >= 16 ? 0xffff : (1u << nc) - 1);
    __mmask16 m1 = (__mmask16)(nc >= 32 ? 0xffff : nc > 16 ? (1u << (nc - 16)) - 1 : 0);
    const __m512i zp0 = _mm512_loadu_si512(qc->zp), zp1 = _mm512_loadu_si512(qc->zp + 16);
    const __m512 s0 = _mm512_loadu_ps(qc->scale), s1 = _mm512_loadu_ps(qc->scale + 16);
#define OUT(r) { \
        __m512i rs = _mm512_set1_epi32(rowsum[r]); __m512 ws = _mm512_set1_ps(wscale[r]); \
        __m512 f0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(c##r##0, _mm512_mullo_epi32(zp0, rs))); \
        __m512 f1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(c##r##1, _mm512_mullo_epi32(zp1, rs))); \
        _mm512_mask_storeu_ps(crow[r], m0, _mm512_fmadd_ps(f0, _mm512_mul_ps(ws, s0), _mm512_maskz_loadu_ps(m0, crow[r]))); \
        _mm512_mask_storeu_ps(crow[r] + 16, m1, _mm512_fmadd_ps(f1, _mm512_mul_ps(ws, s1), _mm512_maskz_loadu_ps(m1, crow[r] + 16))); }
    if (e) {
        // The fused epilogue in registers (ep_init + the OUT below + ep_finish, the same operations): y is
        // written once and never read, the start value comes from the bias and the residual.
        const osk_q8_epilogue *ep = e->ep;
        const __m512 zero = _mm512_setzero_ps();
        __m512 lo0 = zero, lo1 = zero, hi0 = zero, hi1 = zero;
#define OUTE(r) if (r < e->mr) { \
        __m512 b = _mm512_set1_ps(e->bias ? e->bias[r] : 0.0f), i0 = b, i1 = b; \
        if (ep->residual) { \
            const float *res = ep->residual + (int64_t)(e->row0 + r) * e->ldc + e->j0; \
            i0 = _mm512_maskz_loadu_ps(m0, res); i1 = _mm512_maskz_loadu_ps(m1, res + 16); \
            if (e->bias) { i0 = _mm512_add_ps(i0, b); i1 = _mm512_add_ps(i1, b); } } \
        __m512i rs = _mm512_set1_epi32(rowsum[r]); __m512 ws = _mm512_set1_ps(wscale[r]); \
        __m512 f0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(c##r##0, _mm512_mullo_epi32(zp0, rs))); \
        __m512 f1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(c##r##1, _mm512_mullo_epi32(zp1, rs))); \
        __m512 v0 = _mm512_fmadd_ps(f0, _mm512_mul_ps(ws, s0), i0), v1 = _mm512_fmadd_ps(f1, _mm512_mul_ps(ws, s1), i1); \
        if (ep->relu) { v0 = _mm512_max_ps(v0, zero); v1 = _mm512_max_ps(v1, zero); } \
        _mm512_mask_storeu_ps(crow[r], m0, v0); _mm512_mask_storeu_ps(crow[r] + 16, m1, v1); \
        lo0 = _mm512_mask_min_ps(lo0, m0, lo0, v0); lo1 = _mm512_mask_min_ps(lo1, m1, lo1, v1); \
        hi0 = _mm512_mask_max_ps(hi0, m0, hi0, v0); hi1 = _mm512_mask_max_ps(hi1, m1, hi1, v1); }
        OUTE(0) OUTE(1) OUTE(2) OUTE(3) OUTE(4) OUTE(5) OUTE(6) OUTE(7)
#undef OUTE
        ep_fold_lanes(e, lo0, lo1, hi0, hi1);
        return;
    }
    OUT(0) OUT(1) OUT(2) OUT(3) OUT(4) OUT(5) OUT(6) OUT(7)
#undef INIT
#undef STEP
#undef SAVE
#undef OUT
}

/// Output rows (panels p0..<p1) x columns n0..<n1 on AVX-512, blocked as described above.
static void run_q8_blocked(const geo_t *g, const int32_t *packed, const int32_t *rowsum, const float *wscale,
                           const uint32_t *xq, const float *xscale, const int32_t *xzp, int m, float *y, int64_t ldc,
                           int64_t n0, int64_t n1, int p0, int p1, const osk_q8_epilogue *ep) {
    const int k4 = (g->c + 3) / 4 * g->taps, kblocks = (k4 + QKC - 1) / QKC;
    tap_t *taps = osk_ws_get(OSK_WS_TAPS, (size_t)QTILES * g->taps * sizeof(tap_t));
    uint32_t *bb = osk_ws_get(OSK_WS_BLOCK, (size_t)QTILES * QKC * NR * sizeof(uint32_t));
    int32_t *acc = kblocks > 1 ? osk_ws_get(OSK_WS_ACC, (size_t)(p1 - p0) * QTILES * MR * NR * sizeof(int32_t)) : NULL;
    if (!taps || !bb || (kblocks > 1 && !acc)) abort();
    qcols_t qc[QTILES];
    for (int64_t jb = n0; jb < n1; jb += QNB) {
        const int nb = (int)(n1 - jb < QNB ? n1 - jb : QNB), tiles = (nb + NR - 1) / NR;
        for (int t = 0; t < tiles; t++) {
            const int64_t j0 = jb + (int64_t)t * NR;
            const int nc = nb - t * NR < NR ? nb - t * NR : NR;
            osk_tile_taps(g, j0, nc, taps + (size_t)t * g->taps);
            osk_q8_tile_cols(g, j0, nc, xscale, xzp, &qc[t]);
        }
        // Tiles read in place (direct_b_t): one k block, a full tile, every tap contiguous and valid.
        int direct[QTILES];
        for (int t = 0; t < tiles; t++) {
            direct[t] = kblocks == 1 && g->taps <= 16 && nb - t * NR >= NR;
            for (int k = 0; direct[t] && k < g->taps; k++) {
                const tap_t *tp = &taps[(size_t)t * g->taps + k];
                direct[t] = tp->contiguous && tp->valid == 0xffffffffu;
            }
        }
        for (int kb = 0; kb < k4; kb += QKC) {
            const int kc = k4 - kb < QKC ? k4 - kb : QKC, first = kb == 0, last = kb + kc == k4;
            for (int t = 0; t < tiles; t++)
                if (!direct[t]) pack_q8_range_avx512(g, taps + (size_t)t * g->taps, &qc[t], xq, kb, kc, bb + (size_t)t * QKC * NR);
            for (int p = p0; p < p1; p++) {
                const int mr = m - p * MR < MR ? m - p * MR : MR;
                const int32_t *a = packed + ((size_t)p * k4 + kb) * MR;
                // The next panel's A sliver (kc x 8 words, not contiguous with this one's) is fetched into L2 while
                // this panel runs, a share per tile: in a forward a layer's weights come from DRAM, and with few
                // tiles per block (8x8 and 16x16 maps) each sliver is used only once or twice.
                const char *next = p + 1 < p1 ? (const char *)(packed + ((size_t)(p + 1) * k4 + kb) * MR) : NULL;
                const int lines = (kc * MR * 4 + 63) / 64;
                for (int t = 0; t < tiles; t++) {
                    const int64_t j0 = jb + (int64_t)t * NR;
                    const int nc = nb - t * NR < NR ? nb - t * NR : NR;
                    if (next)
                        for (int l = lines * t / tiles; l < lines * (t + 1) / tiles; l++) _mm_prefetch(next + 64 * l, _MM_HINT_T1);
                    float *crow[MR];
                    for (int r = 0; r < MR; r++) crow[r] = r < mr ? y + (int64_t)(p * MR + r) * ldc + j0 : osk_dummy_rows[r];
                    int32_t *ap = acc ? acc + ((size_t)(p - p0) * QTILES + t) * MR * NR : NULL;
                    ep_tile_t e;
                    if (ep && last) e = ep_tile(ep, p, m, j0, nc, g->howo, ldc);
                    direct_b_t d;
                    if (direct[t]) {
                        d.xq = xq; d.plane = g->plane; d.c4 = (g->c + 3) / 4; d.taps = g->taps;
                        for (int k = 0; k < g->taps; k++) d.base[k] = taps[(size_t)t * g->taps + k].base;
                    }
                    kernel_q8_block_avx512(kc, a, bb + (size_t)t * QKC * NR, ap, first, last, rowsum + p * MR,
                                           wscale + p * MR, &qc[t], crow, nc, ep && last ? &e : NULL, direct[t] ? &d : NULL);
                }
            }
        }
    }
}
#endif

/// Output rows (panels p0..<p1) x columns n0..<n1, one 32-column tile at a time (AVX2 and scalar levels).
static void run_q8_tiles(int level, const geo_t *g, const int32_t *packed, const int32_t *rowsum, const float *wscale,
                         const uint32_t *xq, const float *xscale, const int32_t *xzp, int m, float *y, int64_t ldc,
                         int64_t n0, int64_t n1, int p0, int p1, const osk_q8_epilogue *ep) {
    const int k4 = (g->c + 3) / 4 * g->taps;
    uint32_t *bt = osk_ws_get(OSK_WS_TILE, (size_t)k4 * NR * sizeof(uint32_t));
    tap_t *taps = osk_ws_get(OSK_WS_TAPS, (size_t)g->taps * sizeof(tap_t));
    if (!bt || !taps) abort();
    qcols_t qc;
    for (int64_t j0 = n0; j0 < n1; j0 += NR) {
        int nc = (int)(n1 - j0 < NR ? n1 - j0 : NR);
        osk_tile_taps(g, j0, nc, taps);
        osk_q8_tile_cols(g, j0, nc, xscale, xzp, &qc);
#if OSK_X86
        if (level == OSK_AVX512) pack_q8_avx512(g, taps, &qc, xq, bt);
        else if (level == OSK_AVX2) pack_q8_avx2(g, taps, &qc, xq, bt);
        else
#endif
            pack_q8_scalar(g, taps, &qc, xq, bt);
        for (int p = p0; p < p1; p++) {
            int mr = m - p * MR < MR ? m - p * MR : MR;
            float *crow[MR];
            for (int r = 0; r < MR; r++) crow[r] = r < mr ? y + (int64_t)(p * MR + r) * ldc + j0 : osk_dummy_rows[r];
            const int32_t *a = packed + (size_t)p * k4 * MR;
            ep_tile_t e;
            if (ep) { e = ep_tile(ep, p, m, j0, nc, g->howo, ldc); ep_init(level, &e, crow); }
#if OSK_X86
            if (level == OSK_AVX512) kernel_q8_block_avx512(k4, a, bt, NULL, 1, 1, rowsum + p * MR, wscale + p * MR, &qc, crow, nc, NULL, NULL);
            else if (level == OSK_AVX2) kernel_q8_avx2(k4, a, bt, rowsum + p * MR, wscale + p * MR, &qc, crow, mr, nc);
            else
#endif
                kernel_q8_scalar(k4, a, bt, rowsum + p * MR, wscale + p * MR, &qc, crow, mr, nc);
            if (ep) ep_finish(level, &e, crow);
        }
    }
}

/// The per-tile driver on AVX-512 and AVX2 too (before/after measurements): ONESTEP_Q8_UNBLOCKED=1 at start-up, or
/// osk_q8_set_unblocked. Kept in a variable: this runs for every part of every int8 conv, and getenv scans the
/// whole environment (and races with setenv).
static int q8_unblocked_flag = -1;   // -1: not read yet

#if OSK_X86   // the AVX-512 and AVX2 levels have two drivers
static int q8_unblocked(void) {
    int v = __atomic_load_n(&q8_unblocked_flag, __ATOMIC_RELAXED);
    if (v < 0) {
        v = getenv("ONESTEP_Q8_UNBLOCKED") != NULL;   // threads racing here store the same value
        __atomic_store_n(&q8_unblocked_flag, v, __ATOMIC_RELAXED);
    }
    return v;
}
#endif

void osk_q8_set_unblocked(int on) { __atomic_store_n(&q8_unblocked_flag, on ? 1 : 0, __ATOMIC_RELAXED); }

void osk_conv_q8_part(int level, const osk_conv *conv, const int32_t *packed, const int32_t *rowsum,
                      const float *wscale, const uint32_t *xq, const float *xscale, const int32_t *xzp,
                      int32_t n, int32_t h, int32_t w, float *y, int64_t n0, int64_t n1, int32_t m0, int32_t m1) {
    osk_conv_q8_fused(level, conv, packed, rowsum, wscale, xq, xscale, xzp, n, h, w, y, n0, n1, m0, m1, NULL);
}

void osk_conv_q8_fused(int level, const osk_conv *conv, const int32_t *packed, const int32_t *rowsum,
                       const float *wscale, const uint32_t *xq, const float *xscale, const int32_t *xzp,
                       int32_t n, int32_t h, int32_t w, float *y, int64_t n0, int64_t n1, int32_t m0, int32_t m1,
                       const osk_q8_epilogue *ep) {
    geo_t g = osk_make_geo(conv, n, h, w);
    const int m = conv->out_channels, panels = (m + MR - 1) / MR;
    const int p0 = m0 / MR, p1 = m1 >= m ? panels : m1 / MR;
    const int64_t ldc = (int64_t)n * g.howo;
    if (n1 <= n0 || p1 <= p0) return;
#if OSK_X86
    if (level == OSK_AVX512 && !q8_unblocked()) {
        if (osk_linear_q8_applies(conv)) {   // 1x1 projections: onestep_linear_q8.c
            osk_linear_q8_avx512(conv, packed, rowsum, wscale, xq, xscale, xzp, n, h, w, y, n0, n1, m0, m1, ep);
            return;
        }
        run_q8_blocked(&g, packed, rowsum, wscale, xq, xscale, xzp, m, y, ldc, n0, n1, p0, p1, ep);
        return;
    }
    if (level == OSK_AVX2 && !q8_unblocked()) {   // onestep_conv_q8_avx2.c
        osk_conv_q8_avx2(&g, packed, rowsum, wscale, xq, xscale, xzp, m, y, ldc, n0, n1, p0, p1, ep);
        return;
    }
#endif
    run_q8_tiles(level, &g, packed, rowsum, wscale, xq, xscale, xzp, m, y, ldc, n0, n1, p0, p1, ep);
}

void osk_conv_q8(int level, const osk_conv *conv, const int32_t *packed, const int32_t *rowsum,
                 const float *wscale, const uint32_t *xq, const float *xscale, const int32_t *xzp,
                 int32_t n, int32_t h, int32_t w, float *y, int64_t n0, int64_t n1) {
    osk_conv_q8_part(level, conv, packed, rowsum, wscale, xq, xscale, xzp, n, h, w, y, n0, n1, 0, conv->out_channels);
}

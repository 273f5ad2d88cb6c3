// bf16 convolutions and GEMM (see include/onestep_kernels.h, "bf16"): for the layers int8 hurts. Weights are
// rounded to bf16 once at load; activations stay fp32 in memory and are rounded to bf16 per 32-column tile while
// the tile is built (as the int8 path quantizes them), and products are summed in fp32 by vdpbf16ps.
//
// Layout: k runs over (channel pair, tap): kp = (c / 2) * taps + t, each 32-bit word holding the bf16 values of
// channels 2c' (low half) and 2c'+1 (high half) at one tap; a pad channel is 0. Weights are packed
// [ceil(M/8)][ceil(Cin/2) * taps][8] words, a tile [kp][32] words.
//
// Arithmetic: per output, one chain over kp in order from y's value: y = (y + a_hi * b_hi) + a_lo * b_lo, each
// step rounded to fp32 (ties to even), products exact (8-bit x 8-bit significands), denormal inputs and results
// flushed to zero: what vdpbf16ps does per lane (Intel SDM; checked bit for bit against the scalar emulation on
// AMD Zen 5 by the tests). The scalar level emulates exactly that, so both levels give the same bits, and an
// output never depends on its tile position, the batch or the thread split.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "onestep_conv_internal.h"

/// fp32 -> bf16, round to nearest even, as vcvtneps2bf16: a NaN stays a (quiet) NaN, a denormal becomes a zero
/// of its sign.
static inline uint16_t bf16_round(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // NaN stays NaN
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static inline float bf16_value(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float v;
    memcpy(&v, &u, 4);
    return v;
}

/// Flush a denormal to a zero of the same sign (vdpbf16ps treats denormal inputs and outputs as zero).
static inline float ftz(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    if ((u & 0x7f800000u) == 0) u &= 0x80000000u;
    memcpy(&v, &u, 4);
    return v;
}

size_t osk_bf16_packed_count(int32_t m, int32_t cin, int32_t taps) {
    return (size_t)((m + MR - 1) / MR) * MR * (size_t)((cin + 1) / 2) * taps;
}

void osk_bf16_pack(const float *w, int32_t m, int32_t cin, int32_t taps, uint32_t *packed) {
    const int panels = (m + MR - 1) / MR, kp = (cin + 1) / 2 * taps;
    memset(packed, 0, osk_bf16_packed_count(m, cin, taps) * sizeof(uint32_t));
    for (int row = 0; row < m; row++)
        for (int c = 0; c < cin; c++)
            for (int t = 0; t < taps; t++) {
                uint16_t b = bf16_round(w[((size_t)row * cin + c) * taps + t]);
                uint32_t *word = &packed[((size_t)(row / MR) * kp + (c / 2) * taps + t) * MR + row % MR];
                *word |= (uint32_t)b << (16 * (c % 2));
            }
    (void)panels;
}

// MARK: - Tiles: bt (kp, NR) words of bf16 pairs from the fp32 activation

static void pack_bf16_scalar(const geo_t *g, const tap_t *taps, const float *x, uint32_t *bt) {
    const int c2 = (g->c + 1) / 2;
    for (int q = 0; q < c2; q++) {
        const float *p0 = x + (int64_t)(2 * q) * g->plane, *p1 = 2 * q + 1 < g->c ? p0 + g->plane : NULL;
        for (int t = 0; t < g->taps; t++) {
            uint32_t *d = bt + ((size_t)q * g->taps + t) * NR;
            for (int jj = 0; jj < NR; jj++) {
                int32_t o = taps[t].off[jj];
                uint32_t lo = o >= 0 ? bf16_round(p0[o]) : 0, hi = o >= 0 && p1 ? bf16_round(p1[o]) : 0;
                d[jj] = lo | hi << 16;
            }
        }
    }
}

static void kernel_bf16_scalar(int kp, const uint32_t *a, const uint32_t *bt, float *const crow[MR], int mr, int nc) {
    for (int r = 0; r < mr; r++)
        for (int jj = 0; jj < nc; jj++) {
            float acc = ftz(crow[r][jj]);
            for (int k = 0; k < kp; k++) {
                uint32_t aw = a[(size_t)k * MR + r], bw = bt[(size_t)k * NR + jj];
                float hi = ftz(bf16_value((uint16_t)(aw >> 16))) * ftz(bf16_value((uint16_t)(bw >> 16)));
                float lo = ftz(bf16_value((uint16_t)aw)) * ftz(bf16_value((uint16_t)bw));
                acc = ftz(ftz(acc + hi) + lo);
            }
            crow[r][jj] = acc;
        }
}

#if OSK_X86
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))

/// 16 fp32 of one channel -> 16 bf16 in the low halves (lo) or high halves (hi) of 32-bit lanes.
BF16_TARGET static inline __m512i bf16_lanes(__m512 v) {
    return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v));
}

BF16_TARGET static void pack_bf16_avx512(const geo_t *g, const tap_t *taps, const float *x, uint32_t *bt) {
    const int c2 = (g->c + 1) / 2;
    for (int q = 0; q < c2; q++) {
        const float *p0 = x + (int64_t)(2 * q) * g->plane;
        const int has1 = 2 * q + 1 < g->c;
        const float *p1 = p0 + (has1 ? g->plane : 0);
        for (int t = 0; t < g->taps; t++) {
            const tap_t *tp = &taps[t];
            uint32_t *d = bt + ((size_t)q * g->taps + t) * NR;
            for (int v = 0; v < 2; v++) {
                __mmask16 m = (__mmask16)(tp->valid >> (16 * v));
                __m512 a, b;
                if (tp->contiguous) {
                    a = _mm512_maskz_loadu_ps(m, p0 + tp->base + 16 * v);
                    b = has1 ? _mm512_maskz_loadu_ps(m, p1 + tp->base + 16 * v) : _mm512_setzero_ps();
                } else {
                    __m512i idx = _mm512_loadu_si512(tp->off + 16 * v);
                    a = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, p0, 4);
                    b = has1 ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, p1, 4) : _mm512_setzero_ps();
                }
                __m512i word = _mm512_or_si512(bf16_lanes(a), _mm512_slli_epi32(bf16_lanes(b), 16));
                _mm512_store_si512(d + 16 * v, word);
            }
        }
    }
}

/// 8 rows x 32 columns, continuing each output's chain from y: per kp 2 tile loads, 8 broadcasts, 16 vdpbf16ps.
BF16_TARGET static void kernel_bf16_avx512(int kp, const uint32_t *a, const uint32_t *bt, float *const crow[MR], int nc) {
    __mmask16 m0 = (__mmask16)(nc >= 16 ? 0xffff : (1u << nc) - 1);
    __mmask16 m1 = (__mmask16)(nc >= 32 ? 0xffff : nc > 16 ? (1u << (nc - 16)) - 1 : 0);
#define LOADC(r) __m512 c##r##0 = _mm512_maskz_loadu_ps(m0, crow[r]), c##r##1 = _mm512_maskz_loadu_ps(m1, crow[r] + 16);
    LOADC(0) LOADC(1) LOADC(2) LOADC(3) LOADC(4) LOADC(5) LOADC(6) LOADC(7)
    for (int k = 0; k < kp; k++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(bt), b1 = (__m512bh)_mm512_load_si512(bt + 16);
#define STEP(r) { __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r]); c##r##0 = _mm512_dpbf16_ps(c##r##0, av, b0); c##r##1 = _mm512_dpbf16_ps(c##r##1, av, b1); }
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
        a += MR; bt += NR;
    }
#define STOREC(r) _mm512_mask_storeu_ps(crow[r], m0, c##r##0); _mm512_mask_storeu_ps(crow[r] + 16, m1, c##r##1);
    STOREC(0) STOREC(1) STOREC(2) STOREC(3) STOREC(4) STOREC(5) STOREC(6) STOREC(7)
#undef LOADC
#undef STEP
#undef STOREC
}

/// Tile rows kb..<kb+kc (kp = q * taps + t) of one tile: as pack_bf16_avx512, for one k block.
BF16_TARGET static void pack_bf16_range_avx512(const geo_t *g, const tap_t *taps, const float *x, int kb, int kc, uint32_t *bt) {
    int q = kb / g->taps, t = kb % g->taps;
    for (int k = 0; k < kc; k++) {
        const float *p0 = x + (int64_t)(2 * q) * g->plane;
        const int has1 = 2 * q + 1 < g->c;
        const float *p1 = p0 + (has1 ? g->plane : 0);
        const tap_t *tp = &taps[t];
        uint32_t *d = bt + (size_t)k * NR;
        for (int v = 0; v < 2; v++) {
            __mmask16 m = (__mmask16)(tp->valid >> (16 * v));
            __m512 a, b;
            if (tp->contiguous) {
                a = _mm512_maskz_loadu_ps(m, p0 + tp->base + 16 * v);
                b = has1 ? _mm512_maskz_loadu_ps(m, p1 + tp->base + 16 * v) : _mm512_setzero_ps();
            } else {
                __m512i idx = _mm512_loadu_si512(tp->off + 16 * v);
                a = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, p0, 4);
                b = has1 ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, p1, 4) : _mm512_setzero_ps();
            }
            _mm512_store_si512(d + 16 * v, _mm512_or_si512(bf16_lanes(a), _mm512_slli_epi32(bf16_lanes(b), 16)));
        }
        if (++t == g->taps) { t = 0; q++; }
    }
}

// Blocked as the int8 driver (onestep_conv_q8.c): 256 columns x 192 k-pairs of bf16 tiles packed per block, every
// 8-row panel over the block's tiles with its A sliver in L1. The chain of each output simply continues in y
// between k blocks (y holds the fp32 sum so far), so the arithmetic is the unblocked chain, step for step.
#define BNB 256
#define BKC 192
#define BTILES (BNB / NR)

static void run_bf16_blocked(const geo_t *g, const uint32_t *packed, int32_t m, const float *x, float *y, int64_t ldc,
                             int64_t n0, int64_t n1) {
    const int kp = (g->c + 1) / 2 * g->taps, panels = (m + MR - 1) / MR;
    tap_t *taps = osk_ws_get(OSK_WS_TAPS, (size_t)BTILES * g->taps * sizeof(tap_t));
    uint32_t *bb = osk_ws_get(OSK_WS_BLOCK, (size_t)BTILES * BKC * NR * sizeof(uint32_t));
    if (!taps || !bb) abort();
    for (int64_t jb = n0; jb < n1; jb += BNB) {
        const int nb = (int)(n1 - jb < BNB ? n1 - jb : BNB), tiles = (nb + NR - 1) / NR;
        for (int t = 0; t < tiles; t++)
            osk_tile_taps(g, jb + (int64_t)t * NR, nb - t * NR < NR ? nb - t * NR : NR, taps + (size_t)t * g->taps);
        for (int kb = 0; kb < kp; kb += BKC) {
            const int kc = kp - kb < BKC ? kp - kb : BKC;
            for (int t = 0; t < tiles; t++)
                pack_bf16_range_avx512(g, taps + (size_t)t * g->taps, x, kb, kc, bb + (size_t)t * BKC * NR);
            for (int p = 0; p < panels; p++) {
                const int mr = m - p * MR < MR ? m - p * MR : MR;
                const uint32_t *a = packed + ((size_t)p * kp + kb) * MR;
                for (int t = 0; t < tiles; t++) {
                    const int64_t j0 = jb + (int64_t)t * NR;
                    const int nc = nb - t * NR < NR ? nb - t * NR : NR;
                    float *crow[MR];
                    for (int r = 0; r < MR; r++) crow[r] = r < mr ? y + (int64_t)(p * MR + r) * ldc + j0 : osk_dummy_rows[r];
                    kernel_bf16_avx512(kc, a, bb + (size_t)t * BKC * NR, crow, nc);
                }
            }
        }
    }
}
#endif

/// 1 when `level` runs the bf16 kernels on vdpbf16ps (else they run the scalar emulation).
static int bf16_fast(int level) { return level == OSK_AVX512 && osk_bf16_supported(); }

static void run_bf16(int level, const geo_t *g, const uint32_t *packed, int32_t m, const float *x, float *y, int64_t ldc,
                     int64_t n0, int64_t n1) {
    const int kp = (g->c + 1) / 2 * g->taps, panels = (m + MR - 1) / MR;
    uint32_t *bt = osk_ws_get(OSK_WS_TILE, (size_t)kp * NR * sizeof(uint32_t));
    tap_t *taps = osk_ws_get(OSK_WS_TAPS, (size_t)g->taps * sizeof(tap_t));
    if (!bt || !taps) abort();
    const int fast = bf16_fast(level);
#if OSK_X86
    if (fast) { run_bf16_blocked(g, packed, m, x, y, ldc, n0, n1); return; }
#endif
    for (int64_t j0 = n0; j0 < n1; j0 += NR) {
        int nc = (int)(n1 - j0 < NR ? n1 - j0 : NR);
        osk_tile_taps(g, j0, nc, taps);
#if OSK_X86
        if (fast) pack_bf16_avx512(g, taps, x, bt);
        else
#endif
            pack_bf16_scalar(g, taps, x, bt);
        for (int p = 0; p < panels; p++) {
            int mr = m - p * MR < MR ? m - p * MR : MR;
            float *crow[MR];
            for (int r = 0; r < MR; r++) crow[r] = r < mr ? y + (int64_t)(p * MR + r) * ldc + j0 : osk_dummy_rows[r];
            const uint32_t *a = packed + (size_t)p * kp * MR;
#if OSK_X86
            if (fast) kernel_bf16_avx512(kp, a, bt, crow, nc);
            else
#endif
                kernel_bf16_scalar(kp, a, bt, crow, mr, nc);
        }
    }
    (void)fast;
}

void osk_conv_bf16(int level, const osk_conv *conv, const uint32_t *packed, const float *x, int32_t n, int32_t h,
                   int32_t w, float *y, int64_t n0, int64_t n1) {
    geo_t g = osk_make_geo(conv, n, h, w);
    run_bf16(level, &g, packed, conv->out_channels, x, y, (int64_t)n * g.howo, n0, n1);
}

void osk_gemm_bf16(int level, const uint32_t *packed, int32_t m, int32_t k, const float *b, int64_t ldb, float *c,
                   int64_t ldc, int64_t n0, int64_t n1) {
    // A GEMM is a 1x1 conv of one "image" of height 1 whose channel planes are ldb apart.
    osk_conv conv = {k, m, 1, 1, 1, 0, 0, 0, 0, 0};
    geo_t g = osk_make_geo(&conv, 1, 1, (int32_t)n1);
    g.plane = ldb;
    run_bf16(level, &g, packed, m, b, c, ldc, n0, n1);
}

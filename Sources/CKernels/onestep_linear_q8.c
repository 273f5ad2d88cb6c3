// The AVX-512 driver of int8 1x1 convolutions (projections: attention q / k / v / out, the feed-forward's two
// layers, proj_in / proj_out, resnet shortcuts), chosen by osk_conv_q8_fused for every 1x1 stride-1 unpadded
// layer without upsampling. Same sums, same dequantization and epilogue, so the same bits as the blocked driver
// of onestep_conv_q8.c (which stays the path of every other conv and the reference this one is tested against,
// LinearQ8DriverTests).
//
// Why a second driver: the blocked driver cuts K into blocks of 192 k-quads and keeps the partial int32 sums of
// every panel of the call between blocks ([panel][tile][8][32] per thread: 10 MB for SDXS's 1280 -> 10240
// feed-forward), and with one k block it reads a tile's B rows in place, 4 KiB apart when the map has 1024
// columns: every row in the same L1 set. Measured on the SDXS feed-forward shapes (Zen 5, one core): 48-63% of
// the VNNI peak against 76-89% for the 3x3 convs. Here a block of columns is packed for the whole K once
// ([tile][kq][32] words, at most LIN_BLOCK_BYTES: L2), then each 8-row panel runs the whole K per tile in
// registers and writes its tile once: no partial sums in memory, B streamed contiguously from L2, each panel's
// A sliver (K/4 x 8 words) read once per column block.
#include "onestep_conv_internal.h"
#include "onestep_geglu.h"

#include <stdlib.h>

/// On unless ONESTEP_Q8_LINEAR=0 at start-up (whole-pipeline A/B runs) or osk_linear_q8_set_enabled(0); -1: not
/// read yet. Kept in a variable: getenv scans the environment and races with setenv.
static int linear_q8_enabled = -1;

void osk_linear_q8_set_enabled(int on) { __atomic_store_n(&linear_q8_enabled, on ? 1 : 0, __ATOMIC_RELAXED); }

static int linear_q8_on(void) {
    int v = __atomic_load_n(&linear_q8_enabled, __ATOMIC_RELAXED);
    if (v < 0) {
        const char *e = getenv("ONESTEP_Q8_LINEAR");
        v = !(e && e[0] == '0');   // threads racing here store the same value
        __atomic_store_n(&linear_q8_enabled, v, __ATOMIC_RELAXED);
    }
    return v;
}

int osk_linear_q8_applies(const osk_conv *c) {
    // Up to K = 2560: past it a panel's A sliver (K/4 x 8 words) no longer stays in L1 beside the streamed B
    // tiles and the blocked driver was faster (SDXS 5120 -> 1280 at 16x16: 0.88x).
    return linear_q8_on() && c->in_channels <= 2560 && c->kernel_h == 1 && c->kernel_w == 1 && c->stride == 1
        && !c->upsample && c->pad_top == 0 && c->pad_left == 0 && c->pad_bottom == 0 && c->pad_right == 0;
}

#if OSK_X86

/// Bytes of packed B per column block: 8 tiles of 160 k-quads (K 640), 4 of 640 (K 2560), 2 of 1280 (K 5120).
#define LIN_BLOCK_BYTES (384 * 1024)
#define LIN_MAX_TILES 8

typedef struct {
    int32_t zp[NR];     // the column's image zero point
    float scale[NR];    // the column's image activation scale
} lin_cols_t;

/// Folds a tile's per-column minima / maxima (lanes) into the images' ranges (ep_fold_lanes of onestep_conv_q8.c).
AVX512 static void lin_fold(float *range, int64_t j0, int nc, int64_t howo, __m512 lo0, __m512 lo1, __m512 hi0, __m512 hi1) {
    const int64_t first = j0 / howo, last = (j0 + nc - 1) / howo;
    if (first == last) {
        const float lo = _mm512_reduce_min_ps(_mm512_min_ps(lo0, lo1)), hi = _mm512_reduce_max_ps(_mm512_max_ps(hi0, hi1));
        float *p = range + 2 * first;
        p[0] = lo < p[0] ? lo : p[0];
        p[1] = hi > p[1] ? hi : p[1];
        return;
    }
    float l[32], h[32];   // the tile straddles images: fold column by column
    _mm512_storeu_ps(l, lo0); _mm512_storeu_ps(l + 16, lo1);
    _mm512_storeu_ps(h, hi0); _mm512_storeu_ps(h + 16, hi1);
    for (int jj = 0; jj < nc; jj++) {
        float *p = range + 2 * ((j0 + jj) / howo);
        p[0] = l[jj] < p[0] ? l[jj] : p[0];
        p[1] = h[jj] > p[1] ? h[jj] : p[1];
    }
}

/// One 8 x 32 tile over all k4 k-quads (16 zmm accumulators; per k-quad 2 loads of bt, 8 broadcasts of a, 16
/// vpdpbusd), then kernel_q8_block_avx512's dequantization: onto y (ep NULL: y += ...) or through the fused
/// epilogue (y set from bias / residual, ReLU, range). Rows r >= mr (zero weights) are computed, never stored.
AVX512 static void lin_tile(int k4, const int32_t *a, const uint32_t *bt, const int32_t *rowsum, const float *wscale,
                            const lin_cols_t *qc, float *const crow[MR], int mr, int nc, int64_t j0, int64_t howo,
                            const osk_q8_epilogue *ep, const float *bias, const float *const rrow[MR]) {
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    __m512i c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
#define STEP(r) { __m512i av = _mm512_set1_epi32(a[r]); c##r##0 = _mm512_dpbusd_epi32(c##r##0, b0, av); c##r##1 = _mm512_dpbusd_epi32(c##r##1, b1, av); }
    for (int kq = 0; kq < k4; kq++) {
        const __m512i b0 = _mm512_load_si512(bt), b1 = _mm512_load_si512(bt + 16);
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
        a += MR; bt += NR;
    }
#undef STEP
    const __mmask16 m0 = (__mmask16)(nc >= 16 ? 0xffff : (1u << nc) - 1);
    const __mmask16 m1 = (__mmask16)(nc >= 32 ? 0xffff : nc > 16 ? (1u << (nc - 16)) - 1 : 0);
    const __m512i zp0 = _mm512_loadu_si512(qc->zp), zp1 = _mm512_loadu_si512(qc->zp + 16);
    const __m512 s0 = _mm512_loadu_ps(qc->scale), s1 = _mm512_loadu_ps(qc->scale + 16);
    const __m512 zero = _mm512_setzero_ps();
    __m512 lo0 = zero, lo1 = zero, hi0 = zero, hi1 = zero;
#define OUT(r) if (r < mr) { \
        __m512i rs = _mm512_set1_epi32(rowsum[r]); __m512 ws = _mm512_set1_ps(wscale[r]); \
        __m512 f0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(c##r##0, _mm512_mullo_epi32(zp0, rs))); \
        __m512 f1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(c##r##1, _mm512_mullo_epi32(zp1, rs))); \
        __m512 i0, i1; \
        if (!ep) { i0 = _mm512_maskz_loadu_ps(m0, crow[r]); i1 = _mm512_maskz_loadu_ps(m1, crow[r] + 16); } \
        else { \
            __m512 b = _mm512_set1_ps(bias ? bias[r] : 0.0f); i0 = b; i1 = b; \
            if (rrow[r]) { \
                i0 = _mm512_maskz_loadu_ps(m0, rrow[r]); i1 = _mm512_maskz_loadu_ps(m1, rrow[r] + 16); \
                if (bias) { i0 = _mm512_add_ps(i0, b); i1 = _mm512_add_ps(i1, b); } } } \
        __m512 v0 = _mm512_fmadd_ps(f0, _mm512_mul_ps(ws, s0), i0), v1 = _mm512_fmadd_ps(f1, _mm512_mul_ps(ws, s1), i1); \
        if (ep && ep->relu) { v0 = _mm512_max_ps(v0, zero); v1 = _mm512_max_ps(v1, zero); } \
        _mm512_mask_storeu_ps(crow[r], m0, v0); _mm512_mask_storeu_ps(crow[r] + 16, m1, v1); \
        lo0 = _mm512_mask_min_ps(lo0, m0, lo0, v0); lo1 = _mm512_mask_min_ps(lo1, m1, lo1, v1); \
        hi0 = _mm512_mask_max_ps(hi0, m0, hi0, v0); hi1 = _mm512_mask_max_ps(hi1, m1, hi1, v1); }
    OUT(0) OUT(1) OUT(2) OUT(3) OUT(4) OUT(5) OUT(6) OUT(7)
#undef OUT
    if (ep && ep->range) lin_fold(ep->range, j0, nc, howo, lo0, lo1, hi0, hi1);
}

/// Copies 32 columns j0..<j0+nc of every k-quad row (row kq at xq + kq * plane) into bt [kq][32]; columns past nc
/// read as 0 (their outputs are never stored).
AVX512 static void lin_pack(int k4, const uint32_t *xq, int64_t plane, int64_t j0, int nc, uint32_t *bt) {
    const __mmask16 m0 = (__mmask16)(nc >= 16 ? 0xffff : (1u << nc) - 1);
    const __mmask16 m1 = (__mmask16)(nc >= 32 ? 0xffff : nc > 16 ? (1u << (nc - 16)) - 1 : 0);
    const uint32_t *src = xq + j0;
    for (int kq = 0; kq < k4; kq++, src += plane, bt += NR) {
        _mm512_store_si512(bt, _mm512_maskz_loadu_epi32(m0, src));
        _mm512_store_si512(bt + 16, _mm512_maskz_loadu_epi32(m1, src + 16));
    }
}

/// The column block's buffer (this thread's workspace) and its width in tiles: as many 32-column tiles of the whole
/// K as fit LIN_BLOCK_BYTES, 1 ... LIN_MAX_TILES. Both drivers below.
AVX512 static uint32_t *lin_block_buffer(int k4, int *tiles) {
    int t = (int)(LIN_BLOCK_BYTES / ((size_t)k4 * NR * sizeof(uint32_t)));
    *tiles = t < 1 ? 1 : t > LIN_MAX_TILES ? LIN_MAX_TILES : t;
    uint32_t *bb = osk_ws_get(OSK_WS_BLOCK, (size_t)*tiles * k4 * NR * sizeof(uint32_t));
    if (!bb) abort();
    return bb;
}

/// Packs the column block jb ..< jb + nb (whole tiles of NR, the last partial) into bb, tile by tile, with each
/// tile's per-column zero points and scales (of the image each column belongs to) in qc. Both drivers below.
AVX512 static void lin_pack_block(int k4, const uint32_t *xq, const float *xscale, const int32_t *xzp, int64_t plane,
                                  int64_t howo, int64_t jb, int64_t nb, uint32_t *bb, lin_cols_t *qc) {
    const int bt = (int)((nb + NR - 1) / NR);
    for (int t = 0; t < bt; t++) {
        const int64_t j0 = jb + (int64_t)t * NR;
        const int nc = (int)(nb - (int64_t)t * NR < NR ? nb - (int64_t)t * NR : NR);
        for (int jj = 0; jj < NR; jj++) {
            const int32_t i = jj < nc ? (int32_t)((j0 + jj) / howo) : -1;
            qc[t].zp[jj] = i >= 0 ? xzp[i] : 0;
            qc[t].scale[jj] = i >= 0 ? xscale[i] : 0;
        }
        lin_pack(k4, xq, plane, j0, nc, bb + (size_t)t * k4 * NR);
    }
}

AVX512 void osk_linear_q8_avx512(const osk_conv *conv, const int32_t *packed, const int32_t *rowsum, const float *wscale,
                          const uint32_t *xq, const float *xscale, const int32_t *xzp, int32_t n, int32_t h, int32_t w,
                          float *y, int64_t n0, int64_t n1, int32_t m0, int32_t m1, const osk_q8_epilogue *ep) {
    const int m = conv->out_channels, k4 = (conv->in_channels + 3) / 4, panels = (m + MR - 1) / MR;
    const int p0 = m0 / MR, p1 = m1 >= m ? panels : m1 / MR;
    const int64_t howo = (int64_t)h * w, plane = (int64_t)n * howo, ldc = plane;
    if (n1 <= n0 || p1 <= p0) return;
    int tiles;
    uint32_t *bb = lin_block_buffer(k4, &tiles);
    lin_cols_t qc[LIN_MAX_TILES];
    for (int64_t jb = n0; jb < n1; jb += (int64_t)tiles * NR) {
        const int64_t nb = n1 - jb < (int64_t)tiles * NR ? n1 - jb : (int64_t)tiles * NR;
        const int bt = (int)((nb + NR - 1) / NR);
        lin_pack_block(k4, xq, xscale, xzp, plane, howo, jb, nb, bb, qc);
        for (int p = p0; p < p1; p++) {
            const int mr = m - p * MR < MR ? m - p * MR : MR;
            const int32_t *a = packed + (size_t)p * k4 * MR;
            for (int t = 0; t < bt; t++) {
                const int64_t j0 = jb + (int64_t)t * NR;
                const int nc = (int)(nb - (int64_t)t * NR < NR ? nb - (int64_t)t * NR : NR);
                float *crow[MR];
                const float *rrow[MR];
                for (int r = 0; r < MR; r++) {
                    crow[r] = r < mr ? y + (int64_t)(p * MR + r) * ldc + j0 : NULL;
                    rrow[r] = r < mr && ep && ep->residual ? ep->residual + (int64_t)(p * MR + r) * ldc + j0 : NULL;
                }
                lin_tile(k4, a, bb + (size_t)t * k4 * NR, rowsum + p * MR, wscale + p * MR, &qc[t], crow, mr, nc, j0, howo,
                         ep, ep && ep->bias ? ep->bias + p * MR : NULL, rrow);
            }
        }
    }
}

// MARK: - GEGLU fused into the feed-forward's first projection
//
// diffusers GEGLU: proj (2I, cols) = net.0.proj(x); out (I, cols) = proj[:I] * gelu(proj[I:]). Unfused, the
// projection writes proj (21 MB for SDXS's 640 -> 5120 over 1024 tokens) and the GEGLU pass reads it back: the
// projection ran at 64% of the VNNI peak, bound by that output. Here panel p of the hidden rows (8p..<8p+8) and
// panel p + I/8 of the gate rows are computed tile by tile into an L1 buffer with the projection's epilogue
// (bias, no residual: v = fmaf(sum - zp rowsum, s_w s_x, bias)), then out = a * gelu(g) by onestep_geglu.h's
// operations: the same bits as the projection followed by osk_geglu, and the same per-image range.

/// Dequantized 8 x 32 tile of panel p (+ bias) into buf [8][32] (columns past nc undefined, never read).
AVX512 static void lin_tile_to_buffer(int k4, const int32_t *packed, int p, const uint32_t *bt, const int32_t *rowsum,
                                      const float *wscale, const float *bias, const lin_cols_t *qc, int nc, int64_t j0,
                                      int64_t howo, float *buf) {
    const osk_q8_epilogue ep = { bias, NULL, 0, NULL };
    float *crow[MR];
    const float *rrow[MR];
    for (int r = 0; r < MR; r++) { crow[r] = buf + r * NR; rrow[r] = NULL; }
    lin_tile(k4, packed + (size_t)p * k4 * MR, bt, rowsum + p * MR, wscale + p * MR, qc, crow, MR, nc, j0, howo, &ep,
             bias ? bias + p * MR : NULL, rrow);
}

AVX512 void osk_linear_q8_geglu_avx512(const osk_conv *conv, const int32_t *packed, const int32_t *rowsum, const float *wscale,
                                const float *bias, const uint32_t *xq, const float *xscale, const int32_t *xzp, int32_t n,
                                int32_t h, int32_t w, float *out, int64_t n0, int64_t n1, int32_t m0, int32_t m1, float *range) {
    const int inner = conv->out_channels / 2, k4 = (conv->in_channels + 3) / 4, gate0 = inner / MR;
    const int p0 = m0 / MR, p1 = (m1 >= inner ? inner : m1) / MR;
    const int64_t howo = (int64_t)h * w, plane = (int64_t)n * howo, ldc = plane;
    if (n1 <= n0 || p1 <= p0) return;
    int tiles;
    uint32_t *bb = lin_block_buffer(k4, &tiles);
    lin_cols_t qc[LIN_MAX_TILES];
    float ha[MR * NR] __attribute__((aligned(64))), ga[MR * NR] __attribute__((aligned(64)));
    for (int64_t jb = n0; jb < n1; jb += (int64_t)tiles * NR) {
        const int64_t nb = n1 - jb < (int64_t)tiles * NR ? n1 - jb : (int64_t)tiles * NR;
        const int bt = (int)((nb + NR - 1) / NR);
        lin_pack_block(k4, xq, xscale, xzp, plane, howo, jb, nb, bb, qc);
        for (int p = p0; p < p1; p++) {
            for (int t = 0; t < bt; t++) {
                const int64_t j0 = jb + (int64_t)t * NR;
                const int nc = (int)(nb - (int64_t)t * NR < NR ? nb - (int64_t)t * NR : NR);
                const uint32_t *b = bb + (size_t)t * k4 * NR;
                lin_tile_to_buffer(k4, packed, p, b, rowsum, wscale, bias, &qc[t], nc, j0, howo, ha);
                lin_tile_to_buffer(k4, packed, gate0 + p, b, rowsum, wscale, bias, &qc[t], nc, j0, howo, ga);
                const __mmask16 mk0 = (__mmask16)(nc >= 16 ? 0xffff : (1u << nc) - 1);
                const __mmask16 mk1 = (__mmask16)(nc >= 32 ? 0xffff : nc > 16 ? (1u << (nc - 16)) - 1 : 0);
                const __m512 zero = _mm512_setzero_ps();
                __m512 lo0 = zero, lo1 = zero, hi0 = zero, hi1 = zero;
                for (int r = 0; r < MR; r++) {
                    float *o = out + (int64_t)(p * MR + r) * ldc + j0;
                    const __m512 v0 = geglu_avx512_16(_mm512_maskz_loadu_ps(mk0, ha + r * NR), _mm512_maskz_loadu_ps(mk0, ga + r * NR));
                    const __m512 v1 = geglu_avx512_16(_mm512_maskz_loadu_ps(mk1, ha + r * NR + 16), _mm512_maskz_loadu_ps(mk1, ga + r * NR + 16));
                    _mm512_mask_storeu_ps(o, mk0, v0);
                    _mm512_mask_storeu_ps(o + 16, mk1, v1);
                    lo0 = _mm512_mask_min_ps(lo0, mk0, lo0, v0); lo1 = _mm512_mask_min_ps(lo1, mk1, lo1, v1);
                    hi0 = _mm512_mask_max_ps(hi0, mk0, hi0, v0); hi1 = _mm512_mask_max_ps(hi1, mk1, hi1, v1);
                }
                if (range) lin_fold(range, j0, nc, howo, lo0, lo1, hi0, hi1);
            }
        }
    }
}

#endif

int osk_linear_q8_geglu_applies(int level, const osk_conv *conv) {
    return OSK_X86 && level == OSK_AVX512 && osk_linear_q8_applies(conv) && conv->out_channels % (2 * MR) == 0;
}

int osk_linear_q8_geglu(int level, const osk_conv *conv, const int32_t *packed, const int32_t *rowsum, const float *wscale,
                        const float *bias, const uint32_t *xq, const float *xscale, const int32_t *xzp, int32_t n, int32_t h,
                        int32_t w, float *out, int64_t n0, int64_t n1, int32_t m0, int32_t m1, float *range) {
#if OSK_X86
    if (osk_linear_q8_geglu_applies(level, conv)) {
        osk_linear_q8_geglu_avx512(conv, packed, rowsum, wscale, bias, xq, xscale, xzp, n, h, w, out, n0, n1, m0, m1, range);
        return 1;
    }
#endif
    (void)level; (void)conv; (void)packed; (void)rowsum; (void)wscale; (void)bias; (void)xq; (void)xscale; (void)xzp;
    (void)n; (void)h; (void)w; (void)out; (void)n0; (void)n1; (void)m0; (void)m1; (void)range;
    return 0;
}

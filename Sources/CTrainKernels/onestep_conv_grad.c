// Weight gradient of a convolution for training (include/onestep_train_kernels.h):
//   dW (M, K) += dY (M, cols) x col(X)^T (cols, K)
// computed as its transpose dW^T (K, M), so that neither operand needs an im2col:
//   - the 8 K-rows of a panel, (c, ky, kx) each, are read straight from a zero-padded copy of x: row r at column
//     j = (i, oy, ox) is xpad[c][i][oy*s + ky][ox*s + kx], i.e. one pointer per row plus an offset shared by the
//     8 rows; the microkernel broadcasts these 8 values from memory (no packing of col(X) at all);
//   - dY is transposed once per call into 32-channel tiles dyt[tile][j][32] (16x16 register transposes on
//     AVX-512), two aligned vector loads per column.
// The microkernel keeps an 8 x 32 block of dW^T in 16 zmm registers and runs over a chunk of ~256 columns (the
// chunk's dY tile, 32 KiB, stays in L1 across panels). AVX2 runs 6 K-rows x 16 channels (12 ymm accumulators) per
// 16-channel half of each tile, K in groups of 6 (wg_chunk_avx2). The chain of each entry continues from chunk to chunk in
// column order, so chunking changes nothing: dW[m][k] is fmaf(x, dy, acc) over j = 0..cols-1 from dW's value.
// That is the order of the previous path (a stride-1 osk_conv_f32 with dY as the kernel), so stride-1 layers
// give the same bits as before.
//
// The naive reference is osk_conv_wgrad_f32 at OSK_SCALAR (plain loops, same chain) and, independently,
// Swift's ReferenceConvGrad (im2col + sgemm); ConvWeightGradientTests compares every level with both.
#include "onestep_train_kernels.h"

#include <math.h>
#include <string.h>

#include "onestep_isa.h"

#define WR 8   // K rows per panel
#define WC 32  // output channels per tile
#define CHUNK_COLS 256

#if OSK_X86
#define AVX512 OSK_AVX512_TARGET
#define AVX2 OSK_AVX2_TARGET
#endif

typedef struct {
    int32_t cin, m, kh, kw, taps, s, pt, pl, n, h, w, ho, wo, hp, wp, tiles;
    int64_t k, k8, kpad, cols, hpwp, chan;  // chan: floats per channel of xpad (n * hp * wp)
} wg_t;

static wg_t wg_make(const osk_conv *g, int32_t n, int32_t h, int32_t w) {
    wg_t s;
    s.cin = g->in_channels; s.m = g->out_channels; s.kh = g->kernel_h; s.kw = g->kernel_w; s.taps = s.kh * s.kw;
    s.s = g->stride; s.pt = g->pad_top; s.pl = g->pad_left; s.n = n; s.h = h; s.w = w;
    s.ho = (h + g->pad_top + g->pad_bottom - s.kh) / s.s + 1;
    s.wo = (w + g->pad_left + g->pad_right - s.kw) / s.s + 1;
    // Every tap a column reads: rows oy*s + ky in 0 ..< (ho-1)*s + kh of the padded image.
    s.hp = (s.ho - 1) * s.s + s.kh; s.wp = (s.wo - 1) * s.s + s.kw;
    s.tiles = (s.m + WC - 1) / WC;
    // k8: K rounded up to the 8-row panels; kpad (dwt's rows): also to the AVX2 path's 6-row groups.
    s.k = (int64_t)s.cin * s.taps; s.k8 = (s.k + WR - 1) / WR * WR; s.kpad = (s.k + 23) / 24 * 24;
    s.cols = (int64_t)n * s.ho * s.wo; s.hpwp = (int64_t)s.hp * s.wp; s.chan = (int64_t)n * s.hpwp;
    return s;
}

size_t osk_conv_wgrad_f32_scratch(const osk_conv *g, int32_t n, int32_t h, int32_t w) {
    wg_t s = wg_make(g, n, h, w);
    return (size_t)(s.cin * s.chan + (int64_t)s.tiles * WC * s.cols + s.kpad * s.tiles * WC) + 16;
}

// MARK: - Operand preparation

/// xpad (Cin, N, Hp, Wp): x shifted by (pt, pl), zeros outside the image. Only the border is zeroed (the interior
/// is overwritten): for 16x16 images the border is 68 of 324 values a plane. Rows are copied by a plain loop: a
/// memcpy call per 64-byte row was 1.5% of a training step, and an AVX-512 masked-load version was slower still
/// (the masked loads of rows shifted by the pad stalled: 8.6% of the step).
static void pad_input(const wg_t *g, const float *x, float *xpad) {
    int x1 = g->w;  // source columns landing inside 0 ..< wp (pads are >= 0)
    if (x1 + g->pl > g->wp) x1 = g->wp - g->pl;
    if (x1 < 0) x1 = 0;
    const int right = g->pl + x1;  // first padded column after the copied ones
    for (int64_t plane = 0; plane < (int64_t)g->cin * g->n; plane++) {
        const float *src = x + plane * g->h * g->w;
        float *dst = xpad + plane * g->hpwp;
        for (int py = 0; py < g->hp; py++) {
            float *restrict row = dst + (int64_t)py * g->wp;
            int y = py - g->pt;
            if (y < 0 || y >= g->h || x1 == 0) { for (int c = 0; c < g->wp; c++) row[c] = 0; continue; }
            const float *restrict s = src + (int64_t)y * g->w;
            for (int c = 0; c < g->pl; c++) row[c] = 0;
            for (int c = 0; c < x1; c++) row[g->pl + c] = s[c];
            for (int c = right; c < g->wp; c++) row[c] = 0;
        }
    }
}

/// dyt[tile][j][32] = dy[tile*32 + c][j] (0 past M); db[m] += (sum over j in order from 0).
static void transpose_dy_scalar(const wg_t *g, const float *dy, float *dyt, float *db) {
    for (int t = 0; t < g->tiles; t++) {
        float *d = dyt + (int64_t)t * g->cols * WC;
        for (int c = 0; c < WC; c++) {
            int m = t * WC + c;
            float sum = 0;
            if (m < g->m) {
                const float *row = dy + (int64_t)m * g->cols;
                for (int64_t j = 0; j < g->cols; j++) { d[j * WC + c] = row[j]; sum += row[j]; }
                if (db) db[m] += sum;
            } else {
                for (int64_t j = 0; j < g->cols; j++) d[j * WC + c] = 0;
            }
        }
    }
}

#if OSK_X86
/// r[0..15] (rows) -> r[0..15] (columns) of a 16 x 16 block.
AVX512 static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    // r[4i + c], 128-bit lane L, now holds rows 4i..4i+3 of column 4L + c.
    __m512 o[16];
    for (int c = 0; c < 4; c++) {
        __m512 a = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), b = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
        __m512 d = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88), e = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
        o[c] = _mm512_shuffle_f32x4(a, d, 0x88);
        o[8 + c] = _mm512_shuffle_f32x4(a, d, 0xDD);
        o[4 + c] = _mm512_shuffle_f32x4(b, e, 0x88);
        o[12 + c] = _mm512_shuffle_f32x4(b, e, 0xDD);
    }
    for (int i = 0; i < 16; i++) r[i] = o[i];
}

/// As transpose_dy_scalar, 16 x 16 blocks in registers; db's sums are the same adds in the same order (one lane
/// per channel).
AVX512 static void transpose_dy_avx512(const wg_t *g, const float *dy, float *dyt, float *db) {
    const int64_t full = g->cols / 16 * 16;
    for (int t = 0; t < g->tiles; t++) {
        float *d = dyt + (int64_t)t * g->cols * WC;
        for (int half = 0; half < 2; half++) {
            const int m0 = t * WC + half * 16;
            const int rows = g->m - m0 < 0 ? 0 : g->m - m0 > 16 ? 16 : g->m - m0;
            const float *src[16];
            for (int r = 0; r < 16; r++) src[r] = r < rows ? dy + (int64_t)(m0 + r) * g->cols : NULL;
            __m512 sum = _mm512_setzero_ps();
            for (int64_t j = 0; j < full; j += 16) {
                __m512 v[16];
                for (int r = 0; r < 16; r++) v[r] = src[r] ? _mm512_loadu_ps(src[r] + j) : _mm512_setzero_ps();
                transpose16(v);
                for (int jj = 0; jj < 16; jj++) {
                    _mm512_store_ps(d + (j + jj) * WC + half * 16, v[jj]);
                    sum = _mm512_add_ps(sum, v[jj]);
                }
            }
            float lanes[16];
            _mm512_storeu_ps(lanes, sum);
            for (int64_t j = full; j < g->cols; j++)
                for (int r = 0; r < 16; r++) {
                    float v = src[r] ? src[r][j] : 0.0f;
                    d[j * WC + half * 16 + r] = v;
                    lanes[r] += v;
                }
            if (db) for (int r = 0; r < rows; r++) db[m0 + r] += lanes[r];
        }
    }
}
#endif

#if OSK_X86
/// r[0..7] (rows) -> r[0..7] (columns) of an 8 x 8 block.
AVX2 static inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    // u[c] (c < 4) holds column c of rows 0-3 (low lane: columns 0-3, high lane: columns 4-7); u[4 + c] rows 4-7.
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

/// As transpose_dy_scalar, 8 x 8 blocks in registers; db's sums are the same adds in the same order (one lane per
/// channel).
AVX2 static void transpose_dy_avx2(const wg_t *g, const float *dy, float *dyt, float *db) {
    const int64_t full = g->cols / 8 * 8;
    for (int t = 0; t < g->tiles; t++) {
        float *d = dyt + (int64_t)t * g->cols * WC;
        for (int q = 0; q < WC / 8; q++) {
            const int m0 = t * WC + q * 8;
            const int rows = g->m - m0 < 0 ? 0 : g->m - m0 > 8 ? 8 : g->m - m0;
            const float *src[8];
            for (int r = 0; r < 8; r++) src[r] = r < rows ? dy + (int64_t)(m0 + r) * g->cols : NULL;
            __m256 sum = _mm256_setzero_ps();
            for (int64_t j = 0; j < full; j += 8) {
                __m256 v[8];
                for (int r = 0; r < 8; r++) v[r] = src[r] ? _mm256_loadu_ps(src[r] + j) : _mm256_setzero_ps();
                transpose8(v);
                for (int jj = 0; jj < 8; jj++) {
                    _mm256_store_ps(d + (j + jj) * WC + q * 8, v[jj]);
                    sum = _mm256_add_ps(sum, v[jj]);
                }
            }
            float lanes[8];
            _mm256_storeu_ps(lanes, sum);
            for (int64_t j = full; j < g->cols; j++)
                for (int r = 0; r < 8; r++) {
                    float v = src[r] ? src[r][j] : 0.0f;
                    d[j * WC + q * 8 + r] = v;
                    lanes[r] += v;
                }
            if (db) for (int r = 0; r < rows; r++) db[m0 + r] += lanes[r];
        }
    }
}
#endif

/// dst[c][r] = src[r][c] for an (rows, cols) block with row strides lds and ldd, in 16 x 16 blocks (the element by
/// element loops read one of the two with a stride of K or 32 floats: 1% of a training step).
static void transpose_block_scalar(const float *src, int64_t lds, float *dst, int64_t ldd, int64_t rows, int64_t cols) {
    for (int64_t r0 = 0; r0 < rows; r0 += 16)
        for (int64_t c0 = 0; c0 < cols; c0 += 16) {
            const int64_t r1 = r0 + 16 < rows ? r0 + 16 : rows, c1 = c0 + 16 < cols ? c0 + 16 : cols;
            for (int64_t c = c0; c < c1; c++)
                for (int64_t r = r0; r < r1; r++) dst[c * ldd + r] = src[r * lds + c];
        }
}

#if OSK_X86
/// transpose_block_scalar with the full 16 x 16 blocks transposed in registers (transpose16); the edges as before.
AVX512 static void transpose_block_avx512(const float *src, int64_t lds, float *dst, int64_t ldd, int64_t rows, int64_t cols) {
    const int64_t rf = rows / 16 * 16, cf = cols / 16 * 16;
    for (int64_t r0 = 0; r0 < rf; r0 += 16)
        for (int64_t c0 = 0; c0 < cf; c0 += 16) {
            __m512 v[16];
            for (int i = 0; i < 16; i++) v[i] = _mm512_loadu_ps(src + (r0 + i) * lds + c0);
            transpose16(v);
            for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + (c0 + i) * ldd + r0, v[i]);
        }
    for (int64_t c = 0; c < cols; c++)
        for (int64_t r = c < cf ? rf : 0; r < rows; r++) dst[c * ldd + r] = src[r * lds + c];
}
#endif

#if OSK_X86
/// transpose_block_scalar with the full 8 x 8 blocks transposed in registers (transpose8); the edges as before.
AVX2 static void transpose_block_avx2(const float *src, int64_t lds, float *dst, int64_t ldd, int64_t rows, int64_t cols) {
    const int64_t rf = rows / 8 * 8, cf = cols / 8 * 8;
    for (int64_t r0 = 0; r0 < rf; r0 += 8)
        for (int64_t c0 = 0; c0 < cf; c0 += 8) {
            __m256 v[8];
            for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_ps(src + (r0 + i) * lds + c0);
            transpose8(v);
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + (c0 + i) * ldd + r0, v[i]);
        }
    for (int64_t c = 0; c < cols; c++)
        for (int64_t r = c < cf ? rf : 0; r < rows; r++) dst[c * ldd + r] = src[r * lds + c];
}
#endif

static void transpose_block(int level, const float *src, int64_t lds, float *dst, int64_t ldd, int64_t rows, int64_t cols) {
#if OSK_X86
    if (level == OSK_AVX512) { transpose_block_avx512(src, lds, dst, ldd, rows, cols); return; }
    if (level == OSK_AVX2) { transpose_block_avx2(src, lds, dst, ldd, rows, cols); return; }
#endif
    (void)level;
    transpose_block_scalar(src, lds, dst, ldd, rows, cols);
}

// MARK: - Microkernels: acc[r][c] (8 rows of dW^T, 32 channels) += sum over the chunk's columns of x_r * dy_c

/// Rows R0 ..< R1 of output rows (image, oy); column j = R * wo + ox. xr[r] points at row r's tap origin.
static void wg_kernel_scalar(const wg_t *g, const float *const xr[WR], int mr, const float *dyt, int64_t r0, int64_t r1,
                             float *acc, int64_t ldt, int nc) {
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < nc; c++) {
            float a = acc[r * ldt + c];
            for (int64_t row = r0; row < r1; row++) {
                int64_t img = row / g->ho, oy = row % g->ho;
                int64_t base = img * g->hpwp + oy * g->s * g->wp;
                const float *b = dyt + row * g->wo * WC + c;
                for (int ox = 0; ox < g->wo; ox++) a = fmaf(xr[r][base + (int64_t)ox * g->s], b[(int64_t)ox * WC], a);
            }
            acc[r * ldt + c] = a;
        }
}

#if OSK_X86
AVX512 static void wg_kernel_avx512(const wg_t *g, const float *const xr[WR], const float *dyt, int64_t r0, int64_t r1,
                                    float *acc, int64_t ldt, int nc) {
    const float *x0 = xr[0], *x1 = xr[1], *x2 = xr[2], *x3 = xr[3], *x4 = xr[4], *x5 = xr[5], *x6 = xr[6], *x7 = xr[7];
    const int s = g->s, wo = g->wo;
#define LOADC(r) __m512 c##r##0 = _mm512_loadu_ps(acc + r * ldt), c##r##1 = _mm512_loadu_ps(acc + r * ldt + 16);
    LOADC(0) LOADC(1) LOADC(2) LOADC(3) LOADC(4) LOADC(5) LOADC(6) LOADC(7)
#undef LOADC
    if (nc > 16) {
        for (int64_t row = r0; row < r1; row++) {
            int64_t img = row / g->ho, oy = row - img * g->ho;
            int64_t off = img * g->hpwp + oy * s * g->wp;
            const float *b = dyt + row * wo * WC;
            for (int ox = 0; ox < wo; ox++, off += s, b += WC) {
                __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#define STEP(r) { __m512 a = _mm512_set1_ps(x##r[off]); c##r##0 = _mm512_fmadd_ps(a, b0, c##r##0); c##r##1 = _mm512_fmadd_ps(a, b1, c##r##1); }
                STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
#undef STEP
            }
        }
    } else {  // 16 channels or fewer: half the work (conv_out has 3)
        for (int64_t row = r0; row < r1; row++) {
            int64_t img = row / g->ho, oy = row - img * g->ho;
            int64_t off = img * g->hpwp + oy * s * g->wp;
            const float *b = dyt + row * wo * WC;
            for (int ox = 0; ox < wo; ox++, off += s, b += WC) {
                __m512 b0 = _mm512_load_ps(b);
#define STEP(r) { c##r##0 = _mm512_fmadd_ps(_mm512_set1_ps(x##r[off]), b0, c##r##0); }
                STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
#undef STEP
            }
        }
    }
#define STOREC(r) _mm512_storeu_ps(acc + r * ldt, c##r##0); _mm512_storeu_ps(acc + r * ldt + 16, c##r##1);
    STOREC(0) STOREC(1) STOREC(2) STOREC(3) STOREC(4) STOREC(5) STOREC(6) STOREC(7)
#undef STOREC
}

// The AVX2 tile: R K-rows x 16 channels, R = 6 (12 ymm accumulators, 2 for dY, 1 broadcast: 15 of 16 registers) or
// 4 (8 accumulators) for the rest; 8 accumulators were too few to keep both FMA pipes busy through the FMA latency.
// A group's rows are any R rows of dW^T (the driver groups K in 6s, not in the 8-row panels of the other levels).
#define WG_AVX2_LOADC(r) __m256 c##r##0 = _mm256_loadu_ps(acc + r * ldt), c##r##1 = _mm256_loadu_ps(acc + r * ldt + 8);
#define WG_AVX2_STEP(r) { __m256 a = _mm256_broadcast_ss(x##r + off); c##r##0 = _mm256_fmadd_ps(a, b0, c##r##0); c##r##1 = _mm256_fmadd_ps(a, b1, c##r##1); }
#define WG_AVX2_STOREC(r) _mm256_storeu_ps(acc + r * ldt, c##r##0); _mm256_storeu_ps(acc + r * ldt + 8, c##r##1);
// (image, oy) of each output row stepped, not divided: one division per chunk instead of one per row.
#define WG_AVX2_ROWS(...)                                                              \
    int64_t img = r0 / g->ho, oy = r0 - img * g->ho;                                  \
    for (int64_t row = r0; row < r1; row++, oy = oy + 1 == g->ho ? (img++, 0) : oy + 1) { \
        int64_t off = img * g->hpwp + oy * s * g->wp;                                 \
        const float *b = dyt + row * wo * WC;                                         \
        for (int ox = 0; ox < wo; ox++, off += s, b += WC) {                          \
            __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);                \
            __VA_ARGS__                                                               \
        }                                                                             \
    }

AVX2 static void wg_kernel_avx2_6x16(const wg_t *g, const float *const xr[6], const float *dyt, int64_t r0, int64_t r1,
                                     float *acc, int64_t ldt) {
    const float *x0 = xr[0], *x1 = xr[1], *x2 = xr[2], *x3 = xr[3], *x4 = xr[4], *x5 = xr[5];
    const int s = g->s, wo = g->wo;
    WG_AVX2_LOADC(0) WG_AVX2_LOADC(1) WG_AVX2_LOADC(2) WG_AVX2_LOADC(3) WG_AVX2_LOADC(4) WG_AVX2_LOADC(5)
    WG_AVX2_ROWS(WG_AVX2_STEP(0) WG_AVX2_STEP(1) WG_AVX2_STEP(2) WG_AVX2_STEP(3) WG_AVX2_STEP(4) WG_AVX2_STEP(5))
    WG_AVX2_STOREC(0) WG_AVX2_STOREC(1) WG_AVX2_STOREC(2) WG_AVX2_STOREC(3) WG_AVX2_STOREC(4) WG_AVX2_STOREC(5)
}

AVX2 static void wg_kernel_avx2_4x16(const wg_t *g, const float *const xr[4], const float *dyt, int64_t r0, int64_t r1,
                                     float *acc, int64_t ldt) {
    const float *x0 = xr[0], *x1 = xr[1], *x2 = xr[2], *x3 = xr[3];
    const int s = g->s, wo = g->wo;
    WG_AVX2_LOADC(0) WG_AVX2_LOADC(1) WG_AVX2_LOADC(2) WG_AVX2_LOADC(3)
    WG_AVX2_ROWS(WG_AVX2_STEP(0) WG_AVX2_STEP(1) WG_AVX2_STEP(2) WG_AVX2_STEP(3))
    WG_AVX2_STOREC(0) WG_AVX2_STOREC(1) WG_AVX2_STOREC(2) WG_AVX2_STOREC(3)
}
#undef WG_AVX2_LOADC
#undef WG_AVX2_STEP
#undef WG_AVX2_STOREC
#undef WG_AVX2_ROWS

/// One chunk of columns (output rows r0 ..< r1) at AVX2: per 16-channel half of each 32-channel tile (its 16 KiB of
/// the chunk's dY stays in L1), the K rows in groups of 6 (K rounded up to even, and at most two groups of 4 at the
/// end; rows past K repeat row 0 and land in dwt's padding rows, never read back).
AVX2 static void wg_chunk_avx2(const wg_t *g, const float *xpad, const float *dyt, int64_t r0, int64_t r1, float *dwt,
                               int64_t ldt) {
    const int64_t rows = g->k < 4 ? 4 : (g->k + 1) & ~(int64_t)1;
    for (int t = 0; t < g->tiles; t++) {
        const int nc = g->m - t * WC < WC ? g->m - t * WC : WC;
        for (int h = 0; h < 2 && 16 * h < nc; h++) {
            const float *tile = dyt + (int64_t)t * g->cols * WC + 16 * h;
            for (int64_t k0 = 0, gr; k0 < rows; k0 += gr) {
                const int64_t left = rows - k0;
                gr = left % 6 == 0 || left > 8 ? 6 : 4;
                const float *xr[6];
#pragma clang loop vectorize(disable)   // see tile_f32_avx2 (onestep_kernels.c): no masked vector store
                for (int r = 0; r < gr; r++) {
                    int64_t k = k0 + r < g->k ? k0 + r : 0;
                    int64_t c = k / g->taps, tap = k % g->taps;
                    xr[r] = xpad + c * g->chan + (tap / g->kw) * g->wp + tap % g->kw;
                }
                float *acc = dwt + k0 * ldt + t * WC + 16 * h;
                if (gr == 6) wg_kernel_avx2_6x16(g, xr, tile, r0, r1, acc, ldt);
                else wg_kernel_avx2_4x16(g, xr, tile, r0, r1, acc, ldt);
            }
        }
    }
}
#endif

// MARK: - Driver

int osk_conv_wgrad_f32(int level, const osk_conv *conv, const float *x, int32_t n, int32_t h, int32_t w,
                       const float *dy, float *dw, float *db, float *scratch) {
    if (conv->upsample) return -1;
    const wg_t g = wg_make(conv, n, h, w);
    // Scratch: xpad | dyt (64-byte aligned) | dwt (K padded to 8 rows, tiles*32 channels).
    float *xpad = scratch;
    float *dyt = xpad + g.cin * g.chan;
    dyt += (16 - ((uintptr_t)dyt / sizeof(float)) % 16) % 16;
    float *dwt = dyt + (int64_t)g.tiles * WC * g.cols;
    const int64_t ldt = (int64_t)g.tiles * WC;

    pad_input(&g, x, xpad);
#if OSK_X86
    if (level == OSK_AVX512) transpose_dy_avx512(&g, dy, dyt, db);
    else if (level == OSK_AVX2) transpose_dy_avx2(&g, dy, dyt, db);
    else
#endif
        transpose_dy_scalar(&g, dy, dyt, db);
    // dwt (kpad, ldt) = dW^T, zero past K and M.
    transpose_block(level, dw, g.k, dwt, ldt, g.m, g.k);
    for (int64_t k = 0; k < g.kpad; k++)
        for (int64_t c = k < g.k ? g.m : 0; c < ldt; c++) dwt[k * ldt + c] = 0.0f;

    // Each K row's tap origin in xpad: channel c, tap (ky, kx).
    const int64_t rows = (int64_t)g.n * g.ho;
    int64_t chunkRows = CHUNK_COLS / (g.wo > 0 ? g.wo : 1);
    if (chunkRows < 1) chunkRows = 1;
    for (int64_t r0 = 0; r0 < rows; r0 += chunkRows) {
        const int64_t r1 = r0 + chunkRows < rows ? r0 + chunkRows : rows;
#if OSK_X86
        if (level == OSK_AVX2) { wg_chunk_avx2(&g, xpad, dyt, r0, r1, dwt, ldt); continue; }
#endif
        for (int64_t k0 = 0; k0 < g.k8; k0 += WR) {
            const float *xr[WR];
            const int mr = g.k - k0 < WR ? (int)(g.k - k0) : WR;
            for (int r = 0; r < WR; r++) {
                int64_t k = k0 + (r < mr ? r : 0);  // rows past K repeat row k0 (computed, never read back)
                int64_t c = k / g.taps, t = k % g.taps;
                xr[r] = xpad + c * g.chan + (t / g.kw) * g.wp + t % g.kw;
            }
            for (int t = 0; t < g.tiles; t++) {
                const int nc = g.m - t * WC < WC ? g.m - t * WC : WC;
                float *acc = dwt + k0 * ldt + t * WC;
                const float *tile = dyt + (int64_t)t * g.cols * WC;
#if OSK_X86
                if (level == OSK_AVX512) { wg_kernel_avx512(&g, xr, tile, r0, r1, acc, ldt, nc); continue; }
#endif
                wg_kernel_scalar(&g, xr, mr, tile, r0, r1, acc, ldt, nc);
            }
        }
    }
    transpose_block(level, dwt, ldt, dw, g.k, g.k, g.m);
    return 0;
}

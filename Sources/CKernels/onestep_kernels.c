// Onestep CPU kernels (see include/onestep_kernels.h for layouts and the dimension legend).
//
// Design: implicit-GEMM convolution. For each tile of OSK_NR output columns the kernel builds the tile's
// slice of the im2col matrix, (K, NR), straight from the channel-major activation into a thread-local buffer
// that stays in L2, then runs every 8-row weight panel over it with an 8 x 32 register-blocked microkernel
// (AVX-512; AVX2 runs 6-row x 16-column register tiles over rows that may span two panels, tile_f32_avx2).
// No full im2col matrix is written and BLAS's separate packing pass of B disappears.
//
// Building a tile: for each tap (ky, kx) a table gives, per tile column, the offset of its source pixel
// inside a channel plane (or -1 for padding). When the valid offsets of a tap are consecutive (stride 1
// without upsampling: the tap is a shifted copy) one masked load per 16 columns copies them; otherwise
// (stride 2, fused upsample) a masked gather does. Masked lanes read nothing and yield 0 (fp32) or the
// image's zero point (int8).
//
// Determinism: fp32 outputs are one fmaf chain over k in order, from y's initial value; every level
// (AVX-512, AVX2, scalar fmaf) does the same chain, and edge tiles use masks, not a different order.
// int8 sums are exact integers; the dequantization is the same fmaf at every level.
#include "onestep_kernels.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "onestep_conv_internal.h"
#define INLINE static inline __attribute__((always_inline))

// MARK: - Levels

int osk_level_supported(int level) {
    switch (level) {
    case OSK_SCALAR: return 1;
#if OSK_X86
    case OSK_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case OSK_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
               __builtin_cpu_supports("fma");
#endif
    default: return 0;
    }
}

int osk_default_level(void) {
    int level = OSK_AVX512;
    const char *env = getenv("ONESTEP_KERNELS");
    if (env) {
        if (strcmp(env, "scalar") == 0) level = OSK_SCALAR;
        else if (strcmp(env, "avx2") == 0) level = OSK_AVX2;
    }
    while (level > OSK_SCALAR && !osk_level_supported(level)) level--;
    return level;
}

// MARK: - Geometry of one call and per-tile source tables

geo_t osk_make_geo(const osk_conv *g, int32_t n, int32_t h, int32_t w) {
    geo_t s;
    s.c = g->in_channels; s.n = n; s.h = h; s.w = w; s.up = g->upsample ? 1 : 0;
    s.hv = h << s.up; s.wv = w << s.up;
    s.kh = g->kernel_h; s.kw = g->kernel_w; s.taps = s.kh * s.kw; s.stride = g->stride;
    s.pt = g->pad_top; s.pl = g->pad_left;
    s.ho = (s.hv + g->pad_top + g->pad_bottom - s.kh) / s.stride + 1;
    s.wo = (s.wv + g->pad_left + g->pad_right - s.kw) / s.stride + 1;
    s.howo = (int64_t)s.ho * s.wo;
    s.plane = (int64_t)n * h * w;
    return s;
}

/// osk_tile_taps for a stride-1 tile within one output row (every 3x3 / 1x1 conv of the latent networks at
/// 64x64 and above): each tap's valid columns are one interval, found without a per-column test. The general
/// loop below (three 64-bit divisions per column) took 9% of the int8 TAESD decoder's CPU on its own.
static void tile_taps_row_stride1(const geo_t *g, int64_t img, int32_t oy, int32_t ox0, int nc, tap_t *taps) {
    for (int t = 0; t < g->taps; t++) {
        const int ky = t / g->kw, kx = t % g->kw, iy = oy - g->pt + ky;
        tap_t *tp = &taps[t];
        int lo = 0, hi = 0;   // valid columns lo..<hi: 0 <= ox0 + jj - pl + kx < wv
        int64_t rowbase = 0;
        if (iy >= 0 && iy < g->hv) {
            const int first = g->pl - kx - ox0, end = g->wv + g->pl - kx - ox0;
            lo = first > 0 ? first : 0;
            hi = end < nc ? end : nc;
            if (hi < lo) hi = lo;
            rowbase = img * g->h * g->w + (int64_t)(iy >> g->up) * g->w;
        }
        // Offsets fit int32 (tap_t.off); x0 = input column of jj = 0 before the upsample shift. A branch-free loop
        // the compiler vectorizes.
        const int32_t x0 = ox0 - g->pl + kx, rb = (int32_t)rowbase, up = g->up;
        for (int jj = 0; jj < NR; jj++) tp->off[jj] = jj >= lo && jj < hi ? rb + ((x0 + jj) >> up) : -1;
        // Contiguous when the valid offsets are base + jj: always without the upsample, and with it only for a
        // single valid column (then base is that column's offset minus jj, as the general loop sets it).
        tp->valid = hi > lo ? (uint32_t)(((1ull << hi) - 1) & ~((1ull << lo) - 1)) : 0;
        tp->contiguous = !g->up || hi - lo <= 1;
        tp->pairs = !tp->contiguous;
        tp->odd = x0 & 1;
        tp->pbase = rowbase + (x0 >> 1);   // floor: x0 may be -1
        tp->base = hi > lo ? (int64_t)tp->off[lo] - lo : 0;
    }
}

void osk_tile_taps(const geo_t *g, int64_t j0, int nc, tap_t *taps) {
    const int64_t i0 = j0 / g->howo, r0 = j0 - i0 * g->howo;
    const int32_t oy0 = (int32_t)(r0 / g->wo), ox0 = (int32_t)(r0 % g->wo);
    if (g->stride == 1 && ox0 + nc <= g->wo) { tile_taps_row_stride1(g, i0, oy0, ox0, nc, taps); return; }
    int32_t img[NR], oy[NR], ox[NR];
    int32_t ci = (int32_t)i0, cy = oy0, cx = ox0;   // stepped column by column instead of divided
    for (int jj = 0; jj < nc; jj++) {
        img[jj] = ci; oy[jj] = cy; ox[jj] = cx;
        if (++cx == g->wo) { cx = 0; if (++cy == g->ho) { cy = 0; ci++; } }
    }
    for (int t = 0; t < g->taps; t++) {
        int ky = t / g->kw, kx = t % g->kw;
        tap_t *tp = &taps[t];
        uint32_t valid = 0;
        int contiguous = 1, have = 0;
        int64_t base = 0;
        for (int jj = 0; jj < NR; jj++) {
            int32_t o = -1;
            if (jj < nc) {
                int iy = oy[jj] * g->stride - g->pt + ky, ix = ox[jj] * g->stride - g->pl + kx;
                if (iy >= 0 && iy < g->hv && ix >= 0 && ix < g->wv) {
                    o = (int32_t)((int64_t)img[jj] * g->h * g->w + (int64_t)(iy >> g->up) * g->w + (ix >> g->up));
                    valid |= 1u << jj;
                    if (!have) { base = (int64_t)o - jj; have = 1; }
                    else if (o != base + jj) contiguous = 0;
                }
            }
            tp->off[jj] = o;
        }
        tp->base = base; tp->valid = valid; tp->contiguous = contiguous;
        tp->pairs = 0; tp->odd = 0; tp->pbase = 0;
    }
}

// MARK: - Thread-local workspace (grows once, then reused: a steady-state forward does not allocate)

typedef struct { void *p; size_t cap; } ws_t;
static _Thread_local ws_t ws[OSK_WS_COUNT];
_Thread_local float osk_dummy_rows[MR][NR];

// The workspace lives as long as its thread: a pthread key's destructor frees it when the thread exits (server
// compute threads live for the process, but test servers and Dispatch's pool threads come and go).
static pthread_key_t ws_key;
static pthread_once_t ws_key_once = PTHREAD_ONCE_INIT;
static _Thread_local int ws_registered;

static void ws_free_thread(void *unused) {
    (void)unused;
    for (int i = 0; i < OSK_WS_COUNT; i++) { free(ws[i].p); ws[i] = (ws_t){0}; }
    ws_registered = 0;
}

static void ws_make_key(void) { pthread_key_create(&ws_key, ws_free_thread); }

void *osk_ws_get(int which, size_t bytes) {
    ws_t *w = &ws[which];
    if (w->cap < bytes) {
        if (!ws_registered) {  // this thread's first workspace: register the destructor
            pthread_once(&ws_key_once, ws_make_key);
            pthread_setspecific(ws_key, (void *)1);
            ws_registered = 1;
        }
        free(w->p);
        size_t cap = (bytes + 4095) & ~(size_t)4095;
        w->p = aligned_alloc(64, cap);
        w->cap = w->p ? cap : 0;
    }
    return w->p;
}

// MARK: - fp32 weight packing

size_t osk_f32_packed_count(int32_t m, int32_t k) { return (size_t)((m + MR - 1) / MR) * MR * (size_t)k; }

void osk_f32_pack(const float *w, int32_t m, int32_t k, float *packed) {
    int panels = (m + MR - 1) / MR;
    for (int p = 0; p < panels; p++)
        for (int kk = 0; kk < k; kk++)
            for (int r = 0; r < MR; r++) {
                int row = p * MR + r;
                packed[((size_t)p * k + kk) * MR + r] = row < m ? w[(size_t)row * k + kk] : 0.0f;
            }
}

// MARK: - fp32 tile packing: bt (K, NR), row k = c * taps + t

static void pack_f32_scalar(const geo_t *g, const tap_t *taps, const float *x, float *bt) {
    for (int c = 0; c < g->c; c++) {
        const float *p = x + (int64_t)c * g->plane;
        for (int t = 0; t < g->taps; t++) {
            float *d = bt + ((size_t)c * g->taps + t) * NR;
            for (int jj = 0; jj < NR; jj++) { int32_t o = taps[t].off[jj]; d[jj] = o >= 0 ? p[o] : 0.0f; }
        }
    }
}

#if OSK_X86
AVX512 static void pack_f32_avx512(const geo_t *g, const tap_t *taps, const float *x, float *bt) {
    for (int c = 0; c < g->c; c++) {
        const float *p = x + (int64_t)c * g->plane;
        for (int t = 0; t < g->taps; t++) {
            const tap_t *tp = &taps[t];
            float *d = bt + ((size_t)c * g->taps + t) * NR;
            __mmask16 m0 = (__mmask16)tp->valid, m1 = (__mmask16)(tp->valid >> 16);
            if (tp->contiguous) {
                const float *s = p + tp->base;  // masked lanes are never touched
                _mm_prefetch((const char *)(s + 2 * NR), _MM_HINT_T0);  // this row of the tile after next
                _mm_prefetch((const char *)(s + 2 * NR + 16), _MM_HINT_T0);
                _mm512_store_ps(d, _mm512_maskz_loadu_ps(m0, s));
                _mm512_store_ps(d + 16, _mm512_maskz_loadu_ps(m1, s + 16));
            } else {
                __m512i i0 = _mm512_loadu_si512(tp->off), i1 = _mm512_loadu_si512(tp->off + 16);
                _mm512_store_ps(d, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m0, i0, p, 4));
                _mm512_store_ps(d + 16, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m1, i1, p, 4));
            }
        }
    }
}

/// Each 8-column group of a tap is loaded on its own: for an image narrower than the tile (16 or 8 columns wide at
/// the training sizes) a tap's offsets are not one run across the tile, but each 8-column group within one image row
/// is, so a masked load replaces the gather (vgatherdps was about 10 cycles a group on Zen 3: the 16x16 layers ran
/// at 60% of the 8x8 ones' rate). The group's mode is found once per tile, not once per channel.
AVX2 static void pack_f32_avx2(const geo_t *g, const tap_t *taps, const float *x, float *bt) {
    enum { ZERO, FULL, MASKED, GATHER };
    const int groups = g->taps * (NR / 8);
    uint8_t mode[groups];
    int64_t base[groups];
    __m256i mask[groups];
    for (int t = 0; t < g->taps; t++) {
        const tap_t *tp = &taps[t];
        for (int v = 0; v < NR / 8; v++) {
            const int q = t * (NR / 8) + v;
            const uint32_t bits = (tp->valid >> (8 * v)) & 0xff;
            mask[q] = mask8_avx2(bits);
            base[q] = 0;
            if (!bits) { mode[q] = ZERO; continue; }
            int run = 1;
            int64_t b = tp->base + 8 * v;
            if (!tp->contiguous) {   // one run within the group: valid lanes i read b + i
                const int first = __builtin_ctz(bits);
                b = (int64_t)tp->off[8 * v + first] - first;
                for (int i = first + 1; i < 8 && run; i++)
                    if ((bits >> i & 1) && tp->off[8 * v + i] != b + i) run = 0;
            }
            base[q] = b;
            mode[q] = !run ? GATHER : bits == 0xff ? FULL : MASKED;
        }
    }
    for (int c = 0; c < g->c; c++) {
        const float *p = x + (int64_t)c * g->plane;
        for (int t = 0; t < g->taps; t++) {
            float *d = bt + ((size_t)c * g->taps + t) * NR;
            for (int v = 0; v < NR / 8; v++) {
                const int q = t * (NR / 8) + v;
                __m256 val;
                switch (mode[q]) {
                case ZERO: val = _mm256_setzero_ps(); break;
                case FULL:
                    _mm_prefetch((const char *)(p + base[q] + 2 * NR), _MM_HINT_T0);
                    val = _mm256_loadu_ps(p + base[q]);
                    break;
                case MASKED: val = _mm256_maskload_ps(p + base[q], mask[q]); break;
                default:
                    val = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p,
                                                   _mm256_loadu_si256((const __m256i *)(taps[t].off + 8 * v)),
                                                   _mm256_castsi256_ps(mask[q]), 4);
                }
                _mm256_store_ps(d + 8 * v, val);
            }
        }
    }
}
#endif

// MARK: - fp32 microkernels: c[r][0..<nc] = fma chain over k of a[k][r] * bt[k][jj], from c's value

static void kernel_f32_scalar(int k, const float *a, const float *bt, float *const crow[MR], int mr, int nc) {
    for (int r = 0; r < mr; r++)
        for (int jj = 0; jj < nc; jj++) {
            float acc = crow[r][jj];
            for (int kk = 0; kk < k; kk++) acc = fmaf(a[(size_t)kk * MR + r], bt[(size_t)kk * NR + jj], acc);
            crow[r][jj] = acc;
        }
}

#if OSK_X86
AVX512 static void kernel_f32_avx512(int k, const float *a, const float *bt, float *const crow[MR], int mr, int nc) {
    (void)mr;
    __mmask16 m0 = (__mmask16)(nc >= 16 ? 0xffff : (1u << nc) - 1);
    __mmask16 m1 = (__mmask16)(nc >= 32 ? 0xffff : nc > 16 ? (1u << (nc - 16)) - 1 : 0);
#define LOADC(r) __m512 c##r##0 = _mm512_maskz_loadu_ps(m0, crow[r]), c##r##1 = _mm512_maskz_loadu_ps(m1, crow[r] + 16);
    LOADC(0) LOADC(1) LOADC(2) LOADC(3) LOADC(4) LOADC(5) LOADC(6) LOADC(7)
    for (int kk = 0; kk < k; kk++) {
        __m512 b0 = _mm512_load_ps(bt), b1 = _mm512_load_ps(bt + 16);
#define STEP(r) { __m512 av = _mm512_set1_ps(a[r]); c##r##0 = _mm512_fmadd_ps(av, b0, c##r##0); c##r##1 = _mm512_fmadd_ps(av, b1, c##r##1); }
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
        a += MR; bt += NR;
    }
#define STOREC(r) _mm512_mask_storeu_ps(crow[r], m0, c##r##0); _mm512_mask_storeu_ps(crow[r] + 16, m1, c##r##1);
    STOREC(0) STOREC(1) STOREC(2) STOREC(3) STOREC(4) STOREC(5) STOREC(6) STOREC(7)
#undef LOADC
#undef STEP
#undef STOREC
}

/// kernel_f32_avx512 for a layer of at most 4 output channels (one panel; TAESD's and the VAE's conv_out, 3 rows)
/// on an interior tile (every tap a contiguous, fully valid run of x): rows kk = (c, t) are read in place at
/// x + c * plane + base[t] instead of being packed (a 576 x 32 tile packed for one panel cost as much as the
/// FMAs), and only 4 of the panel's 8 rows run. Each output is the same fma chain (k ascending from y): same bits.
AVX512 static void kernel_f32_direct4_avx512(int c, int taps, const float *a, const float *x, int64_t plane,
                                             const int64_t *base, float *const crow[MR]) {
#define LOADC(r) __m512 c##r##0 = _mm512_loadu_ps(crow[r]), c##r##1 = _mm512_loadu_ps(crow[r] + 16);
    LOADC(0) LOADC(1) LOADC(2) LOADC(3)
    for (int ch = 0; ch < c; ch++) {
        const float *xc = x + (int64_t)ch * plane;
        for (int t = 0; t < taps; t++) {
            const float *src = xc + base[t];
            __m512 b0 = _mm512_loadu_ps(src), b1 = _mm512_loadu_ps(src + 16);
#define STEP(r) { __m512 av = _mm512_set1_ps(a[r]); c##r##0 = _mm512_fmadd_ps(av, b0, c##r##0); c##r##1 = _mm512_fmadd_ps(av, b1, c##r##1); }
            STEP(0) STEP(1) STEP(2) STEP(3)
            a += MR;
        }
    }
#define STOREC(r) _mm512_storeu_ps(crow[r], c##r##0); _mm512_storeu_ps(crow[r] + 16, c##r##1);
    STOREC(0) STOREC(1) STOREC(2) STOREC(3)
#undef LOADC
#undef STEP
#undef STOREC
}

// The AVX2 tile: R rows x 16 columns with R = 6 (12 ymm accumulators, 2 for the columns, 1 broadcast: 15 of the
// 16 registers; the Haswell/Zen shape) or 4 (8 accumulators) for the rest. 8 accumulators were too few to keep
// both FMA pipes busy through the 4-cycle FMA latency. A row is any row of the packed weights (ar[r] = its panel
// plus its lane, MR floats a step), so a group may span two panels. Per k: 2 column loads, R broadcasts.
// C goes through plain loads and stores when the tile's 16 columns are all in range: Zen 3's masked store is
// microcoded (a quarter of this driver's samples sat on the masked loads and stores around the k loop).
// With start (osk_conv_f32_init's first K chunk) the chains begin at start[r] instead of at C's value.
#define F32_AVX2_LOADC(r)                                                                                   \
    __m256 c##r##0 = start ? _mm256_set1_ps(start[r]) : full ? _mm256_loadu_ps(crow[r]) : _mm256_maskload_ps(crow[r], m0), \
           c##r##1 = start ? c##r##0 : full ? _mm256_loadu_ps(crow[r] + 8) : _mm256_maskload_ps(crow[r] + 8, m1);
#define F32_AVX2_STEP(r) { __m256 av = _mm256_broadcast_ss(a##r + o); c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0); c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1); }
#define F32_AVX2_STOREC(r)                                                                                  \
    if (full) { _mm256_storeu_ps(crow[r], c##r##0); _mm256_storeu_ps(crow[r] + 8, c##r##1); }                \
    else { _mm256_maskstore_ps(crow[r], m0, c##r##0); _mm256_maskstore_ps(crow[r] + 8, m1, c##r##1); }

AVX2 static void kernel_f32_avx2_6x16(int k, const float *const ar[6], const float *bt, float *const crow[6],
                                      const float *start, int full, __m256i m0, __m256i m1) {
    const float *a0 = ar[0], *a1 = ar[1], *a2 = ar[2], *a3 = ar[3], *a4 = ar[4], *a5 = ar[5];
    F32_AVX2_LOADC(0) F32_AVX2_LOADC(1) F32_AVX2_LOADC(2) F32_AVX2_LOADC(3) F32_AVX2_LOADC(4) F32_AVX2_LOADC(5)
#pragma clang loop unroll_count(2)
    for (size_t o = 0; o < (size_t)k * MR; o += MR, bt += NR) {
        __m256 b0 = _mm256_load_ps(bt), b1 = _mm256_load_ps(bt + 8);
        F32_AVX2_STEP(0) F32_AVX2_STEP(1) F32_AVX2_STEP(2) F32_AVX2_STEP(3) F32_AVX2_STEP(4) F32_AVX2_STEP(5)
    }
    F32_AVX2_STOREC(0) F32_AVX2_STOREC(1) F32_AVX2_STOREC(2) F32_AVX2_STOREC(3) F32_AVX2_STOREC(4) F32_AVX2_STOREC(5)
}

AVX2 static void kernel_f32_avx2_4x16(int k, const float *const ar[4], const float *bt, float *const crow[4],
                                      const float *start, int full, __m256i m0, __m256i m1) {
    const float *a0 = ar[0], *a1 = ar[1], *a2 = ar[2], *a3 = ar[3];
    F32_AVX2_LOADC(0) F32_AVX2_LOADC(1) F32_AVX2_LOADC(2) F32_AVX2_LOADC(3)
#pragma clang loop unroll_count(2)
    for (size_t o = 0; o < (size_t)k * MR; o += MR, bt += NR) {
        __m256 b0 = _mm256_load_ps(bt), b1 = _mm256_load_ps(bt + 8);
        F32_AVX2_STEP(0) F32_AVX2_STEP(1) F32_AVX2_STEP(2) F32_AVX2_STEP(3)
    }
    F32_AVX2_STOREC(0) F32_AVX2_STOREC(1) F32_AVX2_STOREC(2) F32_AVX2_STOREC(3)
}
#undef F32_AVX2_LOADC
#undef F32_AVX2_STEP
#undef F32_AVX2_STOREC

/// Rows covered by the AVX2 row groups of an M-row layer: M rounded up to even, as 6s and at most two 4s (M = 32:
/// 6 x 4 + 4 + 4). Never past the packed rows (M rounded up to MR), whose extra rows have weights 0.
static int f32_avx2_group_rows(int m, int r0) {
    const int rows = m < 4 ? 4 : (m + 1) & ~1, left = rows - r0;
    return left % 6 == 0 || left > 8 ? 6 : 4;
}

/// Every row of an M-row layer over one packed tile bt (K, NR): y[r][j0 ..< j0+nc] continues its fma chain over k
/// ascending. K is split into chunks whose rows of bt (KC x 128 bytes, 16 KiB) stay in L1 across the row groups, and
/// each group runs both column halves on its chunk of weights (8 KiB); 192-row chunks visited half by half read the
/// weights from L2 twice (85% of the FMA peak on a 576 x 64 layer in cache, 94% now). Between chunks the
/// accumulators go through y (stored and reloaded exactly), so the chain and its bits are those of one pass.
#define F32_AVX2_KC 128
AVX2 static void tile_f32_avx2(int k, const float *packed, int m, const float *bt, float *y, int64_t ldc, int64_t j0,
                               int nc, int fill, const float *bias) {
    const uint32_t cols = nc >= 32 ? 0xffffffffu : (1u << nc) - 1;
    const int rows = m < 4 ? 4 : (m + 1) & ~1;
    const __m256i mask[4] = {mask8_avx2(cols), mask8_avx2(cols >> 8), mask8_avx2(cols >> 16), mask8_avx2(cols >> 24)};
    for (int k0 = 0; k0 < k; k0 += F32_AVX2_KC) {
        const int kc = k - k0 < F32_AVX2_KC ? k - k0 : F32_AVX2_KC;
        for (int r0 = 0, gr; r0 < rows; r0 += gr) {
            gr = f32_avx2_group_rows(m, r0);
            const float *ar[6];
            float *crow[6];
            float sv[6];   // fill: the chains start at the bias (0 without), as if y had been set to it
            // Not vectorized: clang wrote these with a masked vector store (microcoded on Zen 3) that the kernel's
            // loads of ar[] and crow[] then waited for (5% of this driver's samples).
#pragma clang loop vectorize(disable)
            for (int r = 0; r < gr; r++) {
                const int row = r0 + r;
                ar[r] = packed + ((size_t)(row / MR) * k + k0) * MR + row % MR;
                crow[r] = row < m ? y + (int64_t)row * ldc + j0 : osk_dummy_rows[row % MR];
                sv[r] = bias && row < m ? bias[row] : 0.0f;
            }
            const float *start = fill && k0 == 0 ? sv : NULL;
            // Both 16-column halves of the group in turn: the group's chunk of weights (kc x 2 panels x 32 bytes)
            // is read from L2 once and from L1 for the second half.
            for (int h = 0; h < 2 && 16 * h < nc; h++) {
                float *ch[6];
                for (int r = 0; r < gr; r++) ch[r] = crow[r] + 16 * h;
                const int full = nc >= 16 * (h + 1);
                if (gr == 6) kernel_f32_avx2_6x16(kc, ar, bt + (size_t)k0 * NR + 16 * h, ch, start, full, mask[2 * h], mask[2 * h + 1]);
                else kernel_f32_avx2_4x16(kc, ar, bt + (size_t)k0 * NR + 16 * h, ch, start, full, mask[2 * h], mask[2 * h + 1]);
            }
        }
    }
}
#endif

// MARK: - fp32 drivers

/// y[r][j0 ..< j0+nc] = bias[r] (0 without bias) for the rows r < m: osk_conv_f32_init's start values.
static void fill_f32_columns(float *y, int64_t ldc, int m, const float *bias, int64_t j0, int64_t nc) {
    for (int r = 0; r < m; r++) {
        const float v = bias ? bias[r] : 0.0f;
        float *row = y + (int64_t)r * ldc + j0;
        for (int64_t jj = 0; jj < nc; jj++) row[jj] = v;
    }
}

/// fill: set each tile's columns of y to bias (or 0) before its FMAs (osk_conv_f32_init); else accumulate onto y.
static void run_f32(int level, const geo_t *g, const float *packed, int32_t m, const float *x0,
                    float *y, int64_t ldc, int64_t n0, int64_t n1, int fill, const float *bias) {
#if OSK_X86
    if (osk_conv_f32_few_applies(level, g, m)) {   // conv_out of the decoders: onestep_conv_few.c
        if (fill) fill_f32_columns(y, ldc, m, bias, n0, n1 - n0);
        osk_conv_f32_few_avx512(g, packed, m, x0, y, ldc, n0, n1);
        return;
    }
#endif
    const int k = g->c * g->taps;
    // A tile within one image has the taps of the tile at the same position in image 0, every offset shifted by
    // the image's start (h * w floats into each plane). When whole tiles tile an image and the call spans more
    // than one, each position's taps are found once (slots 0 ..< positions) and the tiles read x shifted instead:
    // the same loads, so the same bits. osk_tile_taps per tile was 3% of a training step (16x16 and 8x8 tiles
    // span image rows, so they take its general, per-column path). The last slot is for a partial tile. Large
    // images (more than 64 positions) keep the per-tile taps: their rows take the fast path, and a table would
    // crowd L2.
    const int64_t positions =
        g->howo % NR == 0 && g->howo / NR <= 64 && n0 % NR == 0 && n1 - n0 > g->howo ? g->howo / NR : 0;
    float *bt = osk_ws_get(OSK_WS_TILE, (size_t)k * NR * sizeof(float));
    tap_t *table = osk_ws_get(OSK_WS_TAPS, (size_t)(positions + 1) * g->taps * sizeof(tap_t));
    if (!bt || !table) abort();
    for (int64_t q = 0; q < positions; q++) osk_tile_taps(g, q * NR, NR, table + q * g->taps);
    const int panels = (m + MR - 1) / MR;
    for (int64_t j0 = n0; j0 < n1; j0 += NR) {
        int nc = (int)(n1 - j0 < NR ? n1 - j0 : NR);
        if (fill && level != OSK_AVX2) fill_f32_columns(y, ldc, m, bias, j0, nc);   // AVX2: tile_f32_avx2 starts there
        const float *x = x0;
        tap_t *taps = table + positions * g->taps;
        if (positions && nc == NR) {
            const int64_t img = j0 / g->howo;
            taps = table + (j0 - img * g->howo) / NR * g->taps;
            x = x0 + img * g->h * g->w;
        } else {
            osk_tile_taps(g, j0, nc, taps);
        }
#if OSK_X86
        if (level == OSK_AVX512 && m <= 4 && nc == NR && g->taps <= 16) {
            int direct = 1;
            int64_t base[16];
            for (int t = 0; t < g->taps && direct; t++) {
                direct = taps[t].contiguous && taps[t].valid == 0xffffffffu;
                base[t] = taps[t].base;
            }
            if (direct) {
                float *crow[MR];
                for (int r = 0; r < MR; r++) crow[r] = r < m ? y + (int64_t)r * ldc + j0 : osk_dummy_rows[r];
                kernel_f32_direct4_avx512(g->c, g->taps, packed, x, g->plane, base, crow);
                continue;
            }
        }
        if (level == OSK_AVX512) pack_f32_avx512(g, taps, x, bt);
        else if (level == OSK_AVX2) pack_f32_avx2(g, taps, x, bt);
        else
#endif
            pack_f32_scalar(g, taps, x, bt);
#if OSK_X86
        if (level == OSK_AVX2) { tile_f32_avx2(k, packed, m, bt, y, ldc, j0, nc, fill, bias); continue; }
#endif
        for (int p = 0; p < panels; p++) {
            int mr = m - p * MR < MR ? m - p * MR : MR;
            float *crow[MR];
            for (int r = 0; r < MR; r++) crow[r] = r < mr ? y + (int64_t)(p * MR + r) * ldc + j0 : osk_dummy_rows[r];
            const float *a = packed + (size_t)p * k * MR;
#if OSK_X86
            if (level == OSK_AVX512) kernel_f32_avx512(k, a, bt, crow, mr, nc);
            else
#endif
                kernel_f32_scalar(k, a, bt, crow, mr, nc);
        }
    }
}

void osk_conv_f32(int level, const osk_conv *conv, const float *packed, const float *x,
                  int32_t n, int32_t h, int32_t w, float *y, int64_t n0, int64_t n1) {
    geo_t g = osk_make_geo(conv, n, h, w);
    run_f32(level, &g, packed, conv->out_channels, x, y, (int64_t)n * g.howo, n0, n1, 0, NULL);
}

void osk_conv_f32_init(int level, const osk_conv *conv, const float *packed, const float *bias, const float *x,
                       int32_t n, int32_t h, int32_t w, float *y, int64_t n0, int64_t n1) {
    geo_t g = osk_make_geo(conv, n, h, w);
    run_f32(level, &g, packed, conv->out_channels, x, y, (int64_t)n * g.howo, n0, n1, 1, bias);
}

// MARK: - narrow GEMMs (a few columns: time embeddings, batch-1 linear layers)
//
// Each output is the same fma chain as in the microkernels above (k ascending, from c's value), so a column gives
// the same bits whichever path computes it: batch invariance holds when a batch of 1 takes this path and a batch
// of 16 the tiled one. The tiled path packs a 32-column tile and runs 8x32 FMAs per k for 1 useful column.

static void gemv_f32_scalar(const float *packed, int32_t m, int32_t k, const float *b, int64_t ldb, float *c,
                            int64_t ldc, int64_t j) {
    for (int32_t row = 0; row < m; row++) {
        const float *a = packed + (size_t)(row / MR) * k * MR + row % MR;
        float acc = c[row * ldc + j];
        for (int32_t kk = 0; kk < k; kk++) acc = fmaf(a[(size_t)kk * MR], b[kk * ldb + j], acc);
        c[row * ldc + j] = acc;
    }
}

#if OSK_X86 && OSK_MR == 8
/// Four 8-row panels at a time, one ymm chain each (FMA latency hidden by the four chains).
AVX2 static void gemv_f32_avx2(const float *packed, int32_t m, int32_t k, const float *b, int64_t ldb, float *c,
                               int64_t ldc, int64_t j) {
    const int panels = (m + MR - 1) / MR;
    float tmp[4][MR];
    for (int p0 = 0; p0 < panels; p0 += 4) {
        const int np = panels - p0 < 4 ? panels - p0 : 4;
        __m256 acc[4];
        for (int q = 0; q < 4; q++) {
            for (int r = 0; r < MR; r++) {
                int row = (p0 + q) * MR + r;
                tmp[q][r] = q < np && row < m ? c[row * ldc + j] : 0.0f;
            }
            acc[q] = _mm256_loadu_ps(tmp[q]);
        }
        const float *a0 = packed + (size_t)p0 * k * MR;
        const size_t ps = (size_t)k * MR;
        if (np == 4) {
            for (int32_t kk = 0; kk < k; kk++) {
                __m256 x = _mm256_broadcast_ss(b + kk * ldb + j);
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a0 + kk * MR), x, acc[0]);
                acc[1] = _mm256_fmadd_ps(_mm256_loadu_ps(a0 + ps + kk * MR), x, acc[1]);
                acc[2] = _mm256_fmadd_ps(_mm256_loadu_ps(a0 + 2 * ps + kk * MR), x, acc[2]);
                acc[3] = _mm256_fmadd_ps(_mm256_loadu_ps(a0 + 3 * ps + kk * MR), x, acc[3]);
            }
        } else {
            for (int32_t kk = 0; kk < k; kk++) {
                __m256 x = _mm256_broadcast_ss(b + kk * ldb + j);
                for (int q = 0; q < np; q++) acc[q] = _mm256_fmadd_ps(_mm256_loadu_ps(a0 + q * ps + kk * MR), x, acc[q]);
            }
        }
        for (int q = 0; q < np; q++) {
            _mm256_storeu_ps(tmp[q], acc[q]);
            for (int r = 0; r < MR; r++) {
                int row = (p0 + q) * MR + r;
                if (row < m) c[row * ldc + j] = tmp[q][r];
            }
        }
    }
}
#endif

/// Columns below this go through the narrow path.
#define GEMV_COLUMNS 8

void osk_gemm_f32(int level, const float *packed, int32_t m, int32_t k, const float *b, int64_t ldb,
                  float *c, int64_t ldc, int64_t n0, int64_t n1) {
    if (n1 - n0 < GEMV_COLUMNS) {
        for (int64_t j = n0; j < n1; j++) {
#if OSK_X86 && OSK_MR == 8
            if (level >= OSK_AVX2) { gemv_f32_avx2(packed, m, k, b, ldb, c, ldc, j); continue; }
#endif
            gemv_f32_scalar(packed, m, k, b, ldb, c, ldc, j);
        }
        return;
    }
    // A GEMM is a 1x1 conv of one "image" of height 1 whose channel planes are ldb apart.
    osk_conv conv = {k, m, 1, 1, 1, 0, 0, 0, 0, 0};
    geo_t g = osk_make_geo(&conv, 1, 1, (int32_t)n1);
    g.plane = ldb;
    run_f32(level, &g, packed, m, b, c, ldc, n0, n1, 0, NULL);
}

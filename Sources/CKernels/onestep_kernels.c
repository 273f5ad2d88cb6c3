// Onestep CPU kernels (see include/onestep_kernels.h for layouts and the dimension legend).
//
// Design: implicit-GEMM convolution. For each tile of OSK_NR output columns the kernel builds the tile's
// slice of the im2col matrix, (K, NR), straight from the channel-major activation into a thread-local buffer
// that stays in L2, then runs every 8-row weight panel over it with an 8 x 32 register-blocked microkernel.
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

#include "onestep_isa.h"

#define MR OSK_MR
#define NR OSK_NR
#if OSK_X86
#define AVX512 OSK_AVX512_TARGET
#define AVX2 OSK_AVX2_TARGET
#endif
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

typedef struct {
    int32_t c, n, h, w, up;   // input as stored; up = 1 for a fused nearest 2x upsample
    int32_t hv, wv;           // input size seen by the conv (after upsample)
    int32_t kh, kw, taps, stride, pt, pl;
    int32_t ho, wo;
    int64_t howo, plane;      // plane = stride between channel planes (elements)
} geo_t;

static geo_t make_geo(const osk_conv *g, int32_t n, int32_t h, int32_t w) {
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

/// Per tap: source offsets of the tile's columns within a channel plane (-1 = padding or past the tile),
/// the bit mask of valid columns, and whether the valid offsets are base + column (a shifted copy).
typedef struct {
    int32_t off[NR];
    int64_t base;
    uint32_t valid;
    int contiguous;
} tap_t;

static void tile_taps(const geo_t *g, int64_t j0, int nc, tap_t *taps) {
    int32_t img[NR], oy[NR], ox[NR];
    for (int jj = 0; jj < nc; jj++) {
        int64_t j = j0 + jj, i = j / g->howo, r = j - i * g->howo;
        img[jj] = (int32_t)i; oy[jj] = (int32_t)(r / g->wo); ox[jj] = (int32_t)(r % g->wo);
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
    }
}

// MARK: - Thread-local workspace (grows once, then reused: a steady-state forward does not allocate)

typedef struct { void *p; size_t cap; } ws_t;
static _Thread_local ws_t ws_tile, ws_taps;

// The workspace lives as long as its thread: a pthread key's destructor frees it when the thread exits (server
// compute threads live for the process, but test servers and Dispatch's pool threads come and go).
static pthread_key_t ws_key;
static pthread_once_t ws_key_once = PTHREAD_ONCE_INIT;

static void ws_free_thread(void *unused) {
    (void)unused;
    free(ws_tile.p); ws_tile = (ws_t){0};
    free(ws_taps.p); ws_taps = (ws_t){0};
}

static void ws_make_key(void) { pthread_key_create(&ws_key, ws_free_thread); }

static void *ws_get(ws_t *ws, size_t bytes) {
    if (ws->cap < bytes) {
        if (ws_tile.p == NULL && ws_taps.p == NULL) {  // this thread's first workspace: register the destructor
            pthread_once(&ws_key_once, ws_make_key);
            pthread_setspecific(ws_key, (void *)1);
        }
        free(ws->p);
        size_t cap = (bytes + 4095) & ~(size_t)4095;
        ws->p = aligned_alloc(64, cap);
        ws->cap = ws->p ? cap : 0;
    }
    return ws->p;
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

AVX2 static inline __m256i mask8_avx2(uint32_t bits) {
    const __m256i pow2 = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)(bits & 0xff)), pow2), pow2);
}

AVX2 static void pack_f32_avx2(const geo_t *g, const tap_t *taps, const float *x, float *bt) {
    for (int c = 0; c < g->c; c++) {
        const float *p = x + (int64_t)c * g->plane;
        for (int t = 0; t < g->taps; t++) {
            const tap_t *tp = &taps[t];
            float *d = bt + ((size_t)c * g->taps + t) * NR;
            for (int v = 0; v < NR / 8; v++) {
                __m256i m = mask8_avx2(tp->valid >> (8 * v));
                __m256 val;
                if (tp->contiguous) val = _mm256_maskload_ps(p + tp->base + 8 * v, m);
                else val = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p,
                                                    _mm256_loadu_si256((const __m256i *)(tp->off + 8 * v)),
                                                    _mm256_castsi256_ps(m), 4);
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

/// 4 rows (stride MR in a) x 16 columns (stride NR in bt).
AVX2 static void kernel_f32_avx2_4x16(int k, const float *a, const float *bt, float *const crow[4], __m256i m0, __m256i m1) {
#define LOADC(r) __m256 c##r##0 = _mm256_maskload_ps(crow[r], m0), c##r##1 = _mm256_maskload_ps(crow[r] + 8, m1);
    LOADC(0) LOADC(1) LOADC(2) LOADC(3)
    for (int kk = 0; kk < k; kk++) {
        __m256 b0 = _mm256_load_ps(bt), b1 = _mm256_load_ps(bt + 8);
#define STEP(r) { __m256 av = _mm256_broadcast_ss(a + r); c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0); c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1); }
        STEP(0) STEP(1) STEP(2) STEP(3)
        a += MR; bt += NR;
    }
#define STOREC(r) _mm256_maskstore_ps(crow[r], m0, c##r##0); _mm256_maskstore_ps(crow[r] + 8, m1, c##r##1);
    STOREC(0) STOREC(1) STOREC(2) STOREC(3)
#undef LOADC
#undef STEP
#undef STOREC
}

AVX2 static void kernel_f32_avx2(int k, const float *a, const float *bt, float *const crow[MR], int mr, int nc) {
    uint32_t cols = nc >= 32 ? 0xffffffffu : (1u << nc) - 1;
    for (int h = 0; h < 2 && 16 * h < nc; h++) {
        __m256i m0 = mask8_avx2(cols >> (16 * h)), m1 = mask8_avx2(cols >> (16 * h + 8));
        for (int rg = 0; rg < 2 && 4 * rg < mr; rg++) {
            float *rows[4];
            for (int r = 0; r < 4; r++) rows[r] = crow[4 * rg + r] + 16 * h;
            kernel_f32_avx2_4x16(k, a + 4 * rg, bt + 16 * h, rows, m0, m1);
        }
    }
}
#endif

// MARK: - fp32 drivers

/// Rows of a panel past M point here: computed (their weights are 0) but never read back.
static _Thread_local float dummy_rows[MR][NR];

static void run_f32(int level, const geo_t *g, const float *packed, int32_t m, const float *x,
                    float *y, int64_t ldc, int64_t n0, int64_t n1) {
    const int k = g->c * g->taps;
    float *bt = ws_get(&ws_tile, (size_t)k * NR * sizeof(float));
    tap_t *taps = ws_get(&ws_taps, (size_t)g->taps * sizeof(tap_t));
    if (!bt || !taps) abort();
    const int panels = (m + MR - 1) / MR;
    for (int64_t j0 = n0; j0 < n1; j0 += NR) {
        int nc = (int)(n1 - j0 < NR ? n1 - j0 : NR);
        tile_taps(g, j0, nc, taps);
#if OSK_X86
        if (level == OSK_AVX512) pack_f32_avx512(g, taps, x, bt);
        else if (level == OSK_AVX2) pack_f32_avx2(g, taps, x, bt);
        else
#endif
            pack_f32_scalar(g, taps, x, bt);
        for (int p = 0; p < panels; p++) {
            int mr = m - p * MR < MR ? m - p * MR : MR;
            float *crow[MR];
            for (int r = 0; r < MR; r++) crow[r] = r < mr ? y + (int64_t)(p * MR + r) * ldc + j0 : dummy_rows[r];
            const float *a = packed + (size_t)p * k * MR;
#if OSK_X86
            if (level == OSK_AVX512) kernel_f32_avx512(k, a, bt, crow, mr, nc);
            else if (level == OSK_AVX2) kernel_f32_avx2(k, a, bt, crow, mr, nc);
            else
#endif
                kernel_f32_scalar(k, a, bt, crow, mr, nc);
        }
    }
}

void osk_conv_f32(int level, const osk_conv *conv, const float *packed, const float *x,
                  int32_t n, int32_t h, int32_t w, float *y, int64_t n0, int64_t n1) {
    geo_t g = make_geo(conv, n, h, w);
    run_f32(level, &g, packed, conv->out_channels, x, y, (int64_t)n * g.howo, n0, n1);
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
    geo_t g = make_geo(&conv, 1, 1, (int32_t)n1);
    g.plane = ldb;
    run_f32(level, &g, packed, m, b, c, ldc, n0, n1);
}

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

typedef struct {
    uint32_t zp4[NR];   // the column's image zero point in all 4 bytes (value of padding)
    int32_t zp[NR];     // the column's image zero point
    float scale[NR];    // the column's image activation scale
} qcols_t;

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
AVX512 static void kernel_q8_avx512(int k4, const int32_t *a, const uint32_t *bt, const int32_t *rowsum, const float *wscale,
                                    const qcols_t *qc, float *const crow[MR], int mr, int nc) {
    (void)mr;
    __mmask16 m0 = (__mmask16)(nc >= 16 ? 0xffff : (1u << nc) - 1);
    __mmask16 m1 = (__mmask16)(nc >= 32 ? 0xffff : nc > 16 ? (1u << (nc - 16)) - 1 : 0);
#define ZERO(r) __m512i c##r##0 = _mm512_setzero_si512(), c##r##1 = _mm512_setzero_si512();
    ZERO(0) ZERO(1) ZERO(2) ZERO(3) ZERO(4) ZERO(5) ZERO(6) ZERO(7)
    for (int kq = 0; kq < k4; kq++) {
        __m512i b0 = _mm512_load_si512(bt), b1 = _mm512_load_si512(bt + 16);
#define STEP(r) { __m512i av = _mm512_set1_epi32(a[r]); c##r##0 = _mm512_dpbusd_epi32(c##r##0, b0, av); c##r##1 = _mm512_dpbusd_epi32(c##r##1, b1, av); }
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
        a += MR; bt += NR;
    }
    const __m512i zp0 = _mm512_loadu_si512(qc->zp), zp1 = _mm512_loadu_si512(qc->zp + 16);
    const __m512 s0 = _mm512_loadu_ps(qc->scale), s1 = _mm512_loadu_ps(qc->scale + 16);
#define OUT(r) { \
        __m512i rs = _mm512_set1_epi32(rowsum[r]); __m512 ws = _mm512_set1_ps(wscale[r]); \
        __m512 f0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(c##r##0, _mm512_mullo_epi32(zp0, rs))); \
        __m512 f1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(c##r##1, _mm512_mullo_epi32(zp1, rs))); \
        _mm512_mask_storeu_ps(crow[r], m0, _mm512_fmadd_ps(f0, _mm512_mul_ps(ws, s0), _mm512_maskz_loadu_ps(m0, crow[r]))); \
        _mm512_mask_storeu_ps(crow[r] + 16, m1, _mm512_fmadd_ps(f1, _mm512_mul_ps(ws, s1), _mm512_maskz_loadu_ps(m1, crow[r] + 16))); }
    OUT(0) OUT(1) OUT(2) OUT(3) OUT(4) OUT(5) OUT(6) OUT(7)
#undef ZERO
#undef STEP
#undef OUT
}

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

void osk_conv_q8(int level, const osk_conv *conv, const int32_t *packed, const int32_t *rowsum,
                 const float *wscale, const uint32_t *xq, const float *xscale, const int32_t *xzp,
                 int32_t n, int32_t h, int32_t w, float *y, int64_t n0, int64_t n1) {
    geo_t g = make_geo(conv, n, h, w);
    const int m = conv->out_channels, k4 = (g.c + 3) / 4 * g.taps, panels = (m + MR - 1) / MR;
    const int64_t ldc = (int64_t)n * g.howo;
    uint32_t *bt = ws_get(&ws_tile, (size_t)k4 * NR * sizeof(uint32_t));
    tap_t *taps = ws_get(&ws_taps, (size_t)g.taps * sizeof(tap_t));
    if (!bt || !taps) abort();
    qcols_t qc;
    for (int64_t j0 = n0; j0 < n1; j0 += NR) {
        int nc = (int)(n1 - j0 < NR ? n1 - j0 : NR);
        tile_taps(&g, j0, nc, taps);
        for (int jj = 0; jj < NR; jj++) {
            int32_t i = jj < nc ? (int32_t)((j0 + jj) / g.howo) : -1;
            qc.zp[jj] = i >= 0 ? xzp[i] : 0;
            qc.zp4[jj] = (uint32_t)qc.zp[jj] * 0x01010101u;
            qc.scale[jj] = i >= 0 ? xscale[i] : 0;
        }
#if OSK_X86
        if (level == OSK_AVX512) pack_q8_avx512(&g, taps, &qc, xq, bt);
        else if (level == OSK_AVX2) pack_q8_avx2(&g, taps, &qc, xq, bt);
        else
#endif
            pack_q8_scalar(&g, taps, &qc, xq, bt);
        for (int p = 0; p < panels; p++) {
            int mr = m - p * MR < MR ? m - p * MR : MR;
            float *crow[MR];
            for (int r = 0; r < MR; r++) crow[r] = r < mr ? y + (int64_t)(p * MR + r) * ldc + j0 : dummy_rows[r];
            const int32_t *a = packed + (size_t)p * k4 * MR;
#if OSK_X86
            if (level == OSK_AVX512) kernel_q8_avx512(k4, a, bt, rowsum + p * MR, wscale + p * MR, &qc, crow, mr, nc);
            else if (level == OSK_AVX2) kernel_q8_avx2(k4, a, bt, rowsum + p * MR, wscale + p * MR, &qc, crow, mr, nc);
            else
#endif
                kernel_q8_scalar(k4, a, bt, rowsum + p * MR, wscale + p * MR, &qc, crow, mr, nc);
        }
    }
}

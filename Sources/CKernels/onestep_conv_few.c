// fp32 3x3 convolutions (stride 1, padding 1, no upsampling) with at most 4 outputs on AVX-512: the decoders'
// conv_out (TAESD 64 -> 3 and the SD VAE's 128 -> 3, at 512x512), chosen by osk_conv_f32 for those layers.
//
// Why: the tile driver of onestep_kernels.c reads a tile's rows in place, one per (channel, tap), and the
// channel planes of a 512x512 map are 1 MiB apart, so the 64 rows of one tap fall in one L1 set and one L2 set
// (the set index repeats every 64 KiB): every load missed both. TAESD's conv_out (0.9 GFLOP) took 25 ms, 8% of
// the int8 decoder, at 36 GFLOP/s. Here each input row is copied once into a ring of three rows per channel
// (row stride 3 x W + padding floats, not a power of two), zero columns either side and zero rows above and
// below the image, and 64 output columns x 4 outputs (16 zmm) accumulate over (channel, tap) from the ring.
//
// Bits: each output is the same fma chain as in the tile kernels (k = channel * 9 + tap ascending, tap = ky * 3
// + kx, starting from y's value, padding taps multiplied as 0), so the result equals every other level's
// (FewOutputConvTests against the scalar level, the reference and the tile driver).
#include "onestep_conv_internal.h"

#include <stdlib.h>
#include <string.h>

/// On unless ONESTEP_F32_FEW=0 at start-up or osk_conv_f32_few_set_enabled(0); -1: not read yet.
static int few_enabled = -1;

void osk_conv_f32_few_set_enabled(int on) { __atomic_store_n(&few_enabled, on ? 1 : 0, __ATOMIC_RELAXED); }

static int few_on(void) {
    int v = __atomic_load_n(&few_enabled, __ATOMIC_RELAXED);
    if (v < 0) {
        const char *e = getenv("ONESTEP_F32_FEW");
        v = !(e && e[0] == '0');   // threads racing here store the same value
        __atomic_store_n(&few_enabled, v, __ATOMIC_RELAXED);
    }
    return v;
}

int osk_conv_f32_few_applies(int level, const geo_t *g, int m) {
    return OSK_X86 && level == OSK_AVX512 && few_on() && m <= 4 && g->kh == 3 && g->kw == 3 && g->stride == 1
        && g->pt == 1 && g->pl == 1 && !g->up && g->ho == g->h && g->wo == g->w;
}

#if OSK_X86

#define FEW_COLS 64   // output columns per step: 4 vectors

/// Ring slot `slot` of every channel = input row iy of image img (zeros outside the image), with a zero column
/// either side: ring[(ch * 3 + slot) * rs + 1 + x] = x[ch][img][iy][x].
static void few_fill(const geo_t *g, const float *x, int64_t img, int iy, int slot, float *ring, int rs) {
    for (int ch = 0; ch < g->c; ch++) {
        float *d = ring + ((size_t)ch * 3 + slot) * rs;
        if (iy < 0 || iy >= g->h) { memset(d, 0, (size_t)rs * sizeof(float)); continue; }
        d[0] = 0.0f;
        memcpy(d + 1, x + (int64_t)ch * g->plane + img * g->h * g->w + (int64_t)iy * g->w, (size_t)g->w * sizeof(float));
        memset(d + 1 + g->w, 0, (size_t)(rs - 1 - g->w) * sizeof(float));
    }
}

/// Output columns ox..<ox+nc (nc <= 64) of one output row, rows y0 + r * ldc (r < m), from the ring slots of
/// input rows oy - 1, oy, oy + 1.
AVX512 static void few_step(int c, const float *packed, int m, const float *ring, int rs, const int slot[3], int ox, int nc,
                            float *y0, int64_t ldc) {
    __mmask16 mk[4];
    for (int v = 0; v < 4; v++) {
        const int left = nc - 16 * v;
        mk[v] = (__mmask16)(left >= 16 ? 0xffff : left > 0 ? (1u << left) - 1 : 0);
    }
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int v = 0; v < 4; v++) acc[r][v] = r < m ? _mm512_maskz_loadu_ps(mk[v], y0 + r * ldc + ox + 16 * v) : _mm512_setzero_ps();
    const float *a = packed;
    for (int ch = 0; ch < c; ch++) {
        for (int ky = 0; ky < 3; ky++) {
            const float *row = ring + ((size_t)ch * 3 + slot[ky]) * rs + ox;   // + kx: input column ox - 1 + kx
            for (int kx = 0; kx < 3; kx++) {
                __m512 b[4];
                for (int v = 0; v < 4; v++) b[v] = _mm512_maskz_loadu_ps(mk[v], row + kx + 16 * v);
                for (int r = 0; r < 4; r++) {
                    const __m512 av = _mm512_set1_ps(a[r]);
                    for (int v = 0; v < 4; v++) acc[r][v] = _mm512_fmadd_ps(av, b[v], acc[r][v]);
                }
                a += MR;
            }
        }
    }
    for (int r = 0; r < m; r++)
        for (int v = 0; v < 4; v++) _mm512_mask_storeu_ps(y0 + r * ldc + ox + 16 * v, mk[v], acc[r][v]);
}

AVX512 void osk_conv_f32_few_avx512(const geo_t *g, const float *packed, int m, const float *x, float *y, int64_t ldc,
                                    int64_t n0, int64_t n1) {
    const int rs = (g->w + 2 + 15) / 16 * 16;
    float *ring = osk_ws_get(OSK_WS_TILE, (size_t)g->c * 3 * rs * sizeof(float));
    if (!ring) abort();
    int64_t have_img[3] = { -1, -1, -1 };
    int have_row[3] = { 0, 0, 0 };
    for (int64_t j = n0; j < n1;) {
        const int64_t img = j / g->howo;
        const int oy = (int)(j % g->howo / g->w), ox0 = (int)(j % g->w);
        const int ox1 = n1 - j < g->w - ox0 ? ox0 + (int)(n1 - j) : g->w;
        int slot[3];
        for (int ky = 0; ky < 3; ky++) {
            const int iy = oy - 1 + ky, s = (iy + 3) % 3;
            if (have_img[s] != img || have_row[s] != iy) {
                few_fill(g, x, img, iy, s, ring, rs);
                have_img[s] = img;
                have_row[s] = iy;
            }
            slot[ky] = s;
        }
        float *y0 = y + img * g->howo + (int64_t)oy * g->w;
        for (int ox = ox0; ox < ox1; ox += FEW_COLS)
            few_step(g->c, packed, m, ring, rs, slot, ox, ox1 - ox < FEW_COLS ? ox1 - ox : FEW_COLS, y0, ldc);
        j += ox1 - ox0;
    }
}

#endif

// Internals shared by the convolution kernel files (onestep_kernels.c: fp32; onestep_conv_q8.c: int8): the
// geometry of one call, per-tile source tables and the thread-local workspaces. Not part of the public header.
#ifndef ONESTEP_CONV_INTERNAL_H
#define ONESTEP_CONV_INTERNAL_H

#include "onestep_kernels.h"
#include "onestep_isa.h"

#define MR OSK_MR
#define NR OSK_NR
#if OSK_X86
#define AVX512 OSK_AVX512_TARGET
#define AVX2 OSK_AVX2_TARGET
#endif

typedef struct {
    int32_t c, n, h, w, up;   // input as stored; up = 1 for a fused nearest 2x upsample
    int32_t hv, wv;           // input size seen by the conv (after upsample)
    int32_t kh, kw, taps, stride, pt, pl;
    int32_t ho, wo;
    int64_t howo, plane;      // plane = stride between channel planes (elements)
} geo_t;

/// Per tap: source offsets of the tile's columns within a channel plane (-1 = padding or past the tile),
/// the bit mask of valid columns, and whether the valid offsets are base + column (a shifted copy).
typedef struct {
    int32_t off[NR];
    int64_t base;
    uint32_t valid;
    int contiguous;
    /// A nearest-2x-upsampled row read (one-row stride-1 tiles): valid column jj reads pbase + ((jj + odd) >> 1),
    /// so the int8 packer loads the source words once and duplicates them with a permute instead of a gather.
    int pairs, odd;
    int64_t pbase;
} tap_t;

geo_t osk_make_geo(const osk_conv *g, int32_t n, int32_t h, int32_t w);

/// The int8 convs' per-column quantization parameters of one tile (the image each column belongs to).
typedef struct {
    uint32_t zp4[NR];   // the column's image zero point in all 4 bytes (value of padding)
    int32_t zp[NR];     // the column's image zero point
    float scale[NR];    // the column's image activation scale
} osk_qcols;
/// Fills qc for output columns j0..<j0+nc (nc <= NR; columns past nc: zero point 0, scale 0). onestep_conv_q8.c.
void osk_q8_tile_cols(const geo_t *g, int64_t j0, int nc, const float *xscale, const int32_t *xzp, osk_qcols *qc);
/// Fills taps[0..<g->taps] for the output columns j0..<j0+nc (nc <= NR).
void osk_tile_taps(const geo_t *g, int64_t j0, int nc, tap_t *taps);

/// Thread-local workspaces, grown once and reused (a steady-state forward does not allocate); freed when the
/// thread exits.
enum { OSK_WS_TILE, OSK_WS_TAPS, OSK_WS_BLOCK, OSK_WS_ACC, OSK_WS_COUNT };
/// At least `bytes` of 64-byte aligned workspace number `which` of the calling thread (NULL when out of memory).
void *osk_ws_get(int which, size_t bytes);

/// Rows of a panel past M point here: computed (their weights are 0) but never read back.
extern _Thread_local float osk_dummy_rows[MR][NR];

/// onestep_linear_q8.c: whether a conv is a 1x1 stride-1 unpadded one without upsampling that the AVX-512 linear
/// driver takes (and that driver is on), and the driver (the arguments of osk_conv_q8_fused).
int osk_linear_q8_applies(const osk_conv *c);
#if OSK_X86
void osk_linear_q8_avx512(const osk_conv *conv, const int32_t *packed, const int32_t *rowsum, const float *wscale,
                          const uint32_t *xq, const float *xscale, const int32_t *xzp, int32_t n, int32_t h, int32_t w,
                          float *y, int64_t n0, int64_t n1, int32_t m0, int32_t m1, const osk_q8_epilogue *ep);
#endif

/// onestep_conv_q8_avx2.c: the avx2 level's int8 conv driver (osk_conv_q8_fused's arguments as run_q8_tiles takes
/// them), and the activation range / codes of osk_q8_range / osk_q8_encode at that level.
#if OSK_X86
void osk_conv_q8_avx2(const geo_t *g, const int32_t *packed, const int32_t *rowsum, const float *wscale,
                      const uint32_t *xq, const float *xscale, const int32_t *xzp, int m, float *y, int64_t ldc,
                      int64_t n0, int64_t n1, int p0, int p1, const osk_q8_epilogue *ep);
void osk_q8_range_avx2(const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t j0, int32_t j1,
                       float *lo_io, float *hi_io);
void osk_q8_encode_avx2(const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t j0, int32_t j1,
                        uint32_t *xq, float inv, int32_t zp);
#endif

/// onestep_conv_few.c: whether the fp32 3x3 stride-1 pad-1 conv of m <= 4 outputs runs on its AVX-512 ring
/// kernel at `level` (and that kernel is on), and the kernel (run_f32's arguments).
int osk_conv_f32_few_applies(int level, const geo_t *g, int m);
#if OSK_X86
void osk_conv_f32_few_avx512(const geo_t *g, const float *packed, int m, const float *x, float *y, int64_t ldc,
                             int64_t n0, int64_t n1);
#endif

#if OSK_X86
AVX2 static inline __m256i mask8_avx2(uint32_t bits) {
    const __m256i pow2 = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)(bits & 0xff)), pow2), pow2);
}
#endif

#endif

// int8 linear layers (see include/onestep_kernels.h, "int8 linear"): Y (rows, N) = X (rows, K) W^T + bias in the
// row-major layout of nn.Linear / transformers (tokens x features), for attention projections, feed-forward and
// text-encoder layers.
//
// Quantization: each row of X (one token of one image, or one pixel) gets its own uint8 scale and zero point,
// so a row's result never depends on the other rows (batch invariance); W is symmetric int8 per output channel.
// Sums are exact int32 (vpdpbusd: u8 x s8, 4 products per lane), so every level gives the same integers, and the
// dequantization y = fmaf((float)(acc - zp * rowsum), s_x * s_w, bias) is the same float arithmetic on every
// level: avx512, avx2 and scalar outputs are bit-identical.
//
// Packing: W in panels of 32 output channels, [ceil(N/32)][K4][32] int32 words, each word 4 codes (k = 4q..4q+3),
// pad outputs and pad k zero. X codes [rows][K4] words, pad k = the row's zero point (times a zero weight).
// AVX-512 microkernel: 6 rows x 32 outputs, 12 accumulators (enough independent chains to cover the
// vpdpbusd latency), per k quad 2 weight loads + 6 broadcasts + 12 vpdpbusd.
#include "onestep_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "onestep_conv_internal.h"
#include "onestep_isa.h"
#include "onestep_q8_avx2.h"

#define LNR 32  // output channels per panel
#define LMR 6   // rows per microkernel

size_t osk_lq8_packed_count(int32_t n, int32_t k) { return (size_t)((n + LNR - 1) / LNR) * LNR * (size_t)((k + 3) / 4); }

void osk_lq8_pack(const int8_t *w, int32_t n, int32_t k, int32_t *packed, int32_t *rowsum) {
    const int32_t k4 = (k + 3) / 4, panels = (n + LNR - 1) / LNR;
    memset(packed, 0, osk_lq8_packed_count(n, k) * sizeof(int32_t));
    memset(rowsum, 0, (size_t)panels * LNR * sizeof(int32_t));
    uint8_t *bytes = (uint8_t *)packed;
    for (int32_t o = 0; o < n; o++) {
        int32_t sum = 0;
        for (int32_t kk = 0; kk < k; kk++) {
            int8_t c = w[(size_t)o * k + kk];
            sum += c;
            size_t word = ((size_t)(o / LNR) * k4 + kk / 4) * LNR + o % LNR;
            bytes[word * 4 + kk % 4] = (uint8_t)c;
        }
        rowsum[o] = sum;
    }
}

#if OSK_X86
/// Row minimum and maximum (with 0) and the codes of one row: the same values as the scalar loops (min/max are
/// exact; cvtps rounds to nearest even under the default MXCSR, as lrintf does).
OSK_AVX512_TARGET static void row_range_avx512(const float *row, int32_t k, float *lo, float *hi) {
    __m512 vlo = _mm512_setzero_ps(), vhi = _mm512_setzero_ps();
    for (int32_t kk = 0; kk < k; kk += 16) {
        __mmask16 m = (__mmask16)(k - kk >= 16 ? 0xffff : (1u << (k - kk)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, row + kk);  // masked lanes read 0, which the range holds anyway
        vlo = _mm512_min_ps(vlo, v);
        vhi = _mm512_max_ps(vhi, v);
    }
    *lo = _mm512_reduce_min_ps(vlo);
    *hi = _mm512_reduce_max_ps(vhi);
}

OSK_AVX512_TARGET static void row_codes_avx512(const float *row, int32_t k, float inv, int32_t z, uint8_t *q) {
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i vz = _mm512_set1_epi32(z), zero = _mm512_setzero_si512(), top = _mm512_set1_epi32(255);
    int32_t kk = 0;
    for (; kk + 16 <= k; kk += 16) {
        __m512i c = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + kk), vinv)), vz);
        c = _mm512_min_epi32(_mm512_max_epi32(c, zero), top);
        _mm_storeu_si128((__m128i *)(q + kk), _mm512_cvtepi32_epi8(c));
    }
    for (; kk < k; kk++) {
        int32_t c = (int32_t)lrintf(row[kk] * inv) + z;
        q[kk] = (uint8_t)(c < 0 ? 0 : c > 255 ? 255 : c);
    }
}

/// row_range_avx512 / row_codes_avx512 on 8 lanes (the CPUs without AVX-512): the same values.
OSK_AVX2_TARGET static void row_range_avx2(const float *row, int32_t k, float *lo, float *hi) {
    __m256 vlo = _mm256_setzero_ps(), vhi = _mm256_setzero_ps();
    q8_minmax_avx2(row, k, &vlo, &vhi);
    q8_reduce_minmax_avx2(vlo, vhi, lo, hi);
}

OSK_AVX2_TARGET static void row_codes_avx2(const float *row, int32_t k, float inv, int32_t z, uint8_t *q) {
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i vz = _mm256_set1_epi32(z), zero = _mm256_setzero_si256(), top = _mm256_set1_epi32(255);
    const __m256i bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                           0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    int32_t kk = 0;
    for (; kk + 8 <= k; kk += 8) {
        __m256i c = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + kk), vinv)), vz);
        c = _mm256_shuffle_epi8(_mm256_min_epi32(_mm256_max_epi32(c, zero), top), bytes);   // low byte of each lane
        const uint32_t lo4 = (uint32_t)_mm256_cvtsi256_si32(c), hi4 = (uint32_t)_mm_cvtsi128_si32(_mm256_extracti128_si256(c, 1));
        memcpy(q + kk, &lo4, 4);
        memcpy(q + kk + 4, &hi4, 4);
    }
    for (; kk < k; kk++) {
        int32_t c = (int32_t)lrintf(row[kk] * inv) + z;
        q[kk] = (uint8_t)(c < 0 ? 0 : c > 255 ? 255 : c);
    }
}
#endif

void osk_lq8_quantize(const float *x, int32_t rows, int32_t k, int64_t ldx, uint32_t *xq, float *scale, int32_t *zp) {
    const int32_t k4 = (k + 3) / 4;
#if OSK_X86
    const int fast = osk_level_supported(OSK_AVX512), fast2 = !fast && osk_level_supported(OSK_AVX2);
#endif
    for (int32_t r = 0; r < rows; r++) {
        const float *row = x + (size_t)r * ldx;
        float lo = 0, hi = 0;  // the range holds 0, so 0 is exact
#if OSK_X86
        if (fast) {
            row_range_avx512(row, k, &lo, &hi);
        } else if (fast2) {
            row_range_avx2(row, k, &lo, &hi);
        } else
#endif
        for (int32_t kk = 0; kk < k; kk++) { lo = fminf(lo, row[kk]); hi = fmaxf(hi, row[kk]); }
        float s = (hi - lo) / 255.0f;
        if (!(s > 0)) s = 1;
        float inv = 1.0f / s;
        int32_t z = (int32_t)lrintf(-lo * inv);
        if (z < 0) z = 0;
        if (z > 255) z = 255;
        scale[r] = s;
        zp[r] = z;
        uint8_t *q = (uint8_t *)(xq + (size_t)r * k4);
#if OSK_X86
        if (fast || fast2) {
            if (fast) row_codes_avx512(row, k, inv, z, q);
            else row_codes_avx2(row, k, inv, z, q);
            for (int32_t kk = k; kk < 4 * k4; kk++) q[kk] = (uint8_t)z;
            continue;
        }
#endif
        for (int32_t kk = 0; kk < 4 * k4; kk++) {
            int32_t c = z;
            if (kk < k) {
                c = (int32_t)lrintf(row[kk] * inv) + z;
                c = c < 0 ? 0 : c > 255 ? 255 : c;
            }
            q[kk] = (uint8_t)c;
        }
    }
}

/// y = fmaf((float)(acc - zp * rowsum), s_x * s_w, bias): the one dequantization every level does.
static inline float dequant(int32_t acc, int32_t zp, int32_t rowsum, float sx, float sw, float bias) {
    return fmaf((float)(acc - zp * rowsum), sx * sw, bias);
}

static void block_scalar(int32_t k4, const uint32_t *const xr[LMR], const int32_t *wp, int32_t acc[LMR][LNR]) {
    for (int r = 0; r < LMR; r++)
        for (int j = 0; j < LNR; j++) {
            int32_t s = 0;
            for (int32_t q = 0; q < k4; q++) {
                uint32_t xw = xr[r][q];
                int32_t ww = wp[(size_t)q * LNR + j];
                for (int b = 0; b < 4; b++) s += (int32_t)((xw >> (8 * b)) & 0xff) * (int32_t)(int8_t)(ww >> (8 * b));
            }
            acc[r][j] = s;
        }
}

#if OSK_X86
OSK_AVX512_TARGET static void block_avx512(int32_t k4, const uint32_t *const xr[LMR], const int32_t *wp, int32_t acc[LMR][LNR]) {
#define ZERO(r) __m512i c##r##0 = _mm512_setzero_si512(), c##r##1 = _mm512_setzero_si512();
    ZERO(0) ZERO(1) ZERO(2) ZERO(3) ZERO(4) ZERO(5)
    const uint32_t *x0 = xr[0], *x1 = xr[1], *x2 = xr[2], *x3 = xr[3], *x4 = xr[4], *x5 = xr[5];
    for (int32_t q = 0; q < k4; q++) {
        __m512i w0 = _mm512_loadu_si512(wp), w1 = _mm512_loadu_si512(wp + 16);
#define STEP(r) { __m512i a = _mm512_set1_epi32((int32_t)x##r[q]); \
                  c##r##0 = _mm512_dpbusd_epi32(c##r##0, a, w0); c##r##1 = _mm512_dpbusd_epi32(c##r##1, a, w1); }
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5)
        wp += LNR;
    }
#define STORE(r) _mm512_storeu_si512(acc[r], c##r##0); _mm512_storeu_si512(acc[r] + 16, c##r##1);
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5)
#undef ZERO
#undef STEP
#undef STORE
}

/// The dequantization of one block in vector form: the same fused multiply-add as dequant() (one rounding), so
/// identical bits; a scalar fmaf here would be a libm call per output (this file is compiled for baseline x86-64).
OSK_AVX512_TARGET static void store_avx512(int32_t acc[LMR][LNR], int mr, int nc, const int32_t *rowsum, const float *wscale,
                                           const float *bias, const float *xscale, const int32_t *xzp, float *const out[LMR]) {
    for (int h = 0; h < 2; h++) {
        int cnt = nc - 16 * h;
        if (cnt <= 0) break;
        __mmask16 m = (__mmask16)(cnt >= 16 ? 0xffff : (1u << cnt) - 1);
        __m512i rs = _mm512_maskz_loadu_epi32(m, rowsum + 16 * h);
        __m512 ws = _mm512_maskz_loadu_ps(m, wscale + 16 * h);
        __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + 16 * h) : _mm512_setzero_ps();
        for (int r = 0; r < mr; r++) {
            __m512i a = _mm512_loadu_si512(acc[r] + 16 * h);
            __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(a, _mm512_mullo_epi32(_mm512_set1_epi32(xzp[r]), rs)));
            _mm512_mask_storeu_ps(out[r] + 16 * h, m, _mm512_fmadd_ps(f, _mm512_mul_ps(_mm512_set1_ps(xscale[r]), ws), b));
        }
    }
}

/// The avx2 level (no vpdpbusd): onestep_q8_avx2.h's 4 x 8 kernel on operands widened to int16 once, rows of X
/// broadcast and 8 outputs of W per vector. Rows in chunks of LQ2_ROWS, their codes widened ([row][K4][4] int16, a
/// plain zero extension); per chunk, each 32-output panel of W widened ([8-output tile][K4][32] int16) and run over
/// the chunk's rows. The dequantization is store_avx512's: fmaf((float)(acc - zp * rowsum), s_x * s_w, bias).
#define LQ2_ROWS 48
OSK_AVX2_TARGET static void gemm_avx2(const uint32_t *xq, const float *xscale, const int32_t *xzp, int32_t k4,
                                      const int32_t *packed, const int32_t *rowsum, const float *wscale, const float *bias,
                                      int32_t n, float *y, int64_t ldy, int32_t r0, int32_t r1) {
    const int32_t panels = (n + LNR - 1) / LNR;
    int16_t *xw = osk_ws_get(OSK_WS_ACC, (size_t)LQ2_ROWS * k4 * 4 * sizeof(int16_t));
    int16_t *ww = osk_ws_get(OSK_WS_BLOCK, (size_t)k4 * LNR * 4 * sizeof(int16_t));
    if (!xw || !ww) abort();
    for (int32_t rc = r0; rc < r1; rc += LQ2_ROWS) {
        const int rows = r1 - rc < LQ2_ROWS ? r1 - rc : LQ2_ROWS, groups = (rows + 3) / 4;
        for (int r = 0; r < 4 * groups; r++) {   // rows past the chunk repeat its first row (computed, never stored)
            const uint8_t *src = (const uint8_t *)(xq + (size_t)(rc + (r < rows ? r : 0)) * k4);
            int16_t *d = xw + (size_t)r * k4 * 4;
            int32_t q = 0;
            for (; q + 4 <= k4; q += 4) _mm256_storeu_si256((__m256i *)(d + 4 * q), _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(src + 4 * q))));
            for (; q < k4; q++) _mm_storel_epi64((__m128i *)(d + 4 * q), _mm_cvtepu8_epi16(_mm_cvtsi32_si128(*(const int32_t *)(src + 4 * q))));
        }
        for (int32_t p = 0; p < panels; p++) {
            const int32_t *wp = packed + (size_t)p * k4 * LNR;
            const int nc = n - p * LNR < LNR ? n - p * LNR : LNR, subs = (nc + 7) / 8;
            for (int32_t q = 0; q < k4; q++)
                for (int t = 0; t < subs; t++) {
                    int16_t *d = ww + ((size_t)t * k4 + q) * 32;
                    const __m128i *src = (const __m128i *)(wp + (size_t)q * LNR + 8 * t);
                    _mm256_store_si256((__m256i *)d, _mm256_cvtepi8_epi16(_mm_loadu_si128(src)));
                    _mm256_store_si256((__m256i *)(d + 16), _mm256_cvtepi8_epi16(_mm_loadu_si128(src + 1)));
                }
            for (int t = 0; t < subs; t++) {
                const int o0 = p * LNR + 8 * t, cnt = nc - 8 * t < 8 ? nc - 8 * t : 8;
                const __m256i m = q8_mask_first_avx2(cnt);
                const __m256i rs = _mm256_maskload_epi32(rowsum + o0, m);
                const __m256 ws = _mm256_maskload_ps(wscale + o0, m);
                const __m256 b = bias ? _mm256_maskload_ps(bias + o0, m) : _mm256_setzero_ps();
                for (int g = 0; g < groups; g++) {
                    __m256i sum[4];
                    q8_sums_4x8_avx2((int)k4, xw + (size_t)4 * g * k4 * 4, (int64_t)k4 * 4, 4, ww + (size_t)t * k4 * 32, sum);
                    for (int r = 0; r < 4 && 4 * g + r < rows; r++) {
                        const int row = rc + 4 * g + r;
                        const __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(sum[r], _mm256_mullo_epi32(_mm256_set1_epi32(xzp[row]), rs)));
                        _mm256_maskstore_ps(y + (size_t)row * ldy + o0, m, _mm256_fmadd_ps(f, _mm256_mul_ps(_mm256_set1_ps(xscale[row]), ws), b));
                    }
                }
            }
        }
    }
}
#endif

void osk_lq8_gemm(int level, const uint32_t *xq, const float *xscale, const int32_t *xzp, int32_t rows, int32_t k,
                  const int32_t *packed, const int32_t *rowsum, const float *wscale, const float *bias, int32_t n,
                  float *y, int64_t ldy, int32_t r0, int32_t r1) {
    const int32_t k4 = (k + 3) / 4, panels = (n + LNR - 1) / LNR;
    (void)rows;
#if OSK_X86
    if (level == OSK_AVX2) { gemm_avx2(xq, xscale, xzp, k4, packed, rowsum, wscale, bias, n, y, ldy, r0, r1); return; }
#endif
    int32_t acc[LMR][LNR];
    // Panel outer, rows inner: a panel (K * 32 bytes, 32 KiB at K = 1024) stays in L1 while the rows' codes
    // stream past it, instead of every row block streaming all of W from L2.
    for (int32_t p = 0; p < panels; p++) {
        const int32_t *wp = packed + (size_t)p * k4 * LNR;
        int nc = n - p * LNR < LNR ? n - p * LNR : LNR;
        for (int32_t rb = r0; rb < r1; rb += LMR) {
            int mr = r1 - rb < LMR ? r1 - rb : LMR;
            const uint32_t *xr[LMR];
            for (int r = 0; r < LMR; r++) xr[r] = xq + (size_t)(rb + (r < mr ? r : 0)) * k4;  // short blocks repeat a row
#if OSK_X86
            if (level == OSK_AVX512) block_avx512(k4, xr, wp, acc);
            else
#endif
                block_scalar(k4, xr, wp, acc);
#if OSK_X86
            if (level == OSK_AVX512) {
                float *out[LMR];
                for (int r = 0; r < LMR; r++) out[r] = y + (size_t)(rb + (r < mr ? r : 0)) * ldy + p * LNR;
                store_avx512(acc, mr, nc, rowsum + p * LNR, wscale + p * LNR, bias ? bias + p * LNR : NULL,
                             xscale + rb, xzp + rb, out);
                continue;
            }
#endif
            for (int r = 0; r < mr; r++) {
                float *out = y + (size_t)(rb + r) * ldy + p * LNR;
                float sx = xscale[rb + r];
                int32_t z = xzp[rb + r];
                for (int j = 0; j < nc; j++) {
                    int o = p * LNR + j;
                    out[j] = dequant(acc[r][j], z, rowsum[o], sx, wscale[o], bias ? bias[o] : 0.0f);
                }
            }
        }
    }
}

// MARK: - Peak: a dependent vpdpbusd chain

#if OSK_X86
/// `chains` independent accumulators, each a dependent chain of `iterations` vpdpbusd: with enough chains the
/// issue ports, not the latency, bound it. Returns a value depending on every result (so nothing is elided).
OSK_AVX512_TARGET static int64_t vnni_chain(int64_t iterations) {
    __m512i a = _mm512_set1_epi32(0x01010101), b = _mm512_set1_epi32(0x01ff01ff);
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0, c9 = c0,
            c10 = c0, c11 = c0;
    for (int64_t i = 0; i < iterations; i++) {
        c0 = _mm512_dpbusd_epi32(c0, a, b); c1 = _mm512_dpbusd_epi32(c1, a, b); c2 = _mm512_dpbusd_epi32(c2, a, b);
        c3 = _mm512_dpbusd_epi32(c3, a, b); c4 = _mm512_dpbusd_epi32(c4, a, b); c5 = _mm512_dpbusd_epi32(c5, a, b);
        c6 = _mm512_dpbusd_epi32(c6, a, b); c7 = _mm512_dpbusd_epi32(c7, a, b); c8 = _mm512_dpbusd_epi32(c8, a, b);
        c9 = _mm512_dpbusd_epi32(c9, a, b); c10 = _mm512_dpbusd_epi32(c10, a, b); c11 = _mm512_dpbusd_epi32(c11, a, b);
        __asm__ volatile("" : "+v"(c0), "+v"(c1), "+v"(c2), "+v"(c3), "+v"(c4), "+v"(c5));
    }
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                                 _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11)));
    return _mm512_reduce_add_epi32(s);
}
#endif

int64_t osk_vnni_peak_ops(int64_t iterations, int64_t *checksum) {
#if OSK_X86
    if (!osk_level_supported(OSK_AVX512)) return 0;
    *checksum = vnni_chain(iterations);
    return iterations * 12 * 16 * 4 * 2;  // 12 vpdpbusd x 16 lanes x 4 multiply-adds x 2 ops
#else
    (void)iterations;
    *checksum = 0;
    return 0;
#endif
}

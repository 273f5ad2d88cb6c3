// Onestep CPU kernels: fp32 and int8 convolutions on channel-major activations, without an im2col matrix.
//
// Dimension legend
//   M  = Cout (output channels)             K  = Cin * KH * KW (reduction)      T = KH * KW (taps)
//   N  = images in the batch                H, W = input size as stored          Ho, Wo = output size
//   cols = N * Ho * Wo (GEMM columns)       C4 = ceil(Cin / 4) (channel quads, int8 only)
//
// Layouts
//   x   (Cin, N, H, W)  float            channel-major activation: plane c holds channel c of every image
//   y   (M, cols)       float            output; holds bias (and residual) on entry, the kernels accumulate
//   A   [ceil(M/8)][K][8] float          fp32 weights packed once at load: 8-row panels, k-major, zero rows pad
//   xq  [C4][N*H*W] uint32               int8 activation: 4 channels' uint8 codes per pixel, pad channels = zp
//   A8  [ceil(M/8)][C4*T][8] int32       int8 weights: 4 signed codes (channels 4q..4q+3 at tap t) per int32
//
// Every output element is one fused-multiply-add chain over k = 0..K-1 in a fixed order starting from y's
// value (fp32), or an exact integer sum (int8), so results do not depend on the batch size, the column
// position, the tile edges or the kernel level: avx512, avx2 and scalar give bit-identical outputs.
#ifndef ONESTEP_KERNELS_H
#define ONESTEP_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Rows per packed weight panel and columns per output tile (the microkernel tile is 8 x 32).
#define OSK_MR 8
#define OSK_NR 32

/// Instruction-set levels. avx512 means AVX-512 F+BW+VL+VNNI; avx2 means AVX2+FMA.
enum { OSK_SCALAR = 0, OSK_AVX2 = 1, OSK_AVX512 = 2 };

/// 1 when this CPU can run `level`.
int osk_level_supported(int level);
/// The level to use: the best supported, or ONESTEP_KERNELS=avx512|avx2|scalar capped at what is supported.
int osk_default_level(void);

/// Convolution geometry (same fields as Swift's ConvGeometry). `upsample` reads the input as if it were
/// nearest-upsampled 2x first.
typedef struct {
    int32_t in_channels, out_channels, kernel_h, kernel_w, stride;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t upsample;
} osk_conv;

/// Floats in the packed fp32 weights for an (M, K) matrix.
size_t osk_f32_packed_count(int32_t m, int32_t k);
/// Packs w (M, K) row-major into panels (`packed` has osk_f32_packed_count floats).
void osk_f32_pack(const float *w, int32_t m, int32_t k, float *packed);

/// y[:, n0..<n1] += conv(x) for the output columns n0..<n1 of (M, N*Ho*Wo). x is (Cin, N, H, W) as stored
/// (before the fused upsample). Threads may call this concurrently on disjoint column ranges.
void osk_conv_f32(int level, const osk_conv *g, const float *packed, const float *x,
                  int32_t n, int32_t h, int32_t w, float *y, int64_t n0, int64_t n1);

/// osk_conv_f32 writing y[:, n0..<n1] = bias (per output channel; NULL: 0) + conv(x) instead of adding to y: each
/// tile's columns are set just before its FMAs run (in cache), where a caller's fill of the whole of y beforehand
/// was a separate pass over memory. The same bits as filling y then calling osk_conv_f32.
void osk_conv_f32_init(int level, const osk_conv *g, const float *packed, const float *bias, const float *x,
                       int32_t n, int32_t h, int32_t w, float *y, int64_t n0, int64_t n1);

/// C (M, cols) += A (M, K) * B (K, cols) for the columns n0..<n1; B and C are row-major with row strides
/// ldb and ldc; A is packed by osk_f32_pack.
void osk_gemm_f32(int level, const float *packed, int32_t m, int32_t k, const float *b, int64_t ldb,
                  float *c, int64_t ldc, int64_t n0, int64_t n1);

/// int32 words in the packed int8 weights of a conv (M, Cin, KH, KW).
size_t osk_q8_packed_count(int32_t m, int32_t cin, int32_t taps);
/// Quantizes w (M, Cin, KH*KW) symmetrically per output channel: code = round(w / s), s = max|w| / 127,
/// and packs it. rowsum[m] = sum of row m's codes, scale[m] = s; both have ceil(M/8)*8 entries (pad 0).
void osk_q8_pack(const float *w, int32_t m, int32_t cin, int32_t taps, int32_t *packed, int32_t *rowsum,
                 float *scale);

/// Quantizes images i0..<i1 of x (C, N, HW) to uint8 with one affine scale per image:
/// code = clamp(round(v / s) + zp, 0, 255), s = (max - min) / 255 over the image (range widened to hold 0,
/// so 0 and the conv's zero padding are exact: code zp). xq is [C4][N*HW] uint32 (4 channels per word).
/// Codes are identical at every level (round to nearest even, as lrintf).
void osk_q8_quantize(int level, const float *x, int32_t c, int32_t n, int32_t hw, int32_t i0, int32_t i1,
                     uint32_t *xq, float *scale, int32_t *zp);

/// The two halves of osk_q8_quantize for one image i, so its positions can be split between threads with the
/// same result: osk_q8_range folds the min / max of positions j0..<j1 (all channels) into *lo / *hi (start both
/// at 0); osk_q8_set_params sets scale / zp from the whole image's range; osk_q8_encode writes the codes of
/// positions j0..<j1 with scale[i] / zp[i].
void osk_q8_range(int level, const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t j0, int32_t j1,
                  float *lo, float *hi);
void osk_q8_set_params(float lo, float hi, float *scale, int32_t *zp);
void osk_q8_encode(int level, const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t j0, int32_t j1,
                   uint32_t *xq, const float *scale, const int32_t *zp);

/// y[:, n0..<n1] += dequant(conv(xq)) : y += s_w[m] * s_x[img] * (sum_k wq * xq - zp[img] * rowsum[m]).
void osk_conv_q8(int level, const osk_conv *g, const int32_t *packed, const int32_t *rowsum,
                 const float *wscale, const uint32_t *xq, const float *xscale, const int32_t *xzp,
                 int32_t n, int32_t h, int32_t w, float *y, int64_t n0, int64_t n1);
/// osk_conv_q8 for the output rows m0..<m1 only (m0 a multiple of OSK_MR; m1 a multiple of it or >= M) and the
/// columns n0..<n1: threads may run disjoint (rows, columns) rectangles concurrently, and every output element is
/// the same bits as osk_conv_q8 gives it.
/// Selects the per-tile int8 driver on AVX-512 as well (1) or the blocked one (0; the default unless
/// ONESTEP_Q8_UNBLOCKED is set at start-up). Same bits either way; for before/after benchmarks.
void osk_q8_set_unblocked(int on);
/// Whether osk_conv_q8_fused / _part run 1x1 stride-1 convs (projections) on the AVX-512 linear driver of
/// onestep_linear_q8.c (1, the default unless ONESTEP_Q8_LINEAR=0 at start-up) or on the blocked driver (0), which
/// also turns off osk_linear_q8_geglu. Same bits either way; for tests and benchmarks.
void osk_linear_q8_set_enabled(int on);
/// Whether osk_conv_f32 runs 3x3 stride-1 pad-1 convs of at most 4 outputs (the decoders' conv_out) on the AVX-512
/// ring kernel of onestep_conv_few.c (1, the default unless ONESTEP_F32_FEW=0 at start-up) or on the tile driver
/// (0). Same bits either way; for tests and benchmarks.
void osk_conv_f32_few_set_enabled(int on);
void osk_conv_q8_part(int level, const osk_conv *conv, const int32_t *packed, const int32_t *rowsum,
                      const float *wscale, const uint32_t *xq, const float *xscale, const int32_t *xzp,
                      int32_t n, int32_t h, int32_t w, float *y, int64_t n0, int64_t n1, int32_t m0, int32_t m1);

/// What osk_conv_q8_fused writes instead of y += dequant(conv(xq)): each output y[m][j] is set (y is not read) to
///   v = fmaf(sum - zp * rowsum, s_w * s_x, init),  init = residual[m][j] + bias[m] | residual | bias[m] | 0
/// (as prepareOutput's bias fill or residual + bias followed by osk_conv_q8_part), then v = v > 0 ? v : +0 when
/// `relu`, and each image's min / max of the written values folded into range[2 i], range[2 i + 1] (start them
/// at 0; the range osk_q8_range would find over the output). Bits equal those separate passes at every level.
typedef struct {
    const float *bias;       // (M), or NULL
    const float *residual;   // laid out like y (row stride N * Ho * Wo), or NULL; may be y itself (y += ...)
    int32_t relu;
    float *range;            // (2 N) per image lo, hi, or NULL; not shared between concurrent calls
} osk_q8_epilogue;
/// osk_conv_q8_part with the epilogue above (ep NULL: exactly osk_conv_q8_part).
void osk_conv_q8_fused(int level, const osk_conv *conv, const int32_t *packed, const int32_t *rowsum,
                       const float *wscale, const uint32_t *xq, const float *xscale, const int32_t *xzp,
                       int32_t n, int32_t h, int32_t w, float *y, int64_t n0, int64_t n1, int32_t m0, int32_t m1,
                       const osk_q8_epilogue *ep);

/// The int8 feed-forward projection with GEGLU in its epilogue (onestep_linear_q8.c): conv is the 1x1 layer
/// net.0.proj with 2I outputs (packed without bias; `bias` its 2I biases or NULL); writes out (I, N*H*W) =
/// proj[:I] * gelu(proj[I:]) for output rows m0..<m1 of out (multiples of OSK_MR) and columns n0..<n1, the same
/// bits as osk_conv_q8_fused (bias epilogue) followed by osk_geglu, and folds each image's min / max of out into
/// range (2 N, start at 0; NULL: none). Returns 0 without doing anything where it does not apply (not AVX-512,
/// not a 1x1 stride-1 layer, I not a multiple of OSK_MR, the linear driver off): run the two steps then.
int osk_linear_q8_geglu_applies(int level, const osk_conv *conv);
int osk_linear_q8_geglu(int level, const osk_conv *conv, const int32_t *packed, const int32_t *rowsum, const float *wscale,
                        const float *bias, const uint32_t *xq, const float *xscale, const int32_t *xzp, int32_t n, int32_t h,
                        int32_t w, float *out, int64_t n0, int64_t n1, int32_t m0, int32_t m1, float *range);

/// GEGLU (onestep_geglu.c): out[r][j] = proj[r][j] * gelu(proj[inner + r][j]) for rows r < inner and columns
/// j0..<j1 of (inner, cols) (proj is (2 inner, cols)), gelu with a rational erf (same bits at every level); with
/// `range` (2 per image, column j in image j / length), each image's min / max of out folded in (start at 0).
void osk_geglu(int level, const float *proj, int64_t inner, int64_t cols, int64_t j0, int64_t j1, int64_t length,
               float *out, float *range);

/// A persistent team of threads splitting one job into chunks (onestep_team.c): every thread, the caller
/// included, claims the next chunk until none is left; helpers spin briefly after a job, then park. One caller
/// at a time per team.
typedef struct osk_team osk_team;
/// Chunk `chunk` of a job, run by team thread `worker` (0 = the caller; < threads: index per-thread scratch).
typedef void (*osk_task)(void *ctx, int32_t chunk, int32_t worker);
/// A team of `threads` (>= 1) including the calling thread; NULL when out of memory.
osk_team *osk_team_create(int32_t threads);
int32_t osk_team_threads(const osk_team *team);
/// Runs fn(ctx, 0..<chunks, worker) on the team and returns when every chunk has finished (chunks < 2^20).
void osk_team_run(osk_team *team, int32_t chunks, osk_task fn, void *ctx);
/// Stops and joins the helpers.
void osk_team_destroy(osk_team *team);

/// int8 linear (onestep_linear.c): Y (rows, N) = X (rows, K) W^T + bias, row-major, u8 activations with a
/// scale and zero point per row, s8 weights per output channel, exact int32 sums (vpdpbusd on avx512).
/// int32 words of W (N, K) packed: [ceil(N/32)][ceil(K/4)][32].
size_t osk_lq8_packed_count(int32_t n, int32_t k);
/// Packs codes w (N, K) row-major; rowsum has ceil(N/32)*32 entries (pad 0).
void osk_lq8_pack(const int8_t *w, int32_t n, int32_t k, int32_t *packed, int32_t *rowsum);
/// Quantizes each row of x (rows, K), row stride ldx: s = (max - min) / 255 over the row (range widened to hold
/// 0), zp = round(-min / s), code = clamp(round(v / s) + zp, 0, 255); xq is [rows][ceil(K/4)] words.
void osk_lq8_quantize(const float *x, int32_t rows, int32_t k, int64_t ldx, uint32_t *xq, float *scale, int32_t *zp);
/// Rows r0..<r1 of y (row stride ldy) = s_x[r] * s_w[o] * (sum_k xq * wq - zp[r] * rowsum[o]) + bias[o] (bias may
/// be NULL). Threads may call it concurrently on disjoint row ranges; every level gives identical bits.
void osk_lq8_gemm(int level, const uint32_t *xq, const float *xscale, const int32_t *xzp, int32_t rows, int32_t k,
                  const int32_t *packed, const int32_t *rowsum, const float *wscale, const float *bias, int32_t n,
                  float *y, int64_t ldy, int32_t r0, int32_t r1);
/// Runs `iterations` of 12 independent dependent chains of 512-bit vpdpbusd; returns the int8 ops done (0 when
/// the CPU lacks AVX-512 VNNI). The caller times it: the VNNI peak of one core.
int64_t osk_vnni_peak_ops(int64_t iterations, int64_t *checksum);

/// Peaks (onestep_peak.c). Runs 8 * `iterations` dependent integer adds (one cycle each) and returns that cycle
/// count: the caller times it for the core's clock frequency.
int64_t osk_add_chain_cycles(int64_t iterations);
/// Runs `iterations` of 16 independent chains of 512-bit vfmadd231ps (12 of 256-bit ones at the avx2 level);
/// returns the flops done (0 without AVX2).
int64_t osk_fma_peak_ops(int64_t iterations, double *checksum);
/// Runs `iterations` of 12 independent chains of 256-bit vpmaddwd + vpaddd (the AVX2 int8 kernels' inner pair);
/// returns the int8 ops done, 2 per multiply-add (0 without AVX2): the int8 peak of the avx2 level.
int64_t osk_madd_peak_ops(int64_t iterations, int64_t *checksum);
/// 1 when this CPU has AVX-512 BF16 (vdpbf16ps) besides the avx512 level.
int osk_bf16_supported(void);
/// Runs `iterations` of 16 independent chains of 512-bit vdpbf16ps; returns the flops done (0 without AVX512-BF16).
int64_t osk_bf16_peak_ops(int64_t iterations, double *checksum);

/// bf16 convolutions and GEMM (onestep_bf16.c), for layers int8 hurts: weights rounded to bf16 (nearest even) at
/// load, activations rounded per tile, products summed in fp32 by vdpbf16ps from y's value (level avx512 on a CPU
/// with AVX512-BF16; otherwise an exact scalar emulation of it: the same bits).
/// Words in the packed weights of a conv (M, Cin, KH, KW): [ceil(M/8)][ceil(Cin/2)*taps][8], 2 bf16 per word
/// (channels 2c' low, 2c'+1 high, at one tap).
size_t osk_bf16_packed_count(int32_t m, int32_t cin, int32_t taps);
/// Rounds w (M, Cin, taps) to bf16 and packs it (`packed` has osk_bf16_packed_count words).
void osk_bf16_pack(const float *w, int32_t m, int32_t cin, int32_t taps, uint32_t *packed);
/// y[:, n0..<n1] += conv(x), x (Cin, N, H, W) fp32 as stored; as osk_conv_f32 but in bf16 products.
void osk_conv_bf16(int level, const osk_conv *g, const uint32_t *packed, const float *x, int32_t n, int32_t h, int32_t w,
                   float *y, int64_t n0, int64_t n1);
/// C (M, cols) += A (M, K) * B (K, cols) for the columns n0..<n1 in bf16 products; A packed by osk_bf16_pack with
/// cin = K, taps = 1; B and C row-major with row strides ldb and ldc.
void osk_gemm_bf16(int level, const uint32_t *packed, int32_t m, int32_t k, const float *b, int64_t ldb, float *c,
                   int64_t ldc, int64_t n0, int64_t n1);

#ifdef __cplusplus
}
#endif

/// x[i] = x[i] > 0 ? x[i] : +0 for i < n, in place (NaN and -0 become +0, as the Swift reference).
void osk_relu(int level, float *x, int64_t n);

/// y[i] = silu(x[i] * a + b) for i < n (x and y may alias); polynomial exp, same arithmetic for every element.
void osk_affine_silu(int level, const float *x, float *y, int64_t n, float a, float b);

/// One attention head of one image on channel-major (D, L) slices with row stride ld: out = V softmax(scale Q^T K)^T.
/// scratch holds L*L + 4*D*L floats.
void osk_attention_head(int level, const float *q, const float *k, const float *v, int64_t ld, int32_t l, int32_t d,
                        float scale, float *out, float *scratch);

/// One attention head in bf16 products (onestep_attention.c): out (D, Lq) = V softmax(scale Q^T K)^T with Q (D, Lq)
/// and out at row stride ldq, K and V (D, Lk) at row stride ldk; Q, K, V and the softmax numerators rounded to bf16,
/// products summed in fp32 (vdpbf16ps), no Lq x Lk matrix held. scratch holds osk_attention_bf16_scratch floats,
/// any alignment. Returns 1, or 0 without doing anything when osk_attention_bf16_runs(level) is 0.
int osk_attention_head_bf16(int level, const float *q, int64_t ldq, int32_t lq, const float *k, const float *v,
                            int64_t ldk, int32_t lk, int32_t d, float scale, float *out, float *scratch);
/// The avx2 level of osk_attention_head (x86 only; called by it): q (D, L) scaled, k (D, L), vt = V^T (L, D)
/// contiguous, p L*L scratch; writes ot = O^T (L, D).
void osk_attention_head_f32_avx2(const float *q, const float *k, const float *vt, int32_t l, int32_t d, float *ot, float *p);
/// Floats of scratch osk_attention_head_bf16 needs.
int64_t osk_attention_bf16_scratch(int32_t lq, int32_t lk, int32_t d);
/// 1 when osk_attention_head_bf16 runs at `level` on this CPU (level avx512 and AVX512-BF16).
int osk_attention_bf16_runs(int level);

/// Mean and (biased) variance of one GroupNorm group of one image: `planes` planes of hw floats, plane p at
/// x + p * plane_stride, each read as x + shift[p] when shift is not NULL (the time embedding added before the
/// norm). Two passes (mean, then centred squares); identical bits on every level (onestep_norm.c).
void osk_group_moments(int level, const float *x, int64_t plane_stride, int32_t planes, int32_t hw,
                       const float *shift, double *mean, double *variance);

/// GroupNorm (+ SiLU) straight to int8 activation codes (onestep_norm_q8.c), in two steps per channel plane:
/// osk_silu_range: folds into *vlo / *vhi (start at 0, as osk_q8_range) the min and max of silu(fmaf(x, a, b))
/// over a plane of hw floats, computed as the encoder computes them, from the plane's extreme pre-activations
/// and the two nearest SiLU's minimum (one pass of compares).
void osk_silu_range(int level, const float *x, int32_t hw, float a, float b, float *vlo, float *vhi);
/// Without SiLU, osk_plane_range: min and max of one plane of hw floats (hw >= 1; else both 0), then
/// osk_affine_bounds of them.
void osk_plane_range(int level, const float *x, int32_t hw, float *lo, float *hi);
/// osk_affine_bounds: folds into *vlo / *vhi (start at 0, as osk_q8_range) a bound of y = f(x * a + b) over
/// x in [lo, hi], f = SiLU when silu != 0 else identity: the two endpoint values (computed as the encoder does),
/// and SiLU's minimum (rounded down) when the pre-activation interval straddles it.
void osk_affine_bounds(float lo, float hi, float a, float b, int silu, float *vlo, float *vhi);
/// osk_affine_q8_encode: codes of y for image i of x (C, N, hw), channel quads q0..<q1, every position, into xq
/// [C4][N*hw] (as osk_q8_encode lays them out; channels past C get the zero point). y as the fp32 path computes
/// it (SiLU: fmaf(x, a, b) / (1 + e^-.) as osk_affine_silu; identity: x * a, then + b), code = clamp(round(y / scale)
/// + zp, 0, 255). a, b: image i's (C) coefficients. Same bits at every level.
void osk_affine_q8_encode(int level, const float *x, int32_t c, int32_t n, int32_t hw, int32_t i, int32_t q0, int32_t q1,
                          const float *a, const float *b, int32_t silu, uint32_t *xq, float scale, int32_t zp);


#endif

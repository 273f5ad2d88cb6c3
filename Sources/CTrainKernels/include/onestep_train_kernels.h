// Onestep training kernels: the parts of a backward pass that serving never runs (legend and layouts as in
// onestep_kernels.h: x (Cin, N, H, W) channel-major, dY (M, cols) with cols = N * Ho * Wo, dW (M, K) row-major
// with K = Cin * KH * KW in the order (c, ky, kx), like the conv weights (M, Cin, KH, KW)).
//
// Every dW entry is one fused-multiply-add chain over the columns j = (image, oy, ox) in order, starting from
// dW's value, and every db entry one chain of adds over j from 0, added to db: results are bit-identical at
// every level (avx512, avx2, scalar) and do not depend on the tile sizes.
#ifndef ONESTEP_TRAIN_KERNELS_H
#define ONESTEP_TRAIN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "onestep_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Floats of scratch osk_conv_wgrad_f32 needs for conv `g` on an input of n images of h x w.
size_t osk_conv_wgrad_f32_scratch(const osk_conv *g, int32_t n, int32_t h, int32_t w);

/// Weight gradient of a convolution (any stride and padding, no fused upsample):
///   dW (M, K) += dY (M, cols) x col(X)^T (cols, K),   db (M) += sum over cols of dY  (db may be NULL).
/// x is (Cin, N, H, W), dy (M, N, Ho, Wo), both channel-major. `scratch` holds osk_conv_wgrad_f32_scratch floats
/// (a zero-padded copy of x, dY transposed into 32-channel tiles, dW transposed). Returns 0, or -1 when the
/// geometry has `upsample` set (not supported: materialise the upsampled input first).
int osk_conv_wgrad_f32(int level, const osk_conv *g, const float *x, int32_t n, int32_t h, int32_t w,
                       const float *dy, float *dw, float *db, float *scratch);

/// sum of g[i]^2 in double precision, in a fixed order at every level: 8 partial sums (lane l takes i = 8q + l,
/// q ascending; the tail after the last full 8 goes to lanes 0..), then folded as ((l0 + l4) + (l2 + l6)) +
/// ((l1 + l5) + (l3 + l7)).
double osk_sum_squares(int level, const float *g, int64_t n);

/// One Adam step over n parameters (torch.optim.Adam's update, as Optim/Optimizer.swift), element by element:
///   gi = g[i] * clip;  m = b1 m + (1 - b1) gi;  v = b2 v + (1 - b2) gi gi;  w -= step_size m / (sqrt(v) / sqrt_bc2 + eps)
/// every operation rounded on its own (no fused multiply-add): the same bits as the Swift loop, at every level.
void osk_adam_update(int level, float *w, const float *g, float *m, float *v, int64_t n, float clip, float b1, float b2,
                     float step_size, float sqrt_bc2, float eps);

/// GroupNorm (+ fused SiLU when silu != 0) backward of one channel plane of n floats (training): with
/// xhat = (x - mean) * rstd and z = xhat * gamma + beta, dz = dy * silu'(z) (or dy); returns sum(dz) and sum(dz * xhat)
/// summed in 16 lanes, then the lanes as a tree (as _mm512_reduce_add_ps). The scalar path differs from avx512 in the
/// last bits (its exp and sigmoid).
void osk_groupnorm_grad(int level, const float *x, const float *dy, float *dz, int64_t n, float mean, float rstd,
                        float gamma, float beta, int silu, float *sum_dz, float *sum_dzx);
/// In place over d (holding dz): dx = rstd * (dz * gamma - mean_g - xhat * mean_gx).
void osk_groupnorm_grad_finish(int level, const float *x, float *d, int64_t n, float mean, float rstd, float gamma,
                               float mean_g, float mean_gx);
/// The whole GroupNorm (+ SiLU) backward of a layer in one call (TrainableGroupNorm): x, dy, dx (N, C, HW); stats
/// (N, groups, 2) = (mean, rstd); gamma, beta (C); dgamma, dbeta (C) accumulated. Per (image, group): the first pass
/// above on each channel plane, mean_g = sum(sum_dz * gamma) / (C/groups * HW) (likewise mean_gx), then the finish.
void osk_groupnorm_backward(int level, const float *x, const float *dy, float *dx, int32_t n, int32_t c, int32_t groups,
                            int32_t hw, const float *stats, const float *gamma, const float *beta, int silu, float *dgamma,
                            float *dbeta);
/// osk_groupnorm_backward (above) with each of x, dy and dx in either layout: 0 = (N, C, HW), 1 =
/// channel-major (C, N, HW), so a norm between channel-major convs needs no transposes (a mixed call also converts
/// the layout for free). Same planes in the same order as osk_groupnorm_backward: the same bits.
void osk_groupnorm_backward_layouts(int level, const float *x, int x_cm, const float *dy, int dy_cm, float *dx, int dx_cm,
                                    int32_t n, int32_t c, int32_t groups, int32_t hw, const float *stats, const float *gamma,
                                    const float *beta, int silu, float *dgamma, float *dbeta);

/// GroupNorm (+ SiLU when silu != 0) forward of a layer in one call (TrainableGroupNorm), x and y each (N, C, HW)
/// (x_cm / y_cm 0) or channel-major (C, N, HW) (1): per (image, group) the statistics of osk_group_moments, stats
/// (N, groups, 2) = (mean, rstd) as floats, then y = silu(x * scale + shift) (osk_affine_silu) or x * scale + shift
/// with scale = rstd * gamma and shift = beta - mean * rstd * gamma rounded from double. Prefetches the next group.
void osk_groupnorm_forward_layouts(int level, const float *x, int x_cm, float *y, int y_cm, int32_t n, int32_t c,
                                   int32_t groups, int32_t hw, float eps, const float *gamma, const float *beta, int silu,
                                   float *stats);

#ifdef __cplusplus
}
#endif

#endif

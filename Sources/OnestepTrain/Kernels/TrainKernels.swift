// The training-only C kernels (CTrainKernels: onestep_conv_grad.c, onestep_optim.c, onestep_groupnorm_train.c) as
// Swift calls: the only Swift file that imports CTrainKernels. They sit apart from CKernels so onestep-serve links
// none of them; they use CKernels' types (osk_conv) and levels (KernelLevel) and give the same bits at every level
// (FastTrainingKernelTests, ConvWeightGradientTests, OptimizerKernelTests, ChannelMajorTrainingTests).
import CTrainKernels
import OnestepCore

public enum TrainKernels {
    /// Scratch floats `weightGradient` needs for this geometry and input size.
    public static func weightGradientScratch(_ g: ConvGeometry, batch: Int, height: Int, width: Int) -> Int {
        var gc = FastConv.cGeometry(g, upsample: false)
        return osk_conv_wgrad_f32_scratch(&gc, Int32(batch), Int32(height), Int32(width))
    }

    /// Weight gradient of a convolution (onestep_conv_grad.c): dW (Cout, Cin*KH*KW) += dY (Cout, cols) x col(X)^T,
    /// db (Cout) += row sums of dY (when given). x (Cin, N, H, W) and dy (Cout, N, Ho, Wo) are channel-major.
    /// Each dW entry is one FMA chain over the columns in order from dW's value: the same bits at every level.
    public static func weightGradient(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, geometry g: ConvGeometry, batch: Int,
                                      height: Int, width: Int, dw: UnsafeMutablePointer<Float>, db: UnsafeMutablePointer<Float>?,
                                      scratch: UnsafeMutablePointer<Float>, level: KernelLevel = .best) {
        precondition(level.isSupported, "weightGradient: kernel level \(level) not supported on this CPU")
        var gc = FastConv.cGeometry(g, upsample: false)
        let status = osk_conv_wgrad_f32(level.rawValue, &gc, x, Int32(batch), Int32(height), Int32(width), dy, dw, db, scratch)
        precondition(status == 0, "weightGradient: unsupported geometry \(g)")
    }

    /// y (Cout, N*Ho*Wo) = bias (per output channel; nil: 0) + conv(x) by the packed fp32 kernel (osk_conv_f32_init):
    /// the bits of filling y and calling FastConv.convAccumulate, without the separate pass over y. x (Cin, N, H, W).
    public static func convolution(x: UnsafePointer<Float>, packed: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                                   geometry g: ConvGeometry, batch: Int, height: Int, width: Int, y: UnsafeMutablePointer<Float>,
                                   level: KernelLevel = .best) {
        var gc = FastConv.cGeometry(g, upsample: false)
        let cols = batch * g.outputHeight(height) * g.outputWidth(width)
        osk_conv_f32_init(level.rawValue, &gc, packed, bias, x, Int32(batch), Int32(height), Int32(width), y, 0, Int64(cols))
    }

    /// sum of g[i]^2 in double precision, in a fixed order (the same at every level; onestep_optim.c).
    public static func sumOfSquares(_ g: UnsafePointer<Float>, count: Int, level: KernelLevel = .best) -> Double {
        osk_sum_squares(level.rawValue, g, Int64(count))
    }

    /// One Adam step in place (torch.optim.Adam's rule; onestep_optim.c): gi = g*clip, m = b1 m + (1-b1) gi,
    /// v = b2 v + (1-b2) gi^2, w -= stepSize m / (sqrt(v)/sqrtBc2 + eps), each operation rounded on its own.
    public static func adamUpdate(weights w: UnsafeMutablePointer<Float>, gradients g: UnsafePointer<Float>,
                                  m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int, clip: Float,
                                  beta1: Float, beta2: Float, stepSize: Float, sqrtBiasCorrection2: Float, epsilon: Float,
                                  level: KernelLevel = .best) {
        osk_adam_update(level.rawValue, w, g, m, v, Int64(count), clip, beta1, beta2, stepSize, sqrtBiasCorrection2, epsilon)
    }

    /// GroupNorm (+ SiLU) backward of one channel plane (onestep_groupnorm_train.c): dz = dy * silu'(z) with
    /// z = ((x - mean) * rstd) * gamma + beta (dz = dy without SiLU); returns (sum dz, sum dz * xhat).
    @inline(__always)
    public static func groupNormGradient(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dz: UnsafeMutablePointer<Float>,
                                         count: Int, mean: Float, rstd: Float, gamma: Float, beta: Float, silu: Bool,
                                         level: KernelLevel = .best) -> (sumDz: Float, sumDzXhat: Float) {
        var a: Float = 0, b: Float = 0
        osk_groupnorm_grad(level.rawValue, x, dy, dz, Int64(count), mean, rstd, gamma, beta, silu ? 1 : 0, &a, &b)
        return (a, b)
    }

    /// The second GroupNorm backward pass, in place over dz: dx = rstd * (dz * gamma - meanG - xhat * meanGX).
    @inline(__always)
    public static func groupNormGradientFinish(x: UnsafePointer<Float>, _ d: UnsafeMutablePointer<Float>, count: Int, mean: Float,
                                               rstd: Float, gamma: Float, meanG: Float, meanGX: Float, level: KernelLevel = .best) {
        osk_groupnorm_grad_finish(level.rawValue, x, d, Int64(count), mean, rstd, gamma, meanG, meanGX)
    }

    /// The whole GroupNorm (+ SiLU) forward of a layer in one C call (training, osk_groupnorm_forward_layouts): x -> y,
    /// each (N, C, HW) or channel-major (C, N, HW); stats (N, groups, 2) = (mean, rstd) written for the backward.
    @inline(__always)
    public static func groupNormForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, channelMajor cm: (x: Bool, y: Bool),
                                        batch: Int, channels: Int, groups: Int, spatial: Int, eps: Float, gamma: UnsafePointer<Float>,
                                        beta: UnsafePointer<Float>, silu: Bool, stats: UnsafeMutablePointer<Float>,
                                        level: KernelLevel = .best) {
        osk_groupnorm_forward_layouts(level.rawValue, x, cm.x ? 1 : 0, y, cm.y ? 1 : 0, Int32(batch), Int32(channels), Int32(groups),
                                      Int32(spatial), eps, gamma, beta, silu ? 1 : 0, stats)
    }

    /// The whole GroupNorm (+ SiLU) backward of a layer in one C call (onestep_groupnorm_train.c): x, dy, dx
    /// (N, C, HW); stats (N, groups, 2) = (mean, rstd) of the forward; gamma, beta (C); dgamma, dbeta (C) accumulated.
    /// Per (image, group) the two passes above, with the group means of dz * gamma and dz * xhat * gamma between them.
    /// `channelMajor` (x, dy, dx): which of them are (C, N, HW) instead (osk_groupnorm_backward_layouts; same bits).
    @inline(__always)
    public static func groupNormBackward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                                         batch: Int, channels: Int, groups: Int, spatial: Int, stats: UnsafePointer<Float>,
                                         gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, silu: Bool,
                                         dgamma: UnsafeMutablePointer<Float>, dbeta: UnsafeMutablePointer<Float>,
                                         channelMajor cm: (x: Bool, dy: Bool, dx: Bool) = (false, false, false),
                                         level: KernelLevel = .best) {
        osk_groupnorm_backward_layouts(level.rawValue, x, cm.x ? 1 : 0, dy, cm.dy ? 1 : 0, dx, cm.dx ? 1 : 0, Int32(batch),
                                       Int32(channels), Int32(groups), Int32(spatial), stats, gamma, beta, silu ? 1 : 0, dgamma, dbeta)
    }
}

// The spatial self-attention block of AttnDownBlock2D / AttnUpBlock2D / UNetMidBlock2D (matches diffusers
// Attention(_from_deprecated_attn_block=True, residual_connection=True, bias=True) with AttnProcessor2_0 on a
// 4-D input): optional GroupNorm, q/k/v projections, softmax(QK^T/sqrt(d))V per head, to_out.0, + residual,
// / rescale_output_factor.

public struct AttentionBlock: Sendable {
    public var norm: GroupNormLayer?
    public var toQ: LinearLayer, toK: LinearLayer, toV: LinearLayer, toOut: LinearLayer
    public var heads: Int
    public var rescaleOutputFactor: Float

    public init(_ prefix: String, _ src: WeightSource, channels c: Int, headDim: Int?, normGroups: Int?, eps: Float,
                rescaleOutputFactor: Float = 1) throws {
        norm = try normGroups.map { try GroupNormLayer(prefix + ".group_norm", src, channels: c, groups: $0, eps: eps) }
        toQ = try LinearLayer(prefix + ".to_q", src, in: c, out: c)
        toK = try LinearLayer(prefix + ".to_k", src, in: c, out: c)
        toV = try LinearLayer(prefix + ".to_v", src, in: c, out: c)
        toOut = try LinearLayer(prefix + ".to_out.0", src, in: c, out: c)
        heads = c / (headDim ?? c)
        self.rescaleOutputFactor = rescaleOutputFactor
    }

    /// x (N, C, H, W) -> (N, C, H, W)
    public func callAsFunction(_ x: Tensor) -> Tensor {
        let n = x.shape[0], c = x.shape[1], l = x.shape[2] * x.shape[3]
        let h = norm.map { $0(x) } ?? x
        var y = Tensor(zeros: x.shape)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: Attention.scratchCount(channels: c, length: l))
        defer { scratch.deallocate() }
        withWeights { q, k, v, o in
            h.data.withUnsafeBufferPointer { hp in
                y.data.withUnsafeMutableBufferPointer { yp in
                    for i in 0..<n {
                        Attention.forward(h: hp.baseAddress! + i * c * l, channels: c, length: l, heads: heads,
                                          q: q, k: k, v: v, out: o, y: yp.baseAddress! + i * c * l, scratch: scratch)
                    }
                }
            }
        }
        var out = add(y, x)
        if rescaleOutputFactor != 1 {
            for i in out.data.indices { out.data[i] /= rescaleOutputFactor }
        }
        return out
    }

    private func withWeights(_ body: (ProjectionWeights, ProjectionWeights, ProjectionWeights, ProjectionWeights) -> Void) {
        func with(_ l: LinearLayer, _ f: (ProjectionWeights) -> Void) {
            l.weight.data.withUnsafeBufferPointer { w in
                l.bias.data.withUnsafeBufferPointer { b in f(ProjectionWeights(weight: w.baseAddress!, bias: b.baseAddress!)) }
            }
        }
        with(toQ) { q in with(toK) { k in with(toV) { v in with(toOut) { o in body(q, k, v, o) } } } }
    }

    public var parameters: [(String, Tensor)] {
        (norm?.parameters ?? []) + toQ.parameters + toK.parameters + toV.parameters + toOut.parameters
    }
}

// The weights of a LatentPlan, loaded once and kept only in the form the kernels read: every convolution packed
// for FastConv (PackedConvF32), every projection packed for FastConv.gemm (PackedGemmF32) with its bias, norms
// as (gamma, beta). The float32 tensor each was packed from is dropped as soon as it is packed, so no weight is
// held twice.
// int8: a convolution or projection whose weight the source stores as I8 codes + per-output-channel scales
// (Onestep's int8 format, Quant/Int8Weights.swift; Quant/LatentInt8.swift writes it for these networks) is packed
// for the int8 kernels straight from those codes (PackedConvInt8, projections as 1x1 convolutions), never
// re-quantized from floats; every other layer packs fp32. So the file alone says which layers run in int8.
import Foundation

/// A convolution packed for FastConv: fp32, or int8 from the stored codes.
public enum LatentConv: Sendable {
    case f32(PackedConvF32)
    case int8(PackedConvInt8)

    public var isInt8: Bool { if case .int8 = self { return true } else { return false } }
}

/// A projection y (out, cols) = W (out, in) x (in, cols) + b: packed for FastConv.gemm (fp32), or, when the weight
/// is stored as int8, as a 1x1 int8 convolution over (in, N, L) (activations quantized per image).
public struct PackedLinear: Sendable {
    public let weight: PackedGemmF32?    // (out, in), fp32 layers
    public let int8: PackedConvInt8?     // (out, in, 1, 1) codes and scales, no bias (the runner adds `bias`)
    public let bias: [Float]?            // (out)
    public let outFeatures: Int, inFeatures: Int

    init(weight: PackedGemmF32, bias: [Float]?) {
        self.weight = weight
        int8 = nil
        self.bias = bias
        outFeatures = weight.rows
        inFeatures = weight.depth
    }

    init(int8 q: Int8Tensor, bias: [Float]?) {
        let o = q.shape[0], i = q.shape.dropFirst().reduce(1, *)
        weight = nil
        int8 = PackedConvInt8(geometry: ConvGeometry(inChannels: i, outChannels: o, kernel: 1, padding: 0), bias: nil,
                              weights: Int8Tensor(shape: [o, i, 1, 1], codes: q.codes, scales: q.scales))
        self.bias = bias
        outFeatures = o
        inFeatures = i
    }
}

/// Weights of a plan, by module prefix (the checkpoint key without ".weight" / ".bias").
public struct LatentWeights: Sendable {
    public private(set) var convs: [String: LatentConv] = [:]
    public private(set) var linears: [String: PackedLinear] = [:]
    public private(set) var norms: [String: GroupNormLayer] = [:]

    /// Loads and packs every parameter of `plan` from `src`. Throws the source's error (missing key, wrong
    /// shape, non-finite value) naming the key.
    public init(plan: LatentPlan, source src: WeightSource) throws {
        func conv(_ c: ConvSpec) throws {
            guard convs[c.prefix] == nil else { return }
            let layer = try Conv2DLayer(c.prefix, src, geometry: c.geometry, bias: c.bias)
            // Conv2DLayer.stored8 holds the file's codes when it stores them; PackedConvInt8 packs those as they are.
            convs[c.prefix] = layer.stored8 != nil ? .int8(PackedConvInt8(layer)) : .f32(PackedConvF32(layer))
        }
        func linear(_ l: LinearSpec) throws {
            guard linears[l.prefix] == nil else { return }
            let w = try src.tensor(l.prefix + ".weight", shape: l.weightShape)
            let b = l.bias ? try src.tensor(l.prefix + ".bias", shape: [l.outFeatures]).data : nil
            if let q = try src.int8(l.prefix + ".weight", shape: l.weightShape) {
                linears[l.prefix] = PackedLinear(int8: q, bias: b)
                return
            }
            let packed = w.data.withUnsafeBufferPointer { PackedGemmF32($0, rows: l.outFeatures, depth: l.inFeatures) }
            linears[l.prefix] = PackedLinear(weight: packed, bias: b)
        }
        func norm(_ n: NormSpec) throws {
            guard norms[n.prefix] == nil else { return }
            // A LayerNorm (groups 0) keeps groups 1 here; LatentRunner reads its gamma and beta only.
            norms[n.prefix] = try GroupNormLayer(n.prefix, src, channels: n.channels, groups: max(n.groups, 1), eps: n.eps)
        }
        func attention(_ a: AttentionSpec) throws { for l in [a.toQ, a.toK, a.toV, a.toOut] { try linear(l) } }
        for step in plan.steps {
            switch step {
            case .conv(let c, _): try conv(c)
            case .resnet(let r):
                try norm(r.norm1); try conv(r.conv1); if let t = r.timeProjection { try linear(t) }
                try norm(r.norm2); try conv(r.conv2); if let s = r.shortcut { try conv(s) }
            case .transformer(let t):
                try norm(t.norm); try linear(t.projIn); try linear(t.projOut)
                for b in t.blocks {
                    try norm(b.norm1); try attention(b.attn1); try norm(b.norm2); try attention(b.attn2)
                    try norm(b.norm3); try linear(b.ffIn); try linear(b.ffOut)
                }
            case .spatialAttention(let s): try norm(s.norm); try attention(s.attention)
            case .tinyBlock(let b): for c in b.convs { try conv(c) }; if let s = b.skip { try conv(s) }
            case .groupNormSiLU(let n): try norm(n)
            case .pushSkip, .concatSkip, .relu, .tanhClamp, .affine: break
            }
        }
    }

    func conv(_ s: ConvSpec) -> LatentConv { convs[s.prefix]! }

    /// Keys (module prefixes) of the convolutions and projections packed for the int8 kernels.
    public var int8Layers: [String] {
        (convs.filter { $0.value.isInt8 }.map(\.key) + linears.filter { $0.value.int8 != nil }.map(\.key)).sorted()
    }
    func linear(_ s: LinearSpec) -> PackedLinear { linears[s.prefix]! }
    func norm(_ s: NormSpec) -> GroupNormLayer { norms[s.prefix]! }
}

/// Deterministic pseudo-random weights for benchmarks and tests of full-size configurations: each tensor is
/// uniform in [-a, a] with a = 1/sqrt(fan_in) (torch's default Linear/Conv2d init bound), norms' weights 1 and
/// biases small. Values come from a 64-bit LCG seeded by the key, so a key always gets the same tensor.
public struct RandomWeights: WeightSource {
    public init() {}
    public func contains(_ key: String) -> Bool { true }
    public func tensor(_ key: String, shape: [Int]) throws -> Tensor {
        let count = shape.reduce(1, *)
        let fanIn = shape.count >= 2 ? shape.dropFirst().reduce(1, *) : 1
        let bound = shape.count >= 2 ? Float(1 / Double(fanIn).squareRoot()) : 0.05
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for b in key.utf8 { state = (state ^ UInt64(b)) &* 0x100_0000_01B3 }
        var data = [Float](repeating: 0, count: count)
        let isNormWeight = shape.count == 1 && key.hasSuffix(".weight")
        for i in 0..<count {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let u = Float(Double(state >> 40) / Double(1 << 24)) * 2 - 1   // [-1, 1)
            data[i] = isNormWeight ? 1 + 0.05 * u : bound * u
        }
        return Tensor(shape: shape, data: data)
    }
}

// Parameterised layers of UNet2DModel, each holding its tensors under their checkpoint key names.
// A layer's `prefix` is its diffusers module path (e.g. "down_blocks.0.resnets.1.conv1"), so the key of a
// tensor is always prefix + ".weight" / ".bias": no remapping table is needed for diffusers checkpoints.

/// Where a model's tensors come from: a weight file, a quantized file dequantized at load, or an initialiser.
public protocol WeightSource {
    /// The float32 tensor stored under `key`, which must have exactly `shape`.
    func tensor(_ key: String, shape: [Int]) throws -> Tensor
    /// True when the source holds `key` (used for optional tensors such as biases).
    func contains(_ key: String) -> Bool
}

/// Weights repacked for the serving kernels (Kernels/FastConv.swift), built once at load.
public enum PackedConv: Sendable {
    case f32(PackedConvF32)
    case int8(PackedConvInt8)
}

public struct Conv2DLayer: Sendable {
    public var prefix: String
    public var weight: Tensor  // (Cout, Cin, KH, KW)
    public var bias: Tensor?   // (Cout)
    public var geometry: ConvGeometry
    /// Set by UNet2DModel.packForServing; nil runs im2col + OpenBLAS sgemm.
    public var packed: PackedConv?

    public init(_ prefix: String, _ src: WeightSource, geometry g: ConvGeometry, bias hasBias: Bool = true) throws {
        self.prefix = prefix
        self.geometry = g
        weight = try src.tensor(prefix + ".weight", shape: [g.outChannels, g.inChannels, g.kernelH, g.kernelW])
        bias = hasBias ? try src.tensor(prefix + ".bias", shape: [g.outChannels]) : nil
    }

    /// (N, Cin, H, W) -> (N, Cout, Ho, Wo)
    public func callAsFunction(_ x: Tensor) -> Tensor {
        Conv2D.forward(x, weight: weight, bias: bias, geometry: geometry)
    }

    public var parameters: [(String, Tensor)] {
        [(prefix + ".weight", weight)] + (bias.map { [(prefix + ".bias", $0)] } ?? [])
    }
}

public struct LinearLayer: Sendable {
    public var prefix: String
    public var weight: Tensor  // (out, in)
    public var bias: Tensor    // (out)
    /// Weight packed for FastConv.gemm (attention projections over all pixels); nil uses OpenBLAS.
    public var packed: PackedGemmF32?

    public init(_ prefix: String, _ src: WeightSource, in inFeatures: Int, out outFeatures: Int) throws {
        self.prefix = prefix
        weight = try src.tensor(prefix + ".weight", shape: [outFeatures, inFeatures])
        bias = try src.tensor(prefix + ".bias", shape: [outFeatures])
    }

    /// (N, in) -> (N, out)
    public func callAsFunction(_ x: Tensor) -> Tensor { Linear.forward(x, weight: weight, bias: bias) }

    public var parameters: [(String, Tensor)] { [(prefix + ".weight", weight), (prefix + ".bias", bias)] }
}

public struct GroupNormLayer: Sendable {
    public var prefix: String
    public var gamma: Tensor  // (C)  checkpoint ".weight"
    public var beta: Tensor   // (C)  checkpoint ".bias"
    public var groups: Int
    public var eps: Float

    public init(_ prefix: String, _ src: WeightSource, channels: Int, groups: Int, eps: Float) throws {
        self.prefix = prefix
        self.groups = groups
        self.eps = eps
        gamma = try src.tensor(prefix + ".weight", shape: [channels])
        beta = try src.tensor(prefix + ".bias", shape: [channels])
    }

    /// (N, C, ...) -> same shape; `silu` fuses the activation that follows every norm but the attention one.
    public func callAsFunction(_ x: Tensor, silu: Bool = false) -> Tensor {
        GroupNorm.forward(x, groups: groups, eps: eps, gamma: gamma, beta: beta, silu: silu)
    }

    public var parameters: [(String, Tensor)] { [(prefix + ".weight", gamma), (prefix + ".bias", beta)] }
}

/// Sums two tensors of the same shape.
@inline(__always)
func add(_ a: Tensor, _ b: Tensor) -> Tensor {
    precondition(a.shape == b.shape, "add: \(a.shape) vs \(b.shape)")
    var out = a
    out.data.withUnsafeMutableBufferPointer { o in
        b.data.withUnsafeBufferPointer { bp in
            for i in 0..<o.count { o[i] += bp[i] }
        }
    }
    return out
}

/// Concatenates (N, C1, H, W) and (N, C2, H, W) along channels (torch.cat(dim=1)).
func concatChannels(_ a: Tensor, _ b: Tensor) -> Tensor {
    let n = a.shape[0], c1 = a.shape[1], c2 = b.shape[1], hw = a.shape[2] * a.shape[3]
    precondition(b.shape[0] == n && b.shape[2] * b.shape[3] == hw, "concat: \(a.shape) vs \(b.shape)")
    var out = Tensor(zeros: [n, c1 + c2, a.shape[2], a.shape[3]])
    for i in 0..<n {
        let dst = i * (c1 + c2) * hw
        out.data.replaceSubrange(dst..<(dst + c1 * hw), with: a.data[(i * c1 * hw)..<((i + 1) * c1 * hw)])
        out.data.replaceSubrange((dst + c1 * hw)..<(dst + (c1 + c2) * hw), with: b.data[(i * c2 * hw)..<((i + 1) * c2 * hw)])
    }
    return out
}

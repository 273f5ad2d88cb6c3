// Parameterised layers, each holding its tensors under their checkpoint key names. A layer's `key` is its
// diffusers module path (e.g. "down_blocks.0.resnets.1.conv1"), so the key of a tensor is always key + ".weight" /
// ".bias": no remapping table is needed for diffusers checkpoints. Each layer is built from its LayerSpec (see
// LayerPlan.swift), which a network's plan derives from the config.

/// Where a model's tensors come from: a weight file, an in-memory dictionary, or an initialiser.
public protocol WeightSource {
    /// The float32 tensor stored under `key`, which must have exactly `shape` (int8 tensors are dequantized).
    func tensor(_ key: String, shape: [Int]) throws -> Tensor
    /// True when the source holds `key` (used for optional tensors such as biases).
    func contains(_ key: String) -> Bool
    /// The stored int8 codes and per-output-channel scales of `key` when the source holds it as I8 (Onestep's
    /// int8 format, Quant/Int8Weights.swift); nil when it is stored as floats.
    func int8(_ key: String, shape: [Int]) throws -> Int8Tensor?
}

extension WeightSource {
    public func int8(_ key: String, shape: [Int]) throws -> Int8Tensor? { nil }
}

/// Symmetric per-output-channel int8 weights as stored: w ≈ codes[o, ...] * scales[o].
public struct Int8Tensor: Sendable, Equatable {
    public var shape: [Int]      // (Cout, ...)
    public var codes: [Int8]     // row-major, |code| <= 127
    public var scales: [Float]   // (Cout)
    public init(shape: [Int], codes: [Int8], scales: [Float]) {
        precondition(shape.reduce(1, *) == codes.count && shape.first == scales.count, "int8 tensor: \(codes.count) codes, \(scales.count) scales for \(shape)")
        self.shape = shape
        self.codes = codes
        self.scales = scales
    }
}

/// Weights repacked for the serving kernels (Kernels/FastConv.swift), built once at load.
public enum PackedConv: Sendable {
    case f32(PackedConvF32)
    case int8(PackedConvInt8)
}

public struct Conv2DLayer: Sendable {
    public var spec: LayerSpec
    public var weight: Tensor  // (Cout, Cin, KH, KW); dequantized when the file stores int8
    public var bias: Tensor?   // (Cout)
    public var geometry: ConvGeometry
    /// The int8 codes and scales the weight file stores for this layer, if it stores them: packing for int8
    /// uses them as they are (no dequantize -> requantize).
    public var stored8: Int8Tensor?
    /// Set by packForServing; nil runs im2col + OpenBLAS sgemm (the `blas` baseline).
    public var packed: PackedConv?

    public var key: String { spec.key }

    /// A conv layer described by `spec` (which must be a `.conv2d`).
    public init(_ spec: LayerSpec, _ src: WeightSource, bias hasBias: Bool = true) throws {
        guard case .conv2d(let g) = spec.kind else { preconditionFailure("\(spec.key) is not a conv layer") }
        self.spec = spec
        geometry = g
        let shape = [g.outChannels, g.inChannels, g.kernelH, g.kernelW]
        weight = try src.tensor(spec.key + ".weight", shape: shape)
        stored8 = try src.int8(spec.key + ".weight", shape: shape)
        bias = hasBias ? try src.tensor(spec.key + ".bias", shape: [g.outChannels]) : nil
    }

    /// A stand-alone conv layer (kernel tests): an inner conv of unknown placement.
    public init(_ key: String, _ src: WeightSource, geometry g: ConvGeometry, bias hasBias: Bool = true) throws {
        try self.init(LayerSpec(key, .conv2d(g), role: .inner, pixels: 0), src, bias: hasBias)
    }

    /// (N, Cin, H, W) -> (N, Cout, Ho, Wo), NCHW reference path.
    public func callAsFunction(_ x: Tensor) -> Tensor {
        Conv2D.forward(x, weight: weight, bias: bias, geometry: geometry)
    }

    public var parameters: [(String, Tensor)] {
        [(key + ".weight", weight)] + (bias.map { [(key + ".bias", $0)] } ?? [])
    }
}

public struct LinearLayer: Sendable {
    public var spec: LayerSpec
    public var weight: Tensor  // (out, in)
    public var bias: Tensor    // (out)
    /// Weight packed for FastConv.gemm by packForServing; nil uses OpenBLAS (the `blas` baseline).
    public var packed: PackedGemmF32?
    /// Set instead when the int8 policy selects this layer (attention projections): the weight as a 1x1 int8
    /// convolution, run over channel-major activations by ChannelMajor.attention.
    public var packed8: PackedConvInt8?
    /// Set instead when the policy runs this layer in bf16 (Int8Policy.innerConvolutionsBF16Attention): the
    /// weight rounded to bf16 for FastConv.gemm.
    public var packedBF16: PackedGemmBF16?
    /// The int8 codes and scales the weight file stores for this layer, if it stores them: packing for int8 uses
    /// them as they are (no dequantize -> requantize), as Conv2DLayer.stored8.
    public var stored8: Int8Tensor?

    public var key: String { spec.key }
    public var inFeatures: Int { weight.shape[1] }
    public var outFeatures: Int { weight.shape[0] }

    /// A linear layer described by `spec` (which must be a `.linear`).
    public init(_ spec: LayerSpec, _ src: WeightSource) throws {
        guard case .linear(let i, let o) = spec.kind else { preconditionFailure("\(spec.key) is not a linear layer") }
        self.spec = spec
        weight = try src.tensor(spec.key + ".weight", shape: [o, i])
        stored8 = try src.int8(spec.key + ".weight", shape: [o, i])
        bias = try src.tensor(spec.key + ".bias", shape: [o])
    }

    /// Set when the weight file stores this layer int8 (the CLIP text encoder's projections, written by
    /// `quantize`): the stored codes packed for FastConv.linear (row-major tokens, activations quantized per row).
    public var packedRows8: PackedLinearInt8?

    /// A linear layer of a network that has no layer plan yet (the CLIP text encoder): role `.other`, no pixels.
    /// When `src` stores the weight as I8, `packedRows8` holds its codes (bit for bit) and the layer runs int8.
    public init(_ key: String, _ src: WeightSource, in inFeatures: Int, out outFeatures: Int) throws {
        try self.init(LayerSpec(key, .linear(inFeatures: inFeatures, outFeatures: outFeatures), role: .other, pixels: 0), src)
        packedRows8 = try src.int8(key + ".weight", shape: [outFeatures, inFeatures]).map { PackedLinearInt8(weights: $0, bias: bias.data) }
    }

    /// (N, in) -> (N, out), NCHW reference path (OpenBLAS).
    public func callAsFunction(_ x: Tensor) -> Tensor { Linear.forward(x, weight: weight, bias: bias) }

    /// (N, in) -> (N, out) on the serving kernels when packed (one GEMM column per row of x, so each row's
    /// result does not depend on the others), else OpenBLAS.
    public func serve(_ x: Tensor) -> Tensor {
        guard let packed else { return self(x) }
        let n = x.shape[0], i = inFeatures, o = outFeatures
        precondition(x.rank == 2 && x.shape[1] == i, "linear \(key): input \(x.shape), needs (N, \(i))")
        var xt = [Float](repeating: 0, count: i * n)   // (in, N)
        for r in 0..<n { for k in 0..<i { xt[k * n + r] = x.data[r * i + k] } }
        var yt = [Float](repeating: 0, count: o * n)   // (out, N), bias first, the GEMM accumulates onto it
        for m in 0..<o { for r in 0..<n { yt[m * n + r] = bias.data[m] } }
        xt.withUnsafeBufferPointer { b in
            yt.withUnsafeMutableBufferPointer { c in
                FastConv.gemm(packed, b: b.baseAddress!, ldb: n, c: c.baseAddress!, ldc: n, columns: 0..<n)
            }
        }
        var y = Tensor(zeros: [n, o])
        for r in 0..<n { for m in 0..<o { y.data[r * o + m] = yt[m * n + r] } }
        return y
    }

    public var parameters: [(String, Tensor)] { [(key + ".weight", weight), (key + ".bias", bias)] }
}

public struct GroupNormLayer: Sendable {
    public var spec: LayerSpec
    public var gamma: Tensor  // (C)  checkpoint ".weight"
    public var beta: Tensor   // (C)  checkpoint ".bias"
    public var groups: Int
    public var eps: Float

    public var key: String { spec.key }

    /// A GroupNorm described by `spec` (which must be a `.groupNorm`).
    public init(_ spec: LayerSpec, _ src: WeightSource) throws {
        guard case .groupNorm(let channels, let groups, let eps) = spec.kind else { preconditionFailure("\(spec.key) is not a GroupNorm") }
        self.spec = spec
        self.groups = groups
        self.eps = eps
        gamma = try src.tensor(spec.key + ".weight", shape: [channels])
        beta = try src.tensor(spec.key + ".bias", shape: [channels])
    }

    /// A GroupNorm of a network without a layer plan (the latent networks): `key`.weight and `key`.bias (C).
    public init(_ key: String, _ src: WeightSource, channels: Int, groups: Int, eps: Float) throws {
        try self.init(LayerSpec(key, .groupNorm(channels: channels, groups: groups, eps: eps), role: .other, pixels: 1), src)
    }

    /// (N, C, ...) -> same shape; `silu` fuses the activation that follows every norm but the attention one.
    public func callAsFunction(_ x: Tensor, silu: Bool = false) -> Tensor {
        GroupNorm.forward(x, groups: groups, eps: eps, gamma: gamma, beta: beta, silu: silu)
    }

    public var parameters: [(String, Tensor)] { [(key + ".weight", gamma), (key + ".bias", beta)] }
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

/// Visits a network's parameterised layers in checkpoint order with mutable access (packing stores the packed
/// weights this way). Networks walk their layers in one function (e.g. UNet2DModel.visitLayers), so every
/// consumer (parameter listing, packing, tests) sees the same layers. Every method defaults to doing nothing.
public protocol LayerVisitor {
    mutating func visit(_ layer: inout Conv2DLayer)
    mutating func visit(_ layer: inout LinearLayer)
    mutating func visit(_ layer: inout GroupNormLayer)
    /// A lookup table (class_embedding): (rows, dim).
    mutating func visit(embedding spec: LayerSpec, table: inout Tensor)
    /// The weights-free core of an attention block (a `.attention` spec) and the precision its heads run at.
    mutating func visit(attentionCore spec: LayerSpec, precision: inout AttentionPrecision)
}

extension LayerVisitor {
    public mutating func visit(_ layer: inout Conv2DLayer) {}
    public mutating func visit(_ layer: inout LinearLayer) {}
    public mutating func visit(_ layer: inout GroupNormLayer) {}
    public mutating func visit(embedding spec: LayerSpec, table: inout Tensor) {}
    public mutating func visit(attentionCore spec: LayerSpec, precision: inout AttentionPrecision) {}
}

/// Collects every tensor with its checkpoint key, in visiting order.
struct ParameterCollector: LayerVisitor {
    var tensors: [(String, Tensor)] = []
    mutating func visit(_ layer: inout Conv2DLayer) { tensors += layer.parameters }
    mutating func visit(_ layer: inout LinearLayer) { tensors += layer.parameters }
    mutating func visit(_ layer: inout GroupNormLayer) { tensors += layer.parameters }
    mutating func visit(embedding spec: LayerSpec, table: inout Tensor) { tensors.append((spec.key + ".weight", table)) }
}

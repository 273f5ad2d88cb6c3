// bf16 convolutions and GEMM for the layers int8 hurts (CKernels onestep_bf16.c, reached through FastConv's
// C wrappers, the one file importing CKernels): weights rounded to bf16 once at load, activations rounded per
// tile, products summed in fp32 by vdpbf16ps, or by its exact scalar emulation where the CPU lacks AVX512-BF16
// (the same bits either way). Twice the multiply-adds per instruction of fp32 FMA; about 3 significant digits
// per operand (bf16 keeps 8 bits of significand), where int8 keeps 255 levels per image.
//
// Dimension legend: M = Cout, K = Cin*KH*KW, cols = N*Ho*Wo.

/// bf16 conv weights: rounded to nearest even and packed 2 channels per word for vdpbf16ps.
public struct PackedConvBF16: Sendable {
    public let geometry: ConvGeometry
    public let bias: [Float]?        // (Cout)
    let words: [UInt32]              // [ceil(M/8)][ceil(Cin/2)*KH*KW][8]

    public init(_ layer: Conv2DLayer) {
        let g = layer.geometry
        precondition(layer.weight.count == g.outChannels * g.reduction, "conv \(layer.key): weight size")
        geometry = g
        bias = layer.bias?.data
        words = FastConv.packBF16(layer.weight.data, rows: g.outChannels, inChannels: g.inChannels, taps: g.kernelH * g.kernelW)
    }
}

/// bf16 GEMM weights A (M, K) for FastConv.gemm.
public struct PackedGemmBF16: Sendable {
    public let rows: Int, depth: Int   // M, K
    let words: [UInt32]

    public init(_ a: [Float], rows m: Int, depth k: Int) {
        precondition(a.count == m * k, "bf16 gemm: A has \(a.count) values, needs \(m) x \(k)")
        rows = m
        depth = k
        words = FastConv.packBF16(a, rows: m, inChannels: k, taps: 1)
    }
}

extension Float {
    /// The value rounded to bf16 (nearest even, denormals to zero) and back: what the bf16 kernels multiply.
    public var roundedToBF16: Float {
        let u = bitPattern
        if isNaN { return self }
        if u & 0x7f80_0000 == 0 { return Float(bitPattern: u & 0x8000_0000) }
        let r = u &+ 0x7fff &+ ((u >> 16) & 1)
        return Float(bitPattern: r & 0xffff_0000)
    }
}

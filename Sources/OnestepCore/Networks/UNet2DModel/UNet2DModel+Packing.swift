// Preparing a loaded model for serving: one walk over the model's layers (visitLayers, the same walk that lists
// its parameters) repacks every convolution and every linear layer for the fast kernels (CKernels via
// Kernels/FastConv.swift). At `.int8`, the layers the model's Int8Policy selects run in int8 (vpdpbusd), packed
// straight from the codes the weight file stores; those it puts in bf16 are rounded to bf16 (projections) or run
// their heads in bf16 (attention cores, FastAttention); the others run fp32.

public enum ConvPrecision: String, Sendable {
    /// im2col + OpenBLAS sgemm, no repacking (the path before the fast kernels; kept as a baseline).
    case blas
    case fp32
    case int8
}

/// Packs each layer it visits for one precision (see UNet2DModel.packForServing).
struct ServingPacker: LayerVisitor {
    let precision: ConvPrecision
    let policy: Int8Policy

    mutating func visit(_ layer: inout Conv2DLayer) {
        switch precision {
        case .blas: layer.packed = nil
        case .fp32: layer.packed = .f32(PackedConvF32(layer))
        case .int8: layer.packed = policy.selects(layer.spec) ? .int8(PackedConvInt8(layer)) : .f32(PackedConvF32(layer))
        }
    }

    mutating func visit(_ layer: inout LinearLayer) {
        layer.packed = precision == .blas ? nil : layer.weight.data.withUnsafeBufferPointer {
            PackedGemmF32($0, rows: layer.outFeatures, depth: layer.inFeatures)
        }
        layer.packed8 = nil
        layer.packedBF16 = nil
        // bf16 only where vdpbf16ps runs: elsewhere the bf16 GEMM is an exact scalar emulation, slower than fp32.
        if precision == .int8 && policy.precision(of: layer.spec) == .bf16 && FastConv.hasBF16Instructions {
            layer.packedBF16 = PackedGemmBF16(layer.weight.data, rows: layer.outFeatures, depth: layer.inFeatures)
        }
        if precision == .int8 && policy.selects(layer.spec) {
            let (i, o) = (layer.inFeatures, layer.outFeatures)
            // The file's codes when it stores them (bit for bit), else quantized from the float weight now.
            let codes = layer.stored8.map { Int8Tensor(shape: [o, i, 1, 1], codes: $0.codes, scales: $0.scales) }
                ?? Int8Weights.quantize(Tensor(shape: [o, i, 1, 1], data: layer.weight.data))
            layer.packed8 = PackedConvInt8(geometry: ConvGeometry(inChannels: i, outChannels: o, kernel: 1, padding: 0),
                                           bias: layer.bias.data, weights: codes)
        }
    }

    mutating func visit(attentionCore spec: LayerSpec, precision headPrecision: inout AttentionPrecision) {
        headPrecision = precision == .int8 && policy.precision(of: spec) == .bf16 ? .bf16 : .fp32
    }
}

extension UNet2DModel {
    /// Repacks every convolution and linear layer for `precision`; at `.int8`, `int8Policy` picks the int8 layers.
    public mutating func packForServing(_ precision: ConvPrecision) {
        var packer = ServingPacker(precision: precision, policy: int8Policy)
        visitLayers(&packer)
        for i in downBlocks.indices { for j in downBlocks[i].attentions.indices { downBlocks[i].attentions[j].packFusedProjections() } }
        midBlock?.attention?.packFusedProjections()
        for i in upBlocks.indices { for j in upBlocks[i].attentions.indices { upBlocks[i].attentions[j].packFusedProjections() } }
    }
}

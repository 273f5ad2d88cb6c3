// Preparing a loaded model for serving: every convolution's weights are repacked for the fast kernels
// (CKernels via Kernels/FastConv.swift). An int8 model runs its inner convolutions in int8 (vpdpbusd); the
// first and last convolutions stay fp32 — they are tiny (3 input or output channels) and sit where the error
// would show directly in the pixels.

public enum ConvPrecision: String, Sendable {
    /// im2col + OpenBLAS sgemm, no repacking (the path before the fast kernels; kept as a baseline).
    case blas
    case fp32
    case int8
}

extension UNet2DModel {
    /// Applies `body` to every convolution layer with its role.
    mutating func forEachConvolution(_ body: (inout Conv2DLayer, _ isEdge: Bool) -> Void) {
        body(&convIn, true)
        func resnet(_ r: inout ResnetBlock) {
            body(&r.conv1, false)
            body(&r.conv2, false)
            if r.shortcut != nil { body(&r.shortcut!, false) }
        }
        func resampler(_ s: inout BlockResampler?) {
            guard let current = s else { return }
            switch current {
            case .strideConv(var c): body(&c, false); s = .strideConv(c)
            case .upsampleConv(var c): body(&c, false); s = .upsampleConv(c)
            case .resnet(var r): resnet(&r); s = .resnet(r)
            }
        }
        for i in downBlocks.indices {
            for j in downBlocks[i].resnets.indices { resnet(&downBlocks[i].resnets[j]) }
            resampler(&downBlocks[i].downsampler)
        }
        if midBlock != nil {
            for j in midBlock!.resnets.indices { resnet(&midBlock!.resnets[j]) }
        }
        for i in upBlocks.indices {
            for j in upBlocks[i].resnets.indices { resnet(&upBlocks[i].resnets[j]) }
            resampler(&upBlocks[i].upsampler)
        }
        body(&convOut, true)
    }

    /// Applies `body` to every attention projection (q, k, v, out of every attention block).
    mutating func forEachAttentionProjection(_ body: (inout LinearLayer) -> Void) {
        func block(_ a: inout AttentionBlock) {
            body(&a.toQ); body(&a.toK); body(&a.toV); body(&a.toOut)
        }
        for i in downBlocks.indices { for j in downBlocks[i].attentions.indices { block(&downBlocks[i].attentions[j]) } }
        if midBlock?.attention != nil { block(&midBlock!.attention!) }
        for i in upBlocks.indices { for j in upBlocks[i].attentions.indices { block(&upBlocks[i].attentions[j]) } }
    }

    /// Repacks every convolution (and attention projection) for `precision`.
    public mutating func packForServing(_ precision: ConvPrecision) {
        forEachAttentionProjection { layer in
            layer.packed = precision == .blas ? nil : layer.weight.data.withUnsafeBufferPointer {
                PackedGemmF32($0, rows: layer.weight.shape[0], depth: layer.weight.shape[1])
            }
        }
        forEachConvolution { layer, isEdge in
            switch precision {
            case .blas: layer.packed = nil
            case .fp32: layer.packed = .f32(PackedConvF32(layer))
            case .int8: layer.packed = isEdge ? .f32(PackedConvF32(layer)) : .int8(PackedConvInt8(layer))
            }
        }
    }
}

// Analytic FLOP count of one forward pass (multiply and add counted separately, as GEMM GFLOP/s figures do):
// convolutions, attention projections and products, and the time MLP. Norms and element-wise work are left out:
// they are < 2% of the total on these models.

extension UNet2DModel {
    /// FLOPs of one image through the UNet at sample_size.
    public var flopsPerImage: Double {
        var total = 0.0
        var s = config.sampleSize
        func conv(_ c: Conv2DLayer, _ size: Int) -> Double { c.geometry.flops(height: size, width: size) }
        func resnet(_ r: ResnetBlock, _ size: Int) -> (Double, Int) {
            var f = conv(r.conv1, r.resample == .up ? size * 2 : (r.resample == .down ? size / 2 : size))
            let out = r.resample == .up ? size * 2 : (r.resample == .down ? size / 2 : size)
            f += conv(r.conv2, out)
            if let sc = r.shortcut { f += conv(sc, out) }
            f += 2 * Double(r.timeProjection.weight.count)
            return (f, out)
        }
        func attention(_ a: AttentionBlock, _ size: Int) -> Double {
            let c = Double(a.toQ.weight.shape[0]), l = Double(size * size)
            return 4 * 2 * c * c * l + 2 * 2 * l * l * c
        }
        total += 2 * Double(timeLinear1.weight.count + timeLinear2.weight.count)
        total += conv(convIn, s)
        for b in downBlocks {
            for (j, r) in b.resnets.enumerated() {
                total += resnet(r, s).0
                if !b.attentions.isEmpty { total += attention(b.attentions[j], s) }
            }
            switch b.downsampler {
            case .strideConv(let c): total += conv(c, s); s /= 2
            case .resnet(let r): let (f, o) = resnet(r, s); total += f; s = o
            default: break
            }
        }
        if let m = midBlock {
            total += resnet(m.resnets[0], s).0 + resnet(m.resnets[1], s).0
            if let a = m.attention { total += attention(a, s) }
        }
        for b in upBlocks {
            for (j, r) in b.resnets.enumerated() {
                total += resnet(r, s).0
                if !b.attentions.isEmpty { total += attention(b.attentions[j], s) }
            }
            switch b.upsampler {
            case .upsampleConv(let c): s *= 2; total += conv(c, s)
            case .resnet(let r): let (f, o) = resnet(r, s); total += f; s = o
            default: break
            }
        }
        return total + conv(convOut, s)
    }

    /// The convolution with the most FLOPs and the spatial size it runs at: the shape the bench compares
    /// against a plain sgemm.
    public var dominantConvolution: (geometry: ConvGeometry, size: Int) {
        var best: (ConvGeometry, Int, Double) = (convIn.geometry, config.sampleSize, 0)
        var s = config.sampleSize
        func consider(_ c: Conv2DLayer, _ size: Int) {
            let f = c.geometry.flops(height: size, width: size)
            if f > best.2 { best = (c.geometry, size, f) }
        }
        for b in downBlocks {
            for r in b.resnets { consider(r.conv1, s); consider(r.conv2, s) }
            if b.downsampler != nil { s /= 2 }
        }
        for b in upBlocks {
            for r in b.resnets { consider(r.conv1, s); consider(r.conv2, s) }
            if b.upsampler != nil { s *= 2 }
        }
        return (best.0, best.1)
    }
}

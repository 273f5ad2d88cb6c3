// UNet2DModel (matches diffusers models/unets/unet_2d.py UNet2DModel for the subset in UNetConfig): the loaded
// layers, built from the UNet2DPlan derived from the config. The serving forward is forwardBatched
// (UNet2DModel+Forward.swift); the NCHW reference forward the tests compare it with is in
// UNet2DModel+Reference.swift; packing is in UNet2DModel+Packing.swift.
import Foundation

public struct UNet2DModel: Sendable {
    public let config: UNetConfig
    /// The one description of this network's layers (keys, shapes, roles, sizes).
    public let plan: UNet2DPlan
    /// Which convolutions run in int8 when packed for `.int8` (from the weight file's metadata; see Int8Policy).
    public var int8Policy: Int8Policy = .innerConvolutions
    public var convIn: Conv2DLayer
    public var timeLinear1: LinearLayer
    public var timeLinear2: LinearLayer
    public var classEmbedding: Tensor?  // (num_class_embeds, T)
    public var downBlocks: [DownBlock]
    public var midBlock: MidBlock?
    public var upBlocks: [UpBlock]
    public var normOut: GroupNormLayer
    public var convOut: Conv2DLayer

    public init(config cfg: UNetConfig, weights src: WeightSource) throws {
        let plan = UNet2DPlan(config: cfg)
        config = cfg
        self.plan = plan
        convIn = try Conv2DLayer(plan.convIn, src)
        timeLinear1 = try LinearLayer(plan.timeLinear1, src)
        timeLinear2 = try LinearLayer(plan.timeLinear2, src)
        classEmbedding = try plan.classEmbedding.map { e in try src.tensor(e.key + ".weight", shape: e.tensors[0].shape) }
        downBlocks = try zip(plan.down, cfg.downBlockTypes).map { try DownBlock($0, type: $1, src) }
        midBlock = try plan.mid.map { try MidBlock($0, src) }
        upBlocks = try zip(plan.up, cfg.upBlockTypes).map { try UpBlock($0, type: $1, src) }
        normOut = try GroupNormLayer(plan.normOut, src)
        convOut = try Conv2DLayer(plan.convOut, src)
    }

    /// Visits every parameterised layer in checkpoint order (the order of `plan.layers`).
    public mutating func visitLayers<V: LayerVisitor>(_ v: inout V) {
        v.visit(&convIn)
        v.visit(&timeLinear1)
        v.visit(&timeLinear2)
        if let spec = plan.classEmbedding, classEmbedding != nil { v.visit(embedding: spec, table: &classEmbedding!) }
        for i in downBlocks.indices { downBlocks[i].visitLayers(&v) }
        midBlock?.visitLayers(&v)
        for i in upBlocks.indices { upBlocks[i].visitLayers(&v) }
        v.visit(&normOut)
        v.visit(&convOut)
    }

    /// Every tensor with its checkpoint key, in checkpoint order.
    public var parameters: [(String, Tensor)] {
        var copy = self
        var c = ParameterCollector()
        copy.visitLayers(&c)
        return c.tensors
    }

    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.1.count } }

    /// FLOPs of one image through the UNet at sample_size (UNet2DPlan.flopsPerImage).
    public var flopsPerImage: Double { plan.flopsPerImage }

    /// The convolution with the most FLOPs per image (UNet2DPlan.dominantConvolution).
    public var dominantConvolution: LayerSpec { plan.dominantConvolution }
}

public enum TimestepEmbedding {
    /// Sinusoidal embedding (matches diffusers get_timestep_embedding with scale 1, max_period 10000),
    /// computed in float32 in the same order as torch so that large timesteps give the same angles.
    /// (N) -> (N, dim)
    public static func sinusoidal(_ t: [Float], dim: Int, flipSinToCos: Bool, freqShift: Int) -> Tensor {
        let half = dim / 2
        let logMax = Float(-Foundation.log(10000.0))
        var freqs = [Float](repeating: 0, count: half)
        for i in 0..<half {
            let exponent = (logMax * Float(i)) / Float(half - freqShift)
            freqs[i] = Foundation.exp(exponent)
        }
        var out = Tensor(zeros: [t.count, dim])
        for (n, tv) in t.enumerated() {
            for i in 0..<half {
                let arg = tv * freqs[i]
                let s = Float(Foundation.sin(Double(arg))), c = Float(Foundation.cos(Double(arg)))
                out.data[n * dim + (flipSinToCos ? half + i : i)] = s
                out.data[n * dim + (flipSinToCos ? i : half + i)] = c
            }
        }
        return out
    }
}

// UNet2DModel forward pass (matches diffusers models/unets/unet_2d.py UNet2DModel.forward for the subset in
// UNetConfig): sinusoidal time embedding -> MLP (+ class embedding), conv_in, down blocks collecting skips,
// mid block, up blocks consuming them, GroupNorm + SiLU, conv_out.
import Foundation

public struct UNet2DModel: Sendable {
    public let config: UNetConfig
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
        config = cfg
        let ch = cfg.blockOutChannels, t = cfg.timeEmbedDim
        convIn = try Conv2DLayer("conv_in", src, geometry: ConvGeometry(inChannels: cfg.inChannels, outChannels: ch[0], kernel: 3, padding: 1))
        timeLinear1 = try LinearLayer("time_embedding.linear_1", src, in: ch[0], out: t)
        timeLinear2 = try LinearLayer("time_embedding.linear_2", src, in: t, out: t)
        classEmbedding = try cfg.numClassEmbeds.map { try src.tensor("class_embedding.weight", shape: [$0, t]) }
        var down: [DownBlock] = []
        var out = ch[0]
        for i in 0..<cfg.levels {
            let cin = out
            out = ch[i]
            down.append(try DownBlock(index: i, config: cfg, in: cin, out: out, isFinal: i == cfg.levels - 1, src))
        }
        downBlocks = down
        midBlock = cfg.midBlock ? try MidBlock(config: cfg, src) : nil
        let rev = Array(ch.reversed())
        var up: [UpBlock] = []
        out = rev[0]
        for i in 0..<cfg.levels {
            let prev = out
            out = rev[i]
            let cin = rev[min(i + 1, cfg.levels - 1)]
            up.append(try UpBlock(index: i, config: cfg, in: cin, prev: prev, out: out, isFinal: i == cfg.levels - 1, src))
        }
        upBlocks = up
        normOut = try GroupNormLayer("conv_norm_out", src, channels: ch[0], groups: cfg.normNumGroups, eps: cfg.normEps)
        convOut = try Conv2DLayer("conv_out", src, geometry: ConvGeometry(inChannels: ch[0], outChannels: cfg.outChannels, kernel: 3, padding: 1))
    }

    /// Every tensor with its checkpoint key, in a stable order.
    public var parameters: [(String, Tensor)] {
        var p = convIn.parameters + timeLinear1.parameters + timeLinear2.parameters
        if let e = classEmbedding { p.append(("class_embedding.weight", e)) }
        p += downBlocks.flatMap(\.parameters)
        p += midBlock?.parameters ?? []
        p += upBlocks.flatMap(\.parameters)
        return p + normOut.parameters + convOut.parameters
    }

    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.1.count } }

    /// sample (N, Cin, S, S), one timestep per image, class labels when the model has a class embedding
    /// -> (N, Cout, S, S).
    public func forward(_ sample: Tensor, timesteps: [Float], classLabels: [Int]? = nil) -> Tensor {
        let n = sample.shape[0]
        precondition(sample.rank == 4 && sample.shape[1] == config.inChannels, "sample \(sample.shape) does not match in_channels \(config.inChannels)")
        precondition(timesteps.count == n, "\(timesteps.count) timesteps for \(n) images")
        var x = sample
        if config.centerInputSample { x.data = x.data.map { 2 * $0 - 1 } }

        var emb = timeLinear2(Activations.silu(timeLinear1(TimestepEmbedding.sinusoidal(timesteps, dim: config.blockOutChannels[0],
                                                                                        flipSinToCos: config.flipSinToCos,
                                                                                        freqShift: config.freqShift))))
        if let table = classEmbedding {
            let labels = classLabels ?? []
            precondition(labels.count == n, "class-conditional model needs one class label per image")
            let t = config.timeEmbedDim
            for i in 0..<n {
                let row = labels[i]
                precondition(row >= 0 && row < table.shape[0], "class label \(row) out of range")
                for j in 0..<t { emb.data[i * t + j] += table.data[row * t + j] }
            }
        }
        // Every resnet applies SiLU to the embedding before its projection: do it once.
        let activated = Activations.silu(emb)

        var h = convIn(x)
        var skips: [Tensor] = [h]
        for block in downBlocks {
            let (out, s) = block(h, activatedTemb: activated)
            h = out
            skips += s
        }
        if let midBlock { h = midBlock(h, activatedTemb: activated) }
        for block in upBlocks { h = block(h, skips: &skips, activatedTemb: activated) }
        h = normOut(h, silu: true)
        return convOut(h)
    }
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

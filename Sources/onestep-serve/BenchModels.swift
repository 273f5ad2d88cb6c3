// Models and peaks for `onestep-serve bench` that need no files: the exact config of a published model with
// random weights made at bench time (nothing large is committed), and the machine's measured peaks (a large
// square sgemm for fp32, a large int8 GEMM on our best kernel level for int8), so every GFLOP/s the bench
// prints comes with its fraction of what this machine reached in the same run.
import CommandLineKit
import Foundation
import OnestepCore

enum BenchModels {
    /// openai/diffusers-cd_imagenet64_l2's unet/config.json (UNet2DModel, 296 M parameters, 219 GFLOP per image):
    /// matches IMAGENET_64_UNET_CONFIG in diffusers scripts/convert_consistency_to_diffusers.py.
    nonisolated(unsafe) static let cdImagenet64: [String: Any] = [
        "_class_name": "UNet2DModel", "sample_size": 64, "in_channels": 3, "out_channels": 3, "layers_per_block": 3,
        "num_class_embeds": 1000, "block_out_channels": [192, 384, 576, 768], "attention_head_dim": 64,
        "down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"],
        "resnet_time_scale_shift": "scale_shift", "attn_norm_num_groups": 32, "norm_num_groups": 32,
        "upsample_type": "resnet", "downsample_type": "resnet",
    ]

    nonisolated(unsafe) static let configs: [String: [String: Any]] = ["cd_imagenet64": cdImagenet64]

    /// The pipeline of a named config with random weights (seeded, so every run benches the same model).
    static func pipeline(config name: String, int8Policy: Int8Policy) throws -> ImagePipeline {
        guard let json = configs[name] else {
            throw FlagError("--config \(name): unknown; known configs: \((configs.keys.sorted() + LatentBenchConfig.names).joined(separator: ", "))")
        }
        let config = try UNetConfig(json: json)
        var model = try UNet2DModel(config: config, weights: RandomWeights(seed: 7))
        model.int8Policy = int8Policy
        return ImagePipeline(name: name, model: model, sampler: ConsistencySampler(), weightDType: "float32")
    }

    /// GFLOP/s of an (n x n) x (n x n) OpenBLAS sgemm on `threads` BLAS threads: the fp32 peak the bench divides by.
    static func sgemmPeak(n: Int = 2048, threads: Int, seconds: Double) -> Double {
        let saved = BLAS.threads
        BLAS.threads = threads
        defer { BLAS.threads = saved }
        return BenchCommand.sgemmGflops(m: n, n: n, k: n, seconds: seconds)
    }

    /// GOP/s of a large int8 GEMM on our best kernel level (a 1x1 int8 convolution, (1024, 2048) x (2048, 4096),
    /// activation quantization included) split over `team`: the int8 peak the bench divides by.
    static func int8Peak(team: ThreadTeam?, seconds: Double) -> Double {
        let m = 1024, k = 2048, cols = 4096
        var r = TorchGenerator(seed: 3)
        let layer = try! Conv2DLayer("peak", RandomWeights(seed: 4),
                                     geometry: ConvGeometry(inChannels: k, outChannels: m, kernel: 1, stride: 1, padding: 0))
        let packed = PackedConvInt8(layer), pool = BufferPool()
        let x = Activation(pool: pool, channels: k, batch: 1, height: 1, width: cols)
        x.data.update(from: r.randn(count: k * cols), count: k * cols)
        let perSecond = BenchCommand.rate(seconds: seconds, warmup: 1) {
            FastConv.conv(x, packed, pool: pool, team: team).release(to: pool)
        }
        return perSecond * 2 * Double(m * k * cols) / 1e9
    }
}

extension BenchModels {
    /// GOP/s of the int8 linear kernel (FastConv.linear: per-row u8 quantization included) on (rows, K) x (K, N).
    static func int8LinearGops(rows: Int = 2048, k: Int = 1024, n: Int = 1024, team: ThreadTeam?, seconds: Double) -> Double {
        var r = TorchGenerator(seed: 5)
        let w = Int8Weights.quantize(Tensor(shape: [n, k], data: r.randn(count: n * k)))
        let packed = PackedLinearInt8(weights: w, bias: [Float](repeating: 0, count: n))
        let x = r.randn(count: rows * k)
        var y = [Float](repeating: 0, count: rows * n)
        let perSecond = x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                BenchCommand.rate(seconds: seconds, warmup: 1) { FastConv.linear(xp.baseAddress!, rows: rows, packed, into: yp.baseAddress!, team: team) }
            }
        }
        return perSecond * 2 * Double(rows * k * n) / 1e9
    }
}

extension BenchModels {
    static func int8LinearInnerLoopGops(rows: Int = 2048, k: Int = 1024, n: Int = 1024, seconds: Double) -> Double {
        var r = TorchGenerator(seed: 6)
        let w = Int8Weights.quantize(Tensor(shape: [n, k], data: r.randn(count: n * k)))
        return FastConv.linearInnerLoopGops(rows: rows, PackedLinearInt8(weights: w, bias: nil), seconds: seconds)
    }
}

/// Weights drawn at random, scaled like PyTorch's default init (std 1/sqrt(fan in)) so activations stay finite
/// through a deep network; GroupNorm weights are 1. Deterministic for a seed.
struct RandomWeights: WeightSource {
    let seed: UInt64
    func contains(_ key: String) -> Bool { true }
    func tensor(_ key: String, shape: [Int]) throws -> Tensor {
        var h = seed
        for b in key.utf8 { h = (h ^ UInt64(b)) &* 0x100000001b3 }  // FNV-1a: each tensor its own stream
        var g = TorchGenerator(seed: h)
        let count = shape.reduce(1, *)
        if shape.count == 1 && key.contains("norm") && key.hasSuffix(".weight") { return Tensor(shape: shape, data: [Float](repeating: 1, count: count)) }
        let fanIn = shape.count > 1 ? shape.dropFirst().reduce(1, *) : 1
        let std = Float(1 / Double(fanIn).squareRoot()) * (shape.count == 1 ? 0.1 : 1)
        return Tensor(shape: shape, data: g.randn(count: count).map { $0 * std })
    }
}

// onestep-latent-bench: one forward pass of the full-size text-to-image latent networks with random weights,
// at 512x512 pixels (64x64 latents), batch 1: SD-Turbo's UNet (SD 2.1-base), the SD AutoencoderKL decoder,
// SDXS-512-DreamShaper's UNet and the TAESD decoder. Prints load time, forward ms (first and best of --runs),
// GFLOP per CPU second from the plan's FLOP walk (the machine may be shared: wall time includes waiting), the ratio to an OpenBLAS sgemm of the UNet's level-0 convolution shape
// measured in the same run, and the process's peak RSS. scripts/bench/t2i_pytorch.py times the same configs in
// PyTorch/diffusers. Run one network per process so the peak RSS is that network's:
//   .build/release/onestep-latent-bench sd-turbo-unet [--runs 2] [--threads 1] [--size 64] [--int8]
// --int8 also builds the network with its weights quantized in memory (RandomWeights().quantized(plan): the layers
// and codes `onestep-distill quantize` would write) and times fp32 and int8 forwards interleaved in the same run,
// printing both, their ratio and the int8 output's relative L2 error against fp32.
import Foundation
import OnestepCore

let configs: [String: [String: Any]] = [
    // stabilityai/sd-turbo unet/config.json (SD 2.1-base)
    "sd-turbo-unet": [
        "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
        "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false, "cross_attention_dim": 1024,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": NSNull(),
        "only_cross_attention": false, "out_channels": 4, "sample_size": 64, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "upcast_attention": false, "use_linear_projection": true,
    ],
    // IDKiro/sdxs-512-dreamshaper unet/config.json (the layout the issue gives)
    "sdxs-unet": [
        "_class_name": "UNet2DConditionModel", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280],
        "cross_attention_dim": 768, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1, "mid_block_type": NSNull(),
        "in_channels": 4, "out_channels": 4, "norm_num_groups": 32, "sample_size": 64, "use_linear_projection": false,
    ],
    // stabilityai/sd-turbo vae/config.json
    "sd-vae-decoder": [
        "_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
        "norm_num_groups": 32, "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"], "sample_size": 768, "scaling_factor": 0.18215,
    ],
    // madebyollin/taesd (diffusers AutoencoderTiny defaults)
    "taesd-decoder": ["_class_name": "AutoencoderTiny"],
    // openai/clip-vit-large-patch14 text model (SD 1.x / SDXS text encoder, CLIPTextBench.clipL), one 77-token prompt
    "clip-l-text": ["_class_name": "CLIPTextModel"],
]

func peakRSSMiB() -> Double {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_maxrss) / 1024   // ru_maxrss is KiB on Linux
}

/// CPU seconds (user + system) of the whole process so far: on a shared machine the wall time includes waiting
/// for a core, the CPU time does not.
func cpuSeconds() -> Double {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
}

func seconds(_ body: () throws -> Void) rethrows -> Double {
    let t0 = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
}

/// GFLOP/s (per CPU second) of an OpenBLAS sgemm (320 x 2880) x (2880 x S*S): the im2col GEMM of a 3x3 320->320 conv at level 0.
func sgemmGFLOPs(size s: Int) -> Double {
    let m = 320, k = 2880, n = s * s
    let a = [Float](repeating: 0.01, count: m * k), b = [Float](repeating: 0.02, count: k * n)
    var c = [Float](repeating: 0, count: m * n)
    var best = Double.infinity
    for _ in 0..<3 {
        let c0 = cpuSeconds()
        BLAS.sgemm(m: m, n: n, k: k, a: a, lda: k, b: b, ldb: n, c: &c, ldc: n)
        best = min(best, cpuSeconds() - c0)
    }
    return 2 * Double(m * n * k) / best / 1e9
}

/// (network, runs, threads, latent size) from the command line.
func parseArguments() -> (String?, Int, Int, Int) {
    var args = Array(CommandLine.arguments.dropFirst()).filter { $0 != "--int8" && $0 != "--int8-only" }
    func option(_ name: String, _ def: Int) -> Int {
        guard let i = args.firstIndex(of: name), i + 1 < args.count, let v = Int(args[i + 1]) else { return def }
        args.removeSubrange(i...(i + 1))
        return v
    }
    let runs = option("--runs", 2), threads = option("--threads", 1), size = option("--size", 64)
    return (args.first, runs, threads, size)
}
let (networkName, runs, threads, size) = parseArguments()
/// --int8-only: time (and profile by part) the int8 network alone, e.g. under `perf record`; no fp32 forward runs.
let int8Only = CommandLine.arguments.contains("--int8-only")
let compareInt8 = CommandLine.arguments.contains("--int8") || int8Only
guard let name = networkName, let json = configs[name] else {
    FileHandle.standardError.write("usage: onestep-latent-bench {\(configs.keys.sorted().joined(separator: "|"))} [--runs N] [--threads T] [--size LATENT] [--int8 | --int8-only]\n".data(using: .utf8)!)
    exit(2)
}
BLAS.threads = threads
let pool = BufferPool()
let profile = LatentProfile()
var forward: () throws -> Void = {}
/// The int8 network's forward (with --int8) and both outputs of the last run, for the error figure.
var forward8: (() throws -> Void)?
var output = Tensor(zeros: [1]), output8 = Tensor(zeros: [1])
var flops = 0.0
let loadSeconds = try seconds {
    switch json["_class_name"] as! String {
    case "UNet2DConditionModel":
        let cfg = try UNet2DConditionConfig(json: json)
        let unet = try UNet2DConditionModel(config: cfg, weights: RandomWeights())
        var r = TestlessRandom(seed: 1)
        let x = Tensor(shape: [1, 4, size, size], data: (0..<(16 * size * size / 4)).map { _ in r.next() })
        let ehs = Tensor(shape: [1, 77, cfg.crossAttentionDim[0]], data: (0..<(77 * cfg.crossAttentionDim[0])).map { _ in r.next() })
        flops = unet.flops(batch: 1, height: size, width: size)
        forward = { output = try unet.forward(x, timesteps: [999], encoderHiddenStates: ehs, pool: pool, threads: threads, profile: profile) }
        if compareInt8 {
            let unet8 = try UNet2DConditionModel(config: cfg, weights: RandomWeights().quantized(unet.plan))
            print("int8 layers: \(unet8.weights.int8Layers.count) of \(LatentInt8.candidates(unet.plan).count) candidates")
            forward8 = { output8 = try unet8.forward(x, timesteps: [999], encoderHiddenStates: ehs, pool: pool, threads: threads, profile: int8Only ? profile : nil) }
        }
    case "AutoencoderKL":
        let vae = try AutoencoderKLDecoder(config: try AutoencoderKLConfig(json: json), weights: RandomWeights())
        var r = TestlessRandom(seed: 2)
        let z = Tensor(shape: [1, 4, size, size], data: (0..<(4 * size * size)).map { _ in r.next() })
        flops = vae.flops(batch: 1, height: size, width: size)
        forward = { output = try vae.decode(z, pool: pool, threads: threads, profile: profile) }
        if compareInt8 {
            let vae8 = try AutoencoderKLDecoder(config: vae.config, weights: RandomWeights().quantized(vae.plan))
            forward8 = { output8 = try vae8.decode(z, pool: pool, threads: threads, profile: int8Only ? profile : nil) }
        }
    case "CLIPTextModel":
        let cfg = CLIPTextBench.clipL
        let enc = try CLIPTextModel(config: cfg, weights: CLIPTextBench.RandomWeights(seed: 1))
        let ids = [(0..<77).map { ($0 * 7919) % cfg.vocabSize }]
        flops = CLIPTextBench.flops(cfg, batch: 1, length: 77)
        forward = { output = try enc.forward(ids: ids) }
        if compareInt8 {
            // The same random values (a fresh generator read in the same order), projections quantized in memory.
            let enc8 = try CLIPTextModel(config: cfg, weights: QuantizingWeights(CLIPTextBench.RandomWeights(seed: 1),
                                                                                  selected: LatentInt8.textEncoderCandidates(cfg)))
            forward8 = { output8 = try enc8.forward(ids: ids) }
        }
    default:
        let vae = try AutoencoderTinyDecoder(config: try AutoencoderTinyConfig(json: json), weights: RandomWeights())
        var r = TestlessRandom(seed: 3)
        let z = Tensor(shape: [1, 4, size, size], data: (0..<(4 * size * size)).map { _ in r.next() })
        flops = vae.flops(batch: 1, height: size, width: size)
        forward = { output = try vae.decode(z, pool: pool, threads: threads, profile: profile) }
        if compareInt8 {
            let vae8 = try AutoencoderTinyDecoder(config: vae.config, weights: RandomWeights().quantized(vae.plan))
            forward8 = { output8 = try vae8.decode(z, pool: pool, threads: threads, profile: int8Only ? profile : nil) }
        }
    }
}
if int8Only, let f = forward8 {
    // The int8 network takes the timed (and profiled) slot; the fp32 one is built (for its plan) but never run.
    forward = { try f(); output = output8 }
    forward8 = nil
}
let rssAfterLoad = peakRSSMiB()
var times: [Double] = [], cpu: [Double] = [], times8: [Double] = [], cpu8: [Double] = []
for _ in 0..<max(1, runs) {
    let c0 = cpuSeconds()
    times.append(try seconds(forward))
    cpu.append(cpuSeconds() - c0)
    if let forward8 {
        let c1 = cpuSeconds()
        times8.append(try seconds(forward8))
        cpu8.append(cpuSeconds() - c1)
    }
}
let best = times.min()!
let gemm = sgemmGFLOPs(size: size)
let bestCPU = cpu[times.firstIndex(of: best)!]
let rate = flops / bestCPU / 1e9
print(String(format: "%@%@ latent %dx%d batch 1 threads %d: load+pack %.1f s, forward first %.0f ms, best of %d %.0f ms (CPU %.0f ms), %.1f GFLOP (plan walk), %.1f GFLOP per CPU second = %.2fx OpenBLAS sgemm (%.1f, level-0 conv shape, same run), peak RSS %.0f MiB (after load %.0f MiB)",
             name, int8Only ? " (int8)" : "", size, size, threads, loadSeconds, times[0] * 1000, times.count, best * 1000, bestCPU * 1000, flops / 1e9, rate, rate / gemm, gemm,
             peakRSSMiB(), rssAfterLoad))
if !cpu8.isEmpty {
    let f = cpu.min()!, q = cpu8.min()!
    print(String(format: "int8 vs fp32, interleaved in this run: fp32 best CPU %.0f ms (wall %.0f), int8 best CPU %.0f ms (wall %.0f): int8 takes %.2fx the fp32 CPU time (%.2fx faster); int8 output relative L2 vs fp32 %.4f",
                 f * 1000, times.min()! * 1000, q * 1000, times8.min()! * 1000, q / f, f / q, TensorError.relativeL2(output8.data, output.data)))
}
print("thread CPU time over all \(times.count) runs by part (threads 1 only): " + profile.summary)

/// Inputs for the bench: uniform [-1, 1) from a 64-bit LCG.
struct TestlessRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> Float {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Float(Double(state >> 40) / Double(1 << 24)) * 2 - 1
    }
}

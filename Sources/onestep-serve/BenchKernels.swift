// `onestep-serve bench --kernels`: the convolution and GEMM kernels alone on the layer shapes that matter (the
// cd_imagenet64 config's, and the SD-family UNet's: 320/640/1280 channels at 64x64/32x32/16x16 latents, attention
// projections 320->320 over 4096 tokens, feed-forward 320->2560), each as GOP per CPU second of the calling
// thread (best call: a shared machine steals wall time, not CPU time) and as a fraction of the machine's peak
// measured in the same run (VNNI for int8, vdpbf16ps for bf16, vfmadd231ps for fp32; MachinePeaks). int8
// convolutions run twice, interleaved call by call: the blocked AVX-512 driver and the per-tile driver it
// replaced (FastConv.usePerTileInt8Driver), so the ratio between them is measured in one run. Attention heads
// run bf16 and fp32, interleaved the same way (attentionRows).
import Foundation
import OnestepCore

enum BenchKernels {
    struct Shape {
        var name: String, cin: Int, cout: Int, kernel: Int, size: Int, batch: Int = 1
        var geometry: ConvGeometry { ConvGeometry(inChannels: cin, outChannels: cout, kernel: kernel, stride: 1, padding: kernel / 2) }
        var ops: Double { 2 * Double(cout) * Double(cin * kernel * kernel) * Double(batch * size * size) }
    }

    static let convShapes: [Shape] = [
        Shape(name: "cd64 192ch 3x3 @64x64", cin: 192, cout: 192, kernel: 3, size: 64),
        Shape(name: "cd64 384ch 3x3 @32x32", cin: 384, cout: 384, kernel: 3, size: 32),
        Shape(name: "cd64 576ch 3x3 @16x16", cin: 576, cout: 576, kernel: 3, size: 16),
        Shape(name: "cd64 768ch 3x3 @8x8", cin: 768, cout: 768, kernel: 3, size: 8),
        Shape(name: "cd64 768ch 3x3 @8x8 b4", cin: 768, cout: 768, kernel: 3, size: 8, batch: 4),
        Shape(name: "cd64 attn 384->384 @32x32", cin: 384, cout: 384, kernel: 1, size: 32),
        Shape(name: "sd 320ch 3x3 @64x64", cin: 320, cout: 320, kernel: 3, size: 64),
        Shape(name: "sd 640ch 3x3 @32x32", cin: 640, cout: 640, kernel: 3, size: 32),
        Shape(name: "sd 1280ch 3x3 @16x16", cin: 1280, cout: 1280, kernel: 3, size: 16),
        Shape(name: "sd attn 320->320 x4096", cin: 320, cout: 320, kernel: 1, size: 64),
        Shape(name: "sd ff 320->2560 x4096", cin: 320, cout: 2560, kernel: 1, size: 64),
        Shape(name: "taesd 64ch 3x3 @256x256", cin: 64, cout: 64, kernel: 3, size: 256),
        // SDXS-512's transformer projections: feed-forward in / out and q, k, v, out at 32x32 and 16x16 latents
        Shape(name: "sdxs ff 640->5120 @32x32", cin: 640, cout: 5120, kernel: 1, size: 32),
        Shape(name: "sdxs ff 2560->640 @32x32", cin: 2560, cout: 640, kernel: 1, size: 32),
        Shape(name: "sdxs ff 1280->10240 @16x16", cin: 1280, cout: 10240, kernel: 1, size: 16),
        Shape(name: "sdxs ff 5120->1280 @16x16", cin: 5120, cout: 1280, kernel: 1, size: 16),
        Shape(name: "sdxs attn 640->640 @32x32", cin: 640, cout: 640, kernel: 1, size: 32),
        Shape(name: "sdxs attn 1280->1280 @16x16", cin: 1280, cout: 1280, kernel: 1, size: 16),
    ]
    static let bf16Shapes = [0, 6, 8, 9].map { convShapes[$0] }
    /// Every shape also in fp32, so each layer kind's int8 / fp32 ratio is measured on the CPU at hand (on AVX2
    /// without VNNI the int8 pair peaks at about 1.6x the fp32 FMA peak, not 4x).
    static let fp32Shapes = convShapes

    /// CPU seconds of the calling thread.
    static func threadCPU() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    /// Best CPU time of one call of each body, calls interleaved, over about `seconds` of wall time (at least 3 each).
    static func bestCPU(seconds: Double, _ bodies: [() -> Void]) -> [Double] {
        var best = [Double](repeating: .infinity, count: bodies.count)
        for b in bodies { b() }  // warm-up: workspaces, pool buffers, page faults
        let start = Date()
        var rounds = 0
        repeat {
            for (i, b) in bodies.enumerated() {
                let t = threadCPU()
                b()
                best[i] = min(best[i], threadCPU() - t)
            }
            rounds += 1
        } while Date().timeIntervalSince(start) < seconds || rounds < 3
        return best
    }

    static func run(seconds: Double, peaks: MachinePeaks) -> String {
        var out = String(format: "kernels on one core (%@), GOP per CPU second, best call; peaks: int8 (%@) %@, bf16 %@, fp32 FMA %@ GOP/s at %.2f GHz\n",
                         KernelLevel.best.description, peaks.int8Name, MachinePeaks.describe(peaks.int8Gops, ghz: peaks.ghz),
                         MachinePeaks.describe(peaks.bf16Gflops, ghz: peaks.ghz), MachinePeaks.describe(peaks.fmaGflops, ghz: peaks.ghz), peaks.ghz)
        out += "kernel   shape                          M      K   cols      ms    GOP/s  of peak   per-tile ms  GOP/s  of peak  speed-up\n"
        func pct(_ g: Double, _ peak: Double?) -> String { peak.map { String(format: "%6.1f%%", 100 * g / $0) } ?? "      -" }
        let pool = BufferPool()
        for (si, s) in convShapes.enumerated() {
            let layer = try! Conv2DLayer("bench\(si)", RandomWeights(seed: UInt64(100 + si)), geometry: s.geometry)
            let x = input(s, pool: pool, seed: UInt64(si))
            let packed = PackedConvInt8(layer)
            let blocked = { FastConv.conv(x, packed, pool: pool).release(to: pool) }
            let perTile = {
                FastConv.usePerTileInt8Driver(true)
                FastConv.conv(x, packed, pool: pool).release(to: pool)
                FastConv.usePerTileInt8Driver(false)
            }
            let t = bestCPU(seconds: seconds, [blocked, perTile])
            let g = s.ops / t[0] / 1e9, g0 = s.ops / t[1] / 1e9
            out += row("int8", s) + String(format: "%8.3f %8.1f  %@   %8.3f %8.1f  %@  %6.2fx\n", 1e3 * t[0], g, pct(g, peaks.int8Gops),
                                          1e3 * t[1], g0, pct(g0, peaks.int8Gops), t[1] / t[0])
            if s.kernel == 1 {
                // As the latent networks' projections run it (bias in the epilogue): the 1x1 linear driver
                // (onestep_linear_q8.c) against the blocked conv driver it replaced for 1x1 layers.
                let linear = { FastConv.convFused(x, packed, pool: pool, relu: false, outputRange: false).0.release(to: pool) }
                let convDriver = {
                    FastConv.useLinearInt8Driver(false)
                    FastConv.convFused(x, packed, pool: pool, relu: false, outputRange: false).0.release(to: pool)
                    FastConv.useLinearInt8Driver(true)
                }
                let f = bestCPU(seconds: seconds, [linear, convDriver])
                let gl = s.ops / f[0] / 1e9, gb = s.ops / f[1] / 1e9
                out += row("int8 1x1", s) + String(format: "%8.3f %8.1f  %@   %8.3f %8.1f  %@  %6.2fx  (per-tile = blocked conv driver)\n",
                                                    1e3 * f[0], gl, pct(gl, peaks.int8Gops), 1e3 * f[1], gb, pct(gb, peaks.int8Gops), f[1] / f[0])
            }
            if s.name.hasPrefix("taesd") || s.name == "sd 320ch 3x3 @64x64" {
                // As TAESD's blocks run it: ReLU and the output range in the epilogue, the input's range known (so
                // quantizing x only encodes); per-tile column: the unfused call above plus a ReLU pass.
                let range = FastConv.convFused(x, packed, pool: pool, relu: true, outputRange: true)
                range.0.release(to: pool)
                let fused = { FastConv.convFused(x, packed, pool: pool, relu: true, inputRange: range.1, outputRange: true).0.release(to: pool) }
                let unfused = {
                    let y = FastConv.conv(x, packed, pool: pool)
                    FastConv.relu(y.data, count: y.count)
                    y.release(to: pool)
                }
                let f = bestCPU(seconds: seconds, [fused, unfused])
                let gf = s.ops / f[0] / 1e9, gu = s.ops / f[1] / 1e9
                out += row("int8+ep", s) + String(format: "%8.3f %8.1f  %@   %8.3f %8.1f  %@  %6.2fx\n", 1e3 * f[0], gf, pct(gf, peaks.int8Gops),
                                                   1e3 * f[1], gu, pct(gu, peaks.int8Gops), f[1] / f[0])
            }
            x.release(to: pool)
        }
        for (si, s) in bf16Shapes.enumerated() {
            let layer = try! Conv2DLayer("bf\(si)", RandomWeights(seed: UInt64(200 + si)), geometry: s.geometry)
            let x = input(s, pool: pool, seed: UInt64(50 + si))
            let packed = PackedConvBF16(layer)
            let t = bestCPU(seconds: seconds, [{ FastConv.conv(x, packed, pool: pool).release(to: pool) }])
            let g = s.ops / t[0] / 1e9
            out += row("bf16", s) + String(format: "%8.3f %8.1f  %@\n", 1e3 * t[0], g, pct(g, peaks.bf16Gflops))
            x.release(to: pool)
        }
        for (si, s) in fp32Shapes.enumerated() {
            let layer = try! Conv2DLayer("f\(si)", RandomWeights(seed: UInt64(300 + si)), geometry: s.geometry)
            let x = input(s, pool: pool, seed: UInt64(80 + si))
            let packed = PackedConvF32(layer)
            let t = bestCPU(seconds: seconds, [{ FastConv.conv(x, packed, pool: pool).release(to: pool) }])
            let g = s.ops / t[0] / 1e9
            out += row("fp32", s) + String(format: "%8.3f %8.1f  %@\n", 1e3 * t[0], g, pct(g, peaks.fmaGflops))
            x.release(to: pool)
        }
        // The row-major int8 linear kernel (text encoders, latent networks' projections): tokens x features.
        for (name, rows, k, n) in [("sd attn 4096x320->320", 4096, 320, 320), ("sd ff 4096x320->2560", 4096, 320, 2560)] {
            var r = TorchGenerator(seed: 11)
            let packed = PackedLinearInt8(weights: Int8Weights.quantize(Tensor(shape: [n, k], data: r.randn(count: n * k))), bias: nil)
            let x = UnsafeMutablePointer<Float>.allocate(capacity: rows * k), y = UnsafeMutablePointer<Float>.allocate(capacity: rows * n)
            defer { x.deallocate(); y.deallocate() }
            x.update(from: r.randn(count: rows * k), count: rows * k)
            let t = bestCPU(seconds: seconds, [{ FastConv.linear(x, rows: rows, packed, into: y) }])
            let g = 2 * Double(rows * k * n) / t[0] / 1e9
            out += "int8-lin " + name.padding(toLength: 28, withPad: " ", startingAt: 0)
                + String(format: "%7d %6d %6d %8.3f %8.1f  %@\n", n, k, rows, 1e3 * t[0], g, pct(g, peaks.int8Gops))
        }
        out += attentionRows(seconds: seconds, peaks: peaks)
        return out
    }

    /// One attention head (one image) on the cd_imagenet64 and SD shapes: bf16 (FastAttention) and the fp32 head,
    /// interleaved call by call, as GFLOP per CPU second (4 Lq Lk D flops: Q^T K and P V) and fraction of the bf16
    /// and FMA peaks. The fp32 column is empty for cross-attention (its fp32 path is two OpenBLAS GEMMs).
    static func attentionRows(seconds: Double, peaks: MachinePeaks) -> String {
        func pct(_ g: Double, _ peak: Double?) -> String { peak.map { String(format: "%6.1f%%", 100 * g / $0) } ?? "      -" }
        var out = "attention head   shape                Lq     Lk    D   bf16 ms  GFLOP/s  of bf16   fp32 ms  GFLOP/s  of FMA  speed-up\n"
        guard FastAttention.resolved(.bf16) == .bf16 else { return out + "(no AVX512-BF16 here: bf16 heads run the fp32 head)\n" }
        let shapes = [("cd64 @32x32", 1024, 1024, 64), ("cd64 @16x16", 256, 256, 64), ("cd64 @8x8", 64, 64, 64),
                      ("sd self @64x64", 4096, 4096, 64), ("sd self @32x32", 1024, 1024, 64), ("sd cross 77 tokens", 4096, 77, 64),
                      ("sdxs self @32x32", 1024, 1024, 80), ("sdxs self @16x16", 256, 256, 160),
                      ("sdxs cross @32x32", 1024, 77, 80), ("sdxs cross @16x16", 256, 77, 160)]
        for (name, lq, lk, d) in shapes {
            var r = TorchGenerator(seed: 17)
            let q = r.randn(count: d * lq), k = r.randn(count: d * lk), v = r.randn(count: d * lk)
            var o = [Float](repeating: 0, count: d * lq)
            var sb = [Float](repeating: 0, count: FastAttention.bf16ScratchCount(queries: lq, keys: lk, headDim: d))
            var sf = [Float](repeating: 0, count: lq == lk ? FastAttention.scratchCount(.fp32, length: lq, headDim: d) : 0)
            let scale = Float(1 / Double(d).squareRoot())
            let bf16 = {
                q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
                    o.withUnsafeMutableBufferPointer { op in sb.withUnsafeMutableBufferPointer { sp in
                        _ = FastAttention.crossHeadBF16(q: qp.baseAddress!, ldq: lq, queries: lq, k: kp.baseAddress!, v: vp.baseAddress!,
                                                        ldk: lk, keys: lk, headDim: d, scale: scale, out: op.baseAddress!, scratch: sp.baseAddress!)
                    } }
                } } }
            }
            let fp32 = {
                q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
                    o.withUnsafeMutableBufferPointer { op in sf.withUnsafeMutableBufferPointer { sp in
                        FastAttention.head(.fp32, q: qp.baseAddress!, k: kp.baseAddress!, v: vp.baseAddress!, ld: lq, length: lq, headDim: d,
                                           scale: scale, out: op.baseAddress!, scratch: sp.baseAddress!)
                    } }
                } } }
            }
            let t = bestCPU(seconds: seconds, lq == lk ? [bf16, fp32] : [bf16])
            let flops = 4 * Double(lq) * Double(lk) * Double(d), g = flops / t[0] / 1e9
            out += "attn " + name.padding(toLength: 27, withPad: " ", startingAt: 0)
                + String(format: "%6d %6d %4d %9.3f %8.1f  %@", lq, lk, d, 1e3 * t[0], g, pct(g, peaks.bf16Gflops))
            if t.count > 1 {
                let g0 = flops / t[1] / 1e9
                out += String(format: " %9.3f %8.1f  %@  %6.2fx", 1e3 * t[1], g0, pct(g0, peaks.fmaGflops), t[1] / t[0])
            }
            out += "\n"
        }
        return out
    }

    static func row(_ kind: String, _ s: Shape) -> String {
        kind.padding(toLength: 9, withPad: " ", startingAt: 0) + s.name.padding(toLength: 28, withPad: " ", startingAt: 0)
            + String(format: "%7d %6d %6d", s.cout, s.cin * s.kernel * s.kernel, s.batch * s.size * s.size)
    }

    static func input(_ s: Shape, pool: BufferPool, seed: UInt64) -> Activation {
        var r = TorchGenerator(seed: seed)
        let count = s.cin * s.batch * s.size * s.size
        let x = Activation(pool: pool, channels: s.cin, batch: s.batch, height: s.size, width: s.size)
        x.data.update(from: r.randn(count: count), count: count)
        return x
    }
}

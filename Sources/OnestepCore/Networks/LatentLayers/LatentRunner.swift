// Walks a LatentPlan on channel-major activations (C, N, H, W) from a BufferPool: every convolution is one
// FastConv call over all N*H*W columns, every projection one FastConv.gemm, statistics (GroupNorm, LayerNorm,
// softmax) per image or per column in a fixed order, so an image's output does not depend on its batch
// neighbours. Maths of each step: see the spec types in LatentPlan.swift (diffusers sources named there).
import Foundation

/// Text embeddings in channel-major layout: (Dc, N, Lc), row d holds feature d of every token of every image.
public struct LatentContext {
    public var data: UnsafePointer<Float>
    public var channels: Int   // Dc
    public var batch: Int      // N
    public var length: Int     // Lc tokens per image
    public var columns: Int { batch * length }

    public init(data: UnsafePointer<Float>, channels: Int, batch: Int, length: Int) {
        self.data = data
        self.channels = channels
        self.batch = batch
        self.length = length
    }
}

/// CPU time of the calling thread per part of the forward pass (for benchmarks; exact only with threads 1).
public final class LatentProfile: @unchecked Sendable {
    public private(set) var seconds: [String: Double] = [:]
    public init() {}

    static func threadCPU() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    func measure<T>(_ part: String, _ body: () -> T) -> T {
        let t0 = Self.threadCPU()
        let r = body()
        seconds[part, default: 0] += Self.threadCPU() - t0
        return r
    }

    /// "part ms, ..." sorted by time.
    public var summary: String {
        seconds.sorted { $0.value > $1.value }.map { String(format: "%@ %.0f ms", $0.key, $0.value * 1000) }.joined(separator: ", ")
    }
}

public struct LatentRunner {
    /// Most latent positions (h * w) a forward accepts: 128x128 latents, 1024x1024 pixels. Attention over all
    /// positions needs (h*w)^2 floats of scratch (1 GiB here), so larger inputs are refused, not attempted.
    public static let maxLatentPositions = 128 * 128

    /// Throws LatentInputError when latents of h x w exceed `maxLatentPositions`.
    public static func checkLatentSize(height h: Int, width w: Int) throws {
        guard h * w <= maxLatentPositions else {
            throw LatentInputError(problem: "latents of \(h)x\(w) exceed \(maxLatentPositions) positions (128x128, i.e. 1024x1024 pixels); request a smaller image")
        }
    }

    public let plan: LatentPlan
    public let weights: LatentWeights
    /// Threads for convolutions, projections and attention heads (results are identical for any count).
    public var threads: Int
    /// When set, each part of the walk adds its CPU time here.
    public var profile: LatentProfile?
    /// Self-attention heads wider than this run as two OpenBLAS GEMMs (LatentKernels.crossAttentionHead) instead
    /// of the C head kernel, which suits the UNets' heads (D 40 to 160) but not the VAE's single 512-wide head.
    public var gemmAttentionAboveHeadDim = 256
    /// How attention heads run. nil (the default): as the weights say, bf16 products (FastAttention) for an
    /// attention whose q, k and v projections are stored int8 (LatentInt8's policy: an int8 model's heads), fp32
    /// otherwise; bf16 falls back to fp32 where the CPU lacks vdpbf16ps. Set to compare the two; its default
    /// is ONESTEP_ATTENTION_HEADS=fp32|bf16 when set (read once; for A/B benchmarks of whole pipelines only).
    public var attentionHeads: AttentionPrecision? = LatentRunner.attentionHeadsFromEnvironment

    static let attentionHeadsFromEnvironment: AttentionPrecision? =
        ProcessInfo.processInfo.environment["ONESTEP_ATTENTION_HEADS"].flatMap(AttentionPrecision.init(rawValue:))

    /// The thread team convolutions and projections split their columns over when the pool carries none (a
    /// server worker's pool carries its own): made once per runner for `threads` > 1.
    let ownTeam: ThreadTeam?

    public init(plan: LatentPlan, weights: LatentWeights, threads: Int = 1, profile: LatentProfile? = nil) {
        self.plan = plan
        self.weights = weights
        self.threads = max(1, threads)
        self.profile = profile
        ownTeam = threads > 1 ? ThreadTeam(threads: min(threads, 256)) : nil
    }

    /// x (Cin, N, H, W), consumed (released to the pool) -> the plan's output (Cout, N, Ho, Wo), owned by the
    /// caller. `timeEmbedding` is silu(temb) (N, T), what every resnet's time_emb_proj reads; `context` the text.
    public func run(_ x: Activation, timeEmbedding: Tensor? = nil, context: LatentContext? = nil, pool: BufferPool) -> Activation {
        var walk = Walk(runner: self, pool: pool, current: x)
        if let t = timeEmbedding {
            // silu(temb) transposed to (T, N), the column layout FastConv.gemm reads.
            let n = t.shape[0], d = t.shape[1]
            let tt = pool.acquire(d * n)
            for i in 0..<n { for j in 0..<d { tt[j * n + i] = t.data[i * d + j] } }
            walk.temb = (tt, d, n)
        }
        walk.context = context
        for step in plan.steps { walk.step(step) }
        if let (tt, d, n) = walk.temb { pool.release(tt, count: d * n) }
        precondition(walk.skips.isEmpty, "plan left \(walk.skips.count) skip tensors on the stack")
        return walk.current
    }
}

/// The state of one forward pass: the current activation, the skip stack and how many holders each buffer has.
private struct Walk {
    let runner: LatentRunner
    let pool: BufferPool
    var current: Activation
    var skips: [Activation] = []
    var holders: [UnsafeMutablePointer<Float>: Int] = [:]
    /// Per image (lo, hi) of `current`'s values when the fused conv that wrote it measured them (nil otherwise),
    /// so the next int8 conv skips its range pass.
    var currentRange: [Float]?
    var temb: (UnsafeMutablePointer<Float>, Int, Int)?   // silu(temb) (T, N)
    var context: LatentContext?
    var w: LatentWeights { runner.weights }

    func timed<T>(_ part: String, _ body: () -> T) -> T {
        guard let p = runner.profile else { return body() }
        return p.measure(part, body)
    }
    var threads: Int { max(runner.threads, pool.team?.threads ?? 1) }
    /// The pool's team (a server worker's) or the runner's own.
    var team: ThreadTeam? { pool.team ?? runner.ownTeam }

    init(runner: LatentRunner, pool: BufferPool, current: Activation) {
        self.runner = runner
        self.pool = pool
        self.current = current
        holders[current.data] = 1
    }

    mutating func drop(_ a: Activation) {
        let n = holders[a.data, default: 1] - 1
        if n <= 0 { holders[a.data] = nil; a.release(to: pool) } else { holders[a.data] = n }
    }

    /// Makes `y` the current activation, dropping the old one.
    mutating func replace(with y: Activation) {
        let old = current
        current = y
        holders[y.data, default: 0] += 1
        drop(old)
    }

    func like(_ a: Activation, channels: Int? = nil) -> Activation {
        Activation(pool: pool, channels: channels ?? a.channels, batch: a.batch, height: a.height, width: a.width)
    }

    func copy(_ a: Activation) -> Activation {
        let y = like(a)
        y.data.update(from: a.data, count: a.count)
        return y
    }

    /// The current activation, copied first when the skip stack also holds it, so it may be changed in place.
    mutating func exclusive() -> Activation {
        if holders[current.data, default: 1] > 1 { replace(with: copy(current)) }
        return current
    }

    mutating func step(_ step: LatentStep) {
        let inputRange = currentRange
        currentRange = nil   // every step but the fused convs below changes `current` without measuring it
        switch step {
        case .conv(let s, let up):
            if let (y, range) = timed("conv", { fusedConv(current, s, up, inputRange: inputRange) }) {
                replace(with: y)
                currentRange = range
            } else {
                replace(with: timed("conv") { conv(current, s, up) })
            }
        case .resnet(let r): replace(with: timed("resnet") { resnet(current, r) })
        case .transformer(let t): replace(with: transformer(current, t))
        case .spatialAttention(let s):
            let hn = like(current)
            ChannelMajor.groupNorm(current, w.norm(s.norm), silu: false, into: hn.data)
            let out = copy(current)
            timed("spatial attention") { attention(s.attention, input: hn.data, batch: hn.batch, length: hn.pixels, into: out.data) }
            hn.release(to: pool)
            if s.rescaleOutputFactor != 1 { scale(out, by: 1 / s.rescaleOutputFactor, shift: 0) }
            replace(with: out)
        case .tinyBlock(let b):
            let (y, range) = timed("tiny block") { tinyBlock(current, b, inputRange: inputRange) }
            replace(with: y)
            currentRange = range
        case .pushSkip:
            skips.append(current)
            holders[current.data, default: 0] += 1
        case .concatSkip:
            let s = skips.removeLast()
            let cat = ChannelMajor.concat(current, s, pool: pool)
            drop(s)
            replace(with: cat)
        case .groupNormSiLU(let n):
            let y = like(current)
            ChannelMajor.groupNorm(current, w.norm(n), silu: true, into: y.data)
            replace(with: y)
        case .relu: relu(exclusive())
        case .tanhClamp(let m):
            let a = exclusive()
            for j in 0..<a.count { a.data[j] = Foundation.tanh(a.data[j] / m) * m }
        case .affine(let s, let b): scale(exclusive(), by: s, shift: b)
        }
    }

    func relu(_ a: Activation) { FastConv.relu(a.data, count: a.count) }

    func scale(_ a: Activation, by s: Float, shift b: Float) { for j in 0..<a.count { a.data[j] = a.data[j] * s + b } }

    // MARK: - Layers

    /// conv(x) (+ `accumulate`'s contents), x read resized first per `up`. Keeps x.
    func conv(_ x: Activation, _ s: ConvSpec, _ up: Upsampling = .none, accumulate: Activation? = nil) -> Activation {
        let packed = w.conv(s)
        var target: (Int, Int)? = nil
        switch up {
        case .none: break
        case .double: target = (2 * x.height, 2 * x.width)
        case .toSkip: target = (skips.last!.height, skips.last!.width)
        }
        guard let (th, tw) = target else {
            return run(packed, x, upsample: false, accumulate: accumulate)
        }
        if th == 2 * x.height && tw == 2 * x.width {
            // Fused into the kernel's input reads. Materialising the upsampled input first measured ~15% faster
            // on these convs (SD VAE decoder) but costs an activation of the upsampled size (268 MB at 512x512).
            return run(packed, x, upsample: true, accumulate: accumulate)
        }
        // upsample_size not twice the input (sizes not divisible by the UNet's overall factor): resize, then conv.
        let r = Activation(pool: pool, channels: x.channels, batch: x.batch, height: th, width: tw)
        LatentKernels.resizeNearest(x.data, planes: x.channels * x.batch, height: x.height, width: x.width,
                                    toHeight: th, width: tw, y: r.data)
        let y = run(packed, r, upsample: false, accumulate: accumulate)
        r.release(to: pool)
        return y
    }

    /// An int8 convolution with bias, residual, ReLU and its output's range fused into the kernel's tiles
    /// (FastConv.convFused; same bits as conv + copy + relu + range passes), or nil when the layer runs fp32 or
    /// its input must be resized first. `inputRange` is x's range when the conv that wrote x measured it.
    func fusedConv(_ x: Activation, _ s: ConvSpec, _ up: Upsampling = .none, residual: Activation? = nil, relu: Bool = false,
                   inputRange: [Float]?) -> (Activation, [Float]?)? {
        guard case .int8(let p) = w.conv(s) else { return nil }
        let upsample: Bool
        switch up {
        case .none: upsample = false
        case .double: upsample = true
        case .toSkip:
            guard skips.last!.height == 2 * x.height && skips.last!.width == 2 * x.width else { return nil }
            upsample = true
        }
        return FastConv.convFused(x, p, upsample: upsample, pool: pool, residual: residual, relu: relu, inputRange: inputRange,
                                  outputRange: true, team: team)
    }

    /// One packed convolution, fp32 or int8 (activations quantized per image inside FastConv.conv).
    func run(_ packed: LatentConv, _ x: Activation, upsample: Bool, accumulate: Activation?) -> Activation {
        switch packed {
        case .f32(let p): return FastConv.conv(x, p, upsample: upsample, pool: pool, accumulateInto: accumulate, team: team)
        case .int8(let p): return FastConv.conv(x, p, upsample: upsample, pool: pool, accumulateInto: accumulate, team: team)
        }
    }

    /// ResnetBlock2D. Keeps x.
    func resnet(_ x: Activation, _ r: ResnetSpec) -> Activation {
        let hn = like(x)
        ChannelMajor.groupNorm(x, w.norm(r.norm1), silu: true, into: hn.data)
        let h1 = conv(hn, r.conv1)
        hn.release(to: pool)
        if let tp = r.timeProjection, let (tt, _, n) = temb {
            // (Cout, N) = time_emb_proj(silu(temb)), then (N, Cout) as the norm's per-image pre-shift.
            let c = tp.outFeatures, t = pool.acquire(c * n), shift = pool.acquire(c * n)
            project(w.linear(tp), tt, batch: n, columns: n, into: t, accumulate: false)
            for i in 0..<n { for ch in 0..<c { shift[i * c + ch] = t[ch * n + i] } }
            ChannelMajor.groupNorm(h1, w.norm(r.norm2), silu: true, preShift: shift, into: h1.data)
            pool.release(t, count: c * n)
            pool.release(shift, count: c * n)
        } else {
            ChannelMajor.groupNorm(h1, w.norm(r.norm2), silu: true, into: h1.data)
        }
        // out = shortcut(x) + conv2(h1): int8 conv2 adds the residual in its epilogue; fp32 accumulates onto a copy.
        if case .int8 = w.conv(r.conv2) {
            let shortcut = r.shortcut.map { conv(x, $0) }
            let (out, _) = fusedConv(h1, r.conv2, residual: shortcut ?? x, inputRange: nil)!
            shortcut?.release(to: pool)
            h1.release(to: pool)
            if r.outputScaleFactor != 1 { scale(out, by: 1 / r.outputScaleFactor, shift: 0) }
            return out
        }
        let residual = r.shortcut.map { conv(x, $0) } ?? copy(x)
        let out = conv(h1, r.conv2, accumulate: residual)
        h1.release(to: pool)
        if r.outputScaleFactor != 1 { scale(out, by: 1 / r.outputScaleFactor, shift: 0) }
        return out
    }

    /// Transformer2DModel (continuous input). Keeps x.
    func transformer(_ x: Activation, _ t: Transformer2DSpec) -> Activation {
        let c = x.channels, cols = x.columns, n = x.batch, l = x.pixels
        let tmp = like(x)
        ChannelMajor.groupNorm(x, w.norm(t.norm), silu: false, into: tmp.data)
        let h = like(x)   // (C, N*L) token features, channel-major
        project(w.linear(t.projIn), tmp.data, batch: n, columns: cols, into: h.data, accumulate: false)
        let stats = pool.acquire(4 * cols)
        for b in t.blocks {
            timed("layer norm") { layerNorm(h.data, b.norm1, columns: cols, into: tmp.data, scratch: stats) }
            timed("attn1") { attention(b.attn1, input: tmp.data, batch: n, length: l, into: h.data) }
            timed("layer norm") { layerNorm(h.data, b.norm2, columns: cols, into: tmp.data, scratch: stats) }
            timed("attn2") { attention(b.attn2, input: tmp.data, batch: n, length: l, into: h.data) }
            timed("layer norm") { layerNorm(h.data, b.norm3, columns: cols, into: tmp.data, scratch: stats) }
            // ff: net.2(GEGLU(net.0.proj(x))), added onto h.
            let inner = b.ffOut.inFeatures, ffIn = w.linear(b.ffIn), wantRange = w.linear(b.ffOut).int8 != nil
            let gated = pool.acquire(inner * cols)
            // The range feeds an int8 ff.net.2's quantization (no range pass over the 4C x L gated activations).
            // An int8 net.0.proj on AVX-512 runs GEGLU in its epilogue (FastConv.projectGEGLU, same bits): the
            // (2I, cols) projection is never written.
            let fused: [Float]?? = ffIn.int8.flatMap { q in
                timed("ff projections") {
                    FastConv.projectGEGLU(Activation(viewing: tmp.data, channels: c, batch: n, height: 1, width: l), q, bias: ffIn.bias,
                                          out: gated, range: wantRange, pool: pool, team: team)
                }
            }
            let gatedRange: [Float]?
            if let fused {
                gatedRange = fused
            } else {
                let proj = pool.acquire(2 * inner * cols)
                timed("ff projections") { project(ffIn, tmp.data, batch: n, columns: cols, into: proj, accumulate: false) }
                gatedRange = timed("geglu") { FastConv.geglu(proj, inner: inner, columns: cols, length: l, out: gated, range: wantRange, team: team) }
                pool.release(proj, count: 2 * inner * cols)
            }
            timed("ff projections") {
                project(w.linear(b.ffOut), gated, batch: n, columns: cols, into: h.data, accumulate: true, inputRange: gatedRange)
            }
            pool.release(gated, count: inner * cols)
        }
        pool.release(stats, count: 4 * cols)
        tmp.release(to: pool)
        // out = x + proj_out(h): an int8 proj_out adds x in its epilogue; fp32 accumulates onto a copy of x.
        let out: Activation
        if let q = w.linear(t.projOut).int8 {
            out = like(x)
            let ha = Activation(viewing: h.data, channels: h.channels, batch: n, height: 1, width: l)
            let oa = Activation(viewing: out.data, channels: c, batch: n, height: 1, width: l)
            let xa = Activation(viewing: x.data, channels: c, batch: n, height: 1, width: l)
            _ = FastConv.convFused(ha, q, pool: pool, into: oa, residual: xa, bias: w.linear(t.projOut).bias, relu: false,
                                   outputRange: false, team: team)
        } else {
            out = copy(x)
            project(w.linear(t.projOut), h.data, batch: n, columns: cols, into: out.data, accumulate: true)
        }
        h.release(to: pool)
        precondition(out.channels == c)
        return out
    }

    /// AutoencoderTinyBlock. Keeps x. int8 blocks run fused (ReLU, residual and ranges in the conv epilogues,
    /// each conv's input range from the previous conv: no pass over the 64-channel maps outside the kernels) and
    /// return their output's range.
    func tinyBlock(_ x: Activation, _ b: TinyBlockSpec, inputRange: [Float]?) -> (Activation, [Float]?) {
        if b.convs.allSatisfy({ w.conv($0).isInt8 }) {
            let (a, ra) = fusedConv(x, b.convs[0], relu: true, inputRange: inputRange)!
            let (a2, ra2) = fusedConv(a, b.convs[1], relu: true, inputRange: ra)!
            a.release(to: pool)
            let skip = b.skip.map { conv(x, $0) }
            let (out, range) = fusedConv(a2, b.convs[2], residual: skip ?? x, relu: true, inputRange: ra2)!
            skip?.release(to: pool)
            a2.release(to: pool)
            return (out, range)
        }
        let a = conv(x, b.convs[0])
        relu(a)
        let a2 = conv(a, b.convs[1])
        a.release(to: pool)
        relu(a2)
        let residual = b.skip.map { conv(x, $0) } ?? copy(x)
        let out = conv(a2, b.convs[2], accumulate: residual)
        a2.release(to: pool)
        relu(out)
        return (out, nil)
    }

    func layerNorm(_ x: UnsafePointer<Float>, _ s: NormSpec, columns cols: Int, into y: UnsafeMutablePointer<Float>,
                   scratch: UnsafeMutablePointer<Float>) {
        let layer = w.norm(s)
        layer.gamma.data.withUnsafeBufferPointer { g in
            layer.beta.data.withUnsafeBufferPointer { b in
                // Columns (tokens) are independent: split over the team, same arithmetic per column.
                nonisolated(unsafe) let xp = x, yp = y, sp = scratch, gp = g.baseAddress!, bp = b.baseAddress!
                let c = s.channels, eps = s.eps
                FastConv.forEachRange(cols, granule: 16, team: team) { j0, j1 in
                    LatentKernels.layerNormChannels(xp + j0, channels: c, columns: j1 - j0, ld: cols, gamma: gp, beta: bp,
                                                    eps: eps, y: yp + j0, scratch: sp + 4 * j0)
                }
            }
        }
    }

    /// y (out, cols) = W x (in, cols) + b, or y += that when `accumulate`; cols = n images x L columns each.
    /// Columns split between threads. An int8 projection quantizes x per image (its L columns, all channels),
    /// so an image's result does not depend on its batch neighbours.
    /// `inputRange`: x's per-image (lo, hi) when known (int8 projections then skip the range pass).
    func project(_ l: PackedLinear, _ x: UnsafePointer<Float>, batch n: Int, columns cols: Int, into y: UnsafeMutablePointer<Float>, accumulate: Bool,
                 inputRange: [Float]? = nil) {
        if let q = l.int8 {
            // Bias and the accumulated y are added in the kernel's epilogue (split over the team), not by a
            // serial pass over y first; same bits.
            precondition(cols % n == 0, "project: \(cols) columns do not split into \(n) images")
            let xa = Activation(viewing: UnsafeMutablePointer(mutating: x), channels: l.inFeatures, batch: n, height: 1, width: cols / n)
            let ya = Activation(viewing: y, channels: l.outFeatures, batch: n, height: 1, width: cols / n)
            _ = FastConv.convFused(xa, q, pool: pool, into: ya, residual: accumulate ? ya : nil, bias: l.bias, relu: false,
                                   inputRange: inputRange, outputRange: false, team: team)
            return
        }
        for r in 0..<l.outFeatures {
            let row = y + r * cols, bv = l.bias?[r] ?? 0
            if accumulate { if bv != 0 { for j in 0..<cols { row[j] += bv } } } else { row.update(repeating: bv, count: cols) }
        }
        nonisolated(unsafe) let xp = x, yp = y
        let packed = l.weight!
        FastConv.forEachColumnRange(cols, team: team) { n0, n1 in
            FastConv.gemm(packed, b: xp, ldb: cols, c: yp, ldc: cols, columns: n0..<n1)
        }
    }

    /// y (C, N*L) += to_out(attention(input)): self-attention over each image's L positions, or cross-attention
    /// on the context when the spec has a context dimension.
    func attention(_ a: AttentionSpec, input x: UnsafePointer<Float>, batch n: Int, length l: Int, into y: UnsafeMutablePointer<Float>) {
        let c = a.queryDim, cols = n * l, heads = a.heads, d = c / heads
        let q = pool.acquire(c * cols), o = pool.acquire(c * cols)
        project(w.linear(a.toQ), x, batch: n, columns: cols, into: q, accumulate: false)
        let kvSource: UnsafePointer<Float>, lk: Int
        if a.contextDim != nil {
            guard let ctx = context else { preconditionFailure("cross-attention \(a.toK.prefix) needs text embeddings") }
            precondition(ctx.batch == n && ctx.channels == a.contextDim, "context (\(ctx.channels), \(ctx.batch)) does not fit \(a.toK.prefix)")
            kvSource = ctx.data
            lk = ctx.length
        } else {
            kvSource = x
            lk = l
        }
        let kvCols = n * lk
        let k = pool.acquire(c * kvCols), v = pool.acquire(c * kvCols)
        project(w.linear(a.toK), kvSource, batch: n, columns: kvCols, into: k, accumulate: false)
        project(w.linear(a.toV), kvSource, batch: n, columns: kvCols, into: v, accumulate: false)
        let scale = Float(1.0 / Double(d).squareRoot())
        let int8Block = [a.toQ, a.toK, a.toV].allSatisfy { w.linear($0).int8 != nil }
        let bf16 = FastAttention.resolved(runner.attentionHeads ?? (int8Block ? .bf16 : .fp32)) == .bf16
        let selfAttention = a.contextDim == nil && d <= runner.gemmAttentionAboveHeadDim
        let scratchCount = bf16 ? FastAttention.bf16ScratchCount(queries: l, keys: lk, headDim: d)
            : selfAttention ? l * l + 4 * d * l : LatentKernels.crossAttentionScratch(queries: l, keys: lk)
        // Each (image, head) writes its own rows of o: the units are claimed by the team's threads (a thread the
        // OS deschedules leaves its share to the others; libdispatch's static split of one part per thread made
        // the other core wait), one scratch per team thread. bf16 heads also cut a head's queries into chunks
        // (multiples of the kernel's 8-query block, each row computed alone, so the same bits) when there are few
        // heads per thread: SD-Turbo's 5 heads of 4096 queries on 2 threads.
        let heads1 = n * heads
        let chunks = bf16 ? max(1, min((4 * threads + heads1 - 1) / heads1, l / 64)) : 1
        let units = heads1 * chunks, workers = team?.threads ?? 1
        let scratch = pool.acquire(scratchCount * workers)
        nonisolated(unsafe) let qp = q, kp = k, vp = v, op = o, sp = scratch
        timed(a.contextDim == nil ? "self-attention heads" : "cross-attention heads") { FastConv.forEachPart(units, granule: 1, team: team) { worker, u0, u1 in
            let p = sp + worker * scratchCount
            for unit in u0..<u1 {
                let i = unit / chunks / heads, hd = unit / chunks % heads, chunk = unit % chunks
                let qo = hd * d * cols + i * l, ko = hd * d * kvCols + i * lk
                if bf16 {
                    // any head width and key count (self, cross, the VAE's single 512-wide head)
                    let q0 = l * chunk / chunks / 8 * 8, q1 = chunk == chunks - 1 ? l : l * (chunk + 1) / chunks / 8 * 8
                    FastAttention.crossHeadBF16(q: qp + qo + q0, ldq: cols, queries: q1 - q0, k: kp + ko, v: vp + ko, ldk: kvCols,
                                                keys: lk, headDim: d, scale: scale, out: op + qo + q0, scratch: p)
                } else if selfAttention {
                    FastConv.attentionHead(q: qp + qo, k: kp + ko, v: vp + ko, ld: cols, length: l, headDim: d, scale: scale,
                                           out: op + qo, scratch: p)
                } else {
                    LatentKernels.crossAttentionHead(q: qp + qo, ldq: cols, k: kp + ko, v: vp + ko, ldk: kvCols, queries: l,
                                                     keys: lk, headDim: d, scale: scale, out: op + qo, scratch: p)
                }
            }
        } }
        pool.release(scratch, count: scratchCount * workers)
        pool.release(k, count: c * kvCols)
        pool.release(v, count: c * kvCols)
        project(w.linear(a.toOut), o, batch: n, columns: cols, into: y, accumulate: true)
        pool.release(q, count: c * cols)
        pool.release(o, count: c * cols)
    }
}

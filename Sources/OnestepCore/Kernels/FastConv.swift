// Convolutions on channel-major activations with the hand-written kernels of CKernels (the only Swift file
// that imports it): implicit GEMM, no im2col matrix, weights packed once at load.
//
// Dimension legend: M = Cout, K = Cin*KH*KW, N = images, cols = N*Ho*Wo, C4 = ceil(Cin/4).
//
// Contract (same as ChannelMajor.conv): y (Cout, N, Ho, Wo) = conv(x) + bias [+ y's contents when
// accumulating]. Every output element is computed the same way whatever the batch size, the image's
// position in the batch, the column split between threads or the kernel level, so an image's output is
// bit-identical alone or in any batch, and avx512 / avx2 / scalar agree bit for bit.
import CKernels
import Dispatch

/// Instruction-set level of the kernels. `.avx512` needs AVX-512 F+BW+VL+VNNI, `.avx2` needs AVX2+FMA.
public enum KernelLevel: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case scalar = 0, avx2 = 1, avx512 = 2

    /// The best level this CPU supports, capped by ONESTEP_KERNELS=avx512|avx2|scalar when set.
    public static let best = KernelLevel(rawValue: osk_default_level()) ?? .scalar

    public var isSupported: Bool { osk_level_supported(rawValue) != 0 }
    public var description: String { ["scalar", "avx2", "avx512"][Int(rawValue)] }
}

/// fp32 conv weights packed for the microkernel: ceil(M/8) panels of (K, 8), k-major, pad rows zero.
public struct PackedConvF32: Sendable {
    public let geometry: ConvGeometry
    public let bias: [Float]?        // (Cout)
    let panels: [Float]              // [ceil(M/8)][K][8]

    public init(_ layer: Conv2DLayer) {
        let g = layer.geometry
        precondition(layer.weight.count == g.outChannels * g.reduction, "conv \(layer.key): weight size")
        geometry = g
        bias = layer.bias?.data
        let count = osk_f32_packed_count(Int32(g.outChannels), Int32(g.reduction))
        panels = [Float](unsafeUninitializedCapacity: count) { buf, n in
            layer.weight.data.withUnsafeBufferPointer { w in
                osk_f32_pack(w.baseAddress!, Int32(g.outChannels), Int32(g.reduction), buf.baseAddress!)
            }
            n = count
        }
    }
}

extension PackedConvF32 {
    /// Packs weights (Cout, Cin, KH, KW) given as a pointer: the training layers repack theirs after every
    /// optimizer step (a copy of Cout*K floats, small next to the GEMMs that read it N*Ho*Wo times).
    public init(geometry g: ConvGeometry, weights w: UnsafePointer<Float>, bias: [Float]?) {
        geometry = g
        self.bias = bias
        let count = osk_f32_packed_count(Int32(g.outChannels), Int32(g.reduction))
        panels = [Float](unsafeUninitializedCapacity: count) { buf, n in
            osk_f32_pack(w, Int32(g.outChannels), Int32(g.reduction), buf.baseAddress!)
            n = count
        }
    }
}

/// int8 conv weights: per-output-channel symmetric codes (w ≈ code * scale[cout]), packed as 4 codes per
/// Int32 for vpdpbusd, with each row's code sum (for the activation zero-point correction).
public struct PackedConvInt8: Sendable {
    public let geometry: ConvGeometry
    public let bias: [Float]?        // (Cout)
    let codes: [Int32]               // [ceil(M/8)][C4*KH*KW][8], 4 x Int8 per word (channels 4q..4q+3 at one tap)
    let rowSums: [Int32]             // (ceil(M/8)*8)
    let scales: [Float]              // (ceil(M/8)*8)

    /// Packs `layer` for the int8 kernels: from the codes and scales its weight file stores when it stores
    /// them (kept bit for bit), else from its float weights quantized by Int8Weights.quantize, the same rule
    /// `quantize` writes files with.
    public init(_ layer: Conv2DLayer) {
        self.init(geometry: layer.geometry, bias: layer.bias?.data, weights: layer.stored8 ?? Int8Weights.quantize(layer.weight))
    }

    /// Packs int8 weights (Cout, Cin, KH, KW) in the layout osk_conv_q8 reads (onestep_kernels.h, A8).
    public init(geometry g: ConvGeometry, bias: [Float]?, weights q: Int8Tensor) {
        precondition(q.shape == [g.outChannels, g.inChannels, g.kernelH, g.kernelW], "int8 conv: weights \(q.shape) do not match \(g)")
        geometry = g
        self.bias = bias
        let mr = Int(OSK_MR), m = g.outChannels, cin = g.inChannels, taps = g.kernelH * g.kernelW
        let c4 = (cin + 3) / 4, k4 = c4 * taps, rows = (m + mr - 1) / mr * mr
        var words = [Int32](repeating: 0, count: osk_q8_packed_count(Int32(m), Int32(cin), Int32(taps)))
        var rowSums = [Int32](repeating: 0, count: rows)
        var scales = [Float](repeating: 0, count: rows)
        words.withUnsafeMutableBytes { bytes in
            for row in 0..<m {
                var sum: Int32 = 0
                for c in 0..<cin {
                    for t in 0..<taps {
                        let code = q.codes[(row * cin + c) * taps + t]
                        sum += Int32(code)
                        let word = ((row / mr) * k4 + (c / 4) * taps + t) * mr + row % mr
                        bytes[word * 4 + c % 4] = UInt8(bitPattern: code)  // little-endian: byte j = channel 4q+j
                    }
                }
                rowSums[row] = sum
                scales[row] = q.scales[row]
            }
        }
        codes = words
        self.rowSums = rowSums
        self.scales = scales
    }

    /// The packed weights read back as (Cout, Cin, KH, KW) codes and (Cout) scales: what the kernels multiply by.
    public func unpacked() -> Int8Tensor {
        let g = geometry, mr = Int(OSK_MR), m = g.outChannels, cin = g.inChannels, taps = g.kernelH * g.kernelW
        let k4 = (cin + 3) / 4 * taps
        var out = [Int8](repeating: 0, count: m * cin * taps)
        codes.withUnsafeBytes { bytes in
            for row in 0..<m { for c in 0..<cin { for t in 0..<taps {
                let word = ((row / mr) * k4 + (c / 4) * taps + t) * mr + row % mr
                out[(row * cin + c) * taps + t] = Int8(bitPattern: bytes[word * 4 + c % 4])
            } } }
        }
        return Int8Tensor(shape: [m, cin, g.kernelH, g.kernelW], codes: out, scales: Array(scales.prefix(m)))
    }
}

public enum FastConv {
    /// Output columns per microkernel tile; thread splits are rounded to it.
    public static let tileColumns = Int(OSK_NR)

    /// Runs int8 convolutions with the per-tile driver instead of the blocked one on AVX-512 (same bits; for the
    /// before/after rows of `bench --kernels`). Process-wide.
    public static func usePerTileInt8Driver(_ on: Bool) { osk_q8_set_unblocked(on ? 1 : 0) }
    /// Runs 1x1 int8 convolutions (projections) on the AVX-512 linear driver (onestep_linear_q8.c; the default) or
    /// on the blocked conv driver (false). Same bits; for tests and `bench --kernels`. Process-wide.
    public static func useLinearInt8Driver(_ on: Bool) { osk_linear_q8_set_enabled(on ? 1 : 0) }
    /// Runs fp32 3x3 convs of at most 4 outputs (conv_out) on the AVX-512 ring kernel (onestep_conv_few.c; the
    /// default) or on the tile driver (false). Same bits; for tests. Process-wide.
    public static func useFewOutputConvKernel(_ on: Bool) { osk_conv_f32_few_set_enabled(on ? 1 : 0) }

    /// Whether osk_linear_q8_geglu runs `w` at `level` (FastConvGEGLU.swift; the C calls stay in this file).
    static func linearGEGLUApplies(_ w: PackedConvInt8, level: KernelLevel) -> Bool {
        var g = cGeometry(w.geometry, upsample: false)
        return osk_linear_q8_geglu_applies(level.rawValue, &g) != 0
    }

    /// osk_linear_q8_geglu over hidden rows m0..<m1 and columns n0..<n1 of x's (N, H, W) map, from codes
    /// quantized by quantizeActivations; `range` is the calling worker's 2N slots.
    static func linearGEGLUCell(_ w: PackedConvInt8, bias: UnsafePointer<Float>?, codes: UnsafePointer<UInt32>, scales: UnsafePointer<Float>,
                                zeroPoints: UnsafePointer<Int32>, batch: Int, height: Int, width: Int, out: UnsafeMutablePointer<Float>,
                                columns: Range<Int>, rows: Range<Int>, range: UnsafeMutablePointer<Float>?, level: KernelLevel) {
        var g = cGeometry(w.geometry, upsample: false)
        w.codes.withUnsafeBufferPointer { a in w.rowSums.withUnsafeBufferPointer { rs in w.scales.withUnsafeBufferPointer { sc in
            _ = osk_linear_q8_geglu(level.rawValue, &g, a.baseAddress!, rs.baseAddress!, sc.baseAddress!, bias, codes, scales, zeroPoints,
                                    Int32(batch), Int32(height), Int32(width), out, Int64(columns.lowerBound), Int64(columns.upperBound),
                                    Int32(rows.lowerBound), Int32(rows.upperBound), range)
        } } }
    }

    /// y (Cout, N, Ho, Wo) = conv(x) + bias [+ existing]. With `upsample`, x is read as if nearest-upsampled
    /// 2x first. A `team` splits the output columns between its threads (same bytes for any team size).
    public static func conv(_ x: Activation, _ w: PackedConvF32, upsample: Bool = false, pool: BufferPool,
                            accumulateInto existing: Activation? = nil, level: KernelLevel = .best,
                            team: ThreadTeam? = nil) -> Activation {
        floatOutputConv(x, w.geometry, bias: w.bias, packed: w.panels, upsample: upsample, pool: pool, existing: existing,
                        level: level, team: team, kernel: osk_conv_f32)
    }

    /// The conv drivers whose output columns are independent fp32 chains (fp32 and bf16 weights): checks, the
    /// output (bias or `existing`), then `kernel` over column ranges split between the team's threads.
    static func floatOutputConv<Word>(
        _ x: Activation, _ geometry: ConvGeometry, bias: [Float]?, packed: [Word], upsample: Bool, pool: BufferPool,
        existing: Activation?, level: KernelLevel, team: ThreadTeam?,
        kernel: @escaping (Int32, UnsafePointer<osk_conv>?, UnsafePointer<Word>?, UnsafePointer<Float>?, Int32, Int32, Int32,
                           UnsafeMutablePointer<Float>?, Int64, Int64) -> Void
    ) -> Activation {
        let g = cGeometry(geometry, upsample: upsample)
        precondition(x.channels == geometry.inChannels, "conv: input has \(x.channels) channels, needs \(geometry.inChannels)")
        precondition(level.isSupported, "conv: kernel level \(level) not supported on this CPU")
        let y = prepareOutput(x, geometry, bias: bias, upsample: upsample, pool: pool, existing: existing)
        nonisolated(unsafe) let xp = x.data, yp = y.data, run = kernel
        let n = Int32(x.batch), h = Int32(x.height), wd = Int32(x.width), lv = level.rawValue
        packed.withUnsafeBufferPointer { a in
            nonisolated(unsafe) let ap = a.baseAddress!
            forEachColumnRange(y.columns, team: team) { n0, n1 in
                var gc = g
                run(lv, &gc, ap, xp, n, h, wd, yp, Int64(n0), Int64(n1))
            }
        }
        return y
    }

    /// int8 version: x is quantized to uint8 with one scale and zero point per image (never per batch), the
    /// products are summed exactly in int32 (vpdpbusd), and y += s_w[m] * s_x[img] * (sum - zp[img] * rowsum[m]).
    public static func conv(_ x: Activation, _ w: PackedConvInt8, upsample: Bool = false, pool: BufferPool,
                            accumulateInto existing: Activation? = nil, level: KernelLevel = .best,
                            team: ThreadTeam? = nil) -> Activation {
        precondition(x.channels == w.geometry.inChannels, "conv: input has \(x.channels) channels, needs \(w.geometry.inChannels)")
        precondition(level.isSupported, "conv: kernel level \(level) not supported on this CPU")
        let y = prepareOutput(x, w.geometry, bias: w.bias, upsample: upsample, pool: pool, existing: existing)
        runInt8(x, w, upsample: upsample, into: y, pool: pool, inputRange: nil, epilogue: nil, level: level, team: team)
        return y
    }

    /// The int8 convolution with its output passes fused into the kernel's tiles (osk_conv_q8_fused):
    /// y = conv(x) + bias (+ `residual`), then ReLU when `relu`, written once; the same bits as `conv` (with
    /// `accumulateInto: residual` copy) followed by `relu` and a range pass. `inputRange` is x's per-image
    /// (lo, hi) when a previous fused conv measured it (`outputRange`), so quantizing x skips its range pass.
    /// Returns y and, with `outputRange`, y's per-image ranges ([lo0, hi0, lo1, hi1, ...], each holding 0).
    /// TAESD's 64-channel convs at 512x512 were bound by those passes over 67 MB outputs, and they ran on one
    /// thread while the kernel ran on all.
    /// `into` receives y instead of a new activation from the pool (it may also be the `residual`: y += conv);
    /// `bias` is the bias of a layer packed without one (a projection's), instead of w's.
    public static func convFused(_ x: Activation, _ w: PackedConvInt8, upsample: Bool = false, pool: BufferPool,
                                 into target: Activation? = nil, residual: Activation? = nil, bias extraBias: [Float]? = nil,
                                 relu: Bool, inputRange: [Float]? = nil, outputRange: Bool,
                                 level: KernelLevel = .best, team: ThreadTeam? = nil) -> (Activation, [Float]?) {
        precondition(x.channels == w.geometry.inChannels, "conv: input has \(x.channels) channels, needs \(w.geometry.inChannels)")
        precondition(level.isSupported, "conv: kernel level \(level) not supported on this CPU")
        precondition(inputRange == nil || inputRange!.count == 2 * x.batch, "conv: input range needs 2 values per image")
        precondition(extraBias == nil || w.bias == nil, "conv: a bias given for a layer packed with one")
        let h = upsample ? 2 * x.height : x.height, wd = upsample ? 2 * x.width : x.width
        let ho = w.geometry.outputHeight(h), wo = w.geometry.outputWidth(wd)
        let y = target ?? Activation(pool: pool, channels: w.geometry.outChannels, batch: x.batch, height: ho, width: wo)
        for a in [target, residual].compactMap({ $0 }) {
            precondition(a.channels == w.geometry.outChannels && a.batch == x.batch && a.height == ho && a.width == wo,
                         "conv: output or residual has the wrong shape")
        }
        let threads = team?.threads ?? 1, slots = 2 * x.batch * threads
        let ranges = outputRange ? pool.acquire(slots) : nil
        ranges?.initialize(repeating: 0, count: slots)
        defer { if let ranges { pool.release(ranges, count: slots) } }
        (w.bias ?? extraBias).withOptionalPointer { bias in
            let epilogue = FusedEpilogue(bias: bias, residual: residual.map { UnsafePointer($0.data) },
                                         relu: relu, ranges: ranges, imageCount: x.batch)
            inputRange.withOptionalPointer { ir in
                runInt8(x, w, upsample: upsample, into: y, pool: pool, inputRange: ir, epilogue: epilogue, level: level, team: team)
            }
        }
        guard let ranges else { return (y, nil) }
        var out = [Float](repeating: 0, count: 2 * x.batch)
        for t in 0..<threads {
            for i in 0..<x.batch {
                out[2 * i] = min(out[2 * i], ranges[t * 2 * x.batch + 2 * i])
                out[2 * i + 1] = max(out[2 * i + 1], ranges[t * 2 * x.batch + 2 * i + 1])
            }
        }
        return (y, out)
    }

    /// Pointers of a fused epilogue; `ranges` has 2 * imageCount floats per team thread.
    struct FusedEpilogue: @unchecked Sendable {
        let bias: UnsafePointer<Float>?
        let residual: UnsafePointer<Float>?
        let relu: Bool
        let ranges: UnsafeMutablePointer<Float>?
        let imageCount: Int
    }

    /// Quantizes x and runs the int8 kernel over the (rows, columns) grid split between the team's threads,
    /// accumulating onto y (epilogue nil) or writing y through the fused epilogue.
    static func runInt8(_ x: Activation, _ w: PackedConvInt8, upsample: Bool, into y: Activation, pool: BufferPool,
                        inputRange: UnsafePointer<Float>?, epilogue: FusedEpilogue?, level: KernelLevel, team: ThreadTeam?) {
        let c4 = (x.channels + 3) / 4, qCount = c4 * x.batch * x.pixels
        // Activation codes [C4][N*H*W] (4 channels per word) and per-image (scale, zero point), from the pool.
        let qBuffer = pool.acquire(qCount), params = pool.acquire(2 * x.batch)
        defer { pool.release(qBuffer, count: qCount); pool.release(params, count: 2 * x.batch) }
        let xq = UnsafeMutableRawPointer(qBuffer).assumingMemoryBound(to: UInt32.self)
        let xz = UnsafeMutableRawPointer(params + x.batch).assumingMemoryBound(to: Int32.self)
        quantizeActivations(x, codes: xq, scales: params, zeroPoints: xz, knownRange: inputRange, level: level, team: team)
        runInt8Codes(xq, scales: params, zeroPoints: xz, channels: x.channels, batch: x.batch, height: x.height, width: x.width,
                     w, upsample: upsample, into: y, epilogue: epilogue, level: level, team: team)
    }

    /// The int8 kernel over the (rows, columns) grid split between the team's threads, on activations already
    /// quantized (codes [C4][N*H*W], per-image scales and zero points), accumulating onto y (epilogue nil) or
    /// writing y through the fused epilogue.
    static func runInt8Codes(_ codes: UnsafeMutablePointer<UInt32>, scales: UnsafeMutablePointer<Float>, zeroPoints: UnsafeMutablePointer<Int32>,
                             channels: Int, batch: Int, height: Int, width: Int, _ w: PackedConvInt8, upsample: Bool,
                             into y: Activation, epilogue: FusedEpilogue?, level: KernelLevel, team: ThreadTeam?) {
        precondition(channels == w.geometry.inChannels, "conv: input has \(channels) channels, needs \(w.geometry.inChannels)")
        let g = cGeometry(w.geometry, upsample: upsample)
        nonisolated(unsafe) let yp = y.data, xq = codes, xs = scales, xz = zeroPoints
        let n = Int32(batch), h = Int32(height), wd = Int32(width)
        w.codes.withUnsafeBufferPointer { a in
            w.rowSums.withUnsafeBufferPointer { rs in
                w.scales.withUnsafeBufferPointer { sc in
                    nonisolated(unsafe) let ap = a.baseAddress!, rsp = rs.baseAddress!, scp = sc.baseAddress!
                    let grid = int8Grid(rows: w.geometry.outChannels, columns: y.columns, threads: team?.threads ?? 1)
                    let cells = grid.rowParts * grid.columnParts
                    forEachPart(cells, granule: 1, team: cells > 1 ? team : nil) { worker, c0, c1 in
                        var ep = epilogue.map {
                            osk_q8_epilogue(bias: $0.bias, residual: $0.residual, relu: $0.relu ? 1 : 0,
                                            range: $0.ranges.map { $0 + worker * 2 * Int(n) })
                        }
                        for cell in c0..<c1 {
                            let (m0, m1) = grid.rows(cell / grid.columnParts), (n0, n1) = grid.columns(cell % grid.columnParts)
                            var gc = g
                            if ep != nil {
                                osk_conv_q8_fused(level.rawValue, &gc, ap, rsp, scp, xq, xs, xz, n, h, wd, yp, Int64(n0), Int64(n1),
                                                  Int32(m0), Int32(m1), &ep!)
                            } else {
                                osk_conv_q8_part(level.rawValue, &gc, ap, rsp, scp, xq, xs, xz, n, h, wd, yp, Int64(n0), Int64(n1),
                                                 Int32(m0), Int32(m1))
                            }
                        }
                    }
                }
            }
        }
    }

    /// Quantizes x (C, N, H, W) for the int8 conv: codes [C4][N*H*W] (4 channels per word) and one (scale, zero
    /// point) per image (osk_q8_quantize). With at least as many images as team threads, images are split between
    /// threads; with fewer (one image on two cores) each image's positions are split instead, range first and
    /// codes second, which gives the same bits: the range is a min / max, exact in any order. Before the split a
    /// batch of 1 quantized on one thread while the other waited (5% of the int8 SDXS UNet, 12% of TAESD).
    /// `knownRange` (lo, hi per image, as osk_q8_range finds them) skips the range pass.
    public static func quantizeActivations(_ x: Activation, codes xq: UnsafeMutablePointer<UInt32>, scales: UnsafeMutablePointer<Float>,
                                           zeroPoints: UnsafeMutablePointer<Int32>, knownRange: UnsafePointer<Float>? = nil,
                                           level: KernelLevel = .best, team: ThreadTeam?) {
        nonisolated(unsafe) let xp = x.data, q = xq, xs = scales, xz = zeroPoints
        let c = Int32(x.channels), n = Int32(x.batch), hw = Int32(x.pixels)
        let threads = team?.threads ?? 1
        if let knownRange {
            for i in 0..<x.batch { osk_q8_set_params(knownRange[2 * i], knownRange[2 * i + 1], xs + i, xz + i) }
            if threads > 1, x.batch < threads, splitsQuantizationByPositions(x) {
                for i in 0..<n {
                    forEachRange(x.pixels, granule: 16, team: team) { j0, j1 in
                        osk_q8_encode(level.rawValue, xp, c, n, hw, i, Int32(j0), Int32(j1), q, xs, xz)
                    }
                }
            } else {
                forEachRange(x.batch, granule: 1, team: team) { i0, i1 in
                    for i in Int32(i0)..<Int32(i1) { osk_q8_encode(level.rawValue, xp, c, n, hw, i, 0, hw, q, xs, xz) }
                }
            }
            return
        }
        guard threads > 1, x.batch < threads, splitsQuantizationByPositions(x) else {
            forEachRange(x.batch, granule: 1, team: team) { i0, i1 in
                osk_q8_quantize(level.rawValue, xp, c, n, hw, Int32(i0), Int32(i1), q, xs, xz)
            }
            return
        }
        // Per worker (lo, hi), folded over the chunks it ran; every slot starts at 0 (the range holds 0).
        let partial = UnsafeMutablePointer<Float>.allocate(capacity: 2 * threads)
        defer { partial.deallocate() }
        nonisolated(unsafe) let pp = partial
        for i in 0..<Int32(x.batch) {
            partial.initialize(repeating: 0, count: 2 * threads)
            forEachPart(x.pixels, granule: 16, team: team) { worker, j0, j1 in
                osk_q8_range(level.rawValue, xp, c, n, hw, i, Int32(j0), Int32(j1), pp + 2 * worker, pp + 2 * worker + 1)
            }
            var lo: Float = 0, hi: Float = 0
            for t in 0..<threads { lo = min(lo, partial[2 * t]); hi = max(hi, partial[2 * t + 1]) }
            osk_q8_set_params(lo, hi, xs + Int(i), xz + Int(i))
            forEachRange(x.pixels, granule: 16, team: team) { j0, j1 in
                osk_q8_encode(level.rawValue, xp, c, n, hw, i, Int32(j0), Int32(j1), q, xs, xz)
            }
        }
    }

    /// GEGLU, out (I, cols) = a * gelu(gate) with proj (2I, cols) = [a; gate] (onestep_geglu.c, erf by a rational
    /// approximation, LatentReference.geglu its reference), columns split over the team; cols = images x `length`.
    /// With `range`, returns out's per-image (lo, hi) as FastConv.convFused's `inputRange` takes it. The Swift loop
    /// it replaces (erff per value, one thread) was 6% of the int8 SDXS UNet on one thread.
    public static func geglu(_ proj: UnsafePointer<Float>, inner: Int, columns cols: Int, length: Int, out: UnsafeMutablePointer<Float>,
                             range: Bool, level: KernelLevel = .best, team: ThreadTeam? = nil) -> [Float]? {
        precondition(length > 0 && cols % length == 0, "geglu: \(cols) columns are not whole images of \(length)")
        let images = cols / length, threads = team?.threads ?? 1
        let slots = range ? UnsafeMutablePointer<Float>.allocate(capacity: 2 * images * threads) : nil
        slots?.initialize(repeating: 0, count: 2 * images * threads)
        defer { slots?.deallocate() }
        nonisolated(unsafe) let pp = proj, op = out, sp = slots
        forEachPart(cols, granule: 16, team: team) { worker, j0, j1 in
            osk_geglu(level.rawValue, pp, Int64(inner), Int64(cols), Int64(j0), Int64(j1), Int64(length), op,
                      sp.map { $0 + worker * 2 * images })
        }
        guard let slots else { return nil }
        var r = [Float](repeating: 0, count: 2 * images)
        for t in 0..<threads {
            for i in 0..<images {
                r[2 * i] = min(r[2 * i], slots[t * 2 * images + 2 * i])
                r[2 * i + 1] = max(r[2 * i + 1], slots[t * 2 * images + 2 * i + 1])
            }
        }
        return r
    }

    /// Positions per image from which a batch smaller than the team has each image's positions split; below it a
    /// 32x32 map of few channels costs less than waking the team twice.
    public static let splitQuantizeMinPixels = 4096
    /// Values per image (channels x positions) from which the positions are split even on smaller maps: the SDXS
    /// UNet's 640 x 32x32 and 1280 x 16x16 activations (0.3-0.7 M values) were quantized on one thread.
    public static let splitQuantizeMinValues = 1 << 18

    static func splitsQuantizationByPositions(_ x: Activation) -> Bool {
        x.pixels >= splitQuantizeMinPixels || (x.channels * x.pixels >= splitQuantizeMinValues && x.pixels >= 64)
    }

    /// C (M, cols) += A (M, K) * B (K, cols), all row-major, A packed by `PackedGemmF32`; columns n0..<n1.
    /// A `team` splits the columns between its threads (each column's sum is the same chain either way).
    public static func gemm(_ a: PackedGemmF32, b: UnsafePointer<Float>, ldb: Int, c: UnsafeMutablePointer<Float>, ldc: Int,
                            columns: Range<Int>, level: KernelLevel = .best, team: ThreadTeam? = nil) {
        precondition(level.isSupported, "gemm: kernel level \(level) not supported on this CPU")
        nonisolated(unsafe) let bp = b, cp = c
        let m = Int32(a.rows), k = Int32(a.depth), lo = columns.lowerBound
        a.panels.withUnsafeBufferPointer { ap in
            nonisolated(unsafe) let app = ap.baseAddress!
            forEachColumnRange(columns.count, team: team) { n0, n1 in
                osk_gemm_f32(level.rawValue, app, m, k, bp, Int64(ldb), cp, Int64(ldc), Int64(lo + n0), Int64(lo + n1))
            }
        }
    }

    /// x[i] = max(x[i], 0) in place, NaN -> +0 (onestep_activations.c; Reference.relu is its reference).
    /// TAESD's activation, over (64, 512, 512) maps: the scalar Swift loop took 13% of the int8 decoder's CPU.
    @inline(__always)
    public static func relu(_ x: UnsafeMutablePointer<Float>, count: Int, level: KernelLevel = .best) {
        osk_relu(level.rawValue, x, Int64(count))
    }

    /// y[i] = silu(x[i] * a + b): the activation of every fused GroupNorm (onestep_activations.c).
    @inline(__always)
    public static func affineSiLU(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, a: Float, b: Float,
                                  level: KernelLevel = .best) {
        osk_affine_silu(level.rawValue, x, y, Int64(count), a, b)
    }

    /// One attention head of one image (onestep_activations.c): out (D, L) = V softmax(scale Q^T K)^T, all
    /// channel-major slices with row stride `ld`. `scratch` holds L*L + 4*D*L floats.
    @inline(__always)
    public static func attentionHead(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, ld: Int,
                                     length l: Int, headDim d: Int, scale: Float, out: UnsafeMutablePointer<Float>,
                                     scratch: UnsafeMutablePointer<Float>, level: KernelLevel = .best) {
        osk_attention_head(level.rawValue, q, k, v, Int64(ld), Int32(l), Int32(d), scale, out, scratch)
    }

    /// True when `attentionHeadBF16` runs at `level` here (avx512 with AVX512-BF16).
    public static func attentionBF16Runs(level: KernelLevel = .best) -> Bool { osk_attention_bf16_runs(level.rawValue) != 0 }

    /// Floats of scratch one `attentionHeadBF16` call needs.
    public static func attentionBF16Scratch(queries lq: Int, keys lk: Int, headDim d: Int) -> Int {
        Int(osk_attention_bf16_scratch(Int32(lq), Int32(lk), Int32(d)))
    }

    /// One attention head in bf16 products (onestep_attention.c): out (D, Lq) = V softmax(scale Q^T K)^T, Q and out
    /// at row stride ldq, K and V (D, Lk) at row stride ldk. Returns false, having done nothing, when
    /// `attentionBF16Runs(level)` is false. FastAttention chooses between this and `attentionHead`.
    @inline(__always) @discardableResult
    public static func attentionHeadBF16(q: UnsafePointer<Float>, ldq: Int, queries lq: Int, k: UnsafePointer<Float>,
                                         v: UnsafePointer<Float>, ldk: Int, keys lk: Int, headDim d: Int, scale: Float,
                                         out: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                                         level: KernelLevel = .best) -> Bool {
        osk_attention_head_bf16(level.rawValue, q, Int64(ldq), Int32(lq), k, v, Int64(ldk), Int32(lk), Int32(d), scale,
                                out, scratch) != 0
    }

    /// Mean and variance of one GroupNorm group of one image (onestep_norm.c): `planes` planes of `count` floats,
    /// `planeStride` apart, plane p read as x + shift[p] when `shift` is given. Identical bits on every level.
    @inline(__always)
    public static func groupMoments(_ x: UnsafePointer<Float>, planeStride: Int, planes: Int, count: Int,
                                    shift: UnsafePointer<Float>?, level: KernelLevel = .best) -> (mean: Double, variance: Double) {
        var mean = 0.0, variance = 0.0
        osk_group_moments(level.rawValue, x, Int64(planeStride), Int32(planes), Int32(count), shift, &mean, &variance)
        return (mean, variance)
    }

    // MARK: - Helpers

    /// The C kernels' description of a convolution (also for CTrainKernels' wrappers, TrainKernels.swift).
    public static func cGeometry(_ g: ConvGeometry, upsample: Bool) -> osk_conv {
        osk_conv(in_channels: Int32(g.inChannels), out_channels: Int32(g.outChannels), kernel_h: Int32(g.kernelH),
                 kernel_w: Int32(g.kernelW), stride: Int32(g.stride), pad_top: Int32(g.padTop), pad_left: Int32(g.padLeft),
                 pad_bottom: Int32(g.padBottom), pad_right: Int32(g.padRight), upsample: upsample ? 1 : 0)
    }

    /// The output activation holding bias (+ the existing residual), which the kernels accumulate onto.
    static func prepareOutput(_ x: Activation, _ g: ConvGeometry, bias: [Float]?, upsample: Bool, pool: BufferPool,
                              existing: Activation?) -> Activation {
        let h = upsample ? 2 * x.height : x.height, w = upsample ? 2 * x.width : x.width
        let ho = g.outputHeight(h), wo = g.outputWidth(w), cols = x.batch * ho * wo
        var y = existing ?? Activation(pool: pool, channels: g.outChannels, batch: x.batch, height: ho, width: wo)
        precondition(y.channels == g.outChannels && y.batch == x.batch && y.channels * y.batch * ho * wo == y.count || existing == nil,
                     "conv: accumulate target has the wrong shape")
        y.height = ho
        y.width = wo
        if let bias {
            for co in 0..<g.outChannels {
                let row = y.data + co * cols, bv = bias[co]
                if existing == nil { row.update(repeating: bv, count: cols) } else { for j in 0..<cols { row[j] += bv } }
            }
        } else if existing == nil {
            y.data.update(repeating: 0, count: g.outChannels * cols)
        }
        return y
    }

    /// Splits the output columns 0..<cols into one tile-aligned range per team thread and runs `body` on them
    /// concurrently (on the caller alone without a team).
    public static func forEachColumnRange(_ cols: Int, team: ThreadTeam?, _ body: @Sendable (Int, Int) -> Void) {
        forEachRange(cols, granule: tileColumns, team: team, body)
    }

    /// Splits 0..<count into contiguous ranges (multiples of `granule`), one per team thread, run concurrently.
    public static func forEachRange(_ count: Int, granule: Int, team: ThreadTeam?, _ body: @Sendable (Int, Int) -> Void) {
        forEachPart(count, granule: granule, team: team) { _, lo, hi in body(lo, hi) }
    }

    /// How an int8 convolution's (rows, columns) output is cut between team threads: columns in parts of at least
    /// 256 (the kernel's column block: A is read once per block, so thinner parts would re-read the weights from
    /// L3), and the rows of 8-row panels when the columns alone give fewer parts than `chunksPerThread` per thread
    /// (large layers at small resolution: 1280 channels at 16x16 is 256 columns). Each output is the same integer
    /// sum whatever its part, so the bytes do not depend on the grid.
    struct Int8Grid {
        var rowCount: Int, columnCount: Int, rowParts: Int, columnParts: Int
        func rows(_ i: Int) -> (Int, Int) {
            let panels = (rowCount + 7) / 8
            return (panels * i / rowParts * 8, min(rowCount, panels * (i + 1) / rowParts * 8))
        }
        func columns(_ i: Int) -> (Int, Int) {
            let tiles = (columnCount + tileColumns - 1) / tileColumns
            return (tiles * i / columnParts * tileColumns, min(columnCount, tiles * (i + 1) / columnParts * tileColumns))
        }
    }

    static func int8Grid(rows: Int, columns: Int, threads: Int) -> Int8Grid {
        guard threads > 1 else { return Int8Grid(rowCount: rows, columnCount: columns, rowParts: 1, columnParts: 1) }
        let parts = threads * chunksPerThread, panels = (rows + 7) / 8
        let columnParts = max(1, min(parts, columns / 256))
        let rowParts = max(1, min(panels, (parts + columnParts - 1) / columnParts))
        return Int8Grid(rowCount: rows, columnCount: columns, rowParts: rowParts, columnParts: columnParts)
    }

    /// Chunks per team thread: more chunks than threads, so a thread the OS deschedules on a shared machine
    /// leaves its share to the others instead of stalling the layer.
    public static let chunksPerThread = 4

    /// forEachRange that also gives the team thread running each range (0..<threads, for per-thread scratch).
    /// The ranges depend only on `count`, `granule` and the team size, never on which thread runs them.
    public static func forEachPart(_ count: Int, granule: Int, team: ThreadTeam?, _ body: @Sendable (_ worker: Int, Int, Int) -> Void) {
        let units = (count + granule - 1) / granule
        let parts = max(1, min(units, (team?.threads ?? 1) * chunksPerThread))
        guard let team, team.threads > 1, parts > 1 else { body(0, 0, count); return }
        team.run(chunks: parts) { p, worker in
            let u0 = units * p / parts, u1 = units * (p + 1) / parts
            body(worker, min(count, u0 * granule), min(count, u1 * granule))
        }
    }
}

/// fp32 GEMM weights A (M, K) packed once for `FastConv.gemm`.
public struct PackedGemmF32: Sendable {
    public let rows: Int, depth: Int   // M, K
    let panels: [Float]

    public init(_ a: UnsafeBufferPointer<Float>, rows m: Int, depth k: Int) {
        precondition(a.count == m * k, "gemm: A has \(a.count) values, needs \(m) x \(k)")
        rows = m
        depth = k
        let count = osk_f32_packed_count(Int32(m), Int32(k))
        panels = [Float](unsafeUninitializedCapacity: count) { buf, n in
            osk_f32_pack(a.baseAddress!, Int32(m), Int32(k), buf.baseAddress!)
            n = count
        }
    }
}

/// Threads that split each layer of one forward pass between them (onestep_team.c): the calling thread and
/// `threads - 1` persistent helpers, which spin briefly after a job and then park, so layer after layer
/// costs no thread creation and no kernel wake-up. One compute thread owns a team and only it calls `run`
/// (BufferPool.team). Work is split into fixed ranges that do not change any value's reduction order, so the
/// output bytes are the same with any team size.
public final class ThreadTeam: @unchecked Sendable {
    public let threads: Int
    private let handle: OpaquePointer

    /// A team of `threads` (1...256) including the calling thread.
    public init(threads: Int) {
        precondition((1...256).contains(threads), "thread team: \(threads) threads, expected 1...256")
        guard let h = osk_team_create(Int32(threads)) else { fatalError("thread team: out of memory creating \(threads) threads") }
        self.threads = threads
        handle = h
    }

    deinit { osk_team_destroy(handle) }

    /// Runs body(chunk, worker) for chunk in 0..<chunks, each chunk once, on whichever team thread claims it
    /// (worker 0..<threads identifies the thread, for per-thread scratch); returns when all have finished.
    public func run(chunks: Int, _ body: @Sendable (_ chunk: Int, _ worker: Int) -> Void) {
        if chunks <= 0 { return }
        withoutActuallyEscaping(body) { b in
            var box = b
            withUnsafeMutablePointer(to: &box) { p in
                osk_team_run(handle, Int32(chunks), { ctx, chunk, worker in
                    ctx!.assumingMemoryBound(to: (@Sendable (Int, Int) -> Void).self).pointee(Int(chunk), Int(worker))
                }, p)
            }
        }
    }
}

/// int8 linear-layer weights (nn.Linear (out, in)) packed for FastConv.linear: symmetric codes per output
/// channel in 32-channel panels for vpdpbusd, with each channel's code sum (for the activation zero point).
public struct PackedLinearInt8: Sendable {
    public let outFeatures: Int, inFeatures: Int   // N, K
    public let bias: [Float]?                      // (N)
    let words: [Int32]                             // [ceil(N/32)][ceil(K/4)][32]
    let rowSums: [Int32]                           // (ceil(N/32)*32)
    let scales: [Float]                            // (N)

    /// From stored codes (kept bit for bit), or from float weights via Int8Weights.quantize.
    public init(weights q: Int8Tensor, bias: [Float]?) {
        precondition(q.shape.count == 2, "int8 linear: weights \(q.shape), expected (out, in)")
        let n = q.shape[0], k = q.shape[1]
        precondition(bias == nil || bias!.count == n, "int8 linear: \(bias!.count) biases for \(n) outputs")
        outFeatures = n
        inFeatures = k
        self.bias = bias
        var w = [Int32](repeating: 0, count: osk_lq8_packed_count(Int32(n), Int32(k)))
        var sums = [Int32](repeating: 0, count: (n + 31) / 32 * 32)
        q.codes.withUnsafeBufferPointer { c in osk_lq8_pack(c.baseAddress!, Int32(n), Int32(k), &w, &sums) }
        words = w
        rowSums = sums
        scales = q.scales
    }
}

extension PackedLinearInt8 {
    /// The packed weights read back as (N, K) codes and (N) scales: what the kernel multiplies by (tests check
    /// that packing keeps a file's codes bit for bit).
    public func unpacked() -> Int8Tensor {
        let n = outFeatures, k = inFeatures, k4 = (k + 3) / 4, nr = 32
        var out = [Int8](repeating: 0, count: n * k)
        words.withUnsafeBytes { bytes in
            for o in 0..<n { for kk in 0..<k {
                out[o * k + kk] = Int8(bitPattern: bytes[(((o / nr) * k4 + kk / 4) * nr + o % nr) * 4 + kk % 4])
            } }
        }
        return Int8Tensor(shape: [n, k], codes: out, scales: scales)
    }
}

extension FastConv {
    /// y (rows, N) = x (rows, K) W^T + bias, both row-major with row strides K and N (nn.Linear on each row):
    /// each row quantized to uint8 with its own scale and zero point, exact int32 sums, so a row's result does not
    /// depend on the other rows, the thread split or the level (onestep_linear.c). A `team` splits the rows.
    public static func linear(_ x: UnsafePointer<Float>, rows: Int, _ w: PackedLinearInt8, into y: UnsafeMutablePointer<Float>,
                              level: KernelLevel = .best, team: ThreadTeam? = nil) {
        precondition(level.isSupported, "int8 linear: kernel level \(level) not supported on this CPU")
        let k = w.inFeatures, k4 = (k + 3) / 4, n = Int32(w.outFeatures)
        var codes = [UInt32](repeating: 0, count: rows * k4)
        var scale = [Float](repeating: 0, count: rows), zp = [Int32](repeating: 0, count: rows)
        nonisolated(unsafe) let xp = x, yp = y
        codes.withUnsafeMutableBufferPointer { cq in scale.withUnsafeMutableBufferPointer { cs in zp.withUnsafeMutableBufferPointer { cz in
            nonisolated(unsafe) let q = cq.baseAddress!, s = cs.baseAddress!, z = cz.baseAddress!
            forEachRange(rows, granule: 1, team: team) { r0, r1 in
                osk_lq8_quantize(xp + r0 * k, Int32(r1 - r0), Int32(k), Int64(k), q + r0 * k4, s + r0, z + r0)
            }
            w.words.withUnsafeBufferPointer { wp in w.rowSums.withUnsafeBufferPointer { rs in w.scales.withUnsafeBufferPointer { ws in
                nonisolated(unsafe) let wpp = wp.baseAddress!, rsp = rs.baseAddress!, wsp = ws.baseAddress!
                let body: @Sendable (UnsafePointer<Float>?) -> Void = { biasPointer in
                    nonisolated(unsafe) let bias = biasPointer
                    forEachRange(rows, granule: 4, team: team) { r0, r1 in
                        osk_lq8_gemm(level.rawValue, q, s, z, Int32(rows), Int32(k), wpp, rsp, wsp, bias, n, yp, Int64(n), Int32(r0), Int32(r1))
                    }
                }
                if let b = w.bias { b.withUnsafeBufferPointer { body($0.baseAddress!) } } else { body(nil) }
            } } }
        } } }
    }

    /// One core's int8 peak: 12 independent dependent chains of 512-bit vpdpbusd run for about `seconds`;
    /// GOP/s (2 ops per multiply-add), or nil without AVX-512 VNNI.
    public static func vnniPeakGops(seconds: Double = 0.5) -> Double? {
        var checksum: Int64 = 0
        guard osk_vnni_peak_ops(1, &checksum) > 0 else { return nil }
        var best = 0.0, iterations: Int64 = 1 << 20
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9)
        repeat {
            let start = DispatchTime.now().uptimeNanoseconds
            let ops = osk_vnni_peak_ops(iterations, &checksum)
            let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            best = max(best, Double(ops) / elapsed / 1e9)
            if elapsed < 0.02 { iterations *= 2 }
        } while DispatchTime.now().uptimeNanoseconds < deadline
        return checksum == 0x7fff_ffff_ffff ? nil : best  // checksum read so the chains cannot be dropped
    }
}

extension FastConv {
    /// GOP/s of the int8 linear kernel's inner loop alone on one thread: `rows` random rows quantized once, then
    /// only osk_lq8_gemm (integer sums + dequantization) timed, best call over about `seconds` (the figure to hold against
    /// the VNNI peak; FastConv.linear adds the per-row quantization).
    public static func linearInnerLoopGops(rows: Int, _ w: PackedLinearInt8, level: KernelLevel = .best, seconds: Double) -> Double {
        let k = w.inFeatures, k4 = (k + 3) / 4, n = w.outFeatures
        var x = [Float](repeating: 0, count: rows * k)
        var state: UInt32 = 12345
        for i in x.indices { state = state &* 1_664_525 &+ 1_013_904_223; x[i] = Float(Int32(bitPattern: state >> 8) - (1 << 23)) / Float(1 << 23) }
        var codes = [UInt32](repeating: 0, count: rows * k4), scale = [Float](repeating: 0, count: rows), zp = [Int32](repeating: 0, count: rows)
        osk_lq8_quantize(x, Int32(rows), Int32(k), Int64(k), &codes, &scale, &zp)
        var y = [Float](repeating: 0, count: rows * n)
        // Best single call, as the peak is a best interval: on a shared machine both see the least preempted run.
        var best = Double.infinity, calls = 0
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9)
        repeat {
            let start = DispatchTime.now().uptimeNanoseconds
            osk_lq8_gemm(level.rawValue, codes, scale, zp, Int32(rows), Int32(k), w.words, w.rowSums, w.scales, nil, Int32(n), &y, Int64(n), 0, Int32(rows))
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            calls += 1
        } while DispatchTime.now().uptimeNanoseconds < deadline || calls < 3
        return 2 * Double(rows * k * n) / best / 1e9
    }
}

/// The machine's measured arithmetic peaks on one core (onestep_peak.c): dependent-free chains of the 512-bit
/// multiply-add of each kind on registers, and the clock from a chain of dependent adds, so every peak is also
/// given in operations per cycle. Best interval of many short ones (a shared machine: the least disturbed run).
public struct MachinePeaks: Sendable {
    /// Core clock measured by a dependent-add chain, GHz.
    public var ghz: Double
    /// int8 (vpdpbusd: u8 x s8, 2 ops per multiply-add), fp32 FMA (vfmadd231ps) and bf16 (vdpbf16ps), in
    /// G operations per second on one core; nil when the CPU lacks the instruction.
    public var vnniGops: Double?, fmaGflops: Double?, bf16Gflops: Double?
    /// The avx2 level's int8 pair (vpmaddwd + vpaddd on 256 bits, 2 ops per multiply-add), G operations per second
    /// on one core; nil without AVX2.
    public var maddGops: Double?
    /// The int8 peak of this CPU's best level: VNNI where it exists, else the AVX2 pair.
    public var int8Gops: Double? { vnniGops ?? maddGops }
    /// The name of the instruction int8Gops times.
    public var int8Name: String { vnniGops != nil ? "VNNI vpdpbusd" : "AVX2 vpmaddwd+vpaddd" }

    public static func measure(seconds: Double = 0.5) -> MachinePeaks {
        // Each figure is the best of many ~1 ms intervals spread over `seconds`, the four kinds interleaved so
        // a busy moment on the shared machine hits them alike.
        var best = [Double](repeating: .infinity, count: 5)
        var iCheck: Int64 = 0, fCheck = 0.0
        let iterations: Int64 = 1 << 14
        func timed(_ body: () -> Void) -> Double {
            let start = DispatchTime.now().uptimeNanoseconds
            body()
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        }
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(max(seconds, 0.01) * 1e9)
        var ops: [Int64] = [0, 0, 0, 0, 0]
        repeat {
            best[0] = min(best[0], timed { ops[0] = osk_add_chain_cycles(4 * iterations) })
            best[1] = min(best[1], timed { ops[1] = osk_vnni_peak_ops(iterations, &iCheck) })
            best[2] = min(best[2], timed { ops[2] = osk_fma_peak_ops(iterations, &fCheck) })
            best[3] = min(best[3], timed { ops[3] = osk_bf16_peak_ops(iterations, &fCheck) })
            best[4] = min(best[4], timed { ops[4] = osk_madd_peak_ops(iterations, &iCheck) })
        } while DispatchTime.now().uptimeNanoseconds < deadline
        func rate(_ i: Int) -> Double? { ops[i] > 0 ? Double(ops[i]) / best[i] / 1e9 : nil }
        return MachinePeaks(ghz: rate(0) ?? 0, vnniGops: rate(1), fmaGflops: rate(2), bf16Gflops: rate(3), maddGops: rate(4))
    }

    /// "1153.7 GOP/s (256.0/cycle)" or "n/a".
    public static func describe(_ g: Double?, ghz: Double) -> String {
        guard let g else { return "n/a (instruction missing)" }
        return String(format: "%.1f (%.1f per cycle)", g, ghz > 0 ? g / ghz : 0)
    }
}

extension FastConv {
    /// Test hook: the int8 conv of x (Cin, N, H, W) onto `initial` (Cout, cols) computed by osk_conv_q8_part on each
    /// (output rows, output columns) rectangle in turn, so tests can check any cut gives the reference's bits.
    static func convInt8Parts(_ x: [Float], channels: Int, batch: Int, height: Int, width: Int, upsample: Bool,
                              _ w: PackedConvInt8, initial: [Float], level: KernelLevel,
                              rectangles: [(Range<Int>, Range<Int>)], into y: inout [Float]) {
        var g = cGeometry(w.geometry, upsample: upsample)
        let hw = height * width, c4 = (channels + 3) / 4
        var xq = [UInt32](repeating: 0, count: c4 * batch * hw), xs = [Float](repeating: 0, count: batch), xz = [Int32](repeating: 0, count: batch)
        osk_q8_quantize(level.rawValue, x, Int32(channels), Int32(batch), Int32(hw), 0, Int32(batch), &xq, &xs, &xz)
        y = initial
        for (rows, cols) in rectangles {
            osk_conv_q8_part(level.rawValue, &g, w.codes, w.rowSums, w.scales, xq, xs, xz, Int32(batch), Int32(height), Int32(width),
                             &y, Int64(cols.lowerBound), Int64(cols.upperBound), Int32(rows.lowerBound), Int32(rows.upperBound))
        }
    }
}

// MARK: - int8 convolutions from codes made elsewhere (ChannelMajor+Int8.swift: GroupNorm straight to codes)

extension FastConv {
    /// `convFused` (no ReLU, no range) on activations already quantized: y = conv(x) + bias (+ `residual`), written
    /// once; `into` may be the residual (y += conv). The same bits as `convFused` on an fp32 x that quantizes to
    /// these codes with these scales.
    public static func convFused(_ x: QuantizedActivation, _ w: PackedConvInt8, pool: BufferPool, into target: Activation? = nil,
                                 residual: Activation? = nil, level: KernelLevel = .best, team: ThreadTeam? = nil) -> Activation {
        precondition(level.isSupported, "conv: kernel level \(level) not supported on this CPU")
        let ho = w.geometry.outputHeight(x.height), wo = w.geometry.outputWidth(x.width)
        let y = target ?? Activation(pool: pool, channels: w.geometry.outChannels, batch: x.batch, height: ho, width: wo)
        for a in [target, residual].compactMap({ $0 }) {
            precondition(a.channels == w.geometry.outChannels && a.batch == x.batch && a.height == ho && a.width == wo,
                         "conv: output or residual has the wrong shape")
        }
        w.bias.withOptionalPointer { bias in
            let epilogue = FusedEpilogue(bias: bias, residual: residual.map { UnsafePointer($0.data) }, relu: false, ranges: nil,
                                         imageCount: x.batch)
            runInt8Codes(x.codes, scales: x.scales, zeroPoints: x.zeroPoints, channels: x.channels, batch: x.batch, height: x.height,
                         width: x.width, w, upsample: false, into: y, epilogue: epilogue, level: level, team: team)
        }
        return y
    }

    /// (min, max) of `count` floats (osk_plane_range; count >= 1).
    @inline(__always)
    static func planeRange(_ x: UnsafePointer<Float>, count: Int, level: KernelLevel = .best) -> (lo: Float, hi: Float) {
        var lo: Float = 0, hi: Float = 0
        osk_plane_range(level.rawValue, x, Int32(count), &lo, &hi)
        return (lo, hi)
    }

    /// Folds into (lo, hi) the min and max of silu(x * a + b) over `count` floats, as the encoder computes them
    /// (osk_silu_range).
    @inline(__always)
    static func foldSiLURange(_ x: UnsafePointer<Float>, count: Int, a: Float, b: Float, into lo: inout Float, _ hi: inout Float,
                              level: KernelLevel = .best) {
        osk_silu_range(level.rawValue, x, Int32(count), a, b, &lo, &hi)
    }

    /// Folds into (lo, hi) a bound of f(x * a + b) over x in `range` (f = SiLU or identity; osk_affine_bounds).
    @inline(__always)
    static func foldAffineBounds(_ range: (lo: Float, hi: Float), a: Float, b: Float, silu: Bool, into lo: inout Float, _ hi: inout Float) {
        osk_affine_bounds(range.lo, range.hi, a, b, silu ? 1 : 0, &lo, &hi)
    }

    /// Codes of f(x * a[c] + b[c]) for image i, channel quads q0..<q1 (osk_affine_q8_encode).
    @inline(__always)
    static func affineEncode(_ x: Activation, image i: Int, quads: Range<Int>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                             silu: Bool, codes: UnsafeMutablePointer<UInt32>, scale: Float, zeroPoint: Int32, level: KernelLevel = .best) {
        osk_affine_q8_encode(level.rawValue, x.data, Int32(x.channels), Int32(x.batch), Int32(x.pixels), Int32(i),
                             Int32(quads.lowerBound), Int32(quads.upperBound), a, b, silu ? 1 : 0, codes, scale, zeroPoint)
    }

    /// Scale and zero point of a range holding 0 (osk_q8_set_params: what osk_q8_quantize derives from its range).
    static func quantizationParams(lo: Float, hi: Float) -> (scale: Float, zeroPoint: Int32) {
        var s: Float = 0, z: Int32 = 0
        osk_q8_set_params(lo, hi, &s, &z)
        return (s, z)
    }
}

// MARK: - bf16 (FastConvBF16.swift holds the packed types)

extension FastConv {
    /// True when the bf16 kernels run on vdpbf16ps here (else on their exact scalar emulation, much slower).
    public static var hasBF16Instructions: Bool { osk_bf16_supported() != 0 }

    static func packBF16(_ w: [Float], rows m: Int, inChannels cin: Int, taps: Int) -> [UInt32] {
        let count = osk_bf16_packed_count(Int32(m), Int32(cin), Int32(taps))
        return [UInt32](unsafeUninitializedCapacity: count) { buf, n in
            w.withUnsafeBufferPointer { osk_bf16_pack($0.baseAddress!, Int32(m), Int32(cin), Int32(taps), buf.baseAddress!) }
            n = count
        }
    }

    /// y (Cout, N, Ho, Wo) = conv(x) + bias [+ existing] with bf16 products summed in fp32 (onestep_bf16.c).
    /// Each output is one chain in a fixed order, so the bytes do not depend on the batch, the image's position
    /// or the team size; `.avx512` uses vdpbf16ps when the CPU has it, other levels its scalar emulation.
    public static func conv(_ x: Activation, _ w: PackedConvBF16, upsample: Bool = false, pool: BufferPool,
                            accumulateInto existing: Activation? = nil, level: KernelLevel = .best,
                            team: ThreadTeam? = nil) -> Activation {
        floatOutputConv(x, w.geometry, bias: w.bias, packed: w.words, upsample: upsample, pool: pool, existing: existing,
                        level: level, team: team, kernel: osk_conv_bf16)
    }

    /// C (M, cols) += A (M, K) * B (K, cols) in bf16 products, row-major B and C; columns `columns`.
    public static func gemm(_ a: PackedGemmBF16, b: UnsafePointer<Float>, ldb: Int, c: UnsafeMutablePointer<Float>, ldc: Int,
                            columns: Range<Int>, level: KernelLevel = .best, team: ThreadTeam? = nil) {
        precondition(level.isSupported, "gemm: kernel level \(level) not supported on this CPU")
        nonisolated(unsafe) let bp = b, cp = c
        let m = Int32(a.rows), k = Int32(a.depth), lo = columns.lowerBound
        a.words.withUnsafeBufferPointer { ap in
            nonisolated(unsafe) let app = ap.baseAddress!
            forEachColumnRange(columns.count, team: team) { n0, n1 in
                osk_gemm_bf16(level.rawValue, app, m, k, bp, Int64(ldb), cp, Int64(ldc), Int64(lo + n0), Int64(lo + n1))
            }
        }
    }
}

// MARK: - fp32 convolutions for the training layers (their own buffers, one thread)

extension FastConv {
    /// Floats of a conv's fp32 weights packed for the microkernel (Cout rounded up to 8, times K).
    public static func packedWeightCount(_ g: ConvGeometry) -> Int {
        osk_f32_packed_count(Int32(g.outChannels), Int32(g.reduction))
    }

    /// Packs weights (Cout, Cin, KH, KW) into a caller-owned buffer of `packedWeightCount` floats (the training
    /// layers repack after every optimizer step into the same buffer: no allocation per call).
    public static func packWeights(_ w: UnsafePointer<Float>, geometry g: ConvGeometry, into packed: UnsafeMutablePointer<Float>) {
        osk_f32_pack(w, Int32(g.outChannels), Int32(g.reduction), packed)
    }

    /// y (Cout, N, Ho, Wo) += conv(x (Cin, N, H, W)) with weights packed by `packWeights`, single-threaded, all
    /// columns (the same kernel and bits as `conv`; for the training layers, which own their buffers).
    public static func convAccumulate(x: UnsafePointer<Float>, packed: UnsafePointer<Float>, geometry g: ConvGeometry, batch: Int,
                                      height: Int, width: Int, y: UnsafeMutablePointer<Float>, level: KernelLevel = .best) {
        var gc = cGeometry(g, upsample: false)
        let cols = batch * g.outputHeight(height) * g.outputWidth(width)
        osk_conv_f32(level.rawValue, &gc, packed, x, Int32(batch), Int32(height), Int32(width), y, 0, Int64(cols))
    }
}

extension Optional where Wrapped == [Float] {
    /// Calls body with a pointer to the array's floats, or nil.
    func withOptionalPointer<R>(_ body: (UnsafePointer<Float>?) -> R) -> R {
        guard let a = self else { return body(nil) }
        return a.withUnsafeBufferPointer { body($0.baseAddress) }
    }
}

// The int8 feed-forward projection with GEGLU fused into its epilogue (osk_linear_q8_geglu, onestep_linear_q8.c,
// called through FastConv.linearGEGLUCell): out = GEGLU(net.0.proj(x)) without writing the (2I, cols) projection
// and reading it back. Same bits as FastConv.convFused (bias epilogue) followed by FastConv.geglu, and the same
// ranges; LinearQ8DriverTests compares them.

extension FastConv {
    /// out (I, N*L) = proj[:I] * gelu(proj[I:]) with proj (2I, N*L) = W x + bias, W the 1x1 int8 layer `w`
    /// (2I outputs, packed without bias), x (K, N, H, W) quantized per image here (as convFused does); returns
    /// .some(out's per-image (lo, hi), [lo0, hi0, ...] each holding 0, as FastConv.geglu returns it when `range`).
    /// Returns nil, having written nothing, where the fused kernel does not apply (below AVX-512, I not a
    /// multiple of 8, the linear driver switched off): the caller then runs convFused and geglu.
    public static func projectGEGLU(_ x: Activation, _ w: PackedConvInt8, bias: [Float]?, out: UnsafeMutablePointer<Float>,
                                    range: Bool, pool: BufferPool, level: KernelLevel = .best, team: ThreadTeam? = nil) -> [Float]?? {
        precondition(x.channels == w.geometry.inChannels, "projectGEGLU: input has \(x.channels) channels, needs \(w.geometry.inChannels)")
        precondition(w.bias == nil && (bias == nil || bias!.count == w.geometry.outChannels),
                     "projectGEGLU: the layer must be packed without a bias and `bias` have its 2I values")
        guard level.isSupported, linearGEGLUApplies(w, level: level) else { return nil }
        let inner = w.geometry.outChannels / 2, images = x.batch
        let c4 = (x.channels + 3) / 4, qCount = c4 * x.batch * x.pixels
        let qBuffer = pool.acquire(qCount), params = pool.acquire(2 * images)
        defer { pool.release(qBuffer, count: qCount); pool.release(params, count: 2 * images) }
        nonisolated(unsafe) let xq = UnsafeMutableRawPointer(qBuffer).assumingMemoryBound(to: UInt32.self)
        nonisolated(unsafe) let xs = params
        nonisolated(unsafe) let xz = UnsafeMutableRawPointer(params + images).assumingMemoryBound(to: Int32.self)
        quantizeActivations(x, codes: xq, scales: xs, zeroPoints: xz, level: level, team: team)
        let threads = team?.threads ?? 1, slots = 2 * images * threads
        let ranges = range ? pool.acquire(slots) : nil
        ranges?.initialize(repeating: 0, count: slots)
        defer { if let ranges { pool.release(ranges, count: slots) } }
        nonisolated(unsafe) let op = out, rp = ranges
        let (n, h, wd) = (x.batch, x.height, x.width)
        bias.withOptionalPointer { bp in
            nonisolated(unsafe) let bp = bp
            // The grid over the I hidden rows (a cell computes the matching gate rows too) and the columns.
            let grid = int8Grid(rows: inner, columns: x.columns, threads: threads)
            let cells = grid.rowParts * grid.columnParts
            forEachPart(cells, granule: 1, team: cells > 1 ? team : nil) { worker, c0, c1 in
                for cell in c0..<c1 {
                    let (m0, m1) = grid.rows(cell / grid.columnParts), (n0, n1) = grid.columns(cell % grid.columnParts)
                    linearGEGLUCell(w, bias: bp, codes: xq, scales: xs, zeroPoints: xz, batch: n, height: h, width: wd, out: op,
                                    columns: n0..<n1, rows: m0..<m1, range: rp.map { $0 + worker * 2 * images }, level: level)
                }
            }
        }
        guard let ranges else { return .some(nil) }
        var r = [Float](repeating: 0, count: 2 * images)
        for t in 0..<threads {
            for i in 0..<images {
                r[2 * i] = min(r[2 * i], ranges[t * 2 * images + 2 * i])
                r[2 * i + 1] = max(r[2 * i + 1], ranges[t * 2 * images + 2 * i + 1])
            }
        }
        return .some(r)
    }
}

// `onestep-serve bench`: forward-pass speed of a model at several batch sizes, next to a plain cblas_sgemm of the
// model's dominant convolution shape measured in the same run (so the ratio survives a noisy, shared machine).
import CommandLineKit
import Foundation
import OnestepCore

enum BenchCommand {
    static let command = Subcommand("bench", summary: "forward-pass speed at several batch sizes, next to an OpenBLAS sgemm of the same run",
                                    synopsis: "bench --model DIR [--model DIR2] [--batch 1,16] [--precision fp32,int8,blas] [--json]",
                                    flags: flags, run: run)

    static let flags = [
        FlagSpec("model", "model directory (repeatable)"),
        FlagSpec("batch", "comma-separated batch sizes", default: "1,16"),
        FlagSpec("seconds", "time to spend per row", default: "2"),
        FlagSpec("threads", "BLAS threads (default: OpenBLAS's own choice, usually the core count)"),
        FlagSpec("workers", "forward passes run side by side, each on its own batch (as the server's workers do); images/s is their sum", default: "1"),
        FlagSpec("precision", "comma-separated: fp32, int8, blas (im2col + OpenBLAS baseline)", default: "fp32,int8"),
        FlagSpec("json", "print one JSON object per row instead of the table", isSwitch: true),
    ]

    struct Row {
        var model: String, dtype: String, batch: Int
        var imagesPerSecond: Double, gflops: Double, sgemmGflops: Double
        /// Mean time of one forward pass of the whole batch (the latency a request of this batch sees in compute).
        var batchMilliseconds: Double
        var ratio: Double { gflops / sgemmGflops }
    }

    static func run(_ f: ParsedFlags) throws {
        if let t = try f.int("threads", range: 1...256) { BLAS.threads = t }
        let batches = try f.intList("batch", range: 1...256) ?? [1, 16]
        let seconds = try f.double("seconds", range: 0.05...600) ?? 2
        let workers = try f.int("workers", range: 1...64) ?? 1
        var models = f.all("model")
        if models.isEmpty { models = [try f.required("model")] }
        var rows: [Row] = []
        // Every model runs with fp32 kernels and with int8 kernels (weights quantized per output channel at
        // load if the file is float); --precision picks one, "blas" adds the im2col + OpenBLAS baseline.
        let precisions = try (f.string("precision") ?? "fp32,int8").split(separator: ",").map { text -> ConvPrecision in
            guard let p = ConvPrecision(rawValue: String(text)) else { throw FlagError("--precision \(text): expected blas, fp32 or int8") }
            return p
        }
        for path in models {
            let loaded = try ImagePipeline.load(path: path)
            for precision in precisions {
                let p = loaded.with(precision: precision)
                for b in batches {
                    let row = measure(p, batch: b, seconds: seconds, workers: workers)
                    rows.append(row)
                    if f.isSet("json") { print(json(row)) }
                }
            }
        }
        if !f.isSet("json") { print(table(rows) + speedups(rows)) }
        FileHandle.standardError.write(Data("BLAS threads \(BLAS.threads); peak resident memory \(peakResidentMiB()) MiB\n".utf8))
    }

    static func measure(_ p: ImagePipeline, batch: Int, seconds: Double, workers: Int = 1) -> Row {
        let s = p.imageSize, c = p.config.inChannels
        var g = TorchGenerator(seed: 1)
        let x = g.randn(shape: [batch, c, s, s])
        let labels = p.numClasses.map { n in (0..<batch).map { $0 % n } }
        let t = ConsistencySchedule(config: .init(), steps: 1).timesteps[0]
        // Each worker has its own buffer pool and runs whole batches, like the server's compute threads.
        let rates = UnsafeMutableBufferPointer<Double>.allocate(capacity: workers)
        defer { rates.deallocate() }
        nonisolated(unsafe) let out = rates
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            let pool = BufferPool()
            out[w] = rate(seconds: seconds, warmup: 1) {
                _ = p.model.forwardBatched(x, timesteps: Array(repeating: t, count: batch), classLabels: labels, pool: pool)
            }
        }
        let perSecond = rates.reduce(0, +)
        let batchMilliseconds = rates.reduce(0) { $0 + 1000 / $1 } / Double(workers)
        let flops = p.model.flopsPerImage * Double(batch)
        // The sgemm a perfect conv would be: the dominant conv's (Cout, Cin*9) x (Cin*9, Ho*Wo*batch).
        let dominant = p.model.dominantConvolution, geo = dominant.convGeometry!
        let m = geo.outChannels, k = geo.reduction, n = dominant.pixels * batch
        // With several workers the baseline is as many sgemms side by side, summed: the same machine share.
        let sg = UnsafeMutableBufferPointer<Double>.allocate(capacity: workers)
        defer { sg.deallocate() }
        nonisolated(unsafe) let sgOut = sg
        DispatchQueue.concurrentPerform(iterations: workers) { w in sgOut[w] = sgemmGflops(m: m, n: n, k: k, seconds: min(seconds, 1)) }
        let sgemm = sg.reduce(0, +)
        return Row(model: p.name, dtype: p.precision == .blas ? "fp32-blas" : (p.precision == .int8 ? "int8" : "float32"), batch: batch, imagesPerSecond: perSecond * Double(batch),
                   gflops: perSecond * flops / 1e9, sgemmGflops: sgemm, batchMilliseconds: batchMilliseconds)
    }

    /// Calls per second of `body`, after `warmup` calls, over at least `seconds`.
    static func rate(seconds: Double, warmup: Int, _ body: () -> Void) -> Double {
        for _ in 0..<warmup { body() }
        var calls = 0
        let start = DispatchTime.now().uptimeNanoseconds
        var elapsed = 0.0
        repeat {
            body()
            calls += 1
            elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        } while elapsed < seconds || calls < 3
        return Double(calls) / elapsed
    }

    static func sgemmGflops(m: Int, n: Int, k: Int, seconds: Double) -> Double {
        var r = TorchGenerator(seed: 2)
        let a = r.randn(count: m * k), b = r.randn(count: k * n)
        var c = [Float](repeating: 0, count: m * n)
        let perSecond = a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                c.withUnsafeMutableBufferPointer { cp in
                    rate(seconds: seconds, warmup: 2) {
                        BLAS.sgemm(m: m, n: n, k: k, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n, c: cp.baseAddress!, ldc: n)
                    }
                }
            }
        }
        return perSecond * 2 * Double(m) * Double(n) * Double(k) / 1e9
    }

    static func table(_ rows: [Row]) -> String {
        // Columns as wide as their longest entry: padding(toLength:) truncates, which printed "fp32-bla" for
        // "fp32-blas" and would cut long model names.
        func pad(_ s: String, _ w: Int) -> String { s + String(repeating: " ", count: max(0, w - s.count)) }
        let mw = max(22, (rows.map(\.model.count).max() ?? 0) + 1), dw = max(10, (rows.map(\.dtype.count).max() ?? 0) + 1)
        var s = pad("model", mw) + pad("dtype", dw) + "batch  ms/batch   images/s    GFLOP/s   sgemm GFLOP/s   ratio\n"
        for r in rows {
            s += pad(r.model, mw) + pad(r.dtype, dw)
            s += String(format: "%5d %9.3f %10.1f %10.2f %15.2f %7.3f\n", r.batch, r.batchMilliseconds, r.imagesPerSecond, r.gflops, r.sgemmGflops, r.ratio)
        }
        return s
    }

    /// int8 images/s over float32 images/s for each model and batch measured both ways.
    static func speedups(_ rows: [Row]) -> String {
        var s = ""
        for r in rows where r.dtype == "int8" {
            if let f = rows.first(where: { $0.model == r.model && $0.batch == r.batch && $0.dtype == "float32" }) {
                s += "int8/fp32 speed-up \(r.model) batch \(r.batch): " + String(format: "%.2fx\n", r.imagesPerSecond / f.imagesPerSecond)
            }
        }
        return s
    }

    static func json(_ r: Row) -> String {
        let d: [String: Any] = ["model": r.model, "dtype": r.dtype, "batch": r.batch,
                                "images_per_s": r.imagesPerSecond, "batch_ms": r.batchMilliseconds, "gflops": r.gflops,
                                "sgemm_gflops": r.sgemmGflops, "ratio_to_sgemm": r.ratio]
        let data = (try? JSONSerialization.data(withJSONObject: d, options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    /// VmHWM from /proc/self/status, in MiB.
    static func peakResidentMiB() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in s.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            let kb = Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
            return kb / 1024
        }
        return 0
    }
}

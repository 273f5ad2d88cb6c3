// `onestep-serve bench`: forward-pass speed of a model at several batch sizes, next to a plain cblas_sgemm of the
// model's dominant convolution shape measured in the same run (so the ratio survives a noisy, shared machine).
// Text-to-image configs (sd-turbo, sdxs) and folders go to BenchLatent: one 512x512 image, part by part.
import CommandLineKit
import Foundation
import OnestepCore

enum BenchCommand {
    static let command = Subcommand("bench", summary: "forward-pass speed at several batch sizes, next to an OpenBLAS sgemm of the same run",
                                    synopsis: "bench (--model DIR ... | --config cd_imagenet64|sd-turbo|sdxs | --kernels) [--batch 1,16] [--threads 1,2] [--precision fp32,int8,blas] [--runs 2] [--peak] [--json]",
                                    flags: flags, run: run)

    static let flags = [
        FlagSpec("model", "model directory (repeatable)"),
        FlagSpec("config", "a published model's exact config with random weights made now: cd_imagenet64 (pixel); sd-turbo, sdxs (text-to-image, written to a temporary diffusers folder and loaded from it; sd-turbo-tiny, sdxs-tiny check the bench) (repeatable)"),
        FlagSpec("runs", "text-to-image: timed runs of each part, interleaved; the best is reported", default: "2"),
        FlagSpec("keep", "text-to-image --config: write the random-weight folder here and keep it (default: a temporary folder, removed); with --precision int8 its quantized form is kept as DIR-int8"),
        FlagSpec("tokenizer", "text-to-image --config: the CLIP tokenizer folder to copy (default: the golden pipeline's, ONESTEP_GOLDEN or ../shared/golden)"),
        FlagSpec("batch", "comma-separated batch sizes", default: "1,16"),
        FlagSpec("seconds", "time to spend per row", default: "2"),
        FlagSpec("threads", "comma-separated: cores one forward is split over (a thread team; BLAS threads too for blas)", default: "1"),
        FlagSpec("int8-policy", "layers run int8 (and bf16) for --config models: inner-convolutions, inner-convolutions+attention-projections, inner-convolutions+attention-projections+bf16-heads or inner-convolutions+bf16-attention", default: "inner-convolutions+attention-projections+bf16-heads"),
        FlagSpec("peak", "also measure the machine's peaks (clock; VNNI, fp32 FMA and bf16 chains; sgemm 2048^3, int8 GEMM) and print each row's fraction of them", isSwitch: true),
        FlagSpec("kernels", "bench the int8 / bf16 / fp32 kernels alone on the cd_imagenet64 and SD-family layer shapes (one core, GOP per CPU second, fraction of the measured peaks)", isSwitch: true),
        FlagSpec("workers", "forward passes run side by side, each on its own batch (as the server's workers do); images/s is their sum", default: "1"),
        FlagSpec("precision", "comma-separated: fp32, int8, blas (im2col + OpenBLAS baseline)", default: "fp32,int8"),
        FlagSpec("json", "print one JSON object per row instead of the table", isSwitch: true),
    ]

    struct Row {
        var model: String, dtype: String, batch: Int, threads: Int = 1
        var imagesPerSecond: Double, gflops: Double, sgemmGflops: Double
        /// Mean time of one forward pass of the whole batch (the latency a request of this batch sees in compute).
        var batchMilliseconds: Double
        /// Fastest single forward (wall), and process CPU time per forward (all threads, spinning helpers included):
        /// on a shared machine these move far less than the mean wall time.
        var bestMilliseconds: Double = 0, cpuMilliseconds: Double = 0
        var ratio: Double { gflops / sgemmGflops }
        /// The machine's measured peak for this row's arithmetic on as many cores (0 when not measured).
        var peakGflops: Double = 0
    }

    static func run(_ f: ParsedFlags) throws {
        let threadCounts = try f.intList("threads", range: 1...256) ?? [1]
        let batches = try f.intList("batch", range: 1...256) ?? [1, 16]
        let seconds = try f.double("seconds", range: 0.05...600) ?? 2
        let workers = try f.int("workers", range: 1...64) ?? 1
        let allModels = f.all("model"), allConfigs = f.all("config")
        if allModels.isEmpty && allConfigs.isEmpty && !f.isSet("peak") && !f.isSet("kernels") { _ = try f.required("model") }
        // Text-to-image configs and folders are benched part by part (BenchLatent); the rest as before.
        let textConfigs = allConfigs.compactMap { LatentBenchConfig.all[$0] }
        let configs = allConfigs.filter { LatentBenchConfig.all[$0] == nil }
        let textFolders = try allModels.filter { try isTextToImage($0) }
        let models = allModels.filter { !textFolders.contains($0) }
        if !textConfigs.isEmpty || !textFolders.isEmpty {
            if f.has("keep") && textConfigs.count > 1 { throw FlagError("--keep DIR takes one text-to-image --config at a time") }
            // fp32 unless --precision says otherwise: int8 first writes the folder's quantized form (tens of seconds
            // and the int8 pipeline's memory beside the fp32 one for the full-size configs), so it is asked for.
            let precisions = f.has("precision") ? try parsePrecisions(f) : [.fp32]
            try BenchLatent.run(configs: textConfigs, folders: textFolders, threads: threadCounts, runs: try f.int("runs", range: 1...100) ?? 2,
                                precisions: precisions, keep: f.string("keep"), tokenizer: f.string("tokenizer"), json: f.isSet("json"))
            if models.isEmpty && configs.isEmpty { return }
        }
        var rows: [Row] = []
        // Every model runs with fp32 kernels and with int8 kernels (weights quantized per output channel at
        // load if the file is float); --precision picks one, "blas" adds the im2col + OpenBLAS baseline.
        let precisions = try parsePrecisions(f)
        let policyName = f.string("int8-policy") ?? Int8Policy.innerConvolutionsAndAttentionBF16Heads.rawValue
        guard let policy = Int8Policy(rawValue: policyName) else {
            throw FlagError("--int8-policy \(policyName): expected \(Int8Policy.allCases.map(\.rawValue).joined(separator: " or "))")
        }
        // Peaks per thread count, measured once in this run (the machine is shared: same-run ratios only).
        var peaks: [Int: (f32: Double, int8: Double)] = [:]
        if f.isSet("peak") || f.isSet("kernels") {
            let m = MachinePeaks.measure(seconds: 1)
            FileHandle.standardError.write(Data(String(format: "machine peaks, one core (dependent-free chains on registers, best ~1 ms interval): clock %.2f GHz; int8 VNNI vpdpbusd %@ GOP/s; int8 AVX2 vpmaddwd+vpaddd %@ GOP/s; fp32 FMA %@ GFLOP/s; bf16 vdpbf16ps %@ GFLOP/s\n",
                                                       m.ghz, MachinePeaks.describe(m.vnniGops, ghz: m.ghz), MachinePeaks.describe(m.maddGops, ghz: m.ghz),
                                                       MachinePeaks.describe(m.fmaGflops, ghz: m.ghz),
                                                       MachinePeaks.describe(m.bf16Gflops, ghz: m.ghz)).utf8))
            if f.isSet("kernels") { print(BenchKernels.run(seconds: min(seconds, 1), peaks: m)) }
        }
        if f.isSet("peak") {
            for t in threadCounts {
                let team = t > 1 ? ThreadTeam(threads: t) : nil
                if t == threadCounts[0], let v = FastConv.vnniPeakGops(seconds: 1) {
                    let inner = BenchModels.int8LinearInnerLoopGops(seconds: 1)
                    FileHandle.standardError.write(Data(String(format: "VNNI peak (12 dependent vpdpbusd chains, one core): %.1f GOP/s; int8 linear inner loop (2048x1024 x 1024x1024, one core): %.1f GOP/s = %.0f%% of it\n", v, inner, 100 * inner / v).utf8))
                }
                let linear = BenchModels.int8LinearGops(team: team, seconds: min(seconds, 2))
                FileHandle.standardError.write(Data(String(format: "int8 linear (2048x1024 x 1024x1024, per-row u8, %@) on %d core(s): %.1f GOP/s\n",
                                                           KernelLevel.best.description, t, linear).utf8))
                peaks[t] = (BenchModels.sgemmPeak(threads: t, seconds: min(seconds, 2)), BenchModels.int8Peak(team: team, seconds: min(seconds, 2)))
                FileHandle.standardError.write(Data(String(format: "peak on %d core(s): sgemm 2048^3 %.1f GFLOP/s, int8 GEMM (1024x2048x4096, %@) %.1f GOP/s\n",
                                                           t, peaks[t]!.f32, KernelLevel.best.description, peaks[t]!.int8).utf8))
            }
        }
        let loaded = try models.map { try ImagePipeline.load(path: $0) } + configs.map { try BenchModels.pipeline(config: $0, int8Policy: policy) }
        for pipeline in loaded {
            for precision in precisions {
                let p = pipeline.with(precision: precision)
                for t in threadCounts {
                    for b in batches {
                        var row = measure(p, batch: b, seconds: seconds, workers: workers, threads: t)
                        if let peak = peaks[t] { row.peakGflops = precision == .int8 ? peak.int8 : peak.f32 }
                        rows.append(row)
                        if f.isSet("json") { print(json(row)) }
                    }
                }
            }
        }
        if !f.isSet("json") { print(table(rows) + speedups(rows)) }
        FileHandle.standardError.write(Data("kernels \(KernelLevel.best); peak resident memory \(peakResidentMiB()) MiB\n".utf8))
    }

    static func parsePrecisions(_ f: ParsedFlags) throws -> [ConvPrecision] {
        try (f.string("precision") ?? "fp32,int8").split(separator: ",").map { text -> ConvPrecision in
            guard let p = ConvPrecision(rawValue: String(text)) else { throw FlagError("--precision \(text): expected blas, fp32 or int8") }
            return p
        }
    }

    /// A diffusers pipeline folder whose model_index.json lists a UNet2DConditionModel.
    static func isTextToImage(_ path: String) throws -> Bool {
        let index = path + "/model_index.json"
        return FileManager.default.fileExists(atPath: index) ? try ModelIndex(path: index).isTextToImage : false
    }

    /// With `threads` > 1 each forward is split over a thread team of that size (BLAS threads too, for blas).
    static func measure(_ p: ImagePipeline, batch: Int, seconds: Double, workers: Int = 1, threads: Int = 1) -> Row {
        let savedBLAS = BLAS.threads
        BLAS.threads = p.precision == .blas ? threads : 1
        defer { BLAS.threads = savedBLAS }
        let s = p.imageSize, c = p.config.inChannels
        var g = TorchGenerator(seed: 1)
        let x = g.randn(shape: [batch, c, s, s])
        let labels = p.numClasses.map { n in (0..<batch).map { $0 % n } }
        let t = ConsistencySchedule(config: .init(), steps: 1).timesteps[0]
        // Each worker has its own buffer pool and runs whole batches, like the server's compute threads.
        let rates = UnsafeMutableBufferPointer<Double>.allocate(capacity: 3 * workers)
        defer { rates.deallocate() }
        nonisolated(unsafe) let out = rates
        let cpuStart = processCPUSeconds()
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            let pool = BufferPool()
            pool.team = threads > 1 ? ThreadTeam(threads: threads) : nil
            var best = Double.infinity, calls = 0
            out[w] = rate(seconds: seconds, warmup: 1) {
                let start = DispatchTime.now().uptimeNanoseconds
                _ = p.model.forwardBatched(x, timesteps: Array(repeating: t, count: batch), classLabels: labels, pool: pool)
                best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
                calls += 1
            }
            out[workers + w] = best
            out[2 * workers + w] = Double(calls - 1)  // the warm-up call is not in the rate
        }
        let cpuPerCall = (processCPUSeconds() - cpuStart) * 1e3 / max(1, (0..<workers).reduce(0.0) { $0 + rates[2 * workers + $1] + 1 })
        let perSecond = rates.prefix(workers).reduce(0, +)
        let batchMilliseconds = rates.prefix(workers).reduce(0) { $0 + 1000 / $1 } / Double(workers)
        let bestMilliseconds = (0..<workers).map { rates[workers + $0] }.min() ?? 0
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
        return Row(model: p.name, dtype: p.precision == .blas ? "fp32-blas" : (p.precision == .int8 ? "int8" : "float32"), batch: batch, threads: threads, imagesPerSecond: perSecond * Double(batch),
                   gflops: perSecond * flops / 1e9, sgemmGflops: sgemm, batchMilliseconds: batchMilliseconds,
                   bestMilliseconds: bestMilliseconds, cpuMilliseconds: cpuPerCall)
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
        var s = pad("model", mw) + pad("dtype", dw) + "batch threads  ms/batch   best ms     cpu ms   images/s    GFLOP/s   sgemm GFLOP/s   ratio  of peak\n"
        for r in rows {
            s += pad(r.model, mw) + pad(r.dtype, dw)
            s += String(format: "%5d %7d %9.3f %9.3f %10.3f %10.2f %10.2f %15.2f %7.3f", r.batch, r.threads, r.batchMilliseconds, r.bestMilliseconds,
                        r.cpuMilliseconds, r.imagesPerSecond, r.gflops, r.sgemmGflops, r.ratio)
            s += r.peakGflops > 0 ? String(format: " %7.1f%%\n", 100 * r.gflops / r.peakGflops) : "        -\n"
        }
        return s
    }

    /// int8 images/s over float32 images/s for each model and batch measured both ways.
    static func speedups(_ rows: [Row]) -> String {
        var s = ""
        for r in rows where r.dtype == "int8" {
            if let f = rows.first(where: { $0.model == r.model && $0.batch == r.batch && $0.threads == r.threads && $0.dtype == "float32" }) {
                s += "int8/fp32 speed-up \(r.model) batch \(r.batch) threads \(r.threads): " + String(format: "%.2fx\n", r.imagesPerSecond / f.imagesPerSecond)
            }
        }
        return s
    }

    static func json(_ r: Row) -> String {
        let d: [String: Any] = ["model": r.model, "dtype": r.dtype, "batch": r.batch, "threads": r.threads, "peak_gflops": r.peakGflops,
                                "images_per_s": r.imagesPerSecond, "batch_ms": r.batchMilliseconds, "best_batch_ms": r.bestMilliseconds,
                                "cpu_ms_per_batch": r.cpuMilliseconds, "gflops": r.gflops,
                                "sgemm_gflops": r.sgemmGflops, "ratio_to_sgemm": r.ratio]
        let data = (try? JSONSerialization.data(withJSONObject: d, options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    /// User + system CPU seconds of the whole process so far (getrusage).
    static func processCPUSeconds() -> Double {
        var u = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
        return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
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

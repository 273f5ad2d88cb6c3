// `onestep-serve bench --config sd-turbo|sdxs` (and `--model DIR` for a text-to-image folder): one 512x512 image
// in one step, part by part (text encoder, one UNet step, decoder, the whole `generate`), on 1..N cores. Each
// part's GFLOP/s is given as a fraction of an OpenBLAS sgemm 2048^3 on as many threads, measured in the same run
// before and after the parts (the best of the two: the machine may be shared). Times are best-of-runs, runs
// interleaved part by part; the CPU time (getrusage, all threads) of that run is printed beside the wall time,
// since on a shared machine the wall time includes waiting for a core.
// Memory: the folder is written, the peak-RSS mark is reset (/proc/self/clear_refs), then the pipeline is loaded
// through TextToImagePipeline.load; RSS before and after the load against the float32 parameter bytes shows
// whether any weight is held twice.
import CommandLineKit
import Foundation
import OnestepCore

enum BenchLatent {
    struct Row {
        var model: String, part: String, precision: String, threads: Int
        var gflop: Double
        var firstMs: Double, bestMs: Double, bestCPUms: Double
        var peak: Peak
        /// int8 rows: this row's CPU ms / the fp32 row's of the same part and threads (same run, interleaved).
        var cpuRatioVsFP32: Double?
        /// GFLOP per wall second of the best run, and per CPU second of that run (all threads; a thread team's
        /// helpers spin briefly between layers, which counts).
        var gflops: Double { bestMs > 0 ? gflop / (bestMs / 1000) : 0 }
        var gflopsPerCPUSecond: Double { bestCPUms > 0 ? gflop / (bestCPUms / 1000) : 0 }
    }

    /// An OpenBLAS sgemm 2048^3 on a thread count: GFLOP per wall second and per CPU second of its best calls.
    /// On a machine shared with other work the wall figure falls with the load; the CPU figure much less.
    struct Peak { var wall: Double, cpu: Double, n = 2048 }

    static func sgemmPeak(threads: Int, n: Int = 2048, calls: Int = 5) -> Peak {
        let saved = BLAS.threads
        BLAS.threads = threads
        defer { BLAS.threads = saved }
        var r = TorchGenerator(seed: 2)
        let a = r.randn(count: n * n), b = r.randn(count: n * n)
        var c = [Float](repeating: 0, count: n * n)
        var wall = Double.infinity, cpu = Double.infinity
        for _ in 0..<(calls + 1) {  // the first call (page faults, thread start) is a warm-up
            let c0 = ProcessMemory.cpuSeconds(), w0 = DispatchTime.now().uptimeNanoseconds
            BLAS.sgemm(m: n, n: n, k: n, a: a, lda: n, b: b, ldb: n, c: &c, ldc: n)
            wall = min(wall, Double(DispatchTime.now().uptimeNanoseconds - w0) / 1e9)
            cpu = min(cpu, ProcessMemory.cpuSeconds() - c0)
        }
        let flop = 2 * Double(n) * Double(n) * Double(n)
        return Peak(wall: flop / wall / 1e9, cpu: flop / max(cpu, 1e-9) / 1e9, n: n)
    }

    static func loadAverage() -> String {
        ((try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? "?").split(separator: " ").prefix(3).joined(separator: " ")
    }

    struct Memory {
        var model: String
        var precision = "float32"
        var parameterBytes: Int?           // float32 bytes of every tensor the loader reads (nil: --model folder)
        var writeSeconds: Double?, loadSeconds: Double
        var rssBeforeLoadMiB: Double, rssAfterLoadMiB: Double, peakLoadMiB: Double, peakMiB: Double
        var peakResetWorked: Bool
    }

    /// Benches each config (written to a temporary folder, or to `keep`) and each text-to-image model folder.
    static func run(configs: [LatentBenchConfig], folders: [String], threads: [Int], runs: Int, precisions: [ConvPrecision],
                    keep: String?, tokenizer: String?, json: Bool) throws {
        var rows: [Row] = [], memories: [Memory] = []
        var peaks: [Int: Peak] = [:]
        func bench(folder: String, name: String, written: BenchLatentFolder.Written?, wroteNow: Bool = true, keepInt8: String? = nil) throws {
            // One pipeline per precision, each loaded through TextToImagePipeline.load; int8 from the folder that
            // `onestep-serve quantize` would write (LatentQuantizer.writeInt8Folder), made in a temporary folder.
            var loaded: [(ConvPrecision, TextToImagePipeline)] = []
            var int8Folder: String?
            defer { if let int8Folder, keepInt8 == nil { try? FileManager.default.removeItem(atPath: int8Folder) } }
            for precision in precisions {
                var path = folder
                switch precision {
                case .fp32: break
                case .blas:
                    FileHandle.standardError.write(Data("precision blas: not a path of text-to-image (latent) pipelines; those rows are skipped\n".utf8))
                    continue
                case .int8:
                    let float = try loaded.first { $0.0 == .fp32 }?.1 ?? TextToImagePipeline.load(path: folder, name: name)
                    path = try quantizedFolder(float, source: folder, name: name, to: keepInt8)
                    int8Folder = path
                }
                let resetWorked = ProcessMemory.resetPeak()
                let before = ProcessMemory.residentMiB()
                let t0 = DispatchTime.now().uptimeNanoseconds
                let pipeline = try TextToImagePipeline.load(path: path, name: name)
                let loadSeconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                let after = ProcessMemory.residentMiB(), peakLoad = ProcessMemory.peakMiB()
                loaded.append((precision, pipeline))
                let m = Memory(model: name, precision: precisionName(precision), parameterBytes: written.map { $0.parameters * 4 },
                               writeSeconds: wroteNow && precision == .fp32 ? written?.seconds : nil,
                               loadSeconds: loadSeconds, rssBeforeLoadMiB: before, rssAfterLoadMiB: after, peakLoadMiB: peakLoad,
                               peakMiB: ProcessMemory.peakMiB(), peakResetWorked: resetWorked)
                memories.append(m)
                if json { print(jsonLine(m)) }
            }
            for t in threads {
                let measured = measure(loaded, threads: t, runs: runs, peak: &peaks)
                rows += measured
                if json { measured.forEach { print(jsonLine($0)) } }
            }
        }
        for config in configs {
            let folder = keep ?? FileManager.default.temporaryDirectory.path + "/onestep-bench-\(config.name)-\(getpid())"
            if let keep, let items = try? FileManager.default.contentsOfDirectory(atPath: keep), !items.isEmpty {
                throw FlagError("--keep \(keep): the folder exists and is not empty; remove it or name a new one (the bench writes a whole pipeline there)")
            }
            if keep == nil { try? FileManager.default.removeItem(atPath: folder) }
            defer { if keep == nil { try? FileManager.default.removeItem(atPath: folder) } }
            let tok = try BenchLatentFolder.tokenizerFolder(flag: tokenizer, golden: config.tokenizerGolden)
            let written = try BenchLatentFolder.write(config, to: folder, tokenizer: tok)
            FileHandle.standardError.write(Data(String(format: "%@: wrote %.2f GB of float32 weights (%d M parameters) to %@ in %.1f s\n",
                                                       config.name, Double(written.parameters * 4) / 1e9, written.parameters / 1_000_000, folder, written.seconds).utf8))
            try bench(folder: folder, name: config.name, written: written, keepInt8: keep.map { $0 + "-int8" })
        }
        for folder in folders {
            var written = BenchLatentFolder.Written()
            written.textEncoderParameters = BenchLatentFolder.storedParameters(folder + "/text_encoder/model.safetensors", skipping: ["embeddings.position_ids", "text_model.embeddings.position_ids", "text_projection."])
            written.unetParameters = BenchLatentFolder.storedParameters(folder + "/unet/diffusion_pytorch_model.safetensors")
            written.decoderParameters = BenchLatentFolder.storedParameters(folder + "/vae/diffusion_pytorch_model.safetensors", skipping: ["encoder.", "quant_conv."])
            try bench(folder: folder, name: URL(fileURLWithPath: folder).standardizedFileURL.lastPathComponent,
                      written: written.parameters > 0 ? written : nil, wroteNow: false)
        }
        if !json { print(table(rows) + memories.map(describe).joined()) }
    }

    static func precisionName(_ p: ConvPrecision) -> String { p == .fp32 ? "float32" : p.rawValue }

    /// Writes the int8 form of the text-to-image folder `source` (whose fp32 pipeline is `float`) with the code of
    /// `onestep-serve quantize` (LatentQuantizer.writeInt8Folder: unet/, vae/ and text_encoder/, default weight
    /// error threshold) into `to` (--keep DIR gives DIR-int8, which must not exist) or a temporary folder the
    /// caller removes, and returns its path. Prints how many layers of each component went int8.
    static func quantizedFolder(_ float: TextToImagePipeline, source: String, name: String, to: String? = nil) throws -> String {
        let path = to ?? FileManager.default.temporaryDirectory.path + "/onestep-bench-\(name)-int8-\(getpid())"
        if to == nil { try? FileManager.default.removeItem(atPath: path) }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let written = try LatentQuantizer.writeInt8Folder(float, source: source, destination: path)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        let counts = written.layers.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value.filter(\.int8).count) of \($0.value.count)" }
        FileHandle.standardError.write(Data(String(format: "%@: quantized (onestep-serve quantize's writer) in %.1f s to %@; int8 layers: %@\n",
                                                   name, seconds, path, counts.joined(separator: ", ")).utf8))
        return path
    }

    /// Best-of-`runs` wall and CPU ms of each part of each pipeline on `threads` cores (a thread team for the UNet
    /// and decoder; OpenBLAS on one thread, as the server runs it), parts and pipelines interleaved within each run (fp32 part,
    /// then int8 part...), so a change of the machine's load hits both precisions alike.
    static func measure(_ pipelines: [(ConvPrecision, TextToImagePipeline)], threads t: Int, runs: Int,
                        peak peaks: inout [Int: Peak]) -> [Row] {
        guard let first = pipelines.first?.1 else { return [] }
        // One OpenBLAS thread, as the server runs (--threads 1): the team splits our layers, and OpenBLAS threads
        // nested in the attention heads' concurrentPerform (cross-attention's sgemm) spin-yielded for each other:
        // the int8 SDXS UNet's cross-attention heads took 223 ms of the caller's CPU on 2 threads against 39 ms on 1.
        let savedBLAS = BLAS.threads
        BLAS.threads = 1
        defer { BLAS.threads = savedBLAS }
        // 2048^3 for real sizes; the tiny configs (64x64 images, a check of the bench) take a 512^3 one.
        let peakSize = first.defaultSize >= 512 ? 2048 : 512
        let peakBefore = sgemmPeak(threads: t, n: peakSize)
        // (pipeline index, name, GFLOP, body), interleaved part by part.
        var parts: [(Int, String, Double, () throws -> Void)] = []
        let perPipeline = pipelines.map { partsOf($0.1, threads: t) }
        for i in perPipeline[0].indices {
            for (k, list) in perPipeline.enumerated() { parts.append((k, list[i].0, list[i].1, list[i].2)) }
        }
        var wall = Array(repeating: [Double](), count: parts.count), cpu = wall
        for _ in 0..<max(1, runs) {
            for (i, part) in parts.enumerated() {
                let c0 = ProcessMemory.cpuSeconds(), w0 = DispatchTime.now().uptimeNanoseconds
                do { try part.3() } catch { fatalError("bench \(first.name) \(part.1): \(error)") }
                wall[i].append(Double(DispatchTime.now().uptimeNanoseconds - w0) / 1e6)
                cpu[i].append((ProcessMemory.cpuSeconds() - c0) * 1000)
            }
        }
        let peakAfter = sgemmPeak(threads: t, n: peakSize), old = peaks[t] ?? Peak(wall: 0, cpu: 0)
        let peak = Peak(wall: max(peakBefore.wall, peakAfter.wall, old.wall), cpu: max(peakBefore.cpu, peakAfter.cpu, old.cpu), n: peakSize)
        peaks[t] = peak
        FileHandle.standardError.write(Data(String(format: "sgemm %d^3 on %d thread(s): %.1f GFLOP per wall second, %.1f per CPU second (best calls, before and after the parts); load average %@\n",
                                                   peakSize, t, peak.wall, peak.cpu, loadAverage()).utf8))
        var rows = parts.indices.map { i in
            let best = wall[i].indices.min { wall[i][$0] < wall[i][$1] }!
            return Row(model: first.name, part: parts[i].1, precision: precisionName(pipelines[parts[i].0].0), threads: t,
                       gflop: parts[i].2 / 1e9, firstMs: wall[i][0], bestMs: wall[i][best], bestCPUms: cpu[i][best], peak: peak)
        }
        for i in rows.indices where rows[i].precision == "int8" {
            if let f = rows.first(where: { $0.precision == "float32" && $0.part == rows[i].part }) {
                rows[i].cpuRatioVsFP32 = rows[i].bestCPUms / max(f.bestCPUms, 1e-9)
            }
        }
        return rows
    }

    /// The four timed parts of `pipeline` on `t` threads: (name, GFLOP, body). The UNet step is what the sampler
    /// calls: timestep 999 (Euler, trailing, 1 step), on the embeddings of this pipeline's own text encoder.
    static func partsOf(_ pipeline: TextToImagePipeline, threads t: Int) -> [(String, Double, () throws -> Void)] {
        var p = pipeline
        p.threads = t
        let side = p.defaultSize, h = side / p.decoder.scaleFactor
        var g = TorchGenerator(seed: 1)
        let latents = g.randn(shape: [1, p.unet.config.inChannels, h, h])
        let prompt = "a photo of an astronaut riding a horse on mars, highly detailed"
        let embeddings = try! p.encode([prompt])
        let textFlops = CLIPTextBench.flops(p.textEncoder.config, batch: 1, length: embeddings.shape[1])
        let unetFlops = p.unet.flops(batch: 1, height: h, width: h, tokens: embeddings.shape[1])
        let decoderFlops: Double
        switch p.decoder {
        case .kl(let d): decoderFlops = d.flops(batch: 1, height: h, width: h)
        case .tiny(let d): decoderFlops = d.flops(batch: 1, height: h, width: h)
        }
        let q = p
        return [
            ("text encoder", textFlops, { _ = try q.encode([prompt]) }),
            ("unet step", unetFlops, { _ = try q.unet.forward(latents, timesteps: [999], encoderHiddenStates: embeddings, threads: t) }),
            ("decoder \(q.decoder.className)", decoderFlops, { _ = try q.decoder.decodeScaled(latents, threads: t) }),
            ("total \(side)x\(side) 1 step", textFlops + unetFlops + decoderFlops,
             { _ = try q.generate([TextGenerationRequest(prompt: prompt, seed: 1)], steps: 1) }),
        ]
    }

    static func table(_ rows: [Row]) -> String {
        func pad(_ s: String, _ w: Int) -> String { s + String(repeating: " ", count: max(0, w - s.count)) }
        let mw = max(10, (rows.map(\.model.count).max() ?? 0) + 1), pw = max(12, (rows.map(\.part.count).max() ?? 0) + 1)
        var s = pad("model", mw) + pad("part", pw) + "dtype   threads    GFLOP  first ms   best ms    CPU ms   GFLOP/s  of peak  GFLOP/CPU-s  of peak  int8/fp32 CPU\n"
        for r in rows {
            s += pad(r.model, mw) + pad(r.part, pw) + pad(r.precision, 8)
            s += String(format: "%7d %8.1f %9.0f %9.0f %9.0f %9.1f %7.1f%% %12.1f %7.1f%%\n", r.threads, r.gflop, r.firstMs, r.bestMs, r.bestCPUms,
                        r.gflops, 100 * r.gflops / max(r.peak.wall, 1e-9), r.gflopsPerCPUSecond, 100 * r.gflopsPerCPUSecond / max(r.peak.cpu, 1e-9))
            if let ratio = r.cpuRatioVsFP32 { s.removeLast(); s += String(format: " %14.2f\n", ratio) }
        }
        var peaks: [Int: Peak] = [:]
        for r in rows { peaks[r.threads] = r.peak }
        for (t, p) in peaks.sorted(by: { $0.key < $1.key }) {
            s += String(format: "peak = OpenBLAS sgemm %d^3 on %d thread(s) in this run: %.1f GFLOP per wall second, %.1f per CPU second\n", p.n, t, p.wall, p.cpu)
        }
        s += "load average at the end: \(loadAverage()); \(cpuModel())\n"
        return s
    }

    /// "Model name" of /proc/cpuinfo with its family (26 is AMD Zen 5), for the table's footnote.
    static func cpuModel() -> String {
        let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        func field(_ name: String) -> String? {
            info.split(separator: "\n").first { $0.hasPrefix(name) }.flatMap { $0.split(separator: ":", maxSplits: 1).last }
                .map { $0.trimmingCharacters(in: .whitespaces) }
        }
        return "CPU \(field("model name") ?? "?") family \(field("cpu family") ?? "?"), \(ProcessInfo.processInfo.activeProcessorCount) CPUs"
    }

    static func describe(_ m: Memory) -> String {
        var s = "\(m.model) \(m.precision): "
        if let w = m.writeSeconds { s += String(format: "folder written in %.1f s; ", w) }
        s += String(format: "load %.1f s; RSS before load %.0f MiB, after load %.0f MiB, peak during load %.0f MiB, peak overall %.0f MiB",
                    m.loadSeconds, m.rssBeforeLoadMiB, m.rssAfterLoadMiB, m.peakLoadMiB, m.peakMiB)
        if !m.peakResetWorked { s += " (the peak mark could not be reset: peaks include writing the folder)" }
        if !SafetensorsFile.mapsFiles { s += " (weight files read whole into memory: ONESTEP_SAFETENSORS_MMAP=0)" }
        if let bytes = m.parameterBytes {
            let params = Double(bytes) / 1048576, added = m.rssAfterLoadMiB - m.rssBeforeLoadMiB
            if m.precision == "float32" {
                s += String(format: "\n  float32 parameters %.0f MiB; the load added %.0f MiB resident = %.2fx the parameters (2x or more would mean a second copy beside the packed form)", params, added, added / params)
            } else {
                s += String(format: "\n  float32 parameters %.0f MiB; the int8 load added %.0f MiB resident = %.2fx their float32 bytes (int8 codes are 0.25x; fp32 layers, norms and packing add to that)", params, added, added / params)
            }
        }
        return s + "\n"
    }

    static func jsonLine(_ d: [String: Any]) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: d, options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    static func jsonLine(_ r: Row) -> String {
        var d: [String: Any] = ["model": r.model, "part": r.part, "dtype": r.precision, "threads": r.threads, "gflop": r.gflop,
                  "first_ms": r.firstMs, "best_ms": r.bestMs, "best_cpu_ms": r.bestCPUms, "gflops": r.gflops,
                  "gflop_per_cpu_s": r.gflopsPerCPUSecond, "sgemm_peak_gflops": r.peak.wall, "sgemm_peak_gflop_per_cpu_s": r.peak.cpu,
                  "load_average": loadAverage()]
        if let ratio = r.cpuRatioVsFP32 { d["cpu_ratio_vs_float32"] = ratio }
        return jsonLine(d)
    }

    static func jsonLine(_ m: Memory) -> String {
        var d: [String: Any] = ["model": m.model, "precision": m.precision, "load_s": m.loadSeconds, "rss_before_load_mib": m.rssBeforeLoadMiB,
                                "rss_after_load_mib": m.rssAfterLoadMiB, "peak_load_mib": m.peakLoadMiB, "peak_mib": m.peakMiB,
                                "weights_mapped": SafetensorsFile.mapsFiles,
                                "peak_reset": m.peakResetWorked]
        if let b = m.parameterBytes { d["parameter_bytes"] = b }
        if let w = m.writeSeconds { d["write_s"] = w }
        return jsonLine(d)
    }
}

/// The process's memory and CPU time, from /proc/self and getrusage (Linux).
enum ProcessMemory {
    static func status(_ field: String) -> Double {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in s.split(separator: "\n") where line.hasPrefix(field + ":") {
            return Double(line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0) / 1024
        }
        return 0
    }
    /// VmRSS in MiB.
    static func residentMiB() -> Double { status("VmRSS") }
    /// VmHWM (peak RSS since start or since the last resetPeak) in MiB.
    static func peakMiB() -> Double { status("VmHWM") }
    /// Resets VmHWM to the current RSS (writing 5 to /proc/self/clear_refs, Linux 4.0+). False when refused.
    static func resetPeak() -> Bool {
        guard let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
        defer { try? h.close() }
        return (try? h.write(contentsOf: Data("5".utf8))) != nil
    }
    /// User + system CPU seconds of every thread of the process.
    static func cpuSeconds() -> Double {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
    }
}

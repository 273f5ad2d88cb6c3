// Training speed beside the inference forward (the serving path, fp32 kernels) and beside PyTorch on the same model,
// batch, loss and optimizer, measured in one run. A training step here is what TeacherObjective runs: the EDM loss's
// forward and backward (EDMDenoiserLoss) and one Adam update with gradient clipping (Optimizer). GFLOP/s uses
// UNet2DModel.flopsPerImage for the forward and counts a training step as 3x the forward (forward, input
// gradients, weight gradients: the three GEMMs of every layer).
//
// With --pytorch PYTHON, scripts/bench/train_pytorch.py (the same default model in diffusers, the same EDM loss,
// torch.optim.Adam) runs as a subprocess after each of our measurements, `--rounds` times interleaved, and the
// ratio of images/s is printed for wall time and for CPU time (the machine is shared: CPU seconds do not count
// the time spent waiting for a core).
import CommandLineKit
import Foundation
import OnestepCore
import OnestepTrain

let benchCommand = Subcommand("bench", summary: "training images/s next to the inference forward rate and PyTorch's", flags: [
    FlagSpec("model", "model directory to measure (default: the default teacher config)"),
    FlagSpec("size", "image side of the default teacher config", default: "16"),
    FlagSpec("classes", "classes of the default teacher config (0 = unconditional)", default: "8"),
    FlagSpec("batch", "images per step", default: "32"),
    FlagSpec("steps", "timed steps per measurement", default: "10"),
    FlagSpec("threads", "comma-separated OpenBLAS thread counts to compare", default: "1"),
    FlagSpec("workers", "comma-separated data-parallel worker counts to compare (training)", default: "1,2"),
    FlagSpec("pytorch", "python with torch + diffusers: also run scripts/bench/train_pytorch.py (default model only)"),
    FlagSpec("pytorch-threads", "torch threads of the PyTorch run", default: "2"),
    FlagSpec("rounds", "interleaved rounds of ours / PyTorch's measurement", default: "1"),
    FlagSpec("train-only", "skip the inference-forward timing (for profiling a training step alone)", isSwitch: true),
    FlagSpec("reference", "also time the first trainer's NCHW kernels (ReferenceConvGrad, ReferenceGroupNorm) each round",
             isSwitch: true),
], run: runBench)

/// CPU seconds (user + system) of this process so far.
func processCPUSeconds() -> Double {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
}

/// One timed measurement: images/s by wall time and by CPU time.
struct TrainRate { var wall: Double, cpu: Double }

func runBench(_ flags: ParsedFlags) throws {
    let batch = try flags.requiredInt("batch", 1...4096), steps = try flags.requiredInt("steps", 1...100_000)
    let rounds = try flags.requiredInt("rounds", 1...100)
    let threads = try (flags.string("threads") ?? "1").split(separator: ",").map { s -> Int in
        guard let t = Int(s), (1...64).contains(t) else { throw FlagError("--threads \(s): expected integers 1...64, comma-separated") }
        return t
    }
    let workerCounts = try (flags.string("workers") ?? "1").split(separator: ",").map { s -> Int in
        guard let w = Int(s), (1...64).contains(w) else { throw FlagError("--workers \(s): expected integers 1...64, comma-separated") }
        return w
    }
    let python = flags.string("pytorch"), torchThreads = try flags.requiredInt("pytorch-threads", 1...64)
    if python != nil && flags.string("model") != nil {
        throw FlagError("--pytorch measures the default teacher config only; leave out --model")
    }
    if let python, !FileManager.default.isExecutableFile(atPath: python) {
        throw FlagError("--pytorch \(python): no such executable; give the python of a venv with torch and diffusers (e.g. /work/venv/bin/python)")
    }
    let trainable: TrainableUNet
    let size = Int(try flags.choice("size", ["8", "16", "32", "64"]))!, classes = try flags.requiredInt("classes", 0...1000)
    if let dir = flags.string("model") {
        let (model, _) = try ModelDirectory(path: dir).loadModel()
        trainable = try TrainableUNet(config: model.config, weights: TensorDictionary(model.parameters))
    } else {
        let cfg = try ModelExport.defaultTeacherConfig(size: size, channels: 3,
                                                       classNames: classes == 0 ? nil : (0..<classes).map { "class\($0)" })
        trainable = TrainableUNet(config: cfg, seed: 0)
    }
    var inference = try trainable.inferenceModel()
    inference.packForServing(.fp32)
    let pool = BufferPool()
    let cfg = trainable.config, per = cfg.inChannels * cfg.sampleSize * cfg.sampleSize
    let flops = inference.flopsPerImage
    stdoutLine(String(format: "model: %d parameters, %dx%d, %.1f MFLOP per image forward; batch %d; CPU: %@", trainable.parameterCount,
                      cfg.sampleSize, cfg.sampleSize, flops / 1e6, batch, cpuModelName()))
    var rng = TrainRandom(seed: 1)
    let x = Tensor(shape: [batch, cfg.inChannels, cfg.sampleSize, cfg.sampleSize], data: (0..<(batch * per)).map { _ in rng.normal() * 0.5 })
    let labels = cfg.numClassEmbeds.map { k in (0..<batch).map { $0 % k } }
    let t = (0..<batch).map { _ in Float(250 * (-1.2 + 1.2 * Double(rng.normal()))) }
    let loss = EDMDenoiserLoss()
    let optimizer = Optimizer(OptimizerConfig(), for: trainable.store)
    var ours: [TrainRate] = [], theirs: [TrainRate] = []
    for round in 0..<rounds {
        let kernelSets = flags.isSet("reference") ? [true, false] : [false]
        for th in threads { for workers in workerCounts { for reference in kernelSets {
            TrainingKernels.reference = reference
            defer { TrainingKernels.reference = false }
            let replicas = (1..<workers).map { _ in trainable.clone() }
            BLAS.threads = th
            let forwards = flags.isSet("train-only") ? 0 : steps
            _ = inference.forwardBatched(x, timesteps: t, classLabels: labels, pool: pool)
            var start = Date()
            for _ in 0..<forwards { _ = inference.forwardBatched(x, timesteps: t, classLabels: labels, pool: pool) }
            let fwd = Date().timeIntervalSince(start) / Double(max(forwards, 1))
            var cpu = 0.0
            let step: Double = x.data.withUnsafeBufferPointer { xp in
                func trainStep() {
                    trainable.store.zeroGrads()
                    _ = loss.step(model: trainable, replicas: replicas, clean: xp.baseAddress!, batch: batch, labels: labels, rng: &rng)
                    optimizer.update(trainable.store)
                }
                trainStep()
                start = Date()
                let c0 = processCPUSeconds()
                for _ in 0..<steps { trainStep() }
                cpu = (processCPUSeconds() - c0) / Double(steps)
                return Date().timeIntervalSince(start) / Double(steps)
            }
            if th == threads.last && workers == workerCounts.last && !reference {
                ours.append(TrainRate(wall: Double(batch) / step, cpu: Double(batch) / cpu))
            }
            let training = String(format: "training step (EDM loss + Adam) %.1f img/s (%.1f GFLOP/s, %.0f ms/step wall, %.0f ms/step CPU)",
                                  Double(batch) / step, 3 * flops * Double(batch) / step / 1e9, step * 1000, cpu * 1000)
            let head = String(format: "round %d, threads %d, workers %d, %@ kernels: ", round + 1, th, workers, reference ? "reference" : "fast")
            if forwards == 0 {
                stdoutLine(head + training)
            } else {
                stdoutLine(head + String(format: "inference forward %.0f img/s (%.1f GFLOP/s); ", Double(batch) / fwd,
                                         flops * Double(batch) / fwd / 1e9) + training + String(format: "; train/forward time %.2fx", step / fwd))
            }
        } } }
        if let python {
            let r = try runPyTorch(python: python, threads: torchThreads, batch: batch, steps: steps, size: cfg.sampleSize, classes: classes)
            theirs.append(r)
            stdoutLine(String(format: "round %d, PyTorch (%d threads): training step %.1f img/s wall, %.1f img/s per CPU second",
                              round + 1, torchThreads, r.wall, r.cpu))
        }
    }
    guard !theirs.isEmpty else { return }
    let median = { (v: [Double]) -> Double in let s = v.sorted(); return s[s.count / 2] }
    let ow = median(ours.map(\.wall)), oc = median(ours.map(\.cpu)), tw = median(theirs.map(\.wall)), tc = median(theirs.map(\.cpu))
    stdoutLine(String(format: "onestep/PyTorch (medians of %d rounds, workers %d vs torch threads %d): wall %.1f / %.1f img/s = %.2fx; per CPU second %.1f / %.1f img/s = %.2fx",
                      rounds, workerCounts.last!, torchThreads, ow, tw, ow / tw, oc, tc, oc / tc))
}

/// Runs scripts/bench/train_pytorch.py once (3 warm-up steps, then `steps` timed) and parses its `pytorch:` line.
func runPyTorch(python: String, threads: Int, batch: Int, steps: Int, size: Int, classes: Int) throws -> TrainRate {
    let script = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("scripts/bench/train_pytorch.py").path
    let path = FileManager.default.fileExists(atPath: script) ? script : "scripts/bench/train_pytorch.py"
    guard FileManager.default.fileExists(atPath: path) else {
        throw FlagError("--pytorch: scripts/bench/train_pytorch.py not found (run from the repository root)")
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: python)
    p.arguments = [path, "--threads", "\(threads)", "--batch", "\(batch)", "--steps", "\(steps)", "--size", "\(size)",
                   "--classes", "\(classes)"]
    let out = Pipe()
    p.standardOutput = out
    do { try p.run() } catch { throw FlagError("--pytorch \(python): cannot run it (\(error.localizedDescription))") }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let text = String(decoding: data, as: UTF8.self)
    // "pytorch: 141.9 img/s (225.4 ms/step wall, 110.7 ms/step CPU)"
    guard p.terminationStatus == 0, let line = text.split(separator: "\n").first(where: { $0.hasPrefix("pytorch:") }) else {
        throw FlagError("--pytorch: train_pytorch.py failed (exit \(p.terminationStatus)); needs torch and diffusers in \(python)")
    }
    let numbers = line.split(whereSeparator: { " (),".contains($0) }).compactMap { Double($0) }
    guard numbers.count >= 3 else { throw FlagError("--pytorch: cannot read \"\(line)\"") }
    return TrainRate(wall: numbers[0], cpu: Double(batch) / (numbers[2] / 1000))
}

/// The CPU model name from /proc/cpuinfo (for the note beside every figure).
func cpuModelName() -> String {
    guard let s = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
          let line = s.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
          let name = line.split(separator: ":", maxSplits: 1).last else { return "unknown" }
    return "\(name.trimmingCharacters(in: .whitespaces)), \(ProcessInfo.processInfo.activeProcessorCount) CPUs"
}

// `eval`: sample quality without downloaded networks. A small classifier trained on the data (ShapeClassifier,
// cached) supplies features and predictions; each model generates a class-balanced set on fixed seeds and is
// compared with held-out real images:
//   FD-cls   Frechet distance in the classifier's penultimate features (not FID: different network)
//   KID      polynomial-kernel MMD^2 in the same features (unnormalised features, so values are large)
//   acc      conditional accuracy: generated images classified as the label they were asked for
// each with a percentile-bootstrap 95% interval, plus the real-vs-real floor (a second held-out real set of the
// same size; its accuracy is the classifier's held-out accuracy). The classifier never sees held-out images.
import Dispatch
import Foundation
import OnestepCore

/// One model to evaluate: `[NAME=]DIR[:STEPS][@SCHEDULER][,guidance=W]`. SCHEDULER (a diffusers scheduler class
/// name, e.g. DDIMScheduler) samples the folder's network with that class built from its scheduler config (as
/// diffusers' `from_config`), so a DDPMScheduler teacher is evaluated with DDIM or DPM-Solver++ at a chosen step
/// count. W: classifier-free guidance scale of a model with a null label (ImagePipeline.withClassGuidance).
public struct EvalSpec: Sendable, Equatable {
    public var name: String
    public var path: String
    public var steps: Int?
    public var scheduler: String?
    public var guidance: Double?

    public init(name: String, path: String, steps: Int?, scheduler: String? = nil, guidance: Double? = nil) {
        (self.name, self.path, self.steps, self.scheduler, self.guidance) = (name, path, steps, scheduler, guidance)
    }

    public init(parsing s: String) throws {
        var rest = s, name: String?, scheduler: String?, guidance: Double?
        if let eq = rest.firstIndex(of: "="), !rest[..<eq].contains(",") { name = String(rest[..<eq]); rest = String(rest[rest.index(after: eq)...]) }
        if let r = rest.range(of: ",guidance=", options: .backwards) {
            let text = String(rest[r.upperBound...])
            guard let w = Double(text), w.isFinite, (0...GuidanceLimits.maxScale).contains(w) else {
                throw DataError("model spec '\(s)': guidance '\(text)' is not a number in 0...\(Int(GuidanceLimits.maxScale)) (1 = no guidance; typical 1.5-5)")
            }
            guidance = w
            rest = String(rest[..<r.lowerBound])
        }
        if let at = rest.lastIndex(of: "@") {
            let cls = String(rest[rest.index(after: at)...])
            guard !cls.isEmpty, cls.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                throw DataError("model spec '\(s)': expected a scheduler class name after @, e.g. @DDIMScheduler")
            }
            guard SamplerRegistry.type(named: cls) != nil else {
                throw DataError("model spec '\(s)': scheduler \(cls) is not supported; supported: \(SamplerRegistry.classNames.joined(separator: ", "))")
            }
            scheduler = cls
            rest = String(rest[..<at])
        }
        var steps: Int?
        if let colon = rest.lastIndex(of: ":"), let k = Int(rest[rest.index(after: colon)...]) {
            guard (1...1000).contains(k) else { throw DataError("model spec \(s): steps must be 1...1000") }
            steps = k
            rest = String(rest[..<colon])
        }
        guard !rest.isEmpty else { throw DataError("model spec '\(s)': expected [NAME=]DIR[:STEPS][@SCHEDULER][,guidance=W]") }
        let base = URL(fileURLWithPath: rest).standardizedFileURL.lastPathComponent
        let defaultName = base + (scheduler.map { "-" + $0 } ?? "") + (steps.map { "-\($0)step" } ?? "") + (guidance.map { "-cfg\($0)" } ?? "")
        self.init(name: name ?? defaultName, path: rest, steps: steps, scheduler: scheduler, guidance: guidance)
    }
}

public struct EvalSettings: Sendable {
    /// Generated images per model (and real images per reference set).
    public var samples = 1000
    public var resamples = 200
    public var classifierSteps = 1500
    public var workers = 2
    public var seed: UInt64 = 0
    public var gridColumns = 8
    public init() {}
}

public struct EvalRow: Sendable {
    public var name: String
    public var sampler: String
    public var nfe: Int
    public var weights: String
    public var fd: Estimate
    public var kid: Estimate
    public var accuracy: Estimate
    public var msPerImage: Double
}

public struct EvalResult: Sendable {
    public var rows: [EvalRow]
    public var floor: EvalRow
    public var samples: Int
    public var markdown: String

    public func row(_ name: String) -> EvalRow? { rows.first { $0.name == name } }
}

public enum ModelEvaluation {
    public static let classifierCache = ".onestep-classifier.safetensors"

    public static func run(specs: [EvalSpec], dataDir: String, outDir: String, settings: EvalSettings,
                           log: (String) -> Void) throws -> EvalResult {
        guard !specs.isEmpty else { throw DataError("eval needs at least one --model") }
        let first = try ImagePipeline.load(path: specs[0].path)
        let data = try ImageFolder.load(path: dataDir, size: first.imageSize, channels: first.channels, warn: { log("warning: " + $0) })
        guard let labels = data.labels, let names = data.classNames else { throw DataError("\(dataDir) has no class folders; eval needs labelled data") }
        // Held-out split: reference set and floor set of equal size, never trained on.
        var order = Array(0..<data.count)
        var rng = TrainRandom(seed: settings.seed ^ 0xE7A1)
        rng.shuffle(&order)
        let n = min(settings.samples, data.count / 4)
        guard n >= 16 else { throw DataError("\(dataDir) has \(data.count) images; eval needs at least 64") }
        let ref = Array(order[0..<n]), floorSet = Array(order[n..<(2 * n)]), train = Array(order[(2 * n)...])
        let classifier = try ShapeClassifier.trainOrLoad(data: data, indices: train, steps: settings.classifierSteps,
                                                         cachePath: dataDir + "/" + classifierCache, seed: settings.seed, log: log)
        func gather(_ idx: [Int]) -> [Float] {
            var x = [Float](repeating: 0, count: idx.count * data.imageFloats)
            x.withUnsafeMutableBufferPointer { data.gather(idx, into: $0.baseAddress!) }
            return x
        }
        let d = ShapeClassifier.featureDimension
        let refFeatures = classifier.featuresAndPredictions(gather(ref)).features
        let floorOut = classifier.featuresAndPredictions(gather(floorSet))
        let floorDist = FeatureBootstrap.distances(floorOut.features, refFeatures, dimension: d, resamples: settings.resamples, seed: settings.seed + 1)
        let floorAcc = FeatureBootstrap.proportion(zip(floorOut.predictions, floorSet).map { $0 == labels[$1] }, resamples: settings.resamples, seed: settings.seed + 2)
        let floor = EvalRow(name: "real vs real (floor)", sampler: "held-out data", nfe: 0, weights: "-", fd: floorDist.fd,
                            kid: floorDist.kid, accuracy: floorAcc, msPerImage: 0)
        log(String(format: "floor: FD-cls %.3f, KID %.5f, held-out accuracy %.3f (%d images per set)", floor.fd.value, floor.kid.value, floor.accuracy.value, n))
        try FileManager.default.createDirectory(atPath: outDir, withIntermediateDirectories: true)

        var rows: [EvalRow] = []
        for spec in specs {
            var p = try ImagePipeline.load(path: spec.path, name: spec.name)
            if let cls = spec.scheduler { p = try p.withScheduler(cls) }
            if let w = spec.guidance { p = try p.withClassGuidance(w) }
            guard p.imageSize == data.size, p.channels == data.channels, p.numClasses == names.count else {
                throw DataError("\(spec.path): makes \(p.channels)x\(p.imageSize)px images in \(p.numClasses ?? 0) classes; the data is \(data.channels)x\(data.size)px in \(names.count)")
            }
            let steps = spec.steps ?? p.sampler.defaultSteps
            guard p.sampler.stepRange.contains(steps) else {
                throw DataError("model \(spec.name): \(type(of: p.sampler).className) samples with \(p.sampler.stepRange) steps, not \(steps)")
            }
            let reqs = (0..<n).map { GenerationRequest(seed: 7_000_000 + UInt64($0), label: $0 % names.count) }
            let start = Date()
            let images = generate(p, reqs, steps: steps, workers: settings.workers)
            let seconds = Date().timeIntervalSince(start)
            let out = classifier.featuresAndPredictions(images.data)
            let dist = FeatureBootstrap.distances(out.features, refFeatures, dimension: d, resamples: settings.resamples, seed: settings.seed + 3)
            let acc = FeatureBootstrap.proportion(zip(out.predictions, reqs).map { $0 == $1.label! }, resamples: settings.resamples, seed: settings.seed + 4)
            var (sampler, nfe): (String, Int)
            if p.sampler is EDMHeunSampler {
                (sampler, nfe) = (steps == 1 ? "Euler, 1 step" : "Heun, \(steps) sigmas", 2 * steps - 1)
            } else if p.sampler is ConsistencySampler {
                (sampler, nfe) = (steps == 1 ? "consistency, 1 step" : "consistency, \(steps) steps", steps)
            } else {
                (sampler, nfe) = ("\(type(of: p.sampler).className), \(steps) steps", p.sampler.start(steps: steps).timesteps.count)
            }
            // Guidance runs the network on the null label as well: two evaluations per step (one batched forward).
            if let w = p.classGuidance { (sampler, nfe) = (sampler + String(format: ", guidance %g", w), 2 * nfe) }
            let row = EvalRow(name: spec.name, sampler: sampler, nfe: nfe, weights: p.weightDType, fd: dist.fd, kid: dist.kid,
                              accuracy: acc, msPerImage: 1000 * seconds / Double(n) * Double(settings.workers))
            rows.append(row)
            log(String(format: "%@ (%@): FD-cls %.3f [%.3f, %.3f], KID %.5f, acc %.3f, %.0fs to generate %d", spec.name, sampler,
                       row.fd.value, row.fd.low, row.fd.high, row.kid.value, row.accuracy.value, seconds, n))
            try writeGrid(p, steps: steps, classes: names.count, columns: settings.gridColumns, to: outDir + "/grid-\(spec.name).png",
                          title: "\(spec.name): \(sampler), \(p.weightDType)")
        }
        let md = markdown(rows: rows, floor: floor, samples: n, classNames: names)
        try AtomicFile.write(md, to: outDir + "/eval.md")
        return EvalResult(rows: rows, floor: floor, samples: n, markdown: md)
    }

    /// Images (N, C, S, S) for the requests, in chunks spread over `workers` threads.
    public static func generate(_ p: ImagePipeline, _ reqs: [GenerationRequest], steps: Int, workers: Int) -> Tensor {
        let per = p.channels * p.imageSize * p.imageSize, chunk = 50, chunks = (reqs.count + chunk - 1) / chunk
        let out = UnsafeMutableBufferPointer<Float>.allocate(capacity: reqs.count * per)
        defer { out.deallocate() }
        let job = GenerateJob(p: p, reqs: reqs, steps: steps, chunk: chunk, per: per, out: out)
        let lanes = max(1, workers)
        DispatchQueue.concurrentPerform(iterations: lanes) { lane in
            var c = lane
            while c < chunks { job.run(c); c += lanes }
        }
        return Tensor(shape: [reqs.count, p.channels, p.imageSize, p.imageSize], data: Array(out))
    }

    /// One row per class named from the model's id2label (a plain grid when unconditional), seeds 0..<columns,
    /// under `title`.
    public static func writeGrid(_ p: ImagePipeline, steps: Int, classes: Int, columns: Int, to path: String, title: String) throws {
        let conditional = p.numClasses != nil
        let reqs = (0..<classes).flatMap { r in (0..<columns).map { GenerationRequest(seed: UInt64(conditional ? $0 : r * columns + $0), label: conditional ? r : nil) } }
        let labels = TrainingPlots.sampleGridLabels(title: title, rows: classes, columns: columns, conditional: conditional, classNames: p.classNames)
        try TrainingPlots.write(TrainingPlots.grid(p.generate(reqs, steps: steps), columns: columns, labels: labels), to: path)
    }

    public static func markdown(rows: [EvalRow], floor: EvalRow, samples: Int, classNames: [String]) -> String {
        func ci(_ e: Estimate, _ f: String, scale: Double = 1) -> String {
            String(format: "\(f) [\(f), \(f)]", e.value * scale, e.low * scale, e.high * scale)
        }
        var s = "| model | sampler | NFE | weights | FD-cls | KID | cond. accuracy | ms/image |\n"
        s += "|---|---|---:|---|---:|---:|---:|---:|\n"
        for r in rows + [floor] {
            s += "| \(r.name) | \(r.sampler) | \(r.nfe == 0 ? "-" : String(r.nfe)) | \(r.weights) | \(ci(r.fd, "%.2f")) | \(ci(r.kid, "%.2f")) | \(ci(r.accuracy, "%.3f")) | \(r.msPerImage > 0 ? String(format: "%.2f", r.msPerImage) : "-") |\n"
        }
        s += "\n\(samples) generated images per model (classes \(classNames.joined(separator: ", ")) in turn, seeds 7000000...), against \(samples) held-out real images; "
        s += "features: the \(ShapeClassifier.featureDimension)-d penultimate layer of a small classifier trained on the rest of the data. "
        s += "Brackets: 95% percentile-bootstrap intervals (FD is biased upward by the duplicates of resampling, so a small FD can sit below its interval). FD-cls is a Frechet distance in that classifier's features, not FID. "
        s += "ms/image: single-thread generation time per image (batches of 50).\n"
        return s
    }
}

private struct GenerateJob: @unchecked Sendable {
    let p: ImagePipeline, reqs: [GenerationRequest], steps: Int, chunk: Int, per: Int
    let out: UnsafeMutableBufferPointer<Float>  // each chunk writes its own rows
    func run(_ c: Int) {
        let lo = c * chunk, hi = min(reqs.count, lo + chunk)
        let x = p.generate(Array(reqs[lo..<hi]), steps: steps)
        for j in 0..<x.count { out[lo * per + j] = x.data[j] }
    }
}

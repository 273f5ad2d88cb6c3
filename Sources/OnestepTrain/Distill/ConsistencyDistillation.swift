// Consistency distillation (Song et al. 2023, Algorithm 2) of an EDM teacher into a one-step student, with the
// pseudo-Huber distance of iCT. One training step, per image of the batch:
//   n ~ U{0 .. N-2} over the Karras sigmas sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min
//   x_n      = x0 + sigma_n z
//   x^_{n+1} = one Heun step of the teacher's probability-flow ODE from sigma_n to sigma_{n+1}   (2 teacher calls)
//   target   = f_{theta^-}(x^_{n+1}, sigma_{n+1})      theta^- = EMA of the student at rate mu (no gradient)
//   loss     = pseudo-Huber(f_theta(x_n, sigma_n), target)
// then Adam on theta and theta^- <- mu theta^- + (1 - mu) theta. The student starts as a copy of the teacher.
//
// This implementation matches openai/consistency_models cm/karras_diffusion.py consistency_losses with
// training_mode="consistency_distillation", generator="determ", loss_norm="l2" replaced by pseudo-Huber,
// and weight_schedule="uniform".
//
// Legend: B batch, C channels, S side, P = C*S*S values per image, N number of sigmas.
import Foundation
import OnestepCore

public struct DistillSettings: Sendable {
    /// Karras sigmas of the discretisation (the student's scheduler gets num_train_timesteps = N).
    public var sigmas = 18
    public var steps = 2000
    public var batch = 32
    public var optimizer = OptimizerConfig()
    /// Rate mu of the target network theta^-.
    public var targetEMA: Float = 0.95
    /// EMA of the student whose weights are saved (the model that ships).
    public var saveEMA: Float = 0.999
    public var seed: UInt64 = 0
    public var logEvery = 50
    public var checkpointEvery = 250
    public var sampleEvery = 500
    public var workers = 2
    public var schedule = EDMSchedulerConfig()
    /// The LCM form of a DDPM-family teacher (StudentParameterization.swift); nil: the consistency form of `schedule`.
    public var lcmForm: LatentConsistencyForm? = nil
    /// Weight lambda of the regression term on cached teacher pairs (CDRegressionTerm.swift); 0: plain CD, and no
    /// random numbers are drawn for it, so the stream is the plain run's.
    public var regressionWeight: Float = 0
    /// Pairs per step of the regression term.
    public var regressionBatch = 16
    public init() {
        optimizer.learningRate = 1e-4
        optimizer.warmupSteps = 0
        optimizer.gradientClip = 1
    }

    /// The loop's part (the batch and noise stream, seeded apart from the data set's seed).
    public var loop: LoopSettings {
        LoopSettings(steps: steps, logEvery: logEvery, checkpointEvery: checkpointEvery, sampleEvery: sampleEvery, seed: seed ^ 0xD157_111)
    }
}

/// The teacher as the distiller calls it: the inference UNet with EDM scalings, per-image sigmas.
public struct EDMTeacher: TeacherDenoiser {
    public let model: UNet2DModel
    public let sigmaData: Double

    /// The EDM teacher was trained on every sigma of its log-normal; no clamp beyond the student's own range.
    public var sigmaRange: ClosedRange<Double> { 1e-6...1e6 }
    public var description: String { "OnestepEDMHeunScheduler (EDM, sigma_data \(sigmaData))" }

    public init(model: UNet2DModel, sigmaData: Double) { (self.model, self.sigmaData) = (model, sigmaData) }

    public func preconditioning(sigma: Double) -> TeacherScalings {
        let s = EDM.scalings(sigma: sigma, sigmaData: sigmaData)
        return TeacherScalings(cSkip: s.cSkip, cOut: s.cOut, cIn: s.cIn, timestep: s.cNoise)
    }

    /// D(x_i; sigma_i) for a batch x (B, P), written into `out` (B, P).
    public func denoise(_ x: UnsafePointer<Float>, sigmas: [Double], labels: [Int]?, into out: UnsafeMutablePointer<Float>) {
        let b = sigmas.count, cfg = model.config, per = cfg.inChannels * cfg.sampleSize * cfg.sampleSize
        var input = Tensor(zeros: [b, cfg.inChannels, cfg.sampleSize, cfg.sampleSize])
        var t = [Float](repeating: 0, count: b)
        for i in 0..<b {
            let s = EDM.scalings(sigma: sigmas[i], sigmaData: sigmaData)
            t[i] = Float(s.cNoise)
            let cIn = Float(s.cIn)
            for j in 0..<per { input.data[i * per + j] = cIn * x[i * per + j] }
        }
        let f = model.forwardBatched(input, timesteps: t, classLabels: labels, pool: .forCurrentThread)
        for i in 0..<b {
            let s = EDM.scalings(sigma: sigmas[i], sigmaData: sigmaData)
            let cSkip = Float(s.cSkip), cOut = Float(s.cOut)
            for j in (i * per)..<((i + 1) * per) { out[j] = cSkip * x[j] + cOut * f.data[j] }
        }
    }
}

/// f_theta(x_i, sigma_i) of a trainable student for a batch: runs the forward (leaving its caches for backward)
/// and writes the parameterized output into `out`.
func consistencyOutput(_ m: TrainableUNet, _ x: UnsafePointer<Float>, sigmas: [Double], labels: [Int]?, sigmaMin: Double,
                       sigmaData: Double, scratch: Buffer, into out: UnsafeMutablePointer<Float>) {
    let b = sigmas.count, per = m.config.inChannels * m.config.sampleSize * m.config.sampleSize
    let input = scratch.ensure(b * per)
    var t = [Float](repeating: 0, count: b)
    let sc = sigmas.map { ConsistencyParameterization.scalings(sigma: $0, sigmaMin: sigmaMin, sigmaData: sigmaData) }
    for i in 0..<b {
        t[i] = Float(sc[i].cNoise)
        let cIn = Float(sc[i].cIn)
        for j in (i * per)..<((i + 1) * per) { input[j] = cIn * x[j] }
    }
    let f = m.forward(input, batch: b, timesteps: t, classLabels: labels)
    for i in 0..<b {
        let cSkip = Float(sc[i].cSkip), cOut = Float(sc[i].cOut)
        for j in (i * per)..<((i + 1) * per) { out[j] = cSkip * x[j] + cOut * f[j] }
    }
}

/// The consistency-distillation loss for one batch, data parallel (DataParallel.swift): worker 0 runs on the
/// student itself, each further worker on a replica; every worker has its own copy of theta^-.
public final class ConsistencyDistillationLoss {
    public let teacher: any TeacherDenoiser
    public let settings: DistillSettings
    public let karras: [Double]  // (N) descending, sigma_max ... sigma_min
    /// (noise, guided teacher sample) pairs of the regression term; nil or weight 0: none.
    public let pairs: TeacherPairs?
    private(set) var workers: [Worker] = []

    final class Worker {
        let student: TrainableUNet, target: TrainableUNet
        let heun = Buffer(), targetOut = Buffer(), studentOut = Buffer(), grad = Buffer(), scratch = Buffer()
        init(student: TrainableUNet, target: TrainableUNet) { (self.student, self.target) = (student, target) }
    }

    public init(teacher: any TeacherDenoiser, student: TrainableUNet, settings: DistillSettings, pairs: TeacherPairs? = nil) {
        self.teacher = teacher
        self.settings = settings
        self.pairs = settings.regressionWeight > 0 ? pairs : nil
        karras = Array(settings.schedule.karrasSigmas(settings.sigmas).prefix(settings.sigmas))
        for k in 0..<max(1, settings.workers) { workers.append(Worker(student: k == 0 ? student : student.clone(), target: student.clone())) }
    }

    /// Adds d(loss)/d(theta) into `student.store.grads` (zero them first) and returns the mean pseudo-Huber loss.
    /// `target` holds theta^- laid out like the student's store. x0 (B, P) clean images.
    public func step(student: TrainableUNet, target: UnsafePointer<Float>, clean x0: UnsafePointer<Float>, batch b: Int,
                     labels: [Int]?, rng: inout TrainRandom) -> Double {
        precondition(workers[0].student === student, "the loss was built for another student")
        let cfg = student.config, per = cfg.inChannels * cfg.sampleSize * cfg.sampleSize
        let c = PseudoHuber.constant(dimension: per)
        // All randomness drawn here, in image order, so the stream does not depend on the worker count.
        let n = (0..<b).map { _ in rng.int(settings.sigmas - 1) }
        let noisy = UnsafeMutablePointer<Float>.allocate(capacity: b * per)
        defer { noisy.deallocate() }
        for i in 0..<b {
            let s = Float(karras[n[i]])
            for j in (i * per)..<((i + 1) * per) { noisy[j] = x0[j] + s * rng.normal() }
        }
        let active = Array(workers.prefix(DataParallel.activeWorkers(count: b, available: workers.count)))
        // The regression term's pairs, drawn after the CD noise (only when it is on), split over the same workers.
        let pairIndices = pairs.map { p in (0..<settings.regressionBatch).map { _ in rng.int(p.count) } } ?? []
        let pairBounds = DataParallel.bounds(count: pairIndices.count, parts: active.count)
        DataParallel.broadcast(student.store, to: active.dropFirst().map(\.student.store))
        for w in active { w.target.store.values.update(from: target, count: student.store.count) }
        let job = DistillJob(loss: self, workers: active, n: n, noisy: UnsafePointer(noisy), labels: labels, per: per, c: c, scale: 1 / Float(b),
                             pairIndices: pairIndices, pairBounds: pairBounds)
        let losses = DataParallel.map(count: b, workers: active.count) { k, chunk in job.run(k, chunk) }
        DataParallel.reduceGradients(active.dropFirst().map(\.student.store), into: student.store)
        return losses.reduce(0, +) / Double(b)
    }

    /// Images lo..<hi on worker w: Heun step of the teacher, target output, student forward and backward.
    func runChunk(_ w: Worker, lo: Int, hi: Int, n: [Int], noisy: UnsafePointer<Float>, labels: [Int]?, per: Int, c: Double, scale: Float) -> Double {
        let m = hi - lo
        guard m > 0 else { return 0 }
        let x = noisy + lo * per
        let from = (lo..<hi).map { karras[n[$0]] }, to = (lo..<hi).map { karras[n[$0] + 1] }
        let lab = labels.map { Array($0[lo..<hi]) }
        let form = settings.parameterization
        let heun = w.heun.ensure(m * per)
        teacher.heunStep(x, from: from, to: to, labels: lab, into: heun)
        let tgt = w.targetOut.ensure(m * per)
        studentOutput(w.target, heun, sigmas: to, labels: lab, form: form, scratch: w.scratch, into: tgt)
        let out = w.studentOut.ensure(m * per), g = w.grad.ensure(m * per)
        studentOutput(w.student, x, sigmas: from, labels: lab, form: form, scratch: w.scratch, into: out)
        var loss = 0.0
        for i in 0..<m {
            let cOut = Float(form.scalings(sigma: from[i]).cOut)
            // d loss / dF = c_out * d loss / d f.
            loss += PseudoHuber.lossAndGradient(out + i * per, tgt + i * per, count: per, c: c, gradScale: scale * cOut, grad: g + i * per)
        }
        w.student.backward(g)
        return loss
    }
}

/// Workers touch disjoint networks and buffers; `noisy` is read-only while they run.
private struct DistillJob {
    let loss: ConsistencyDistillationLoss
    let workers: [ConsistencyDistillationLoss.Worker]
    let n: [Int]
    let noisy: UnsafePointer<Float>
    let labels: [Int]?
    let per: Int, c: Double, scale: Float
    let pairIndices: [Int], pairBounds: [Int]
    func run(_ k: Int, _ chunk: Range<Int>) -> Double {
        let cd = loss.runChunk(workers[k], lo: chunk.lowerBound, hi: chunk.upperBound, n: n, noisy: noisy, labels: labels, per: per, c: c, scale: scale)
        guard !pairIndices.isEmpty else { return cd }
        // This worker's share of the term (already lambda / R times its sum), times B since step divides by B.
        let reg = loss.regressionChunk(workers[k], indices: pairIndices[pairBounds[k]..<pairBounds[k + 1]], batch: pairIndices.count, per: per, c: c)
        return cd + reg * Double(n.count)
    }
}

/// Consistency distillation as a TrainingObjective: one network ("student", initialised as a copy of the EDM
/// teacher) with Adam, the saved EMA ("ema", the weights that ship) and the target network theta^- ("target", an
/// average at the constant rate mu), both checkpointed with it.
public final class ConsistencyDistillationObjective: TrainingObjective {
    public let kind = "consistency-distillation"
    public let label = "consistency-distillation"
    public var plotTitle: String { "student: consistency distillation (cd), \(TrainingPlots.describe(model))" }
    public var lossName: String {
        loss.pairs == nil ? "pseudo-Huber consistency loss" : "pseudo-Huber consistency loss + \(settings.regressionWeight) x regression on pairs"
    }
    public let student: TrainingGroup
    public let dataset: ImageDataset
    public let settings: DistillSettings
    let loss: ConsistencyDistillationLoss
    private let batchBuffer = Buffer()

    public var groups: [TrainingGroup] { [student] }
    public var model: TrainableUNet { student.model }
    public var imagesPerStep: Int { settings.batch }
    public var summary: String {
        "\(model.parameterCount) parameters from the teacher, \(dataset.count) images, N = \(settings.sigmas), mu = \(settings.targetEMA), batch \(settings.batch)"
    }
    public var runSettings: RunSettings {
        settings.sharedRunSettings.merging(settings.optimizer.runSettings()).merging(RunSettings([
            "method": "cd", "sigmas": String(settings.sigmas), "target-ema": RunSettings.text(settings.targetEMA), "data-images": String(dataset.count)]))
            .merging(CDRegressionTerm.runSettings(settings, pairs: loss.pairs))
    }

    /// `teacher` is an EDM teacher's inference model; the student is its copy (same config and weights).
    public convenience init(teacher: UNet2DModel, dataset: ImageDataset, settings: DistillSettings) throws {
        try self.init(denoiser: EDMTeacher(model: teacher, sigmaData: settings.schedule.sigmaData), dataset: dataset, settings: settings)
    }

    /// Any teacher denoiser (EDM, or a diffusers DDPM-family UNet through DiscreteDDPMTeacher); the student is a copy
    /// of its network, trained in `settings.parameterization`: the consistency form of `settings.schedule` for an
    /// EDM teacher, the LCM form of a DDPM-family teacher (set with `settings.use(StudentParameterization.forTeacher)`,
    /// which also sets the sigma range), so the copy starts as the teacher's own one-step denoiser.
    public init(denoiser: any TeacherDenoiser, dataset: ImageDataset, settings: DistillSettings, pairs: TeacherPairs? = nil) throws {
        let teacher = denoiser.model
        if settings.regressionWeight > 0 { try CDRegressionTerm.check(pairs: pairs, settings: settings, per: dataset.imageFloats) }
        guard dataset.size == teacher.config.sampleSize, dataset.channels == teacher.config.inChannels else {
            throw DataError("the teacher makes \(teacher.config.inChannels)x\(teacher.config.sampleSize)x\(teacher.config.sampleSize) images, the data is \(dataset.channels)x\(dataset.size)x\(dataset.size)")
        }
        if let k = teacher.config.numClasses, dataset.classNames?.count != k {
            throw DataError("the teacher has \(k) classes but the data has \(dataset.classNames?.count ?? 0) class folders")
        }
        let model = try TrainableUNet(config: teacher.config, weights: TensorDictionary(teacher.parameters))
        student = TrainingGroup(name: "student", model: model, optimizer: settings.optimizer, averages: [
            ("ema", WeightAverage(decay: settings.saveEMA, of: model.store)),
            ("target", WeightAverage(decay: settings.targetEMA, of: model.store, warmup: false)),
        ])
        (self.dataset, self.settings) = (dataset, settings)
        loss = ConsistencyDistillationLoss(teacher: denoiser, student: model, settings: settings, pairs: pairs)
    }

    public func step(number: Int, rng: inout TrainRandom) -> Double {
        let b = settings.batch
        let x = batchBuffer.ensure(b * dataset.imageFloats)
        let indices = (0..<b).map { _ in rng.int(dataset.count) }
        dataset.gather(indices, into: x)
        // An unconditional teacher trains on class folders too: their labels are not passed to it.
        let labels = model.config.numClassEmbeds == nil ? nil : dataset.labels.map { l in indices.map { l[$0] } }
        student.zeroGradients()
        let value = loss.step(student: model, target: student.average("target").shadow, clean: x, batch: b, labels: labels, rng: &rng)
        student.applyUpdate()
        return value
    }

    public func export(to dir: String, step: Int) throws {
        try StudentExport.write(model, weights: student.ema.shadow, timesteps: settings.sigmas, form: settings.parameterization, to: dir,
                                metadata: ["onestep.trained_steps": String(step), "onestep.weights": "ema \(student.ema.decay)", "onestep.kind": kind])
    }

    public func writeSamples(to dir: String) throws {
        try StudentExport.writeSamples(model, weights: student.ema.shadow, timesteps: settings.sigmas, form: settings.parameterization, to: dir + "/samples.png",
                                       title: "cd student (EMA weights), 1 step")
    }
}

/// TrainingLoop of a consistency-distilled student.
public typealias ConsistencyStudentTrainer = TrainingLoop<ConsistencyDistillationObjective>

extension TrainingLoop where Objective == ConsistencyDistillationObjective {
    public convenience init(teacher: UNet2DModel, dataset: ImageDataset, settings: DistillSettings, runDir: String, resume: Bool,
                            force: Bool = false, inputs: RunSettings = RunSettings()) throws {
        try self.init(objective: ConsistencyDistillationObjective(teacher: teacher, dataset: dataset, settings: settings), runDir: runDir,
                      settings: settings.loop, resume: resume, force: force, inputs: inputs)
    }

    public convenience init(denoiser: any TeacherDenoiser, dataset: ImageDataset, settings: DistillSettings, pairs: TeacherPairs? = nil,
                            runDir: String, resume: Bool, force: Bool = false, inputs: RunSettings = RunSettings()) throws {
        try self.init(objective: ConsistencyDistillationObjective(denoiser: denoiser, dataset: dataset, settings: settings, pairs: pairs), runDir: runDir,
                      settings: settings.loop, resume: resume, force: force, inputs: inputs)
    }
}

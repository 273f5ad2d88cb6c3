// Easy consistency tuning (ECT; Geng et al. 2024, "Consistency Models Made Easy") of a student initialised from
// the teacher's weights: consistency training on data, no teacher calls. One training step, per image:
//   t ~ lognormal(P_mean, P_std), clamped to [sigma_min, sigma_max] of the student's schedule
//   r = t * (1 - q^-(stage+1) * (1 + k * sigmoid(-b t))), at least 0         (the "sigmoid" r(t) of ECT)
//   x_t = x0 + t z,  x_r = x0 + r z                                           (shared noise direction z)
//   target = f_theta(x_r, r) with no gradient, or x0 where r <= sigma_min      (boundary condition)
//   loss = w(t) * (sqrt(||f_theta(x_t, t) - target||^2 + c^2) - c),   w(t) = (t^2 + sigma_data^2) / (t sigma_data)^2
// The stage grows from 0 to `stages - 1` evenly over the run, so r approaches t (dt shrinks q-fold per stage).
// Matches locuslab/ect training/loss.py ECMLoss (adj="sigmoid", wt="snrpk") with iCT's pseudo-Huber c
// (ECT's c=0 is the plain L2 norm). f_theta is the student parameterisation the teacher chose
// (StudentParameterization.swift: consistency for an EDM teacher, LCM for a DDPM-family one), as the exported folder
// samples it.
//
// Legend: B batch, P = C*S*S values per image.
import Foundation
import OnestepCore

public struct ECTSettings: Sendable {
    public var steps = 2000
    public var batch = 32
    public var optimizer = OptimizerConfig()
    /// EMA of the student whose weights are saved.
    public var saveEMA: Float = 0.999
    /// Log-normal of t (ECT/EDM defaults).
    public var pMean = -1.1, pStd = 2.0
    /// r(t) schedule: dt = t q^-(stage+1) (1 + k sigmoid(-b t)).
    public var q = 4.0, k = 8.0, b = 1.0
    /// Stages of the run (stage s covers steps s*steps/stages ..< (s+1)*steps/stages).
    public var stages = 4
    /// Pseudo-Huber c per image; nil: iCT's 0.00054 sqrt(P).
    public var huberC: Double? = nil
    /// num_train_timesteps of the exported scheduler config.
    public var sigmas = 18
    public var seed: UInt64 = 0
    public var logEvery = 50
    public var checkpointEvery = 250
    public var sampleEvery = 500
    public var workers = 2
    public var schedule = EDMSchedulerConfig()
    /// The LCM form of a DDPM-family teacher (StudentParameterization.swift); nil: the consistency form of `schedule`.
    public var lcmForm: LatentConsistencyForm? = nil
    public init() {
        optimizer.learningRate = 1e-4
        optimizer.warmupSteps = 0
        optimizer.gradientClip = 1
    }

    public var loop: LoopSettings {
        LoopSettings(steps: steps, logEvery: logEvery, checkpointEvery: checkpointEvery, sampleEvery: sampleEvery, seed: seed ^ 0xEC7)
    }

    /// The stage of step `number` (1-based): from the step number alone, so a resumed run takes the same r(t).
    public func stage(step number: Int) -> Int { min(stages - 1, (number - 1) * stages / max(1, steps)) }

    /// ECT's r(t) at `stage`.
    public func r(t: Double, stage: Int) -> Double {
        let decay = Foundation.pow(q, -Double(stage + 1))
        return max(0, t * (1 - decay * (1 + k / (1 + Foundation.exp(b * t)))))
    }

    /// ECT's weight w(t) = SNR(t) + 1/sigma_data^2.
    public func weight(t: Double) -> Double {
        let sd = schedule.sigmaData
        return (t * t + sd * sd) / (t * sd * t * sd)
    }
}

/// ECT as a TrainingObjective: one network ("student", a copy of the teacher's network) with Adam and the saved
/// EMA ("ema"); the target is the student itself without gradient, so there is no target network.
public final class ConsistencyTuningObjective: TrainingObjective {
    public let kind = "consistency-tuning"
    public let label = "ect"
    public var plotTitle: String { "student: easy consistency tuning (ect), \(TrainingPlots.describe(model))" }
    public let lossName = "weighted pseudo-Huber consistency loss"
    public let student: TrainingGroup
    public let dataset: ImageDataset
    public let settings: ECTSettings
    private var workers: [Worker] = []
    private let batchBuffer = Buffer()

    final class Worker {
        let net: TrainableUNet
        let xt = Buffer(), xr = Buffer(), out = Buffer(), target = Buffer(), grad = Buffer(), scratch = Buffer()
        init(_ net: TrainableUNet) { self.net = net }
    }

    public var groups: [TrainingGroup] { [student] }
    public var model: TrainableUNet { student.model }
    public var imagesPerStep: Int { settings.batch }
    public var summary: String {
        "\(model.parameterCount) parameters from the teacher, \(dataset.count) images, q = \(settings.q), \(settings.stages) stages, batch \(settings.batch)"
    }
    /// --steps is part of it twice over: the stage schedule is spread over the run's steps.
    public var runSettings: RunSettings {
        let s = settings
        return s.sharedRunSettings.merging(s.optimizer.runSettings()).merging(RunSettings([
            "method": "ect", "sigmas": String(s.sigmas), "ect-q": RunSettings.text(Float(s.q)), "ect-stages": String(s.stages),
            "ect-r-sigmoid": "k \(s.k), b \(s.b)", "ect-t-lognormal": "p_mean \(s.pMean), p_std \(s.pStd)",
            "ect-huber-c": s.huberC.map { "\($0)" } ?? "0.00054 sqrt(P)", "data-images": String(dataset.count)]))
    }

    public init(teacher: UNet2DModel, dataset: ImageDataset, settings: ECTSettings) throws {
        guard dataset.size == teacher.config.sampleSize, dataset.channels == teacher.config.inChannels else {
            throw DataError("the teacher makes \(teacher.config.inChannels)x\(teacher.config.sampleSize)x\(teacher.config.sampleSize) images, the data is \(dataset.channels)x\(dataset.size)x\(dataset.size)")
        }
        if let k = teacher.config.numClasses, dataset.classNames?.count != k {
            throw DataError("the teacher has \(k) classes but the data has \(dataset.classNames?.count ?? 0) class folders")
        }
        let model = try TrainableUNet(config: teacher.config, weights: TensorDictionary(teacher.parameters))
        student = TrainingGroup(name: "student", model: model, optimizer: settings.optimizer,
                                averages: [("ema", WeightAverage(decay: settings.saveEMA, of: model.store))])
        (self.dataset, self.settings) = (dataset, settings)
        for k in 0..<max(1, settings.workers) { workers.append(Worker(k == 0 ? model : model.clone())) }
    }

    public func step(number: Int, rng: inout TrainRandom) -> Double {
        let b = settings.batch, per = dataset.imageFloats
        let x0 = batchBuffer.ensure(b * per)
        let indices = (0..<b).map { _ in rng.int(dataset.count) }
        dataset.gather(indices, into: x0)
        // An unconditional teacher trains on class folders too: their labels are not passed to it.
        let labels = model.config.numClassEmbeds == nil ? nil : dataset.labels.map { l in indices.map { l[$0] } }
        // Every random number of the batch, in image order, before the workers split it.
        let s = settings.schedule, stage = settings.stage(step: number)
        let t = (0..<b).map { _ in min(max(Foundation.exp(settings.pMean + settings.pStd * Double(rng.normal())), s.sigmaMin), s.sigmaMax) }
        let r = t.map { settings.r(t: $0, stage: stage) }
        let z = UnsafeMutablePointer<Float>.allocate(capacity: b * per)
        defer { z.deallocate() }
        for j in 0..<(b * per) { z[j] = rng.normal() }
        student.zeroGradients()
        let active = Array(workers.prefix(DataParallel.activeWorkers(count: b, available: workers.count)))
        DataParallel.broadcast(model.store, to: active.dropFirst().map(\.net.store))
        let job = ECTJob(objective: self, workers: active, x0: UnsafePointer(x0), z: UnsafePointer(z), t: t, r: r, labels: labels, scale: 1 / Float(b))
        let losses = DataParallel.map(count: b, workers: active.count) { k, chunk in job.run(k, chunk) }
        DataParallel.reduceGradients(active.dropFirst().map(\.net.store), into: model.store)
        student.applyUpdate()
        return losses.reduce(0, +) / Double(b)
    }

    /// Images lo..<hi on `net`: target forward (no gradient), student forward, weighted pseudo-Huber, and (if
    /// `backward`) the student's backward with the gradient scaled by `scale`. x0 and z (B, P). Returns the summed loss.
    func chunkLoss(_ w: Worker, lo: Int, hi: Int, x0: UnsafePointer<Float>, z: UnsafePointer<Float>, t: [Double], r: [Double],
                   labels: [Int]?, scale: Float, backward: Bool = true, fixedTarget: UnsafePointer<Float>? = nil) -> Double {
        let m = hi - lo, per = dataset.imageFloats
        guard m > 0 else { return 0 }
        let s = settings.schedule, form = settings.parameterization, c = settings.huberC ?? PseudoHuber.constant(dimension: per)
        let xt = w.xt.ensure(m * per), xr = w.xr.ensure(m * per), tgt = w.target.ensure(m * per)
        for i in 0..<m {
            let ti = Float(t[lo + i]), ri = Float(r[lo + i])
            for j in 0..<per {
                let a = (lo + i) * per + j
                xt[i * per + j] = x0[a] + ti * z[a]
                xr[i * per + j] = x0[a] + ri * z[a]
            }
        }
        let lab = labels.map { Array($0[lo..<hi]) }
        if let fixedTarget {
            tgt.update(from: fixedTarget + lo * per, count: m * per)
        } else {
            let rr = (lo..<hi).map { max(r[$0], s.sigmaMin) }
            studentOutput(w.net, xr, sigmas: rr, labels: lab, form: form, scratch: w.scratch, into: tgt)
            for i in 0..<m where r[lo + i] <= s.sigmaMin {  // boundary: f(x, sigma_min) = x0 exactly, as ECT's mask
                tgt.advanced(by: i * per).update(from: x0 + (lo + i) * per, count: per)
            }
        }
        let out = w.out.ensure(m * per), g = w.grad.ensure(m * per)
        let ts = Array(t[lo..<hi])
        studentOutput(w.net, xt, sigmas: ts, labels: lab, form: form, scratch: w.scratch, into: out)
        var loss = 0.0
        for i in 0..<m {
            let wt = settings.weight(t: ts[i])
            let cOut = Float(form.scalings(sigma: ts[i]).cOut)
            loss += wt * PseudoHuber.lossAndGradient(out + i * per, tgt + i * per, count: per, c: c, gradScale: scale * Float(wt) * cOut, grad: g + i * per)
        }
        if backward { w.net.backward(g) }
        return loss
    }

    /// The targets of a whole batch on worker 0 (for the gradient check, which holds them fixed as the
    /// stop-gradient does). (B, P)
    func targets(x0: UnsafePointer<Float>, z: UnsafePointer<Float>, t: [Double], r: [Double], labels: [Int]?) -> [Float] {
        _ = chunkLoss(workers[0], lo: 0, hi: t.count, x0: x0, z: z, t: t, r: r, labels: labels, scale: 1, backward: false)
        return Array(UnsafeBufferPointer(start: workers[0].target.ensure(t.count * dataset.imageFloats), count: t.count * dataset.imageFloats))
    }

    var firstWorker: Worker { workers[0] }

    public func export(to dir: String, step: Int) throws {
        try StudentExport.write(model, weights: student.ema.shadow, timesteps: settings.sigmas, form: settings.parameterization, to: dir,
                                metadata: ["onestep.trained_steps": String(step), "onestep.weights": "ema \(student.ema.decay)", "onestep.kind": kind])
    }

    public func writeSamples(to dir: String) throws {
        try StudentExport.writeSamples(model, weights: student.ema.shadow, timesteps: settings.sigmas, form: settings.parameterization, to: dir + "/samples.png",
                                       title: "ect student (EMA weights), 1 step")
    }
}

/// Workers touch disjoint networks and buffers; x0, z, t, r are read-only while they run.
private struct ECTJob {
    let objective: ConsistencyTuningObjective
    let workers: [ConsistencyTuningObjective.Worker]
    let x0: UnsafePointer<Float>, z: UnsafePointer<Float>
    let t: [Double], r: [Double]
    let labels: [Int]?
    let scale: Float
    func run(_ k: Int, _ chunk: Range<Int>) -> Double {
        objective.chunkLoss(workers[k], lo: chunk.lowerBound, hi: chunk.upperBound, x0: x0, z: z, t: t, r: r, labels: labels, scale: scale)
    }
}

/// TrainingLoop of an ECT student.
public typealias ECTStudentTrainer = TrainingLoop<ConsistencyTuningObjective>

extension TrainingLoop where Objective == ConsistencyTuningObjective {
    public convenience init(teacher: UNet2DModel, dataset: ImageDataset, settings: ECTSettings, runDir: String, resume: Bool,
                            force: Bool = false, inputs: RunSettings = RunSettings()) throws {
        try self.init(objective: ConsistencyTuningObjective(teacher: teacher, dataset: dataset, settings: settings), runDir: runDir,
                      settings: settings.loop, resume: resume, force: force, inputs: inputs)
    }
}

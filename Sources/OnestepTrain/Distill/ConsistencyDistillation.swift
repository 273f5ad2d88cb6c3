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
import Dispatch
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
    public init() {
        optimizer.learningRate = 1e-4
        optimizer.warmupSteps = 0
        optimizer.gradientClip = 1
    }
}

/// The teacher as the distiller calls it: the inference UNet with EDM scalings, per-image sigmas.
public struct EDMTeacher: Sendable {
    public let model: UNet2DModel
    public let sigmaData: Double

    public init(model: UNet2DModel, sigmaData: Double) { (self.model, self.sigmaData) = (model, sigmaData) }

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

    /// One Heun step of dx/dsigma = (x - D(x; sigma)) / sigma from `from` to `to` (both > 0), per image.
    public func heunStep(_ x: UnsafePointer<Float>, from: [Double], to: [Double], labels: [Int]?, into out: UnsafeMutablePointer<Float>) {
        let b = from.count, per = model.config.inChannels * model.config.sampleSize * model.config.sampleSize
        let d0 = UnsafeMutablePointer<Float>.allocate(capacity: b * per), d1 = UnsafeMutablePointer<Float>.allocate(capacity: b * per)
        let euler = UnsafeMutablePointer<Float>.allocate(capacity: b * per)
        defer { d0.deallocate(); d1.deallocate(); euler.deallocate() }
        denoise(x, sigmas: from, labels: labels, into: d0)
        for i in 0..<b {
            let h = Float(to[i] - from[i]), inv = Float(1 / from[i])
            for j in (i * per)..<((i + 1) * per) { euler[j] = x[j] + h * (x[j] - d0[j]) * inv }
        }
        denoise(euler, sigmas: to, labels: labels, into: d1)
        for i in 0..<b {
            let h = Float(to[i] - from[i]), inv0 = Float(1 / from[i]), inv1 = Float(1 / to[i])
            for j in (i * per)..<((i + 1) * per) {
                let slope = ((x[j] - d0[j]) * inv0 + (euler[j] - d1[j]) * inv1) / 2
                out[j] = x[j] + h * slope
            }
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

/// The consistency-distillation objective for one batch, data parallel over `workers` student replicas.
public final class ConsistencyDistillationLoss {
    public let teacher: EDMTeacher
    public let settings: DistillSettings
    public let karras: [Double]  // (N) descending, sigma_max ... sigma_min
    private var workers: [Worker] = []

    final class Worker {
        let student: TrainableUNet, target: TrainableUNet
        let noisy = Buffer(), heun = Buffer(), targetOut = Buffer(), studentOut = Buffer(), grad = Buffer(), scratch = Buffer()
        var loss = 0.0
        init(student: TrainableUNet, target: TrainableUNet) { (self.student, self.target) = (student, target) }
    }

    public init(teacher: EDMTeacher, student: TrainableUNet, settings: DistillSettings) {
        self.teacher = teacher
        self.settings = settings
        karras = Array(settings.schedule.karrasSigmas(settings.sigmas).prefix(settings.sigmas))
        for _ in 0..<max(1, settings.workers) { workers.append(Worker(student: student.clone(), target: student.clone())) }
    }

    /// Adds d(loss)/d(theta) into `student.store.grads` (zero them first) and returns the mean pseudo-Huber loss.
    /// `target` holds theta^- laid out like the student's store. x0 (B, P) clean images.
    public func step(student: TrainableUNet, target: UnsafePointer<Float>, clean x0: UnsafePointer<Float>, batch b: Int,
                     labels: [Int]?, rng: inout TrainRandom) -> Double {
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
        let active = Array(workers.prefix(max(1, min(workers.count, b))))
        for w in active {
            w.student.store.copyValues(from: student.store)
            w.student.store.zeroGrads()
            w.target.store.values.update(from: target, count: student.store.count)
        }
        let bounds = (0...active.count).map { $0 * b / active.count }
        let job = DistillJob(loss: self, workers: active, bounds: bounds, n: n, noisy: UnsafePointer(noisy), labels: labels,
                             per: per, c: c, scale: 1 / Float(b))
        if active.count == 1 { job.run(0) } else { DispatchQueue.concurrentPerform(iterations: active.count) { job.run($0) } }
        for w in active { addInPlace(student.store.grads, w.student.store.grads, count: student.store.count) }
        return active.reduce(0) { $0 + $1.loss } / Double(b)
    }

    func runChunk(_ w: Worker, lo: Int, hi: Int, n: [Int], noisy: UnsafePointer<Float>, labels: [Int]?, per: Int, c: Double, scale: Float) {
        let m = hi - lo
        guard m > 0 else { w.loss = 0; return }
        let x = noisy + lo * per
        let from = (lo..<hi).map { karras[n[$0]] }, to = (lo..<hi).map { karras[n[$0] + 1] }
        let lab = labels.map { Array($0[lo..<hi]) }
        let sm = settings.schedule.sigmaMin, sd = settings.schedule.sigmaData
        let heun = w.heun.ensure(m * per)
        teacher.heunStep(x, from: from, to: to, labels: lab, into: heun)
        let tgt = w.targetOut.ensure(m * per)
        consistencyOutput(w.target, heun, sigmas: to, labels: lab, sigmaMin: sm, sigmaData: sd, scratch: w.scratch, into: tgt)
        let out = w.studentOut.ensure(m * per), g = w.grad.ensure(m * per)
        consistencyOutput(w.student, x, sigmas: from, labels: lab, sigmaMin: sm, sigmaData: sd, scratch: w.scratch, into: out)
        var loss = 0.0
        for i in 0..<m {
            let cOut = Float(ConsistencyParameterization.scalings(sigma: from[i], sigmaMin: sm, sigmaData: sd).cOut)
            // d loss / dF = c_out * d loss / d f.
            loss += PseudoHuber.lossAndGradient(out + i * per, tgt + i * per, count: per, c: c, gradScale: scale * cOut, grad: g + i * per)
        }
        w.student.backward(g)
        w.loss = loss
    }
}

/// Workers touch disjoint replicas and buffers; `noisy` is read-only while they run.
private struct DistillJob: @unchecked Sendable {
    let loss: ConsistencyDistillationLoss
    let workers: [ConsistencyDistillationLoss.Worker]
    let bounds: [Int], n: [Int]
    let noisy: UnsafePointer<Float>
    let labels: [Int]?
    let per: Int, c: Double, scale: Float
    func run(_ k: Int) {
        loss.runChunk(workers[k], lo: bounds[k], hi: bounds[k + 1], n: n, noisy: noisy, labels: labels, per: per, c: c, scale: scale)
    }
}

import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

enum TinyData {
    /// n shapes images at `size`, labelled by class (first `classes` classes), in model space.
    static func shapes(count n: Int, size: Int, classes: Int) -> ImageDataset {
        var pixels: [Float] = [], labels: [Int] = []
        var index = 0
        while labels.count < n {
            let (shape, img) = ShapesGenerator.render(index: index, size: size, seed: 9)
            index += 1
            let k = ShapeClass.allCases.firstIndex(of: shape)!
            guard k < classes else { continue }
            pixels += ImageFolder.toModelSpace(img)
            labels.append(k)
        }
        return ImageDataset(size: size, channels: 3, pixels: pixels, labels: labels,
                            classNames: ShapeClass.allCases.prefix(classes).map(\.rawValue), skipped: 0)
    }

    static func config(classes: [String]) throws -> UNetConfig {
        var c = try TinyConfigs.conditional()
        c.numClassEmbeds = classes.count
        c.classNames = classes
        return c
    }
}

final class TeacherTests: XCTestCase {
    /// Heun samples from the served pipeline and from the training-side sampler may differ only by the
    /// forward's rounding (batched vs per-row linear layers), amplified a little by the sampling steps.
    static let samplerMaxAbs: Float = 1e-4
    /// The EDM loss is an average over random sigmas, so it is noisy and never near 0; a working backward takes
    /// its mean from ~1.0 to ~0.67 in 300 steps here, a broken one leaves it flat.
    static let maxLossRatioAfterTraining: Float = 0.8

    func tinySettings(steps: Int) -> TeacherSettings {
        var s = TeacherSettings()
        (s.steps, s.batch, s.logEvery, s.sampleEvery, s.checkpointEvery) = (steps, 8, 1000, 100_000, 100_000)
        (s.sampleSteps, s.samplesPerClass, s.optimizer.warmupSteps, s.optimizer.learningRate) = (2, 2, 10, 2e-3)
        return s
    }

    /// A few hundred steps on a tiny data set lower the EDM loss (8x8 images, 3 classes).
    func testTrainingLowersTheLoss() throws {
        let data = TinyData.shapes(count: 48, size: 8, classes: 3)
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let trainer = try TeacherTrainer(config: try TinyData.config(classes: data.classNames!), dataset: data,
                                         settings: tinySettings(steps: 300), runDir: dir, resume: false)
        _ = try trainer.run(shouldStop: { false }, log: { _ in })
        let l = trainer.losses
        let first = l.prefix(30).reduce(0, +) / 30, last = l.suffix(30).reduce(0, +) / 30
        XCTAssertLessThan(last, Self.maxLossRatioAfterTraining * first, "loss went from \(first) to \(last)")
    }

    /// What `teacher` writes is a model directory ImagePipeline loads as an EDM teacher whose samples are the
    /// training-side sampler's.
    func testExportLoadsIntoImagePipelineAndSamplesMatch() throws {
        let data = TinyData.shapes(count: 16, size: 8, classes: 3)
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let trainer = try TeacherTrainer(config: try TinyData.config(classes: data.classNames!), dataset: data,
                                         settings: tinySettings(steps: 5), runDir: dir, resume: false)
        _ = try trainer.run(shouldStop: { false }, log: { _ in })
        for f in ["config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json", "checkpoint.safetensors", "loss.png", "samples.png"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/" + f), "missing \(f)")
        }
        let pipeline = try ImagePipeline.load(path: dir)
        XCTAssertEqual(pipeline.classNames, data.classNames)
        guard let sched = (pipeline.sampler as? EDMHeunSampler)?.config else { return XCTFail("scheduler is not EDM Heun: \(pipeline.sampler)") }
        XCTAssertEqual(sched.sigmaData, 0.5)
        let requests = [GenerationRequest(seed: 1, label: 0), GenerationRequest(seed: 2, label: 2)]
        let served = pipeline.generate(requests, steps: 4)
        trainer.objective.ema.copy(into: trainer.objective.sampler.store)
        let ours = trainer.objective.sampler.sampleEDM(requests, steps: 4, scheduler: sched)
        XCTAssertLessThanOrEqual(TensorError.maxAbs(served.data, ours.data), Self.samplerMaxAbs)
    }

    /// Splitting a batch over worker threads gives the single-thread gradient (up to the rounding of batched
    /// linear layers) and the same loss.
    func testDataParallelStepMatchesSingleThread() throws {
        let data = TinyData.shapes(count: 6, size: 8, classes: 3)
        let cfg = try TinyData.config(classes: data.classNames!)
        let single = TrainableUNet(config: cfg, seed: 4), split = single.clone(), replica = single.clone()
        var r1 = TrainRandom(seed: 1), r2 = TrainRandom(seed: 1)
        let (l1, l2): (Double, Double) = data.pixels.withUnsafeBufferPointer { x in
            single.store.zeroGrads()
            split.store.zeroGrads()
            let a = EDMDenoiserLoss().step(model: single, clean: x.baseAddress!, batch: 6, labels: data.labels, rng: &r1)
            let b = EDMDenoiserLoss().step(model: split, replicas: [replica], clean: x.baseAddress!, batch: 6, labels: data.labels, rng: &r2)
            return (a, b)
        }
        XCTAssertEqual(l1, l2, accuracy: 1e-6 * l1)
        let g1 = Array(UnsafeBufferPointer(start: single.store.grads, count: single.store.count))
        let g2 = Array(UnsafeBufferPointer(start: split.store.grads, count: split.store.count))
        XCTAssertLessThanOrEqual(TensorError.relativeL2(g2, g1), 1e-5)
    }

    /// Stopping and resuming gives the same weights as running straight through: the checkpoint holds the
    /// weights, EMA, Adam moments, step and RNG state.
    func testResumeContinuesExactly() throws {
        let data = TinyData.shapes(count: 16, size: 8, classes: 3)
        let cfg = try TinyData.config(classes: data.classNames!)
        let straight = makeTempDir("straight"), split = makeTempDir("split")
        defer { try? FileManager.default.removeItem(atPath: straight); try? FileManager.default.removeItem(atPath: split) }
        let a = try TeacherTrainer(config: cfg, dataset: data, settings: tinySettings(steps: 6), runDir: straight, resume: false)
        _ = try a.run(shouldStop: { false }, log: { _ in })
        var stops = 0
        let b = try TeacherTrainer(config: cfg, dataset: data, settings: tinySettings(steps: 6), runDir: split, resume: false)
        let s = try b.run(shouldStop: { stops += 1; return stops > 3 }, log: { _ in })  // as Ctrl-C after 3 steps
        XCTAssertTrue(s.interrupted)
        XCTAssertEqual(s.steps, 3)
        let c = try TeacherTrainer(config: try Checkpoint.config(in: split), dataset: data, settings: tinySettings(steps: 6), runDir: split, resume: true)
        XCTAssertEqual(c.step, 3)
        _ = try c.run(shouldStop: { false }, log: { _ in })
        XCTAssertEqual(c.losses, a.losses)
        let (cm, am) = (c.objective.model, a.objective.model), (ce, ae) = (c.objective.ema, a.objective.ema)
        XCTAssertEqual(Array(UnsafeBufferPointer(start: cm.store.values, count: cm.store.count)),
                       Array(UnsafeBufferPointer(start: am.store.values, count: am.store.count)))
        XCTAssertEqual(Array(UnsafeBufferPointer(start: ce.shadow, count: ce.count)),
                       Array(UnsafeBufferPointer(start: ae.shadow, count: ae.count)))
    }
}

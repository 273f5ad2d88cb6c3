// Fuzz target: model configuration files, as a model directory is loaded (Sources/OnestepCore/IO/ModelDirectory.swift):
//   config.json            -> UNetConfig (Sources/OnestepCore/Model/UNetConfig.swift), parsed as UNetConfig.load
//                             does: JSONSerialization, then UNetConfig(json:);
//   scheduler_config.json  -> a Sampler (ModelDirectory.sampler(schedulerConfig:path:), SamplerRegistry).
// Every input is tried as both.
//
// The loader's promise is that a config it accepts runs, and anything else is refused with the key named. So a
// small accepted UNet config is also built (weights drawn deterministically from the input, as a real file would
// supply them) and packed for serving, and a tiny one generates two images as the server does (batched
// forward, sampler, PNG encoding). "Small" is enforced by the weight source: past a parameter budget it refuses
// the next tensor, which keeps the fuzzer away from configs whose weights alone would be gigabytes (a real
// weights file that large is bounded by its own size).
import Foundation
@testable import OnestepCore

/// Deterministic small weights, with a budget on the total parameter count.
private final class BudgetedWeights: WeightSource {
    struct OverBudget: Error {}
    private var random: FuzzRandom
    private var remaining: Int

    init(seed: UInt64, budget: Int) {
        random = FuzzRandom(seed: seed)
        remaining = budget
    }

    func tensor(_ key: String, shape: [Int]) throws -> Tensor {
        var count = 1
        for dimension in shape {
            fuzzInvariant(dimension > 0, "the model asked for \(key) with shape \(shape)")
            count = count.multipliedReportingOverflow(by: dimension).partialValue
            guard count <= remaining else { throw OverBudget() }
        }
        remaining -= count
        // Values in [-0.25, 0.25): enough for every activation path to be exercised, small enough not to overflow.
        let values = (0..<count).map { _ in Float(Int(random.next() % 4096) - 2048) / 8192 }
        return Tensor(shape: shape, data: values)
    }

    func contains(_ key: String) -> Bool { true }
}

/// Parameters built for any accepted config; 300k floats is a few times the golden cd_tiny test model's size
/// at tiny widths, and builds in milliseconds.
private let parameterBudget = 300_000
/// Forward passes only for sample sizes up to this (each one is a full sampler step through the server's path).
private let maxGeneratedSize = 16

private func checkUNetConfig(_ input: [UInt8]) {
    let config: UNetConfig
    do {
        // What UNetConfig.load does after reading the file.
        guard let json = try JSONSerialization.jsonObject(with: Data(input)) as? [String: Any] else { return }
        config = try UNetConfig(json: json)
    } catch let error as ConfigError {
        fuzzInvariant(!error.key.isEmpty && !error.problem.isEmpty, "a ConfigError without key or problem")
        return
    } catch {
        return  // not JSON: UNetConfig.load reports it as such
    }
    // What the loader promises about an accepted config.
    fuzzInvariant(config.blockOutChannels.count == config.downBlockTypes.count
                  && config.blockOutChannels.count == config.upBlockTypes.count, "block lists of different lengths")
    fuzzInvariant(config.sampleSize % (1 << (config.levels - 1)) == 0, "sample_size not divisible by the levels")
    fuzzInvariant(config.normEps.isFinite && config.normEps > 0, "norm_eps \(config.normEps) accepted")
    fuzzInvariant(config.midBlockScaleFactor.isFinite, "mid_block_scale_factor \(config.midBlockScaleFactor) accepted")
    // The config written back must read back the same (onestep-distill writes configs this way).
    if let written = try? JSONSerialization.jsonObject(with: Data(config.jsonString().utf8)) as? [String: Any] {
        fuzzInvariant((try? UNetConfig(json: written)) == config, "config.json written by jsonString() reads back differently")
    }

    let model: UNet2DModel
    do {
        model = try UNet2DModel(config: config, weights: BudgetedWeights(seed: fuzzHash(input), budget: parameterBudget))
    } catch is BudgetedWeights.OverBudget {
        return
    } catch {
        fuzzInvariant(false, "an accepted config does not build: \(error)")
        return
    }
    // ImagePipeline.load refuses these with a clear error before serving.
    guard config.inChannels == config.outChannels, config.sampleSize <= maxGeneratedSize else { return }
    let int8 = fuzzHash(input) & 1 == 1
    let pipeline = ImagePipeline(name: "fuzz", model: model, sampler: ConsistencySampler(),
                                 weightDType: int8 ? "int8" : "float32")
    let labels = config.numClassEmbeds.map { [0, $0 - 1] } ?? [nil, nil]
    let requests = labels.enumerated().map { GenerationRequest(seed: UInt64($0.offset), label: $0.element) }
    // ImagePipeline.generate with a pool of this config's own: the thread's pool (BufferPool.forCurrentThread)
    // keeps a buffer of every size it has served, right for a server whose sizes are fixed, but every fuzzed config
    // has sizes of its own and memory would grow over a long run. (A short-lived thread per config would drop its
    // pool too, but the C kernels' thread-local workspace is not freed at thread exit: compute threads never exit.)
    let pool = BufferPool()
    let images = ConsistencySampler(config: ConsistencySchedulerConfig()).sample(
        requests, steps: 1, channels: config.inChannels, size: config.sampleSize) { x, t, labels in
        pipeline.model.forwardBatched(x, timesteps: Array(repeating: t, count: x.shape[0]), classLabels: labels,
                                      pool: pool)
    }
    fuzzInvariant(images.shape == [2, config.outChannels, config.sampleSize, config.sampleSize],
                  "generated \(images.shape)")
    // Weights here are small and finite, so a NaN output means the config itself is degenerate (as a first width
    // of 2 with freq_shift 1 was) and the loader should have refused it.
    fuzzInvariant(images.data.allSatisfy { !$0.isNaN }, "an accepted config generates NaN")
    do { _ = try ImagePipeline.pngs(images) } catch { fuzzInvariant(false, "PNG encoding failed: \(error)") }
}

private func checkSchedulerConfig(_ input: [UInt8]) {
    do {
        let sampler = try ModelDirectory.sampler(schedulerConfig: Data(input), path: "scheduler_config.json")
        // An accepted config runs: its default and extreme step counts give finite timesteps and noise scale.
        fuzzInvariant(sampler.stepRange.contains(sampler.defaultSteps), "\(sampler): default steps outside \(sampler.stepRange)")
        for steps in Set([sampler.stepRange.lowerBound, sampler.defaultSteps, min(sampler.stepRange.upperBound, 64)]) {
            let run = sampler.start(steps: steps)
            fuzzInvariant(!run.timesteps.isEmpty && run.timesteps.allSatisfy(\.isFinite), "\(sampler): \(steps) steps give timesteps \(run.timesteps)")
            fuzzInvariant(run.initNoiseSigma.isFinite && run.initNoiseSigma > 0, "\(sampler): init_noise_sigma \(run.initNoiseSigma)")
        }
    } catch let error as ModelLoadError {
        fuzzInvariant(!error.problem.isEmpty, "a ModelLoadError without a problem")
    } catch {
        fuzzInvariant(false, "the scheduler config threw \(type(of: error)), not ModelLoadError: \(error)")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzModelConfig(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzBytes(data, size)
    checkUNetConfig(input)
    checkSchedulerConfig(input)
    return 0
}

// How the compute cores share the work: one worker per core running whole batches (right for tiny models at
// high request rates: no synchronisation at all), or workers whose layers are split over several cores (right
// when one image is large and a user waits for it). Chosen at start-up by timing one forward both ways on the
// largest loaded model, overridable with --cores-per-batch, printed at load.
import Foundation
import OnestepCore

struct CoreSplit: CustomStringConvertible {
    var coresPerBatch: Int
    var description: String

    /// A split is kept when it runs one image at least this fraction as efficiently as separate cores would
    /// (time alone / (cores * time split)): below it the throughput lost is not worth the latency won.
    static let minimumEfficiency = 0.75

    /// `fixed` (the flag) wins; else the largest model (FLOPs per image) is timed at batch 1 on one thread and
    /// split over `cores`, best of a few runs each (the machine may be shared), after a warm-up of each.
    static func choose(models: ModelRegistry, cores: Int, fixed: Int?) -> CoreSplit {
        if let fixed {
            return CoreSplit(coresPerBatch: min(fixed, max(1, cores)), description: "cores per batch: \(min(fixed, max(1, cores))) (set by --cores-per-batch)")
        }
        guard cores > 1, let largest = models.pipelines.values.max(by: { $0.model.flopsPerImage < $1.model.flopsPerImage }) else {
            return CoreSplit(coresPerBatch: 1, description: "cores per batch: 1 (one core)")
        }
        let alone = BufferPool(), split = BufferPool()
        split.team = ThreadTeam(threads: cores)
        let model = largest.model, s = largest.imageSize
        var g = TorchGenerator(seed: 1)
        let x = g.randn(shape: [1, model.config.inChannels, s, s])
        let labels: [Int]? = largest.numClasses.map { _ in [0] }
        func seconds(_ pool: BufferPool) -> Double {
            let start = DispatchTime.now().uptimeNanoseconds
            _ = model.forwardBatched(x, timesteps: [1], classLabels: labels, pool: pool)
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        }
        var t1 = seconds(alone), tn = seconds(split)  // warm-up (buffers, packing caches) counted only if best
        let runs = t1 > 0.5 ? 1 : 3
        for _ in 0..<runs {
            t1 = min(t1, seconds(alone))
            tn = min(tn, seconds(split))
        }
        let efficiency = t1 / (Double(cores) * tn)
        let n = efficiency >= minimumEfficiency ? cores : 1
        let gflop = largest.model.flopsPerImage / 1e9
        return CoreSplit(coresPerBatch: n, description: String(
            format: "cores per batch: %d (auto: %@, %.2f GFLOP/image, one image %.1f ms on 1 core, %.1f ms on %d; efficiency %.2f %@ %.2f; --cores-per-batch overrides)",
            n, largest.name, gflop, t1 * 1000, tn * 1000, cores, efficiency, efficiency >= minimumEfficiency ? ">=" : "<", minimumEfficiency))
    }
}

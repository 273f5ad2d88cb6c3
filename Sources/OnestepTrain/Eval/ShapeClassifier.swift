// The small classifier whose penultimate features FD-cls and KID are measured in, and whose predictions give
// conditional accuracy. Built from the engine's trainable layers, trained on the evaluation data itself (no
// downloaded network), cached as safetensors so every evaluation of a data set uses the same features.
//
//   x (N, C, S, S)
//   conv1 3x3 C->32         GroupNorm(8)+SiLU      (N, 32, S, S)
//   conv2 3x3 s2 32->64     GroupNorm(8)+SiLU      (N, 64, S/2, S/2)
//   conv3 3x3 s2 64->64     GroupNorm(8)+SiLU      (N, 64, S/4, S/4)
//   global average pool                            (N, 64)
//   fc1 64->64, SiLU        -> features            (N, F = 64)
//   fc2 64->K               -> logits              (N, K)
// Loss: softmax cross-entropy, mean over the batch.
import Foundation
import OnestepCore

public final class ShapeClassifier {
    public static let featureDimension = 64
    public let channels: Int, size: Int, classes: Int
    public let store = ParameterStore()
    let conv1: TrainableConv2D, norm1: TrainableGroupNorm, conv2: TrainableConv2D, norm2: TrainableGroupNorm
    let conv3: TrainableConv2D, norm3: TrainableGroupNorm, fc1: TrainableLinear, act = TrainableSiLU(), fc2: TrainableLinear
    private let pooled = Buffer(), dPooled = Buffer(), dLogits = Buffer(), dConv = Buffer()
    private var n = 0, h3 = 0

    public init(channels: Int, size: Int, classes: Int, seed: UInt64 = 0) {
        precondition(size % 4 == 0 && classes >= 2, "classifier needs a side divisible by 4 and at least 2 classes")
        (self.channels, self.size, self.classes) = (channels, size, classes)
        conv1 = TrainableConv2D("conv1", store, geometry: ConvGeometry(inChannels: channels, outChannels: 32, kernel: 3, padding: 1))
        conv1.needsInputGradient = false
        norm1 = TrainableGroupNorm("norm1", store, channels: 32, groups: 8, eps: 1e-5, silu: true)
        conv2 = TrainableConv2D("conv2", store, geometry: ConvGeometry(inChannels: 32, outChannels: 64, kernel: 3, stride: 2, padding: 1))
        norm2 = TrainableGroupNorm("norm2", store, channels: 64, groups: 8, eps: 1e-5, silu: true)
        conv3 = TrainableConv2D("conv3", store, geometry: ConvGeometry(inChannels: 64, outChannels: 64, kernel: 3, stride: 2, padding: 1))
        norm3 = TrainableGroupNorm("norm3", store, channels: 64, groups: 8, eps: 1e-5, silu: true)
        fc1 = TrainableLinear("fc1", store, in: 64, out: Self.featureDimension)
        fc2 = TrainableLinear("fc2", store, in: Self.featureDimension, out: classes)
        store.seal(seed: seed)
    }

    /// x (N, C, S, S) -> (features (N, F), logits (N, K)); caches for `backward`.
    public func forward(_ x: UnsafePointer<Float>, batch: Int) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) {
        n = batch
        let s = size
        var h = norm1.forward(conv1.forward(x, batch: batch, height: s, width: s), batch: batch, spatial: s * s)
        h = norm2.forward(conv2.forward(h, batch: batch, height: s, width: s), batch: batch, spatial: (s / 2) * (s / 2))
        h3 = s / 4
        h = norm3.forward(conv3.forward(h, batch: batch, height: s / 2, width: s / 2), batch: batch, spatial: h3 * h3)
        let p = pooled.ensure(batch * 64), hw = h3 * h3
        for i in 0..<(batch * 64) {
            var acc: Float = 0
            for j in 0..<hw { acc += h[i * hw + j] }
            p[i] = acc / Float(hw)
        }
        let f = act.forward(fc1.forward(p, batch: batch), count: batch * Self.featureDimension)
        return (f, fc2.forward(f, batch: batch))
    }

    /// Back-propagates dLoss/dlogits (N, K) into store.grads.
    public func backward(_ dLogits: UnsafePointer<Float>) {
        let dp = fc1.backward(act.backward(fc2.backward(dLogits)))
        let hw = h3 * h3, d = dConv.ensure(n * 64 * hw)
        for i in 0..<(n * 64) { let g = dp[i] / Float(hw); for j in 0..<hw { d[i * hw + j] = g } }
        let g2 = conv3.backward(norm3.backward(d))
        let g1 = conv2.backward(norm2.backward(g2))
        conv1.backward(norm1.backward(g1))
    }

    /// One Adam step on a batch; returns the mean cross-entropy.
    func trainStep(_ x: UnsafePointer<Float>, labels: [Int], optimizer: Optimizer) -> Double {
        let b = labels.count, k = classes
        store.zeroGrads()
        let (_, logits) = forward(x, batch: b)
        let g = dLogits.ensure(b * k)
        var loss = 0.0
        for i in 0..<b {
            var mx = -Float.infinity
            for c in 0..<k { mx = max(mx, logits[i * k + c]) }
            var z: Float = 0
            for c in 0..<k { z += Foundation.exp(logits[i * k + c] - mx) }
            for c in 0..<k {
                let p = Foundation.exp(logits[i * k + c] - mx) / z
                g[i * k + c] = (p - (c == labels[i] ? 1 : 0)) / Float(b)
            }
            loss -= Double(logits[i * k + labels[i]] - mx - Foundation.log(z))
        }
        backward(g)
        optimizer.update(store)
        return loss / Double(b)
    }

    /// Features (N, F) and predicted classes of images (N, C, S, S), in batches.
    public func featuresAndPredictions(_ images: [Float]) -> (features: [Float], predictions: [Int]) {
        let per = channels * size * size, total = images.count / per, f = Self.featureDimension
        var feats = [Float](repeating: 0, count: total * f)
        var preds = [Int](repeating: 0, count: total)
        images.withUnsafeBufferPointer { src in
            var lo = 0
            while lo < total {
                let b = min(128, total - lo)
                let (ft, lg) = forward(src.baseAddress! + lo * per, batch: b)
                for j in 0..<(b * f) { feats[lo * f + j] = ft[j] }
                for i in 0..<b {
                    var best = 0
                    for c in 1..<classes where lg[i * classes + c] > lg[i * classes + best] { best = c }
                    preds[lo + i] = best
                }
                lo += b
            }
        }
        return (feats, preds)
    }
}

extension ShapeClassifier {
    /// Trains on `indices` of a labelled data set (with random horizontal flips off: shapes such as the crescent
    /// are not mirror-symmetric in the data's convention), or loads the cache at `cachePath` when its metadata
    /// matches.
    public static func trainOrLoad(data: ImageDataset, indices: [Int], steps: Int, cachePath: String, seed: UInt64 = 0,
                                   log: (String) -> Void) throws -> ShapeClassifier {
        guard let labels = data.labels, let names = data.classNames else { throw DataError("the evaluation data needs class folders") }
        let m = ShapeClassifier(channels: data.channels, size: data.size, classes: names.count, seed: seed)
        let key = "\(data.count) images \(data.size)px, \(names.joined(separator: ",")), train \(indices.count), steps \(steps), seed \(seed)"
        if let f = try? SafetensorsFile(path: cachePath), f.metadata["onestep.classifier"] == key {
            try m.store.load(from: TensorDictionary(f.names.map { ($0, try f.floats($0)) }))
            log("classifier: cached \(cachePath)")
            return m
        }
        var cfg = OptimizerConfig()
        cfg.learningRate = 2e-3
        cfg.warmupSteps = 50
        let opt = Optimizer(cfg, for: m.store)
        var rng = TrainRandom(seed: seed ^ 0xC1A5)
        let b = 64, per = data.imageFloats
        let xb = Buffer(b * per)
        let x = xb.pointer
        let start = Date()
        var recent = 0.0
        for step in 1...steps {
            let idx = (0..<b).map { _ in indices[rng.int(indices.count)] }
            data.gather(idx, into: x)
            recent += m.trainStep(x, labels: idx.map { labels[$0] }, optimizer: opt)
            if step % 200 == 0 || step == steps {
                log(String(format: "classifier step %d/%d  cross-entropy %.4f", step, steps, recent / Double(step % 200 == 0 ? 200 : step % 200)))
                recent = 0
            }
        }
        var w = SafetensorsWriter()
        for (name, t) in m.store.tensors() { w.add(name, t) }
        w.metadata = ["onestep.classifier": key]
        try w.write(to: cachePath)
        log(String(format: "classifier: trained in %.0fs -> %@", Date().timeIntervalSince(start), cachePath))
        return m
    }
}

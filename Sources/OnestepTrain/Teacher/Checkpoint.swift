// A resumable training state in one safetensors file, written atomically (temp + rename):
//   values, ema, adam.m, adam.v   (P) flat, laid out as the model's ParameterStore
//   __metadata__                  step, optimizer step, EMA updates, RNG state, elapsed seconds, the UNet config
// The loss history goes beside it as losses.csv (also atomic), so the curve survives a resume.
import Foundation
import OnestepCore

public struct TrainingState {
    public var step: Int
    public var rngState: UInt64
    public var elapsedSeconds: Double
    public var losses: [Float]
}

public enum Checkpoint {
    public static let fileName = "checkpoint.safetensors"
    public static let lossesName = "losses.csv"

    public static func write(model: TrainableUNet, optimizer: Optimizer, ema: WeightAverage, state: TrainingState, to dir: String) throws {
        let n = model.store.count
        func flat(_ p: UnsafePointer<Float>) -> Tensor { Tensor(shape: [n], data: Array(UnsafeBufferPointer(start: p, count: n))) }
        var w = SafetensorsWriter()
        w.add("values", flat(model.store.values))
        w.add("ema", flat(ema.shadow))
        w.add("adam.m", flat(optimizer.m))
        w.add("adam.v", flat(optimizer.v))
        w.metadata = [
            "onestep.kind": "teacher-checkpoint", "step": String(state.step), "optimizer_step": String(optimizer.step),
            "ema_updates": String(ema.updates), "rng_state": String(state.rngState),
            "elapsed_seconds": String(state.elapsedSeconds), "unet_config": model.config.jsonString(),
        ]
        try w.write(to: dir + "/" + fileName)
        var csv = "step,loss\n"
        for (i, l) in state.losses.enumerated() { csv += "\(i + 1),\(l)\n" }
        try AtomicFile.write(csv, to: dir + "/" + lossesName)
    }

    /// The UNet config a checkpoint was written with.
    public static func config(in dir: String) throws -> UNetConfig {
        let file = try SafetensorsFile(path: dir + "/" + fileName)
        guard let text = file.metadata["unet_config"],
              let json = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw DataError("\(dir)/\(fileName) has no unet_config; it is not an onestep-distill checkpoint")
        }
        return try UNetConfig(json: json)
    }

    /// Restores values, EMA and optimizer moments into objects built for the same config.
    public static func read(from dir: String, model: TrainableUNet, optimizer: Optimizer, ema: WeightAverage) throws -> TrainingState {
        let path = dir + "/" + fileName
        let file = try SafetensorsFile(path: path)
        let n = model.store.count
        func restore(_ key: String, into p: UnsafeMutablePointer<Float>) throws {
            let t = try file.floats(key)
            guard t.count == n else { throw DataError("\(path): \(key) has \(t.count) values, the model has \(n) parameters") }
            t.data.withUnsafeBufferPointer { p.update(from: $0.baseAddress!, count: n) }
        }
        try restore("values", into: model.store.values)
        try restore("ema", into: ema.shadow)
        try restore("adam.m", into: optimizer.m)
        try restore("adam.v", into: optimizer.v)
        let md = file.metadata
        guard let step = md["step"].flatMap({ Int($0) }), let optStep = md["optimizer_step"].flatMap({ Int($0) }),
              let emaUpdates = md["ema_updates"].flatMap({ Int($0) }), let rng = md["rng_state"].flatMap({ UInt64($0) }) else {
            throw DataError("\(path): metadata is missing step, optimizer_step, ema_updates or rng_state")
        }
        optimizer.step = optStep
        ema.updates = emaUpdates
        var losses: [Float] = []
        if let csv = try? String(contentsOfFile: dir + "/" + lossesName, encoding: .utf8) {
            for line in csv.split(separator: "\n").dropFirst() {
                if let v = line.split(separator: ",").last.flatMap({ Float($0) }) { losses.append(v) }
            }
        }
        return TrainingState(step: step, rngState: rng, elapsedSeconds: md["elapsed_seconds"].flatMap { Double($0) } ?? 0,
                             losses: Array(losses.prefix(step)))
    }
}

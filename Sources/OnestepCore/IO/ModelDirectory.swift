// A model on disk in diffusers' layout, either
//   DIR/config.json + DIR/diffusion_pytorch_model.safetensors   (a bare UNet2DModel; sampled as a consistency
//                                                                 model with the default scheduler values), or
//   DIR/model_index.json + DIR/unet/{config.json, diffusion_pytorch_model.safetensors}
//       + DIR/scheduler/scheduler_config.json                    (a pipeline as diffusers saves it; the
//                                                                 scheduler's values then apply).
// A bare directory may also hold scheduler_config.json beside config.json (Onestep writes one).
import Foundation

public struct ModelLoadError: Error, CustomStringConvertible {
    public var path: String
    public var problem: String
    public init(path: String, problem: String) {
        self.path = path
        self.problem = problem
    }
    public var description: String { "\(path): \(problem)" }
}

/// How a model is sampled, from its scheduler config.
public enum SamplerKind: Sendable, Equatable {
    /// A consistency model (CMStochasticIterativeScheduler): 1 step, or a few with re-noising.
    case consistency(ConsistencySchedulerConfig)
    /// An EDM teacher denoiser ("EDMHeunScheduler", written by onestep-distill): Heun on K Karras sigmas.
    case edmHeun(EDMSchedulerConfig)

    /// Steps used when a request does not say.
    public var defaultSteps: Int {
        switch self {
        case .consistency: return 1
        case .edmHeun(let c): return c.defaultSteps
        }
    }

    /// Largest step count a request may ask for.
    public var maxSteps: Int {
        switch self {
        case .consistency(let c): return min(4, c.numTrainTimesteps)
        case .edmHeun: return 64
        }
    }
}

public struct ModelDirectory: Sendable {
    public let path: String
    public let name: String
    public let unetConfigPath: String
    public let weightsPath: String
    public let schedulerConfigPath: String?

    public init(path: String) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
            throw ModelLoadError(path: path, problem: "is not a directory; pass a folder holding config.json and diffusion_pytorch_model.safetensors")
        }
        self.path = path
        name = URL(fileURLWithPath: path).standardizedFileURL.lastPathComponent
        let isPipeline = fm.fileExists(atPath: path + "/model_index.json")
        let unetDir = isPipeline ? path + "/unet" : path
        unetConfigPath = unetDir + "/config.json"
        weightsPath = unetDir + "/diffusion_pytorch_model.safetensors"
        let sched = isPipeline ? path + "/scheduler/scheduler_config.json" : path + "/scheduler_config.json"
        schedulerConfigPath = fm.fileExists(atPath: sched) ? sched : nil
        for f in [unetConfigPath, weightsPath] where !fm.fileExists(atPath: f) {
            throw ModelLoadError(path: path, problem: "\(f) is missing; a model folder needs config.json and diffusion_pytorch_model.safetensors" + (isPipeline ? " under unet/" : ""))
        }
    }

    public func loadConfig() throws -> UNetConfig {
        do { return try UNetConfig.load(path: unetConfigPath) } catch let e as ConfigError {
            throw ModelLoadError(path: unetConfigPath, problem: e.description)
        }
    }

    public func loadSampler() throws -> SamplerKind {
        guard let p = schedulerConfigPath else { return .consistency(ConsistencySchedulerConfig()) }
        guard let data = FileManager.default.contents(atPath: p) else {
            throw ModelLoadError(path: p, problem: "cannot be read (is it a readable file?)")
        }
        return try Self.sampler(schedulerConfig: data, path: p)
    }

    /// Reads scheduler_config.json from memory; `p` names it in errors. Apart from loadSampler so that the parsing
    /// can be tested and fuzzed (fuzz/) without writing files.
    static func sampler(schedulerConfig data: Data, path p: String) throws -> SamplerKind {
        guard let d = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelLoadError(path: p, problem: "is not a JSON object")
        }
        let cls = d["_class_name"] as? String ?? "CMStochasticIterativeScheduler"
        guard cls == "CMStochasticIterativeScheduler" || cls == "EDMHeunScheduler" else {
            throw ModelLoadError(path: p, problem: "scheduler \(cls) is not supported; use CMStochasticIterativeScheduler (or EDMHeunScheduler for an Onestep teacher)")
        }
        var c = ConsistencySchedulerConfig()
        var edm = EDMSchedulerConfig()
        func num(_ k: String) throws -> Double? {
            guard let v = d[k], !(v is NSNull) else { return nil }
            guard let n = JSONValues.number(v), n.doubleValue.isFinite else {
                throw ModelLoadError(path: p, problem: "key '\(k)': \(v) is not a number")
            }
            return n.doubleValue
        }
        if let v = try num("num_train_timesteps") {
            guard v >= 2, v <= 10_000, v == v.rounded() else {
                throw ModelLoadError(path: p, problem: "key 'num_train_timesteps': \(v) must be an integer 2...10000")
            }
            c.numTrainTimesteps = Int(v)
        }
        if let v = try num("sigma_min") { c.sigmaMin = v }
        if let v = try num("sigma_max") { c.sigmaMax = v }
        if let v = try num("sigma_data") { c.sigmaData = v }
        if let v = try num("s_noise") { c.sNoise = v }
        if let v = try num("rho") { c.rho = v }
        if let v = d["clip_denoised"], let b = JSONValues.bool(v) { c.clipDenoised = b }
        guard c.sigmaMin > 0, c.sigmaMax > c.sigmaMin, c.sigmaData > 0, c.rho > 0 else {
            throw ModelLoadError(path: p, problem: "needs 0 < sigma_min < sigma_max, sigma_data > 0 and rho > 0")
        }
        guard cls == "EDMHeunScheduler" else { return .consistency(c) }
        (edm.sigmaMin, edm.sigmaMax, edm.sigmaData, edm.rho) = (c.sigmaMin, c.sigmaMax, c.sigmaData, c.rho)
        if let v = try num("num_inference_steps") {
            guard v >= 1, v <= 64, v == v.rounded() else {
                throw ModelLoadError(path: p, problem: "key 'num_inference_steps': \(v) must be an integer 1...64")
            }
            edm.defaultSteps = Int(v)
        }
        return .edmHeun(edm)
    }

    /// Loads config and weights; int8 tensors are dequantized and their codes kept for packing, and the file's
    /// int8 policy becomes the model's. Refuses weights that do not match the config.
    public func loadModel() throws -> (UNet2DModel, SafetensorsFile) {
        let cfg = try loadConfig()
        let file = try SafetensorsFile(path: weightsPath)
        let source = SafetensorsWeights(file: file)
        var model: UNet2DModel
        do {
            model = try UNet2DModel(config: cfg, weights: source)
            if let policy = try Int8Weights.policy(of: file) {
                try Int8Weights.checkPolicy(policy, file: file, layers: model.plan.layers)
                model.int8Policy = policy
            }
        } catch let e as SafetensorsError {
            throw ModelLoadError(path: weightsPath, problem: "\(e.tensor.map { "tensor '\($0)' " } ?? "")\(e.problem)")
        }
        let unused = source.unusedKeys()
        guard unused.isEmpty else {
            throw ModelLoadError(path: weightsPath, problem: "holds \(unused.count) tensors config.json does not use (e.g. \(unused.prefix(3).joined(separator: ", "))); the weights belong to another architecture")
        }
        return (model, file)
    }
}

/// Reads tensors from a safetensors file, dequantizing Onestep's int8 format (see Quant/Int8Weights.swift) and
/// handing out its stored codes for packing, and records which keys were used so a file with extra tensors can be refused.
public final class SafetensorsWeights: WeightSource, @unchecked Sendable {
    // Only used during single-threaded model construction.
    public let file: SafetensorsFile
    private var used = Set<String>()

    public init(file: SafetensorsFile) { self.file = file }

    public func contains(_ key: String) -> Bool { file.entries[key] != nil }

    public func tensor(_ key: String, shape: [Int]) throws -> Tensor {
        let e = try file.entry(key)
        guard e.shape == shape else {
            throw SafetensorsError(file: file.path, tensor: key, problem: "has shape \(e.shape) but config.json needs \(shape); the weights do not match the config")
        }
        used.insert(key)
        let t: Tensor
        if e.dtype == .I8 {
            used.insert(key + Int8Weights.scaleSuffix)
            t = try Int8Weights.dequantize(file: file, key: key)
        } else {
            t = try file.floats(key)
        }
        // A NaN or infinity would turn every image into black pixels without any error; refuse it at load.
        if let bad = t.data.firstIndex(where: { !$0.isFinite }) {
            throw SafetensorsError(file: file.path, tensor: key, problem: "holds \(t.data[bad]) at flat index \(bad); the weights are damaged or came from a diverged run — re-export them from a good checkpoint")
        }
        return t
    }

    public func int8(_ key: String, shape: [Int]) throws -> Int8Tensor? {
        guard let e = file.entries[key], e.dtype == .I8, e.shape == shape else { return nil }
        return try Int8Weights.stored(file: file, key: key)
    }

    public func unusedKeys() -> [String] { file.names.filter { !used.contains($0) } }
}

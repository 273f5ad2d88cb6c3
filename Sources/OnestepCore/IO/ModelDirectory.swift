// A model on disk in diffusers' layout, either
//   DIR/config.json + DIR/diffusion_pytorch_model.safetensors   (a bare UNet2DModel; sampled as a consistency
//                                                                 model with the default scheduler values), or
//   DIR/model_index.json + DIR/unet/{config.json, diffusion_pytorch_model.safetensors}
//       + DIR/scheduler/scheduler_config.json                    (a pipeline as diffusers saves it; the
//                                                                 scheduler's values then apply).
// A bare directory may also hold scheduler_config.json beside config.json (Onestep writes one).
// The weights may carry a diffusers variant in their name (`diffusion_pytorch_model.fp16.safetensors`, as
// `save_pretrained(variant="fp16")` writes them); see `ModelDirectory.weightsFile`.
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

    /// `variant` picks `diffusion_pytorch_model.<variant>.safetensors` (diffusers' `variant=` argument); nil takes
    /// the plain file, or the only variant file when there is no plain one.
    public init(path: String, variant: String? = nil) throws {
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
        guard fm.fileExists(atPath: unetConfigPath) else {
            throw ModelLoadError(path: path, problem: "\(unetConfigPath) is missing; a model folder needs config.json and diffusion_pytorch_model.safetensors" + (isPipeline ? " under unet/" : ""))
        }
        weightsPath = try Self.weightsFile(in: unetDir, base: "diffusion_pytorch_model", variant: variant)
        let sched = isPipeline ? path + "/scheduler/scheduler_config.json" : path + "/scheduler_config.json"
        schedulerConfigPath = fm.fileExists(atPath: sched) ? sched : nil
    }

    /// The weights file of a diffusers component folder: `DIR/BASE.safetensors`, or with a variant
    /// `DIR/BASE.VARIANT.safetensors` (diffusers' `_add_variant`: the variant goes before the extension; BASE is
    /// `diffusion_pytorch_model` for UNets and VAEs, `model` for transformers' text encoders). With no variant
    /// asked and no plain file, a single variant file is taken; several are refused, naming them.
    /// Throws `ModelLoadError` saying which files exist and what to pass.
    public static func weightsFile(in dir: String, base: String, variant: String? = nil) throws -> String {
        let fm = FileManager.default
        let plain = "\(dir)/\(base).safetensors"
        let present = ((try? fm.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".safetensors") }.sorted()
        let variants = present.compactMap { f -> String? in
            guard f.hasPrefix(base + "."), f != base + ".safetensors" else { return nil }
            let v = String(f.dropFirst(base.count + 1).dropLast(".safetensors".count))
            return v.isEmpty || v.contains(".") ? nil : v
        }
        if let variant {
            let p = "\(dir)/\(base).\(variant).safetensors"
            guard fm.fileExists(atPath: p) else {
                throw ModelLoadError(path: dir, problem: "has no \(base).\(variant).safetensors for variant '\(variant)' (variants here: \(variants.isEmpty ? "none" : variants.joined(separator: ", "))\(fm.fileExists(atPath: plain) ? "; the plain \(base).safetensors is there" : ""))")
            }
            return p
        }
        if fm.fileExists(atPath: plain) { return plain }
        if variants.count == 1 { return "\(dir)/\(base).\(variants[0]).safetensors" }
        if variants.isEmpty {
            throw ModelLoadError(path: dir, problem: "\(plain) is missing; a model folder needs config.json and \(base).safetensors (or a variant such as \(base).fp16.safetensors)")
        }
        throw ModelLoadError(path: dir, problem: "holds several weight variants (\(variants.joined(separator: ", "))) and no plain \(base).safetensors; say which variant to load")
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

    /// Loads config and weights; int8 tensors are dequantized. Refuses weights that do not match the config.
    public func loadModel() throws -> (UNet2DModel, SafetensorsFile) {
        let cfg = try loadConfig()
        let file = try SafetensorsFile(path: weightsPath)
        let source = SafetensorsWeights(file: file)
        let model: UNet2DModel
        do { model = try UNet2DModel(config: cfg, weights: source) } catch let e as SafetensorsError {
            throw ModelLoadError(path: weightsPath, problem: "\(e.tensor.map { "tensor '\($0)' " } ?? "")\(e.problem)")
        }
        let unused = source.unusedKeys()
        guard unused.isEmpty else {
            throw ModelLoadError(path: weightsPath, problem: "holds \(unused.count) tensors config.json does not use (e.g. \(unused.prefix(3).joined(separator: ", "))); the weights belong to another architecture")
        }
        return (model, file)
    }
}

/// Reads tensors from a safetensors file, dequantizing Onestep's int8 format (see Quant/Int8Weights.swift),
/// and records which keys were used so a file with extra tensors can be refused.
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

    public func unusedKeys() -> [String] { file.names.filter { !used.contains($0) } }
}

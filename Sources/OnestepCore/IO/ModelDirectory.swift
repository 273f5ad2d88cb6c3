// A model on disk in diffusers' layout, either
//   DIR/config.json + DIR/diffusion_pytorch_model.safetensors   (a bare UNet2DModel component folder), or
//   DIR/model_index.json + DIR/<folder>/...                      (a pipeline as diffusers saves it: model_index.json
//                                                                 maps each folder to its class, see ModelIndex).
// A bare folder may hold scheduler_config.json beside config.json (Onestep writes one). Without any scheduler config
// a bare UNet is sampled as a consistency model, and the load says so (LoadedSampler.assumption).
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

/// The sampler a model directory asked for, and whether it was assumed for want of a scheduler config.
public struct LoadedSampler: Sendable {
    public let sampler: any Sampler
    /// Set when no scheduler config was found: what was assumed and how to choose another (load log, /v1/models).
    public let assumption: String?
}

public struct ModelDirectory: Sendable {
    public let path: String
    public let name: String
    public let unetConfigPath: String
    public let weightsPath: String
    public let schedulerConfigPath: String?
    /// model_index.json's component table for a pipeline folder; nil for a bare component folder.
    public let index: ModelIndex?

    /// `variant` picks `diffusion_pytorch_model.<variant>.safetensors` (diffusers' `variant=` argument); nil takes
    /// the plain file, or the only variant file when there is no plain one.
    public init(path: String, variant: String? = nil) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ModelLoadError(path: path, problem: "does not exist (relative paths start at \(fm.currentDirectoryPath)); pass a folder holding config.json and diffusion_pytorch_model.safetensors")
        }
        guard isDir.boolValue else {
            throw ModelLoadError(path: path, problem: "is not a directory; pass a folder holding config.json and diffusion_pytorch_model.safetensors")
        }
        self.path = path
        name = URL(fileURLWithPath: path).standardizedFileURL.lastPathComponent
        let isPipeline = fm.fileExists(atPath: path + "/model_index.json")
        index = isPipeline ? try ModelIndex(path: path + "/model_index.json") : nil
        let unetFolder = try index?.unetFolder() ?? ""
        let unetDir = isPipeline ? path + "/" + unetFolder : path
        unetConfigPath = unetDir + "/config.json"
        guard fm.fileExists(atPath: unetConfigPath) else {
            throw ModelLoadError(path: path, problem: "\(unetConfigPath) is missing; a model folder needs config.json and diffusion_pytorch_model.safetensors" + (isPipeline ? " under \(unetFolder)/" : ""))
        }
        weightsPath = try Self.weightsFile(in: unetDir, base: "diffusion_pytorch_model", variant: variant)
        let schedulerFolder = index?.folder(for: .scheduler)
        let sched = isPipeline ? path + "/" + (schedulerFolder ?? "scheduler") + "/scheduler_config.json" : path + "/scheduler_config.json"
        schedulerConfigPath = fm.fileExists(atPath: sched) ? sched : nil
        if isPipeline, schedulerFolder != nil, schedulerConfigPath == nil {
            throw ModelLoadError(path: sched, problem: "is missing; model_index.json lists a scheduler, so its folder needs scheduler_config.json")
        }
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

    /// What a bare UNet folder without scheduler_config.json is sampled with, and the words saying so.
    public static let assumedSamplerNote = "no scheduler config found: assumed CMStochasticIterativeScheduler (a one-step consistency model, sigma_min 0.002, sigma_max 80, sigma_data 0.5); if this is a DDPM-family model (e.g. google/ddpm-cifar10-32) it will give noise: put a scheduler_config.json beside config.json with \"_class_name\" one of \(SamplerRegistry.classNames.joined(separator: ", ")) (DDIMScheduler with the model's betas is a good start)"

    public func loadSampler() throws -> LoadedSampler {
        guard let p = schedulerConfigPath else {
            return LoadedSampler(sampler: ConsistencySampler(), assumption: Self.assumedSamplerNote)
        }
        guard let data = FileManager.default.contents(atPath: p) else {
            throw ModelLoadError(path: p, problem: "cannot be read (is it a readable file?)")
        }
        // diffusers picks the scheduler class from model_index.json and reads only the values from the file.
        return LoadedSampler(sampler: try Self.sampler(schedulerConfig: data, path: p, className: index?.className(for: .scheduler)),
                             assumption: nil)
    }

    /// Reads scheduler_config.json from memory; `p` names it in errors. Apart from loadSampler so that the parsing
    /// can be tested and fuzzed (fuzz/) without writing files. A file without `_class_name` is read as
    /// CMStochasticIterativeScheduler, as Onestep's first students were written.
    public static func sampler(schedulerConfig data: Data, path p: String, className: String? = nil) throws -> any Sampler {
        let parsed = try SchedulerConfig(json: data, path: p)
        let name = className ?? parsed.className ?? ConsistencySampler.className
        return try SamplerRegistry.sampler(config: SchedulerConfig(values: parsed.values, path: p, className: name))
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

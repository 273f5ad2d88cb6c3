// `_class_name` -> sampler type. Adding a sampler: write its type (one file, conforming to Sampler) and add it to
// `types` below; nothing else switches on sampler kinds.
import Foundation

public enum SamplerRegistry {
    /// Every sampler type Onestep can load.
    public static let types: [any Sampler.Type] = [
        ConsistencySampler.self,
        EDMHeunSampler.self,
        DDIMSampler.self,
        DPMSolverMultistepSampler.self,
        EulerDiscreteSampler.self,
        EulerAncestralDiscreteSampler.self,
        DDPMSampler.self,
        LCMSampler.self,
        TCDSampler.self,
    ]

    /// The type reading `className` (its diffusers name or a legacy name), or nil.
    public static func type(named className: String) -> (any Sampler.Type)? {
        types.first { $0.className == className || $0.legacyClassNames.contains(className) }
    }

    public static var classNames: [String] { types.map { $0.className } }

    /// Builds the sampler a parsed config names. `className` (e.g. from model_index.json) overrides the file's.
    public static func sampler(config: SchedulerConfig) throws -> any Sampler {
        guard let name = config.className else {
            throw ModelLoadError(path: config.path, problem: "has no \"_class_name\"; add one of: \(classNames.joined(separator: ", "))")
        }
        guard let t = type(named: name) else {
            throw ModelLoadError(path: config.path, problem: "scheduler \(name) is not supported; supported: \(classNames.joined(separator: ", "))")
        }
        return try t.init(config: config)
    }

    /// Reads scheduler_config.json text; `path` names it in errors.
    public static func sampler(json data: Data, path: String, className: String? = nil) throws -> any Sampler {
        let parsed = try SchedulerConfig(json: data, path: path)
        return try sampler(config: SchedulerConfig(values: parsed.values, path: path, className: className ?? parsed.className))
    }

    /// scheduler_config.json text for a sampler: its config as diffusers would write it, sorted keys, newline.
    public static func json(for sampler: any Sampler) throws -> [UInt8] {
        let data = try JSONSerialization.data(withJSONObject: sampler.configDictionary, options: [.prettyPrinted, .sortedKeys])
        return Array(data) + [0x0A]
    }
}

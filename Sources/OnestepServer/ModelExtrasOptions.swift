// `--lora [MODEL=]FILE[:SCALE]`, `--taesd [MODEL=]DIR` and `--scheduler [MODEL=]CLASS` of `onestep-serve serve`:
// what a text-to-image model is loaded with beyond its folder. A LoRA is fused into that model's weights at
// start-up (as FastSD CPU and diffusers' fuse_lora do; A1111's per-prompt `<lora:name:w>` would need the weights
// re-fused per request), a TAESD folder is loaded beside the model's own decoder, picked per request with
// "decoder": "taesd", and a scheduler class replaces model_index.json's (Hyper-SD / TCD / LCM LoRAs need theirs).
// MODEL is the model's name (its folder name, as /v1/models lists it); it may be left out when the server loads
// one model folder.
import CommandLineKit
import Foundation
import OnestepCore

public struct ModelExtrasOptions: Sendable, Equatable {
    /// Per model name (nil key: the entries that named no model).
    public var loras: [String?: [LoRASpec]] = [:]
    public var taesd: [String?: String] = [:]
    public var scheduler: [String?: String] = [:]

    public init() {}

    public var isEmpty: Bool { loras.isEmpty && taesd.isEmpty && scheduler.isEmpty }
    var hasUnnamed: Bool { loras[nil] != nil || taesd[nil] != nil || scheduler[nil] != nil }

    /// Splits `MODEL=VALUE` (MODEL without '/', so a path holding '=' is not cut) into (MODEL, VALUE).
    static func split(_ text: String) -> (model: String?, value: String) {
        if let eq = text.firstIndex(of: "="), !text[..<eq].contains("/"), eq != text.startIndex {
            return (String(text[..<eq]), String(text[text.index(after: eq)...]))
        }
        return (nil, text)
    }

    /// Parses the flag values (each `[MODEL=]FILE[:SCALE]` / `[MODEL=]DIR`). `flag` names the source in errors.
    /// - Throws: FlagError for an empty value, a bad scale, or two TAESD folders (or scheduler classes) for one model.
    public static func parse(loras: [String], taesd: [String], scheduler: [String] = [],
                             flag: (String) -> String = { "--\($0)" }) throws -> ModelExtrasOptions {
        var o = ModelExtrasOptions()
        for text in loras {
            let (model, value) = split(text)
            do { o.loras[model, default: []].append(try LoRASpec(parsing: value)) } catch let e as LoRASpecError {
                throw FlagError("\(flag("lora")) \(text): \(e.problem) (form: [MODEL=]FILE[:SCALE])")
            }
        }
        for text in taesd {
            let (model, value) = split(text)
            guard !value.isEmpty else { throw FlagError("\(flag("taesd")) \(text): names no folder (form: [MODEL=]DIR)") }
            guard o.taesd[model] == nil else {
                throw FlagError("\(flag("taesd")) \(text): \(model.map { "model \($0)" } ?? "the model") already has a TAESD folder; give one per model")
            }
            o.taesd[model] = value
        }
        for text in scheduler {
            let (model, value) = split(text)
            guard !value.isEmpty, o.scheduler[model] == nil else {
                throw FlagError("\(flag("scheduler")) \(text): give one scheduler class per model (form: [MODEL=]CLASS)")
            }
            o.scheduler[model] = value
        }
        return o
    }

    /// The extras of each model folder about to be loaded (name = folder name). Entries without MODEL= apply when
    /// exactly one folder is loaded.
    /// - Throws: ModelLoadError for entries naming no loaded folder, or unnamed entries with several folders.
    func resolve(folders: [String], modelsDirectory: String) throws -> [String: TextModelExtras] {
        let names = folders.map { URL(fileURLWithPath: $0).standardizedFileURL.lastPathComponent }
        if hasUnnamed && names.count != 1 {
            throw ModelLoadError(path: modelsDirectory, problem: "holds \(names.count) model folders (\(names.joined(separator: ", "))); say which model a --lora / --taesd / --scheduler is for: --lora MODEL=FILE[:SCALE], --taesd MODEL=DIR, --scheduler MODEL=CLASS")
        }
        let named = Set(loras.keys.compactMap { $0 }).union(taesd.keys.compactMap { $0 }).union(scheduler.keys.compactMap { $0 })
        for name in named.sorted() where !names.contains(name) {
            throw ModelLoadError(path: modelsDirectory, problem: "has no model folder named '\(name)' for --lora / --taesd / --scheduler (models: \(names.joined(separator: ", ")))")
        }
        var out: [String: TextModelExtras] = [:]
        for name in names {
            // With one folder, unnamed entries are its own; named ones still apply.
            let l = (loras[name] ?? []) + (names.count == 1 ? (loras[nil] ?? []) : [])
            let t = taesd[name] ?? (names.count == 1 ? taesd[nil] : nil)
            let s = scheduler[name] ?? (names.count == 1 ? scheduler[nil] : nil)
            let e = TextModelExtras(loras: l, taesdPath: t, schedulerClass: s)
            if !e.isEmpty { out[name] = e }
        }
        return out
    }
}

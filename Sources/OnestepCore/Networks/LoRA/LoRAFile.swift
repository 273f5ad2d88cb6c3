// A LoRA file (safetensors) read into its layers: for each adapted module, the keys of its down (A) and up (B)
// matrices and its alpha, in either of the two layouts LoRAs are shipped in:
//
//   diffusers / PEFT (`pipe.save_lora_weights`, diffusers 0.42 loaders/lora_pipeline.py):
//     unet.<module path>.lora_A.weight (r, in[, kh, kw]) / .lora_B.weight (out, r[, 1, 1])
//     older: unet.<module path>.lora.down.weight / .lora.up.weight, and the attention-processor form
//     unet.<attention path>.processor.to_q_lora.down.weight (to_out_lora meaning to_out.0)
//     text_encoder.<module path>... for the text encoder; alpha from `<module>.alpha` tensors or the
//     `lora_adapter_metadata` JSON of __metadata__ (PEFT LoraConfig: lora_alpha, alpha_pattern), else alpha = r.
//   kohya / A1111 (sd-scripts networks/lora.py):
//     lora_unet_<module path with "." as "_">.lora_down.weight / .lora_up.weight / .alpha
//     lora_te_<...> (or lora_te1_) for the text encoder; without .alpha, alpha = r.
//
// Module names stay as the file spells them (kohya's underscore form included): LoRAFusion matches them against
// the module paths a network's plan knows, never by string replacement alone.
import Foundation

/// A LoRA to fuse, as given on a command line: `FILE` or `FILE:SCALE` (scale = diffusers' `lora_scale` of
/// `fuse_lora`, A1111's `<lora:name:SCALE>` weight; default 1).
public struct LoRASpec: Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var scale: Float

    public init(path: String, scale: Float = 1) {
        self.path = path
        self.scale = scale
    }

    /// Parses `FILE[:SCALE]`. A suffix after the last ':' that is not a number is part of the path.
    /// - Throws: LoRASpecError for an empty path or a scale that is not finite.
    public init(parsing text: String) throws {
        if let colon = text.lastIndex(of: ":"), let s = Float(text[text.index(after: colon)...]) {
            guard s.isFinite, abs(s) <= 100 else { throw LoRASpecError(problem: "LoRA scale in '\(text)' must be a finite number in -100...100") }
            path = String(text[..<colon])
            scale = s
        } else {
            path = text
            scale = 1
        }
        guard !path.isEmpty else { throw LoRASpecError(problem: "'\(text)' names no file; give FILE.safetensors or FILE.safetensors:SCALE") }
    }

    public var description: String { "\(path):\(scale)" }
}

public struct LoRASpecError: Error, CustomStringConvertible, Equatable {
    public var problem: String
    public var description: String { problem }
}

/// The network a LoRA layer adapts.
public enum LoRAComponent: String, Sendable {
    case unet
    case textEncoder = "text_encoder"
}

/// One adapted module of a LoRA file.
public struct LoRALayer: Sendable {
    public var component: LoRAComponent
    /// The module name as the file spells it: a dotted path (diffusers) or kohya's underscore form.
    public var module: String
    /// True for kohya names (dots written as underscores).
    public var underscored: Bool
    public var downKey: String
    public var upKey: String
    /// alpha of this module when the file says (an `.alpha` tensor or the metadata); nil: alpha = rank.
    public var alpha: Float?
}

public struct LoRAFile: Sendable {
    public let path: String
    public let file: SafetensorsFile
    public let layers: [LoRALayer]

    /// Reads the header of `path` and groups its tensors into layers.
    /// - Throws: ModelLoadError naming the file: not a safetensors file, a key of neither layout (with the first
    ///   such keys), a down matrix without its up matrix or the reverse, an SDXL second text encoder, DoRA / LoHa /
    ///   LoKr tensors (not plain LoRA), an alpha that is not one finite number.
    public init(path: String) throws {
        self.path = path
        do { file = try SafetensorsFile(path: path) } catch let e as SafetensorsError {
            throw ModelLoadError(path: path, problem: "cannot be read as a LoRA safetensors file: \(e.tensor.map { "tensor '\($0)' " } ?? "")\(e.problem)")
        }
        struct Partial { var component: LoRAComponent; var underscored: Bool; var down: String?; var up: String?; var alpha: String? }
        var parts: [String: Partial] = [:]   // by component + "\u{0}" + module
        var order: [String] = []
        var unknown: [String] = []
        for key in file.names.sorted() {
            guard let p = Self.classify(key) else { unknown.append(key); continue }
            let id = p.component.rawValue + "\u{0}" + p.module
            if parts[id] == nil {
                parts[id] = Partial(component: p.component, underscored: p.underscored)
                order.append(id)
            }
            switch p.role {
            case .down: parts[id]!.down = key
            case .up: parts[id]!.up = key
            case .alpha: parts[id]!.alpha = key
            }
        }
        if !unknown.isEmpty {
            let kind = unknown.contains { $0.contains("dora_scale") || $0.contains("lora_magnitude_vector") } ? "DoRA tensors (not supported; only plain LoRA is fused)"
                : unknown.contains { $0.contains("hada_") || $0.contains("lokr_") } ? "LoHa / LoKr tensors (not supported; only plain LoRA is fused)"
                : unknown.contains { $0.hasPrefix("lora_te2_") || $0.hasPrefix("text_encoder_2.") } ? "tensors of a second text encoder (an SDXL LoRA; this build runs SD 1.x / 2.x pipelines)"
                : "keys of neither LoRA layout (diffusers 'unet.<module>.lora_A.weight' / 'lora_B.weight' or kohya 'lora_unet_<module>.lora_down.weight' / 'lora_up.weight' / 'alpha')"
            throw ModelLoadError(path: path, problem: "holds \(unknown.count) \(kind), e.g. \(unknown.prefix(3).joined(separator: ", ")); it cannot be fused")
        }
        let metadataAlphas = try Self.metadataAlphas(file)
        var layers: [LoRALayer] = []
        for id in order {
            let p = parts[id]!
            let module = String(id.split(separator: "\u{0}", maxSplits: 1)[1])
            guard let down = p.down, let up = p.up else {
                let have = p.down ?? p.up ?? p.alpha!
                let missing = p.down == nil ? "down (lora_A / lora_down)" : "up (lora_B / lora_up)"
                throw ModelLoadError(path: path, problem: "module '\(module)' has \(have) but no \(missing) matrix; each LoRA layer needs both (the file is incomplete or damaged)")
            }
            var alpha: Float? = nil
            if let a = p.alpha {
                let t: Tensor
                do { t = try file.floats(a) } catch let e as SafetensorsError { throw ModelLoadError(path: path, problem: "tensor '\(a)': \(e.problem)") }
                guard t.count == 1, t.data[0].isFinite else {
                    throw ModelLoadError(path: path, problem: "tensor '\(a)' has shape \(t.shape); an alpha is one finite number")
                }
                alpha = t.data[0]
            } else if let m = metadataAlphas[p.component] {
                alpha = m.alpha(for: module)
            }
            layers.append(LoRALayer(component: p.component, module: module, underscored: p.underscored, downKey: down, upKey: up, alpha: alpha))
        }
        guard !layers.isEmpty else {
            throw ModelLoadError(path: path, problem: "holds no LoRA layers (no tensors at all); it cannot be fused")
        }
        self.layers = layers
    }

    enum Role { case down, up, alpha }

    /// (component, module, kohya?, role) of one key; nil when the key is of neither layout.
    static func classify(_ key: String) -> (component: LoRAComponent, module: String, underscored: Bool, role: Role)? {
        // kohya: lora_unet_<name>.lora_down.weight
        for (prefix, component) in [("lora_unet_", LoRAComponent.unet), ("lora_te_", .textEncoder), ("lora_te1_", .textEncoder)] where key.hasPrefix(prefix) {
            let rest = key.dropFirst(prefix.count)
            for (suffix, role) in [(".lora_down.weight", Role.down), (".lora_up.weight", .up), (".alpha", .alpha)] where rest.hasSuffix(suffix) {
                let name = String(rest.dropLast(suffix.count))
                return name.isEmpty || name.contains(".") ? nil : (component, name, true, role)
            }
            return nil
        }
        // diffusers / PEFT: [unet. | text_encoder. | base_model.model.]<module>.<suffix>
        var rest = Substring(key), component = LoRAComponent.unet
        if rest.hasPrefix("unet.") { rest = rest.dropFirst(5) } else if rest.hasPrefix("text_encoder.") {
            rest = rest.dropFirst(13); component = .textEncoder
        } else if rest.hasPrefix("base_model.model.") { rest = rest.dropFirst(17) }
        for (suffix, role) in [(".lora_A.weight", Role.down), (".lora_B.weight", .up), (".lora.down.weight", .down),
                               (".lora.up.weight", .up), (".lora_linear_layer.down.weight", .down),
                               (".lora_linear_layer.up.weight", .up), (".alpha", .alpha)] where rest.hasSuffix(suffix) {
            var name = String(rest.dropLast(suffix.count))
            // diffusers' attention-processor LoRA (0.14-0.20): <attn>.processor.to_q_lora.{down,up}.weight.
            if suffix.hasPrefix(".lora.") || suffix == ".alpha", let r = name.range(of: ".processor.", options: .backwards) {
                let tail = name[r.upperBound...]
                let map = ["to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"]
                if let m = map[String(tail)] { name = String(name[..<r.lowerBound]) + "." + m }
            }
            return name.isEmpty ? nil : (component, name, false, role)
        }
        return nil
    }

    /// PEFT LoraConfig fields diffusers writes into __metadata__["lora_adapter_metadata"] (keys "unet.lora_alpha",
    /// "unet.alpha_pattern", "text_encoder.lora_alpha", ...).
    struct MetadataAlpha {
        var alpha: Float?
        var pattern: [String: Float]
        /// PEFT's alpha_pattern keys are module names or name suffixes (diffusers writes full module names).
        func alpha(for module: String) -> Float? {
            if let a = pattern[module] { return a }
            if let hit = pattern.keys.sorted().first(where: { module.hasSuffix("." + $0) }) { return pattern[hit] }
            return alpha
        }
    }

    static func metadataAlphas(_ file: SafetensorsFile) throws -> [LoRAComponent: MetadataAlpha] {
        guard let text = file.metadata["lora_adapter_metadata"] else { return [:] }
        guard let obj = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] else {
            throw ModelLoadError(path: file.path, problem: "__metadata__ lora_adapter_metadata is not a JSON object")
        }
        var out: [LoRAComponent: MetadataAlpha] = [:]
        for c in [LoRAComponent.unet, .textEncoder] {
            let alpha = (obj[c.rawValue + ".lora_alpha"] as? NSNumber)?.floatValue
            var pattern: [String: Float] = [:]
            for (k, v) in (obj[c.rawValue + ".alpha_pattern"] as? [String: Any]) ?? [:] {
                if let n = v as? NSNumber { pattern[k] = n.floatValue }
            }
            if alpha != nil || !pattern.isEmpty { out[c] = MetadataAlpha(alpha: alpha, pattern: pattern) }
        }
        return out
    }
}

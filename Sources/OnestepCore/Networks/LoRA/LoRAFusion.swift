// Fusing LoRA files into a network's weights while they are read, before packing:
//
//   W (out, in[, kh, kw]) += scale * (alpha / r) * up (out, r) @ down (r, in * kh * kw)
//
// as PEFT's LoraLayer.get_delta_weight + merge does when diffusers' `fuse_lora(lora_scale=scale)` runs
// (peft/tuners/lora/layer.py: Linear B @ A; Conv2d 1x1 the same on squeezed kernels, kxk
// conv2d(A.permute(1,0,2,3), B) = B @ A.flatten(1) reshaped). `FusingWeightSource` wraps a network's weight
// source: a key with LoRA deltas is returned already fused, so the loaders pack the fused tensor and no second
// float copy of any weight is kept. The LoRA's own tensors are read from its file when their weight is fused.
//
// Matching: the modules a network can take a LoRA on are listed from its plan (`LoRATargets`: module path ->
// weight shape). diffusers names are looked up as they are; kohya's underscore names through a table built from
// the same module paths with "." written as "_" (an underscore name two paths share is refused as ambiguous).
import Foundation

/// The modules of one network a LoRA may adapt: module path (the weight key without ".weight") -> weight shape.
public struct LoRATargets: Sendable {
    public var component: LoRAComponent
    public var shapes: [String: [Int]]
    /// Prefixes a file may put before a module path (transformers 4.x "text_model." for the text encoder).
    public var optionalPrefixes: [String] = []

    public init(component: LoRAComponent, shapes: [String: [Int]], optionalPrefixes: [String] = []) {
        self.component = component
        self.shapes = shapes
        self.optionalPrefixes = optionalPrefixes
    }

    /// Every 2-D (linear) or 4-D (convolution) weight of `parameters` (norms and biases take no LoRA).
    public init(component: LoRAComponent, parameters: [(key: String, shape: [Int])], optionalPrefixes: [String] = []) {
        var s: [String: [Int]] = [:]
        for p in parameters where p.key.hasSuffix(".weight") && (p.shape.count == 2 || p.shape.count == 4) {
            s[String(p.key.dropLast(".weight".count))] = p.shape
        }
        self.init(component: component, shapes: s, optionalPrefixes: optionalPrefixes)
    }
}

/// One LoRA term to add to a weight: the file it comes from, its keys and its factor scale * alpha / rank.
struct LoRADelta: Sendable {
    var file: LoRAFile
    var layer: LoRALayer
    var factor: Float
    var rank: Int
}

/// Every LoRA term of one network, by weight key, checked against the network's modules and shapes.
public struct LoRAFusion: Sendable {
    var deltas: [String: [LoRADelta]] = [:]
    public var isEmpty: Bool { deltas.isEmpty }
    /// Module count fused per file (for the load log).
    public private(set) var summary: [(path: String, scale: Float, layers: Int)] = []

    public init() {}

    /// Matches the layers of `files` for `targets.component` to the network's modules.
    /// - Throws: ModelLoadError naming the LoRA file: layers that match no module (the first few named, with the
    ///   reason), shapes that do not fit (key, both shapes), an ambiguous kohya name, a file with no layer for any
    ///   network of the pipeline is left to the caller (`LoRAFusion.checkAnyMatched`).
    public init(files: [(file: LoRAFile, scale: Float)], targets: LoRATargets) throws {
        // kohya underscore name -> module path, built from the plan's module paths (with optional prefixes).
        var underscored: [String: String] = [:], ambiguous: Set<String> = []
        var dotted: [String: String] = [:]
        for module in targets.shapes.keys {
            for prefix in [""] + targets.optionalPrefixes {
                let name = prefix + module
                dotted[name] = module
                let u = name.replacingOccurrences(of: ".", with: "_")
                if let other = underscored[u], other != module { ambiguous.insert(u) } else { underscored[u] = module }
            }
        }
        for (file, scale) in files {
            let mine = file.layers.filter { $0.component == targets.component }
            var unmatched: [String] = []
            for layer in mine {
                if layer.underscored, ambiguous.contains(layer.module) {
                    throw ModelLoadError(path: file.path, problem: "kohya name '\(layer.module)' could mean several modules of the \(targets.component.rawValue); rename the key to its diffusers module path")
                }
                guard let module = layer.underscored ? underscored[layer.module] : dotted[layer.module] else {
                    unmatched.append(layer.module); continue
                }
                let shape = targets.shapes[module]!
                let down = try file.file.entry(layer.downKey).shape, up = try file.file.entry(layer.upKey).shape
                let out = shape[0], inFlat = shape.dropFirst().reduce(1, *)
                // down (r, in[, kh, kw]) with in*kh*kw = the weight's; up (out, r[, 1, 1]).
                let r = down.first ?? 0
                let downOK = down.count >= 2 && r > 0 && down.dropFirst().reduce(1, *) == inFlat
                    && (down.count == 2 || down.count == shape.count && Array(down.dropFirst()) == Array(shape.dropFirst()))
                let upOK = up.count >= 2 && up[0] == out && up[1] == r && up.dropFirst(2).allSatisfy { $0 == 1 }
                guard downOK, upOK else {
                    throw ModelLoadError(path: file.path, problem: "LoRA layer '\(layer.module)' does not fit \(module).weight \(shape): \(layer.downKey) has shape \(down) (needs (r, \(shape.dropFirst().map(String.init).joined(separator: ", ")))), \(layer.upKey) has shape \(up) (needs (\(out), r\(shape.count == 4 ? ", 1, 1" : ""))); the LoRA was made for another model")
                }
                let alpha = layer.alpha ?? Float(r)
                deltas[module + ".weight", default: []].append(LoRADelta(file: file, layer: layer, factor: scale * alpha / Float(r), rank: r))
            }
            guard unmatched.isEmpty else {
                let what = targets.component == .unet ? "UNet" : "text encoder"
                throw ModelLoadError(path: file.path, problem: "\(unmatched.count) of \(mine.count) \(targets.component.rawValue) LoRA layers match no module of this \(what) (e.g. \(unmatched.prefix(3).joined(separator: ", "))); the LoRA was made for another architecture (an SDXL or SD 1.x LoRA on a model of the other family?), so it is refused rather than fused in part")
            }
            if !mine.isEmpty { summary.append((file.path, scale, mine.count)) }
        }
    }

    /// Refuses files none of whose layers any network took (the per-network init only sees its own component).
    public static func checkAnyMatched(_ files: [LoRAFile], components: Set<LoRAComponent>) throws {
        for f in files where !f.layers.contains(where: { components.contains($0.component) }) {
            throw ModelLoadError(path: f.path, problem: "has no LoRA layer for this pipeline's networks (\(components.map(\.rawValue).sorted().joined(separator: ", "))); nothing to fuse")
        }
    }

    /// Adds every LoRA term of `key` to `w` (shape as stored), in file order, in place: a uniquely held weight is
    /// not copied.
    func fuse(_ key: String, into w: inout Tensor) throws {
        guard let list = deltas[key] else { return }
        let out = w.shape[0], inFlat = w.count / out
        for d in list {
            let file = d.file.file
            let down: Tensor, up: Tensor
            do { (down, up) = (try file.floats(d.layer.downKey), try file.floats(d.layer.upKey)) } catch let e as SafetensorsError {
                throw ModelLoadError(path: d.file.path, problem: "\(e.tensor.map { "tensor '\($0)' " } ?? "")\(e.problem)")
            }
            if down.data.contains(where: { !$0.isFinite }) || up.data.contains(where: { !$0.isFinite }) {
                throw ModelLoadError(path: d.file.path, problem: "LoRA layer '\(d.layer.module)' holds a value that is not finite; the file is damaged")
            }
            LoRAMath.addProduct(into: &w.data, up: up.data, down: down.data, out: out, rank: d.rank, inFlat: inFlat, factor: d.factor)
        }
    }
}

/// The fusing arithmetic, apart so tests compare it with a naive loop.
enum LoRAMath {
    /// W (out, inFlat) += factor * up (out, r) @ down (r, inFlat), with each product summed over r in order in
    /// float32 first (torch's B @ A), then scaled and added (PEFT: delta = (B @ A) * scaling; W + delta).
    static func addProduct(into w: inout [Float], up: [Float], down: [Float], out: Int, rank r: Int, inFlat: Int, factor: Float) {
        precondition(w.count == out * inFlat && up.count == out * r && down.count == r * inFlat)
        var row = [Float](repeating: 0, count: inFlat)
        for o in 0..<out {
            for j in 0..<inFlat { row[j] = 0 }
            for k in 0..<r {
                let b = up[o * r + k]
                let base = k * inFlat
                for j in 0..<inFlat { row[j] += b * down[base + j] }
            }
            let wb = o * inFlat
            for j in 0..<inFlat { w[wb + j] += row[j] * factor }
        }
    }
}

/// A weight source returning LoRA-fused tensors: the network packs the fused weight, and no unfused copy is kept.
/// Records which fused keys were read so a LoRA term no layer read is reported (`checkAllFused`).
public final class FusingWeightSource: WeightSource, @unchecked Sendable {
    // Only used during single-threaded model construction.
    public let base: WeightSource
    let fusion: LoRAFusion
    private var fusedKeys = Set<String>()

    public init(base: WeightSource, fusion: LoRAFusion) {
        self.base = base
        self.fusion = fusion
    }

    public func contains(_ key: String) -> Bool { base.contains(key) }

    public func tensor(_ key: String, shape: [Int]) throws -> Tensor {
        var t = try base.tensor(key, shape: shape)
        guard fusion.deltas[key] != nil else { return t }
        fusedKeys.insert(key)
        try fusion.fuse(key, into: &t)
        return t
    }

    /// int8 codes cannot take a LoRA term: a quantized weight with a LoRA on it is refused.
    public func int8(_ key: String, shape: [Int]) throws -> Int8Tensor? {
        let codes = try base.int8(key, shape: shape)
        if codes != nil, let d = fusion.deltas[key]?.first {
            throw ModelLoadError(path: d.file.path, problem: "adapts \(key), which the model stores as int8; fuse LoRAs into the float weights before quantizing")
        }
        return codes
    }

    /// Throws when a LoRA term was matched to a key the network never read (a plan listing a module the loader
    /// skips would otherwise drop it silently).
    public func checkAllFused() throws {
        for (key, list) in fusion.deltas where !fusedKeys.contains(key) {
            throw ModelLoadError(path: list[0].file.path, problem: "LoRA layer '\(list[0].layer.module)' targets \(key), which the network did not read; it could not be fused")
        }
    }
}

// Onestep's int8 weight format, inside an ordinary safetensors file:
//   KEY            I8  with the float tensor's shape (Cout, ...)      q = round(w / scale[cout]), |q| <= 127
//   KEY_scale      F32 (Cout)                                         scale = max|w[cout, ...]| / 127
// Every other tensor stays F32. __metadata__ describes it:
//   "format": "pt", "onestep.quantization": "int8-per-output-channel-symmetric",
//   "onestep.scale_suffix": "_scale", "onestep.quantized": comma-separated keys,
//   "onestep.int8_policy": the Int8Policy (LayerPlan.swift) that chose the I8 layers; those layers, and only
//   those, run in int8, packed straight from the stored codes.
// Files written before "onestep.int8_policy" existed chose I8 tensors by size (conv and linear weights with at
// least 256 values); they still load: their I8 tensors are dequantized, and the role rule of
// Int8Policy.innerConvolutions picks the int8 layers (packed from the stored codes where the file has them).
import Foundation

public enum Int8Weights {
    public static let scaleSuffix = "_scale"
    public static let formatName = "int8-per-output-channel-symmetric"
    public static let metadataKey = "onestep.quantization"

    /// Symmetric per-output-channel quantization of a (Cout, ...) tensor: the one quantizer, used to write files
    /// and to pack float weights for the int8 kernels.
    public static func quantize(_ w: Tensor) -> Int8Tensor {
        let cout = w.shape[0], per = w.count / cout
        var q = [Int8](repeating: 0, count: w.count)
        var scales = [Float](repeating: 0, count: cout)
        for o in 0..<cout {
            var m: Float = 0
            for j in 0..<per { m = max(m, abs(w.data[o * per + j])) }
            let s = m > 0 ? m / 127 : 1
            scales[o] = s
            for j in 0..<per {
                q[o * per + j] = Int8(max(-127, min(127, (w.data[o * per + j] / s).rounded(.toNearestOrEven))))
            }
        }
        return Int8Tensor(shape: w.shape, codes: q, scales: scales)
    }

    /// The float tensor an I8 tensor stands for: code * scale of its output channel.
    public static func dequantize(file: SafetensorsFile, key: String) throws -> Tensor {
        dequantize(try stored(file: file, key: key))
    }

    public static func dequantize(_ q: Int8Tensor) -> Tensor {
        let cout = q.shape[0], per = q.codes.count / cout
        var out = [Float](repeating: 0, count: q.codes.count)
        for o in 0..<cout {
            let s = q.scales[o]
            for j in 0..<per { out[o * per + j] = Float(q.codes[o * per + j]) * s }
        }
        return Tensor(shape: q.shape, data: out)
    }

    /// The codes and scales stored under `key` (I8) and `key_scale` (F32, one per output channel).
    public static func stored(file: SafetensorsFile, key: String) throws -> Int8Tensor {
        let (shape, q) = try file.int8(key)
        let scale = try file.floats(key + scaleSuffix)
        guard let cout = shape.first, scale.shape == [cout], cout > 0 else {
            throw SafetensorsError(file: file.path, tensor: key + scaleSuffix,
                                   problem: "has shape \(scale.shape) but the I8 tensor \(key) \(shape) needs [\(shape.first ?? 0)]")
        }
        if let bad = scale.data.firstIndex(where: { !$0.isFinite || $0 <= 0 }) {
            throw SafetensorsError(file: file.path, tensor: key + scaleSuffix,
                                   problem: "holds \(scale.data[bad]) at index \(bad); int8 scales must be finite and positive — re-quantize the model")
        }
        return Int8Tensor(shape: shape, codes: q, scales: scale.data)
    }

    /// Writes `parameters` as an int8 safetensors file: the weights of the layers `policy` selects among `layers`
    /// (a network plan's layers) become I8 + scales, everything else stays F32, and the policy is recorded in the
    /// metadata. Returns the relative L2 error of each quantized weight.
    @discardableResult
    public static func write(parameters: [(String, Tensor)], layers: [LayerSpec], policy: Int8Policy = .innerConvolutions,
                             to path: String) throws -> [(String, Double)] {
        let int8Keys = Set(layers.filter(policy.selects).map { $0.key + ".weight" })
        var writer = SafetensorsWriter()
        var quantized: [String] = []
        var report: [(String, Double)] = []
        for (name, t) in parameters {
            if int8Keys.contains(name) {
                let q = quantize(t)
                writer.add(name, int8: q.codes, shape: t.shape)
                writer.add(name + scaleSuffix, Tensor(shape: [t.shape[0]], data: q.scales))
                quantized.append(name)
                let per = t.count / t.shape[0]
                let back = q.codes.enumerated().map { Float($0.element) * q.scales[$0.offset / per] }
                report.append((name, TensorError.relativeL2(back, t.data)))
            } else {
                writer.add(name, t)
            }
        }
        writer.metadata = ["format": "pt", metadataKey: formatName, "onestep.scale_suffix": scaleSuffix,
                           "onestep.quantized": quantized.joined(separator: ","), Int8Policy.metadataKey: policy.rawValue]
        try writer.write(to: path)
        return report
    }

    /// The int8 policy a weight file was written with: nil for a float file; `.innerConvolutions` for an int8
    /// file from before the policy key. Throws on a policy this build does not know.
    public static func policy(of file: SafetensorsFile) throws -> Int8Policy? {
        guard file.metadata[metadataKey] != nil else { return nil }
        guard let name = file.metadata[Int8Policy.metadataKey] else { return .innerConvolutions }
        guard let p = Int8Policy(rawValue: name) else {
            throw SafetensorsError(file: file.path, tensor: nil,
                                   problem: "metadata \(Int8Policy.metadataKey) is '\(name)'; this build knows \(Int8Policy.allCases.map(\.rawValue).joined(separator: ", ")) — re-quantize the model with this onestep-serve")
        }
        return p
    }

    /// Checks that a file carrying a policy key stores I8 exactly for the weights the policy selects, so what
    /// runs in int8 is what the file says.
    public static func checkPolicy(_ policy: Int8Policy, file: SafetensorsFile, layers: [LayerSpec]) throws {
        guard file.metadata[Int8Policy.metadataKey] != nil else { return }
        for l in layers where l.convGeometry != nil || l.kind.isLinear {
            let key = l.key + ".weight", isI8 = file.entries[key]?.dtype == .I8
            if policy.selects(l) && !isI8 {
                throw SafetensorsError(file: file.path, tensor: key, problem: "is not I8, but the file's int8 policy '\(policy.rawValue)' runs \(l.key) in int8; re-quantize the model")
            }
            if !policy.selects(l) && isI8 {
                throw SafetensorsError(file: file.path, tensor: key, problem: "is I8, but the file's int8 policy '\(policy.rawValue)' runs \(l.key) in fp32; re-quantize the model")
            }
        }
    }
}

extension LayerKind {
    var isLinear: Bool { if case .linear = self { return true } else { return false } }
}

// Onestep's int8 weight format, inside an ordinary safetensors file:
//   KEY            I8  with the float tensor's shape (Cout, ...)      q = round(w / scale[cout]), |q| <= 127
//   KEY_scale      F32 (Cout)                                         scale = max|w[cout, ...]| / 127
// Every other tensor stays F32. __metadata__ describes it:
//   "format": "pt", "onestep.quantization": "int8-per-output-channel-symmetric",
//   "onestep.scale_suffix": "_scale", "onestep.quantized": comma-separated keys.
// Which tensors are quantized: conv and linear weights (rank >= 2) with at least `minElements` values;
// norms, biases and embeddings stay float.
import Foundation

public enum Int8Weights {
    public static let scaleSuffix = "_scale"
    public static let formatName = "int8-per-output-channel-symmetric"
    public static let minElements = 256

    /// Symmetric per-output-channel quantization of a (Cout, ...) tensor.
    public static func quantize(_ w: Tensor) -> (values: [Int8], scales: [Float]) {
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
        return (q, scales)
    }

    public static func dequantize(file: SafetensorsFile, key: String) throws -> Tensor {
        let (shape, q) = try file.int8(key)
        let scale = try file.floats(key + scaleSuffix)
        guard let cout = shape.first, scale.shape == [cout], cout > 0 else {
            throw SafetensorsError(file: file.path, tensor: key + scaleSuffix,
                                   problem: "has shape \(scale.shape) but the I8 tensor \(key) \(shape) needs [\(shape.first ?? 0)]")
        }
        let per = q.count / cout
        var out = [Float](repeating: 0, count: q.count)
        for o in 0..<cout {
            let s = scale.data[o]
            for j in 0..<per { out[o * per + j] = Float(q[o * per + j]) * s }
        }
        return Tensor(shape: shape, data: out)
    }

    static func shouldQuantize(_ name: String, _ t: Tensor) -> Bool {
        name.hasSuffix(".weight") && t.rank >= 2 && t.count >= minElements && name != "class_embedding.weight"
    }

    /// Writes `parameters` as an int8 safetensors file; returns the per-tensor relative L2 error of the weights.
    @discardableResult
    public static func write(parameters: [(String, Tensor)], to path: String) throws -> [(String, Double)] {
        var writer = SafetensorsWriter()
        var quantized: [String] = []
        var report: [(String, Double)] = []
        for (name, t) in parameters {
            if shouldQuantize(name, t) {
                let (q, s) = quantize(t)
                writer.add(name, int8: q, shape: t.shape)
                writer.add(name + scaleSuffix, Tensor(shape: [t.shape[0]], data: s))
                quantized.append(name)
                let per = t.count / t.shape[0]
                let back = q.enumerated().map { Float($0.element) * s[$0.offset / per] }
                report.append((name, TensorError.relativeL2(back, t.data)))
            } else {
                writer.add(name, t)
            }
        }
        writer.metadata = ["format": "pt", "onestep.quantization": formatName, "onestep.scale_suffix": scaleSuffix,
                           "onestep.quantized": quantized.joined(separator: ",")]
        try writer.write(to: path)
        return report
    }
}

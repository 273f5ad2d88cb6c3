// A dense float32 tensor: a shape and row-major storage. Layouts used in this project:
//   images and activations (N, C, H, W); embeddings (N, D); linear weights (out, in);
//   convolution weights (Cout, Cin, KH, KW) — all exactly as PyTorch stores them.

public struct Tensor: Sendable, Equatable {
    public var shape: [Int]
    public var data: [Float]

    public init(shape: [Int], data: [Float]) {
        precondition(shape.reduce(1, *) == data.count,
                     "tensor data has \(data.count) values but shape \(shape) needs \(shape.reduce(1, *))")
        self.shape = shape
        self.data = data
    }

    public init(zeros shape: [Int]) {
        self.init(shape: shape, data: [Float](repeating: 0, count: shape.reduce(1, *)))
    }

    public var count: Int { data.count }
    public var rank: Int { shape.count }

    /// Size of dimension `i`; negative `i` counts from the end.
    public func dim(_ i: Int) -> Int { shape[i < 0 ? shape.count + i : i] }

    /// The same values with another shape of equal element count.
    public func reshaped(_ newShape: [Int]) -> Tensor { Tensor(shape: newShape, data: data) }

    /// Rows [start, start + length) of the first dimension.
    public func slice(first start: Int, count length: Int) -> Tensor {
        let inner = shape.dropFirst().reduce(1, *)
        var s = shape
        s[0] = length
        return Tensor(shape: s, data: Array(data[(start * inner)..<((start + length) * inner)]))
    }

    /// Concatenates along the first dimension.
    public static func stack(_ parts: [Tensor]) -> Tensor {
        precondition(!parts.isEmpty, "nothing to stack")
        let inner = Array(parts[0].shape.dropFirst())
        var data: [Float] = []
        data.reserveCapacity(parts.reduce(0) { $0 + $1.count })
        var n = 0
        for p in parts {
            precondition(Array(p.shape.dropFirst()) == inner, "stack: shapes \(p.shape) and \(parts[0].shape) differ")
            data += p.data
            n += p.shape[0]
        }
        return Tensor(shape: [n] + inner, data: data)
    }
}

/// Error measures used by tests and reports.
public enum TensorError {
    /// ||a - b||_2 / ||b||_2, computed in double precision.
    public static func relativeL2(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count, "relativeL2: \(a.count) vs \(b.count) values")
        var num = 0.0, den = 0.0
        for i in a.indices {
            let d = Double(a[i]) - Double(b[i])
            num += d * d
            den += Double(b[i]) * Double(b[i])
        }
        return den == 0 ? num.squareRoot() : (num / den).squareRoot()
    }

    /// max_i |a_i - b_i|.
    public static func maxAbs(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count, "maxAbs: \(a.count) vs \(b.count) values")
        var m: Float = 0
        for i in a.indices { m = max(m, abs(a[i] - b[i])) }
        return m
    }
}

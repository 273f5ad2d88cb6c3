// nn.Linear that can be trained, on row-major activations (N, in) -> (N, out).
//   forward   Y (N, out) = X (N, in) x W^T (in, out) + b
//   backward  dW (out, in) += dY^T (out, N) x X (N, in);  db += colsum dY;  dX (N, in) = dY (N, out) x W (out, in)
// The forward is one GEMM over the batch (the inference Linear runs one GEMV per row for batch invariance; the
// sums differ only in rounding, ~1e-7 relative).
import OnestepCore

public final class TrainableLinear {
    public let inFeatures: Int, outFeatures: Int
    public let weight: Param  // (out, in)
    public let bias: Param    // (out)
    unowned let store: ParameterStore
    public var needsInputGradient = true
    private let output = Buffer(), inputGradient = Buffer()
    private var input: UnsafePointer<Float>?
    private var n = 0

    public init(_ prefix: String, _ store: ParameterStore, in inF: Int, out outF: Int) {
        self.store = store
        (inFeatures, outFeatures) = (inF, outF)
        let bound = 1 / Float(inF).squareRoot()
        weight = store.add(prefix + ".weight", shape: [outF, inF], initializer: .uniform(bound))
        bias = store.add(prefix + ".bias", shape: [outF], initializer: .uniform(bound))
    }

    /// x (N, in) -> (N, out). x must stay unchanged until `backward`.
    public func forward(_ x: UnsafePointer<Float>, batch: Int) -> UnsafeMutablePointer<Float> {
        (input, n) = (x, batch)
        let y = output.ensure(batch * outFeatures)
        BLAS.sgemm(transB: true, m: batch, n: outFeatures, k: inFeatures, a: x, lda: inFeatures,
                   b: store.value(weight), ldb: inFeatures, c: y, ldc: outFeatures)
        let b = store.value(bias)
        for i in 0..<batch { for j in 0..<outFeatures { y[i * outFeatures + j] += b[j] } }
        return y
    }

    /// dy (N, out) -> dx (N, in), accumulating dW and db.
    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        guard let x = input else { preconditionFailure("linear backward before forward") }
        BLAS.sgemm(transA: true, m: outFeatures, n: inFeatures, k: n, a: dy, lda: outFeatures, b: x, ldb: inFeatures,
                   beta: 1, c: store.grad(weight), ldc: inFeatures)
        let db = store.grad(bias)
        for i in 0..<n { for j in 0..<outFeatures { db[j] += dy[i * outFeatures + j] } }
        let dx = inputGradient.ensure(n * inFeatures)
        if needsInputGradient {
            BLAS.sgemm(m: n, n: inFeatures, k: outFeatures, a: dy, lda: outFeatures, b: store.value(weight), ldb: inFeatures,
                       c: dx, ldc: inFeatures)
        }
        return dx
    }
}

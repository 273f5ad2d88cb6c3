// The only file that imports COpenBLAS: single-precision GEMM and the BLAS thread count.
import COpenBLAS

public enum BLAS {
    /// Row-major C (M, N) = alpha * op(A) * op(B) + beta * C, with op = transpose when the flag is set.
    /// A is (M, K) or, transposed, (K, M); B is (K, N) or, transposed, (N, K). lda/ldb/ldc are row strides.
    @inline(__always)
    public static func sgemm(transA: Bool = false, transB: Bool = false,
                             m: Int, n: Int, k: Int, alpha: Float = 1,
                             a: UnsafePointer<Float>, lda: Int,
                             b: UnsafePointer<Float>, ldb: Int,
                             beta: Float = 0,
                             c: UnsafeMutablePointer<Float>, ldc: Int) {
        cblas_sgemm(CblasRowMajor,
                    transA ? CblasTrans : CblasNoTrans,
                    transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha,
                    a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// Threads OpenBLAS uses for one call. Process-wide: set it once at start-up, not per call.
    public static var threads: Int {
        get { Int(openblas_get_num_threads()) }
        set { openblas_set_num_threads(Int32(max(1, newValue))) }
    }
}

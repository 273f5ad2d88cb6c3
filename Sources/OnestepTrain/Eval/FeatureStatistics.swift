// Distances between two sets of feature vectors, in double precision:
//   FD   Frechet distance of Gaussians fitted to each set (Heusel et al. 2017, the FID formula; here in a small
//        classifier's features, so it is reported as FD-cls, never FID):
//        ||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2)
//        The square roots go through a cyclic Jacobi eigendecomposition of symmetric matrices (fine for d <= 128).
//   KID  squared MMD with the polynomial kernel k(x, y) = (x.y / d + 1)^3, unbiased estimator
//        (Binkowski et al. 2018): mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j)
// plus percentile-bootstrap intervals by resampling both sets with replacement.
//
// Legend: n, m set sizes, d feature dimension; features are row-major (n, d) Float.
import Foundation

public enum SymmetricEigen {
    /// Eigenvalues and eigenvectors (columns of `vectors`, row-major d x d) of a symmetric matrix a (d x d).
    public static func decompose(_ a: [Double], dimension d: Int, maxSweeps: Int = 60) -> (values: [Double], vectors: [Double]) {
        precondition(a.count == d * d, "matrix has \(a.count) values, expected \(d)x\(d)")
        var m = a
        var v = [Double](repeating: 0, count: d * d)
        for i in 0..<d { v[i * d + i] = 1 }
        var norm = 0.0
        for x in m { norm += x * x }
        let tol = 1e-26 * max(norm, 1e-300)
        for _ in 0..<maxSweeps {
            var off = 0.0
            for p in 0..<d { for q in (p + 1)..<max(p + 1, d) { off += m[p * d + q] * m[p * d + q] } }
            if off <= tol { break }
            for p in 0..<(d - 1) {
                for q in (p + 1)..<d {
                    let apq = m[p * d + q]
                    if abs(apq) < 1e-300 { continue }
                    let app = m[p * d + p], aqq = m[q * d + q]
                    let theta = (aqq - app) / (2 * apq)
                    let t = (theta >= 0 ? 1 : -1) / (abs(theta) + (theta * theta + 1).squareRoot())
                    let c = 1 / (t * t + 1).squareRoot(), s = t * c
                    for k in 0..<d {
                        let mkp = m[k * d + p], mkq = m[k * d + q]
                        m[k * d + p] = c * mkp - s * mkq
                        m[k * d + q] = s * mkp + c * mkq
                    }
                    for k in 0..<d {
                        let mpk = m[p * d + k], mqk = m[q * d + k]
                        m[p * d + k] = c * mpk - s * mqk
                        m[q * d + k] = s * mpk + c * mqk
                    }
                    for k in 0..<d {
                        let vkp = v[k * d + p], vkq = v[k * d + q]
                        v[k * d + p] = c * vkp - s * vkq
                        v[k * d + q] = s * vkp + c * vkq
                    }
                }
            }
        }
        return ((0..<d).map { m[$0 * d + $0] }, v)
    }

    /// The symmetric positive semi-definite square root (negative eigenvalues from rounding are clamped to 0).
    public static func sqrtPSD(_ a: [Double], dimension d: Int) -> [Double] {
        let (w, v) = decompose(a, dimension: d)
        let r = w.map { max($0, 0).squareRoot() }
        var out = [Double](repeating: 0, count: d * d)
        for i in 0..<d { for j in 0..<d {
            var s = 0.0
            for k in 0..<d { s += v[i * d + k] * r[k] * v[j * d + k] }
            out[i * d + j] = s
        } }
        return out
    }
}

public struct GaussianFit: Sendable {
    public var mean: [Double]       // (d)
    public var covariance: [Double] // (d, d), unbiased (n - 1)
    public var dimension: Int

    public init(mean: [Double], covariance: [Double]) {
        precondition(covariance.count == mean.count * mean.count, "covariance must be d x d")
        (self.mean, self.covariance, dimension) = (mean, covariance, mean.count)
    }

    /// Fits rows `rows` (default all) of features (n, d).
    public init(_ f: [Float], dimension d: Int, rows: [Int]? = nil) {
        let idx = rows ?? Array(0..<(f.count / d))
        let n = idx.count
        var mu = [Double](repeating: 0, count: d)
        for i in idx { for k in 0..<d { mu[k] += Double(f[i * d + k]) } }
        for k in 0..<d { mu[k] /= Double(max(n, 1)) }
        var c = [Double](repeating: 0, count: d * d)
        var x = [Double](repeating: 0, count: d)
        for i in idx {
            for k in 0..<d { x[k] = Double(f[i * d + k]) - mu[k] }
            for a in 0..<d { let xa = x[a]; for b in a..<d { c[a * d + b] += xa * x[b] } }
        }
        let denom = Double(max(n - 1, 1))
        for a in 0..<d { for b in a..<d { c[a * d + b] /= denom; c[b * d + a] = c[a * d + b] } }
        (mean, covariance, dimension) = (mu, c, d)
    }
}

public enum FeatureDistance {
    /// Frechet distance between two Gaussian fits.
    public static func frechet(_ a: GaussianFit, _ b: GaussianFit) -> Double {
        let d = a.dimension
        precondition(b.dimension == d, "feature dimensions differ")
        var dm = 0.0
        for k in 0..<d { let t = a.mean[k] - b.mean[k]; dm += t * t }
        let s = SymmetricEigen.sqrtPSD(a.covariance, dimension: d)
        // M = S C2 S (symmetric PSD); tr sqrt(C1 C2) = tr sqrt(M) = sum sqrt(eig(M)).
        var sc = [Double](repeating: 0, count: d * d), m = [Double](repeating: 0, count: d * d)
        for i in 0..<d { for j in 0..<d { var t = 0.0; for k in 0..<d { t += s[i * d + k] * b.covariance[k * d + j] }; sc[i * d + j] = t } }
        for i in 0..<d { for j in i..<d { var t = 0.0; for k in 0..<d { t += sc[i * d + k] * s[k * d + j] }; m[i * d + j] = t; m[j * d + i] = t } }
        let traceSqrt = SymmetricEigen.decompose(m, dimension: d).values.reduce(0) { $0 + max($1, 0).squareRoot() }
        var tr = 0.0
        for k in 0..<d { tr += a.covariance[k * d + k] + b.covariance[k * d + k] }
        return max(dm + tr - 2 * traceSqrt, 0)
    }

    public static func frechet(_ x: [Float], _ y: [Float], dimension d: Int) -> Double {
        frechet(GaussianFit(x, dimension: d), GaussianFit(y, dimension: d))
    }

    /// Kernel matrix k(a_i, b_j) = (a_i.b_j / d + 1)^3, (na, nb) row-major.
    public static func polynomialKernel(_ a: [Float], _ b: [Float], dimension d: Int) -> [Double] {
        let na = a.count / d, nb = b.count / d
        var k = [Double](repeating: 0, count: na * nb)
        for i in 0..<na { for j in 0..<nb {
            var s = 0.0
            for t in 0..<d { s += Double(a[i * d + t]) * Double(b[j * d + t]) }
            let u = s / Double(d) + 1
            k[i * nb + j] = u * u * u
        } }
        return k
    }

    /// Unbiased MMD^2 from kernel matrices, over index lists into x (rows of kxx) and y (rows of kyy).
    public static func kid(kxx: [Double], kyy: [Double], kxy: [Double], nx: Int, ny: Int, xi: [Int], yi: [Int]) -> Double {
        let m = xi.count, n = yi.count
        var sxx = 0.0, syy = 0.0, sxy = 0.0
        for (p, a) in xi.enumerated() { for (q, b) in xi.enumerated() where p != q { sxx += kxx[a * nx + b] } }
        for (p, a) in yi.enumerated() { for (q, b) in yi.enumerated() where p != q { syy += kyy[a * ny + b] } }
        for a in xi { for b in yi { sxy += kxy[a * ny + b] } }
        return sxx / Double(m * (m - 1)) + syy / Double(n * (n - 1)) - 2 * sxy / Double(m * n)
    }

    public static func kid(_ x: [Float], _ y: [Float], dimension d: Int) -> Double {
        let nx = x.count / d, ny = y.count / d
        return kid(kxx: polynomialKernel(x, x, dimension: d), kyy: polynomialKernel(y, y, dimension: d),
                   kxy: polynomialKernel(x, y, dimension: d), nx: nx, ny: ny, xi: Array(0..<nx), yi: Array(0..<ny))
    }
}

/// A point estimate with a percentile-bootstrap 95% interval.
public struct Estimate: Sendable {
    public var value: Double
    public var low: Double
    public var high: Double

    static func from(_ value: Double, samples: [Double]) -> Estimate {
        let s = samples.sorted()
        guard !s.isEmpty else { return Estimate(value: value, low: value, high: value) }
        func q(_ p: Double) -> Double { s[min(s.count - 1, max(0, Int((p * Double(s.count - 1)).rounded())))] }
        return Estimate(value: value, low: q(0.025), high: q(0.975))
    }
}

public enum FeatureBootstrap {
    /// FD and KID of generated features x against reference features y, each with a bootstrap interval
    /// over `resamples` joint resamplings (with replacement) of both sets.
    public static func distances(_ x: [Float], _ y: [Float], dimension d: Int, resamples: Int, seed: UInt64) -> (fd: Estimate, kid: Estimate) {
        let nx = x.count / d, ny = y.count / d
        let fd = FeatureDistance.frechet(x, y, dimension: d)
        let kxx = FeatureDistance.polynomialKernel(x, x, dimension: d), kyy = FeatureDistance.polynomialKernel(y, y, dimension: d)
        let kxy = FeatureDistance.polynomialKernel(x, y, dimension: d)
        let kid = FeatureDistance.kid(kxx: kxx, kyy: kyy, kxy: kxy, nx: nx, ny: ny, xi: Array(0..<nx), yi: Array(0..<ny))
        var rng = TrainRandom(seed: seed)
        var fds: [Double] = [], kids: [Double] = []
        for _ in 0..<resamples {
            let xi = (0..<nx).map { _ in rng.int(nx) }, yi = (0..<ny).map { _ in rng.int(ny) }
            fds.append(FeatureDistance.frechet(GaussianFit(x, dimension: d, rows: xi), GaussianFit(y, dimension: d, rows: yi)))
            kids.append(FeatureDistance.kid(kxx: kxx, kyy: kyy, kxy: kxy, nx: nx, ny: ny, xi: xi, yi: yi))
        }
        return (Estimate.from(fd, samples: fds), Estimate.from(kid, samples: kids))
    }

    /// Fraction of true flags with a bootstrap interval.
    public static func proportion(_ hits: [Bool], resamples: Int, seed: UInt64) -> Estimate {
        let n = hits.count
        guard n > 0 else { return Estimate(value: 0, low: 0, high: 0) }
        let p = Double(hits.filter { $0 }.count) / Double(n)
        var rng = TrainRandom(seed: seed)
        let samples = (0..<resamples).map { _ in Double((0..<n).reduce(0) { a, _ in a + (hits[rng.int(n)] ? 1 : 0) }) / Double(n) }
        return Estimate.from(p, samples: samples)
    }
}

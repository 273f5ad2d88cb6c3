// The consistency-model output parameterization and the distance it is trained with.
//
// Student (matches diffusers CMStochasticIterativeScheduler.get_scalings_for_boundary_condition, Song et al.
// 2023 appendix C):
//   f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; 250 ln sigma)
//   c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),  c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2),
//   c_in = 1 / sqrt(sigma^2 + sd^2)
// so f(x, sigma_min) = x exactly (the boundary condition). The EDM teacher has the same c_in and c_noise and
// c_skip/c_out without the sigma_min shift, so a student initialised from the teacher's F starts close to it.
//
// Distance: the pseudo-Huber metric of iCT (Song & Dhariwal 2023, §3.3), per image of d = C*H*W values,
//   d(a, b) = sqrt(||a - b||^2 + c^2) - c,   c = 0.00054 sqrt(d),
//   dd/da = (a - b) / sqrt(||a - b||^2 + c^2).
import Foundation
import OnestepCore

public enum ConsistencyParameterization {
    /// Boundary-condition scalings at one sigma, in double precision (OnestepCore's Preconditioning, shared with
    /// the samplers).
    public static func scalings(sigma: Double, sigmaMin: Double, sigmaData sd: Double) -> (cSkip: Double, cOut: Double, cIn: Double, cNoise: Double) {
        let s = Preconditioning.consistency(sigma: sigma, sigmaMin: sigmaMin, sigmaData: sd)
        return (s.cSkip, s.cOut, s.cIn, s.cNoise)
    }
}

public enum PseudoHuber {
    /// iCT's c for images of `dimension` values.
    public static func constant(dimension d: Int) -> Double { 0.00054 * Double(d).squareRoot() }

    /// d(a, b) for one image, and writes dd/da * `gradScale` into `grad` (count values each).
    @inline(__always)
    public static func lossAndGradient(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int, c: Double,
                                       gradScale: Float, grad: UnsafeMutablePointer<Float>) -> Double {
        var sq = 0.0
        for j in 0..<count { let d = Double(a[j] - b[j]); sq += d * d }
        let root = (sq + c * c).squareRoot()
        let g = gradScale / Float(root)
        for j in 0..<count { grad[j] = g * (a[j] - b[j]) }
        return root - c
    }
}

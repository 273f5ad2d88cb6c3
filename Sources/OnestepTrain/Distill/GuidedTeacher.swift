// Classifier-free guidance of a class-conditional teacher denoiser (Ho & Salimans 2022, "Classifier-Free Diffusion
// Guidance", eq. 6 in denoiser form): with the null label n (UNetConfig.nullClassLabel, the embedding table's last
// row; the teacher was trained with label dropout to it)
//   D_w(x; sigma, y) = D(x; sigma, n) + w (D(x; sigma, y) - D(x; sigma, n))
// from one forward of 2B images (B with the null label, then the B labels). For D = c_skip x + c_out F this is
// c_skip x + c_out (F_n + w (F_y - F_n)): the same as guiding the network output (eps or v) as diffusers' pipelines
// do, since both branches share x and sigma. w = 1 is the conditional teacher, w = 0 the unconditional one.
//
// Distillation methods call the teacher through TeacherDenoiser.denoise, so guided distillation (the teacher's
// guided ODE as the target, as LCM and DMD2 do) needs nothing else: the student bakes guidance in and serves with
// one forward and no null label. ECT makes no teacher calls, so guidance does not reach it.
//
// Legend: B batch, P = C*S*S values per image.
import Foundation
import OnestepCore

public struct GuidedTeacher: TeacherDenoiser {
    public let inner: any TeacherDenoiser
    /// The guidance scale w (diffusers' guidance_scale).
    public let scale: Double
    /// The unconditional label (num_class_embeds - 1).
    public let nullLabel: Int

    /// - Throws: ModelLoadError (GuidanceLimits.check) when the teacher's UNet has no null label (unconditional, or
    ///   trained without label dropout) or `scale` is not finite in 0...GuidanceLimits.maxScale.
    public init(_ inner: any TeacherDenoiser, scale: Double) throws {
        try GuidanceLimits.check(scale: scale, config: inner.model.config, what: "--teacher-guidance: the teacher")
        (self.inner, self.scale, self.nullLabel) = (inner, scale, inner.model.config.nullClassLabel!)
    }

    public var model: UNet2DModel { inner.model }
    public var sigmaRange: ClosedRange<Double> { inner.sigmaRange }
    public var description: String {
        inner.description + String(format: ", classifier-free guidance %g (null label %d)", scale, nullLabel)
    }
    /// The teacher's own parameterisation (a fake score network initialised from the teacher learns the unguided
    /// form; only the teacher's score is guided, as in DMD2).
    public func preconditioning(sigma: Double) -> TeacherScalings { inner.preconditioning(sigma: sigma) }

    /// D_w(x_i; sigma_i, y_i) for x (B, P) into out (B, P). `labels` are required (a guided teacher is conditional)
    /// and must be real classes (below the null label).
    public func denoise(_ x: UnsafePointer<Float>, sigmas: [Double], labels: [Int]?, into out: UnsafeMutablePointer<Float>) {
        guard let labels else { preconditionFailure("a guided teacher needs class labels") }
        precondition(labels.allSatisfy { $0 >= 0 && $0 < nullLabel }, "class label out of 0..<\(nullLabel) given to a guided teacher")
        let b = sigmas.count, cfg = model.config, per = cfg.inChannels * cfg.sampleSize * cfg.sampleSize
        let both = UnsafeMutablePointer<Float>.allocate(capacity: 2 * b * per)  // (2B, P): x twice
        let d = UnsafeMutablePointer<Float>.allocate(capacity: 2 * b * per)     // (2B, P): D_null, then D_label
        defer { both.deallocate(); d.deallocate() }
        both.update(from: x, count: b * per)
        (both + b * per).update(from: x, count: b * per)
        inner.denoise(both, sigmas: sigmas + sigmas, labels: Array(repeating: nullLabel, count: b) + labels, into: d)
        let w = Float(scale)
        for j in 0..<(b * per) {
            let u = d[j], c = d[b * per + j]
            out[j] = u + w * (c - u)
        }
    }
}

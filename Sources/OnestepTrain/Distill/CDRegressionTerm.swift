// The regression term of consistency distillation on cached teacher pairs: DMD's "regression loss" (Yin et al.
// 2024, eq. 6: a paired (noise, teacher ODE sample) loss beside the main objective; DMD2 calls it optional), here
// beside CD's consistency loss. Per step, besides CD's B images:
//   (z_i, y_i) for R pair indices i drawn after CD's noise     y_i: the (guided) teacher's Heun sample from sigma_max z_i
//   loss += lambda / R sum_i pseudo-Huber(f_theta(sigma_max z_i, sigma_max), y_i)       (CD's c, its c_out scaling)
// CD alone reaches sigma_max only through N - 1 chained targets of an averaged network, so the one-step map (and
// the guidance shift it must absorb) is learned last; the pairs supervise that map directly. The pairs are those
// of the regression student (TeacherPairs, RegressionDistillation.swift), made by the same (guided) teacher.
//
// Legend: R pairs per step, P = C*S*S values per image.
import Foundation
import OnestepCore

enum CDRegressionTerm {
    /// The pairs must fit the images and the consistency form (their noise is scaled by the form's sigma_max).
    static func check(pairs: TeacherPairs?, settings: DistillSettings, per: Int) throws {
        guard let p = pairs else { throw DataError("the regression term (weight \(settings.regressionWeight)) needs teacher pairs") }
        guard p.per == per else { throw DataError("the pairs have \(p.per) values per image, the data \(per)") }
        guard settings.lcmForm == nil else { throw DataError("the regression term is for students in the consistency form (an Onestep EDM teacher)") }
        guard settings.regressionBatch > 0 else { throw DataError("the regression term needs a positive pair batch") }
    }

    /// Recorded only when the term is on, so plain CD runs record what they always did.
    static func runSettings(_ s: DistillSettings, pairs: TeacherPairs?) -> RunSettings {
        guard let p = pairs else { return RunSettings() }
        return RunSettings(["regression-weight": RunSettings.text(s.regressionWeight), "regression-batch": String(s.regressionBatch),
                            "pairs": String(p.count)])
    }
}

extension ConsistencyDistillationLoss {
    /// Pairs `indices` on worker w after its CD chunk: forward at sigma_max, pseudo-Huber against the teacher samples,
    /// backward (adding into the gradients CD left). Returns the chunk's share of the term, lambda / R times its summed
    /// pseudo-Huber loss (the function whose gradient it adds).
    func regressionChunk(_ w: Worker, indices: ArraySlice<Int>, batch r: Int, per: Int, c: Double) -> Double {
        guard let pairs, !indices.isEmpty else { return 0 }
        let m = indices.count, sigma = karras[0], form = settings.parameterization
        // CD is done with these buffers: the Heun result becomes the input, the target output the teacher sample.
        let x = w.heun.ensure(m * per), y = w.targetOut.ensure(m * per)
        for (row, i) in indices.enumerated() {
            for j in 0..<per {
                x[row * per + j] = Float(sigma) * pairs.noise[i * per + j]
                y[row * per + j] = pairs.samples[i * per + j]
            }
        }
        let labels = pairs.labels.map { l in indices.map { l[$0] } }
        let out = w.studentOut.ensure(m * per), g = w.grad.ensure(m * per)
        studentOutput(w.student, x, sigmas: Array(repeating: sigma, count: m), labels: labels, form: form, scratch: w.scratch, into: out)
        let cOut = Float(form.scalings(sigma: sigma).cOut), scale = settings.regressionWeight / Float(r)
        var loss = 0.0
        for row in 0..<m {
            loss += PseudoHuber.lossAndGradient(out + row * per, y + row * per, count: per, c: c, gradScale: scale * cOut, grad: g + row * per)
        }
        w.student.backward(g)
        return loss * Double(scale)
    }
}

import CommandLineKit
import Foundation
import OnestepCore
import OnestepTrain

let evalCommand = Subcommand("eval", summary: "FD-cls, KID and conditional accuracy of models against held-out data", flags: [
    FlagSpec("model", "[NAME=]DIR[:STEPS][@SCHEDULER][,guidance=W]; repeat for several models (STEPS: consistency steps, Heun sigmas of an EDM teacher, or the scheduler's steps; @SCHEDULER samples the folder's network with that diffusers scheduler class made from its scheduler config, e.g. teacher=models/shapes16-ddpm:35@DDIMScheduler; W: classifier-free guidance scale of a model with a null label, e.g. teacher-w3=models/shapes16-ddpm:35@DDIMScheduler,guidance=3)"),
    FlagSpec("data", "labelled image folder (class sub-folders); the classifier is trained on it once and cached there"),
    FlagSpec("out", "folder for eval.md and one grid-NAME.png per model", default: "eval"),
    FlagSpec("samples", "generated images per model (and held-out real images per reference set)", default: "1000"),
    FlagSpec("resamples", "bootstrap resamples for the 95% intervals", default: "200"),
    FlagSpec("classifier-steps", "training steps of the feature classifier", default: "1500"),
    FlagSpec("workers", "generation threads", default: "2"),
    FlagSpec("threads", "OpenBLAS threads per worker", default: "1"),
], run: runEval)

func runEval(_ flags: ParsedFlags) throws {
    let specs = try flags.all("model").map { try EvalSpec(parsing: $0) }
    guard !specs.isEmpty else { throw FlagError("--model is required: \(evalCommand.flags[0].help)") }
    let data = try flags.required("data"), out = try flags.required("out")
    var s = EvalSettings()
    s.samples = try flags.requiredInt("samples", 16...1_000_000)
    s.resamples = try flags.requiredInt("resamples", 0...100_000)
    s.classifierSteps = try flags.requiredInt("classifier-steps", 1...1_000_000)
    s.workers = try flags.requiredInt("workers", 1...64)
    BLAS.threads = try flags.requiredInt("threads", 1...64)
    let result = try ModelEvaluation.run(specs: specs, dataDir: data, outDir: out, settings: s, log: stdoutLine)
    stdoutLine("\n" + result.markdown + "\nwritten to \(out)/eval.md with grid-NAME.png per model")
}

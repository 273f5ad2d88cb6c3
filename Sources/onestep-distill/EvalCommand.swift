import Foundation
import OnestepCore
import OnestepTrain

let evalCommand = Command(name: "eval", summary: "FD-cls, KID and conditional accuracy of models against held-out data", flags: [
    Flag(name: "model", help: "[NAME=]DIR[:STEPS]; repeat for several models (STEPS: consistency steps, or Heun sigmas of a teacher)"),
    Flag(name: "data", help: "labelled image folder (class sub-folders); the classifier is trained on it once and cached there"),
    Flag(name: "out", help: "folder for eval.md and one grid-NAME.png per model", defaultValue: "eval"),
    Flag(name: "samples", help: "generated images per model (and held-out real images per reference set)", defaultValue: "1000"),
    Flag(name: "resamples", help: "bootstrap resamples for the 95% intervals", defaultValue: "200"),
    Flag(name: "classifier-steps", help: "training steps of the feature classifier", defaultValue: "1500"),
    Flag(name: "workers", help: "generation threads", defaultValue: "2"),
    Flag(name: "threads", help: "OpenBLAS threads per worker", defaultValue: "1"),
])

/// Every value of a flag that may be repeated. Command.parse keeps only the last, so the raw arguments are
/// scanned again here.
func repeatedValues(_ name: String, in args: [String]) -> [String] {
    var out: [String] = []
    var i = 0
    while i < args.count {
        if args[i] == "--" + name, i + 1 < args.count { out.append(args[i + 1]); i += 2; continue }
        if args[i].hasPrefix("--" + name + "=") { out.append(String(args[i].dropFirst(name.count + 3))) }
        i += 1
    }
    return out
}

func runEval(_ flags: Flags) throws {
    let specs = try repeatedValues("model", in: Array(CommandLine.arguments.dropFirst(2))).map { try EvalSpec(parsing: $0) }
    guard !specs.isEmpty else { throw UsageError("--model is required: \(evalCommand.flags[0].help)") }
    let data = try flags.required("data"), out = try flags.required("out")
    var s = EvalSettings()
    s.samples = try flags.int("samples", 16...1_000_000)
    s.resamples = try flags.int("resamples", 0...100_000)
    s.classifierSteps = try flags.int("classifier-steps", 1...1_000_000)
    s.workers = try flags.int("workers", 1...64)
    BLAS.threads = try flags.int("threads", 1...64)
    let result = try ModelEvaluation.run(specs: specs, dataDir: data, outDir: out, settings: s, log: stdoutLine)
    stdoutLine("\n" + result.markdown + "\nwritten to \(out)/eval.md with grid-NAME.png per model")
}

import CommandLineKit
import Foundation
import OnestepCore
import OnestepTrain

let quantizeCommand = Subcommand("quantize", summary: "write the int8 per-channel form of a model, with its error report", flags: [
    FlagSpec("model", "float model directory (a student run)"),
    FlagSpec("out", "output model directory, e.g. models/NAME"),
    FlagSpec("threads", "OpenBLAS threads", default: "1"),
], run: runQuantize)

func runQuantize(_ flags: ParsedFlags) throws {
    let model = try flags.required("model"), out = try flags.required("out")
    BLAS.threads = try flags.requiredInt("threads", 1...64)
    let report = try StudentQuantization.run(model: model, out: out)
    stdoutLine(report.text + "report written to \(out)/\(StudentQuantization.reportFile)")
}

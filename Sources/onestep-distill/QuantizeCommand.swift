import Foundation
import OnestepCore
import OnestepTrain

let quantizeCommand = Command(name: "quantize", summary: "write the int8 per-channel form of a model, with its error report", flags: [
    Flag(name: "model", help: "float model directory (a student run)"),
    Flag(name: "out", help: "output model directory, e.g. models/NAME"),
    Flag(name: "threads", help: "OpenBLAS threads", defaultValue: "1"),
])

func runQuantize(_ flags: Flags) throws {
    let model = try flags.required("model"), out = try flags.required("out")
    BLAS.threads = try flags.int("threads", 1...64)
    let report = try StudentQuantization.run(model: model, out: out)
    stdoutLine(report.text + "report written to \(out)/\(StudentQuantization.reportFile)")
}

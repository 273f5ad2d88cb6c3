import Foundation
import OnestepCore
import OnestepTrain

let pipelineCommand = Command(name: "pipeline", summary: "data -> teacher -> student -> small student -> quantize -> eval, resumable", flags: [
    Flag(name: "out", help: "run folder (stages already finished there are skipped)"),
    Flag(name: "quick", help: "tiny settings for every stage (~2 minutes; what the tests run)", isSwitch: true),
    Flag(name: "threads", help: "OpenBLAS threads per worker", defaultValue: "1"),
    Flag(name: "checkpoint-every", help: "steps between checkpoints in every training stage (default: each stage's own)"),
    Flag(name: "log-every", help: "steps between progress lines in every training stage (default: each stage's own)"),
])

func runPipeline(_ flags: Flags) throws {
    let out = try flags.required("out")
    BLAS.threads = try flags.int("threads", 1...64)
    installInterruptHandler()
    var settings = flags.isSet("quick") ? PipelineSettings.quick : PipelineSettings()
    if flags.given("checkpoint-every") { settings.setCheckpointInterval(try flags.int("checkpoint-every", 1...10_000_000)) }
    if flags.given("log-every") { settings.setLogInterval(try flags.int("log-every", 1...1_000_000)) }
    let p = try DistillPipeline(dir: out, settings: settings, shouldStop: { interruptRequested != 0 }, log: stdoutLine)
    guard try p.run() != nil || FileManager.default.fileExists(atPath: out + "/report.md") else { return }
    if let report = try? String(contentsOfFile: out + "/report.md", encoding: .utf8) { stdoutLine("\n" + report) }
}

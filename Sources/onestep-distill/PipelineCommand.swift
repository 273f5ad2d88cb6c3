import CommandLineKit
import Foundation
import OnestepCore
import OnestepTrain

let pipelineCommand = Subcommand("pipeline", summary: "data -> teacher -> student -> small student -> quantize -> eval, resumable", flags: [
    FlagSpec("out", "run folder (stages already finished there are skipped)"),
    FlagSpec("quick", "tiny settings for every stage (~2 minutes; what the tests run)", isSwitch: true),
    FlagSpec("force", "use an --out whose pipeline.json records other settings (its finished stages are kept as they are)", isSwitch: true),
    FlagSpec("threads", "OpenBLAS threads per worker", default: "1"),
    FlagSpec("checkpoint-every", "steps between checkpoints in every training stage (default: each stage's own)"),
    FlagSpec("log-every", "steps between progress lines in every training stage (default: each stage's own)"),
    FlagSpec("teacher-label-dropout", "train the teacher with this label dropout to a null label (classifier-free guidance; default 0.15, --quick 0)"),
    FlagSpec("guidance", "classifier-free guidance scale the students distil and an extra teacher eval row samples, or 'none' (default 3 when the teacher has a null label, --quick none; needs --teacher-label-dropout > 0)"),
    FlagSpec("cd-regression-weight", "weight of the CD student's regression term on the guided teacher's cached (noise, sample) pairs (the small student's pairs, made before the student stage); 0: plain CD (default 0)"),
], run: runPipeline)

func runPipeline(_ flags: ParsedFlags) throws {
    let out = try flags.required("out")
    BLAS.threads = try flags.requiredInt("threads", 1...64)
    installInterruptHandler()
    var settings = flags.isSet("quick") ? PipelineSettings.quick : PipelineSettings()
    if flags.has("checkpoint-every") { settings.setCheckpointInterval(try flags.requiredInt("checkpoint-every", 1...10_000_000)) }
    if flags.has("log-every") { settings.setLogInterval(try flags.requiredInt("log-every", 1...1_000_000)) }
    if let p = try flags.double("teacher-label-dropout", range: 0...0.9) { settings.teacher.labelDropout = p }
    if let w = try flags.double("cd-regression-weight", range: 0...1000) { settings.distill.regressionWeight = Float(w) }
    if flags.string("guidance") == "none" {
        settings.guidance = nil
    } else if let w = try flags.double("guidance", range: 0...GuidanceLimits.maxScale) {
        guard settings.teacher.labelDropout > 0 else {
            throw FlagError("--guidance \(w) needs a teacher with a null label: add --teacher-label-dropout (e.g. 0.15)")
        }
        settings.guidance = w
    } else if settings.teacher.labelDropout == 0 {
        settings.guidance = nil  // the default guidance needs the default null label: none without it
    }
    let p = try DistillPipeline(dir: out, settings: settings, force: flags.isSet("force"), shouldStop: { interruptRequested != 0 }, log: stdoutLine)
    guard try p.run() != nil || FileManager.default.fileExists(atPath: out + "/report.md") else { return }
    if let report = try? String(contentsOfFile: out + "/report.md", encoding: .utf8) { stdoutLine("\n" + report) }
    if settings.isQuick { stdoutLine(PipelineSettings.quickWarning) }
    let label = (try? UNetConfig.load(path: out + "/student/config.json"))?.classNames?.first.map { " --label \($0)" } ?? ""
    stdoutLine("""

    serve the student and the other models of the run:  onestep-serve --models \(out) --port 8080
    sample it:  onestep-serve generate --model \(out)/student --seed 0\(label) --n 8 --scale 4 --out samples.png
    one row per class:  onestep-serve generate --model \(out)/student-int8 --per-class --n 8 --scale 4 --out grid.png
    """)
}

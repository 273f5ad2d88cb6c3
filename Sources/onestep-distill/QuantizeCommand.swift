import CommandLineKit
import Foundation
import OnestepCore
import OnestepTrain

// The SD-family path (LatentQuantizer) is OnestepCore only: `onestep-serve quantize` runs the same code without
// linking any training code; this command keeps the offline tool's flags for it.
let quantizeCommand = Subcommand("quantize", summary: "write the int8 per-channel form of a model, with its error report", flags: [
    FlagSpec("model", "float model directory: a student run (pixel UNet2DModel) or a diffusers text-to-image folder (model_index.json)"),
    FlagSpec("out", "output model directory, e.g. models/NAME (text-to-image: must not exist yet)"),
    FlagSpec("threads", "OpenBLAS threads", default: "1"),
    FlagSpec("components", "text-to-image only: comma-separated parts to write int8, of unet, vae, text_encoder", default: "unet,vae,text_encoder"),
    FlagSpec("max-weight-error", "text-to-image only: a layer whose weight relative L2 error after int8 exceeds this stays fp32",
             default: String(LatentInt8.defaultMaxWeightError)),
    FlagSpec("steps", "text-to-image only: steps of the int8-vs-fp32 images of the report", default: "1"),
], run: runQuantize)

func runQuantize(_ flags: ParsedFlags) throws {
    let model = try flags.required("model"), out = try flags.required("out")
    BLAS.threads = try flags.requiredInt("threads", 1...64)
    if FileManager.default.fileExists(atPath: model + "/model_index.json") {
        let parts = try LatentQuantizer.Part.list(flags.string("components") ?? "unet,vae,text_encoder")
        let maxError = try flags.double("max-weight-error", range: 0...1) ?? LatentInt8.defaultMaxWeightError
        let steps = try flags.requiredInt("steps", 1...50)
        let report = try LatentQuantizer.quantizePipeline(source: model, destination: out, parts: parts,
                                                          maxWeightError: maxError, steps: steps)
        stdoutLine(report.text + "report written to \(out)/\(LatentQuantizer.reportFile)")
        return
    }
    let report = try StudentQuantization.run(model: model, out: out)
    stdoutLine(report.text + "report written to \(out)/\(StudentQuantization.reportFile)")
}

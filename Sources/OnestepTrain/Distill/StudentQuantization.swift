// `quantize`: OnestepCore's int8 per-output-channel format for a trained student, plus a written report
// (per-layer weight error, int8-vs-float PSNR of images on fixed seeds) kept beside the weights, and the int8
// model's one-step sample grid (samples.png: one row per class, seeds 0-7).
import Foundation
import OnestepCore

public enum StudentQuantization {
    public static let reportFile = "quantization.txt"

    public static func run(model: String, out: String) throws -> QuantizationReport {
        let report = try Quantizer.quantizeDirectory(source: model, destination: out)
        try AtomicFile.write("int8 per-output-channel symmetric quantization of \(URL(fileURLWithPath: model).lastPathComponent)\n" + report.text,
                             to: out + "/" + reportFile)
        let int8 = try ImagePipeline.load(path: out)
        try ModelEvaluation.writeGrid(int8, steps: 1, classes: int8.numClasses ?? 8, columns: 8, to: out + "/samples.png",
                                      title: "\(URL(fileURLWithPath: out).lastPathComponent) (int8), 1 step")
        return report
    }
}

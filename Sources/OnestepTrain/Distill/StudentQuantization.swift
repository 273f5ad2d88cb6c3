// `quantize`: OnestepCore's int8 per-output-channel format for a trained student, plus a written report
// (per-layer weight error, int8-vs-float PSNR of images on fixed seeds) kept beside the weights.
import Foundation
import OnestepCore

public enum StudentQuantization {
    public static let reportFile = "quantization.txt"

    public static func run(model: String, out: String) throws -> QuantizationReport {
        let report = try Quantizer.quantizeDirectory(source: model, destination: out)
        try AtomicFile.write("int8 per-output-channel symmetric quantization of \(URL(fileURLWithPath: model).lastPathComponent)\n" + report.text,
                             to: out + "/" + reportFile)
        return report
    }
}

// Writes the int8 form of a float model directory and measures what quantization costs: per-tensor weight error,
// and the relative error and PSNR of generated images against the float model on fixed seeds.
import Foundation

public struct QuantizationReport: Sendable {
    public var tensorErrors: [(name: String, relativeL2: Double)]
    public var imageRelativeL2: Double
    public var psnr: Double  // dB, on uint8 images
    public var seeds: [UInt64]

    public var text: String {
        var s = "per-tensor weight relative L2 error (int8 per output channel):\n"
        for (n, e) in tensorErrors.sorted(by: { $0.relativeL2 > $1.relativeL2 }) {
            s += String(format: "  %-60@ %.5f\n", n as NSString, e)
        }
        s += String(format: "images on %d fixed seeds: relative L2 %.5f, PSNR %.2f dB (int8 vs float32)\n",
                    seeds.count, imageRelativeL2, psnr)
        return s
    }
}

public enum Quantizer {
    public static let reportSeeds: [UInt64] = Array(0..<16)

    /// Reads the float model at `source`, writes `destination` (config, scheduler config, int8 weights).
    public static func quantizeDirectory(source: String, destination: String,
                                         policy: Int8Policy = .innerConvolutions) throws -> QuantizationReport {
        let dir = try ModelDirectory(path: source)
        let float = try ImagePipeline.load(path: source)
        guard float.weightDType == "float32" else {
            throw ModelLoadError(path: source, problem: "is already quantized (int8 weights); pass the float32 model it was made from, e.g. RUN/student")
        }
        try FileManager.default.createDirectory(atPath: destination, withIntermediateDirectories: true)
        try AtomicFile.write(float.config.jsonString(), to: destination + "/config.json")
        if let sched = dir.schedulerConfigPath, let data = FileManager.default.contents(atPath: sched) {
            try AtomicFile.write([UInt8](data), to: destination + "/scheduler_config.json")
        }
        let errors = try Int8Weights.write(parameters: float.model.parameters, layers: float.model.plan.layers, policy: policy,
                                           to: destination + "/diffusion_pytorch_model.safetensors")
        let int8 = try ImagePipeline.load(path: destination)
        let (rel, psnr) = compare(float, int8, seeds: reportSeeds)
        return QuantizationReport(tensorErrors: errors.map { ($0.0, $0.1) }, imageRelativeL2: rel, psnr: psnr, seeds: reportSeeds)
    }

    /// Relative L2 of model-space images and PSNR of their uint8 forms, b against a.
    public static func compare(_ a: ImagePipeline, _ b: ImagePipeline, seeds: [UInt64]) -> (Double, Double) {
        // Classes cycle over the seeds so every class is covered.
        let reqs = seeds.enumerated().map { i, seed in GenerationRequest(seed: seed, label: a.numClasses.map { i % $0 }) }
        let steps = a.sampler.defaultSteps
        let x = a.generate(reqs, steps: steps), y = b.generate(reqs, steps: steps)
        let rel = TensorError.relativeL2(y.data, x.data)
        let px = ImageQuantizer.toUInt8(x), py = ImageQuantizer.toUInt8(y)
        var mse = 0.0
        for i in px.indices { let d = Double(px[i]) - Double(py[i]); mse += d * d }
        mse /= Double(px.count)
        let psnr = mse == 0 ? Double.infinity : 10 * Foundation.log10(255 * 255 / mse)
        return (rel, psnr)
    }
}

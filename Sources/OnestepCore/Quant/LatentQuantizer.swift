// `quantize` for a diffusers text-to-image folder (model_index.json): writes a copy whose unet/, decoder (vae/) and
// text_encoder/ weights are int8 where the per-layer error allows (LatentInt8.writeComponent), then measures what it
// cost: each component's output against fp32 on fixed inputs, and the pipeline's images against fp32 on fixed
// prompts and seeds (PSNR and mean / max absolute difference of the uint8 images).
import Foundation

/// What `LatentQuantizer.quantizePipeline` wrote and measured; saved as JSON beside the model.
public struct LatentQuantizationReport: Codable, Sendable {
    public struct Component: Codable, Sendable {
        public var folder: String           // "unet", "vae"
        public var className: String
        public var layers: [LatentInt8.LayerError]
        /// Relative L2 of the int8 component's output against fp32 on fixed random inputs.
        public var outputRelativeL2: Double
    }
    public struct Image: Codable, Sendable {
        public var prompt: String
        public var seed: UInt64
        public var steps: Int
        public var psnr: Double              // dB on the uint8 images (infinity when equal)
        public var meanAbsUInt8: Double      // mean |int8 - fp32| over all uint8 values
        public var maxAbsUInt8: Int
    }
    public var source: String
    public var destination: String
    public var maxWeightError: Double
    public var components: [Component]
    public var images: [Image]

    func pad(_ s: String, _ n: Int) -> String { s + String(repeating: " ", count: max(1, n - s.count)) }

    /// Table of every layer (worst first) and the component and image figures.
    public var text: String {
        var s = ""
        for c in components {
            let int8 = c.layers.filter(\.int8).count
            s += "\(c.folder) (\(c.className)): \(int8) of \(c.layers.count) candidate layers int8, the rest fp32 (weight error > \(maxWeightError))\n"
            s += "  " + pad("layer", 64) + pad("shape", 20) + "weight rel L2  stored\n"
            for l in c.layers.sorted(by: { $0.weightRelativeL2 > $1.weightRelativeL2 }) {
                let shape = l.shape.map(String.init).joined(separator: "x")
                let error = String(format: "%.5f", l.weightRelativeL2)
                s += "  " + pad(l.key, 64) + pad(shape, 20) + pad(error, 15) + (l.int8 ? "int8" : "fp32") + "\n"
            }
            s += String(format: "  %@ output relative L2 int8 vs fp32 (fixed random inputs): %.5f\n", c.folder, c.outputRelativeL2)
        }
        for i in images {
            s += String(format: "image '%@' seed %llu, %d step(s): PSNR %.2f dB, mean |diff| %.3f, max |diff| %d (uint8, int8 vs fp32)\n",
                        i.prompt, i.seed, i.steps, i.psnr, i.meanAbsUInt8, i.maxAbsUInt8)
        }
        return s
    }
}

public enum LatentQuantizer {
    public static let reportFile = "int8_report.json"
    public static let reportPrompts = ["a photograph of an astronaut riding a horse", "a red cube on a blue table, studio light"]
    public static let reportSeeds: [UInt64] = [0, 1]

    /// Which components get int8 weights.
    public enum Part: String, CaseIterable, Sendable {
        case unet, vae, textEncoder = "text_encoder"

        /// "unet,vae" -> the parts; throws naming an unknown or missing part (the commands' --components).
        public static func list(_ text: String) throws -> Set<Part> {
            var parts = Set<Part>()
            for name in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !name.isEmpty {
                guard let p = Part(rawValue: name) else {
                    throw ModelLoadError(path: "--components", problem: "names '\(name)'; give a comma-separated list of \(allCases.map(\.rawValue).joined(separator: ", "))")
                }
                parts.insert(p)
            }
            guard !parts.isEmpty else { throw ModelLoadError(path: "--components", problem: "is empty; name at least one of unet, vae, text_encoder") }
            return parts
        }
    }

    /// Writes `destination` (which must not exist yet): model_index.json and every component folder of `source`,
    /// with the weights of `parts` written int8 where each layer's weight error is at most `maxWeightError`;
    /// then loads both pipelines and measures the report (also saved as `destination/int8_report.json`).
    /// - Throws: ModelLoadError naming the file when `source` is not a loadable text-to-image folder, is already
    ///   int8, or `destination` exists.
    public static func quantizePipeline(source: String, destination: String, parts: Set<Part> = Set(Part.allCases),
                                        maxWeightError: Double = LatentInt8.defaultMaxWeightError,
                                        steps: Int = 1) throws -> LatentQuantizationReport {
        let fm = FileManager.default
        guard !fm.fileExists(atPath: destination) else {
            throw ModelLoadError(path: destination, problem: "already exists; give a new output folder (quantize does not overwrite)")
        }
        guard maxWeightError.isFinite, maxWeightError >= 0 else {
            throw ModelLoadError(path: source, problem: "max weight error \(maxWeightError) must be a finite number >= 0 (default \(LatentInt8.defaultMaxWeightError))")
        }
        let float = try TextToImagePipeline.load(path: source)   // refuses anything that would not serve
        let written = try writeInt8Folder(float, source: source, destination: destination, parts: parts, maxWeightError: maxWeightError)
        // A failure part-way (loading or measuring the written model) leaves no half-written model behind.
        var finished = false
        defer { if !finished { try? FileManager.default.removeItem(atPath: destination) } }
        let plans = written.plans, layers = written.layers
        let unetFolder = written.unetFolder, textFolder = written.textFolder
        let int8 = try TextToImagePipeline.load(path: destination)
        var components: [LatentQuantizationReport.Component] = []
        for (folder, (_, _, cls)) in plans.sorted(by: { $0.key > $1.key }) {
            let error = folder == unetFolder ? try unetError(float, int8)
                : folder == textFolder ? try textError(float, int8) : try decoderError(float, int8)
            components.append(.init(folder: folder, className: cls, layers: layers[folder] ?? [], outputRelativeL2: error))
        }
        var report = LatentQuantizationReport(source: source, destination: destination, maxWeightError: maxWeightError,
                                              components: components, images: [])
        report.images = try compareImages(float, int8, prompts: reportPrompts, seeds: reportSeeds, steps: steps)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        try AtomicFile.write([UInt8](try encoder.encode(report)), to: destination + "/" + reportFile)
        finished = true
        return report
    }

    /// What `writeInt8Folder` wrote: per component folder (weights file base name, candidates, class name) and
    /// the per-layer decisions.
    public struct WrittenFolder: Sendable {
        public var plans: [String: (String, [String: [Int]], String)]
        public var layers: [String: [LatentInt8.LayerError]]
        public var unetFolder: String, vaeFolder: String, textFolder: String
    }

    /// The file half of `quantizePipeline`, without its report: writes `destination` (must not exist) from `source`,
    /// whose fp32 pipeline `float` is already loaded, the weights of `parts` int8 where the per-layer error allows
    /// (LatentInt8.write). The bench uses it to run exactly what `quantize` writes. A failure part-way removes
    /// `destination`.
    /// - Throws: ModelLoadError naming the file when a weights file is unreadable or already int8.
    public static func writeInt8Folder(_ float: TextToImagePipeline, source: String, destination: String,
                                       parts: Set<Part> = Set(Part.allCases),
                                       maxWeightError: Double = LatentInt8.defaultMaxWeightError) throws -> WrittenFolder {
        let fm = FileManager.default
        guard !fm.fileExists(atPath: destination) else {
            throw ModelLoadError(path: destination, problem: "already exists; give a new output folder (quantize does not overwrite)")
        }
        let index = try ModelIndex(path: source + "/model_index.json")
        let unetFolder = index.component(.denoiser)!.folder, vaeFolder = index.component(.decoder)!.folder
        let textFolder = index.component(.textEncoder)!.folder
        // Folder -> (weights file base name, candidate key -> shape, class name).
        var plans: [String: (String, [String: [Int]], String)] = [:]
        func keyed(_ plan: LatentPlan) -> [String: [Int]] {
            Dictionary(LatentInt8.candidates(plan).map { ($0.key, $0.shape) }, uniquingKeysWith: { a, _ in a })
        }
        if parts.contains(.unet) { plans[unetFolder] = ("diffusion_pytorch_model", keyed(float.unet.plan), "UNet2DConditionModel") }
        if parts.contains(.vae) {
            switch float.decoder {
            case .kl(let d): plans[vaeFolder] = ("diffusion_pytorch_model", keyed(d.plan), "AutoencoderKL")
            case .tiny(let d): plans[vaeFolder] = ("diffusion_pytorch_model", keyed(d.plan), "AutoencoderTiny")
            }
        }
        if parts.contains(.textEncoder) {
            let file = try SafetensorsFile(path: source + "/" + textFolder + "/model.safetensors")
            plans[textFolder] = ("model", LatentInt8.textEncoderCandidates(file), "CLIPTextModel")
        }
        try fm.createDirectory(atPath: destination, withIntermediateDirectories: true)
        // A failure part-way leaves no half-written model behind (a server scanning the folder would refuse it).
        var finished = false
        defer { if !finished { try? fm.removeItem(atPath: destination) } }
        var layers: [String: [LatentInt8.LayerError]] = [:]
        for item in try fm.contentsOfDirectory(atPath: source).sorted() {
            let from = source + "/" + item, to = destination + "/" + item
            guard let (base, candidates, _) = plans[item] else { try fm.copyItem(atPath: from, toPath: to); continue }
            // A quantized component: its config and other small files as they are, one int8 weights file.
            let weights = base == "model" ? from + "/model.safetensors" : try ModelDirectory.weightsFile(in: from, base: base)
            try fm.createDirectory(atPath: to, withIntermediateDirectories: true)
            for f in try fm.contentsOfDirectory(atPath: from) where !f.hasSuffix(".safetensors") && !f.hasSuffix(".bin") {
                try fm.copyItem(atPath: from + "/" + f, toPath: to + "/" + f)
            }
            do {
                layers[item] = try LatentInt8.write(weights: weights, candidates: candidates, maxWeightError: maxWeightError,
                                                    to: to + "/" + base + ".safetensors")
            } catch let e as SafetensorsError {
                throw ModelLoadError(path: e.file, problem: "\(e.tensor.map { "tensor '\($0)' " } ?? "")\(e.problem)")
            }
        }
        finished = true
        return WrittenFolder(plans: plans, layers: layers, unetFolder: unetFolder, vaeFolder: vaeFolder, textFolder: textFolder)
    }

    /// UNet output of b against a on fixed inputs: 2 latents of the model's size, timesteps 999 and 500, the
    /// text embeddings of the report prompts (and LCM's guidance embedding when the config has one).
    static func unetError(_ a: TextToImagePipeline, _ b: TextToImagePipeline) throws -> Double {
        let s = a.latentSize, c = a.unet.config.inChannels
        var rng = TorchGenerator(seed: 7)
        let x = rng.randn(shape: [2, c, s, s])
        let ehs = try a.encode(reportPrompts)
        let cond = a.unet.config.timeCondProjDim.map { GuidanceEmbedding.embed([7.5, 7.5], dim: $0) }
        let ya = try a.unet.forward(x, timesteps: [999, 500], encoderHiddenStates: ehs, timestepCond: cond)
        let yb = try b.unet.forward(x, timesteps: [999, 500], encoderHiddenStates: ehs, timestepCond: cond)
        return TensorError.relativeL2(yb.data, ya.data)
    }

    /// Text embeddings (last_hidden_state) of the report prompts, b against a.
    static func textError(_ a: TextToImagePipeline, _ b: TextToImagePipeline) throws -> Double {
        TensorError.relativeL2(try b.encode(reportPrompts).data, try a.encode(reportPrompts).data)
    }

    /// Decoder output of b against a on 2 standard-normal latents (scaled as the pipeline scales them).
    static func decoderError(_ a: TextToImagePipeline, _ b: TextToImagePipeline) throws -> Double {
        let s = a.latentSize, c = a.decoder.latentChannels
        var rng = TorchGenerator(seed: 8)
        let z = rng.randn(shape: [2, c, s, s])
        return TensorError.relativeL2(try b.decoder.decodeScaled(z).data, try a.decoder.decodeScaled(z).data)
    }

    /// The pipelines' uint8 images for each (prompt, seed), b against a.
    public static func compareImages(_ a: TextToImagePipeline, _ b: TextToImagePipeline, prompts: [String], seeds: [UInt64],
                                     steps: Int) throws -> [LatentQuantizationReport.Image] {
        var out: [LatentQuantizationReport.Image] = []
        for p in prompts {
            for seed in seeds {
                let req = [TextGenerationRequest(prompt: p, seed: seed, guidanceScale: a.defaultGuidanceScale)]
                let ia = ImageQuantizer.toUInt8(try a.generate(req, steps: steps))
                let ib = ImageQuantizer.toUInt8(try b.generate(req, steps: steps))
                let d = ImageDifference(ia, ib)
                out.append(.init(prompt: p, seed: seed, steps: steps, psnr: d.psnr, meanAbsUInt8: d.meanAbs, maxAbsUInt8: d.maxAbs))
            }
        }
        return out
    }
}

/// Differences of two uint8 images of the same size.
public struct ImageDifference: Sendable {
    public var psnr: Double          // dB, 10 log10(255^2 / MSE); infinity when equal
    public var meanAbs: Double
    public var maxAbs: Int

    public init(_ a: [UInt8], _ b: [UInt8]) {
        precondition(a.count == b.count && !a.isEmpty, "image difference: \(a.count) vs \(b.count) values")
        var se = 0.0, sa = 0.0, m = 0
        for i in a.indices {
            let d = Int(a[i]) - Int(b[i])
            se += Double(d * d)
            sa += Double(abs(d))
            m = max(m, abs(d))
        }
        let mse = se / Double(a.count)
        psnr = mse == 0 ? .infinity : 10 * Foundation.log10(255 * 255 / mse)
        meanAbs = sa / Double(a.count)
        maxAbs = m
    }
}

// The offline subcommands of onestep-serve: generate, run-unet, bench, quantize.
import CommandLineKit
import Foundation
import OnestepCore
import PNGCodec

enum Commands {
    static let generate = Subcommand("generate", summary: "write images of a model to a PNG (several: tiled into a grid)",
                                     synopsis: "generate --model DIR --seed S [--label L] [--steps K] [-n N] [--scheduler CLASS] --out FILE.png\n       generate --model PIPELINE_DIR --prompt TEXT [--negative-prompt TEXT] --seed S [--steps K] [--guidance G] [--size WxH]\n                [--lora FILE[:SCALE]]... [--taesd DIR] [--scheduler CLASS] --out FILE.png",
                                     flags: generateFlags, run: generate)

    static let generateFlags = [
        FlagSpec("model", "model directory", default: "models/" + ServeDefaults.defaultModelName),
        FlagSpec("seed", "seed of the first image (images i > 0 use seed + i)", default: "0"),
        FlagSpec("label", "class index or class name (class-conditional models)"),
        FlagSpec("steps", "sampling steps (default: the model's: 1 for a consistency model, 18 for an EDM teacher)"),
        FlagSpec("n", "number of images; more than one are tiled into a grid in --out (also -n N)", default: "1"),
        FlagSpec("per-class", "one row per class (class-conditional models): n images per row, seeds S..S+n-1", isSwitch: true),
        FlagSpec("scale", "enlarge the PNG N times, nearest neighbour (1...64), so small images can be seen", default: "1"),
        FlagSpec("plain", "grids: the bare tiles, without the title, class-name and seed labels", isSwitch: true),
        FlagSpec("out", "output PNG file"),
    ] + TextCommands.generateFlags

    static func generate(_ f: ParsedFlags) throws {
        let out = try f.required("out")
        let loaded = try GenerationPipeline.load(path: try f.required("model"), extras: try TextCommands.extras(f))
        guard case .pixel(var pipeline) = loaded else {
            if case .text(let t) = loaded { try TextCommands.generate(f, t) }
            return
        }
        // --scheduler and --guidance also apply to pixel models (--guidance: classifier-free guidance of a
        // class-conditional model with a null label).
        for spec in TextCommands.generateFlags where f.has(spec.name) && spec.name != "scheduler" && spec.name != "guidance" {
            throw FlagError("--\(spec.name) is for text-to-image models; \(pipeline.name) is a pixel model")
        }
        if let w = try f.double("guidance", range: 0...GuidanceLimits.maxScale) {
            do { pipeline = try pipeline.withClassGuidance(w) } catch let e as ModelLoadError { throw FlagError("--guidance: \(e)") }
        }
        guard let seedText = f.string("seed"), let seed = UInt64(seedText) else {
            throw FlagError("--seed \(f.string("seed") ?? ""): expected a non-negative integer")
        }
        let n = try f.int("n", range: 1...256) ?? 1
        if let note = pipeline.samplerAssumption { FileHandle.standardError.write(Data("note: \(note)\n".utf8)) }
        let scale = try f.int("scale", range: 1...64) ?? 1
        let perClass = f.isSet("per-class")
        if perClass {
            guard let classes = pipeline.numClasses else { throw FlagError("--per-class: this model is unconditional; leave it out") }
            guard f.string("label") == nil else { throw FlagError("--per-class draws every class; leave out --label") }
            guard classes * n <= 4096 else { throw FlagError("--per-class: \(classes) classes x -n \(n) is more than 4096 images; lower -n") }
        }
        let steps = try f.int("steps", range: pipeline.sampler.stepRange) ?? pipeline.sampler.defaultSteps
        let label: Int?
        switch pipeline.resolveLabel(f.string("label")) {
        case .success(let l): label = l
        case .failure(let e): throw FlagError("--label: \(e)")
        }
        // --per-class: row r is class r, column i seed S + i (the model card's samples.png layout).
        let rows = perClass ? (pipeline.numClasses ?? 1) : 1
        let reqs = (0..<rows).flatMap { r in
            (0..<n).map { GenerationRequest(seed: seed &+ UInt64($0), label: perClass ? r : label) }
        }
        let start = Date()
        let images = pipeline.generate(reqs, steps: steps)
        let seconds = Date().timeIntervalSince(start)
        if reqs.count == 1 && scale == 1 {
            try AtomicFile.write(try ImagePipeline.pngs(images)[0], to: out)
        } else {
            let cols = perClass ? n : Int(Double(n).squareRoot().rounded(.up))
            var grid = ImagePipeline.grid(images, columns: cols).scaled(by: scale)
            if !f.isSet("plain") && reqs.count > 1 {
                let stepsText = "\(steps) step\(steps == 1 ? "" : "s")" + (pipeline.classGuidance.map { String(format: ", guidance %g", $0) } ?? "")
                let labels: GridLabels
                if perClass {
                    labels = GridLabels(title: "\(pipeline.name), \(stepsText) - rows: class, columns: seed",
                                        rowLabels: (0..<rows).map { pipeline.classNames?[$0] ?? "class \($0)" },
                                        columnLabels: (0..<n).map { String(seed &+ UInt64($0)) })
                } else {
                    labels = gridLabelsBySeed(title: "\(pipeline.name), \(stepsText)" + (label.map { ", class \(pipeline.classNames?[$0] ?? String($0))" } ?? ""),
                                              count: n, columns: cols, firstSeed: seed)
                }
                grid = grid.labelledGrid(rows: (reqs.count + cols - 1) / cols, columns: cols, cell: pipeline.imageSize * scale, gap: scale, labels: labels)
            }
            try AtomicFile.write(try PNG.encode(grid), to: out)
        }
        let classText = perClass ? " one row per class" : label.map { l in " class \(pipeline.classNames?[l] ?? String(l))" } ?? ""
        print("wrote \(out): \(reqs.count) image(s) \(pipeline.imageSize)x\(pipeline.imageSize)\(scale > 1 ? " shown \(scale)x" : ""), seeds \(seed)...\(seed &+ UInt64(n - 1))\(classText), \(steps) step(s), \(String(format: "%.3f", seconds)) s")
    }

    /// Labels of a row-major grid of `count` images of seeds firstSeed... : rows by their first seed, columns "+c".
    static func gridLabelsBySeed(title: String, count: Int, columns: Int, firstSeed: UInt64) -> GridLabels {
        let rows = (count + columns - 1) / columns
        return GridLabels(title: title + " - seed = row + column", rowLabels: (0..<rows).map { String(firstSeed &+ UInt64($0 * columns)) },
                          columnLabels: (0..<min(columns, count)).map { "+\($0)" })
    }

    static let runUNet = Subcommand("run-unet", summary: "run a model's UNet on saved inputs (checks a port against PyTorch)",
                                    synopsis: "run-unet --model DIR --inputs IN.safetensors --out OUT.safetensors",
                                    flags: runUNetFlags, run: runUNet)

    static let runUNetFlags = [
        FlagSpec("model", "model directory"),
        FlagSpec("inputs", "safetensors with x (N,C,H,W), t (N) and optional class_labels (N) int64, cm_noise (N,C,H,W)"),
        FlagSpec("out", "safetensors to write: unet_out, and cm_image + cm_uint8 when cm_noise is given"),
    ]

    static func runUNet(_ f: ParsedFlags) throws {
        let pipeline = try ImagePipeline.load(path: try f.required("model"))
        let inputs = try SafetensorsFile(path: try f.required("inputs"))
        let x = try inputs.floats("x"), t = try inputs.floats("t")
        let cfg = pipeline.config
        guard x.rank == 4, x.shape[1] == cfg.inChannels, x.shape[2] == x.shape[3], x.shape[2] % (1 << (cfg.levels - 1)) == 0 else {
            throw FlagError("x has shape \(x.shape); the model needs (N, \(cfg.inChannels), S, S) with S divisible by \(1 << (cfg.levels - 1))")
        }
        guard t.count == x.shape[0] || t.count == 1 else { throw FlagError("t has \(t.count) values for \(x.shape[0]) images") }
        let timesteps = t.count == 1 ? Array(repeating: t.data[0], count: x.shape[0]) : t.data
        var labels: [Int]?
        if inputs.entries["class_labels"] != nil {
            labels = try inputs.integers("class_labels").values.map { Int($0) }
        }
        if let n = cfg.numClassEmbeds {
            guard let l = labels, l.count == x.shape[0], l.allSatisfy({ (0..<n).contains($0) }) else {
                throw FlagError("this model is class-conditional: inputs need class_labels, one per image, each in 0..<\(n)")
            }
        } else if labels != nil {
            throw FlagError("this model has no class embedding; remove class_labels from the inputs")
        }
        var writer = SafetensorsWriter()
        // The serving path (packed kernels, the precision the server would use for this model).
        writer.add("unet_out", pipeline.model.forwardBatched(x, timesteps: timesteps, classLabels: labels, pool: .forCurrentThread))
        if inputs.entries["cm_noise"] != nil {
            guard let cm = pipeline.sampler as? ConsistencySampler else { throw FlagError("cm_noise given but the model's sampler is \(type(of: pipeline.sampler).className), not a consistency model") }
            let noise = try inputs.floats("cm_noise")
            guard noise.shape == x.shape else { throw FlagError("cm_noise has shape \(noise.shape); expected \(x.shape)") }
            let image = cm.sampleOneStep(noise: noise, labels: labels, denoise: pipeline.denoise)
            writer.add("cm_image", image)
            let n = image.shape[0]
            writer.add("cm_uint8", uint8: ImageQuantizer.toUInt8(image), shape: [n, image.shape[2], image.shape[3], image.shape[1]])
        }
        let out = try f.required("out")
        try writer.write(to: out)
        print("wrote \(out): \(writer.metadata.isEmpty ? "" : "")unet_out\(inputs.entries["cm_noise"] != nil ? ", cm_image, cm_uint8" : "")")
    }

    static let quantize = Subcommand("quantize", summary: "write the int8 form of a float model",
                                     synopsis: "quantize --model DIR --out DIR [--int8-policy P] [--components unet,vae,text_encoder] [--max-weight-error E]",
                                     flags: quantizeFlags, run: quantize)

    static let quantizeFlags = [
        FlagSpec("model", "float32 model directory: a pixel UNet2DModel, or a text-to-image pipeline folder (model_index.json)"),
        FlagSpec("out", "directory to write the int8 model into (text-to-image: must not exist yet)"),
        FlagSpec("components", "text-to-image only: comma-separated parts to write int8, of unet, vae, text_encoder", default: "unet,vae,text_encoder"),
        FlagSpec("max-weight-error", "text-to-image only: a layer whose weight relative L2 error after int8 exceeds this stays fp32",
                 default: String(LatentInt8.defaultMaxWeightError)),
        FlagSpec("steps", "text-to-image only: steps of the int8-vs-fp32 images of the report", default: "1"),
        FlagSpec("int8-policy", "pixel models only: which layers run int8 (and bf16), recorded in the file: inner-convolutions, inner-convolutions+attention-projections, inner-convolutions+attention-projections+bf16-heads or inner-convolutions+bf16-attention",
                 default: Int8Policy.innerConvolutions.rawValue),
    ]

    static func quantize(_ f: ParsedFlags) throws {
        let model = try f.required("model"), out = try f.required("out")
        if FileManager.default.fileExists(atPath: model + "/model_index.json") {
            // SD-family folder: unet/ and vae/ int8 where each layer's error allows (Quant/LatentQuantizer.swift).
            let report = try LatentQuantizer.quantizePipeline(
                source: model, destination: out, parts: try LatentQuantizer.Part.list(f.string("components") ?? "unet,vae,text_encoder"),
                maxWeightError: try f.double("max-weight-error", range: 0...1) ?? LatentInt8.defaultMaxWeightError,
                steps: try f.requiredInt("steps", 1...50))
            print(report.text + "report written to \(out)/\(LatentQuantizer.reportFile)")
            return
        }
        let policyName = f.string("int8-policy") ?? Int8Policy.innerConvolutions.rawValue
        guard let policy = Int8Policy(rawValue: policyName) else {
            throw FlagError("--int8-policy \(policyName): expected \(Int8Policy.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let report = try Quantizer.quantizeDirectory(source: model, destination: out, policy: policy)
        print(report.text, terminator: "")
    }
}

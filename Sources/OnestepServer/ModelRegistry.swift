// The models the server keeps resident: every model directory under the models folder, loaded at start-up.
import Foundation
import OnestepCore

public final class ModelRegistry: Sendable {
    /// Pixel models by name.
    public let pipelines: [String: ImagePipeline]
    /// Text-to-image models by name (names are unique across both maps).
    public let textModels: [String: TextToImagePipeline]
    /// The model used when a request names none: the only one, or `preferred` when it is loaded.
    public let defaultName: String

    public init(pipelines: [ImagePipeline], textModels: [TextToImagePipeline] = [], preferred: String? = nil) throws {
        guard !pipelines.isEmpty || !textModels.isEmpty else { throw ModelLoadError(path: "models", problem: "no models to serve") }
        var map: [String: ImagePipeline] = [:]
        for p in pipelines { map[p.name] = p }
        var text: [String: TextToImagePipeline] = [:]
        for t in textModels {
            guard map[t.name] == nil, text[t.name] == nil else {
                throw ModelLoadError(path: t.name, problem: "two models are named \(t.name); rename one folder")
            }
            text[t.name] = t
        }
        self.pipelines = map
        self.textModels = text
        let all = (Array(map.keys) + Array(text.keys)).sorted()
        if let preferred, all.contains(preferred) {
            defaultName = preferred
        } else {
            defaultName = all[0]
        }
    }

    /// The pixel pipeline of that name (nil for text models and unknown names).
    public subscript(name: String) -> ImagePipeline? { pipelines[name] }
    /// Any model of that name.
    public func model(_ name: String) -> GenerationPipeline? {
        if let p = pipelines[name] { return .pixel(p) }
        return textModels[name].map { .text($0) }
    }
    public var names: [String] { (Array(pipelines.keys) + Array(textModels.keys)).sorted() }

    /// Which sampler a model got, and what was assumed when its folder had no scheduler config.
    static func logSampler(_ p: ImagePipeline, _ log: (String) -> Void) {
        log("model \(p.name) sampler: \(p.sampler.description), steps \(p.sampler.stepRange.lowerBound)...\(p.sampler.stepRange.upperBound), default \(p.sampler.defaultSteps)")
        if let note = p.samplerAssumption { log("model \(p.name): \(note)") }
    }

    /// Loads every sub-folder of `dir` that looks like a model (holds any file or folder a model folder holds:
    /// config.json, model_index.json, weights, unet/...), or `dir` itself if it is one. A folder that looks like a
    /// model but cannot be loaded — a dangling or looping symlink, a FIFO or other non-regular file, weights
    /// without config.json, a folder or file the server's user cannot read — stops the server with the file and
    /// the reason: serving a partial set silently would hide the problem. Only regular files are opened.
    /// `extras`: LoRAs and TAESD folders per model name (`--lora`, `--taesd`); refused for pixel models.
    public static func load(directory dir: String, preferred: String?, extras: ModelExtrasOptions = ModelExtrasOptions(),
                            log: (String) -> Void) throws -> ModelRegistry {
        switch ModelFolderScan.entry(dir) {
        case .directory: break
        case .missing:
            throw ModelLoadError(path: dir, problem: "models folder not found; pass --models DIR (a folder of model folders)")
        default:
            throw ModelLoadError(path: dir, problem: "is not a folder; pass --models DIR (a folder of model folders, or one model folder)")
        }
        // A model directory given directly also works: it holds model files itself, where a folder of models
        // holds folders (and perhaps a README).
        let names = try ModelFolderScan.list(dir)
        let isModel = names.contains { ModelFolderScan.markerFiles.contains($0) }
        let folders = isModel ? [dir] : try ModelFolderScan.modelFolders(under: dir)
        var loaded: [ImagePipeline] = []
        var text: [TextToImagePipeline] = []
        let extrasByName = try extras.resolve(folders: folders, modelsDirectory: dir)
        for path in folders {
            try ModelFolderScan.check(path)
            let start = Date()
            let p: ImagePipeline
            let mine = extrasByName[URL(fileURLWithPath: path).standardizedFileURL.lastPathComponent] ?? TextModelExtras()
            switch try GenerationPipeline.load(path: path, extras: mine) {
            case .text(let t):
                for l in t.loras { log("model \(t.name): fused LoRA \(l.path) at scale \(l.scale)") }
                if let s = mine.schedulerClass { log("model \(t.name): scheduler \(s) (--scheduler) with the folder's scheduler_config.json values") }
                if let taesd = mine.taesdPath { log("model \(t.name): TAESD decoder \(taesd) loaded beside its \(t.decoder.className) (requests choose it with \"decoder\": \"taesd\")") }
                log("loaded text-to-image model \(t.name): \(t.defaultSize)x\(t.defaultSize) (latent \(t.latentSize)x\(t.latentSize)), \(t.usesGuidanceEmbedding ? "guidance embedding" : "classifier-free guidance when guidance_scale > 1") in \(String(format: "%.2f", Date().timeIntervalSince(start))) s")
                log("model \(t.name) sampler: \(t.sampler.description), steps \(t.sampler.stepRange.lowerBound)...\(t.sampler.stepRange.upperBound), default \(t.sampler.defaultSteps)")
                text.append(t)
                continue
            case .pixel(let pixel): p = pixel
            }
            log("loaded model \(p.name): \(p.imageSize)x\(p.imageSize)x\(p.channels), \(p.weightDType), \(p.model.parameterCount) parameters, \(p.numClasses.map { "\($0) classes" } ?? "unconditional") in \(String(format: "%.2f", Date().timeIntervalSince(start))) s")
            logSampler(p, log)
            loaded.append(p)
        }
        guard !loaded.isEmpty || !text.isEmpty else {
            throw ModelLoadError(path: dir, problem: "holds no model folders (each needs config.json + diffusion_pytorch_model.safetensors, or a diffusers pipeline's model_index.json)")
        }
        return try ModelRegistry(pipelines: loaded, textModels: text, preferred: preferred)
    }
}

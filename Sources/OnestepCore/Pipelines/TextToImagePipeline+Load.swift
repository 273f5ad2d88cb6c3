// Loading a diffusers StableDiffusionPipeline folder through model_index.json's component table: each role
// (tokenizer, text_encoder, denoiser, scheduler, decoder) from the folder the table names, with the class it names.
// Every refusal names the file and the reason (ModelLoadError).
import Foundation

extension TextToImagePipeline {
    /// Loads a pipeline folder: model_index.json listing CLIPTokenizer, CLIPTextModel, UNet2DConditionModel, a
    /// scheduler class of SamplerRegistry and AutoencoderKL or AutoencoderTiny.
    /// - Parameters: variant picks `diffusion_pytorch_model.<variant>.safetensors` for the UNet and decoder and
    ///   `model.<variant>.safetensors` for the text encoder (diffusers' `variant=`); `decoderPath` replaces the
    ///   folder's vae/ with another decoder folder (e.g. a TAESD folder, class read from its config.json
    ///   `_class_name`); `taesdPath` loads an AutoencoderTiny folder beside the folder's own decoder, chosen per
    ///   request (`generate(..., decoder: .taesd)`); `loras` are fused into the UNet and text encoder at load
    ///   (diffusers `load_lora_weights` + `fuse_lora(lora_scale:)`, one file after the other); `schedulerClass`
    ///   runs another SamplerRegistry class on the folder's scheduler_config.json values (diffusers'
    ///   `pipe.scheduler = TCDScheduler.from_config(pipe.scheduler.config)`; keys the class does not take are ignored).
    /// - Throws: ModelLoadError naming the file: a missing component or file, a class this build cannot load, a
    ///   config outside the supported subset (with the key), weights that do not fit, or parts that do not fit
    ///   each other (text width vs cross_attention_dim, latent channels).
    public static func load(path: String, name: String? = nil, variant: String? = nil,
                            decoderPath: String? = nil, taesdPath: String? = nil,
                            loras: [LoRASpec] = [], schedulerClass: String? = nil) throws -> TextToImagePipeline {
        let indexPath = path + "/model_index.json"
        guard FileManager.default.fileExists(atPath: indexPath) else {
            throw ModelLoadError(path: path, problem: "has no model_index.json; a text-to-image model is a diffusers pipeline folder (model_index.json, tokenizer/, text_encoder/, unet/, scheduler/, vae/)")
        }
        let index = try ModelIndex(path: indexPath)
        func part(_ role: ModelIndex.Role, _ example: String) throws -> ModelIndex.Component {
            guard let c = index.component(role) else {
                throw ModelLoadError(path: indexPath, problem: "lists no \(role.rawValue) component; a text-to-image pipeline needs one (e.g. \(example))")
            }
            return c
        }
        let tokPart = try part(.tokenizer, "\"tokenizer\": [\"transformers\", \"CLIPTokenizer\"]")
        let textPart = try part(.textEncoder, "\"text_encoder\": [\"transformers\", \"CLIPTextModel\"]")
        let unetPart = try part(.denoiser, "\"unet\": [\"diffusers\", \"UNet2DConditionModel\"]")
        let schedPart = try part(.scheduler, "\"scheduler\": [\"diffusers\", \"EulerDiscreteScheduler\"]")
        let vaePart = try part(.decoder, "\"vae\": [\"diffusers\", \"AutoencoderKL\"]")
        guard unetPart.className == "UNet2DConditionModel" else {
            throw ModelLoadError(path: indexPath, problem: "'\(unetPart.folder)' is a \(unetPart.className); a text-to-image pipeline needs a UNet2DConditionModel")
        }

        let loraFiles = try loras.map { (file: try LoRAFile(path: $0.path), scale: $0.scale) }
        try LoRAFusion.checkAnyMatched(loraFiles.map(\.file), components: [.unet, .textEncoder])
        let tokenizer = try CLIPTokenizer(folder: path + "/" + tokPart.folder)
        let textEncoder: CLIPTextModel
        do { textEncoder = try CLIPTextModel(folder: path + "/" + textPart.folder, variant: variant, loras: loraFiles) } catch let e as ConfigError {
            throw ModelLoadError(path: path + "/" + textPart.folder + "/config.json", problem: e.description)
        }
        let (unet, latentSize) = try loadUNet(directory: path + "/" + unetPart.folder, variant: variant, loras: loraFiles)

        let schedPath = path + "/" + schedPart.folder + "/scheduler_config.json"
        guard let schedData = FileManager.default.contents(atPath: schedPath) else {
            throw ModelLoadError(path: schedPath, problem: "is missing or unreadable; model_index.json lists a scheduler, so its folder needs scheduler_config.json")
        }
        if let schedulerClass, !SamplerRegistry.classNames.contains(schedulerClass) {
            throw ModelLoadError(path: schedPath, problem: "scheduler class '\(schedulerClass)' (--scheduler) is not one this build runs; choose one of \(SamplerRegistry.classNames.joined(separator: ", "))")
        }
        let sampler = try ModelDirectory.sampler(schedulerConfig: schedData, path: schedPath, className: schedulerClass ?? schedPart.className)

        let decoder: LatentDecoder
        if let decoderPath {
            decoder = try loadOverrideDecoder(decoderPath, unet: unet, unetDir: path + "/" + unetPart.folder, tinyOnly: false)
        } else {
            decoder = try LatentDecoder.load(directory: path + "/" + vaePart.folder, className: vaePart.className, variant: variant)
        }

        let unetDir = path + "/" + unetPart.folder
        guard unet.config.crossAttentionDim[0] == textEncoder.config.hiddenSize else {
            throw ModelLoadError(path: unetDir + "/config.json", problem: "cross_attention_dim \(unet.config.crossAttentionDim[0]) does not match the text encoder's hidden_size \(textEncoder.config.hiddenSize) (\(textPart.folder)/config.json); the parts come from different models")
        }
        guard unet.config.inChannels == decoder.latentChannels, unet.config.outChannels == decoder.latentChannels else {
            throw ModelLoadError(path: unetDir + "/config.json", problem: "in_channels \(unet.config.inChannels) / out_channels \(unet.config.outChannels) do not match the decoder's latent_channels \(decoder.latentChannels); the parts come from different models")
        }
        let dirName = URL(fileURLWithPath: path).standardizedFileURL.lastPathComponent
        var pipe = TextToImagePipeline(name: name ?? dirName, tokenizer: tokenizer, textEncoder: textEncoder, unet: unet,
                                       sampler: sampler, decoder: decoder, latentSize: latentSize)
        pipe.loras = loras
        if let taesdPath {
            let tiny = try loadOverrideDecoder(taesdPath, unet: unet, unetDir: unetDir, tinyOnly: true)
            guard tiny.scaleFactor == decoder.scaleFactor else {
                throw ModelLoadError(path: taesdPath + "/config.json", problem: "upsamples latents \(tiny.scaleFactor)x where the model's own \(decoder.className) upsamples \(decoder.scaleFactor)x; one model serves one size rule, so the two decoders must agree")
            }
            pipe.taesd = tiny
        }
        return pipe
    }

    /// A decoder folder given in place of (or beside) the pipeline's vae/: its class from config.json
    /// (`tinyOnly`: must be AutoencoderTiny, the TAESD override), with latent channels checked against the UNet.
    static func loadOverrideDecoder(_ dir: String, unet: UNet2DConditionModel, unetDir: String, tinyOnly: Bool) throws -> LatentDecoder {
        guard FileManager.default.fileExists(atPath: dir + "/config.json") else {
            throw ModelLoadError(path: dir, problem: "has no config.json; a decoder folder holds config.json and diffusion_pytorch_model.safetensors (e.g. madebyollin/taesd)")
        }
        let cls = try componentClass(configPath: dir + "/config.json")
        if tinyOnly, cls != "AutoencoderTiny" {
            throw ModelLoadError(path: dir + "/config.json", problem: "describes an \(cls) decoder; a TAESD folder is an AutoencoderTiny (e.g. madebyollin/taesd for SD 1.x / 2.x)")
        }
        // Checked from config.json before the weights: a decoder of another latent space fails here with the reason,
        // not later on a weight shape.
        let channels = try jsonInt(dir + "/config.json", "latent_channels") ?? 4
        guard channels == unet.config.outChannels else {
            throw ModelLoadError(path: dir + "/config.json", problem: "latent_channels \(channels) does not match the UNet's out_channels \(unet.config.outChannels) (\(unetDir)/config.json); this \(cls) decodes another model family's latents (SD 1.x / 2.x use 4 channels: madebyollin/taesd)")
        }
        return try LatentDecoder.load(directory: dir, className: cls, variant: nil)
    }

    /// A UNet2DConditionModel folder (config.json + diffusion_pytorch_model[.variant].safetensors) and its
    /// config's sample_size (diffusers' default 64 when absent).
    static func loadUNet(directory: String, variant: String?, loras: [(file: LoRAFile, scale: Float)] = []) throws -> (UNet2DConditionModel, Int) {
        let model = try UNet2DConditionModel.load(directory: directory, variant: variant, loras: loras)
        let sampleSize = try jsonInt(directory + "/config.json", "sample_size") ?? 64
        return (model, sampleSize)
    }

    static func jsonObject(_ path: String) throws -> [String: Any] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelLoadError(path: path, problem: "is missing or unreadable")
        }
        guard let d = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelLoadError(path: path, problem: "is not a JSON object")
        }
        return d
    }

    static func jsonInt(_ path: String, _ key: String) throws -> Int? {
        let v = try jsonObject(path)[key]
        if v == nil || v is NSNull { return nil }
        guard let n = v as? NSNumber, n.doubleValue == n.doubleValue.rounded(), n.intValue >= 1, n.intValue <= 4096 else {
            throw ModelLoadError(path: path, problem: "config key '\(key)': \(v!) is not a whole number in 1...4096")
        }
        return n.intValue
    }

    /// `_class_name` of a bare component folder's config.json.
    static func componentClass(configPath: String) throws -> String {
        guard let c = try jsonObject(configPath)["_class_name"] as? String else {
            throw ModelLoadError(path: configPath, problem: "has no \"_class_name\"; a decoder folder's config.json names AutoencoderKL or AutoencoderTiny")
        }
        return c
    }
}

// The text-to-image side of the offline commands: `generate` on a StableDiffusionPipeline folder (prompt,
// negative prompt, guidance, size) and `run-pipeline`, which runs every part of a pipeline on saved inputs so a
// port can be checked against diffusers (names as in shared/golden/T2I_README.md).
import CommandLineKit
import Foundation
import OnestepCore
import PNGCodec

enum TextCommands {
    /// Flags `generate` takes for text-to-image models only; refused on pixel models.
    static let generateFlags = [
        FlagSpec("prompt", "text prompt (text-to-image models; may be empty)"),
        FlagSpec("negative-prompt", "the unconditional branch of classifier-free guidance (default \"\"; used when --guidance > 1)"),
        FlagSpec("guidance", "guidance_scale: CFG weight, or LCM's w (default 0, or 8.5 for a model with a guidance embedding); a class-conditional pixel model with a null label (\"null_class_label\"): classifier-free guidance scale of its class (1 = none)"),
        FlagSpec("size", "image size WxH in pixels, multiples of 8 (default: the UNet's sample_size x 8)"),
        FlagSpec("eta", "eta of TCDScheduler (default 0.3) or DDIMScheduler (default 0)"),
    ] + loadFlags

    /// Flags that change how a text-to-image model is loaded (generate and run-pipeline).
    static let loadFlags = [
        FlagSpec("lora", "LoRA file fused into the UNet (and text encoder) at load, FILE or FILE:SCALE (default scale 1); repeat for several (diffusers/PEFT or kohya keys)"),
        FlagSpec("taesd", "AutoencoderTiny (TAESD) folder to decode with instead of the model's vae/ (e.g. madebyollin/taesd)"),
        FlagSpec("scheduler", "scheduler class run with the folder's scheduler_config.json values (diffusers from_config), e.g. TCDScheduler for a Hyper-SD / TCD LoRA, LCMScheduler for LCM-LoRA, DDIMScheduler for a DDPM pixel model"),
    ]

    /// --lora and --taesd as load extras (the TAESD folder is loaded beside vae/ and chosen by `decoderChoice`).
    static func extras(_ f: ParsedFlags) throws -> TextModelExtras {
        let loras = try f.all("lora").map { text in
            do { return try LoRASpec(parsing: text) } catch let e as LoRASpecError { throw FlagError("--lora \(text): \(e.problem)") }
        }
        return TextModelExtras(loras: loras, taesdPath: f.string("taesd"), schedulerClass: f.string("scheduler"))
    }

    static func decoderChoice(_ f: ParsedFlags) -> DecoderChoice { f.has("taesd") ? .taesd : .model }

    /// `generate` on a text-to-image pipeline: seeds S, S+1, ... for -n images, tiled when more than one.
    static func generate(_ f: ParsedFlags, _ pipe: TextToImagePipeline) throws {
        let out = try f.required("out")
        guard let prompt = f.string("prompt") else { throw FlagError("--prompt is required for a text-to-image model (an empty prompt is allowed: --prompt '')") }
        for flag in ["label", "per-class"] where f.has(flag) {
            throw FlagError("--\(flag) is for class-conditional pixel models; a text-to-image model takes --prompt")
        }
        guard let seedText = f.string("seed"), let seed = UInt64(seedText) else {
            throw FlagError("--seed \(f.string("seed") ?? ""): expected a non-negative integer")
        }
        let n = try f.int("n", range: 1...64) ?? 1
        let steps = try f.int("steps", range: pipe.sampler.stepRange) ?? pipe.sampler.defaultSteps
        let guidance = try f.double("guidance", range: 0...100) ?? pipe.defaultGuidanceScale
        let eta = try f.double("eta", range: 0...1)
        let (w, h) = try parseSize(f.string("size")) ?? (pipe.defaultSize, pipe.defaultSize)
        let scale = try f.int("scale", range: 1...64) ?? 1
        let negative = f.string("negative-prompt")
        let reqs = (0..<n).map { TextGenerationRequest(prompt: prompt, negativePrompt: negative, seed: seed &+ UInt64($0), guidanceScale: guidance) }
        let start = Date()
        let images: Tensor
        do { images = try pipe.generate(reqs, steps: steps, width: w, height: h, eta: eta, decoder: decoderChoice(f)) } catch let e as TextGenerationError {
            throw FlagError(e.problem)
        }
        let seconds = Date().timeIntervalSince(start)
        if n == 1 && scale == 1 {
            try AtomicFile.write(try ImagePipeline.pngs(images)[0], to: out)
        } else {
            guard w == h else { throw FlagError("-n \(n) / --scale tile square images only; give --size \(w)x\(w) or -n 1") }
            let cols = Int(Double(n).squareRoot().rounded(.up))
            var grid = ImagePipeline.grid(images, columns: cols).scaled(by: scale)
            if !f.isSet("plain") && n > 1 {
                let labels = Commands.gridLabelsBySeed(title: "\"\(prompt)\", \(steps) steps, guidance \(guidance)", count: n, columns: cols, firstSeed: seed)
                grid = grid.labelledGrid(rows: (n + cols - 1) / cols, columns: cols, cell: w * scale, gap: scale, labels: labels)
            }
            try AtomicFile.write(try PNG.encode(grid), to: out)
        }
        let extrasText = pipe.loras.map { ", LoRA \($0)" }.joined() + (f.has("taesd") ? ", TAESD decoder" : "")
        print("wrote \(out): \(n) image(s) \(w)x\(h), seeds \(seed)...\(seed &+ UInt64(n - 1)), \(steps) step(s), guidance \(guidance), \(pipe.sampler.description)\(extrasText), \(String(format: "%.3f", seconds)) s")
    }

    /// "WxH" (or "S" for a square) -> (W, H); nil for nil.
    static func parseSize(_ s: String?) throws -> (Int, Int)? {
        guard let s else { return nil }
        let parts = s.lowercased().split(separator: "x", omittingEmptySubsequences: false).map { Int($0) }
        if parts.count == 1, let v = parts[0], v > 0 { return (v, v) }
        guard parts.count == 2, let w = parts[0], let h = parts[1], w > 0, h > 0 else {
            throw FlagError("--size \(s): expected WxH in pixels, e.g. 512x512")
        }
        return (w, h)
    }

    static let runPipeline = Subcommand("run-pipeline", summary: "run a text-to-image pipeline's parts on saved inputs (checks a port against diffusers)",
                                        synopsis: "run-pipeline --model DIR [--lora FILE[:SCALE]]... [--taesd DIR] [--scheduler CLASS] --inputs IO.safetensors --out OUT.safetensors",
                                        flags: runPipelineFlags, run: runPipeline)

    static let runPipelineFlags = [
        FlagSpec("model", "diffusers StableDiffusionPipeline folder"),
        FlagSpec("inputs", "safetensors with __metadata__ prompts (JSON list) and/or unet_x, unet_t, unet_encoder_hidden_states [, unet_timestep_cond], vae_latents [, cases (JSON)]"),
        FlagSpec("out", "safetensors to write: prompt_input_ids, prompt_embeds, unet_out, vae_decoded, image_K and uint8_K per case"),
    ] + loadFlags

    /// Each part on what the inputs hold: the tokenizer and text encoder on `prompts`, the UNet on unet_*, the
    /// decoder (unscaled, as vae.decode) on vae_latents, and the whole pipeline on each of `cases` (T2I_README.md).
    static func runPipeline(_ f: ParsedFlags) throws {
        let dir = try f.required("model")
        guard case .text(let pipe) = try GenerationPipeline.load(path: dir, extras: try extras(f)) else {
            throw FlagError("\(dir) is a pixel model; run-pipeline runs text-to-image pipelines (use run-unet)")
        }
        let inputsPath = try f.required("inputs"), out = try f.required("out")
        let inputs = try SafetensorsFile(path: inputsPath)
        var writer = SafetensorsWriter()
        var wrote: [String] = []
        func add(_ name: String, _ t: Tensor) { writer.add(name, t); wrote.append(name) }
        func fail(_ what: String, _ e: Error) -> FlagError { FlagError("\(inputsPath): \(what): \(e)") }

        if let text = inputs.metadata["prompts"] {
            guard let prompts = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String] else {
                throw FlagError("\(inputsPath): __metadata__ prompts is not a JSON list of strings")
            }
            let ids = pipe.tokenizer.encode(prompts)
            writer.add("prompt_input_ids", int64: ids.flatMap { $0.map(Int64.init) }, shape: [ids.count, ids.first?.count ?? 0])
            wrote.append("prompt_input_ids")
            if !prompts.isEmpty {
                do { add("prompt_embeds", try pipe.textEncoder.forward(ids: ids)) } catch { throw fail("prompt_embeds", error) }
            }
        }
        if inputs.entries["unet_x"] != nil {
            let x = try inputs.floats("unet_x"), t = try inputs.floats("unet_t"), ehs = try inputs.floats("unet_encoder_hidden_states")
            let cond = inputs.entries["unet_timestep_cond"] != nil ? try inputs.floats("unet_timestep_cond") : nil
            do { add("unet_out", try pipe.unet.forward(x, timesteps: t.data, encoderHiddenStates: ehs, timestepCond: cond)) } catch {
                throw fail("unet_out", error)
            }
        }
        if inputs.entries["vae_latents"] != nil {
            do { add("vae_decoded", try pipe.decoder(decoderChoice(f)).decodeRaw(try inputs.floats("vae_latents"))) } catch { throw fail("vae_decoded", error) }
        }
        if let text = inputs.metadata["cases"] {
            guard let cases = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: [String: String]] else {
                throw FlagError("\(inputsPath): __metadata__ cases is not a JSON object of cases (prompt, seed, steps, guidance_scale, negative_prompt, eta)")
            }
            for key in cases.keys.sorted() {
                let c = cases[key]!
                guard let prompt = c["prompt"], let seed = c["seed"].flatMap({ UInt64($0) }), let steps = c["steps"].flatMap({ Int($0) }) else {
                    throw FlagError("\(inputsPath): case \(key) needs prompt, seed and steps")
                }
                let neg = c["negative_prompt"].flatMap { $0.isEmpty ? nil : $0 }
                let g = c["guidance_scale"].flatMap { Double($0) } ?? pipe.defaultGuidanceScale
                let size = inputs.entries["image_" + key]?.shape.first
                let req = TextGenerationRequest(prompt: prompt, negativePrompt: neg, seed: seed, guidanceScale: g)
                let image: Tensor
                do {
                    image = try pipe.generate([req], steps: steps, width: size, height: size, eta: c["eta"].flatMap { Double($0) },
                                              decoder: decoderChoice(f))
                } catch {
                    throw fail("case \(key)", error)
                }
                // image_K as diffusers' output_type="np": clamp(x / 2 + 0.5, 0, 1), (H, W, 3).
                let h = image.shape[2], w = image.shape[3]
                var hwc = Tensor(zeros: [h, w, 3])
                for y in 0..<h { for x in 0..<w { for ch in 0..<3 {
                    hwc.data[(y * w + x) * 3 + ch] = min(max(image.data[(ch * h + y) * w + x] / 2 + 0.5, 0), 1)
                } } }
                add("image_" + key, hwc)
                writer.add("uint8_" + key, uint8: ImageQuantizer.toUInt8(image), shape: [h, w, 3])
                wrote.append("uint8_" + key)
            }
        }
        guard !wrote.isEmpty else {
            throw FlagError("\(inputsPath) holds nothing to run: give __metadata__ prompts, unet_x/unet_t/unet_encoder_hidden_states, vae_latents or cases")
        }
        try writer.write(to: out)
        print("wrote \(out): \(wrote.joined(separator: ", "))")
    }
}

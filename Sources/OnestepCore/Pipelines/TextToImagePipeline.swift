// A loaded latent text-to-image pipeline (diffusers StableDiffusionPipeline folder): CLIPTokenizer -> CLIPTextModel
// -> sampler loop over UNet2DConditionModel -> AutoencoderKL / AutoencoderTiny decoder. Follows diffusers 0.42
// pipeline_stable_diffusion.py __call__:
//   prompt_embeds = text_encoder(tokenizer(prompt, padding="max_length"))[0]           (last_hidden_state)
//   CFG when guidance_scale > 1 and unet.config.time_cond_proj_dim is None: the unconditional branch is the
//     negative prompt's embedding ("" when none); noise = uncond + g * (text - uncond)
//   LCM-style UNets (time_cond_proj_dim set): timestep_cond = get_guidance_scale_embedding(g - 1), no CFG
//   latents = randn((1, 4, H/8, W/8), generator) * init_noise_sigma per image (Sampler.sample)
//   image = vae.decode(latents / scaling_factor); uint8 = round(clamp(image / 2 + 0.5, 0, 1) * 255)
// Every image of a batch is computed as if alone (the text encoder and UNet are batch-invariant, the noise comes
// from each image's own generator), so the same request gives the same bytes alone or in any batch.
import Foundation

/// One text-to-image request. `guidanceScale` is diffusers' `guidance_scale` (CFG weight, or LCM's w).
public struct TextGenerationRequest: Sendable, Hashable {
    public var prompt: String
    /// The unconditional branch of classifier-free guidance; nil means "" (diffusers' default). Ignored when
    /// the request does not use CFG (guidance_scale <= 1, or a model with a guidance embedding).
    public var negativePrompt: String?
    public var seed: UInt64
    public var guidanceScale: Double

    public init(prompt: String, negativePrompt: String? = nil, seed: UInt64, guidanceScale: Double = 0) {
        self.prompt = prompt
        self.negativePrompt = negativePrompt
        self.seed = seed
        self.guidanceScale = guidanceScale
    }
}

/// Which decoder turns a request's latents into pixels: the pipeline folder's own vae/ (or the `--decoder`
/// override it was loaded with), or the TAESD folder loaded beside it (`--taesd`).
public enum DecoderChoice: String, Sendable, Hashable, CaseIterable {
    case model = "vae"
    case taesd
}

/// A request this pipeline cannot run (size, steps, guidance), with what to send instead.
public struct TextGenerationError: Error, CustomStringConvertible, Equatable {
    public var problem: String
    public var description: String { problem }
}

public struct TextToImagePipeline: Sendable {
    public let name: String
    public let tokenizer: CLIPTokenizer
    public let textEncoder: CLIPTextModel
    public let unet: UNet2DConditionModel
    public let sampler: any Sampler
    public let decoder: LatentDecoder
    /// unet config `sample_size` (latent positions per side); the default image side is this times decoder.scaleFactor.
    public let latentSize: Int
    /// Threads each network call uses (the same bytes on any count).
    public var threads = 1
    /// LoRA files fused into the UNet and text encoder at load (for logs and /v1/models).
    public var loras: [LoRASpec] = []
    /// An AutoencoderTiny (TAESD) decoder loaded beside `decoder`, picked per request with `DecoderChoice.taesd`.
    public var taesd: LatentDecoder?

    /// Default image side in pixels (diffusers: unet.config.sample_size * vae_scale_factor).
    public var defaultSize: Int { latentSize * decoder.scaleFactor }
    /// guidance_scale when a request does not say: 8.5 for a guidance-embedding model (LatentConsistencyModelPipeline's
    /// default), else 0: the one- and few-step students (SD-Turbo, SDXS, TCD, Hyper-SD) are run without CFG.
    public var defaultGuidanceScale: Double { usesGuidanceEmbedding ? 8.5 : 0 }
    /// LCM-style UNet: guidance is a guidance-scale embedding (time_cond_proj_dim), never classifier-free.
    public var usesGuidanceEmbedding: Bool { unet.config.timeCondProjDim != nil }

    /// The request fields this model takes, as /v1/models publishes them (`fields`). negative_prompt only where
    /// classifier-free guidance can run (not on guidance-embedding models);
    /// `decoder` ("vae" / "taesd") when a TAESD folder was loaded beside the model's own decoder.
    public var fields: [String] {
        (usesGuidanceEmbedding ? ["prompt", "guidance_scale", "size", "seed", "steps", "n"]
                               : ["prompt", "negative_prompt", "guidance_scale", "size", "seed", "steps", "n"])
            + (taesd == nil ? [] : ["decoder"])
    }

    public init(name: String, tokenizer: CLIPTokenizer, textEncoder: CLIPTextModel, unet: UNet2DConditionModel,
                sampler: any Sampler, decoder: LatentDecoder, latentSize: Int) {
        self.name = name
        self.tokenizer = tokenizer
        self.textEncoder = textEncoder
        self.unet = unet
        self.sampler = sampler
        self.decoder = decoder
        self.latentSize = latentSize
    }

    // MARK: generation

    /// prompt_embeds (N, 77, D) for `prompts`: tokenizer (padded to 77) then the text encoder's last_hidden_state.
    /// int8 projections split over the calling thread's team (a server worker's pool), else over `threads`
    /// (a team made for the call); same bytes either way.
    public func encode(_ prompts: [String]) throws -> Tensor {
        let team = BufferPool.forCurrentThread.team ?? (threads > 1 ? ThreadTeam(threads: threads) : nil)
        return try textEncoder.forward(ids: tokenizer.encode(prompts), team: team)
    }

    /// The sampler with a pipeline `eta` applied: TCDScheduler takes it (nil keeps its 0.3 default), DDIMScheduler
    /// takes it (nil is 0, diffusers' default); other samplers have none.
    public func sampler(eta: Double?) -> any Sampler {
        if var s = sampler as? TCDSampler { if let eta { s.eta = eta }; return s }
        if var s = sampler as? DDIMSampler { s.eta = Float(eta ?? 0); return s }
        return sampler
    }

    /// Checks a request's size, steps and guidance; returns the latent shape (h, w).
    public func validate(width: Int, height: Int, steps: Int, guidanceScales: [Double]) throws -> (Int, Int) {
        let f = decoder.scaleFactor
        guard width > 0, height > 0, width % f == 0, height % f == 0 else {
            throw TextGenerationError(problem: "size \(width)x\(height) is not a positive multiple of \(f) on both sides; use e.g. \(defaultSize)x\(defaultSize)")
        }
        do { try LatentRunner.checkLatentSize(height: height / f, width: width / f) } catch let e as LatentInputError {
            throw TextGenerationError(problem: "size \(width)x\(height): \(e.problem)")
        }
        guard sampler.stepRange.contains(steps) else {
            throw TextGenerationError(problem: "steps \(steps) is outside \(sampler.stepRange.lowerBound)...\(sampler.stepRange.upperBound) for \(sampler.description)")
        }
        for g in guidanceScales where !g.isFinite || g < 0 || g > 100 {
            throw TextGenerationError(problem: "guidance_scale \(g) must be a finite number in 0...100")
        }
        return (height / f, width / f)
    }

    /// Final latents (N, latent_channels, h, w) for the requests, all with the same step count and size.
    /// - Parameters: width/height in pixels (nil: defaultSize); eta as in `sampler(eta:)`.
    /// - Throws: TextGenerationError for a size, step count or guidance this pipeline cannot run.
    ///   - textEmbeddings: prompts -> (N, 77, D) in place of `encode` (the server's cache of (model, prompt)
    ///     embeddings); nil encodes here.
    public func latents(_ requests: [TextGenerationRequest], steps: Int, width: Int? = nil, height: Int? = nil,
                        eta: Double? = nil, textEmbeddings: (([String]) throws -> Tensor)? = nil) throws -> Tensor {
        guard !requests.isEmpty else { throw TextGenerationError(problem: "no requests") }
        let (h, w) = try validate(width: width ?? defaultSize, height: height ?? defaultSize, steps: steps,
                                  guidanceScales: requests.map(\.guidanceScale))
        let n = requests.count
        let encode = textEmbeddings ?? self.encode
        let cond = try encode(requests.map(\.prompt))                                   // (N, 77, D)
        // Images that run classifier-free guidance, and their unconditional embeddings (M, 77, D).
        let cfg = usesGuidanceEmbedding ? [] : requests.indices.filter { requests[$0].guidanceScale > 1 }
        let uncond = cfg.isEmpty ? nil : try encode(cfg.map { requests[$0].negativePrompt ?? "" })
        let wEmbedding = unet.config.timeCondProjDim.map { GuidanceEmbedding.embed(requests.map { $0.guidanceScale - 1 }, dim: $0) }
        var failure: Error?
        let model: ModelCall = { x, t in
            do {
                var out = try unet.forward(x, timesteps: Array(repeating: t, count: n), encoderHiddenStates: cond,
                                           timestepCond: wEmbedding, threads: threads)
                if let uncond {
                    let xu = x.rows(cfg)
                    let u = try unet.forward(xu, timesteps: Array(repeating: t, count: cfg.count), encoderHiddenStates: uncond,
                                             timestepCond: nil, threads: threads)
                    let per = out.count / n
                    for (m, i) in cfg.enumerated() {
                        // diffusers: noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond), float32.
                        let g = Float(requests[i].guidanceScale)
                        for j in 0..<per {
                            let uu = u.data[m * per + j], c = out.data[i * per + j]
                            out.data[i * per + j] = uu + g * (c - uu)
                        }
                    }
                }
                return out
            } catch {
                failure = failure ?? error
                return Tensor(zeros: x.shape)
            }
        }
        var generators = requests.map { TorchGenerator(seed: $0.seed) }
        let s = sampler(eta: eta)
        let z = s.sample(generators: &generators, shape: [n, unet.config.inChannels, h, w], steps: steps, model: model)
        if let failure { throw failure }
        return z
    }

    /// The decoder a request asked for: the folder's own, or the TAESD loaded beside it.
    /// - Throws: TextGenerationError when `.taesd` is asked and none was loaded.
    public func decoder(_ choice: DecoderChoice) throws -> LatentDecoder {
        switch choice {
        case .model: return decoder
        case .taesd:
            guard let taesd else {
                throw TextGenerationError(problem: "decoder \"taesd\": model \(name) was loaded without a TAESD folder (start it with --taesd \(name)=DIR); leave decoder out")
            }
            return taesd
        }
    }

    /// Images (N, 3, H, W) in model space (about [-1, 1]); ImagePipeline.pngs / ImageQuantizer turn them into bytes.
    /// `decoder`: the folder's own decoder (default) or the TAESD loaded beside it (`vae.decode` of that one, with
    /// its own scaling_factor, as diffusers does after `pipe.vae = AutoencoderTiny.from_pretrained(...)`).
    public func generate(_ requests: [TextGenerationRequest], steps: Int, width: Int? = nil, height: Int? = nil,
                         eta: Double? = nil, decoder choice: DecoderChoice = .model,
                         textEmbeddings: (([String]) throws -> Tensor)? = nil) throws -> Tensor {
        let d = try decoder(choice)
        return try d.decodeScaled(try latents(requests, steps: steps, width: width, height: height, eta: eta,
                                              textEmbeddings: textEmbeddings), threads: threads)
    }
}

extension Tensor {
    /// Rows `indices` of the leading axis, in that order. (N, ...) -> (indices.count, ...)
    func rows(_ indices: [Int]) -> Tensor {
        let per = count / Swift.max(shape[0], 1)
        var data = [Float]()
        data.reserveCapacity(per * indices.count)
        for i in indices { data += data_slice(i * per, per) }
        return Tensor(shape: [indices.count] + Array(shape.dropFirst()), data: data)
    }
    private func data_slice(_ start: Int, _ n: Int) -> ArraySlice<Float> { data[start..<(start + n)] }
}

/// LCM's guidance-scale embedding, diffusers LatentConsistencyModelPipeline / StableDiffusionPipeline
/// get_guidance_scale_embedding (after VDM): w * 1000, then [sin(w * f_k), cos(w * f_k)] with
/// f_k = exp(-k * log(10000) / (half - 1)), k < half = dim / 2, zero-padded for odd dim. float32 as torch.
public enum GuidanceEmbedding {
    /// (N) values of w = guidance_scale - 1 -> (N, dim).
    public static func embed(_ w: [Double], dim: Int) -> Tensor {
        let half = dim / 2
        let e = Float(log(Float(10000))) / Float(half - 1)
        let freqs = (0..<half).map { expf(Float($0) * -e) }
        var out = Tensor(zeros: [w.count, dim])
        for (i, wi) in w.enumerated() {
            let ws = Float(wi) * 1000
            for k in 0..<half {
                let a = ws * freqs[k]
                out.data[i * dim + k] = sinf(a)
                out.data[i * dim + half + k] = cosf(a)
            }
        }
        return out
    }
}

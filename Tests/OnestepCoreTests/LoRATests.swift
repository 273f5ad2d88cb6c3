import Foundation
import XCTest
@testable import OnestepCore

/// LoRA fusing against diffusers + peft (Tests/OnestepCoreTests/Golden/lora, scripts/golden/make_lora_golden.py): a
/// random rank-4 LoRA on the UNet (attention, proj_in/out, feed-forward, 3x3 and 1x1 convs, time embedding; alpha 8
/// with one module at alpha 2) and the text encoder (alpha 6), fused at scale 0.7, in three key layouts of the same
/// weights. The reference is the adapted diffusers pipeline fused in memory by PEFT.
final class LoRAGoldenTests: XCTestCase {
    static let goldenDir = Fixtures.repoRoot + "/Tests/OnestepCoreTests/Golden/lora"
    static let layouts = ["diffusers", "diffusers_old", "kohya"]

    static func lora(_ base: String, _ layout: String) -> String { "\(goldenDir)/\(base)/lora_\(layout).safetensors" }

    func loadText(_ base: String, extras: TextModelExtras = TextModelExtras()) throws -> TextToImagePipeline {
        guard case .text(let p) = try GenerationPipeline.load(path: T2IGoldenCase.folder(base), extras: extras) else {
            XCTFail("\(base) did not load as a text-to-image pipeline"); throw CocoaError(.featureUnsupported)
        }
        return p
    }

    func testFusedLoRAMatchesDiffusersInEveryKeyLayout() throws {
        for base in ["sd_turbo_tiny", "lcm_tiny"] {
            let ioPath = "\(Self.goldenDir)/\(base)/io.safetensors"
            let io = try SafetensorsFile(path: ioPath)
            let scale = try XCTUnwrap(io.metadata["lora_scale"].flatMap(Float.init))
            XCTAssertEqual(scale, 0.7)
            let prompts = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(io.metadata["prompts"]!.utf8)) as? [String])
            let x = try io.floats("unet_x"), t = try io.floats("unet_t"), ehs = try io.floats("unet_encoder_hidden_states")
            let cond = io.entries["unet_timestep_cond"] != nil ? try io.floats("unet_timestep_cond") : nil
            let expectedUNet = try io.floats("unet_out"), expectedEmbeds = try io.floats("prompt_embeds")

            // Without the LoRA the outputs are far off: the golden checks the fusion, not the base model.
            let plain = try loadText(base)
            let plainErr = TensorError.relativeL2(try plain.unet.forward(x, timesteps: t.data, encoderHiddenStates: ehs, timestepCond: cond).data, expectedUNet.data)
            XCTAssertGreaterThan(plainErr, 0.3, "\(base): the LoRA should change unet_out")
            XCTAssertGreaterThan(TensorError.relativeL2(try plain.encode(prompts).data, expectedEmbeds.data), 0.1)

            for layout in Self.layouts {
                let pipe = try loadText(base, extras: TextModelExtras(loras: [LoRASpec(path: Self.lora(base, layout), scale: scale)]))
                let unetErr = TensorError.relativeL2(try pipe.unet.forward(x, timesteps: t.data, encoderHiddenStates: ehs, timestepCond: cond).data, expectedUNet.data)
                let textErr = TensorError.relativeL2(try pipe.encode(prompts).data, expectedEmbeds.data)
                print("LoRA golden \(base) \(layout): unet_out rel L2 \(unetErr), prompt_embeds rel L2 \(textErr)")
                XCTAssertLessThanOrEqual(unetErr, 1e-5, "\(base) \(layout) unet_out")
                XCTAssertLessThanOrEqual(textErr, 1e-5, "\(base) \(layout) prompt_embeds")
                for c in try T2IGoldenCase.load(io: ioPath) {
                    let img = try pipe.generate([c.request], steps: c.steps, width: c.size, height: c.size, eta: c.eta)
                    let bad = c.badPixels(Self.hwc(img))
                    XCTAssertTrue(bad.isEmpty, "\(base) \(layout) \(c.key): \(bad.count) uint8 values differ away from a rounding boundary")
                }
            }
        }
    }

    /// Two files at 0.35 fuse to the same weights as one at 0.7 (terms add in file order), and a scale of 0
    /// leaves the model as it was.
    func testScalesAddUpAndZeroIsTheBaseModel() throws {
        let base = "sd_turbo_tiny", file = Self.lora(base, "kohya")
        let io = try SafetensorsFile(path: "\(Self.goldenDir)/\(base)/io.safetensors")
        let x = try io.floats("unet_x"), t = try io.floats("unet_t"), ehs = try io.floats("unet_encoder_hidden_states")
        func out(_ loras: [LoRASpec]) throws -> [Float] {
            try loadText(base, extras: TextModelExtras(loras: loras)).unet.forward(x, timesteps: t.data, encoderHiddenStates: ehs).data
        }
        let halves = try out([LoRASpec(path: file, scale: 0.35), LoRASpec(path: Self.lora(base, "diffusers"), scale: 0.35)])
        XCTAssertLessThanOrEqual(TensorError.relativeL2(halves, try io.floats("unet_out").data), 1e-5)
        XCTAssertEqual(try out([LoRASpec(path: file, scale: 0)]), try out([]))
    }

    func testTAESDBesideTheModelsDecoderMatchesDiffusersWithTheVaeSwapped() throws {
        let ioPath = "\(Self.goldenDir)/taesd_on_sd_turbo/io.safetensors"
        let io = try SafetensorsFile(path: ioPath)
        let pipe = try loadText("sd_turbo_tiny", extras: TextModelExtras(taesdPath: T2IGoldenCase.folder("sdxs_tiny") + "/vae"))
        XCTAssertEqual(pipe.decoder.className, "AutoencoderKL")
        XCTAssertEqual(pipe.taesd?.className, "AutoencoderTiny")
        XCTAssertEqual(pipe.fields.last, "decoder")
        let decoded = try pipe.decoder(.taesd).decodeRaw(try io.floats("vae_latents"))
        XCTAssertLessThanOrEqual(TensorError.relativeL2(decoded.data, try io.floats("vae_decoded").data), 1e-5)
        for c in try T2IGoldenCase.load(io: ioPath) {
            let viaTAESD = try pipe.generate([c.request], steps: c.steps, width: c.size, height: c.size, eta: c.eta, decoder: .taesd)
            XCTAssertTrue(c.badPixels(Self.hwc(viaTAESD)).isEmpty, "TAESD \(c.key)")
            // The same request with the model's own decoder is another image (the AutoencoderKL's).
            let viaVAE = try pipe.generate([c.request], steps: c.steps, width: c.size, height: c.size, eta: c.eta)
            XCTAssertFalse(c.badPixels(Self.hwc(viaVAE)).isEmpty, "the model's own decoder must not give TAESD's image")
        }
        // A model loaded without a TAESD folder refuses the choice.
        XCTAssertThrowsError(try loadText("sd_turbo_tiny").generate([TextGenerationRequest(prompt: "", seed: 1)], steps: 1, decoder: .taesd)) {
            XCTAssertTrue("\($0)".contains("without a TAESD folder"), "\($0)")
        }
    }

    /// Hyper-SD / TCD usage: the LoRA fused into an Euler model run with TCDScheduler on the folder's config values
    /// (diffusers: pipe.scheduler = TCDScheduler.from_config(pipe.scheduler.config), eta 0.3), 1 and 4 steps.
    func testSchedulerOverrideWithLoRAMatchesDiffusersTCD() throws {
        let ioPath = "\(Self.goldenDir)/tcd_lora_on_sd_turbo/io.safetensors"
        let pipe = try loadText("sd_turbo_tiny", extras: TextModelExtras(loras: [LoRASpec(path: Self.lora("sd_turbo_tiny", "kohya"), scale: 0.7)],
                                                                         schedulerClass: "TCDScheduler"))
        XCTAssertTrue(pipe.sampler is TCDSampler)
        let cases = try T2IGoldenCase.load(io: ioPath)
        XCTAssertEqual(cases.map(\.steps), [1, 4])
        for c in cases {
            let img = try pipe.generate([c.request], steps: c.steps, width: c.size, height: c.size, eta: c.eta)
            let bad = c.badPixels(Self.hwc(img))
            XCTAssertTrue(bad.isEmpty, "TCD + LoRA \(c.key): \(bad.count) uint8 values differ away from a rounding boundary")
        }
        XCTAssertThrowsError(try loadText("sd_turbo_tiny", extras: TextModelExtras(schedulerClass: "PNDMScheduler"))) {
            let e = $0 as? ModelLoadError
            XCTAssertTrue(e?.path.hasSuffix("scheduler/scheduler_config.json") == true && e?.problem.contains("'PNDMScheduler' (--scheduler)") == true
                          && e?.problem.contains("TCDScheduler") == true, "\($0)")
        }
    }

    /// uint8 (H, W, 3) of the first image of (N, 3, H, W), as diffusers' output_type="np" * 255 rounded.
    static func hwc(_ images: Tensor) -> [UInt8] {
        let h = images.shape[2], w = images.shape[3]
        let u = ImageQuantizer.toUInt8(images)   // (N, H, W, 3)
        return Array(u[0..<(h * w * 3)])
    }
}

/// Bad LoRA files, bad TAESD folders and text encoder variants: each refused with the file and the reason.
final class LoRALoadErrorTests: XCTestCase {
    func assertRefused(_ file: String, _ phrases: [String], line: UInt = #line, _ body: () throws -> Void) {
        XCTAssertThrowsError(try body(), line: line) { error in
            guard let e = error as? ModelLoadError else { return XCTFail("not a ModelLoadError: \(error)", line: line) }
            XCTAssertTrue(e.path.hasSuffix(file), "path \(e.path) does not end with \(file)", line: line)
            for p in phrases { XCTAssertTrue(e.problem.contains(p), "problem '\(e.problem)' does not mention '\(p)'", line: line) }
        }
    }

    func load(_ base: String = "sd_turbo_tiny", lora: String, scale: Float = 1) throws {
        _ = try GenerationPipeline.load(path: T2IGoldenCase.folder(base), extras: TextModelExtras(loras: [LoRASpec(path: lora, scale: scale)]))
    }

    /// The golden kohya LoRA of sd_turbo_tiny rewritten by `edit` (name -> tensor) into a temporary file.
    func edited(_ tag: String, _ edit: (inout [(String, Tensor)]) -> Void) throws -> String {
        let src = try SafetensorsFile(path: LoRAGoldenTests.lora("sd_turbo_tiny", "kohya"))
        var tensors = try src.names.map { ($0, try src.floats($0)) }
        edit(&tensors)
        var w = SafetensorsWriter()
        for (k, t) in tensors { w.add(k, t) }
        let path = Fixtures.tempDir(tag) + "/\(tag).safetensors"
        try w.write(to: path)
        return path
    }

    func testLoRAFilesThatDoNotFitAreRefusedNamingFileKeyAndReason() throws {
        // Every key renamed to modules this UNet does not have.
        var p = try edited("nomatch") { t in t = t.map { ($0.0.replacingOccurrences(of: "lora_unet_", with: "lora_unet_input_blocks_"), $0.1) } }
        assertRefused("nomatch.safetensors", ["unet LoRA layers match no module of this UNet", "input_blocks_"]) { try load(lora: p) }
        // One extra layer among matching ones: still refused (never fused in part).
        p = try edited("onemore") { t in
            t += [("lora_unet_mid_block_attentions_9_proj_in.lora_down.weight", Tensor(zeros: [4, 64])),
                  ("lora_unet_mid_block_attentions_9_proj_in.lora_up.weight", Tensor(zeros: [64, 4]))]
        }
        assertRefused("onemore.safetensors", ["1 of", "mid_block_attentions_9_proj_in", "refused rather than fused in part"]) { try load(lora: p) }
        // A down matrix whose width is not the layer's: the key and both shapes are named.
        p = try edited("shape") { t in
            let i = t.firstIndex { $0.0 == "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight" }!
            t[i].1 = Tensor(zeros: [4, 16])
        }
        assertRefused("shape.safetensors", ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight has shape [4, 16]",
                                            "down_blocks.0.attentions.0.proj_in.weight [32, 32]"]) { try load(lora: p) }
        // An up matrix without its down matrix.
        p = try edited("pair") { t in t.removeAll { $0.0 == "lora_unet_conv_in.lora_down.weight" || $0.0 == "lora_unet_mid_block_resnets_0_conv1.lora_down.weight" } }
        assertRefused("pair.safetensors", ["mid_block_resnets_0_conv1", "no down (lora_A / lora_down) matrix"]) { try load(lora: p) }
        // Keys of neither layout, DoRA, an SDXL second text encoder.
        p = try edited("layout") { t in t.append(("model.diffusion_model.input_blocks.1.weight", Tensor(zeros: [1]))) }
        assertRefused("layout.safetensors", ["keys of neither LoRA layout", "model.diffusion_model.input_blocks.1.weight"]) { try load(lora: p) }
        p = try edited("dora") { t in t.append(("lora_unet_conv_in.dora_scale", Tensor(zeros: [1]))) }
        assertRefused("dora.safetensors", ["DoRA"]) { try load(lora: p) }
        p = try edited("sdxl") { t in t.append(("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", Tensor(zeros: [4, 32]))) }
        assertRefused("sdxl.safetensors", ["second text encoder", "SDXL"]) { try load(lora: p) }
        // An alpha that is not one number.
        p = try edited("alpha") { t in
            let i = t.firstIndex { $0.0.hasSuffix(".alpha") }!
            t[i].1 = Tensor(zeros: [2])
        }
        assertRefused("alpha.safetensors", ["an alpha is one finite number"]) { try load(lora: p) }
        // Nothing in it; not a safetensors file; missing.
        p = try edited("empty") { t in t = [] }
        assertRefused("empty.safetensors", ["holds no LoRA layers"]) { try load(lora: p) }
        let junk = Fixtures.tempDir("junk") + "/junk.safetensors"
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: junk))
        assertRefused("junk.safetensors", ["cannot be read as a LoRA safetensors file"]) { try load(lora: junk) }
        assertRefused("missing.safetensors", ["cannot be read as a LoRA safetensors file"]) { try load(lora: "/nonexistent/missing.safetensors") }
        // The conv-projection LCM LoRA on the linear-projection SD-Turbo UNet: shapes of another model.
        assertRefused("lora_kohya.safetensors", ["does not fit down_blocks.0.attentions.0.proj_in.weight [32, 32]", "[4, 32, 1, 1]"]) {
            try load(lora: LoRAGoldenTests.lora("lcm_tiny", "kohya"))
        }
        // A pixel model takes no LoRA.
        XCTAssertThrowsError(try GenerationPipeline.load(path: Fixtures.golden + "/cd_tiny",
                                                         extras: TextModelExtras(loras: [LoRASpec(path: LoRAGoldenTests.lora("sd_turbo_tiny", "kohya"))]))) {
            XCTAssertTrue("\($0)".contains("is a pixel model"), "\($0)")
        }
    }

    /// kohya names are matched against the plan's module paths: every layer of the golden file maps to a module,
    /// and an underscore name is never resolved by string replacement (proj_in vs a made-up proj.in).
    func testKohyaNamesResolveThroughThePlansModulePaths() throws {
        let file = try LoRAFile(path: LoRAGoldenTests.lora("sd_turbo_tiny", "kohya"))
        let cfg = try UNet2DConditionConfig.load(path: T2IGoldenCase.folder("sd_turbo_tiny") + "/unet/config.json")
        let targets = UNet2DConditionModel.loraTargets(cfg)
        let fusion = try LoRAFusion(files: [(file, 1)], targets: targets)
        let unetLayers = file.layers.filter { $0.component == .unet }
        XCTAssertEqual(fusion.deltas.values.reduce(0) { $0 + $1.count }, unetLayers.count)
        XCTAssertNotNil(fusion.deltas["down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"])
        XCTAssertNotNil(fusion.deltas["time_embedding.linear_1.weight"])
        XCTAssertNotNil(fusion.deltas["up_blocks.0.resnets.0.conv_shortcut.weight"])
        // The per-module alpha of the PEFT config's alpha_pattern (2 where the others have 8): factor 2/4 vs 8/4.
        XCTAssertEqual(fusion.deltas["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"]?.first?.factor, 0.5)
        XCTAssertEqual(fusion.deltas["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"]?.first?.factor, 2)
        let diffusers = try LoRAFile(path: LoRAGoldenTests.lora("sd_turbo_tiny", "diffusers"))
        let viaMetadata = try LoRAFusion(files: [(diffusers, 1)], targets: targets)
        XCTAssertEqual(viaMetadata.deltas["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"]?.first?.factor, 0.5)
        XCTAssertEqual(viaMetadata.deltas["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"]?.first?.factor, 2)
        // Two module paths with the same underscore form are refused as ambiguous rather than guessed.
        let clash = LoRATargets(component: .unet, shapes: ["a.b_c": [4, 4], "a_b.c": [4, 4]])
        var w = SafetensorsWriter()
        w.add("lora_unet_a_b_c.lora_down.weight", Tensor(zeros: [1, 4]))
        w.add("lora_unet_a_b_c.lora_up.weight", Tensor(zeros: [4, 1]))
        let path = Fixtures.tempDir("clash") + "/clash.safetensors"
        try w.write(to: path)
        XCTAssertThrowsError(try LoRAFusion(files: [(try LoRAFile(path: path), 1)], targets: clash)) {
            XCTAssertTrue("\($0)".contains("could mean several modules"), "\($0)")
        }
    }

    /// The fusing arithmetic against a naive double-precision loop: W + f * up @ down.
    func testFusingArithmeticMatchesNaiveReference() {
        var rng = TestRandom(11)
        for (out, r, inFlat) in [(3, 1, 5), (32, 4, 288), (17, 8, 9)] {
            let w0 = rng.floats(out * inFlat), up = rng.floats(out * r), down = rng.floats(r * inFlat)
            var w = w0
            LoRAMath.addProduct(into: &w, up: up, down: down, out: out, rank: r, inFlat: inFlat, factor: 0.7)
            var worst = 0.0
            for o in 0..<out { for j in 0..<inFlat {
                var s = 0.0
                for k in 0..<r { s += Double(up[o * r + k]) * Double(down[k * inFlat + j]) }
                worst = max(worst, abs(Double(w0[o * inFlat + j]) + 0.7 * s - Double(w[o * inFlat + j])))
            } }
            // float32 sums of r products of values in [-1, 1]: a few ulps of the result.
            XCTAssertLessThanOrEqual(worst, 1e-5, "out \(out) r \(r) in \(inFlat)")
        }
    }

    func testLoRASpecParsing() throws {
        XCTAssertEqual(try LoRASpec(parsing: "a/b.safetensors"), LoRASpec(path: "a/b.safetensors", scale: 1))
        XCTAssertEqual(try LoRASpec(parsing: "a/b.safetensors:0.7"), LoRASpec(path: "a/b.safetensors", scale: 0.7))
        XCTAssertEqual(try LoRASpec(parsing: "dir:x/b.safetensors"), LoRASpec(path: "dir:x/b.safetensors", scale: 1))
        XCTAssertEqual(try LoRASpec(parsing: "b.safetensors:-0.5"), LoRASpec(path: "b.safetensors", scale: -0.5))
        XCTAssertThrowsError(try LoRASpec(parsing: ":0.5"))
        XCTAssertThrowsError(try LoRASpec(parsing: "b.safetensors:inf"))
        XCTAssertThrowsError(try LoRASpec(parsing: "b.safetensors:1000"))
    }

    func testTAESDFoldersThatDoNotFitAreRefused() throws {
        func load(_ taesd: String) throws {
            _ = try GenerationPipeline.load(path: T2IGoldenCase.folder("sd_turbo_tiny"), extras: TextModelExtras(taesdPath: taesd))
        }
        // An AutoencoderKL folder is not a TAESD.
        assertRefused("sd_turbo_tiny/vae/config.json", ["describes an AutoencoderKL decoder", "AutoencoderTiny"]) {
            try load(T2IGoldenCase.folder("sd_turbo_tiny") + "/vae")
        }
        // Another latent space (e.g. SD3 / FLUX TAESD with 16 channels): refused from config.json.
        let d = Fixtures.tempDir("taesd16")
        let src = T2IGoldenCase.folder("sdxs_tiny") + "/vae"
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: src + "/config.json"))) as! [String: Any]
        config["latent_channels"] = 16
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: d + "/config.json"))
        try FileManager.default.createSymbolicLink(atPath: d + "/diffusion_pytorch_model.safetensors", withDestinationPath: src + "/diffusion_pytorch_model.safetensors")
        assertRefused("config.json", ["latent_channels 16 does not match the UNet's out_channels 4"]) { try load(d) }
        assertRefused("nowhere", ["has no config.json"]) { try load("/nonexistent/nowhere") }
    }

    /// text_encoder/model.<variant>.safetensors as diffusers' `variant=` names it.
    func testTextEncoderVariantFiles() throws {
        let src = T2IGoldenCase.folder("lcm_tiny") + "/text_encoder"
        let d = Fixtures.tempDir("tevariant")
        let fm = FileManager.default
        try fm.copyItem(atPath: src + "/config.json", toPath: d + "/config.json")
        try fm.createSymbolicLink(atPath: d + "/model.fp16.safetensors", withDestinationPath: src + "/model.safetensors")
        let ids = [[49406, 320, 49407]]
        let plain = try CLIPTextModel(folder: src).forward(ids: ids)
        XCTAssertEqual(try CLIPTextModel(folder: d, variant: "fp16").forward(ids: ids).data, plain.data)
        XCTAssertEqual(try CLIPTextModel(folder: d).forward(ids: ids).data, plain.data, "the only variant file is taken")
        assertRefused(d.split(separator: "/").last.map(String.init)!, ["has no model.bf16.safetensors", "variants here: fp16"]) {
            _ = try CLIPTextModel(folder: d, variant: "bf16")
        }
        try fm.removeItem(atPath: d + "/model.fp16.safetensors")
        assertRefused("model.safetensors", ["is missing"]) { _ = try CLIPTextModel(folder: d) }
    }
}

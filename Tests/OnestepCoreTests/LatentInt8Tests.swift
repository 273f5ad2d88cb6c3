import Foundation
import XCTest
@testable import OnestepCore

/// int8 latent networks (Quant/LatentInt8.swift, Quant/LatentQuantizer.swift, LatentWeights' int8 packing) on the
/// golden tiny pipelines of ../shared/golden (T2I_README.md), quantized by the real `quantize` path into a
/// temporary folder. These are random-weight networks: every layer's weights and activations are spread evenly,
/// with none of the outlier channels of trained models, so the figures say that the int8 path is right, not how a
/// trained checkpoint will look.
final class LatentInt8Tests: XCTestCase {
    static let qualityFolders = ["sd_turbo_tiny", "sdxs_tiny", "lcm_tiny"]
    /// Lowest PSNR (dB) of an int8 pipeline's uint8 image against diffusers' fp32 image (measured 2026-11-30:
    /// 37.9 to 42.4 dB over the 15 golden cases, UNet, decoder and text encoder int8 of the three folders; the int8 kernels give the same bits on every
    /// CPU level, so the margin is for future changes, not machines).
    static let minImagePSNR = 35.0
    /// Largest mean |int8 - fp32| over the uint8 values of an image (measured: 1.41 to 1.77; max |diff| 10 to 21).
    static let maxMeanAbsUInt8 = 3.0
    /// Largest relative L2 of the int8 UNet's output against the fp32 UNet holding the same (dequantized) weights:
    /// what the per-image uint8 activation quantization costs alone (measured: 0.020 to 0.024).
    static let maxActivationQuantizationError = 0.05

    /// The golden folder `name` quantized (unet + vae, default threshold) once per test process.
    /// Largest relative L2 of the int8 text encoder's prompt_embeds against transformers' fp32 (measured 2026-11-30: 0.0092 to 0.0098).
    static let maxTextEmbeddingError = 0.03

    /// XCTest runs one test at a time, so this cache needs no lock.
    nonisolated(unsafe) static var quantized: [String: String] = [:]

    func quantizedFolder(_ name: String) throws -> String {
        if let p = Self.quantized[name] { return p }
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("int8-\(name)-\(getpid())").path
        try? FileManager.default.removeItem(atPath: out)
        let report = try LatentQuantizer.quantizePipeline(source: T2IGoldenCase.folder(name), destination: out)
        for c in report.components {
            let worst = c.layers.map(\.weightRelativeL2).max() ?? 0
            print(String(format: "%@ %@: %d of %d layers int8, worst weight relative L2 %.4f, output relative L2 vs fp32 %.4f",
                         name, c.folder, c.layers.filter(\.int8).count, c.layers.count, worst, c.outputRelativeL2))
        }
        Self.quantized[name] = out
        return out
    }

    override class func tearDown() {
        for p in quantized.values { try? FileManager.default.removeItem(atPath: p) }
        quantized = [:]
        super.tearDown()
    }

    func decoderWeights(_ d: LatentDecoder) -> LatentWeights {
        switch d { case .kl(let k): return k.weights; case .tiny(let t): return t.weights }
    }

    /// Every layer the file stores I8 runs in int8 and no other; each is packed from the file's codes and scales,
    /// bit for bit (no dequantize -> re-quantize).
    func testPackingKeepsTheStoredCodes() throws {
        for name in ["sd_turbo_tiny", "sdxs_tiny"] {
            let dir = try quantizedFolder(name)
            for (folder, weights) in [("unet", try UNet2DConditionModel.load(directory: dir + "/unet").weights),
                                      ("vae", decoderWeights(try LatentDecoder.load(directory: dir + "/vae", className: name == "sdxs_tiny" ? "AutoencoderTiny" : "AutoencoderKL")))] {
                let file = try SafetensorsFile(path: dir + "/\(folder)/diffusion_pytorch_model.safetensors")
                let i8 = file.entries.values.filter { $0.dtype == .I8 }.map { String($0.name.dropLast(".weight".count)) }.sorted()
                XCTAssertFalse(i8.isEmpty, "\(name)/\(folder): no I8 tensors written")
                XCTAssertEqual(weights.int8Layers, i8, "\(name)/\(folder): the int8 layers are exactly the file's I8 tensors")
                XCTAssertEqual(file.metadata[Int8Policy.metadataKey], LatentInt8.policyName)
                for prefix in i8 {
                    let stored = try Int8Weights.stored(file: file, key: prefix + ".weight")
                    if case .int8(let p)? = weights.convs[prefix] {
                        XCTAssertEqual(p.unpacked(), stored, "\(name)/\(folder) \(prefix): packed conv codes")
                    } else if let p = weights.linears[prefix]?.int8 {
                        let u = p.unpacked()
                        XCTAssertEqual(u.codes, stored.codes, "\(name)/\(folder) \(prefix): packed projection codes")
                        XCTAssertEqual(u.scales, stored.scales, "\(name)/\(folder) \(prefix): packed projection scales")
                    } else {
                        XCTFail("\(name)/\(folder) \(prefix) is I8 in the file but not packed int8")
                    }
                }
            }
        }
    }

    /// The text encoder's int8 projections: packed from the file's codes bit for bit; prompt embeddings against
    /// transformers' fp32 `prompt_embeds` within `maxTextEmbeddingError`; each prompt gives the same bits alone or
    /// in a batch.
    func testTextEncoderInt8() throws {
        for name in Self.qualityFolders {
            let dir = try quantizedFolder(name)
            let file = try SafetensorsFile(path: dir + "/text_encoder/model.safetensors")
            let enc = try CLIPTextModel(folder: dir + "/text_encoder")
            let prefix = file.entries["text_model.embeddings.token_embedding.weight"] != nil ? "text_model." : ""
            var int8 = 0
            for (n, layer) in enc.layers.enumerated() {
                for (key, l) in [("self_attn.q_proj", layer.q), ("self_attn.k_proj", layer.k), ("self_attn.v_proj", layer.v),
                                 ("self_attn.out_proj", layer.out), ("mlp.fc1", layer.fc1), ("mlp.fc2", layer.fc2)] {
                    let full = prefix + "encoder.layers.\(n).\(key).weight"
                    XCTAssertEqual(file.entries[full]?.dtype == .I8, l.packedRows8 != nil, "\(name) \(full): int8 iff stored I8")
                    guard let p = l.packedRows8 else { continue }
                    XCTAssertEqual(p.unpacked(), try Int8Weights.stored(file: file, key: full), "\(name) \(full): packed codes")
                    int8 += 1
                }
            }
            XCTAssertEqual(int8, 6 * enc.layers.count, "\(name): every encoder projection int8 at the default threshold")
            let io = try SafetensorsFile(path: T2IGoldenCase.folder(name) + "/io.safetensors")
            let ids = try io.integers("prompt_input_ids"), expected = try io.floats("prompt_embeds")
            let rows = (0..<ids.shape[0]).map { r in ids.values[(r * ids.shape[1])..<((r + 1) * ids.shape[1])].map { Int($0) } }
            let got = try enc.forward(ids: rows)
            let err = TensorError.relativeL2(got.data, expected.data)
            print("\(name): int8 text encoder prompt_embeds relative L2 vs transformers fp32 \(err)")
            XCTAssertLessThanOrEqual(err, Self.maxTextEmbeddingError, name)
            XCTAssertGreaterThan(err, 1e-5, "\(name): equal to fp32, so int8 did not run")
            let one = try enc.forward(ids: [rows[3]])
            XCTAssertEqual(one.data, got.slice(first: 3, count: 1).data, "\(name): prompt 3 alone vs in the batch")
            // Projections split over a team of 2 or 3 threads (token rows) give the same bits.
            for threads in [2, 3] {
                XCTAssertEqual(try enc.forward(ids: rows, team: FastConvTests.team(threads)).data.map(\.bitPattern), got.data.map(\.bitPattern),
                               "\(name): text encoder on a team of \(threads)")
                XCTAssertEqual(try enc.forward(ids: [rows[3]], team: FastConvTests.team(threads)).data, one.data, "\(name): one prompt on \(threads)")
            }
            // The bench's in-memory switch gives the written file's bits.
            let float = CLIPTextWeightFile(file: try SafetensorsFile(path: T2IGoldenCase.folder(name) + "/text_encoder/model.safetensors"))
            let inMemory = try CLIPTextModel(config: enc.config, weights: QuantizingWeights(float, selected: LatentInt8.textEncoderCandidates(enc.config)))
            XCTAssertEqual(try inMemory.forward(ids: rows).data, got.data, "\(name): in-memory quantization vs the written file")
        }
    }

    /// int8 vs fp32 images on the golden cases: the int8 pipeline's uint8 image against diffusers' (which the fp32
    /// pipeline matches bit for bit, TextToImageGoldenTests), within the named PSNR and mean-difference limits.
    func testGoldenImagesInt8AgainstFP32() throws {
        for name in Self.qualityFolders {
            let dir = try quantizedFolder(name)
            let pipe = try TextToImagePipeline.load(path: dir)
            for c in try T2IGoldenCase.load(name) {
                let got = ImageQuantizer.toUInt8(try pipe.generate([c.request], steps: c.steps, width: c.size, height: c.size, eta: c.eta))
                let d = ImageDifference(got, c.expected)
                print(String(format: "%@ %@ (%d steps): int8 vs fp32 PSNR %.2f dB, mean |diff| %.3f, max |diff| %d", name, c.key, c.steps, d.psnr, d.meanAbs, d.maxAbs))
                XCTAssertGreaterThanOrEqual(d.psnr, Self.minImagePSNR, "\(name) \(c.key) PSNR")
                XCTAssertLessThanOrEqual(d.meanAbs, Self.maxMeanAbsUInt8, "\(name) \(c.key) mean abs uint8 difference")
                XCTAssertGreaterThan(d.maxAbs, 0, "\(name) \(c.key): the int8 image equals fp32 exactly, so int8 did not run")
            }
        }
    }

    /// An int8 image gives the same bits alone or in a batch, and with 1 or 2 threads (UNet and both decoders).
    func testInt8BatchAndThreadInvariance() throws {
        for name in ["sd_turbo_tiny", "sdxs_tiny", "lcm_tiny"] {
            let dir = try quantizedFolder(name), io = try SafetensorsFile(path: T2IGoldenCase.folder(name) + "/io.safetensors")
            let unet = try UNet2DConditionModel.load(directory: dir + "/unet")
            XCTAssertFalse(unet.weights.int8Layers.isEmpty)
            let x = try io.floats("unet_x"), t = try io.floats("unet_t").data, ehs = try io.floats("unet_encoder_hidden_states")
            let cond = io.entries["unet_timestep_cond"] != nil ? try io.floats("unet_timestep_cond") : nil
            let pool = BufferPool()
            let y = try unet.forward(x, timesteps: t, encoderHiddenStates: ehs, timestepCond: cond, pool: pool)
            for i in 0..<2 {
                let one = try unet.forward(x.slice(first: i, count: 1), timesteps: [t[i]], encoderHiddenStates: ehs.slice(first: i, count: 1),
                                           timestepCond: cond?.slice(first: i, count: 1), pool: pool)
                XCTAssertEqual(one.data, y.slice(first: i, count: 1).data, "\(name) int8 unet: image \(i) alone vs in the batch")
            }
            let two = try unet.forward(x, timesteps: t, encoderHiddenStates: ehs, timestepCond: cond, pool: pool, threads: 2)
            XCTAssertEqual(two.data, y.data, "\(name) int8 unet: 2 threads vs 1")

            let cls = name == "sdxs_tiny" ? "AutoencoderTiny" : "AutoencoderKL"
            let vae = try LatentDecoder.load(directory: dir + "/vae", className: cls)
            XCTAssertFalse(decoderWeights(vae).int8Layers.isEmpty)
            let z = try io.floats("vae_latents")
            let d = try vae.decodeRaw(z)
            XCTAssertEqual(try vae.decodeRaw(z.slice(first: 1, count: 1)).data, d.slice(first: 1, count: 1).data, "\(name) int8 \(cls): batch")
            XCTAssertEqual(try vae.decodeRaw(z, threads: 2).data, d.data, "\(name) int8 \(cls): 2 threads vs 1")
        }
    }

    /// The AVX-512 1x1 driver and GEGLU fused into ff.net.0.proj (onestep_linear_q8.c, FastConv.projectGEGLU) give
    /// the int8 UNets the bits of the blocked conv driver followed by the separate GEGLU pass, on 1 and 2 threads
    /// (the tiny UNets' feed-forwards, 128 and 256 hidden rows, take the fused path).
    func testLinearDriverAndFusedGEGLUKeepTheUNetsBits() throws {
        try XCTSkipUnless(KernelLevel.avx512.isSupported, "no AVX-512 VNNI on this CPU: the 1x1 driver is not used")
        defer { FastConv.useLinearInt8Driver(true) }
        for name in ["sd_turbo_tiny", "sdxs_tiny", "lcm_tiny"] {
            let dir = try quantizedFolder(name), io = try SafetensorsFile(path: T2IGoldenCase.folder(name) + "/io.safetensors")
            let unet = try UNet2DConditionModel.load(directory: dir + "/unet")
            let x = try io.floats("unet_x"), t = try io.floats("unet_t").data, ehs = try io.floats("unet_encoder_hidden_states")
            let cond = io.entries["unet_timestep_cond"] != nil ? try io.floats("unet_timestep_cond") : nil
            for threads in [1, 2] {
                FastConv.useLinearInt8Driver(true)
                let fused = try unet.forward(x, timesteps: t, encoderHiddenStates: ehs, timestepCond: cond, threads: threads)
                FastConv.useLinearInt8Driver(false)
                let separate = try unet.forward(x, timesteps: t, encoderHiddenStates: ehs, timestepCond: cond, threads: threads)
                XCTAssertEqual(fused.data.map(\.bitPattern), separate.data.map(\.bitPattern), "\(name) threads \(threads)")
            }
        }
    }

    /// The int8 UNet against the fp32 UNet holding the same dequantized weights (the reference: fp32 kernels,
    /// checked against diffusers by LatentGoldenTests): only the activation quantization differs.
    /// In-memory quantization (the bench's switch) gives the bits of the written file.
    func testInt8UNetAgainstDequantizedReference() throws {
        for name in ["sd_turbo_tiny", "sdxs_tiny", "lcm_tiny"] {
            let dir = try quantizedFolder(name), io = try SafetensorsFile(path: T2IGoldenCase.folder(name) + "/io.safetensors")
            let unet8 = try UNet2DConditionModel.load(directory: dir + "/unet")
            let file = SafetensorsWeights(file: try SafetensorsFile(path: dir + "/unet/diffusion_pytorch_model.safetensors"))
            let reference = try UNet2DConditionModel(config: unet8.config, weights: FloatsOnly(file))
            XCTAssertTrue(reference.weights.int8Layers.isEmpty)
            let float = SafetensorsWeights(file: try SafetensorsFile(path: T2IGoldenCase.folder(name) + "/unet/diffusion_pytorch_model.safetensors"))
            let inMemory = try UNet2DConditionModel(config: unet8.config, weights: float.quantized(unet8.plan))
            let x = try io.floats("unet_x"), t = try io.floats("unet_t").data, ehs = try io.floats("unet_encoder_hidden_states")
            let cond = io.entries["unet_timestep_cond"] != nil ? try io.floats("unet_timestep_cond") : nil
            let y8 = try unet8.forward(x, timesteps: t, encoderHiddenStates: ehs, timestepCond: cond)
            let yr = try reference.forward(x, timesteps: t, encoderHiddenStates: ehs, timestepCond: cond)
            let err = TensorError.relativeL2(y8.data, yr.data)
            print("\(name): int8 unet vs fp32 on the dequantized weights, relative L2 \(err)")
            XCTAssertLessThanOrEqual(err, Self.maxActivationQuantizationError, name)
            XCTAssertGreaterThan(err, 0, "\(name): no difference, so no layer ran int8")
            let ym = try inMemory.forward(x, timesteps: t, encoderHiddenStates: ehs, timestepCond: cond)
            XCTAssertEqual(ym.data, y8.data, "\(name): in-memory quantization vs the written file")
        }
    }

    /// A threshold of 0 keeps every layer fp32 (the file then holds no I8 tensor and the network runs exactly as
    /// the float one); refusals name what was wrong.
    func testThresholdAndRefusals() throws {
        let src = T2IGoldenCase.folder("sdxs_tiny")
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("int8-threshold-\(getpid())").path
        try? FileManager.default.removeItem(atPath: tmp)
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        try FileManager.default.copyItem(atPath: src + "/unet/config.json", toPath: tmp + "/config.json")
        let float = try UNet2DConditionModel.load(directory: src + "/unet")
        let report = try LatentInt8.writeComponent(weights: src + "/unet/diffusion_pytorch_model.safetensors", plan: float.plan,
                                                   maxWeightError: 0, to: tmp + "/diffusion_pytorch_model.safetensors")
        XCTAssertEqual(report.count, LatentInt8.candidates(float.plan).count)
        XCTAssertTrue(report.allSatisfy { !$0.int8 && $0.weightRelativeL2 > 0 })
        let kept = try UNet2DConditionModel.load(directory: tmp)
        XCTAssertTrue(kept.weights.int8Layers.isEmpty)
        let x = Tensor(shape: [1, 4, 8, 8], data: (0..<256).map { Float($0 % 17) / 8 - 1 })
        let ehs = Tensor(shape: [1, 77, float.config.crossAttentionDim[0]], data: (0..<(77 * float.config.crossAttentionDim[0])).map { Float($0 % 13) / 6 - 1 })
        XCTAssertEqual(try kept.forward(x, timesteps: [500], encoderHiddenStates: ehs).data,
                       try float.forward(x, timesteps: [500], encoderHiddenStates: ehs).data)
        // Edge convolutions (4 latent channels) are never candidates.
        XCTAssertFalse(LatentInt8.candidates(float.plan).contains { $0.key.hasPrefix("conv_in.") || $0.key.hasPrefix("conv_out.") })

        // An int8 file is refused as a source; an existing destination is refused.
        let q = try quantizedFolder("sdxs_tiny")
        XCTAssertThrowsError(try LatentInt8.writeComponent(weights: q + "/unet/diffusion_pytorch_model.safetensors", plan: float.plan,
                                                           maxWeightError: 0.05, to: tmp + "/again.safetensors")) { e in
            XCTAssertTrue("\(e)".contains("already int8"), "\(e)")
        }
        XCTAssertThrowsError(try LatentQuantizer.quantizePipeline(source: src, destination: tmp)) { e in
            XCTAssertTrue("\(e)".contains("already exists"), "\(e)")
        }
        XCTAssertThrowsError(try LatentQuantizer.quantizePipeline(source: src, destination: tmp + "/x", maxWeightError: .nan)) { e in
            XCTAssertTrue("\(e)".contains("max weight error"), "\(e)")
        }
    }
}

/// A source that hides a file's int8 codes: the network packs the dequantized floats fp32 (the reference).
private struct FloatsOnly: WeightSource {
    let base: SafetensorsWeights
    init(_ base: SafetensorsWeights) { self.base = base }
    func contains(_ key: String) -> Bool { base.contains(key) }
    func tensor(_ key: String, shape: [Int]) throws -> Tensor { try base.tensor(key, shape: shape) }
}

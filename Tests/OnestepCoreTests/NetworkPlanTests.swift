import XCTest
@testable import OnestepCore

/// The one layer description (UNet2DPlan) against what is built from it: the loaded model's layer walk, the
/// packing for serving, FLOPs, and int8 packing straight from the file's codes.
final class NetworkPlanTests: XCTestCase {
    /// Every config shape the subset allows: scale_shift, resnet resamplers, Downsample2D padding 0, mid-block
    /// scale, no mid attention norm, several heads, and a model without a mid block.
    static func configs() throws -> [(String, UNetConfig)] {
        let variants = try UNetConfig(json: [
            "sample_size": 8, "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16, 16], "layers_per_block": 2,
            "down_block_types": ["DownBlock2D", "ResnetDownsampleBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "ResnetUpsampleBlock2D", "UpBlock2D"],
            "norm_num_groups": 4, "attention_head_dim": 4, "resnet_time_scale_shift": "scale_shift",
            "downsample_padding": 0, "mid_block_scale_factor": 1.414, "time_embedding_dim": 12, "num_class_embeds": 3,
        ])
        let resnetResample = try UNetConfig(json: [
            "sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16], "layers_per_block": 1,
            "down_block_types": ["AttnDownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D"],
            "downsample_type": "resnet", "upsample_type": "resnet", "norm_num_groups": 4, "attention_head_dim": 8,
            "mid_block_type": NSNull(),
        ])
        var out = [("variants", variants), ("resnet resamplers, no mid block", resnetResample)]
        for name in ["ddpm_tiny", "cd_tiny", "ddpm_gray"] {
            out.append((name, try ModelDirectory(path: try Fixtures.goldenCase(name)).loadConfig()))
        }
        return out
    }

    /// Deterministic random weights for any key and shape.
    struct RandomWeights: WeightSource {
        func tensor(_ key: String, shape: [Int]) throws -> Tensor {
            var r = TestRandom(key.utf8.reduce(1469598103934665603) { ($0 ^ UInt64($1)) &* 1099511628211 })  // FNV-1a
            return Tensor(shape: shape, data: r.floats(shape.reduce(1, *)).map { $0 * 0.2 })
        }
        func contains(_ key: String) -> Bool { true }
    }

    /// What the layer walk found: each conv and linear with how it was packed.
    struct PackingAudit: LayerVisitor {
        var convs: [(key: String, packed: String)] = []
        var linears: [(key: String, packed: Bool)] = []
        mutating func visit(_ layer: inout Conv2DLayer) {
            switch layer.packed {
            case .f32: convs.append((layer.key, "f32"))
            case .int8: convs.append((layer.key, "int8"))
            case nil: convs.append((layer.key, "none"))
            }
        }
        mutating func visit(_ layer: inout LinearLayer) { linears.append((layer.key, layer.packed != nil)) }
    }

    func testModelParametersAreThePlanTensors() throws {
        for (name, cfg) in try Self.configs() {
            let model = try UNet2DModel(config: cfg, weights: RandomWeights())
            XCTAssertEqual(model.parameters.map(\.0), model.plan.tensors.map(\.key), name)
            XCTAssertEqual(model.parameters.map(\.1.shape), model.plan.tensors.map(\.shape), name)
        }
    }

    /// No conv or linear layer is left to the im2col + OpenBLAS fallback once packed: the walk that packs is the
    /// walk over the plan's layers, and at int8 exactly the policy's layers run int8.
    func testEveryConvAndLinearIsPackedForServing() throws {
        for (name, cfg) in try Self.configs() {
            var model = try UNet2DModel(config: cfg, weights: RandomWeights())
            let planConvs = model.plan.layers.filter { $0.convGeometry != nil }
            let planLinears = model.plan.layers.filter { if case .linear = $0.kind { return true } else { return false } }
            for precision in [ConvPrecision.fp32, .int8] {
                model.packForServing(precision)
                var audit = PackingAudit()
                model.visitLayers(&audit)
                XCTAssertEqual(audit.convs.map(\.key), planConvs.map(\.key), "\(name) \(precision)")
                XCTAssertEqual(audit.linears.map(\.key), planLinears.map(\.key), "\(name) \(precision)")
                XCTAssertTrue(audit.linears.allSatisfy(\.packed), "\(name) \(precision): unpacked linear")
                for (conv, spec) in zip(audit.convs, planConvs) {
                    let expected = precision == .int8 && Int8Policy.innerConvolutions.selects(spec) ? "int8" : "f32"
                    XCTAssertEqual(conv.packed, expected, "\(name) \(precision): \(conv.key)")
                }
            }
            // The edge convolutions are the only fp32 ones at int8.
            XCTAssertEqual(planConvs.filter { !Int8Policy.innerConvolutions.selects($0) }.map(\.key), ["conv_in", "conv_out"], name)
        }
    }

    /// FLOPs are the sum over the plan's layers, and every layer's count follows from where it runs: a conv's
    /// pixels are its output size, checked against the shape the serving forward produces for the whole model.
    func testFlopsComeFromThePlanWalk() throws {
        for (name, cfg) in try Self.configs() {
            let plan = UNet2DPlan(config: cfg)
            XCTAssertEqual(plan.flopsPerImage, plan.layers.reduce(0) { $0 + $1.flopsPerImage }, name)
            let s = cfg.sampleSize
            XCTAssertEqual(plan.convIn.pixels, s * s, name)
            XCTAssertEqual(plan.convOut.pixels, s * s, name)
            for (i, block) in plan.down.enumerated() {
                let side = s >> i
                for r in block.resnets { XCTAssertEqual(r.conv1.pixels, side * side, "\(name) \(r.key)") }
                if case .strideConv(let c)? = block.resampler { XCTAssertEqual(c.pixels, side * side / 4, "\(name) \(c.key)") }
                if case .resnet(let r)? = block.resampler { XCTAssertEqual(r.conv2.pixels, side * side / 4, "\(name) \(r.key)") }
            }
            for (i, block) in plan.up.enumerated() {
                let side = s >> (cfg.levels - 1 - i)
                for r in block.resnets { XCTAssertEqual(r.conv2.pixels, side * side, "\(name) \(r.key)") }
                if case .upsampleConv(let c)? = block.resampler { XCTAssertEqual(c.pixels, 4 * side * side, "\(name) \(c.key)") }
            }
            // The dominant conv is the largest of all convolutions (shortcuts, resamplers and edges included).
            let convFlops = plan.layers.filter { $0.convGeometry != nil }.map(\.flopsPerImage)
            XCTAssertEqual(plan.dominantConvolution.flopsPerImage, convFlops.max(), name)
            // An unpacked conv layer is counted like any other: conv flops = 2 * Cout * K * pixels.
            let g = plan.convIn.convGeometry!
            XCTAssertEqual(plan.convIn.flopsPerImage, g.flops(height: s, width: s), name)
        }
    }
}

/// int8 weights go from the file to the kernels unchanged, and the file records which layers are int8.
final class Int8FromFileTests: XCTestCase {
    struct Int8Audit: LayerVisitor {
        var packedCodes: [String: Int8Tensor] = [:]
        var fp32: [String] = []
        mutating func visit(_ layer: inout Conv2DLayer) {
            switch layer.packed {
            case .int8(let p): packedCodes[layer.key] = p.unpacked()
            default: fp32.append(layer.key)
            }
        }
        /// Linear layers (attention projections) are packed as 1x1 int8 convolutions: read back as (out, in).
        mutating func visit(_ layer: inout LinearLayer) {
            guard let p = layer.packed8 else { fp32Linears.append(layer.key); return }
            let u = p.unpacked()
            packedCodes[layer.key] = Int8Tensor(shape: [u.shape[0], u.shape[1]], codes: u.codes, scales: u.scales)
            linearKeys.append(layer.key)
        }
        var linearKeys: [String] = []
        var fp32Linears: [String] = []
    }

    /// Compares the packed codes and scales with the file's I8 tensors, bit for bit.
    func assertPackedKeepsFileCodes(_ model: UNet2DModel, file: SafetensorsFile, _ what: String) throws -> Int {
        var m = model
        m.packForServing(.int8)
        var audit = Int8Audit()
        m.visitLayers(&audit)
        var checked = 0
        for (key, packed) in audit.packedCodes {
            let name = key + ".weight"
            guard file.entries[name]?.dtype == .I8 else { continue }
            let (shape, codes) = try file.int8(name)
            let scales = try file.floats(name + Int8Weights.scaleSuffix).data
            XCTAssertEqual(packed.shape, shape, "\(what): \(key)")
            XCTAssertEqual(packed.codes, codes, "\(what): \(key) codes")
            XCTAssertEqual(packed.scales.map(\.bitPattern), scales.map(\.bitPattern), "\(what): \(key) scales")
            checked += 1
        }
        return checked
    }

    /// Rewrites a weight file with its tensors and metadata edited (I8 tensors as codes + scales).
    static func rewrite(_ path: String, _ edit: (inout [String: String], inout [(String, Tensor?, Int8Tensor?)]) -> Void) throws {
        let file = try SafetensorsFile(path: path)
        var tensors: [(String, Tensor?, Int8Tensor?)] = []
        for name in file.names where !(name.hasSuffix(Int8Weights.scaleSuffix) && file.entries[String(name.dropLast(Int8Weights.scaleSuffix.count))]?.dtype == .I8) {
            if file.entries[name]!.dtype == .I8 {
                tensors.append((name, nil, try Int8Weights.stored(file: file, key: name)))
            } else {
                tensors.append((name, try file.floats(name), nil))
            }
        }
        var meta = file.metadata
        edit(&meta, &tensors)
        var w = SafetensorsWriter()
        for (name, t, q) in tensors {
            if let q {
                w.add(name, int8: q.codes, shape: q.shape)
                w.add(name + Int8Weights.scaleSuffix, Tensor(shape: [q.scales.count], data: q.scales))
            } else {
                w.add(name, t!)
            }
        }
        w.metadata = meta
        try w.write(to: path)
    }

    func testQuantizedFileRecordsPolicyAndPackingKeepsItsCodes() throws {
        let out = Fixtures.tempDir()
        _ = try Quantizer.quantizeDirectory(source: try Fixtures.goldenCase("cd_tiny"), destination: out)
        // Halved codes are as valid a file as any, but no row reaches ±127 any more: re-quantizing the
        // dequantized weights would give other codes and scales, so only packing from the codes passes below.
        try Self.rewrite(out + "/diffusion_pytorch_model.safetensors") { _, tensors in
            for i in tensors.indices where tensors[i].2 != nil { tensors[i].2!.codes = tensors[i].2!.codes.map { $0 / 2 } }
        }
        let (model, file) = try ModelDirectory(path: out).loadModel()
        XCTAssertEqual(file.metadata[Int8Policy.metadataKey], Int8Policy.innerConvolutions.rawValue)
        // The file stores I8 for exactly the policy's layers: conv_in, conv_out and the linears stay F32.
        for layer in model.plan.layers where layer.convGeometry != nil || layer.kind.isLinear {
            let dtype = file.entries[layer.key + ".weight"]!.dtype
            XCTAssertEqual(dtype == .I8, Int8Policy.innerConvolutions.selects(layer), layer.key)
        }
        let selected = model.plan.layers.filter(Int8Policy.innerConvolutions.selects).count
        XCTAssertEqual(try assertPackedKeepsFileCodes(model, file: file, "cd_tiny int8"), selected)
    }

    /// Attention projections stored I8 (policy inner-convolutions+attention-projections) are packed from the
    /// file's codes too, not re-quantized from their dequantized floats: halved codes (no row reaches 127) would
    /// come back as other codes and scales.
    func testAttentionProjectionsArePackedFromTheFilesCodes() throws {
        let out = Fixtures.tempDir()
        _ = try Quantizer.quantizeDirectory(source: try Fixtures.goldenCase("cd_tiny"), destination: out)
        let policy = Int8Policy.innerConvolutionsAndAttention
        let projections = Set(try ModelDirectory(path: out).loadModel().0.plan.layers
            .filter { $0.role == .attentionProjection }.map { $0.key + ".weight" })
        XCTAssertFalse(projections.isEmpty, "cd_tiny has attention blocks")
        try Self.rewrite(out + "/diffusion_pytorch_model.safetensors") { meta, tensors in
            meta[Int8Policy.metadataKey] = policy.rawValue
            for i in tensors.indices where projections.contains(tensors[i].0) {
                var q = Int8Weights.quantize(tensors[i].1!)
                q.codes = q.codes.map { $0 / 2 }
                tensors[i] = (tensors[i].0, nil, q)
            }
        }
        let (model, file) = try ModelDirectory(path: out).loadModel()
        XCTAssertEqual(model.int8Policy, policy)
        var m = model
        m.packForServing(.int8)
        var audit = Int8Audit()
        m.visitLayers(&audit)
        XCTAssertEqual(Set(audit.linearKeys.map { $0 + ".weight" }), projections)
        let selected = model.plan.layers.filter(policy.selects).count
        XCTAssertEqual(try assertPackedKeepsFileCodes(model, file: file, "cd_tiny attention int8"), selected)
    }

    /// An int8 file from before the policy key (the shipped model was one until the guided default model of
    /// session 6; this test rebuilds one from it): it loads with the role rule, and its stored codes are packed as
    /// they are.
    func testLegacyFileLoadsWithRoleRule() throws {
        let dir = Fixtures.tempDir()
        try Self.writeLegacyInt8(from: Fixtures.repoRoot + "/models/shapes16-cd-int8", to: dir)
        let (model, file) = try ModelDirectory(path: dir).loadModel()
        XCTAssertNil(file.metadata[Int8Policy.metadataKey], "expected a file from before the policy key")
        XCTAssertEqual(model.int8Policy, .innerConvolutions)
        XCTAssertEqual(file.entries["conv_in.weight"]?.dtype, .I8, "legacy files quantized edges by size")
        var m = model
        m.packForServing(.int8)
        var audit = Int8Audit()
        m.visitLayers(&audit)
        XCTAssertEqual(Set(audit.fp32), ["conv_in", "conv_out"])
        XCTAssertGreaterThan(try assertPackedKeepsFileCodes(model, file: file, "shapes16-cd-int8"), 10)
    }

    /// Writes `source`'s weights as builds before the policy key did: every conv and linear weight of at least 256
    /// values int8 (conv_in and conv_out included), everything else float32, no policy key in the metadata.
    static func writeLegacyInt8(from source: String, to out: String) throws {
        let (model, _) = try ModelDirectory(path: source).loadModel()
        let layerWeights = Set(model.plan.layers.map { $0.key + ".weight" })
        var writer = SafetensorsWriter()
        var quantized: [String] = []
        for (name, t) in model.parameters {
            if layerWeights.contains(name), t.count >= 256 {
                let q = Int8Weights.quantize(t)
                writer.add(name, int8: q.codes, shape: t.shape)
                writer.add(name + Int8Weights.scaleSuffix, Tensor(shape: [t.shape[0]], data: q.scales))
                quantized.append(name)
            } else {
                writer.add(name, t)
            }
        }
        writer.metadata = ["format": "pt", Int8Weights.metadataKey: Int8Weights.formatName, "onestep.scale_suffix": Int8Weights.scaleSuffix,
                           "onestep.quantized": quantized.joined(separator: ",")]
        for f in ["config.json", "scheduler_config.json"] { try FileManager.default.copyItem(atPath: source + "/" + f, toPath: out + "/" + f) }
        try writer.write(to: out + "/diffusion_pytorch_model.safetensors")
    }

    func testUnknownPolicyAndMismatchedFileAreRefused() throws {
        let out = Fixtures.tempDir()
        _ = try Quantizer.quantizeDirectory(source: try Fixtures.goldenCase("ddpm_gray"), destination: out)
        let path = out + "/diffusion_pytorch_model.safetensors"
        try Self.rewrite(path) { meta, _ in meta[Int8Policy.metadataKey] = "all-layers" }
        XCTAssertThrowsError(try ModelDirectory(path: out).loadModel()) { error in
            XCTAssertTrue("\(error)".contains("all-layers") && "\(error)".contains(Int8Policy.metadataKey), "\(error)")
        }
        // A selected conv stored as floats: what would run in int8 is not what the file says.
        try Self.rewrite(path) { meta, tensors in
            meta[Int8Policy.metadataKey] = Int8Policy.innerConvolutions.rawValue
            let i = tensors.firstIndex { $0.0 == "down_blocks.0.resnets.0.conv1.weight" }!
            tensors[i] = (tensors[i].0, Int8Weights.dequantize(tensors[i].2!), nil)
        }
        XCTAssertThrowsError(try ModelDirectory(path: out).loadModel()) { error in
            XCTAssertTrue("\(error)".contains("down_blocks.0.resnets.0.conv1.weight") && "\(error)".contains("re-quantize"), "\(error)")
        }
    }
}

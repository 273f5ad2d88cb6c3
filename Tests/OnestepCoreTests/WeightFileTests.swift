import XCTest
@testable import OnestepCore

/// Bad weight files and configs: each gives a clear error naming what is wrong, never a crash.
final class WeightFileTests: XCTestCase {
    func goldenBytes() throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: try Fixtures.goldenCase("ddpm_gray") + "/diffusion_pytorch_model.safetensors")))
    }

    /// A copy of ddpm_gray with the weights file replaced by `bytes` (and optionally another config).
    func modelDir(weights bytes: [UInt8], config: [String: Any]? = nil) throws -> String {
        let dir = Fixtures.tempDir()
        let src = try Fixtures.goldenCase("ddpm_gray")
        if let config {
            try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: dir + "/config.json"))
        } else {
            try FileManager.default.copyItem(atPath: src + "/config.json", toPath: dir + "/config.json")
        }
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/diffusion_pytorch_model.safetensors"))
        return dir
    }

    func loadError(_ dir: String) -> String {
        do {
            _ = try ImagePipeline.load(path: dir)
            return ""
        } catch {
            return "\(error)"
        }
    }

    func testTruncatedFilesAreRefused() throws {
        let bytes = try goldenBytes()
        for cut in [0, 4, 8, 100, bytes.count / 2, bytes.count - 1] {
            let msg = loadError(try modelDir(weights: Array(bytes.prefix(cut))))
            XCTAssertFalse(msg.isEmpty, "cut at \(cut) loaded")
            XCTAssertTrue(msg.contains("truncated") || msg.contains("too short"), "cut at \(cut): \(msg)")
        }
    }

    func testCorruptHeaderIsRefused() throws {
        var bytes = try goldenBytes()
        bytes[8] = UInt8(ascii: "x")  // the header's opening brace
        XCTAssertTrue(loadError(try modelDir(weights: bytes)).contains("does not start with '{'"))
        var huge = try goldenBytes()
        huge[7] = 0x7F  // header length far past the end
        XCTAssertTrue(loadError(try modelDir(weights: huge)).contains("header length"))
    }

    func testBadEntriesNameTheTensor() throws {
        func file(_ header: String, data: Int) -> [UInt8] {
            var h = Array(header.utf8)
            while h.count % 8 != 0 { h.append(0x20) }
            var out = [UInt8]()
            var n = UInt64(h.count).littleEndian
            withUnsafeBytes(of: &n) { out += $0 }
            return out + h + [UInt8](repeating: 0, count: data)
        }
        let cases: [(String, Int, String)] = [
            (#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, 8, "outside"),
            (#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8, "needs 12"),
            (#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#, 8, "not supported"),
            (#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, 8, "non-negative"),
            (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, 8, "outside"),
            (#"{"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}}"#, 8, "larger than the file"),
            (#"{"a":[1,2]}"#, 0, "not an object"),
        ]
        for (header, data, expected) in cases {
            XCTAssertThrowsError(try SafetensorsFile(bytes: file(header, data: data))) { e in
                XCTAssertTrue("\(e)".contains(expected), "\(header): \(e)")
                if header.contains("\"a\":{") { XCTAssertTrue("\(e)".contains("'a'"), "error does not name the tensor: \(e)") }
            }
        }
    }

    func testMismatchedWeightsAreRefused() throws {
        // ddpm_tiny's weights under ddpm_gray's config.
        let other = [UInt8](try Data(contentsOf: URL(fileURLWithPath: try Fixtures.goldenCase("ddpm_tiny") + "/diffusion_pytorch_model.safetensors")))
        let msg = loadError(try modelDir(weights: other))
        XCTAssertTrue(msg.contains("conv_in.weight") && msg.contains("shape"), msg)
        // A missing tensor.
        let file = try SafetensorsFile(bytes: try goldenBytes())
        var w = SafetensorsWriter()
        for name in file.names where name != "conv_out.bias" { w.add(name, try file.floats(name)) }
        XCTAssertTrue(loadError(try modelDir(weights: w.serialized())).contains("'conv_out.bias' is missing"))
        // An extra tensor.
        var extra = SafetensorsWriter()
        for name in file.names { extra.add(name, try file.floats(name)) }
        extra.add("mystery.weight", Tensor(zeros: [2]))
        XCTAssertTrue(loadError(try modelDir(weights: extra.serialized())).contains("mystery.weight"))
    }

    /// A NaN or an infinity in the weights would make every image black without an error: refused at load, naming
    /// the tensor and the value.
    func testNonFiniteWeightsAreRefused() throws {
        let file = try SafetensorsFile(bytes: try goldenBytes())
        for (bad, spelled) in [(Float.nan, "nan"), (-Float.infinity, "-inf")] {
            var w = SafetensorsWriter()
            for name in file.names {
                var t = try file.floats(name)
                if name == "conv_out.weight" { t.data[t.data.count / 2] = bad }
                w.add(name, t)
            }
            let msg = loadError(try modelDir(weights: w.serialized()))
            XCTAssertTrue(msg.contains("conv_out.weight") && msg.contains(spelled) && msg.contains("re-export"), msg)
        }
    }

    func testUnsupportedConfigsNameKeyAndValue() throws {
        let base = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: try Fixtures.goldenCase("ddpm_gray") + "/config.json"))) as! [String: Any]
        let cases: [(String, Any, String)] = [
            ("down_block_types", ["CrossAttnDownBlock2D", "AttnDownBlock2D"], "CrossAttnDownBlock2D"),
            ("time_embedding_type", "fourier", "fourier"),
            ("act_fn", "gelu", "gelu"),
            ("resnet_time_scale_shift", "spatial", "spatial"),
            ("in_channels", 7, "7"),
            ("sample_size", 9, "9"),
            ("norm_num_groups", 3, "3"),
            ("class_embed_type", "timestep", "timestep"),
            ("block_out_channels", [16], "1"),
            ("layers_per_block", "two", "two"),
        ]
        for (key, value, shown) in cases {
            var cfg = base
            cfg[key] = value
            let msg = loadError(try modelDir(weights: try goldenBytes(), config: cfg))
            XCTAssertTrue(msg.contains(key) || msg.contains("down_block_types"), "\(key): \(msg)")
            XCTAssertTrue(msg.contains(shown), "\(key) = \(value): \(msg)")
        }
    }

    /// A config.json with a syntax error names the line and column; a missing folder says it does not exist.
    func testConfigSyntaxErrorNamesLineAndColumnAndMissingFolderSaysSo() throws {
        let dir = try modelDir(weights: try goldenBytes())
        try Data("{\n  \"in_channels\": 1,,\n  \"sample_size\": 8\n}".utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        let msg = loadError(dir)
        XCTAssertTrue(msg.contains("config.json: is not valid JSON at line 2, column 20 (expected a key string)"), msg)
        XCTAssertFalse(msg.contains("(file)"), msg)
        let missing = loadError(dir + "/no-such-model")
        XCTAssertTrue(msg.isEmpty == false && missing.contains("does not exist"), missing)
    }

    /// Found with fuzz/ (model_config's "accepted config is sane" check): norm_eps 1e300 was accepted as an
    /// infinite Float and 1e-50 as 0 (GroupNorm then divides by zero), since only the Double was range-checked.
    func testConfigFloatsOutsideFloatRangeAreRefused() throws {
        let base = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: try Fixtures.goldenCase("ddpm_gray") + "/config.json"))) as! [String: Any]
        for key in ["norm_eps", "mid_block_scale_factor"] {
            for value in [1e300, 1e-50] {
                var cfg = base
                cfg[key] = value
                XCTAssertThrowsError(try UNetConfig(json: cfg), "\(key) = \(value)") { error in
                    let configError = error as? ConfigError
                    XCTAssertEqual(configError?.key, key)
                    XCTAssertTrue(configError?.problem.contains("Float range") ?? false, "\(error)")
                }
            }
            var cfg = base
            cfg[key] = 1e-6
            XCTAssertNoThrow(try UNetConfig(json: cfg), "\(key) = 1e-6 is an ordinary value")
        }
    }

    /// Found by fuzz/ (model_config): a first block width of 2 with freq_shift 1 was accepted, and the sinusoidal
    /// time embedding then divides by width/2 - freq_shift = 0, so every output was NaN. The fuzzer's input
    /// (fuzz/corpus/model_config/regression-freq-shift-width-2-config.json, mangled keys and all) is now refused.
    func testConfigWhoseTimeEmbeddingDividesByZeroIsRefused() throws {
        let crashing = """
            {"_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1, "out_channels": 1,
             "block_out_channels": [2, 16], "layers_p-CSblock-TP": 1, "norm_num_groups": 2, "attention_head_dim": 8,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
             "mid_block_typ1e": null, "flip_sin_to_cos": false, "freq_shift": 1, "center_input_samp-0le": true}
            """
        var json = try JSONSerialization.jsonObject(with: Data(crashing.utf8)) as! [String: Any]
        XCTAssertThrowsError(try UNetConfig(json: json)) { error in
            XCTAssertEqual((error as? ConfigError)?.key, "freq_shift")
            XCTAssertTrue("\(error)".contains("at least 4"), "\(error)")
        }
        json["freq_shift"] = 0
        XCTAssertNoThrow(try UNetConfig(json: json), "width 2 without the shift divides by 1")
    }

    func testWriterRoundTripAllDTypes() throws {
        var w = SafetensorsWriter()
        w.add("f", Tensor(shape: [2, 3], data: [1, -2, 3.5, 0, 1e-8, -7]))
        w.add("q", int8: [-127, 0, 5, 127], shape: [2, 2])
        w.add("u", uint8: [0, 255, 9], shape: [3])
        w.add("l", int64: [-5, 1 << 40], shape: [2])
        w.metadata = ["k": "v"]
        let path = Fixtures.tempDir() + "/x.safetensors"
        try w.write(to: path)
        let f = try SafetensorsFile(path: path)
        XCTAssertEqual(try f.floats("f").data, [1, -2, 3.5, 0, 1e-8, -7])
        XCTAssertEqual(try f.int8("q").values, [-127, 0, 5, 127])
        XCTAssertEqual(try f.integers("u").values, [0, 255, 9])
        XCTAssertEqual(try f.integers("l").values, [-5, 1 << 40])
        XCTAssertEqual(f.metadata["k"], "v")
        XCTAssertThrowsError(try f.floats("q")) { XCTAssertTrue("\($0)".contains("expected a float")) }
    }

    func testHalfAndBFloat16Conversion() throws {
        // F16: 1.0 = 0x3C00, -2.0 = 0xC000, 65504 = 0x7BFF, smallest subnormal 0x0001; BF16: 1.0 = 0x3F80.
        let header = #"{"h":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[8,10]}}"#
        var h = Array(header.utf8)
        while h.count % 8 != 0 { h.append(0x20) }
        var bytes = [UInt8]()
        var n = UInt64(h.count).littleEndian
        withUnsafeBytes(of: &n) { bytes += $0 }
        bytes += h + [0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B, 0x01, 0x00, 0x80, 0x3F]
        let f = try SafetensorsFile(bytes: bytes)
        XCTAssertEqual(try f.floats("h").data, [1, -2, 65504, Float(sign: .plus, exponent: -24, significand: 1)])
        XCTAssertEqual(try f.floats("b").data, [1])
    }

    func testInt8ModelLoadsAndStaysClose() throws {
        let out = Fixtures.tempDir()
        let report = try Quantizer.quantizeDirectory(source: try Fixtures.goldenCase("cd_tiny"), destination: out)
        let p = try ImagePipeline.load(path: out)
        XCTAssertEqual(p.weightDType, "int8")
        let file = try SafetensorsFile(path: out + "/diffusion_pytorch_model.safetensors")
        XCTAssertEqual(file.metadata["onestep.quantization"], Int8Weights.formatName)
        XCTAssertEqual(file.entries["down_blocks.0.resnets.0.conv1.weight"]?.dtype, .I8)
        XCTAssertEqual(file.entries["down_blocks.0.resnets.0.conv1.weight_scale"]?.dtype, .F32)
        // Random-weight golden models amplify weight noise; this is a sanity bound, the real limit is checked
        // on a trained model.
        XCTAssertLessThan(report.tensorErrors.map(\.relativeL2).max()!, 0.02)
        XCTAssertGreaterThan(report.psnr, 20)
    }
}

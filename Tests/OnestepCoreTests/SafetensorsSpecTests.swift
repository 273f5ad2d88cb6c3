import XCTest
@testable import OnestepCore

/// Every rule of the safetensors format is enforced at load (issue 16 item 1), and files written by the reference
/// `safetensors` package (Tests/Golden/safetensors, made by scripts/golden/make_safetensors_files.py) read exactly.
final class SafetensorsSpecTests: XCTestCase {
    static let goldenDir = Fixtures.repoRoot + "/Tests/Golden/safetensors"

    /// A file from a header string and a data section of `data` bytes (value i at byte i, so moved bytes show).
    func file(_ header: String, data: Int) -> [UInt8] {
        var h = Array(header.utf8)
        while h.count % 8 != 0 { h.append(0x20) }
        var out = [UInt8]()
        var n = UInt64(h.count).littleEndian
        withUnsafeBytes(of: &n) { out += $0 }
        return out + h + (0..<data).map { UInt8(truncatingIfNeeded: $0) }
    }

    func refusal(_ bytes: [UInt8]) -> String {
        do {
            _ = try SafetensorsFile(bytes: bytes)
            return ""
        } catch { return "\(error)" }
    }

    /// The golden ddpm_gray weights split into (header JSON object, data section).
    func golden() throws -> (header: [String: Any], data: [UInt8]) {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: try Fixtures.goldenCase("ddpm_gray") + "/diffusion_pytorch_model.safetensors")))
        let n = Int(bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        let header = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + n)])) as! [String: Any]
        return (header, Array(bytes[(8 + n)...]))
    }

    func assemble(_ header: [String: Any], _ data: [UInt8]) throws -> [UInt8] {
        let json = String(decoding: try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]), as: UTF8.self)
        var f = file(json, data: 0)
        f += data
        return f
    }

    /// (name, begin, end) of each tensor of a header, in offset order.
    func layout(_ header: [String: Any]) -> [(String, Int, Int)] {
        header.compactMap { k, v -> (String, Int, Int)? in
            guard let o = (v as? [String: Any])?["data_offsets"] as? [Int] else { return nil }
            return (k, o[0], o[1])
        }.sorted { $0.1 < $1.1 }
    }

    // MARK: the issue's inputs, on the real golden file

    func testGoldenFileLoads() throws {
        let (h, d) = try golden()
        XCTAssertEqual(try SafetensorsFile(bytes: try assemble(h, d)).entries.count, layout(h).count)
    }

    func testAppendedBytesAreRefused() throws {
        let (h, d) = try golden()
        let last = layout(h).last!.0
        let msg = refusal(try assemble(h, d + [UInt8](repeating: 7, count: 64)))
        XCTAssertTrue(msg.contains("64 bytes are owned by no tensor") && msg.contains(last), msg)
    }

    func testInsertedHoleIsRefused() throws {
        var (h, d) = try golden()
        let l = layout(h)
        let cut = l[l.count / 2]  // 16 bytes inserted before this tensor, later offsets shifted
        d.insert(contentsOf: [UInt8](repeating: 0, count: 16), at: cut.1)
        for (name, b, e) in l where b >= cut.1 {
            var entry = h[name] as! [String: Any]
            entry["data_offsets"] = [b + 16, e + 16]
            h[name] = entry
        }
        let msg = refusal(try assemble(h, d))
        XCTAssertTrue(msg.contains("tensor '\(cut.0)'") && msg.contains("owned by no tensor"), msg)
    }

    func testSharedByteRangeIsRefused() throws {
        var (h, d) = try golden()
        var w = h["conv_norm_out.weight"] as! [String: Any]
        w["data_offsets"] = (h["conv_norm_out.bias"] as! [String: Any])["data_offsets"]
        h["conv_norm_out.weight"] = w
        let msg = refusal(try assemble(h, d))
        XCTAssertTrue(msg.contains("overlap") && msg.contains("conv_norm_out."), msg)
    }

    func testFloatOffsetsAreRefused() throws {
        let msg = refusal(file(#"{"a":{"dtype":"F32","shape":[64],"data_offsets":[0.0,256.0]}}"#, data: 256))
        XCTAssertTrue(msg.contains("'a'") && msg.contains("not integers"), msg)
        XCTAssertEqual(refusal(file(#"{"a":{"dtype":"F32","shape":[64],"data_offsets":[0,256]}}"#, data: 256)), "")
    }

    // MARK: the other rules of the format (members of the same kind)

    func testEveryRuleNamesWhatIsWrong() throws {
        let cases: [(header: String, data: Int, expected: String)] = [
            (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8, "'a' appears twice"),
            (#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, 12, "bytes 0..<4 at the start"),
            (#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, 12, "overlap"),
            (#"{"a":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}"#, 4, "not a non-negative integer"),
            (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4e0]}}"#, 4, "not integers"),
            (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#, 4, "not a pair"),
            (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":["0","4"]}}"#, 4, "not integers"),
            (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,99999999999999999999999]}}"#, 4, "outside"),
            (#"{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}}"#, 8, "needs 6"),
            (#"{"a":{"shape":[1],"data_offsets":[0,4]}}"#, 4, "no dtype"),
            (#"{"a":{"dtype":"F32","data_offsets":[0,4]}}"#, 4, "no shape"),
            (#"{"__metadata__":{"k":1}}"#, 0, "'k' is 1, not a string"),
            (#"{"__metadata__":{"k":{"x":"y"}}}"#, 0, "not a string"),
            (#"{"__metadata__":["k"]}"#, 0, "not an object"),
            (#"{"__metadata__":{"k":"v","k":"w"}}"#, 0, "appears twice"),
            (#"{}"#, 4, "4 bytes are owned by no tensor"),
            (#" {}"#, 0, "does not start with '{'"),
            (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} x"#, 4, "not valid JSON"),
            (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},}"#, 4, "not valid JSON"),
        ]
        for c in cases {
            let msg = refusal(file(c.header, data: c.data))
            XCTAssertTrue(msg.contains(c.expected), "\(c.header): got '\(msg)', expected it to say '\(c.expected)'")
            if c.header.hasPrefix(#"{"a":{"#) && !c.expected.contains("twice") && !c.expected.contains("JSON") {
                XCTAssertTrue(msg.contains("'a'"), "does not name the tensor: \(msg)")
            }
        }
    }

    func testValidEdgeCasesLoad() throws {
        // No tensors at all; zero-size tensors anywhere, also at the same offset as another; unknown
        // fields in an entry are ignored as the reference reader does; string escapes in names.
        let ok: [(String, Int)] = [
            (#"{}"#, 0),
            (#"{"__metadata__":{}}"#, 0),
            (#"{"z":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"y":{"dtype":"I64","shape":[0],"data_offsets":[4,4]}}"#, 4),
            (#"{"z":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"z2":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#, 0),
            (#"{"\u00e9\n":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}"#, 1),
        ]
        for (h, n) in ok {
            XCTAssertEqual(refusal(file(h, data: n)), "", h)
        }
        let f = try SafetensorsFile(bytes: file(ok[2].0, data: 4))
        XCTAssertEqual(try f.floats("z").shape, [0, 3])
        XCTAssertEqual(try SafetensorsFile(bytes: file(ok[4].0, data: 1)).names, ["é\n"])
    }

    func testHeaderSizeBounds() throws {
        // Smallest header "{}" (2 bytes) is accepted; 1 byte and a length past the file or the format's
        // 100,000,000-byte limit are refused.
        var tiny: [UInt8] = [2, 0, 0, 0, 0, 0, 0, 0] + Array("{}".utf8)
        XCTAssertEqual(refusal(tiny), "")
        tiny[0] = 1
        XCTAssertTrue(refusal(Array(tiny.prefix(9))).contains("header length 1"))
        var big: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0] + Array("{}".utf8)
        withUnsafeBytes(of: UInt64(100_000_001).littleEndian) { for i in 0..<8 { big[i] = $0[i] } }
        XCTAssertTrue(refusal(big).contains("100000000-byte limit"), refusal(big))
        big[0] = 3
        big[3] = 0; big[2] = 0; big[1] = 0
        XCTAssertTrue(refusal(Array(big.prefix(10))).contains("does not fit"))
    }

    // MARK: files written by the reference package

    func testReferenceDTypesReadExactly() throws {
        let f = try SafetensorsFile(path: Self.goldenDir + "/dtypes.safetensors")
        XCTAssertEqual(f.metadata["written_by"], "safetensors.torch.save_file")
        var checked = 0
        for name in f.names where name.hasSuffix("_expect") {
            let src = String(name.dropLast("_expect".count))
            let e = try f.entry(src)
            if [.F16, .BF16, .F32, .F64].contains(e.dtype) {
                let got = try f.floats(src)
                let want = try f.floats(name)  // F64 -> Float: exact for F16/BF16/F32 values
                XCTAssertEqual(got.shape, want.shape, src)
                for (i, (g, w)) in zip(got.data, want.data).enumerated() {
                    XCTAssertEqual(g.bitPattern, w.bitPattern, "\(src)[\(i)]: \(g) vs \(w)")
                }
            } else {
                let got = try f.integers(src), want = try f.integers(name)
                XCTAssertEqual(got.shape, want.shape, src)
                XCTAssertEqual(got.values, want.values, src)
            }
            checked += 1
        }
        XCTAssertEqual(checked, 14, "one check per dtype and value set")  // 4 floats x 2 + 5 ints + BOOL
        XCTAssertEqual(try f.floats("zero_size").shape, [0, 4])
        XCTAssertThrowsError(try f.floats("X_I64")) { XCTAssertTrue("\($0)".contains("expected a float type")) }
    }

    func testFP16VariantModelFolderLoads() throws {
        let dir = Self.goldenDir + "/ddpm_gray_fp16"
        let md = try ModelDirectory(path: dir)
        XCTAssertTrue(md.weightsPath.hasSuffix("diffusion_pytorch_model.fp16.safetensors"), md.weightsPath)
        let (half, _) = try md.loadModel()
        let (full, _) = try ModelDirectory(path: try Fixtures.goldenCase("ddpm_gray")).loadModel()
        // Same network; weights within half precision (relative 2^-11, plus F16's subnormal step).
        let x = Tensor(shape: [1, full.config.inChannels, full.config.sampleSize, full.config.sampleSize],
                       data: (0..<(full.config.inChannels * full.config.sampleSize * full.config.sampleSize)).map { Float(($0 * 37) % 17) / 8 - 1 })
        let a = full.referenceForward(x, timesteps: [10], classLabels: nil), b = half.referenceForward(x, timesteps: [10], classLabels: nil)
        let maxDiff = zip(a.data, b.data).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(maxDiff, 0.05, "fp16 weights should change outputs only slightly")
        XCTAssertGreaterThan(maxDiff, 0, "fp16 weights read as if they were the fp32 ones?")
    }

    func testVariantSelection() throws {
        let dir = Fixtures.tempDir()
        let src = Self.goldenDir + "/ddpm_gray_fp16"
        try FileManager.default.copyItem(atPath: src + "/config.json", toPath: dir + "/config.json")
        let w16 = src + "/diffusion_pytorch_model.fp16.safetensors"
        try FileManager.default.copyItem(atPath: w16, toPath: dir + "/diffusion_pytorch_model.fp16.safetensors")
        try FileManager.default.copyItem(atPath: w16, toPath: dir + "/diffusion_pytorch_model.bf16.safetensors")
        XCTAssertThrowsError(try ModelDirectory(path: dir)) { XCTAssertTrue("\($0)".contains("several weight variants (bf16, fp16)"), "\($0)") }
        XCTAssertTrue(try ModelDirectory(path: dir, variant: "fp16").weightsPath.hasSuffix(".fp16.safetensors"))
        XCTAssertThrowsError(try ModelDirectory(path: dir, variant: "fp8")) { XCTAssertTrue("\($0)".contains("variants here: bf16, fp16"), "\($0)") }
        try FileManager.default.copyItem(atPath: w16, toPath: dir + "/diffusion_pytorch_model.safetensors")
        XCTAssertTrue(try ModelDirectory(path: dir).weightsPath.hasSuffix("/diffusion_pytorch_model.safetensors"))
        XCTAssertEqual(try ModelDirectory.weightsFile(in: dir, base: "diffusion_pytorch_model", variant: "bf16"),
                       dir + "/diffusion_pytorch_model.bf16.safetensors")
    }
}

import XCTest
@testable import OnestepCore

/// Issue #13: safetensors files are read through a read-only mapping, a tensor's pages dropped once it is
/// converted, so a load does not hold the whole file beside the packed weights. The reading path (no mmap) must
/// give the same tensors and the same refusals.
final class SafetensorsMappingTests: XCTestCase {
    static let dtypes = Fixtures.repoRoot + "/Tests/Golden/safetensors/dtypes.safetensors"

    /// Every tensor of the reference package's dtype file (F16, BF16, F32, F64, the integer types, a zero-size
    /// tensor) reads bit-identically mapped and read.
    func testMappedAndReadGiveTheSameTensors() throws {
        let mapped = try SafetensorsFile(path: Self.dtypes, mapped: true)
        let read = try SafetensorsFile(path: Self.dtypes, mapped: false)
        XCTAssertTrue(mapped.isMapped)
        XCTAssertEqual(mapped.heldBytes, 0, "a mapped file holds no copy of the data section")
        XCTAssertFalse(read.isMapped)
        let size = try FileManager.default.attributesOfItem(atPath: Self.dtypes)[.size] as! Int
        XCTAssertGreaterThan(read.heldBytes, 0)
        XCTAssertLessThan(read.heldBytes, size)
        XCTAssertEqual(mapped.names, read.names)
        XCTAssertEqual(mapped.metadata, read.metadata)
        var compared = 0
        for name in mapped.names {
            let e = try mapped.entry(name)
            if [.F16, .BF16, .F32, .F64].contains(e.dtype) {
                let a = try mapped.floats(name), b = try read.floats(name)
                XCTAssertEqual(a.shape, b.shape, name)
                XCTAssertEqual(a.data.map(\.bitPattern), b.data.map(\.bitPattern), name)
                // Read again after its pages were dropped: they come back from the file.
                XCTAssertEqual(try mapped.floats(name).data.map(\.bitPattern), b.data.map(\.bitPattern), name)
            } else {
                let a = try mapped.integers(name), b = try read.integers(name)
                XCTAssertEqual(a.shape, b.shape, name)
                XCTAssertEqual(a.values, b.values, name)
            }
            compared += 1
        }
        XCTAssertGreaterThan(compared, 20)
    }

    /// I8 codes (Onestep's int8 format) read the same both ways.
    func testInt8TensorsReadTheSame() throws {
        let dir = Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var w = SafetensorsWriter()
        let codes: [Int8] = (0..<300).map { Int8(truncatingIfNeeded: $0 * 37) }
        w.add("w", int8: codes, shape: [3, 100])
        w.add("w_scale", Tensor(shape: [3], data: [0.5, 0.25, 2]))
        try w.write(to: dir + "/q.safetensors")
        for mapped in [true, false] {
            let f = try SafetensorsFile(path: dir + "/q.safetensors", mapped: mapped)
            XCTAssertEqual(try f.int8("w").values, codes)
            XCTAssertEqual(try Int8Weights.stored(file: f, key: "w").scales, [0.5, 0.25, 2])
        }
    }

    /// Broken files on disk get the same refusal mapped and read, and an empty or 7-byte file a clear one.
    func testRefusalsOnDiskAreTheSameMappedOrRead() throws {
        let dir = Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func header(_ json: String, data: Int) -> [UInt8] {
            var h = Array(json.utf8)
            while h.count % 8 != 0 { h.append(0x20) }
            return withUnsafeBytes(of: UInt64(h.count).littleEndian) { Array($0) } + h + [UInt8](repeating: 1, count: data)
        }
        let cases: [(String, [UInt8], String)] = [
            ("empty", [], "0 bytes, too short"),
            ("seven", [1, 2, 3, 4, 5, 6, 7], "7 bytes, too short"),
            ("past-end", withUnsafeBytes(of: UInt64(4096).littleEndian) { Array($0) } + Array("{}".utf8), "does not fit"),
            ("huge-header", withUnsafeBytes(of: UInt64(200_000_000).littleEndian) { Array($0) } + Array("{}".utf8), "100000000-byte limit"),
            ("truncated", header(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, data: 12), "fall outside the 12-byte data section"),
            ("appended", header(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: 12), "4 bytes are owned by no tensor"),
            ("overlap", header(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, data: 12), "overlap"),
            ("float-offsets", header(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}}"#, data: 8), "are not integers"),
        ]
        for (name, bytes, expect) in cases {
            let p = dir + "/" + name + ".safetensors"
            XCTAssertTrue(FileManager.default.createFile(atPath: p, contents: Data(bytes)))
            var messages: [String] = []
            for mapped in [true, false] {
                XCTAssertThrowsError(try SafetensorsFile(path: p, mapped: mapped), name) { messages.append("\($0)") }
            }
            XCTAssertEqual(messages.count, 2, name)
            XCTAssertEqual(messages.first, messages.last, name)
            XCTAssertTrue(messages.first?.contains(expect) ?? false, "\(name): \(messages.first ?? "no error")")
        }
        XCTAssertThrowsError(try SafetensorsFile(path: dir + "/missing.safetensors")) { XCTAssertTrue("\($0)".contains("cannot open"), "\($0)") }
        XCTAssertThrowsError(try SafetensorsFile(path: dir)) { XCTAssertTrue("\($0)".contains("is a directory"), "\($0)") }
        // A file with no tensors maps (the header is all of it) and has no names.
        let emptyModel = dir + "/none.safetensors"
        FileManager.default.createFile(atPath: emptyModel, contents: Data(header("{}", data: 0)))
        XCTAssertEqual(try SafetensorsFile(path: emptyModel, mapped: true).names, [])
    }

    /// A file on a filesystem without mmap (sysfs: regular files whose mmap fails with ENODEV) is read instead of
    /// mapped, and refused for what it holds, the same words as the reading path.
    func testUnmappableFileFallsBackToReading() throws {
        let p = "/sys/kernel/mm/transparent_hugepage/enabled"
        guard FileManager.default.isReadableFile(atPath: p) else { throw XCTSkip("\(p) is not here: no sysfs file to try") }
        let file = try ReadOnlyFile(path: p, map: true)
        XCTAssertGreaterThan(file.size, 0, "sysfs reports a size, so only mmap's refusal keeps it unmapped")
        XCTAssertNil(file.mapping, "sysfs files cannot be mapped")
        var messages: [String] = []
        for mapped in [true, false] {
            XCTAssertThrowsError(try SafetensorsFile(path: p, mapped: mapped)) { messages.append("\($0)") }
        }
        XCTAssertEqual(messages.count, 2)
        XCTAssertEqual(messages.first, messages.last)
        XCTAssertTrue(messages.first?.contains("header length") ?? false, messages.first ?? "")
    }

    /// The mechanism measured: reading every tensor of a 64 MiB file one at a time raises the peak RSS by about
    /// one tensor (4 MiB out + its 4 MiB of pages) when mapped, and by the whole file when read. Both are measured
    /// here, so the check can fail: were the mapped path to keep its pages, its peak would be the read path's.
    func testReadingAMappedFileKeepsPeakNearOneTensor() throws {
        guard ProcessRSS.resetPeak() else { throw XCTSkip("/proc/self/clear_refs refused: cannot reset the peak RSS here") }
        let dir = Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = dir + "/big.safetensors"
        do {
            var w = SafetensorsWriter()
            for t in 0..<16 { w.add("t\(t)", Tensor(shape: [1024, 1024], data: [Float](repeating: Float(t), count: 1 << 20))) }
            try w.write(to: p)
        }
        let fileMiB = 64.0
        func peakGrowth(mapped: Bool) throws -> Double {
            _ = ProcessRSS.resetPeak()
            let before = ProcessRSS.kib("VmRSS")
            let f = try SafetensorsFile(path: p, mapped: mapped)
            var sum: Float = 0
            for name in f.names { sum += try f.floats(name).data[12345] }
            XCTAssertEqual(sum, 120, "each tensor's values were read")
            return Double(ProcessRSS.kib("VmHWM") - before) / 1024
        }
        let mappedGrowth = try peakGrowth(mapped: true)
        let readGrowth = try peakGrowth(mapped: false)
        XCTAssertLessThan(mappedGrowth, fileMiB / 3, "mapped: peak grew \(mappedGrowth) MiB reading a \(fileMiB) MiB file one tensor at a time")
        XCTAssertGreaterThan(readGrowth, fileMiB * 0.9, "read: peak grew only \(readGrowth) MiB; the measurement does not see the held file")
    }

    /// A real network load (an AutoencoderKL decoder through its diffusers folder loader, 48 MiB of float32
    /// weights): mapped, the peak during the load stays within a quarter of the file above the RSS after it (the
    /// packed weights); read whole, the peak holds the file beside the packed weights. Both are measured, so the
    /// check can fail.
    func testModelLoadPeakIsThePackedWeightsNotPlusTheFile() throws {
        guard ProcessRSS.resetPeak() else { throw XCTSkip("/proc/self/clear_refs refused: cannot reset the peak RSS here") }
        let dir = Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.golden + "/sd_turbo_tiny/vae/config.json"))) as? [String: Any])
        json["block_out_channels"] = [128, 256, 256, 256]
        json["norm_num_groups"] = 32
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: dir + "/config.json"))
        let config = try AutoencoderKLConfig.load(path: dir + "/config.json")
        let weightsPath = dir + "/diffusion_pytorch_model.safetensors"
        do {
            var w = SafetensorsWriter()
            var r = TestRandom(7)
            for (key, shape) in AutoencoderKLDecoder.plan(config).parameters {
                let n = shape.reduce(1, *), scale = 1 / Float(max(1, n / shape[0])).squareRoot()
                w.add(key, Tensor(shape: shape, data: (0..<n).map { _ in r.float() * scale }))
            }
            try w.write(to: weightsPath)
        }
        let fileMiB = Double(try FileManager.default.attributesOfItem(atPath: weightsPath)[.size] as! Int) / 1048576
        XCTAssertGreaterThan(fileMiB, 40, "the file must dwarf the RSS noise")

        func load(mapped: Bool) throws -> (growth: Double, overshoot: Double) {
            _ = ProcessRSS.resetPeak()
            let before = ProcessRSS.kib("VmRSS")
            let decoder = mapped
                ? try AutoencoderKLDecoder.load(directory: dir)
                : try AutoencoderKLDecoder(config: config, weights: SafetensorsWeights(file: SafetensorsFile(path: weightsPath, mapped: false)))
            let after = ProcessRSS.kib("VmRSS"), peak = ProcessRSS.kib("VmHWM")
            XCTAssertEqual(decoder.plan.parameters.count, AutoencoderKLDecoder.plan(config).parameters.count)
            return (Double(peak - before) / 1024, Double(peak - after) / 1024)
        }
        let mapped = try load(mapped: true), read = try load(mapped: false)
        XCTAssertLessThan(mapped.overshoot, fileMiB / 4, "mapped: the load peaked \(mapped.overshoot) MiB above its final RSS for a \(fileMiB) MiB file")
        XCTAssertLessThan(mapped.growth, fileMiB * 1.5, "mapped: the load grew the peak by \(mapped.growth) MiB for \(fileMiB) MiB of weights")
        XCTAssertGreaterThan(read.overshoot, fileMiB * 0.8, "read: the load peaked only \(read.overshoot) MiB above its final RSS; the measurement does not see the held file")
    }
}

/// /proc/self/status figures (Linux).
enum ProcessRSS {
    static func kib(_ field: String) -> Int {
        let text = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }) else { return 0 }
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }

    /// Resets VmHWM to the current RSS (writing 5 to /proc/self/clear_refs). False when refused.
    static func resetPeak() -> Bool {
        guard let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
        defer { try? h.close() }
        return (try? h.write(contentsOf: Data("5".utf8))) != nil
    }
}

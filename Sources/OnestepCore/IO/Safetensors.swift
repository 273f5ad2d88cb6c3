// safetensors reader and writer (https://github.com/huggingface/safetensors format):
//   8 bytes little-endian header length N | N bytes JSON header | raw little-endian tensor data.
// The header maps tensor names to {dtype, shape, data_offsets: [begin, end)} relative to the data section,
// plus an optional "__metadata__" string map. Everything is checked against the file size before anything
// sized by the file is allocated (as stable-diffusion.cpp does: header_size > file_size - 8 || <= 2 -> error).
import Foundation

public enum SafetensorsDType: String, Sendable, CaseIterable {
    case F32, F16, BF16, F64, I8, U8, I16, I32, I64, BOOL

    public var byteSize: Int {
        switch self {
        case .I8, .U8, .BOOL: return 1
        case .F16, .BF16, .I16: return 2
        case .F32, .I32: return 4
        case .F64, .I64: return 8
        }
    }
}

public struct SafetensorsError: Error, CustomStringConvertible, Equatable {
    public var file: String
    public var tensor: String?
    public var problem: String

    public var description: String {
        let what = tensor.map { "tensor '\($0)' in \(file)" } ?? file
        return "\(what): \(problem)"
    }
}

public struct TensorEntry: Sendable {
    public var name: String
    public var dtype: SafetensorsDType
    public var shape: [Int]
    public var begin: Int  // byte offsets into the data section
    public var end: Int
    public var elementCount: Int { shape.reduce(1, *) }
}

public struct SafetensorsFile: Sendable {
    /// Header larger than this is refused: real headers are kilobytes.
    public static let maxHeaderBytes = 100 * 1024 * 1024

    /// Whether `init(path:)` maps files by default: yes, unless the environment sets `ONESTEP_SAFETENSORS_MMAP=0`
    /// (then every file is read into memory whole, as before issue #13 — for comparing, or for a filesystem
    /// whose mmap misbehaves).
    public static let mapsFiles = ProcessInfo.processInfo.environment["ONESTEP_SAFETENSORS_MMAP"] != "0"

    /// Where the data section lives: a read-only mapping of the file (the data section starts at file offset
    /// `dataStart`), or bytes in memory (a file read whole, or `init(bytes:)`).
    enum Storage: Sendable {
        case mapped(ReadOnlyFile, dataStart: Int)
        case memory([UInt8])
    }

    public let path: String
    public let entries: [String: TensorEntry]
    public let metadata: [String: String]
    let storage: Storage

    public var names: [String] { entries.keys.sorted() }

    /// True when the tensors are read from a mapping of the file (pages come in on demand and are dropped after
    /// each tensor is converted), false when the reader holds the data section in memory.
    public var isMapped: Bool {
        if case .mapped = storage { return true }
        return false
    }

    /// Bytes in the data section (after the 8-byte length and the header).
    public var dataSize: Int {
        switch storage {
        case .mapped(let file, let dataStart): return file.size - dataStart
        case .memory(let b): return b.count
        }
    }

    /// Bytes of tensor data the reader itself holds in process memory: 0 for a mapped file, the data section's
    /// size otherwise. (What a network keeps after packing is not counted here.)
    public var heldBytes: Int {
        if case .memory(let b) = storage { return b.count }
        return 0
    }

    /// Reads and validates a file. Throws `SafetensorsError` naming the file, the tensor and what is wrong.
    /// With `mapped` (the default, see `mapsFiles`) the file is mapped read-only and a tensor's bytes are read when
    /// asked for; where the file cannot be mapped (a filesystem without mmap, a special file) it is read whole, as
    /// with `mapped: false`. Every rule of the format is checked either way, and the file's size is checked against
    /// the header before any tensor byte is touched. A file modified or truncated while it is open is undefined
    /// behaviour (a truncated mapping raises SIGBUS): replace model files by rename, never rewrite them in place.
    public init(path: String, mapped: Bool = SafetensorsFile.mapsFiles) throws {
        let file = try ReadOnlyFile(path: path, map: mapped)
        let fileSize = file.size
        guard fileSize >= 8 else {
            throw SafetensorsError(file: path, problem: "file is \(fileSize) bytes, too short for a safetensors header; it is truncated or not safetensors")
        }
        func bytes(_ range: Range<Int>) throws -> [UInt8] {
            if let m = file.mapping { return Array(m[range]) }
            return try [UInt8](unsafeUninitializedCapacity: range.count) { buf, count in
                try file.read(into: UnsafeMutableRawBufferPointer(buf), at: range.lowerBound)
                count = range.count
            }
        }
        let headerLength = try Self.checkHeaderLength(try bytes(0..<8), fileSize: fileSize, path: path)
        let dataStart = 8 + headerLength
        let (entries, metadata) = try Self.parseHeader(try bytes(8..<dataStart), dataSize: fileSize - dataStart, path: path)
        if file.mapping != nil {
            file.dropPages(0..<dataStart)
            storage = .mapped(file, dataStart: dataStart)
        } else {
            // One copy, read straight into the array (the old FileHandle path held a Data and an array of it).
            let payload = try bytes(dataStart..<fileSize)
            var extra: UInt8 = 0
            let grew = (try? withUnsafeMutableBytes(of: &extra) { try file.read(into: $0, at: fileSize) }) != nil
            guard !grew else { throw SafetensorsError(file: path, problem: "file changed while being read (it grew)") }
            storage = .memory(payload)
        }
        self.path = path
        self.entries = entries
        self.metadata = metadata
    }

    /// Runs `body` on a tensor's bytes (exactly `e.end - e.begin` of them); for a mapped file its pages are dropped
    /// from the process afterwards, since the networks convert and pack each tensor once.
    func withBytes<R>(of e: TensorEntry, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        switch storage {
        case .mapped(let file, let dataStart):
            let range = (dataStart + e.begin)..<(dataStart + e.end)
            defer { file.dropPages(range) }
            return try body(UnsafeRawBufferPointer(rebasing: file.mapping![range]))
        case .memory(let bytes):
            return try bytes.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[e.begin..<e.end])) }
        }
    }

    /// Parses an in-memory file (used by tests and fuzzing).
    public init(bytes: [UInt8], name: String = "<memory>") throws {
        guard bytes.count >= 8 else {
            throw SafetensorsError(file: name, problem: "\(bytes.count) bytes, too short for a safetensors header")
        }
        let headerLength = try Self.checkHeaderLength(Array(bytes[0..<8]), fileSize: bytes.count, path: name)
        let header = Array(bytes[8..<(8 + headerLength)])
        let (entries, metadata) = try Self.parseHeader(header, dataSize: bytes.count - 8 - headerLength, path: name)
        self.path = name
        self.entries = entries
        self.metadata = metadata
        self.storage = .memory(Array(bytes[(8 + headerLength)...]))
    }

    /// The reference reader's limit (safetensors/src/tensor.rs MAX_HEADER_SIZE).
    static let referenceMaxHeader = 100_000_000

    static func checkHeaderLength(_ b: [UInt8], fileSize: Int, path: String) throws -> Int {
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(b[i]) << (8 * UInt64(i)) }
        guard n <= UInt64(min(maxHeaderBytes, referenceMaxHeader)) else {
            throw SafetensorsError(file: path, problem: "header length \(n) is over the format's \(referenceMaxHeader)-byte limit; the file is corrupt or not safetensors")
        }
        // "{}" (2 bytes) is the smallest header: a file with no tensors.
        guard n >= 2, n <= UInt64(fileSize - 8) else {
            throw SafetensorsError(file: path, problem: "header length \(n) does not fit a \(fileSize)-byte file; the file is truncated or not safetensors")
        }
        return Int(n)
    }

    /// Parses the header and checks every rule of the format (as the reference reader's `Metadata::validate`):
    /// a JSON object starting with `{`, no key twice, `__metadata__` a string-to-string map, each tensor a known
    /// dtype with a shape of non-negative integers and integer `data_offsets` whose length is the shape's byte
    /// count, and the tensors, sorted by offset, back to back from 0 to the end of the data section: no byte
    /// owned by two tensors, none owned by no tensor. Zero-size tensors (`[k, k]`) are allowed.
    static func parseHeader(_ header: [UInt8], dataSize: Int, path: String) throws -> ([String: TensorEntry], [String: String]) {
        guard header.first == UInt8(ascii: "{") else {
            throw SafetensorsError(file: path, problem: "header does not start with '{'; the file is corrupt or not safetensors")
        }
        let json: HeaderJSON
        do { json = try HeaderJSONParser.parse(header) } catch let e as HeaderJSONError {
            throw SafetensorsError(file: path, problem: "header is not valid JSON at byte \(e.offset): \(e.problem); the file is corrupt")
        }
        guard case .object(let top) = json else {
            throw SafetensorsError(file: path, problem: "header is not a JSON object")
        }
        var entries: [String: TensorEntry] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in top {
            if name == "__metadata__" {
                guard case .object(let m) = value else {
                    throw SafetensorsError(file: path, problem: "__metadata__ is \(value.shortText), not an object of strings")
                }
                for (k, v) in m {
                    guard case .string(let s) = v else {
                        throw SafetensorsError(file: path, problem: "__metadata__ value for '\(k)' is \(v.shortText), not a string")
                    }
                    metadata[k] = s
                }
                continue
            }
            entries[name] = try parseEntry(name: name, value: value, dataSize: dataSize, path: path)
        }
        try checkCoverage(entries.values, dataSize: dataSize, path: path)
        return (entries, metadata)
    }

    /// The data section must be tiled exactly by the tensors in offset order (reference: `Metadata::validate`,
    /// errors InvalidOffset and MetadataIncompleteBuffer).
    static func checkCoverage<S: Sequence>(_ entries: S, dataSize: Int, path: String) throws where S.Element == TensorEntry {
        let sorted = entries.sorted { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        var end = 0
        var previous: String?
        for e in sorted {
            if e.begin < end {
                throw SafetensorsError(file: path, tensor: e.name, problem: "data_offsets [\(e.begin), \(e.end)] overlap tensor '\(previous ?? "")' (which ends at \(end)); every byte belongs to one tensor, so the header is corrupt")
            }
            if e.begin > end {
                let after = previous.map { "after tensor '\($0)' " } ?? "at the start of the data section "
                throw SafetensorsError(file: path, tensor: e.name, problem: "data_offsets [\(e.begin), \(e.end)] leave bytes \(end)..<\(e.begin) \(after)owned by no tensor; tensors must be back to back, so the header is corrupt")
            }
            end = e.end
            previous = e.name
        }
        guard end == dataSize else {
            let last = previous.map { "the last tensor '\($0)' ends at byte \(end)" } ?? "there are no tensors"
            throw SafetensorsError(file: path, problem: "the data section is \(dataSize) bytes but \(last); \(dataSize - end) bytes are owned by no tensor (appended data or a corrupt header)")
        }
    }

    static func parseEntry(name: String, value: HeaderJSON, dataSize: Int, path: String) throws -> TensorEntry {
        func fail(_ p: String) -> SafetensorsError { SafetensorsError(file: path, tensor: name, problem: p) }
        guard case .object(let members) = value else { throw fail("entry is \(value.shortText), not an object") }
        let obj = Dictionary(members, uniquingKeysWith: { a, _ in a })
        guard case .string(let dtypeName)? = obj["dtype"] else { throw fail("has no dtype string") }
        guard let dtype = SafetensorsDType(rawValue: dtypeName) else {
            throw fail("dtype \(dtypeName) is not supported (supported: \(SafetensorsDType.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        guard case .array(let shapeItems)? = obj["shape"] else { throw fail("has no shape array") }
        let shapeText = HeaderJSON.array(shapeItems).shortText
        var shape: [Int] = []
        var count = 1
        for d in shapeItems {
            guard case .integer(let iv, _) = d, let v = iv, v >= 0 else {
                throw fail("shape \(shapeText) has an entry that is not a non-negative integer")
            }
            let (m, overflow) = count.multipliedReportingOverflow(by: v)
            guard !overflow, m <= dataSize else { throw fail("shape \(shapeText) is larger than the file") }
            count = m
            shape.append(v)
        }
        guard case .array(let offs)? = obj["data_offsets"], offs.count == 2 else {
            throw fail("data_offsets is not a pair of integers")
        }
        guard case .integer(let bv, _) = offs[0], case .integer(let ev, _) = offs[1] else {
            throw fail("data_offsets \(HeaderJSON.array(offs).shortText) are not integers; byte offsets are written without a fraction or exponent")
        }
        guard let b = bv, let e = ev, b >= 0, b <= e, e <= dataSize else {
            throw fail("data_offsets \(HeaderJSON.array(offs).shortText) fall outside the \(dataSize)-byte data section; the file is truncated or corrupt")
        }
        guard e - b == count * dtype.byteSize else {
            throw fail("holds \(e - b) bytes but shape \(shape) of \(dtype.rawValue) needs \(count * dtype.byteSize)")
        }
        return TensorEntry(name: name, dtype: dtype, shape: shape, begin: b, end: e)
    }

    public func entry(_ name: String) throws -> TensorEntry {
        guard let e = entries[name] else {
            throw SafetensorsError(file: path, tensor: name, problem: "is missing")
        }
        return e
    }

    /// The tensor as float32, converting F16, BF16 and F64 (a new buffer of its own). Integer tensors are refused.
    public func floats(_ name: String) throws -> Tensor {
        let e = try entry(name)
        guard [.F32, .F16, .BF16, .F64].contains(e.dtype) else {
            throw SafetensorsError(file: path, tensor: name, problem: "is \(e.dtype.rawValue), expected a float type")
        }
        let n = e.elementCount
        let out = [Float](unsafeUninitializedCapacity: n) { dst, count in
            withBytes(of: e) { src in
                switch e.dtype {
                case .F32:
                    #if _endian(little)
                    if n > 0 { UnsafeMutableRawBufferPointer(dst).copyMemory(from: src) }
                    #else
                    for i in 0..<n { dst[i] = Float(bitPattern: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self).littleEndian) }
                    #endif
                case .F16:
                    for i in 0..<n { dst[i] = HalfFloat.toFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian) }
                case .BF16:
                    for i in 0..<n { dst[i] = Float(bitPattern: UInt32(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian) << 16) }
                default:  // .F64 (checked above)
                    for i in 0..<n { dst[i] = Float(Double(bitPattern: src.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self).littleEndian)) }
                }
            }
            count = n
        }
        return Tensor(shape: e.shape, data: out)
    }

    /// Integer tensors (I8, U8, I16, I32, I64, BOOL) widened to Int64.
    public func integers(_ name: String) throws -> (shape: [Int], values: [Int64]) {
        let e = try entry(name)
        let n = e.elementCount
        var out = [Int64](repeating: 0, count: n)
        let ok: Bool = withBytes(of: e) { src in
            switch e.dtype {
            case .I8: for i in 0..<n { out[i] = Int64(src.load(fromByteOffset: i, as: Int8.self)) }
            case .U8, .BOOL: for i in 0..<n { out[i] = Int64(src.load(fromByteOffset: i, as: UInt8.self)) }
            case .I16: for i in 0..<n { out[i] = Int64(Int16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self))) }
            case .I32: for i in 0..<n { out[i] = Int64(Int32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))) }
            case .I64: for i in 0..<n { out[i] = Int64(littleEndian: src.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)) }
            default: return false
            }
            return true
        }
        guard ok else {
            throw SafetensorsError(file: path, tensor: name, problem: "is \(e.dtype.rawValue), expected an integer type")
        }
        return (e.shape, out)
    }

    /// Raw I8 values (quantized weights), checked to be I8.
    public func int8(_ name: String) throws -> (shape: [Int], values: [Int8]) {
        let e = try entry(name)
        guard e.dtype == .I8 else {
            throw SafetensorsError(file: path, tensor: name, problem: "is \(e.dtype.rawValue), expected I8")
        }
        let values = withBytes(of: e) { src in src.map { Int8(bitPattern: $0) } }
        return (e.shape, values)
    }
}

/// Builds a safetensors file. Tensors are laid out in name order, each 8-byte aligned as the reference writer does.
public struct SafetensorsWriter {
    private var tensors: [(name: String, dtype: SafetensorsDType, shape: [Int], bytes: [UInt8])] = []
    public var metadata: [String: String] = [:]

    public init() {}

    public mutating func add(_ name: String, _ t: Tensor) {
        var bytes = [UInt8](repeating: 0, count: t.count * 4)
        bytes.withUnsafeMutableBytes { dst in
            for (i, v) in t.data.enumerated() { dst.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
        }
        tensors.append((name, .F32, t.shape, bytes))
    }

    public mutating func add(_ name: String, int8 values: [Int8], shape: [Int]) {
        precondition(values.count == shape.reduce(1, *), "\(name): \(values.count) values for shape \(shape)")
        tensors.append((name, .I8, shape, values.map { UInt8(bitPattern: $0) }))
    }

    public mutating func add(_ name: String, uint8 values: [UInt8], shape: [Int]) {
        precondition(values.count == shape.reduce(1, *), "\(name): \(values.count) values for shape \(shape)")
        tensors.append((name, .U8, shape, values))
    }

    public mutating func add(_ name: String, int64 values: [Int64], shape: [Int]) {
        precondition(values.count == shape.reduce(1, *), "\(name): \(values.count) values for shape \(shape)")
        var bytes = [UInt8](repeating: 0, count: values.count * 8)
        bytes.withUnsafeMutableBytes { dst in
            for (i, v) in values.enumerated() { dst.storeBytes(of: v.littleEndian, toByteOffset: 8 * i, as: Int64.self) }
        }
        tensors.append((name, .I64, shape, bytes))
    }

    public func serialized() -> [UInt8] {
        let sorted = tensors.sorted { $0.name < $1.name }
        var header: [String: Any] = [:]
        var offset = 0
        for t in sorted {
            header[t.name] = ["dtype": t.dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.count]] as [String: Any]
            offset += t.bytes.count
        }
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var json = (try? JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])) ?? Data("{}".utf8)
        while (8 + json.count) % 8 != 0 { json.append(0x20) }  // pad with spaces so data starts 8-byte aligned
        var out = [UInt8]()
        out.reserveCapacity(8 + json.count + offset)
        var n = UInt64(json.count).littleEndian
        withUnsafeBytes(of: &n) { out += $0 }
        out += json
        for t in sorted { out += t.bytes }
        return out
    }

    /// Writes atomically: a temporary file in the same folder, fsync, then rename over the destination.
    public func write(to path: String) throws {
        try AtomicFile.write(serialized(), to: path)
    }
}

/// 16-bit IEEE half to float, exact (subnormals, infinities and NaN included).
enum HalfFloat {
    static func toFloat(_ h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exp = Int((h >> 10) & 0x1F)
        let mant = UInt32(h & 0x3FF)
        if exp == 0 {
            if mant == 0 { return Float(bitPattern: sign) }
            let v = Float(mant) * Float(sign: .plus, exponent: -24, significand: 1)
            return sign != 0 ? -v : v
        }
        if exp == 31 { return Float(bitPattern: sign | 0x7F80_0000 | (mant << 13)) }
        return Float(bitPattern: sign | (UInt32(exp - 15 + 127) << 23) | (mant << 13))
    }
}

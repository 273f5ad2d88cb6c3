// One training checkpoint on disk, made crash-safe and verifiable. The file is plain safetensors:
//   tensors       flat F32 tensors named by the caller (values, ema, adam.m, ...), laid out in name order
//   __metadata__  the caller's strings + "onestep.checksum": "fnv1a64:<16 hex digits>"
// Why each piece:
//   - AtomicFile (temp + fsync + rename + fsync of the folder): a kill -9 at any instant leaves the old
//     checkpoint or the new one, never a torn file, so a resume loses at most one checkpoint interval.
//   - checkpoint.prev.safetensors: before the new file replaces the old one, the old one is hard-linked under
//     that name (no copy: the rename gives checkpoint.safetensors a new inode and the link keeps the old one).
//     When the newest checkpoint is damaged on disk, the one before it is still there to resume from.
//   - the checksum: the safetensors reader catches truncation (sizes and offsets stop fitting the file) but not
//     flipped bits inside the tensor data, which would resume silently from wrong weights. FNV-1a 64 over the
//     data section and the other metadata detects any single changed byte: each byte's step (xor, then multiply
//     by an odd prime) is a bijection of the running state, so a difference can never cancel out.
// Checkpoints written before the checksum are accepted with a warning: refusing them would throw away long runs.
import Foundation
import OnestepCore
#if canImport(Glibc)
import Glibc
#endif

/// A checkpoint that cannot be resumed from (or written): which file, what is wrong with it, and what to do.
/// onestep-distill reports it as a checkpoint error (exit 1), never as a problem with the data or the flags.
public struct CheckpointError: Error, CustomStringConvertible {
    public var path: String
    public var problem: String
    public var advice: String
    /// "resume from" or "write".
    public var action = "resume from"
    public init(path: String, problem: String, advice: String, action: String = "resume from") {
        (self.path, self.problem, self.advice, self.action) = (path, problem, advice, action)
    }
    public var description: String { "cannot \(action) \(path): \(problem)\n\(advice)" }
}

/// FNV-1a, 64-bit (Fowler, Noll, Vo): offset basis 0xcbf29ce484222325, prime 0x100000001b3.
struct FNV1a64 {
    static let prime: UInt64 = 0x0000_0100_0000_01B3
    private(set) var value: UInt64 = 0xCBF2_9CE4_8422_2325

    mutating func add(bytes: some Sequence<UInt8>) {
        for b in bytes { value = (value ^ UInt64(b)) &* Self.prime }
    }

    /// The floats' little-endian bytes, as SafetensorsWriter stores them.
    mutating func add(floats: [Float]) {
        var h = value
        floats.withUnsafeBufferPointer { p in
            for f in p {
                let u = UInt64(f.bitPattern)
                h = (h ^ (u & 0xFF)) &* Self.prime
                h = (h ^ ((u >> 8) & 0xFF)) &* Self.prime
                h = (h ^ ((u >> 16) & 0xFF)) &* Self.prime
                h = (h ^ (u >> 24)) &* Self.prime
            }
        }
        value = h
    }
}

/// A checkpoint read back and checked: every tensor as floats, the metadata, and whether a checksum vouched for it.
struct CheckpointContents {
    let path: String
    let metadata: [String: String]
    let tensors: [String: [Float]]
    /// False for a checkpoint written before checksums: readable, but its data could not be verified.
    let verified: Bool

    func integer(_ key: String) -> Int? { metadata[key].flatMap { Int($0) } }
}

enum CheckpointFile {
    static let checksumKey = "onestep.checksum"
    static let kindKey = "onestep.kind"
    /// AtomicFile's temporary files are ".NAME.tmp-PID" beside NAME.
    static let temporaryMarker = ".tmp-"

    /// "fnv1a64:<hex>" over the tensors' bytes in name order (exactly the data section SafetensorsWriter lays
    /// out), then each other metadata entry in key order as key, 0, value, 0.
    static func checksum(tensors: [String: [Float]], metadata: [String: String]) -> String {
        var h = FNV1a64()
        for name in tensors.keys.sorted() { h.add(floats: tensors[name]!) }
        for key in metadata.keys.sorted() where key != checksumKey {
            h.add(bytes: Array(key.utf8) + [0] + Array(metadata[key]!.utf8) + [0])
        }
        return "fnv1a64:" + String(h.value, radix: 16).leftPadded(to: 16)
    }

    /// Keeps the current file at `previous` (hard link, so no copy), then replaces `path` atomically.
    static func write(tensors: [String: [Float]], metadata: [String: String], to path: String, previous: String) throws {
        var w = SafetensorsWriter()
        for (name, values) in tensors { w.add(name, Tensor(shape: [values.count], data: values)) }
        w.metadata = metadata
        w.metadata[checksumKey] = checksum(tensors: tensors, metadata: metadata)
        if FileManager.default.fileExists(atPath: path) {
            try keepPrevious(path, as: previous)
        } else {
            // A first checkpoint: a `previous` here is from an abandoned run (its damaged checkpoint deleted to
            // start over) and must not be offered later as this run's previous state.
            unlink(previous)
        }
        // AtomicFile fsyncs the folder after its rename, which also makes the rename of `previous` durable.
        try w.write(to: path)
    }

    /// Links `path` to a temporary name and renames that over `previous`, so `previous` is never half there.
    static func keepPrevious(_ path: String, as previous: String) throws {
        let url = URL(fileURLWithPath: previous)
        let tmp = url.deletingLastPathComponent().path + "/." + url.lastPathComponent + temporaryMarker + "\(getpid())"
        unlink(tmp)
        if link(path, tmp) != 0 {
            // A file system without hard links: copy instead (the checkpoint is read once more per interval).
            try AtomicFile.write([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))), to: previous)
            return
        }
        guard rename(tmp, previous) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(tmp)
            throw CheckpointError(path: previous, problem: "cannot keep \(path) under this name: \(reason)",
                                  advice: "Check the run folder's permissions and free space, then run the same command with --resume.", action: "write")
        }
    }

    /// Reads and verifies `path`; on failure throws a CheckpointError whose advice looks at `previous`.
    /// `kinds`: the onestep.kind values the caller can resume (nil: any).
    static func read(_ path: String, previous: String, kinds: Set<String>?) throws -> CheckpointContents {
        do {
            return try load(path, kinds: kinds)
        } catch let problem as CheckpointProblem {
            throw CheckpointError(path: path, problem: problem.text, advice: advice(for: path, previous: previous, kinds: kinds))
        }
    }

    struct CheckpointProblem: Error { var text: String }

    static func load(_ path: String, kinds: Set<String>?) throws -> CheckpointContents {
        let file: SafetensorsFile
        do {
            file = try SafetensorsFile(path: path)
        } catch let e as SafetensorsError {
            throw CheckpointProblem(text: (e.tensor.map { "tensor '\($0)' " } ?? "") + e.problem)
        }
        guard let kind = file.metadata[kindKey] else {
            throw CheckpointProblem(text: "it has no \(kindKey) in its metadata, so it is not an onestep-distill checkpoint")
        }
        if let kinds, !kinds.contains(kind) {
            func named(_ k: String) -> String { "'\(k)'" + (Checkpoint.commands[k].map { " (\($0))" } ?? "") }
            throw CheckpointProblem(text: "it is a \(named(kind)) checkpoint, this run needs \(kinds.sorted().map(named).joined(separator: " or ")); is --out the right folder (or --method the run's)?")
        }
        var tensors: [String: [Float]] = [:]
        for name in file.names {
            let entry = try file.entry(name)
            guard entry.dtype == .F32 else {
                throw CheckpointProblem(text: "tensor '\(name)' is \(entry.dtype.rawValue); checkpoints hold F32 only, so the header is corrupt")
            }
            tensors[name] = try file.floats(name).data
        }
        guard let stored = file.metadata[checksumKey] else {
            return CheckpointContents(path: path, metadata: file.metadata, tensors: tensors, verified: false)
        }
        let computed = checksum(tensors: tensors, metadata: file.metadata)
        guard stored == computed else {
            throw CheckpointProblem(text: "its contents do not match the checksum written with it (stored \(stored), computed \(computed)): bytes changed after it was written (a damaged disk, a bad copy or an edit), so its weights cannot be trusted")
        }
        return CheckpointContents(path: path, metadata: file.metadata, tensors: tensors, verified: true)
    }

    /// What to do about a damaged checkpoint: resume from the previous one if it is intact, else start over.
    static func advice(for path: String, previous: String, kinds: Set<String>?) -> String {
        let restart = "delete \(path) to train this run from step 0"
        guard FileManager.default.fileExists(atPath: previous) else {
            return "No earlier checkpoint is kept beside it (\(URL(fileURLWithPath: previous).lastPathComponent) is missing): restore it from a backup, or \(restart)."
        }
        do {
            let prev = try load(previous, kinds: kinds)
            let step = prev.integer("step").map { "step \($0)" } ?? "an earlier step"
            return "The previous checkpoint \(previous) is intact (\(step)): run `mv \(previous) \(path)` and the same command again to resume from it, or \(restart)."
        } catch {
            let why = (error as? CheckpointProblem)?.text ?? "\(error)"
            return "The previous checkpoint \(previous) is damaged too (\(why)): restore one from a backup, or \(restart)."
        }
    }

    /// Deletes AtomicFile temporaries (".NAME.tmp-PID") in `dir` left by processes that no longer run (a kill -9
    /// mid-write). They never pass for a checkpoint, whose name is exact, but each one can be as large as one.
    /// Returns the names removed.
    static func removeStaleTemporaryFiles(in dir: String) -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        var removed: [String] = []
        for name in names where name.hasPrefix(".") {
            guard let marker = name.range(of: temporaryMarker, options: .backwards),
                  let pid = Int32(name[marker.upperBound...]), pid > 0 else { continue }
            // Our own pid on a fresh start can only be a dead process's reused pid: this run has written nothing yet.
            let alive = pid != getpid() && (kill(pid, 0) == 0 || errno == EPERM)
            if !alive, unlink(dir + "/" + name) == 0 { removed.append(name) }
        }
        return removed.sorted()
    }
}

private extension String {
    func leftPadded(to width: Int, with pad: Character = "0") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}

// The real onestep-distill binary in a subprocess, for the kill -9 tests: output collected line by line while it
// runs (so a test can wait for "step N/M"), then SIGKILL, as a crash or an OOM killer would end it.
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore
#if canImport(Glibc)
import Glibc
#endif

/// @unchecked Sendable: the reader thread touches only `collected` (under `lock`) and the semaphore.
final class DistillProcess: @unchecked Sendable {
    /// A guard against a hung run, not a timing assertion: the tiny runs here take a few seconds.
    static let hangTimeout: TimeInterval = 180

    let process = Process()
    private let lock = NSLock()
    private var collected = ""
    private let finishedReading = DispatchSemaphore(value: 0)

    /// The onestep-distill binary SwiftPM builds beside the test bundle.
    static func binary() throws -> String {
        let dirs = [URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent(),
                    Bundle.main.bundleURL, Bundle.main.bundleURL.deletingLastPathComponent()]
        for d in dirs {
            let candidate = d.appendingPathComponent("onestep-distill").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw DataError("onestep-distill not found beside the test bundle in \(dirs.map(\.path)); build it with swift build --product onestep-distill")
    }

    /// Starts `onestep-distill ARGS` with stdout and stderr in one pipe.
    init(_ args: [String]) throws {
        process.executableURL = URL(fileURLWithPath: try Self.binary())
        process.arguments = args
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let reader = Thread { [self] in
            while true {
                let data = pipe.fileHandleForReading.availableData
                if data.isEmpty { break }
                lock.withLock { collected += String(decoding: data, as: UTF8.self) }
            }
            finishedReading.signal()
        }
        reader.start()
    }

    var output: String { lock.withLock { collected } }

    /// Runs to the end; returns the exit status and everything printed.
    static func run(_ args: [String]) throws -> (status: Int32, output: String) {
        let p = try DistillProcess(args)
        return try p.waitForExit()
    }

    func waitForExit() throws -> (status: Int32, output: String) {
        let deadline = Date().addingTimeInterval(Self.hangTimeout)
        while process.isRunning, Date() < deadline { usleep(5_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            throw DataError("onestep-distill \(process.arguments ?? []) still ran after \(Self.hangTimeout)s; output:\n\(output)")
        }
        process.waitUntilExit()
        finishedReading.wait()
        return (process.terminationStatus, output)
    }

    /// Waits until a progress line reports at least `step`, then sends SIGKILL; returns the last step logged
    /// (the last one finished: progress lines are written after the step, before its checkpoint).
    func kill9(atStep step: Int) throws -> Int {
        let deadline = Date().addingTimeInterval(Self.hangTimeout)
        while (Self.lastStep(in: output) ?? -1) < step {
            guard process.isRunning, Date() < deadline else {
                if process.isRunning { kill(process.processIdentifier, SIGKILL) }
                throw DataError("onestep-distill never logged step \(step) (exited: \(!process.isRunning)); output:\n\(output)")
            }
            usleep(1_000)
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        finishedReading.wait()
        guard process.terminationReason == .uncaughtSignal, process.terminationStatus == SIGKILL else {
            throw DataError("onestep-distill ended by itself before the kill (status \(process.terminationStatus)); make the run longer")
        }
        return Self.lastStep(in: output)!
    }

    /// The largest N of the "step N/M" progress lines (teacher "step N/M ...", students "KIND step N/M ...").
    static func lastStep(in text: String) -> Int? {
        text.split(separator: "\n").compactMap { line -> Int? in
            guard let r = line.range(of: "step "), r.lowerBound == line.startIndex || line[line.index(before: r.lowerBound)] == " " else { return nil }
            let rest = line[r.upperBound...]
            guard let slash = rest.firstIndex(of: "/") else { return nil }
            return Int(rest[..<slash])
        }.max()
    }

    /// N of the "resuming DIR at step N (checkpoint every K steps)" line, nil when the run did not resume.
    static func resumedStep(in text: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix("resuming ") {
            guard let r = line.range(of: " at step ", options: .backwards) else { continue }
            return Int(line[r.upperBound...].prefix { $0.isNumber })
        }
        return nil
    }
}

/// The tensors of a run's checkpoint, for comparing a resumed run with a straight one.
func checkpointTensors(_ dir: String) throws -> [String: [Float]] {
    let f = try SafetensorsFile(path: dir + "/" + Checkpoint.fileName)
    return try Dictionary(uniqueKeysWithValues: f.names.map { ($0, try f.floats($0).data) })
}

/// The smallest model the CLI trains in milliseconds per step: two levels of 8 and 16 channels, no attention.
func writeTinyConfig(to path: String) throws {
    let json = """
    {"sample_size": 16, "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16], "layers_per_block": 1,
     "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
     "norm_num_groups": 8, "attention_head_dim": 8, "add_attention": false}
    """
    try json.write(toFile: path, atomically: true, encoding: .utf8)
}

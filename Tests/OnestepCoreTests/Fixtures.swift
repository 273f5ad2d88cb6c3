import Foundation
import XCTest
@testable import OnestepCore

/// Locations of shared test data: ../shared/golden beside the repository (override with ONESTEP_GOLDEN).
enum Fixtures {
    static let repoRoot: String = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    static var golden: String {
        if let p = ProcessInfo.processInfo.environment["ONESTEP_GOLDEN"] { return p }
        return URL(fileURLWithPath: repoRoot + "/../shared/golden").standardizedFileURL.path
    }

    static func goldenCase(_ name: String) throws -> String {
        let p = golden + "/" + name
        guard FileManager.default.fileExists(atPath: p + "/config.json") else {
            XCTFail("golden case \(name) not found at \(p); set ONESTEP_GOLDEN to the shared/golden folder")
            throw CocoaError(.fileNoSuchFile)
        }
        return p
    }

    static func tempDir(_ tag: String = #function) -> String {
        let safe = tag.filter { $0.isLetter || $0.isNumber }
        let p = NSTemporaryDirectory() + "onestep-test-\(safe)-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        return p
    }
}

/// A deterministic pseudo-random source for test data.
struct TestRandom {
    var state: UInt64
    init(_ seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    mutating func next() -> UInt64 {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return state
    }
    mutating func float() -> Float { Float(next() >> 40) / Float(1 << 24) * 2 - 1 }
    mutating func floats(_ n: Int) -> [Float] { (0..<n).map { _ in float() } }
    mutating func int(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

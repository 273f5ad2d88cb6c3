// `--abort-after A[-B]` and `--abort-fraction F`: clients that disconnect on purpose.
//
// A chosen request is abandoned A..B after it was handed to libcurl: libcurl's per-request timeout fires and it
// closes the connection, which is what a user closing a browser tab does. Depending on the moment, the server
// sees the client leave while the request is queued, while its batch is computing, or while the answer is on the
// wire, and must drop the work and free what it held. Which requests abort, and when, is a pure function of the
// request index (a SplitMix64 hash), so two runs with the same flags abandon the same requests at the same offsets.
import Foundation

public struct AbortPlan: Sendable, Equatable {
    /// Seconds after sending: the earliest and latest abort moments (equal for a fixed delay).
    public var earliest: Double
    public var latest: Double
    /// Share of requests that abort, 0 < fraction <= 1.
    public var fraction: Double

    /// - Precondition: `0 < earliest <= latest` and `0 < fraction <= 1` (checked by `Arguments.parse`).
    public init(earliest: Double, latest: Double, fraction: Double = 1) {
        precondition(earliest > 0 && earliest <= latest, "abort window must be positive and ordered")
        precondition(fraction > 0 && fraction <= 1, "abort fraction must be in (0, 1]")
        self.earliest = earliest
        self.latest = latest
        self.fraction = fraction
    }

    /// Milliseconds after sending at which request `index` is abandoned, or nil when it runs to completion.
    public func abortMilliseconds(forIndex index: Int) -> Int? {
        let chosen = Self.unit(UInt64(bitPattern: Int64(index)), salt: 0x5EED)
        guard chosen < fraction else { return nil }
        let at = Self.unit(UInt64(bitPattern: Int64(index)), salt: 0xAB07)
        let seconds = earliest + (latest - earliest) * at
        return Swift.max(1, Int((seconds * 1000).rounded()))
    }

    /// A uniform number in [0, 1) from `value` (SplitMix64's finaliser: every input bit moves every output bit).
    static func unit(_ value: UInt64, salt: UInt64) -> Double {
        var z = value &+ salt &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Double(z >> 11) / Double(1 << 53)
    }

    /// Parses `A` or `A-B` (durations like 5ms, 0.3s); nil when malformed or not ordered.
    public static func parseWindow(_ text: String) -> (Double, Double)? {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2,
              let a = parseDuration(String(parts[0]), defaultUnit: 1e-3), a > 0 else { return nil }
        guard parts.count == 2 else { return (a, a) }
        guard let b = parseDuration(String(parts[1]), defaultUnit: 1e-3), b >= a else { return nil }
        return (a, b)
    }
}

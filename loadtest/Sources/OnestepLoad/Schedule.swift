// When each request is meant to go out. Pure arithmetic on nanosecond offsets, no clock and no sockets, so the
// open-loop rules can be tested exactly.
//
// Open loop (wrk2 / vegeta): request i is intended at S_i = T0 + i / R, whatever the server is doing. Requests
// 0 ..< warmupCount are the warmup; the next measuredCount are measured. Latency is measured from S_i, so
// time a request spends waiting for a free connection counts against the server.

/// Which part of the run a request belongs to.
public enum Phase: String, Sendable, Codable {
    /// Sent to warm the server and the connections; recorded apart and left out of the results.
    case warmup
    /// Counted in the results and the thresholds.
    case measured
}

/// The intended send times of an open-loop run at a constant rate.
public struct OpenLoopSchedule: Sendable, Equatable {
    /// Requests per second.
    public let rate: Double
    public let warmupCount: Int
    public let measuredCount: Int

    /// - Precondition: `rate > 0`, counts >= 0.
    public init(rate: Double, warmupCount: Int, measuredCount: Int) {
        precondition(rate > 0 && rate.isFinite, "rate must be a positive number")
        precondition(warmupCount >= 0 && measuredCount >= 0, "request counts must not be negative")
        self.rate = rate
        self.warmupCount = warmupCount
        self.measuredCount = measuredCount
    }

    /// The schedule for a warmup of `warmup` seconds and a measured part of `duration` seconds or `requests`
    /// requests (requests wins when both are given).
    public init(rate: Double, warmup: Double, duration: Double?, requests: Int?) {
        let warm = Int((warmup * rate).rounded(.down))
        let measured = requests ?? Int(((duration ?? 0) * rate).rounded(.down))
        self.init(rate: rate, warmupCount: warm, measuredCount: measured)
    }

    public var totalCount: Int { warmupCount + measuredCount }

    /// Nanoseconds between T0 and the intended send time of request `i`: round(i * 1e9 / R).
    /// Computed from i (not by adding intervals) so rounding never drifts.
    public func intendedOffset(_ i: Int) -> UInt64 {
        precondition(i >= 0, "request index must not be negative")
        return UInt64((Double(i) * 1e9 / rate).rounded())
    }

    public func phase(of i: Int) -> Phase { i < warmupCount ? .warmup : .measured }

    /// Offset at which the measured part starts (the intended time of its first request).
    public var measuredStartOffset: UInt64 { intendedOffset(warmupCount) }

    /// How many requests are due (intended at or before `offset`), capped at `totalCount`.
    public func dueCount(atOffset offset: UInt64) -> Int {
        var n = Int((Double(offset) * rate / 1e9).rounded(.down)) + 1
        // Correct the floating-point estimate against the exact definition of intendedOffset.
        while n > 0 && intendedOffset(n - 1) > offset { n -= 1 }
        while intendedOffset(n) <= offset { n += 1 }
        return Swift.min(n, totalCount)
    }

    /// The default lag after which a request counts as "not sent on time": one interval (1 / R), but at least
    /// 1 ms. A request that goes out after its successor was already due could not be sent on time.
    public var defaultLateAfterNanos: UInt64 { Swift.max(1_000_000, UInt64((1e9 / rate).rounded())) }
}

/// Hands out due requests of an open-loop schedule as a clock passes, and says how long the driver may sleep.
///
/// The driver asks `release(upTo:)` for every request that has become due; those it cannot send at once (all
/// connections busy) it keeps in its own queue and sends as soon as a connection frees up, each still carrying its
/// intended time.
public struct OpenLoopPacer: Sendable {
    public let schedule: OpenLoopSchedule
    /// With `--threads T`, thread `lane` of `lanes` owns the requests i with i mod lanes == lane; every request
    /// keeps its own S_i, so the threads together follow the one schedule.
    public let lane: Int
    public let lanes: Int
    /// The next request index of this lane not yet released.
    public private(set) var next = 0

    /// - Precondition: 0 <= lane < lanes.
    public init(schedule: OpenLoopSchedule, lane: Int = 0, lanes: Int = 1) {
        precondition(lanes >= 1 && (0..<lanes).contains(lane), "lane must be in 0..<lanes")
        self.schedule = schedule
        self.lane = lane
        self.lanes = lanes
        next = lane
    }

    /// Releases this lane's requests intended at or before `offset` that have not been released yet.
    public mutating func releaseLane(upTo offset: UInt64) -> StrideTo<Int> {
        let due = schedule.dueCount(atOffset: offset)
        guard due > next else { return stride(from: next, to: next, by: lanes) }
        let released = stride(from: next, to: due, by: lanes)
        next += (due - next + lanes - 1) / lanes * lanes
        return released
    }

    /// This lane's requests not released yet.
    public var unreleased: StrideTo<Int> { stride(from: next, to: Swift.max(next, schedule.totalCount), by: lanes) }

    public var isFinished: Bool { next >= schedule.totalCount }

    /// Releases every request intended at or before `offset` that has not been released yet (one lane only).
    public mutating func release(upTo offset: UInt64) -> Range<Int> {
        precondition(lanes == 1, "release(upTo:) is for a single lane; use releaseLane(upTo:)")
        let due = schedule.dueCount(atOffset: offset)
        guard due > next else { return next..<next }
        defer { next = due }
        return next..<due
    }

    /// Nanoseconds from `offset` until the next release, nil when every request has been released.
    public func nanosUntilNext(from offset: UInt64) -> UInt64? {
        guard !isFinished else { return nil }
        let t = schedule.intendedOffset(next)
        return t > offset ? t - offset : 0
    }
}

/// The lateness rule: a request is "not sent on time" when it went out more than `lateAfter` after S_i.
@inline(__always)
public func isLate(intended: UInt64, sent: UInt64, lateAfterNanos: UInt64) -> Bool {
    sent > intended && sent - intended > lateAfterNanos
}

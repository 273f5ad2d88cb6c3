// What happened to each request, folded into histograms and counters. No clock and no sockets: the driver hands
// in finished `Outcome`s with their three timestamps, so the recording rules can be tested with made-up times.
import Foundation

/// Why a request did not produce an acceptable response.
public enum ErrorClass: String, Sendable, CaseIterable, Codable {
    /// The connection could not be opened (refused, unresolvable host, TLS handshake).
    case connect
    /// No complete response within `--timeout` (or still in flight when the drain ran out).
    case timeout
    /// The connection failed while sending or receiving (reset, closed early, short body).
    case read
    /// A response arrived but was malformed, or its body failed the `--expect` check.
    case invalid
    /// A complete response with a status outside 200...399.
    case status
    /// The request could not be sent at all before the run ended (connections stuck until the hard stop).
    case unsent
    /// Anything else libcurl reported.
    case other
}

/// How far a request had got when the client abandoned it on purpose (`--abort-after`).
public enum AbortStage: String, Sendable, CaseIterable, Codable {
    /// No byte of the response had arrived: the server still had it queued or computing.
    case beforeResponse = "before_response"
    /// The status line (or part of the body) had arrived.
    case duringResponse = "during_response"
}

/// One finished request. Times are nanoseconds since the run's T0 (monotonic clock).
public struct Outcome: Sendable, Equatable {
    public var index: Int
    public var phase: Phase
    public var urlIndex: Int
    /// S_i: when the schedule wanted it sent (equals `sent` in closed loop).
    public var intended: UInt64
    /// When it was handed to libcurl.
    public var sent: UInt64
    /// When its completion was seen.
    public var done: UInt64
    /// HTTP status, 0 when no response arrived.
    public var status: Int
    public var error: ErrorClass?
    /// Body bytes received.
    public var bytes: Int
    /// What exactly went wrong at the transport level ("refused", "reset", "empty_reply"...), for `error`s that
    /// libcurl reported; nil otherwise. See `CurlMulti.errorKind`.
    public var errorKind: String?
    /// Set when the client abandoned the request on purpose; such a request is neither ok nor an error.
    public var aborted: AbortStage?

    public init(index: Int, phase: Phase, urlIndex: Int = 0, intended: UInt64, sent: UInt64, done: UInt64,
                status: Int, error: ErrorClass? = nil, bytes: Int = 0, errorKind: String? = nil,
                aborted: AbortStage? = nil) {
        self.index = index; self.phase = phase; self.urlIndex = urlIndex; self.intended = intended
        self.sent = sent; self.done = done; self.status = status; self.error = error; self.bytes = bytes
        self.errorKind = errorKind; self.aborted = aborted
    }

    /// Intended send -> done, microseconds.
    public var correctedMicros: Int64 { Int64((done &- Swift.min(intended, done)) / 1000) }
    /// Actual send -> done, microseconds.
    public var uncorrectedMicros: Int64 { Int64((done &- Swift.min(sent, done)) / 1000) }
    /// Intended -> actual send, microseconds.
    public var queueingMicros: Int64 { Int64((sent &- Swift.min(intended, sent)) / 1000) }
}

/// The figures of one phase (warmup or measured).
public struct PhaseStats: Sendable {
    /// Intended send -> response complete (what a user of the server sees).
    public var corrected = Histogram()
    /// Actual send -> response complete (what a closed-loop tool would report).
    public var uncorrected = Histogram()
    /// Intended send -> actual send (waiting for a free connection).
    public var queueing = Histogram()
    public var sent = 0
    /// Requests that got a complete HTTP response (any status), the ones in the latency histograms.
    public var responses = 0
    /// Responses that passed: status 200...399 and the body check.
    public var ok = 0
    public var late = 0
    public var bytes = 0
    public var statusCounts: [Int: Int] = [:]
    /// Corrected latency of the complete responses of each status, so that fast rejections (429/503) and slow
    /// successes (200) each get their own percentiles instead of blending into one.
    public var latencyByStatus: [Int: Histogram] = [:]
    public var errorCounts: [ErrorClass: Int] = [:]
    /// Transport errors by what libcurl and the OS said ("refused", "reset", "timeout"...).
    public var errorKindCounts: [String: Int] = [:]
    /// Requests the client abandoned on purpose (`--abort-after`), by how far they had got.
    public var abortedCounts: [AbortStage: Int] = [:]
    /// Earliest intended send and latest completion seen, ns since T0.
    public var firstIntended: UInt64 = .max
    public var lastSent: UInt64 = 0
    public var lastDone: UInt64 = 0

    public init() {}

    public var errors: Int { errorCounts.values.reduce(0, +) }
    public var aborted: Int { abortedCounts.values.reduce(0, +) }
    /// Requests that ended one way or another (deliberate aborts are not counted: they are neither).
    public var finished: Int { ok + errors }

    /// Adds another thread's figures of the same phase (histograms merged, counts summed, extremes kept).
    public mutating func merge(_ o: PhaseStats) {
        corrected.add(o.corrected); uncorrected.add(o.uncorrected); queueing.add(o.queueing)
        sent += o.sent; responses += o.responses; ok += o.ok; late += o.late; bytes += o.bytes
        statusCounts.merge(o.statusCounts, uniquingKeysWith: +)
        for (k, h) in o.latencyByStatus { latencyByStatus[k, default: Histogram()].add(h) }
        errorCounts.merge(o.errorCounts, uniquingKeysWith: +)
        errorKindCounts.merge(o.errorKindCounts, uniquingKeysWith: +)
        abortedCounts.merge(o.abortedCounts, uniquingKeysWith: +)
        firstIntended = Swift.min(firstIntended, o.firstIntended)
        lastSent = Swift.max(lastSent, o.lastSent)
        lastDone = Swift.max(lastDone, o.lastDone)
    }

    /// Corrected latency of the responses whose status is in `statuses`, merged.
    public func latency(ofStatuses statuses: [Int]) -> Histogram {
        var merged = Histogram()
        for s in statuses { if let h = latencyByStatus[s] { merged.add(h) } }
        return merged
    }
}

/// Latency samples kept for the over-time plot: at most `capacity`, thinned evenly (every k-th request, k doubling
/// whenever the buffer fills) so memory stays bounded on long runs.
public struct TimelineSamples: Sendable {
    public private(set) var points: [(t: Float, corrected: Float, uncorrected: Float)] = []
    public private(set) var stride = 1
    private var seen = 0
    public let capacity: Int

    public init(capacity: Int = 200_000) { self.capacity = capacity }

    /// Adds another thread's samples (kept in time order of their intended sends by the plot's x axis).
    mutating func merge(_ o: TimelineSamples) {
        points += o.points
        stride = Swift.max(stride, o.stride)
        seen += o.seen
        while points.count >= capacity {
            points = points.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
            stride *= 2
        }
    }

    mutating func add(t: Double, corrected: Double, uncorrected: Double) {
        defer { seen += 1 }
        guard seen % stride == 0 else { return }
        points.append((Float(t), Float(corrected), Float(uncorrected)))
        if points.count >= capacity {
            points = points.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
            stride *= 2
        }
    }
}

/// Everything recorded in a run.
public struct RunResults: Sendable {
    public var warmup = PhaseStats()
    public var measured = PhaseStats()
    public var lateAfterNanos: UInt64
    /// Requests/s asked for (open loop), nil in closed loop.
    public var requestedRate: Double?
    /// ns since T0 at which the measured phase began (its first intended send).
    public var measuredStart: UInt64 = 0
    /// ns since T0 at which the last measured request was handed to libcurl.
    public var sendingEnded: UInt64 = 0
    /// Requests still in flight when sending ended; they were waited for.
    public var inFlightAtEnd = 0
    /// Of those, how many finished with a response during the drain.
    public var completedAfterEnd = 0
    public var timeline = TimelineSamples()
    /// Wall-clock time of T0 (seconds since 1970), so scripts can place their own events (a signal sent to the
    /// server) on the run's time axis and in the `--raw` CSV.
    public var startedAtUnix: Double = 0

    public init(lateAfterNanos: UInt64, requestedRate: Double?) {
        self.lateAfterNanos = lateAfterNanos
        self.requestedRate = requestedRate
    }

    /// Adds the results of another thread of the same run (same T0 and schedule).
    public mutating func merge(_ o: RunResults) {
        warmup.merge(o.warmup)
        measured.merge(o.measured)
        sendingEnded = Swift.max(sendingEnded, o.sendingEnded)
        inFlightAtEnd += o.inFlightAtEnd
        completedAfterEnd += o.completedAfterEnd
        timeline.merge(o.timeline)
    }

    public mutating func record(_ o: Outcome) {
        let late = isLate(intended: o.intended, sent: o.sent, lateAfterNanos: lateAfterNanos)
        let gotResponse = o.aborted == nil && o.status > 0
            && (o.error == nil || o.error == .invalid || o.error == .status)
        func apply(_ s: inout PhaseStats) {
            if o.error != .unsent { s.sent += 1 }
            if late && o.error != .unsent { s.late += 1 }
            s.bytes += o.bytes
            s.firstIntended = Swift.min(s.firstIntended, o.intended)
            if o.error != .unsent { s.lastSent = Swift.max(s.lastSent, o.sent) }
            s.lastDone = Swift.max(s.lastDone, o.done)
            if let stage = o.aborted {
                s.abortedCounts[stage, default: 0] += 1
                return
            }
            if o.status > 0 { s.statusCounts[o.status, default: 0] += 1 }
            if let e = o.error { s.errorCounts[e, default: 0] += 1 } else { s.ok += 1 }
            if let kind = o.errorKind { s.errorKindCounts[kind, default: 0] += 1 }
            if gotResponse {
                s.responses += 1
                s.latencyByStatus[o.status, default: Histogram()].record(o.correctedMicros)
                s.corrected.record(o.correctedMicros)
                s.uncorrected.record(o.uncorrectedMicros)
                s.queueing.record(o.queueingMicros)
            }
        }
        switch o.phase {
        case .warmup: apply(&warmup)
        case .measured:
            apply(&measured)
            if gotResponse && o.aborted == nil {
                let t = Double(o.intended &- Swift.min(o.intended, measuredStart)) / 1e9
                timeline.add(t: t, corrected: Double(o.correctedMicros) / 1e6,
                             uncorrected: Double(o.uncorrectedMicros) / 1e6)
            }
        }
    }

    // MARK: Derived figures (documented in loadtest/README.md)

    /// Failed requests / finished requests of the measured phase.
    public var errorRate: Double {
        measured.finished == 0 ? 0 : Double(measured.errors) / Double(measured.finished)
    }

    /// Seconds from the start of the measured phase to its last completion; in open loop at least the scheduled
    /// span (sent / R), so a server that keeps up shows an achieved rate of R, not a hair above it.
    public var measuredSeconds: Double {
        let end = Swift.max(measured.lastDone, sendingEnded)
        let observed = end > measuredStart ? Double(end - measuredStart) / 1e9 : 0
        guard let r = requestedRate else { return observed }
        return Swift.max(observed, Double(measured.sent) / r)
    }

    /// Intervals between measured sends per second: (sent - 1) / (last send - measured start). Exactly R when
    /// every request left on time.
    public var sentRate: Double {
        guard measured.sent > 1, measured.lastSent > measuredStart else { return 0 }
        return Double(measured.sent - 1) / (Double(measured.lastSent - measuredStart) / 1e9)
    }

    /// Successful measured responses per second of the measured phase (start to last completion).
    public var achievedRate: Double {
        let s = measuredSeconds
        return s > 0 ? Double(measured.ok) / s : 0
    }
}

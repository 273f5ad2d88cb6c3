// The wrk2-style text report and the JSON report (keys documented in loadtest/README.md).
import Foundation

/// Percentiles shown in the summary tables (wrk2's "Latency Distribution").
public let reportPercentiles: [Double] = [50, 75, 90, 99, 99.9, 99.99, 99.999, 100]

/// Result of checking every `--fail-if`.
public struct ThresholdResult: Sendable {
    public var threshold: Threshold
    /// nil: no data (which fails the threshold).
    public var measured: Double?
    public var failed: Bool
    /// "0.0123s", or "no data: ..." when nothing could be measured.
    public var measuredText: String
}

/// Checks the `--fail-if` thresholds, plus the error budget when one is set and no threshold names error_rate.
public func evaluate(_ thresholds: [Threshold], errorBudget: Double? = nil, on results: RunResults) -> [ThresholdResult] {
    var all = thresholds
    if let b = errorBudget, !thresholds.contains(where: { $0.metric == .errorRate }) {
        all.append(.errorBudget(b))
    }
    return all.map {
        let m = $0.measured(in: results)
        return ThresholdResult(threshold: $0, measured: m, failed: $0.fails(results), measuredText: $0.format(m, results))
    }
}

/// Right-aligns `s` in `width` columns.
func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
}

private func ms(_ micros: Int64) -> Double { Double(micros) / 1000 }

/// "1.23ms" style for a microsecond value, right-aligned like wrk2.
func formatMicros(_ us: Int64) -> String { formatSeconds(Double(us) / 1e6) }

func formatBytes(_ b: Double) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"]
    var v = b, u = 0
    while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
    return String(format: u == 0 ? "%.0f%@" : "%.2f%@", v, units[u])
}

public enum TextReport {
    public static func render(config: LoadConfig, results r: RunResults, thresholds: [ThresholdResult],
                              errorExamples: [ErrorClass: String] = [:], background: BackgroundReport? = nil) -> String {
        var out = ""
        func line(_ s: String = "") { out += s + "\n" }
        let m = r.measured
        let length = config.requests.map { "\($0) requests" } ?? String(format: "%gs", config.duration ?? 0)
        line("Running \(length) test @ \(config.request.urls.joined(separator: ", "))")
        switch config.mode {
        case .openLoop(let rate):
            line(String(format: "  open loop at %.2f req/s, %d connections, warmup %@, timeout %@, late after %@",
                        rate, config.connections, formatSeconds(config.warmup), formatSeconds(config.timeout),
                        formatSeconds(Double(r.lateAfterNanos) / 1e9)))
        case .closedLoop(let c):
            line("  closed loop, \(c) in flight, warmup \(formatSeconds(config.warmup)), timeout \(formatSeconds(config.timeout))")
        }
        line("  \(config.request.method), expect \(config.expect), \(config.effectiveThreads) thread\(config.effectiveThreads == 1 ? "" : "s"), "
             + (config.effectiveEngine == .builtin ? "built-in HTTP client" : "libcurl"))
        line()
        line("  Latency Distribution (HdrHistogram, 1us..1h, 3 significant digits)")
        line("  corrected = from intended send time; uncorrected = from actual send; queueing = intended -> actual send")
        line(pad("percentile", 11) + pad("corrected", 14) + pad("uncorrected", 14) + pad("queueing", 14))
        for p in reportPercentiles {
            line(pad(String(format: "%.3f%%", p), 11) + pad(formatMicros(m.corrected.value(atPercentile: p)), 14)
                 + pad(formatMicros(m.uncorrected.value(atPercentile: p)), 14)
                 + pad(formatMicros(m.queueing.value(atPercentile: p)), 14))
        }
        line(pad("mean", 11) + pad(formatSeconds(m.corrected.mean / 1e6), 14)
             + pad(formatSeconds(m.uncorrected.mean / 1e6), 14) + pad(formatSeconds(m.queueing.mean / 1e6), 14))
        line(pad("stdev", 11) + pad(formatSeconds(m.corrected.standardDeviation / 1e6), 14)
             + pad(formatSeconds(m.uncorrected.standardDeviation / 1e6), 14)
             + pad(formatSeconds(m.queueing.standardDeviation / 1e6), 14))
        if config.spectrum && !m.corrected.isEmpty {
            line()
            line("  Detailed Percentile spectrum (corrected latency):")
            line("       Value   Percentile   TotalCount 1/(1-Percentile)")
            line()
            for p in m.corrected.percentileSpectrum() {
                let inv = p.percentile >= 100 ? "inf" : String(format: "%.2f", 1 / (1 - p.percentile / 100))
                line(String(format: "%12.3f %12.6f %12lld ", ms(p.value), p.percentile / 100, p.totalCount) + pad(inv, 14))
            }
            line(String(format: "#[Mean    = %12.3f, StdDeviation   = %12.3f]", m.corrected.mean / 1000,
                        m.corrected.standardDeviation / 1000))
            line(String(format: "#[Max     = %12.3f, Total count    = %12lld]", ms(m.corrected.max), m.corrected.totalCount))
            line(String(format: "#[Buckets = %12d, SubBuckets     = %12d]", m.corrected.bucketCount, 2048))
            line("  (values in ms)")
        }
        line("----------------------------------------------------------")
        line(String(format: "  %d requests in %.2fs, %@ read", m.sent, r.measuredSeconds, formatBytes(Double(m.bytes))))
        let requested = r.requestedRate.map { String(format: "%.2f", $0) } ?? "-"
        line(String(format: "  Requested rate %@ req/s, sent %.2f req/s, achieved %.2f req/s", requested, r.sentRate,
                    r.achievedRate))
        if r.requestedRate != nil {
            line("  Not sent on time: \(m.late) (lag > \(formatSeconds(Double(r.lateAfterNanos) / 1e9)))")
        }
        line("  In flight at end: \(r.inFlightAtEnd) (completed while draining: \(r.completedAfterEnd))")
        let statuses = m.statusCounts.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }
        line("  Status codes: " + (statuses.isEmpty ? "none" : statuses.joined(separator: ", ")))
        if m.latencyByStatus.count > 1 {
            line("  Corrected latency by status:")
            for (status, h) in m.latencyByStatus.sorted(by: { $0.key < $1.key }) {
                line("    \(status): \(h.totalCount) responses, p50 \(formatMicros(h.value(atPercentile: 50))), "
                     + "p99 \(formatMicros(h.value(atPercentile: 99))), max \(formatMicros(h.max))")
            }
        }
        let errs = ErrorClass.allCases.map { "\($0.rawValue) \(m.errorCounts[$0, default: 0])" }
        line(String(format: "  Errors: %d (%.3f%%) — ", m.errors, r.errorRate * 100) + errs.joined(separator: ", "))
        if !m.errorKindCounts.isEmpty {
            line("  Errors by kind: " + m.errorKindCounts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
                .joined(separator: ", "))
        }
        for (cls, msg) in errorExamples.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            line("    first \(cls.rawValue) error: \(msg)")
        }
        if config.abort != nil {
            line("  Aborted by the client (--abort-after, not errors): \(m.aborted) — before any response byte "
                 + "\(m.abortedCounts[.beforeResponse, default: 0]), during the response \(m.abortedCounts[.duringResponse, default: 0])")
        }
        if let background { describe(background, config: config, line: line) }
        if r.warmup.sent > 0 {
            line(String(format: "  Warmup (not in results): %d requests, %d errors, corrected p50 %@, p99 %@",
                        r.warmup.sent, r.warmup.errors, formatMicros(r.warmup.corrected.value(atPercentile: 50)),
                        formatMicros(r.warmup.corrected.value(atPercentile: 99))))
        }
        line(String(format: "Requests/sec: %10.2f", r.achievedRate))
        line("Transfer/sec: \(formatBytes(r.measuredSeconds > 0 ? Double(m.bytes) / r.measuredSeconds : 0))")
        for t in thresholds {
            line("threshold \(t.failed ? "FAILED" : "ok"): \(t.threshold.text) (measured \(t.measuredText))")
        }
        return out
    }
}

extension TextReport {
    static func describe(_ b: BackgroundReport, config: LoadConfig, line: (String) -> Void) {
        if b.idle_requested > 0 {
            let answered = config.background?.idlePath.map { ", answered GET \($0): \(b.idle_answered)" } ?? ""
            line(String(format: "  Idle connections: %d of %d opened in %.2fs%@ (failed %d); closed by the server while held: %d; still open at end: %d",
                        b.idle_opened, b.idle_requested, b.idle_open_seconds, answered, b.idle_open_failed,
                        b.idle_closed_by_server, b.idle_still_open))
        }
        if b.slowloris_requested > 0 {
            let how = b.slowloris_cut_off_by.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            let after = b.slowloris_cut_off_after_s["p50"].map { p50 in
                " after p50 " + formatSeconds(p50) + ", max " + formatSeconds(b.slowloris_cut_off_after_s["max"] ?? 0)
            } ?? ""
            let interval = formatSeconds(config.background?.slowlorisInterval ?? 0)
            line("  Slowloris: \(b.slowloris_requested) clients, 1 byte every \(interval): \(b.slowloris_connections) connections, "
                 + "\(b.slowlorisCutOff) cut off by the server (\(how.isEmpty ? "none" : how))\(after); still open at end "
                 + "\(b.slowloris_still_open) (oldest \(formatSeconds(b.slowloris_oldest_open_s))); connect failures "
                 + "\(b.slowloris_connect_failed)")
        }
    }
}

// MARK: JSON

/// The `--json` document. Latencies are milliseconds, rates requests/s, times seconds.
public struct JSONReport: Codable, Sendable {
    public struct LatencySummary: Codable, Sendable {
        public var count: Int64
        public var min_ms: Double
        public var mean_ms: Double
        public var stdev_ms: Double
        public var max_ms: Double
        /// "p50", "p75", "p90", "p99", "p99.9", "p99.99", "p99.999", "p100" -> ms
        public var percentiles_ms: [String: Double]
    }
    public struct SpectrumPoint: Codable, Sendable {
        public var value_ms: Double
        public var percentile: Double
        public var count: Int64
    }
    public struct PhaseReport: Codable, Sendable {
        public var sent: Int
        public var responses: Int
        public var ok: Int
        public var errors: Int
        public var not_sent_on_time: Int
        public var bytes: Int
        public var status_codes: [String: Int]
        public var errors_by_class: [String: Int]
        /// Every error by kind: transport causes ("refused", "reset", "empty_reply", "timeout"...), "http_NNN",
        /// "bad_body", "unsent". Sums to `errors`.
        public var errors_by_kind: [String: Int]
        /// Deliberate client disconnects (`--abort-after`): "before_response", "during_response".
        public var aborted: [String: Int]
        public var latency: [String: LatencySummary]
        /// Corrected latency of the responses of each status code.
        public var latency_by_status: [String: LatencySummary]
    }
    public struct ConfigReport: Codable, Sendable {
        public var mode: String
        public var rate: Double?
        public var concurrency: Int?
        public var connections: Int
        /// I/O threads actually used (`--threads`, at most the connections).
        public var threads: Int
        /// The HTTP client used: "builtin" or "curl" (`--engine`).
        public var engine: String
        public var duration_s: Double?
        public var requests: Int?
        public var warmup_s: Double
        public var timeout_s: Double
        public var late_after_ms: Double
        public var urls: [String]
        public var method: String
        public var expect: String
    }
    public struct ThresholdReport: Codable, Sendable {
        public var expression: String
        /// null when nothing could be measured (the threshold then failed as "no data").
        public var measured: Double?
        public var failed: Bool
    }

    public var tool = "onestep-load"
    public var format_version = 1
    public var config: ConfigReport
    public var requested_rate: Double?
    public var sent_rate: Double
    public var achieved_rate: Double
    public var measured_duration_s: Double
    /// Wall-clock time of T0, seconds since 1970 (the `--raw` CSV's times are ms after it).
    public var started_unix_s: Double
    public var error_rate: Double
    public var in_flight_at_end: Int
    public var completed_after_end: Int
    public var measured: PhaseReport
    public var warmup: PhaseReport
    public var spectrum: [String: [SpectrumPoint]]
    public var thresholds: [ThresholdReport]
    public var passed: Bool
    /// `--idle-connections` / `--slowloris` figures; absent when neither was used.
    public var background: BackgroundReport?

    public init(config c: LoadConfig, results r: RunResults, thresholds: [ThresholdResult],
                background: BackgroundReport? = nil) {
        func summary(_ h: Histogram) -> LatencySummary {
            var ps: [String: Double] = [:]
            for p in reportPercentiles {
                let key = "p" + (p == p.rounded() ? String(Int(p)) : String(p))
                ps[key] = ms(h.value(atPercentile: p))
            }
            return LatencySummary(count: h.totalCount, min_ms: ms(h.min), mean_ms: h.mean / 1000,
                                  stdev_ms: h.standardDeviation / 1000, max_ms: ms(h.max), percentiles_ms: ps)
        }
        func phase(_ s: PhaseStats) -> PhaseReport {
            PhaseReport(sent: s.sent, responses: s.responses, ok: s.ok, errors: s.errors, not_sent_on_time: s.late,
                        bytes: s.bytes,
                        status_codes: Dictionary(uniqueKeysWithValues: s.statusCounts.map { (String($0.key), $0.value) }),
                        errors_by_class: Dictionary(uniqueKeysWithValues: ErrorClass.allCases.map { ($0.rawValue, s.errorCounts[$0, default: 0]) }),
                        errors_by_kind: s.errorKindCounts,
                        aborted: Dictionary(uniqueKeysWithValues: AbortStage.allCases.map { ($0.rawValue, s.abortedCounts[$0, default: 0]) }),
                        latency: ["corrected": summary(s.corrected), "uncorrected": summary(s.uncorrected),
                                  "queueing": summary(s.queueing)],
                        latency_by_status: Dictionary(uniqueKeysWithValues: s.latencyByStatus.map { (String($0.key), summary($0.value)) }))
        }
        func spectrum(_ h: Histogram) -> [SpectrumPoint] {
            h.percentileSpectrum().map { SpectrumPoint(value_ms: ms($0.value), percentile: $0.percentile, count: $0.totalCount) }
        }
        var rate: Double?, concurrency: Int?
        switch c.mode {
        case .openLoop(let r): rate = r
        case .closedLoop(let n): concurrency = n
        }
        config = ConfigReport(mode: rate == nil ? "closed" : "open", rate: rate, concurrency: concurrency,
                              connections: c.connections, threads: c.effectiveThreads,
                              engine: c.effectiveEngine.rawValue, duration_s: c.requests == nil ? c.duration : nil,
                              requests: c.requests, warmup_s: c.warmup, timeout_s: c.timeout,
                              late_after_ms: Double(r.lateAfterNanos) / 1e6, urls: c.request.urls,
                              method: c.request.method, expect: c.expect.description)
        requested_rate = r.requestedRate
        sent_rate = r.sentRate
        achieved_rate = r.achievedRate
        measured_duration_s = r.measuredSeconds
        started_unix_s = r.startedAtUnix
        error_rate = r.errorRate
        in_flight_at_end = r.inFlightAtEnd
        completed_after_end = r.completedAfterEnd
        measured = phase(r.measured)
        warmup = phase(r.warmup)
        self.spectrum = ["corrected": spectrum(r.measured.corrected), "uncorrected": spectrum(r.measured.uncorrected)]
        self.thresholds = thresholds.map { ThresholdReport(expression: $0.threshold.text, measured: $0.measured, failed: $0.failed) }
        passed = !thresholds.contains(where: \.failed)
        self.background = background
    }

    public func encoded() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try e.encode(self)
    }
}

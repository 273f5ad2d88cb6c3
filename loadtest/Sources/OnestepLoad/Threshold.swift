// `--fail-if` conditions (k6 thresholds turned around: each one names a condition that fails the run).
//
// Grammar:  metric op value
//   metric  p50 | p75 | p90 | p95 | p99 | p99.9 | p99.99 | p<any 0..100> | max | mean   (corrected latency)
//           any of these with [S,S...]: only responses with those status codes, e.g. p99[429,503]
//           error_rate (also errors)          achieved fraction of requests that failed, 0...1 or "%"
//           rate       (also achieved_rate, rps) achieved throughput, responses/s
//   op      >  >=  <  <=
//   value   latency: 250ms, 1.5s, 800us (bare number = ms); error rate: 0.01 or 1%; rate: a number
import Foundation

public struct Threshold: Sendable, Equatable, CustomStringConvertible {
    public enum Metric: Sendable, Equatable {
        case latencyPercentile(Double)
        case latencyMax
        case latencyMean
        case errorRate
        case achievedRate
    }

    public enum Comparison: String, Sendable, Equatable, CaseIterable {
        case greaterOrEqual = ">=", lessOrEqual = "<=", greater = ">", less = "<"

        func holds(_ a: Double, _ b: Double) -> Bool {
            switch self {
            case .greater: return a > b
            case .greaterOrEqual: return a >= b
            case .less: return a < b
            case .lessOrEqual: return a <= b
            }
        }
    }

    public var metric: Metric
    /// Latency metrics only: look at the responses with these status codes (nil: every response).
    public var statuses: [Int]?
    public var comparison: Comparison
    /// Seconds for latencies, a fraction for the error rate, requests/s for the rate.
    public var value: Double
    /// The text as the user wrote it.
    public var text: String

    public var description: String { text }

    /// Parses one `--fail-if` expression; throws a message that says what is wrong.
    public init(parsing text: String) throws {
        let t = text.replacingOccurrences(of: " ", with: "")
        // Two-character operators first so ">=" is not read as ">".
        guard let op = Comparison.allCases.first(where: { t.contains($0.rawValue) }),
              let range = t.range(of: op.rawValue) else {
            throw UsageError("--fail-if '\(text)': no comparison; write e.g. 'p99>250ms', 'error_rate>1%', 'rate<95'")
        }
        var name = t[..<range.lowerBound].lowercased()
        let valueText = String(t[range.upperBound...])
        if let open = name.firstIndex(of: "["), name.hasSuffix("]") {
            let list = name[name.index(after: open)..<name.index(before: name.endIndex)].split(separator: ",")
            let codes = list.compactMap { Int($0) }
            guard !codes.isEmpty, codes.count == list.count, codes.allSatisfy({ (100...599).contains($0) }) else {
                throw UsageError("--fail-if '\(text)': [..] must list status codes, e.g. p99[429,503]>20ms")
            }
            statuses = codes
            name = String(name[..<open])
        }
        self.comparison = op
        self.text = text
        if statuses != nil, ["error_rate", "errors", "error-rate", "rate", "achieved_rate", "rps"].contains(name) {
            throw UsageError("--fail-if '\(text)': a status list [..] only applies to latency metrics")
        }
        switch name {
        case "error_rate", "errors", "error-rate":
            metric = .errorRate
            if valueText.hasSuffix("%"), let v = Double(valueText.dropLast()) {
                value = v / 100
            } else if let v = Double(valueText) {
                value = v
            } else {
                throw UsageError("--fail-if '\(text)': error rate must be a fraction (0.01) or a percentage (1%)")
            }
        case "rate", "achieved_rate", "rps":
            metric = .achievedRate
            guard let v = Double(valueText) else {
                throw UsageError("--fail-if '\(text)': rate must be a number of requests/s")
            }
            value = v
        case "max", "p100", "mean":
            metric = name == "mean" ? .latencyMean : .latencyMax
            value = try Threshold.latency(valueText, text)
        default:
            guard name.hasPrefix("p"), let p = Double(name.dropFirst()), p > 0, p <= 100 else {
                throw UsageError("--fail-if '\(text)': unknown metric '\(name)'; use p50..p99.99, max, mean, error_rate, rate")
            }
            metric = .latencyPercentile(p)
            value = try Threshold.latency(valueText, text)
        }
    }

    private static func latency(_ valueText: String, _ text: String) throws -> Double {
        guard let v = parseDuration(valueText, defaultUnit: 1e-3) else {
            throw UsageError("--fail-if '\(text)': latency must look like 250ms, 1.5s or 800us")
        }
        return v
    }

    /// The measured figure this threshold looks at, in the threshold's unit; nil when there is nothing to
    /// measure (no response with a latency, or with one of the statuses asked; no finished request for the
    /// error rate). A latency of a run where nothing answered is not 0 s.
    public func measured(in results: RunResults) -> Double? {
        let h = statuses.map { results.measured.latency(ofStatuses: $0) } ?? results.measured.corrected
        switch metric {
        case .latencyPercentile, .latencyMax, .latencyMean:
            guard h.totalCount > 0 else { return nil }
        case .errorRate:
            // Requests abandoned on purpose (--abort-after) are neither ok nor errors: a run of only those has
            // no failure to count, which is data (0), not its absence.
            let aborted = results.measured.abortedCounts.values.reduce(0, +)
            guard results.measured.finished > 0 || aborted > 0 else { return nil }
            if results.measured.finished == 0 { return 0 }
        case .achievedRate:
            break
        }
        switch metric {
        case .latencyPercentile(let p): return Double(h.value(atPercentile: p)) / 1e6
        case .latencyMax: return Double(h.max) / 1e6
        case .latencyMean: return h.mean / 1e6
        case .errorRate: return results.errorRate
        case .achievedRate: return results.achievedRate
        }
    }

    /// True when the condition holds, i.e. the run fails on this threshold. No data fails too: a threshold that
    /// cannot be checked must not pass silently.
    public func fails(_ results: RunResults) -> Bool {
        guard let m = measured(in: results) else { return true }
        return comparison.holds(m, value)
    }

    /// Why `measured` is nil, for the report.
    public func noDataReason(_ results: RunResults) -> String {
        switch metric {
        case .errorRate: return "no data: no measured request finished"
        case .achievedRate: return "no data"
        default:
            let which = statuses.map { " with status " + $0.map(String.init).joined(separator: ",") } ?? ""
            return "no data: no measured response\(which) (\(results.measured.responses) responses, \(results.measured.errors) errors)"
        }
    }

    /// The implicit `--error-budget` threshold: error_rate > budget.
    public static func errorBudget(_ budget: Double) -> Threshold {
        var t = try! Threshold(parsing: "error_rate>\(budget)")
        t.text = String(format: "error_rate>%g%% (error budget; --error-budget to change, off to allow any)", budget * 100)
        return t
    }

    /// The measured figure, or the no-data reason.
    public func format(_ v: Double?, _ results: RunResults) -> String {
        v.map(format) ?? noDataReason(results)
    }

    /// The measured figure formatted in the threshold's unit.
    public func format(_ v: Double) -> String {
        switch metric {
        case .errorRate: return String(format: "%.4f%%", v * 100)
        case .achievedRate: return String(format: "%.2f req/s", v)
        default: return formatSeconds(v)
        }
    }
}

/// A bad flag, flag value or input file: exit code 2 with this message.
public struct UsageError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ message: String) { description = message }
}

/// "1.234ms", "12.50s", "850.00us".
public func formatSeconds(_ s: Double) -> String {
    if s == 0 { return "0s" }
    if s >= 1 { return String(format: "%.2fs", s) }
    if s >= 1e-3 { return String(format: "%.2fms", s * 1e3) }
    return String(format: "%.2fus", s * 1e6)
}

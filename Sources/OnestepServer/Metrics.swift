// Server metrics in the Prometheus text exposition format (version 0.0.4): counters, gauges and cumulative
// histograms with labels. One lock guards the registry: updates are a few per request, far below contention.
import Foundation
import HTTP1

public final class Metrics: Sendable {
    struct Histogram {
        var bounds: [Double]
        var counts: [UInt64]  // per bucket, not cumulative; the last is +Inf
        var sum = 0.0
        var count: UInt64 = 0
        init(bounds: [Double]) {
            self.bounds = bounds
            counts = [UInt64](repeating: 0, count: bounds.count + 1)
        }
        mutating func observe(_ v: Double) {
            let i = bounds.firstIndex(where: { v <= $0 }) ?? bounds.count
            counts[i] += 1
            sum += v
            count += 1
        }
    }

    struct Family {
        var help: String
        var type: String  // counter, gauge, histogram
        var bounds: [Double] = []
        var values: [String: Double] = [:]          // label string -> value (counters, gauges)
        var histograms: [String: Histogram] = [:]   // label string -> histogram
    }

    private let families = Locked<[String: Family]>([:])
    /// Gauges read at scrape time (queue depth, open connections).
    private let callbacks = Locked<[(String, String, @Sendable () -> Double)]>([])

    public static let latencyBuckets: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
    public static let batchBuckets: [Double] = [1, 2, 4, 8, 12, 16, 24, 32, 64]

    public init() {}

    public func describe(_ name: String, help: String, type: String, bounds: [Double] = []) {
        families.withLock { f in
            if f[name] == nil { f[name] = Family(help: help, type: type, bounds: bounds) }
        }
    }

    /// `{k="v",...}` with the exposition format's escapes (backslash, quote, newline). Called twice per response
    /// on the event-loop thread, so it avoids Foundation: `replacingOccurrences` here was half the loop's CPU on
    /// /healthz (measured with perf under wrk).
    static func labelString(_ labels: [(String, String)]) -> String {
        guard !labels.isEmpty else { return "" }
        var out = "{"
        for (i, (k, v)) in labels.enumerated() {
            if i > 0 { out += "," }
            out += k
            out += "=\""
            if v.utf8.contains(where: { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\n") }) {
                for c in v.unicodeScalars {
                    switch c {
                    case "\\": out += "\\\\"
                    case "\"": out += "\\\""
                    case "\n": out += "\\n"
                    default: out.unicodeScalars.append(c)
                    }
                }
            } else {
                out += v
            }
            out += "\""
        }
        return out + "}"
    }

    public func increment(_ name: String, _ labels: [(String, String)] = [], by v: Double = 1) {
        let key = Self.labelString(labels)
        families.withLock { f in f[name, default: Family(help: name, type: "counter")].values[key, default: 0] += v }
    }

    public func set(_ name: String, _ labels: [(String, String)] = [], _ v: Double) {
        let key = Self.labelString(labels)
        families.withLock { f in f[name, default: Family(help: name, type: "gauge")].values[key] = v }
    }

    public func observe(_ name: String, _ labels: [(String, String)] = [], _ v: Double) {
        let key = Self.labelString(labels)
        families.withLock { f in
            // Mutated in place: copying the family out and back would copy every histogram of it each time.
            if f[name] == nil { f[name] = Family(help: name, type: "histogram", bounds: Self.latencyBuckets) }
            let bounds = f[name]!.bounds
            f[name]!.histograms[key, default: Histogram(bounds: bounds)].observe(v)
        }
    }

    /// A gauge whose value is read when /metrics is scraped.
    public func gauge(_ name: String, help: String, _ read: @escaping @Sendable () -> Double) {
        callbacks.withLock { $0.append((name, help, read)) }
    }

    /// Current value of a counter or gauge (tests and the bench read these).
    public func value(_ name: String, _ labels: [(String, String)] = []) -> Double {
        families.withLock { $0[name]?.values[Self.labelString(labels)] ?? 0 }
    }

    /// Observations of a histogram summed over all label sets, and per bucket upper bound.
    public func histogramCounts(_ name: String) -> (count: UInt64, buckets: [(Double, UInt64)]) {
        families.withLock { f in
            guard let fam = f[name] else { return (0, []) }
            var total: UInt64 = 0
            var per = [UInt64](repeating: 0, count: fam.bounds.count + 1)
            for h in fam.histograms.values {
                total += h.count
                for i in per.indices { per[i] += h.counts[i] }
            }
            return (total, zip(fam.bounds + [.infinity], per).map { ($0, $1) })
        }
    }

    /// The whole registry in Prometheus text format.
    public func render() -> String {
        var out = ""
        let snapshot = families.withLock { $0 }
        for name in snapshot.keys.sorted() {
            let fam = snapshot[name]!
            out += "# HELP \(name) \(fam.help)\n# TYPE \(name) \(fam.type)\n"
            if fam.type == "histogram" {
                for key in fam.histograms.keys.sorted() {
                    let h = fam.histograms[key]!
                    let inner = key.isEmpty ? "" : String(key.dropFirst().dropLast()) + ","
                    var cumulative: UInt64 = 0
                    for (i, b) in h.bounds.enumerated() {
                        cumulative += h.counts[i]
                        out += "\(name)_bucket{\(inner)le=\"\(Self.number(b))\"} \(cumulative)\n"
                    }
                    out += "\(name)_bucket{\(inner)le=\"+Inf\"} \(h.count)\n"
                    out += "\(name)_sum\(key) \(Self.number(h.sum))\n\(name)_count\(key) \(h.count)\n"
                }
            } else {
                for key in fam.values.keys.sorted() { out += "\(name)\(key) \(Self.number(fam.values[key]!))\n" }
            }
        }
        for (name, help, read) in callbacks.withLock({ $0 }) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n\(name) \(Self.number(read()))\n"
        }
        return out
    }

    static func number(_ v: Double) -> String {
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return String(v)
    }
}

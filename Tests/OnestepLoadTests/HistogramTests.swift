import XCTest
@testable import OnestepLoad

/// 3 significant digits: a reported value is within 1/1000 of the exact one (plus one unit for tiny values).
private let relativeTolerance = 0.001

/// SplitMix64: a tiny seeded generator so the data sets are the same on every run.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The exact percentile of sorted data: the smallest value with at least p% of the values at or below it.
func exactPercentile(_ sorted: [Int64], _ p: Double) -> Int64 {
    let rank = Swift.max(1, Int((p / 100 * Double(sorted.count)).rounded(.toNearestOrAwayFromZero)))
    return sorted[Swift.min(rank, sorted.count) - 1]
}

final class HistogramTests: XCTestCase {
    private let percentiles = [0.0, 1, 25, 50, 75, 90, 99, 99.9, 99.99, 99.999, 100]

    private func assertMatchesExact(_ values: [Int64], file: StaticString = #filePath, line: UInt = #line) {
        var h = Histogram()
        for v in values { h.record(v) }
        let sorted = values.sorted()
        for p in percentiles {
            let exact = exactPercentile(sorted, p)
            let got = h.value(atPercentile: p)
            let allowed = Swift.max(1, Int64(Double(exact) * relativeTolerance))
            XCTAssertLessThanOrEqual(abs(got - exact), allowed, "p\(p): got \(got), exact \(exact)", file: file, line: line)
        }
        XCTAssertEqual(h.totalCount, Int64(values.count), file: file, line: line)
        XCTAssertEqual(h.max, sorted.last!, file: file, line: line)
        XCTAssertEqual(h.min, sorted.first!, file: file, line: line)
    }

    func testDefaultLayoutMatchesHdrHistogram() {
        let h = Histogram()
        // 1 us .. 1 h at 3 digits: 2048 sub-buckets, 22 buckets, (22 + 1) * 1024 counts (as HdrHistogram computes).
        XCTAssertEqual(h.subBucketCount, 2048)
        XCTAssertEqual(h.bucketCount, 22)
        XCTAssertEqual(h.counts.count, 23 * 1024)
    }

    func testUniformData() {
        assertMatchesExact((1...100_000).map { Int64($0) })
    }

    func testLogNormalLatencies() {
        var rng = SplitMix64(state: 42)
        let values: [Int64] = (0..<200_000).map { _ in
            // exp(N(ln 2ms, 1)): a long-tailed latency distribution from ~50us to seconds.
            let u1 = Double.random(in: Double.ulpOfOne..<1, using: &rng), u2 = Double.random(in: 0..<1, using: &rng)
            let z = (-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)
            return Int64(2000 * exp(z))
        }
        assertMatchesExact(values)
    }

    func testBimodalWithStall() {
        // 990 fast responses and 10 stalled ones: p99 is still fast, p99.9 is the stall.
        var values = [Int64](repeating: 1_500, count: 990)
        values += (1...10).map { Int64($0) * 100_000 }
        assertMatchesExact(values)
        var h = Histogram()
        for v in values { h.record(v) }
        XCTAssertEqual(h.value(atPercentile: 99), h.highestEquivalentValue(1_500))
        XCTAssertGreaterThan(h.value(atPercentile: 99.9), 800_000)
    }

    func testResolutionIsThreeSignificantDigits() {
        let h = Histogram()
        var v: Int64 = 1
        while v < Histogram.oneHourMicros {
            let size = h.sizeOfEquivalentRange(v)
            XCTAssertLessThanOrEqual(size, Swift.max(1, v / 1000), "range at \(v)")
            XCTAssertLessThanOrEqual(h.lowestEquivalentValue(v), v)
            XCTAssertGreaterThanOrEqual(h.highestEquivalentValue(v), v)
            v = v * 3 / 2 + 1
        }
    }

    func testMeanStandardDeviationAndSaturation() {
        var h = Histogram()
        for v in [100, 200, 300, 400] as [Int64] { h.record(v) }
        XCTAssertEqual(h.mean, 250, accuracy: 1e-9)
        XCTAssertEqual(h.standardDeviation, (12_500.0).squareRoot(), accuracy: 1e-6)
        h.record(Histogram.oneHourMicros * 2)
        XCTAssertEqual(h.saturatedCount, 1)
        XCTAssertEqual(h.max, Histogram.oneHourMicros)
        h.record(-5)
        XCTAssertEqual(h.min, 0)
    }

    func testAddAndEmpty() {
        var a = Histogram(), b = Histogram()
        XCTAssertEqual(a.value(atPercentile: 99), 0)
        XCTAssertTrue(a.percentileSpectrum().isEmpty)
        for v in 1...500 { a.record(Int64(v)) }
        for v in 501...1000 { b.record(Int64(v)) }
        a.add(b)
        XCTAssertEqual(a.totalCount, 1000)
        XCTAssertEqual(a.value(atPercentile: 50), 500)
        XCTAssertEqual(a.max, 1000)
    }

    func testSpectrumIsMonotonicAndEndsAtMax() {
        var h = Histogram()
        var rng = SplitMix64(state: 7)
        for _ in 0..<10_000 { h.record(Int64.random(in: 1...1_000_000, using: &rng)) }
        let s = h.percentileSpectrum()
        XCTAssertEqual(s.first?.percentile, 0)
        XCTAssertEqual(s.last?.percentile, 100)
        XCTAssertEqual(s.last?.value, h.max)
        for (a, b) in zip(s, s.dropFirst()) {
            XCTAssertLessThanOrEqual(a.value, b.value)
            XCTAssertLessThanOrEqual(a.percentile, b.percentile)
        }
        // wrk2 prints 5 ticks per halving: 0, 10, 20, 30, 40, 50, 55, 60, ...
        XCTAssertEqual(s[1].percentile, 10, accuracy: 1e-9)
        XCTAssertEqual(s[5].percentile, 50, accuracy: 1e-9)
        XCTAssertEqual(s[6].percentile, 55, accuracy: 1e-9)
    }
}

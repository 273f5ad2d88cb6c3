// A High Dynamic Range histogram of latencies in microseconds.
// This implementation matches: HdrHistogram (Gil Tene), the layout of `AbstractHistogram` / hdr_histogram.c —
// buckets of `subBucketCount` linear sub-buckets, each bucket twice as wide as the one before, so that every
// recorded value is kept within 10^-significantDigits of its true value.
// Limitations: 64-bit counts only, no auto-resize, no coordinated-omission "recordCorrectedValue" (the load tester
// corrects by measuring from the intended send time instead, as wrk2 does), no serialization format.
import Foundation

/// Counts of values in [lowest, highest] with a fixed relative resolution.
///
/// The default range is 1 us ... 1 h with 3 significant digits: any value is reported within 0.1% of the value
/// that was recorded (`highestEquivalentValue(v) - lowestEquivalentValue(v) < v / 1000` for v >= 2048).
public struct Histogram: Sendable, Equatable {
    public let lowestDiscernibleValue: Int64
    public let highestTrackableValue: Int64
    public let significantDigits: Int

    let unitMagnitude: Int
    let subBucketHalfCountMagnitude: Int
    let subBucketCount: Int
    let subBucketHalfCount: Int
    let subBucketMask: Int64
    public let bucketCount: Int
    private(set) var counts: [Int64]

    public private(set) var totalCount: Int64 = 0
    /// Values above `highestTrackableValue` are clamped to it and counted here.
    public private(set) var saturatedCount: Int64 = 0
    public private(set) var minValue: Int64 = .max
    public private(set) var maxValue: Int64 = 0
    private var sum: Double = 0
    private var sumOfSquares: Double = 0

    /// One hour in microseconds: the top of the default range.
    public static let oneHourMicros: Int64 = 3_600_000_000

    /// - Precondition: `1 <= lowest`, `2 * lowest <= highest`, `1 <= significantDigits <= 5`.
    public init(lowest: Int64 = 1, highest: Int64 = Histogram.oneHourMicros, significantDigits: Int = 3) {
        precondition(lowest >= 1, "lowest discernible value must be >= 1")
        precondition(highest >= 2 * lowest, "highest trackable value must be >= 2 * lowest")
        precondition((1...5).contains(significantDigits), "significant digits must be 1...5")
        lowestDiscernibleValue = lowest
        highestTrackableValue = highest
        self.significantDigits = significantDigits

        var largestSingleUnit: Int64 = 2
        for _ in 0..<significantDigits { largestSingleUnit *= 10 }
        // ceil(log2(largestSingleUnit)) without floating point.
        let subBucketCountMagnitude = 64 - (largestSingleUnit - 1).leadingZeroBitCount
        subBucketHalfCountMagnitude = subBucketCountMagnitude - 1
        unitMagnitude = 63 - lowest.leadingZeroBitCount  // floor(log2(lowest))
        subBucketCount = 1 << subBucketCountMagnitude
        subBucketHalfCount = subBucketCount / 2
        subBucketMask = Int64(subBucketCount - 1) << Int64(unitMagnitude)

        var smallestUntrackable = Int64(subBucketCount) << Int64(unitMagnitude)
        var buckets = 1
        while smallestUntrackable <= highest {
            if smallestUntrackable > Int64.max / 2 { buckets += 1; break }
            smallestUntrackable <<= 1
            buckets += 1
        }
        bucketCount = buckets
        counts = [Int64](repeating: 0, count: (buckets + 1) * subBucketHalfCount)
    }

    // MARK: Index arithmetic (HdrHistogram's getBucketIndex / getSubBucketIndex / countsArrayIndex)

    @inline(__always) func bucketIndex(_ value: Int64) -> Int {
        let leadingZeroCountBase = 64 - unitMagnitude - subBucketHalfCountMagnitude - 1
        return leadingZeroCountBase - (value | subBucketMask).leadingZeroBitCount
    }

    @inline(__always) func subBucketIndex(_ value: Int64, _ bucket: Int) -> Int {
        Int(value >> Int64(bucket + unitMagnitude))
    }

    @inline(__always) func countsIndex(_ value: Int64) -> Int {
        let bucket = bucketIndex(value)
        let sub = subBucketIndex(value, bucket)
        return ((bucket + 1) << subBucketHalfCountMagnitude) + (sub - subBucketHalfCount)
    }

    /// The lowest value that lands in counts slot `index`.
    func valueFromIndex(_ index: Int) -> Int64 {
        var bucket = (index >> subBucketHalfCountMagnitude) - 1
        var sub = (index & (subBucketHalfCount - 1)) + subBucketHalfCount
        if bucket < 0 {
            sub -= subBucketHalfCount
            bucket = 0
        }
        return Int64(sub) << Int64(bucket + unitMagnitude)
    }

    /// Width of the range of values that are counted together with `value`.
    public func sizeOfEquivalentRange(_ value: Int64) -> Int64 {
        let bucket = bucketIndex(value)
        let sub = subBucketIndex(value, bucket)
        let adjusted = sub >= subBucketCount ? bucket + 1 : bucket
        return Int64(1) << Int64(unitMagnitude + adjusted)
    }

    public func lowestEquivalentValue(_ value: Int64) -> Int64 {
        let bucket = bucketIndex(value)
        return Int64(subBucketIndex(value, bucket)) << Int64(bucket + unitMagnitude)
    }

    public func highestEquivalentValue(_ value: Int64) -> Int64 {
        lowestEquivalentValue(value) + sizeOfEquivalentRange(value) - 1
    }

    /// The value reported for everything counted with `value`: the middle of its range.
    public func medianEquivalentValue(_ value: Int64) -> Int64 {
        lowestEquivalentValue(value) + sizeOfEquivalentRange(value) / 2
    }

    // MARK: Recording

    /// Records one value; negatives count as 0 and values above the range are clamped (and counted as saturated).
    public mutating func record(_ value: Int64, count: Int64 = 1) {
        var v = Swift.max(0, value)
        if v > highestTrackableValue {
            v = highestTrackableValue
            saturatedCount += count
        }
        counts[countsIndex(v)] += count
        totalCount += count
        minValue = Swift.min(minValue, v)
        maxValue = Swift.max(maxValue, v)
        let d = Double(v)
        sum += d * Double(count)
        sumOfSquares += d * d * Double(count)
    }

    /// Adds every count of `other`, which must have the same layout.
    public mutating func add(_ other: Histogram) {
        precondition(other.counts.count == counts.count && other.unitMagnitude == unitMagnitude,
                     "histograms must share range and precision")
        for i in counts.indices { counts[i] += other.counts[i] }
        totalCount += other.totalCount
        saturatedCount += other.saturatedCount
        if other.totalCount > 0 {
            minValue = Swift.min(minValue, other.minValue)
            maxValue = Swift.max(maxValue, other.maxValue)
        }
        sum += other.sum
        sumOfSquares += other.sumOfSquares
    }

    public mutating func reset() {
        for i in counts.indices { counts[i] = 0 }
        totalCount = 0; saturatedCount = 0; minValue = .max; maxValue = 0; sum = 0; sumOfSquares = 0
    }

    // MARK: Queries

    public var isEmpty: Bool { totalCount == 0 }
    /// Exact mean of the recorded (clamped) values.
    public var mean: Double { totalCount == 0 ? 0 : sum / Double(totalCount) }
    public var standardDeviation: Double {
        guard totalCount > 0 else { return 0 }
        let m = mean
        return Swift.max(0, sumOfSquares / Double(totalCount) - m * m).squareRoot()
    }
    /// Smallest recorded value (exact), 0 when empty.
    public var min: Int64 { totalCount == 0 ? 0 : minValue }
    /// Largest recorded value (exact).
    public var max: Int64 { maxValue }

    /// The value at `percentile` (0...100): the highest value equivalent to the smallest recorded value with at
    /// least `percentile`% of all counts at or below it. 100 gives the exact maximum.
    public func value(atPercentile percentile: Double) -> Int64 {
        guard totalCount > 0 else { return 0 }
        if percentile >= 100 { return maxValue }
        let p = Swift.max(0, percentile)
        let target = Swift.max(1, Int64((p / 100 * Double(totalCount)).rounded(.toNearestOrAwayFromZero)))
        var seen: Int64 = 0
        for i in counts.indices where counts[i] != 0 {
            seen += counts[i]
            if seen >= target {
                let v = valueFromIndex(i)
                return p == 0 ? v : Swift.min(highestEquivalentValue(v), maxValue)
            }
        }
        return maxValue
    }

    /// One row of the percentile spectrum.
    public struct SpectrumPoint: Sendable, Equatable {
        public var value: Int64
        public var percentile: Double
        public var totalCount: Int64
    }

    /// The detailed percentile spectrum as HdrHistogram's `outputPercentileDistribution` prints it:
    /// `ticksPerHalfDistance` steps between 0 and 50%, as many between 50% and 75%, and so on, ending at 100%.
    public func percentileSpectrum(ticksPerHalfDistance: Int = 5) -> [SpectrumPoint] {
        precondition(ticksPerHalfDistance >= 1, "ticks per half distance must be >= 1")
        guard totalCount > 0 else { return [] }
        var points: [SpectrumPoint] = []
        var level = 0.0
        var seen: Int64 = 0
        for i in counts.indices where counts[i] != 0 {
            seen += counts[i]
            let reached = Double(seen) / Double(totalCount) * 100
            let value = Swift.min(highestEquivalentValue(valueFromIndex(i)), maxValue)
            while level <= reached && level < 100 && seen < totalCount {
                points.append(SpectrumPoint(value: value, percentile: level, totalCount: seen))
                // Halve the remaining distance to 100% every `ticksPerHalfDistance` steps.
                let halvings = (100 / (100 - level)).log2Floor + 1
                level += 100 / (Double(ticksPerHalfDistance) * Double(1 << halvings))
            }
            if seen == totalCount {
                points.append(SpectrumPoint(value: maxValue, percentile: 100, totalCount: seen))
                break
            }
        }
        return points
    }
}

extension Double {
    /// floor(log2(self)) for self >= 1, as an Int capped at 62.
    fileprivate var log2Floor: Int {
        guard self >= 1, isFinite else { return self.isFinite ? 0 : 62 }
        return Swift.min(62, Int(Foundation.log2(self).rounded(.down)))
    }
}

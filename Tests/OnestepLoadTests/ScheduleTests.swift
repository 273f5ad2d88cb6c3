import XCTest
@testable import OnestepLoad

final class ScheduleTests: XCTestCase {
    func testIntendedTimesAreExactAndDoNotDrift() {
        let s = OpenLoopSchedule(rate: 100, warmupCount: 0, measuredCount: 1000)
        XCTAssertEqual(s.intendedOffset(0), 0)
        XCTAssertEqual(s.intendedOffset(1), 10_000_000)
        XCTAssertEqual(s.intendedOffset(999), 9_990_000_000)
        // 1/3 s intervals: computed from i, so the 3rd request is at exactly 1 s, the 3,000,000th at 1,000,000 s.
        let third = OpenLoopSchedule(rate: 3, warmupCount: 0, measuredCount: 10)
        XCTAssertEqual(third.intendedOffset(3), 1_000_000_000)
        XCTAssertEqual(third.intendedOffset(3_000_000), 1_000_000 * 1_000_000_000)
        XCTAssertEqual(third.intendedOffset(1), 333_333_333)
    }

    func testWarmupAndMeasuredCounts() {
        let s = OpenLoopSchedule(rate: 50, warmup: 2, duration: 10, requests: nil)
        XCTAssertEqual(s.warmupCount, 100)
        XCTAssertEqual(s.measuredCount, 500)
        XCTAssertEqual(s.phase(of: 99), .warmup)
        XCTAssertEqual(s.phase(of: 100), .measured)
        XCTAssertEqual(s.measuredStartOffset, 2_000_000_000)
        XCTAssertEqual(OpenLoopSchedule(rate: 50, warmup: 0, duration: 10, requests: 7).measuredCount, 7)
    }

    func testDueCount() {
        let s = OpenLoopSchedule(rate: 100, warmupCount: 0, measuredCount: 5)
        XCTAssertEqual(s.dueCount(atOffset: 0), 1)
        XCTAssertEqual(s.dueCount(atOffset: 9_999_999), 1)
        XCTAssertEqual(s.dueCount(atOffset: 10_000_000), 2)
        XCTAssertEqual(s.dueCount(atOffset: 1_000_000_000), 5)  // capped at the total
        let odd = OpenLoopSchedule(rate: 7, warmupCount: 0, measuredCount: 1_000_000)
        for i in [1, 2, 3, 999, 123_457] {
            XCTAssertEqual(odd.dueCount(atOffset: odd.intendedOffset(i)), i + 1)
            XCTAssertEqual(odd.dueCount(atOffset: odd.intendedOffset(i) - 1), i)
        }
    }

    func testPacerReleasesBacklogAfterAGap() {
        var p = OpenLoopPacer(schedule: OpenLoopSchedule(rate: 100, warmupCount: 0, measuredCount: 1000))
        XCTAssertEqual(p.release(upTo: 0), 0..<1)
        XCTAssertEqual(p.nanosUntilNext(from: 0), 10_000_000)
        XCTAssertEqual(p.release(upTo: 5_000_000), 1..<1)
        // The driver was blocked for a second: everything intended meanwhile is released at once,
        // each request still carrying its own intended time.
        XCTAssertEqual(p.release(upTo: 1_000_000_000), 1..<101)
        XCTAssertEqual(p.nanosUntilNext(from: 1_000_000_000), 10_000_000)
        _ = p.release(upTo: .max / 2)
        XCTAssertTrue(p.isFinished)
        XCTAssertNil(p.nanosUntilNext(from: 0))
    }

    func testLatenessRule() {
        XCTAssertEqual(OpenLoopSchedule(rate: 100, warmupCount: 0, measuredCount: 1).defaultLateAfterNanos, 10_000_000)
        XCTAssertEqual(OpenLoopSchedule(rate: 50_000, warmupCount: 0, measuredCount: 1).defaultLateAfterNanos, 1_000_000)
        XCTAssertFalse(isLate(intended: 100, sent: 100 + 10_000_000, lateAfterNanos: 10_000_000))
        XCTAssertTrue(isLate(intended: 100, sent: 101 + 10_000_000, lateAfterNanos: 10_000_000))
        XCTAssertFalse(isLate(intended: 100, sent: 50, lateAfterNanos: 0))
    }

    /// Coordinated omission without sockets: a simulated server with one connection, 1 ms per response, that
    /// stalls once for 1 s. Driving it with the pacer and recording through RunResults reproduces wrk2's point:
    /// latency from the intended send time shows the stall at p99, latency from the actual send hides it.
    func testSimulatedStallShowsOnlyInCorrectedLatency() {
        let schedule = OpenLoopSchedule(rate: 100, warmupCount: 0, measuredCount: 1000)
        var pacer = OpenLoopPacer(schedule: schedule)
        var results = RunResults(lateAfterNanos: schedule.defaultLateAfterNanos, requestedRate: 100)
        var queue: [Int] = []
        var clock: UInt64 = 0
        var connectionFreeAt: UInt64 = 0
        let service: UInt64 = 1_000_000
        while !pacer.isFinished || !queue.isEmpty {
            queue += pacer.release(upTo: clock)
            if queue.isEmpty, let dt = pacer.nanosUntilNext(from: clock) { clock += dt; continue }
            let i = queue.removeFirst()
            let sent = Swift.max(clock, connectionFreeAt)
            let done = sent + service + (i == 300 ? 1_000_000_000 : 0)
            connectionFreeAt = done
            clock = done  // one connection: the client sees the next free slot only when this response is in
            results.record(Outcome(index: i, phase: .measured, intended: schedule.intendedOffset(i), sent: sent,
                                   done: done, status: 200))
        }
        let m = results.measured
        XCTAssertEqual(m.responses, 1000)
        XCTAssertGreaterThan(m.corrected.value(atPercentile: 99), 800_000)   // > 800 ms
        XCTAssertLessThan(m.uncorrected.value(atPercentile: 99), 2_000)      // ~1 ms
        // The backlog drains at 1 ms per request while new ones keep coming: request 300 + j leaves at
        // 4.000 + 0.001 j s against an intended 3.0 + 0.01 j s, a lag over 10 ms for j = 1 ... 109.
        XCTAssertEqual(m.late, 109)
        XCTAssertEqual(results.sentRate, 100, accuracy: 1)
    }
}

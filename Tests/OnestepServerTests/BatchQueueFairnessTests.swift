// BatchQueue's choice among ready batches: the model with the fewest batches running goes first, then the oldest
// head, so a slow model (a 1000-step DDPM teacher) cannot hold every worker while another model's requests wait;
// and a full batch is not held behind an older group that is still filling.
import Foundation
import XCTest
@testable import OnestepServer

final class BatchQueueFairnessTests: XCTestCase {
    let far = ContinuousClock.now + .seconds(3600)

    func job(_ model: String, images: Int) -> GenerationJob {
        GenerationJob(id: 0, model: model, steps: 1, images: (0..<images).map { .init(seed: UInt64($0)) }, deadline: far) { _ in }
    }

    /// Takes a batch that must be ready now (a full one): fails instead of blocking for maxDelay.
    func take(_ q: BatchQueue, file: StaticString = #filePath, line: UInt = #line) -> Batch? {
        let started = ContinuousClock.now
        let (batch, expired) = q.nextBatch()
        XCTAssertTrue(expired.isEmpty, file: file, line: line)
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(60), "nextBatch waited for a batch that was ready", file: file, line: line)
        return batch
    }

    func testModelWithFewestRunningBatchesGoesFirst() throws {
        let q = BatchQueue(maxBatch: 4, maxDelay: .seconds(3600), maxQueuedImages: 64)
        XCTAssertEqual(q.submit(job("slow", images: 4)), .accepted)
        let first = try XCTUnwrap(take(q))
        XCTAssertEqual(first.model, "slow")
        // slow has one batch running: its older queued batch waits behind fast's younger one.
        let slow2 = job("slow", images: 4), fast = job("fast", images: 4)
        XCTAssertEqual(q.submit(slow2), .accepted)
        XCTAssertEqual(q.submit(fast), .accepted)
        let second = try XCTUnwrap(take(q))
        XCTAssertEqual(second.model, "fast")
        XCTAssertTrue(second.jobs[0] === fast)
        // Both models have one running now: the oldest head goes first.
        let fast2 = job("fast", images: 4)
        XCTAssertEqual(q.submit(fast2), .accepted)
        let third = try XCTUnwrap(take(q))
        XCTAssertTrue(third.jobs[0] === slow2, "equal running counts: oldest head first")
        XCTAssertEqual(q.runningBatches, 3)
        for b in [first, second, third] { q.finished(model: b.model, images: b.imageCount, elapsed: .zero) }
        XCTAssertEqual(q.runningBatches, 0)
        let fourth = try XCTUnwrap(take(q))
        XCTAssertTrue(fourth.jobs[0] === fast2)
    }

    func testAFullBatchIsNotHeldBehindAnOlderFillingGroup() throws {
        // 5 s, not an hour: a queue that waited for the older group's delay fails here instead of hanging.
        let q = BatchQueue(maxBatch: 4, maxDelay: .seconds(5), maxQueuedImages: 64)
        let filling = job("a", images: 1), full = job("b", images: 4)
        XCTAssertEqual(q.submit(filling), .accepted)
        XCTAssertEqual(q.submit(full), .accepted)
        let started = ContinuousClock.now
        let batch = try XCTUnwrap(take(q))
        XCTAssertTrue(batch.jobs[0] === full, "the full batch goes first")
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(4), "the full batch waited for the older group's delay")
        XCTAssertEqual(q.depth, 1, "the filling group stays queued until full or due")
        q.beginDrain()
        let rest = try XCTUnwrap(take(q))
        XCTAssertTrue(rest.jobs[0] === filling)
    }
}

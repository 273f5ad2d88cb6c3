// The activation pool's memory budget (issue 17 item 3): whatever the mix of batch sizes, a pool holds at most
// what is in use plus twice its largest forward; a steady batch size allocates nothing after its first pass.

import XCTest
@testable import OnestepCore

final class BufferPoolTests: XCTestCase {
    func testSizeClassesAreAtMostAQuarterOver() {
        var classes = Set<Int>()
        for count in 1...70_000 {
            let size = BufferPool.sizeClass(count)
            XCTAssertGreaterThanOrEqual(size, count)
            XCTAssertLessThanOrEqual(Double(size), Double(count) * 1.25 + 1, "count \(count)")
            XCTAssertEqual(BufferPool.sizeClass(size), size, "a class is its own class")
            classes.insert(size)
        }
        // 4 classes per octave: about 4 x log2(70,000) ≈ 64 (plus the 8 exact small ones), not 70,000.
        XCTAssertLessThan(classes.count, 80)
    }

    /// One "forward" at batch `n`: buffers proportional to n in a few shapes, all live at once, then released.
    private func forward(_ pool: BufferPool, batch n: Int) {
        let counts = [64 * 256 * n, 128 * 64 * n, 256 * 16 * n, 3 * 256 * n, 4 * 64 * n * n / 4 + 1]
        let buffers = counts.map { (pool.acquire($0), $0) }
        for (p, c) in buffers { p[0] = 1; p[c - 1] = 2 }  // touched: a real page, not just address space
        for (p, c) in buffers.reversed() { pool.release(p, count: c) }
    }

    func testMixedBatchSizesStayWithinTheBudget() {
        let pool = BufferPool()
        forward(pool, batch: 64)
        let largest = pool.peakBytesInUse
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<500 { forward(pool, batch: Int.random(in: 1...64, using: &generator)) }
        XCTAssertEqual(pool.bytesInUse, 0)
        XCTAssertEqual(pool.peakBytesInUse, largest, "the batch-64 forward is the largest")
        XCTAssertLessThanOrEqual(pool.bytesAllocated, 4 * largest, "free buffers beyond the budget (4x the peak in use) were kept")
        // Without the budget every batch size keeps its own set: the sum over 1...64 is ~32x one forward.
        let unbounded = (1...64).reduce(0) { total, n in
            total + [64 * 256 * n, 128 * 64 * n, 256 * 16 * n, 3 * 256 * n, 4 * 64 * n * n / 4 + 1].reduce(0, +) * 4
        }
        XCTAssertGreaterThan(unbounded, 5 * pool.bytesAllocated)
    }

    func testSteadyBatchSizeReusesItsBuffers() {
        let pool = BufferPool()
        forward(pool, batch: 16)
        let allocated = pool.bytesAllocated, allocations = pool.systemAllocations
        for _ in 0..<50 { forward(pool, batch: 16) }
        XCTAssertEqual(pool.bytesAllocated, allocated, "a repeated shape allocates nothing more")
        XCTAssertEqual(pool.systemAllocations, allocations, "a repeated shape neither evicts nor maps again")
    }

    func testExplicitRetainLimit() {
        let pool = BufferPool(retainLimitBytes: 0)
        forward(pool, batch: 8)
        XCTAssertEqual(pool.bytesAllocated, 0, "with no retained budget every buffer goes back at release")
        XCTAssertEqual(pool.bytesFree, 0)
    }
}

// The text-embedding cache's LRU type on its own: order, eviction, counters, capacity 0, and many threads.
import XCTest
@testable import OnestepServer

final class LRUCacheTests: XCTestCase {
    func testEvictsLeastRecentlyUsed() {
        let c = LRUCache<String, Int>(capacity: 2)
        c.insert("a", 1)
        c.insert("b", 2)
        XCTAssertEqual(c.lookup("a"), 1)  // a is now most recent, b least
        c.insert("c", 3)                  // evicts b
        XCTAssertNil(c.lookup("b"))
        XCTAssertEqual(c.lookup("a"), 1)
        XCTAssertEqual(c.lookup("c"), 3)
        XCTAssertEqual(c.keysByRecency, ["c", "a"])
        XCTAssertEqual(c.count, 2)
        XCTAssertEqual(c.evictions, 1)
        XCTAssertEqual(c.hits, 3)
        XCTAssertEqual(c.misses, 1)
    }

    func testInsertExistingKeyReplacesAndRefreshes() {
        let c = LRUCache<Int, String>(capacity: 3)
        for i in 0..<3 { c.insert(i, "v\(i)") }
        c.insert(0, "new")  // 0 becomes most recent; 1 is now least
        c.insert(3, "v3")
        XCTAssertEqual(c.keysByRecency, [3, 0, 2])
        XCTAssertEqual(c.lookup(0), "new")
        XCTAssertEqual(c.count, 3)
    }

    func testValueForComputesOnceAndCounts() {
        let c = LRUCache<String, [Float]>(capacity: 4)
        var computed = 0
        for _ in 0..<5 {
            let v = c.value(for: "a red circle") { computed += 1; return [1, 2, 3] }
            XCTAssertEqual(v, [1, 2, 3])
        }
        XCTAssertEqual(computed, 1)
        XCTAssertEqual(c.hits, 4)
        XCTAssertEqual(c.misses, 1)
    }

    func testCapacityZeroKeepsNothing() {
        let c = LRUCache<String, Int>(capacity: 0)
        c.insert("a", 1)
        XCTAssertNil(c.lookup("a"))
        XCTAssertEqual(c.count, 0)
        XCTAssertEqual(c.misses, 1)
    }

    func testThrowingComputeStoresNothing() {
        struct Boom: Error {}
        let c = LRUCache<String, Int>(capacity: 2)
        XCTAssertThrowsError(try c.value(for: "x") { throw Boom() })
        XCTAssertEqual(c.count, 0)
        XCTAssertEqual(try c.value(for: "x") { 7 }, 7)
        XCTAssertEqual(c.lookup("x"), 7)
    }

    /// Many threads hitting and evicting at once: the list stays consistent (every key reachable, count bounded)
    /// and every lookup is counted once.
    func testConcurrentUseStaysConsistent() {
        let c = LRUCache<Int, Int>(capacity: 8)
        let threads = 4, perThread = 2_000
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            for i in 0..<perThread {
                let k = (i * 7 + t) % 13
                let v = c.value(for: k) { k * 10 }
                precondition(v == k * 10)
            }
        }
        XCTAssertEqual(c.hits + c.misses, UInt64(threads * perThread))
        XCTAssertLessThanOrEqual(c.count, 8)
        let keys = c.keysByRecency
        XCTAssertEqual(keys.count, c.count)
        XCTAssertEqual(Set(keys).count, keys.count)
        for k in keys { XCTAssertEqual(c.lookup(k), k * 10) }
    }
}

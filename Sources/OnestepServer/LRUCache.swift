// A bounded least-recently-used cache, safe to share between compute threads. The server keeps text embeddings
// in one keyed by (model, prompt): encoding a prompt costs a CLIP text-encoder forward, and clients repeat prompts
// (the same prompt with new seeds, a negative prompt on every request), so a hit saves that forward.
//
// The value is computed outside the lock: two threads missing the same key at once both compute it (the results
// are equal: the encoder is deterministic) and the second insert wins; a lock held across a text-encoder forward
// would serialise every worker behind one prompt.
import HTTP1  // Locked: a pthread mutex, which ThreadSanitizer sees (Synchronization.Mutex's futex calls it does not)

/// A bounded LRU map with hit and miss counters.
///
/// `capacity` 0 disables caching: every lookup is a miss and nothing is kept.
public final class LRUCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    /// Doubly linked list threaded through an array (indices, not references): no allocation per hit.
    private struct Node {
        var key: Key
        var value: Value
        var prev: Int  // towards most recent; -1 at the head
        var next: Int  // towards least recent; -1 at the tail
    }

    private struct State {
        var index: [Key: Int] = [:]
        var nodes: [Node] = []
        var head = -1  // most recently used
        var tail = -1  // least recently used
        var hits: UInt64 = 0
        var misses: UInt64 = 0
        var evictions: UInt64 = 0
    }

    public let capacity: Int
    private let state = Locked(State())

    public init(capacity: Int) {
        precondition(capacity >= 0, "LRUCache capacity must be >= 0")
        self.capacity = capacity
    }

    /// Counters since start (hits + misses = lookups through `value(for:compute:)` and `lookup`).
    public var hits: UInt64 { state.withLock { $0.hits } }
    public var misses: UInt64 { state.withLock { $0.misses } }
    public var evictions: UInt64 { state.withLock { $0.evictions } }
    public var count: Int { state.withLock { $0.index.count } }

    /// The cached value for `key` (marking it most recently used, counting a hit), or nil (counting a miss).
    public func lookup(_ key: Key) -> Value? {
        state.withLock { s in
            guard let i = s.index[key] else { s.misses += 1; return nil }
            s.hits += 1
            Self.moveToFront(&s, i)
            return s.nodes[i].value
        }
    }

    /// Stores `value` as the most recently used entry, evicting the least recently used past `capacity`.
    public func insert(_ key: Key, _ value: Value) {
        guard capacity > 0 else { return }
        state.withLock { s in
            if let i = s.index[key] {
                s.nodes[i].value = value
                Self.moveToFront(&s, i)
                return
            }
            let i: Int
            if s.nodes.count < capacity {
                i = s.nodes.count
                s.nodes.append(Node(key: key, value: value, prev: -1, next: -1))
            } else {
                // Reuse the least recently used slot.
                i = s.tail
                Self.unlink(&s, i)
                s.index[s.nodes[i].key] = nil
                s.nodes[i] = Node(key: key, value: value, prev: -1, next: -1)
                s.evictions += 1
            }
            s.index[key] = i
            Self.pushFront(&s, i)
        }
    }

    /// The cached value, or `compute()`'s result (stored). `compute` runs without the lock held.
    public func value(for key: Key, compute: () throws -> Value) rethrows -> Value {
        if let v = lookup(key) { return v }
        let v = try compute()
        insert(key, v)
        return v
    }

    /// Keys from most to least recently used (tests and debugging).
    public var keysByRecency: [Key] {
        state.withLock { s in
            var out: [Key] = []
            var i = s.head
            while i >= 0 { out.append(s.nodes[i].key); i = s.nodes[i].next }
            return out
        }
    }

    private static func unlink(_ s: inout State, _ i: Int) {
        let p = s.nodes[i].prev, n = s.nodes[i].next
        if p >= 0 { s.nodes[p].next = n } else { s.head = n }
        if n >= 0 { s.nodes[n].prev = p } else { s.tail = p }
        s.nodes[i].prev = -1
        s.nodes[i].next = -1
    }

    private static func pushFront(_ s: inout State, _ i: Int) {
        s.nodes[i].next = s.head
        s.nodes[i].prev = -1
        if s.head >= 0 { s.nodes[s.head].prev = i }
        s.head = i
        if s.tail < 0 { s.tail = i }
    }

    private static func moveToFront(_ s: inout State, _ i: Int) {
        guard s.head != i else { return }
        unlink(&s, i)
        pushFront(&s, i)
    }
}

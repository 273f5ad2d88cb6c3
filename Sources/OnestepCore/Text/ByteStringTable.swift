// A read-mostly map from byte strings to Int32 ids: every key in one contiguous byte store, open addressing with
// linear probing on a 64-bit FNV-1a hash. Built once per tokenizer from vocab.json (49408 keys): a Swift
// Dictionary<[UInt8], Int32> allocated one array per key and hashed through Hasher, which made loading the
// tokenizer several times slower; lookups here take an unsafe byte range and allocate nothing.

struct ByteStringTable: Sendable {
    private var store: [UInt8] = []
    private var starts: [Int32] = []   // key i is store[starts[i] ..< starts[i + 1]]
    private var ids: [Int32] = []
    private var slots: [Int32]         // key index, or -1 when empty; count is a power of two
    private var mask: Int

    var count: Int { ids.count }

    init(expectedCount: Int, expectedBytes: Int) {
        var capacity = 16
        while capacity < 2 * expectedCount { capacity <<= 1 }
        slots = [Int32](repeating: -1, count: capacity)
        mask = capacity - 1
        store.reserveCapacity(expectedBytes)
        starts.reserveCapacity(expectedCount + 1)
        starts.append(0)
        ids.reserveCapacity(expectedCount)
    }

    @inline(__always)
    static func hash(_ p: UnsafeBufferPointer<UInt8>) -> Int {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in p { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return Int(truncatingIfNeeded: h ^ (h >> 29))
    }

    @inline(__always)
    private func keyEquals(_ k: Int, _ p: UnsafeBufferPointer<UInt8>) -> Bool {
        let s = Int(starts[k]), e = Int(starts[k + 1])
        guard e - s == p.count else { return false }
        return store.withUnsafeBufferPointer { st in
            for i in 0..<p.count where st[s + i] != p[i] { return false }
            return true
        }
    }

    /// The id of `p`, or nil.
    func find(_ p: UnsafeBufferPointer<UInt8>) -> Int32? {
        var i = Self.hash(p) & mask
        while true {
            let k = Int(slots[i])
            if k < 0 { return nil }
            if keyEquals(k, p) { return ids[k] }
            i = (i + 1) & mask
        }
    }

    func find(_ bytes: [UInt8]) -> Int32? { bytes.withUnsafeBufferPointer { find($0) } }

    /// Adds `p` -> id; false (and no change) when `p` is already a key.
    mutating func insert(_ p: UnsafeBufferPointer<UInt8>, id: Int32) -> Bool {
        if 2 * (ids.count + 1) > slots.count { grow() }
        var i = Self.hash(p) & mask
        while true {
            let k = Int(slots[i])
            if k < 0 { break }
            if keyEquals(k, p) { return false }
            i = (i + 1) & mask
        }
        slots[i] = Int32(ids.count)
        store.append(contentsOf: p)
        starts.append(Int32(store.count))
        ids.append(id)
        return true
    }

    private mutating func grow() {
        let capacity = slots.count * 2
        slots = [Int32](repeating: -1, count: capacity)
        mask = capacity - 1
        for k in 0..<ids.count {
            let h = store.withUnsafeBufferPointer { st in
                Self.hash(UnsafeBufferPointer(rebasing: st[Int(starts[k])..<Int(starts[k + 1])]))
            }
            var i = h & mask
            while slots[i] >= 0 { i = (i + 1) & mask }
            slots[i] = Int32(k)
        }
    }

    /// Largest id + 1.
    var idLimit: Int { Int(ids.max() ?? -1) + 1 }
}

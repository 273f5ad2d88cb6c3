// Activation memory reused across layers and batches. The forward pass asks for buffers by size and gives them
// back when a tensor dies; after the first pass at a batch size every request is served from the free lists, so
// a steady-state forward does no malloc/mmap and takes no page faults. One pool per compute thread (not shared).
//
// Memory budget (issue 17): sizes are rounded up to size classes (4 per octave, at most 25% over), and a missing
// class is served from a free buffer of up to twice its size, so batch sizes 1...64 share buffers instead of each
// keeping its own exact-size set; and the free buffers a
// pool keeps are capped at `retainLimitBytes` (by default four times the most it ever had in use at once; a
// forward's buffers spread over size classes add up to more than twice its peak), the least recently used given
// back to the kernel first. A pool therefore holds at most (in use now) + (retain limit) <= 5 x its largest
// forward's peak, whatever the mix of batch sizes and steps. Buffers of 64 KiB and more are mmap'ed, so giving one back really lowers RSS (glibc's
// malloc keeps freed large blocks once its mmap threshold has risen, and its per-thread arenas fragment).

import Foundation

public final class BufferPool {
    /// The pool of the calling thread, created on first use and kept for the thread's life (compute threads
    /// live as long as the server, so their activations are allocated once).
    public static var forCurrentThread: BufferPool {
        let key = "onestep.BufferPool"
        if let p = Thread.current.threadDictionary[key] as? BufferPool { return p }
        let p = BufferPool()
        Thread.current.threadDictionary[key] = p
        return p
    }

    /// The threads this compute thread splits each layer between (nil: it computes alone). Set by whoever owns
    /// the compute thread (a server worker, `bench --threads`); the forward pass reads it from the pool it is
    /// given, so the output bytes are the same with or without it.
    public var team: ThreadTeam?

    private struct FreeBuffer {
        let pointer: UnsafeMutablePointer<Float>
        /// When it was given back (a counter), for least-recently-used eviction.
        let releasedAt: UInt64
    }

    // The bookkeeping is indexed by size-class number (``classIndex``, < ``classCount``), not hashed: acquire and
    // release run a few hundred times per forward, and at batch 1 on a small model three dictionary updates each
    // plus Swift's dynamic exclusivity checks on them cost 2-4% of the forward (callgrind, cd_tiny int8). The
    // properties are `@exclusivity(unchecked)`: the pool is confined to one thread (see the type's comment), so
    // the run-time check can never fire, and it took a thread-local lookup per access.

    /// Free buffers per size class, oldest first.
    @exclusivity(unchecked) private var free = [[FreeBuffer]](repeating: [], count: BufferPool.classCount)
    /// Requests of each class being held now, and the most ever held at once. A free buffer of class Y is lent to a
    /// smaller request only when it is surplus: more Y buffers are free than Y's own requests may still want
    /// (their peak minus those held). Without that rule a second forward at the same batch size could lend a Y
    /// buffer early in the pass that a Y request needs later, and allocate: no longer a steady state.
    @exclusivity(unchecked) private var held = [Int](repeating: 0, count: BufferPool.classCount)
    @exclusivity(unchecked) private var peakHeld = [Int](repeating: 0, count: BufferPool.classCount)
    @exclusivity(unchecked) private var tick: UInt64 = 0
    /// Bytes of every buffer the pool holds, in use or free (payload bytes, without the headers).
    @exclusivity(unchecked) public private(set) var bytesAllocated = 0
    /// Bytes of buffers handed out and not given back.
    @exclusivity(unchecked) public private(set) var bytesInUse = 0
    /// The most bytes ever in use at once (the largest forward so far).
    @exclusivity(unchecked) public private(set) var peakBytesInUse = 0
    /// Bytes of free buffers kept for reuse.
    @exclusivity(unchecked) public private(set) var bytesFree = 0
    /// Free bytes kept at most; nil: four times ``peakBytesInUse``. Twice was too little: one forward's buffers,
    /// spread over many size classes whose peaks fall at different times, add up to more than twice its peak in
    /// use (cd_tiny at batch 1), so every forward evicted and re-mapped them (10x the page faults, 10-20% slower).
    public var retainLimitBytes: Int?
    /// Buffers obtained from the system so far (mmap or malloc); a steady-state forward adds none.
    @exclusivity(unchecked) public private(set) var systemAllocations = 0

    /// Buffers of this many bytes or more are mapped directly (and unmapped when evicted).
    static let mmapThreshold = 64 * 1024
    /// Each buffer starts with a header of this many floats (64 bytes, one cache line) that records its class and
    /// its request's class, so `release` needs no lookup table.
    static let headerFloats = 16
    /// Size classes that exist: 8 exact small ones, then 4 per octave up to 2^63.
    static let classCount = 8 + 4 * 62

    public init(retainLimitBytes: Int? = nil) {
        self.retainLimitBytes = retainLimitBytes
    }

    deinit {
        for (index, list) in free.enumerated() {
            for buffer in list { deallocate(buffer.pointer, floats: Self.classSize(index)) }
        }
    }

    /// The size class of `count` floats: the next value of the form m·2^k with m in 4...7 (counts up to 8 are
    /// exact), so a request gets at most 25% more than it asked for.
    static func sizeClass(_ count: Int) -> Int {
        classSize(classIndex(count))
    }

    /// The number of `count`'s size class, 0 ..< ``classCount``, increasing with the class's size.
    static func classIndex(_ count: Int) -> Int {
        let count = max(count, 1)
        if count <= 8 { return count - 1 }
        let shift = (Int.bitWidth - 1 - count.leadingZeroBitCount) - 2  // 2^(shift+2) <= count < 2^(shift+3)
        let mantissa = (count + (1 << shift) - 1) >> shift  // 4...8; 8 is the next octave's 4
        return 8 + 4 * (shift - 1) + (mantissa - 4)
    }

    /// Floats in size class `index`.
    static func classSize(_ index: Int) -> Int {
        if index < 8 { return index + 1 }
        let shift = (index - 8) / 4 + 1, mantissa = (index - 8) % 4 + 4
        return mantissa << shift
    }

    /// A buffer of at least `count` floats, uninitialised. Give it back with the same `count`.
    ///
    /// Its own size class if one is free, else the smallest free buffer of at most twice that (four classes up):
    /// a smaller batch then runs in the buffers of a larger one instead of allocating its own set (which, under a
    /// mix of batch sizes, would push the pool over its budget and make it unmap and map buffers on every batch).
    public func acquire(_ count: Int) -> UnsafeMutablePointer<Float> {
        let wanted = Self.classIndex(count)
        var index = wanted
        if free[wanted].isEmpty {
            for candidate in (wanted + 1)..<min(wanted + 5, Self.classCount)
            where Self.classSize(candidate) <= 2 * Self.classSize(wanted) {
                let reserved = peakHeld[candidate] - held[candidate]
                if free[candidate].count > reserved { index = candidate; break }
            }
        }
        let bytes = Self.classSize(index) * 4
        bytesInUse += bytes
        peakBytesInUse = max(peakBytesInUse, bytesInUse)
        let pointer: UnsafeMutablePointer<Float>
        if let buffer = free[index].popLast() {
            bytesFree -= bytes
            pointer = buffer.pointer
        } else {
            bytesAllocated += bytes
            pointer = allocate(floats: Self.classSize(index))
        }
        let header = UnsafeMutableRawPointer(pointer - Self.headerFloats).assumingMemoryBound(to: Int32.self)
        header[0] = Int32(index)
        header[1] = Int32(wanted)
        held[wanted] += 1
        peakHeld[wanted] = max(peakHeld[wanted], held[wanted])
        return pointer
    }

    /// Gives back a buffer `acquire` returned (its header says its class; `count` is kept for the callers' sake).
    public func release(_ p: UnsafeMutablePointer<Float>, count: Int) {
        let header = UnsafeMutableRawPointer(p - Self.headerFloats).assumingMemoryBound(to: Int32.self)
        let index = Int(header[0]), wanted = Int(header[1])
        held[wanted] -= 1
        let bytes = Self.classSize(index) * 4
        bytesInUse -= bytes
        tick &+= 1
        free[index].append(FreeBuffer(pointer: p, releasedAt: tick))
        bytesFree += bytes
        if bytesFree > (retainLimitBytes ?? 4 * peakBytesInUse) { trim() }
    }

    /// Gives the least recently released free buffers back until the free bytes are within the limit.
    private func trim() {
        let limit = retainLimitBytes ?? 4 * peakBytesInUse
        while bytesFree > limit {
            // A linear scan over the free lists' oldest entries: a few dozen classes in use, and it runs only when
            // a batch of another size has pushed the pool over its budget.
            var oldest: (index: Int, releasedAt: UInt64)?
            for index in 0..<Self.classCount {
                guard let first = free[index].first else { continue }
                if oldest == nil || first.releasedAt < oldest!.releasedAt { oldest = (index, first.releasedAt) }
            }
            guard let victim = oldest else { return }
            let buffer = free[victim.index].removeFirst()
            let size = Self.classSize(victim.index)
            deallocate(buffer.pointer, floats: size)
            bytesFree -= size * 4
            bytesAllocated -= size * 4
        }
    }

    /// Large buffers that mmap refused and malloc provided (normally none).
    private var mallocFallbacks: Set<UnsafeMutableRawPointer> = []

    /// `floats` floats after a 64-byte header; the returned pointer is 64-byte aligned.
    private func allocate(floats: Int) -> UnsafeMutablePointer<Float> {
        systemAllocations += 1
        let bytes = (floats + Self.headerFloats) * 4
        var raw: UnsafeMutableRawPointer
        if bytes >= Self.mmapThreshold, let mapped = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
           mapped != MAP_FAILED {
            raw = mapped
        } else {
            // Small buffers, or out of address space or map count: malloc, which reports failure its own way.
            raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
            if bytes >= Self.mmapThreshold { mallocFallbacks.insert(raw) }
        }
        return (raw + Self.headerFloats * 4).assumingMemoryBound(to: Float.self)
    }

    private func deallocate(_ pointer: UnsafeMutablePointer<Float>, floats: Int) {
        let raw = UnsafeMutableRawPointer(pointer - Self.headerFloats)
        let bytes = (floats + Self.headerFloats) * 4
        if bytes >= Self.mmapThreshold && mallocFallbacks.remove(raw) == nil {
            munmap(raw, bytes)
        } else {
            raw.deallocate()
        }
    }
}

/// An activation in channel-major layout (C, N, H, W): row c holds channel c of every image, image after image,
/// so a convolution or projection over the whole batch is one GEMM with N*H*W columns.
public struct Activation {
    public var data: UnsafeMutablePointer<Float>
    public var channels: Int
    public var batch: Int
    public var height: Int
    public var width: Int
    public var pixels: Int { height * width }
    /// Columns of the (C, N*H*W) matrix.
    public var columns: Int { batch * height * width }
    public var count: Int { channels * columns }

    public init(pool: BufferPool, channels: Int, batch: Int, height: Int, width: Int) {
        self.channels = channels
        self.batch = batch
        self.height = height
        self.width = width
        data = pool.acquire(channels * batch * height * width)
    }

    /// A view of memory owned elsewhere (never released through it); the training layers view their own buffers.
    public init(viewing data: UnsafeMutablePointer<Float>, channels: Int, batch: Int, height: Int, width: Int) {
        self.data = data
        self.channels = channels
        self.batch = batch
        self.height = height
        self.width = width
    }

    public func release(to pool: BufferPool) { pool.release(data, count: count) }
}

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

    /// Free buffers by size class (in floats).
    private var free: [Int: [FreeBuffer]] = [:]
    private var tick: UInt64 = 0
    /// Bytes of every buffer the pool holds, in use or free.
    public private(set) var bytesAllocated = 0
    /// Bytes of buffers handed out and not given back.
    public private(set) var bytesInUse = 0
    /// The most bytes ever in use at once (the largest forward so far).
    public private(set) var peakBytesInUse = 0
    /// Bytes of free buffers kept for reuse.
    public private(set) var bytesFree = 0
    /// Free bytes kept at most; nil: four times ``peakBytesInUse``. Twice was too little: one forward's buffers,
    /// spread over many size classes whose peaks fall at different times, add up to more than twice its peak in
    /// use (cd_tiny at batch 1), so every forward evicted and re-mapped them (10x the page faults, 10-20% slower).
    public var retainLimitBytes: Int?
    /// Buffers obtained from the system so far (mmap or malloc); a steady-state forward adds none.
    public private(set) var systemAllocations = 0

    /// Buffers of this many bytes or more are mapped directly (and unmapped when evicted).
    static let mmapThreshold = 64 * 1024

    public init(retainLimitBytes: Int? = nil) {
        self.retainLimitBytes = retainLimitBytes
    }

    deinit {
        for (size, list) in free { for buffer in list { deallocate(buffer.pointer, floats: size) } }
    }

    /// The size class of `count` floats: the next value of the form m·2^k with m in 4...7 (counts up to 8 are
    /// exact), so a request gets at most 25% more than it asked for.
    static func sizeClass(_ count: Int) -> Int {
        let count = max(count, 1)
        if count <= 8 { return count }
        let shift = (Int.bitWidth - 1 - count.leadingZeroBitCount) - 2  // 2^(shift+2) <= count < 2^(shift+3)
        let mantissa = (count + (1 << shift) - 1) >> shift  // 4...8
        return mantissa << shift
    }

    /// The class of each buffer handed out (it may be larger than its request's class) and its request's class.
    private var handedOut: [UnsafeMutablePointer<Float>: (size: Int, wanted: Int)] = [:]
    /// Requests of each class being held now, and the most ever held at once. A free buffer of class Y is lent to a
    /// smaller request only when it is surplus: more Y buffers are free than Y's own requests may still want
    /// (their peak minus those held). Without that rule a second forward at the same batch size could lend a Y
    /// buffer early in the pass that a Y request needs later, and allocate: no longer a steady state.
    private var held: [Int: Int] = [:]
    private var peakHeld: [Int: Int] = [:]

    /// A buffer of at least `count` floats, uninitialised. Give it back with the same `count`.
    ///
    /// Its own size class if one is free, else the smallest free buffer of at most twice that: a smaller batch
    /// then runs in the buffers of a larger one instead of allocating its own set (which, under a mix of batch
    /// sizes, would push the pool over its budget and make it unmap and map buffers on every batch).
    public func acquire(_ count: Int) -> UnsafeMutablePointer<Float> {
        let wanted = Self.sizeClass(count)
        var size = wanted
        if free[wanted] == nil {
            var best: Int?
            for (candidate, list) in free where candidate > wanted && candidate <= 2 * wanted {
                let reserved = (peakHeld[candidate] ?? 0) - (held[candidate] ?? 0)
                guard list.count > reserved else { continue }
                if best == nil || candidate < best! { best = candidate }
            }
            if let best { size = best }
        }
        let bytes = size * 4
        bytesInUse += bytes
        peakBytesInUse = max(peakBytesInUse, bytesInUse)
        let pointer: UnsafeMutablePointer<Float>
        if var list = free[size], let buffer = list.popLast() {
            free[size] = list.isEmpty ? nil : list
            bytesFree -= bytes
            pointer = buffer.pointer
        } else {
            bytesAllocated += bytes
            pointer = allocate(floats: size)
        }
        handedOut[pointer] = (size, wanted)
        let h = (held[wanted] ?? 0) + 1
        held[wanted] = h
        peakHeld[wanted] = max(peakHeld[wanted] ?? 0, h)
        return pointer
    }

    public func release(_ p: UnsafeMutablePointer<Float>, count: Int) {
        let entry = handedOut.removeValue(forKey: p) ?? (Self.sizeClass(count), Self.sizeClass(count))
        let size = entry.size
        held[entry.wanted, default: 1] -= 1
        let bytes = size * 4
        bytesInUse -= bytes
        tick &+= 1
        free[size, default: []].append(FreeBuffer(pointer: p, releasedAt: tick))
        bytesFree += bytes
        trim()
    }

    /// Gives the least recently released free buffers back until the free bytes are within the limit.
    private func trim() {
        let limit = retainLimitBytes ?? 4 * peakBytesInUse
        while bytesFree > limit {
            // A linear scan over the free lists' oldest entries: a few dozen classes, and it runs only when a
            // batch of another size has pushed the pool over its budget.
            var oldest: (size: Int, releasedAt: UInt64)?
            for (size, list) in free {
                guard let first = list.first else { continue }
                if oldest == nil || first.releasedAt < oldest!.releasedAt { oldest = (size, first.releasedAt) }
            }
            guard let victim = oldest, var list = free[victim.size] else { return }
            let buffer = list.removeFirst()
            free[victim.size] = list.isEmpty ? nil : list
            deallocate(buffer.pointer, floats: victim.size)
            bytesFree -= victim.size * 4
            bytesAllocated -= victim.size * 4
        }
    }

    /// Large buffers that mmap refused and malloc provided (normally none).
    private var mallocFallbacks: Set<UnsafeMutablePointer<Float>> = []

    private func allocate(floats: Int) -> UnsafeMutablePointer<Float> {
        systemAllocations += 1
        if floats * 4 >= Self.mmapThreshold {
            let raw = mmap(nil, floats * 4, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            if let raw, raw != MAP_FAILED { return raw.bindMemory(to: Float.self, capacity: floats) }
            // Out of address space or map count: fall back to malloc, which reports the failure its own way.
            let pointer = UnsafeMutablePointer<Float>.allocate(capacity: floats)
            mallocFallbacks.insert(pointer)
            return pointer
        }
        return UnsafeMutablePointer<Float>.allocate(capacity: floats)
    }

    private func deallocate(_ pointer: UnsafeMutablePointer<Float>, floats: Int) {
        if floats * 4 >= Self.mmapThreshold && mallocFallbacks.remove(pointer) == nil {
            munmap(pointer, floats * 4)
        } else {
            pointer.deallocate()
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

// Activation memory reused across layers and batches. The forward pass asks for buffers by size and gives them
// back when a tensor dies; after the first pass at a batch size every request is served from the free lists, so
// a steady-state forward does no malloc/mmap and takes no page faults. One pool per compute thread (not shared).

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

    private var free: [Int: [UnsafeMutablePointer<Float>]] = [:]
    private var all: [(UnsafeMutablePointer<Float>, Int)] = []
    public private(set) var bytesAllocated = 0

    public init() {}

    deinit {
        for (p, _) in all { p.deallocate() }
    }

    /// A buffer of exactly `count` floats, uninitialised.
    public func acquire(_ count: Int) -> UnsafeMutablePointer<Float> {
        if var list = free[count], let p = list.popLast() {
            free[count] = list
            return p
        }
        let p = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
        all.append((p, count))
        bytesAllocated += count * 4
        return p
    }

    public func release(_ p: UnsafeMutablePointer<Float>, count: Int) {
        free[count, default: []].append(p)
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

    /// A view of memory owned elsewhere (never released through it).
    init(viewing data: UnsafeMutablePointer<Float>, channels: Int, batch: Int, height: Int, width: Int) {
        self.data = data
        self.channels = channels
        self.batch = batch
        self.height = height
        self.width = width
    }

    public func release(to pool: BufferPool) { pool.release(data, count: count) }
}

// Data parallelism of a training step, in one place for every method: the batch is cut into contiguous chunks,
// one per worker, run on separate threads (OpenBLAS single-threaded inside each: on these small GEMMs two BLAS
// threads gain nothing, two image streams nearly double the rate). Worker 0 is the master network itself, the
// others are replicas (clones) that take the master's weights before each step; their gradients are added into the
// master's in worker order afterwards, so a step's result does not depend on thread timing. Methods draw all
// randomness for the whole batch before splitting, so the random stream does not depend on the worker count.
import Dispatch
import Foundation

public enum DataParallel {
    /// Chunk k of `count` items split `parts` ways holds items bounds[k] ..< bounds[k + 1].
    public static func bounds(count: Int, parts: Int) -> [Int] {
        (0...parts).map { $0 * count / parts }
    }

    /// Workers a batch of `count` items keeps busy: at most one per item, at least one.
    public static func activeWorkers(count: Int, available: Int) -> Int { max(1, min(available, count)) }

    /// Runs body(k, chunk k) for k in 0 ..< activeWorkers(count, workers), each on its own thread (inline for one),
    /// and returns the results in worker order. `body` must touch only worker k's network and buffers.
    public static func map<R>(count: Int, workers: Int, _ body: (Int, Range<Int>) -> R) -> [R] {
        let parts = activeWorkers(count: count, available: workers)
        let b = bounds(count: count, parts: parts)
        if parts == 1 { return [body(0, 0..<count)] }
        let results = UnsafeMutableBufferPointer<R?>.allocate(capacity: parts)
        results.initialize(repeating: nil)
        defer { results.deinitialize(); results.deallocate() }
        withoutActuallyEscaping(body) { body in
            let job = Job(body: body, bounds: b, results: results)
            DispatchQueue.concurrentPerform(iterations: parts) { job.run($0) }
        }
        return results.map { $0! }
    }

    /// Before a step: each replica takes the master's weights and starts from zero gradients.
    public static func broadcast(_ master: ParameterStore, to replicas: some Sequence<ParameterStore>) {
        for r in replicas {
            r.copyValues(from: master)
            r.zeroGrads()
        }
    }

    /// After a step: the replicas' gradients are added into the master's, in order.
    public static func reduceGradients(_ replicas: some Sequence<ParameterStore>, into master: ParameterStore) {
        for r in replicas {
            precondition(r.count == master.count, "replica of \(r.count) parameters for a master of \(master.count)")
            addInPlace(master.grads, r.grads, count: master.count)
        }
    }

    /// Each thread writes only its own result slot; `body` is the caller's promise to touch only worker k's state.
    private struct Job<R>: @unchecked Sendable {
        let body: (Int, Range<Int>) -> R
        let bounds: [Int]
        let results: UnsafeMutableBufferPointer<R?>
        func run(_ k: Int) { results[k] = body(k, bounds[k]..<bounds[k + 1]) }
    }
}

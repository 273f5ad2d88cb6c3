// Every trainable tensor of a model in one flat float32 buffer, with a gradient buffer of the same layout.
//
// Layers register their tensors by checkpoint key while the model is built, then `seal` allocates both buffers
// once. Optimizers, gradient clipping, EMA and cloning then work on two flat arrays, and saving is a walk over
// the entries (the keys are the diffusers names, so the written file loads straight into UNet2DModel).
import Foundation
import OnestepCore

/// A handle to one registered tensor: where its values start in the store.
public struct Param: Sendable {
    public let index: Int
    public let offset: Int
    public let count: Int
}

/// How a tensor is filled before training (PyTorch's defaults for the layer that owns it).
public enum ParamInit: Sendable {
    /// U(-bound, bound): nn.Conv2d / nn.Linear weights and biases use bound = 1/sqrt(fan_in).
    case uniform(Float)
    /// N(0, 1): nn.Embedding.
    case normal
    case constant(Float)
}

public final class ParameterStore {
    public struct Entry: Sendable {
        public var name: String
        public var shape: [Int]
        public var offset: Int
        public var count: Int
        public var initializer: ParamInit
    }

    public private(set) var entries: [Entry] = []
    /// Total floats over all tensors.
    public private(set) var count = 0
    public private(set) var values: UnsafeMutablePointer<Float>
    public private(set) var grads: UnsafeMutablePointer<Float>
    public private(set) var isSealed = false
    private var indexByName: [String: Int] = [:]

    public init() {
        values = .allocate(capacity: 1)
        grads = .allocate(capacity: 1)
    }

    deinit {
        values.deallocate()
        grads.deallocate()
    }

    /// Registers a tensor under its checkpoint key. Only before `seal`.
    public func add(_ name: String, shape: [Int], initializer: ParamInit) -> Param {
        precondition(!isSealed, "cannot add \(name): the parameter store is sealed")
        precondition(indexByName[name] == nil, "parameter \(name) registered twice")
        let n = shape.reduce(1, *)
        let p = Param(index: entries.count, offset: count, count: n)
        indexByName[name] = entries.count
        entries.append(Entry(name: name, shape: shape, offset: count, count: n, initializer: initializer))
        count += n
        return p
    }

    /// Allocates values and gradients and fills the values with each tensor's initialiser.
    public func seal(seed: UInt64) {
        precondition(!isSealed, "parameter store sealed twice")
        values.deallocate()
        grads.deallocate()
        values = .allocate(capacity: max(count, 1))
        grads = .allocate(capacity: max(count, 1))
        grads.initialize(repeating: 0, count: max(count, 1))
        var rng = TrainRandom(seed: seed)
        for e in entries {
            let v = values + e.offset
            switch e.initializer {
            case .uniform(let bound): for i in 0..<e.count { v[i] = (rng.uniform() * 2 - 1) * bound }
            case .normal: for i in 0..<e.count { v[i] = rng.normal() }
            case .constant(let c): v.initialize(repeating: c, count: e.count)
            }
        }
        isSealed = true
    }

    @inline(__always) public func value(_ p: Param) -> UnsafeMutablePointer<Float> { values + p.offset }
    @inline(__always) public func grad(_ p: Param) -> UnsafeMutablePointer<Float> { grads + p.offset }

    public func zeroGrads() { grads.update(repeating: 0, count: count) }

    public func entry(named name: String) -> Entry? { indexByName[name].map { entries[$0] } }

    /// Every tensor with its checkpoint key, in registration order.
    public func tensors(from buffer: UnsafePointer<Float>? = nil) -> [(String, Tensor)] {
        let src = buffer ?? UnsafePointer(values)
        return entries.map { e in (e.name, Tensor(shape: e.shape, data: Array(UnsafeBufferPointer(start: src + e.offset, count: e.count)))) }
    }

    /// The gradient of one tensor (tests and reports).
    public func gradient(named name: String) -> Tensor? {
        entry(named: name).map { Tensor(shape: $0.shape, data: Array(UnsafeBufferPointer(start: grads + $0.offset, count: $0.count))) }
    }

    /// Overwrites every tensor from a weight source (a checkpoint, or an inference model's weights).
    public func load(from src: WeightSource) throws {
        precondition(isSealed, "seal the store before loading weights")
        for e in entries {
            let t = try src.tensor(e.name, shape: e.shape)
            t.data.withUnsafeBufferPointer { (values + e.offset).update(from: $0.baseAddress!, count: e.count) }
        }
    }

    /// Copies all values from another store of the same layout (cloning a model, EMA target networks).
    public func copyValues(from other: ParameterStore) {
        precondition(other.count == count && other.entries.count == entries.count, "copyValues: layouts differ")
        values.update(from: other.values, count: count)
    }

    /// sqrt(sum of squared gradients), in double precision, summed in 8 lanes in a fixed order
    /// (TrainKernels.sumOfSquares: the same value at every kernel level and worker count).
    public func gradientNorm() -> Double {
        TrainKernels.sumOfSquares(grads, count: count).squareRoot()
    }
}

public struct WeightError: Error, CustomStringConvertible {
    public var key: String
    public var problem: String
    public var description: String { "tensor '\(key)' \(problem)" }
}

/// A WeightSource over named tensors held in memory (an inference model's `parameters`, a test's weights).
public struct TensorDictionary: WeightSource {
    public var tensors: [String: Tensor]
    public init(_ pairs: [(String, Tensor)]) { tensors = Dictionary(pairs, uniquingKeysWith: { a, _ in a }) }

    public func contains(_ key: String) -> Bool { tensors[key] != nil }

    public func tensor(_ key: String, shape: [Int]) throws -> Tensor {
        guard let t = tensors[key] else {
            throw WeightError(key: key, problem: "is missing")
        }
        guard t.shape == shape else {
            throw WeightError(key: key, problem: "has shape \(t.shape), expected \(shape)")
        }
        return t
    }
}

/// A float buffer that grows to the largest size asked of it and is then reused, so steady-state training steps
/// do not allocate. Pointers handed out stay valid until the next `ensure` with a larger count.
public final class Buffer {
    public private(set) var pointer: UnsafeMutablePointer<Float>
    public private(set) var capacity: Int

    public init(_ count: Int = 0) {
        capacity = max(count, 1)
        pointer = .allocate(capacity: capacity)
        pointer.initialize(repeating: 0, count: capacity)
    }

    deinit { pointer.deallocate() }

    @discardableResult
    public func ensure(_ count: Int) -> UnsafeMutablePointer<Float> {
        if count > capacity {
            pointer.deallocate()
            capacity = count
            pointer = .allocate(capacity: count)
            pointer.initialize(repeating: 0, count: count)
        }
        return pointer
    }
}

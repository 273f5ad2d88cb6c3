import XCTest
@testable import OnestepCore

/// The serving forward (channel-major, batched GEMMs, pooled buffers) against the reference forward and the
/// golden vectors, and its batch invariance.
final class BatchedForwardTests: XCTestCase {
    /// Same maths, different summation order (bias/residual first, fused norms): relative L2 limit.
    static let matchesReference = 2e-6

    func testMatchesReferenceAndGolden() throws {
        for name in ["ddpm_tiny", "cd_tiny", "ddpm_gray"] {
            let dir = try Fixtures.goldenCase(name)
            var model = try ModelDirectory(path: dir).loadModel().0
            model.packForServing(.fp32)
            let io = try SafetensorsFile(path: dir + "/io.safetensors")
            let x = try io.floats("x"), t = try io.floats("t")
            let labels = io.entries["class_labels"] != nil ? try io.integers("class_labels").values.map { Int($0) } : nil
            let pool = BufferPool()
            let fast = model.forwardBatched(x, timesteps: t.data, classLabels: labels, pool: pool)
            let ref = model.referenceForward(x, timesteps: t.data, classLabels: labels)
            XCTAssertLessThan(TensorError.relativeL2(fast.data, ref.data), Self.matchesReference, name)
            XCTAssertLessThan(TensorError.relativeL2(fast.data, try io.floats("unet_out").data), GoldenTests.unetRelativeL2, name)
            // A second pass reuses the pool: no new memory, same answer.
            let bytes = pool.bytesAllocated, allocations = pool.systemAllocations
            let again = model.forwardBatched(x, timesteps: t.data, classLabels: labels, pool: pool)
            XCTAssertEqual(again.data, fast.data, name)
            XCTAssertEqual(pool.bytesAllocated, bytes, "\(name): steady-state pass allocated")
            // Equal bytes can hide churn (evict, then map again): count the system allocations too.
            XCTAssertEqual(pool.systemAllocations, allocations, "\(name): steady-state pass evicted and re-mapped buffers")
        }
    }

    /// The same request gives the same bytes alone or at any position of any batch.
    func testBatchInvariance() throws {
        for name in ["cd_tiny", "ddpm_gray"] {
            let p = try ImagePipeline.load(path: try Fixtures.goldenCase(name))
            let target = GenerationRequest(seed: 1234, label: p.numClasses.map { _ in 3 })
            let alone = try ImagePipeline.pngs(p.generate([target], steps: 1))[0]
            for batch in [2, 5, 16] {
                for position in [0, batch / 2, batch - 1] {
                    var reqs = (0..<batch).map { GenerationRequest(seed: UInt64(100 + $0), label: p.numClasses.map { $0 > 0 ? ($0 - 1) : 0 }) }
                    reqs[position] = target
                    let pngs = try ImagePipeline.pngs(p.generate(reqs, steps: 1))
                    XCTAssertEqual(pngs[position], alone, "\(name): batch \(batch) position \(position)")
                }
            }
            // Few-step sampling too.
            let two = try ImagePipeline.pngs(p.generate([target], steps: 2))[0]
            let inBatch = try ImagePipeline.pngs(p.generate([GenerationRequest(seed: 9, label: target.label), target], steps: 2))[1]
            XCTAssertEqual(two, inBatch, "\(name): 2 steps")
        }
    }

    /// Sampling through the pipeline still reproduces the golden one-step images.
    func testPipelineMatchesGoldenImages() throws {
        let dir = try Fixtures.goldenCase("cd_tiny")
        let p = try ImagePipeline.load(path: dir)
        let io = try SafetensorsFile(path: dir + "/io.safetensors")
        let labels = try io.integers("class_labels").values.map { Int($0) }
        guard let cm = p.sampler as? ConsistencySampler else { return XCTFail("not a consistency model") }
        let img = cm.sampleOneStep(noise: try io.floats("cm_noise"), labels: labels, denoise: p.denoise)
        XCTAssertLessThanOrEqual(TensorError.maxAbs(img.data, try io.floats("cm_image").data), GoldenTests.imageMaxAbs)
    }
}

/// The packed serving kernels (CKernels) inside the whole model.
final class PackedModelTests: XCTestCase {
    /// fp32 fast kernels vs the im2col + sgemm path on whole models: relative L2 limit.
    static let fp32PackedVsBLAS = 2e-6
    /// int8 convolutions (per-channel weights, per-image activations) vs fp32 on random-weight golden models.
    static let int8VsFP32 = 0.05

    func testPackedFP32MatchesBLASAndInt8StaysClose() throws {
        for name in ["ddpm_tiny", "cd_tiny", "ddpm_gray"] {
            let dir = try Fixtures.goldenCase(name)
            let base = try ImagePipeline.load(path: dir, precision: .blas)
            let io = try SafetensorsFile(path: dir + "/io.safetensors")
            let x = try io.floats("x"), t = try io.floats("t")
            let labels = io.entries["class_labels"] != nil ? try io.integers("class_labels").values.map { Int($0) } : nil
            let ref = base.model.forwardBatched(x, timesteps: t.data, classLabels: labels, pool: BufferPool())
            let fp32 = base.with(precision: .fp32).model.forwardBatched(x, timesteps: t.data, classLabels: labels, pool: BufferPool())
            let int8 = base.with(precision: .int8).model.forwardBatched(x, timesteps: t.data, classLabels: labels, pool: BufferPool())
            let e32 = TensorError.relativeL2(fp32.data, ref.data), e8 = TensorError.relativeL2(int8.data, ref.data)
            XCTAssertLessThan(e32, Self.fp32PackedVsBLAS, name)
            XCTAssertLessThan(TensorError.relativeL2(fp32.data, try io.floats("unet_out").data), GoldenTests.unetRelativeL2, name)
            XCTAssertLessThan(e8, Self.int8VsFP32, name)
            print("packed \(name): fp32 vs blas \(e32), int8 vs blas \(e8)")
        }
    }

    func testInt8BatchInvariance() throws {
        let p = try ImagePipeline.load(path: try Fixtures.goldenCase("cd_tiny"), precision: .int8)
        let target = GenerationRequest(seed: 77, label: 4)
        let alone = try ImagePipeline.pngs(p.generate([target], steps: 1))[0]
        for batch in [3, 16] {
            var reqs = (0..<batch).map { GenerationRequest(seed: UInt64(500 + $0), label: $0 % 10) }
            reqs[batch - 1] = target
            XCTAssertEqual(try ImagePipeline.pngs(p.generate(reqs, steps: 1))[batch - 1], alone, "batch \(batch)")
        }
    }
}

import XCTest
@testable import OnestepCore

/// One forward split over a thread team gives the same bytes as on one thread, on every golden UNet and the
/// shipped default model, fp32 and int8; and the team itself runs every part exactly once.
final class ThreadTeamTests: XCTestCase {
    func testTeamRunsEveryChunkOnceOnAValidWorker() {
        for threads in [1, 2, 3, 5] {
            let team = ThreadTeam(threads: threads)
            for chunks in [1, 2, threads, 4 * threads + 3] {
                for round in 0..<200 {
                    let counts = UnsafeMutableBufferPointer<Int>.allocate(capacity: chunks)
                    let workers = UnsafeMutableBufferPointer<Int>.allocate(capacity: chunks)
                    counts.initialize(repeating: 0)
                    workers.initialize(repeating: -1)
                    nonisolated(unsafe) let c = counts, w = workers
                    team.run(chunks: chunks) { chunk, worker in
                        c[chunk] += 1
                        w[chunk] = worker
                    }
                    XCTAssertEqual(Array(counts), Array(repeating: 1, count: chunks), "threads \(threads) chunks \(chunks) round \(round)")
                    XCTAssertTrue(workers.allSatisfy { (0..<threads).contains($0) }, "worker index out of 0..<\(threads)")
                    counts.deallocate()
                    workers.deallocate()
                }
                usleep(2_000)  // let the helpers park between some jobs: the wake-up path is tested too
            }
        }
    }

    func testForwardIsBitIdenticalOnOneTwoAndThreeThreads() throws {
        var cases: [(String, String)] = try ["ddpm_tiny", "cd_tiny", "ddpm_gray"].map { ($0, try Fixtures.goldenCase($0)) }
        cases.append(("default model", Fixtures.repoRoot + "/models/shapes16-cd-int8"))
        let teams = [2: ThreadTeam(threads: 2), 3: ThreadTeam(threads: 3)]
        for (name, dir) in cases {
            let loaded = try ImagePipeline.load(path: dir)
            for precision in [ConvPrecision.fp32, .int8] {
                let model = loaded.with(precision: precision).model
                // A batch of 3 images with different timesteps and labels, so splits cut through images.
                var g = TorchGenerator(seed: 5)
                let x = g.randn(shape: [3, model.config.inChannels, model.config.sampleSize, model.config.sampleSize])
                let labels = model.config.numClassEmbeds.map { k in [0, 1, 2].map { $0 % k } }
                let t: [Float] = [0.5, 3, 40]
                let alone = model.forwardBatched(x, timesteps: t, classLabels: labels, pool: BufferPool())
                for threads in [2, 3] {
                    let pool = BufferPool()
                    pool.team = teams[threads]
                    let split = model.forwardBatched(x, timesteps: t, classLabels: labels, pool: pool)
                    XCTAssertEqual(split.data, alone.data, "\(name) \(precision) on \(threads) threads differs from 1 thread")
                    // Batch of one (the case the team is for: one image, every core).
                    let one = Tensor(shape: [1] + Array(x.shape.dropFirst()), data: Array(x.data.prefix(x.count / 3)))
                    let oneAlone = model.forwardBatched(one, timesteps: [t[0]], classLabels: labels.map { [$0[0]] }, pool: BufferPool())
                    let oneSplit = model.forwardBatched(one, timesteps: [t[0]], classLabels: labels.map { [$0[0]] }, pool: pool)
                    XCTAssertEqual(oneSplit.data, oneAlone.data, "\(name) \(precision) batch 1 on \(threads) threads")
                }
            }
        }
    }
}

import Foundation
import XCTest
@testable import OnestepServer

/// Workers whose batches are split over several cores answer with the same bytes as workers computing alone;
/// the split is chosen at start-up (measured) unless --cores-per-batch fixes it.
final class CoresPerBatchTests: XCTestCase {
    /// cd_tiny and ddpm_gray only (the golden folder also holds text-to-image pipelines this server cannot load).
    static let models: Result<ModelRegistry, Error> = Result {
        let dir = Fixtures.tempDir("cores")
        for name in ["cd_tiny", "ddpm_gray"] {
            try FileManager.default.createSymbolicLink(atPath: dir + "/" + name, withDestinationPath: Fixtures.golden + "/" + name)
        }
        return try ModelRegistry.load(directory: dir, preferred: "cd_tiny", log: { _ in })
    }

    func testSplitBatchesGiveTheSameBytes() throws {
        let alone = try RunningServer(models: Self.models) { o in o.workers = 1; o.coresPerBatch = 1 }
        let split = try RunningServer(models: Self.models) { o in o.workers = 2; o.coresPerBatch = 2 }
        XCTAssertEqual(split.server.workers.coresPerBatch, 2)
        XCTAssertEqual(split.server.workers.count, 1, "2 cores split one batch: one worker")
        for target in ["/v1/generate?seed=42", "/v1/generate?seed=7&label=3&steps=2", "/v1/generate?model=ddpm_gray&seed=5"] {
            let a = try alone.get(target), b = try split.get(target)
            XCTAssertEqual(a.status, 200, a.text)
            XCTAssertEqual(b.status, 200, b.text)
            XCTAssertTrue(a.body == b.body, "\(target): 1 core vs 2 cores per batch")
        }
        let a4 = try alone.post("/v1/images/generations", json: #"{"seed": 40, "n": 4}"#)
        let b4 = try split.post("/v1/images/generations", json: #"{"seed": 40, "n": 4}"#)
        XCTAssertEqual(a4.status, 200, a4.text)
        XCTAssertEqual(b4.status, 200, b4.text)
        // The images (the JSON also holds a `created` time): the same four PNGs, byte for byte.
        func images(_ r: TestResponse) -> [String] { ((r.json?["data"] as? [[String: Any]]) ?? []).compactMap { $0["b64_json"] as? String } }
        XCTAssertEqual(images(a4).count, 4)
        XCTAssertTrue(images(a4) == images(b4), "a batch of 4 on 1 core vs 2 cores")
    }

    func testChoiceIsMeasuredAndPrintedUnlessFixed() throws {
        let models = try Self.models.get()
        let fixed = CoreSplit.choose(models: models, cores: 2, fixed: 2)
        XCTAssertEqual(fixed.coresPerBatch, 2)
        XCTAssertTrue(fixed.description.contains("--cores-per-batch"), fixed.description)
        let auto = CoreSplit.choose(models: models, cores: 2, fixed: nil)
        print(auto.description)
        XCTAssertTrue([1, 2].contains(auto.coresPerBatch))
        XCTAssertTrue(auto.description.contains("auto") && auto.description.contains("ms on 1 core"), auto.description)
        XCTAssertEqual(CoreSplit.choose(models: models, cores: 1, fixed: nil).coresPerBatch, 1)
    }

    func testFlagParsing() throws {
        XCTAssertNil(try ServerOptions.parse([], environment: [:]).0.coresPerBatch)
        XCTAssertNil(try ServerOptions.parse(["--cores-per-batch", "auto"], environment: [:]).0.coresPerBatch)
        XCTAssertEqual(try ServerOptions.parse(["--cores-per-batch", "2"], environment: [:]).0.coresPerBatch, 2)
        XCTAssertEqual(try ServerOptions.parse([], environment: ["ONESTEP_CORES_PER_BATCH": "3"]).0.coresPerBatch, 3)
        XCTAssertThrowsError(try ServerOptions.parse(["--cores-per-batch", "0"], environment: [:]))
        XCTAssertThrowsError(try ServerOptions.parse(["--cores-per-batch", "many"], environment: [:]))
    }
}

import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

final class PipelineTests: XCTestCase {
    /// `pipeline --quick` end to end: every stage runs, the one-step student beats the teacher's one Euler step
    /// on FD-cls, the int8 student stays close to its float twin, and a second run skips every stage.
    func testQuickPipelineStudentBeatsOneEulerStep() throws {
        let dir = NSTemporaryDirectory() + "onestep-pipeline-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // As `onestep-distill pipeline` does (--threads 1): OpenBLAS's default of one thread per core on top of the
        // pipeline's own workers oversubscribes the cores (measured: 14 s vs 3 s for the set-up alone).
        BLAS.threads = 1
        let start = Date()
        let p = try DistillPipeline(dir: dir, settings: .quick, log: { _ in })
        let result = try XCTUnwrap(try p.run())
        let seconds = Date().timeIntervalSince(start)
        let student = try XCTUnwrap(result.row("student-1step")), euler = try XCTUnwrap(result.row("teacher-euler1"))
        XCTAssertLessThan(student.fd.value, euler.fd.value, "student 1-step FD-cls \(student.fd.value) vs teacher Euler \(euler.fd.value)")
        let int8 = try XCTUnwrap(result.row("int8-student-1step"))
        XCTAssertEqual(int8.weights, "int8")
        XCTAssertEqual(int8.fd.value, student.fd.value, accuracy: 0.25 * student.fd.value)
        XCTAssertEqual(result.rows.count, 6)
        for f in ["report.md", "eval/eval.md", "eval/grid-student-1step.png", "student-int8/quantization.txt", "student-small/pairs.safetensors"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/" + f), f)
        }
        // Time is reported, not asserted: a shared, busy machine makes any bound either loose or flaky.
        print(String(format: "pipeline --quick: %.0fs", seconds))
        var logged: [String] = []
        let again = try DistillPipeline(dir: dir, settings: .quick, log: { logged.append($0) })
        XCTAssertNil(try again.run())
        XCTAssertEqual(logged.filter { $0.hasSuffix("skipped") }.count, DistillPipeline.stages.count)
    }
}

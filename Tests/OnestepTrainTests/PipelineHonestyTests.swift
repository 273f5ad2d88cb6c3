// The pipeline's honesty about what it reuses and what its numbers mean (issue 15, "Honest tools"): a folder
// made with other settings is refused naming them (or used with --force, saying so); a --quick run's report says
// that it only exercises the code. (The end-of-run commands are printed by onestep-distill itself.)
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

final class PipelineHonestyTests: XCTestCase {
    /// pipeline.json as an earlier `pipeline --quick` run left it after its data and teacher stages.
    func writeQuickRecord(_ dir: String) throws {
        var d = DistillPipeline.recordedSettings(.quick)
        d["stage_seconds"] = ["data": 3.0, "teacher": 40.0]
        try JSONSerialization.data(withJSONObject: d, options: [.prettyPrinted, .sortedKeys]).write(to: URL(fileURLWithPath: dir + "/pipeline.json"))
    }

    func testFolderOfAQuickRunIsRefusedForAFullRunNamingTheSettings() throws {
        let dir = makeTempDir()
        try writeQuickRecord(dir)
        XCTAssertThrowsError(try DistillPipeline(dir: dir, settings: PipelineSettings(), log: { _ in })) { e in
            let text = "\(e)"
            XCTAssertTrue(e is RunSettingsError, "the pipeline refuses as a resumed training run does: \(type(of: e))")
            for part in ["holds a pipeline run made with other settings (", "quick true -> false", "teacher_steps 300 -> 20000", "data_count 800 -> 8000",
                         "teacher_channels [16, 32] -> [32, 64, 64]", "finished stages (data, teacher)", "--force"] {
                XCTAssertTrue(text.contains(part), "missing '\(part)' in: \(text)")
            }
            XCTAssertFalse(text.contains("size 16"), "size is the same and must not be listed: \(text)")
        }
        // The same settings again (a resume) are accepted without a word.
        var lines: [String] = []
        let again = try DistillPipeline(dir: dir, settings: .quick, log: { lines.append($0) })
        XCTAssertEqual(again.seconds["teacher"], 40)
        XCTAssertTrue(lines.isEmpty, "\(lines)")
    }

    func testForceKeepsTheFinishedStagesAndSaysSo() throws {
        let dir = makeTempDir()
        try writeQuickRecord(dir)
        var lines: [String] = []
        let p = try DistillPipeline(dir: dir, settings: PipelineSettings(), force: true, log: { lines.append($0) })
        XCTAssertEqual(p.seconds["data"], 3)
        XCTAssertEqual(lines.count, 1)
        XCTAssertTrue(lines[0].hasPrefix("warning: --force: reusing the finished stages"), lines[0])
        XCTAssertTrue(lines[0].contains("quick true -> false"), lines[0])
    }

    func testQuickReportCarriesTheWarningAndAFullOneDoesNot() throws {
        let quick = try DistillPipeline(dir: makeTempDir(), settings: .quick, log: { _ in }).report(evalMarkdown: "| model | FD-cls |\n")
        XCTAssertTrue(quick.contains(PipelineSettings.quickWarning), quick)
        XCTAssertTrue(quick.contains("only exercise the code"))
        let full = try DistillPipeline(dir: makeTempDir(), settings: PipelineSettings(), log: { _ in }).report(evalMarkdown: "| model | FD-cls |\n")
        XCTAssertFalse(full.contains("WARNING"), full)
    }
}

// `--resume` with other settings than the run was started with (issue 15, "Honest tools"), through the real
// onestep-distill binary and real checkpoint files: another --steps is refused (exit 2) naming it old -> new and
// saying what to do; --force accepts it and the run goes on to the new step count; another --workers or --log-every
// is accepted without a word; another --method is refused naming the command that made the checkpoint; a
// checkpoint from before the record resumes with a note; the teacher command does the same for its own flags.
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

final class ResumeSettingsTests: XCTestCase {
    var dir = ""
    var teacher: String { dir + "/teacher" }

    override func setUpWithError() throws {
        dir = makeTempDir("resumesettings")
        _ = try ShapesGenerator.write(count: 32, size: 16, seed: 0, to: dir + "/data")
        try writeTinyConfig(to: dir + "/tiny.json")
        let model = TrainableUNet(config: try UNetConfig.load(path: dir + "/tiny.json").withClasses(8), seed: 3)
        try ModelExport.writeEDMTeacher(model, to: teacher)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func studentArgs(_ out: String, method: String = "cd", steps: Int, extra: [String] = []) -> [String] {
        ["student", "--method", method, "--teacher", teacher, "--data", dir + "/data", "--out", out, "--steps", String(steps),
         "--batch", "2", "--sigmas", "6", "--log-every", "1", "--checkpoint-every", "4", "--sample-every", "100000", "--workers", "2"] + extra
    }

    func testStudentResumedWithOtherStepsIsRefusedNamingThemAndForceContinues() throws {
        let out = dir + "/cd"
        let first = try DistillProcess.run(studentArgs(out, steps: 4))
        XCTAssertEqual(first.status, 0, first.output)

        let refused = try DistillProcess.run(studentArgs(out, steps: 6, extra: ["--resume", "--lr", "2e-4"]))
        XCTAssertEqual(refused.status, 2, refused.output)
        for part in ["onestep-distill student: \(out) holds a training run made with other settings (lr 0.0001 -> 0.0002; steps 4 -> 6)",
                     "choose another --out", "pass --force"] {
            XCTAssertTrue(refused.output.contains(part), "missing '\(part)' in:\n\(refused.output)")
        }
        XCTAssertNil(DistillProcess.lastStep(in: refused.output), "a refused resume must not train")

        let forced = try DistillProcess.run(studentArgs(out, steps: 6, extra: ["--resume", "--force"]))
        XCTAssertEqual(forced.status, 0, forced.output)
        XCTAssertEqual(DistillProcess.resumedStep(in: forced.output), 4)
        XCTAssertTrue(forced.output.contains("note: --force: continuing \(out) with settings other than its checkpoint's (steps 4 -> 6)"), forced.output)
        XCTAssertEqual(DistillProcess.lastStep(in: forced.output), 6)
        let record = try XCTUnwrap(RunSettings(json: SafetensorsFile(path: out + "/" + Checkpoint.fileName).metadata[Checkpoint.runSettingsKey] ?? ""))
        XCTAssertEqual(record["steps"], "6", "the forced run's checkpoint records its own settings")
        XCTAssertEqual(record["teacher"], URL(fileURLWithPath: teacher).standardizedFileURL.path)
        XCTAssertEqual(record["method"], "cd")
    }

    /// Thread counts and cadence do not change what is computed: a run killed at step 5 resumes from 4 with
    /// --workers 1 and another --log-every, and finishes.
    func testStudentResumedWithOtherWorkersAndCadenceIsAccepted() throws {
        let out = dir + "/ect"
        let run = try DistillProcess(studentArgs(out, method: "ect", steps: 40))
        let killedAt = try run.kill9(atStep: 5)
        var args = studentArgs(out, method: "ect", steps: 40, extra: ["--resume"])
        args[args.firstIndex(of: "--workers")! + 1] = "1"
        args[args.firstIndex(of: "--log-every")! + 1] = "2"
        let resumed = try DistillProcess.run(args)
        XCTAssertEqual(resumed.status, 0, resumed.output)
        let from = try XCTUnwrap(DistillProcess.resumedStep(in: resumed.output), resumed.output)
        XCTAssertTrue(from > 0 && from <= killedAt, "resumed at \(from), killed at \(killedAt)")
        XCTAssertFalse(resumed.output.contains("other settings"), resumed.output)
        XCTAssertFalse(resumed.output.contains("note:"), resumed.output)
        XCTAssertEqual(DistillProcess.lastStep(in: resumed.output), 40)
    }

    func testStudentResumedWithAnotherMethodIsRefusedNamingTheMethods() throws {
        let out = dir + "/ect"
        XCTAssertEqual(try DistillProcess.run(studentArgs(out, method: "ect", steps: 2)).status, 0)
        let r = try DistillProcess.run(studentArgs(out, method: "cd", steps: 2, extra: ["--resume"]))
        XCTAssertEqual(r.status, 1, r.output)
        XCTAssertTrue(r.output.contains("it is a 'consistency-tuning' (student --method ect) checkpoint, this run needs 'consistency-distillation' (student --method cd)"), r.output)
    }

    /// A checkpoint written before the record existed (its key removed, the checksum kept valid) resumes with a note.
    func testCheckpointWithoutARecordResumesWithANote() throws {
        let out = dir + "/old"
        XCTAssertEqual(try DistillProcess.run(studentArgs(out, steps: 4)).status, 0)
        let f = try SafetensorsFile(path: out + "/" + Checkpoint.fileName)
        let md = f.metadata.filter { $0.key != CheckpointFile.checksumKey && $0.key != Checkpoint.runSettingsKey }
        let tensors = try Dictionary(uniqueKeysWithValues: f.names.map { ($0, try f.floats($0).data) })
        try CheckpointFile.write(tensors: tensors, metadata: md, to: out + "/" + Checkpoint.fileName, previous: out + "/" + Checkpoint.previousName)
        let r = try DistillProcess.run(studentArgs(out, steps: 6, extra: ["--resume"]))
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("predates recorded run settings, so this run's settings ("), r.output)
        XCTAssertTrue(r.output.contains("steps 6"), r.output)
        XCTAssertEqual(DistillProcess.lastStep(in: r.output), 6)
    }

    func testTeacherResumedWithOtherLearningRateIsRefusedAndForceContinues() throws {
        let out = dir + "/t"
        let args = ["teacher", "--data", dir + "/data", "--out", out, "--config", dir + "/tiny.json", "--steps", "4", "--batch", "2",
                    "--log-every", "1", "--checkpoint-every", "2", "--sample-every", "100000", "--sample-steps", "2"]
        XCTAssertEqual(try DistillProcess.run(args).status, 0)
        let refused = try DistillProcess.run(args + ["--resume", "--lr", "5e-4", "--optimizer", "radam"])
        XCTAssertEqual(refused.status, 2, refused.output)
        XCTAssertTrue(refused.output.contains("made with other settings (lr 0.001 -> 0.0005; optimizer adam -> radam)"), refused.output)
        let forced = try DistillProcess.run(args + ["--resume", "--lr", "5e-4", "--force", "--workers", "1"])
        XCTAssertEqual(forced.status, 0, forced.output)
        XCTAssertTrue(forced.output.contains("(lr 0.001 -> 0.0005)"), forced.output)
    }

    /// A resumed run keeps its network: the same --config is accepted (above), another one is refused before any
    /// training, naming the checkpoint and what to do.
    func testTeacherResumedWithAnotherConfigIsRefused() throws {
        let out = dir + "/t2"
        let args = ["teacher", "--data", dir + "/data", "--out", out, "--steps", "2", "--batch", "2", "--log-every", "1",
                    "--checkpoint-every", "2", "--sample-every", "100000", "--sample-steps", "2"]
        XCTAssertEqual(try DistillProcess.run(args + ["--config", dir + "/tiny.json"]).status, 0)
        let wider = try String(contentsOfFile: dir + "/tiny.json", encoding: .utf8).replacingOccurrences(of: "[8, 16]", with: "[8, 24]")
        try wider.write(toFile: dir + "/wider.json", atomically: true, encoding: .utf8)
        let r = try DistillProcess.run(args + ["--config", dir + "/wider.json", "--resume", "--steps", "4"])
        XCTAssertEqual(r.status, 2, r.output)
        XCTAssertTrue(r.output.contains("--config \(dir)/wider.json describes another network than the checkpoint in \(out)"), r.output)
        XCTAssertTrue(r.output.contains("drop --config to continue that run"), r.output)
        XCTAssertNil(DistillProcess.lastStep(in: r.output), "a refused resume must not train")
    }
}

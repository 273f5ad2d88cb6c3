// kill -9 of the real onestep-distill binary mid-run (teacher, student, and the pipeline's teacher and student
// stages), then the same command resumed: it must continue from the last checkpoint (never from step 0), lose at
// most one checkpoint interval, and, where resume is exact (teacher and consistency student: the checkpoint holds
// weights, EMA, Adam moments, target network, step and RNG state), end on the weights of a run never killed.
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

final class KillResumeTests: XCTestCase {
    static let interval = 20
    static let steps = 120
    /// Killed half-way through the second interval, so the checkpoint at `interval` is the one to resume from.
    static let killAfter = 30

    var dir = ""

    override func setUpWithError() throws {
        dir = makeTempDir("killresume")
        _ = try ShapesGenerator.write(count: 64, size: 16, seed: 0, to: dir + "/data")
        try writeTinyConfig(to: dir + "/tiny.json")
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func teacherArgs(_ out: String) -> [String] {
        ["teacher", "--data", dir + "/data", "--out", out, "--config", dir + "/tiny.json", "--steps", String(Self.steps),
         "--batch", "4", "--warmup", "10", "--log-every", "1", "--checkpoint-every", String(Self.interval),
         "--sample-every", "100000", "--sample-steps", "2"]
    }

    /// Asserts the resumed run started from a checkpoint at or before the kill and at most one interval back.
    func assertResumedWithinOneInterval(killedAt: Int, output: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let resumed = try XCTUnwrap(DistillProcess.resumedStep(in: output), "no resuming line in:\n\(output)", file: file, line: line)
        XCTAssertGreaterThan(resumed, 0, "resumed from step 0: the checkpoint was not used", file: file, line: line)
        XCTAssertEqual(resumed % Self.interval, 0, "resumed from a step that is not a checkpoint step", file: file, line: line)
        XCTAssertLessThanOrEqual(resumed, killedAt, file: file, line: line)
        XCTAssertLessThanOrEqual(killedAt - resumed, Self.interval, "lost \(killedAt - resumed) steps, more than one interval", file: file, line: line)
    }

    func testTeacherKilledMidRunResumesFromCheckpointToTheStraightRunsWeights() throws {
        let straight = dir + "/straight", killed = dir + "/killed"
        let reference = try DistillProcess.run(teacherArgs(straight))
        XCTAssertEqual(reference.status, 0, reference.output)

        let run = try DistillProcess(teacherArgs(killed))
        let killedAt = try run.kill9(atStep: Self.killAfter)
        let resumed = try DistillProcess.run(teacherArgs(killed) + ["--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        try assertResumedWithinOneInterval(killedAt: killedAt, output: resumed.output)
        XCTAssertEqual(DistillProcess.lastStep(in: resumed.output), Self.steps)

        // Bit-identical: the checkpoint carries everything the next step depends on.
        let a = try checkpointTensors(straight), b = try checkpointTensors(killed)
        for key in ["teacher/values", "teacher/ema", "teacher/adam.m", "teacher/adam.v", "losses"] {
            XCTAssertNotNil(a[key], key)
            XCTAssertEqual(a[key], b[key], key)
        }
        XCTAssertEqual(b["losses"]?.count, Self.steps)
        XCTAssertEqual(FileManager.default.contents(atPath: straight + "/" + ModelExport.weightsFile),
                       FileManager.default.contents(atPath: killed + "/" + ModelExport.weightsFile), "exported teacher weights differ")
    }

    func testStudentKilledMidRunResumesFromCheckpointToTheStraightRunsWeights() throws {
        let teacher = dir + "/teacher"
        let model = TrainableUNet(config: try UNetConfig.load(path: dir + "/tiny.json").withClasses(8), seed: 3)
        try ModelExport.writeEDMTeacher(model, to: teacher)
        func args(_ out: String) -> [String] {
            ["student", "--teacher", teacher, "--data", dir + "/data", "--out", out, "--steps", String(Self.steps), "--batch", "4",
             "--sigmas", "6", "--log-every", "1", "--checkpoint-every", String(Self.interval), "--sample-every", "100000"]
        }
        let straight = dir + "/straight", killed = dir + "/killed"
        let reference = try DistillProcess.run(args(straight))
        XCTAssertEqual(reference.status, 0, reference.output)

        let run = try DistillProcess(args(killed))
        let killedAt = try run.kill9(atStep: Self.killAfter)
        let resumed = try DistillProcess.run(args(killed) + ["--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        try assertResumedWithinOneInterval(killedAt: killedAt, output: resumed.output)

        let a = try checkpointTensors(straight), b = try checkpointTensors(killed)
        for key in ["student/values", "student/target", "student/ema", "student/adam.m", "student/adam.v", "losses"] {
            XCTAssertNotNil(a[key], key)
            XCTAssertEqual(a[key], b[key], key)
        }
        XCTAssertEqual(FileManager.default.contents(atPath: straight + "/" + ModelExport.weightsFile),
                       FileManager.default.contents(atPath: killed + "/" + ModelExport.weightsFile), "exported student weights differ")
    }

    /// `student --method ect`, killed with SIGKILL mid-run and resumed: the straight run's weights, byte for byte.
    func testECTStudentKilledMidRunResumesFromCheckpointToTheStraightRunsWeights() throws {
        let teacher = dir + "/teacher"
        let model = TrainableUNet(config: try UNetConfig.load(path: dir + "/tiny.json").withClasses(8), seed: 3)
        try ModelExport.writeEDMTeacher(model, to: teacher)
        func args(_ out: String) -> [String] {
            ["student", "--method", "ect", "--teacher", teacher, "--data", dir + "/data", "--out", out, "--steps", String(Self.steps),
             "--batch", "4", "--log-every", "1", "--checkpoint-every", String(Self.interval), "--sample-every", "100000"]
        }
        let straight = dir + "/straight", killed = dir + "/killed"
        let start = Date()
        let reference = try DistillProcess.run(args(straight))
        print(String(format: "ECT student %d steps (process): %.1f s", Self.steps, Date().timeIntervalSince(start)))
        XCTAssertEqual(reference.status, 0, reference.output)
        XCTAssertTrue(reference.output.contains("easy consistency tuning"), reference.output)

        let run = try DistillProcess(args(killed))
        let killedAt = try run.kill9(atStep: Self.killAfter)
        let resumed = try DistillProcess.run(args(killed) + ["--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        try assertResumedWithinOneInterval(killedAt: killedAt, output: resumed.output)
        let a = try checkpointTensors(straight), b = try checkpointTensors(killed)
        for key in ["student/values", "student/ema", "student/adam.m", "student/adam.v", "losses"] {
            XCTAssertNotNil(a[key], key)
            XCTAssertEqual(a[key], b[key], key)
        }
        XCTAssertEqual(FileManager.default.contents(atPath: straight + "/" + ModelExport.weightsFile),
                       FileManager.default.contents(atPath: killed + "/" + ModelExport.weightsFile), "exported student weights differ")
    }

    /// `student --method dmd` (two networks, data parallel on two workers), killed with SIGKILL mid-run and resumed:
    /// the straight run's tensors.
    func testDMDStudentKilledMidRunResumesFromCheckpointToTheStraightRunsWeights() throws {
        let teacher = dir + "/teacher"
        let model = TrainableUNet(config: try UNetConfig.load(path: dir + "/tiny.json").withClasses(8), seed: 3)
        try ModelExport.writeEDMTeacher(model, to: teacher)
        func args(_ out: String) -> [String] {
            ["student", "--method", "dmd", "--teacher", teacher, "--out", out, "--steps", String(Self.steps), "--dmd-ratio", "2",
             "--batch", "4", "--log-every", "1", "--checkpoint-every", String(Self.interval), "--sample-every", "100000", "--workers", "2"]
        }
        let straight = dir + "/straight", killed = dir + "/killed"
        let start = Date()
        let reference = try DistillProcess.run(args(straight))
        print(String(format: "DMD student %d steps (process): %.1f s", Self.steps, Date().timeIntervalSince(start)))
        XCTAssertEqual(reference.status, 0, reference.output)
        XCTAssertTrue(reference.output.contains("distribution matching"), reference.output)

        let run = try DistillProcess(args(killed))
        let killedAt = try run.kill9(atStep: Self.killAfter)
        let resumed = try DistillProcess.run(args(killed) + ["--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        try assertResumedWithinOneInterval(killedAt: killedAt, output: resumed.output)
        let a = try checkpointTensors(straight), b = try checkpointTensors(killed)
        for key in ["generator/values", "generator/ema", "generator/adam.m", "fake-score/values", "fake-score/adam.v", "losses"] {
            XCTAssertNotNil(a[key], key)
            XCTAssertEqual(a[key], b[key], key)
        }
        XCTAssertEqual(FileManager.default.contents(atPath: straight + "/" + ModelExport.weightsFile),
                       FileManager.default.contents(atPath: killed + "/" + ModelExport.weightsFile), "exported generator weights differ")
    }

    /// `pipeline --quick` killed in its teacher stage, then run again: the teacher stage resumes from its
    /// checkpoint. Killed once more after the resume is confirmed: finishing the quick pipeline takes a minute.
    func testPipelineKilledInTeacherStageResumesTheTeacher() throws {
        let out = dir + "/pipeline"
        let args = ["pipeline", "--quick", "--out", out, "--checkpoint-every", "5", "--log-every", "1"]
        let killedAt = try DistillProcess(args).kill9(atStep: 8)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/teacher/" + Checkpoint.fileName))

        let again = try DistillProcess(args)
        let after = try again.kill9(atStep: killedAt + 1)
        XCTAssertTrue(again.output.contains("pipeline: data done earlier"), again.output)
        let resumed = try XCTUnwrap(DistillProcess.resumedStep(in: again.output), again.output)
        XCTAssertTrue(again.output.contains("resuming \(out)/teacher at step \(resumed)"), again.output)
        XCTAssertGreaterThan(resumed, 0)
        XCTAssertLessThanOrEqual(killedAt - resumed, 5)
        XCTAssertGreaterThan(after, resumed)
    }

    /// The pipeline killed in its distillation stage: the teacher stage is prepared in-process (10 steps of the
    /// quick settings' teacher, stopped as the student starts), then the binary runs the student stage.
    func testPipelineKilledInStudentStageResumesTheStudent() throws {
        let out = dir + "/pipeline"
        var settings = PipelineSettings.quick
        settings.teacher.steps = 10
        let prepared = try DistillPipeline(dir: out, settings: settings,
                                           shouldStop: { FileManager.default.fileExists(atPath: out + "/student") }, log: { _ in })
        // One OpenBLAS thread per worker, as the binary runs: two workers with two spinning BLAS threads each
        // make the preparation four times slower on two cores.
        let blasThreads = BLAS.threads
        BLAS.threads = 1
        defer { BLAS.threads = blasThreads }
        XCTAssertNil(try prepared.run())
        try FileManager.default.removeItem(atPath: out + "/student")

        // --force: the folder's teacher stage was made with 10 steps, not --quick's 300 (refused without it).
        let args = ["pipeline", "--quick", "--force", "--out", out, "--checkpoint-every", "4", "--log-every", "1"]
        let first = try DistillProcess(args)
        let killedAt = try first.kill9(atStep: 6)
        XCTAssertTrue(first.output.contains("warning: --force: reusing the finished stages"), first.output)
        XCTAssertTrue(first.output.contains("pipeline: teacher done earlier"), first.output)
        let again = try DistillProcess(args)
        let after = try again.kill9(atStep: killedAt + 1)
        let resumed = try XCTUnwrap(DistillProcess.resumedStep(in: again.output), again.output)
        XCTAssertTrue(again.output.contains("resuming \(out)/student at step \(resumed)"), again.output)
        XCTAssertGreaterThan(resumed, 0)
        XCTAssertLessThanOrEqual(killedAt - resumed, 4)
        XCTAssertGreaterThan(after, resumed)
    }

    /// A damaged checkpoint is refused by the binary (exit 1) with the file, the problem and what to do.
    func testBinaryRefusesABitFlippedCheckpointAndPointsAtThePreviousOne() throws {
        let out = dir + "/run"
        var args = teacherArgs(out)
        args[args.firstIndex(of: "--steps")! + 1] = "60"
        XCTAssertEqual(try DistillProcess.run(args).status, 0)
        try flipBit(in: out + "/" + Checkpoint.fileName, atFraction: 0.5)
        let r = try DistillProcess.run(args + ["--resume"])
        XCTAssertEqual(r.status, 1, r.output)
        XCTAssertTrue(r.output.contains("onestep-distill teacher: checkpoint error: cannot resume from \(out)/\(Checkpoint.fileName)"), r.output)
        XCTAssertTrue(r.output.contains("checksum"), r.output)
        XCTAssertTrue(r.output.contains("\(Checkpoint.previousName) is intact (step 40)"), r.output)
    }
}

extension KillResumeTests {
    /// A checkpoint of another model config (resumed with --config of other widths) is a checkpoint error, exit 1,
    /// not a data or usage error.
    func testBinaryReportsACheckpointOfAnotherConfigAsACheckpointError() throws {
        let out = dir + "/run"
        var args = teacherArgs(out)
        args[args.firstIndex(of: "--steps")! + 1] = "2"
        XCTAssertEqual(try DistillProcess.run(args).status, 0)
        // The teacher reads the config from the checkpoint on resume; make the checkpoint's config disagree with
        // its tensors by rewriting it as another (wider) model's, keeping the file's checksum valid.
        let f = try SafetensorsFile(path: out + "/" + Checkpoint.fileName)
        var md = f.metadata.filter { $0.key != CheckpointFile.checksumKey }
        var json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(md["unet_config"]!.utf8)) as? [String: Any])
        json["block_out_channels"] = [16, 32]
        md["unet_config"] = String(decoding: try JSONSerialization.data(withJSONObject: json), as: UTF8.self)
        let tensors = try Dictionary(uniqueKeysWithValues: f.names.map { ($0, try f.floats($0).data) })
        try CheckpointFile.write(tensors: tensors, metadata: md, to: out + "/" + Checkpoint.fileName, previous: out + "/" + Checkpoint.previousName)
        // Resumed without --config (with it, the --config/checkpoint mismatch is a usage error, ResumeSettingsTests).
        let i = args.firstIndex(of: "--config")!
        args.removeSubrange(i...(i + 1))
        let r = try DistillProcess.run(args + ["--resume"])
        XCTAssertEqual(r.status, 1, r.output)
        XCTAssertTrue(r.output.contains("checkpoint error: cannot resume from"), r.output)
        XCTAssertTrue(r.output.contains("belongs to another model config"), r.output)
    }
}

extension UNetConfig {
    /// The config with `k` classes named after the first `k` shapes classes (the shapes data has 8 class folders).
    func withClasses(_ k: Int) -> UNetConfig {
        var c = self
        c.numClassEmbeds = k
        c.classNames = ShapeClass.allCases.prefix(k).map(\.rawValue)
        return c
    }
}

/// Flips one bit of the byte at `fraction` of the file's length (inside the tensor data for a checkpoint).
func flipBit(in path: String, atFraction fraction: Double) throws {
    var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    let i = Int(Double(bytes.count) * fraction)
    bytes[i] ^= 0x10
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

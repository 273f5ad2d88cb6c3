// Damaged checkpoints are refused with a message that names the file, says what is wrong and what to do; the
// previous checkpoint is kept and offered; stale temporary files of a killed run are cleaned up and never taken
// for a checkpoint; checkpoints from before the checksum still resume, with a note.
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

final class CheckpointIntegrityTests: XCTestCase {
    var dir = ""
    let data = TinyData.shapes(count: 16, size: 8, classes: 3)

    override func setUp() { dir = makeTempDir("integrity") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    var checkpoint: String { dir + "/" + Checkpoint.fileName }
    var previous: String { dir + "/" + Checkpoint.previousName }

    func settings(steps: Int) -> TeacherSettings {
        var s = TeacherSettings()
        (s.steps, s.batch, s.logEvery, s.sampleEvery, s.checkpointEvery) = (steps, 4, 1000, 100_000, 2)
        (s.sampleSteps, s.samplesPerClass, s.optimizer.warmupSteps) = (2, 2, 2)
        return s
    }

    /// Trains 4 steps with a checkpoint every 2: checkpoint.safetensors at step 4, the previous one at step 2.
    func trainFourSteps() throws {
        let t = try TeacherTrainer(config: try TinyData.config(classes: data.classNames!), dataset: data, settings: settings(steps: 4),
                                   runDir: dir, resume: false)
        _ = try t.run(shouldStop: { false }, log: { _ in })
    }

    func resume() throws -> TeacherTrainer {
        try TeacherTrainer(config: try TinyData.config(classes: data.classNames!), dataset: data, settings: settings(steps: 4),
                           runDir: dir, resume: true)
    }

    /// The refusal of a damaged checkpoint, checked for the file, the problem and the advice.
    func assertRefused(problem: String, advice: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try resume(), file: file, line: line) { error in
            guard let e = error as? CheckpointError else { return XCTFail("not a CheckpointError: \(error)", file: file, line: line) }
            XCTAssertEqual(e.path, checkpoint, file: file, line: line)
            XCTAssertTrue(e.description.hasPrefix("cannot resume from \(checkpoint): "), e.description, file: file, line: line)
            XCTAssertTrue(e.problem.contains(problem), e.problem, file: file, line: line)
            XCTAssertTrue(e.advice.contains(advice), e.advice, file: file, line: line)
        }
    }

    func testFNV1a64MatchesPublishedVectors() {
        for (text, expected) in [("", 0xCBF2_9CE4_8422_2325 as UInt64), ("a", 0xAF63_DC4C_8601_EC8C), ("foobar", 0x8594_4171_F739_67E8)] {
            var h = FNV1a64()
            h.add(bytes: Array(text.utf8))
            XCTAssertEqual(h.value, expected, text)
        }
        var a = FNV1a64(), b = FNV1a64()
        a.add(floats: [1.5, -2])
        b.add(bytes: [1.5, -2].flatMap { (f: Float) in withUnsafeBytes(of: f.bitPattern.littleEndian, Array.init) })
        XCTAssertEqual(a.value, b.value, "floats are hashed as their little-endian bytes")
    }

    func testPreviousCheckpointIsKeptAndIsTheIntervalBefore() throws {
        try trainFourSteps()
        XCTAssertEqual(try SafetensorsFile(path: checkpoint).metadata["step"], "4")
        XCTAssertEqual(try SafetensorsFile(path: previous).metadata["step"], "2")
        XCTAssertNotNil(try SafetensorsFile(path: checkpoint).metadata[CheckpointFile.checksumKey])
        XCTAssertEqual(try resume().step, 4)
    }

    func testBitFlipInTensorDataIsRefusedAndThePreviousCheckpointOffered() throws {
        try trainFourSteps()
        try flipBit(in: checkpoint, atFraction: 0.6)
        assertRefused(problem: "do not match the checksum", advice: "\(previous) is intact (step 2): run `mv \(previous) \(checkpoint)`")
        // Following the advice resumes from step 2.
        try FileManager.default.removeItem(atPath: checkpoint)
        try FileManager.default.moveItem(atPath: previous, toPath: checkpoint)
        XCTAssertEqual(try resume().step, 2)
    }

    /// Starting over after deleting a damaged checkpoint: the old run's previous checkpoint goes with the new
    /// run's first checkpoint, so it is never offered as this run's.
    func testFirstCheckpointOfANewRunDropsAnAbandonedRunsPrevious() throws {
        try trainFourSteps()
        try FileManager.default.removeItem(atPath: checkpoint)
        var s = settings(steps: 2)
        s.checkpointEvery = 100
        let t = try TeacherTrainer(config: try TinyData.config(classes: data.classNames!), dataset: data, settings: s, runDir: dir, resume: false)
        _ = try t.run(shouldStop: { false }, log: { _ in })
        XCTAssertEqual(try SafetensorsFile(path: checkpoint).metadata["step"], "2")
        XCTAssertFalse(FileManager.default.fileExists(atPath: previous))
    }

    func testBitFlipInTheStepMetadataIsRefused() throws {
        try trainFourSteps()
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: checkpoint)))
        let key = Array("\"step\":\"4\"".utf8)
        let at = try XCTUnwrap((0...(bytes.count - key.count)).first { Array(bytes[$0..<($0 + key.count)]) == key })
        bytes[at + key.count - 2] = UInt8(ascii: "5")  // a valid number, so only the checksum can tell
        try Data(bytes).write(to: URL(fileURLWithPath: checkpoint))
        assertRefused(problem: "do not match the checksum", advice: "is intact (step 2)")
    }

    func testTruncatedCheckpointIsRefusedAsTruncated() throws {
        try trainFourSteps()
        let size = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: checkpoint)[.size] as? Int)
        for keep in [size - 1, size / 2, 100, 0] {
            let handle = try XCTUnwrap(FileHandle(forWritingAtPath: checkpoint))
            try handle.truncate(atOffset: UInt64(keep))
            try handle.close()
            assertRefused(problem: "truncated", advice: "is intact (step 2)")
        }
    }

    func testDamagedCheckpointWithDamagedOrMissingPreviousSaysSo() throws {
        try trainFourSteps()
        try flipBit(in: checkpoint, atFraction: 0.6)
        try flipBit(in: previous, atFraction: 0.6)
        assertRefused(problem: "checksum", advice: "\(previous) is damaged too")
        try FileManager.default.removeItem(atPath: previous)
        assertRefused(problem: "checksum", advice: "No earlier checkpoint is kept")
        XCTAssertTrue(CheckpointFile.advice(for: checkpoint, previous: previous, kinds: nil).contains("delete \(checkpoint) to train this run from step 0"))
    }

    func testStudentCheckpointIsRefusedForATeacherRun() throws {
        try trainFourSteps()
        let f = try SafetensorsFile(path: checkpoint)
        var md = f.metadata
        md[CheckpointFile.kindKey] = "consistency-distillation"
        let tensors = try Dictionary(uniqueKeysWithValues: f.names.map { ($0, try f.floats($0).data) })
        try CheckpointFile.write(tensors: tensors, metadata: md.filter { $0.key != CheckpointFile.checksumKey }, to: checkpoint, previous: previous)
        assertRefused(problem: "it is a 'consistency-distillation' (student --method cd) checkpoint, this run needs 'teacher-checkpoint' (onestep-distill teacher)", advice: "is intact (step 4)")
    }

    func testCheckpointFromBeforeChecksumsResumesWithANote() throws {
        try trainFourSteps()
        let f = try SafetensorsFile(path: checkpoint)
        var w = SafetensorsWriter()
        for name in f.names where name != "losses" { w.add(name, try f.floats(name)) }  // the old layout had no losses tensor
        w.metadata = f.metadata.filter { $0.key != CheckpointFile.checksumKey }
        try w.write(to: checkpoint)
        let t = try resume()
        XCTAssertEqual(t.step, 4)
        XCTAssertEqual(t.losses.count, 4, "losses come back from losses.csv")
        XCTAssertTrue(t.resumeNotes.contains { $0.contains("predates checkpoint checksums") }, "\(t.resumeNotes)")
    }

    /// A checkpoint of the format before named groups (values, ema, adam.m, adam.v at the top level,
    /// optimizer_step and ema_updates in the metadata) resumes into the teacher group, with a note.
    func testFormatOneCheckpointIsReadIntoTheOnlyGroup() throws {
        try trainFourSteps()
        let current = try resume()
        let f = try SafetensorsFile(path: checkpoint)
        var tensors: [String: [Float]] = ["losses": try f.floats("losses").data]
        for piece in ["values", "ema", "adam.m", "adam.v"] { tensors[piece] = try f.floats("teacher/" + piece).data }
        var md = f.metadata.filter { !$0.key.contains("/") && $0.key != Checkpoint.formatKey && $0.key != Checkpoint.groupsKey && $0.key != CheckpointFile.checksumKey }
        md["optimizer_step"] = f.metadata["teacher/optimizer_step"]
        md["ema_updates"] = f.metadata["teacher/ema/updates"]
        try CheckpointFile.write(tensors: tensors, metadata: md, to: checkpoint, previous: previous)
        let old = try resume()
        XCTAssertEqual(old.step, 4)
        XCTAssertEqual(old.losses, current.losses)
        XCTAssertTrue(old.resumeNotes.contains { $0.contains("format before named network groups (format 1)") }, "\(old.resumeNotes)")
        let (a, b) = (old.objective.teacher, current.objective.teacher), n = a.model.store.count
        XCTAssertEqual(Array(UnsafeBufferPointer(start: a.model.store.values, count: n)), Array(UnsafeBufferPointer(start: b.model.store.values, count: n)))
        XCTAssertEqual(Array(UnsafeBufferPointer(start: a.optimizer.v, count: n)), Array(UnsafeBufferPointer(start: b.optimizer.v, count: n)))
        XCTAssertEqual(Array(UnsafeBufferPointer(start: a.ema.shadow, count: n)), Array(UnsafeBufferPointer(start: b.ema.shadow, count: n)))
        XCTAssertEqual(a.optimizer.step, b.optimizer.step)
        XCTAssertEqual(a.ema.updates, b.ema.updates)
    }

    func testUnknownCheckpointFormatIsRefused() throws {
        try trainFourSteps()
        let f = try SafetensorsFile(path: checkpoint)
        var md = f.metadata.filter { $0.key != CheckpointFile.checksumKey }
        md[Checkpoint.formatKey] = "3"
        let tensors = try Dictionary(uniqueKeysWithValues: f.names.map { ($0, try f.floats($0).data) })
        try CheckpointFile.write(tensors: tensors, metadata: md, to: checkpoint, previous: previous)
        assertRefused(problem: "checkpoint format 3, which this onestep-distill does not know", advice: "with the onestep-distill that wrote it")
    }

    /// Resuming with another model config is a checkpoint error (not a data error), saying what to do.
    func testCheckpointOfAnotherModelConfigIsACheckpointError() throws {
        try trainFourSteps()
        var wider = try TinyData.config(classes: data.classNames!)
        wider.blockOutChannels = wider.blockOutChannels.map { $0 * 2 }
        XCTAssertThrowsError(try TeacherTrainer(config: wider, dataset: data, settings: settings(steps: 4), runDir: dir, resume: true)) { error in
            guard let e = error as? CheckpointError else { return XCTFail("not a CheckpointError: \(error)") }
            XCTAssertTrue(e.problem.contains("belongs to another model config"), e.problem)
            XCTAssertTrue(e.advice.contains("config the run was started with"), e.advice)
        }
    }

    func testStaleTemporaryFilesOfAKilledRunAreRemovedAndNotMistakenForACheckpoint() throws {
        // A process id above pid_max cannot be running: the file is what a kill -9 mid-write leaves behind.
        let deadPid = (try? String(contentsOfFile: "/proc/sys/kernel/pid_max", encoding: .utf8))
            .flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }.map { $0 + 1 } ?? 4_194_305
        let stale = dir + "/.\(Checkpoint.fileName).tmp-\(deadPid)"
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: stale))
        // Only the stale temporary file, no checkpoint: a fresh run starts at step 0 and removes it.
        let fresh = try TeacherTrainer(config: try TinyData.config(classes: data.classNames!), dataset: data, settings: settings(steps: 4),
                                       runDir: dir, resume: false)
        XCTAssertEqual(fresh.step, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale))
        XCTAssertTrue(fresh.resumeNotes.contains { $0.contains("a temporary file left by a killed run") }, "\(fresh.resumeNotes)")
        _ = try fresh.run(shouldStop: { false }, log: { _ in })
        // Beside a real checkpoint, resume reads the checkpoint and removes the stale file again.
        try Data(repeating: 0xAB, count: 4096).write(to: URL(fileURLWithPath: stale))
        let resumed = try resume()
        XCTAssertEqual(resumed.step, 4)
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale))
        // A temporary file of a live process (pid 1 always runs) may be mid-write: it is left alone.
        let live = dir + "/.\(Checkpoint.fileName).tmp-1"
        try Data([1]).write(to: URL(fileURLWithPath: live))
        XCTAssertEqual(CheckpointFile.removeStaleTemporaryFiles(in: dir), [])
        XCTAssertTrue(FileManager.default.fileExists(atPath: live))
    }
}

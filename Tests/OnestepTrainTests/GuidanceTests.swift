// Classifier-free guidance of class-conditional pixel models with a null label (issue 15): the null-label
// convention in unet/config.json ("null_class_label" = num_class_embeds - 1, id2label naming the real classes),
// the guided teacher against the hand-computed combination D_null + w (D_label - D_null), the pipeline's guided
// sampling (serving and eval rows) against the same combination, and every bad guidance value refused with an
// error naming what to do.
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

final class GuidanceTests: XCTestCase {
    /// The shared ddpm_tiny UNet (10 class embeddings, diffusers-made) in a pipeline folder, its config read as
    /// 9 real classes plus the null label 9 (or without "null_class_label" when `null` is false).
    func tinyTeacherFolder(null: Bool = true) throws -> String {
        let src = DDPMTeacherTests.shared + "/ddpm_tiny", dir = makeTempDir()
        guard FileManager.default.fileExists(atPath: src + "/config.json") else {
            throw XCTSkip("\(src) not found; set ONESTEP_GOLDEN to the shared golden folder")
        }
        try FileManager.default.createDirectory(atPath: dir + "/unet", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/scheduler", withIntermediateDirectories: true)
        var cfg = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: src + "/config.json"))) as? [String: Any])
        if null { cfg["null_class_label"] = 9 }
        try JSONSerialization.data(withJSONObject: cfg, options: [.sortedKeys]).write(to: URL(fileURLWithPath: dir + "/unet/config.json"))
        try FileManager.default.createSymbolicLink(atPath: dir + "/unet/diffusion_pytorch_model.safetensors",
                                                   withDestinationPath: src + "/diffusion_pytorch_model.safetensors")
        try JSONSerialization.data(withJSONObject: ["_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
                                                    "scheduler": ["diffusers", "DDPMScheduler"]]).write(to: URL(fileURLWithPath: dir + "/model_index.json"))
        try JSONSerialization.data(withJSONObject: ["_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
                                                    "beta_end": 0.02, "beta_schedule": "linear", "clip_sample": true] as [String: Any])
            .write(to: URL(fileURLWithPath: dir + "/scheduler/scheduler_config.json"))
        return dir
    }

    func testNullLabelConventionIsReadFromTheConfig() throws {
        let names = (0..<8).map { "c\($0)" }
        var d: [String: Any] = ["sample_size": 16, "block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "DownBlock2D"],
                                "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 8, "add_attention": false,
                                "num_class_embeds": 9, "null_class_label": 8,
                                "id2label": Dictionary(uniqueKeysWithValues: names.enumerated().map { (String($0.offset), $0.element) })]
        let c = try UNetConfig(json: d)
        XCTAssertEqual(c.numClassEmbeds, 9)
        XCTAssertEqual(c.nullClassLabel, 8)
        XCTAssertEqual(c.numClasses, 8)
        XCTAssertEqual(c.classNames, names)
        // Written back (Onestep's exports keep the key) and read again.
        XCTAssertEqual(c.json()["null_class_label"] as? Int, 8)
        XCTAssertEqual(try UNetConfig(json: c.json()), c)
        // Without the key every embedding is a class.
        var plain = d
        plain["null_class_label"] = nil
        plain["id2label"] = nil
        XCTAssertEqual(try UNetConfig(json: plain).numClasses, 9)
        XCTAssertNil(try UNetConfig(json: plain).nullClassLabel)
        // The null label must be the last row.
        d["null_class_label"] = 3
        XCTAssertThrowsError(try UNetConfig(json: d)) { e in
            XCTAssertEqual((e as? ConfigError)?.key, "null_class_label", "\(e)")
            XCTAssertTrue("\(e)".contains("num_class_embeds - 1 = 8"), "\(e)")
        }
        // ... of a class-conditional model.
        var uncond = plain
        uncond["num_class_embeds"] = nil
        uncond["null_class_label"] = 0
        XCTAssertThrowsError(try UNetConfig(json: uncond)) { XCTAssertEqual(($0 as? ConfigError)?.key, "null_class_label", "\($0)") }
        // id2label names the real classes only: naming the null row is refused.
        d["null_class_label"] = 8
        d["id2label"] = Dictionary(uniqueKeysWithValues: (0..<9).map { (String($0), "n\($0)") })
        XCTAssertThrowsError(try UNetConfig(json: d)) { e in
            XCTAssertEqual((e as? ConfigError)?.key, "id2label", "\(e)")
            XCTAssertTrue("\(e)".contains("below 8"), "\(e)")
        }
    }

    func testServedLabelsExcludeTheNullLabel() throws {
        let p = try ImagePipeline.load(path: try tinyTeacherFolder())
        XCTAssertEqual(p.numClasses, 9)
        XCTAssertEqual(p.config.nullClassLabel, 9)
        guard case .success(let l) = p.resolveLabel("8") else { return XCTFail("label 8 is a real class") }
        XCTAssertEqual(l, 8)
        XCTAssertEqual(p.resolveLabel("9"), .failure(.outOfRange(9, 9)))
    }

    /// D_w = D_null + w (D_label - D_null) from one batched forward, against separate unguided calls combined
    /// by hand; w = 1 is the conditional teacher and w = 0 the unconditional one.
    func testGuidedTeacherIsTheHandComputedCombination() throws {
        let loaded = try TeacherLoader.load(path: try tinyTeacherFolder())
        let inner = loaded.denoiser
        let b = 4, per = 3 * 16 * 16
        var rng = TrainRandom(seed: 11)
        let x = (0..<(b * per)).map { _ in Float(rng.normal()) * 2 }
        let sigmas = [0.05, 0.7, 3.0, 40.0], labels = [0, 3, 8, 5]
        var dc = [Float](repeating: 0, count: b * per), du = dc
        inner.denoise(x, sigmas: sigmas, labels: labels, into: &dc)
        inner.denoise(x, sigmas: sigmas, labels: Array(repeating: 9, count: b), into: &du)
        // Tolerance: the same float operations on the same network outputs (the batched forward is
        // batch-invariant), so only the combination's rounding can differ.
        let tolerance: Float = 1e-5
        for w in [0.0, 1.0, 2.5, 7.0] {
            let guided = try GuidedTeacher(inner, scale: w)
            XCTAssertTrue(guided.description.contains("classifier-free guidance \(w == w.rounded() ? String(Int(w)) : String(w)) (null label 9)"), guided.description)
            var out = [Float](repeating: 0, count: b * per)
            guided.denoise(x, sigmas: sigmas, labels: labels, into: &out)
            var worst: Float = 0
            for j in 0..<(b * per) {
                let expected = du[j] + Float(w) * (dc[j] - du[j])
                worst = max(worst, abs(out[j] - expected) / max(1, abs(expected)))
            }
            print("guided teacher w \(w): worst relative difference from the hand combination \(worst)")
            XCTAssertLessThanOrEqual(worst, tolerance, "w \(w)")
            if w == 1 { XCTAssertEqual(zip(out, dc).map { abs($0 - $1) }.max()!, 0, accuracy: tolerance) }
            if w == 0 { XCTAssertEqual(zip(out, du).map { abs($0 - $1) }.max()!, 0, accuracy: tolerance) }
        }
        // The guided teacher is not the plain one (the null row differs from the classes' rows).
        XCTAssertGreaterThan(zip(dc, du).map { abs($0 - $1) }.max()!, 1e-4)
        // Its parameterisation and sigma range are the teacher's.
        let g = try GuidedTeacher(inner, scale: 3)
        XCTAssertEqual(g.sigmaRange, inner.sigmaRange)
        XCTAssertEqual(g.preconditioning(sigma: 2).cOut, inner.preconditioning(sigma: 2).cOut)
    }

    /// The pipeline's guided model call (serving, eval rows) is uncond + w (cond - uncond) of the raw network
    /// output, and a guided request gives the same image alone or in a batch.
    func testGuidedPipelineCombinesTheNetworkOutputAndIsBatchInvariant() throws {
        let p = try ImagePipeline.load(path: try tinyTeacherFolder())
        let w: Float = 3
        var rng = TrainRandom(seed: 5)
        let x = Tensor(shape: [2, 3, 16, 16], data: (0..<(2 * 768)).map { _ in Float(rng.normal()) })
        let call = p.modelCall(.guidedClassLabels([2, 7], null: 9, scale: w))
        let got = call(x, 500)
        let c = p.denoise(x, 500, [2, 7]), u = p.denoise(x, 500, [9, 9])
        let expected = zip(u.data, c.data).map { $0 + w * ($1 - $0) }
        XCTAssertEqual(got.shape, [2, 3, 16, 16])
        XCTAssertLessThanOrEqual(zip(got.data, expected).map { abs($0 - $1) }.max()!, 1e-5)

        let guided = try p.withScheduler("DDIMScheduler").withClassGuidance(Double(w))
        let reqs = [GenerationRequest(seed: 3, label: 1), GenerationRequest(seed: 4, label: 6)]
        let both = try ImagePipeline.pngs(guided.generate(reqs, steps: 4))
        let alone = try reqs.map { try ImagePipeline.pngs(guided.generate([$0], steps: 4))[0] }
        XCTAssertEqual(both, alone)
        let plain = try ImagePipeline.pngs(p.withScheduler("DDIMScheduler").generate(reqs, steps: 4))
        XCTAssertNotEqual(both, plain, "guidance 3 changed nothing")
    }

    func testBadGuidanceIsRefusedWithClearErrors() throws {
        let inner = try TeacherLoader.load(path: try tinyTeacherFolder()).denoiser
        for w in [-0.5, .nan, .infinity, 51] {
            XCTAssertThrowsError(try GuidedTeacher(inner, scale: w)) { XCTAssertTrue("\($0)".contains("is not a number in 0...50"), "\($0)") }
        }
        // A conditional teacher trained without label dropout has no unconditional output.
        let noNull = try TeacherLoader.load(path: try tinyTeacherFolder(null: false)).denoiser
        XCTAssertThrowsError(try GuidedTeacher(noNull, scale: 2)) { e in
            XCTAssertTrue("\(e)".contains("null_class_label") && "\(e)".contains("label dropout"), "\(e)")
        }
        XCTAssertThrowsError(try ImagePipeline.load(path: try tinyTeacherFolder(null: false)).withClassGuidance(2)) {
            XCTAssertTrue("\($0)".contains("null_class_label"), "\($0)")
        }
        // Eval specs.
        XCTAssertEqual(try EvalSpec(parsing: "w3=models/t:35@DDIMScheduler,guidance=3"),
                       EvalSpec(name: "w3", path: "models/t", steps: 35, scheduler: "DDIMScheduler", guidance: 3))
        XCTAssertEqual(try EvalSpec(parsing: "models/t:35@DDIMScheduler,guidance=1.5").name, "t-DDIMScheduler-35step-cfg1.5")
        for bad in ["models/t:35,guidance=x", "models/t,guidance=-1", "models/t,guidance=", "models/t,guidance=99"] {
            XCTAssertThrowsError(try EvalSpec(parsing: bad)) { XCTAssertTrue("\($0)".contains("is not a number in 0...50"), "\(bad): \($0)") }
        }
    }

    /// `onestep-distill student --teacher-guidance`: refused when the value is bad, the teacher has no null label or
    /// the method makes no teacher calls; a guided cd run says it is guided and exports a student of the real classes.
    func testStudentCommandTeacherGuidanceFlag() throws {
        let dir = makeTempDir()
        _ = try ShapesGenerator.write(count: 32, size: 16, seed: 0, to: dir + "/data")
        try writeTinyConfig(to: dir + "/tiny.json")
        var cfg = try UNetConfig.load(path: dir + "/tiny.json").withClasses(8)
        try ModelExport.writeEDMTeacher(TrainableUNet(config: cfg, seed: 3), to: dir + "/plain")
        cfg.numClassEmbeds = 9
        cfg.nullClassLabel = 8
        try ModelExport.writeEDMTeacher(TrainableUNet(config: cfg, seed: 3), to: dir + "/teacher")
        for t in ["plain", "teacher"] {
            try JSONSerialization.data(withJSONObject: ["_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"])
                .write(to: URL(fileURLWithPath: dir + "/\(t)/scheduler_config.json"))
        }
        XCTAssertEqual(try ImagePipeline.load(path: dir + "/teacher").config.nullClassLabel, 8, "the export keeps null_class_label")
        let common = ["--data", dir + "/data", "--steps", "2", "--batch", "4", "--sigmas", "6", "--log-every", "1",
                      "--checkpoint-every", "2", "--sample-every", "100000"]
        func run(_ args: [String]) throws -> (status: Int32, output: String) { try DistillProcess.run(["student"] + args + common) }
        var r = try run(["--teacher", dir + "/teacher", "--out", dir + "/a", "--teacher-guidance", "abc"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.output.contains("--teacher-guidance abc: expected a number in 0...50"), r.output)
        r = try run(["--teacher", dir + "/plain", "--out", dir + "/b", "--teacher-guidance", "2"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.output.contains("null_class_label"), r.output)
        r = try run(["--teacher", dir + "/teacher", "--out", dir + "/c", "--teacher-guidance", "2", "--method", "ect"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.output.contains("ect makes no teacher calls"), r.output)
        r = try run(["--teacher", dir + "/teacher", "--out", dir + "/cd", "--teacher-guidance", "2"])
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("classifier-free guidance 2 (null label 8)"), r.output)
        let student = try ImagePipeline.load(path: dir + "/cd")
        XCTAssertEqual(student.numClasses, 8)
        XCTAssertTrue(student.generate([GenerationRequest(seed: 1, label: 7)], steps: 1).data.allSatisfy { $0.isFinite })
    }
}

/// `onestep-distill teacher --label-dropout`: the EDM teacher gets the null label row and trains it.
final class TeacherLabelDropoutTests: XCTestCase {
    /// The null label's embedding row moves only when labels are dropped to it (Adam leaves a row with zero
    /// gradient exactly where it was).
    func testLabelDropoutTrainsTheNullRow() throws {
        let dir = makeTempDir()
        _ = try ShapesGenerator.write(count: 32, size: 16, seed: 0, to: dir + "/data")
        let data = try ImageFolder.load(path: dir + "/data", size: 16, channels: 3, warn: { _ in })
        try writeTinyConfig(to: dir + "/tiny.json")
        var cfg = try UNetConfig.load(path: dir + "/tiny.json").withClasses(8)
        (cfg.numClassEmbeds, cfg.nullClassLabel) = (9, 8)
        func nullRowChange(dropout: Double) throws -> Float {
            var s = TeacherSettings()
            (s.batch, s.labelDropout, s.optimizer.warmupSteps) = (8, dropout, 0)
            let objective = try EDMTeacherObjective(config: cfg, dataset: data, settings: s)
            let before = try XCTUnwrap(objective.model.store.tensors().first { $0.0 == "class_embedding.weight" }?.1)
            var rng = TrainRandom(seed: 1)
            for n in 0..<3 { _ = objective.step(number: n, rng: &rng) }
            let after = try XCTUnwrap(objective.model.store.tensors().first { $0.0 == "class_embedding.weight" }?.1)
            XCTAssertEqual(before.shape, [9, after.shape[1]])
            let d = after.shape[1]
            return zip(before.data[(8 * d)...], after.data[(8 * d)...]).map { abs($0 - $1) }.max()!
        }
        XCTAssertEqual(try nullRowChange(dropout: 0), 0, "the null row moved without label dropout")
        XCTAssertGreaterThan(try nullRowChange(dropout: 0.5), 1e-6, "label dropout 0.5 never trained the null row")
        // A model without a null label cannot drop labels.
        var s = TeacherSettings()
        s.labelDropout = 0.1
        XCTAssertThrowsError(try EDMTeacherObjective(config: try UNetConfig.load(path: dir + "/tiny.json").withClasses(8), dataset: data, settings: s)) {
            XCTAssertTrue("\($0)".contains("needs a class-conditional model with a null label"), "\($0)")
        }
    }

    func testTeacherCommandLabelDropoutWritesTheNullLabel() throws {
        let dir = makeTempDir()
        _ = try ShapesGenerator.write(count: 32, size: 16, seed: 0, to: dir + "/data")
        try writeTinyConfig(to: dir + "/tiny.json")
        let r = try DistillProcess.run(["teacher", "--data", dir + "/data", "--out", dir + "/t", "--config", dir + "/tiny.json",
                                        "--label-dropout", "0.2", "--steps", "2", "--batch", "4", "--log-every", "1",
                                        "--sample-every", "100000", "--checkpoint-every", "2", "--workers", "1"])
        XCTAssertEqual(r.status, 0, r.output)
        let p = try ImagePipeline.load(path: dir + "/t")
        XCTAssertEqual(p.config.numClassEmbeds, 9)
        XCTAssertEqual(p.config.nullClassLabel, 8)
        XCTAssertEqual(p.numClasses, 8)
        XCTAssertTrue(try p.withClassGuidance(2).generate([GenerationRequest(seed: 0, label: 3)], steps: 2).data.allSatisfy { $0.isFinite })
        let bad = try DistillProcess.run(["teacher", "--data", dir + "/data", "--out", dir + "/u", "--label-dropout", "2"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.output.contains("--label-dropout"), bad.output)
    }
}

/// `onestep-distill pipeline --teacher-label-dropout P --guidance W`: the settings reach the teacher's config, the
/// recorded settings and the eval rows; --guidance without a null label is refused before anything runs.
final class PipelineGuidanceTests: XCTestCase {
    func testPipelineSettingsCarryLabelDropoutAndGuidance() throws {
        var s = PipelineSettings.quick
        (s.teacher.labelDropout, s.guidance) = (0.2, 2)
        let names = ShapeClass.allCases.map(\.rawValue)
        let cfg = try s.teacherConfig(classNames: names)
        XCTAssertEqual(cfg.numClassEmbeds, names.count + 1)
        XCTAssertEqual(cfg.nullClassLabel, names.count)
        XCTAssertEqual(cfg.numClasses, names.count)
        XCTAssertNil(try PipelineSettings.quick.teacherConfig(classNames: names).nullClassLabel)
        let recorded = DistillPipeline.recordedSettings(s)
        XCTAssertEqual(recorded["guidance"] as? Double, 2)
        XCTAssertEqual(recorded["teacher_label_dropout"] as? Double, 0.2)
        XCTAssertEqual(DistillPipeline.differences(recorded: DistillPipeline.recordedSettings(.quick), current: recorded).map(\.description),
                       ["guidance 1.0 -> 2.0", "teacher_label_dropout 0.0 -> 0.2"])
        // Read back from JSON, a recorded 1.0 is the NSNumber 1: still equal to the current 1.0.
        let json = try JSONSerialization.jsonObject(with: JSONSerialization.data(withJSONObject: DistillPipeline.recordedSettings(.quick))) as! [String: Any]
        XCTAssertEqual(DistillPipeline.differences(recorded: json, current: DistillPipeline.recordedSettings(.quick)), [])
        let p = try DistillPipeline(dir: makeTempDir(), settings: s, force: false, shouldStop: { false }, log: { _ in })
        XCTAssertEqual(p.evalSpecs.first, EvalSpec(name: "teacher-heun18-guidance2.0", path: p.dir + "/teacher", steps: 18, guidance: 2))
    }

    /// The default run (the default model's recipe) trains the null label and distils guidance 3; --quick does
    /// neither; `--guidance none` keeps the null label but distils the plain conditional teacher. Checked through
    /// the binary's refusal of a folder a --quick run left, which names every recorded setting that differs.
    func testDefaultRunGuidesAndGuidanceNoneTurnsItOff() throws {
        let full = PipelineSettings(), quick = PipelineSettings.quick
        XCTAssertEqual(full.teacher.labelDropout, 0.15)
        XCTAssertEqual(full.guidance, 3)
        XCTAssertNotNil(try full.teacherConfig(classNames: ShapeClass.allCases.map(\.rawValue)).nullClassLabel)
        XCTAssertEqual(quick.teacher.labelDropout, 0)
        XCTAssertNil(quick.guidance)
        let dir = makeTempDir()
        var d = DistillPipeline.recordedSettings(.quick)
        d["stage_seconds"] = ["data": 3.0]
        try JSONSerialization.data(withJSONObject: d).write(to: URL(fileURLWithPath: dir + "/pipeline.json"))
        let byDefault = try DistillProcess.run(["pipeline", "--out", dir])
        XCTAssertNotEqual(byDefault.status, 0)
        for part in ["guidance 1.0 -> 3.0", "teacher_label_dropout 0.0 -> 0.15"] {
            XCTAssertTrue(byDefault.output.contains(part), "missing '\(part)' in: \(byDefault.output)")
        }
        let none = try DistillProcess.run(["pipeline", "--out", dir, "--guidance", "none"])
        XCTAssertNotEqual(none.status, 0)
        XCTAssertTrue(none.output.contains("teacher_label_dropout 0.0 -> 0.15"), none.output)
        XCTAssertFalse(none.output.contains("guidance 1.0 ->"), none.output)
    }

    func testPipelineGuidanceNeedsLabelDropout() throws {
        let r = try DistillProcess.run(["pipeline", "--quick", "--out", makeTempDir() + "/p", "--guidance", "2"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.output.contains("--guidance 2.0 needs a teacher with a null label: add --teacher-label-dropout"), r.output)
    }
}

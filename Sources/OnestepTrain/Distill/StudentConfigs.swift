// Student model configs derived from a teacher's.
import Foundation
import OnestepCore

public enum StudentConfigs {
    /// The teacher's config with other block_out_channels (same depth and block types).
    /// - Precondition: as many channel counts as the teacher has levels, each divisible by norm_num_groups.
    public static func narrower(_ teacher: UNetConfig, channels: [Int]) throws -> UNetConfig {
        guard channels.count == teacher.levels else {
            throw DataError("student channels \(channels) need \(teacher.levels) levels like the teacher's \(teacher.blockOutChannels)")
        }
        guard channels.allSatisfy({ $0 % teacher.normNumGroups == 0 }) else {
            throw DataError("student channels \(channels) must be multiples of norm_num_groups \(teacher.normNumGroups)")
        }
        var c = teacher
        c.blockOutChannels = channels
        return c
    }

    /// The "data" folder a teacher run's train.json records.
    public static func teacherDataFolder(_ teacherDir: String) throws -> String {
        let path = teacherDir + "/train.json"
        guard let data = FileManager.default.contents(atPath: path),
              let d = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any], let folder = d["data"] as? String else {
            throw DataError("\(path) does not name the training data; pass --data")
        }
        return folder
    }
}

/// What the four student methods' settings share, so a command reads them from the same flags in one place.
public protocol StudentRunSettings {
    var steps: Int { get set }
    var batch: Int { get set }
    /// EMA rate of the student weights that are saved (the model that ships).
    var saveEMA: Float { get set }
    var seed: UInt64 { get set }
    var logEvery: Int { get set }
    var checkpointEvery: Int { get set }
    var sampleEvery: Int { get set }
    var schedule: EDMSchedulerConfig { get set }
}

extension DistillSettings: StudentRunSettings {}
extension ECTSettings: StudentRunSettings {}
extension DMDSettings: StudentRunSettings {}
extension RegressionSettings: StudentRunSettings {}

extension StudentRunSettings {
    /// The record entries every student method shares (RunSettings.swift): steps, batch, ema, seed and the
    /// student's sigma schedule (set from the teacher: clamped to a DDPM teacher's range).
    var sharedRunSettings: RunSettings {
        RunSettings(["steps": String(steps), "batch": String(batch), "ema": RunSettings.text(saveEMA), "seed": String(seed),
                     "student-schedule": "sigma \(schedule.sigmaMin)..\(schedule.sigmaMax), sigma_data \(schedule.sigmaData), rho \(schedule.rho)",
                     "student-form": studentFormRecord])
    }

    /// The student's form (StudentParameterization.swift): a resume in the other form, or with another LCM terminal
    /// timestep K (`--lcm-timesteps`), would read the checkpoint's network as another function.
    private var studentFormRecord: String {
        guard let l = (self as? any TeacherCopyStudentSettings)?.lcmForm else { return "consistency" }
        return "lcm, \(l.alphasCumprod.count) timesteps, \(l.prediction.rawValue), original_inference_steps \(l.originalInferenceSteps)"
    }
}

extension OptimizerConfig {
    /// lr, warmup, clip, optimizer, weight-decay (the teacher command's flag names) and Adam's betas and epsilon,
    /// each name after `prefix`.
    func runSettings(prefix: String = "") -> RunSettings {
        var r = RunSettings([prefix + "lr": RunSettings.text(learningRate), prefix + "warmup": String(warmupSteps),
                             prefix + "clip": RunSettings.text(gradientClip), prefix + "optimizer": kind.rawValue,
                             prefix + "weight-decay": RunSettings.text(weightDecay)])
        r[prefix + "adam-betas"] = "\(beta1), \(beta2), eps \(epsilon)"
        return r
    }
}

// Writing a trained model as a diffusers-layout model directory that OnestepCore's ModelDirectory /
// ImagePipeline load as-is:
//   config.json                          UNetConfig.jsonString() (id2label + num_class_embeds when conditional)
//   diffusion_pytorch_model.safetensors  F32, diffusers key names
//   scheduler_config.json                {"_class_name": "OnestepEDMHeunScheduler", ...} for an EDM teacher (EDMHeunSampler)
import Foundation
import OnestepCore

public enum ModelExport {
    public static let weightsFile = "diffusion_pytorch_model.safetensors"

    /// Writes config, weights (from `values`, default the model's own) and the EDM scheduler config, each atomically.
    public static func writeEDMTeacher(_ model: TrainableUNet, weights values: UnsafePointer<Float>? = nil,
                                       scheduler: EDMSchedulerConfig = .init(), to dir: String,
                                       metadata: [String: String] = [:]) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try AtomicFile.write(model.config.jsonString(), to: dir + "/config.json")
        var w = SafetensorsWriter()
        w.metadata = metadata.merging(["format": "pt"], uniquingKeysWith: { a, _ in a })
        for (name, t) in model.store.tensors(from: values) { w.add(name, t) }
        try w.write(to: dir + "/" + weightsFile)
        try AtomicFile.write(try SamplerRegistry.json(for: EDMHeunSampler(config: scheduler)), to: dir + "/scheduler_config.json")
    }

    /// The small teacher the `teacher` command trains when no --config is given: three levels, one resnet per
    /// level, attention only at the lowest resolution and in the mid block.
    public static func defaultTeacherConfig(size: Int, channels: Int, classNames: [String]?) throws -> UNetConfig {
        var json: [String: Any] = [
            "sample_size": size, "in_channels": channels, "out_channels": channels,
            "block_out_channels": [32, 64, 64], "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
            "norm_num_groups": 8, "attention_head_dim": 32,
        ]
        if let names = classNames {
            json["num_class_embeds"] = names.count
            json["id2label"] = Dictionary(uniqueKeysWithValues: names.enumerated().map { (String($0.offset), $0.element) })
        }
        return try UNetConfig(json: json)
    }
}

// Writes a LatentBenchConfig as a diffusers StableDiffusionPipeline folder with random weights: model_index.json,
// scheduler/, tokenizer/ (copied from a golden folder: the real CLIP vocabulary), text_encoder/ (config.json +
// model.safetensors, transformers 5 key names), unet/ and vae/ (config.json + diffusion_pytorch_model.safetensors,
// float32). The bench then loads it through TextToImagePipeline.load, so load time and load-time memory are the
// real ones. Never committed: made at bench time in a temporary folder.
//
// Which tensors each file holds is recorded by building each network once on random weights (every key and
// shape the loader asks for); each file is then streamed tensor by tensor, so writing a 3.5 GB UNet never holds
// the whole file in memory. vae/ holds the decoder's tensors only: the loader skips encoder.* and quant_conv.*,
// which real folders carry (about 130 MiB more file for SD's AutoencoderKL, read and dropped at load).
import Foundation
import OnestepCore

enum BenchLatentFolder {
    /// The keys and shapes a network asked its weight source for, with random tensors (OnestepCore.RandomWeights:
    /// uniform +-1/sqrt(fan_in), seeded by the key, so writing a key later gives the same values).
    final class RecordingWeights: WeightSource {
        private(set) var shapes: [String: [Int]] = [:]
        let random = OnestepCore.RandomWeights()
        func contains(_ key: String) -> Bool { true }
        func tensor(_ key: String, shape: [Int]) throws -> Tensor {
            shapes[key] = shape
            return try random.tensor(key, shape: shape)
        }
        var parameterCount: Int { shapes.values.reduce(0) { $0 + $1.reduce(1, *) } }
    }

    /// What `write` made: the parameter count of each part (the float32 bytes are 4x) and the seconds it took.
    struct Written {
        var textEncoderParameters = 0, unetParameters = 0, decoderParameters = 0
        var seconds = 0.0
        var parameters: Int { textEncoderParameters + unetParameters + decoderParameters }
    }

    /// Writes `config` into `folder` (created; must not exist or be empty), copying `tokenizer`'s files.
    /// - Throws: ModelLoadError for a config the networks refuse (it names the key), or a file that cannot be written.
    static func write(_ config: LatentBenchConfig, to folder: String, tokenizer: String) throws -> Written {
        let start = DispatchTime.now().uptimeNanoseconds
        let fm = FileManager.default
        var out = Written()
        for sub in ["scheduler", "tokenizer", "text_encoder", "unet", "vae"] {
            try fm.createDirectory(atPath: folder + "/" + sub, withIntermediateDirectories: true)
        }
        let vaeClass = config.vae["_class_name"] as? String ?? "AutoencoderKL"
        let index: [String: Any] = [
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1", "requires_safety_checker": false,
            "feature_extractor": [NSNull(), NSNull()], "image_encoder": [NSNull(), NSNull()], "safety_checker": [NSNull(), NSNull()],
            "scheduler": ["diffusers", config.scheduler["_class_name"] as? String ?? "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", vaeClass],
        ]
        try writeJSON(index, to: folder + "/model_index.json")
        try writeJSON(config.scheduler, to: folder + "/scheduler/scheduler_config.json")
        for file in try fm.contentsOfDirectory(atPath: tokenizer) where !file.hasPrefix(".") {
            try fm.copyItem(atPath: tokenizer + "/" + file, toPath: folder + "/tokenizer/" + file)
        }

        // Each part: record its tensors (the network is built and dropped at once), then stream them to disk.
        do {
            let rec = RecordingWeights()
            _ = try CLIPTextModel(config: try CLIPTextConfig(json: config.textEncoder), weights: rec)
            try writeJSON(config.textEncoder, to: folder + "/text_encoder/config.json")
            try writeSafetensors(rec.shapes, source: rec.random, to: folder + "/text_encoder/model.safetensors")
            out.textEncoderParameters = rec.parameterCount
        }
        do {
            let rec = RecordingWeights()
            _ = try UNet2DConditionModel(config: try UNet2DConditionConfig(json: config.unet), weights: rec)
            try writeJSON(config.unet, to: folder + "/unet/config.json")
            try writeSafetensors(rec.shapes, source: rec.random, to: folder + "/unet/diffusion_pytorch_model.safetensors")
            out.unetParameters = rec.parameterCount
        }
        do {
            let rec = RecordingWeights()
            if vaeClass == "AutoencoderTiny" {
                _ = try AutoencoderTinyDecoder(config: try AutoencoderTinyConfig(json: config.vae), weights: rec)
            } else {
                _ = try AutoencoderKLDecoder(config: try AutoencoderKLConfig(json: config.vae), weights: rec)
            }
            try writeJSON(config.vae, to: folder + "/vae/config.json")
            try writeSafetensors(rec.shapes, source: rec.random, to: folder + "/vae/diffusion_pytorch_model.safetensors")
            out.decoderParameters = rec.parameterCount
        }
        out.seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        return out
    }

    static func writeJSON(_ object: [String: Any], to path: String) throws {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        guard FileManager.default.createFile(atPath: path, contents: data) else {
            throw ModelLoadError(path: path, problem: "cannot be written (is the folder writable and the disk not full?)")
        }
    }

    /// A float32 safetensors file of `shapes`, tensors in key order (as safetensors' writer lays them out), each
    /// drawn from `source` and written as soon as it is made.
    static func writeSafetensors(_ shapes: [String: [Int]], source: WeightSource, to path: String) throws {
        let keys = shapes.keys.sorted()
        var header: [String: Any] = ["__metadata__": ["format": "pt"]]
        var offset = 0
        for k in keys {
            let bytes = shapes[k]!.reduce(1, *) * 4
            header[k] = ["dtype": "F32", "shape": shapes[k]!, "data_offsets": [offset, offset + bytes]] as [String: Any]
            offset += bytes
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (8 + json.count) % 8 != 0 { json.append(0x20) }  // data section 8-byte aligned, padded with spaces
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw ModelLoadError(path: path, problem: "cannot be created (is the folder writable?)")
        }
        defer { try? h.close() }
        var n = UInt64(json.count).littleEndian
        try h.write(contentsOf: Data(bytes: &n, count: 8))
        try h.write(contentsOf: json)
        for k in keys {
            let t = try source.tensor(k, shape: shapes[k]!)
            // safetensors is little-endian; so is every CPU this builds for (x86-64, aarch64 Linux).
            try t.data.withUnsafeBytes { try h.write(contentsOf: Data($0)) }
        }
    }

    /// Elements of the tensors a safetensors file holds (header only, the data is not read), except keys starting
    /// with one of `skipping` (those the loader ignores); 0 when the file is missing or unreadable.
    static func storedParameters(_ path: String, skipping: [String] = []) -> Int {
        guard let h = FileHandle(forReadingAtPath: path) else { return 0 }
        defer { try? h.close() }
        let lengthBytes = [UInt8](h.readData(ofLength: 8))
        guard lengthBytes.count == 8 else { return 0 }
        let length = lengthBytes.enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        guard length > 0, length < SafetensorsFile.maxHeaderBytes,
              let header = try? JSONSerialization.jsonObject(with: h.readData(ofLength: length)) as? [String: Any] else { return 0 }
        var total = 0
        for (key, value) in header where key != "__metadata__" && !skipping.contains(where: { key.hasPrefix($0) }) {
            total += ((value as? [String: Any])?["shape"] as? [Int])?.reduce(1, *) ?? 0
        }
        return total
    }

    /// The tokenizer/ folder to copy: `flag` if given, else the golden pipeline's (ONESTEP_GOLDEN, then
    /// ../shared/golden and /work/shared/golden).
    static func tokenizerFolder(flag: String?, golden: String) throws -> String {
        if let flag { return flag }
        var roots = ["../shared/golden", "/work/shared/golden"]
        if let env = ProcessInfo.processInfo.environment["ONESTEP_GOLDEN"] { roots.insert(env, at: 0) }
        for r in roots where FileManager.default.fileExists(atPath: "\(r)/\(golden)/tokenizer/vocab.json") {
            return "\(r)/\(golden)/tokenizer"
        }
        throw ModelLoadError(path: "\(golden)/tokenizer", problem: "not found under \(roots.joined(separator: ", ")); the bench copies a CLIP tokenizer folder (vocab.json, merges.txt, tokenizer_config.json) into the model it writes: pass --tokenizer DIR or set ONESTEP_GOLDEN")
    }
}

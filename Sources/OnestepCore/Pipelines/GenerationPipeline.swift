// The one type a server or command keeps for "a model folder": a pixel pipeline (UNet2DModel, ImagePipeline) or a
// latent text-to-image pipeline (TextToImagePipeline), told apart by model_index.json's denoiser class. `fields`
// is the one place that says which request fields a model takes; /v1/models publishes it.
import Foundation

public enum GenerationPipeline: Sendable {
    case pixel(ImagePipeline)
    case text(TextToImagePipeline)

    /// Loads any supported model folder: a diffusers pipeline whose model_index.json lists a UNet2DConditionModel
    /// is a text-to-image pipeline; anything else goes through ImagePipeline.load (pixel UNet2DModel folders).
    /// - Throws: ModelLoadError naming the file and the reason.
    public static func load(path: String, name: String? = nil, precision: ConvPrecision? = nil,
                            variant: String? = nil) throws -> GenerationPipeline {
        let indexPath = path + "/model_index.json"
        if FileManager.default.fileExists(atPath: indexPath), try ModelIndex(path: indexPath).isTextToImage {
            return .text(try TextToImagePipeline.load(path: path, name: name, variant: variant))
        }
        return .pixel(try ImagePipeline.load(path: path, name: name, precision: precision))
    }

    public var name: String {
        switch self { case .pixel(let p): return p.name; case .text(let p): return p.name }
    }

    public var sampler: any Sampler {
        switch self { case .pixel(let p): return p.sampler; case .text(let p): return p.sampler }
    }

    /// Request fields the model takes (the `fields` array of its /v1/models entry).
    public var fields: [String] {
        switch self { case .pixel(let p): return p.fields; case .text(let p): return p.fields }
    }
}

extension ImagePipeline {
    /// Request fields a pixel model takes: seed, steps, n, and label for a class-conditional model.
    public var fields: [String] { (numClasses == nil ? [] : ["label"]) + ["seed", "steps", "n"] }
}

// diffusers' component table: model_index.json maps each sub-folder to (library, class), e.g.
//   {"_class_name": "DDIMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"]}
// Optional components diffusers saved as absent are [null, null] and skipped. A class this build cannot load is
// refused naming the class and the folder, so a pipeline is never served with a part silently ignored.
import Foundation

public struct ModelIndex: Sendable {
    /// The role a component plays in a pipeline.
    public enum Role: String, Sendable, CaseIterable {
        case tokenizer, textEncoder = "text_encoder", denoiser, scheduler, decoder
    }

    public struct Component: Sendable, Equatable {
        public let folder: String
        public let library: String
        public let className: String
        public let role: Role
    }

    /// Classes this build loads, by role (pixel pipelines: UNet2DModel + scheduler; text-to-image pipelines:
    /// TextToImagePipeline's tokenizer, text encoder, UNet2DConditionModel, scheduler and decoder).
    static func role(of className: String) -> Role? {
        switch className {
        case "UNet2DModel", "UNet2DConditionModel": return .denoiser
        case "CLIPTokenizer", "CLIPTokenizerFast": return .tokenizer
        case "CLIPTextModel": return .textEncoder
        case "AutoencoderKL", "AutoencoderTiny": return .decoder
        default: break
        }
        if SamplerRegistry.type(named: className) != nil { return .scheduler }
        return nil
    }

    public let path: String
    /// `_class_name` of the pipeline (DDPMPipeline, ConsistencyModelPipeline, ...), informational.
    public let pipelineClass: String?
    public let components: [Component]

    public init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelLoadError(path: path, problem: "cannot be read (is it a readable file?)")
        }
        try self.init(json: data, path: path)
    }

    public init(json data: Data, path: String) throws {
        guard let d = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelLoadError(path: path, problem: "is not a JSON object")
        }
        self.path = path
        pipelineClass = d["_class_name"] as? String
        var parts: [Component] = []
        for (folder, v) in d.sorted(by: { $0.key < $1.key }) where !folder.hasPrefix("_") {
            guard let pair = v as? [Any], pair.count == 2 else {
                // Pipeline options (e.g. "requires_safety_checker": true) are not components.
                continue
            }
            if pair[0] is NSNull && pair[1] is NSNull { continue }
            guard let lib = pair[0] as? String, let cls = pair[1] as? String else {
                throw ModelLoadError(path: path, problem: "entry '\(folder)': \(v) is not [library, class]")
            }
            guard let role = Self.role(of: cls) else {
                throw ModelLoadError(path: path, problem: "folder '\(folder)' holds a \(cls) (\(lib)), which this build cannot load; supported classes: UNet2DModel, UNet2DConditionModel, CLIPTokenizer, CLIPTextModel, AutoencoderKL, AutoencoderTiny, \(SamplerRegistry.classNames.joined(separator: ", "))")
            }
            guard !folder.contains("/"), folder != ".." else {
                throw ModelLoadError(path: path, problem: "entry '\(folder)' is not a plain folder name")
            }
            parts.append(Component(folder: folder, library: lib, className: cls, role: role))
        }
        components = parts
        for r in Role.allCases where parts.filter({ $0.role == r }).count > 1 {
            throw ModelLoadError(path: path, problem: "lists \(parts.filter { $0.role == r }.map(\.folder).joined(separator: " and ")) as \(r.rawValue); a pipeline has one")
        }
    }

    public func component(_ role: Role) -> Component? { components.first { $0.role == role } }
    public func folder(for role: Role) -> String? { component(role)?.folder }
    public func className(for role: Role) -> String? { component(role)?.className }

    /// True when the denoiser is a UNet2DConditionModel (a TextToImagePipeline folder).
    public var isTextToImage: Bool { className(for: .denoiser) == "UNet2DConditionModel" }

    /// The UNet2DModel folder; refuses a pipeline without one, or a text-to-image pipeline (load that with
    /// TextToImagePipeline or GenerationPipeline).
    public func unetFolder() throws -> String {
        if isTextToImage {
            throw ModelLoadError(path: path, problem: "describes a text-to-image pipeline (UNet2DConditionModel); load it with GenerationPipeline.load / TextToImagePipeline.load, not as a pixel model")
        }
        guard let f = folder(for: .denoiser) else {
            throw ModelLoadError(path: path, problem: "lists no UNet2DModel component; an image pipeline needs one (e.g. \"unet\": [\"diffusers\", \"UNet2DModel\"])")
        }
        return f
    }
}

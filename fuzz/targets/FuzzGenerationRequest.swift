// Fuzz target: decoding and validating generation requests (Sources/OnestepServer/GenerationParams.swift), as
// Routes.swift does for POST /v1/images/generations, POST /v1/generate (JSON body) and GET /v1/generate (query
// string parsed by HTTP1's HTTPQuery).
//
// Every input is tried both ways: as a JSON body, and as the query string after `?`. Validation runs against
// three tiny in-memory models (zero weights, built once) that cover the branches of the validator: a conditional
// consistency model with class names, a conditional EDM teacher without names (up to 64 steps), and an
// unconditional model. Checked besides "no crash":
//   - a refusal is a RequestError whose message, sent in the project's JSON error envelope, is valid JSON that
//     reads back as the same message (messages quote client input);
//   - an accepted request names a loaded model, asks for 1...maxImages images within the model's step range, with
//     seeds that follow each other and labels that exist.
import Foundation
import HTTP1
import OnestepCore
@testable import OnestepServer

/// Every tensor zero: validation needs a model's config and sampler, never its weights.
private struct ZeroWeights: WeightSource {
    func tensor(_ key: String, shape: [Int]) throws -> Tensor { Tensor(zeros: shape) }
    func contains(_ key: String) -> Bool { true }
}

private func tinyPipeline(name: String, classes: [String: Any], sampler: any Sampler) -> ImagePipeline {
    var json: [String: Any] = [
        "sample_size": 8, "block_out_channels": [8, 8], "norm_num_groups": 4, "attention_head_dim": 8,
        "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    ]
    json.merge(classes) { _, new in new }
    do {
        let model = try UNet2DModel(config: try UNetConfig(json: json), weights: ZeroWeights())
        return ImagePipeline(name: name, model: model, sampler: sampler, weightDType: "float32")
    } catch {
        fatalError("fuzz set-up: the tiny \(name) model does not build: \(error)")
    }
}

private let maxImages = ServerOptions().maxImagesPerRequest

/// The models requests are validated against; "shapes" is the default, as the only sorted-first name.
private let registry: ModelRegistry = {
    var fewSteps = ConsistencySchedulerConfig()
    fewSteps.numTrainTimesteps = 2
    let pipelines = [
        tinyPipeline(name: "shapes",
                     classes: ["num_class_embeds": 4,
                               "id2label": ["0": "circle", "1": "square", "2": "triangle", "3": "Ring"]],
                     sampler: ConsistencySampler()),
        tinyPipeline(name: "teacher", classes: ["num_class_embeds": 3], sampler: EDMHeunSampler()),
        tinyPipeline(name: "unconditional", classes: [:], sampler: ConsistencySampler(config: fewSteps)),
    ]
    do { return try ModelRegistry(pipelines: pipelines, preferred: "shapes") } catch {
        fatalError("fuzz set-up: registry: \(error)")
    }
}()

/// Validates like Router.generate and checks the outcome.
private func validate(_ decode: () throws(RequestError) -> RawGenerationFields) {
    do {
        let raw = try decode()
        let params = try raw.validate(models: registry, maxImages: maxImages, randomSeed: { 0x1234_5678_9ABC })
        checkAccepted(params)
    } catch {
        checkRefusal(error)
    }
}

private func checkAccepted(_ params: GenerationParams) {
    guard let pipeline = registry[params.model] else {
        fuzzInvariant(false, "accepted a request for model '\(params.model)', which is not loaded")
        return
    }
    fuzzInvariant((1...maxImages).contains(params.images.count), "accepted \(params.images.count) images")
    fuzzInvariant(pipeline.sampler.stepRange.contains(params.steps),
                  "accepted \(params.steps) steps; \(params.model) allows \(pipeline.sampler.stepRange)")
    if let deadline = params.deadlineMs { fuzzInvariant(deadline >= 1, "accepted deadline_ms \(deadline)") }
    for (index, image) in params.images.enumerated() {
        fuzzInvariant(image.seed == params.images[0].seed &+ UInt64(index), "seeds do not follow each other")
        if let classes = pipeline.numClasses {
            fuzzInvariant(image.label.map { (0..<classes).contains($0) } ?? false,
                          "label \(String(describing: image.label)) for a model with \(classes) classes")
        } else {
            fuzzInvariant(image.label == nil, "a label for the unconditional model")
        }
    }
}

private func checkRefusal(_ error: RequestError) {
    fuzzInvariant(!error.message.isEmpty, "a refusal without a message")
    let response = HTTPResponse.error(.badRequest, message: error.message, type: error.type)
    let decoded = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any]
    let message = (decoded?["error"] as? [String: Any])?["message"] as? String
    fuzzInvariant(message == error.message, """
        the error body does not read back as its message:
          message: \(error.message.debugDescription)
          body:    \(String(decoding: response.body, as: UTF8.self).debugDescription)
        """)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzGenerationRequest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzBytes(data, size)
    // POST: the body is read as JSON whatever its Content-Type says.
    validate { () throws(RequestError) in try RawGenerationFields.fromJSON(input) }
    // GET: the same bytes as the query string of /v1/generate?... (the parser only lets visible ASCII through
    // a request target, but HTTPQuery itself takes any text, so any text is tried).
    let query = HTTPQuery(parsing: Substring(String(decoding: input, as: UTF8.self)))
    validate { () throws(RequestError) in try RawGenerationFields.fromQuery(query.items) }
    return 0
}

// The training UNet against the inference UNet (same weights, same outputs) and against finite differences.
import XCTest
@testable import OnestepTrain
import OnestepCore

enum TinyConfigs {
    /// Class-conditional, default time conditioning, attention at the lowest level and in the mid block.
    static func conditional() throws -> UNetConfig {
        try UNetConfig(json: [
            "sample_size": 8, "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16], "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "norm_num_groups": 4, "attention_head_dim": 8, "num_class_embeds": 3,
        ])
    }

    /// Everything else the subset allows: scale_shift, resnet resamplers, Downsample2D padding 0, centred input,
    /// a mid-block scale factor, an unconditional model.
    static func variants() throws -> UNetConfig {
        try UNetConfig(json: [
            "sample_size": 8, "in_channels": 3, "out_channels": 3, "block_out_channels": [4, 8, 8], "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "ResnetDownsampleBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "ResnetUpsampleBlock2D", "UpBlock2D"],
            "norm_num_groups": 2, "attention_head_dim": 4, "resnet_time_scale_shift": "scale_shift",
            "downsample_padding": 0, "center_input_sample": true, "mid_block_scale_factor": 1.414, "time_embedding_dim": 12,
        ])
    }
}

final class UNetTests: XCTestCase {
    /// The served model must compute what was trained: training forward vs UNet2DModel.forward.
    static let forwardRelativeL2 = 1e-5

    func checkForwardMatches(_ cfg: UNetConfig) throws {
        let model = TrainableUNet(config: cfg, seed: 11)
        let reference = try model.inferenceModel()
        XCTAssertEqual(reference.parameterCount, model.parameterCount)
        XCTAssertEqual(Set(reference.parameters.map(\.0)), Set(model.parameters.map(\.0)))
        // Both models are built from one plan: the trainable store registers exactly its tensors and shapes
        // (in its own registration order, which checkpoints of its layout depend on).
        let plan = Dictionary(uniqueKeysWithValues: UNet2DPlan(config: cfg).tensors.map { ($0.key, $0.shape) })
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: model.parameters.map { ($0.0, $0.1.shape) }), plan)
        let n = 3, per = cfg.inChannels * cfg.sampleSize * cfg.sampleSize
        let x = Tensor(shape: [n, cfg.inChannels, cfg.sampleSize, cfg.sampleSize], data: GradientCheck.random(n * per, seed: 5))
        let t: [Float] = [-1100, 0, 1095]  // 250 ln(sigma) for sigma 0.012, 1, 80
        let labels = cfg.numClassEmbeds.map { k in (0..<n).map { $0 % k } }
        let y = model.forward(x, timesteps: t, classLabels: labels)
        let expected = reference.referenceForward(x, timesteps: t, classLabels: labels)
        let rel = TensorError.relativeL2(y.data, expected.data)
        XCTAssertLessThanOrEqual(rel, Self.forwardRelativeL2, "training forward differs from UNet2DModel.referenceForward by \(rel)")
    }

    func testForwardMatchesInferenceModel() throws {
        try checkForwardMatches(TinyConfigs.conditional())
        try checkForwardMatches(TinyConfigs.variants())
    }

    func checkGradients(_ cfg: UNetConfig, _ what: String) {
        let model = TrainableUNet(config: cfg, seed: 3)
        let n = 2, s = cfg.sampleSize
        let x = CheckedInput(GradientCheck.random(n * cfg.inChannels * s * s, seed: 4))
        let t: [Float] = [-300, 400]
        let labels = cfg.numClassEmbeds.map { k in (0..<n).map { ($0 + 1) % k } }
        let r = GradientCheck.run(store: model.store, inputs: [], outputCount: n * cfg.outChannels * s * s, perTensor: 2,
                                  forward: { UnsafePointer(model.forward(x.pointer, batch: n, timesteps: t, classLabels: labels)) },
                                  backward: { dy in model.backward(dy); return [] })
        GradientCheck.assertPasses(r, what)
    }

    /// Every tensor of the model, including the time MLP and the class embedding, against finite differences.
    func testWholeModelGradients() throws {
        checkGradients(try TinyConfigs.conditional(), "conditional UNet")
        checkGradients(try TinyConfigs.variants(), "variant UNet")
    }

    func testCloneCopiesValuesNotGradients() throws {
        let a = TrainableUNet(config: try TinyConfigs.conditional(), seed: 1)
        a.store.grads[0] = 5
        let b = a.clone()
        XCTAssertEqual(Array(UnsafeBufferPointer(start: a.store.values, count: a.store.count)),
                       Array(UnsafeBufferPointer(start: b.store.values, count: b.store.count)))
        XCTAssertEqual(b.store.grads[0], 0)
    }
}

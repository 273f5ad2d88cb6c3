// ResnetBlock2D (matches diffusers models/resnet.py ResnetBlock2D with pre_norm, silu, dropout 0,
// time_embedding_norm "default" or "scale_shift", optional up/down resampling with kernel=None, 1x1 conv shortcut).
// Structure only: the serving forward is in UNet2DModel+Forward.swift, the NCHW reference in
// UNet2DModel+Reference.swift.

public enum ResnetResample: Sendable { case none, up, down }

public struct ResnetBlock: Sendable {
    public var norm1: GroupNormLayer
    public var conv1: Conv2DLayer
    public var timeProjection: LinearLayer
    public var norm2: GroupNormLayer
    public var conv2: Conv2DLayer
    public var shortcut: Conv2DLayer?
    public var resample: ResnetResample
    public var conditioning: TimeConditioning
    public var outputScaleFactor: Float

    public init(_ plan: UNet2DPlan.Resnet, _ src: WeightSource) throws {
        norm1 = try GroupNormLayer(plan.norm1, src)
        conv1 = try Conv2DLayer(plan.conv1, src)
        timeProjection = try LinearLayer(plan.timeProjection, src)
        norm2 = try GroupNormLayer(plan.norm2, src)
        conv2 = try Conv2DLayer(plan.conv2, src)
        shortcut = try plan.shortcut.map { try Conv2DLayer($0, src) }
        resample = plan.resample
        conditioning = plan.conditioning
        outputScaleFactor = plan.outputScaleFactor
    }

    /// Checkpoint order, as UNet2DPlan.Resnet.layers.
    mutating func visitLayers<V: LayerVisitor>(_ v: inout V) {
        v.visit(&norm1)
        v.visit(&conv1)
        v.visit(&timeProjection)
        v.visit(&norm2)
        v.visit(&conv2)
        if shortcut != nil { v.visit(&shortcut!) }
    }
}

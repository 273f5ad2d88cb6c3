// TEMPORARY (t2i-serve): main's merge ce7b939 names a "LinearLayer convenience init for plan-less networks" that
// CLIPTextModel calls, but the commit does not contain it, so main does not build. This stand-in lets the branch
// build; delete it when main carries the real one (merge conflict-free: a separate file).
public extension LinearLayer {
    /// A linear layer `prefix`.weight (out, in), `prefix`.bias (out) outside any LayerPlan.
    init(_ prefix: String, _ src: WeightSource, in inFeatures: Int, out outFeatures: Int) throws {
        try self.init(LayerSpec(prefix, .linear(inFeatures: inFeatures, outFeatures: outFeatures), role: .attentionProjection, pixels: 1), src)
    }
}

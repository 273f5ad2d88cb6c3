// ResnetBlock2D (matches diffusers models/resnet.py ResnetBlock2D with pre_norm, silu, dropout 0,
// time_embedding_norm "default" or "scale_shift", optional up/down resampling with kernel=None, 1x1 conv shortcut).

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

    public init(_ prefix: String, _ src: WeightSource, in cin: Int, out cout: Int, temb: Int, groups: Int, eps: Float,
                conditioning: TimeConditioning, resample: ResnetResample = .none, outputScaleFactor: Float = 1) throws {
        norm1 = try GroupNormLayer(prefix + ".norm1", src, channels: cin, groups: groups, eps: eps)
        conv1 = try Conv2DLayer(prefix + ".conv1", src, geometry: ConvGeometry(inChannels: cin, outChannels: cout, kernel: 3, padding: 1))
        let projected = conditioning == .scaleShift ? 2 * cout : cout
        timeProjection = try LinearLayer(prefix + ".time_emb_proj", src, in: temb, out: projected)
        norm2 = try GroupNormLayer(prefix + ".norm2", src, channels: cout, groups: groups, eps: eps)
        conv2 = try Conv2DLayer(prefix + ".conv2", src, geometry: ConvGeometry(inChannels: cout, outChannels: cout, kernel: 3, padding: 1))
        shortcut = cin != cout
            ? try Conv2DLayer(prefix + ".conv_shortcut", src, geometry: ConvGeometry(inChannels: cin, outChannels: cout, kernel: 1, padding: 0))
            : nil
        self.resample = resample
        self.conditioning = conditioning
        self.outputScaleFactor = outputScaleFactor
    }

    /// x (N, Cin, H, W), activated time embedding silu(temb) (N, T) -> (N, Cout, H', W').
    public func callAsFunction(_ x: Tensor, activatedTemb: Tensor) -> Tensor {
        var input = x
        var h = norm1(x, silu: true)
        switch resample {
        case .none: break
        case .up:
            input = Resample.upsampleNearest2x(input)
            h = Resample.upsampleNearest2x(h)
        case .down:
            input = Resample.averagePool2x(input)
            h = Resample.averagePool2x(h)
        }
        h = conv1(h)
        let t = timeProjection(activatedTemb)  // (N, Cout) or (N, 2*Cout)
        let n = h.shape[0], c = h.shape[1], hw = h.shape[2] * h.shape[3]
        switch conditioning {
        case .default:
            for i in 0..<n { for ch in 0..<c {
                let tv = t.data[i * c + ch], base = (i * c + ch) * hw
                for j in 0..<hw { h.data[base + j] += tv }
            } }
            h = norm2(h, silu: true)
        case .scaleShift:
            h = norm2(h)
            for i in 0..<n { for ch in 0..<c {
                let scale = 1 + t.data[i * 2 * c + ch], shift = t.data[i * 2 * c + c + ch], base = (i * c + ch) * hw
                for j in 0..<hw { h.data[base + j] = Activations.silu(h.data[base + j] * scale + shift) }
            } }
        }
        h = conv2(h)
        if let shortcut { input = shortcut(input) }
        var out = add(input, h)
        if outputScaleFactor != 1 {
            for i in out.data.indices { out.data[i] /= outputScaleFactor }
        }
        return out
    }

    public var parameters: [(String, Tensor)] {
        norm1.parameters + conv1.parameters + timeProjection.parameters + norm2.parameters + conv2.parameters
            + (shortcut?.parameters ?? [])
    }
}

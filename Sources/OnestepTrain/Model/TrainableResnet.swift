// ResnetBlock2D, trainable, built from the same UNet2DPlan.Resnet as OnestepCore's ResnetBlock:
//   a = silu(norm1(x)); [resample x and a]; h = conv1(a) + proj(silu(temb)); h = silu(norm2(h))  ("default")
//                                                  or h = silu(norm2(h) * (1 + scale) + shift)   ("scale_shift")
//   out = (shortcut(x) + conv2(h)) / output_scale_factor
// Legend: N batch, Cin/Cout channels, H/W size before resampling, T time-embedding width.
import OnestepCore

public final class TrainableResnet {
    public let inChannels: Int, outChannels: Int
    public let norm1: TrainableGroupNorm, conv1: TrainableConv2D, timeProjection: TrainableLinear
    public let norm2: TrainableGroupNorm, conv2: TrainableConv2D, shortcut: TrainableConv2D?
    public let resample: ResnetResample, conditioning: TimeConditioning, outputScaleFactor: Float
    private let resampledInput = Buffer(), resampledAct = Buffer(), modulated = Buffer(), output = Buffer()
    private let gradBuffer = Buffer(), dModulated = Buffer(), dTime = Buffer(), dAct = Buffer(), inputGradient = Buffer()
    private let shortcutInput = Buffer(), dShortcut = Buffer(), dResampled = Buffer()
    private var n = 0, h = 0, w = 0, ho = 0, wo = 0
    private var timeOut: UnsafePointer<Float>?, normed2: UnsafePointer<Float>?

    /// The block UNet2DPlan describes, registering its tensors under the plan's keys.
    public init(_ plan: UNet2DPlan.Resnet, _ store: ParameterStore) {
        (inChannels, outChannels) = (plan.inChannels, plan.outChannels)
        norm1 = TrainableGroupNorm(plan.norm1, store, silu: true)
        conv1 = TrainableConv2D(plan.conv1, store)
        timeProjection = TrainableLinear(plan.timeProjection, store)
        // With scale_shift the SiLU comes after the modulation, so norm2 leaves it out.
        norm2 = TrainableGroupNorm(plan.norm2, store, silu: plan.conditioning == .default)
        conv2 = TrainableConv2D(plan.conv2, store)
        shortcut = plan.shortcut.map { TrainableConv2D($0, store) }
        (conditioning, resample, outputScaleFactor) = (plan.conditioning, plan.resample, plan.outputScaleFactor)
    }

    /// A stand-alone block (layer tests).
    public convenience init(_ prefix: String, _ store: ParameterStore, in cin: Int, out cout: Int, temb: Int, groups: Int, eps: Float,
                            conditioning: TimeConditioning, resample: ResnetResample = .none, outputScaleFactor: Float = 1) {
        self.init(UNet2DPlan.resnet(prefix, in: cin, out: cout, temb: temb, groups: groups, eps: eps, conditioning: conditioning,
                                    side: 0, resample: resample, outputScaleFactor: outputScaleFactor), store)
    }

    public func outputSize(height: Int, width: Int) -> (Int, Int) {
        switch resample {
        case .none: return (height, width)
        case .up: return (2 * height, 2 * width)
        case .down: return (height / 2, width / 2)
        }
    }

    /// x (N, Cin, H, W), activated time embedding (N, T) -> (N, Cout, Ho, Wo). Both inputs must stay unchanged
    /// until `backward`. Inside, the block runs channel-major (C, N, H, W) from norm1's output to the residual sum,
    /// as the conv kernels want it: norm1 writes its output channel-major, norm2 and the convs stay so, and the
    /// residual sum reads conv2 channel-major, so there are no layout copies besides the shortcut's input.
    public func forward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                        activatedTemb: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        (n, h, w) = (batch, height, width)
        (ho, wo) = outputSize(height: height, width: width)
        let cin = inChannels, cout = outChannels, p = ho * wo
        var xr = x
        var a = UnsafePointer(norm1.forward(x, batch: batch, spatial: height * width, from: .batchMajor, to: .channelMajor))
        if resample != .none {
            // Both resamplers work plane by plane, so they apply to x (N, Cin, ...) and a (Cin, N, ...) alike.
            let xb = resampledInput.ensure(batch * cin * p), ab = resampledAct.ensure(batch * cin * p)
            if resample == .up {
                Resample.upsampleNearest2x(x, planes: batch * cin, height: height, width: width, y: xb)
                Resample.upsampleNearest2x(a, planes: batch * cin, height: height, width: width, y: ab)
            } else {
                Resample.averagePool2x(x, planes: batch * cin, height: height, width: width, y: xb)
                Resample.averagePool2x(a, planes: batch * cin, height: height, width: width, y: ab)
            }
            (xr, a) = (UnsafePointer(xb), UnsafePointer(ab))
        }
        let c1 = conv1.forwardChannelMajor(a, batch: batch, height: ho, width: wo)  // (Cout, N, P)
        let t = timeProjection.forward(activatedTemb, batch: batch)  // (N, Cout) or (N, 2*Cout)
        timeOut = UnsafePointer(t)
        let act: UnsafePointer<Float>
        switch conditioning {
        case .default:
            // conv1's output is not needed by its own backward, so the time term is added in place.
            for ch in 0..<cout { for i in 0..<batch {
                let tv = t[i * cout + ch], row = c1 + (ch * batch + i) * p
                for j in 0..<p { row[j] += tv }
            } }
            act = UnsafePointer(norm2.forward(c1, batch: batch, spatial: p, from: .channelMajor, to: .channelMajor))
        case .scaleShift:
            let nb = norm2.forward(c1, batch: batch, spatial: p, from: .channelMajor, to: .channelMajor)
            normed2 = UnsafePointer(nb)
            let m = modulated.ensure(batch * cout * p)
            for ch in 0..<cout { for i in 0..<batch {
                let scale = 1 + t[i * 2 * cout + ch], shift = t[i * 2 * cout + cout + ch], base = (ch * batch + i) * p
                for j in 0..<p { m[base + j] = Activations.silu(nb[base + j] * scale + shift) }
            } }
            act = UnsafePointer(m)
        }
        let c2 = conv2.forwardChannelMajor(act, batch: batch, height: ho, width: wo)  // (Cout, N, P)
        let y = output.ensure(batch * cout * p), inv = 1 / outputScaleFactor
        if let shortcut {
            let xc = shortcutInput.ensure(batch * cin * p)
            Layout.toChannelMajor(xr, batch: batch, channels: cin, spatial: p, into: xc)
            let s = shortcut.forwardChannelMajor(xc, batch: batch, height: ho, width: wo)  // (Cout, N, P)
            for i in 0..<batch { for ch in 0..<cout {
                let d = y + (i * cout + ch) * p, sc = s + (ch * batch + i) * p, cc = c2 + (ch * batch + i) * p
                for j in 0..<p { d[j] = (sc[j] + cc[j]) * inv }
            } }
        } else {
            for i in 0..<batch { for ch in 0..<cout {
                let d = y + (i * cout + ch) * p, sc = xr + (i * cout + ch) * p, cc = c2 + (ch * batch + i) * p
                for j in 0..<p { d[j] = (sc[j] + cc[j]) * inv }
            } }
        }
        return y
    }

    /// dy (N, Cout, Ho, Wo) -> dx (N, Cin, H, W); adds this block's share of d(activated temb) into `dActivatedTemb`.
    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>, dActivatedTemb: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> {
        let cin = inChannels, cout = outChannels, p = ho * wo
        // d(residual sum) / output_scale_factor, channel-major for conv2 and the shortcut: (Cout, N, P).
        let g = gradBuffer.ensure(n * cout * p)
        for ch in 0..<cout { for i in 0..<n {
            let d = g + (ch * n + i) * p, s = dy + (i * cout + ch) * p
            for j in 0..<p { d[j] = s[j] / outputScaleFactor }
        } }
        let dAct2 = conv2.backwardChannelMajor(g)  // (Cout, N, P)
        let t = timeOut!
        let dc1: UnsafeMutablePointer<Float>
        switch conditioning {
        case .default:
            dc1 = norm2.backward(dAct2)
            let dt = dTime.ensure(n * cout)
            for i in 0..<n { for ch in 0..<cout {
                var s: Float = 0
                let row = dc1 + (ch * n + i) * p
                for j in 0..<p { s += row[j] }
                dt[i * cout + ch] = s
            } }
            addInPlace(dActivatedTemb, timeProjection.backward(dt), count: n * timeProjection.inFeatures)
        case .scaleShift:
            let nb = normed2!, dnb = dModulated.ensure(n * cout * p), dt = dTime.ensure(n * 2 * cout)
            for i in 0..<n { for ch in 0..<cout {
                let scale = 1 + t[i * 2 * cout + ch], shift = t[i * 2 * cout + cout + ch], base = (ch * n + i) * p
                var dScale: Float = 0, dShift: Float = 0
                for j in 0..<p {
                    let pre = nb[base + j] * scale + shift
                    let dpre = dAct2[base + j] * TrainableSiLU.derivative(pre)
                    dScale += dpre * nb[base + j]
                    dShift += dpre
                    dnb[base + j] = dpre * scale
                }
                dt[i * 2 * cout + ch] = dScale
                dt[i * 2 * cout + cout + ch] = dShift
            } }
            addInPlace(dActivatedTemb, timeProjection.backward(dt), count: n * timeProjection.inFeatures)
            dc1 = norm2.backward(dnb)
        }
        var da = UnsafePointer(conv1.backwardChannelMajor(dc1))  // (Cin, N, P)
        // The shortcut path: d(resampled x), channel-major through a shortcut conv, else dy / output_scale_factor.
        let shortcutCM = shortcut != nil
        var dxr: UnsafePointer<Float>
        if let shortcut {
            dxr = UnsafePointer(shortcut.backwardChannelMajor(g))
        } else {
            let d = dShortcut.ensure(n * cin * p)
            for j in 0..<(n * cin * p) { d[j] = dy[j] / outputScaleFactor }
            dxr = UnsafePointer(d)
        }
        let dx = inputGradient.ensure(n * cin * h * w)
        if resample != .none {
            // Plane by plane, so in either layout.
            let dab = dAct.ensure(n * cin * h * w), dxb = dResampled.ensure(n * cin * h * w)
            if resample == .up {
                ResampleGrad.upsampleNearest2xBackward(da, planes: n * cin, height: h, width: w, dx: dab)
                ResampleGrad.upsampleNearest2xBackward(dxr, planes: n * cin, height: h, width: w, dx: dxb)
            } else {
                ResampleGrad.averagePool2xBackward(da, planes: n * cin, height: h, width: w, dx: dab)
                ResampleGrad.averagePool2xBackward(dxr, planes: n * cin, height: h, width: w, dx: dxb)
            }
            (da, dxr) = (UnsafePointer(dab), UnsafePointer(dxb))
        }
        // dx = shortcut gradient + norm1's (N, Cin, H, W), in one pass.
        let dn = norm1.backward(da), hw = h * w
        for i in 0..<n { for ch in 0..<cin {
            let d = dx + (i * cin + ch) * hw, a = dn + (i * cin + ch) * hw
            let s = dxr + (shortcutCM ? (ch * n + i) * hw : (i * cin + ch) * hw)
            for j in 0..<hw { d[j] = s[j] + a[j] }
        } }
        return dx
    }
}

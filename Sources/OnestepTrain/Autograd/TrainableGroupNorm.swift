// GroupNorm (affine) with the optional fused SiLU, trainable, on the serving path's vectorized kernels: the forward
// by TrainKernels.groupNormForward (one C call per layer: osk_group_moments' double-precision two-pass statistics, as
// serving, then osk_affine_silu), the backward by TrainKernels.groupNormBackward (one C call per layer; AVX-512,
// polynomial exp). It keeps mean and 1/std per (image, group) for the backward. ReferenceGroupNorm (the first trainer's plain
// loops) is what FastTrainingKernelTests compare it with.
//
// Legend: N batch, C channels, G groups, HW pixels, M = (C/G)*HW values per group.
//   xhat = (x - mean) * rstd;  z = xhat*gamma + beta;  y = silu(z) or z
//   backward: dz = dy * silu'(z);  dgamma += sum dz*xhat;  dbeta += sum dz;  g = dz*gamma
//             dx = rstd * (g - mean_M(g) - xhat * mean_M(g*xhat))
import OnestepCore

public final class TrainableGroupNorm {
    public let channels: Int, groups: Int, eps: Float, silu: Bool
    public let gamma: Param  // (C)  checkpoint ".weight"
    public let beta: Param   // (C)  checkpoint ".bias"
    unowned let store: ParameterStore
    private let output = Buffer(), inputGradient = Buffer(), stats = Buffer()  // stats: (N, G, 2) mean, rstd
    private let stagedInput = Buffer(), stagedGradient = Buffer(), referenceOutput = Buffer()  // reference path only
    private var input: UnsafePointer<Float>?
    private var layouts: (input: PlaneLayout, output: PlaneLayout) = (.batchMajor, .batchMajor)
    private var n = 0, hw = 0

    public init(_ prefix: String, _ store: ParameterStore, channels c: Int, groups g: Int, eps: Float, silu: Bool) {
        precondition(c % g == 0, "GroupNorm: \(c) channels do not split into \(g) groups")
        self.store = store
        (channels, groups, self.eps, self.silu) = (c, g, eps, silu)
        gamma = store.add(prefix + ".weight", shape: [c], initializer: .constant(1))
        beta = store.add(prefix + ".bias", shape: [c], initializer: .constant(0))
    }

    /// x (N, C, HW) -> (N, C, HW). x must stay unchanged until `backward`.
    public func forward(_ x: UnsafePointer<Float>, batch: Int, spatial: Int) -> UnsafeMutablePointer<Float> {
        forward(x, batch: batch, spatial: spatial, from: .batchMajor, to: .batchMajor)
    }

    /// x in layout `from` -> y in layout `to` (each (N, C, HW) or channel-major (C, N, HW)): the norm works plane
    /// by plane, so it converts between the layouts for free and channel-major convs on either side need no
    /// transposes. The backward takes dy in `to`'s layout and returns dx in `from`'s. Same bits in every layout.
    public func forward(_ x: UnsafePointer<Float>, batch: Int, spatial: Int, from: PlaneLayout, to: PlaneLayout) -> UnsafeMutablePointer<Float> {
        (input, n, hw, layouts) = (x, batch, spatial, (from, to))
        let c = channels
        let y = output.ensure(batch * c * spatial), st = stats.ensure(batch * groups * 2)
        let gv = store.value(gamma), bv = store.value(beta)
        if TrainingKernels.reference {
            // The first trainer's NCHW loops, on (N, C, HW) copies when a side is channel-major.
            let xs = from == .batchMajor ? x : UnsafePointer(staged(from, x, into: stagedInput))
            let ys = to == .batchMajor ? y : referenceOutput.ensure(batch * c * spatial)
            ReferenceGroupNorm.forward(xs, batch: batch, channels: c, groups: groups, spatial: spatial, eps: eps, silu: silu,
                                       gamma: gv, beta: bv, y: ys, stats: st)
            if to == .channelMajor { Layout.toChannelMajor(ys, batch: batch, channels: c, spatial: spatial, into: y) }
            return y
        }
        // One C call for the layer (statistics, affine, SiLU; the next group prefetched), as the Swift loop over
        // FastConv.groupMoments and affineSiLU it replaces, with the same bits.
        TrainKernels.groupNormForward(x: x, y: y, channelMajor: (from == .channelMajor, to == .channelMajor), batch: batch, channels: c,
                                  groups: groups, spatial: spatial, eps: eps, gamma: gv, beta: bv, silu: silu, stats: st)
        return y
    }

    /// dy (N, C, HW) in the forward's output layout -> dx in its input layout, accumulating dgamma and dbeta.
    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        guard let x = input else { preconditionFailure("group norm backward before forward") }
        let c = channels, (from, to) = layouts
        let dx = inputGradient.ensure(n * c * hw), st = stats.pointer
        let gv = store.value(gamma), bv = store.value(beta), dg = store.grad(gamma), db = store.grad(beta)
        if TrainingKernels.reference {
            let xs = from == .batchMajor ? x : UnsafePointer(stagedInput.pointer)
            let dys = to == .batchMajor ? dy : UnsafePointer(staged(to, dy, into: stagedGradient))
            let dxs = from == .batchMajor ? dx : referenceOutput.ensure(n * c * hw)
            ReferenceGroupNorm.backward(x: xs, dy: dys, batch: n, channels: c, groups: groups, spatial: hw, silu: silu, gamma: gv,
                                        beta: bv, stats: st, dgamma: dg, dbeta: db, dx: dxs)
            if from == .channelMajor { Layout.toChannelMajor(dxs, batch: n, channels: c, spatial: hw, into: dx) }
            return dx
        }
        // One C call for the layer: per-plane calls from Swift cost more than the work on 4x4 and 8x8 planes.
        TrainKernels.groupNormBackward(x: x, dy: dy, dx: dx, batch: n, channels: c, groups: groups, spatial: hw, stats: st,
                                   gamma: gv, beta: bv, silu: silu, dgamma: dg, dbeta: db,
                                   channelMajor: (from == .channelMajor, to == .channelMajor, from == .channelMajor))
        return dx
    }

    /// An (N, C, HW) copy of a tensor stored in `layout` (the reference path's input).
    private func staged(_ layout: PlaneLayout, _ v: UnsafePointer<Float>, into b: Buffer) -> UnsafeMutablePointer<Float> {
        let d = b.ensure(n * channels * hw)
        if layout == .channelMajor { Layout.toBatchMajor(v, batch: n, channels: channels, spatial: hw, into: d) }
        else { d.update(from: v, count: n * channels * hw) }
        return d
    }
}

/// Where the planes of an activation of N images of C channels live: (N, C, HW), as the network's interface, or
/// channel-major (C, N, HW), as the conv kernels read and write them.
public enum PlaneLayout: Sendable {
    case batchMajor, channelMajor
}

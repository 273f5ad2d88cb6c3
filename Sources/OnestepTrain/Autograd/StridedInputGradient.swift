// dX of a stride-s convolution without dilating dY: one stride-1 convolution of dY per output phase.
//
// TrainableConv2D's dX is conv(dilate_s(dY), flip(W)^T) with pads (KH-1-padTop, KW-1-padLeft): a stride-1
// correlation over dY with s-1 zeros between its rows and columns, so for s = 2 three quarters of its products
// multiply a zero. Output row y reads dilated row y - P + u (P = KH-1-padTop, u the flipped tap), which is a dY row
// only when y - P + u is a multiple of s. For the rows y = s*Y + a of phase a that is the taps
//   U_a = {u : (a - P + u) mod s == 0}  (every s-th tap),   reading dY row Y + d_a + t for the t-th of them,
// with d_a = (a - P + u_0) / s: phase (a, b) is a stride-1 conv of dY with a |U_a| x |V_b| kernel, pads
// (-d_a, -d_b) on top / left, and ceil((H - a) / s) x ceil((W - b) / s) outputs, scattered to (s*Y + a, s*X + b).
// Each output is then the dilated path's fma chain without its zero products (channels outer, taps in order;
// fmaf(w, 0, acc) == acc), so the bits are the same; the products are s*s times fewer.
// Legend: N batch, Cin/Cout channels, H/W input size, Ho/Wo output (dY) size, s stride, phases p = a*s + b.
import OnestepCore

final class StridedInputGradient {
    struct Phase {
        let a: Int, b: Int
        let rows: [Int], columns: [Int]  // the flipped taps u (rows) and v (columns) this phase reads, ascending
        let geometry: ConvGeometry       // dY (Cout, N, Ho, Wo) -> phase output (Cin, N, outH, outW)
        let outH: Int, outW: Int
    }

    let phases: [Phase]
    private let weights = Buffer(), packed = Buffer(), output = Buffer()

    /// The phases of conv `g` on H x W inputs, or nil when one needs a negative padding (then the caller dilates).
    init?(_ g: ConvGeometry, height h: Int, width w: Int) {
        let s = g.stride, ho = g.outputHeight(h), wo = g.outputWidth(w)
        let pTop = g.kernelH - 1 - g.padTop, pLeft = g.kernelW - 1 - g.padLeft
        guard s > 1, pTop >= 0, pLeft >= 0 else { return nil }
        // Taps of one axis for parity a, the first one's dY offset d, and the phase's output count and pads.
        func axis(_ a: Int, kernel k: Int, pad p: Int, size: Int, outSize o: Int) -> (taps: [Int], count: Int, lo: Int, hi: Int)? {
            let taps = (0..<k).filter { (a - p + $0) % s == 0 }
            let count = (size - a + s - 1) / s
            guard let u0 = taps.first else { return (taps, count, 0, 0) }
            let lo = -(a - p + u0) / s, hi = count - 1 + taps.count - o - lo  // pads so that the conv gives `count`
            return lo >= 0 && hi >= 0 ? (taps, count, lo, hi) : nil
        }
        var list: [Phase] = []
        for a in 0..<s { for b in 0..<s {
            guard let r = axis(a, kernel: g.kernelH, pad: pTop, size: h, outSize: ho),
                  let c = axis(b, kernel: g.kernelW, pad: pLeft, size: w, outSize: wo) else { return nil }
            guard !r.taps.isEmpty, !c.taps.isEmpty, r.count > 0, c.count > 0 else { continue }  // stays zero
            let pg = ConvGeometry(inChannels: g.outChannels, outChannels: g.inChannels, kernelH: r.taps.count,
                                  kernelW: c.taps.count, stride: 1, padTop: r.lo, padLeft: c.lo, padBottom: r.hi, padRight: c.hi)
            guard pg.outputHeight(ho) == r.count && pg.outputWidth(wo) == c.count else { return nil }
            list.append(Phase(a: a, b: b, rows: r.taps, columns: c.taps, geometry: pg, outH: r.count, outW: c.count))
        }}
        phases = list
    }

    /// dxc (Cin, N, H, W) = dX of conv `g` (weights `wv` (Cout, Cin, KH, KW)) for dyc (Cout, N, Ho, Wo).
    func run(_ g: ConvGeometry, weights wv: UnsafePointer<Float>, dy dyc: UnsafePointer<Float>, batch n: Int, height h: Int,
             width w: Int, into dxc: UnsafeMutablePointer<Float>) {
        let s = g.stride, cin = g.inChannels, cout = g.outChannels, kh = g.kernelH, kw = g.kernelW
        let ho = g.outputHeight(h), wo = g.outputWidth(w)
        dxc.update(repeating: 0, count: cin * n * h * w)  // pixels of phases without taps stay 0
        for ph in phases {
            // The phase kernel (Cin, Cout, |U|, |V|): tap (t, q) is flip(W)^T at (u_t, v_q) = W[co, ci, KH-1-u, KW-1-v].
            let nt = ph.rows.count * ph.columns.count, wt = weights.ensure(cin * cout * nt)
            for co in 0..<cout { for ci in 0..<cin {
                let src = wv + (co * cin + ci) * kh * kw, dst = wt + (ci * cout + co) * nt
                for (t, u) in ph.rows.enumerated() { for (q, v) in ph.columns.enumerated() {
                    dst[t * ph.columns.count + q] = src[(kh - 1 - u) * kw + (kw - 1 - v)]
                } }
            } }
            let pk = packed.ensure(FastConv.packedWeightCount(ph.geometry))
            FastConv.packWeights(wt, geometry: ph.geometry, into: pk)
            let plane = ph.outH * ph.outW, y = output.ensure(cin * n * plane)
            y.update(repeating: 0, count: cin * n * plane)
            FastConv.convAccumulate(x: dyc, packed: pk, geometry: ph.geometry, batch: n, height: ho, width: wo, y: y)
            for p in 0..<(cin * n) {
                let src = y + p * plane, dst = dxc + p * h * w + ph.a * w + ph.b
                for yy in 0..<ph.outH {
                    let d = dst + yy * s * w, r = src + yy * ph.outW
                    for xx in 0..<ph.outW { d[xx * s] = r[xx] }
                }
            }
        }
    }
}

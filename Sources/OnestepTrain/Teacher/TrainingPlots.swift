// The two pictures every long command writes: a loss curve and a sample grid. No fonts: the curve has a
// light line at 1, 2 and 5 times each power of ten of the loss and a grey line per tenth of the run, and the log says the numbers.
import Foundation
import OnestepCore
import PNGCodec

public enum TrainingPlots {
    /// log10(loss) against step: raw losses in light blue, a moving average in dark blue. (width, height) pixels.
    public static func lossCurve(_ losses: [Float], width: Int = 640, height: Int = 320) -> PixelImage {
        var img = PixelImage(width: width, height: height, channels: 3, fill: 255)
        let finite = losses.filter { $0.isFinite && $0 > 0 }
        guard finite.count >= 2 else { return img }
        let logs = losses.map { $0 > 0 && $0.isFinite ? Double(Foundation.log10($0)) : Double.nan }
        let window = max(1, losses.count / 50)
        var smooth: [Double] = []
        var acc = 0.0, k = 0
        for (i, v) in logs.enumerated() {
            if v.isFinite { acc += v; k += 1 }
            if i >= window, logs[i - window].isFinite { acc -= logs[i - window]; k -= 1 }
            smooth.append(k > 0 ? acc / Double(k) : .nan)
        }
        let minLog = finite.map { Double(Foundation.log10($0)) }.min() ?? 0
        let maxLog = finite.map { Double(Foundation.log10($0)) }.max() ?? 1
        let pad = max(maxLog - minLog, 0.1) * 0.05
        let lo = minLog - pad, hi = maxLog + pad
        let span = hi - lo, margin = 8
        let plotW = width - 2 * margin, plotH = height - 2 * margin
        func px(_ i: Int) -> Int { margin + Int(Double(i) / Double(max(losses.count - 1, 1)) * Double(plotW - 1)) }
        func py(_ v: Double) -> Int { margin + Int((hi - v) / span * Double(plotH - 1)) }
        func set(_ x: Int, _ y: Int, _ c: (UInt8, UInt8, UInt8)) {
            guard x >= 0, x < width, y >= 0, y < height else { return }
            let o = (y * width + x) * 3
            (img.pixels[o], img.pixels[o + 1], img.pixels[o + 2]) = c
        }
        // Grid lines at 1, 2 and 5 times each power of ten inside the range.
        var gridLogs: [Double] = []
        for e in Int(lo.rounded(.down))...Int(hi.rounded(.up)) {
            for m in [1.0, 2.0, 5.0] { gridLogs.append(Double(e) + Foundation.log10(m)) }
        }
        for d in gridLogs where d >= lo && d <= hi { for x in margin..<(width - margin) { set(x, py(d), (225, 225, 225)) } }
        for t in 0...10 { let x = margin + t * (plotW - 1) / 10; for y in margin..<(height - margin) { set(x, y, (235, 235, 235)) } }
        for (i, v) in logs.enumerated() where v.isFinite { set(px(i), py(v), (170, 200, 240)) }
        var last: (Int, Int)?
        for (i, v) in smooth.enumerated() where v.isFinite {
            let p = (px(i), py(v))
            if let l = last { line(from: l, to: p) { set($0, $1, (20, 60, 160)); set($0, $1 + 1, (20, 60, 160)) } }
            last = p
        }
        return img
    }

    static func line(from a: (Int, Int), to b: (Int, Int), _ plot: (Int, Int) -> Void) {
        let steps = max(abs(b.0 - a.0), abs(b.1 - a.1), 1)
        for s in 0...steps {
            let t = Double(s) / Double(steps)
            plot(a.0 + Int((Double(b.0 - a.0) * t).rounded()), a.1 + Int((Double(b.1 - a.1) * t).rounded()))
        }
    }

    /// A sample grid (one row per class when labelled), enlarged by whole pixels to at least `minWidth` wide so
    /// 16x16 samples can be looked at.
    public static func grid(_ images: Tensor, columns: Int, minWidth: Int = 512) -> PixelImage {
        let g = ImagePipeline.grid(images, columns: columns)
        let f = max(1, minWidth / max(g.width, 1))
        guard f > 1 else { return g }
        var out = PixelImage(width: g.width * f, height: g.height * f, channels: g.channels)
        for y in 0..<out.height { for x in 0..<out.width { for k in 0..<g.channels {
            out.pixels[(y * out.width + x) * g.channels + k] = g.pixels[((y / f) * g.width + x / f) * g.channels + k]
        } } }
        return out
    }

    public static func write(_ img: PixelImage, to path: String) throws {
        try AtomicFile.write(try PNG.encode(img), to: path)
    }
}

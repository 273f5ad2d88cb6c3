// `--plot FILE.png`: two panels drawn into an RGB image and written with libpng (PNGCodec).
//   top:    latency percentile spectrum, x = 1/(1-p) on a log axis (50%, 90%, 99%, ... 99.999%), y = latency on a
//           log axis; corrected (red), uncorrected (blue), queueing (gray) — the HdrHistogram plotter's layout.
//   bottom: latency over time, one dot per (sampled) measured request at its intended send time; corrected red,
//           uncorrected blue, same log y axis.
import Foundation
import PNGCodec

struct Canvas {
    let width: Int, height: Int
    var pixels: [UInt8]  // (H, W, 3)

    init(width: Int, height: Int) {
        self.width = width; self.height = height
        pixels = [UInt8](repeating: 255, count: width * height * 3)
    }

    typealias RGB = (UInt8, UInt8, UInt8)

    mutating func set(_ x: Int, _ y: Int, _ c: RGB) {
        guard x >= 0, y >= 0, x < width, y < height else { return }
        let i = (y * width + x) * 3
        pixels[i] = c.0; pixels[i + 1] = c.1; pixels[i + 2] = c.2
    }

    mutating func fill(x: Int, y: Int, w: Int, h: Int, _ c: RGB) {
        for yy in y..<(y + h) { for xx in x..<(x + w) { set(xx, yy, c) } }
    }

    /// Bresenham line, `thickness` pixels square pen.
    mutating func line(_ x0: Int, _ y0: Int, _ x1: Int, _ y1: Int, _ c: RGB, thickness: Int = 1) {
        var x = x0, y = y0
        let dx = abs(x1 - x0), dy = -abs(y1 - y0)
        let sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1
        var err = dx + dy
        while true {
            fill(x: x - thickness / 2, y: y - thickness / 2, w: thickness, h: thickness, c)
            if x == x1 && y == y1 { break }
            let e2 = 2 * err
            if e2 >= dy { err += dy; x += sx }
            if e2 <= dx { err += dx; y += sy }
        }
    }

    mutating func text(_ s: String, x: Int, y: Int, scale: Int = 2, _ c: RGB = (0, 0, 0)) {
        var cx = x
        for ch in s.lowercased() {
            if let rows = Font.glyphs[ch] {
                let drop = Font.descenders.contains(ch) ? scale : 0
                for (ry, row) in rows.enumerated() {
                    for (rx, bit) in row.enumerated() where bit == "#" {
                        fill(x: cx + rx * scale, y: y + ry * scale + drop, w: scale, h: scale, c)
                    }
                }
            }
            cx += (Font.width + 1) * scale
        }
    }

    var image: PixelImage { PixelImage(width: width, height: height, channels: 3, pixels: pixels) }
}

/// Maps a latency in seconds to a y pixel on a log axis.
private struct LogAxis {
    let lo: Double, hi: Double  // decades, e.g. 1e-4 ... 1
    let top: Int, bottom: Int
    func y(_ v: Double) -> Int {
        let f = (log10(Swift.max(v, lo)) - log10(lo)) / (log10(hi) - log10(lo))
        return bottom - Int((f * Double(bottom - top)).rounded())
    }
}

public enum Plot {
    static let red: Canvas.RGB = (214, 39, 40)
    static let blue: Canvas.RGB = (31, 119, 180)
    static let gray: Canvas.RGB = (150, 150, 150)
    static let grid: Canvas.RGB = (225, 225, 225)

    private static func latencyLabel(_ s: Double) -> String {
        if s >= 1 { return String(format: "%gs", s) }
        if s >= 1e-3 { return String(format: "%gms", s * 1e3) }
        return String(format: "%gus", s * 1e6)
    }

    /// Draws the two panels for `results`; `title` goes on top.
    public static func render(results r: RunResults, title: String, width: Int = 1000, height: Int = 820) -> PixelImage {
        var c = Canvas(width: width, height: height)
        let m = r.measured
        c.text(title, x: 20, y: 12, scale: 2)
        let left = 110, right = width - 60
        // Shared log y range: whole decades around everything that was recorded.
        let maxS = Swift.max(Double(Swift.max(m.corrected.max, m.uncorrected.max)) / 1e6, 1e-3)
        let minS = Swift.max(Double(Swift.min(m.uncorrected.isEmpty ? 1000 : m.uncorrected.min, m.queueing.isEmpty ? 1000 : Swift.max(m.queueing.min, 1))) / 1e6, 1e-6)
        let hi = pow(10, ceil(log10(maxS)))
        let lo = Swift.min(pow(10, floor(log10(minS))), hi / 10)

        func yAxis(_ axis: LogAxis) {
            var d = axis.lo
            while d <= axis.hi * 1.0001 {
                let y = axis.y(d)
                c.line(left, y, right, y, grid)
                let label = latencyLabel(d)
                c.text(label, x: left - 10 - Font.measure(label, scale: 2), y: y - 7, scale: 2)
                d *= 10
            }
            c.line(left, axis.top, left, axis.bottom, (0, 0, 0))
            c.line(left, axis.bottom, right, axis.bottom, (0, 0, 0))
        }

        // Panel 1: percentile spectrum.
        let top1 = 70, bottom1 = 380
        c.text("latency by percentile (log-log)", x: left, y: top1 - 28, scale: 2)
        let axis1 = LogAxis(lo: lo, hi: hi, top: top1, bottom: bottom1)
        yAxis(axis1)
        let maxNines = 5.0  // x runs to 1/(1-p) = 10^5, i.e. 99.999%
        func xOf(percentile p: Double) -> Int {
            let inv = p >= 100 ? pow(10, maxNines) : Swift.min(1 / (1 - p / 100), pow(10, maxNines))
            return left + Int(log10(inv) / maxNines * Double(right - left))
        }
        for (k, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"].enumerated() {
            let x = left + Int(Double(k) / maxNines * Double(right - left))
            c.line(x, top1, x, bottom1, grid)
            c.text(label, x: x - Font.measure(label, scale: 2) / 2, y: bottom1 + 8, scale: 2)
        }
        c.line(left, axis1.top, left, axis1.bottom, (0, 0, 0))
        for (h, color) in [(m.queueing, gray), (m.uncorrected, blue), (m.corrected, red)] where !h.isEmpty {
            var prev: (Int, Int)?
            for p in h.percentileSpectrum(ticksPerHalfDistance: 20) {
                let pt = (xOf(percentile: p.percentile), axis1.y(Swift.max(Double(p.value) / 1e6, lo)))
                if let q = prev { c.line(q.0, q.1, pt.0, q.1, color, thickness: 3); c.line(pt.0, q.1, pt.0, pt.1, color, thickness: 3) }
                prev = pt
            }
        }
        var lx = left + 20
        for (name, color) in [("corrected", red), ("uncorrected", blue), ("queueing", gray)] {
            c.fill(x: lx, y: top1 + 10, w: 24, h: 6, color)
            c.text(name, x: lx + 30, y: top1 + 6, scale: 2)
            lx += 30 + Font.measure(name, scale: 2) + 30
        }

        // Panel 2: latency over time.
        let top2 = 470, bottom2 = height - 60
        c.text("latency over time (by intended send time)", x: left, y: top2 - 28, scale: 2)
        let axis2 = LogAxis(lo: lo, hi: hi, top: top2, bottom: bottom2)
        yAxis(axis2)
        let points = r.timeline.points
        let tMax = Swift.max(Double(points.map(\.t).max() ?? 1), 1e-3)
        let step = niceStep(tMax / 8)
        var t = 0.0
        while t <= tMax * 1.0001 {
            let x = left + Int(t / tMax * Double(right - left))
            c.line(x, top2, x, bottom2, grid)
            let label = String(format: "%gs", t)
            c.text(label, x: x - Font.measure(label, scale: 2) / 2, y: bottom2 + 8, scale: 2)
            t += step
        }
        c.line(left, axis2.top, left, axis2.bottom, (0, 0, 0))
        for (keyPath, color) in [(\(t: Float, corrected: Float, uncorrected: Float).uncorrected, blue),
                                 (\(t: Float, corrected: Float, uncorrected: Float).corrected, red)] {
            for p in points {
                let x = left + Int(Double(p.t) / tMax * Double(right - left))
                c.fill(x: x - 1, y: axis2.y(Double(p[keyPath: keyPath])) - 1, w: 3, h: 3, color)
            }
        }
        return c.image
    }

    /// 1, 2 or 5 times a power of ten, at least `x`.
    static func niceStep(_ x: Double) -> Double {
        let e = pow(10, floor(log10(Swift.max(x, 1e-9))))
        for k in [1.0, 2, 5, 10] where k * e >= x { return k * e }
        return 10 * e
    }

    public static func write(results: RunResults, title: String, path: String) throws {
        try PNG.write(render(results: results, title: title), path: path)
    }
}

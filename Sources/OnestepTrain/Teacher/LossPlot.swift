// loss.png: the loss of every training step against the step, on a log y axis, with a title (what was trained),
// axis names with units, tick values on both axes and a legend. Text is BitmapFont (PNGCodec), so the plot needs
// no font library.
//
//   +--------------------------------------------------------------+
//   | title (scale 2)                                              |
//   | subtitle: data, batch, ... (scale 1)                         |
//   |  ^      +----------------------------------- [legend] ---+   |
//   |  y  0.1 |--- . . raw loss of each step                     |   |
//   | name    |      === moving mean                             |   |
//   |    0.05 |---                                               |   |
//   |         +-----------+-----------+-----------+--------------+   |
//   |                   1000        2000        3000                 |
//   |                             x name                             |
//   +--------------------------------------------------------------+
import Foundation
import PNGCodec

/// The words on a loss plot.
public struct LossPlotLabels: Sendable, Equatable {
    /// What was trained: role, method and model, e.g. "teacher: EDM denoiser, UNet 32-64-64 16x16, 1.11M parameters".
    public var title: String
    /// A second, smaller line: data, batch, where the run is (may be empty).
    public var subtitle: String
    /// The quantity on the y axis (the plot adds ", log scale").
    public var quantity: String
    /// The x axis.
    public var xAxis: String

    public init(title: String = "training loss", subtitle: String = "", quantity: String = "loss", xAxis: String = "training step") {
        (self.title, self.subtitle, self.quantity, self.xAxis) = (title, subtitle, quantity, xAxis)
    }
}

/// Ticks of a log10 axis: 1, 2 and 5 times powers of ten (or 1..9 times when the range is narrow).
public struct LogTicks: Equatable, Sendable {
    /// The axis range in log10 units, widened when needed so that at least two ticks fall inside.
    public var lo: Double, hi: Double
    /// Labelled tick values (in loss units, not log10), ascending.
    public var labelled: [Double]
    /// Every grid-line value (labelled ones included), ascending.
    public var lines: [Double]

    /// Ticks for data from 10^lo to 10^hi. Over more than ~3 decades only the powers of ten are labelled.
    public init(lo: Double, hi: Double) {
        precondition(lo.isFinite && hi.isFinite && lo <= hi, "log axis range \(lo)...\(hi)")
        func candidates(_ mantissas: [Double], _ a: Double, _ b: Double) -> [Double] {
            var out: [Double] = []
            for e in Int((a - 1).rounded(.down))...Int((b + 1).rounded(.up)) {
                for m in mantissas { out.append(m * Foundation.pow(10, Double(e))) }
            }
            return out.sorted()
        }
        let tol = 1e-9
        func inside(_ vs: [Double], _ a: Double, _ b: Double) -> [Double] { vs.filter { Foundation.log10($0) >= a - tol && Foundation.log10($0) <= b + tol } }
        var (a, b) = (lo, hi)
        var lines = inside(candidates([1, 2, 5], a, b), a, b)
        if lines.count < 2 { lines = inside(candidates(Array(1...9).map(Double.init), a, b), a, b) }
        if lines.count < 2 {
            // Narrow range: widen to the nearest 1..9 x 10^k below and above, so two values bracket the data.
            let all = candidates(Array(1...9).map(Double.init), a, b)
            let below = all.last { Foundation.log10($0) <= a + tol } ?? all[0]
            let above = all.first { Foundation.log10($0) >= b - tol && Foundation.log10($0) > Foundation.log10(below) + tol } ?? all[all.count - 1]
            (a, b) = (min(a, Foundation.log10(below)), max(b, Foundation.log10(above)))
            lines = inside(all, a, b)
        }
        let decades = lines.filter { abs(Foundation.log10($0).rounded() - Foundation.log10($0)) < tol }
        (self.lo, self.hi, self.lines) = (a, b, lines)
        labelled = decades.count >= 3 ? decades : lines
    }

    /// "0.02", "0.5", "1", "20", "1e-06", "2e+07": plain decimals from 1e-5 to 1e6, else exponent form.
    public static func label(_ v: Double) -> String {
        let e = Int(Foundation.log10(v).rounded(.down) + 1e-9)
        let mantissa = (v / Foundation.pow(10, Double(e))).rounded()
        if e >= 0 && e < 6 { return String(Int((mantissa * Foundation.pow(10, Double(e))).rounded())) }
        if e < 0 && e >= -5 { return String(format: "%.\(-e)f", v) }
        return String(format: "%.0fe%+03d", mantissa, e)
    }
}

extension TrainingPlots {
    /// Colours of the curves and the frame.
    static let rawColour = RGB(160, 195, 240), meanColour = RGB(20, 60, 160)
    static let gridColour = RGB(228, 228, 228), frameColour = RGB(90, 90, 90)

    /// x ticks for steps first...last: multiples of 1, 2 or 5 x 10^k, about 4 to 10 of them.
    public static func stepTicks(first: Int, last: Int) -> [Int] {
        guard last > first else { return [first] }
        let raw = Double(last - first) / 6
        let mag = Foundation.pow(10, Foundation.log10(raw).rounded(.down))
        let step = max(1, Int(([1.0, 2, 5, 10].first { $0 * mag >= raw } ?? 10) * mag))
        let start = (first + step - 1) / step * step
        return Array(stride(from: start, through: last, by: step))
    }

    /// The loss of step `firstStep + i` is `losses[i]`; drawn on a log scale (values <= 0 or not finite are left
    /// out), with a moving mean over about a fiftieth of the run. (width, height) in pixels, at least 320 x 200.
    public static func lossCurve(_ losses: [Float], labels: LossPlotLabels = LossPlotLabels(), firstStep: Int = 1,
                                 width: Int = 800, height: Int = 450) -> PixelImage {
        precondition(width >= 320 && height >= 200, "a loss plot needs at least 320 x 200 pixels")
        var img = PixelImage(width: width, height: height, channels: 3, fill: 255)
        let s = 2, pad = 8, lineH = BitmapFont.lineHeight * s
        img.drawText(PixelImage.fitting(labels.title, maxWidth: width - 2 * pad, scale: s), x: pad, y: pad, scale: s)
        img.drawText(PixelImage.fitting(labels.subtitle, maxWidth: width - 2 * pad), x: pad, y: pad + lineH + 2)

        let finite = losses.compactMap { $0.isFinite && $0 > 0 ? Double($0) : nil }
        let window = max(1, losses.count / 50)
        let ticks: LogTicks
        if finite.count >= 2 {
            let minLog = Foundation.log10(finite.min()!), maxLog = Foundation.log10(finite.max()!)
            let padLog = max(maxLog - minLog, 0.05) * 0.04
            ticks = LogTicks(lo: minLog - padLog, hi: maxLog + padLog)
        } else {
            ticks = LogTicks(lo: -1, hi: 0)
        }
        let tickTexts = ticks.labelled.map(LogTicks.label)
        let widestTick = tickTexts.map { BitmapFont.width(of: $0, scale: s) }.max() ?? 0
        let left = pad + lineH + widestTick + 10, right = width - 16
        let top = pad + lineH + BitmapFont.lineHeight + 12, bottom = height - (pad + 2 * lineH + 6)
        let plotW = right - left, plotH = bottom - top
        let last = firstStep + max(losses.count, 1) - 1
        func px(_ step: Int) -> Int {
            left + Int((Double(step - firstStep) / Double(max(last - firstStep, 1)) * Double(plotW)).rounded())
        }
        func py(_ v: Double) -> Int { top + Int(((ticks.hi - Foundation.log10(v)) / (ticks.hi - ticks.lo) * Double(plotH)).rounded()) }

        // Grid lines, ticks and their values.
        for v in ticks.lines { img.fill(x: left, y: py(v), w: plotW, h: 1, gridColour) }
        for (v, text) in zip(ticks.labelled, tickTexts) {
            img.fill(x: left - 5, y: py(v), w: 5, h: 1, frameColour)
            img.drawText(text, x: left - 8, y: py(v) - 7 * s / 2, scale: s, align: .right)
        }
        for t in stepTicks(first: firstStep, last: last) {
            img.fill(x: px(t), y: top, w: 1, h: plotH, gridColour)
            img.fill(x: px(t), y: bottom, w: 1, h: 5, frameColour)
            img.drawText(String(t), x: px(t), y: bottom + 8, scale: s, align: .center)
        }
        // Axis names: x under the tick values, y turned to read upwards along the left edge.
        img.drawText(labels.xAxis, x: left + plotW / 2, y: bottom + 8 + lineH, scale: s, align: .center)
        img.drawText(PixelImage.fitting(labels.quantity + ", log scale", maxWidth: plotH, scale: s), x: pad, y: top + plotH / 2, scale: s,
                     align: .center, rotated: true)

        if finite.count >= 2 {
            // Raw losses: one light point per step (a light line between neighbours when the steps are sparse).
            var prev: (Int, Int)?
            for (i, v) in losses.enumerated() {
                guard v.isFinite && v > 0 else { prev = nil; continue }
                let p = (px(firstStep + i), py(Double(v)))
                if let q = prev, losses.count < plotW / 2 { img.line(q.0, q.1, p.0, p.1, rawColour) } else { img.set(p.0, p.1, rawColour) }
                prev = p
            }
            // The moving mean of the losses (the mean the progress lines print), two pixels thick.
            var mean: [Double] = [], acc = 0.0, k = 0
            for (i, v) in losses.enumerated() {
                if v.isFinite && v > 0 { acc += Double(v); k += 1 }
                if i >= window, losses[i - window].isFinite && losses[i - window] > 0 { acc -= Double(losses[i - window]); k -= 1 }
                mean.append(k > 0 ? acc / Double(k) : .nan)
            }
            var lastPoint: (Int, Int)?
            for (i, m) in mean.enumerated() where m.isFinite && m > 0 {
                let p = (px(firstStep + i), py(m))
                if let q = lastPoint { img.line(q.0, q.1, p.0, p.1, meanColour, thickness: 2) }
                lastPoint = p
            }
        } else {
            img.drawText("fewer than 2 positive losses to plot", x: left + plotW / 2, y: top + plotH / 2, scale: s, align: .center)
        }
        // The frame last, so curves never cover it.
        img.fill(x: left, y: top, w: plotW + 1, h: 1, frameColour)
        img.fill(x: left, y: bottom, w: plotW + 1, h: 1, frameColour)
        img.fill(x: left, y: top, w: 1, h: plotH, frameColour)
        img.fill(x: right, y: top, w: 1, h: plotH, frameColour)
        legend(&img, right: right - 6, top: top + 6, scale: s, entries: [
            ("loss of each step", rawColour, 1), (window > 1 ? "mean of \(window) steps" : "mean (1 step)", meanColour, 2),
        ])
        return img
    }

    /// A boxed legend whose top-right corner is (right, top): a short line of each colour and its text.
    static func legend(_ img: inout PixelImage, right: Int, top: Int, scale s: Int, entries: [(String, RGB, Int)]) {
        let sample = 12 * s, gapX = 4 * s, rowH = BitmapFont.lineHeight * s
        let textW = entries.map { BitmapFont.width(of: $0.0, scale: s) }.max() ?? 0
        let w = 3 * gapX + sample + textW, h = entries.count * rowH + 2 * gapX - s
        let x0 = right - w
        img.fill(x: x0, y: top, w: w, h: h, .white)
        for (x, y, ww, hh) in [(x0, top, w, 1), (x0, top + h - 1, w, 1), (x0, top, 1, h), (x0 + w - 1, top, 1, h)] {
            img.fill(x: x, y: y, w: ww, h: hh, frameColour)
        }
        for (i, (text, colour, thickness)) in entries.enumerated() {
            let y = top + gapX + i * rowH
            img.fill(x: x0 + gapX, y: y + 7 * s / 2 - thickness / 2, w: sample, h: thickness * s, colour)
            img.drawText(text, x: x0 + 2 * gapX + sample, y: y, scale: s)
        }
    }
}

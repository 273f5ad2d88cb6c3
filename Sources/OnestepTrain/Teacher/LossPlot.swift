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
        let e = Int((Foundation.log10(v) + 1e-9).rounded(.down))  // 1e-9: log10(0.1) may come out a hair below -1
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

    /// Where everything of a loss plot goes: the plot area, the axis ranges and every tick value's text box.
    public struct LossPlotLayout: Sendable {
        public var width: Int, height: Int
        /// The plot area's edges in pixels (the frame lines are at these coordinates).
        public var left: Int, right: Int, top: Int, bottom: Int
        public var ticks: LogTicks
        public var firstStep: Int, lastStep: Int
        public var stepTicks: [Int]
        /// Text scale of the title, tick values and axis names (the subtitle is at scale 1).
        public var scale: Int
        /// Title, then subtitle: (text, x, y) of their top-left corners.
        public var title: (String, Int, Int), subtitle: (String, Int, Int)
        /// Every tick value: its text and the box it is drawn in (x, y, width, height).
        public var tickLabels: [(text: String, x: Int, y: Int, w: Int, h: Int)]

        public func x(step: Int) -> Int {
            left + Int((Double(step - firstStep) / Double(max(lastStep - firstStep, 1)) * Double(right - left)).rounded())
        }
        public func y(loss v: Double) -> Int {
            top + Int(((ticks.hi - Foundation.log10(v)) / (ticks.hi - ticks.lo) * Double(bottom - top)).rounded())
        }
    }

    /// The layout `lossCurve` draws with the same arguments.
    public static func lossPlotLayout(_ losses: [Float], labels: LossPlotLabels, firstStep: Int = 1, width: Int = 800, height: Int = 450) -> LossPlotLayout {
        let s = 2, pad = 8, lineH = BitmapFont.lineHeight * s
        let finite = losses.compactMap { $0.isFinite && $0 > 0 ? Double($0) : nil }
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
        let last = firstStep + max(losses.count, 1) - 1
        var l = LossPlotLayout(width: width, height: height, left: pad + lineH + widestTick + 10, right: width - 16,
                               top: pad + lineH + BitmapFont.lineHeight + 12, bottom: height - (pad + 2 * lineH + 6),
                               ticks: ticks, firstStep: firstStep, lastStep: last, stepTicks: stepTicks(first: firstStep, last: last), scale: s,
                               title: (PixelImage.fitting(labels.title, maxWidth: width - 2 * pad, scale: s), pad, pad),
                               subtitle: (PixelImage.fitting(labels.subtitle, maxWidth: width - 2 * pad), pad, pad + lineH + 2), tickLabels: [])
        let glyphH = BitmapFont.glyphHeight * s
        for (v, text) in zip(ticks.labelled, tickTexts) {
            let w = BitmapFont.width(of: text, scale: s)
            l.tickLabels.append((text, l.left - 8 - w, min(max(l.y(loss: v) - glyphH / 2, 0), height - glyphH), w, glyphH))
        }
        for t in l.stepTicks {
            let text = String(t), w = BitmapFont.width(of: text, scale: s)
            // Kept inside the image: the last step's value may sit at the right edge.
            l.tickLabels.append((text, min(max(l.x(step: t) - w / 2, 0), width - w), l.bottom + 8, w, glyphH))
        }
        return l
    }

    /// The loss of step `firstStep + i` is `losses[i]`; drawn on a log scale (values <= 0 or not finite are left
    /// out), with a moving mean over about a fiftieth of the run. (width, height) in pixels, at least 320 x 200.
    public static func lossCurve(_ losses: [Float], labels: LossPlotLabels = LossPlotLabels(), firstStep: Int = 1,
                                 width: Int = 800, height: Int = 450) -> PixelImage {
        precondition(width >= 320 && height >= 200, "a loss plot needs at least 320 x 200 pixels")
        let l = lossPlotLayout(losses, labels: labels, firstStep: firstStep, width: width, height: height)
        let s = l.scale, pad = 8, lineH = BitmapFont.lineHeight * s
        let (left, right, top, bottom) = (l.left, l.right, l.top, l.bottom)
        let plotW = right - left, plotH = bottom - top
        let finite = losses.filter { $0.isFinite && $0 > 0 }
        let window = max(1, losses.count / 50)
        func px(_ step: Int) -> Int { l.x(step: step) }
        func py(_ v: Double) -> Int { l.y(loss: v) }
        var img = PixelImage(width: width, height: height, channels: 3, fill: 255)
        img.drawText(l.title.0, x: l.title.1, y: l.title.2, scale: s)
        img.drawText(l.subtitle.0, x: l.subtitle.1, y: l.subtitle.2)

        // Grid lines, tick marks and the tick values.
        for v in l.ticks.lines { img.fill(x: left, y: py(v), w: plotW, h: 1, gridColour) }
        for v in l.ticks.labelled { img.fill(x: left - 5, y: py(v), w: 5, h: 1, frameColour) }
        for t in l.stepTicks {
            img.fill(x: px(t), y: top, w: 1, h: plotH, gridColour)
            img.fill(x: px(t), y: bottom, w: 1, h: 5, frameColour)
        }
        for t in l.tickLabels { img.drawText(t.text, x: t.x, y: t.y, scale: s) }
        // Axis names: x under the tick values, y turned to read upwards along the left edge.
        img.drawText(labels.xAxis, x: left + plotW / 2, y: bottom + 8 + lineH, scale: s, align: .center)
        // A long quantity name drops to scale 1 (centred in the same strip) before it is shortened.
        let yName = labels.quantity + ", log scale"
        let ys = BitmapFont.width(of: yName, scale: s) <= plotH ? s : 1
        img.drawText(PixelImage.fitting(yName, maxWidth: plotH, scale: ys), x: pad + (s - ys) * 3, y: top + plotH / 2, scale: ys,
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

// loss.png and samples.png carry their words: log-scale tick values, a title, axis names, a legend; sample grids
// with class names and seeds. Cheap: no training, a synthetic loss series and a few tiny tensors.
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore
import PNGCodec

final class TrainingPlotsTests: XCTestCase {
    func isInk(_ img: PixelImage, _ x: Int, _ y: Int) -> Bool {
        let o = (y * img.width + x) * img.channels
        return img.pixels[o] < 128 && img.pixels[o + 1] < 128 && img.pixels[o + 2] < 128
    }

    /// 1-2-5 ticks labelled as decimals; many decades label only the powers of ten; a narrow range is widened
    /// until two values bracket it.
    func testLogTicks() {
        let t = LogTicks(lo: log10(0.015), hi: log10(0.12))
        XCTAssertEqual(t.labelled.map(LogTicks.label), ["0.02", "0.05", "0.1"])
        let wide = LogTicks(lo: log10(0.00015), hi: log10(30))
        XCTAssertEqual(wide.labelled.map(LogTicks.label), ["0.001", "0.01", "0.1", "1", "10"])
        XCTAssertTrue(wide.lines.contains { abs($0 - 0.002) < 1e-12 } && wide.lines.contains { abs($0 - 5) < 1e-9 }, "2 and 5 keep grid lines")
        let narrow = LogTicks(lo: log10(0.031), hi: log10(0.036))
        XCTAssertGreaterThanOrEqual(narrow.labelled.count, 2)
        XCTAssertLessThanOrEqual(narrow.lo, log10(0.031))
        XCTAssertGreaterThanOrEqual(narrow.hi, log10(0.036))
        XCTAssertEqual(narrow.labelled.map(LogTicks.label), ["0.03", "0.04"])
        XCTAssertEqual([0.5, 1, 20, 300, 2e-6, 5e7].map(LogTicks.label), ["0.5", "1", "20", "300", "2e-06", "5e+07"])
        XCTAssertEqual(TrainingPlots.stepTicks(first: 1, last: 300), [50, 100, 150, 200, 250, 300])
        XCTAssertEqual(TrainingPlots.stepTicks(first: 1, last: 7), [1, 2, 3, 4, 5, 6, 7])
        XCTAssertEqual(TrainingPlots.stepTicks(first: 1, last: 10_000), [2000, 4000, 6000, 8000, 10_000])
    }

    /// A known loss series: every tick value's box lies inside the image and has ink, the title and axis-name
    /// areas have ink, and both curve colours are drawn.
    func testLossPlotHasTitleTicksAxisNamesAndCurves() {
        let losses = (0..<300).map { Float(0.2 * exp(-Double($0) / 60) + 0.02 + 0.004 * sin(Double($0))) }
        let labels = LossPlotLabels(title: "teacher: EDM denoiser, UNet 32-64 16x16", subtitle: "300 steps, batch 4",
                                    quantity: "EDM denoising loss")
        let img = TrainingPlots.lossCurve(losses, labels: labels)
        let l = TrainingPlots.lossPlotLayout(losses, labels: labels)
        XCTAssertEqual(l.ticks.labelled.map(LogTicks.label), ["0.02", "0.05", "0.1", "0.2"])
        XCTAssertEqual(l.tickLabels.count, l.ticks.labelled.count + l.stepTicks.count)
        for t in l.tickLabels {
            XCTAssertTrue(t.x >= 0 && t.y >= 0 && t.x + t.w <= img.width && t.y + t.h <= img.height, "tick \(t.text) at \(t.x),\(t.y) is outside")
            XCTAssertTrue((t.y..<(t.y + t.h)).contains { y in (t.x..<(t.x + t.w)).contains { isInk(img, $0, y) } }, "tick \(t.text) is blank")
        }
        func inkIn(x: Range<Int>, y: Range<Int>) -> Int { y.reduce(0) { n, yy in n + x.filter { isInk(img, $0, yy) }.count } }
        XCTAssertGreaterThan(inkIn(x: 0..<img.width, y: l.title.2..<(l.title.2 + 14)), 100, "title")
        XCTAssertGreaterThan(inkIn(x: 0..<24, y: l.top..<l.bottom), 50, "y axis name")
        XCTAssertGreaterThan(inkIn(x: l.left..<l.right, y: (l.bottom + 28)..<img.height), 50, "x axis name")
        let colours = Set(stride(from: 0, to: img.pixels.count, by: 3).map { [img.pixels[$0], img.pixels[$0 + 1], img.pixels[$0 + 2]] })
        XCTAssertTrue(colours.contains([160, 195, 240]) && colours.contains([20, 60, 160]), "raw and mean curves")
        // Nothing to plot: still a titled image that says so, no crash.
        let empty = TrainingPlots.lossCurve([], labels: labels)
        XCTAssertEqual([empty.width, empty.height], [800, 450])
        XCTAssertEqual(TrainingPlots.lossCurve([0.1, .nan, -1, .infinity], labels: labels, width: 320, height: 200).width, 320)
    }

    /// A labelled sample grid is the unlabelled one plus the label margins, and its label areas are not blank.
    func testSampleGridWithClassNames() {
        let n = 6, s = 8
        let images = Tensor(shape: [n, 3, s, s], data: (0..<(n * 3 * s * s)).map { Float(($0 % 7) - 3) / 3 })
        let labels = TrainingPlots.sampleGridLabels(title: "student, 1 step", rows: 2, columns: 3, conditional: true,
                                                    classNames: ["circle", "square"])
        XCTAssertEqual(labels.rowLabels, ["circle", "square"])
        XCTAssertEqual(labels.columnLabels, ["0", "1", "2"])
        let bare = TrainingPlots.grid(images, columns: 3, minWidth: 100)
        let labelled = TrainingPlots.grid(images, columns: 3, labels: labels, minWidth: 100)
        let cell = s * (100 / 26)
        let m = labels.margins(cell: cell, gridWidth: bare.width)
        XCTAssertGreaterThan(m.top, 0)
        XCTAssertGreaterThan(m.left, 0)
        XCTAssertEqual([labelled.width, labelled.height], [bare.width + m.left + m.right, bare.height + m.top])
        XCTAssertTrue((0..<m.top).contains { y in (0..<labelled.width).contains { isInk(labelled, $0, y) } }, "title / column labels")
        XCTAssertTrue((m.top..<labelled.height).contains { y in (0..<m.left).contains { isInk(labelled, $0, y) } }, "row labels")
        // Unconditional: rows by their first seed, columns as offsets.
        let u = TrainingPlots.sampleGridLabels(title: "t", rows: 2, columns: 3, conditional: false, classNames: nil)
        XCTAssertEqual(u.rowLabels, ["0", "3"])
        XCTAssertEqual(u.columnLabels, ["+0", "+1", "+2"])
    }
}

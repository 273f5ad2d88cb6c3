// PNGCodec's bitmap font and text drawing: known glyph pixels, scale, alignment, rotation, clipping at the edges,
// and labelled grids (margins and label ink). Cheap: small images, no models.
import XCTest
import PNGCodec

final class BitmapTextTests: XCTestCase {
    /// Coordinates of every pixel darker than mid-grey.
    func ink(_ img: PixelImage) -> Set<[Int]> {
        var out = Set<[Int]>()
        for y in 0..<img.height { for x in 0..<img.width where img.pixels[(y * img.width + x) * img.channels] < 128 { out.insert([x, y]) } }
        return out
    }

    /// "1" is drawn as the 5x7 art says: a stem in the glyph's middle column, the flag left of its top, a foot of 3.
    func testDigitOneHasItsKnownPixels() {
        var img = PixelImage(width: 12, height: 10, channels: 3, fill: 255)
        let w = img.drawText("1", x: 2, y: 1, color: .black)
        XCTAssertEqual(w, 5)
        // ..#.. / .##.. / ..#.. x4 / .###.  at (2, 1): stem x = 4, rows 1...7; flag (3, 2); foot (3, 7) and (5, 7).
        var expected = Set((1...7).map { [4, $0] })
        expected.formUnion([[3, 2], [3, 7], [5, 7]])
        XCTAssertEqual(ink(img), expected)
    }

    /// Scale 3 makes each font pixel a 3x3 block; .right and .center place the text's right edge / middle at x.
    func testScaleAndAlignment() {
        for (align, x, left) in [(TextAlignment.left, 10, 10), (.right, 40, 25), (.center, 30, 23)] {
            var img = PixelImage(width: 48, height: 24, channels: 1, fill: 255)
            img.drawText("1", x: x, y: 0, scale: 3, color: .black, align: align)
            let got = ink(img)
            XCTAssertEqual(got.count, 10 * 9, "\(align)")  // 10 font pixels of "1", 9 image pixels each
            XCTAssertEqual(got.map { $0[0] }.min(), left + 3, "\(align)")  // the flag is the leftmost ink, column 1
            XCTAssertTrue((0..<21).allSatisfy { got.contains([left + 6, $0]) && got.contains([left + 8, $0]) }, "\(align): the stem is 3 wide, 21 tall")
        }
    }

    /// Rotated text reads upwards: the "1"'s stem (text column 2) becomes the image row y - 3, glyph rows 0...6 -> x.
    func testRotatedTextRunsUpwards() {
        var img = PixelImage(width: 10, height: 12, channels: 3, fill: 255)
        img.drawText("1", x: 1, y: 10, color: .black, rotated: true)
        let got = ink(img)
        XCTAssertTrue((1...7).allSatisfy { got.contains([$0, 10 - 3]) }, "\(got.sorted { $0.lexicographicallyPrecedes($1) })")
        XCTAssertEqual(got.count, 10)
        XCTAssertTrue(got.allSatisfy { $0[1] < 10 }, "rotated text starts above y")
    }

    /// Text partly or wholly outside the image, on every channel count, is clipped: no crash, visible parts drawn.
    func testTextIsClippedAtTheEdges() {
        for channels in 1...4 {
            var img = PixelImage(width: 20, height: 9, channels: channels, fill: 255)
            img.drawText("Hello, world 0.05", x: -7, y: -3, scale: 2, color: .black)
            img.drawText("right edge", x: 15, y: 5, scale: 3, color: .black)
            img.drawText("upwards", x: 17, y: 4, scale: 2, color: .black, rotated: true)
            img.drawText("far away", x: 5000, y: -5000, color: .black, align: .center)
            img.drawText("", x: 0, y: 0)
            XCTAssertEqual(img.pixels.count, 20 * 9 * channels)
            XCTAssertFalse(ink(img).isEmpty, "channels \(channels): the visible parts are drawn")
            if channels == 2 || channels == 4 {
                XCTAssertTrue(stride(from: channels - 1, to: img.pixels.count, by: channels).allSatisfy { img.pixels[$0] == 255 }, "alpha stays opaque")
            }
        }
        var blank = PixelImage(width: 8, height: 8, channels: 3, fill: 255)
        blank.drawText("out of sight", x: -200, y: 2, color: .black)
        blank.drawText("below", x: 0, y: 8, color: .black)
        XCTAssertTrue(ink(blank).isEmpty, "text wholly outside leaves the image unchanged")
    }

    /// Every printable ASCII character but the space has ink and its own shape; other characters draw a box.
    func testFontCoversPrintableASCII() {
        var shapes = Set<[UInt8]>()
        for v in 33...126 {
            let g = BitmapFont.glyph(Unicode.Scalar(UInt8(v)))
            XCTAssertTrue(g.rows.contains { $0 != 0 }, "'\(Character(Unicode.Scalar(UInt8(v))))' has no ink")
            XCTAssertTrue(shapes.insert(g.rows + [UInt8(g.drop)]).inserted, "'\(Character(Unicode.Scalar(UInt8(v))))' looks like another glyph")
        }
        XCTAssertTrue(BitmapFont.glyph(" ").rows.allSatisfy { $0 == 0 })
        var img = PixelImage(width: 7, height: 9, channels: 3, fill: 255)
        img.drawText("é", x: 1, y: 1, color: .black)
        XCTAssertEqual(ink(img).count, 5 + 5 + 2 * 5, "a non-ASCII character is a 5x7 box outline")
        XCTAssertEqual(BitmapFont.width(of: "abc", scale: 2), (3 * 6 - 1) * 2)
    }

    /// fitting() shortens with "..." to the width asked, and leaves text that fits alone.
    func testFittingShortensWithEllipsis() {
        XCTAssertEqual(PixelImage.fitting("circle", maxWidth: 100), "circle")
        let cut = PixelImage.fitting("a long class folder name", maxWidth: 60)
        XCTAssertTrue(cut.hasSuffix("...") && cut.count < 24, cut)
        XCTAssertLessThanOrEqual(BitmapFont.width(of: cut), 60)
        XCTAssertEqual(PixelImage.fitting("abc", maxWidth: 3), "")
    }

    /// A labelled grid is the bare grid plus the label margins, the same pixels inside, with ink in the title,
    /// column-label and row-label areas.
    func testLabelledGridAddsMarginsWithText() {
        let cell = 16, gap = 1, rows = 2, cols = 3
        var bare = PixelImage(width: cols * (cell + gap) - gap, height: rows * (cell + gap) - gap, channels: 3, fill: 255)
        for r in 0..<rows { for c in 0..<cols { bare.fill(x: c * (cell + gap), y: r * (cell + gap), w: cell, h: cell, RGB(200, 120, 60)) } }
        let labels = GridLabels(title: "tiny - rows: class, columns: seed", rowLabels: ["circle", "square"], columnLabels: ["0", "1", "2"])
        let out = bare.labelledGrid(rows: rows, columns: cols, cell: cell, gap: gap, labels: labels)
        let m = labels.margins(cell: cell, gridWidth: bare.width)
        XCTAssertGreaterThanOrEqual(m.top, 2 * BitmapFont.lineHeight, "a title line and a column-label line")
        XCTAssertGreaterThanOrEqual(m.left, BitmapFont.width(of: "square"))
        XCTAssertEqual([out.width, out.height], [bare.width + m.left + m.right, bare.height + m.top])
        for y in 0..<bare.height { for x in 0..<bare.width { for k in 0..<3
            where out.pixels[((y + m.top) * out.width + x + m.left) * 3 + k] != bare.pixels[(y * bare.width + x) * 3 + k] {
            return XCTFail("grid pixel (\(x), \(y)) changed")
        } } }
        let dark = ink(out)
        XCTAssertTrue(dark.contains { $0[1] < BitmapFont.lineHeight + 2 }, "title line has ink")
        XCTAssertTrue(dark.contains { $0[1] >= BitmapFont.lineHeight + 2 && $0[1] < m.top && $0[0] >= m.left }, "column labels have ink")
        for r in 0..<rows {
            let y0 = m.top + r * (cell + gap)
            XCTAssertTrue(dark.contains { $0[0] < m.left && $0[1] >= y0 && $0[1] < y0 + cell }, "row \(r) label has ink")
        }
        // No labels: the grid unchanged.
        XCTAssertEqual(bare.labelledGrid(rows: rows, columns: cols, cell: cell, gap: gap, labels: GridLabels()), bare)
    }
}

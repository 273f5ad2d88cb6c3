// Drawing onto a PixelImage: pixels, rectangles, lines and text in BitmapFont. Everything clips at the image's
// edges (a label that does not fit is cut, never a crash), so callers can place text by arithmetic alone.
// Used by the training plots (OnestepTrain), labelled sample grids (onestep-serve generate, onestep-distill) and
// anything else that writes a picture; it lives here, beside PixelImage, so the server need not link training code.

/// An sRGB colour; on a 1- or 2-channel image it is drawn as its luma (Rec. 601), alpha channels get 255.
public struct RGB: Sendable, Equatable {
    public var r: UInt8, g: UInt8, b: UInt8
    public init(_ r: UInt8, _ g: UInt8, _ b: UInt8) { (self.r, self.g, self.b) = (r, g, b) }
    public static let black = RGB(0, 0, 0)
    public static let white = RGB(255, 255, 255)
    public static let text = RGB(25, 25, 25)
    /// Rec. 601 luma, rounded.
    var gray: UInt8 {
        let sum: Int = 299 * Int(r) + 587 * Int(g) + 114 * Int(b)
        return UInt8((sum + 500) / 1000)
    }
}

public enum TextAlignment: Sendable {
    /// x is the left edge of the text.
    case left
    /// x is the middle of the text.
    case center
    /// x is the right edge of the text.
    case right
}

extension PixelImage {
    /// Sets pixel (x, y) to `c`; outside the image nothing happens.
    public mutating func set(_ x: Int, _ y: Int, _ c: RGB) {
        guard x >= 0, x < width, y >= 0, y < height else { return }
        let o = (y * width + x) * channels
        switch channels {
        case 1: pixels[o] = c.gray
        case 2: (pixels[o], pixels[o + 1]) = (c.gray, 255)
        case 3: (pixels[o], pixels[o + 1], pixels[o + 2]) = (c.r, c.g, c.b)
        default: (pixels[o], pixels[o + 1], pixels[o + 2], pixels[o + 3]) = (c.r, c.g, c.b, 255)
        }
    }

    /// Fills the w x h rectangle whose top-left corner is (x, y), clipped to the image.
    public mutating func fill(x: Int, y: Int, w: Int, h: Int, _ c: RGB) {
        let x0 = max(0, x), x1 = min(width, x + w), y0 = max(0, y), y1 = min(height, y + h)
        guard x0 < x1, y0 < y1 else { return }
        for yy in y0..<y1 { for xx in x0..<x1 { set(xx, yy, c) } }
    }

    /// A straight line from (x0, y0) to (x1, y1) inclusive (Bresenham), `thickness` pixels wide (extra pixels
    /// below and to the right).
    public mutating func line(_ x0: Int, _ y0: Int, _ x1: Int, _ y1: Int, _ c: RGB, thickness: Int = 1) {
        let dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1
        var (x, y, err) = (x0, y0, dx + dy)
        while true {
            fill(x: x, y: y, w: thickness, h: thickness, c)
            if x == x1 && y == y1 { break }
            let e2 = 2 * err
            if e2 >= dy { err += dy; x += sx }
            if e2 <= dx { err += dx; y += sy }
        }
    }

    /// Draws one line of `text` in BitmapFont, each font pixel a `scale` x `scale` block. `y` is the top of the
    /// line (capitals span y ..< y + 7 * scale, descenders reach y + 9 * scale); `align` says what `x` is.
    /// `rotated`: turned 90 degrees counter-clockwise (reads bottom to top, for a y-axis name); then `x` is the
    /// left of the line and `y` is the start, middle or end of the text along the vertical, per `align`, with the
    /// text running upwards from y for `.left`. Pixels outside the image are skipped. Returns the text's length in
    /// pixels along its direction.
    @discardableResult
    public mutating func drawText(_ text: String, x: Int, y: Int, scale: Int = 1, color: RGB = .text,
                                  align: TextAlignment = .left, rotated: Bool = false) -> Int {
        precondition(scale >= 1, "text scale must be at least 1")
        let length = BitmapFont.width(of: text, scale: scale)
        let start: Int
        switch align {
        case .left: start = 0
        case .center: start = -length / 2
        case .right: start = -length
        }
        for (i, scalar) in text.unicodeScalars.enumerated() {
            let g = BitmapFont.glyph(scalar)
            let along0 = start + i * BitmapFont.advance * scale   // offset of the glyph along the text
            for (row, mask) in g.rows.enumerated() where mask != 0 {
                for col in 0..<BitmapFont.glyphWidth where mask & (1 << UInt8(BitmapFont.glyphWidth - 1 - col)) != 0 {
                    let along = along0 + col * scale, across = (row + g.drop) * scale
                    if rotated {
                        // Text-space (along, across) -> image column x + across, rows y - along - scale ..< y - along:
                        // the first glyph sits just above y and the glyph tops face left.
                        fill(x: x + across, y: y - along - scale, w: scale, h: scale, color)
                    } else {
                        fill(x: x + along, y: y + across, w: scale, h: scale, color)
                    }
                }
            }
        }
        return length
    }

    /// `text` shortened with a trailing "..." (or to nothing) so that it is at most `maxWidth` pixels at `scale`.
    public static func fitting(_ text: String, maxWidth: Int, scale: Int = 1) -> String {
        if BitmapFont.width(of: text, scale: scale) <= maxWidth { return text }
        let chars = Array(text.unicodeScalars)
        var keep = chars.count
        while keep > 0 && BitmapFont.width(of: String(String.UnicodeScalarView(chars[0..<keep])) + "...", scale: scale) > maxWidth { keep -= 1 }
        if keep == 0 { return BitmapFont.width(of: "...", scale: scale) <= maxWidth ? "..." : "" }
        return String(String.UnicodeScalarView(chars[0..<keep])) + "..."
    }

    /// A copy with `top`, `left`, `bottom`, `right` pixels of margin filled with `fill`, the image at (left, top).
    public func padded(top: Int, left: Int, bottom: Int = 0, right: Int = 0, fill: RGB = .white) -> PixelImage {
        precondition(top >= 0 && left >= 0 && bottom >= 0 && right >= 0, "margins must not be negative")
        var out = PixelImage(width: width + left + right, height: height + top + bottom, channels: channels)
        out.fill(x: 0, y: 0, w: out.width, h: out.height, fill)
        let rowBytes = width * channels
        for y in 0..<height {
            let dst = ((y + top) * out.width + left) * channels
            out.pixels.replaceSubrange(dst..<(dst + rowBytes), with: pixels[(y * rowBytes)..<((y + 1) * rowBytes)])
        }
        return out
    }
}

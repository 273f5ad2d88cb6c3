// Labels around a sample grid: a title line, a name left of every row (class names) and a label above every
// column (seeds, steps). The grid itself is untouched and moved right and down by the label margins, so a labelled
// grid is the bare grid plus `GridLabels.margins(...)`, with the same pixels inside (a grid narrower than its title
// also gets a white margin on the right).

/// What to write around a grid of images. Empty arrays and a nil title leave that margin out.
public struct GridLabels: Sendable, Equatable {
    /// One line above everything, e.g. "shapes16-cd-int8, 1 step - rows: class, columns: seed".
    public var title: String?
    /// One per row, right-aligned in a margin left of the grid (class names).
    public var rowLabels: [String]
    /// One per column, centred above it (seeds, steps); cut to the column's width.
    public var columnLabels: [String]
    /// Text scale (each font pixel a scale x scale block); nil: 2 for cells of 48 pixels or more, else 1.
    public var scale: Int?

    public init(title: String? = nil, rowLabels: [String] = [], columnLabels: [String] = [], scale: Int? = nil) {
        (self.title, self.rowLabels, self.columnLabels, self.scale) = (title, rowLabels, columnLabels, scale)
    }

    /// The text scale used for cells of `cell` pixels.
    public func textScale(cell: Int) -> Int { scale ?? (cell >= 48 ? 2 : 1) }

    /// Row labels are cut to this many characters, so a long folder name cannot push the grid off the page.
    public static let maxRowLabelCharacters = 24

    /// Pixels added above (title and column labels), left of (row labels) and right of a grid of `cell`-pixel
    /// cells that is `gridWidth` pixels wide. The right margin is there only when the title would not fit at text
    /// scale 1 otherwise, and makes the image at most `maxTitleWidth` wide for it.
    public func margins(cell: Int, gridWidth: Int) -> (top: Int, left: Int, right: Int) {
        let s = textScale(cell: cell), pad = 2 * s
        var top = 0
        if title != nil { top += BitmapFont.lineHeight * s + pad }
        if !columnLabels.isEmpty { top += BitmapFont.lineHeight * s }
        if top > 0 { top += pad }
        let widest = rowLabels.map { BitmapFont.width(of: String($0.prefix(Self.maxRowLabelCharacters)), scale: s) }.max() ?? 0
        let left = rowLabels.isEmpty ? 0 : widest + 2 * pad
        let titleNeeds = title.map { BitmapFont.width(of: $0, scale: 1) + 2 * pad } ?? 0
        let right = max(0, min(titleNeeds, Self.maxTitleWidth) - (left + gridWidth))
        return (top, left, right)
    }

    /// A small grid is widened to at most this many pixels so that its title can be read.
    public static let maxTitleWidth = 480
}

extension PixelImage {
    /// This image, a grid of `rows` x `columns` cells of `cell` x `cell` pixels with `gap` pixels between them (as
    /// ImagePipeline.grid tiles, possibly `scaled(by:)`: then cell and gap are scaled too), with `labels` written in
    /// white margins above and to the left (and a right margin for the title of a narrow grid). Labels beyond
    /// `rows` / `columns` are ignored; text that does not fit its place is shortened with "...".
    /// Preconditions: cell >= 1, gap >= 0.
    public func labelledGrid(rows: Int, columns: Int, cell: Int, gap: Int, labels: GridLabels) -> PixelImage {
        precondition(cell >= 1 && gap >= 0, "grid cells must be at least 1 pixel, gaps not negative")
        let s = labels.textScale(cell: cell), pad = 2 * s, pitch = cell + gap
        let (top, left, right) = labels.margins(cell: cell, gridWidth: width)
        var out = padded(top: top, left: left, right: right)
        var y = pad
        if let title = labels.title {
            // The title may use the row-label margin too; a title too long at scale s tries scale 1 before "...".
            var ts = s
            if BitmapFont.width(of: title, scale: ts) > out.width - 2 * pad { ts = 1 }
            out.drawText(PixelImage.fitting(title, maxWidth: out.width - 2 * pad, scale: ts), x: pad, y: y + (s - ts) * 3, scale: ts)
            y += BitmapFont.lineHeight * s + pad
        }
        if !labels.columnLabels.isEmpty {
            for (c, text) in labels.columnLabels.prefix(columns).enumerated() {
                let fitted = PixelImage.fitting(text, maxWidth: max(pitch - s, 1), scale: s)
                out.drawText(fitted, x: left + c * pitch + cell / 2, y: y, scale: s, align: .center)
            }
        }
        for (r, text) in labels.rowLabels.prefix(rows).enumerated() {
            let shown = String(text.prefix(GridLabels.maxRowLabelCharacters))
            let textTop = top + r * pitch + max(0, (cell - BitmapFont.glyphHeight * s) / 2)
            out.drawText(shown, x: left - pad, y: textTop, scale: s, align: .right)
        }
        return out
    }
}

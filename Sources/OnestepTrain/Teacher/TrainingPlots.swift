// The two pictures every long command writes: a loss curve (LossPlot.swift: title, axis names, tick values,
// legend) and a sample grid with a title, class names on the rows and seeds on the columns. The text is
// PNGCodec's BitmapFont, which onestep-serve's grids use too.
import Foundation
import OnestepCore
import PNGCodec

public enum TrainingPlots {
    /// A sample grid (one row per class when labelled), enlarged by whole pixels to at least `minWidth` wide so
    /// 16x16 samples can be looked at, with `labels` written around it (nil: the bare tiles).
    /// images: (N, C, S, S) in [-1, 1], tiled row-major `columns` to a row.
    public static func grid(_ images: Tensor, columns: Int, labels: GridLabels? = nil, minWidth: Int = 512) -> PixelImage {
        let g = ImagePipeline.grid(images, columns: columns)
        let f = max(1, minWidth / max(g.width, 1))
        let scaled = g.scaled(by: f)
        guard let labels else { return scaled }
        let n = images.shape[0], cols = max(1, min(columns, n))
        return scaled.labelledGrid(rows: (n + cols - 1) / cols, columns: cols, cell: images.shape[2] * f, gap: f, labels: labels)
    }

    /// Labels of a grid of `rows` x `columns` samples where row r is class r (named by `classNames`, else
    /// "class r") and column c is seed c, or, for an unconditional model (`conditional` false), image
    /// r * columns + c is seed r * columns + c (rows labelled by their first seed).
    public static func sampleGridLabels(title: String, rows: Int, columns: Int, conditional: Bool, classNames: [String]?,
                                        firstSeed: UInt64 = 0) -> GridLabels {
        if conditional {
            let names = (0..<rows).map { r in classNames.flatMap { r < $0.count ? $0[r] : nil } ?? "class \(r)" }
            return GridLabels(title: title + " - rows: class, columns: seed", rowLabels: names,
                              columnLabels: (0..<columns).map { String(firstSeed + UInt64($0)) })
        }
        return GridLabels(title: title + " - seed = row + column", rowLabels: (0..<rows).map { String(firstSeed + UInt64($0 * columns)) },
                          columnLabels: (0..<columns).map { "+\($0)" })
    }

    /// "UNet 32-64-64 16x16, 1.11M parameters": the words a title uses for a network.
    public static func describe(_ model: TrainableUNet) -> String {
        let c = model.config, p = Double(model.parameterCount)
        let count = p >= 1e6 ? String(format: "%.2fM", p / 1e6) : p >= 1e3 ? String(format: "%.0fk", p / 1e3) : String(Int(p))
        return "UNet \(c.blockOutChannels.map(String.init).joined(separator: "-")) \(c.sampleSize)x\(c.sampleSize), \(count) parameters"
    }

    public static func write(_ img: PixelImage, to path: String) throws {
        try AtomicFile.write(try PNG.encode(img), to: path)
    }
}

import CommandLineKit
import Foundation
import OnestepCore
import OnestepTrain
import PNGCodec

let dataCommand = Subcommand("data", summary: "write a synthetic class-conditional data set as PNG folders", flags: [
    FlagSpec("kind", "data set kind: shapes", default: "shapes"),
    FlagSpec("size", "image side in pixels: 16 or 32", default: "16"),
    FlagSpec("count", "number of images (split evenly over the 8 classes)", default: "8000"),
    FlagSpec("out", "output folder (one sub-folder per class)"),
    FlagSpec("seed", "data set seed", default: "0"),
    FlagSpec("preview", "also write a PNG grid of the first 64 images (8 per class) to this file"),
], run: runData)

func runData(_ flags: ParsedFlags) throws {
    _ = try flags.choice("kind", ["shapes"])
    let size = Int(try flags.choice("size", ["16", "32"]))!
    let count = try flags.requiredInt("count", 1...10_000_000)
    let out = try flags.required("out")
    let seed = UInt64(try flags.requiredInt("seed", 0...Int(Int32.max)))
    let start = Date()
    let perClass = try ShapesGenerator.write(count: count, size: size, seed: seed, to: out)
    stdoutLine(String(format: "wrote %d %dx%d images in %d classes to %@ (%.1fs): ", count, size, size, perClass.count, out,
                      Date().timeIntervalSince(start))
               + perClass.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))

    if let preview = flags.string("preview") {
        let n = min(count, 64), per = 3 * size * size
        var t = Tensor(zeros: [n, 3, size, size])
        var rowNames = [String](repeating: "", count: (n + 7) / 8)
        for i in 0..<n {
            // Column-major by class: row r holds class r's first images.
            let index = (i % 8) * 8 + i / 8
            let (shape, img) = ShapesGenerator.render(index: index < count ? index : i, size: size, seed: seed)
            if i % 8 == 0 { rowNames[i / 8] = shape.rawValue }
            for p in 0..<(size * size) { for k in 0..<3 { t.data[i * per + k * size * size + p] = Float(img.pixels[p * 3 + k]) / 127.5 - 1 } }
        }
        let labels = GridLabels(title: "shapes data \(size)x\(size), seed \(seed) - rows: class, columns: first images", rowLabels: rowNames)
        try TrainingPlots.write(TrainingPlots.grid(t, columns: 8, labels: labels), to: preview)
        stdoutLine("wrote \(preview)")
    }
}

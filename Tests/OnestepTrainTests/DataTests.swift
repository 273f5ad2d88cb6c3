import Foundation
import XCTest
@testable import OnestepTrain
import PNGCodec

func makeTempDir(_ tag: String = #function) -> String {
    let p = NSTemporaryDirectory() + "onestep-train-\(tag.filter { $0.isLetter })-\(UUID().uuidString.prefix(8))"
    try? FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
    return p
}

final class DataTests: XCTestCase {
    func testShapesAreDeterministicAndCycleThroughClasses() {
        let (c1, a) = ShapesGenerator.render(index: 5, size: 16, seed: 1)
        let (c2, b) = ShapesGenerator.render(index: 5, size: 16, seed: 1)
        XCTAssertEqual(c1, c2)
        XCTAssertEqual(a, b)
        XCTAssertEqual(c1, ShapeClass.allCases[5])
        XCTAssertNotEqual(ShapesGenerator.render(index: 5, size: 16, seed: 2).1, a)
        XCTAssertGreaterThanOrEqual(ShapeClass.allCases.count, 8)
        // Anti-aliased: some pixels are neither background nor shape colour, i.e. there are many distinct values.
        XCTAssertGreaterThan(Set(a.pixels).count, 20)
    }

    /// The forms differ: in the shape's own frame, each pair of classes disagrees on a good share of points.
    func testClassesDifferByForm() {
        let grid = stride(from: -1.0, through: 1.0, by: 0.05).flatMap { u in stride(from: -1.0, through: 1.0, by: 0.05).map { (u, $0) } }
        let masks = ShapeClass.allCases.map { c in grid.map { c.contains($0.0, $0.1) } }
        for i in masks.indices { for j in masks.indices where j > i {
            let differ = zip(masks[i], masks[j]).filter { $0 != $1 }.count
            XCTAssertGreaterThan(Double(differ) / Double(grid.count), 0.05, "\(ShapeClass.allCases[i]) vs \(ShapeClass.allCases[j])")
        } }
    }

    func testWrittenShapesLoadWithClassLabels() throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try ShapesGenerator.write(count: 16, size: 16, seed: 3, to: dir)
        let data = try ImageFolder.load(path: dir, size: 16, warn: { XCTFail("unexpected warning \($0)") })
        XCTAssertEqual(data.count, 16)
        XCTAssertEqual(data.classNames, ShapeClass.allCases.map(\.rawValue).sorted())
        XCTAssertEqual(data.labels?.count, 16)
        XCTAssertEqual(Set(data.labels!), Set(0..<8))
        XCTAssertTrue(data.pixels.allSatisfy { $0 >= -1 && $0 <= 1 })
        // The first image of class folder "circle" is what the generator drew for its first circle (index 0).
        let circle = ShapesGenerator.render(index: 0, size: 16, seed: 3).1
        let k = data.classNames!.firstIndex(of: "circle")!, first = data.labels!.firstIndex(of: k)!
        XCTAssertEqual(data.pixels[first * 768 + 0], Float(circle.pixels[0]) / 127.5 - 1, accuracy: 1e-6)
        // Loaded at another size: centre-crop + area resize.
        XCTAssertEqual(try ImageFolder.load(path: dir, size: 8).size, 8)
    }

    func testUnconditionalFolderSkipsUnreadableAndResizes() throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A 20x12 image: left 4 columns red (cropped away), middle 12 blue, right 4 green (cropped away).
        var img = PixelImage(width: 20, height: 12, channels: 3)
        for y in 0..<12 { for x in 0..<20 {
            let c: [UInt8] = x < 4 ? [255, 0, 0] : (x < 16 ? [0, 0, 255] : [0, 255, 0])
            for k in 0..<3 { img.pixels[(y * 20 + x) * 3 + k] = c[k] }
        } }
        try PNG.write(img, path: dir + "/wide.png")
        try Data("not a png".utf8).write(to: URL(fileURLWithPath: dir + "/broken.png"))
        var warnings: [String] = []
        let data = try ImageFolder.load(path: dir, size: 8, warn: { warnings.append($0) })
        XCTAssertEqual(data.count, 1)
        XCTAssertEqual(data.skipped, 1)
        XCTAssertNil(data.labels)
        XCTAssertNil(data.classNames)
        XCTAssertEqual(warnings.count, 4, "\(warnings)")
        XCTAssertTrue(warnings[0].contains("broken.png"))
        XCTAssertTrue(warnings.contains("1 of 2 images were not square and were centre-cropped (1 at 20x12): the model trains on 8x8 squares"), "\(warnings)")
        XCTAssertTrue(warnings.contains("1 of 2 images were area-resized to 8x8 (1 at 20x12): the model's sample_size is 8"), "\(warnings)")
        XCTAssertTrue(warnings.contains("1 of 2 PNG files were skipped as unreadable (each named above)"), "\(warnings)")
        // Every pixel pure blue after the centre crop: R = G = -1, B = 1.
        XCTAssertEqual(data.pixels[0..<64].max(), -1)
        XCTAssertEqual(data.pixels[128..<192].min(), 1)
    }

    /// The new-user case: 64x48 and 32x32 PNGs for a 16x16 model and JPEGs beside them; every change and
    /// every ignored file is counted and said, JPEGs named as unsupported.
    func testLoadingSaysWhatWasResizedCroppedAndIgnored() throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try PNG.write(PixelImage(width: 64, height: 48, channels: 3), path: dir + "/a.png")
        try PNG.write(PixelImage(width: 32, height: 32, channels: 3), path: dir + "/b.png")
        try PNG.write(PixelImage(width: 32, height: 32, channels: 3), path: dir + "/c.png")
        try PNG.write(PixelImage(width: 16, height: 16, channels: 3), path: dir + "/d.png")
        for f in ["e.jpg", "f.JPG", "g.jpeg"] { try Data([0xFF, 0xD8, 0xFF]).write(to: URL(fileURLWithPath: dir + "/" + f)) }
        var warnings: [String] = []
        let data = try ImageFolder.load(path: dir, size: 16, warn: { warnings.append($0) })
        XCTAssertEqual(data.count, 4)
        XCTAssertEqual(warnings, [
            "1 .jpeg, 2 .jpg file(s) ignored: unsupported image type, only .png is read (convert them, e.g. `mogrify -format png *.jpg`)",
            "1 of 4 images were not square and were centre-cropped (1 at 64x48): the model trains on 16x16 squares",
            "3 of 4 images were area-resized to 16x16 (2 at 32x32, 1 at 64x48): the model's sample_size is 16",
        ])
        // Only JPEGs: the error names them.
        let jpegs = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: jpegs) }
        try Data([0xFF, 0xD8, 0xFF]).write(to: URL(fileURLWithPath: jpegs + "/x.jpg"))
        XCTAssertThrowsError(try ImageFolder.load(path: jpegs, size: 16, warn: { _ in })) { e in
            XCTAssertTrue("\(e)".contains("1 .jpg file(s) ignored: unsupported image type"), "\(e)")
        }
    }

    func testAreaResizeAveragesWindows() {
        var img = PixelImage(width: 4, height: 4, channels: 1)
        img.pixels = [0, 100, 10, 10,
                      200, 100, 10, 10,
                      0, 0, 50, 50,
                      0, 0, 50, 50]
        let out = ImageResize.centerCropAreaResize(img, to: 2)
        XCTAssertEqual(out.pixels, [100, 10, 0, 50])
        let w = ImageResize.weights(from: 3, to: 2)  // fractional coverage: 1.5 source pixels per output
        XCTAssertEqual(w[0].map(\.0), [0, 1])
        XCTAssertEqual(w[0].map(\.1).reduce(0, +), 1, accuracy: 1e-12)
    }

    /// Found by fuzz/ (png_dataset): this 81-byte PNG declares a 1.9 GB zTXt chunk, and libpng allocated and zeroed
    /// that much before finding the file too short. It is now skipped with a warning naming the chunk.
    func testPNGDeclaringAChunkLargerThanTheFileIsSkippedWithoutAllocatingIt() throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // fuzz/corpus/png_dataset/regression-zTXt-declares-1.9GB.png
        let crashing = Data(base64Encoded: "iVBORw0KGgoAAAANSUhEUgAAAAUAAAADAgMAAAFSiR9mAAAADFBMVEX6+qQAAC5YHBIYc64wRTUwc64CAHpUWHT9xWUL+/8AAElFTkSuQmCC")!
        try crashing.write(to: URL(fileURLWithPath: dir + "/huge-chunk.png"))
        try PNG.write(PixelImage(width: 4, height: 4, channels: 3, fill: 200), path: dir + "/fine.png")
        var warnings: [String] = []
        let data = try ImageFolder.load(path: dir, size: 4, warn: { warnings.append($0) })
        XCTAssertEqual(data.count, 1)
        XCTAssertEqual(data.skipped, 1)
        XCTAssertEqual(warnings.count, 2, "\(warnings)")  // the file, then the count
        XCTAssertEqual(warnings.last, "1 of 2 PNG files were skipped as unreadable (each named above)")
        XCTAssertTrue(warnings[0].contains("huge-chunk.png") && warnings[0].contains("chunk zTXt")
                      && warnings[0].contains("declares 1940783616 bytes"), warnings[0])
    }

    func testBadFoldersAreClearErrors() throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        XCTAssertThrowsError(try ImageFolder.load(path: dir, size: 8)) { e in
            XCTAssertTrue("\(e)".contains("no PNG files"), "\(e)")
        }
        XCTAssertThrowsError(try ImageFolder.load(path: dir + "/missing", size: 8)) { e in
            XCTAssertTrue("\(e)".contains("does not exist"), "\(e)")
        }
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/file.txt"))
        XCTAssertThrowsError(try ImageFolder.load(path: dir + "/file.txt", size: 8)) { e in
            XCTAssertTrue("\(e)".contains("is a file"), "\(e)")
        }
    }
}

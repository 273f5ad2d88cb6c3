// Any folder of PNG files as a training set, held in memory as model-space floats.
//   DIR/<class>/*.png   class-conditional; the sorted sub-folder names are the class names (id2label)
//   DIR/*.png           unconditional (used only when there are no class sub-folders)
// Images of another size are centre-cropped to a square and area-resized; unreadable files are skipped with a
// warning and counted; a folder with no usable image is an error that says what it found.
import Foundation
import OnestepCore
import PNGCodec

public struct DataError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Images (N, C, S, S) in [-1, 1] (the model's space: x = 2 * pixel/255 - 1), with optional labels.
public struct ImageDataset: Sendable {
    public var size: Int
    public var channels: Int
    public var pixels: [Float]
    public var labels: [Int]?
    public var classNames: [String]?
    /// Files that could not be decoded.
    public var skipped: Int

    public var count: Int { pixels.count / (channels * size * size) }
    public var imageFloats: Int { channels * size * size }

    /// Copies images `indices` into `out` (count * C * S * S floats).
    public func gather(_ indices: [Int], into out: UnsafeMutablePointer<Float>) {
        let per = imageFloats
        pixels.withUnsafeBufferPointer { src in
            for (k, i) in indices.enumerated() { (out + k * per).update(from: src.baseAddress! + i * per, count: per) }
        }
    }
}

public enum ImageFolder {
    public static func load(path: String, size: Int, channels: Int = 3,
                            warn: (String) -> Void = { FileHandle.standardError.write(Data(("warning: " + $0 + "\n").utf8)) }) throws -> ImageDataset {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else { throw DataError("data folder \(path) does not exist") }
        guard isDir.boolValue else { throw DataError("\(path) is a file; --data wants a folder of PNGs (or of class sub-folders of PNGs)") }
        let entries = ((try? fm.contentsOfDirectory(atPath: path)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
        func pngs(in dir: String) -> [String] {
            ((try? fm.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.lowercased().hasSuffix(".png") && !$0.hasPrefix(".") }.sorted()
                .map { dir + "/" + $0 }
        }
        // Files of image types we do not read (only PNG: libpng is the one image library), named so that a user
        // who dropped JPEGs in does not wonder where they went.
        let unsupportedTypes: Set<String> = ["jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff", "heic", "avif", "ppm"]
        var unsupported: [String: Int] = [:]
        func countUnsupported(in dir: String) {
            for f in (try? fm.contentsOfDirectory(atPath: dir)) ?? [] where !f.hasPrefix(".") {
                let ext = (f as NSString).pathExtension.lowercased()
                if unsupportedTypes.contains(ext) { unsupported["." + ext, default: 0] += 1 }
            }
        }
        countUnsupported(in: path)
        var classes: [(String, [String])] = []
        for e in entries {
            var d: ObjCBool = false
            if fm.fileExists(atPath: path + "/" + e, isDirectory: &d), d.boolValue {
                countUnsupported(in: path + "/" + e)
                let files = pngs(in: path + "/" + e)
                if files.isEmpty { warn("class folder \(e) has no PNG files; ignored") } else { classes.append((e, files)) }
            }
        }
        let topLevel = pngs(in: path)
        if !classes.isEmpty && !topLevel.isEmpty {
            warn("\(topLevel.count) PNG files directly in \(path) are ignored: the data has class sub-folders")
        }
        let files: [(String, Int?)] = classes.isEmpty
            ? topLevel.map { ($0, nil) }
            : classes.enumerated().flatMap { k, c in c.1.map { ($0, k) } }
        let unsupportedNote = unsupported.isEmpty ? nil : unsupported.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
            + " file(s) ignored: unsupported image type, only .png is read (convert them, e.g. `mogrify -format png *.jpg`)"
        guard !files.isEmpty else {
            throw DataError("no PNG files in \(path) or its sub-folders (found \(entries.count) other entries" + (unsupportedNote.map { "; " + $0 } ?? "") + "); " +
                            "give a folder of .png images, or one sub-folder of .png images per class")
        }
        if let unsupportedNote { warn(unsupportedNote) }
        var pixels: [Float] = []
        pixels.reserveCapacity(files.count * channels * size * size)
        var labels: [Int] = [], skipped = 0
        var cropped: [String: Int] = [:], resized: [String: Int] = [:]  // source size "WxH" -> count
        for (file, label) in files {
            let img: PixelImage
            do { img = try PNG.read(path: file, channels: channels) } catch {
                warn("skipping \(file): \(error)")
                skipped += 1
                continue
            }
            let dims = "\(img.width)x\(img.height)"
            if img.width != img.height { cropped[dims, default: 0] += 1 }
            if min(img.width, img.height) != size { resized[dims, default: 0] += 1 }
            pixels += toModelSpace(ImageResize.centerCropAreaResize(img, to: size))
            if let label { labels.append(label) }
        }
        guard !pixels.isEmpty else { throw DataError("none of the \(files.count) PNG files in \(path) could be read") }
        func sizes(_ d: [String: Int]) -> String { d.sorted { $0.key < $1.key }.map { "\($0.value) at \($0.key)" }.joined(separator: ", ") }
        if !cropped.isEmpty {
            warn("\(cropped.values.reduce(0, +)) of \(files.count) images were not square and were centre-cropped (\(sizes(cropped))): the model trains on \(size)x\(size) squares")
        }
        if !resized.isEmpty {
            warn("\(resized.values.reduce(0, +)) of \(files.count) images were area-resized to \(size)x\(size) (\(sizes(resized))): the model's sample_size is \(size)")
        }
        if skipped > 0 { warn("\(skipped) of \(files.count) PNG files were skipped as unreadable (each named above)") }
        return ImageDataset(size: size, channels: channels, pixels: pixels, labels: classes.isEmpty ? nil : labels,
                            classNames: classes.isEmpty ? nil : classes.map(\.0), skipped: skipped)
    }

    /// (H, W, C) uint8 -> (C, H, W) floats in [-1, 1].
    static func toModelSpace(_ img: PixelImage) -> [Float] {
        let c = img.channels, hw = img.width * img.height
        var out = [Float](repeating: 0, count: c * hw)
        for p in 0..<hw { for k in 0..<c { out[k * hw + p] = Float(img.pixels[p * c + k]) / 127.5 - 1 } }
        return out
    }
}

public enum ImageResize {
    /// The centred square crop of the image, resized to size x size by area averaging (each output pixel is the
    /// mean of the source area it covers, with fractional edge weights).
    public static func centerCropAreaResize(_ img: PixelImage, to size: Int) -> PixelImage {
        let side = min(img.width, img.height)
        let x0 = (img.width - side) / 2, y0 = (img.height - side) / 2
        if side == size && img.width == img.height { return img }
        let c = img.channels
        let wx = weights(from: side, to: size)
        var out = PixelImage(width: size, height: size, channels: c)
        for oy in 0..<size {
            for ox in 0..<size {
                for k in 0..<c {
                    var acc = 0.0
                    for (sy, wy) in wx[oy] {
                        for (sx, wxx) in wx[ox] {
                            acc += wy * wxx * Double(img.pixels[((y0 + sy) * img.width + x0 + sx) * c + k])
                        }
                    }
                    out.pixels[(oy * size + ox) * c + k] = UInt8(min(max(acc.rounded(), 0), 255))
                }
            }
        }
        return out
    }

    /// For each output index, the source indices it covers and their weights (summing to 1).
    static func weights(from n: Int, to m: Int) -> [[(Int, Double)]] {
        let scale = Double(n) / Double(m)
        return (0..<m).map { o in
            let a = Double(o) * scale, b = Double(o + 1) * scale
            var w: [(Int, Double)] = []
            var i = Int(a.rounded(.down))
            while Double(i) < b && i < n {
                let overlap = min(b, Double(i + 1)) - max(a, Double(i))
                if overlap > 1e-12 { w.append((i, overlap / scale)) }
                i += 1
            }
            return w
        }
    }
}

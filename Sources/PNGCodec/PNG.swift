// PNG encoding through libpng's simplified API (png_image_*), decoding through the low-level API wrapped in C
// in CPNG/shim.h (onestep_png_*), which keeps every setjmp/longjmp inside C.
// This is the only file that imports CPNG.
import CPNG
import Foundation

/// An 8-bit image in memory, rows top to bottom, channels interleaved.
public struct PixelImage: Sendable, Equatable {
    public var width: Int
    public var height: Int
    /// 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA).
    public var channels: Int
    public var pixels: [UInt8]  // (H, W, channels)

    public init(width: Int, height: Int, channels: Int, pixels: [UInt8]) {
        precondition(width > 0 && height > 0, "image must not be empty")
        precondition((1...4).contains(channels), "channels must be 1...4")
        precondition(pixels.count == width * height * channels, "pixel count does not match width*height*channels")
        self.width = width
        self.height = height
        self.channels = channels
        self.pixels = pixels
    }

    /// The image enlarged `factor` times by nearest neighbour (each pixel becomes a factor x factor block), so
    /// 16x16 samples can be looked at without blur. Precondition: factor >= 1.
    public func scaled(by factor: Int) -> PixelImage {
        precondition(factor >= 1, "scale factor must be at least 1")
        guard factor > 1 else { return self }
        let w = width * factor, h = height * factor, c = channels
        var out = [UInt8](repeating: 0, count: w * h * c)
        for y in 0..<h {
            let src = (y / factor) * width
            for x in 0..<w { for k in 0..<c { out[(y * w + x) * c + k] = pixels[(src + x / factor) * c + k] } }
        }
        return PixelImage(width: w, height: h, channels: c, pixels: out)
    }

    /// A blank image filled with one value.
    public init(width: Int, height: Int, channels: Int, fill: UInt8 = 0) {
        self.init(width: width, height: height, channels: channels,
                  pixels: [UInt8](repeating: fill, count: width * height * channels))
    }
}

public enum PNGError: Error, CustomStringConvertible, Equatable {
    case encodeFailed(String)
    case decodeFailed(String)
    case tooLarge(width: Int, height: Int, limit: Int)

    public var description: String {
        switch self {
        case .encodeFailed(let m): return "PNG encoding failed: \(m)"
        case .decodeFailed(let m): return "not a readable PNG: \(m)"
        case .tooLarge(let w, let h, let limit):
            return "PNG is \(w)x\(h), larger than the \(limit)-pixel limit; resize it first"
        }
    }
}

public enum PNG {
    /// Decoded images larger than this many pixels are refused before any pixel memory is allocated.
    public static let defaultMaxPixels = 64 * 1024 * 1024

    private static func format(forChannels channels: Int) -> UInt32 {
        switch channels {
        // Composite macros (PNG_FORMAT_GA, _RGBA) do not import into Swift; build them from the flags.
        case 1: return 0
        case 2: return UInt32(PNG_FORMAT_FLAG_ALPHA)
        case 3: return UInt32(PNG_FORMAT_FLAG_COLOR)
        default: return UInt32(PNG_FORMAT_FLAG_COLOR) | UInt32(PNG_FORMAT_FLAG_ALPHA)
        }
    }

    private static func message(_ image: png_image) -> String {
        var copy = image.message
        return withUnsafeBytes(of: &copy) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
    }

    /// Encodes an 8-bit gray / gray+alpha / RGB / RGBA image as PNG bytes.
    public static func encode(_ img: PixelImage) throws -> [UInt8] {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        image.width = UInt32(img.width)
        image.height = UInt32(img.height)
        image.format = format(forChannels: img.channels)
        let rowStride = Int32(img.width * img.channels)
        // First call with a nil buffer asks libpng for the size it needs.
        var size: Int = 0
        let probe = img.pixels.withUnsafeBytes { px in
            png_image_write_to_memory(&image, nil, &size, 0, px.baseAddress, rowStride, nil)
        }
        guard probe != 0, size > 0 else {
            let m = message(image)
            png_image_free(&image)
            throw PNGError.encodeFailed(m)
        }
        var out = [UInt8](repeating: 0, count: size)
        let ok = out.withUnsafeMutableBytes { dst in
            img.pixels.withUnsafeBytes { px in
                png_image_write_to_memory(&image, dst.baseAddress, &size, 0, px.baseAddress, rowStride, nil)
            }
        }
        guard ok != 0 else {
            let m = message(image)
            png_image_free(&image)
            throw PNGError.encodeFailed(m)
        }
        out.removeSubrange(size...)
        return out
    }

    /// Decodes PNG bytes to 8-bit samples as the PNG spec defines them: palette entries looked up, grey of 1, 2 or
    /// 4 bits scaled to 0...255, 16-bit samples rounded to round(v * 255 / 65535), tRNS made an alpha channel,
    /// interlacing undone; gAMA / sRGB / cHRM / iCCP are not applied (they say how to display the samples, and
    /// every other decoder we compare with, pypng and Pillow, returns the samples as stored).
    /// `channels` picks the output layout: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA; nil keeps the file's own
    /// grey/RGB choice without alpha. Alpha dropped is composited on black (v * a / 255, rounded); alpha added is
    /// 255; RGB to grey is Rec. 709 luma on the stored values (round(0.2126 R + 0.7152 G + 0.0722 B)).
    /// Throws `PNGError` naming the problem; images over `maxPixels` are refused before pixels are allocated.
    public static func decode(_ bytes: [UInt8], channels: Int? = nil,
                              maxPixels: Int = defaultMaxPixels) throws -> PixelImage {
        guard bytes.count >= 8 else { throw PNGError.decodeFailed("only \(bytes.count) bytes") }
        guard bytes.starts(with: signature) else {
            throw PNGError.decodeFailed("the file does not start with the PNG signature")
        }
        if let channels, !(1...4).contains(channels) {
            throw PNGError.decodeFailed("\(channels) output channels asked; 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA)")
        }
        try checkChunkLengths(bytes)
        return try bytes.withUnsafeBufferPointer { src -> PixelImage in
            var r = onestep_png_reader()
            r.data = src.baseAddress
            r.size = src.count
            defer { onestep_png_end(&r) }
            guard onestep_png_begin(&r) != 0 else { throw PNGError.decodeFailed(readerMessage(&r)) }
            let width = Int(r.width), height = Int(r.height), native = Int(r.channels)
            guard width > 0, height > 0, width.multipliedReportingOverflow(by: height).overflow == false,
                  width * height <= maxPixels else {
                throw PNGError.tooLarge(width: width, height: height, limit: maxPixels)
            }
            var pixels = [UInt8](repeating: 0, count: width * height * native)
            let ok = pixels.withUnsafeMutableBufferPointer { onestep_png_finish(&r, $0.baseAddress) }
            guard ok != 0 else { throw PNGError.decodeFailed(readerMessage(&r)) }
            let decoded = PixelImage(width: width, height: height, channels: native, pixels: pixels)
            let want = channels ?? (native >= 3 ? 3 : 1)
            return want == native ? decoded : convert(decoded, to: want)
        }
    }

    private static func readerMessage(_ r: inout onestep_png_reader) -> String {
        withUnsafeBytes(of: &r.message) { raw in
            let m = String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            return m.isEmpty ? "libpng could not read it" : m
        }
    }

    /// Changes the channel layout of an 8-bit image (rules in `decode`).
    static func convert(_ img: PixelImage, to channels: Int) -> PixelImage {
        let n = img.width * img.height, c = img.channels
        let hasAlpha = c == 2 || c == 4, wantAlpha = channels == 2 || channels == 4
        var out = [UInt8](repeating: 0, count: n * channels)
        img.pixels.withUnsafeBufferPointer { src in
            for i in 0..<n {
                let p = i * c
                var r = Int(src[p]), g = r, b = r
                if c >= 3 { g = Int(src[p + 1]); b = Int(src[p + 2]) }
                let a = hasAlpha ? Int(src[p + c - 1]) : 255
                if !wantAlpha && a != 255 {
                    r = (r * a + 127) / 255; g = (g * a + 127) / 255; b = (b * a + 127) / 255
                }
                let q = i * channels
                if channels <= 2 {
                    out[q] = c >= 3 ? UInt8((2126 * r + 7152 * g + 722 * b + 5000) / 10000) : UInt8(r)
                } else {
                    out[q] = UInt8(r); out[q + 1] = UInt8(g); out[q + 2] = UInt8(b)
                }
                if wantAlpha { out[q + channels - 1] = UInt8(a) }
            }
        }
        return PixelImage(width: img.width, height: img.height, channels: channels, pixels: out)
    }

    private static let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

    /// Refuses a chunk that declares more bytes than the file has left. libpng allocates and zeroes a chunk's buffer
    /// from its declared length before reading it, so an 81-byte file declaring a 1.9 GB zTXt chunk made it touch
    /// 1.9 GB (found by fuzz/ png_dataset). Files without the PNG signature are left to libpng to name.
    static func checkChunkLengths(_ bytes: [UInt8]) throws {
        guard bytes.starts(with: signature) else { return }
        var offset = signature.count
        // Each chunk: 4-byte big-endian length, 4-byte type, data, 4-byte CRC.
        while offset + 12 <= bytes.count {
            let length = bytes[offset..<(offset + 4)].reduce(0) { $0 << 8 | Int($1) }
            let typeBytes = bytes[(offset + 4)..<(offset + 8)]
            let type = typeBytes.allSatisfy { (65...90).contains($0) || (97...122).contains($0) }
                ? String(decoding: typeBytes, as: UTF8.self) : "with a non-letter type"
            let left = bytes.count - offset - 12
            guard length <= left else {
                throw PNGError.decodeFailed("chunk \(type) at byte \(offset) declares \(length) bytes but only \(left) follow; the file is truncated or corrupt")
            }
            if type == "IEND" { return }
            offset += 12 + length
        }
    }

    /// Reads and decodes a PNG file.
    public static func read(path: String, channels: Int? = nil) throws -> PixelImage {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw PNGError.decodeFailed("cannot read file \(path)")
        }
        return try decode([UInt8](data), channels: channels)
    }

    /// Encodes and writes a PNG file atomically (temp file + rename).
    public static func write(_ img: PixelImage, path: String) throws {
        let bytes = try encode(img)
        try Data(bytes).write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}

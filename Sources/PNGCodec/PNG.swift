// PNG encoding and decoding through libpng's simplified API (png_image_*).
// This is the only file that imports CPNG. The simplified API reports failures in `png_image.message`
// instead of longjmp-ing, so no setjmp ever crosses into Swift.
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

    /// Decodes PNG bytes. `channels` picks the output layout (1 gray, 3 RGB, 4 RGBA; nil keeps the file's own
    /// gray/RGB choice and drops alpha by compositing on black, as libpng's simplified API does).
    public static func decode(_ bytes: [UInt8], channels: Int? = nil,
                              maxPixels: Int = defaultMaxPixels) throws -> PixelImage {
        guard bytes.count >= 8 else { throw PNGError.decodeFailed("only \(bytes.count) bytes") }
        try checkChunkLengths(bytes)
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        let begun = bytes.withUnsafeBytes { src in
            png_image_begin_read_from_memory(&image, src.baseAddress, src.count)
        }
        guard begun != 0 else {
            let m = message(image)
            png_image_free(&image)
            throw PNGError.decodeFailed(m)
        }
        let width = Int(image.width), height = Int(image.height)
        guard width > 0, height > 0, width.multipliedReportingOverflow(by: height).overflow == false,
              width * height <= maxPixels else {
            png_image_free(&image)
            throw PNGError.tooLarge(width: width, height: height, limit: maxPixels)
        }
        let fileIsColor = (image.format & UInt32(PNG_FORMAT_FLAG_COLOR)) != 0
        let outChannels = channels ?? (fileIsColor ? 3 : 1)
        image.format = format(forChannels: outChannels)
        var pixels = [UInt8](repeating: 0, count: width * height * outChannels)
        let ok = pixels.withUnsafeMutableBytes { dst in
            png_image_finish_read(&image, nil, dst.baseAddress, Int32(width * outChannels), nil)
        }
        guard ok != 0 else {
            let m = message(image)
            png_image_free(&image)
            throw PNGError.decodeFailed(m)
        }
        return PixelImage(width: width, height: height, channels: outChannels, pixels: pixels)
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

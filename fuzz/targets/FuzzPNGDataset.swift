// Fuzz target: the PNG dataset loader's per-file path (Sources/OnestepTrain/Data/ImageFolder.swift over
// Sources/PNGCodec/PNG.swift): decode through libpng's simplified API into the requested channel layout, centre-crop
// and area-resize to the training size, convert to model space.
//
// ImageFolder.load does exactly this for every file of a folder (PNG.read is the file's bytes into PNG.decode);
// the folder walk itself takes no file content, so the target calls the per-file steps on the input bytes rather
// than writing a folder per input. The output channels (1-4, as a model's channels) and the training size come from
// a hash of the input, so seeds stay plain PNG files.
//
// Most mutations break a chunk's CRC, and libpng refuses a critical chunk with a bad CRC before decoding anything,
// so for three inputs in four the target repairs every chunk's CRC first: the mutation then reaches the decoder.
//
// Checked besides "no crash": a failure is a PNGError with a message; a decoded image has width x height x channels
// bytes; the resized image is size x size; model-space values lie in [-1, 1].
//
// libpng itself is the system library, not instrumented: crashes inside it still stop the fuzzer, but coverage
// guidance and ASan checks only see our side of the calls (buffer sizes, formats, strides).
import OnestepCore
import PNGCodec
@testable import OnestepTrain

/// CRC-32 (ISO 3309, as PNG uses) lookup table.
private let crcTable: [UInt32] = (0..<256).map { n in
    var c = UInt32(n)
    for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    return c
}

/// The bytes with each chunk's CRC (over type and data) recomputed, walking chunks after the 8-byte signature
/// until one runs past the end.
private func repairingChunkCRCs(_ bytes: [UInt8]) -> [UInt8] {
    var out = bytes
    var offset = 8
    while offset + 12 <= out.count {
        let length = out[offset..<(offset + 4)].reduce(0) { $0 << 8 | Int($1) }
        let crcOffset = offset + 8 + length
        guard crcOffset + 4 <= out.count else { break }
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in out[(offset + 4)..<crcOffset] { crc = crcTable[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        crc ^= 0xFFFF_FFFF
        for k in 0..<4 { out[crcOffset + k] = UInt8(truncatingIfNeeded: crc >> (24 - 8 * k)) }
        offset = crcOffset + 4
    }
    return out
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPNGDataset(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let original = fuzzBytes(data, size)
    let hash = fuzzHash(original)
    let input = (hash >> 16) % 4 == 0 ? original : repairingChunkCRCs(original)
    let channels = 1 + Int(hash % 4)
    let trainingSize = [8, 16, 32, 64][Int((hash >> 8) % 4)]

    let image: PixelImage
    do {
        image = try PNG.decode(input, channels: channels)
    } catch let error as PNGError {
        fuzzInvariant(!error.description.isEmpty, "a PNGError without a message")
        return 0
    } catch {
        fuzzInvariant(false, "PNG.decode threw \(type(of: error)), not PNGError: \(error)")
        return 0
    }
    fuzzInvariant(image.channels == channels && image.width > 0 && image.height > 0
                  && image.pixels.count == image.width * image.height * channels,
                  "decoded \(image.width)x\(image.height)x\(image.channels) with \(image.pixels.count) bytes")

    let resized = ImageResize.centerCropAreaResize(image, to: trainingSize)
    fuzzInvariant(resized.width == trainingSize && resized.height == trainingSize && resized.channels == channels,
                  "resized to \(resized.width)x\(resized.height)x\(resized.channels), wanted \(trainingSize)")
    let floats = ImageFolder.toModelSpace(resized)
    fuzzInvariant(floats.count == channels * trainingSize * trainingSize, "\(floats.count) model-space values")
    fuzzInvariant(floats.allSatisfy { $0 >= -1 && $0 <= 1 }, "a model-space value outside [-1, 1]")
    return 0
}

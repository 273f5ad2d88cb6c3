// Fuzz target: the PNG dataset loader's per-file path (Sources/OnestepTrain/Data/ImageFolder.swift over
// Sources/PNGCodec/PNG.swift): decode through libpng's simplified API into the requested channel layout, centre-crop
// and area-resize to the training size, convert to model space.
//
// ImageFolder.load does exactly this for every file of a folder (PNG.read is the file's bytes into PNG.decode);
// the folder walk itself takes no file content, so the target calls the per-file steps on the input bytes rather
// than writing a folder per input. The output channels (1-4, as a model's channels) and the training size come from
// a hash of the input, so seeds stay plain PNG files.
//
// Checked besides "no crash": a failure is a PNGError with a message; a decoded image has width x height x channels
// bytes; the resized image is size x size; model-space values lie in [-1, 1].
//
// libpng itself is the system library, not instrumented: crashes inside it still stop the fuzzer, but coverage
// guidance and ASan checks only see our side of the calls (buffer sizes, formats, strides).
import OnestepCore
import PNGCodec
@testable import OnestepTrain

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPNGDataset(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzBytes(data, size)
    let hash = fuzzHash(input)
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

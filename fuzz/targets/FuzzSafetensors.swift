// Fuzz target: the safetensors reader (Sources/OnestepCore/IO/Safetensors.swift) and what the model loader does
// with a file it accepted: every tensor read as the loader reads it (SafetensorsWeights: float tensors
// converted from F16/BF16/F64, Onestep's int8 tensors dequantized with their `_scale`, Quant/Int8Weights.swift),
// and the integer readers.
//
// Each input is a whole file. It is parsed twice: from memory (SafetensorsFile(bytes:)) and from a temporary file
// twice (SafetensorsFile(path:), mapped and read with pread), and all three must agree; the mapped file's tensors
// are read too, so a range past the mapping would fault here. Checked
// besides "no crash":
//   - every failure is a SafetensorsError with a message (never another error type);
//   - an accepted entry's byte range lies inside the data section and matches shape x dtype size;
//   - reading a tensor gives exactly elementCount values of its shape, or a SafetensorsError.
import Foundation
@testable import OnestepCore

/// One scratch file per process, rewritten for every input (libFuzzer runs inputs one at a time).
private let scratchPath = FileManager.default.temporaryDirectory
    .appendingPathComponent("onestep-fuzz-safetensors-\(getpid()).safetensors").path

/// What a reader made of the file, comparable across the two readers. Which tensor a refusal names is left out:
/// entries are checked in the header dictionary's order, which is not the file's and may differ between parses.
private enum ReadOutcome: Equatable {
    case accepted(names: [String], metadata: [String: String])
    case refused
}

private func read(_ open: () throws -> SafetensorsFile) -> (ReadOutcome, SafetensorsFile?) {
    do {
        let file = try open()
        return (.accepted(names: file.names, metadata: file.metadata), file)
    } catch let error as SafetensorsError {
        fuzzInvariant(!error.problem.isEmpty, "a SafetensorsError without a problem")
        return (.refused, nil)
    } catch {
        fuzzInvariant(false, "SafetensorsFile threw \(type(of: error)), not SafetensorsError: \(error)")
        return (.refused, nil)
    }
}

/// Reads every tensor the way the model loader and the tools do.
private func readEveryTensor(_ file: SafetensorsFile) {
    let weights = SafetensorsWeights(file: file)
    for name in file.names {
        guard let entry = file.entries[name] else { continue }
        fuzzInvariant(entry.begin >= 0 && entry.begin <= entry.end && entry.end <= file.dataSize,
                      "\(name): data_offsets [\(entry.begin), \(entry.end)) outside a \(file.dataSize)-byte data section")
        fuzzInvariant(entry.end - entry.begin == entry.elementCount * entry.dtype.byteSize,
                      "\(name): \(entry.end - entry.begin) bytes for shape \(entry.shape) of \(entry.dtype)")
        expectTensor(name, shape: entry.shape) { try weights.tensor(name, shape: entry.shape) }
        switch entry.dtype {
        case .F32, .F16, .BF16, .F64:
            expectTensor(name, shape: entry.shape) { try file.floats(name) }
        case .I8:
            expectTensor(name, shape: entry.shape) { try Int8Weights.dequantize(file: file, key: name) }
            expectValues(name, count: entry.elementCount) { try file.int8(name).values.count }
            expectValues(name, count: entry.elementCount) { try file.integers(name).values.count }
        case .U8, .I16, .I32, .I64, .BOOL:
            expectValues(name, count: entry.elementCount) { try file.integers(name).values.count }
        }
    }
    _ = weights.unusedKeys()
    // ImagePipeline.load tells an int8 file by this metadata key.
    _ = file.metadata["onestep.quantization"]
}

private func expectTensor(_ name: String, shape: [Int], _ read: () throws -> Tensor) {
    do {
        let tensor = try read()
        fuzzInvariant(tensor.shape == shape && tensor.data.count == shape.reduce(1, *),
                      "\(name): read as \(tensor.shape) with \(tensor.data.count) values, entry says \(shape)")
    } catch let error as SafetensorsError {
        fuzzInvariant(!error.problem.isEmpty, "\(name): a SafetensorsError without a problem")
    } catch {
        fuzzInvariant(false, "\(name): reading threw \(type(of: error)), not SafetensorsError: \(error)")
    }
}

private func expectValues(_ name: String, count: Int, _ read: () throws -> Int) {
    do {
        let got = try read()
        fuzzInvariant(got == count, "\(name): \(got) values read, the entry holds \(count)")
    } catch let error as SafetensorsError {
        fuzzInvariant(!error.problem.isEmpty, "\(name): a SafetensorsError without a problem")
    } catch {
        fuzzInvariant(false, "\(name): reading threw \(type(of: error)), not SafetensorsError: \(error)")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafetensors(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzBytes(data, size)
    let (fromMemory, file) = read { try SafetensorsFile(bytes: input, name: "fuzz.safetensors") }

    guard FileManager.default.createFile(atPath: scratchPath, contents: Data(input)) else {
        fatalError("fuzz set-up: cannot write \(scratchPath)")
    }
    let (fromPath, mapped) = read { try SafetensorsFile(path: scratchPath, mapped: true) }
    let (fromReading, _) = read { try SafetensorsFile(path: scratchPath, mapped: false) }
    fuzzInvariant(fromMemory == fromPath, "the in-memory reader says \(fromMemory), the mapped file reader \(fromPath)")
    fuzzInvariant(fromMemory == fromReading, "the in-memory reader says \(fromMemory), the reading file reader \(fromReading)")

    if let file { readEveryTensor(file) }
    if let mapped { readEveryTensor(mapped) }
    return 0
}

// Helpers shared by the fuzz targets (compiled into each target's executable; no library dependency).
//
// A fuzz target reports a bug in one of two ways: the library crashes (trap, ASan report), or the target finds an
// invariant broken and calls `fuzzInvariant`, which traps with the reason so libFuzzer saves the input.

/// The libFuzzer input as an array (the pointer is only valid during the call).
func fuzzBytes(_ data: UnsafePointer<UInt8>?, _ size: Int) -> [UInt8] {
    guard let data, size > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: data, count: size))
}

/// Traps with `message` when `condition` is false: a broken invariant is a bug even if nothing crashed.
func fuzzInvariant(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                   file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fatalError("fuzz invariant broken: \(message())", file: file, line: line) }
}

/// A small deterministic generator (SplitMix64): the same input always drives the same choices, so every
/// crash libFuzzer saves replays exactly.
struct FuzzRandom {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A value in 0..<bound (bound > 0).
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

/// FNV-1a over the bytes: picks per-input options (output channels, target size) without reserving a prefix of
/// the input for them, so that seeds stay real files (a PNG still starts with its signature).
func fuzzHash(_ bytes: [UInt8]) -> UInt64 {
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01B3 }
    return hash
}

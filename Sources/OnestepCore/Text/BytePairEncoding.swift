// Byte-level BPE with an end-of-word suffix, as the tokenizers library's BPE model runs CLIP
// (BPE(vocab, merges, end_of_word_suffix="</w>", continuing_subword_prefix="", fuse_unk=False, dropout=None)
// behind transformers 5's CLIPTokenizer).
//
// A pre-tokenized piece is UTF-8 bytes; each byte becomes one symbol of GPT-2's byte-level alphabet
// (bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 are shifted to U+0100...), the last
// symbol carrying the "</w>" suffix. Then the lowest-ranked adjacent pair in merges.txt is merged, leftmost first
// on equal rank, until no pair has a merge — the order tokenizers' word.rs merge_all pops from its heap.
// Symbols are vocabulary ids throughout, so a merge is one dictionary lookup on a 64-bit pair key.
import Synchronization

final class BytePairEncoding: Sendable {
    /// Pieces this long or longer are not cached (tokenizers' MAX_LENGTH), nor past `cacheCapacity` entries.
    static let cacheMaxPieceBytes = 256
    static let cacheCapacity = 10_000

    /// Symbol id of each byte alone, and of the byte as the last symbol of a word ("</w>" appended).
    let byteSymbol: [Int32]     // (256)
    let byteSymbolEnd: [Int32]  // (256)
    /// (left id << 32 | right id) -> (rank << 32 | merged id).
    let merges: [UInt64: UInt64]
    let unknownId: Int32
    private let cache = Mutex<[[UInt8]: [Int32]]>([:])

    /// GPT-2's bytes_to_unicode(): the character standing for each byte in vocab.json and merges.txt.
    static let byteCharacters: [Unicode.Scalar] = {
        var printable = Set<Int>()
        for r in [33...126, 161...172, 174...255] { printable.formUnion(r) }
        var out = [Unicode.Scalar](repeating: " ", count: 256)
        var shifted = 0
        for b in 0..<256 {
            if printable.contains(b) { out[b] = Unicode.Scalar(UInt32(b))! } else {
                out[b] = Unicode.Scalar(UInt32(256 + shifted))!
                shifted += 1
            }
        }
        return out
    }()

    /// - Parameters:
    ///   - vocab: token (UTF-8 bytes of its byte-level spelling) -> id.
    ///   - merges: (left id << 32 | right id) -> (rank << 32 | merged id), from TokenizerFiles.readMerges.
    ///   - unknownToken: used for a byte whose symbol is not in the vocabulary (never with CLIP's full alphabet).
    /// - Throws: ModelLoadError naming `vocabPath` when the unknown token is not in the vocabulary.
    init(vocab: ByteStringTable, merges: [UInt64: UInt64], unknownToken: [UInt8],
         endOfWordSuffix: [UInt8] = Array("</w>".utf8), vocabPath: String) throws {
        guard let unk = vocab.find(unknownToken) else {
            throw ModelLoadError(path: vocabPath, problem: "has no unknown token \(String(decoding: unknownToken, as: UTF8.self).debugDescription)")
        }
        unknownId = unk
        var single = [Int32](repeating: unk, count: 256), last = [Int32](repeating: unk, count: 256)
        for b in 0..<256 {
            let ch = Array(String(Self.byteCharacters[b]).utf8)
            single[b] = vocab.find(ch) ?? unk
            last[b] = vocab.find(ch + endOfWordSuffix) ?? unk
        }
        byteSymbol = single
        byteSymbolEnd = last
        self.merges = merges
    }

    @inline(__always)
    static func key(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b)) }

    /// Token ids of one pre-tokenized piece (non-empty UTF-8 bytes), appended to `out`.
    func encode(piece: [UInt8], into out: inout [Int]) {
        guard !piece.isEmpty else { return }
        let cacheable = piece.count < Self.cacheMaxPieceBytes
        if cacheable, let hit = cache.withLock({ $0[piece] }) {
            for id in hit { out.append(Int(id)) }
            return
        }
        let ids = merge(piece)
        if cacheable {
            cache.withLock { c in
                if c.count < Self.cacheCapacity { c[piece] = ids }
            }
        }
        for id in ids { out.append(Int(id)) }
    }

    /// The merge loop: repeatedly the lowest-ranked adjacent pair, leftmost among equals.
    func merge(_ piece: [UInt8]) -> [Int32] {
        var symbols = [Int32]()
        symbols.reserveCapacity(piece.count)
        for (i, b) in piece.enumerated() {
            symbols.append(i == piece.count - 1 ? byteSymbolEnd[Int(b)] : byteSymbol[Int(b)])
        }
        while symbols.count > 1 {
            var bestRank = UInt64.max, bestPos = -1, bestId: Int32 = 0
            for p in 0..<(symbols.count - 1) {
                guard let m = merges[Self.key(symbols[p], symbols[p + 1])] else { continue }
                let rank = m >> 32
                if rank < bestRank {
                    bestRank = rank
                    bestPos = p
                    bestId = Int32(bitPattern: UInt32(truncatingIfNeeded: m))
                }
            }
            guard bestPos >= 0 else { break }
            symbols[bestPos] = bestId
            symbols.remove(at: bestPos + 1)
        }
        return symbols
    }
}

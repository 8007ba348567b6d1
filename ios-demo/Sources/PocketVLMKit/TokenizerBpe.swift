import Foundation

/// The BPE model of a `tokenizer.json`, as Hugging Face `tokenizers` (Rust) runs it: a word's characters (Unicode
/// scalars, with `continuing_subword_prefix` / `end_of_word_suffix`), unknown characters as `<0xXX>` bytes
/// (`byte_fallback`) or `unk_token` (fused with `fuse_unk`), then merges applied lowest rank first, leftmost first,
/// with the same queue and the same stale-entry check as `Word::merge_all`. Words of fewer than 256 UTF-8 bytes are
/// cached (thread-safe; the cache stops growing at `cacheCapacity` words).
///
/// Tokens are keyed by their UTF-8 bytes, never by `String`: Swift compares and hashes strings by canonical
/// equivalence ("é" == "e\u{301}"), while `tokenizers` compares them byte for byte.
final class BpeModel {
    static let cacheCapacity = 10_000
    static let maxCachedBytes = 256

    /// token (UTF-8 bytes) -> id
    let vocab: [[UInt8]: Int]
    /// (left id, right id) packed in a UInt64 -> (rank << 32) | new id
    private let merges: [UInt64: UInt64]
    private let vocabReverse: [Int: String]
    private let unkId: Int?
    private let continuingPrefix: [UInt8]?
    private let endOfWordSuffix: [UInt8]?
    private let fuseUnk: Bool
    private let byteFallback: Bool
    private let ignoreMerges: Bool
    /// The `<0xXX>` token of each byte (byte_fallback), nil where the vocabulary has none.
    private let byteTokens: [Int?]
    private let lock = NSLock()
    private var cache: [[UInt8]: [Int]] = [:]

    init(vocab tokens: [(token: String, id: Int)], merges pairs: [(String, String)], unkToken: String?,
         continuingPrefix: String?, endOfWordSuffix: String?, fuseUnk: Bool, byteFallback: Bool,
         ignoreMerges: Bool) throws {
        var vocab = [[UInt8]: Int](minimumCapacity: tokens.count)
        for entry in tokens { vocab[Array(entry.token.utf8)] = entry.id }
        var reverse = [Int: String](minimumCapacity: vocab.count)
        for (key, id) in vocab { reverse[id] = String(decoding: key, as: UTF8.self) }
        let prefix = continuingPrefix.map { Array($0.utf8) }
        let prefixLength = prefix?.count ?? 0
        var table = [UInt64: UInt64](minimumCapacity: pairs.count)
        for (rank, pair) in pairs.enumerated() {
            let a = Array(pair.0.utf8)
            let b = Array(pair.1.utf8)
            guard let aId = vocab[a] else { throw BpeModel.missing(pair.0) }
            guard let bId = vocab[b] else { throw BpeModel.missing(pair.1) }
            // as tokenizers does: the new token drops the right part's continuing prefix (by its length in bytes)
            let merged = a + b.dropFirst(min(prefixLength, b.count))
            guard let newId = vocab[merged] else { throw BpeModel.missing(String(decoding: merged, as: UTF8.self)) }
            table[BpeModel.pairKey(aId, bId)] = (UInt64(rank) << 32) | UInt64(UInt32(truncatingIfNeeded: newId))
        }
        var unk: Int? = nil
        if let unkToken {
            guard let id = vocab[Array(unkToken.utf8)] else {
                throw BundleError("the tokenizer's unk_token '\(unkToken)' is not in its vocabulary",
                                  "re-export the bundle")
            }
            unk = id
        }
        let hex = Array("0123456789ABCDEF".utf8)
        var bytes: [Int?] = []
        for b in 0..<256 {
            let name: [UInt8] = Array("<0x".utf8) + [hex[b >> 4], hex[b & 15]] + Array(">".utf8)
            bytes.append(vocab[name])
        }
        self.vocab = vocab
        self.merges = table
        self.vocabReverse = reverse
        self.unkId = unk
        self.continuingPrefix = prefix
        self.endOfWordSuffix = endOfWordSuffix.map { Array($0.utf8) }
        self.fuseUnk = fuseUnk
        self.byteFallback = byteFallback
        self.ignoreMerges = ignoreMerges
        self.byteTokens = bytes
    }

    private static func missing(_ token: String) -> BundleError {
        BundleError("the tokenizer has a merge whose token '\(token)' is not in its vocabulary", "re-export the bundle")
    }

    func idToToken(_ id: Int) -> String? { vocabReverse[id] }

    /// One pre-tokenized word -> ids.
    func tokenize(_ word: String) -> [Int] {
        if word.isEmpty { return [] }
        let key = Array(word.utf8)
        if ignoreMerges, let id = vocab[key] { return [id] }
        lock.lock()
        let cached = cache[key]
        lock.unlock()
        if let cached { return cached }
        let ids = mergeWord(word)
        if key.count < BpeModel.maxCachedBytes {
            lock.lock()
            if cache.count < BpeModel.cacheCapacity { cache[key] = ids }
            lock.unlock()
        }
        return ids
    }

    private func mergeWord(_ word: String) -> [Int] {
        let scalars = Array(word.unicodeScalars)
        var symbols: [Int] = []
        symbols.reserveCapacity(scalars.count)
        var unk = -1  // the pending unknown-token id (fused or not), -1 for none
        var key: [UInt8] = []
        for (index, scalar) in scalars.enumerated() {
            key.removeAll(keepingCapacity: true)
            if index > 0, let prefix = continuingPrefix { key.append(contentsOf: prefix) }
            TokUnicode.appendUTF8(scalar, to: &key)
            if index == scalars.count - 1, let suffix = endOfWordSuffix { key.append(contentsOf: suffix) }
            if let id = vocab[key] {
                if unk >= 0 {
                    symbols.append(unk)
                    unk = -1
                }
                symbols.append(id)
            } else if byteFallback && addBytes(key, &symbols) {
                // each byte as its <0xXX> token; the pending unknown token waits (as in tokenizers)
            } else if let unkId {
                if unk >= 0 && !fuseUnk { symbols.append(unk) }
                unk = unkId
            }
            // else: a character that is not in the vocabulary is dropped, as tokenizers does without unk_token
        }
        if unk >= 0 { symbols.append(unk) }
        return mergeAll(symbols)
    }

    private func addBytes(_ bytes: [UInt8], _ out: inout [Int]) -> Bool {
        var ids: [Int] = []
        ids.reserveCapacity(bytes.count)
        for b in bytes {
            guard let id = byteTokens[Int(b)] else { return false }
            ids.append(id)
        }
        out.append(contentsOf: ids)
        return true
    }

    /// `Word::merge_all` of tokenizers: a min-queue on (rank, position), entries re-checked when popped.
    private func mergeAll(_ ids: [Int]) -> [Int] {
        let n = ids.count
        if n < 2 { return ids }
        var c = ids
        var prev = (0..<n).map { $0 - 1 }
        var next = (0..<n).map { $0 + 1 < n ? $0 + 1 : -1 }
        var removed = [Bool](repeating: false, count: n)
        var queue = MergeQueue(capacity: n)
        for pos in 0..<(n - 1) {
            if let m = merges[BpeModel.pairKey(c[pos], c[pos + 1])] { queue.push(m >> 32, pos, BpeModel.newId(m)) }
        }
        while queue.size > 0 {
            let pos = queue.topPos
            let newId = queue.topNewId
            queue.pop()
            if removed[pos] || next[pos] == -1 { continue }
            let right = next[pos]
            guard let current = merges[BpeModel.pairKey(c[pos], c[right])], BpeModel.newId(current) == newId else {
                continue  // an expired entry
            }
            c[pos] = newId
            removed[right] = true
            next[pos] = next[right]
            if next[right] != -1 { prev[next[right]] = pos }
            let before = prev[pos]
            if before >= 0, let m = merges[BpeModel.pairKey(c[before], c[pos])] {
                queue.push(m >> 32, before, BpeModel.newId(m))
            }
            if next[pos] != -1, let m = merges[BpeModel.pairKey(c[pos], c[next[pos]])] {
                queue.push(m >> 32, pos, BpeModel.newId(m))
            }
        }
        var out: [Int] = []
        out.reserveCapacity(n)
        for pos in 0..<n where !removed[pos] { out.append(c[pos]) }
        return out
    }

    static func pairKey(_ a: Int, _ b: Int) -> UInt64 {
        (UInt64(UInt32(truncatingIfNeeded: a)) << 32) | UInt64(UInt32(truncatingIfNeeded: b))
    }

    private static func newId(_ merge: UInt64) -> Int { Int(Int32(truncatingIfNeeded: merge & 0xFFFF_FFFF)) }
}

/// A binary min-heap of merges ordered by (rank, position), with the merge's new id alongside.
private struct MergeQueue {
    private var keys: [UInt64] = []
    private var newIds: [Int] = []

    init(capacity: Int) {
        keys.reserveCapacity(max(capacity, 4))
        newIds.reserveCapacity(max(capacity, 4))
    }

    var size: Int { keys.count }

    mutating func push(_ rank: UInt64, _ pos: Int, _ newId: Int) {
        let key = (rank << 32) | UInt64(UInt32(truncatingIfNeeded: pos))
        keys.append(key)
        newIds.append(newId)
        var i = keys.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if keys[parent] <= key { break }
            keys[i] = keys[parent]
            newIds[i] = newIds[parent]
            i = parent
        }
        keys[i] = key
        newIds[i] = newId
    }

    var topPos: Int { Int(keys[0] & 0xFFFF_FFFF) }
    var topNewId: Int { newIds[0] }

    mutating func pop() {
        let key = keys.removeLast()
        let id = newIds.removeLast()
        let size = keys.count
        if size == 0 { return }
        var i = 0
        while true {
            var child = 2 * i + 1
            if child >= size { break }
            if child + 1 < size && keys[child + 1] < keys[child] { child += 1 }
            if keys[child] >= key { break }
            keys[i] = keys[child]
            newIds[i] = newIds[child]
            i = child
        }
        keys[i] = key
        newIds[i] = id
    }
}

/// GPT-2's reversible byte <-> printable-character table (`bytes_char` of tokenizers' ByteLevel).
enum ByteLevelTable {
    static let byteToChar: [Unicode.Scalar] = {
        var printable = Set<Int>()
        for b in 0x21...0x7E { printable.insert(b) }
        for b in 0xA1...0xAC { printable.insert(b) }
        for b in 0xAE...0xFF { printable.insert(b) }
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var n = 0
        for b in 0..<256 {
            if printable.contains(b) {
                table[b] = Unicode.Scalar(UInt8(b))
            } else {
                table[b] = Unicode.Scalar(UInt32(256 + n)) ?? " "
                n += 1
            }
        }
        return table
    }()

    static let charToByte: [UInt32: UInt8] = {
        var map = [UInt32: UInt8](minimumCapacity: 512)
        for b in 0..<256 { map[ByteLevelTable.byteToChar[b].value] = UInt8(b) }
        return map
    }()

    /// The text's UTF-8 bytes as printable characters.
    static func encode(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        for b in text.utf8 { out.append(ByteLevelTable.byteToChar[Int(b)]) }
        return String(out)
    }

    /// One token's bytes: its characters through the table, or (one character outside it) its own UTF-8 bytes.
    static func decodeToken(_ token: String, into out: inout [UInt8]) {
        var mapped: [UInt8] = []
        for scalar in token.unicodeScalars {
            guard let b = ByteLevelTable.charToByte[scalar.value] else {
                out.append(contentsOf: token.utf8)
                return
            }
            mapped.append(b)
        }
        out.append(contentsOf: mapped)
    }
}

/// The Unicode helpers that must agree with Rust's `char` methods and the `regex` crate. Everything here works on
/// Unicode scalars or UTF-8 bytes: never on Swift `Character`s (graphemes) or `String` equality (canonical).
enum TokUnicode {
    static let replacement: Unicode.Scalar = "\u{FFFD}"

    /// Unicode White_Space (Rust `char::is_whitespace`, `\s` of Rust's regex and of Oniguruma).
    static func isWhiteSpace(_ scalar: Unicode.Scalar) -> Bool {
        let cp = scalar.value
        return (0x09...0x0D).contains(cp) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
            (0x2000...0x200A).contains(cp) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
            cp == 0x3000
    }

    /// Where the run of white space that ends at `end` starts (not before `floor`); indices are scalar offsets.
    static func whiteSpaceBefore(_ text: [Unicode.Scalar], _ end: Int, _ floor: Int) -> Int {
        var i = end
        while i > floor && isWhiteSpace(text[i - 1]) { i -= 1 }
        return i
    }

    /// Where the run of white space that starts at `start` ends (not after `limit`); indices are scalar offsets.
    static func whiteSpaceAfter(_ text: [Unicode.Scalar], _ start: Int, _ limit: Int) -> Int {
        var i = start
        while i < limit && isWhiteSpace(text[i]) { i += 1 }
        return i
    }

    /// The same set as regex class items (for use inside `[...]`), in ICU syntax.
    static let whiteSpaceItems = "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}" +
        "\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

    /// Rust `char::is_numeric`: general categories Nd, Nl, No.
    static func isNumeric(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    /// `\w` of Rust's regex crate: Alphabetic, marks, Nd, Pc, Join_Control.
    static func isWordChar(_ scalar: Unicode.Scalar) -> Bool {
        if scalar.properties.isAlphabetic || scalar.value == 0x200C || scalar.value == 0x200D { return true }
        switch scalar.properties.generalCategory {
        case .nonspacingMark, .enclosingMark, .spacingMark, .decimalNumber, .connectorPunctuation: return true
        default: return false
        }
    }

    /// What Kotlin's `Char.isLetterOrDigit` accepts: letters (Lu Ll Lt Lm Lo) and Nd.
    static func isLetterOrDigit(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter, .decimalNumber:
            return true
        default: return false
        }
    }

    /// Rust `char::to_lowercase` applied per scalar (no final-sigma context, 'İ' -> "i̇").
    static func lowercase(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            if scalar.value < 0x80 {
                let v = scalar.value
                out.append((0x41...0x5A).contains(v) ? Unicode.Scalar(UInt8(v + 32)) : scalar)
            } else {
                out.append(contentsOf: scalar.properties.lowercaseMapping.unicodeScalars)
            }
        }
        return String(out)
    }

    /// Rust's `String::from_utf8_lossy`: each maximal invalid subpart becomes one U+FFFD.
    static func decodeUtf8Lossy(_ bytes: [UInt8]) -> String {
        var out = String.UnicodeScalarView()
        var i = 0
        while i < bytes.count {
            let b0 = Int(bytes[i])
            if b0 < 0x80 {
                out.append(Unicode.Scalar(UInt8(b0)))
                i += 1
                continue
            }
            var need = 0
            var lo = 0x80
            var hi = 0xBF
            switch b0 {
            case 0xC2...0xDF: need = 1
            case 0xE0: need = 2; lo = 0xA0
            case 0xE1...0xEC, 0xEE, 0xEF: need = 2
            case 0xED: need = 2; hi = 0x9F
            case 0xF0: need = 3; lo = 0x90
            case 0xF1...0xF3: need = 3
            case 0xF4: need = 3; hi = 0x8F
            default:
                out.append(replacement)
                i += 1
                continue
            }
            var cp = b0 & (0x3F >> need)
            var j = 1
            while j <= need {
                if i + j >= bytes.count { break }
                let b = Int(bytes[i + j])
                if b < (j == 1 ? lo : 0x80) || b > (j == 1 ? hi : 0xBF) { break }
                cp = (cp << 6) | (b & 0x3F)
                j += 1
            }
            if j <= need {
                out.append(replacement)
                i += j
                continue
            }
            out.append(Unicode.Scalar(UInt32(cp)) ?? replacement)
            i += need + 1
        }
        return String(out)
    }

    static func utf8Length(_ text: String) -> Int { text.utf8.count }

    /// The scalar index of the first unpaired surrogate, or -1 (what Python's `str.encode("utf-8")` refuses). A
    /// native Swift string has none; a string bridged from an `NSString` can.
    static func loneSurrogate(_ text: String) -> Int {
        let units = Array(text.utf16)
        var i = 0
        var index = 0
        while i < units.count {
            let c = units[i]
            if UTF16.isLeadSurrogate(c) {
                if i + 1 < units.count && UTF16.isTrailSurrogate(units[i + 1]) { i += 1 } else { return index }
            } else if UTF16.isTrailSurrogate(c) {
                return index
            }
            i += 1
            index += 1
        }
        return -1
    }

    /// Kotlin's `isBlank`: every UTF-16 unit is Java white space or a space character (Zs, Zl, Zp).
    static func isBlank(_ text: String) -> Bool {
        for unit in text.utf16 {
            if (0x09...0x0D).contains(unit) || (0x1C...0x1F).contains(unit) { continue }
            if UTF16.isLeadSurrogate(unit) || UTF16.isTrailSurrogate(unit) { return false }
            guard let scalar = Unicode.Scalar(unit) else { return false }
            switch scalar.properties.generalCategory {
            case .spaceSeparator, .lineSeparator, .paragraphSeparator: continue
            default: return false
            }
        }
        return true
    }

    /// A string of exactly these scalars (no normalization).
    static func string<S: Sequence>(_ scalars: S) -> String where S.Element == Unicode.Scalar {
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        return String(view)
    }

    /// Byte-for-byte equality (Swift's `==` on strings is canonical equivalence).
    static func same(_ a: String, _ b: String) -> Bool { a.utf8.elementsEqual(b.utf8) }

    /// The scalar count of `text` (Python's `len`).
    static func count(_ text: String) -> Int { text.unicodeScalars.count }

    static func appendUTF8(_ scalar: Unicode.Scalar, to out: inout [UInt8]) {
        let v = scalar.value
        if v < 0x80 {
            out.append(UInt8(v))
        } else if v < 0x800 {
            out.append(UInt8(0xC0 | (v >> 6)))
            out.append(UInt8(0x80 | (v & 0x3F)))
        } else if v < 0x10000 {
            out.append(UInt8(0xE0 | (v >> 12)))
            out.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (v & 0x3F)))
        } else {
            out.append(UInt8(0xF0 | (v >> 18)))
            out.append(UInt8(0x80 | ((v >> 12) & 0x3F)))
            out.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (v & 0x3F)))
        }
    }
}

import Foundation

/// Incremental detokenisation, the algorithm of the Python runtime's `TextStream` (`runtime/text.py`): a bounded
/// window of ids holds the last emitted piece's ids as context and the ids not emitted yet. Each id decodes the
/// context (once, cached) and the whole window; the new suffix is emitted once it does not end in an incomplete UTF-8
/// sequence (U+FFFD), and the window moves up. Text held back for more than `maxHeld` ids is emitted as it stands,
/// or forgotten when it adds nothing (skipped special tokens). `finish` takes the full decode and returns what is
/// left of it. Lengths are counted in Unicode scalars, as Python counts code points, so the pieces are Python's
/// exactly (never half a character: a Swift `String` cannot hold one, and graphemes are not counted). One stream per
/// generation; not thread-safe.
public final class TextStream {
    private let decode: ([Int]) throws -> String
    /// Ids held back (waiting for the rest of a character) before the text is emitted as it stands.
    public let maxHeld: Int
    private var window: [Int] = []
    private var read = 0
    private var contextText: String? = ""

    /// Scalars (code points) emitted so far.
    public private(set) var emitted = 0

    /// A stream over `decode` (the tokenizer's, special tokens skipped).
    public init(decode: @escaping ([Int]) throws -> String, maxHeld: Int = 8) {
        self.decode = decode
        self.maxHeld = maxHeld
    }

    /// Adds one generated id; returns the newly complete text ("" when there is none yet). Errors are `decode`'s.
    public func push(_ id: Int) throws -> String {
        window.append(id)
        let context: String
        if let cached = contextText {
            context = cached
        } else {
            context = try decode(Array(window[0..<read]))
            contextText = context
        }
        let text = try decode(window)
        let contextLength = TokUnicode.count(context)
        let grew = TokUnicode.count(text) > contextLength
        if !grew || text.unicodeScalars.last == TokUnicode.replacement {
            if window.count - read <= maxHeld { return "" }
            if !grew {  // nothing visible in the held ids (e.g. special tokens skipped by decode): drop them
                window.removeSubrange(read..<window.count)
                return ""
            }
        }
        let piece = TokUnicode.string(text.unicodeScalars.dropFirst(contextLength))
        window.removeSubrange(0..<read)
        read = window.count
        contextText = nil
        emitted += TokUnicode.count(piece)
        return piece
    }

    /// The rest of `full` (the decode of all ids) after what `push` emitted: e.g. a trailing incomplete character.
    public func finish(_ full: String) -> String {
        let count = TokUnicode.count(full)
        return emitted >= count ? "" : TokUnicode.string(full.unicodeScalars.dropFirst(emitted))
    }
}

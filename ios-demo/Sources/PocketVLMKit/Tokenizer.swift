import Foundation

/// A padded batch: `input_ids` and `attention_mask` rows (int64, [batch, length]), as `Tokenizer.encode` gives.
public struct Encoded {
    public let ids: [[Int64]]
    public let attentionMask: [[Int64]]
}

/// A bundle's `tokenizer.json`, run as Hugging Face `tokenizers` runs it, with the rules of the Python runtime's
/// `TextTokenizer` (`runtime/text.py`): `encodePlain` adds no special tokens (chat templates carry their own);
/// `encode` (dual encoders) adds the post-processor's, truncates to `max_length` keeping them and pads right per
/// the manifest; `decode` skips special tokens. The pipeline: added tokens split out of the raw text, the
/// normalizer, added tokens of normalized content, the pre-tokenizer, byte-level BPE.
///
/// Supported: a BPE model (merges as pairs or "a b" strings, `continuing_subword_prefix`, `end_of_word_suffix`,
/// `unk_token`, `fuse_unk`, `byte_fallback`, `ignore_merges`); normalizers NFC/NFD/NFKC/NFKD, Lowercase, Replace,
/// Strip, Prepend, Sequence; pre-tokenizers ByteLevel, Split (Oniguruma regexes translated, see `OnigRegex`),
/// Digits, Sequence; post-processors TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, Sequence;
/// decoders ByteLevel, Sequence. Anything else (a Unigram or WordPiece model, a Metaspace pre-tokenizer, ...) is a
/// `BundleError` naming it when the file is read. Immutable and thread-safe once built.
///
/// Text is handled as Unicode scalars and UTF-8 bytes throughout (never graphemes, never `String` equality, which
/// is canonical in Swift), so the ids are those of `tokenizers` byte for byte.
public final class Tokenizer: @unchecked Sendable {
    private let model: BpeModel
    private let normalizer: TokNormalizer?
    private let preTokenizer: TokPreTokenizer?
    private let postProcessor: TokPostProcessor?
    private let decoder: TokDecoder?
    private let added: AddedVocabulary

    /// Distinct tokens, the model's and the added ones (`get_vocab_size()` of tokenizers).
    public let vocabSize: Int

    private init(model: BpeModel, normalizer: TokNormalizer?, preTokenizer: TokPreTokenizer?,
                 postProcessor: TokPostProcessor?, decoder: TokDecoder?, added: AddedVocabulary) {
        self.model = model
        self.normalizer = normalizer
        self.preTokenizer = preTokenizer
        self.postProcessor = postProcessor
        self.decoder = decoder
        self.added = added
        self.vocabSize = model.vocab.count + added.contents.filter { model.vocab[$0] == nil }.count
    }

    /// The special tokens the post-processor adds around one sequence (dual encoders' `add_special_tokens`).
    public var specialTokensAdded: Int { postProcessor?.added ?? 0 }

    /// One already-templated prompt -> ids, no special tokens added, at most `maxLength` of them (as the runtime's
    /// truncation does). A lone surrogate (possible in a string bridged from `NSString`) is an `InputError`.
    public func encodePlain(_ text: String, maxLength: Int = Int.max) throws -> [Int64] {
        try Tokenizer.checkText(text, "prompt")
        let ids = encodeIds(text)
        return ids.prefix(min(ids.count, max(maxLength, 0))).map { Int64($0) }
    }

    /// Texts -> padded `input_ids` and `attention_mask` with the post-processor's special tokens, per `spec` (a dual
    /// encoder's tokenization; the iOS app runs VLMs only, but the rules are the Kotlin engine's).
    public func encode(_ texts: [String], spec: TokenizerSpec) throws -> Encoded {
        if texts.isEmpty { throw InputError("no text given", "pass at least one non-empty text or label") }
        try checkSpec(spec)
        for text in texts { try Tokenizer.checkText(text, "text") }
        let special = postProcessor?.added ?? 0
        let rows: [[Int]] = texts.map { text in
            let ids = encodeIds(text)
            // tokenizers truncates the sequence to max_length minus the special tokens, then adds them
            let kept = ids.count > spec.maxLength - special ? Array(ids.prefix(spec.maxLength - special)) : ids
            return postProcessor?.process(kept) ?? kept
        }
        let length = TokUnicode.same(spec.padding, "max_length") ? spec.maxLength : rows.map { $0.count }.max() ?? 0
        var ids = [[Int64]](repeating: [Int64](repeating: Int64(spec.padTokenId), count: length), count: rows.count)
        var mask = [[Int64]](repeating: [Int64](repeating: 0, count: length), count: rows.count)
        for (r, row) in rows.enumerated() {
            for (i, id) in row.enumerated() where i < length {
                ids[r][i] = Int64(id)
                mask[r][i] = 1
            }
        }
        return Encoded(ids: ids, attentionMask: mask)
    }

    /// Ids -> text, special tokens skipped unless asked; ids the tokenizer does not know are left out (as
    /// tokenizers does). A negative id is an `InputError`.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = true) throws -> String {
        var tokens: [String] = []
        tokens.reserveCapacity(ids.count)
        for id in ids {
            if id < 0 { throw InputError("token id \(id) is negative", "pass the ids the model generated") }
            guard let token = added.token(id) ?? model.idToToken(id) else { continue }
            if skipSpecialTokens && added.isSpecial(token) { continue }
            tokens.append(token)
        }
        if let decoder { return decoder.decodeChain(tokens).joined() }
        return tokens.joined(separator: " ")
    }

    /// An added or vocabulary token's id (as `token_to_id`), or nil.
    public func tokenId(_ token: String) -> Int? { added.idOf(token) ?? model.vocab[Array(token.utf8)] }

    /// Incremental detokenisation of generated ids, as the runtime's `TextStream`.
    public func stream() -> TextStream { TextStream(decode: { [self] ids in try self.decode(ids) }) }

    private func encodeIds(_ text: String) -> [Int] {
        var out: [Int] = []
        out.reserveCapacity(text.utf8.count / 3 + 4)
        for raw in added.split(text, normalizedTokens: false) {
            if raw.id >= 0 {
                out.append(raw.id)
                continue
            }
            let normalized = normalizer?.normalize(raw.text) ?? raw.text
            for piece in added.split(normalized, normalizedTokens: true) {
                if piece.id >= 0 {
                    out.append(piece.id)
                    continue
                }
                let words = preTokenizer?.split([piece.text]) ?? [piece.text]
                for word in words { out.append(contentsOf: model.tokenize(word)) }
            }
        }
        return out
    }

    private func checkSpec(_ spec: TokenizerSpec) throws {
        let fix = "export the bundle with a pocketvlm version this app supports"
        if !TokUnicode.same(spec.padding, "longest") && !TokUnicode.same(spec.padding, "max_length") {
            throw BundleError("the manifest's tokenizer padding '\(spec.padding)' is not 'longest' or 'max_length'", fix)
        }
        if !TokUnicode.same(spec.paddingSide, "right") {
            throw BundleError("the manifest's tokenizer padding_side '\(spec.paddingSide)' is not 'right'", fix)
        }
        if !spec.truncation { throw BundleError("the manifest's tokenizer does not truncate; this app always does", fix) }
        let special = postProcessor?.added ?? 0
        if spec.maxLength < special || spec.maxLength <= 0 {
            throw BundleError("the manifest's tokenizer max_length \(spec.maxLength) leaves no room for the text " +
                              "(\(special) special tokens)", fix)
        }
    }

    /// Reads a `tokenizer.json` file; an unreadable or invalid file, or a feature this app does not run, is a
    /// `BundleError`.
    public static func load(contentsOf url: URL) throws -> Tokenizer {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw BundleError("cannot read \(url.lastPathComponent): \(error.localizedDescription)",
                              "re-copy the bundle to the phone")
        }
        return try fromJson(data)
    }

    /// Reads a `tokenizer.json`'s bytes; an invalid file or a feature this app does not run is a `BundleError`.
    public static func fromJson(_ data: Data) throws -> Tokenizer {
        try read(JSONNode.parse(data, what: "tokenizer.json"))
    }

    /// Reads a `tokenizer.json`'s text (as the Kotlin `Tokenizer.fromJson`).
    public static func fromJson(_ text: String) throws -> Tokenizer { try fromJson(Data(text.utf8)) }

    /// The whole file: model, stages and added tokens.
    // json: tokenizer
    private static func read(_ root: JSONNode) throws -> Tokenizer {
        if let version = root.opt("version") {
            let value = try version.string()
            if !TokUnicode.same(value, "1.0") {
                throw BundleError("tokenizer.json version '\(value)' is not 1.0", "re-export the bundle")
            }
        }
        do {
            let model = try readModel(root["model"])
            var normalizer: TokNormalizer? = nil
            if let node = root.opt("normalizer") { normalizer = try TokNormalizers.read(node) }
            var preTokenizer: TokPreTokenizer? = nil
            if let node = root.opt("pre_tokenizer") { preTokenizer = try TokPreTokenizers.read(node) }
            var postProcessor: TokPostProcessor? = nil
            if let node = root.opt("post_processor") { postProcessor = try TokPostProcessors.read(node) }
            var decoder: TokDecoder? = nil
            if let node = root.opt("decoder") { decoder = try TokDecoders.read(node) }
            var tokens: [TokAddedToken] = []
            if let node = root.opt("added_tokens") {
                for item in try node.list() { tokens.append(try TokAddedToken(item)) }
            }
            let added = AddedVocabulary(tokens, model: model, normalizer: normalizer)
            return Tokenizer(model: model, normalizer: normalizer, preTokenizer: preTokenizer,
                             postProcessor: postProcessor, decoder: decoder, added: added)
        } catch let error as PocketVLMError {
            throw error
        } catch {  // a malformed value this reader did not foresee
            throw BundleError("tokenizer.json cannot be read: \(error)", "re-export the bundle")
        }
    }

    /// The `model` block: a BPE, without dropout.
    // json: tokenizer
    private static func readModel(_ node: JSONNode) throws -> BpeModel {
        let type: String
        if let typeNode = node.opt("type") {
            type = try typeNode.string()
        } else {
            type = node.has("merges") ? "BPE" : "(untyped)"
        }
        if !TokUnicode.same(type, "BPE") { throw tokUnsupported("model", type) }
        let dropout = try node.opt("dropout")?.double() ?? 0.0
        if dropout != 0.0 {
            throw BundleError("the tokenizer's BPE has dropout \(dropout) (random merges, for training)",
                              "export the tokenizer with dropout null")
        }
        var vocab: [(token: String, id: Int)] = []
        for (token, id) in try node["vocab"].obj() {
            let value = try id.int()
            vocab.append((token: token, id: value))
        }
        var merges: [(String, String)] = []
        for merge in try node["merges"].list() {
            let parts: [String]
            if let pair = try? merge.strings() {
                parts = pair
            } else {
                let text = try merge.string()
                parts = text.unicodeScalars.split(separator: " ", omittingEmptySubsequences: false)
                    .map { TokUnicode.string($0) }
            }
            if parts.count != 2 {
                throw BundleError("tokenizer.json field '\(merge.path)' is not a pair of tokens", "re-export the bundle")
            }
            merges.append((parts[0], parts[1]))
        }
        let unkToken = try node.opt("unk_token")?.string()
        let prefix = try node.opt("continuing_subword_prefix")?.string()
        let suffix = try node.opt("end_of_word_suffix")?.string()
        let fuseUnk = try node.opt("fuse_unk")?.bool() ?? false
        let byteFallback = try node.opt("byte_fallback")?.bool() ?? false
        let ignoreMerges = try node.opt("ignore_merges")?.bool() ?? false
        return try BpeModel(vocab: vocab, merges: merges, unkToken: unkToken, continuingPrefix: prefix,
                            endOfWordSuffix: suffix, fuseUnk: fuseUnk, byteFallback: byteFallback,
                            ignoreMerges: ignoreMerges)
    }

    /// The runtime's `check_text`: a string with a lone surrogate cannot be UTF-8 and is refused.
    static func checkText(_ text: String, _ what: String) throws {
        let at = TokUnicode.loneSurrogate(text)
        if at >= 0 {
            throw InputError("the \(what) is not valid Unicode (a lone surrogate at character \(at))",
                             "pass the \(what) as UTF-8 text (check the terminal's or file's encoding)")
        }
    }
}

/// A piece of the text: an added token's id, or text (id -1) for the next stages.
struct TokPiece {
    let text: String
    let id: Int
}

/// One entry of `added_tokens`, as the file gives it (its `id` is not used: see `AddedVocabulary`).
struct TokAddedToken {
    let content: String
    let singleWord: Bool
    let lstrip: Bool
    let rstrip: Bool
    let normalized: Bool
    let special: Bool

    // json: tokenizer
    init(_ node: JSONNode) throws {
        content = try node["content"].string()
        singleWord = try node["single_word"].bool()
        lstrip = try node["lstrip"].bool()
        rstrip = try node["rstrip"].bool()
        normalized = try node["normalized"].bool()
        special = try node["special"].bool()
    }
}

/// The added tokens (`AddedVocabulary` of tokenizers): ids as tokenizers assigns them when it loads the file (a
/// token of the model's vocabulary keeps its id, others are numbered from the vocabulary size on, whatever id the
/// file gives), matched leftmost-longest in the raw text (`normalized: false`) or in normalized pieces, with
/// `single_word`, `lstrip` and `rstrip`. Contents are keyed by their UTF-8 bytes.
final class AddedVocabulary {
    fileprivate struct Added {
        let content: [Unicode.Scalar]
        let id: Int
        let token: TokAddedToken
    }

    private var byContent: [[UInt8]: Int] = [:]
    private var byId: [Int: Added] = [:]
    private var order: [Int] = []  // ids in first-insertion order (Kotlin's LinkedHashMap)
    private var normalizedContent: [Int: String] = [:]
    private var special = Set<[UInt8]>()
    private var raw: AddedMatcher? = nil
    private var normalizedMatcher: AddedMatcher? = nil

    /// The contents (UTF-8 bytes) of every added token.
    var contents: Dictionary<[UInt8], Int>.Keys { byContent.keys }

    init(_ tokens: [TokAddedToken], model: BpeModel, normalizer: TokNormalizer?) {
        var nextId = model.vocab.count
        for token in tokens {
            if token.content.isEmpty { continue }
            let key = Array(token.content.utf8)
            let id: Int
            if let known = byContent[key] ?? model.vocab[key] {
                id = known
            } else {
                id = nextId
                nextId += 1
            }
            if token.normalized, let normalizer {
                let normed = normalizer.normalize(token.content)
                if !TokUnicode.same(normed, token.content) { normalizedContent[id] = normed }
            }
            byContent[key] = id
            if token.special { special.insert(key) }
            if byId[id] == nil { order.append(id) }
            byId[id] = Added(content: Array(token.content.unicodeScalars), id: id, token: token)
        }
        let entries = order.compactMap { byId[$0] }
        raw = AddedMatcher.of(entries.filter { !$0.token.normalized }.map { ($0.content, $0) })
        normalizedMatcher = AddedMatcher.of(entries.filter { $0.token.normalized }.map { entry in
            (normalizedContent[entry.id].map { Array($0.unicodeScalars) } ?? entry.content, entry)
        })
    }

    func idOf(_ content: String) -> Int? { byContent[Array(content.utf8)] }

    func token(_ id: Int) -> String? {
        guard let entry = byId[id] else { return nil }
        return normalizedContent[id] ?? entry.token.content
    }

    func isSpecial(_ token: String) -> Bool { special.contains(Array(token.utf8)) }

    /// `find_matches` + `split_with_indices`: `text` cut around the added tokens found in it, empty pieces dropped.
    func split(_ text: String, normalizedTokens: Bool) -> [TokPiece] {
        if text.isEmpty { return [] }
        guard let matcher = normalizedTokens ? normalizedMatcher : raw else { return [TokPiece(text: text, id: -1)] }
        let t = Array(text.unicodeScalars)
        var out: [TokPiece] = []
        var startOffset = 0
        var from = 0
        while let found = matcher.find(t, from) {
            var start = found.start
            var stop = found.start + found.content.count
            from = stop
            let added = found.added
            if added.token.singleWord {
                let startSpace = start == 0 || !TokUnicode.isWordChar(t[start - 1])
                let stopSpace = stop == t.count || !TokUnicode.isWordChar(t[stop])
                if !startSpace || !stopSpace { continue }
            }
            if added.token.lstrip { start = max(TokUnicode.whiteSpaceBefore(t, start, 0), startOffset) }
            if added.token.rstrip { stop = TokUnicode.whiteSpaceAfter(t, stop, t.count) }
            if startOffset < start { out.append(TokPiece(text: TokUnicode.string(t[startOffset..<start]), id: -1)) }
            out.append(TokPiece(text: TokUnicode.string(t[start..<stop]), id: added.id))
            startOffset = stop
        }
        if startOffset < t.count { out.append(TokPiece(text: TokUnicode.string(t[startOffset...]), id: -1)) }
        return out
    }
}

/// Leftmost-longest matching of a set of scalar strings (what tokenizers' Aho-Corasick automaton does).
private final class AddedMatcher {
    struct Found {
        let start: Int
        let content: [Unicode.Scalar]
        let added: AddedVocabulary.Added
    }

    private let byFirst: [Unicode.Scalar: [([Unicode.Scalar], AddedVocabulary.Added)]]

    private init(_ byFirst: [Unicode.Scalar: [([Unicode.Scalar], AddedVocabulary.Added)]]) { self.byFirst = byFirst }

    func find(_ text: [Unicode.Scalar], _ from: Int) -> Found? {
        var i = from
        while i < text.count {
            if let candidates = byFirst[text[i]] {
                for (content, added) in candidates where AddedMatcher.startsWith(text, content, i) {
                    return Found(start: i, content: content, added: added)
                }
            }
            i += 1
        }
        return nil
    }

    private static func startsWith(_ text: [Unicode.Scalar], _ prefix: [Unicode.Scalar], _ at: Int) -> Bool {
        if text.count - at < prefix.count { return false }
        for k in 0..<prefix.count where text[at + k] != prefix[k] { return false }
        return true
    }

    static func of(_ tokens: [([Unicode.Scalar], AddedVocabulary.Added)]) -> AddedMatcher? {
        if tokens.isEmpty { return nil }
        var byFirst: [Unicode.Scalar: [([Unicode.Scalar], AddedVocabulary.Added)]] = [:]
        for token in tokens {
            guard let first = token.0.first else { continue }
            byFirst[first, default: []].append(token)
        }
        // longest first; a stable sort keeps the file's order among equal lengths
        for (first, list) in byFirst {
            let indexed = list.enumerated().sorted { a, b in
                a.element.0.count != b.element.0.count ? a.element.0.count > b.element.0.count : a.offset < b.offset
            }
            byFirst[first] = indexed.map { $0.element }
        }
        return AddedMatcher(byFirst)
    }
}

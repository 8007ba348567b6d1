import Foundation

// The `tokenizer.json` stages this app runs, each as `tokenizers` (Rust) runs it, on plain strings (offsets are not
// needed here). Any other stage type is a `BundleError` naming it: never a silently different encoding.

/// Rewrites the text (NFC, Lowercase, Replace, ...).
struct TokNormalizer {
    let normalize: (String) -> String
}

/// Splits each piece further (and may rewrite it, as ByteLevel does); empty pieces are dropped, as in tokenizers.
struct TokPreTokenizer {
    let split: ([String]) -> [String]
}

/// The special tokens a post-processor adds around one sequence (`add_special_tokens=True`).
struct TokPostProcessor {
    let before: [Int]
    let after: [Int]
    var added: Int { before.count + after.count }
    func process(_ ids: [Int]) -> [Int] { before + ids + after }
}

/// Turns tokens back into text pieces.
struct TokDecoder {
    let decodeChain: ([String]) -> [String]
}

func tokUnsupported(_ stage: String, _ type: String) -> BundleError {
    BundleError("tokenizer \(stage) '\(type)' is not supported by this app",
                "export the bundle with a byte-level BPE tokenizer (as CLIP, SmolLM2 and Qwen2 have), or update the app")
}

/// A stage's `type`.
// json: tokenizer
private func typeOf(_ node: JSONNode) throws -> String { try node["type"].string() }

/// The normalizers.
enum TokNormalizers {
    /// One `normalizer` block (nested in a Sequence or not).
    // json: tokenizer
    static func read(_ node: JSONNode) throws -> TokNormalizer {
        let type = try typeOf(node)
        switch type {
        case "NFC": return TokNormalizer { $0.precomposedStringWithCanonicalMapping }
        case "NFD": return TokNormalizer { $0.decomposedStringWithCanonicalMapping }
        case "NFKC": return TokNormalizer { $0.precomposedStringWithCompatibilityMapping }
        case "NFKD": return TokNormalizer { $0.decomposedStringWithCompatibilityMapping }
        case "Lowercase": return TokNormalizer { TokUnicode.lowercase($0) }
        case "Sequence":
            var parts: [TokNormalizer] = []
            for item in try node["normalizers"].list() { parts.append(try TokNormalizers.read(item)) }
            return TokNormalizer { text in parts.reduce(text) { acc, n in n.normalize(acc) } }
        case "Replace":
            let pattern = try TokPatterns.read(node["pattern"], "normalizer Replace")
            let content = try node["content"].string()
            let template = NSRegularExpression.escapedTemplate(for: content)
            return TokNormalizer { text in
                let range = NSRange(location: 0, length: (text as NSString).length)
                return pattern.stringByReplacingMatches(in: text, options: [], range: range, withTemplate: template)
            }
        case "Strip":
            let left = try node["strip_left"].bool()
            let right = try node["strip_right"].bool()
            return TokNormalizer { TokNormalizers.strip($0, left, right) }
        case "Prepend":
            let prefix = try node["prepend"].string()
            return TokNormalizer { $0.isEmpty ? $0 : prefix + $0 }
        default:
            throw tokUnsupported("normalizer", type)
        }
    }

    static func strip(_ text: String, _ left: Bool, _ right: Bool) -> String {
        let t = Array(text.unicodeScalars)
        let start = left ? TokUnicode.whiteSpaceAfter(t, 0, t.count) : 0
        let end = right ? TokUnicode.whiteSpaceBefore(t, t.count, start) : t.count
        return TokUnicode.string(t[start..<end])
    }
}

/// How a split keeps its delimiters (`SplitDelimiterBehavior` of tokenizers).
enum SplitBehavior: String {
    case removed = "Removed"
    case isolated = "Isolated"
    case mergedWithPrevious = "MergedWithPrevious"
    case mergedWithNext = "MergedWithNext"
    case contiguous = "Contiguous"
}

/// Splitting a piece around matches. Offsets are UTF-16 units of an `NSString` (what `NSRegularExpression` gives);
/// a match never starts or ends inside a surrogate pair.
enum TokSplits {
    /// A match list as `Pattern::find_matches` gives it: (start, end, is a match), covering the whole text.
    struct Span {
        var start: Int
        var end: Int
        let isMatch: Bool
    }

    static func regexMatches(_ pattern: NSRegularExpression, _ text: NSString) -> [Span] {
        if text.length == 0 { return [Span(start: 0, end: 0, isMatch: false)] }
        var out: [Span] = []
        var prev = 0
        for m in pattern.matches(in: text as String, options: [], range: NSRange(location: 0, length: text.length)) {
            let start = m.range.location
            let end = m.range.location + m.range.length
            if prev != start { out.append(Span(start: prev, end: start, isMatch: false)) }
            out.append(Span(start: start, end: end, isMatch: true))
            prev = end
        }
        if prev != text.length { out.append(Span(start: prev, end: text.length, isMatch: false)) }
        return out
    }

    /// `find_matches` of a `Fn(char) -> bool` pattern: each matching character is one match.
    static func charMatches(_ text: NSString, _ predicate: (Unicode.Scalar) -> Bool) -> [Span] {
        if text.length == 0 { return [Span(start: 0, end: 0, isMatch: false)] }
        var out: [Span] = []
        var last = 0
        var i = 0
        for scalar in (text as String).unicodeScalars {
            let next = i + (scalar.value > 0xFFFF ? 2 : 1)
            if predicate(scalar) {
                if last < i { out.append(Span(start: last, end: i, isMatch: false)) }
                out.append(Span(start: i, end: next, isMatch: true))
                last = next
            }
            i = next
        }
        if text.length > last { out.append(Span(start: last, end: text.length, isMatch: false)) }
        return out
    }

    /// `NormalizedString::split`: the pieces of `text` that `behavior` keeps, empty ones dropped.
    static func split(_ text: NSString, _ matches: [Span], _ behavior: SplitBehavior, _ out: inout [String]) {
        let kept: [Span]
        switch behavior {
        case .isolated:
            kept = matches.map { Span(start: $0.start, end: $0.end, isMatch: false) }
        case .removed:
            kept = matches
        case .contiguous:
            kept = fold(matches) { acc, span, previous in
                if span.isMatch == previous && !acc.isEmpty {
                    acc[acc.count - 1].end = span.end
                    return true
                }
                return false
            }
        case .mergedWithPrevious:
            kept = fold(matches) { acc, span, previous in
                if span.isMatch && !previous && !acc.isEmpty {
                    acc[acc.count - 1].end = span.end
                    return true
                }
                return false
            }
        case .mergedWithNext:
            kept = Array(fold(Array(matches.reversed())) { acc, span, previous in
                if span.isMatch && !previous && !acc.isEmpty {
                    acc[acc.count - 1].start = span.start
                    return true
                }
                return false
            }.reversed())
        }
        for span in kept where !span.isMatch && span.end > span.start {
            out.append(text.substring(with: NSRange(location: span.start, length: span.end - span.start)))
        }
    }

    private static func fold(_ spans: [Span], _ merge: (inout [Span], Span, Bool) -> Bool) -> [Span] {
        var acc: [Span] = []
        var previous = false
        for span in spans {
            if !merge(&acc, span, previous) { acc.append(Span(start: span.start, end: span.end, isMatch: false)) }
            previous = span.isMatch
        }
        return acc
    }
}

/// The pre-tokenizers.
enum TokPreTokenizers {
    /// GPT-2's pattern, which ByteLevel uses with `use_regex` (Oniguruma syntax, translated like any other).
    static let gpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
    private static let gpt2: Swift.Result<NSRegularExpression, Error> = Swift.Result {
        try OnigRegex.compile(TokPreTokenizers.gpt2Pattern, "ByteLevel")
    }

    /// One `pre_tokenizer` block (nested in a Sequence or not).
    // json: tokenizer
    static func read(_ node: JSONNode) throws -> TokPreTokenizer {
        let type = try typeOf(node)
        switch type {
        case "ByteLevel":
            let addPrefixSpace = try node.opt("add_prefix_space")?.bool() ?? true
            let useRegex = try node.opt("use_regex")?.bool() ?? true
            return try TokPreTokenizers.byteLevel(addPrefixSpace, useRegex)
        case "Split":
            let pattern = try TokPatterns.read(node["pattern"], "pre_tokenizer Split")
            let behavior = try TokPreTokenizers.behavior(node["behavior"])
            let invert = try node["invert"].bool()
            return TokPreTokenizers.each { piece, out in
                let text = piece as NSString
                var matches = TokSplits.regexMatches(pattern, text)
                if invert { matches = matches.map { TokSplits.Span(start: $0.start, end: $0.end, isMatch: !$0.isMatch) } }
                TokSplits.split(text, matches, behavior, &out)
            }
        case "Digits":
            let individual = try node["individual_digits"].bool()
            let behavior: SplitBehavior = individual ? .isolated : .contiguous
            return TokPreTokenizers.each { piece, out in
                let text = piece as NSString
                TokSplits.split(text, TokSplits.charMatches(text) { TokUnicode.isNumeric($0) }, behavior, &out)
            }
        case "Sequence":
            var parts: [TokPreTokenizer] = []
            for item in try node["pretokenizers"].list() { parts.append(try TokPreTokenizers.read(item)) }
            return TokPreTokenizer { pieces in parts.reduce(pieces) { acc, p in p.split(acc) } }
        default:
            throw tokUnsupported("pre_tokenizer", type)
        }
    }

    private static func each(_ split: @escaping (String, inout [String]) -> Void) -> TokPreTokenizer {
        TokPreTokenizer { pieces in
            var out: [String] = []
            out.reserveCapacity(pieces.count * 2)
            for piece in pieces { split(piece, &out) }
            return out
        }
    }

    private static func byteLevel(_ addPrefixSpace: Bool, _ useRegex: Bool) throws -> TokPreTokenizer {
        let regex: NSRegularExpression?
        if useRegex {
            regex = try TokPreTokenizers.gpt2.get()
        } else {
            regex = nil
        }
        return TokPreTokenizer { pieces in
            var out: [String] = []
            out.reserveCapacity(pieces.count * 4)
            for original in pieces {
                let piece = addPrefixSpace && original.unicodeScalars.first != " " ? " " + original : original
                if let regex {
                    var words: [String] = []
                    let text = piece as NSString
                    TokSplits.split(text, TokSplits.regexMatches(regex, text), .isolated, &words)
                    for word in words { out.append(ByteLevelTable.encode(word)) }
                } else if !piece.isEmpty {
                    out.append(ByteLevelTable.encode(piece))
                }
            }
            return out
        }
    }

    /// A Split's `behavior` name.
    // json: tokenizer
    private static func behavior(_ node: JSONNode) throws -> SplitBehavior {
        let name = try node.string()
        guard let behavior = SplitBehavior(rawValue: name) else { throw tokUnsupported("split behavior", name) }
        return behavior
    }
}

/// The post-processors (read so that an unsupported one is refused; their tokens are a dual encoder's).
enum TokPostProcessors {
    static let empty = TokPostProcessor(before: [], after: [])

    /// The processor's special tokens around a single sequence.
    // json: tokenizer
    static func read(_ node: JSONNode) throws -> TokPostProcessor {
        let type = try typeOf(node)
        switch type {
        case "TemplateProcessing":
            return try TokPostProcessors.template(node)
        case "RobertaProcessing", "BertProcessing":
            let cls = try node["cls"][1].int()
            let sep = try node["sep"][1].int()
            return TokPostProcessor(before: [cls], after: [sep])
        case "ByteLevel":
            return TokPostProcessors.empty
        case "Sequence":
            // each processor wraps what the ones before it made
            var acc = TokPostProcessors.empty
            for item in try node["processors"].list() {
                let p = try TokPostProcessors.read(item)
                acc = TokPostProcessor(before: p.before + acc.before, after: acc.after + p.after)
            }
            return acc
        default:
            throw tokUnsupported("post_processor", type)
        }
    }

    /// A TemplateProcessing's `single` template: special tokens around `$A`.
    // json: tokenizer
    private static func template(_ node: JSONNode) throws -> TokPostProcessor {
        let specials = node["special_tokens"]
        var before: [Int] = []
        var after: [Int] = []
        var seenSequence = false
        for item in try node["single"].list() {
            if let special = item.opt("SpecialToken") {
                let name = try special["id"].string()
                var ids: [Int]? = nil
                for (key, value) in try node["special_tokens"].obj() where TokUnicode.same(key, name) {
                    ids = try value["ids"].ints()
                }
                guard let ids else {
                    throw BundleError("tokenizer.json field '\(specials.path).\(name)' is missing",
                                      "re-export the bundle")
                }
                if seenSequence { after.append(contentsOf: ids) } else { before.append(contentsOf: ids) }
                continue
            }
            let id = try item["Sequence"]["id"].string()
            if !TokUnicode.same(id, "A") || seenSequence {
                throw tokUnsupported("post_processor TemplateProcessing single piece", id)
            }
            seenSequence = true
        }
        if !seenSequence { throw tokUnsupported("post_processor TemplateProcessing single template without", "$A") }
        return TokPostProcessor(before: before, after: after)
    }
}

/// The decoders.
enum TokDecoders {
    /// One `decoder` block (nested in a Sequence or not).
    // json: tokenizer
    static func read(_ node: JSONNode) throws -> TokDecoder {
        let type = try typeOf(node)
        switch type {
        case "ByteLevel":
            return TokDecoder { tokens in
                var bytes: [UInt8] = []
                for token in tokens { ByteLevelTable.decodeToken(token, into: &bytes) }
                return [TokUnicode.decodeUtf8Lossy(bytes)]
            }
        case "Sequence":
            var parts: [TokDecoder] = []
            for item in try node["decoders"].list() { parts.append(try TokDecoders.read(item)) }
            return TokDecoder { tokens in parts.reduce(tokens) { acc, d in d.decodeChain(acc) } }
        default:
            throw tokUnsupported("decoder", type)
        }
    }
}

/// A `{"String": ...}` or `{"Regex": ...}` pattern of a Split or Replace stage.
enum TokPatterns {
    /// The pattern node, compiled.
    // json: tokenizer
    static func read(_ node: JSONNode, _ what: String) throws -> NSRegularExpression {
        if let literal = node.opt("String") {
            let text = try literal.string()
            do {
                return try NSRegularExpression(pattern: NSRegularExpression.escapedPattern(for: text), options: [])
            } catch {
                throw BundleError("tokenizer \(what) pattern '\(text)' cannot be compiled here", "re-export the bundle")
            }
        }
        if let regex = node.opt("Regex") { return try OnigRegex.compile(regex.string(), what) }
        throw BundleError("tokenizer \(what) pattern is neither a String nor a Regex", "re-export the bundle")
    }
}

/// Oniguruma patterns (what `tokenizers` compiles a `tokenizer.json` regex with) translated to ICU's syntax
/// (`NSRegularExpression`), with the Unicode meaning Oniguruma gives them: `\s` is White_Space, `\d` is Nd, `\w` is
/// letters, marks, Nd and Pc, `\h` is a hex digit, `\v` is U+000B, `.` excludes only `\n`, `(?i)` folds Unicode case
/// (ICU's default). ICU takes `\p{..}`, `\x{..}`, possessive quantifiers, atomic groups and look-arounds as they are.
/// A construct whose meaning differs and is not translated here (anchors, nested classes, POSIX brackets, scripts,
/// back-references, other flags) is a `BundleError` naming it.
enum OnigRegex {
    private static let categories: Set<String> = Set(("L Lu Ll Lt Lm Lo M Mn Mc Me N Nd Nl No P Pc Pd Ps Pe Pi Pf " +
        "Po S Sm Sc Sk So Z Zs Zl Zp C Cc Cf Co Cn").split(separator: " ").map { String($0) })
    private static let word = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}"
    private static let hex = "0-9a-fA-F"

    static func compile(_ pattern: String, _ what: String) throws -> NSRegularExpression {
        let translated = try translate(pattern, what)
        do {
            return try NSRegularExpression(pattern: translated, options: [])
        } catch {
            throw BundleError("tokenizer \(what) regex '\(pattern)' cannot be compiled here: " +
                              "\(error.localizedDescription)",
                              "export the bundle with a tokenizer this app supports, or update the app")
        }
    }

    static func translate(_ pattern: String, _ what: String) throws -> String {
        let refuse = { (construct: String) -> BundleError in
            BundleError("tokenizer \(what) regex '\(pattern)' uses \(construct), which this app does not match as " +
                        "tokenizers does", "export the bundle with a tokenizer this app supports, or update the app")
        }
        let p = Array(pattern.unicodeScalars)
        var out = String.UnicodeScalarView()
        var inClass = false
        var i = 0
        while i < p.count {
            let c = p[i]
            if c == "\\" {
                if i + 1 >= p.count { throw refuse("a trailing backslash") }
                i = try escape(p, i + 1, inClass, &out, refuse)
                continue
            } else if c == "[" {
                if inClass { throw refuse("a nested character class or POSIX bracket") }
                inClass = true
                out.append("[")
                if at(p, i + 1) == "^" {
                    out.append("^")
                    i += 1
                }
                if at(p, i + 1) == "]" {
                    append("\\]", &out)
                    i += 1
                }
            } else if c == "]" && inClass {
                inClass = false
                out.append("]")
            } else if inClass {
                out.append(c)
            } else if c == "." {
                append("[^\\n]", &out)
            } else if c == "^" || c == "$" {
                throw refuse("the anchor '\(c)'")
            } else if c == "(" && at(p, i + 1) == "?" {
                i = try group(p, i, &out, refuse) - 1
            } else {
                out.append(c)
            }
            i += 1
        }
        if inClass { throw refuse("an unterminated character class") }
        return String(out)
    }

    private static func at(_ p: [Unicode.Scalar], _ i: Int) -> Unicode.Scalar? { i < p.count ? p[i] : nil }

    private static func append(_ text: String, _ out: inout String.UnicodeScalarView) {
        out.append(contentsOf: text.unicodeScalars)
    }

    /// `(?...`: look-arounds, atomic and non-capturing groups, named groups and the `i` flag pass; others refused.
    /// Returns the index after what was copied.
    private static func group(_ p: [Unicode.Scalar], _ start: Int, _ out: inout String.UnicodeScalarView,
                              _ refuse: (String) -> BundleError) throws -> Int {
        var i = start + 2
        if let c = at(p, i), c == ":" || c == "=" || c == "!" || c == ">" {
            append("(?", &out)
            out.append(c)
            return start + 3
        }
        if at(p, i) == "<" && (at(p, i + 1) == "=" || at(p, i + 1) == "!") {
            out.append(contentsOf: p[start..<(i + 2)])
            return start + 4
        }
        if at(p, i) == "<" {
            append("(?<", &out)
            return start + 3
        }
        while i < p.count && (p[i] == "i" || p[i] == "-") { i += 1 }
        if i >= p.count || (p[i] != ":" && p[i] != ")") {
            throw refuse("the group '\(TokUnicode.string(p[start..<min(i + 1, p.count)]))'")
        }
        out.append(contentsOf: p[start...i])
        return i + 1
    }

    /// The escape at p[i] (after the backslash); returns the index after it.
    private static func escape(_ p: [Unicode.Scalar], _ i: Int, _ inClass: Bool, _ out: inout String.UnicodeScalarView,
                               _ refuse: (String) -> BundleError) throws -> Int {
        let e = p[i]
        switch e {
        case "s", "S", "w", "W", "h", "H":
            let negated = e == "S" || e == "W" || e == "H"
            if inClass && negated { throw refuse("'\\\(e)' inside a character class") }
            let items = e == "s" || e == "S" ? TokUnicode.whiteSpaceItems : e == "w" || e == "W" ? word : hex
            append(inClass ? items : negated ? "[^\(items)]" : "[\(items)]", &out)
        case "d": append("\\p{Nd}", &out)
        case "D": append("\\P{Nd}", &out)
        case "v": append("\\x0B", &out)
        case "n", "r", "t", "f", "e", "a", "x", "u":
            out.append("\\")
            out.append(e)
        case "p", "P":
            return try property(p, i, &out, refuse)
        default:
            if TokUnicode.isLetterOrDigit(e) { throw refuse("the escape '\\\(e)'") }
            out.append("\\")
            out.append(e)
        }
        return i + 1
    }

    private static func property(_ p: [Unicode.Scalar], _ i: Int, _ out: inout String.UnicodeScalarView,
                                 _ refuse: (String) -> BundleError) throws -> Int {
        var negated = p[i] == "P"
        let end: Int
        var name: String
        if at(p, i + 1) == "{" {
            guard let close = p[(i + 2)...].firstIndex(of: "}") else { throw refuse("an unterminated \\p{") }
            end = close
            name = TokUnicode.string(p[(i + 2)..<close])
        } else {
            end = i + 1
            name = TokUnicode.string(p[(i + 1)..<min(i + 2, p.count)])
        }
        if name.unicodeScalars.first == "^" {
            negated.toggle()
            name = TokUnicode.string(name.unicodeScalars.dropFirst())
        }
        if !categories.contains(name) {
            throw refuse("the property '\\p{\(name)}' (only general categories are translated)")
        }
        append((negated ? "\\P{" : "\\p{") + name + "}", &out)
        return end + 1
    }
}

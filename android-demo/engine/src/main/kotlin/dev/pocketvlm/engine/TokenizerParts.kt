package dev.pocketvlm.engine

import java.util.regex.Matcher
import java.util.regex.Pattern
import java.util.regex.PatternSyntaxException

/**
 * The `tokenizer.json` stages this app runs, each as `tokenizers` (Rust) runs it, on plain strings (offsets are not
 * needed here). Any other stage type is a [BundleError] naming it: never a silently different encoding.
 */
internal fun interface TokNormalizer { fun normalize(text: String): String }

/** TokSplits each piece further (and may rewrite it, as ByteLevel does); empty pieces are dropped, as in tokenizers. */
internal fun interface TokPreTokenizer { fun split(pieces: List<String>): List<String> }

/** The special tokens a post-processor adds around one sequence (`add_special_tokens=True`). */
internal class TokPostProcessor(val before: IntArray, val after: IntArray) {
    val added: Int get() = before.size + after.size
    fun process(ids: IntArray): IntArray = before + ids + after
}

internal fun interface TokDecoder { fun decodeChain(tokens: List<String>): List<String> }

internal fun tokUnsupported(stage: String, type: String): Nothing =
    throw BundleError("tokenizer $stage '$type' is not supported by this app",
        "export the bundle with a byte-level BPE tokenizer (as CLIP, SmolLM2 and Qwen2 have), or update the app")

private fun typeOf(node: JsonNode): String = node["type"].string()

internal object TokNormalizers {
    fun read(node: JsonNode): TokNormalizer = when (val type = typeOf(node)) {
        "NFC" -> unicode(java.text.Normalizer.Form.NFC)
        "NFD" -> unicode(java.text.Normalizer.Form.NFD)
        "NFKC" -> unicode(java.text.Normalizer.Form.NFKC)
        "NFKD" -> unicode(java.text.Normalizer.Form.NFKD)
        "Lowercase" -> TokNormalizer { TokUnicode.lowercase(it) }
        "Sequence" -> {
            val parts = node["normalizers"].list().map { read(it) }
            TokNormalizer { text -> parts.fold(text) { acc, n -> n.normalize(acc) } }
        }
        "Replace" -> {
            val pattern = TokPatterns.read(node["pattern"], "normalizer Replace")
            val content = Matcher.quoteReplacement(node["content"].string())
            TokNormalizer { pattern.matcher(it).replaceAll(content) }
        }
        "Strip" -> {
            val left = node["strip_left"].bool()
            val right = node["strip_right"].bool()
            TokNormalizer { strip(it, left, right) }
        }
        "Prepend" -> {
            val prefix = node["prepend"].string()
            TokNormalizer { if (it.isEmpty()) it else prefix + it }
        }
        else -> tokUnsupported("normalizer", type)
    }

    private fun unicode(form: java.text.Normalizer.Form) = TokNormalizer { java.text.Normalizer.normalize(it, form) }

    private fun strip(text: String, left: Boolean, right: Boolean): String {
        val start = if (left) TokUnicode.whiteSpaceAfter(text, 0, text.length) else 0
        val end = if (right) TokUnicode.whiteSpaceBefore(text, text.length, start) else text.length
        return text.substring(start, end)
    }
}

/** How a split keeps its delimiters (`SplitDelimiterBehavior` of tokenizers). */
internal enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous }

internal object TokSplits {
    /** A match list as `Pattern::find_matches` gives it: (start, end, is a match), covering the whole text. */
    class Span(var start: Int, var end: Int, val isMatch: Boolean)

    fun regexMatches(pattern: Pattern, text: String): List<Span> {
        if (text.isEmpty()) return listOf(Span(0, 0, false))
        val out = ArrayList<Span>()
        val m = pattern.matcher(text)
        var prev = 0
        while (m.find()) {
            if (prev != m.start()) out.add(Span(prev, m.start(), false))
            out.add(Span(m.start(), m.end(), true))
            prev = m.end()
        }
        if (prev != text.length) out.add(Span(prev, text.length, false))
        return out
    }

    /** `find_matches` of a `Fn(char) -> bool` pattern: each matching character is one match. */
    fun charMatches(text: String, predicate: (Int) -> Boolean): List<Span> {
        if (text.isEmpty()) return listOf(Span(0, 0, false))
        val out = ArrayList<Span>()
        var last = 0
        var i = 0
        while (i < text.length) {
            val cp = text.codePointAt(i)
            val next = i + Character.charCount(cp)
            if (predicate(cp)) {
                if (last < i) out.add(Span(last, i, false))
                out.add(Span(i, next, true))
                last = next
            }
            i = next
        }
        if (text.length > last) out.add(Span(last, text.length, false))
        return out
    }

    /** `NormalizedString::split`: the pieces of [text] that [behavior] keeps, empty ones dropped. */
    fun split(text: String, matches: List<Span>, behavior: SplitBehavior, out: MutableList<String>) {
        val kept: List<Span> = when (behavior) {
            SplitBehavior.Isolated -> matches.map { Span(it.start, it.end, false) }
            SplitBehavior.Removed -> matches
            SplitBehavior.Contiguous -> fold(matches) { acc, span, previous ->
                if (span.isMatch == previous && acc.isNotEmpty()) { acc.last().end = span.end; true } else false
            }
            SplitBehavior.MergedWithPrevious -> fold(matches) { acc, span, previous ->
                if (span.isMatch && !previous && acc.isNotEmpty()) { acc.last().end = span.end; true } else false
            }
            SplitBehavior.MergedWithNext -> fold(matches.asReversed()) { acc, span, previous ->
                if (span.isMatch && !previous && acc.isNotEmpty()) { acc.last().start = span.start; true } else false
            }.asReversed()
        }
        for (span in kept) if (!span.isMatch && span.end > span.start) out.add(text.substring(span.start, span.end))
    }

    private fun fold(spans: List<Span>, merge: (MutableList<Span>, Span, Boolean) -> Boolean): MutableList<Span> {
        val acc = ArrayList<Span>()
        var previous = false
        for (span in spans) {
            if (!merge(acc, span, previous)) acc.add(Span(span.start, span.end, false))
            previous = span.isMatch
        }
        return acc
    }
}

internal object TokPreTokenizers {
    /** GPT-2's pattern, which ByteLevel uses with `use_regex` (Oniguruma syntax, translated like any other). */
    private const val GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
    private val gpt2: Pattern by lazy { OnigRegex.compile(GPT2, "ByteLevel") }

    fun read(node: JsonNode): TokPreTokenizer = when (val type = typeOf(node)) {
        "ByteLevel" -> byteLevel(node.opt("add_prefix_space")?.bool() ?: true, node.opt("use_regex")?.bool() ?: true)
        "Split" -> {
            val pattern = TokPatterns.read(node["pattern"], "pre_tokenizer Split")
            val behavior = behavior(node["behavior"])
            val invert = node["invert"].bool()
            each { piece, out ->
                val found = TokSplits.regexMatches(pattern, piece)
                val matches = if (invert) found.map { TokSplits.Span(it.start, it.end, !it.isMatch) } else found
                TokSplits.split(piece, matches, behavior, out)
            }
        }
        "Digits" -> {
            val behavior = if (node["individual_digits"].bool()) SplitBehavior.Isolated else SplitBehavior.Contiguous
            each { piece, out ->
                TokSplits.split(piece, TokSplits.charMatches(piece, TokUnicode::isNumeric), behavior, out)
            }
        }
        "Sequence" -> {
            val parts = node["pretokenizers"].list().map { read(it) }
            TokPreTokenizer { pieces -> parts.fold(pieces) { acc, p -> p.split(acc) } }
        }
        else -> tokUnsupported("pre_tokenizer", type)
    }

    private fun each(split: (String, MutableList<String>) -> Unit) = TokPreTokenizer { pieces ->
        val out = ArrayList<String>(pieces.size * 2)
        for (piece in pieces) split(piece, out)
        out
    }

    private fun byteLevel(addPrefixSpace: Boolean, useRegex: Boolean) = TokPreTokenizer { pieces ->
        val out = ArrayList<String>(pieces.size * 4)
        for (original in pieces) {
            val piece = if (addPrefixSpace && !original.startsWith(" ")) " $original" else original
            if (useRegex) {
                val words = ArrayList<String>()
                TokSplits.split(piece, TokSplits.regexMatches(gpt2, piece), SplitBehavior.Isolated, words)
                for (word in words) out.add(ByteLevelTable.encode(word))
            } else if (piece.isNotEmpty()) {
                out.add(ByteLevelTable.encode(piece))
            }
        }
        out
    }

    private fun behavior(node: JsonNode): SplitBehavior {
        val name = node.string()
        return SplitBehavior.values().firstOrNull { it.name == name } ?: tokUnsupported("split behavior", name)
    }
}

internal object TokPostProcessors {
    /** The processor's special tokens around a single sequence. */
    fun read(node: JsonNode): TokPostProcessor = when (val type = typeOf(node)) {
        "TemplateProcessing" -> template(node)
        "RobertaProcessing", "BertProcessing" ->
            TokPostProcessor(intArrayOf(node["cls"][1].int()), intArrayOf(node["sep"][1].int()))
        "ByteLevel" -> NONE
        // each processor wraps what the ones before it made
        "Sequence" -> node["processors"].list().map { read(it) }.fold(NONE) { acc, p ->
            TokPostProcessor(p.before + acc.before, acc.after + p.after)
        }
        else -> tokUnsupported("post_processor", type)
    }

    private val NONE = TokPostProcessor(IntArray(0), IntArray(0))

    private fun template(node: JsonNode): TokPostProcessor {
        val specials = node["special_tokens"]
        val before = TokIntList()
        val after = TokIntList()
        var seenSequence = false
        for (item in node["single"].list()) {
            val special = item.opt("SpecialToken")
            if (special != null) {
                val ids = specials[special["id"].string()]["ids"].ints()
                (if (seenSequence) after else before).addAll(ids)
                continue
            }
            val sequence = item["Sequence"]
            val id = sequence["id"].string()
            if (id != "A" || seenSequence) tokUnsupported("post_processor TemplateProcessing single piece", id)
            seenSequence = true
        }
        if (!seenSequence) tokUnsupported("post_processor TemplateProcessing single template without", "\$A")
        return TokPostProcessor(before.toArray(), after.toArray())
    }
}

internal object TokDecoders {
    fun read(node: JsonNode): TokDecoder = when (val type = typeOf(node)) {
        "ByteLevel" -> TokDecoder { tokens ->
            val bytes = java.io.ByteArrayOutputStream()
            for (token in tokens) ByteLevelTable.decodeToken(token, bytes)
            listOf(TokUnicode.decodeUtf8Lossy(bytes.toByteArray()))
        }
        "Sequence" -> {
            val parts = node["decoders"].list().map { read(it) }
            TokDecoder { tokens -> parts.fold(tokens) { acc, d -> d.decodeChain(acc) } }
        }
        else -> tokUnsupported("decoder", type)
    }
}

/** A `{"String": ...}` or `{"Regex": ...}` pattern of a Split or Replace stage. */
internal object TokPatterns {
    fun read(node: JsonNode, what: String): Pattern {
        node.opt("String")?.let { return Pattern.compile(Pattern.quote(it.string())) }
        node.opt("Regex")?.let { return OnigRegex.compile(it.string(), what) }
        throw BundleError("tokenizer $what pattern is neither a String nor a Regex", "re-export the bundle")
    }
}

/**
 * Oniguruma patterns (what `tokenizers` compiles a `tokenizer.json` regex with) translated to java.util.regex, with
 * the Unicode meaning Oniguruma gives them whatever the JVM (Android's regex is ICU's, whose `\s` differs): `\s` is
 * White_Space, `\d` is Nd, `\w` is letters, marks, Nd and Pc, `\h` is a hex digit, `\v` is U+000B, `.` excludes only
 * `\n`, `(?i)` folds Unicode case. A construct whose meaning differs and is not translated here (anchors, nested
 * classes, POSIX brackets, scripts, back-references, other flags) is a [BundleError] naming it.
 */
internal object OnigRegex {
    private val CATEGORIES = ("L Lu Ll Lt Lm Lo M Mn Mc Me N Nd Nl No P Pc Pd Ps Pe Pi Pf Po S Sm Sc Sk So Z Zs Zl " +
        "Zp C Cc Cf Co Cn").split(" ").toSet()
    private const val WORD = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}"
    private const val HEX = "0-9a-fA-F"

    fun compile(pattern: String, what: String): Pattern {
        val translated = translate(pattern, what)
        try {
            return Pattern.compile(translated, Pattern.UNICODE_CASE)
        } catch (e: PatternSyntaxException) {
            throw BundleError("tokenizer $what regex '$pattern' cannot be compiled here: ${e.description}",
                "export the bundle with a tokenizer this app supports, or update the app", e)
        }
    }

    fun translate(p: String, what: String): String {
        fun refuse(construct: String): Nothing = throw BundleError(
            "tokenizer $what regex '$p' uses $construct, which this app does not match as tokenizers does",
            "export the bundle with a tokenizer this app supports, or update the app")

        val out = StringBuilder(p.length * 2)
        var inClass = false
        var i = 0
        while (i < p.length) {
            val c = p[i]
            when {
                c == '\\' -> {
                    if (i + 1 >= p.length) refuse("a trailing backslash")
                    i = escape(p, i + 1, inClass, out, ::refuse)
                    continue
                }
                c == '[' -> {
                    if (inClass) refuse("a nested character class or POSIX bracket")
                    inClass = true
                    out.append('[')
                    if (p.startsWith("^", i + 1)) { out.append('^'); i++ }
                    if (p.startsWith("]", i + 1)) { out.append("\\]"); i++ }
                }
                c == ']' && inClass -> { inClass = false; out.append(']') }
                inClass -> out.append(c)
                c == '.' -> out.append("[^\\n]")
                c == '^' || c == '$' -> refuse("the anchor '$c'")
                c == '(' && p.startsWith("(?", i) -> i = group(p, i, out, ::refuse) - 1
                else -> out.append(c)
            }
            i++
        }
        if (inClass) refuse("an unterminated character class")
        return out.toString()
    }

    /** `(?...`: look-arounds, atomic and non-capturing groups, named groups and the `i` flag pass; others refused. */
    private fun group(p: String, start: Int, out: StringBuilder, refuse: (String) -> Nothing): Int {
        var i = start + 2
        if (i < p.length && p[i] in ":=!>") return start.also { out.append("(?").append(p[i]) } + 3
        if (p.startsWith("<=", i) || p.startsWith("<!", i)) return start.also { out.append(p, start, i + 2) } + 4
        if (i < p.length && p[i] == '<') return start.also { out.append("(?<") } + 3
        while (i < p.length && (p[i] == 'i' || p[i] == '-')) i++
        if (i >= p.length || (p[i] != ':' && p[i] != ')')) {
            refuse("the group '${p.substring(start, minOf(i + 1, p.length))}'")
        }
        out.append(p, start, i + 1)
        return i + 1
    }

    /** The escape at p[i] (after the backslash); returns the index after it. */
    private fun escape(p: String, i: Int, inClass: Boolean, out: StringBuilder, refuse: (String) -> Nothing): Int {
        val e = p[i]
        fun set(items: String, negated: Boolean) {
            if (inClass && negated) refuse("'\\$e' inside a character class")
            out.append(if (inClass) items else if (negated) "[^$items]" else "[$items]")
        }
        when (e) {
            's', 'S' -> set(TokUnicode.WHITE_SPACE_ITEMS, e == 'S')
            'w', 'W' -> set(WORD, e == 'W')
            'h', 'H' -> set(HEX, e == 'H')
            'd' -> out.append("\\p{Nd}")
            'D' -> out.append("\\P{Nd}")
            'v' -> out.append("\\x0B")
            'n', 'r', 't', 'f', 'e', 'a', 'x', 'u' -> out.append('\\').append(e)
            'p', 'P' -> return property(p, i, out, refuse)
            else -> if (e.isLetterOrDigit()) refuse("the escape '\\$e'") else out.append('\\').append(e)
        }
        return i + 1
    }

    private fun property(p: String, i: Int, out: StringBuilder, refuse: (String) -> Nothing): Int {
        var negated = p[i] == 'P'
        val end: Int
        var name: String
        if (p.startsWith("{", i + 1)) {
            end = p.indexOf('}', i + 2).takeIf { it > 0 } ?: refuse("an unterminated \\p{")
            name = p.substring(i + 2, end)
        } else {
            end = i + 1
            name = p.substring(i + 1, minOf(i + 2, p.length))
        }
        if (name.startsWith("^")) { negated = !negated; name = name.substring(1) }
        if (name !in CATEGORIES) refuse("the property '\\p{$name}' (only general categories are translated)")
        out.append(if (negated) "\\P{" else "\\p{").append(name).append('}')
        return end + 1
    }
}

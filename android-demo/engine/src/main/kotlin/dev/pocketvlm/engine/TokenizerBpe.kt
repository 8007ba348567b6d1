package dev.pocketvlm.engine

import java.util.concurrent.ConcurrentHashMap

/**
 * The BPE model of a `tokenizer.json`, as Hugging Face `tokenizers` (Rust) runs it: a word's characters (code
 * points, with `continuing_subword_prefix` / `end_of_word_suffix`), unknown characters as `<0xXX>` bytes
 * (`byte_fallback`) or `unk_token` (fused with `fuse_unk`), then merges applied lowest rank first, leftmost first,
 * with the same queue and the same stale-entry check as `Word::merge_all`. Words of fewer than 256 UTF-8 bytes are
 * cached (thread-safe; the cache stops growing at [CACHE_CAPACITY] words).
 */
internal class BpeModel(
    val vocab: Map<String, Int>,
    merges: List<Pair<String, String>>,
    private val unkToken: String?,
    private val continuingPrefix: String?,
    private val endOfWordSuffix: String?,
    private val fuseUnk: Boolean,
    private val byteFallback: Boolean,
    private val ignoreMerges: Boolean,
) {
    /** (left id, right id) packed in a Long -> (rank shl 32) or new id */
    private val merges = HashMap<Long, Long>(merges.size * 2)
    private val vocabReverse = HashMap<Int, String>(vocab.size * 2)
    private val cache = ConcurrentHashMap<String, IntArray>()

    init {
        for ((token, id) in vocab) vocabReverse[id] = token
        val prefixLength = continuingPrefix?.length ?: 0
        merges.forEachIndexed { rank, (a, b) ->
            val aId = vocab[a] ?: missing(a)
            val bId = vocab[b] ?: missing(b)
            // as tokenizers does: the new token drops the right part's continuing prefix (by its length)
            val merged = a + b.substring(minOf(prefixLength, b.length))
            val newId = vocab[merged] ?: missing(merged)
            this.merges[pairKey(aId, bId)] = (rank.toLong() shl 32) or newId.toLong()
        }
        if (unkToken != null && unkToken !in vocab) {
            throw BundleError("the tokenizer's unk_token '$unkToken' is not in its vocabulary", "re-export the bundle")
        }
    }

    private fun missing(token: String): Nothing =
        throw BundleError("the tokenizer has a merge whose token '$token' is not in its vocabulary",
            "re-export the bundle")

    fun idToToken(id: Int): String? = vocabReverse[id]

    /** One pre-tokenized word -> ids. */
    fun tokenize(word: String): IntArray {
        if (word.isEmpty()) return IntArray(0)
        if (ignoreMerges) vocab[word]?.let { return intArrayOf(it) }
        cache[word]?.let { return it }
        val ids = mergeWord(word)
        if (TokUnicode.utf8Length(word) < MAX_CACHED_BYTES && cache.size < CACHE_CAPACITY) cache[word] = ids
        return ids
    }

    private fun mergeWord(word: String): IntArray {
        val symbols = TokIntList(word.length)
        var unk = -1  // the pending unknown-token id (fused or not), -1 for none
        var i = 0
        while (i < word.length) {
            val cp = word.codePointAt(i)
            val next = i + Character.charCount(cp)
            var s = String(Character.toChars(cp))
            if (i > 0 && continuingPrefix != null) s = continuingPrefix + s
            if (next == word.length && endOfWordSuffix != null) s += endOfWordSuffix
            val id = vocab[s]
            if (id != null) {
                if (unk >= 0) { symbols.add(unk); unk = -1 }
                symbols.add(id)
            } else if (byteFallback && addBytes(s, symbols)) {
                // each byte as its <0xXX> token; the pending unknown token waits (as in tokenizers)
            } else if (unkToken != null) {
                val unkId = vocab.getValue(unkToken)
                if (unk >= 0 && !fuseUnk) symbols.add(unk)
                unk = unkId
            }
            // else: a character that is not in the vocabulary is dropped, as tokenizers does without unk_token
            i = next
        }
        if (unk >= 0) symbols.add(unk)
        return mergeAll(symbols.toArray())
    }

    private fun addBytes(s: String, out: TokIntList): Boolean {
        val bytes = s.toByteArray(Charsets.UTF_8)
        val ids = IntArray(bytes.size) { vocab[String.format("<0x%02X>", bytes[it].toInt() and 0xFF)] ?: return false }
        ids.forEach { out.add(it) }
        return true
    }

    /** `Word::merge_all` of tokenizers: a min-queue on (rank, position), entries re-checked when popped. */
    private fun mergeAll(ids: IntArray): IntArray {
        val n = ids.size
        if (n < 2) return ids
        val c = ids.copyOf()
        val prev = IntArray(n) { it - 1 }
        val next = IntArray(n) { if (it + 1 < n) it + 1 else -1 }
        val removed = BooleanArray(n)
        val queue = MergeQueue(n)
        for (pos in 0 until n - 1) merges[pairKey(c[pos], c[pos + 1])]?.let { queue.push(it ushr 32, pos, it.toInt()) }
        while (queue.size > 0) {
            val pos = queue.topPos()
            val newId = queue.topNewId()
            queue.pop()
            if (removed[pos] || next[pos] == -1) continue
            val right = next[pos]
            val current = merges[pairKey(c[pos], c[right])]
            if (current == null || current.toInt() != newId) continue  // an expired entry
            c[pos] = newId
            removed[right] = true
            next[pos] = next[right]
            if (next[right] != -1) prev[next[right]] = pos
            val before = prev[pos]
            if (before >= 0) merges[pairKey(c[before], c[pos])]?.let { queue.push(it ushr 32, before, it.toInt()) }
            if (next[pos] != -1) merges[pairKey(c[pos], c[next[pos]])]?.let { queue.push(it ushr 32, pos, it.toInt()) }
        }
        val out = TokIntList(n)
        for (pos in 0 until n) if (!removed[pos]) out.add(c[pos])
        return out.toArray()
    }

    companion object {
        const val CACHE_CAPACITY = 10_000
        const val MAX_CACHED_BYTES = 256

        fun pairKey(a: Int, b: Int): Long = (a.toLong() shl 32) or (b.toLong() and 0xFFFFFFFFL)
    }
}

/** A binary min-heap of merges ordered by (rank, position), with the merge's new id alongside. */
private class MergeQueue(capacity: Int) {
    private var keys = LongArray(maxOf(capacity, 4))
    private var newIds = IntArray(keys.size)
    var size = 0
        private set

    fun push(rank: Long, pos: Int, newId: Int) {
        if (size == keys.size) {
            keys = keys.copyOf(size * 2)
            newIds = newIds.copyOf(size * 2)
        }
        var i = size++
        val key = (rank shl 32) or pos.toLong()
        while (i > 0) {
            val parent = (i - 1) / 2
            if (keys[parent] <= key) break
            keys[i] = keys[parent]
            newIds[i] = newIds[parent]
            i = parent
        }
        keys[i] = key
        newIds[i] = newId
    }

    fun topPos(): Int = (keys[0] and 0xFFFFFFFFL).toInt()
    fun topNewId(): Int = newIds[0]

    fun pop() {
        size--
        if (size == 0) return
        val key = keys[size]
        val id = newIds[size]
        var i = 0
        while (true) {
            var child = 2 * i + 1
            if (child >= size) break
            if (child + 1 < size && keys[child + 1] < keys[child]) child++
            if (keys[child] >= key) break
            keys[i] = keys[child]
            newIds[i] = newIds[child]
            i = child
        }
        keys[i] = key
        newIds[i] = id
    }
}

internal class TokIntList(capacity: Int = 16) {
    private var data = IntArray(maxOf(capacity, 4))
    var size = 0
        private set

    fun add(value: Int) {
        if (size == data.size) data = data.copyOf(size * 2)
        data[size++] = value
    }

    fun addAll(values: IntArray) = values.forEach { add(it) }
    operator fun get(index: Int): Int = data[index]
    fun toArray(): IntArray = data.copyOf(size)
}

/** GPT-2's reversible byte <-> printable-character table (`bytes_char` of tokenizers' ByteLevel). */
internal object ByteLevelTable {
    val byteToChar = CharArray(256)
    val charToByte = HashMap<Char, Int>(512)

    init {
        val printable = ('!'.code..'~'.code) + (0xA1..0xAC) + (0xAE..0xFF)
        for (b in printable) byteToChar[b] = b.toChar()
        var n = 0
        for (b in 0..255) if (b !in printable) byteToChar[b] = (256 + n++).toChar()
        for (b in 0..255) charToByte[byteToChar[b]] = b
    }

    fun encode(text: String): String {
        val bytes = text.toByteArray(Charsets.UTF_8)
        val out = CharArray(bytes.size) { byteToChar[bytes[it].toInt() and 0xFF] }
        return String(out)
    }

    /** One token's bytes: its characters through the table, or (one character outside it) its own UTF-8 bytes. */
    fun decodeToken(token: String, out: java.io.ByteArrayOutputStream) {
        val mapped = ByteArray(token.length)
        for (i in token.indices) {
            val b = charToByte[token[i]]
            if (b == null) {
                out.write(token.toByteArray(Charsets.UTF_8))
                return
            }
            mapped[i] = b.toByte()
        }
        out.write(mapped)
    }
}

/** The Unicode helpers that must agree with Rust's `char` methods and the `regex` crate, on any JVM or Android. */
internal object TokUnicode {
    /** Unicode White_Space (Rust `char::is_whitespace`, `\s` of Rust's regex and of Oniguruma). */
    fun isWhiteSpace(cp: Int): Boolean = cp in 0x09..0x0D || cp == 0x20 || cp == 0x85 || cp == 0xA0 ||
        cp == 0x1680 || cp in 0x2000..0x200A || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
        cp == 0x3000

    /** Where the run of white space that ends at [end] starts (not before [floor]). */
    fun whiteSpaceBefore(text: String, end: Int, floor: Int): Int {
        var i = end
        while (i > floor && isWhiteSpace(text.codePointBefore(i))) i -= Character.charCount(text.codePointBefore(i))
        return i
    }

    /** Where the run of white space that starts at [start] ends (not after [limit]). */
    fun whiteSpaceAfter(text: String, start: Int, limit: Int): Int {
        var i = start
        while (i < limit && isWhiteSpace(text.codePointAt(i))) i += Character.charCount(text.codePointAt(i))
        return i
    }

    /** The same set as regex class items (for use inside `[...]`). */
    const val WHITE_SPACE_ITEMS = "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}" +
        "\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

    /** Rust `char::is_numeric`: general categories Nd, Nl, No. */
    fun isNumeric(cp: Int): Boolean = when (Character.getType(cp).toByte()) {
        Character.DECIMAL_DIGIT_NUMBER, Character.LETTER_NUMBER, Character.OTHER_NUMBER -> true
        else -> false
    }

    /** `\w` of Rust's regex crate: Alphabetic, marks, Nd, Pc, Join_Control. */
    fun isWordChar(cp: Int): Boolean = Character.isAlphabetic(cp) || cp == 0x200C || cp == 0x200D ||
        when (Character.getType(cp).toByte()) {
            Character.NON_SPACING_MARK, Character.ENCLOSING_MARK, Character.COMBINING_SPACING_MARK,
            Character.DECIMAL_DIGIT_NUMBER, Character.CONNECTOR_PUNCTUATION -> true
            else -> false
        }

    /** Rust `char::to_lowercase` applied per code point (no final-sigma context, 'İ' -> "i̇"). */
    fun lowercase(text: String): String {
        val out = StringBuilder(text.length)
        var i = 0
        while (i < text.length) {
            val cp = text.codePointAt(i)
            when {
                cp < 0x80 -> out.append(if (cp in 'A'.code..'Z'.code) (cp + 32).toChar() else cp.toChar())
                else -> out.append(String(Character.toChars(cp)).lowercase(java.util.Locale.ROOT))
            }
            i += Character.charCount(cp)
        }
        return out.toString()
    }

    /** Rust's `String::from_utf8_lossy`: each maximal invalid subpart becomes one U+FFFD. */
    fun decodeUtf8Lossy(bytes: ByteArray): String {
        val out = StringBuilder(bytes.size)
        var i = 0
        while (i < bytes.size) {
            val b0 = bytes[i].toInt() and 0xFF
            if (b0 < 0x80) { out.append(b0.toChar()); i++; continue }
            val need: Int
            var lo = 0x80
            var hi = 0xBF
            when (b0) {
                in 0xC2..0xDF -> need = 1
                0xE0 -> { need = 2; lo = 0xA0 }
                in 0xE1..0xEC, 0xEE, 0xEF -> need = 2
                0xED -> { need = 2; hi = 0x9F }
                0xF0 -> { need = 3; lo = 0x90 }
                in 0xF1..0xF3 -> need = 3
                0xF4 -> { need = 3; hi = 0x8F }
                else -> { out.append(REPLACEMENT); i++; continue }
            }
            var cp = b0 and (0x3F shr need)
            var j = 1
            while (j <= need) {
                if (i + j >= bytes.size) break
                val b = bytes[i + j].toInt() and 0xFF
                if (b < (if (j == 1) lo else 0x80) || b > (if (j == 1) hi else 0xBF)) break
                cp = (cp shl 6) or (b and 0x3F)
                j++
            }
            if (j <= need) { out.append(REPLACEMENT); i += j; continue }
            out.appendCodePoint(cp)
            i += need + 1
        }
        return out.toString()
    }

    const val REPLACEMENT = '\uFFFD'

    fun utf8Length(text: String): Int {
        var n = 0
        var i = 0
        while (i < text.length) {
            val cp = text.codePointAt(i)
            n += when {
                cp < 0x80 -> 1
                cp < 0x800 -> 2
                cp < 0x10000 -> 3
                else -> 4
            }
            i += Character.charCount(cp)
        }
        return n
    }

    /** The code-point index of the first unpaired surrogate, or -1 (what Python's `str.encode("utf-8")` refuses). */
    fun loneSurrogate(text: String): Int {
        var i = 0
        var index = 0
        while (i < text.length) {
            val c = text[i]
            if (Character.isHighSurrogate(c)) {
                if (i + 1 < text.length && Character.isLowSurrogate(text[i + 1])) i++ else return index
            } else if (Character.isLowSurrogate(c)) {
                return index
            }
            i++
            index++
        }
        return -1
    }
}


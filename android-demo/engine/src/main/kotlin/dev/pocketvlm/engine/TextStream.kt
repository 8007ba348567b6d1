package dev.pocketvlm.engine

/**
 * Incremental detokenisation, the algorithm of the Python runtime's `TextStream` (`runtime/text.py`): a bounded
 * window of ids holds the last emitted piece's ids as context and the ids not emitted yet. Each id decodes the
 * context (once, cached) and the whole window; the new suffix is emitted once it does not end in an incomplete UTF-8
 * sequence (U+FFFD), and the window moves up. Text held back for more than [maxHeld] ids is emitted as it stands,
 * or forgotten when it adds nothing (skipped special tokens). [finish] takes the full decode and returns what is
 * left of it. Lengths are counted in code points, as Python counts them, so the pieces are Python's exactly.
 * One stream per generation; not thread-safe.
 */
class TextStream(private val decode: (List<Int>) -> String, val maxHeld: Int = 8) {
    private val window = ArrayList<Int>()
    private var read = 0
    private var contextText: String? = ""

    /** Code points emitted so far. */
    var emitted = 0
        private set

    /** Adds one generated id; returns the newly complete text ("" when there is none yet). */
    fun push(id: Int): String {
        window.add(id)
        val context = contextText ?: decode(ArrayList(window.subList(0, read))).also { contextText = it }
        val text = decode(ArrayList(window))
        val contextLength = context.codePointCount(0, context.length)
        val grew = text.codePointCount(0, text.length) > contextLength
        if (!grew || text.endsWith(REPLACEMENT)) {
            if (window.size - read <= maxHeld) return ""
            if (!grew) {  // nothing visible in the held ids (e.g. special tokens skipped by decode): drop them
                window.subList(read, window.size).clear()
                return ""
            }
        }
        val piece = text.substring(text.offsetByCodePoints(0, contextLength))
        window.subList(0, read).clear()
        read = window.size
        contextText = null
        emitted += piece.codePointCount(0, piece.length)
        return piece
    }

    /** The rest of [full] (the decode of all ids) after what [push] emitted: e.g. a trailing incomplete character. */
    fun finish(full: String): String {
        val count = full.codePointCount(0, full.length)
        return if (emitted >= count) "" else full.substring(full.offsetByCodePoints(0, emitted))
    }

    private companion object {
        const val REPLACEMENT = "\uFFFD"
    }
}

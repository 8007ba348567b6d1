package dev.pocketvlm.engine

/**
 * A small JSON reader and writer (the engine core has no dependencies: Android's org.json is not on the JVM, and a
 * manifest is a few hundred kilobytes at most). Values: [Map] (insertion-ordered), [List], [String], [Long] (integers
 * that fit), [Double], [Boolean], null. [JsonNode] reads them with typed accessors whose errors name the field.
 */
object Json {
    private const val MAX_DEPTH = 256

    fun parse(text: String, what: String = "JSON"): Any? {
        val parser = Parser(text, what)
        val value = parser.value(0)
        parser.skipSpace()
        if (parser.pos != text.length) parser.fail("trailing characters")
        return value
    }

    /** The [what] document (e.g. "manifest") as a [JsonNode] rooted at it; a syntax error is a [BundleError]. */
    fun read(text: String, what: String): JsonNode = JsonNode(parse(text, what), what, "")

    fun write(value: Any?, indent: Int = 0): String = StringBuilder().also { writeTo(it, value, indent, 0) }.toString()

    private fun writeTo(out: StringBuilder, value: Any?, indent: Int, level: Int) {
        val newline = if (indent > 0) "\n" + " ".repeat(indent * (level + 1)) else ""
        val close = if (indent > 0) "\n" + " ".repeat(indent * level) else ""
        when (value) {
            null -> out.append("null")
            is Boolean -> out.append(value)
            is Int, is Long, is Short, is Byte -> out.append(value.toString())
            is Float -> writeTo(out, value.toDouble(), indent, level)
            is Double -> {
                if (value.isNaN() || value.isInfinite()) out.append("null")
                else if (value == Math.rint(value) && Math.abs(value) < 1e15) out.append(value.toLong()).append(".0")
                else out.append(value.toString())
            }
            is String -> quote(out, value)
            is Map<*, *> -> {
                out.append('{')
                var first = true
                for ((k, v) in value) {
                    if (!first) out.append(',')
                    first = false
                    out.append(newline)
                    quote(out, k.toString())
                    out.append(if (indent > 0) ": " else ":")
                    writeTo(out, v, indent, level + 1)
                }
                if (value.isNotEmpty()) out.append(close)
                out.append('}')
            }
            is Iterable<*> -> {
                out.append('[')
                var first = true
                for (v in value) {
                    if (!first) out.append(',')
                    first = false
                    out.append(newline)
                    writeTo(out, v, indent, level + 1)
                }
                if (value.any()) out.append(close)
                out.append(']')
            }
            is IntArray -> writeTo(out, value.toList(), indent, level)
            is LongArray -> writeTo(out, value.toList(), indent, level)
            is FloatArray -> writeTo(out, value.map { it.toDouble() }, indent, level)
            is DoubleArray -> writeTo(out, value.toList(), indent, level)
            else -> throw IllegalArgumentException("cannot write ${value::class.simpleName} as JSON")
        }
    }

    private fun quote(out: StringBuilder, s: String) {
        out.append('"')
        for (c in s) {
            when {
                c == '"' -> out.append("\\\"")
                c == '\\' -> out.append("\\\\")
                c == '\n' -> out.append("\\n")
                c == '\r' -> out.append("\\r")
                c == '\t' -> out.append("\\t")
                c < ' ' -> out.append(String.format("\\u%04x", c.code))
                else -> out.append(c)
            }
        }
        out.append('"')
    }

    private class Parser(val text: String, val what: String) {
        var pos = 0

        fun fail(problem: String): Nothing =
            throw BundleError("$what is not valid JSON: $problem at character $pos", "re-export the bundle")

        fun skipSpace() {
            while (pos < text.length && text[pos] in " \t\r\n") pos++
        }

        fun value(depth: Int): Any? {
            if (depth > MAX_DEPTH) fail("nesting deeper than $MAX_DEPTH")
            skipSpace()
            if (pos >= text.length) fail("unexpected end")
            return when (val c = text[pos]) {
                '{' -> obj(depth)
                '[' -> array(depth)
                '"' -> string()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c in '0'..'9') number() else fail("unexpected '$c'")
            }
        }

        fun literal(word: String, value: Any?): Any? {
            if (!text.startsWith(word, pos)) fail("unexpected token")
            pos += word.length
            return value
        }

        /**
         * The members of the object or array at [pos] (its opening bracket), read one at a time by [member] up to
         * its [close] bracket, which is consumed; a missing separator or bracket fails.
         */
        private inline fun members(close: Char, member: () -> Unit) {
            pos++
            skipSpace()
            if (pos < text.length && text[pos] == close) { pos++; return }
            while (true) {
                member()
                skipSpace()
                if (pos >= text.length) fail("unexpected end")
                when (text[pos++]) {
                    ',' -> continue
                    close -> return
                    else -> { pos--; fail("expected ',' or '$close'") }
                }
            }
        }

        fun obj(depth: Int): Map<String, Any?> {
            val map = LinkedHashMap<String, Any?>()
            members('}') {
                skipSpace()
                if (pos >= text.length || text[pos] != '"') fail("expected a key")
                val key = string()
                skipSpace()
                if (pos >= text.length || text[pos] != ':') fail("expected ':'")
                pos++
                map[key] = value(depth + 1)
            }
            return map
        }

        fun array(depth: Int): List<Any?> {
            val list = ArrayList<Any?>()
            members(']') { list.add(value(depth + 1)) }
            return list
        }

        fun string(): String {
            pos++
            val out = StringBuilder()
            while (true) {
                if (pos >= text.length) fail("unterminated string")
                val c = text[pos++]
                when {
                    c == '"' -> return out.toString()
                    c == '\\' -> {
                        if (pos >= text.length) fail("unterminated escape")
                        when (val e = text[pos++]) {
                            '"', '\\', '/' -> out.append(e)
                            'b' -> out.append('\b')
                            'f' -> out.append('\u000c')
                            'n' -> out.append('\n')
                            'r' -> out.append('\r')
                            't' -> out.append('\t')
                            'u' -> {
                                if (pos + 4 > text.length) fail("short \\u escape")
                                val code = text.substring(pos, pos + 4).toIntOrNull(16) ?: fail("bad \\u escape")
                                out.append(code.toChar())
                                pos += 4
                            }
                            else -> fail("bad escape '\\$e'")
                        }
                    }
                    c < ' ' -> fail("control character in a string")
                    else -> out.append(c)
                }
            }
        }

        fun number(): Any {
            val start = pos
            if (text[pos] == '-') pos++
            var integral = true
            while (pos < text.length && (text[pos].isDigit() || text[pos] in ".eE+-")) {
                if (text[pos] in ".eE") integral = false
                pos++
            }
            val token = text.substring(start, pos)
            if (integral) token.toLongOrNull()?.let { return it }
            return token.toDoubleOrNull() ?: fail("bad number '$token'")
        }
    }
}

/**
 * A value inside a JSON document, with the path to it: a wrong or missing field is a [BundleError] naming
 * "`what`.path" (e.g. "manifest field 'decoder.num_layers' is missing").
 */
class JsonNode(val value: Any?, private val what: String, val path: String) {
    private fun wrong(expected: String): Nothing {
        val got = when (value) {
            null -> "null"
            is Map<*, *> -> "an object"
            is List<*> -> "a list"
            is String -> "a string"
            is Boolean -> "a boolean"
            else -> "the number $value"
        }
        throw BundleError("$what field '$path' is $got, expected $expected",
            "re-export the bundle with a pocketvlm version this app supports")
    }

    private fun child(key: String) = if (path.isEmpty()) key else "$path.$key"

    operator fun get(key: String): JsonNode {
        val map = value as? Map<*, *> ?: wrong("an object")
        if (!map.containsKey(key)) {
            throw BundleError("$what field '${child(key)}' is missing",
                "re-export the bundle with a pocketvlm version this app supports")
        }
        return JsonNode(map[key], what, child(key))
    }

    operator fun get(index: Int): JsonNode {
        val list = value as? List<*> ?: wrong("a list")
        if (index !in list.indices) throw BundleError("$what field '$path' has no item $index", "re-export the bundle")
        return JsonNode(list[index], what, "$path[$index]")
    }

    /** The field, or null when it is absent or JSON null. */
    fun opt(key: String): JsonNode? {
        val map = value as? Map<*, *> ?: wrong("an object")
        return if (map[key] == null) null else JsonNode(map[key], what, child(key))
    }

    fun has(key: String): Boolean = (value as? Map<*, *>)?.get(key) != null
    val isNull: Boolean get() = value == null

    fun string(): String = value as? String ?: wrong("a string")
    fun bool(): Boolean = value as? Boolean ?: wrong("true or false")

    fun long(): Long = when (value) {
        is Long -> value
        is Double -> if (value == Math.rint(value) && Math.abs(value) < 9.0e15) value.toLong() else wrong("an integer")
        else -> wrong("an integer")
    }

    fun int(): Int {
        val v = long()
        if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) wrong("an integer in 32 bits")
        return v.toInt()
    }

    fun double(): Double = when (value) {
        is Long -> value.toDouble()
        is Double -> value
        else -> wrong("a number")
    }

    fun list(): List<JsonNode> {
        val list = value as? List<*> ?: wrong("a list")
        return list.indices.map { JsonNode(list[it], what, "$path[$it]") }
    }

    fun obj(): Map<String, JsonNode> {
        val map = value as? Map<*, *> ?: wrong("an object")
        return map.entries.associate { (k, v) -> k.toString() to JsonNode(v, what, child(k.toString())) }
    }

    fun ints(): IntArray = list().map { it.int() }.toIntArray()
    fun longs(): LongArray = list().map { it.long() }.toLongArray()
    fun doubles(): DoubleArray = list().map { it.double() }.toDoubleArray()
    fun floats(): FloatArray = list().map { it.double().toFloat() }.toFloatArray()
    fun strings(): List<String> = list().map { it.string() }
}

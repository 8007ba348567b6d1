package dev.pocketvlm.engine

import java.io.File
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue
import kotlin.test.fail

/**
 * The tokenizer against Hugging Face `tokenizers` and the Python runtime's `TextTokenizer`, on the fixtures
 * `tests/jvm_fixtures/tokenizer.py` writes (SmolLM2, CLIP, a Qwen2 pipeline and the tiny test vocabularies, over a
 * thousand seeded strings each), and its refusals of what it does not run.
 */
class TokenizerTest {
    private class Vocabulary(val name: String, val tokenizer: Tokenizer, val cases: JsonNode)

    /** Mismatches of one check, reported with the first few inputs (as JSON, so that invisible characters show). */
    private class Mismatches(private val what: String) {
        private val found = ArrayList<String>()
        var checked = 0
            private set

        fun check(expected: Any?, actual: Any?, input: () -> String) {
            checked++
            if (expected != actual) found.add("${input()}: expected ${show(expected)}, got ${show(actual)}")
        }

        fun assertNone() {
            assertTrue(checked > 0, "$what: nothing was compared")
            if (found.isNotEmpty()) {
                fail("$what: ${found.size} of $checked differ; first ones:\n" + found.take(5).joinToString("\n"))
            }
        }

        private fun show(value: Any?): String = when (value) {
            is String -> Json.write(value)
            is List<*> -> Json.write(value)
            else -> value.toString()
        }
    }

    @Test
    fun plainEncodingMatchesTokenizers() = compareEach("encode_plain") { v ->
        val plain = v.cases["plain"]
        val maxLength = plain["max_length"].int()
        val texts = plain["texts"].strings()
        val expected = plain["ids"].list()
        texts.forEachIndexed { i, text ->
            val ids = v.tokenizer.encodePlain(text, maxLength).toList()
            check(expected[i].longs().toList(), ids) { "${v.name} ${Json.write(text)}" }
        }
    }

    @Test
    fun batchEncodingMatchesTheRuntime() = compareEach("encode (padded batches)") { v ->
        for (group in v.cases["encode"].list()) {
            val spec = TokenizerSpec(group["spec"])
            for (batch in group["batches"].list()) {
                val texts = batch["texts"].strings()
                val encoded = v.tokenizer.encode(texts, spec)
                val label = { "${v.name} max_length ${spec.maxLength} ${spec.padding} ${Json.write(texts)}" }
                check(batch["input_ids"].list().map { it.longs().toList() }, encoded.ids.map { it.toList() }, label)
                check(batch["attention_mask"].list().map { it.longs().toList() },
                    encoded.attentionMask.map { it.toList() }, label)
            }
        }
    }

    @Test
    fun decodeMatchesTokenizers() = compareEach("decode") { v ->
        for ((case, ids) in v.decodeCases()) {
            check(case["text"].string(), v.tokenizer.decode(ids)) { "${v.name} ids $ids" }
            check(case["raw"].string(), v.tokenizer.decode(ids, skipSpecialTokens = false)) {
                "${v.name} ids $ids (special tokens kept)"
            }
        }
    }

    @Test
    fun streamPiecesMatchTheRuntime() = compareEach("stream") { v ->
        for ((case, ids) in v.decodeCases()) {
            val stream = v.tokenizer.stream()
            val pieces = ids.map { stream.push(it) }
            val full = v.tokenizer.decode(ids)
            check(case["pieces"].strings(), pieces) { "${v.name} ids $ids" }
            check(case["rest"].string(), stream.finish(full)) { "${v.name} ids $ids (finish)" }
            // byte-level decoding: the pieces and the rest add up to the full decode
            check(full, pieces.joinToString("") + stream.finish(full)) { "${v.name} ids $ids (sum)" }
        }
    }

    @Test
    fun tokenIdsAndVocabularySizeMatch() = compareEach("token_to_id / get_vocab_size") { v ->
        check(v.cases["vocab_size"].int(), v.tokenizer.vocabSize) { "${v.name} vocabulary size" }
        for ((token, id) in v.cases["token_ids"].obj()) {
            check(if (id.isNull) null else id.int(), v.tokenizer.tokenId(token)) { "${v.name} $token" }
        }
    }

    @Test
    fun theFixturesCoverTheRealVocabularies() {
        val names = vocabularies.map { it.name }
        val expected = listOf("smollm2", "clip", "qwen2", "tiny-clip", "tiny-siglip", "tiny-qwen2_vl", "tiny-idefics3",
            "features-a", "features-b")
        for (name in expected) {
            assertTrue(name in names, "the fixtures have no '$name' vocabulary (they have $names)")
        }
        for (v in vocabularies.filter { it.name in listOf("smollm2", "clip", "qwen2") }) {
            val count = v.cases["plain"]["texts"].list().size
            assertTrue(count >= 1000, "${v.name}: only $count strings")
        }
        assertTrue(vocabularies.first { it.name == "clip" }.cases["encode"].list().isNotEmpty(), "no CLIP batches")
    }

    @Test
    fun encodesAThousandStringsWellUnderASecond() {
        val v = vocabularies.first { it.name == "smollm2" }
        val json = File(fixtures, v.cases["tokenizer"].string()).readText()
        val texts = v.cases["plain"]["texts"].strings().take(1000)
        val warm = Tokenizer.fromJson(json)  // JIT warm-up on other words
        texts.reversed().forEach { warm.encodePlain(it.uppercase()) }
        var ids = 0
        // the best of three runs, each on a fresh tokenizer (an empty word cache: every word is merged once)
        val ms = (1..3).minOf {
            val tokenizer = Tokenizer.fromJson(json)
            val start = System.nanoTime()
            ids = texts.sumOf { text -> tokenizer.encodePlain(text).size }
            (System.nanoTime() - start) / 1e6
        }
        println("tokenizer: 1000 strings ($ids ids) encoded in %.0f ms".format(ms))
        assertTrue(ms < 1000, "encoding 1000 strings took $ms ms")
    }

    @Test
    fun refusesModelsItDoesNotRun() {
        val unigram = """{"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0]]}"""
        assertRefused("model 'Unigram'") { tokenizerJson(model = unigram) }
        assertRefused("model 'WordPiece'") { tokenizerJson(model = """{"type": "WordPiece", "vocab": {}}""") }
        assertRefused("dropout") { tokenizerJson(model = bpe(extra = """, "dropout": 0.1""")) }
        assertRefused("merge") { tokenizerJson(model = bpe(merges = """[["a", "z"]]""")) }
        assertRefused("unk_token") { tokenizerJson(model = bpe(extra = """, "unk_token": "<unk>"""")) }
    }

    @Test
    fun refusesStagesItDoesNotRun() {
        assertRefused("normalizer 'BertNormalizer'") {
            tokenizerJson(normalizer = """{"type": "BertNormalizer", "lowercase": true}""")
        }
        assertRefused("normalizer 'Precompiled'") {
            tokenizerJson(normalizer = """{"type": "Sequence", "normalizers": [{"type": "NFC"}, """ +
                """{"type": "Precompiled"}]}""")
        }
        assertRefused("pre_tokenizer 'Metaspace'") {
            tokenizerJson(preTokenizer = """{"type": "Metaspace", "replacement": "\u2581"}""")
        }
        assertRefused("post_processor 'Unknown'") { tokenizerJson(post = """{"type": "Unknown"}""") }
        assertRefused("decoder 'WordPiece'") { tokenizerJson(decoder = """{"type": "WordPiece", "prefix": "##"}""") }
        assertRefused("split behavior 'Sideways'") {
            tokenizerJson(preTokenizer = split("a", behavior = "Sideways"))
        }
    }

    @Test
    fun refusesRegexesItCannotMatchAsOniguruma() {
        for ((regex, named) in listOf("\\bab" to "\\b", "^ab" to "anchor", "[[:alpha:]]+" to "nested", "\\p{Han}" to
            "Han", "(?m:a.)" to "group", "a\\1" to "\\1", "[^\\S]" to "\\S")) {
            assertRefused(named) { tokenizerJson(preTokenizer = split(regex)) }
        }
        // what the supported families use compiles, with Oniguruma's meaning of \s
        val tokenizer = Tokenizer.fromJson(tokenizerJson(preTokenizer = split("\\s+|[^\\s]+"), decoder = "null"))
        assertEquals(listOf(0L, 1L, 0L), tokenizer.encodePlain("a\u0085b\u3000a").toList())
    }

    @Test
    fun refusesTextThatIsNotUnicode() {
        val tokenizer = Tokenizer.fromJson(tokenizerJson())
        val error = assertFailsWith<InputError> { tokenizer.encodePlain("ab\uD800c") }
        assertEquals("the prompt is not valid Unicode (a lone surrogate at character 2)", error.problem)
        assertFailsWith<InputError> { tokenizer.encodePlain("\uDC00") }
        // a valid pair is fine (and, not in this vocabulary, dropped: a and b then merge)
        assertEquals(listOf(2L), tokenizer.encodePlain("a\uD83D\uDE00b").toList())
        val spec = spec("longest")
        val batch = assertFailsWith<InputError> { tokenizer.encode(listOf("ok", "\uD83D\uD83D"), spec) }
        assertTrue("the text is not valid Unicode" in batch.problem, batch.problem)
        assertFailsWith<InputError> { tokenizer.encode(emptyList(), spec) }
        assertFailsWith<InputError> { tokenizer.decode(listOf(0, -1)) }
    }

    @Test
    fun refusesSpecsTheRuntimeDoesNotHave() {
        val tokenizer = Tokenizer.fromJson(tokenizerJson())
        assertRefused("padding_side 'left'") { tokenizer.encode(listOf("a"), spec("longest", side = "left")); "" }
        assertRefused("padding 'do_not_pad'") { tokenizer.encode(listOf("a"), spec("do_not_pad")); "" }
        assertRefused("does not truncate") { tokenizer.encode(listOf("a"), spec("longest", truncation = false)); "" }
        val padded = tokenizer.encode(listOf("a", "bab"), spec("max_length", maxLength = 4))
        assertEquals(listOf(listOf(0L, 9L, 9L, 9L), listOf(1L, 2L, 9L, 9L)), padded.ids.map { it.toList() })
        assertEquals(listOf(listOf(1L, 0L, 0L, 0L), listOf(1L, 1L, 0L, 0L)), padded.attentionMask.map { it.toList() })
    }

    @Test
    fun malformedFilesAreBundleErrors() {
        for (bad in listOf("{", "[]", "{}", """{"version": "2.0", "model": ${bpe()}}""",
            """{"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}}""",
            """{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b c"]}}""",
            tokenizerJson(post = """{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}, """ +
                """{"Sequence": {"id": "A"}}], "special_tokens": {}}"""))) {
            assertFailsWith<BundleError>(bad.take(80)) { Tokenizer.fromJson(bad) }
        }
    }

    /** Runs [compare] on every vocabulary into one [Mismatches] named [what], then asserts that none differed. */
    private fun compareEach(what: String, compare: Mismatches.(Vocabulary) -> Unit) {
        val mismatches = Mismatches(what)
        for (v in vocabularies) mismatches.compare(v)
        mismatches.assertNone()
    }

    /** The vocabulary's `decode` cases, each with its token ids. */
    private fun Vocabulary.decodeCases(): List<Pair<JsonNode, List<Int>>> =
        cases["decode"].list().map { it to it["ids"].ints().toList() }

    private fun assertRefused(named: String, json: () -> String) {
        val error = assertFailsWith<BundleError>("expected a refusal naming $named") { Tokenizer.fromJson(json()) }
        assertTrue(named in error.problem, "'${error.problem}' does not name $named")
    }

    private fun spec(padding: String, maxLength: Int = 8, side: String = "right", truncation: Boolean = true) =
        TokenizerSpec(Json.read("""{"file": "tokenizer.json", "max_length": $maxLength, "padding": "$padding",
            "pad_token_id": 9, "padding_side": "$side", "truncation": $truncation}""", "manifest"))

    companion object {
        private val fixtures: File by lazy {
            val root = System.getProperty("pocketvlm.fixtures")
                ?: fail("-Dpocketvlm.fixtures is not set: run these tests through tests/jvm_harness.py, which writes " +
                    "the fixtures (tests/jvm_fixtures/tokenizer.py) first")
            File(root, "tokenizer").also {
                assertTrue(File(it, "index.json").isFile,
                    "$it/index.json is missing: tests/jvm_fixtures/tokenizer.py writes it")
            }
        }

        private val vocabularies: List<Vocabulary> by lazy {
            Json.read(File(fixtures, "index.json").readText(), "index.json")["vocabularies"].list().map { entry ->
                val tokenizer = Tokenizer.fromJson(File(fixtures, entry["tokenizer"].string()).readText())
                Vocabulary(entry["name"].string(), tokenizer,
                    Json.read(File(fixtures, entry["cases"].string()).readText(), "cases"))
            }
        }

        /** A byte-free toy vocabulary: a=0, b=1, ab=2, with one merge. */
        fun bpe(merges: String = """[["a", "b"]]""", extra: String = ""): String =
            """{"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": $merges$extra}"""

        fun split(regex: String, behavior: String = "Isolated"): String =
            """{"type": "Split", "pattern": {"Regex": ${Json.write(regex)}}, "behavior": "$behavior", """ +
                """"invert": false}"""

        fun tokenizerJson(model: String = bpe(), normalizer: String = "null", preTokenizer: String = "null",
                          post: String = "null", decoder: String = "null"): String =
            """{"version": "1.0", "added_tokens": [], "normalizer": $normalizer, "pre_tokenizer": $preTokenizer,
                "post_processor": $post, "decoder": $decoder, "model": $model}"""
    }
}

package dev.pocketvlm.engine

/** A padded batch: `input_ids` and `attention_mask` rows (int64, [batch, length]), as `TextTokenizer.encode` gives. */
class Encoded(val ids: Array<LongArray>, val attentionMask: Array<LongArray>)

/**
 * A bundle's `tokenizer.json`, run as Hugging Face `tokenizers` runs it, with the rules of the Python runtime's
 * `TextTokenizer` (`runtime/text.py`): [encodePlain] adds no special tokens (chat templates carry their own);
 * [encode] (dual encoders) adds the post-processor's, truncates to `max_length` keeping them and pads right per the
 * manifest; [decode] skips special tokens. The pipeline: added tokens split out of the raw text, the normalizer,
 * added tokens of normalized content, the pre-tokenizer, byte-level BPE.
 *
 * Supported: a BPE model (merges as pairs or "a b" strings, `continuing_subword_prefix`, `end_of_word_suffix`,
 * `unk_token`, `fuse_unk`, `byte_fallback`, `ignore_merges`); normalizers NFC/NFD/NFKC/NFKD, Lowercase, Replace,
 * Strip, Prepend, Sequence; pre-tokenizers ByteLevel, Split (Oniguruma regexes translated, see [OnigRegex]),
 * Digits, Sequence; post-processors TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, Sequence;
 * decoders ByteLevel, Sequence. Anything else (a Unigram or WordPiece model, a Metaspace pre-tokenizer, ...) is a
 * [BundleError] naming it when the file is read. Immutable and thread-safe once built.
 */
class Tokenizer private constructor(
    private val model: BpeModel,
    private val normalizer: TokNormalizer?,
    private val preTokenizer: TokPreTokenizer?,
    private val postProcessor: TokPostProcessor?,
    private val decoder: TokDecoder?,
    private val added: AddedVocabulary,
) {
    /** Distinct tokens, the model's and the added ones (`get_vocab_size()` of tokenizers). */
    val vocabSize: Int = model.vocab.size + added.contents.count { it !in model.vocab }

    /** One already-templated prompt -> ids, no special tokens added, at most [maxLength] of them (as the runtime's
     * truncation does). A lone surrogate is an [InputError]. */
    fun encodePlain(text: String, maxLength: Int = Int.MAX_VALUE): LongArray {
        checkText(text, "prompt")
        val ids = encodeIds(text)
        return LongArray(minOf(ids.size, maxOf(maxLength, 0))) { ids[it].toLong() }
    }

    /** Texts -> padded `input_ids` and `attention_mask` with the post-processor's special tokens, per [spec]. */
    fun encode(texts: List<String>, spec: TokenizerSpec): Encoded {
        if (texts.isEmpty()) throw InputError("no text given", "pass at least one non-empty text or label")
        checkSpec(spec)
        texts.forEach { checkText(it, "text") }
        val special = postProcessor?.added ?: 0
        val rows = texts.map { text ->
            val ids = encodeIds(text)
            // tokenizers truncates the sequence to max_length minus the special tokens, then adds them
            val kept = if (ids.size > spec.maxLength - special) ids.copyOf(spec.maxLength - special) else ids
            postProcessor?.process(kept) ?: kept
        }
        val length = if (spec.padding == "max_length") spec.maxLength else rows.maxOf { it.size }
        val ids = Array(rows.size) { LongArray(length) { spec.padTokenId.toLong() } }
        val mask = Array(rows.size) { LongArray(length) }
        rows.forEachIndexed { r, row ->
            for (i in row.indices) {
                ids[r][i] = row[i].toLong()
                mask[r][i] = 1L
            }
        }
        return Encoded(ids, mask)
    }

    /** Ids -> text, special tokens skipped unless asked; ids the tokenizer does not know are left out (as
     * tokenizers does). A negative id is an [InputError]. */
    fun decode(ids: List<Int>, skipSpecialTokens: Boolean = true): String {
        val tokens = ArrayList<String>(ids.size)
        for (id in ids) {
            if (id < 0) throw InputError("token id $id is negative", "pass the ids the model generated")
            val token = added.token(id) ?: model.idToToken(id) ?: continue
            if (skipSpecialTokens && token in added.special) continue
            tokens.add(token)
        }
        return decoder?.decodeChain(tokens)?.joinToString("") ?: tokens.joinToString(" ")
    }

    /** An added or vocabulary token's id (as `token_to_id`), or null. */
    fun tokenId(token: String): Int? = added.idOf(token) ?: model.vocab[token]

    /** Incremental detokenisation of generated ids, as the runtime's `TextStream`. */
    fun stream(): TextStream = TextStream({ decode(it) })

    private fun encodeIds(text: String): IntArray {
        val out = TokIntList(text.length / 3 + 4)
        for (raw in added.split(text, normalizedTokens = false)) {
            if (raw.id >= 0) { out.add(raw.id); continue }
            val normalized = normalizer?.normalize(raw.text) ?: raw.text
            for (piece in added.split(normalized, normalizedTokens = true)) {
                if (piece.id >= 0) { out.add(piece.id); continue }
                val words = preTokenizer?.split(listOf(piece.text)) ?: listOf(piece.text)
                for (word in words) out.addAll(model.tokenize(word))
            }
        }
        return out.toArray()
    }

    private fun checkSpec(spec: TokenizerSpec) {
        val fix = "export the bundle with a pocketvlm version this app supports"
        if (spec.padding != "longest" && spec.padding != "max_length") {
            throw BundleError("the manifest's tokenizer padding '${spec.padding}' is not 'longest' or 'max_length'",
                fix)
        }
        if (spec.paddingSide != "right") {
            throw BundleError("the manifest's tokenizer padding_side '${spec.paddingSide}' is not 'right'", fix)
        }
        if (!spec.truncation) throw BundleError("the manifest's tokenizer does not truncate; this app always does", fix)
        val special = postProcessor?.added ?: 0
        if (spec.maxLength < special || spec.maxLength <= 0) {
            throw BundleError("the manifest's tokenizer max_length ${spec.maxLength} leaves no room for the text " +
                "($special special tokens)", fix)
        }
    }

    companion object {
        /** Reads a `tokenizer.json`; an invalid file or a feature this app does not run is a [BundleError]. */
        fun fromJson(text: String): Tokenizer {
            val root = Json.read(text, "tokenizer.json")
            root.opt("version")?.let {
                if (it.string() != "1.0") {
                    throw BundleError("tokenizer.json version '${it.string()}' is not 1.0", "re-export the bundle")
                }
            }
            try {
                val model = readModel(root["model"])
                val normalizer = root.opt("normalizer")?.let { TokNormalizers.read(it) }
                val preTokenizer = root.opt("pre_tokenizer")?.let { TokPreTokenizers.read(it) }
                val postProcessor = root.opt("post_processor")?.let { TokPostProcessors.read(it) }
                val decoder = root.opt("decoder")?.let { TokDecoders.read(it) }
                val added = AddedVocabulary(root.opt("added_tokens")?.list() ?: emptyList(), model, normalizer)
                return Tokenizer(model, normalizer, preTokenizer, postProcessor, decoder, added)
            } catch (e: PocketVlmException) {
                throw e
            } catch (e: RuntimeException) {  // a malformed value this reader did not foresee
                throw BundleError("tokenizer.json cannot be read: $e", "re-export the bundle", e)
            }
        }

        private fun readModel(node: JsonNode): BpeModel {
            val type = node.opt("type")?.string() ?: if (node.has("merges")) "BPE" else "(untyped)"
            if (type != "BPE") tokUnsupported("model", type)
            val dropout = node.opt("dropout")?.double() ?: 0.0
            if (dropout != 0.0) {
                throw BundleError("the tokenizer's BPE has dropout $dropout (random merges, for training)",
                    "export the tokenizer with dropout null")
            }
            val vocab = HashMap<String, Int>()
            for ((token, id) in node["vocab"].obj()) vocab[token] = id.int()
            val merges = node["merges"].list().map { merge ->
                val parts = if (merge.value is String) merge.string().split(' ') else merge.strings()
                if (parts.size != 2) {
                    throw BundleError("tokenizer.json field '${merge.path}' is not a pair of tokens",
                        "re-export the bundle")
                }
                parts[0] to parts[1]
            }
            return BpeModel(vocab, merges, node.opt("unk_token")?.string(),
                node.opt("continuing_subword_prefix")?.string(), node.opt("end_of_word_suffix")?.string(),
                fuseUnk = node.opt("fuse_unk")?.bool() ?: false,
                byteFallback = node.opt("byte_fallback")?.bool() ?: false,
                ignoreMerges = node.opt("ignore_merges")?.bool() ?: false)
        }

        /** The runtime's `check_text`: a string with a lone surrogate cannot be UTF-8 and is refused. */
        internal fun checkText(text: String, what: String) {
            val at = TokUnicode.loneSurrogate(text)
            if (at >= 0) {
                throw InputError("the $what is not valid Unicode (a lone surrogate at character $at)",
                    "pass the $what as UTF-8 text (check the terminal's or file's encoding)")
            }
        }
    }
}

/** A piece of the text: an added token's id, or text (id -1) for the next stages. */
internal class TokPiece(val text: String, val id: Int)

/**
 * The added tokens (`AddedVocabulary` of tokenizers): ids as tokenizers assigns them when it loads the file (a
 * token of the model's vocabulary keeps its id, others are numbered from the vocabulary size on, whatever id the
 * file gives), matched leftmost-longest in the raw text (`normalized: false`) or in normalized pieces, with
 * `single_word`, `lstrip` and `rstrip`.
 */
internal class AddedVocabulary(nodes: List<JsonNode>, model: BpeModel, normalizer: TokNormalizer?) {
    private class Added(val content: String, val id: Int, val singleWord: Boolean, val lstrip: Boolean,
                        val rstrip: Boolean, val normalized: Boolean, val special: Boolean)

    private val byContent = HashMap<String, Int>()
    private val byId = LinkedHashMap<Int, Added>()
    private val normalizedContent = HashMap<Int, String>()
    val special = HashSet<String>()
    val contents: Set<String> get() = byContent.keys
    private val raw: Matcher?
    private val normalizedMatcher: Matcher?

    init {
        var nextId = model.vocab.size
        for (node in nodes) {
            val token = Added(node["content"].string(), -1, node["single_word"].bool(), node["lstrip"].bool(),
                node["rstrip"].bool(), node["normalized"].bool(), node["special"].bool())
            if (token.content.isEmpty()) continue
            val id = byContent[token.content] ?: model.vocab[token.content] ?: nextId++
            val entry = Added(token.content, id, token.singleWord, token.lstrip, token.rstrip, token.normalized,
                token.special)
            if (entry.normalized && normalizer != null) {
                val normed = normalizer.normalize(entry.content)
                if (normed != entry.content) normalizedContent[id] = normed
            }
            byContent[entry.content] = id
            if (entry.special) special.add(entry.content)
            byId[id] = entry
        }
        raw = Matcher.of(byId.values.filter { !it.normalized }.map { it.content to it })
        normalizedMatcher = Matcher.of(byId.values.filter { it.normalized }
            .map { (normalizedContent[it.id] ?: it.content) to it })
    }

    fun idOf(content: String): Int? = byContent[content]
    fun token(id: Int): String? = byId[id]?.let { normalizedContent[id] ?: it.content }

    /** `find_matches` + `split_with_indices`: [text] cut around the added tokens found in it, empty pieces dropped. */
    fun split(text: String, normalizedTokens: Boolean): List<TokPiece> {
        if (text.isEmpty()) return emptyList()
        val matcher = (if (normalizedTokens) normalizedMatcher else raw) ?: return listOf(TokPiece(text, -1))
        val out = ArrayList<TokPiece>()
        var startOffset = 0
        var from = 0
        while (true) {
            val (matchStart, token) = matcher.find(text, from) ?: break
            var start = matchStart
            var stop = matchStart + token.first.length
            from = stop
            val added = token.second
            if (added.singleWord) {
                val startSpace = start == 0 || !TokUnicode.isWordChar(text.codePointBefore(start))
                val stopSpace = stop == text.length || !TokUnicode.isWordChar(text.codePointAt(stop))
                if (!startSpace || !stopSpace) continue
            }
            if (added.lstrip) start = maxOf(TokUnicode.whiteSpaceBefore(text, start, 0), startOffset)
            if (added.rstrip) stop = TokUnicode.whiteSpaceAfter(text, stop, text.length)
            if (startOffset < start) out.add(TokPiece(text.substring(startOffset, start), -1))
            out.add(TokPiece(text.substring(start, stop), added.id))
            startOffset = stop
        }
        if (startOffset < text.length) out.add(TokPiece(text.substring(startOffset), -1))
        return out
    }

    /** Leftmost-longest matching of a set of strings (what tokenizers' Aho-Corasick automaton does). */
    private class Matcher(private val byFirst: Map<Char, List<Pair<String, Added>>>) {
        fun find(text: String, from: Int): Pair<Int, Pair<String, Added>>? {
            for (i in from until text.length) {
                val candidates = byFirst[text[i]] ?: continue
                for (candidate in candidates) if (text.startsWith(candidate.first, i)) return i to candidate
            }
            return null
        }

        companion object {
            fun of(tokens: List<Pair<String, Added>>): Matcher? {
                if (tokens.isEmpty()) return null
                val byFirst = tokens.filter { it.first.isNotEmpty() }.groupBy { it.first[0] }
                    .mapValues { (_, list) -> list.sortedByDescending { it.first.length } }
                return Matcher(byFirst)
            }
        }
    }
}

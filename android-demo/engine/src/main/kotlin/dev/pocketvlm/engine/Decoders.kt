package dev.pocketvlm.engine

/**
 * The two ways a bundle's `text_decoder` keeps its KV cache, behind [TextDecoder]; backends only provide
 * [ComponentSession]s.
 *
 * - [DynamicKvDecoder]: an ONNX decoder with dynamic shapes (the Python runtime's `KVCache`). `past_*` is the whole
 *   `[1, kv_heads, capacity, head_dim]` buffer each step, `attention_mask` `[1, capacity + new]` marks the filled
 *   slots then the new tokens, and the graph returns only the new entries (`present_*`), copied into the next free
 *   slots: nothing is reallocated per token.
 * - [StaticKvDecoder]: static `prefill_N` and `decode` entry points over a fixed `kv_capacity` (LiteRT signatures,
 *   QNN contexts; `runtime/static_decode.py`). A call is split into chunks padded on the left with masked tokens, so
 *   the last position (whose logits come back) is real; positions are padded with the chunk's first real one, and
 *   each chunk gets the image rows it needs, counted by image tokens.
 */

private const val IMAGE_EMBEDS = "image_embeds"
private const val DEEPSTACK = "deepstack_embeds"
private val IMAGE_INPUTS = listOf(IMAGE_EMBEDS, DEEPSTACK)
private val TOKEN_INPUTS = setOf("input_ids", "position_ids", "attention_mask")

private fun pastNames(layers: Int): List<String> = (0 until layers).flatMap { listOf("past_key_$it", "past_value_$it") }

private fun present(past: String) = past.replace("past_", "present_")

private fun checkPositions(positions: Tensor.I64, n: Int, kind: String) {
    val expected = if (kind == "mrope") listOf(3, 1, n) else listOf(1, n)
    if (positions.shape.toList() != expected) {
        throw InputError("position ids of shape ${positions.shape.toList()} for $n tokens; this '$kind' decoder " +
            "takes $expected", "build the prompt with PromptBuilder")
    }
}

/**
 * What every decoder step checks first, in this order: the decoder was reset for a sequence (its [capacity] is not
 * 0), there are [ids], and [positions] is shaped for them as [kind] positions (`position_ids`). Returns their count.
 */
private fun checkStep(capacity: Int, ids: LongArray, positions: Tensor.I64, kind: String): Int {
    if (capacity == 0) {
        throw InputError("the decoder was not reset for a new sequence", "call reset(capacity) before the first step")
    }
    if (ids.isEmpty()) throw InputError("a decoder step with no tokens", "pass the prompt's ids, then one per step")
    checkPositions(positions, ids.size, kind)
    return ids.size
}

/** Refuses a step of [n] tokens after [filled] that would run past the sequence's [capacity]. */
private fun checkRoom(filled: Int, n: Int, capacity: Int) {
    if (filled + n > capacity) {
        throw InputError("KV cache full ($capacity tokens)", "lower max_new_tokens or shorten the prompt")
    }
}

/** The last position's logits, from `[1, vocab]` (or `[1, n, vocab]`). */
private fun lastLogits(outputs: Map<String, Tensor>, vocab: Int, what: String): FloatArray {
    val logits = outputs["logits"] ?: throw InferenceError("the $what returned no 'logits'", "re-export the bundle")
    val data = logits.floats()
    if (logits.shape.isEmpty() || logits.shape.last() != vocab || data.size < vocab) {
        throw InferenceError("the $what returned logits of shape ${logits.shape.toList()}, expected [1, $vocab]",
            "re-export the bundle")
    }
    return data.copyOfRange(data.size - vocab, data.size)
}

/** `present_*` `[1, heads, n, dim]`: its tokens `from until from + count` into slots `at...` of a `past_*` buffer. */
private fun copyEntries(outputs: Map<String, Tensor>, past: String, buffer: FloatArray, shape: IntArray, n: Int,
                        from: Int, count: Int, at: Int, what: String) {
    val name = present(past)
    val tensor = outputs[name] ?: throw InferenceError("the $what returned no '$name'", "re-export the bundle")
    val heads = shape[1]
    val capacity = shape[2]
    val dim = shape[3]
    if (tensor.shape.toList() != listOf(1, heads, n, dim)) {
        throw InferenceError("the $what returned '$name' of shape ${tensor.shape.toList()}, expected " +
            "${listOf(1, heads, n, dim)}", "re-export the bundle")
    }
    val data = tensor.floats()
    for (h in 0 until heads) {
        System.arraycopy(data, (h * n + from) * dim, buffer, (h * capacity + at) * dim, count * dim)
    }
}

/** Clears slots `0 until filled` of a `[1, heads, capacity, dim]` buffer. */
private fun clearSlots(buffer: FloatArray, shape: IntArray, filled: Int) {
    val capacity = shape[2]
    val dim = shape[3]
    for (h in 0 until shape[1]) java.util.Arrays.fill(buffer, h * capacity * dim, (h * capacity + filled) * dim, 0f)
}

/** A decoder with dynamic shapes (ONNX): the engine owns a `[1, kv_heads, capacity, head_dim]` buffer per `past_*`. */
class DynamicKvDecoder(private val session: ComponentSession, private val spec: ComponentSpec,
                       private val decoder: DecoderSpec) : TextDecoder {
    override val backend: String get() = session.backend
    private val past = pastNames(decoder.numLayers)
    private val imageInputs = IMAGE_INPUTS.filter { name -> spec.inputs.any { it.name == name } }

    /** What a step without image tokens feeds: one zero row per image input (`[1, hidden]`, `[levels, 1, hidden]`). */
    private val zeroRows: Map<String, Tensor.F32> = imageInputs.associateWith { name ->
        Tensor.F32(spec.input(name).shape.map { it as? Int ?: 1 }.toIntArray())
    }
    private var capacity = 0
    private var shape = IntArray(0)
    private var buffers: Map<String, FloatArray> = emptyMap()
    private var written = 0  // slots written this sequence (a failed step may write past `filled`)

    override var filled: Int = 0
        private set

    init {
        val known = TOKEN_INPUTS + imageInputs + past
        for (input in spec.inputs) {
            if (input.name !in known) {
                throw BundleError("the ${spec.name} input '${input.name}' is not one this app feeds",
                    "re-export the bundle with the pocketvlm version the app was built with")
            }
        }
        for (name in TOKEN_INPUTS + past) spec.input(name)
        val axes = if (decoder.positionIds == "mrope") 3 else 2
        if (spec.input("position_ids").shape.size != axes) {
            throw BundleError("the ${spec.name} input 'position_ids' has ${spec.input("position_ids").shape.size} " +
                "dims, expected $axes for '${decoder.positionIds}' positions", "re-export the bundle")
        }
    }

    override fun reset(capacity: Int) {
        if (capacity < 1) throw InputError("a KV cache of $capacity tokens", "pass a capacity of 1 or more")
        if (capacity != this.capacity) {
            this.capacity = capacity
            shape = intArrayOf(1, decoder.kvHeads, capacity, decoder.headDim)
            buffers = past.associateWith { FloatArray(decoder.kvHeads * capacity * decoder.headDim) }
        } else {
            for (buffer in buffers.values) clearSlots(buffer, shape, written)
        }
        filled = 0
        written = 0
    }

    override fun step(ids: LongArray, positions: Tensor.I64, imageEmbeds: Map<String, Tensor.F32>?): FloatArray {
        val n = checkStep(capacity, ids, positions, decoder.positionIds)
        checkRoom(filled, n, capacity)
        val mask = LongArray(capacity + n)
        java.util.Arrays.fill(mask, 0, filled, 1L)
        java.util.Arrays.fill(mask, capacity, capacity + n, 1L)
        val feeds = LinkedHashMap<String, Tensor>()
        for (input in spec.inputs) {
            val name = input.name
            feeds[name] = when (name) {
                "input_ids" -> Tensor.I64(intArrayOf(1, n), ids)
                "position_ids" -> positions
                "attention_mask" -> Tensor.I64(intArrayOf(1, capacity + n), mask)
                in imageInputs -> imageInput(name, input, imageEmbeds)
                else -> Tensor.F32(shape, buffers.getValue(name))
            }
        }
        val outputs = session.run(feeds)
        val logits = lastLogits(outputs, decoder.vocabSize, spec.name)
        written = maxOf(written, filled + n)
        for (name in past) copyEntries(outputs, name, buffers.getValue(name), shape, n, 0, n, filled, spec.name)
        filled += n
        return logits
    }

    private fun imageInput(name: String, input: TensorSpec, given: Map<String, Tensor.F32>?): Tensor.F32 {
        if (given == null) return zeroRows.getValue(name)
        val tensor = given[name] ?: throw InputError("the image inputs have no '$name' (they have " +
            "${given.keys.joinToString(", ")})", "pass the vision encoder's outputs unchanged")
        val fits = tensor.shape.size == input.shape.size && tensor.shape.withIndex().all { (i, d) ->
            val want = input.shape[i]
            if (want is Int) d == want else d >= 1
        }
        if (!fits) {
            throw InputError("image input '$name' has shape ${tensor.shape.toList()}; the ${spec.name} takes " +
                "${input.shape}", "pass the vision encoder's outputs unchanged")
        }
        return tensor
    }

}

/**
 * A decoder with static `prefill_N` and `decode` entry points that owns a fixed `kv_capacity` cache ([entries]: one
 * session per entry, named as the manifest's `static.signatures`, whose input shapes every chunk is checked against).
 * As in the Python runtime, a sequence may be reset for more than `kv_capacity` tokens: the step that would overflow
 * the cache is refused (an [InputError]), so a reply that stops early still runs.
 */
class StaticKvDecoder(private val entries: Map<String, ComponentSession>, private val spec: ComponentSpec,
                      private val decoder: DecoderSpec) : TextDecoder {
    private val static = spec.static ?: throw BundleError("the ${spec.name} has no 'static' block",
        "re-export the bundle with --target tflite or qnn")
    val prefillLength: Int = static["prefill_length"].int()
    val kvCapacity: Int = static["kv_capacity"].int()
    private val imageToken: Long = static["image_token_id"].long()
    private val prefill = "prefill_$prefillLength"
    private val signatures = spec.signatures
    private val engine = when (spec.format) {
        "tflite" -> "LiteRT"
        "qnn_context" -> "QNN"
        else -> spec.format
    }
    private val past: Map<String, FloatArray>
    private val pastShape: IntArray
    private val mask = LongArray(kvCapacity)
    private var capacity = 0
    private var written = 0  // slots written this sequence (a failed step may write past `filled`)

    override val backend: String get() = entries.getValue(DECODE).backend

    override var filled: Int = 0
        private set

    init {
        if (prefillLength < 2 || kvCapacity < prefillLength) {
            throw BundleError("the ${spec.name} has prefill_length $prefillLength and kv_capacity $kvCapacity",
                "re-export the bundle (prefill_length 2 or more, kv_capacity at least that)")
        }
        val names = pastNames(decoder.numLayers)
        pastShape = intArrayOf(1, decoder.kvHeads, kvCapacity, decoder.headDim)
        for ((entry, size) in listOf(prefill to prefillLength, DECODE to 1)) checkSignature(entry, size, names)
        past = names.associateWith { FloatArray(pastShape.fold(1) { a, b -> a * b }) }
    }

    private fun checkSignature(entry: String, size: Int, past: List<String>) {
        if (entry !in entries) {
            throw BundleError("the ${spec.name} has no '$entry' entry (it has ${entries.keys.joinToString(", ")})",
                "re-export the bundle")
        }
        val signature = signatures[entry] ?: throw BundleError("manifest field 'components.${spec.name}.static." +
            "signatures' has no '$entry'", "re-export the bundle")
        val expected = mutableMapOf("input_ids" to listOf(1, size), "attention_mask" to listOf(1, kvCapacity + size),
            "position_ids" to if (decoder.positionIds == "mrope") listOf(3, 1, size) else listOf(1, size))
        for (name in past) expected[name] = pastShape.toList()
        for ((name, want) in expected) {
            val got = signature[name]?.toList()
            if (got != want) {
                throw BundleError("signature '$entry' of the ${spec.name} has '$name' ${got ?: "missing"}, expected " +
                    "$want", "re-export the bundle")
            }
        }
        for ((name, shape) in signature) {
            val known = name in expected || (name == IMAGE_EMBEDS && shape.size == 2 && shape[0] == size) ||
                (name == DEEPSTACK && shape.size == 3 && shape[1] == size)
            if (!known) {
                throw BundleError("signature '$entry' of the ${spec.name} has an input '$name' ${shape.toList()} " +
                    "this app does not feed", "re-export the bundle with the pocketvlm version the app was built with")
            }
        }
    }

    override fun reset(capacity: Int) {
        if (capacity < 1) throw InputError("a KV cache of $capacity tokens", "pass a capacity of 1 or more")
        for (buffer in past.values) clearSlots(buffer, pastShape, written)  // a sequence never sees the last one's
        mask.fill(0L)
        filled = 0
        written = 0
        this.capacity = capacity
    }

    override fun step(ids: LongArray, positions: Tensor.I64, imageEmbeds: Map<String, Tensor.F32>?): FloatArray {
        val n = checkStep(capacity, ids, positions, decoder.positionIds)
        if (filled + n > kvCapacity) {
            throw InputError("$filled cached + $n new tokens exceed this $engine bundle's KV capacity of $kvCapacity",
                "shorten the prompt or re-export with a larger kv_capacity")
        }
        checkRoom(filled, n, capacity)
        var logits = FloatArray(0)
        var used = 0
        for (start in 0 until n step prefillLength) {
            val real = minOf(prefillLength, n - start)
            val entry = if (real == 1) DECODE else prefill
            val size = if (real == 1) 1 else prefillLength
            val feeds = chunkFeeds(entry, ids, positions, start, real, size, used, imageEmbeds)
            for (i in start until start + real) if (ids[i] == imageToken) used++
            val outputs = entries.getValue(entry).run(feeds)
            val what = "${spec.name} ($entry)"
            logits = lastLogits(outputs, decoder.vocabSize, what)
            val pad = size - real
            written = maxOf(written, filled + real)
            for ((name, buffer) in past) copyEntries(outputs, name, buffer, pastShape, size, pad, real, filled, what)
            mask.fill(1L, filled, filled + real)
            filled += real
        }
        return logits
    }

    /** One chunk's feeds: [real] tokens from [start], left-padded to [size] with masked tokens. */
    private fun chunkFeeds(entry: String, ids: LongArray, positions: Tensor.I64, start: Int, real: Int, size: Int,
                           used: Int, image: Map<String, Tensor.F32>?): Map<String, Tensor> {
        val pad = size - real
        val padId = if (imageToken != 0L) 0L else 1L
        val n = ids.size
        val axes = positions.shape[0]
        val chunkPositions = LongArray(axes * size) { k ->
            val axis = k / size
            positions.data[axis * n + start + maxOf(k % size - pad, 0)]
        }
        val mask = LongArray(kvCapacity + size)
        System.arraycopy(this.mask, 0, mask, 0, kvCapacity)
        mask.fill(1L, kvCapacity + pad, kvCapacity + size)
        val feeds = LinkedHashMap<String, Tensor>()
        for ((name, shape) in signatures.getValue(entry)) {
            feeds[name] = when (name) {
                "input_ids" -> Tensor.I64(intArrayOf(1, size),
                    LongArray(size) { if (it < pad) padId else ids[start + it - pad] })
                "position_ids" -> Tensor.I64(shape, chunkPositions)
                "attention_mask" -> Tensor.I64(intArrayOf(1, kvCapacity + size), mask)
                IMAGE_EMBEDS, DEEPSTACK -> imageRows(entry, name, shape, image, used, size)
                else -> Tensor.F32(pastShape, past.getValue(name))
            }
        }
        return feeds
    }

    /** [size] rows from [start] along the row axis (the last row repeated past the end); zero rows without an image. */
    private fun imageRows(entry: String, name: String, shape: IntArray, image: Map<String, Tensor.F32>?, start: Int,
                          size: Int): Tensor.F32 {
        if (image == null) return Tensor.F32(shape)
        val rows = image[name] ?: throw InputError("the image inputs have no '$name' (they have " +
            "${image.keys.joinToString(", ")})", "pass the vision encoder's outputs unchanged")
        val axis = if (name == DEEPSTACK) 1 else 0
        val fits = rows.shape.size == shape.size && rows.shape[axis] >= 1 &&
            rows.shape.indices.all { it == axis || rows.shape[it] == shape[it] }
        if (!fits) {
            throw InputError("input '$name' has shape ${rows.shape.toList()}, but signature '$entry' of this $engine " +
                "bundle takes rows of ${shape.toList()}", "pass the vision encoder's outputs unchanged")
        }
        val count = rows.shape[axis]
        val outer = shape.take(axis).fold(1) { a, b -> a * b }
        val inner = shape.drop(axis + 1).fold(1) { a, b -> a * b }
        val data = FloatArray(outer * size * inner)
        for (o in 0 until outer) {
            for (r in 0 until size) {
                val source = minOf(start + r, count - 1)
                System.arraycopy(rows.data, (o * count + source) * inner, data, (o * size + r) * inner, inner)
            }
        }
        return Tensor.F32(shape, data)
    }

    companion object {
        const val DECODE = "decode"
    }
}

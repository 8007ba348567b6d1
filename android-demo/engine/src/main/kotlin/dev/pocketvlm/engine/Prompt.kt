package dev.pocketvlm.engine

/**
 * A prompt as the decoder takes it: token ids, their positions (`[1, n]`, or `[3, 1, n]` for M-RoPE) and the
 * delta that later tokens add to their index (decode step k of a prompt of n tokens is at `n + k + delta`).
 */
class Prompt(val ids: LongArray, val positions: Tensor.I64, val delta: Long) {
    init {
        if (ids.isEmpty()) throw InputError("the prompt has no tokens", "pass a question or instruction")
        val shape = positions.shape.toList()
        if (shape != listOf(1, ids.size) && shape != listOf(3, 1, ids.size)) {
            throw InputError("prompt positions of shape $shape for ${ids.size} tokens",
                "pass positions of shape [1, ${ids.size}] or [3, 1, ${ids.size}] (M-RoPE)")
        }
    }

    /** Position axes: 1, or 3 for M-RoPE. */
    val axes: Int get() = positions.shape[0]

    /** The position of the token at sequence index [index] (the tokens cached before it), on every axis. */
    fun stepPosition(index: Int): Tensor.I64 {
        val shape = if (axes == 3) intArrayOf(3, 1, 1) else intArrayOf(1, 1)
        return Tensor.I64(shape, LongArray(axes) { index + delta })
    }
}

/**
 * Prompts from the manifest's `app` block (see [AppSpec]): the exporter's token ids before and after the user's
 * text around [encode] (the tokenizer's plain encoding of the text with the slot's plain-text prefix and suffix:
 * [PromptSlots]), and the positions it resolved, so the app needs no chat template and no M-RoPE code.
 */
class PromptBuilder(private val app: AppSpec, private val encode: (String) -> LongArray) {
    private val axes = if (app.positions.kind == "mrope") 3 else 1

    init {
        val before = app.withImage.before.size
        for ((axis, row) in app.positions.before.withIndex()) {
            if (row.size != before) {
                throw BundleError("manifest field 'app.positions.before[$axis]' has ${row.size} positions for the " +
                    "$before tokens of 'app.prompt.image.before'", "re-export the bundle")
            }
        }
    }

    /** The prompt for [text] (with the image's tokens when [withImage]); empty or blank text is an [InputError]. */
    fun build(text: String, withImage: Boolean): Prompt {
        if (text.isBlank()) throw InputError("the prompt is empty", "pass a question or instruction")
        val slots = if (withImage) app.withImage else app.textOnly
        val ids = slots.before + encode(slots.textPrefix + text + slots.textSuffix) + slots.after
        val n = ids.size
        val delta = if (withImage) app.positions.delta else 0L
        val table = if (withImage) app.positions.before else emptyArray()
        val data = LongArray(axes * n)
        for (axis in 0 until axes) {
            val fixed = if (withImage) table[axis].size else 0
            for (i in 0 until n) data[axis * n + i] = if (i < fixed) table[axis][i] else i + delta
        }
        val shape = if (axes == 3) intArrayOf(3, 1, n) else intArrayOf(1, n)
        return Prompt(ids, Tensor.I64(shape, data), delta)
    }
}

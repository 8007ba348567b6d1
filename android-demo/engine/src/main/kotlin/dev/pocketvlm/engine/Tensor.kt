package dev.pocketvlm.engine

/**
 * A named model input or output: a flat row-major array and its shape. The backends (ONNX Runtime, LiteRT) copy
 * these into their own tensors; the engine core never sees a backend type.
 */
sealed class Tensor(val shape: IntArray) {
    val size: Int get() = shape.fold(1) { a, b -> a * b }

    class F32(shape: IntArray, val data: FloatArray = FloatArray(shape.fold(1) { a, b -> a * b })) : Tensor(shape) {
        init { check(data.size == size) { "float tensor of ${data.size} values for shape ${shape.toList()}" } }
    }

    class I64(shape: IntArray, val data: LongArray = LongArray(shape.fold(1) { a, b -> a * b })) : Tensor(shape) {
        init { check(data.size == size) { "int64 tensor of ${data.size} values for shape ${shape.toList()}" } }
    }

    val dtype: String get() = if (this is F32) "float32" else "int64"

    fun floats(): FloatArray = (this as? F32)?.data
        ?: throw InferenceError("expected a float32 tensor, got $dtype ${shape.toList()}", "re-export the bundle")

    fun longs(): LongArray = (this as? I64)?.data
        ?: throw InferenceError("expected an int64 tensor, got $dtype ${shape.toList()}", "re-export the bundle")
}

/*
 * Who closes what. A backend (ONNX Runtime, LiteRT) opens every session of a bundle and is the one [SessionFactory]
 * that owns them: closing it releases them all. What it hands out, a [ComponentSession] from `session()` and the
 * [TextDecoder] from `textDecoder()`, is lent, so neither interface has a `close()`: the decoders, [RowLoop], the
 * pipelines and the golden replay run them and never release them, and nothing may use them once the factory is
 * closed. A wrapper factory ([LoopedSessions]) owns the factory it wraps.
 */

/**
 * One component (`vision_encoder`, `image_encoder`, ...) or one entry of a static decoder (`prefill_N`, `decode`),
 * lent by the [SessionFactory] that opened it (which alone closes it).
 */
interface ComponentSession {
    /** e.g. "onnxruntime-android 1.29.0 XNNPACK" or "LiteRT 2.x GPU": what the result file records. */
    val backend: String

    /** Runs the component; a backend failure is an [InferenceError]. */
    fun run(feeds: Map<String, Tensor>): Map<String, Tensor>
}

/**
 * The text decoder as the generation loop drives it: a prompt, then one token per step, over a KV cache the decoder
 * side keeps. Two implementations in the core cover every bundle: [`DynamicKvDecoder`] (an ONNX `text_decoder` with
 * `past_*` inputs and `present_*` outputs, cache buffers owned by the engine) and [`StaticKvDecoder`] (static
 * `prefill_N` / `decode` entry points over a fixed capacity: LiteRT signatures, QNN contexts). Backends only provide
 * [ComponentSession]s; the decoder over them is lent like them (its cache is plain JVM memory).
 */
interface TextDecoder {
    val backend: String

    /** A new sequence of at most [capacity] tokens (prompt + new tokens); clears what the last one cached. */
    fun reset(capacity: Int)

    /**
     * Runs the new tokens [ids] at [positions] (shape `[1, n]`, or `[3, 1, n]` for M-RoPE) with the image rows
     * [imageEmbeds] they need (null: no image rows, a zero row is fed where the graph needs one), and returns the
     * logits of the last position (`vocab_size` floats).
     */
    fun step(ids: LongArray, positions: Tensor.I64, imageEmbeds: Map<String, Tensor.F32>?): FloatArray

    /** Tokens cached so far in this sequence. */
    val filled: Int
}

/**
 * A bundle's models, opened by a backend (or wrapped: [LoopedSessions]), and their only owner: [close] releases every
 * session it opened and the decoder it built over them, once (a second call does nothing). The sessions and the
 * decoder it returns are lent: callers run them and never close them.
 */
interface SessionFactory : AutoCloseable {
    /** The open session of [component] (`vision_encoder`, `image_encoder`, `text_encoder`, ...). */
    fun session(component: String): ComponentSession

    /** The bundle's text decoder over its sessions ([DynamicKvDecoder] or [StaticKvDecoder]), built once. */
    fun textDecoder(): TextDecoder

    /** Releases every session (and the decoder); nothing it lent may be used afterwards. Idempotent. */
    override fun close()
}

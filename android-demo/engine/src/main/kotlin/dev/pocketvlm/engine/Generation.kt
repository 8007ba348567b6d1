package dev.pocketvlm.engine

/**
 * The generation loop and token selection, as the Python runtime's `runtime/generation.py` (GenerationConfig,
 * Sampler) and `runtime/vlm.py` (`_generate`), and the web demo's `generation.ts` / `vlm.ts`. The loop drives a
 * [TextDecoder] and knows nothing of the tokenizer: the caller turns the token ids into text.
 */

/** Greedy decoding by default; [seed] makes sampling repeatable (same seed, same tokens). Bad values: [InputError]. */
class GenerationConfig(
    val maxNewTokens: Int = 32,
    val doSample: Boolean = false,
    val temperature: Double = 1.0,
    val topK: Int = 0,
    val topP: Double = 1.0,
    val seed: Long? = null,
    val stopTokenIds: List<Int> = emptyList(),
    /** Always generate [maxNewTokens] (benchmarks). */
    val ignoreEos: Boolean = false,
) {
    init {
        if (maxNewTokens < 1) {
            throw InputError("max_new_tokens must be >= 1, got $maxNewTokens", "pass 1 or more new tokens")
        }
        // NaN is refused too (the Python check `temperature <= 0` lets it through; the web demo refuses it)
        if (!(temperature > 0)) {
            throw InputError("temperature must be > 0, got $temperature", "use do_sample=false for greedy")
        }
        if (!(topP > 0 && topP <= 1)) throw InputError("top_p must be in (0, 1], got $topP", "pass a value like 0.9")
        if (topK < 0) throw InputError("top_k must be >= 0, got $topK", "pass 0 to disable top-k")
    }
}

/**
 * SplitMix64 (Steele, Lea and Flood; Vigna's reference `splitmix64.c`): a seeded stream of 64-bit values and of
 * doubles in [0, 1) from their top 53 bits. The Python runtime samples from numpy's PCG64, whose stream no other
 * language reproduces portably; the web demo and this engine both use SplitMix64, so the same seed gives the same
 * tokens on a phone and in a browser (not the same as Python's).
 */
class SplitMix64(seed: Long) {
    private var state = seed

    fun nextLong(): Long {
        state += -0x61c8864680b583ebL  // 0x9e3779b97f4a7c15
        var z = state
        z = (z xor (z ushr 30)) * -0x40a7b892e31b1a47L  // 0xbf58476d1ce4e5b9
        z = (z xor (z ushr 27)) * -0x6b2fb644ecceee15L  // 0x94d049bb133111eb
        return z xor (z ushr 31)
    }

    fun nextDouble(): Double = (nextLong() ushr 11).toDouble() / (1L shl 53).toDouble()
}

/** Greedy (numpy's argmax: the first maximum, or the first NaN), or temperature / top-k / top-p sampling. */
class Sampler(private val config: GenerationConfig) {
    private val random = SplitMix64(config.seed ?: java.util.concurrent.ThreadLocalRandom.current().nextLong())

    fun choose(logits: FloatArray): Int {
        if (logits.isEmpty()) throw InferenceError("the decoder returned no logits", "re-export the bundle")
        if (!config.doSample) return argmax(logits)
        val probs = probabilities(logits)
        // numpy's Generator.choice(p=...): the first index whose normalised cumulative sum exceeds u
        val cdf = DoubleArray(probs.size)
        var total = 0.0
        for (i in probs.indices) {
            total += probs[i]
            cdf[i] = total
        }
        val u = random.nextDouble()
        for (i in cdf.indices) if (cdf[i] / total > u) return i
        return probs.size - 1
    }

    /** The distribution [choose] draws from (float64), after temperature, top-k and top-p, as the Python Sampler. */
    fun probabilities(logits: FloatArray): DoubleArray {
        if (logits.any { it.isNaN() }) {
            throw InferenceError("the decoder returned NaN logits",
                "re-export the bundle, or run it on another backend")
        }
        val scores = DoubleArray(logits.size) { logits[it].toDouble() / config.temperature }
        if (config.topK > 0) {
            val kth = scores.sortedArray()[scores.size - minOf(config.topK, scores.size)]
            for (i in scores.indices) if (scores[i] < kth) scores[i] = Double.NEGATIVE_INFINITY
        }
        val max = scores.max()
        if (max == Double.NEGATIVE_INFINITY || max == Double.POSITIVE_INFINITY) {
            throw InferenceError("the decoder returned infinite logits",
                "re-export the bundle, or run it on another backend")
        }
        var probs = DoubleArray(scores.size) { Math.exp(scores[it] - max) }
        probs = normalised(probs)
        if (config.topP < 1.0) {
            // stable order, largest first; keep while the mass before a token is below top_p
            val order = probs.indices.sortedByDescending { probs[it] }
            val keep = BooleanArray(probs.size)
            var cumulative = 0.0
            for (index in order) {
                cumulative += probs[index]
                if (cumulative - probs[index] < config.topP) keep[index] = true
            }
            probs = normalised(DoubleArray(probs.size) { if (keep[it]) probs[it] else 0.0 })
        }
        return probs
    }

    private fun normalised(values: DoubleArray): DoubleArray {
        val sum = values.sum()
        return DoubleArray(values.size) { values[it] / sum }
    }

    companion object {
        fun argmax(values: FloatArray): Int {
            var best = 0
            for (i in values.indices) {
                if (values[i].isNaN()) return i
                if (values[i] > values[best]) best = i
            }
            return best
        }
    }
}

class GenerationResult(
    val tokenIds: List<Int>,
    val promptTokens: Int,
    /** "eos" | "stop_token" | "max_new_tokens" | "forced" (teacher forcing) */
    val stopReason: String,
    /** image_encode_s, prefill_s, decode_s (seconds) and decode_tokens, as the Python runtime's result. */
    val timings: Map<String, Double>,
    /** Every step's logits, when teacher-forced. */
    val logits: List<FloatArray>?,
)

/** The generation loop over one decoder: prefill the prompt, then one token per step until a stop. */
class Generator(private val decoder: TextDecoder, private val eosTokenIds: Set<Int>, private val maxContext: Int) {
    /**
     * Generates from [prompt] with the vision encoder's outputs [image] (`image_embeds`, and `deepstack_embeds`
     * for Qwen3-VL; null for a text-only prompt). With [forced] tokens (teacher forcing) each step feeds the forced
     * token instead of the chosen one, never stops early, and the result carries every step's logits. [onToken]
     * sees each chosen token, stop tokens included. [imageEncodeS] is the caller's measured vision time, recorded
     * as `image_encode_s`.
     */
    fun generate(prompt: Prompt, image: Map<String, Tensor.F32>?, config: GenerationConfig, forced: List<Int>? = null,
                 onToken: ((Int) -> Unit)? = null, imageEncodeS: Double = 0.0): GenerationResult {
        val promptTokens = prompt.ids.size
        if (promptTokens + config.maxNewTokens > maxContext) {
            throw InputError("prompt of $promptTokens tokens + ${config.maxNewTokens} new tokens exceeds the model's " +
                "context of $maxContext", "shorten the prompt or lower max new tokens")
        }
        val timings = linkedMapOf("image_encode_s" to imageEncodeS)
        val stops = eosTokenIds + config.stopTokenIds
        val sampler = Sampler(config)
        decoder.reset(promptTokens + config.maxNewTokens)
        var vision = image
        var stepIds = prompt.ids
        var stepPositions = prompt.positions
        val tokens = ArrayList<Int>()
        val allLogits = ArrayList<FloatArray>()
        var reason = "max_new_tokens"
        var started = System.nanoTime()
        while (tokens.size < config.maxNewTokens) {
            val logits = decoder.step(stepIds, stepPositions, vision)
            if (tokens.isEmpty()) {
                timings["prefill_s"] = seconds(started)
                vision = vision?.let { firstRows(it) }  // decode steps carry no image tokens; the graph needs one row
                started = System.nanoTime()
            }
            val token = sampler.choose(logits)
            tokens.add(token)
            onToken?.invoke(token)
            var next = token
            if (forced != null) {
                allLogits.add(logits.copyOf())
                if (tokens.size >= forced.size) {
                    reason = "forced"
                    break
                }
                next = forced[tokens.size - 1]
            } else if (token in stops && !config.ignoreEos) {
                reason = if (token in eosTokenIds) "eos" else "stop_token"
                break
            }
            stepIds = longArrayOf(next.toLong())
            stepPositions = prompt.stepPosition(decoder.filled)
        }
        timings["decode_s"] = seconds(started)
        timings["decode_tokens"] = maxOf(tokens.size - 1, 0).toDouble()
        return GenerationResult(tokens, promptTokens, reason, timings, if (forced != null) allLogits else null)
    }

    private fun seconds(since: Long): Double = (System.nanoTime() - since) / 1e9

    companion object {
        /** The one (unused) image row a decode step feeds: `image_embeds[:1]`, `deepstack_embeds[:, :1]`. */
        fun firstRows(image: Map<String, Tensor.F32>): Map<String, Tensor.F32> =
            image.filterKeys { it in IMAGE_INPUTS }.mapValues { (name, tensor) -> firstRow(name, tensor) }

        private val IMAGE_INPUTS = setOf("image_embeds", "deepstack_embeds")

        private fun firstRow(name: String, tensor: Tensor.F32): Tensor.F32 {
            val axis = if (name == "deepstack_embeds") 1 else 0
            if (tensor.shape.size <= axis || tensor.shape[axis] < 1) {
                throw InputError("image input '$name' has shape ${tensor.shape.toList()}, with no image row",
                    "pass the vision encoder's outputs unchanged")
            }
            val outer = tensor.shape.take(axis).fold(1) { a, b -> a * b }
            val inner = tensor.shape.drop(axis + 1).fold(1) { a, b -> a * b }
            val rows = tensor.shape[axis]
            val data = FloatArray(outer * inner)
            for (o in 0 until outer) System.arraycopy(tensor.data, o * rows * inner, data, o * inner, inner)
            return Tensor.F32(tensor.shape.copyOf().also { it[axis] = 1 }, data)
        }
    }
}

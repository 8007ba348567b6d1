package dev.pocketvlm.engine

import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNotEquals
import kotlin.test.assertNull
import kotlin.test.assertTrue

/** A decoder whose logits follow a script (one-hot on the next token), recording what each step was given. */
class ScriptedTextDecoder(private val tokens: List<Int>, private val vocab: Int = 12) : TextDecoder {
    class Step(val ids: List<Long>, val positions: Tensor.I64, val image: Map<String, Tensor.F32>?)

    val steps = ArrayList<Step>()
    var capacity = -1
    private val logits = FloatArray(vocab)  // reused: what a backend's output buffer may do
    override val backend = "scripted"
    override var filled = 0

    override fun reset(capacity: Int) {
        this.capacity = capacity
        filled = 0
        steps.clear()
    }

    override fun step(ids: LongArray, positions: Tensor.I64, imageEmbeds: Map<String, Tensor.F32>?): FloatArray {
        steps.add(Step(ids.toList(), positions, imageEmbeds))
        filled += ids.size
        logits.fill(0f)
        logits[tokens[steps.size - 1]] = 1f + steps.size
        return logits
    }
}

class GenerationTest {
    private val sampler by lazy { GenerationFixtures.load("generation_sampler.json") }

    private fun config(options: JsonNode, seed: Long? = null, doSample: Boolean = false) = GenerationConfig(
        maxNewTokens = options.opt("max_new_tokens")?.int() ?: 32, doSample = doSample,
        temperature = options.opt("temperature")?.double() ?: 1.0, topK = options.opt("top_k")?.int() ?: 0,
        topP = options.opt("top_p")?.double() ?: 1.0, seed = seed)

    private fun textPrompt(n: Int) =
        Prompt(LongArray(n) { it + 1L }, Tensor.I64(intArrayOf(1, n), LongArray(n) { it.toLong() }), 0)

    @Test
    fun configRefusalsMatchPython() {
        val refusals = sampler["refusals"].list()
        assertEquals(7, refusals.size)
        for (case in refusals) {
            val error = assertFailsWith<InputError> { config(case["options"]) }
            assertEquals(case["problem"].string(), error.problem)
        }
        assertFailsWith<InputError> { GenerationConfig(temperature = Double.NaN) }
        assertFailsWith<InputError> { GenerationConfig(topP = Double.NaN) }
        GenerationConfig(maxNewTokens = 1, temperature = 1e-3, topP = 1.0, topK = 1)  // the edges are accepted
    }

    @Test
    fun splitMix64IsTheReferenceStream() {
        val published = SplitMix64(1234567)  // Vigna's splitmix64.c, seed 1234567
        assertEquals(listOf(6457827717110365317UL, 3203168211198807973UL, 9817491932198370423UL),
            List(3) { published.nextLong().toULong() })
        for (case in sampler["splitmix"].list()) {
            val stream = SplitMix64(case["seed"].long())
            assertEquals(case["raw"].strings().map { it.toULong() }, List(6) { stream.nextLong().toULong() })
        }
        val doubles = SplitMix64(42)
        repeat(1000) { val u = doubles.nextDouble(); assertTrue(u >= 0.0 && u < 1.0, "$u") }
    }

    @Test
    fun samplingDistributionsMatchThePythonSampler() {
        val cases = sampler["cases"].list()
        assertEquals(27, cases.size)
        var truncated = 0
        for (case in cases) {
            val name = case["name"].string()
            val config = config(case["options"], case["seed"].long(), doSample = true)
            val want = case["probabilities"].doubles()
            val got = Sampler(config).probabilities(case["logits"].floats())
            assertEquals(want.size, got.size, name)
            for (i in want.indices) {
                assertEquals(want[i] == 0.0, got[i] == 0.0, "$name: token $i kept by one side only")
                assertEquals(want[i], got[i], 1e-12, "$name: token $i")
            }
            if (want.any { it == 0.0 }) truncated++
        }
        assertTrue(truncated >= 15, "only $truncated cases exercise top-k / top-p")
    }

    @Test
    fun seededDrawsAreNumpyChoiceOverSplitMix64() {
        for (case in sampler["cases"].list()) {
            val sampler = Sampler(config(case["options"], case["seed"].long(), doSample = true))
            val logits = case["logits"].floats()
            assertEquals(case["draws"].ints().toList(), List(12) { sampler.choose(logits) }, case["name"].string())
        }
    }

    @Test
    fun greedyIsNumpyArgmax() {
        for (case in sampler["greedy"].list()) {
            val logits = case["logits"].list().map {
                when (it.value) {
                    "nan" -> Float.NaN
                    "inf" -> Float.POSITIVE_INFINITY
                    "-inf" -> Float.NEGATIVE_INFINITY
                    else -> it.double().toFloat()
                }
            }.toFloatArray()
            assertEquals(case["argmax"].int(), Sampler(GenerationConfig()).choose(logits), logits.toList().toString())
        }
    }

    @Test
    fun samplingRefusesLogitsItCannotDrawFrom() {
        val sampling = Sampler(GenerationConfig(doSample = true, seed = 1))
        assertFailsWith<InferenceError> { sampling.choose(floatArrayOf(1f, Float.NaN)) }
        val none = floatArrayOf(Float.NEGATIVE_INFINITY, Float.NEGATIVE_INFINITY)
        assertFailsWith<InferenceError> { sampling.choose(none) }
        assertFailsWith<InferenceError> { sampling.choose(floatArrayOf(0f, Float.POSITIVE_INFINITY)) }
        assertFailsWith<InferenceError> { Sampler(GenerationConfig()).choose(FloatArray(0)) }
        assertEquals(1, sampling.choose(floatArrayOf(Float.NEGATIVE_INFINITY, 0f)))  // a -inf token just never wins
    }

    @Test
    fun stopReasons() {
        fun run(config: GenerationConfig, eos: Set<Int> = setOf(9)): Pair<GenerationResult, ScriptedTextDecoder> {
            val decoder = ScriptedTextDecoder(listOf(3, 4, 9, 4, 9, 2, 2, 2))
            return Generator(decoder, eos, 64).generate(textPrompt(5), null, config) to decoder
        }
        val (eos, eosDecoder) = run(GenerationConfig(maxNewTokens = 8))
        assertEquals(listOf(3, 4, 9) to "eos", eos.tokenIds to eos.stopReason)
        assertEquals(listOf(listOf(1L, 2, 3, 4, 5), listOf(3L), listOf(4L)), eosDecoder.steps.map { it.ids })
        assertEquals(13, eosDecoder.capacity)
        assertNull(eos.logits)
        val stop = run(GenerationConfig(maxNewTokens = 8, stopTokenIds = listOf(4)), eos = emptySet()).first
        assertEquals(listOf(3, 4) to "stop_token", stop.tokenIds to stop.stopReason)
        val both = run(GenerationConfig(maxNewTokens = 8, stopTokenIds = listOf(9))).first
        assertEquals("eos", both.stopReason)
        val ignored = run(GenerationConfig(maxNewTokens = 6, stopTokenIds = listOf(4), ignoreEos = true)).first
        assertEquals(listOf(3, 4, 9, 4, 9, 2) to "max_new_tokens", ignored.tokenIds to ignored.stopReason)
        val (short, shortDecoder) = run(GenerationConfig(maxNewTokens = 2), eos = emptySet())
        assertEquals(listOf(3, 4) to "max_new_tokens", short.tokenIds to short.stopReason)
        assertEquals(2, shortDecoder.steps.size)  // the last token is never fed
        assertEquals(1.0, short.timings["decode_tokens"])
        assertEquals(listOf("image_encode_s", "prefill_s", "decode_s", "decode_tokens"), short.timings.keys.toList())
    }

    @Test
    fun teacherForcingFeedsTheForcedTokensAndKeepsEachStepsLogits() {
        val decoder = ScriptedTextDecoder(listOf(3, 9, 4, 5))
        val seen = ArrayList<Int>()
        val result = Generator(decoder, setOf(9), 64).generate(textPrompt(2), null, GenerationConfig(maxNewTokens = 8),
            forced = listOf(7, 8, 6), onToken = seen::add)
        assertEquals("forced", result.stopReason)
        assertEquals(listOf(3, 9, 4), result.tokenIds)  // eos chosen at step 2 does not stop a forced run
        assertEquals(result.tokenIds, seen)
        assertEquals(listOf(listOf(1L, 2), listOf(7L), listOf(8L)), decoder.steps.map { it.ids })
        val logits = result.logits!!
        assertEquals(listOf(3, 9, 4), logits.map { Sampler.argmax(it) })  // copies, not the decoder's reused buffer
        assertEquals(listOf(2f, 3f, 4f), logits.mapIndexed { i, row -> row[result.tokenIds[i]] })
        val longer = Generator(ScriptedTextDecoder(listOf(1, 2, 3)), emptySet(), 64)
            .generate(textPrompt(2), null, GenerationConfig(maxNewTokens = 2), forced = listOf(5, 5, 5))
        assertEquals("max_new_tokens" to 2, longer.stopReason to longer.logits!!.size)
    }

    @Test
    fun decodeStepsArePlacedAtFilledPlusDeltaWithOneImageRow() {
        val n = 6
        val positions = Tensor.I64(intArrayOf(3, 1, n), LongArray(3 * n) { longArrayOf(0, 1, 1, 1, 2, 3)[it % n] })
        val prompt = Prompt(LongArray(n) { 5 }, positions, -2)
        val rows = Tensor.F32(intArrayOf(3, 2), floatArrayOf(1f, 2f, 3f, 4f, 5f, 6f))
        val deep = Tensor.F32(intArrayOf(2, 3, 2), FloatArray(12) { it.toFloat() })
        val other = Tensor.F32(intArrayOf(1))
        val image = mapOf("image_embeds" to rows, "deepstack_embeds" to deep, "pixel_values" to other)
        val decoder = ScriptedTextDecoder(listOf(1, 1, 1, 1))
        Generator(decoder, emptySet(), 64).generate(prompt, image, GenerationConfig(maxNewTokens = 4))
        assertTrue(decoder.steps[0].image === image)
        for ((k, step) in decoder.steps.withIndex().drop(1)) {
            assertContentEquals(intArrayOf(3, 1, 1), step.positions.shape)
            assertEquals(List(3) { n + k - 1 - 2L }, step.positions.data.toList(), "decode step $k")
            val cut = step.image!!
            assertEquals(setOf("image_embeds", "deepstack_embeds"), cut.keys)
            assertEquals(listOf(1f, 2f), cut.getValue("image_embeds").data.toList())
            assertContentEquals(intArrayOf(1, 2), cut.getValue("image_embeds").shape)
            assertEquals(listOf(0f, 1f, 6f, 7f), cut.getValue("deepstack_embeds").data.toList())
            assertContentEquals(intArrayOf(2, 1, 2), cut.getValue("deepstack_embeds").shape)
        }
        val text = ScriptedTextDecoder(listOf(1, 1, 1))
        Generator(text, emptySet(), 64).generate(textPrompt(3), null, GenerationConfig(maxNewTokens = 3))
        assertEquals(listOf(null, null, null), text.steps.map { it.image })
        assertEquals(listOf(3L, 4L), text.steps.drop(1).map { it.positions.data.single() })
    }

    @Test
    fun promptsOverTheContextAreRefusedBeforeAnyStep() {
        val decoder = ScriptedTextDecoder(listOf(1))
        val error = assertFailsWith<InputError> {
            Generator(decoder, emptySet(), 12).generate(textPrompt(8), null, GenerationConfig(maxNewTokens = 5))
        }
        assertEquals("prompt of 8 tokens + 5 new tokens exceeds the model's context of 12", error.problem)
        assertEquals(0, decoder.steps.size)
        assertFailsWith<InputError> { Prompt(LongArray(0), Tensor.I64(intArrayOf(1, 0)), 0) }
        assertFailsWith<InputError> { Prompt(longArrayOf(1, 2), Tensor.I64(intArrayOf(1, 3)), 0) }
    }

    @Test
    fun seededSamplingRepeats() {
        val logits = sampler["cases"].list().first()["logits"].floats()
        fun tokens(seed: Long): List<Int> {
            val sampler = Sampler(GenerationConfig(doSample = true, temperature = 1.5, seed = seed))
            return List(40) { sampler.choose(logits) }
        }
        assertEquals(tokens(11), tokens(11))
        assertNotEquals(tokens(11), tokens(12))
        assertTrue(tokens(11).toSet().size > 5, "a flat distribution should give varied tokens")
    }
}

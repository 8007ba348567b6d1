package dev.pocketvlm.engine

import java.io.File
import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue
import kotlin.test.fail

/** The fixtures `tests/jvm_fixtures/generation.py` writes (the Python runtime's side of these tests). */
object GenerationFixtures {
    fun load(name: String): JsonNode {
        val dir = System.getProperty("pocketvlm.fixtures")
            ?: fail("system property pocketvlm.fixtures is not set: run through tests/jvm_harness.py")
        val file = File(dir, name)
        if (!file.isFile) fail("fixture $file is missing: tests/jvm_fixtures/generation.py writes it")
        return Json.read(file.readText(), name)
    }

    fun f32(node: JsonNode) = Tensor.F32(node["shape"].ints(), node["data"].floats())
    fun i64(node: JsonNode) = Tensor.I64(node["shape"].ints(), node["data"].longs())
}

/**
 * The fake decoder model of `tests/jvm_fixtures/generation.py` (`fake_model`), in integer arithmetic on float32
 * values so both sides agree exactly: each new token's cache entries encode its id, positions and image rows, and
 * the logits hash every attended entry.
 */
object FakeDecoderModel {
    private const val LAYERS = 2
    private const val KV_HEADS = 2
    private const val HEAD_DIM = 3
    private const val HIDDEN = 4
    private const val VOCAB = 40
    private const val LEVELS = 2

    fun run(feeds: Map<String, Tensor>, imageToken: Long): Map<String, Tensor> {
        val ids = feeds.getValue("input_ids").longs()
        val n = ids.size
        val positions = feeds.getValue("position_ids").longs()
        val axes = positions.size / n
        val mask = feeds.getValue("attention_mask").longs()
        val capacity = mask.size - n
        val rows = feeds.getValue("image_embeds") as Tensor.F32
        assertTrue(rows.shape.size == 2 && rows.shape[1] == HIDDEN, "image_embeds ${rows.shape.toList()}")
        val deep = feeds["deepstack_embeds"] as Tensor.F32?
        val mixed = LongArray(n) { i -> (0 until axes).sumOf { a -> positions[a * n + i] * (a + 1) } }
        val image = LongArray(n)
        var used = 0
        for (i in 0 until n) {
            if (ids[i] != imageToken) continue
            assertTrue(used < rows.shape[0], "an image token without an image row")
            image[i] = (0 until HIDDEN).sumOf { c -> rows.data[used * HIDDEN + c].toLong() * (c + 1) }
            if (deep != null) {
                val r = deep.shape[1]
                image[i] += (0 until LEVELS).sumOf { level ->
                    (0 until HIDDEN).sumOf { c -> deep.data[(level * r + used) * HIDDEN + c].toLong() } * (level + 2)
                }
            }
            used++
        }
        val outputs = LinkedHashMap<String, Tensor>()
        var total = 0L
        for (layer in 0 until LAYERS) {
            for ((kind, factor) in listOf("key" to 1L, "value" to 2L)) {
                val past = feeds.getValue("past_${kind}_$layer") as Tensor.F32
                assertEquals(listOf(1, KV_HEADS, capacity, HEAD_DIM), past.shape.toList())
                assertTrue(past.data.all { it == Math.rint(it.toDouble()).toFloat() })
                val entry = LongArray(KV_HEADS * n * HEAD_DIM)
                for (h in 0 until KV_HEADS) for (i in 0 until n) for (d in 0 until HEAD_DIM) {
                    var v = ids[i] * 3 + mixed[i] * 5 + layer * 7 + h * 11 + d
                    if (kind == "value") v += 1 + image[i]
                    entry[(h * n + i) * HEAD_DIM + d] = v
                    if (mask[capacity + i] == 1L) total += factor * v
                }
                for (h in 0 until KV_HEADS) for (j in 0 until capacity) for (d in 0 until HEAD_DIM) {
                    if (mask[j] == 1L) total += factor * past.data[(h * capacity + j) * HEAD_DIM + d].toLong()
                }
                outputs["present_${kind}_$layer"] = Tensor.F32(intArrayOf(1, KV_HEADS, n, HEAD_DIM),
                    FloatArray(entry.size) { entry[it].toFloat() })
            }
        }
        val logits = FloatArray(VOCAB) { v ->
            Math.floorMod(total * 31 + v * 17L + Math.floorMod(total, 13L) * v * v, 101L).toFloat()
        }
        outputs["logits"] = Tensor.F32(intArrayOf(1, VOCAB), logits)
        return outputs
    }
}

/** One recorded decoder call: the entry ("model" for ONNX, else the signature) and a copy of its feeds. */
class RecordedCall(val entry: String, val feeds: Map<String, Pair<List<Int>, DoubleArray>>)

/** A backend session running [FakeDecoderModel] and recording every call (checked against [signature] if given). */
class FakeDecoderSession(private val entry: String, private val imageToken: Long,
                         private val calls: MutableList<RecordedCall>,
                         private val signature: Map<String, IntArray>? = null) : ComponentSession {
    override val backend = "fake"

    override fun run(feeds: Map<String, Tensor>): Map<String, Tensor> {
        if (signature != null) {
            assertEquals(signature.keys, feeds.keys, "signature '$entry' inputs")
            for ((name, shape) in signature) assertContentEquals(shape, feeds.getValue(name).shape, "$entry $name")
        }
        calls.add(RecordedCall(entry, feeds.mapValues { (_, t) ->
            t.shape.toList() to (if (t is Tensor.F32) DoubleArray(t.size) { t.data[it].toDouble() }
            else DoubleArray(t.size) { (t as Tensor.I64).data[it].toDouble() })
        }))
        return FakeDecoderModel.run(feeds, imageToken)
    }
}

class DecoderTest {
    private val fixtures by lazy { GenerationFixtures.load("generation_decoders.json") }

    private fun decoderFor(scenario: JsonNode, calls: MutableList<RecordedCall>): TextDecoder {
        val spec = ComponentSpec("text_decoder", scenario["component"])
        val decoder = DecoderSpec(scenario["decoder"])
        val imageToken = scenario["image_token_id"].long()
        if (spec.static == null) return DynamicKvDecoder(FakeDecoderSession("model", imageToken, calls), spec, decoder)
        val entries = spec.signatures.mapValues { (name, signature) ->
            FakeDecoderSession(name, imageToken, calls, signature) as ComponentSession
        }
        return StaticKvDecoder(entries, spec, decoder)
    }

    private fun assertCalls(expected: JsonNode, got: List<RecordedCall>, what: String) {
        val want = expected.list()
        assertEquals(want.size, got.size, "$what: decoder calls")
        for ((index, call) in want.withIndex()) {
            val at = "$what call $index"
            assertEquals(call["entry"].string(), got[index].entry, at)
            val feeds = call["feeds"].obj()
            assertEquals(feeds.keys, got[index].feeds.keys, "$at feed names")
            for ((name, tensor) in feeds) {
                val (shape, data) = got[index].feeds.getValue(name)
                assertEquals(tensor["shape"].ints().toList(), shape, "$at $name shape")
                val values = tensor["data"].doubles()
                val first = values.indices.firstOrNull { values[it] != data[it] } ?: continue
                fail("$at $name differs at flat index $first: expected ${values[first]}, got ${data[first]}")
            }
        }
    }

    private fun runScenario(scenario: JsonNode, decoder: TextDecoder, calls: MutableList<RecordedCall>, round: Int) {
        val name = "${scenario["name"].string()} (sequence $round)"
        calls.clear()
        val prompt = scenario["prompt"]
        val input = Prompt(prompt["ids"].longs(), GenerationFixtures.i64(prompt["positions"]), prompt["delta"].long())
        val image = scenario.opt("image")?.obj()?.mapValues { GenerationFixtures.f32(it.value) }
        val options = scenario["config"]
        val config = GenerationConfig(maxNewTokens = options["max_new_tokens"].int(),
            stopTokenIds = options["stop_token_ids"].ints().toList(), ignoreEos = options["ignore_eos"].bool())
        val forced = scenario.opt("forced")?.ints()?.toList()
        val generator = Generator(decoder, scenario["eos_token_ids"].ints().toSet(), scenario["max_context"].int())
        val seen = ArrayList<Int>()
        if (scenario.has("error")) {
            val error = assertFailsWith<InputError>(name) {
                generator.generate(input, image, config, forced, seen::add)
            }
            assertEquals(scenario["error"]["problem"].string(), error.problem, name)
            assertCalls(scenario["calls"], calls, name)
            return
        }
        val result = generator.generate(input, image, config, forced, seen::add)
        assertEquals(scenario["token_ids"].ints().toList(), result.tokenIds, "$name tokens")
        assertEquals(scenario["stop_reason"].string(), result.stopReason, "$name stop reason")
        assertEquals(scenario["prompt_tokens"].int(), result.promptTokens, name)
        assertEquals(result.tokenIds, seen, "$name onToken")
        assertEquals(scenario["decode_tokens"].double(), result.timings["decode_tokens"], name)
        assertEquals(setOf("image_encode_s", "prefill_s", "decode_s", "decode_tokens"), result.timings.keys, name)
        val logits = scenario.opt("logits")
        if (logits == null) assertEquals(null, result.logits, name) else {
            val want = logits.list().map { it.floats().toList() }
            assertEquals(want, result.logits!!.map { it.toList() }, "$name forced logits")
        }
        assertCalls(scenario["calls"], calls, name)
    }

    @Test
    fun scenariosFeedWhatThePythonRuntimeFeeds() {
        val scenarios = fixtures["scenarios"].list()
        assertEquals(12, scenarios.size)
        for (scenario in scenarios) {
            val calls = ArrayList<RecordedCall>()
            val decoder = decoderFor(scenario, calls)
            // twice on one decoder: reset() must leave nothing of the first sequence in what the second one feeds
            for (round in 1..2) runScenario(scenario, decoder, calls, round)
        }
    }

    @Test
    fun staticChunksArePaddedOnTheLeftAndSliceImageRows() {
        val scenario = fixtures["scenarios"].list().first { it["name"].string().startsWith("static_mrope_image") }
        val calls = ArrayList<RecordedCall>()
        runScenario(scenario, decoderFor(scenario, calls), calls, 1)
        // 15 prompt tokens through prefill_4: 4 + 4 + 4 + 3 (one masked pad on the left of the last chunk)
        assertEquals(listOf("prefill_4", "prefill_4", "prefill_4", "prefill_4"), calls.take(4).map { it.entry })
        val last = calls[3].feeds
        assertEquals(listOf(0.0, 21.0, 22.0, 8.0), last.getValue("input_ids").second.toList())
        val mask = last.getValue("attention_mask").second
        assertEquals(listOf(0.0, 1.0, 1.0, 1.0), mask.toList().takeLast(4))
        assertEquals(12.0, mask.take(32).sum())
        // positions: the pad takes the first real token's (index 12: 12 + delta on each of the 3 axes)
        val delta = scenario["prompt"]["delta"].long().toDouble()
        assertEquals(List(3) { listOf(12.0, 12.0, 13.0, 14.0).map { it + delta } }.flatten(),
            last.getValue("position_ids").second.toList())
        // image tokens 4..9: the third chunk (8..11) has the last two, rows 4 and 5, padded by repeating row 5
        val rows = scenario["image"]["image_embeds"]["data"].doubles().toList().chunked(4)
        assertEquals(listOf(rows[4], rows[5], rows[5], rows[5]).flatten(),
            calls[2].feeds.getValue("image_embeds").second.toList())
        assertEquals(rows.take(4).flatten(), calls[0].feeds.getValue("image_embeds").second.toList())
    }

    @Test
    fun dynamicCacheRefusesMoreThanItsCapacityAsPythonDoes() {
        val full = fixtures["kv_full"]
        val scenario = fixtures["scenarios"].list().first { it["name"].string() == "dynamic_1d_text_stop_token" }
        val calls = ArrayList<RecordedCall>()
        val decoder = decoderFor(scenario, calls)
        decoder.reset(full["capacity"].int())
        val (first, second) = full["steps"].ints()
        decoder.step(LongArray(first) { 1 }, Tensor.I64(intArrayOf(1, first), LongArray(first) { it.toLong() }), null)
        val error = assertFailsWith<InputError> {
            val positions = Tensor.I64(intArrayOf(1, second), LongArray(second) { it + 3L })
            decoder.step(LongArray(second) { 1 }, positions, null)
        }
        assertEquals(full["problem"].string(), error.problem)
        assertEquals(first, decoder.filled)
        assertEquals(1, calls.size)  // refused before running the graph
    }

    @Test
    fun aFailedStepLeavesNothingForTheNextSequence() {
        for (name in listOf("dynamic_1d_text_stop_token", "static_prefill_then_decode_chunk")) {
            val scenario = fixtures["scenarios"].list().first { it["name"].string() == name }
            val spec = ComponentSpec("text_decoder", scenario["component"])
            val decoderSpec = DecoderSpec(scenario["decoder"])
            val calls = ArrayList<RecordedCall>()
            var broken = true
            val session = object : ComponentSession {
                override val backend = "fake"
                override fun run(feeds: Map<String, Tensor>): Map<String, Tensor> {
                    val out = FakeDecoderSession("model", 5, calls).run(feeds)
                    // the other present_* are copied (past `filled`) before the missing one fails the step
                    return if (broken) out - "present_value_1" else out
                }
            }
            val decoder = if (spec.static == null) DynamicKvDecoder(session, spec, decoderSpec)
            else StaticKvDecoder(spec.signatures.mapValues { session }, spec, decoderSpec)
            val ids = scenario["prompt"]["ids"].longs()
            val positions = GenerationFixtures.i64(scenario["prompt"]["positions"])
            decoder.reset(ids.size + 10)
            val error = assertFailsWith<InferenceError> { decoder.step(ids, positions, null) }
            assertTrue("returned no 'present_value_1'" in error.problem, error.problem)
            assertEquals(0, decoder.filled)
            broken = false
            decoder.reset(ids.size + 10)
            calls.clear()
            decoder.step(ids, positions, null)
            for ((feed, tensor) in calls.first().feeds) {
                if (feed.startsWith("past_")) assertTrue(tensor.second.all { it == 0.0 }, "$name: $feed after reset")
            }
        }
    }

    @Test
    fun badStepsAreInputErrors() {
        for (scenario in fixtures["scenarios"].list().filter { it["name"].string() == "dynamic_1d_text_stop_token" ||
            it["name"].string() == "static_exact_prefill_length" }) {
            val decoder = decoderFor(scenario, ArrayList())
            val oneD = Tensor.I64(intArrayOf(1, 2), longArrayOf(0, 1))
            assertFailsWith<InputError> { decoder.step(longArrayOf(1, 2), oneD, null) }  // before reset
            decoder.reset(8)
            val mrope = Tensor.I64(intArrayOf(3, 1, 2), LongArray(6))
            val wrong = assertFailsWith<InputError> { decoder.step(longArrayOf(1, 2), mrope, null) }
            assertTrue("position ids of shape [3, 1, 2]" in wrong.problem, wrong.problem)
            assertFailsWith<InputError> { decoder.step(LongArray(0), Tensor.I64(intArrayOf(1, 0)), null) }
            val rows = mapOf("image_embeds" to Tensor.F32(intArrayOf(2, 7)))
            assertFailsWith<InputError> { decoder.step(longArrayOf(1, 2), oneD, rows) }
            assertFailsWith<InputError> { decoder.reset(0) }
        }
    }

    @Test
    fun bundlesTheDecodersCannotRunAreBundleErrors() {
        val static = fixtures["scenarios"].list().first { it["name"].string() == "static_exact_prefill_length" }
        val spec = ComponentSpec("text_decoder", static["component"])
        val decoder = DecoderSpec(static["decoder"])
        val decode = FakeDecoderSession("decode", 5, ArrayList())
        val noPrefill = assertFailsWith<BundleError> { StaticKvDecoder(mapOf("decode" to decode), spec, decoder) }
        assertTrue("no 'prefill_8' entry" in noPrefill.problem, noPrefill.problem)
        val widerJson = Json.write(static["decoder"].value).replace("\"kv_heads\":2", "\"kv_heads\":4")
        val wider = DecoderSpec(Json.read(widerJson, "manifest"))
        val entries = mapOf("decode" to decode, "prefill_8" to FakeDecoderSession("prefill_8", 5, ArrayList()))
        val heads = assertFailsWith<BundleError> { StaticKvDecoder(entries, spec, wider) }
        assertTrue("'past_key_0' [1, 2, 24, 3], expected [1, 4, 24, 3]" in heads.problem, heads.problem)
        val dynamic = fixtures["scenarios"].list().first { it["name"].string() == "dynamic_1d_text_stop_token" }
        val extra = Json.write(dynamic["component"].value)
            .replace("\"name\":\"attention_mask\"", "\"name\":\"cache_position\"")
        val dynamicDecoder = DecoderSpec(dynamic["decoder"])
        val unknown = assertFailsWith<BundleError> {
            DynamicKvDecoder(decode, ComponentSpec("text_decoder", Json.read(extra, "manifest")), dynamicDecoder)
        }
        assertTrue("input 'cache_position' is not one this app feeds" in unknown.problem, unknown.problem)
        val noStatic = assertFailsWith<BundleError> {
            StaticKvDecoder(entries, ComponentSpec("text_decoder", dynamic["component"]), dynamicDecoder)
        }
        assertTrue("no 'static' block" in noStatic.problem, noStatic.problem)
    }
}

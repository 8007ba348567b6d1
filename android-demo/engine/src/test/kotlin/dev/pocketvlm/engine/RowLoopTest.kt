package dev.pocketvlm.engine

import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue
import kotlin.test.fail

/**
 * The batch-1 session stand-in of `tests/jvm_fixtures/rowloop.py` (`fake_call`): records each call's feed shapes and
 * returns `embeds` float32 [n, 2], `count` int64 [n, 1] and `extra`, from every value fed, the call's index and the row.
 */
private class FakeRowSession : ComponentSession {
    val calls = ArrayList<Map<String, List<Int>>>()
    override val backend = "fake batch-1 encoder"

    override fun run(feeds: Map<String, Tensor>): Map<String, Tensor> {
        val index = calls.size
        calls += feeds.mapValues { it.value.shape.toList() }
        val rows = feeds.getValue(feeds.keys.sorted().first()).shape[0]
        val total = feeds.values.sumOf { t ->
            when (t) {
                is Tensor.F32 -> t.data.sumOf { it.toDouble() }
                is Tensor.I64 -> t.data.sumOf { it.toDouble() }
            }
        }
        val embeds = FloatArray(rows * 2) { k ->
            val r = k / 2
            (if (k % 2 == 0) total + r else total * 2 - r + index).toFloat()
        }
        val count = LongArray(rows) { r -> feeds.size * 100L + index * 10L + r }
        return mapOf("embeds" to Tensor.F32(intArrayOf(rows, 2), embeds), "count" to Tensor.I64(intArrayOf(rows, 1), count),
            "extra" to Tensor.F32(intArrayOf(1), floatArrayOf(index.toFloat())))
    }
}

class RowLoopTest {
    private val cases: List<JsonNode> by lazy {
        GenerationFixtures.load("rowloop.json")["cases"].list().also { cases ->
            assertTrue(cases.size >= 8, "rowloop.json has ${cases.size} cases")
        }
    }

    private fun tensor(node: JsonNode): Tensor = when (node["dtype"].string()) {
        "float32" -> GenerationFixtures.f32(node)
        else -> GenerationFixtures.i64(node)
    }

    private fun values(t: Tensor): List<Double> = when (t) {
        is Tensor.F32 -> t.data.map { it.toDouble() }
        is Tensor.I64 -> t.data.map { it.toDouble() }
    }

    @Test
    fun eachCaseGivesWhatPythonsRunRowsGives() {
        for (case in cases) {
            val name = case["name"].string()
            val session = FakeRowSession()
            val shapes = case["shapes"].obj().mapValues { it.value.ints() }
            val loop = RowLoop(session, case["loop"].strings(), shapes, case["outputs"].strings())
            val feeds = case["feeds"].obj().mapValues { tensor(it.value) }
            val error = case.opt("error")
            if (error != null) {
                val thrown = assertFailsWith<PocketVlmException>(name) { loop.run(feeds) }
                if (error["type"].string() == "InputError") {
                    assertTrue(thrown is InputError, "$name: ${thrown.line}")
                    // Python writes the names as ['a', 'b'], Kotlin as [a, b]: the rest is the same
                    val tail = error["problem"].string().substringAfter("] ")
                    assertTrue(thrown.problem.endsWith(tail), "$name: '${thrown.problem}' vs Python's '$tail'")
                }
            } else {
                val want = case["result"].obj()
                val got = loop.run(feeds)
                assertEquals(want.keys, got.keys, "$name: outputs")
                for ((output, node) in want) {
                    val expected = tensor(node)
                    val actual = got.getValue(output)
                    assertEquals(expected.dtype, actual.dtype, "$name $output dtype")
                    assertEquals(expected.shape.toList(), actual.shape.toList(), "$name $output shape")
                    assertEquals(values(expected), values(actual), "$name $output values")
                }
            }
            val calls = case["calls"].list().map { call -> call.obj().mapValues { it.value.ints().toList() } }
            assertEquals(calls, session.calls, "$name: the calls and their feed shapes")
        }
    }

    @Test
    fun theCasesCoverRowsStaticFeedsAndEveryRefusal() {
        val byName = cases.associateBy { it["name"].string() }
        val rows = byName["labels_batch"] ?: fail("no labels_batch case")
        assertEquals(3, rows["calls"].list().size, "one call per label")
        assertTrue(rows["calls"].list().all { it["input_ids"].ints()[0] == 1 }, "each call fed one row")
        assertEquals(1, byName.getValue("already_static")["calls"].list().size)
        val refused = cases.filter { it.opt("error") != null }.map { it["name"].string() }.toSet()
        assertEquals(setOf("rows_disagree", "no_rows", "loop_input_missing", "output_missing"), refused)
    }

    @Test
    fun loopedSessionsWrapOnlyComponentsWithLoopInputsAndOwnTheirBackend() {
        val manifest = Bundle.open(PipelineFixtures.staticTextEncoder()).manifest
        val inner = object : SessionFactory {
            var closed = 0
            override fun session(component: String): ComponentSession = FakeRowSession()
            override fun textDecoder(): TextDecoder = fail("not asked for")
            override fun close() { closed++ }
        }
        val looped = LoopedSessions(inner, manifest)
        assertTrue(looped.session("text_encoder") is RowLoop, "text_encoder lists loop inputs")
        assertTrue(looped.session("image_encoder") is FakeRowSession, "image_encoder does not")
        assertTrue(looped.session("text_encoder") === looped.session("text_encoder"), "wrapped once")
        looped.close()
        assertEquals(1, inner.closed, "closing the wrapper closes the backend it owns")
    }
}

package dev.pocketvlm.engine

import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

class ZeroShotTest {
    private val cases by lazy { GenerationFixtures.load("generation_zero_shot.json")["cases"].list() }

    private fun scorer(case: JsonNode) = ZeroShotScorer(case["activation"].string(), case["logit_scale"].double(),
        case["logit_bias"].double(), case["prompt_template"].string())

    private fun assertClose(want: JsonNode, got: Array<DoubleArray>, tolerance: Double, what: String) {
        val shape = want["shape"].ints()
        assertEquals(shape.toList(), listOf(got.size, got.firstOrNull()?.size ?: 0), what)
        val flat = got.flatMap { it.toList() }
        val expected = want["data"].doubles()
        for (i in expected.indices) assertEquals(expected[i], flat[i], tolerance, "$what [$i]")
    }

    @Test
    fun scoresMatchThePythonDualEncoder() {
        assertEquals(listOf("softmax", "sigmoid"), cases.map { it["activation"].string() })
        for (case in cases) {
            val what = case["activation"].string()
            val scorer = scorer(case)
            val images = GenerationFixtures.f32(case["image_features"])
            val texts = GenerationFixtures.f32(case["text_features"])
            assertClose(case["image_embeds"], ZeroShotScorer.normalize(images), 1e-12, "$what embeddings")
            val logits = scorer.logits(images, texts)
            assertClose(case["logits"], logits, 1e-9, "$what logits")
            val probabilities = scorer.probabilities(logits)
            assertClose(case["probabilities"], probabilities, 1e-12, "$what probabilities")
            // the Python runtime runs these in float32: the same scores to within its rounding
            assertClose(case["probabilities_float32"], probabilities, 1e-4, "$what vs the float32 runtime")
            val zero = probabilities.last()  // the zero image embedding scores only the bias
            if (what == "sigmoid") assertTrue(zero.all { Math.abs(it - 1 / (1 + Math.exp(12.93))) < 1e-15 })
            else assertTrue(zero.all { Math.abs(it - 0.2) < 1e-15 })
        }
    }

    @Test
    fun classifyRanksLabelsAsPythonDoes() {
        for (case in cases) {
            val scorer = scorer(case)
            val labels = case["labels"].strings()
            assertEquals(case["prompts"].strings(), scorer.prompts(labels))
            val ranked = scorer.classify(GenerationFixtures.f32(case["image_features"]),
                GenerationFixtures.f32(case["text_features"]), labels.map { " $it " })
            val want = case["ranked"].list()
            assertEquals(want.size, ranked.size)
            for ((row, expected) in want.withIndex()) {
                val wantRow = expected.list()
                val distinct = wantRow.map { it["score"].double() }.toSet().size == wantRow.size
                val order = wantRow.map { it["label"].string() }
                if (distinct) assertEquals(order, ranked[row].map { it.label }, "image $row")
                for ((i, score) in wantRow.withIndex()) {
                    val got = ranked[row].first { it.label == score["label"].string() }
                    assertEquals(score["score"].double(), got.score, 1e-12, "image $row ${got.label}")
                    if (!distinct) assertEquals(wantRow[0]["score"].double(), ranked[row][i].score, 1e-12)
                }
            }
        }
    }

    @Test
    fun badLabelsAndTemplatesAreInputErrorsAsInPython() {
        val case = cases.first()
        val scorer = scorer(case)
        val errors = case["errors"]
        val blank = assertFailsWith<InputError> { scorer.labels(listOf("cat", " ")) }
        assertEquals(errors["empty"].string(), blank.problem)
        assertEquals(errors["empty"].string(), assertFailsWith<InputError> { scorer.labels(emptyList()) }.problem)
        assertEquals(errors["duplicate"].string(),
            assertFailsWith<InputError> { scorer.labels(listOf("cat", "dog", " cat")) }.problem)
        assertEquals(errors["template"].string(),
            assertFailsWith<InputError> { scorer.prompts(listOf("cat"), "a photo") }.problem)
        val images = GenerationFixtures.f32(case["image_features"])
        val texts = GenerationFixtures.f32(case["text_features"])
        assertFailsWith<InputError> { scorer.classify(images, texts, listOf("cat", "dog")) }
        assertFailsWith<BundleError> { scorer.logits(images, Tensor.F32(intArrayOf(2, 3))) }
        val nan = Tensor.F32(intArrayOf(1, 2), floatArrayOf(1f, Float.NaN))
        assertFailsWith<InferenceError> { scorer.logits(nan, texts) }
        assertFailsWith<InferenceError> { scorer.logits(Tensor.F32(intArrayOf(16)), texts) }
        assertFailsWith<BundleError> { ZeroShotScorer("relu", 1.0) }
        val spec = ZeroShotSpec(Json.read("""{"activation": "sigmoid", "logit_scale": 10.0, "prompt_template": "{}",
            "embed_dim": 16}""", "manifest"))
        assertEquals(0.0, ZeroShotScorer(spec).logitBias)
    }
}

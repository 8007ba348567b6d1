package dev.pocketvlm.engine

import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

class PromptTest {
    private val cases by lazy { GenerationFixtures.load("generation_prompt.json")["cases"].list() }

    private fun builder(case: JsonNode, app: JsonNode = case["app"]): PromptBuilder {
        val texts = case["texts"].obj().mapValues { it.value.longs() }
        return PromptBuilder(AppSpec(app, case["kind"].string())) { text ->
            texts[text] ?: throw AssertionError("the test tokenizer has no ids for '$text'")
        }
    }

    @Test
    fun promptsHaveTheIdsAndPositionsThePythonRuntimeComputes() {
        assertEquals(listOf("mrope", "1d"), cases.map { it["kind"].string() })
        for (case in cases) {
            val builder = builder(case)
            val expected = case["expected"].list()
            assertEquals(4, expected.size)
            for (want in expected) {
                val what = "${case["kind"].string()} '${want["text"].string()}' image=${want["with_image"].bool()}"
                val prompt = builder.build(want["text"].string(), want["with_image"].bool())
                assertEquals(want["ids"].longs().toList(), prompt.ids.toList(), what)
                val positions = GenerationFixtures.i64(want["positions"])
                assertContentEquals(positions.shape, prompt.positions.shape, what)
                assertEquals(positions.data.toList(), prompt.positions.data.toList(), what)
                assertEquals(want["delta"].long(), prompt.delta, what)
            }
        }
        val mrope = cases.first()["app"]["positions"]["delta"].long()
        assertTrue(mrope < 0, "the M-RoPE case should exercise a negative delta, got $mrope")
    }

    @Test
    fun decodeStepsContinueThePromptsPositions() {
        for (case in cases) {
            val prompt = builder(case).build("x", withImage = true)
            val next = prompt.stepPosition(prompt.ids.size)
            val n = prompt.ids.size
            val last = prompt.positions.data[n - 1]
            assertEquals(List(prompt.axes) { last + 1 }, next.data.toList())
            assertContentEquals(if (prompt.axes == 3) intArrayOf(3, 1, 1) else intArrayOf(1, 1), next.shape)
        }
    }

    @Test
    fun emptyTextIsAnInputError() {
        val builder = builder(cases.first())
        for (text in listOf("", "   ", "\n\t")) {
            val error = assertFailsWith<InputError> { builder.build(text, withImage = true) }
            assertEquals("the prompt is empty", error.problem)
            assertEquals("pass a question or instruction", error.fix)
        }
    }

    @Test
    fun aPositionTableThatDoesNotCoverTheImagePromptIsABundleError() {
        val case = cases.first()
        val text = Json.write(case["app"].value).replace("\"before\":[1,2,4,", "\"before\":[1,2,4,4,")
        val error = assertFailsWith<BundleError> { builder(case, Json.read(text, "manifest")) }
        assertTrue("11 tokens of 'app.prompt.image.before'" in error.problem, error.problem)
    }
}

package dev.pocketvlm.engine

import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

class JsonTest {
    @Test
    fun readsWhatPythonWrites() {
        val doc = Json.read("""{"a": [1, -2.5e3, "x\u00e9\n", true, null], "b": {"c": 9007199254740993}}""", "manifest")
        assertEquals(listOf(1L, -2500.0, "x\u00e9\n", true, null), doc["a"].value)
        assertEquals(9007199254740993L, doc["b"]["c"].long())
        assertEquals(null, doc.opt("z"))
    }

    @Test
    fun wrongFieldsNameThePath() {
        val doc = Json.read("""{"decoder": {"num_layers": "30"}}""", "manifest")
        val error = assertFailsWith<BundleError> { doc["decoder"]["num_layers"].int() }
        assertTrue("manifest field 'decoder.num_layers' is a string" in error.problem, error.problem)
        val missing = assertFailsWith<BundleError> { doc["decoder"]["head_dim"] }
        assertTrue("'decoder.head_dim' is missing" in missing.problem, missing.problem)
    }

    @Test
    fun syntaxErrorsAreBundleErrors() {
        for (bad in listOf("", "{", "[1,]", "{\"a\" 1}", "\"\\q\"", "1 2", "[".repeat(1000))) {
            assertFailsWith<BundleError>(bad) { Json.parse(bad, "manifest") }
        }
    }

    @Test
    fun writesWhatItReads() {
        val value = mapOf("n" to 3, "x" to 0.25, "s" to "q\"\\\u0001", "l" to listOf(1L, null, false))
        assertEquals(value.mapValues { if (it.value == 3) 3L else it.value }, Json.parse(Json.write(value, 2)))
    }
}

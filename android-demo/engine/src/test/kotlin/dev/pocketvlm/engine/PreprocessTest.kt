package dev.pocketvlm.engine

import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths
import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue
import kotlin.test.fail

/** The fixtures `tests/jvm_fixtures/preprocess.py` writes (the Python runtime's outputs on the same pixels). */
internal object PreprocessFixtures {
    val root: Path by lazy {
        val dir = System.getProperty("pocketvlm.fixtures")
            ?: fail("system property pocketvlm.fixtures is not set: run through tests/jvm_harness.py, which writes " +
                "the fixtures with tests/jvm_fixtures/preprocess.py")
        val root = Paths.get(dir, "preprocess")
        if (!Files.isRegularFile(root.resolve("index.json"))) {
            fail("$root/index.json is missing: tests/jvm_fixtures/preprocess.write(fixtures) was not run")
        }
        root
    }
    val index: JsonNode by lazy { Json.read(String(Files.readAllBytes(root.resolve("index.json"))), "fixture index") }

    fun bytes(name: String): ByteArray = Files.readAllBytes(root.resolve(name))

    fun floats(name: String): FloatArray {
        val buffer = ByteBuffer.wrap(bytes(name)).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
        return FloatArray(buffer.remaining()).also { buffer.get(it) }
    }

    fun longs(name: String): LongArray {
        val buffer = ByteBuffer.wrap(bytes(name)).order(ByteOrder.LITTLE_ENDIAN).asLongBuffer()
        return LongArray(buffer.remaining()).also { buffer.get(it) }
    }
}

class PreprocessTest {
    private val fx = PreprocessFixtures

    private fun image(name: String): Rgba {
        val entry = fx.index["images"][name]
        return Rgba(entry["width"].int(), entry["height"].int(), fx.bytes(entry["file"].string()))
    }

    private fun config(json: String): JsonNode = Json.read(json, "manifest")

    @Test
    fun equalsThePythonRuntime() {
        val cases = fx.index["cases"].list()
        val configs = fx.index["configs"]
        val worst = LinkedHashMap<String, Float>()
        var refused = 0
        var values = 0L
        for (case in cases) {
            val name = case["config"].string()
            val what = "${case["image"].string()} / $name"
            val pre = Preprocessor.of(configs[name])
            val rgba = image(case["image"].string())
            if (case.has("error")) {
                val error = assertFailsWith<InputError>(what) { pre.pixelValues(rgba) }
                assertEquals(case["error"].string(), error.problem, what)
                refused++
                continue
            }
            val got = when (pre) {
                is Idefics3Preprocessor -> pre.tiles(rgba).also {
                    assertEquals(case["rows"].int() to case["cols"].int(), it.rows to it.cols, "$what rows, cols")
                    assertEquals(it.rows to it.cols, pre.tileGrid(rgba), "$what tileGrid")
                }.pixelValues
                is QwenPreprocessor -> pre.patches(rgba).also {
                    val grid = intArrayOf(it.grid.t, it.grid.h, it.grid.w)
                    assertContentEquals(case["grid"].ints(), grid, "$what grid")
                    val early = pre.qwenGrid(rgba)
                    assertContentEquals(grid, intArrayOf(early.t, early.h, early.w), "$what qwenGrid")
                    assertEquals(case["num_tokens"].int(), it.numTokens, "$what tokens")
                    assertContentEquals(fx.longs(case["position_ids"].string()), pre.visionPositionIds(it.grid).data,
                        "$what vision_position_ids")
                }.pixelValues
                else -> pre.pixelValues(rgba)
            }
            assertContentEquals(case["shape"].ints(), got.shape, "$what shape")
            val want = fx.floats(case["file"].string())
            assertEquals(want.size, got.data.size, "$what size")
            var here = 0f
            for (i in want.indices) here = maxOf(here, Math.abs(want[i] - got.data[i]))
            assertTrue(here <= 1e-6f, "$what: max abs $here over 1e-6")
            worst[name] = maxOf(worst[name] ?: 0f, here)
            values += want.size
        }
        assertTrue(cases.size - refused > 50 && refused >= 1, "fixtures hold ${cases.size} cases, $refused refusals")
        println("preprocess vs Python runtime: ${cases.size} cases ($refused refused as the runtime does), $values " +
            "values; max abs per config: " + worst.entries.joinToString(", ") { "${it.key} ${it.value}" })
    }

    /** The fixture config [name] with [changes] applied (a null value removes the key), as a manifest block. */
    private fun edited(name: String, vararg changes: Pair<String, Any?>): JsonNode {
        val map = LinkedHashMap<String, Any?>()
        (fx.index["configs"][name].value as Map<*, *>).forEach { (k, v) -> map[k.toString()] = v }
        for ((k, v) in changes) if (v == null) map.remove(k) else map[k] = v
        return config(Json.write(map))
    }

    @Test
    fun refusesUnknownKindsAndFilters() {
        val unknown = assertFailsWith<BundleError> { Preprocessor.of(config("""{"kind": "llava_next"}""")) }
        assertTrue("'llava_next' is not supported" in unknown.problem, unknown.problem)
        val filter = assertFailsWith<BundleError> { Preprocessor.of(edited("clip", "resample" to "antialias")) }
        assertTrue("'antialias'" in filter.problem, filter.problem)
        assertFailsWith<BundleError> { Preprocessor.of(edited("clip", "convert_rgb" to "drop_alpha")) }
        assertFailsWith<BundleError> { Preprocessor.of(edited("clip", "layout" to "NHWC")) }
        assertFailsWith<BundleError> { Preprocessor.of(edited("clip", "std" to listOf(0.5, 0.0, 0.5))) }
        assertFailsWith<BundleError> { Preprocessor.of(edited("siglip", "mean" to listOf(0.5, 0.5))) }
        val missing = assertFailsWith<BundleError> { Preprocessor.of(edited("clip", "resize" to null)) }
        assertTrue("'resize' is missing" in missing.problem, missing.problem)
        val notMultiple = assertFailsWith<BundleError> {
            Preprocessor.of(edited("qwen2_vl_fixed", "fixed_size" to listOf(28, 50)))
        }
        assertTrue("multiples of 28" in notMultiple.problem, notMultiple.problem)
        val zero = assertFailsWith<BundleError> { Preprocessor.of(edited("idefics3_split", "tile_size" to 0)) }
        assertTrue("'tile_size' is 0" in zero.problem, zero.problem)
        assertFailsWith<BundleError> { Preprocessor.of(edited("idefics3", "split" to "yes")) }
        // and the six filters the manifest schema names are all known
        for (name in listOf("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")) {
            assertEquals(name, ResampleFilter.of(name).manifestName)
        }
    }

    @Test
    fun refusesBadPixels() {
        assertFailsWith<InputError> { Rgba(0, 5, ByteArray(0)) }
        assertFailsWith<InputError> { Rgba(5, 0, ByteArray(0)) }
        assertFailsWith<InputError> { Rgba(-1, -1, ByteArray(4)) }
        val short = assertFailsWith<InputError> { Rgba(3, 2, ByteArray(23)) }
        assertTrue("23 bytes" in short.problem, short.problem)
        assertFailsWith<InputError> { Rgba(3, 2, ByteArray(18)) }  // RGB, not RGBA
        val huge = assertFailsWith<InputError> { Rgba(100_000, 100_000, ByteArray(0)) }
        assertTrue("over the limit" in huge.problem, huge.problem)
        assertFailsWith<InputError> { Rgba.fromArgb(2, 2, IntArray(3)) }
        // smart_resize's 200:1 limit on a shape the fixtures do not hold
        val qwen = Preprocessor.of(edited("qwen2_vl"))
        val thin = Rgba(201, 1, ByteArray(201 * 4))
        val ratio = assertFailsWith<InputError> { qwen.pixelValues(thin) }
        assertTrue("over 200:1" in ratio.problem, ratio.problem)
    }

    @Test
    fun argbIntsAreTheSamePixels() {
        val argb = intArrayOf(0x80FF0000.toInt(), 0xFF00FF00.toInt(), 0x000000FF, 0x12345678)
        val rgba = Rgba.fromArgb(2, 2, argb)
        val want = byteArrayOf(-1, 0, 0, -128, 0, -1, 0, -1, 0, 0, -1, 0, 0x34, 0x56, 0x78, 0x12)
        assertContentEquals(want, rgba.pixels)
        // half alpha over white is Pillow's integer composite (255, 127, 127); opaque passes, transparent is white
        val rgb = Rgba.fromArgb(3, 1, intArrayOf(0x80FF0000.toInt(), 0xFF00FF00.toInt(), 0x000000FF)).toRgb()
        assertContentEquals(byteArrayOf(-1, 127, 127, 0, -1, 0, -1, -1, -1), rgb.data)
    }
}

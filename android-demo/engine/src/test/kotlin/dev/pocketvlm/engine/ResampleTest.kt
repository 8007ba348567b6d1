package dev.pocketvlm.engine

import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

/** The resampler and the RGB conversion against PIL itself (`Image.resize`, `alpha_composite`): every byte equal. */
class ResampleTest {
    private val fx = PreprocessFixtures

    @Test
    fun resizeEqualsPilForEveryFilter() {
        val cases = fx.index["resample"].list()
        val worst = LinkedHashMap<String, Int>()
        var values = 0L
        for (case in cases) {
            val filter = ResampleFilter.of(case["filter"].string())
            val w = case["width"].int()
            val h = case["height"].int()
            val ow = case["out_width"].int()
            val oh = case["out_height"].int()
            val what = "${filter.manifestName} ${w}x$h -> ${ow}x$oh"
            val rgb = Rgba(w, h, fx.bytes(case["rgba"].string())).toRgb()
            assertContentEquals(fx.bytes(case["rgb"].string()), rgb.data, "$what: alpha composite onto white")
            val out = Resample.resize(rgb, ow, oh, filter)
            assertEquals(ow to oh, out.width to out.height, what)
            val want = fx.bytes(case["out"].string())
            assertEquals(want.size, out.data.size, what)
            var here = 0
            for (i in want.indices) {
                here = maxOf(here, Math.abs((want[i].toInt() and 0xFF) - (out.data[i].toInt() and 0xFF)))
            }
            worst[filter.manifestName] = maxOf(worst[filter.manifestName] ?: 0, here)
            values += want.size
        }
        println("resize vs PIL: ${cases.size} cases, $values values, max deviation per filter (levels): " +
            worst.entries.joinToString(", ") { "${it.key} ${it.value}" })
        assertEquals(ResampleFilter.entries.map { it.manifestName }.toSet(), worst.keys, "every filter tested")
        assertTrue(worst.values.all { it == 0 }, "resize differs from PIL: $worst")
    }

    @Test
    fun unchangedSizeIsACopyAndAConstantStaysConstant() {
        val rgb = Rgb(5, 4, ByteArray(60) { (it * 37).toByte() })
        for (filter in ResampleFilter.entries) {
            val same = Resample.resize(rgb, 5, 4, filter)
            assertContentEquals(rgb.data, same.data, filter.manifestName)
            assertTrue(same.data !== rgb.data, "a copy, not the caller's buffer")
        }
        // only the height changes: every column is resampled on its own, so a constant column stays constant
        val columns = Rgb(3, 4, ByteArray(36) { (it % 9 * 20).toByte() })
        val taller = Resample.resize(columns, 3, 9, ResampleFilter.LANCZOS)
        for (y in 0 until 9) for (x in 0 until 3) for (c in 0 until 3) assertEquals(columns[x, 0, c], taller[x, y, c])
    }

    @Test
    fun refusesEmptySizesAndUnknownFilters() {
        val rgb = Rgb(2, 2, ByteArray(12))
        assertFailsWith<InputError> { Resample.resize(rgb, 0, 2, ResampleFilter.BICUBIC) }
        assertFailsWith<InputError> { Resample.resize(rgb, 2, -1, ResampleFilter.NEAREST) }
        assertFailsWith<InputError> { Rgb(2, 2, ByteArray(11)) }
        assertFailsWith<InputError> { rgb.crop(1, 1, 2, 2) }
        val error = assertFailsWith<BundleError> { ResampleFilter.of("BICUBIC") }
        assertTrue("known: nearest, box, bilinear, hamming, bicubic, lanczos" in error.problem, error.problem)
    }
}

package dev.pocketvlm.engine

import java.io.File
import java.nio.file.Files
import java.time.Instant
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

class ResultTest {
    private val device = DeviceInfo("pocketvlm android-demo 0.1.0 (Android 14; Pixel 8)", "xnnpack", 4,
        model = "Pixel 8", os = "Android 14", app = "pocketvlm android-demo 0.1.0")
    private val machine = MachineInfo("Android 14 aarch64", "Google Tensor G3", 9, 8_000_000_000L)
    private val tools = mapOf("onnxruntime-android" to "1.29.0", "pocketvlm-android" to "0.1.0")
    private val load = LoadFigures(verifyMs = 812.5, sessionLoadMs = 340.0)
    private val now = Instant.parse("2026-12-01T12:34:56.789Z")

    /** Where the Python side finds the files (tests/jvm_fixtures/golden.py `result_files`). */
    private fun out(name: String): File = File(GoldenFixtures.root, "results").also { it.mkdirs() }.resolve("$name.result.json")

    @Test
    fun statisticsAreTheOnesThePythonBenchUses() {
        // statistics.median and np.percentile (linear) on the same values
        assertEquals(2.0, Stats.median(doubleArrayOf(3.0, 1.0, 2.0)))
        assertEquals(2.5, Stats.median(doubleArrayOf(4.0, 1.0, 3.0, 2.0)))
        assertEquals(3.7, Stats.p90(doubleArrayOf(1.0, 2.0, 3.0, 4.0)), 1e-12)
        assertEquals(9.1, Stats.p90(DoubleArray(10) { it + 1.0 }), 1e-12)
        assertEquals(1.9, Stats.p10(DoubleArray(10) { it + 1.0 }), 1e-12)
        assertEquals(7.0, Stats.p90(doubleArrayOf(7.0)))
        assertEquals(2.5, Stats.mean(doubleArrayOf(1.0, 2.0, 3.0, 4.0)))
        val s = Stats.summary(doubleArrayOf(5.0, 1.0, 3.0))
        assertEquals(listOf(3.0, 4.6, 1.0, 3.0), listOf(s.median, s.p90, s.min, s.mean).map { Math.round(it * 1e9) / 1e9 })
        assertEquals(3, s.runs)
        assertFailsWith<InputError> { Stats.median(DoubleArray(0)) }
        assertFailsWith<InputError> { Stats.mean(doubleArrayOf(1.0, Double.NaN)) }
        assertFailsWith<InputError> { Stats.percentile(doubleArrayOf(1.0), 101.0) }
    }

    @Test
    fun aVlmBenchmarkIsWrittenAsADeviceResultFile() {
        val bundle = GoldenFixtures.open(GoldenFixtures.vlm())
        val runs = listOf(
            VlmRun(preprocessMs = 4.0, imageEncodeMs = 30.0, prefillMs = 100.0, promptTokens = 32, decodeMs = 700.0,
                decodeTokens = 7, newTokens = 8),
            VlmRun(preprocessMs = 6.0, imageEncodeMs = 20.0, prefillMs = 80.0, promptTokens = 32, decodeMs = 350.0,
                decodeTokens = 7, newTokens = 8),
            VlmRun(preprocessMs = 5.0, imageEncodeMs = 40.0, prefillMs = 120.0, promptTokens = 32, decodeMs = 1400.0,
                decodeTokens = 7, newTokens = 8))
        val engines = bundle.manifest.components.keys.associateWith { "onnxruntime-android 1.29.0 XNNPACK" }
        val result = DeviceResult.vlm(bundle, runs, engines, device, machine, tools, load,
            MemoryProbe { MemoryReading(612_000_000L, "Debug.getPss") }, now)
        val file = out(GoldenFixtures.vlm())
        DeviceResult.write(result, file)

        val read = Json.read(file.readText(), "result file")
        assertEquals("device", read["measured_on"].string())
        assertEquals("bundle_bench", read["kind"].string())
        assertEquals("2026-12-01T12:34:56Z", read["created_utc"].string())
        val figures = read["figures"]
        assertEquals(30.0, figures["image_encode_ms"].double())
        assertEquals(130.0, figures["time_to_first_token_ms"].double())  // median of image encode + prefill
        assertEquals(320.0, figures["prefill_tokens_per_s"].double(), 1e-9)  // median of 32/0.1, 32/0.08, 32/0.12
        assertEquals(10.0, figures["decode_tokens_per_s"].double(), 1e-9)  // median of 10, 20, 5 tok/s
        assertEquals(3, figures["components"]["vision_encoder"]["runs"].int())
        assertEquals(38.0, figures["components"]["vision_encoder"]["p90_ms"].double(), 1e-9)
        assertEquals(bundle.kvCacheBytes, figures["kv_cache_bytes_at_max_context"].long())
        assertEquals(612_000_000L, read["peak_rss_bytes"].long())
        assertEquals("Debug.getPss", read["device"]["memory_source"].string())
        assertEquals("xnnpack", read["device"]["backend"].string())
        assertEquals(bundle.manifestSha256, read["bundle"]["manifest_sha256"].string())
        assertEquals(bundle.totalBytes, read["bundle"]["bytes"].long())
        assertEquals("onnxruntime-android 1.29.0 XNNPACK", read["engine"].string())
    }

    @Test
    fun aDualEncoderBenchmarkIsWrittenWithoutAMemoryFigureWhenThePlatformGivesNone() {
        val bundle = GoldenFixtures.open(GoldenFixtures.dual())
        val engines = mapOf("image_encoder" to "onnxruntime-android 1.29.0 NNAPI",
            "text_encoder" to "onnxruntime-android 1.29.0 CPU")
        val result = DeviceResult.dualEncoder(bundle, mapOf("image_encoder" to listOf(3.0, 2.0, 4.0),
            "text_encoder" to listOf(1.5, 0.0)), listOf(1.0, 2.0), engines, device, machine, tools, load,
            MemoryProbe.unavailable, now)
        val file = out(GoldenFixtures.dual())
        DeviceResult.write(result, file)
        val read = Json.read(file.readText(), "result file")
        assertTrue(read["peak_rss_bytes"].isNull)
        assertEquals("unavailable", read["device"]["memory_source"].string())
        assertEquals(3.0, read["figures"]["image_encode_ms"].double())
        assertEquals(0.75, read["figures"]["components"]["text_encoder"]["median_ms"].double())
        // a timer that read 0 is recorded at the schema's floor (> 0), not as 0
        assertEquals(1e-3, read["figures"]["components"]["text_encoder"]["min_ms"].double())
        assertEquals("onnxruntime-android 1.29.0 NNAPI; onnxruntime-android 1.29.0 CPU", read["engine"].string())
    }

    @Test
    fun peakMemoryComesFromTheProbe() {
        val status = Files.createTempFile("status", "").toFile()
        status.writeText("Name:\tjava\nVmPeak:\t 9999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n")
        val reading = MemoryProbe.procStatus(status).read()
        assertEquals(2048L * 1024, reading.peakBytes)
        assertEquals("VmHWM (/proc/self/status)", reading.source)
        assertEquals(null, MemoryProbe.procStatus(File(status.path + ".gone")).read().peakBytes)
        val self = MemoryProbe.procStatus().read()  // this JVM, on Linux: its own high-water mark
        assertTrue((self.peakBytes ?: 0) > 1_000_000, "VmHWM of this JVM: ${self.peakBytes}")
    }

    @Test
    fun aBenchmarkWithoutRunsOrWithImpossibleFiguresIsRefused() {
        val bundle = GoldenFixtures.open(GoldenFixtures.vlm())
        val engines = mapOf("text_decoder" to "x")
        assertFailsWith<InputError> {
            DeviceResult.vlm(bundle, emptyList(), engines, device, machine, tools, load, MemoryProbe.unavailable)
        }
        assertFailsWith<InputError> { VlmRun(-1.0, 1.0, 1.0, 4, 1.0, 1, 2) }
        assertFailsWith<InputError> { VlmRun(1.0, 1.0, 1.0, 0, 1.0, 1, 2) }
        val run = VlmRun(1.0, 1.0, 1.0, 4, 1.0, 1, 2)
        assertFailsWith<InputError> {
            DeviceResult.vlm(bundle, listOf(run), emptyMap(), device, machine, tools, load, MemoryProbe.unavailable)
        }
        assertFailsWith<InputError> {
            DeviceResult.vlm(bundle, listOf(run), engines, device, machine, tools, LoadFigures(-1.0, 0.0),
                MemoryProbe.unavailable)
        }
        val dual = GoldenFixtures.open(GoldenFixtures.dual())
        assertFailsWith<InputError> {
            DeviceResult.dualEncoder(dual, mapOf("vision_encoder" to listOf(1.0)), emptyList(), engines, device,
                machine, tools, load, MemoryProbe.unavailable)
        }
        assertFailsWith<InputError> {
            DeviceResult.vlm(dual, listOf(run), engines, device, machine, tools, load, MemoryProbe.unavailable)
        }
    }
}

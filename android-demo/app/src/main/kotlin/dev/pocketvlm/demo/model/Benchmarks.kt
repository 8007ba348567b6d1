package dev.pocketvlm.demo.model

import dev.pocketvlm.engine.Bundle
import dev.pocketvlm.engine.Cancelled
import dev.pocketvlm.engine.Captioner
import dev.pocketvlm.engine.DeviceInfo
import dev.pocketvlm.engine.DeviceResult
import dev.pocketvlm.engine.GenerationConfig
import dev.pocketvlm.engine.InputError
import dev.pocketvlm.engine.LoadFigures
import dev.pocketvlm.engine.MachineInfo
import dev.pocketvlm.engine.MemoryProbe
import dev.pocketvlm.engine.Rgba
import dev.pocketvlm.engine.VlmRun
import dev.pocketvlm.engine.ZeroShotClassifier

/** What the result file says about the device and the load, gathered by the app (Android's facts). */
class BenchSetup(
    val device: DeviceInfo,
    val machine: MachineInfo,
    val tools: Map<String, String>,
    val load: LoadFigures,
    val memory: MemoryProbe = MemoryProbe.procStatus(),
)

/**
 * The benchmark screen's runs, written as the device result file of `runtime/schema/bench.schema.json` by the
 * engine core's [DeviceResult] (the same file the web demo writes): one warm-up on the first image, then one timed
 * run per image. [image] decodes image i when its run starts (so N photos are never all in memory at once). Captioning runs generate exactly [newTokens] tokens (`ignore_eos`, as `pocketvlm bench` does), so
 * every run decodes the same number of tokens. Platform-free (no android.*).
 */
object Benchmarks {
    fun vlm(bundle: Bundle, captioner: Captioner, count: Int, image: (Int) -> Rgba, prompt: String, newTokens: Int,
            setup: BenchSetup, progress: (String) -> Unit, cancelled: () -> Boolean): Map<String, Any?> {
        if (count < 1) throw InputError("no images to benchmark", "pick one or more photos")
        val config = GenerationConfig(maxNewTokens = newTokens, ignoreEos = true)
        val runs = ArrayList<VlmRun>()
        for (i in -1 until count) {
            if (cancelled()) throw Cancelled()
            progress(if (i < 0) "warm-up on image 1" else "image ${i + 1} of $count")
            val vision = captioner.encodeImage(image(maxOf(i, 0)))
            val answer = captioner.generate(vision, prompt, config, cancelled = cancelled)
            if (i < 0) continue
            val t = answer.result.timings
            runs += VlmRun(
                preprocessMs = vision.preprocessMs, imageEncodeMs = vision.encodeMs,
                prefillMs = (t["prefill_s"] ?: 0.0) * 1e3, promptTokens = answer.result.promptTokens,
                decodeMs = (t["decode_s"] ?: 0.0) * 1e3, decodeTokens = (t["decode_tokens"] ?: 0.0).toInt(),
                newTokens = answer.result.tokenIds.size)
        }
        return DeviceResult.vlm(bundle, runs, captioner.engines(), setup.device, setup.machine, setup.tools,
            setup.load, setup.memory)
    }

    fun dualEncoder(bundle: Bundle, classifier: ZeroShotClassifier, count: Int, image: (Int) -> Rgba,
                    labels: List<String>, setup: BenchSetup, progress: (String) -> Unit,
                    cancelled: () -> Boolean): Map<String, Any?> {
        if (count < 1) throw InputError("no images to benchmark", "pick one or more photos")
        val imageMs = ArrayList<Double>()
        val textMs = ArrayList<Double>()
        val preprocessMs = ArrayList<Double>()
        for (i in -1 until count) {
            if (cancelled()) throw Cancelled()
            progress(if (i < 0) "warm-up on image 1" else "image ${i + 1} of $count")
            val picture = classifier.encodeImage(image(maxOf(i, 0)))
            val started = System.nanoTime()
            classifier.encodeLabels(labels)
            val text = (System.nanoTime() - started) / 1e6
            if (i < 0) continue
            preprocessMs += picture.preprocessMs
            imageMs += picture.encodeMs
            textMs += text
        }
        return DeviceResult.dualEncoder(bundle, mapOf("image_encoder" to imageMs, "text_encoder" to textMs),
            preprocessMs, classifier.engines(), setup.device, setup.machine, setup.tools, setup.load, setup.memory)
    }

    /** One line per headline figure, for the screen. */
    fun summary(result: Map<String, Any?>): List<String> {
        val figures = result["figures"] as? Map<*, *> ?: return emptyList()
        val keys = listOf("image_encode_ms", "time_to_first_token_ms", "prefill_tokens_per_s", "decode_tokens_per_s",
            "decode_tokens_per_s_p10", "preprocess_ms", "session_load_ms", "bundle_verify_ms")
        val lines = keys.mapNotNull { key ->
            (figures[key] as? Number)?.let { "$key: ${"%.2f".format(java.util.Locale.ROOT, it.toDouble())}" }
        }.toMutableList()
        (figures["components"] as? Map<*, *>)?.forEach { (name, entry) ->
            val median = (entry as? Map<*, *>)?.get("median_ms") as? Number
            if (median != null) lines += "$name median: ${"%.2f".format(java.util.Locale.ROOT, median.toDouble())} ms"
        }
        (result["peak_rss_bytes"] as? Number)?.let { lines += "peak memory: ${it.toLong() / 1_000_000} MB" }
        return lines
    }
}

package dev.pocketvlm.engine

import java.io.File
import java.io.IOException
import java.time.Instant
import java.time.temporal.ChronoUnit

/** What the platform says about the process's memory: a peak in bytes (null when it gives none) and what it is. */
class MemoryReading(val peakBytes: Long?, val source: String) {
    init {
        if (source.isBlank()) throw InputError("a memory reading without a source", "name what the figure measures")
    }
}

/**
 * Reads the process's peak memory at the end of a benchmark. The app supplies Android's figure (e.g.
 * `Debug.getPss()` or `ActivityManager.getProcessMemoryInfo`); [procStatus] reads the kernel's high-water mark of
 * the resident set (`VmHWM` in `/proc/self/status`), which Linux and Android give every process about itself.
 */
fun interface MemoryProbe {
    fun read(): MemoryReading

    companion object {
        val unavailable = MemoryProbe { MemoryReading(null, "unavailable") }

        fun procStatus(status: File = File("/proc/self/status")): MemoryProbe = MemoryProbe {
            val line = try { status.readLines().firstOrNull { it.startsWith("VmHWM:") } } catch (e: IOException) { null }
            val kb = line?.removePrefix("VmHWM:")?.trim()?.removeSuffix("kB")?.trim()?.toLongOrNull()
            if (kb == null || kb <= 0) MemoryReading(null, "unavailable") else MemoryReading(kb * 1024, "VmHWM (/proc/self/status)")
        }
    }
}

/**
 * One timed run of a VLM on the device, in milliseconds: preprocessing, the vision encoder, the prompt's prefill
 * ([promptTokens] tokens) and the decode steps after the first token ([decodeTokens] tokens in [decodeMs]).
 * [timeToFirstTokenMs] defaults to image encode + prefill, as `pocketvlm bench` computes it.
 */
class VlmRun(
    val preprocessMs: Double, val imageEncodeMs: Double, val prefillMs: Double, val promptTokens: Int,
    val decodeMs: Double, val decodeTokens: Int, val newTokens: Int,
    val timeToFirstTokenMs: Double = imageEncodeMs + prefillMs,
) {
    init {
        val times = listOf(preprocessMs, imageEncodeMs, prefillMs, decodeMs, timeToFirstTokenMs)
        if (times.any { it.isNaN() || it < 0.0 } || promptTokens < 1 || decodeTokens < 0 || newTokens < 0) {
            throw InputError("a benchmark run has a negative or missing figure (times $times, prompt $promptTokens, " +
                "decode $decodeTokens, new $newTokens tokens)", "time each stage with System.nanoTime around it")
        }
    }
}

/** The device and how the engine was set up on it: the result file's `device` block. */
class DeviceInfo(
    /** The app's equivalent of a browser's user agent: "pocketvlm android-demo 0.1.0 (Android 14; Pixel 8)". */
    val userAgent: String,
    /** The execution backend that ran the bundle: "xnnpack", "nnapi", "cpu", "gpu", "qnn-htp". */
    val backend: String,
    val threads: Int?,
    val model: String? = null,
    val os: String? = null,
    val app: String? = null,
)

/** The machine block: platform, CPU, logical CPUs and memory when the platform reports them. */
class MachineInfo(val platform: String, val cpu: String, val logicalCpus: Int?, val memoryBytes: Long?) {
    companion object {
        /** What the JVM itself can tell (on Android too: os.name is "Linux", os.arch the ABI). */
        fun ofRuntime(): MachineInfo = MachineInfo(
            "${System.getProperty("os.name")} ${System.getProperty("os.version")} ${System.getProperty("os.arch")}",
            System.getProperty("os.arch") ?: "unknown", Runtime.getRuntime().availableProcessors(), null)
    }
}

/** Times of one load on the device, in milliseconds: the `device.figures` block and the shared top-level ones. */
class LoadFigures(val verifyMs: Double, val sessionLoadMs: Double, val downloadMs: Double = 0.0)

/**
 * The device result file: `runtime/schema/bench.schema.json` with `measured_on: "device"` and a `device` block, the
 * same file the web demo writes (`web-demo/src/engine/result.ts`), so `benchmarks/report.py` lists it among the
 * "Measured on devices" rows. Figures are medians over the runs (p90 per component), computed by [Stats].
 */
object DeviceResult {
    const val SCHEMA_VERSION = 1
    private const val FLOOR_MS = 1e-3  // the schema's timings are > 0; a timer that read 0 is below its resolution

    /** A VLM benchmark: [runs] after warm-up; [engines] is what ran each component (its session's `backend`). */
    fun vlm(bundle: Bundle, runs: List<VlmRun>, engines: Map<String, String>, device: DeviceInfo,
            machine: MachineInfo, tools: Map<String, String>, load: LoadFigures, memory: MemoryProbe,
            now: Instant = Instant.now()): Map<String, Any?> {
        if (runs.isEmpty()) throw InputError("no benchmark runs to write", "run the benchmark at least once")
        if (bundle.manifest.task != Manifest.VLM_TASK) {
            throw InputError("a captioning result for a ${bundle.manifest.task} bundle", "use DeviceResult.dualEncoder")
        }
        val ms = { pick: (VlmRun) -> Double -> runs.map { pick(it) }.toDoubleArray() }
        val figures = linkedMapOf<String, Any?>(
            "components" to linkedMapOf(
                "vision_encoder" to component(ms { it.imageEncodeMs }),
                "text_decoder_prefill" to component(ms { it.prefillMs })),
            "prompt_tokens" to runs.last().promptTokens,
            "new_tokens" to maxOf(runs.last().newTokens, 1),
            "preprocess_ms" to Stats.median(ms { it.preprocessMs }),
            "image_encode_ms" to floor(Stats.median(ms { it.imageEncodeMs })),
            "time_to_first_token_ms" to floor(Stats.median(ms { it.timeToFirstTokenMs })),
            "prefill_tokens_per_s" to Stats.median(runs.map { it.promptTokens / (floor(it.prefillMs) / 1e3) }.toDoubleArray()),
        )
        val decoded = runs.filter { it.decodeTokens > 0 && it.decodeMs > 0 }
        if (decoded.isNotEmpty()) {
            val rates = decoded.map { it.decodeTokens / (it.decodeMs / 1e3) }.toDoubleArray()
            figures["decode_tokens_per_s"] = Stats.median(rates)
            figures["decode_tokens_per_s_p10"] = Stats.p10(rates)
        }
        val d = bundle.manifest.decoder!!
        val meanContext = runs.last().promptTokens + runs.last().newTokens / 2.0
        figures["bytes_per_decode_token"] = linkedMapOf(
            "weights" to bundle.componentBytes("text_decoder"),
            "kv_cache_at_mean_context" to (2.0 * d.numLayers * d.kvHeads * d.headDim * 4 * meanContext).toLong())
        figures["kv_cache_bytes_at_max_context"] = bundle.kvCacheBytes
        val deviceFigures = mapOf("preprocess_ms" to Stats.median(ms { it.preprocessMs }))
        return file(bundle, figures, engines, device, machine, tools, load, memory, now, deviceFigures)
    }

    /** A dual-encoder benchmark: each component's run times in milliseconds (`image_encoder`, `text_encoder`). */
    fun dualEncoder(bundle: Bundle, componentMs: Map<String, List<Double>>, preprocessMs: List<Double>,
                    engines: Map<String, String>, device: DeviceInfo, machine: MachineInfo,
                    tools: Map<String, String>, load: LoadFigures, memory: MemoryProbe,
                    now: Instant = Instant.now()): Map<String, Any?> {
        if (componentMs.isEmpty() || componentMs.values.any { it.isEmpty() }) {
            throw InputError("no benchmark runs to write", "run each encoder at least once")
        }
        val unknown = componentMs.keys - bundle.manifest.components.keys
        if (unknown.isNotEmpty()) throw InputError("timings for components the bundle lacks: $unknown", "name its components")
        val figures = linkedMapOf<String, Any?>(
            "components" to componentMs.mapValues { component(it.value.toDoubleArray()) })
        componentMs["image_encoder"]?.let { figures["image_encode_ms"] = floor(Stats.median(it.toDoubleArray())) }
        val deviceFigures = LinkedHashMap<String, Any?>()
        if (preprocessMs.isNotEmpty()) {
            figures["preprocess_ms"] = Stats.median(preprocessMs.toDoubleArray())
            deviceFigures["preprocess_ms"] = figures["preprocess_ms"]
        }
        return file(bundle, figures, engines, device, machine, tools, load, memory, now, deviceFigures)
    }

    /** Writes [result] as JSON (2-space indent) to [out], through a temporary file renamed into place. */
    fun write(result: Map<String, Any?>, out: File) {
        val tmp = File(out.absoluteFile.parentFile, ".${out.name}.partial")
        try {
            tmp.writeText(Json.write(result, 2) + "\n")
            if (!tmp.renameTo(out)) {
                out.delete()
                if (!tmp.renameTo(out)) throw IOException("cannot rename ${tmp.path} to ${out.path}")
            }
        } catch (e: IOException) {
            tmp.delete()
            throw InputError("cannot write the result file ${out.path} (${e.message})", "choose a writable folder", e)
        }
    }

    private fun file(bundle: Bundle, figures: MutableMap<String, Any?>, engines: Map<String, String>,
                     device: DeviceInfo, machine: MachineInfo, tools: Map<String, String>, load: LoadFigures,
                     memory: MemoryProbe, now: Instant, deviceFigures: Map<String, Any?>): Map<String, Any?> {
        if (engines.isEmpty() || engines.values.any { it.isBlank() }) {
            throw InputError("the result file needs what ran each component", "pass each session's backend")
        }
        if (device.userAgent.isBlank() || device.backend.isBlank()) {
            throw InputError("the device block needs a user agent and a backend", "describe the app and its backend")
        }
        figures["bundle_download_ms"] = nonNegative(load.downloadMs)
        figures["session_load_ms"] = nonNegative(load.sessionLoadMs)
        figures["bundle_verify_ms"] = nonNegative(load.verifyMs)
        val reading = memory.read()
        val peak = reading.peakBytes?.takeIf { it > 0 }
        val threads = device.threads?.takeIf { it >= 1 }
        val m = bundle.manifest
        val deviceBlock = linkedMapOf<String, Any?>(
            "user_agent" to device.userAgent, "backend" to device.backend, "threads" to threads,
            "cross_origin_isolated" to null, "memory_source" to if (peak == null) "unavailable" else reading.source)
        device.model?.let { deviceBlock["model"] = it }
        device.os?.let { deviceBlock["os"] = it }
        device.app?.let { deviceBlock["app"] = it }
        deviceBlock["figures"] = linkedMapOf<String, Any?>().apply {
            putAll(deviceFigures)
            put("download_ms", nonNegative(load.downloadMs))
            put("load_ms", nonNegative(load.sessionLoadMs))
        }
        deviceBlock["peak_memory_bytes"] = peak
        return linkedMapOf(
            "schema_version" to SCHEMA_VERSION, "kind" to "bundle_bench", "measured_on" to "device",
            "created_utc" to now.truncatedTo(ChronoUnit.SECONDS).toString(),
            "machine" to linkedMapOf("platform" to machine.platform, "cpu" to machine.cpu,
                "logical_cpus" to machine.logicalCpus, "memory_bytes" to machine.memoryBytes),
            "tools" to LinkedHashMap(tools),
            "threads" to threads,
            "engine" to engines.values.distinct().joinToString("; "),
            "engines" to LinkedHashMap(engines),
            "bundle" to linkedMapOf(
                "path" to bundle.source.label, "family" to m.family, "target" to m.target, "task" to m.task,
                "manifest_sha256" to bundle.manifestSha256,
                "quantization" to m.components.keys.associateWith { quantization(m, it) },
                "bytes" to bundle.totalBytes,
                "component_bytes" to m.components.keys.associateWith { bundle.componentBytes(it) }),
            "figures" to figures,
            "peak_rss_bytes" to peak,
            "device" to deviceBlock,
        )
    }

    private fun quantization(m: Manifest, component: String): String =
        m.root["components"][component].opt("quantization")?.opt("method")?.string() ?: m.quantization

    private fun component(values: DoubleArray): Map<String, Any> {
        val s = Stats.summary(values)
        return Summary(floor(s.median), floor(s.p90), floor(s.min), s.mean, s.runs).componentEntry()
    }

    private fun floor(ms: Double): Double = maxOf(ms, FLOOR_MS)

    private fun nonNegative(ms: Double): Double {
        if (ms.isNaN() || ms < 0) throw InputError("a load time of $ms ms", "time the load with System.nanoTime")
        return ms
    }
}

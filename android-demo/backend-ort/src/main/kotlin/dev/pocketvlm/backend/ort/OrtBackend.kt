package dev.pocketvlm.backend.ort

import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtException
import ai.onnxruntime.OrtLoggingLevel
import ai.onnxruntime.OrtSession
import dev.pocketvlm.engine.Bundle
import dev.pocketvlm.engine.BundleError
import dev.pocketvlm.engine.ComponentSession
import dev.pocketvlm.engine.DirectorySource
import dev.pocketvlm.engine.DynamicKvDecoder
import dev.pocketvlm.engine.JsonNode
import dev.pocketvlm.engine.SessionFactory
import dev.pocketvlm.engine.StaticKvDecoder
import dev.pocketvlm.engine.TextDecoder
import dev.pocketvlm.engine.loadingModel
import java.io.File

/**
 * Every component a bundle's manifest lists, opened on ONNX Runtime Android when the backend is made, so a load
 * failure surfaces at load (one [BundleError] naming the file), never in the middle of a caption:
 *
 * - `format: "onnx"` (`--target onnx`): one session per component on the [OrtSettings.accelerator] (CPU,
 *   XNNPACK or NNAPI); the decoder graph takes the engine's `past_*` buffers ([DynamicKvDecoder]).
 * - `format: "qnn_context"` (`--target qnn`): one session per entry of the chosen SoC's contexts on the QNN EP's HTP
 *   backend (an encoder's one entry; a decoder's `prefill_N` and `decode`, which [StaticKvDecoder] drives over its
 *   fixed-capacity cache).
 *
 * The bundle must be a directory ([DirectorySource]): ONNX Runtime loads models by path, which also lets an
 * EPContext model find its context binary and an ONNX model its external data beside it.
 *
 * The backend owns every session it opened: [session] and [textDecoder] lend them (the decoder holds only JVM
 * buffers), and [close] closes each session once; nothing it lent may be used afterwards.
 */
class OrtBackend private constructor(
    private val bundle: Bundle,
    /** component -> entry name -> session (an entry is named after its component unless it is a decoder entry). */
    private val opened: Map<String, Map<String, OrtComponentSession>>,
    /** What runs the bundle, for the result file's `device.backend`: "xnnpack", "nnapi", "cpu", "qnn-htp". */
    val accelerator: String,
    /** Which SoC's contexts a QNN bundle runs (null for ONNX bundles). */
    val soc: String?,
    /** Why that SoC, in words ("this phone is an SM8650", "the phone does not say which SoC it is: ..."). */
    val socReason: String?,
) : SessionFactory {
    private val decoder: TextDecoder? by lazy { buildDecoder() }
    private var closed = false

    /** What ran each component (its session's `backend`), for the result file's `engines`. */
    val engines: Map<String, String> get() = opened.mapValues { (_, entries) -> entries.values.first().backend }

    override fun session(component: String): ComponentSession {
        val entries = opened[component] ?: throw BundleError("the bundle has no '$component' component (it has " +
            "${opened.keys.joinToString(", ")})", "re-export the bundle")
        return entries[component] ?: throw BundleError("component '$component' is a static decoder (entries " +
            "${entries.keys}), not one session", "run it through textDecoder()")
    }

    override fun textDecoder(): TextDecoder = decoder
        ?: throw BundleError("the bundle has no text_decoder (it is a ${bundle.manifest.task} bundle)",
            "use a captioning bundle")

    private fun buildDecoder(): TextDecoder? {
        val entries = opened[TEXT_DECODER] ?: return null
        val m = bundle.manifest
        val spec = m.component(TEXT_DECODER)
        val decoderSpec = m.decoder ?: return null
        return if (DECODE in entries) StaticKvDecoder(entries, spec, decoderSpec)
        else DynamicKvDecoder(entries.getValue(TEXT_DECODER), spec, decoderSpec)
    }

    @Synchronized
    override fun close() {
        if (closed) return
        closed = true
        for (entries in opened.values) for (session in entries.values) session.close()
    }

    companion object {
        private const val TEXT_DECODER = "text_decoder"
        private const val DECODE = "decode"

        /**
         * Opens every component of [bundle] (its files already checked with `bundle.verify`). Anything that fails
         * closes what was opened before and is one [BundleError].
         */
        fun open(bundle: Bundle, settings: OrtSettings = OrtSettings()): OrtBackend {
            val source = bundle.source as? DirectorySource ?: throw BundleError(
                "ONNX Runtime loads models from files, and ${bundle.source.label} is not a directory",
                "copy the bundle into the app's bundles folder (the app does this for a bundle picked from storage)")
            val env = OrtEnvironment.getEnvironment(OrtLoggingLevel.ORT_LOGGING_LEVEL_WARNING, "pocketvlm")
            val version = env.version
            val opened = LinkedHashMap<String, Map<String, OrtComponentSession>>()
            val formats = bundle.manifest.components.values.map { it.format }.toSet()
            var soc: String? = null
            var socReason: String? = null
            try {
                for ((name, spec) in bundle.manifest.components) {
                    opened[name] = when (spec.format) {
                        "onnx" -> {
                            val label = "onnxruntime-android $version ${settings.accelerator.name}"
                            mapOf(name to load(env, source.file(spec.file), OrtOptions.forOnnx(settings), label))
                        }
                        "qnn_context" -> {
                            val record = bundle.manifest.root["components"][name]["qnn"]
                            val (chosen, reason) = chooseSoc(record, settings.qnn.soc)
                            soc = chosen
                            socReason = reason
                            qnnEntries(env, source, record["contexts"][chosen], chosen, settings, version)
                        }
                        else -> throw BundleError("component '$name' has format '${spec.format}', which the ONNX " +
                            "Runtime backend does not run", "use a --target onnx or --target qnn bundle")
                    }
                }
            } catch (e: Throwable) {
                for (entries in opened.values) for (session in entries.values) session.close()
                throw e
            }
            val accelerator = if ("qnn_context" in formats) "qnn-htp" else settings.accelerator.label
            return OrtBackend(bundle, opened, accelerator, soc, socReason)
        }

        /**
         * Which SoC's contexts to run: the phone's when the bundle has it; a phone that is another SoC is refused
         * with the list (an HTP context runs only on the architecture it was compiled for); an unknown SoC (an
         * older Android that does not say) runs the first one compiled, as `runtime/qnn.py` does without a SoC.
         */
        internal fun chooseSoc(record: JsonNode, phone: String?): Pair<String, String> {
            val contexts = record["contexts"].obj().keys.toList()
            if (contexts.isEmpty()) throw BundleError("this QNN bundle lists no compiled contexts", "re-export the bundle")
            val wanted = phone?.trim()?.uppercase()?.takeIf { it.isNotEmpty() && it != "UNKNOWN" }
                ?: return contexts.first() to "the phone does not say which SoC it is: running the first compiled " +
                    "context (${contexts.first()})"
            if (wanted !in contexts) {
                throw BundleError("this QNN bundle was compiled for ${contexts.joinToString(", ")}, and this phone is " +
                    "a $wanted", "re-export with --target qnn --soc $wanted")
            }
            return wanted to "this phone is a $wanted"
        }

        private fun qnnEntries(env: OrtEnvironment, source: DirectorySource, context: JsonNode, soc: String,
                               settings: OrtSettings, version: String): Map<String, OrtComponentSession> {
            val socModel = context.opt("soc_model")?.int()
            val arch = context.opt("htp_arch")?.string()?.let { " $it" } ?: ""
            val label = "onnxruntime-android-qnn $version HTP $soc$arch"
            val entries = LinkedHashMap<String, OrtComponentSession>()
            try {
                for ((entry, files) in context["entries"].obj()) {
                    val model = source.file(files["model"].string())
                    entries[entry] = load(env, model, OrtOptions.forQnn(env, settings, socModel), label)
                }
            } catch (e: Throwable) {
                for (session in entries.values) session.close()
                throw e
            }
            if (entries.isEmpty()) throw BundleError("this QNN bundle's $soc context has no entries", "re-export the bundle")
            return entries
        }

        private fun load(env: OrtEnvironment, file: File, options: OrtSession.SessionOptions,
                         label: String): OrtComponentSession = options.use {
            if (!file.isFile) {
                throw BundleError("bundle file ${file.name} is missing", "copy the whole bundle directory again")
            }
            val session = loadingModel(file.name, { e: OrtException ->
                BundleError("ONNX Runtime cannot load ${file.name}: ${OrtComponentSession.firstLine(e)}",
                    "re-export the bundle with the onnxruntime version this app pins, or choose another accelerator", e)
            }) { env.createSession(file.path, options) }
            try {
                OrtComponentSession(env, session, file.name, label)
            } catch (e: Throwable) {
                session.close()
                throw e
            }
        }
    }
}

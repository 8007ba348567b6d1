package dev.pocketvlm.backend.litert

import android.content.Context
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.Environment
import com.google.ai.edge.litert.LiteRtException
import dev.pocketvlm.engine.Bundle
import dev.pocketvlm.engine.BundleError
import dev.pocketvlm.engine.ComponentSession
import dev.pocketvlm.engine.ComponentSpec
import dev.pocketvlm.engine.DirectorySource
import dev.pocketvlm.engine.SessionFactory
import dev.pocketvlm.engine.StaticKvDecoder
import dev.pocketvlm.engine.TextDecoder
import dev.pocketvlm.engine.loadingModel
import java.io.File

/** Where a `--target tflite` bundle runs: LiteRT's GPU accelerator (with a CPU fallback that is reported), or the CPU. */
enum class LiteRtAccelerator(val label: String) { GPU("gpu"), CPU("cpu") }

/** [threads] 0: LiteRT's default CPU thread count. */
class LiteRtSettings(val accelerator: LiteRtAccelerator = LiteRtAccelerator.GPU, val threads: Int = 0)

/**
 * Every component of a `--target tflite` bundle compiled with LiteRT's `CompiledModel` when the backend is made
 * (a failure is one [BundleError] at load, never mid-caption), and one [ComponentSession] per signature: an
 * encoder's single signature, the decoder's `prefill_N` and `decode`, which [textDecoder] hands to the engine core's
 * [StaticKvDecoder] over the manifest's `static` block (`runtime/litert.py` does the same in Python).
 *
 * With [LiteRtAccelerator.GPU], a component the GPU accelerator refuses (no GPU accelerator library, an op or type it
 * lacks) is compiled for the CPU instead, and [fallbacks] says which and why, so the app can show it and the result
 * file records what really ran.
 *
 * The backend owns every model, signature session and buffer it made: [session] and [textDecoder] lend them (the
 * decoder holds only JVM buffers), and [close] releases each once; nothing it lent may be used afterwards.
 *
 * NOT compiled where this project is checked (no LiteRT jar is reachable there); written against LiteRT 2.3.0's
 * `CompiledModel` / `Environment` / `TensorBuffer` Kotlin API.
 */
class LiteRtBackend private constructor(
    private val bundle: Bundle,
    private val env: Environment,
    private val models: List<CompiledModel>,
    /** component -> signature -> session */
    private val opened: Map<String, Map<String, LiteRtSignatureSession>>,
    /** component -> why it runs on the CPU although the GPU was asked for */
    val fallbacks: Map<String, String>,
) : SessionFactory {
    private val decoder: TextDecoder? by lazy {
        val entries = opened[TEXT_DECODER] ?: return@lazy null
        val decoderSpec = bundle.manifest.decoder ?: return@lazy null
        StaticKvDecoder(entries, bundle.manifest.component(TEXT_DECODER), decoderSpec)
    }
    private var closed = false

    /** What ran each component, for the result file's `engines`. */
    val engines: Map<String, String> get() = opened.mapValues { (_, entries) -> entries.values.first().backend }

    /** The result file's `device.backend`: "gpu" when every component runs on the GPU, else "cpu" or "gpu+cpu". */
    val accelerator: String
        get() = when {
            fallbacks.isEmpty() && engines.values.all { it.contains(" GPU") } -> "gpu"
            engines.values.none { it.contains(" GPU") } -> "cpu"
            else -> "gpu+cpu"
        }

    override fun session(component: String): ComponentSession {
        val entries = opened[component] ?: throw BundleError("the bundle has no '$component' component (it has " +
            "${opened.keys.joinToString(", ")})", "re-export the bundle")
        return entries.values.singleOrNull() ?: throw BundleError("component '$component' has signatures " +
            "${entries.keys}, not one", "run the decoder through textDecoder()")
    }

    override fun textDecoder(): TextDecoder = decoder
        ?: throw BundleError("the bundle has no text_decoder (it is a ${bundle.manifest.task} bundle)",
            "use a captioning bundle")

    @Synchronized
    override fun close() {
        if (closed) return
        closed = true
        for (entries in opened.values) for (session in entries.values) session.close()
        for (model in models) model.close()
        env.close()
    }

    companion object {
        private const val TEXT_DECODER = "text_decoder"
        private val VERSION = BuildConfig.LITERT_VERSION

        /** Compiles every component of [bundle] (its files already checked with `bundle.verify`). */
        fun open(context: Context, bundle: Bundle, settings: LiteRtSettings = LiteRtSettings()): LiteRtBackend {
            val source = bundle.source as? DirectorySource ?: throw BundleError(
                "LiteRT loads models from files, and ${bundle.source.label} is not a directory",
                "copy the bundle into the app's bundles folder (the app does this for a bundle picked from storage)")
            val env = try {
                Environment.create(context)  // with the GPU program cache in the app's cache dir
            } catch (e: LiteRtException) {
                throw BundleError("LiteRT cannot start: ${LiteRtSignatureSession.firstLine(e)}",
                    "reinstall the app; if it persists, use a --target onnx bundle", e)
            }
            val models = ArrayList<CompiledModel>()
            val opened = LinkedHashMap<String, Map<String, LiteRtSignatureSession>>()
            val fallbacks = LinkedHashMap<String, String>()
            try {
                val gpuAvailable = try {
                    Accelerator.GPU in env.getAvailableAccelerators()
                } catch (e: LiteRtException) {
                    false
                }
                for ((name, spec) in bundle.manifest.components) {
                    if (spec.format != "tflite") {
                        throw BundleError("component '$name' has format '${spec.format}', which the LiteRT backend " +
                            "does not run", "use a --target tflite bundle")
                    }
                    val file = source.file(spec.file)
                    val (model, label) = compile(file, settings, gpuAvailable, env) { why -> fallbacks[name] = why }
                    models += model
                    opened[name] = signatures(model, spec, file.name, label)
                }
            } catch (e: Throwable) {
                for (entries in opened.values) for (session in entries.values) session.close()
                for (model in models) model.close()
                env.close()
                throw e
            }
            return LiteRtBackend(bundle, env, models, opened, fallbacks)
        }

        /** The GPU when asked for and it takes the model, else the CPU (the reason goes to [fellBack]). */
        private fun compile(file: File, settings: LiteRtSettings, gpuAvailable: Boolean, env: Environment,
                            fellBack: (String) -> Unit): Pair<CompiledModel, String> {
            if (!file.isFile) throw BundleError("bundle file ${file.name} is missing", "copy the whole bundle again")
            if (settings.accelerator == LiteRtAccelerator.GPU) {
                if (!gpuAvailable) {
                    fellBack("LiteRT reports no GPU accelerator on this phone")
                } else {
                    try {
                        return CompiledModel.create(file.path, CompiledModel.Options(Accelerator.GPU), env) to
                            "LiteRT $VERSION GPU"
                    } catch (e: LiteRtException) {
                        fellBack("the GPU accelerator refused ${file.name}: ${LiteRtSignatureSession.firstLine(e)}")
                    }
                }
            }
            val options = CompiledModel.Options(Accelerator.CPU).apply {
                if (settings.threads > 0) cpuOptions = CompiledModel.CpuOptions(numThreads = settings.threads)
            }
            return loadingModel(file.name, { e: LiteRtException ->
                BundleError("LiteRT cannot load ${file.name}: ${LiteRtSignatureSession.firstLine(e)}",
                    "re-export the bundle with --target tflite and the pocketvlm version this app was built with", e)
            }) { CompiledModel.create(file.path, options, env) to "LiteRT $VERSION CPU (XNNPACK)" }
        }

        /** One session per signature the manifest lists (`static.signatures`: name -> input -> shape). */
        private fun signatures(model: CompiledModel, spec: ComponentSpec, file: String,
                               label: String): Map<String, LiteRtSignatureSession> {
            val signatures = spec.signatures
            if (signatures.isEmpty()) {
                throw BundleError("component '${spec.name}' lists no static signatures", "re-export with --target tflite")
            }
            val outputs = spec.outputs.map { it.name }
            val sessions = LinkedHashMap<String, LiteRtSignatureSession>()
            try {
                for ((signature, shapes) in signatures) {
                    sessions[signature] = LiteRtSignatureSession(model, signature, shapes, outputs, file, label)
                }
            } catch (e: Throwable) {
                for (s in sessions.values) s.close()
                throw e
            }
            return sessions
        }
    }
}

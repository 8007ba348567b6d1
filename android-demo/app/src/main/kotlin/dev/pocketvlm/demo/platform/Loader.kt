package dev.pocketvlm.demo.platform

import ai.onnxruntime.OrtEnvironment
import android.content.Context
import android.system.ErrnoException
import android.system.Os
import dev.pocketvlm.backend.litert.LiteRtAccelerator
import dev.pocketvlm.backend.litert.LiteRtBackend
import dev.pocketvlm.backend.litert.LiteRtSettings
import dev.pocketvlm.backend.ort.OrtAccelerator
import dev.pocketvlm.backend.ort.OrtBackend
import dev.pocketvlm.backend.ort.OrtSettings
import dev.pocketvlm.backend.ort.QnnSettings
import dev.pocketvlm.demo.model.LoadedBundle
import dev.pocketvlm.engine.Bundle
import dev.pocketvlm.engine.BundleError
import dev.pocketvlm.engine.LoadFigures
import dev.pocketvlm.engine.LoopedSessions
import dev.pocketvlm.engine.SessionFactory
import dev.pocketvlm.engine.Tokenizer
import java.io.File
import java.util.Locale

/** The user's choices on the main screen. [threads] 0: the runtime's default. */
class LoadSettings(
    val onnx: OrtAccelerator = OrtAccelerator.XNNPACK,
    val tflite: LiteRtAccelerator = LiteRtAccelerator.GPU,
    val threads: Int = 0,
)

/**
 * Loading a bundle, in the order that keeps a failure cheap and readable: the manifest (one line naming a wrong
 * field), the memory check with the numbers (before any file is hashed or any session made), every file's sha256,
 * the tokenizer, then the sessions of the backend the manifest's target needs (ONNX Runtime for `onnx` and `qnn`,
 * LiteRT for `tflite`). Runs on the model thread.
 */
object Loader {
    fun open(context: Context, dir: File, settings: LoadSettings, progress: (String) -> Unit): LoadedBundle {
        progress("reading ${dir.name}/manifest.json")
        val bundle = Bundle.open(dir)
        val available = DeviceFacts.availableMemory(context)
        val needed = bundle.checkMemory(available)
        progress("needs about ${mb(needed)} of ${mb(available)} MB available; checking ${bundle.manifest.files.size} " +
            "files (${mb(bundle.totalBytes)} MB)")
        var started = System.nanoTime()
        var lastPercent = -1L
        bundle.verify { file, done, total ->
            val percent = if (total > 0) done * 100 / total else 100
            if (percent != lastPercent) {
                lastPercent = percent
                progress("checking sha256: $percent% ($file)")
            }
        }
        val verifyMs = (System.nanoTime() - started) / 1e6
        val tokenizer = Tokenizer.fromJson(bundle.readText(bundle.manifest.tokenizer.file))
        progress("opening the models (${bundle.manifest.target})")
        started = System.nanoTime()
        val opened = openBackend(context, bundle, settings)
        val loadMs = (System.nanoTime() - started) / 1e6
        val sessions = LoopedSessions(opened.sessions, bundle.manifest)  // owns the backend from here on
        return try {
            LoadedBundle(dir.name, bundle, sessions, tokenizer, opened.accelerator, settings.threads.takeIf { it > 0 },
                opened.tools + ("pocketvlm-android-demo" to DeviceFacts.appVersion), LoadFigures(verifyMs, loadMs),
                opened.notes)
        } catch (e: Throwable) {
            sessions.close()
            throw e
        }
    }

    /** A backend just opened: [sessions] is the backend itself, the owner of every session it opened. */
    private class Opened(val sessions: SessionFactory, val accelerator: String, val tools: Map<String, String>,
                         val notes: List<String>)

    private fun openBackend(context: Context, bundle: Bundle, settings: LoadSettings): Opened =
        when (val target = bundle.manifest.target) {
            "onnx" -> {
                val backend = OrtBackend.open(bundle, OrtSettings(settings.onnx, settings.threads))
                Opened(backend, backend.accelerator, ortTools(), emptyList())
            }
            "qnn" -> {
                val libs = DeviceFacts.nativeLibraryDir(context)
                // the HTP loads its skel libraries through FastRPC from ADSP_LIBRARY_PATH: the app's own lib dir first
                try {
                    Os.setenv("ADSP_LIBRARY_PATH", "${libs.path};/system/lib/rfsa/adsp;/system/vendor/lib/rfsa/adsp;/dsp",
                        true)
                } catch (e: ErrnoException) {
                    throw BundleError("cannot set ADSP_LIBRARY_PATH for the HTP (${e.message})",
                        "use a --target onnx bundle on this phone", e)
                }
                val qnn = QnnSettings(soc = DeviceFacts.soc(), libraryDir = libs)
                val backend = OrtBackend.open(bundle, OrtSettings(threads = settings.threads, qnn = qnn))
                Opened(backend, backend.accelerator, ortTools(), listOfNotNull(backend.socReason))
            }
            "tflite" -> {
                val backend = LiteRtBackend.open(context, bundle, LiteRtSettings(settings.tflite, settings.threads))
                val notes = backend.fallbacks.map { (component, why) -> "$component runs on the CPU: $why" }
                Opened(backend, backend.accelerator,
                    mapOf("litert" to dev.pocketvlm.backend.litert.BuildConfig.LITERT_VERSION), notes)
            }
            else -> throw BundleError("this is a '$target' bundle; the Android app runs onnx, tflite and qnn bundles",
                "export with --target onnx, tflite or qnn")
        }

    private fun ortTools(): Map<String, String> =
        mapOf("onnxruntime-android" to OrtEnvironment.getEnvironment().version)

    private fun mb(bytes: Long): String = String.format(Locale.ROOT, "%.0f", bytes / 1e6)
}

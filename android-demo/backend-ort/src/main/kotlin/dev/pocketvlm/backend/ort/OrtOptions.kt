package dev.pocketvlm.backend.ort

import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtException
import ai.onnxruntime.OrtProvider
import ai.onnxruntime.OrtSession
import ai.onnxruntime.providers.NNAPIFlags
import dev.pocketvlm.engine.BundleError
import java.io.File
import java.util.EnumSet

/** Which ONNX Runtime execution provider runs an `--target onnx` bundle (a `--target qnn` bundle always runs on QNN). */
enum class OrtAccelerator(
    /** The result file's `device.backend`. */
    val label: String,
) {
    /** ORT's own CPU kernels. */
    CPU("cpu"),

    /** XNNPACK's ARM kernels for the ops it has, ORT's CPU kernels for the rest. */
    XNNPACK("xnnpack"),

    /** Android's NNAPI (GPU / DSP / NPU drivers, deprecated from Android 15), CPU for what it does not take. */
    NNAPI("nnapi"),
}

/**
 * How the components are run. [threads] 0 leaves ONNX Runtime's default (one per core); with XNNPACK it is the
 * XNNPACK pool's size and ORT's own pool is 1 thread, as ONNX Runtime's XNNPACK documentation advises.
 */
class OrtSettings(
    val accelerator: OrtAccelerator = OrtAccelerator.XNNPACK,
    val threads: Int = 0,
    /** NNAPI only: e.g. `USE_FP16` (faster, less exact), `CPU_DISABLED` (fail rather than use NNAPI's CPU path). */
    val nnapiFlags: Set<NNAPIFlags> = emptySet(),
    val qnn: QnnSettings = QnnSettings(),
) {
    init {
        if (threads < 0) throw BundleError("thread count $threads is negative", "pass 0 (the default) or more")
    }
}

/**
 * `--target qnn` bundles: EPContext models whose compiled HTP context binaries sit beside them in the bundle
 * (`<component>[.<entry>].<SOC>.onnx` + `..._qnn.bin`), one per SoC the bundle was compiled for, as
 * `runtime/qnn.py` runs them. [soc] is the phone's Qualcomm part number (Android's `Build.SOC_MODEL`, e.g.
 * "SM8650"); null runs the first compiled SoC's contexts and says so. [libraryDir] is where the QNN libraries are
 * (the app's `nativeLibraryDir`: `libQnnHtp.so`, the HTP skel libraries, or the QNN plugin EP library); null lets
 * the loader find `libQnnHtp.so` by name.
 */
class QnnSettings(
    val soc: String? = null,
    val libraryDir: File? = null,
    /** QNN EP `htp_performance_mode`: "burst", "sustained_high_performance", "balanced", "power_saver", ... */
    val performanceMode: String = "burst",
)

/** Session options per accelerator, and the refusal of one this ONNX Runtime build does not have. */
internal object OrtOptions {
    const val QNN_EP = "QNNExecutionProvider"
    private const val QNN_PLUGIN = "libonnxruntime_providers_qnn.so"
    private var pluginRegistered = false

    fun available(): Set<OrtProvider> = OrtEnvironment.getAvailableProviders()

    fun forOnnx(settings: OrtSettings): OrtSession.SessionOptions {
        val options = base()
        try {
            when (settings.accelerator) {
                OrtAccelerator.CPU -> if (settings.threads > 0) options.setIntraOpNumThreads(settings.threads)
                OrtAccelerator.XNNPACK -> {
                    need(OrtProvider.XNNPACK, "XNNPACK")
                    options.setIntraOpNumThreads(1)
                    options.addConfigEntry("session.intra_op.allow_spinning", "0")
                    val pool = if (settings.threads > 0) settings.threads else Runtime.getRuntime().availableProcessors()
                    options.addXnnpack(mapOf("intra_op_num_threads" to pool.toString()))
                }
                OrtAccelerator.NNAPI -> {
                    need(OrtProvider.NNAPI, "NNAPI")
                    if (settings.threads > 0) options.setIntraOpNumThreads(settings.threads)
                    val flags = EnumSet.noneOf(NNAPIFlags::class.java).apply { addAll(settings.nnapiFlags) }
                    options.addNnapi(flags)
                }
            }
        } catch (e: OrtException) {
            options.close()
            throw BundleError("ONNX Runtime cannot set up ${settings.accelerator.label}: " +
                OrtComponentSession.firstLine(e), "choose another accelerator in the app's settings", e)
        } catch (e: BundleError) {
            options.close()
            throw e
        }
        return options
    }

    /**
     * A session on the HTP for one EPContext model, never on the CPU: the QNN EP with `libQnnHtp.so`
     * (onnxruntime-android-qnn has it built in) or, when the app ships Qualcomm's plugin EP library, that plugin
     * registered once per process and added for its devices (as `runtime/qnn.py` does on a PC); with neither the
     * bundle is refused by name. `session.disable_cpu_ep_fallback` makes a graph the HTP cannot take fail to load
     * instead of running on the CPU unnoticed.
     */
    fun forQnn(env: OrtEnvironment, settings: OrtSettings, socModel: Int?): OrtSession.SessionOptions {
        val qnn = settings.qnn
        val backendPath = qnn.libraryDir?.let { File(it, "libQnnHtp.so") }?.takeIf { it.isFile }?.path ?: "libQnnHtp.so"
        val providerOptions = linkedMapOf("backend_path" to backendPath, "htp_performance_mode" to qnn.performanceMode)
        socModel?.let { providerOptions["soc_model"] = it.toString() }
        val options = base()
        try {
            if (settings.threads > 0) options.setIntraOpNumThreads(settings.threads)
            options.addConfigEntry("session.disable_cpu_ep_fallback", "1")
            val plugin = qnn.libraryDir?.let { File(it, QNN_PLUGIN) }?.takeIf { it.isFile }
            when {
                OrtProvider.QNN in available() -> options.addQnn(providerOptions)
                plugin != null -> {
                    synchronized(this) {
                        if (!pluginRegistered) {
                            env.registerExecutionProviderLibrary(QNN_EP, plugin.path)
                            pluginRegistered = true
                        }
                    }
                    val devices = env.epDevices.filter { it.epName == QNN_EP }
                    if (devices.isEmpty()) {
                        throw BundleError("the QNN plugin EP registered no device on this phone",
                            "run --target qnn bundles on a Snapdragon phone with an HTP, or use a --target onnx bundle")
                    }
                    options.addExecutionProvider(devices, providerOptions)
                }
                else -> throw BundleError("this is a --target qnn bundle and this build of the app has no QNN " +
                    "execution provider (ONNX Runtime has ${available().joinToString(", ") { it.getName() }})",
                    "build the app with -Ppocketvlm.qnn=true (onnxruntime-android-qnn), or use a --target onnx bundle")
            }
        } catch (e: OrtException) {
            options.close()
            throw BundleError("ONNX Runtime cannot set up the QNN HTP backend: ${OrtComponentSession.firstLine(e)}",
                "check that this is a Snapdragon phone with an HTP and that the app was built with -Ppocketvlm.qnn=true",
                e)
        } catch (e: BundleError) {
            options.close()
            throw e
        }
        return options
    }

    private fun base(): OrtSession.SessionOptions = OrtSession.SessionOptions().apply {
        setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
    }

    private fun need(provider: OrtProvider, what: String) {
        if (provider !in available()) {
            throw BundleError("this ONNX Runtime build has no $what provider (it has " +
                "${available().joinToString(", ") { it.getName() }})", "choose another accelerator in the app's settings")
        }
    }
}

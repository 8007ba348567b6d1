package dev.pocketvlm.demo.platform

import android.app.ActivityManager
import android.content.Context
import android.os.Build
import dev.pocketvlm.demo.BuildConfig
import dev.pocketvlm.demo.model.LoadedBundle
import dev.pocketvlm.engine.DeviceInfo
import dev.pocketvlm.engine.MachineInfo
import java.io.File

/** What Android says about the phone: free memory, the SoC, and the result file's device and machine blocks. */
object DeviceFacts {
    val appVersion: String get() = BuildConfig.VERSION_NAME

    private fun memoryInfo(context: Context): ActivityManager.MemoryInfo {
        val manager = context.getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager
        return ActivityManager.MemoryInfo().also { manager.getMemoryInfo(it) }
    }

    /** Memory the system says is available now (`MemoryInfo.availMem`): what a bundle is checked against. */
    fun availableMemory(context: Context): Long = memoryInfo(context).availMem

    fun totalMemory(context: Context): Long = memoryInfo(context).totalMem

    /** The Qualcomm part number ("SM8650") on Android 12+, null where the phone does not say. */
    fun soc(): String? = if (Build.VERSION.SDK_INT >= 31) Build.SOC_MODEL.takeIf { it.isNotBlank() } else null

    private val socName: String
        get() = if (Build.VERSION.SDK_INT >= 31) "${Build.SOC_MANUFACTURER} ${Build.SOC_MODEL}" else Build.HARDWARE

    private val os: String get() = "Android ${Build.VERSION.RELEASE} (API ${Build.VERSION.SDK_INT})"

    /** The app's own native library directory (QNN's libQnnHtp.so and HTP skel libraries are there). */
    fun nativeLibraryDir(context: Context): File = File(context.applicationInfo.nativeLibraryDir)

    fun device(loaded: LoadedBundle): DeviceInfo = DeviceInfo(
        userAgent = "pocketvlm android-demo $appVersion ($os; ${Build.MANUFACTURER} ${Build.MODEL})",
        backend = loaded.accelerator,
        threads = loaded.threads,
        model = "${Build.MANUFACTURER} ${Build.MODEL}",
        os = os,
        app = "dev.pocketvlm.demo $appVersion",
    )

    fun machine(context: Context): MachineInfo = MachineInfo(
        platform = "$os ${Build.SUPPORTED_ABIS.firstOrNull() ?: "unknown ABI"}",
        cpu = socName,
        logicalCpus = Runtime.getRuntime().availableProcessors(),
        memoryBytes = totalMemory(context),
    )
}

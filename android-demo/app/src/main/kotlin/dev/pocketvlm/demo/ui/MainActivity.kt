package dev.pocketvlm.demo.ui

import android.content.Context
import android.content.Intent
import android.net.Uri
import android.os.Bundle
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.Spinner
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.result.contract.ActivityResultContracts
import dev.pocketvlm.backend.litert.LiteRtAccelerator
import dev.pocketvlm.backend.ort.OrtAccelerator
import dev.pocketvlm.demo.PocketVlmApp
import dev.pocketvlm.demo.model.Outcome
import dev.pocketvlm.demo.platform.BundleEntry
import dev.pocketvlm.demo.platform.LoadSettings
import dev.pocketvlm.demo.platform.Loader

/**
 * The start screen: the bundles on the phone (pushed with `adb push`, or copied in from a folder picked in
 * storage), how to run them (ONNX Runtime provider, LiteRT accelerator, threads), loading one, and the way to the
 * caption / labels, self-test and benchmark screens. Loading runs on the model thread; every failure is a line on
 * this screen.
 */
class MainActivity : ComponentActivity() {
    private val app get() = PocketVlmApp.of(this)
    private lateinit var status: TextView
    private lateinit var list: LinearLayout
    private lateinit var onnx: Spinner
    private lateinit var tflite: Spinner
    private lateinit var threads: EditText
    private lateinit var actions: List<Button>
    private lateinit var pick: Button

    private val pickFolder = registerForActivityResult(ActivityResultContracts.OpenDocumentTree()) { uri: Uri? ->
        if (uri != null) importFolder(uri)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val prefs = getSharedPreferences("settings", Context.MODE_PRIVATE)
        screen {
            heading("pocketvlm")
            label("Bundles in ${app.store.root.path} (adb push DIR ${app.store.root.path}/NAME):")
            list = LinearLayout(context).apply { orientation = LinearLayout.VERTICAL }.also { addView(it) }
            pick = button("Copy a bundle folder from storage…") { pickFolder.launch(null) }
            label("ONNX Runtime provider (--target onnx bundles; qnn bundles always run on the HTP):")
            onnx = choice(OrtAccelerator.entries.map { it.name }, prefs.getInt("onnx", OrtAccelerator.XNNPACK.ordinal))
            label("LiteRT accelerator (--target tflite bundles):")
            tflite = choice(LiteRtAccelerator.entries.map { it.name }, prefs.getInt("tflite", 0))
            threads = field("threads (0: the runtime's default)", prefs.getInt("threads", 0).toString(), number = true)
            status = output()
            actions = buttons(
                "Caption / labels" to { open(ChatActivity::class.java) },
                "Self-test" to { open(SelfTestActivity::class.java) },
                "Benchmark" to { open(BenchmarkActivity::class.java) })
            button("Unload") { app.host.unload { showLoaded() } }
        }
        refresh()
    }

    override fun onResume() {
        super.onResume()
        showLoaded()
    }

    private fun settings(): LoadSettings {
        val count = threads.text.toString().trim().toIntOrNull()?.coerceIn(0, 64) ?: 0
        getSharedPreferences("settings", Context.MODE_PRIVATE).edit()
            .putInt("onnx", onnx.selectedItemPosition).putInt("tflite", tflite.selectedItemPosition)
            .putInt("threads", count).apply()
        return LoadSettings(OrtAccelerator.entries[onnx.selectedItemPosition],
            LiteRtAccelerator.entries[tflite.selectedItemPosition], count)
    }

    /** Lists the bundles (manifests read on the model thread: a big manifest never stalls the screen). */
    private fun refresh() {
        app.host.submit({ app.store.list() }) { outcome ->
            list.removeAllViews()
            when (outcome) {
                is Outcome.Failed -> list.label(outcome.line)
                is Outcome.Done -> {
                    if (outcome.value.isEmpty()) list.label("(none yet: push one with adb, or copy one in below)")
                    for (entry in outcome.value) bundleRow(entry)
                }
            }
        }
    }

    private fun bundleRow(entry: BundleEntry) {
        if (entry.problem != null) {
            list.label("${entry.name}: ${entry.problem}")
            return
        }
        list.button("Load ${entry.name}\n${entry.summary}") { load(entry) }
    }

    private fun load(entry: BundleEntry) {
        val settings = settings()
        busy(true)
        status.text = "loading ${entry.name}…"
        app.host.load({
            Loader.open(applicationContext, entry.dir, settings) { line -> runOnUiThread { status.text = line } }
        }) { outcome ->
            busy(false)
            when (outcome) {
                is Outcome.Failed -> status.text = "${entry.name} did not load:\n${outcome.line}"
                is Outcome.Done -> showLoaded()
            }
        }
    }

    private fun importFolder(uri: Uri) {
        busy(true)
        app.host.submit({
            app.store.import(uri) { file, done, total ->
                runOnUiThread { status.text = "copying $file: ${done / 1_000_000} of ${total / 1_000_000} MB" }
            }
        }) { outcome ->
            busy(false)
            status.text = when (outcome) {
                is Outcome.Failed -> outcome.line
                is Outcome.Done -> "copied to ${outcome.value.path}"
            }
            refresh()
        }
    }

    private fun showLoaded() {
        val loaded = app.host.loaded
        val ready = loaded != null && !app.host.busy
        for (b in actions) b.isEnabled = ready
        if (loaded != null && !app.host.busy) {
            status.text = (listOf("loaded ${loaded.title}",
                "checked in ${"%.0f".format(loaded.load.verifyMs)} ms, sessions in " +
                    "${"%.0f".format(loaded.load.sessionLoadMs)} ms") + loaded.notes).joinToString("\n")
        } else if (loaded == null && !app.host.busy && status.text.startsWith("loaded")) {
            status.text = "nothing loaded"
        }
    }

    private fun busy(on: Boolean) {
        setEnabled(!on, pick, onnx, tflite, threads)
        for (i in 0 until list.childCount) list.getChildAt(i).isEnabled = !on
        for (b in actions) b.isEnabled = !on && app.host.loaded != null
    }

    private fun open(screen: Class<*>) = startActivity(Intent(this, screen))
}

package dev.pocketvlm.demo.ui

import android.net.Uri
import android.os.Bundle
import android.widget.EditText
import androidx.activity.ComponentActivity
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import dev.pocketvlm.demo.PocketVlmApp
import dev.pocketvlm.demo.model.BenchSetup
import dev.pocketvlm.demo.model.Benchmarks
import dev.pocketvlm.demo.model.LoadedBundle
import dev.pocketvlm.demo.platform.DeviceFacts
import dev.pocketvlm.demo.platform.Images
import dev.pocketvlm.engine.Captioner
import dev.pocketvlm.engine.GoldenRecord
import dev.pocketvlm.engine.Rgba

/**
 * N images through the loaded bundle (the photos picked, or the bundle's golden image N times), one warm-up first,
 * written as the device result file (`runtime/schema/bench.schema.json`, `measured_on: "device"`) to
 * `<external files dir>/results/pocketvlm-android-FAMILY-TARGET-MILLIS.json`, which `adb pull` fetches and
 * `benchmarks/report.py` lists among the devices; the screen offers to share it.
 */
class BenchmarkActivity : ComponentActivity() {
    private val app get() = PocketVlmApp.of(this)
    private lateinit var loaded: LoadedBundle
    private lateinit var count: EditText
    private lateinit var tokens: EditText
    private val results = ResultFileRun(this)
    private var picked: List<Uri> = emptyList()

    private val pickPhotos = registerForActivityResult(ActivityResultContracts.PickMultipleVisualMedia(MAX_IMAGES)) {
        uris: List<Uri> ->
        picked = uris
        results.out.text =
            if (uris.isEmpty()) "no photos picked: the golden image will be used" else "${uris.size} photos picked"
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        loaded = loadedOrExplain() ?: return
        screen {
            heading("Benchmark: ${loaded.title}")
            label("Pick up to $MAX_IMAGES photos (one timed run each), or leave none to run the bundle's golden " +
                "image the number of times below.")
            button("Pick photos") {
                pickPhotos.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
            }
            count = field("runs with the golden image", "10", number = true)
            tokens = field("new tokens per caption", "32", number = true)
            if (!loaded.isVlm) tokens.visibility = android.view.View.GONE
            results.start = button("Run") { run() }
            button("Stop") { app.host.cancel() }
            results.addShareButton(this, "Share the result file")
            results.out = output()
        }
    }

    private fun run() {
        val runs = count.text.toString().trim().toIntOrNull()?.coerceIn(1, 200) ?: 10
        val newTokens = tokens.text.toString().trim().toIntOrNull()?.coerceIn(1, 1024) ?: 32
        val uris = picked
        val context = applicationContext
        val setup = BenchSetup(DeviceFacts.device(loaded), DeviceFacts.machine(context), loaded.tools, loaded.load)
        val say = { line: String -> runOnUiThread { results.out.text = line } }
        val m = loaded.bundle.manifest
        results.run("preparing…", "pocketvlm-android-${m.family}-${m.target}", {
            val golden: Rgba? = if (uris.isNotEmpty()) null else GoldenRecord.read(loaded.bundle).let { record ->
                Images.fromPng(loaded.bundle.read(record.imageFile), record.imageFile)
            }
            val n = if (golden != null) runs else uris.size
            val image = { i: Int -> golden ?: Images.fromUri(context, uris[i]) }
            loaded.captioner?.let { captioner ->
                Benchmarks.vlm(loaded.bundle, captioner, n, image, Captioner.DEFAULT_PROMPT, newTokens, setup, say,
                    app.host.cancelled)
            } ?: Benchmarks.dualEncoder(loaded.bundle, loaded.classifier!!, n, image, labels(), setup, say,
                app.host.cancelled)
        }, { it }) { result, file ->
            Benchmarks.summary(result) + listOf("", "written to ${file.path}", "adb pull ${file.path}")
        }
    }

    /** A dual encoder's benchmark scores the golden record's labels (the text encoder runs once per image). */
    private fun labels(): List<String> = GoldenRecord.read(loaded.bundle).text().labels

    companion object {
        const val MAX_IMAGES = 50
    }
}

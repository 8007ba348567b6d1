package dev.pocketvlm.demo.ui

import android.os.Bundle
import android.widget.Button
import android.widget.TextView
import androidx.activity.ComponentActivity
import dev.pocketvlm.demo.PocketVlmApp
import dev.pocketvlm.demo.model.Outcome
import dev.pocketvlm.demo.platform.Images
import dev.pocketvlm.engine.DeviceResult
import dev.pocketvlm.engine.GoldenReplay
import java.io.File

/**
 * The golden self-test on the phone: the bundle's golden record (written by the exporter from the Python runtime's
 * run) replayed stage by stage on this engine and this backend (preprocessing, the encoders, the prompt, the
 * decoder's teacher-forced logits, greedy generation), each stage on the engine's own outputs of the stage before.
 * The report is shown line by line and written next to the benchmark results.
 */
class SelfTestActivity : ComponentActivity() {
    private val app get() = PocketVlmApp.of(this)
    private var report: File? = null

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val loaded = app.host.loaded
        if (loaded == null) {
            screen { label("No bundle is loaded: go back and load one.") }
            return
        }
        lateinit var out: TextView
        lateinit var start: Button
        lateinit var share: Button
        screen {
            heading("Self-test: ${loaded.title}")
            label("Replays the bundle's golden record on this phone and compares every stage within its tolerance.")
            start = button("Run the self-test") {
                start.isEnabled = false
                out.text = "running…"
                app.host.submit({
                    val bundle = loaded.bundle
                    val replay = GoldenReplay(bundle, loaded.sessions)
                    val image = Images.fromPng(bundle.read(replay.record.imageFile), replay.record.imageFile)
                    val result = replay.run(image)
                    val file = File(app.store.results,
                        "selftest-${loaded.name}-${System.currentTimeMillis()}.json")
                    DeviceResult.write(result.toJson(), file)
                    result to file
                }) { outcome ->
                    start.isEnabled = true
                    when (outcome) {
                        is Outcome.Failed -> out.text = outcome.line
                        is Outcome.Done -> {
                            val (result, file) = outcome.value
                            report = file
                            share.isEnabled = true
                            val verdict = if (result.passed) "PASS" else "FAIL (first failed stage: ${result.failedStage})"
                            out.text = (listOf(verdict) + result.stages.map { it.line() } +
                                listOf("", "report: ${file.path}")).joinToString("\n")
                        }
                    }
                }
            }
            share = button("Share the report") { report?.let { Share.file(this@SelfTestActivity, it) } }
            share.isEnabled = false
            out = output()
        }
    }
}

package dev.pocketvlm.demo.ui

import android.os.Bundle
import androidx.activity.ComponentActivity
import dev.pocketvlm.demo.platform.Images
import dev.pocketvlm.engine.GoldenReplay

/**
 * The golden self-test on the phone: the bundle's golden record (written by the exporter from the Python runtime's
 * run) replayed stage by stage on this engine and this backend (preprocessing, the encoders, the prompt, the
 * decoder's teacher-forced logits, greedy generation), each stage on the engine's own outputs of the stage before.
 * The report is shown line by line and written next to the benchmark results.
 */
class SelfTestActivity : ComponentActivity() {
    private val report = ResultFileRun(this)

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val loaded = loadedOrExplain() ?: return
        screen {
            heading("Self-test: ${loaded.title}")
            label("Replays the bundle's golden record on this phone and compares every stage within its tolerance.")
            report.start = button("Run the self-test") {
                report.run("running…", "selftest-${loaded.name}", {
                    val bundle = loaded.bundle
                    val replay = GoldenReplay(bundle, loaded.sessions)
                    val image = Images.fromPng(bundle.read(replay.record.imageFile), replay.record.imageFile)
                    replay.run(image)
                }, { it.toJson() }) { result, file ->
                    val verdict = if (result.passed) "PASS" else "FAIL (first failed stage: ${result.failedStage})"
                    listOf(verdict) + result.stages.map { it.line() } + listOf("", "report: ${file.path}")
                }
            }
            report.addShareButton(this, "Share the report")
            report.out = output()
        }
    }
}

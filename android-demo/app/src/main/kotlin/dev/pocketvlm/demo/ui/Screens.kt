package dev.pocketvlm.demo.ui

import android.app.Activity
import android.widget.Button
import android.widget.LinearLayout
import android.widget.TextView
import dev.pocketvlm.demo.PocketVlmApp
import dev.pocketvlm.demo.model.LoadedBundle
import dev.pocketvlm.demo.model.Outcome
import dev.pocketvlm.engine.DeviceResult
import java.io.File

/*
 * What the screens that work on the loaded bundle share (the caption / labels, self-test and benchmark screens).
 */

/**
 * The bundle a screen works on, or null once the screen says to go back and load one (`onCreate` then returns).
 */
fun Activity.loadedOrExplain(): LoadedBundle? =
    PocketVlmApp.of(this).host.loaded ?: run {
        screen { label("No bundle is loaded: go back and load one.") }
        null
    }

/**
 * What the self-test and benchmark screens share: a run on the model thread whose result is written as a JSON file
 * in the app's results folder, then shown in [out] and offered by the share button. The screen adds [start] (which
 * calls [run]), the share button ([addShareButton]) and [out] where its layout puts them.
 */
class ResultFileRun(private val activity: Activity) {
    lateinit var start: Button
    lateinit var out: TextView
    private lateinit var share: Button
    private var written: File? = null

    /** Adds the button that shares the last file written to [column], disabled until a run has written one. */
    fun addShareButton(column: LinearLayout, text: String) {
        share = column.button(text) { written?.let { Share.file(activity, it) } }
        share.isEnabled = false
    }

    /**
     * Runs [task] on the model thread with [start] disabled and [running] shown, writes what [json] makes of its
     * value to `results/STEM-MILLIS.json`, and shows the [lines] of the value and the file (or the failure's line).
     */
    fun <T> run(running: String, stem: String, task: () -> T, json: (T) -> Map<String, Any?>,
                lines: (T, File) -> List<String>) {
        val app = PocketVlmApp.of(activity)
        start.isEnabled = false
        out.text = running
        app.host.submit({
            val value = task()
            val file = File(app.store.results, "$stem-${System.currentTimeMillis()}.json")
            DeviceResult.write(json(value), file)
            value to file
        }) { outcome ->
            start.isEnabled = true
            when (outcome) {
                is Outcome.Failed -> out.text = outcome.line
                is Outcome.Done -> {
                    val (value, file) = outcome.value
                    written = file
                    share.isEnabled = true
                    out.text = lines(value, file).joinToString("\n")
                }
            }
        }
    }
}

package dev.pocketvlm.demo.ui

import android.net.Uri
import android.os.Bundle
import android.widget.Button
import android.widget.EditText
import android.widget.ImageView
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.core.content.FileProvider
import dev.pocketvlm.demo.PocketVlmApp
import dev.pocketvlm.demo.model.LoadedBundle
import dev.pocketvlm.demo.model.Outcome
import dev.pocketvlm.demo.platform.Images
import dev.pocketvlm.engine.Captioner
import dev.pocketvlm.engine.GenerationConfig
import dev.pocketvlm.engine.GoldenRecord
import dev.pocketvlm.engine.Rgba
import dev.pocketvlm.engine.Tensor
import dev.pocketvlm.engine.VisionInput
import java.io.File
import java.util.Locale

/**
 * A photo (picker or camera) and what the loaded bundle says about it: a VLM's streamed caption or answer to a
 * question (a question without a photo is a text-only prompt), or a dual encoder's zero-shot labels. The picture is
 * encoded once and reused for every question about it.
 */
class ChatActivity : ComponentActivity() {
    private val app get() = PocketVlmApp.of(this)
    private lateinit var loaded: LoadedBundle
    private lateinit var preview: ImageView
    private lateinit var out: TextView
    private lateinit var stats: TextView
    private lateinit var question: EditText
    private var maxTokens: EditText? = null
    private lateinit var runButtons: List<Button>
    private var photo: Rgba? = null
    private var vision: VisionInput? = null
    private var imageEmbeds: Tensor.F32? = null
    private var cameraUri: Uri? = null

    private val pickPhoto = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri: Uri? ->
        if (uri != null) usePhoto(uri)
    }
    private val takePhoto = registerForActivityResult(ActivityResultContracts.TakePicture()) { saved: Boolean ->
        val uri = cameraUri
        if (saved && uri != null) usePhoto(uri)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        loaded = loadedOrExplain() ?: return
        val captioner = loaded.captioner
        screen {
            heading(loaded.title)
            preview = image()
            buttons("Pick a photo" to {
                pickPhoto.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
            }, "Camera" to { camera() })
            if (captioner != null) {
                question = field("question (empty: caption)")
                maxTokens = field("max new tokens", "64", number = true)
                runButtons = buttons("Caption / ask" to { ask(captioner) }, "Stop" to { app.host.cancel() }).take(1)
            } else {
                question = field("labels, comma-separated")
                runButtons = listOf(button("Score the labels") { classify() })
                prefillLabels()
            }
            out = output()
            stats = output()
        }
    }

    private fun camera() {
        val dir = File(cacheDir, "camera").apply { mkdirs() }
        val uri = FileProvider.getUriForFile(this, "$packageName.files", File(dir, "photo.jpg"))
        cameraUri = uri
        takePhoto.launch(uri)
    }

    private fun usePhoto(uri: Uri) {
        stats.text = "decoding the photo…"
        val context = applicationContext
        whileBusy({ Images.fromUri(context, uri).let { it to Images.preview(it) } }) { (decoded, bitmap) ->
            photo = decoded
            vision = null
            imageEmbeds = null
            preview.setImageBitmap(bitmap)
            stats.text = "${decoded.width}x${decoded.height}"
        }
    }

    private fun ask(captioner: Captioner) {
        val text = question.text.toString().trim().ifEmpty { Captioner.DEFAULT_PROMPT }
        val tokens = maxTokens?.text?.toString()?.trim()?.toIntOrNull()?.coerceIn(1, 4096) ?: 64
        val picture = photo
        val encoded = vision
        out.text = ""
        stats.text = if (picture != null && encoded == null) "encoding the photo…" else "generating…"
        whileBusy({
            val v = encoded ?: picture?.let { captioner.encodeImage(it) }
            val answer = captioner.generate(v, text, GenerationConfig(maxNewTokens = tokens),
                onText = { piece -> runOnUiThread { out.append(piece) } }, cancelled = app.host.cancelled)
            v to answer
        }) { (v, answer) ->
            vision = v
            out.text = answer.text
            val t = answer.result.timings
            val decodeS = t["decode_s"] ?: 0.0
            val decoded = t["decode_tokens"] ?: 0.0
            val rate = if (decodeS > 0) decoded / decodeS else 0.0
            stats.text = String.format(Locale.ROOT, "%d prompt + %d new tokens (%s); image %.0f ms, " +
                "prefill %.0f ms, decode %.1f tok/s", answer.result.promptTokens, answer.result.tokenIds.size,
                answer.result.stopReason, v?.encodeMs ?: 0.0, (t["prefill_s"] ?: 0.0) * 1e3, rate)
        }
    }

    private fun classify() {
        val classifier = loaded.classifier ?: return
        val picture = photo ?: run { stats.text = "pick a photo first"; return }
        val labels = question.text.toString().split(',').map { it.trim() }.filter { it.isNotEmpty() }
        val cached = imageEmbeds
        stats.text = "scoring ${labels.size} labels…"
        whileBusy({
            val embeds = cached ?: classifier.encodeImage(picture).embeds
            embeds to classifier.classify(embeds, labels, classifier.encodeLabels(labels))
        }) { (embeds, scores) ->
            imageEmbeds = embeds
            out.text = scores.joinToString("\n") {
                String.format(Locale.ROOT, "%6.2f%%  %s", it.score * 100, it.label)
            }
            stats.text = "activation: ${classifier.scorer.activation}"
        }
    }

    /** The golden record's labels, as a start (the user edits them). */
    private fun prefillLabels() {
        app.host.submit({ GoldenRecord.read(loaded.bundle).text().labels }) { outcome ->
            if (outcome is Outcome.Done && question.text.isEmpty()) question.setText(outcome.value.joinToString(", "))
        }
    }

    /**
     * Runs [task] on the model thread with the run buttons disabled until it ends; [done] gets its value, and a
     * failure is its line in the stats.
     */
    private fun <T> whileBusy(task: () -> T, done: (T) -> Unit) {
        busy(true)
        app.host.submit(task) { outcome ->
            busy(false)
            when (outcome) {
                is Outcome.Failed -> stats.text = outcome.line
                is Outcome.Done -> done(outcome.value)
            }
        }
    }

    private fun busy(on: Boolean) = runButtons.forEach { it.isEnabled = !on }
}

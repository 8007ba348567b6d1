package dev.pocketvlm.demo.model

import dev.pocketvlm.engine.Bundle
import dev.pocketvlm.engine.BundleError
import dev.pocketvlm.engine.GenerationConfig
import dev.pocketvlm.engine.GenerationResult
import dev.pocketvlm.engine.Generator
import dev.pocketvlm.engine.InferenceError
import dev.pocketvlm.engine.LabelScore
import dev.pocketvlm.engine.Manifest
import dev.pocketvlm.engine.PromptBuilder
import dev.pocketvlm.engine.Preprocessor
import dev.pocketvlm.engine.Rgba
import dev.pocketvlm.engine.SessionFactory
import dev.pocketvlm.engine.Tensor
import dev.pocketvlm.engine.Tokenizer
import dev.pocketvlm.engine.ZeroShotScorer
import java.nio.ByteBuffer
import java.nio.ByteOrder

/*
 * The two things the app does with a loaded bundle, over the engine core and any backend's sessions: a VLM's
 * caption / answer, streamed as text, and a dual encoder's zero-shot labels. Platform-free (no android.*), so they
 * belong in the engine core (its GoldenReplay has the same steps as private helpers); they live in the app until
 * they move.
 */

/** Thrown from a token callback to stop a generation the user cancelled. */
class Cancelled : RuntimeException("cancelled")

private fun elapsedMs(since: Long): Double = (System.nanoTime() - since) / 1e6

/** A picture through the vision side: the outputs the decoder takes, and what it cost. */
class VisionInput(val embeds: Map<String, Tensor.F32>, val preprocessMs: Double, val encodeMs: Double)

/** A finished generation: the text, the engine's result (tokens, stop reason, timings). */
class Answer(val text: String, val result: GenerationResult)

/**
 * A VLM bundle whose manifest has the `app` block (the exporter writes it for fixed image layouts: the embedded
 * captioner on any target, Qwen bundles on tflite / qnn): the prompt's ids and positions come from it, so the app
 * needs no chat template and no M-RoPE code.
 */
class Captioner(private val bundle: Bundle, private val sessions: SessionFactory, private val tokenizer: Tokenizer) {
    private val manifest = bundle.manifest
    private val app = manifest.app ?: throw BundleError("this bundle's manifest has no 'app' block, which the " +
        "phone app needs (the prompt resolved for a fixed image layout)", "export the embedded captioner (any " +
        "target) or a Qwen model with --target tflite or qnn; other VLM bundles run with `pocketvlm caption`")
    private val preprocessor = Preprocessor.of(manifest.image)
    private val prompts = PromptBuilder(app) { tokenizer.encodePlain(it) }
    private val constants: Map<String, Tensor> = visionConstants(bundle)

    /** Preprocesses [image] and runs the vision side (one encoder, or frontend + transformer) on it. */
    fun encodeImage(image: Rgba): VisionInput {
        var started = System.nanoTime()
        val pixels = preprocessor.pixelValues(image)
        val preprocessMs = elapsedMs(started)
        started = System.nanoTime()
        val available = LinkedHashMap<String, Tensor>(constants).apply { put("pixel_values", pixels) }
        var last: Map<String, Tensor.F32> = emptyMap()
        for (stage in manifest.visionStages) {
            last = runComponent(manifest, sessions, stage, available)
            available.putAll(last)
        }
        return VisionInput(last, preprocessMs, elapsedMs(started))
    }

    /**
     * Generates the answer to [text] about [vision] (null: a text-only prompt), calling [onText] with each new
     * piece of text as it becomes complete; [cancelled] is asked after every token.
     */
    fun generate(vision: VisionInput?, text: String, config: GenerationConfig, onText: (String) -> Unit,
                 cancelled: () -> Boolean = { false }): Answer {
        val prompt = prompts.build(text, vision != null)
        val stream = tokenizer.stream()
        val generator = Generator(sessions.textDecoder(), manifest.eosTokenIds, manifest.maxContext)
        val result = generator.generate(prompt, vision?.embeds, config, onToken = { id ->
            if (cancelled()) throw Cancelled()
            val piece = stream.push(id)
            if (piece.isNotEmpty()) onText(piece)
        }, imageEncodeS = (vision?.encodeMs ?: 0.0) / 1e3)
        val full = tokenizer.decode(result.tokenIds)
        stream.finish(full).takeIf { it.isNotEmpty() }?.let(onText)
        return Answer(full, result)
    }

    /** What ran the vision side and the decoder, for the result file. */
    fun engines(): Map<String, String> =
        manifest.visionStages.associateWith { sessions.session(it).backend } +
            ("text_decoder" to sessions.textDecoder().backend)

    companion object {
        const val DEFAULT_PROMPT = "Describe this image."  // the Python runtime's DEFAULT_CAPTION_PROMPT
    }
}

/** A dual-encoder bundle (CLIP, SigLIP): labels scored against a picture, as `pocketvlm classify`. */
class ZeroShotClassifier(private val bundle: Bundle, private val sessions: SessionFactory,
                         private val tokenizer: Tokenizer) {
    private val manifest = bundle.manifest
    private val spec = manifest.zeroShot ?: throw BundleError("this is not a zero-shot bundle", "pick a CLIP bundle")
    val scorer = ZeroShotScorer(spec)
    private val preprocessor = Preprocessor.of(manifest.image)

    /** The image embeddings `[1, dim]`, with preprocessing and encoder times in ms. */
    fun encodeImage(image: Rgba): Triple<Tensor.F32, Double, Double> {
        var started = System.nanoTime()
        val pixels = preprocessor.pixelValues(image)
        val preprocessMs = elapsedMs(started)
        started = System.nanoTime()
        val out = runComponent(manifest, sessions, "image_encoder", mapOf("pixel_values" to pixels))
        val embeds = out["image_embeds"] ?: throw InferenceError("the image encoder gave no image_embeds",
            "re-export the bundle")
        return Triple(embeds, preprocessMs, elapsedMs(started))
    }

    /** The text embeddings `[labels, dim]` of the bundle's prompt template around each label. */
    fun encodeLabels(labels: List<String>): Tensor.F32 {
        val encoded = tokenizer.encode(scorer.prompts(scorer.labels(labels)), manifest.tokenizer)
        val rows = encoded.ids.size
        val cols = encoded.ids.firstOrNull()?.size ?: 0
        fun flat(rowsOf: Array<LongArray>) = Tensor.I64(intArrayOf(rows, cols), LongArray(rows * cols) {
            rowsOf[it / cols][it % cols]
        })
        val feeds = mapOf<String, Tensor>("input_ids" to flat(encoded.ids), "attention_mask" to flat(encoded.attentionMask))
        val out = runComponent(manifest, sessions, "text_encoder", feeds)
        return out["text_embeds"] ?: throw InferenceError("the text encoder gave no text_embeds", "re-export the bundle")
    }

    fun classify(image: Tensor.F32, labels: List<String>, text: Tensor.F32): List<LabelScore> =
        scorer.classify(image, text, labels).first()

    fun engines(): Map<String, String> =
        listOf("image_encoder", "text_encoder").associateWith { sessions.session(it).backend }
}

/** One component on the inputs it declares, taken from [available]; a declared input not there is refused. */
internal fun runComponent(manifest: Manifest, sessions: SessionFactory, component: String,
                          available: Map<String, Tensor>): Map<String, Tensor.F32> {
    val spec = manifest.component(component)
    val feeds = spec.inputs.associate { input ->
        input.name to (available[input.name] ?: throw BundleError("component '$component' needs input " +
            "'${input.name}', which the app does not produce for it (it has ${available.keys})",
            "re-export the bundle with the pocketvlm version the app was built with"))
    }
    return sessions.session(component).run(feeds).mapValues { (name, t) ->
        t as? Tensor.F32 ?: throw InferenceError("component '$component' output '$name' is ${t.dtype}, expected " +
            "float32", "re-export the bundle")
    }
}

/** The vision side's constant inputs for the fixed image size (`app.vision_feeds`, little-endian), by input name. */
internal fun visionConstants(bundle: Bundle): Map<String, Tensor> {
    val feeds = bundle.manifest.app?.visionFeeds ?: return emptyMap()
    val bytes = bundle.read(feeds.file)
    return feeds.tensors.associate { entry ->
        val count = entry.shape.fold(1L) { a, d -> a * d }
        val width = when (entry.dtype) { "float32", "int32" -> 4; "int64" -> 8; else -> 0 }
        if (width == 0 || entry.offset < 0 || entry.bytes != count * width || entry.offset + entry.bytes > bytes.size) {
            throw BundleError("app.vision_feeds tensor '${entry.name}' (${entry.dtype} ${entry.shape.toList()} at " +
                "${entry.offset}, ${entry.bytes} bytes) does not fit ${feeds.file} (${bytes.size} bytes)",
                "re-export the bundle")
        }
        val buf = ByteBuffer.wrap(bytes, entry.offset.toInt(), entry.bytes.toInt()).order(ByteOrder.LITTLE_ENDIAN)
        val n = count.toInt()
        entry.name to when (entry.dtype) {
            "float32" -> Tensor.F32(entry.shape, FloatArray(n) { buf.float })
            "int64" -> Tensor.I64(entry.shape, LongArray(n) { buf.long })
            else -> Tensor.I64(entry.shape, LongArray(n) { buf.int.toLong() })
        }
    }
}

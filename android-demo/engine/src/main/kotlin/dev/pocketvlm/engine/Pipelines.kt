package dev.pocketvlm.engine

import java.nio.ByteBuffer
import java.nio.ByteOrder

/*
 * The two things a loaded bundle does, over the engine core and any backend's sessions, as the Python runtime does
 * them: a VLM's caption / answer streamed as text (`runtime/vlm.py`: [VlmSteps], [Captioner]) and a dual encoder's
 * zero-shot labels (`runtime/dual_encoder.py`: [ZeroShotSteps], [ZeroShotClassifier]). The steps classes need no
 * model of their own (each model step takes the sessions or the decoder to run), so the golden replay runs them one
 * by one, on a JVM without the models too; the app's [Captioner] and [ZeroShotClassifier] run them in order on the
 * loaded bundle's sessions. Sessions and decoders are lent by their [SessionFactory]: nothing here closes them.
 */

/** Thrown from a token callback (a `cancelled` answering true) to stop a generation the user cancelled. */
class Cancelled : RuntimeException("cancelled")

private fun elapsedMs(since: Long): Double = (System.nanoTime() - since) / 1e6

/** A picture through the vision side: the outputs the decoder takes, and what it cost. */
class VisionInput(val embeds: Map<String, Tensor.F32>, val preprocessMs: Double, val encodeMs: Double)

/** A finished generation: the text (stop tokens left out, as the Python runtime's), the loop's result. */
class Answer(val text: String, val result: GenerationResult)

/** A picture through a dual encoder's image tower: `image_embeds` `[1, dim]`, and what it cost. */
class ImageEmbedding(val embeds: Tensor.F32, val preprocessMs: Double, val encodeMs: Double)

/**
 * Running a bundle's components over a [SessionFactory]: a component fed the inputs it declares, the vision side in
 * order, and its constant inputs for the fixed image size.
 */
object Components {
    /** One component on the inputs it declares, taken from [available]; a declared input not there is refused. */
    fun run(manifest: Manifest, sessions: SessionFactory, component: String,
            available: Map<String, Tensor>): Map<String, Tensor.F32> {
        val spec = manifest.component(component)
        val feeds = spec.inputs.associate { input ->
            input.name to (available[input.name] ?: throw BundleError("component '$component' needs input " +
                "'${input.name}', which this engine does not produce for it (inputs it has: ${available.keys})",
                "re-export the bundle with a pocketvlm version that writes the app block's vision_feeds"))
        }
        return sessions.session(component).run(feeds).mapValues { (name, t) ->
            t as? Tensor.F32 ?: throw InferenceError("component '$component' output '$name' is ${t.dtype}, expected " +
                "float32", "re-export the bundle")
        }
    }

    /** The vision side in order (one encoder, or frontend + transformer), each fed what the ones before gave. */
    fun runVision(manifest: Manifest, sessions: SessionFactory, feeds: Map<String, Tensor>): Map<String, Tensor.F32> {
        val available = LinkedHashMap(feeds)
        var last: Map<String, Tensor.F32> = emptyMap()
        for (stage in manifest.visionStages) {
            last = run(manifest, sessions, stage, available)
            available.putAll(last)
        }
        return last
    }

    /** The vision side's constant inputs for the fixed image size (`app.vision_feeds`), by input name. */
    fun visionConstants(bundle: Bundle): Map<String, Tensor> {
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
                else -> Tensor.I64(entry.shape, LongArray(n) { buf.int.toLong() })  // int32: widened, values kept
            }
        }
    }

    /** Output [name] of a component, or an [InferenceError] naming what it gave instead. */
    fun output(outputs: Map<String, Tensor.F32>, name: String, component: String): Tensor.F32 = outputs[name]
        ?: throw InferenceError("the $component gave no $name (it gave ${outputs.keys})", "re-export the bundle")
}

/**
 * A VLM bundle's steps: [visionFeeds] (the picture preprocessed, with the app block's constant vision inputs),
 * [encodeVision] on the vision sessions, prompts from the manifest's `app` block ([promptBuilder]), and [generate]
 * over any [TextDecoder], with the text streamed as the Python runtime's `VisionLanguageModel.generate` streams it.
 */
class VlmSteps(val bundle: Bundle, val tokenizer: Tokenizer) {
    val manifest: Manifest = bundle.manifest

    init {
        if (manifest.task != Manifest.VLM_TASK) {
            throw BundleError("this is a ${manifest.task} bundle, not a VLM", "pick a captioning bundle")
        }
    }

    private val preprocessor = Preprocessor.of(manifest.image)
    private val constants: Map<String, Tensor> = Components.visionConstants(bundle)
    private val prompts = manifest.app?.let { app -> PromptBuilder(app) { tokenizer.encodePlain(it) } }

    /** What the vision side is fed for [image]: its `pixel_values` and the constant inputs for the fixed size. */
    fun visionFeeds(image: Rgba): Map<String, Tensor> =
        LinkedHashMap(constants).apply { put("pixel_values", preprocessor.pixelValues(image)) }

    /** The vision side (one encoder, or frontend + transformer) on [sessions]: `image_embeds` (and deepstack). */
    fun encodeVision(sessions: SessionFactory, feeds: Map<String, Tensor>): Map<String, Tensor.F32> =
        Components.runVision(manifest, sessions, feeds)

    /** The prompts of the manifest's `app` block; a bundle without one is a [BundleError]. */
    val promptBuilder: PromptBuilder
        get() = prompts ?: throw BundleError("this bundle's manifest has no 'app' block, which the phone app needs " +
            "(the prompt resolved for a fixed image layout)", "export the embedded captioner (any target) or a Qwen " +
            "model with --target tflite or qnn; other VLM bundles run with `pocketvlm caption`")

    /**
     * Generates from [prompt] on [decoder] with the vision outputs [image] (null: text only). [onText] gets each
     * new piece of text once it is complete (stop tokens are not streamed; the pieces add up to the answer's text);
     * [cancelled] is asked after every token and stops the loop with [Cancelled]. [forced] and [imageEncodeS] are
     * the [Generator]'s.
     */
    fun generate(decoder: TextDecoder, prompt: Prompt, image: Map<String, Tensor.F32>?, config: GenerationConfig,
                 onText: ((String) -> Unit)? = null, cancelled: () -> Boolean = { false }, forced: List<Int>? = null,
                 imageEncodeS: Double = 0.0): Answer {
        val stops = manifest.eosTokenIds + config.stopTokenIds
        val stream = if (onText != null) tokenizer.stream() else null
        val generator = Generator(decoder, manifest.eosTokenIds, manifest.maxContext)
        val result = generator.generate(prompt, image, config, forced, onToken = { id ->
            if (cancelled()) throw Cancelled()
            if (stream != null && onText != null && id !in stops) {
                val piece = stream.push(id)
                if (piece.isNotEmpty()) onText(piece)
            }
        }, imageEncodeS = imageEncodeS)
        val text = tokenizer.decode(result.tokenIds.filter { it !in stops })
        if (stream != null && onText != null) stream.finish(text).takeIf { it.isNotEmpty() }?.let(onText)
        return Answer(text, result)
    }
}

/**
 * The app's captioner: a VLM bundle whose manifest has the `app` block (the exporter writes it for fixed image
 * layouts: the embedded captioner on any target, Qwen bundles on tflite / qnn), run on [sessions] (lent: the caller
 * closes its factory), so the app needs no chat template and no M-RoPE code. A bundle without the block is refused
 * here, when it is loaded.
 */
class Captioner(bundle: Bundle, private val sessions: SessionFactory, tokenizer: Tokenizer) {
    val steps = VlmSteps(bundle, tokenizer)
    private val manifest = bundle.manifest
    private val prompts = steps.promptBuilder

    /** Preprocesses [image] and runs the vision side on it. */
    fun encodeImage(image: Rgba): VisionInput {
        var started = System.nanoTime()
        val feeds = steps.visionFeeds(image)
        val preprocessMs = elapsedMs(started)
        started = System.nanoTime()
        val embeds = steps.encodeVision(sessions, feeds)
        return VisionInput(embeds, preprocessMs, elapsedMs(started))
    }

    /**
     * The answer to [text] about [vision] (null: a text-only prompt), streamed to [onText]; [cancelled] is asked
     * after every token.
     */
    fun generate(vision: VisionInput?, text: String, config: GenerationConfig, onText: ((String) -> Unit)? = null,
                 cancelled: () -> Boolean = { false }): Answer =
        steps.generate(sessions.textDecoder(), prompts.build(text, vision != null), vision?.embeds, config, onText,
            cancelled, imageEncodeS = (vision?.encodeMs ?: 0.0) / 1e3)

    /** What ran the vision side and the decoder, for the result file. */
    fun engines(): Map<String, String> =
        manifest.visionStages.associateWith { sessions.session(it).backend } +
            ("text_decoder" to sessions.textDecoder().backend)

    companion object {
        const val DEFAULT_PROMPT = "Describe this image."  // the Python runtime's DEFAULT_CAPTION_PROMPT
    }
}

/**
 * A dual encoder's steps (CLIP, SigLIP), as `runtime/dual_encoder.py`: [pixelValues], [tokenize] (the manifest's
 * `TokenizerSpec`: special tokens, truncation, padding), the two towers on any sessions, and the [scorer].
 */
class ZeroShotSteps(val bundle: Bundle, val tokenizer: Tokenizer) {
    val manifest: Manifest = bundle.manifest
    val scorer = ZeroShotScorer(manifest.zeroShot ?: throw BundleError("this is a ${manifest.task} bundle, not a " +
        "zero-shot one", "pick a CLIP or SigLIP bundle"))
    private val preprocessor = Preprocessor.of(manifest.image)

    fun pixelValues(image: Rgba): Tensor.F32 = preprocessor.pixelValues(image)

    /** [texts] (already prompts) as the text encoder's padded `input_ids` and `attention_mask`. */
    fun tokenize(texts: List<String>): Encoded = tokenizer.encode(texts, manifest.tokenizer)

    /** The image tower's outputs (`image_embeds`, unnormalised) for [pixels]. */
    fun encodeImage(sessions: SessionFactory, pixels: Tensor.F32): Map<String, Tensor.F32> =
        Components.run(manifest, sessions, IMAGE_ENCODER, mapOf("pixel_values" to pixels))

    /** The text tower's outputs (`text_embeds`, unnormalised) for [encoded]: one row per text. */
    fun encodeText(sessions: SessionFactory, encoded: Encoded): Map<String, Tensor.F32> {
        val rows = encoded.ids.size
        val cols = encoded.ids.firstOrNull()?.size ?: 0
        fun flat(rowsOf: Array<LongArray>) = Tensor.I64(intArrayOf(rows, cols), LongArray(rows * cols) {
            rowsOf[it / cols][it % cols]
        })
        val feeds = mapOf("input_ids" to flat(encoded.ids), "attention_mask" to flat(encoded.attentionMask))
        return Components.run(manifest, sessions, TEXT_ENCODER, feeds)
    }

    companion object {
        const val IMAGE_ENCODER = "image_encoder"
        const val TEXT_ENCODER = "text_encoder"
    }
}

/** The app's zero-shot classifier: labels scored against a picture, as `pocketvlm classify`, on [sessions] (lent). */
class ZeroShotClassifier(bundle: Bundle, private val sessions: SessionFactory, tokenizer: Tokenizer) {
    val steps = ZeroShotSteps(bundle, tokenizer)
    val scorer: ZeroShotScorer get() = steps.scorer

    /** The image embeddings `[1, dim]`, with preprocessing and encoder times. */
    fun encodeImage(image: Rgba): ImageEmbedding {
        var started = System.nanoTime()
        val pixels = steps.pixelValues(image)
        val preprocessMs = elapsedMs(started)
        started = System.nanoTime()
        val embeds = Components.output(steps.encodeImage(sessions, pixels), "image_embeds", ZeroShotSteps.IMAGE_ENCODER)
        return ImageEmbedding(embeds, preprocessMs, elapsedMs(started))
    }

    /** The text embeddings `[labels, dim]` of the bundle's prompt template around each (trimmed) label. */
    fun encodeLabels(labels: List<String>): Tensor.F32 {
        val encoded = steps.tokenize(scorer.prompts(scorer.labels(labels)))
        return Components.output(steps.encodeText(sessions, encoded), "text_embeds", ZeroShotSteps.TEXT_ENCODER)
    }

    /** [labels] by score for the picture [image] (`[1, dim]`), given their embeddings [text]; highest first. */
    fun classify(image: Tensor.F32, labels: List<String>, text: Tensor.F32): List<LabelScore> =
        scorer.classify(image, text, labels).first()

    fun engines(): Map<String, String> =
        listOf(ZeroShotSteps.IMAGE_ENCODER, ZeroShotSteps.TEXT_ENCODER).associateWith { sessions.session(it).backend }
}

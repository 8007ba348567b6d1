package dev.pocketvlm.engine

import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * The models a replay runs, on the phone: the backends helper opens them from the bundle's files. The factory owns
 * what it opens (the replay never closes a session).
 */
interface SessionFactory {
    /** An open session of [component] (`vision_encoder`, `image_encoder`, `text_encoder`, ...). */
    fun session(component: String): ComponentSession

    /** The bundle's text decoder over its sessions ([DynamicKvDecoder] or [StaticKvDecoder]). */
    fun textDecoder(): TextDecoder
}

/**
 * The golden self-test: the bundle's golden record replayed stage by stage on this engine. With [sessions] (on the
 * phone) every stage runs, each on this engine's own outputs of the stage before. Without (on a JVM without the
 * bundle's runtime) the stages that need a model are reported as not run, never as passed: what runs is
 * preprocessing, the prompt's ids and positions (from the manifest's `app` block and the tokenizer), a dual
 * encoder's text ids, and the generation loop driven by the record's teacher-forced logits ([RecordedLogitsDecoder]),
 * which must give the recorded ids, stop reason and text.
 *
 * [image] is `golden.png` decoded by the caller (Android's `BitmapFactory`, javax.imageio on the JVM): the engine
 * core decodes no image file.
 */
class GoldenReplay(private val bundle: Bundle, private val sessions: SessionFactory?) {
    private val manifest = bundle.manifest
    val record: GoldenRecord = GoldenRecord.read(bundle)
    private val tokenizer: Tokenizer by lazy { Tokenizer.fromJson(bundle.readText(manifest.tokenizer.file)) }
    private val mode = if (sessions != null) "device" else "jvm"

    fun run(image: Rgba): GoldenReport {
        if (image.width != record.imageWidth || image.height != record.imageHeight) {
            throw BundleError("golden image decodes to ${image.width}x${image.height}, the record says " +
                "${record.imageWidth}x${record.imageHeight}", "re-export the bundle")
        }
        val stages = if (manifest.task == Manifest.VLM_TASK) vlm(image) else dual(image)
        val known = stages.map { it.name }.toSet()
        val unknown = record.stageNames.filter { it !in known }
            .map { StageResult.notRun(it, "a stage this engine does not know") }
        return GoldenReport(record, mode, stages + unknown)
    }

    // -- VLM: preprocess, vision_encoder, prompt, text_decoder, generation ----------------------------------------
    private fun vlm(image: Rgba): List<StageResult> {
        val results = mutableListOf<StageResult>()
        val pixels = Preprocessor.of(manifest.image).pixelValues(image)
        val feeds = LinkedHashMap<String, Tensor>(Components.visionConstants(bundle)).apply { put("pixel_values", pixels) }
        results += GoldenChecks.tensorStage(record.tensors("preprocess"), feeds)

        val visionStage = record.tensors("vision_encoder")
        var embeds: Map<String, Tensor.F32>? = null
        results += if (sessions == null) {
            StageResult.notRun(visionStage.name, "needs the ${manifest.visionStages.joinToString(" + ")} model: no " +
                "sessions on this machine")
        } else guarded(visionStage.name) {
            embeds = Components.runVision(manifest, sessions, feeds)
            GoldenChecks.tensorStage(visionStage, embeds!!)
        }

        val recordedPrompt = record.prompt()
        var prompt: Prompt? = null
        results += promptStage(recordedPrompt) { prompt = it }
        val decoderPrompt = prompt ?: recordedPrompt.asPrompt()
        val promptSource = if (prompt != null) "engine" else "record"

        val decoderStage = record.decoder()
        decoderStage.checkVocab(manifest.decoder!!.vocabSize)
        results += if (sessions == null) {
            StageResult.notRun("text_decoder", "needs the text_decoder model: no sessions on this machine")
        } else guarded("text_decoder") {
            val forced = decoderStage.steps.map { it.tokenId }
            val run = generator(sessions.textDecoder()).generate(decoderPrompt, embeds,
                greedy(forced.size), forced = forced)
            GoldenChecks.teacherForced(decoderStage, run.logits ?: emptyList())
        }

        results += generationStage(decoderStage, decoderPrompt, promptSource, embeds)
        return results
    }

    private fun promptStage(stage: PromptStage, built: (Prompt) -> Unit): StageResult {
        val app = manifest.app ?: return StageResult.notRun("prompt", "the manifest has no app block (the prompt's " +
            "ids and positions come from it on a phone; re-export the bundle with a pocketvlm version that writes it)")
        return guarded("prompt") {
            val prompt = PromptBuilder(app) { tokenizer.encodePlain(it) }.build(stage.prompt, true)
            built(prompt)
            val positions = prompt.positions
            val text = tokenizer.decode(prompt.ids.map { it.toInt() }, skipSpecialTokens = false)
            val result = GoldenChecks.exact("prompt", listOf(
                Triple("input_ids", prompt.ids.toList(), stage.inputIds.toList()),
                Triple("position_ids", positions.data.toList(), stage.positionIds.values!!.toList()),
                Triple("rope_delta", listOf(prompt.delta), listOf(stage.ropeDelta)),
                Triple("text", listOf(text), listOf(stage.text))),
                linkedMapOf("input_ids" to prompt.ids.toList(), "recorded_input_ids" to stage.inputIds.toList()))
            if (positions.shape.contentEquals(stage.positionIds.shape)) result
            else StageResult(result.name, StageStatus.FAILED, result.error, result.limit, "position_ids shape " +
                "${positions.shape.toList()} != recorded ${stage.positionIds.shape.toList()}; ${result.detail}",
                result.figures)
        }
    }

    private fun generationStage(decoderStage: DecoderStage, prompt: Prompt, promptSource: String,
                                embeds: Map<String, Tensor.F32>?): StageResult = guarded("generation") {
        val stage = record.generation()
        val replay = if (sessions == null) {
            RecordedLogitsDecoder(decoderStage.steps, manifest.decoder!!.vocabSize, prompt.ids.size)
        } else null
        val decoder = sessions?.textDecoder() ?: replay!!
        val run = generator(decoder).generate(prompt, embeds, greedy(stage.maxNewTokens))
        val ids = run.tokenIds.toList()
        val text = tokenizer.decode(ids, skipSpecialTokens = true)
        val how = (if (replay != null) "driven by the record's teacher-forced logits (no model)"
        else "greedy on ${decoder.backend}") + ", prompt from the $promptSource"
        val problems = replay?.feedProblems(prompt, ids) ?: emptyList()
        val result = GoldenChecks.generation(stage, ids, text, run.stopReason,
            decoderStage.nearTies(), how, problems)
        StageResult(result.name, result.status, result.error, result.limit, result.detail,
            result.figures + mapOf("decoder" to decoder.backend, "prompt_from" to promptSource))
    }

    private fun generator(decoder: TextDecoder) = Generator(decoder, manifest.eosTokenIds, manifest.maxContext)

    /** Greedy, as the record's run (the Python runtime's default config: no extra stop tokens). */
    private fun greedy(maxNewTokens: Int) = GenerationConfig(maxNewTokens = maxNewTokens, doSample = false)

    // -- dual encoder: preprocess, image_encoder, text, text_encoder, scores --------------------------------------
    private fun dual(image: Rgba): List<StageResult> {
        val results = mutableListOf<StageResult>()
        val pixels = Preprocessor.of(manifest.image).pixelValues(image)
        results += GoldenChecks.tensorStage(record.tensors("preprocess"), mapOf("pixel_values" to pixels))
        val imageStage = record.tensors("image_encoder")
        var imageEmbeds: Tensor.F32? = null
        results += if (sessions == null) StageResult.notRun(imageStage.name, "needs the image_encoder model: no " +
            "sessions on this machine")
        else guarded(imageStage.name) {
            val out = Components.run(manifest, sessions, "image_encoder", mapOf("pixel_values" to pixels))
            imageEmbeds = out["image_embeds"]
            GoldenChecks.tensorStage(imageStage, out)
        }

        val text = record.text()
        val scorer = ZeroShotScorer(manifest.zeroShot!!)
        var encoded: Encoded? = null
        results += guarded("text") {
            val prompts = scorer.prompts(text.labels)
            val enc = tokenizer.encode(prompts, manifest.tokenizer)
            encoded = enc
            val checks = mutableListOf(
                Triple("prompts", prompts as List<Any?>, text.prompts as List<Any?>),
                Triple("input_ids", enc.ids.map { it.toList() }, text.inputIds.map { it.toList() }))
            text.attentionMask?.let { mask ->
                checks += Triple("attention_mask", enc.attentionMask.map { it.toList() }, mask.map { it.toList() })
            }
            GoldenChecks.exact("text", checks, linkedMapOf("input_ids" to enc.ids.map { it.toList() }))
        }

        val textStage = record.tensors("text_encoder")
        var textEmbeds: Tensor.F32? = null
        results += if (sessions == null) StageResult.notRun(textStage.name, "needs the text_encoder model: no " +
            "sessions on this machine")
        else guarded(textStage.name) {
            val enc = encoded ?: throw InputError("the text stage gave no token ids", "see the text stage")
            val out = Components.run(manifest, sessions, "text_encoder", textFeeds(enc))
            textEmbeds = out["text_embeds"]
            GoldenChecks.tensorStage(textStage, out)
        }

        val scores = record.scores()
        results += if (sessions == null) StageResult.notRun("scores", "needs both encoders' outputs: no sessions on " +
            "this machine")
        else guarded("scores") {
            val img = imageEmbeds ?: throw InferenceError("the image encoder gave no image_embeds", "see its stage")
            val txt = textEmbeds ?: throw InferenceError("the text encoder gave no text_embeds", "see its stage")
            GoldenChecks.scores(scores, scorer.probabilities(scorer.logits(img, txt)).toList())
        }
        return results
    }

    private fun textFeeds(enc: Encoded): Map<String, Tensor> {
        val rows = enc.ids.size
        val cols = enc.ids.firstOrNull()?.size ?: 0
        val flat = { rowsOf: Array<LongArray> -> Tensor.I64(intArrayOf(rows, cols), LongArray(rows * cols) { rowsOf[it / cols][it % cols] }) }
        val names = manifest.component("text_encoder").inputs.map { it.name }.toSet()
        return linkedMapOf<String, Tensor>("input_ids" to flat(enc.ids), "attention_mask" to flat(enc.attentionMask))
            .filterKeys { it in names }
    }

    /** A stage whose engine code raised: failed with the error's line (a broken bundle still stops the replay). */
    private fun guarded(name: String, body: () -> StageResult): StageResult = try {
        body()
    } catch (e: BundleError) {
        throw e
    } catch (e: PocketVlmException) {
        StageResult(name, StageStatus.FAILED, null, null, e.line)
    }
}

/**
 * Running a bundle's components over a [SessionFactory], the steps the replay takes and the app's pipelines can
 * share: a component fed the inputs it declares, the vision side in order, its constant inputs for the fixed image.
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
}

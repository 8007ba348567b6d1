package dev.pocketvlm.engine

/**
 * The golden self-test: the bundle's golden record replayed stage by stage on this engine. With [sessions] (on the
 * phone) every stage runs, each on this engine's own outputs of the stage before. Without (on a JVM without the
 * bundle's runtime) the stages that need a model are reported as not run, never as passed: what runs is
 * preprocessing, the prompt's ids and positions (from the manifest's `app` block and the tokenizer), a dual
 * encoder's text ids, and the generation loop driven by the record's teacher-forced logits ([RecordedLogitsDecoder]),
 * which must give the recorded ids, stop reason and text.
 *
 * The stages are the pipelines' own steps ([VlmSteps], [ZeroShotSteps]), so the replay checks the code the app runs.
 * [sessions] are lent: the replay closes nothing (the caller closes its factory).
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
        val steps = VlmSteps(bundle, tokenizer)
        val decoder = sessions?.textDecoder()  // lent by the factory; the same one for both decoder stages
        val results = mutableListOf<StageResult>()
        val feeds = steps.visionFeeds(image)
        results += GoldenChecks.tensorStage(record.tensors("preprocess"), feeds)

        val visionStage = record.tensors("vision_encoder")
        var embeds: Map<String, Tensor.F32>? = null
        results += if (sessions == null) {
            StageResult.notRun(visionStage.name, "needs the ${manifest.visionStages.joinToString(" + ")} model: no " +
                "sessions on this machine")
        } else guarded(visionStage.name) {
            embeds = steps.encodeVision(sessions, feeds)
            GoldenChecks.tensorStage(visionStage, embeds!!)
        }

        val recordedPrompt = record.prompt()
        var prompt: Prompt? = null
        results += promptStage(steps, recordedPrompt) { prompt = it }
        val decoderPrompt = prompt ?: recordedPrompt.asPrompt()
        val promptSource = if (prompt != null) "engine" else "record"

        val decoderStage = record.decoder()
        decoderStage.checkVocab(manifest.decoder!!.vocabSize)
        results += if (decoder == null) {
            StageResult.notRun("text_decoder", "needs the text_decoder model: no sessions on this machine")
        } else guarded("text_decoder") {
            val forced = decoderStage.steps.map { it.tokenId }
            val run = steps.generate(decoder, decoderPrompt, embeds, greedy(forced.size), forced = forced).result
            GoldenChecks.teacherForced(decoderStage, run.logits ?: emptyList())
        }

        results += generationStage(steps, decoder, decoderStage, decoderPrompt, promptSource, embeds)
        return results
    }

    private fun promptStage(steps: VlmSteps, stage: PromptStage, built: (Prompt) -> Unit): StageResult {
        if (manifest.app == null) return StageResult.notRun("prompt", "the manifest has no app block (the prompt's " +
            "ids and positions come from it on a phone; re-export the bundle with a pocketvlm version that writes it)")
        return guarded("prompt") {
            val prompt = steps.promptBuilder.build(stage.prompt, true)
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

    /** Greedy generation on the phone's [decoder], or (null) on the record's teacher-forced logits. */
    private fun generationStage(steps: VlmSteps, decoder: TextDecoder?, decoderStage: DecoderStage, prompt: Prompt,
                                promptSource: String, embeds: Map<String, Tensor.F32>?): StageResult =
        guarded("generation") {
            val stage = record.generation()
            val replay = if (decoder == null) {
                RecordedLogitsDecoder(decoderStage.steps, manifest.decoder!!.vocabSize, prompt.ids.size)
            } else null
            val used = decoder ?: replay!!
            val answer = steps.generate(used, prompt, embeds, greedy(stage.maxNewTokens))
            val ids = answer.result.tokenIds.toList()
            val how = (if (replay != null) "driven by the record's teacher-forced logits (no model)"
            else "greedy on ${used.backend}") + ", prompt from the $promptSource"
            val problems = replay?.feedProblems(prompt, ids) ?: emptyList()
            val result = GoldenChecks.generation(stage, ids, answer.text, answer.result.stopReason,
                decoderStage.nearTies(), how, problems)
            StageResult(result.name, result.status, result.error, result.limit, result.detail,
                result.figures + mapOf("decoder" to used.backend, "prompt_from" to promptSource))
        }

    /** Greedy, as the record's run (the Python runtime's default config: no extra stop tokens). */
    private fun greedy(maxNewTokens: Int) = GenerationConfig(maxNewTokens = maxNewTokens, doSample = false)

    // -- dual encoder: preprocess, image_encoder, text, text_encoder, scores --------------------------------------
    private fun dual(image: Rgba): List<StageResult> {
        val steps = ZeroShotSteps(bundle, tokenizer)
        val results = mutableListOf<StageResult>()
        val pixels = steps.pixelValues(image)
        results += GoldenChecks.tensorStage(record.tensors("preprocess"), mapOf("pixel_values" to pixels))
        val imageStage = record.tensors("image_encoder")
        var imageEmbeds: Tensor.F32? = null
        results += if (sessions == null) StageResult.notRun(imageStage.name, "needs the image_encoder model: no " +
            "sessions on this machine")
        else guarded(imageStage.name) {
            val out = steps.encodeImage(sessions, pixels)
            imageEmbeds = out["image_embeds"]
            GoldenChecks.tensorStage(imageStage, out)
        }

        val text = record.text()
        val scorer = steps.scorer
        var encoded: Encoded? = null
        results += guarded("text") {
            val prompts = scorer.prompts(text.labels)
            val enc = steps.tokenize(prompts)
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
            val out = steps.encodeText(sessions, enc)
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

    /** A stage whose engine code raised: failed with the error's line (a broken bundle still stops the replay). */
    private fun guarded(name: String, body: () -> StageResult): StageResult = try {
        body()
    } catch (e: BundleError) {
        throw e
    } catch (e: PocketVlmException) {
        StageResult(name, StageStatus.FAILED, null, null, e.line)
    }
}

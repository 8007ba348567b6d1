package dev.pocketvlm.engine

/**
 * A bundle's golden record (`golden.json`, schema `runtime/schema/golden.schema.json`, written by the exporter from
 * the Python runtime's run of the bundle), read whole when the self-test starts: every field the replay uses is read
 * here and checked against the tensor it describes, so a record edited by hand is one [BundleError] naming the field
 * (as `runtime/selftest.py` reads it), never an index error in the middle of a stage.
 */
class GoldenRecord(root: JsonNode) {
    val version: Int = root["golden_version"].int()
    val task: String = root["task"].string()
    val family: String = root["family"].string()
    val target: String = root["target"].string()
    val quantization: String = root["quantization"].string()
    val recordedWith: String = root["recorded_with"].string()
    val imageFile: String = root["image"]["file"].string()
    val imageWidth: Int = root["image"]["width"].int()
    val imageHeight: Int = root["image"]["height"].int()
    private val stageNodes: List<JsonNode> = root["stages"].list()

    /** Stage names in the record's order (the schema fixes the first five per task). */
    val stageNames: List<String> = stageNodes.map { it["name"].string() }

    init {
        if (version != GOLDEN_VERSION) {
            throw BundleError("golden record version $version is not $GOLDEN_VERSION",
                "use the app version that matches the pocketvlm version that exported the bundle")
        }
        val expected = STAGES[task] ?: throw BundleError("golden record task '$task' is not one this app replays",
            "re-export the bundle")
        if (stageNames.take(expected.size) != expected) {
            throw BundleError("golden record stages are $stageNames, expected $expected first for '$task'",
                "re-export the bundle; never edit golden.json by hand")
        }
        if (imageWidth < 1 || imageHeight < 1) throw BundleError("golden image size ${imageWidth}x$imageHeight",
            "re-export the bundle")
    }

    private fun node(name: String): JsonNode = stageNodes[stageNames.indexOf(name)]

    fun tensors(name: String): TensorStage = TensorStage(node(name))
    fun prompt(): PromptStage = PromptStage(node("prompt"))
    fun decoder(): DecoderStage = DecoderStage(node("text_decoder"))
    fun generation(): GenerationStage = GenerationStage(node("generation"))
    fun text(): TextStage = TextStage(node("text"))
    fun scores(): ScoresStage = ScoresStage(node("scores"))

    companion object {
        const val GOLDEN_VERSION = 1
        val VLM_STAGES = listOf("preprocess", "vision_encoder", "prompt", "text_decoder", "generation")
        val DUAL_STAGES = listOf("preprocess", "image_encoder", "text", "text_encoder", "scores")
        private val STAGES = mapOf(Manifest.VLM_TASK to VLM_STAGES, Manifest.ZERO_SHOT_TASK to DUAL_STAGES)

        /** The bundle's record (its sha256 checked by [Bundle.read]); one that does not fit the manifest is refused. */
        fun read(bundle: Bundle): GoldenRecord {
            val ref = bundle.manifest.golden ?: throw BundleError(
                "${bundle.source.label} carries no golden record (its manifest has no 'golden' entry)",
                "re-export the bundle with a pocketvlm version that writes golden.json")
            val record = GoldenRecord(Json.read(bundle.readText(ref.file), "golden record"))
            val m = bundle.manifest
            if (record.task != m.task || record.family != m.family || record.target != m.target) {
                throw BundleError("golden record is of a ${record.family} ${record.target} ${record.task} bundle, the " +
                    "manifest says ${m.family} ${m.target} ${m.task}", "re-export the bundle")
            }
            if (record.imageFile != ref.image) {
                throw BundleError("golden record names image '${record.imageFile}', the manifest '${ref.image}'",
                    "re-export the bundle")
            }
            return record
        }
    }
}

/** The tolerances of a stage (`tolerance`); which ones a stage needs is checked where it is used. */
class Tolerance(node: JsonNode?) {
    val maxAbs: Double? = node?.opt("max_abs")?.double()
    val maxAbsRelative: Double? = node?.opt("max_abs_relative")?.double()
    val logitMaxAbsRelative: Double? = node?.opt("logit_max_abs_relative")?.double()
    val nearTieMarginRelative: Double? = node?.opt("near_tie_margin_relative")?.double()
    private val path = node?.path ?: "tolerance"

    init {
        for (v in listOfNotNull(maxAbs, maxAbsRelative, logitMaxAbsRelative, nearTieMarginRelative)) {
            if (v.isNaN() || v < 0) throw BundleError("golden record field '$path' holds a negative tolerance $v",
                "re-export the bundle; never edit golden.json by hand")
        }
    }

    fun need(value: Double?, key: String): Double = value
        ?: throw BundleError("golden record field '$path.$key' is missing", "re-export the bundle")
}

/**
 * A tensor as the record summarises it: an int tensor stored whole ([values]), or a float tensor's [mean], [std]
 * and values at flat indices ([sampleIndex] / [sampleValue]). Checked against its shape when read.
 */
class TensorSummary(node: JsonNode) {
    val shape: IntArray = node["shape"].ints()
    val dtype: String = node["dtype"].string()
    val values: LongArray? = node.opt("values")?.longs()
    val mean: Double? = node.opt("mean")?.double()
    val std: Double? = node.opt("std")?.double()
    val sampleIndex: IntArray = node.opt("samples")?.get("index")?.ints() ?: IntArray(0)
    val sampleValue: DoubleArray = node.opt("samples")?.get("value")?.doubles() ?: DoubleArray(0)

    /** Elements of a tensor of [shape]. */
    val size: Long = shape.fold(1L) { a, d -> a * d }

    init {
        val fix = "re-export the bundle; never edit golden.json by hand"
        if (shape.any { it < 0 }) throw BundleError("golden record field '${node.path}.shape' has a negative dim", fix)
        if (values != null) {
            if (values.size.toLong() != size) {
                throw BundleError("golden record field '${node.path}.values' holds ${values.size} values for a tensor " +
                    "of $size", fix)
            }
        } else {
            if (mean == null || node.opt("samples") == null) {
                throw BundleError("golden record field '${node.path}' has neither values nor mean and samples", fix)
            }
            if (sampleIndex.size != sampleValue.size || sampleIndex.isEmpty() || sampleIndex.any { it < 0 || it >= size }) {
                throw BundleError("golden record field '${node.path}.samples' does not fit a tensor of $size elements " +
                    "(${sampleIndex.size} indices, ${sampleValue.size} values)", fix)
            }
        }
    }
}

/** preprocess, vision_encoder, image_encoder, text_encoder: tensors compared within the tolerance. */
class TensorStage(node: JsonNode) {
    val name: String = node["name"].string()
    val tensors: Map<String, TensorSummary> = node["tensors"].obj().mapValues { TensorSummary(it.value) }
    val tolerance = Tolerance(node["tolerance"])

    init {
        if (tensors.isEmpty()) throw BundleError("golden record stage '$name' has no tensors", "re-export the bundle")
        if (tolerance.maxAbs == null && tolerance.maxAbsRelative == null) {
            throw BundleError("golden record stage '$name' has no max_abs or max_abs_relative tolerance",
                "re-export the bundle")
        }
    }
}

class PromptStage(node: JsonNode) {
    val prompt: String = node["prompt"].string()
    val text: String = node["text"].string()
    val inputIds: LongArray = node["input_ids"].longs()
    val positionIds = TensorSummary(node["position_ids"])
    val ropeDelta: Long = node["rope_delta"].long()

    init {
        val n = inputIds.size
        val fits = positionIds.shape.contentEquals(intArrayOf(1, n)) || positionIds.shape.contentEquals(intArrayOf(3, 1, n))
        if (positionIds.values == null || !fits) {
            throw BundleError("golden record prompt position_ids ${positionIds.shape.toList()} do not fit $n input " +
                "ids (expected [1, $n] or [3, 1, $n], stored whole)", "re-export the bundle")
        }
    }

    /** The recorded prompt as the generation loop takes it (when the engine's own prompt stage could not run). */
    fun asPrompt(): Prompt = Prompt(inputIds.copyOf(), Tensor.I64(positionIds.shape.copyOf(), positionIds.values!!.copyOf()),
        ropeDelta)
}

/** One teacher-forced step: the token fed next and the recorded top-k (id, logit), largest first. */
class DecoderStep(val tokenId: Int, val topIds: IntArray, val topLogits: DoubleArray)

class DecoderStage(node: JsonNode) {
    val steps: List<DecoderStep> = node["steps"].list().map { step ->
        val top = step["top_k"].list()
        if (top.size < 2 || top.any { it.list().size != 2 }) {
            throw BundleError("golden record field '${step.path}.top_k' is not a list of (id, logit) pairs",
                "re-export the bundle")
        }
        DecoderStep(step["token_id"].int(), top.map { it[0].int() }.toIntArray(),
            top.map { it[1].double() }.toDoubleArray())
    }
    val tolerance = Tolerance(node["tolerance"])
    val logitLimit: Double = tolerance.need(tolerance.logitMaxAbsRelative, "logit_max_abs_relative")
    val nearTie: Double = tolerance.need(tolerance.nearTieMarginRelative, "near_tie_margin_relative")

    init {
        if (steps.isEmpty()) throw BundleError("golden record text_decoder stage has no steps", "re-export the bundle")
    }

    /** Checks every recorded id against the decoder's vocabulary (a hand-edited id outside it is the record's fault). */
    fun checkVocab(vocab: Int) {
        steps.forEachIndexed { i, s ->
            if (s.tokenId !in 0 until vocab || s.topIds.any { it !in 0 until vocab }) {
                throw BundleError("golden record step $i names token ids outside the vocabulary of $vocab",
                    "re-export the bundle; never edit golden.json by hand")
            }
        }
    }

    /** Steps whose recorded top-1 minus top-2 margin is at most near_tie_margin_relative x the largest |logit|. */
    fun nearTies(): Set<Int> = steps.indices.filter { i ->
        val sorted = steps[i].topLogits.sortedArrayDescending()
        sorted[0] - sorted[1] <= nearTie * scale(steps[i])
    }.toSet()

    fun scale(step: DecoderStep): Double = maxOf(step.topLogits.maxOf { Math.abs(it) }, 1e-12)
}

class GenerationStage(node: JsonNode) {
    val maxNewTokens: Int = node["max_new_tokens"].int()
    val tokenIds: IntArray = node["token_ids"].ints()
    val text: String = node["text"].string()
    val stopReason: String = node["stop_reason"].string()

    init {
        if (maxNewTokens < 1 || tokenIds.size > maxNewTokens || stopReason !in STOP_REASONS) {
            throw BundleError("golden record generation stage is inconsistent (max_new_tokens $maxNewTokens, " +
                "${tokenIds.size} tokens, stop '$stopReason')", "re-export the bundle; never edit golden.json by hand")
        }
    }

    companion object {
        val STOP_REASONS = setOf("eos", "stop_token", "max_new_tokens")
    }
}

class TextStage(node: JsonNode) {
    val labels: List<String> = node["labels"].strings()
    val prompts: List<String> = node["prompts"].strings()
    val inputIds: List<LongArray> = node["input_ids"].list().map { it.longs() }
    val attentionMask: List<LongArray>? = node.opt("attention_mask")?.list()?.map { it.longs() }

    init {
        if (labels.isEmpty() || prompts.size != labels.size || inputIds.size != labels.size ||
            (attentionMask != null && attentionMask.size != labels.size)) {
            throw BundleError("golden record text stage has ${labels.size} labels, ${prompts.size} prompts and " +
                "${inputIds.size} id rows", "re-export the bundle; never edit golden.json by hand")
        }
    }
}

class ScoresStage(node: JsonNode) {
    val probabilities: List<DoubleArray> = node["probabilities"].list().map { it.doubles() }
    val limit: Double = Tolerance(node["tolerance"]).let { it.need(it.maxAbs, "max_abs") }
}

/** Whether a stage ran here, and if it did, its verdict. */
enum class StageStatus(val json: String) { PASSED("passed"), FAILED("failed"), NOT_RUN("not_run") }

/**
 * One stage of the replay: [status] (a stage that did not run is never passed), the error measured and its limit
 * (null when not run or not a number), one line of [detail], and the [figures] behind it (written to the report).
 */
class StageResult(val name: String, val status: StageStatus, val error: Double?, val limit: Double?,
                  val detail: String, val figures: Map<String, Any?> = emptyMap()) {
    val ran: Boolean get() = status != StageStatus.NOT_RUN

    fun line(): String = "${status.json.uppercase().replace('_', ' ')} $name: $detail"

    fun toJson(): Map<String, Any?> = linkedMapOf("name" to name, "status" to status.json, "ran" to ran,
        "error" to error, "limit" to limit, "detail" to detail) + figures

    companion object {
        fun notRun(name: String, why: String) = StageResult(name, StageStatus.NOT_RUN, null, null, why)

        fun of(name: String, pass: Boolean, error: Double?, limit: Double?, detail: String,
               figures: Map<String, Any?> = emptyMap()) =
            StageResult(name, if (pass) StageStatus.PASSED else StageStatus.FAILED, error, limit, detail, figures)
    }
}

/**
 * The self-test's verdict: [passed] when at least one stage ran and every stage that ran passed. [mode] says where
 * it ran ("device": every stage with the bundle's models; "jvm": the stages that need no model).
 */
class GoldenReport(val record: GoldenRecord, val mode: String, val stages: List<StageResult>) {
    val ran: List<String> get() = stages.filter { it.ran }.map { it.name }
    val notRun: List<String> get() = stages.filter { !it.ran }.map { it.name }
    val failedStage: String? get() = stages.firstOrNull { it.status == StageStatus.FAILED }?.name
    val passed: Boolean get() = ran.isNotEmpty() && failedStage == null

    fun toJson(): Map<String, Any?> = linkedMapOf(
        "pass" to passed, "mode" to mode, "failed_stage" to failedStage, "ran" to ran, "not_run" to notRun,
        "stages" to stages.map { it.toJson() },
        "golden" to linkedMapOf("task" to record.task, "family" to record.family, "target" to record.target,
            "quantization" to record.quantization, "recorded_with" to record.recordedWith))
}

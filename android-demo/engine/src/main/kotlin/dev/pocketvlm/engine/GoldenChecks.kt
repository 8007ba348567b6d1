package dev.pocketvlm.engine

/**
 * The golden record's comparisons, the same rules as `runtime/selftest.py` and `web-demo/src/engine/golden.ts`:
 * float tensors at the recorded sample indices and by their mean (error = max |engine - recorded|, limit
 * `max_abs_relative` x the largest |sample| or `max_abs`), int tensors and id lists exactly, the decoder's logits at
 * the recorded top-k ids over the largest |recorded logit| with its argmax equal to the token unless a near tie, and
 * greedy tokens equal or first different at a recorded near tie.
 */
internal object GoldenChecks {
    /** One tensor's comparison. */
    class Check(val pass: Boolean, val error: Double, val limit: Double, val detail: String)

    fun tensor(name: String, ours: Tensor?, want: TensorSummary, tolerance: Tolerance): Check {
        if (ours == null) return Check(false, Double.POSITIVE_INFINITY, 0.0, "$name: this engine produced no '$name'")
        if (!ours.shape.contentEquals(want.shape)) {
            return Check(false, Double.POSITIVE_INFINITY, 0.0,
                "$name: shape ${ours.shape.toList()} != recorded ${want.shape.toList()}")
        }
        val values = doubles(ours)
        want.values?.let { recorded ->
            val wrong = recorded.indices.filter { values[it] != recorded[it].toDouble() }
            val detail = if (wrong.isEmpty()) "$name: ${recorded.size} values equal" else "$name: ${wrong.size} of " +
                "${recorded.size} values differ (first at ${wrong[0]}: ${fmt(values[wrong[0]])} != ${recorded[wrong[0]]})"
            return Check(wrong.isEmpty(), wrong.size.toDouble(), 0.0, detail)
        }
        var error = 0.0
        var worst = -1
        want.sampleIndex.forEachIndexed { k, index ->
            val d = Math.abs(values[index] - want.sampleValue[k])
            if (d.isNaN() || d > error) { error = if (d.isNaN()) Double.POSITIVE_INFINITY else d; worst = index }
        }
        val mean = values.sum() / maxOf(values.size, 1)
        val meanError = Math.abs(mean - want.mean!!).let { if (it.isNaN()) Double.POSITIVE_INFINITY else it }
        error = maxOf(error, meanError)
        val scale = maxOf(want.sampleValue.maxOf { Math.abs(it) }, 1e-12)
        val (limit, kind) = when {
            tolerance.maxAbsRelative != null ->
                tolerance.maxAbsRelative * scale to "max_abs_relative ${tolerance.maxAbsRelative} x ${fmt(scale)}"
            else -> tolerance.maxAbs!! to "max_abs"
        }
        val where = if (worst >= 0) "worst at flat index $worst" else "every sample equal"
        return Check(error <= limit, error, limit, "$name: max |error| ${fmt(error)} over ${want.sampleIndex.size} " +
            "samples + mean ($where), limit ${fmt(limit)} ($kind)")
    }

    /** The tensors of one stage against [ours]: fails if any fails; error and limit of the worst (error / limit). */
    fun tensorStage(stage: TensorStage, ours: Map<String, Tensor>, figures: Map<String, Any?> = emptyMap()): StageResult {
        val checks = stage.tensors.map { (name, want) -> name to tensor(name, ours[name], want, stage.tolerance) }
        val worst = checks.maxByOrNull { (_, c) ->
            if (!c.pass) Double.POSITIVE_INFINITY else c.error / maxOf(c.limit, 1e-30)
        }!!.second
        val perTensor = checks.associate { (name, c) ->
            name to linkedMapOf("pass" to c.pass, "max_abs_error" to finite(c.error), "limit" to c.limit)
        }
        return StageResult.of(stage.name, checks.all { it.second.pass }, finite(worst.error), worst.limit,
            checks.joinToString("; ") { it.second.detail },
            linkedMapOf<String, Any?>("max_abs_error" to finite(worst.error), "tensors" to perTensor) + figures)
    }

    /** Equal lists: (what, ours, recorded) triples; the detail names the first difference of each that differs. */
    fun exact(name: String, checks: List<Triple<String, List<Any?>, List<Any?>>>,
              figures: Map<String, Any?> = emptyMap()): StageResult {
        val wrong = checks.mapNotNull { (what, ours, want) -> firstDifference(ours, want)?.let { Triple(what, it, ours to want) } }
        val detail = if (wrong.isEmpty()) {
            checks.joinToString("; ") { if (it.second.size == 1) "${it.first} equal" else "${it.first}: ${it.second.size} equal" }
        }
        else wrong.joinToString("; ") { (what, at, lists) ->
            "$what differs at $at (${lists.first.getOrNull(at)} != recorded ${lists.second.getOrNull(at)}; " +
                "${lists.first.size} vs ${lists.second.size} items)"
        }
        val equal = checks.associate { (what, ours, want) -> "${what}_equal" to (ours == want) }
        return StageResult.of(name, wrong.isEmpty(), wrong.size.toDouble(), 0.0, detail, equal + figures)
    }

    fun firstDifference(a: List<Any?>, b: List<Any?>): Int? {
        for (i in 0 until minOf(a.size, b.size)) if (a[i] != b[i]) return i
        return if (a.size == b.size) null else minOf(a.size, b.size)
    }

    /** Teacher-forced logits ([logits][i] after feeding step i's prefix) against the recorded steps. */
    fun teacherForced(stage: DecoderStage, logits: List<FloatArray>): StageResult {
        val nearTies = stage.nearTies()
        var error = 0.0
        var worstStep = -1
        val wrongArgmax = mutableListOf<Int>()
        stage.steps.forEachIndexed { i, step ->
            val ours = logits.getOrNull(i) ?: return@forEachIndexed
            if (step.topIds.any { it !in ours.indices } || step.tokenId !in ours.indices) {
                throw BundleError("golden record step $i names token ids outside the vocabulary of ${ours.size}",
                    "re-export the bundle; never edit golden.json by hand")
            }
            val scale = stage.scale(step)
            var e = 0.0
            for (k in step.topIds.indices) {
                val d = Math.abs(ours[step.topIds[k]] - step.topLogits[k]) / scale
                e = if (d.isNaN()) Double.POSITIVE_INFINITY else maxOf(e, d)
            }
            if (e > error) { error = e; worstStep = i }
            if (i !in nearTies && Sampler.argmax(ours) != step.tokenId) wrongArgmax += i
        }
        val missing = stage.steps.size - logits.size
        val pass = missing == 0 && error <= stage.logitLimit && wrongArgmax.isEmpty()
        val detail = "${stage.steps.size} teacher-forced steps: max |logit error| / max |logit| ${fmt(error)} (step " +
            "$worstStep), limit ${fmt(stage.logitLimit)}" +
            (if (wrongArgmax.isNotEmpty()) "; argmax differs at steps $wrongArgmax" else "") +
            (if (nearTies.isNotEmpty()) "; near ties at steps ${nearTies.sorted()}" else "") +
            (if (missing != 0) "; the decoder gave ${logits.size} logit rows for ${stage.steps.size} steps" else "")
        return StageResult.of("text_decoder", pass, finite(error), stage.logitLimit, detail,
            linkedMapOf("steps" to stage.steps.size, "argmax_differs_at" to wrongArgmax, "near_ties" to nearTies.sorted()))
    }

    /**
     * Greedy generation against the record: the ids equal (or first different at a recorded near tie, where the
     * rest may go either way), and when they are equal the stop reason and the decoded text equal too.
     */
    fun generation(stage: GenerationStage, ids: List<Int>, text: String, stopReason: String, nearTies: Set<Int>,
                   how: String, problems: List<String> = emptyList()): StageResult {
        val recorded = stage.tokenIds.toList()
        val at = firstDifference(ids, recorded)
        val onTie = at != null && at in nearTies
        val sameStop = stopReason == stage.stopReason
        val sameText = text == stage.text
        val pass = problems.isEmpty() && (if (at == null) sameStop && sameText else onTie)
        val detail = buildString {
            append(how).append(": ")
            if (at == null) {
                append("${ids.size} greedy tokens equal the recorded ones; stop $stopReason (recorded ${stage.stopReason})")
                append(if (sameText) "; text equal" else "; text differs: ${Json.write(text)} != recorded ${Json.write(stage.text)}")
            } else {
                append("greedy tokens first differ at step $at (${ids.getOrNull(at)} != recorded ${recorded.getOrNull(at)})")
                append(if (onTie) ", a recorded near tie" else ", not a recorded near tie")
            }
            problems.forEach { append("; ").append(it) }
        }
        return StageResult.of("generation", pass, if (at == null) 0.0 else (ids.size - at).toDouble(), 0.0, detail,
            linkedMapOf("token_ids" to ids, "recorded_token_ids" to recorded, "token_ids_equal" to (at == null),
                "stop_reason" to stopReason, "recorded_stop_reason" to stage.stopReason, "text" to text,
                "recorded_text" to stage.text))
    }

    /** Label probabilities against the record, max |error| within `max_abs`. */
    fun scores(stage: ScoresStage, ours: List<DoubleArray>): StageResult {
        var error = 0.0
        val shapeOk = ours.size == stage.probabilities.size &&
            ours.indices.all { ours[it].size == stage.probabilities[it].size }
        if (!shapeOk) error = Double.POSITIVE_INFINITY
        else stage.probabilities.forEachIndexed { i, row ->
            row.forEachIndexed { j, p ->
                val d = Math.abs(ours[i][j] - p)
                error = if (d.isNaN()) Double.POSITIVE_INFINITY else maxOf(error, d)
            }
        }
        return StageResult.of("scores", error <= stage.limit, finite(error), stage.limit,
            "probabilities: max |error| ${fmt(error)} over ${stage.probabilities.sumOf { it.size }}, limit ${fmt(stage.limit)}",
            linkedMapOf("probabilities" to ours.map { it.toList() }))
    }

    private fun doubles(t: Tensor): DoubleArray = when (t) {
        is Tensor.F32 -> DoubleArray(t.data.size) { t.data[it].toDouble() }
        is Tensor.I64 -> DoubleArray(t.data.size) { t.data[it].toDouble() }
    }

    /** JSON has no infinity: an unbounded error is written as null. */
    private fun finite(v: Double): Double? = if (v.isNaN() || v.isInfinite()) null else v

    fun fmt(v: Double): String = when {
        v.isNaN() || v.isInfinite() -> v.toString()
        v == 0.0 || Math.abs(v) >= 1e-3 -> String.format(java.util.Locale.ROOT, "%.4g", v)
        else -> String.format(java.util.Locale.ROOT, "%.2e", v)
    }
}

/**
 * A [TextDecoder] without a model, for the replay on a machine without the bundle's runtime: it returns, after the
 * prompt and after each fed token, the golden record's teacher-forced top-k logits of that step with -inf at every
 * other id. Driven by the engine's own generation loop, it checks the loop (argmax, stop rules, positions it feeds)
 * and the detokenizer against the record, never the decoder: the text_decoder stage needs the model.
 */
class RecordedLogitsDecoder(private val steps: List<DecoderStep>, private val vocab: Int,
                            private val promptTokens: Int) : TextDecoder {
    override val backend: String = "golden record logits (no model)"
    private var capacity = 0
    private val fedIds = ArrayList<Long>()
    private val fedPositions = ArrayList<LongArray>()  // one per fed token: its position on each axis
    override val filled: Int get() = fedIds.size

    init {
        if (vocab < 2) throw BundleError("decoder vocabulary of $vocab", "re-export the bundle")
        steps.forEachIndexed { i, s ->
            if (s.topIds.any { it !in 0 until vocab }) {
                throw BundleError("golden record step $i names token ids outside the vocabulary of $vocab",
                    "re-export the bundle; never edit golden.json by hand")
            }
        }
    }

    override fun reset(capacity: Int) {
        this.capacity = capacity
        fedIds.clear()
        fedPositions.clear()
    }

    override fun step(ids: LongArray, positions: Tensor.I64, imageEmbeds: Map<String, Tensor.F32>?): FloatArray {
        val n = ids.size
        val axes = if (n == 0) 0 else positions.size / n
        if (n == 0 || positions.size != axes * n || axes !in listOf(1, 3)) {
            throw InferenceError("the generation loop fed $n ids with positions ${positions.shape.toList()}",
                "feed [1, n] or [3, 1, n] positions for n ids")
        }
        if (fedIds.size + n > capacity) {
            throw InferenceError("the generation loop fed ${fedIds.size + n} tokens into a sequence of $capacity",
                "reset the decoder with the capacity the sequence needs")
        }
        for (i in 0 until n) {
            fedIds += ids[i]
            fedPositions += LongArray(axes) { positions.data[it * n + i] }
        }
        val index = fedIds.size - promptTokens
        if (index < 0) {
            throw InferenceError("the generation loop asked for logits after ${fedIds.size} of the prompt's " +
                "$promptTokens tokens; the golden record has logits only after the whole prompt",
                "feed the prompt in one step (the decoders chunk it themselves)")
        }
        if (index >= steps.size) {
            throw InferenceError("the generation loop asked for decoder step ${index + 1}; the golden record has " +
                "${steps.size}", "stop at the recorded stop reason (the record ends there)")
        }
        val logits = FloatArray(vocab) { Float.NEGATIVE_INFINITY }
        val step = steps[index]
        for (k in step.topIds.indices) logits[step.topIds[k]] = step.topLogits[k].toFloat()
        return logits
    }

    /**
     * What the loop fed against what it should have: [prompt] (its ids and positions) and then each generated
     * token but the last at position `i + delta` on every axis. Returns the differences (empty when none).
     */
    fun feedProblems(prompt: Prompt, generated: List<Int>): List<String> {
        val problems = mutableListOf<String>()
        val n = prompt.ids.size
        val wantIds = prompt.ids.toList() + generated.dropLast(1).map { it.toLong() }
        val at = GoldenChecks.firstDifference(fedIds, wantIds)
        if (at != null) {
            problems += "the loop fed token ${fedIds.getOrNull(at)} at sequence index $at, expected " +
                "${wantIds.getOrNull(at)} (${fedIds.size} tokens fed, ${wantIds.size} expected)"
        }
        val axes = prompt.positions.size / maxOf(n, 1)
        for (i in 0 until minOf(fedPositions.size, wantIds.size)) {
            val want = LongArray(axes) { axis -> if (i < n) prompt.positions.data[axis * n + i] else i + prompt.delta }
            if (!fedPositions[i].contentEquals(want)) {
                problems += "the loop fed sequence index $i at position ${fedPositions[i].toList()}, expected ${want.toList()}"
                break
            }
        }
        return problems
    }
}

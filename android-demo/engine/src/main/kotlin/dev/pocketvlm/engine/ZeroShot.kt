package dev.pocketvlm.engine

/** One label's score for one image. */
class LabelScore(val label: String, val score: Double)

/**
 * Zero-shot classification over a dual encoder's embeddings, as the Python runtime's `runtime/dual_encoder.py`:
 * L2-normalised image and text embeddings, logits `logit_scale * cosine + logit_bias`, then a softmax over the labels
 * (CLIP) or a sigmoid per label (SigLIP). Computed in float64 from the encoders' float32 outputs.
 */
class ZeroShotScorer(val activation: String, val logitScale: Double, val logitBias: Double = 0.0,
                     val promptTemplate: String = "{}") {
    constructor(spec: ZeroShotSpec) : this(spec.activation, spec.logitScale, spec.logitBias ?: 0.0, spec.promptTemplate)

    init {
        if (activation != "softmax" && activation != "sigmoid") {
            throw BundleError("zero-shot activation '$activation' is not supported by this app (softmax or sigmoid)",
                "update the app")
        }
        if (!logitScale.isFinite() || !logitBias.isFinite()) {
            throw BundleError("zero-shot logit_scale $logitScale / logit_bias $logitBias are not finite",
                "re-export the bundle")
        }
    }

    /** The labels trimmed; empty, blank or repeated labels are an [InputError]. */
    fun labels(raw: List<String>): List<String> {
        val labels = raw.map { it.trim() }
        if (labels.isEmpty() || labels.any { it.isEmpty() }) {
            throw InputError("labels must be non-empty", "pass labels like 'a cat, a dog'")
        }
        if (labels.toSet().size != labels.size) throw InputError("labels contain duplicates", "pass each label once")
        return labels
    }

    /** The text encoder's inputs: [template] (default: the bundle's) with `{}` replaced by each label. */
    fun prompts(labels: List<String>, template: String? = null): List<String> {
        val chosen = template ?: promptTemplate
        if ("{}" !in chosen) {
            throw InputError("prompt template '$chosen' has no '{}' placeholder",
                "use a template like 'a photo of {}.'")
        }
        return labels.map { chosen.replace("{}", it) }
    }

    /** `[images][texts]` logits from the encoders' unnormalised features (`[images, dim]`, `[texts, dim]`). */
    fun logits(imageFeatures: Tensor.F32, textFeatures: Tensor.F32): Array<DoubleArray> {
        val images = normalize(imageFeatures, "image")
        val texts = normalize(textFeatures, "text")
        if (images.isNotEmpty() && texts.isNotEmpty() && images[0].size != texts[0].size) {
            throw BundleError("image embeddings have ${images[0].size} values but text embeddings ${texts[0].size}",
                "re-export the bundle: both towers must project to the same size")
        }
        return Array(images.size) { i ->
            DoubleArray(texts.size) { j ->
                var dot = 0.0
                for (k in images[i].indices) dot += images[i][k] * texts[j][k]
                dot * logitScale + logitBias
            }
        }
    }

    /** Softmax over each image's row (CLIP) or a sigmoid per logit (SigLIP). */
    fun probabilities(logits: Array<DoubleArray>): Array<DoubleArray> = Array(logits.size) { i ->
        val row = logits[i]
        if (activation == "sigmoid") {
            DoubleArray(row.size) { 1.0 / (1.0 + Math.exp(-row[it])) }
        } else {
            val max = row.maxOrNull() ?: 0.0
            val shifted = DoubleArray(row.size) { Math.exp(row[it] - max) }
            val sum = shifted.sum()
            DoubleArray(row.size) { shifted[it] / sum }
        }
    }

    /** Per image, the labels by score, highest first (ties keep the labels' order). */
    fun classify(imageFeatures: Tensor.F32, textFeatures: Tensor.F32, labels: List<String>): List<List<LabelScore>> {
        val names = labels(labels)
        if (textFeatures.shape.isEmpty() || textFeatures.shape[0] != names.size) {
            throw InputError("${names.size} labels but text embeddings of shape ${textFeatures.shape.toList()}",
                "encode one prompt per label")
        }
        return probabilities(logits(imageFeatures, textFeatures)).map { row ->
            row.indices.sortedByDescending { row[it] }.map { LabelScore(names[it], row[it]) }
        }
    }

    companion object {
        /** Each row of `[rows, dim]` divided by its L2 norm (at least 1e-12, so a zero row stays zero). */
        fun normalize(features: Tensor.F32, what: String = "the"): Array<DoubleArray> {
            if (features.shape.size != 2 || features.shape[1] < 1) {
                throw InferenceError("$what embeddings have shape ${features.shape.toList()}, expected [rows, dim]",
                    "re-export the bundle")
            }
            if (features.data.any { !it.isFinite() }) {
                throw InferenceError("$what embeddings are not finite",
                    "re-export the bundle, or run it on another backend")
            }
            val (rows, dim) = features.shape[0] to features.shape[1]
            return Array(rows) { r ->
                var squares = 0.0
                for (k in 0 until dim) squares += features.data[r * dim + k].toDouble().let { it * it }
                val norm = maxOf(Math.sqrt(squares), 1e-12)
                DoubleArray(dim) { features.data[r * dim + it] / norm }
            }
        }
    }
}

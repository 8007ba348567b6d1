package dev.pocketvlm.engine

/**
 * A bundle's `manifest.json`, read once at load: every field the engine uses is read here, so a missing or wrong
 * field is one [BundleError] naming it before anything runs (as the Python runtime's `reading_fields`). The schema is
 * `runtime/schema/manifest.schema.json`; the app reads the subset it needs and refuses what it cannot run.
 */
class Manifest(val root: JsonNode) {
    val schemaVersion: Int = root["schema_version"].int()
    val family: String = root["family"].string()
    val target: String = root["target"].string()
    val task: String = root["task"].string()
    val components: Map<String, ComponentSpec>
    val files: List<FileEntry>
    val tokenizer: TokenizerSpec
    val image: JsonNode = root["preprocessing"]["image"]
    val special: JsonNode = root["special_tokens"]
    val quantization: String

    /** VLMs only */
    val decoder: DecoderSpec?
    val eosTokenIds: Set<Int>
    val maxContext: Int
    val chatTemplate: String?
    val app: AppSpec?

    /** dual encoders only */
    val zeroShot: ZeroShotSpec?
    val golden: GoldenRef?

    init {
        if (schemaVersion > SUPPORTED_SCHEMA) {
            throw BundleError("the bundle's manifest is schema version $schemaVersion; this app reads up to $SUPPORTED_SCHEMA",
                "update the app, or export the bundle with the pocketvlm version the app was built with")
        }
        if (target !in TARGETS) {
            throw BundleError("this is a '$target' bundle; the Android app runs ${TARGETS.joinToString(", ")} bundles",
                "export with --target onnx, tflite or qnn")
        }
        if (task !in TASKS) {
            throw BundleError("task '$task' is not one this app runs", "use a captioning or zero-shot bundle")
        }
        components = root["components"].obj().mapValues { (name, node) -> ComponentSpec(name, node) }
        files = root["files"].list().map { FileEntry(it["path"].string(), it["sha256"].string(), it["bytes"].long()) }
        tokenizer = TokenizerSpec(root["tokenizer"])
        quantization = root["quantization"]["default"]["method"].string()
        golden = root.opt("golden")?.let { GoldenRef(it["file"].string(), it["image"].string()) }
        if (task == VLM_TASK) {
            decoder = DecoderSpec(root["decoder"])
            val generation = root["generation"]
            eosTokenIds = generation["eos_token_ids"].ints().toSet()
            maxContext = generation["max_context"].int()
            chatTemplate = root["chat_template"].string()
            app = root.opt("app")?.let { AppSpec(it, decoder.positionIds) }
            zeroShot = null
            for (name in listOf("text_decoder")) component(name)
        } else {
            decoder = null
            eosTokenIds = emptySet()
            maxContext = tokenizer.maxLength
            chatTemplate = null
            app = null
            zeroShot = ZeroShotSpec(root["zero_shot"])
            component("image_encoder")
            component("text_encoder")
        }
    }

    fun component(name: String): ComponentSpec = components[name]
        ?: throw BundleError("the bundle has no '$name' component (it has ${components.keys.joinToString(", ")})",
            "re-export the bundle")

    /** The vision side: one `vision_encoder`, or `vision_frontend` + `vision_transformer` (`--split-vision`). */
    val visionStages: List<String>
        get() = if ("vision_frontend" in components) listOf("vision_frontend", "vision_transformer")
        else listOf("vision_encoder")

    /** Bytes of every model file: what loading costs in memory at least once. */
    val modelBytes: Long get() = components.values.sumOf { it.bytes }

    companion object {
        const val SUPPORTED_SCHEMA = 1
        const val VLM_TASK = "image_text_to_text"
        const val ZERO_SHOT_TASK = "zero_shot_image_classification"
        val TARGETS = setOf("onnx", "tflite", "qnn")
        val TASKS = setOf(VLM_TASK, ZERO_SHOT_TASK)

        fun parse(text: String): Manifest = Manifest(Json.read(text, "manifest"))
    }
}

class FileEntry(val path: String, val sha256: String, val bytes: Long)

class GoldenRef(val file: String, val image: String)

class TensorSpec(node: JsonNode) {
    val name: String = node["name"].string()
    val dtype: String = node["dtype"].string()

    /** Each dim an Int, or a String naming a dynamic axis ("batch", "sequence", ...). */
    val shape: List<Any> = node["shape"].list().map { if (it.value is String) it.string() else it.int() }
}

class ComponentSpec(val name: String, node: JsonNode) {
    val file: String = node["file"].string()
    val sha256: String = node["sha256"].string()
    val bytes: Long = node["bytes"].long()
    val format: String = node["format"].string()
    val inputs: List<TensorSpec> = node["inputs"].list().map { TensorSpec(it) }
    val outputs: List<TensorSpec> = node["outputs"].list().map { TensorSpec(it) }

    /** Static-shape bundles (tflite, qnn): signature -> input -> shape, kv_capacity, prefill_length, ... */
    val static: JsonNode? = node.opt("static")

    /** Static signatures' input shapes (`prefill_N` / `decode` for a decoder, one named after the component else). */
    val signatures: Map<String, Map<String, IntArray>>
        get() = static?.opt("signatures")?.obj()?.mapValues { (_, sig) -> sig.obj().mapValues { it.value.ints() } }
            ?: emptyMap()

    fun input(name: String): TensorSpec = inputs.firstOrNull { it.name == name }
        ?: throw BundleError("component '${this.name}' has no input '$name'", "re-export the bundle")
}

class TokenizerSpec(node: JsonNode) {
    val file: String = node["file"].string()
    val maxLength: Int = node["max_length"].int()
    val padding: String = node["padding"].string()  // "longest" | "max_length"
    val padTokenId: Int = node["pad_token_id"].int()
    val paddingSide: String = node["padding_side"].string()
    val truncation: Boolean = node["truncation"].bool()
}

class DecoderSpec(node: JsonNode) {
    val positionIds: String = node["position_ids"].string()  // "1d" | "mrope"
    val numLayers: Int = node["num_layers"].int()
    val kvHeads: Int = node["kv_heads"].int()
    val headDim: Int = node["head_dim"].int()
    val hiddenSize: Int = node["hidden_size"].int()
    val vocabSize: Int = node["vocab_size"].int()

    init {
        if (positionIds !in setOf("1d", "mrope")) {
            throw BundleError("decoder position ids '$positionIds' are not supported by this app", "update the app")
        }
    }
}

class ZeroShotSpec(node: JsonNode) {
    val activation: String = node["activation"].string()  // "softmax" (CLIP) | "sigmoid" (SigLIP)
    val logitScale: Double = node["logit_scale"].double()
    val logitBias: Double? = node.opt("logit_bias")?.double()
    val promptTemplate: String = node["prompt_template"].string()
    val embedDim: Int = node["embed_dim"].int()
}

/**
 * What the exporter resolved for a phone (the manifest's `app` block; written for bundles whose image layout is
 * fixed): the prompt as token ids around the user's text, the positions of those tokens, and the vision side's
 * constant inputs for the fixed image size. With it the app needs no chat template, no image-size logic and no
 * M-RoPE code: it tokenizes the user's text and concatenates.
 */
class AppSpec(node: JsonNode, positionKind: String) {
    val imageHeight: Int = node["image"]["height"].int()
    val imageWidth: Int = node["image"]["width"].int()
    val imageTokens: Int = node["image_tokens"].int()
    val withImage: PromptSlots = PromptSlots(node["prompt"]["image"])
    val textOnly: PromptSlots = PromptSlots(node["prompt"]["text_only"])
    val positions: AppPositions = AppPositions(node["positions"], positionKind)
    val visionFeeds: VisionFeeds? = node.opt("vision_feeds")?.let { VisionFeeds(it) }
}

/**
 * The prompt around the user's text, cut at the nearest added (special) tokens on either side: token ids [before]
 * (image tokens expanded inside) and [after], and the plain text between them and the user's ([textPrefix],
 * [textSuffix]; often empty, e.g. "user\n" where the template writes a newline before the text). The app tokenizes
 * `textPrefix + text + textSuffix` in one piece: exact, as a tokenizer splits at added tokens before anything else.
 */
class PromptSlots(node: JsonNode) {
    val before: LongArray = node["before"].longs()
    val textPrefix: String = node["text_prefix"].string()
    val textSuffix: String = node["text_suffix"].string()
    val after: LongArray = node["after"].longs()
}

/**
 * Positions of a prompt with an image: the `before` tokens' positions as a table (`[3][n]` for M-RoPE, `[1][n]`
 * otherwise), then every later token at sequence index i has position `i + delta` on every axis (decode steps too).
 * Text-only prompts have position i (delta 0).
 */
class AppPositions(node: JsonNode, val kind: String) {
    val before: Array<LongArray> = node["before"].list().map { it.longs() }.toTypedArray()
    val delta: Long = node["delta"].long()

    init {
        val axes = if (kind == "mrope") 3 else 1
        if (before.size != axes) {
            throw BundleError("manifest field 'app.positions.before' has ${before.size} rows, expected $axes for " +
                "'$kind' positions", "re-export the bundle")
        }
    }
}

/** Constant inputs of the vision side for the fixed image size, stored little-endian in one bundle file. */
class VisionFeeds(node: JsonNode) {
    val file: String = node["file"].string()
    val tensors: List<Entry> = node["tensors"].list().map {
        Entry(it["component"].string(), it["name"].string(), it["dtype"].string(), it["shape"].ints(),
            it["offset"].long(), it["bytes"].long())
    }

    class Entry(val component: String, val name: String, val dtype: String, val shape: IntArray, val offset: Long,
                val bytes: Long)
}

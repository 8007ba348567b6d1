package dev.pocketvlm.engine

import java.io.File
import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNull
import kotlin.test.assertTrue

/** Fixture bundles of `tests/jvm_fixtures/golden.py`, edited for the pipeline tests. */
internal object PipelineFixtures {
    /**
     * A copy of the dual-encoder fixture whose text encoder is a static batch-1 one at the record's token length
     * (`static.loop_inputs` and one signature, as a LiteRT or QNN export writes it).
     */
    fun staticTextEncoder(): File {
        val name = GoldenFixtures.dual()
        val length = GoldenRecord.read(GoldenFixtures.open(name)).text().inputIds.first().size.toLong()
        val dir = GoldenFixtures.copy(name)
        GoldenFixtures.editJson(dir, "manifest.json") { m ->
            @Suppress("UNCHECKED_CAST")
            val text = (m["components"] as MutableMap<String, Any?>)["text_encoder"] as MutableMap<String, Any?>
            val shape = listOf(1L, length)
            text["static"] = linkedMapOf("loop_inputs" to listOf("input_ids", "attention_mask"),
                "signatures" to linkedMapOf("text_encoder" to linkedMapOf("input_ids" to shape, "attention_mask" to shape)))
        }
        return dir
    }

    fun tokenizer(bundle: Bundle): Tokenizer = Tokenizer.fromJson(bundle.readText(bundle.manifest.tokenizer.file))
}

/** A fixture bundle with its golden record, its tokenizer and sessions faked from the record. */
private class Faked(val bundle: Bundle) {
    constructor(name: String) : this(GoldenFixtures.open(name))

    val record = GoldenRecord.read(bundle)
    val sessions = RecordSessions(bundle, record)
    val tokenizer = PipelineFixtures.tokenizer(bundle)
    val image: Rgba get() = GoldenFixtures.image(bundle)
}

/**
 * A static batch-1 text encoder over [batch]'s record: each call must be one row of the record's token ids, and
 * returns that row of the record's text embeddings; the other components are [batch]'s.
 */
private class RowSessions(private val batch: RecordSessions, private val record: GoldenRecord) : SessionFactory {
    val textCalls = ArrayList<List<Int>>()

    override fun session(component: String): ComponentSession {
        if (component != "text_encoder") return batch.session(component)
        return object : ComponentSession {
            override val backend = "fake batch-1 text_encoder"
            override fun run(feeds: Map<String, Tensor>): Map<String, Tensor> {
                val ids = feeds.getValue("input_ids")
                textCalls += ids.shape.toList()
                val row = record.text().inputIds.indexOfFirst { it.contentEquals(ids.longs()) }
                assertTrue(ids.shape[0] == 1 && row >= 0, "fed ${ids.shape.toList()} ${ids.longs().toList()}")
                val all = GoldenFixtures.fromSummary(record.tensors("text_encoder").tensors.getValue("text_embeds"))
                val dim = all.shape[1]
                return mapOf("text_embeds" to Tensor.F32(intArrayOf(1, dim), all.data.copyOfRange(row * dim, (row + 1) * dim)))
            }
        }
    }

    override fun textDecoder(): TextDecoder = batch.textDecoder()

    override fun close() = batch.close()
}

/** The vision side of [vision], and [decoder] as the text decoder. */
private class ScriptedSessions(private val vision: SessionFactory, private val decoder: TextDecoder) : SessionFactory {
    override fun session(component: String): ComponentSession = vision.session(component)
    override fun textDecoder(): TextDecoder = decoder
    override fun close() = vision.close()
}

class PipelinesTest {
    /** The VLM fixtures with an `app` block: what the phone app's captioner runs. */
    private val captioned: List<String> by lazy {
        GoldenFixtures.bundles.filter { (_, entry) ->
            entry["task"].string() == Manifest.VLM_TASK && entry["has_app"].bool()
        }.keys.toList().also { assertTrue(it.isNotEmpty(), "no VLM fixture bundle has an app block") }
    }

    @Test
    fun theCaptionerStreamsTheRecordedAnswerFromTheSessions() {
        for (name in captioned) {
            val fake = Faked(name)
            val (bundle, record, sessions) = Triple(fake.bundle, fake.record, fake.sessions)
            val captioner = Captioner(bundle, sessions, fake.tokenizer)
            val vision = captioner.encodeImage(fake.image)

            // the vision side was fed the pixel values and the app block's constants (the replay checks both
            // against the record: GoldenTest), each stage the inputs it declares and the record lists
            val expected = captioner.steps.visionFeeds(fake.image)
            val fed = LinkedHashMap<String, Tensor>()
            for (stage in bundle.manifest.visionStages) {
                val inputs = sessions.fed.getValue(stage)
                assertEquals(bundle.manifest.component(stage).inputs.map { it.name }.toSet(), inputs.keys, "$name $stage")
                fed.putAll(inputs)
            }
            assertEquals(record.tensors("preprocess").tensors.keys, fed.keys, name)
            for ((input, tensor) in fed) {
                val want = expected.getValue(input)
                assertEquals(want.shape.toList(), tensor.shape.toList(), "$name $input")
                if (want is Tensor.F32) assertContentEquals(want.data, tensor.floats(), "$name $input")
                else assertContentEquals(want.longs(), tensor.longs(), "$name $input")
            }
            assertEquals(record.tensors("vision_encoder").tensors.keys, vision.embeds.keys, name)

            val generation = record.generation()
            val pieces = ArrayList<String>()
            val config = GenerationConfig(maxNewTokens = generation.maxNewTokens, doSample = false)
            val answer = captioner.generate(vision, record.prompt().prompt, config, onText = { pieces += it })
            assertEquals(generation.tokenIds.toList(), answer.result.tokenIds, name)
            assertEquals(generation.stopReason, answer.result.stopReason, name)
            assertEquals(generation.text, answer.text, name)
            assertEquals(answer.text, pieces.joinToString(""), "$name: the streamed pieces add up to the text")
            // the decoder was fed the record's prompt, then each token at its position
            val prompt = captioner.steps.promptBuilder.build(record.prompt().prompt, true)
            assertContentEquals(record.prompt().inputIds, prompt.ids, name)
            assertEquals(emptyList(), sessions.decoder.feedProblems(prompt, answer.result.tokenIds), name)

            val engines = captioner.engines()
            assertEquals(bundle.manifest.visionStages + "text_decoder", engines.keys.toList(), name)
            assertEquals(0, sessions.closed, "$name: the captioner borrows the sessions")
        }
    }

    @Test
    fun aStopTokenEndsTheAnswerAndIsNeitherStreamedNorInTheText() {
        val name = captioned.first()
        val fake = Faked(name)
        val tokens = fake.record.generation().tokenIds.toList()
        val eos = fake.bundle.manifest.eosTokenIds
        val at = (1 until tokens.size).first { tokens[it] !in tokens.take(it) && tokens[it] !in eos }
        val captioner = Captioner(fake.bundle, fake.sessions, fake.tokenizer)
        val vision = captioner.encodeImage(fake.image)
        val pieces = ArrayList<String>()
        val config = GenerationConfig(maxNewTokens = tokens.size, stopTokenIds = listOf(tokens[at]))
        val answer = captioner.generate(vision, fake.record.prompt().prompt, config, onText = { pieces += it })
        assertEquals("stop_token", answer.result.stopReason)
        assertEquals(tokens.take(at + 1), answer.result.tokenIds)
        assertEquals(fake.tokenizer.decode(tokens.take(at)), answer.text, "the stop token is left out of the text")
        assertEquals(answer.text, pieces.joinToString(""))
    }

    @Test
    fun aTextOnlyPromptFeedsNoImageAndCancellingStopsTheLoop() {
        val name = captioned.first()
        val fake = Faked(name)
        val script = listOf(5, 7, 3)
        val decoder = ScriptedTextDecoder(script)
        val captioner = Captioner(fake.bundle, ScriptedSessions(fake.sessions, decoder), fake.tokenizer)
        val answer = captioner.generate(null, "Hi there", GenerationConfig(maxNewTokens = script.size))
        assertEquals(script, answer.result.tokenIds)
        assertEquals(captioner.steps.promptBuilder.build("Hi there", false).ids.toList(), decoder.steps[0].ids)
        assertNull(decoder.steps[0].image, "a text-only prompt feeds no image rows")

        var asked = 0
        assertFailsWith<Cancelled> {
            captioner.generate(null, "Hi there", GenerationConfig(maxNewTokens = script.size), cancelled = { ++asked >= 2 })
        }
        assertEquals(2, asked, "asked after each token, stopped at the first yes")
        assertEquals(2, decoder.steps.size, "no step after the cancel")
    }

    @Test
    fun theClassifierRunsTheRecordsLabelsThroughBothTowers() {
        val fake = Faked(GoldenFixtures.dual())
        val (record, sessions) = fake.record to fake.sessions
        val classifier = ZeroShotClassifier(fake.bundle, sessions, fake.tokenizer)
        val picture = classifier.encodeImage(fake.image)
        val pixels = sessions.fed.getValue("image_encoder").getValue("pixel_values") as Tensor.F32
        assertContentEquals(classifier.steps.pixelValues(fake.image).data, pixels.data)
        val recorded = record.tensors("image_encoder").tensors.getValue("image_embeds")
        assertEquals(recorded.shape.toList(), picture.embeds.shape.toList())

        // labels are trimmed, as the Python runtime's classify trims them, then put in the bundle's template
        val labels = record.text().labels
        val text = classifier.encodeLabels(labels.map { "  $it " })
        val fed = sessions.fed.getValue("text_encoder")
        assertEquals(record.text().inputIds.flatMap { it.toList() }, fed.getValue("input_ids").longs().toList())
        record.text().attentionMask?.let { mask ->
            assertEquals(mask.flatMap { it.toList() }, fed.getValue("attention_mask").longs().toList())
        }
        assertEquals(listOf(labels.size, recorded.shape[1]), text.shape.toList())

        val scores = classifier.classify(picture.embeds, labels, text)
        val probabilities = classifier.scorer.probabilities(classifier.scorer.logits(picture.embeds, text))[0]
        assertEquals(labels.indices.sortedByDescending { probabilities[it] }.map { labels[it] }, scores.map { it.label })
        assertEquals(probabilities.sortedDescending(), scores.map { it.score })
        assertEquals(listOf("image_encoder", "text_encoder"), classifier.engines().keys.toList())
        assertEquals(0, sessions.closed, "the classifier borrows the sessions")
    }

    @Test
    fun labelsOnAStaticBatchOneTextEncoderRunOneRowEachAndGiveTheBatchResult() {
        val fake = Faked(Bundle.open(PipelineFixtures.staticTextEncoder()))
        val rows = RowSessions(fake.sessions, fake.record)
        val labels = fake.record.text().labels
        val whole = ZeroShotClassifier(fake.bundle, fake.sessions, fake.tokenizer).encodeLabels(labels)
        val looped = LoopedSessions(rows, fake.bundle.manifest)
        val perRow = ZeroShotClassifier(fake.bundle, looped, fake.tokenizer).encodeLabels(labels)
        val length = fake.record.text().inputIds.first().size
        assertEquals(List(labels.size) { listOf(1, length) }, rows.textCalls, "one call per label, one row each")
        assertEquals(whole.shape.toList(), perRow.shape.toList())
        assertContentEquals(whole.data, perRow.data)
    }

    @Test
    fun aBundleAPipelineCannotRunIsRefusedWhenItIsLoaded() {
        val vlm = Faked(captioned.first())
        val dual = Faked(GoldenFixtures.dual())
        val notVlm = assertFailsWith<BundleError> { Captioner(dual.bundle, dual.sessions, dual.tokenizer) }
        assertTrue("not a VLM" in notVlm.problem, notVlm.problem)
        val notDual = assertFailsWith<BundleError> { ZeroShotClassifier(vlm.bundle, vlm.sessions, vlm.tokenizer) }
        assertTrue("not a zero-shot" in notDual.problem, notDual.problem)

        val copy = GoldenFixtures.copy(captioned.first())
        GoldenFixtures.editJson(copy, "manifest.json") { m -> m.remove("app") }
        val noApp = Faked(Bundle.open(copy))
        val error = assertFailsWith<BundleError> { Captioner(noApp.bundle, noApp.sessions, noApp.tokenizer) }
        assertTrue("no 'app' block" in error.problem, error.problem)
    }
}

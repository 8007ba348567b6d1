package dev.pocketvlm.engine

import dev.pocketvlm.engine.cli.readRgba
import dev.pocketvlm.engine.cli.replay
import java.io.ByteArrayOutputStream
import java.io.File
import java.io.PrintStream
import java.nio.file.Files
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertNotNull
import kotlin.test.assertTrue
import kotlin.test.fail

/** The fixtures `tests/jvm_fixtures/golden.py` writes: exported bundles without their model files. */
internal object GoldenFixtures {
    val root: File
        get() = File(System.getProperty("pocketvlm.fixtures")
            ?: fail("-Dpocketvlm.fixtures is not set: run these tests through tests/test_android.py"))

    private val golden: File get() = File(root, "golden")

    /** name -> its index entry (task, has_app, stages, expected); at least one VLM and one dual encoder. */
    val bundles: Map<String, JsonNode>
        get() {
            val index = File(golden, "index.json")
            if (!index.isFile) fail("$index is missing: tests/jvm_fixtures/golden.py did not run")
            val all = Json.read(index.readText(), "fixture index")["bundles"].obj()
            val tasks = all.values.map { it["task"].string() }.toSet()
            assertEquals(setOf(Manifest.VLM_TASK, Manifest.ZERO_SHOT_TASK), tasks, "fixture bundles of both tasks")
            return all
        }

    fun vlm(): String = bundles.entries.first { it.value["task"].string() == Manifest.VLM_TASK }.key
    fun dual(): String = bundles.entries.first { it.value["task"].string() == Manifest.ZERO_SHOT_TASK }.key

    fun dir(name: String): File = File(golden, name)

    fun open(name: String): Bundle = Bundle.open(dir(name))

    fun image(bundle: Bundle): Rgba = readRgba(bundle.read(bundle.manifest.golden!!.image), "golden.png")

    /** A copy of fixture [name] in a new temporary directory, for tests that change it. */
    fun copy(name: String): File {
        val to = Files.createTempDirectory("pocketvlm-$name").toFile()
        dir(name).listFiles()!!.forEach { it.copyTo(File(to, it.name)) }
        return to
    }

    /** Parses [file] in [dir], applies [edit] to the parsed value, writes it back and re-hashes it in the manifest. */
    @Suppress("UNCHECKED_CAST")
    fun editJson(dir: File, file: String, edit: (MutableMap<String, Any?>) -> Unit) {
        val value = deepCopy(Json.parse(File(dir, file).readText())) as MutableMap<String, Any?>
        edit(value)
        File(dir, file).writeText(Json.write(value, 1))
        if (file != "manifest.json") rehash(dir, file)
    }

    /** The manifest's size and sha256 of [file] set to what is on disk (an edit that keeps the bundle consistent). */
    @Suppress("UNCHECKED_CAST")
    fun rehash(dir: File, file: String) {
        val bytes = File(dir, file).readBytes()
        editJson(dir, "manifest.json") { m ->
            val entry = (m["files"] as List<MutableMap<String, Any?>>).first { it["path"] == file }
            entry["sha256"] = sha256(bytes)
            entry["bytes"] = bytes.size.toLong()
        }
    }

    fun sha256(bytes: ByteArray): String =
        java.security.MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }

    /** Maps and lists made mutable, all the way down. */
    fun deepCopy(value: Any?): Any? = when (value) {
        is Map<*, *> -> LinkedHashMap<String, Any?>().also { m -> value.forEach { (k, v) -> m[k.toString()] = deepCopy(v) } }
        is List<*> -> value.mapTo(ArrayList()) { deepCopy(it) }
        else -> value
    }

    @Suppress("UNCHECKED_CAST")
    fun stage(record: MutableMap<String, Any?>, name: String): MutableMap<String, Any?> =
        (record["stages"] as List<MutableMap<String, Any?>>).first { it["name"] == name }

    /**
     * A float tensor that fits a record's summary: the recorded values at the sampled indices, and every other
     * element set so that the mean is the recorded mean (what a faithful encoder would give, as far as the record
     * can tell), plus [offset] everywhere.
     */
    fun fromSummary(want: TensorSummary, offset: Float = 0f): Tensor.F32 {
        val n = want.size.toInt()
        val data = FloatArray(n)
        val sampled = want.sampleIndex.toSet()
        val rest = n - sampled.size
        val fill = if (rest > 0) ((want.mean!! * n - want.sampleValue.sum()) / rest).toFloat() else 0f
        for (i in 0 until n) data[i] = fill
        want.sampleIndex.forEachIndexed { k, i -> data[i] = want.sampleValue[k].toFloat() }
        for (i in 0 until n) data[i] += offset
        return Tensor.F32(want.shape, data)
    }
}

/**
 * A phone's sessions, faked from the golden record itself: each encoder returns what the record summarises, the
 * decoder (one, built on first use) the record's teacher-forced logits. [closed] counts [close] calls: whoever borrows
 * these sessions must never close them.
 */
internal class RecordSessions(private val bundle: Bundle, private val record: GoldenRecord,
                              private val offsets: Map<String, Float> = emptyMap(),
                              private val logitScale: Float = 1f) : SessionFactory {
    val fed = LinkedHashMap<String, Map<String, Tensor>>()
    var closed = 0
        private set

    override fun session(component: String): ComponentSession = object : ComponentSession {
        override val backend = "fake $component"
        override fun run(feeds: Map<String, Tensor>): Map<String, Tensor> {
            fed[component] = feeds
            val stage = when (component) {
                "text_encoder" -> record.tensors("text_encoder")
                "image_encoder" -> record.tensors("image_encoder")
                else -> record.tensors("vision_encoder")
            }
            return stage.tensors.mapValues { GoldenFixtures.fromSummary(it.value, offsets[component] ?: 0f) }
        }
    }

    val decoder: RecordedLogitsDecoder by lazy {
        val steps = record.decoder().steps.map { s ->
            DecoderStep(s.tokenId, s.topIds, DoubleArray(s.topLogits.size) { s.topLogits[it] * logitScale })
        }
        RecordedLogitsDecoder(steps, bundle.manifest.decoder!!.vocabSize, record.prompt().inputIds.size)
    }

    override fun textDecoder(): TextDecoder = decoder

    override fun close() {
        closed++
    }
}

class GoldenTest {
    private fun replay(bundle: Bundle, sessions: SessionFactory? = null): GoldenReport =
        GoldenReplay(bundle, sessions).run(GoldenFixtures.image(bundle))

    private fun GoldenReport.stage(name: String): StageResult = stages.first { it.name == name }

    @Test
    fun everyBundleReplaysTheStagesThatNeedNoModelAndReportsTheRestAsNotRun() {
        for ((name, entry) in GoldenFixtures.bundles) {
            val report = replay(GoldenFixtures.open(name))
            assertEquals(entry["stages"].strings(), report.stages.map { it.name }, name)
            assertEquals(StageStatus.PASSED, report.stage("preprocess").status, "$name: ${report.stage("preprocess").detail}")
            val maxAbs = report.stage("preprocess").figures["max_abs_error"] as Double
            assertTrue(maxAbs <= report.stage("preprocess").limit!!, "$name preprocess max abs $maxAbs")
            val expected = entry["expected"]
            if (entry["task"].string() == Manifest.VLM_TASK) {
                for (model in listOf("vision_encoder", "text_decoder")) {
                    assertEquals(StageStatus.NOT_RUN, report.stage(model).status, "$name $model")
                }
                val prompt = report.stage("prompt")
                assertEquals(if (entry["has_app"].bool()) StageStatus.PASSED else StageStatus.NOT_RUN, prompt.status,
                    "$name prompt: ${prompt.detail}")
                val generation = report.stage("generation")
                assertEquals(StageStatus.PASSED, generation.status, "$name generation: ${generation.detail}")
                assertEquals(expected["token_ids"].ints().toList(), generation.figures["token_ids"])
                assertEquals(expected["stop_reason"].string(), generation.figures["stop_reason"])
                assertEquals(expected["text"].string(), generation.figures["text"])
            } else {
                for (model in listOf("image_encoder", "text_encoder", "scores")) {
                    assertEquals(StageStatus.NOT_RUN, report.stage(model).status, "$name $model")
                }
                val text = report.stage("text")
                assertEquals(StageStatus.PASSED, text.status, "$name text: ${text.detail}")
                assertEquals(expected["input_ids"].list().map { it.longs().toList() }, text.figures["input_ids"])
            }
            assertTrue(report.passed, "$name: ${report.stages.map { it.line() }}")
            assertEquals(report.stages.filter { it.status != StageStatus.NOT_RUN }.map { it.name }, report.ran)
        }
    }

    @Test
    fun onThePhoneEveryStageRunsOnTheSessions() {
        val vlm = GoldenFixtures.open(GoldenFixtures.vlm())
        val record = GoldenRecord.read(vlm)
        val sessions = RecordSessions(vlm, record)
        val report = replay(vlm, sessions)
        assertEquals("device", report.mode)
        assertEquals(emptyList(), report.notRun.filter { it != "prompt" || vlm.manifest.app != null })
        for (name in listOf("preprocess", "vision_encoder", "text_decoder", "generation")) {
            assertEquals(StageStatus.PASSED, report.stage(name).status, "$name: ${report.stage(name).detail}")
        }
        val pixels = sessions.fed.getValue(vlm.manifest.visionStages.first()).getValue("pixel_values")
        assertTrue(pixels.shape.contentEquals(record.tensors("preprocess").tensors.getValue("pixel_values").shape))
        assertEquals(0, sessions.closed, "the replay borrows the sessions: it closes nothing")

        // a vision encoder off by 0.5 everywhere, a decoder whose logits are 10% larger: those stages fail by name
        val off = replay(vlm, RecordSessions(vlm, record, mapOf(vlm.manifest.visionStages.last() to 0.5f), 1.1f))
        assertEquals(StageStatus.FAILED, off.stage("vision_encoder").status, off.stage("vision_encoder").detail)
        assertEquals(StageStatus.FAILED, off.stage("text_decoder").status, off.stage("text_decoder").detail)
        assertEquals(StageStatus.PASSED, off.stage("preprocess").status)
        assertEquals("vision_encoder", off.failedStage)
        assertFalse(off.passed)

        val dual = GoldenFixtures.open(GoldenFixtures.dual())
        val dualRecord = GoldenRecord.read(dual)
        val dualSessions = RecordSessions(dual, dualRecord)
        val dualReport = replay(dual, dualSessions)
        assertEquals(emptyList(), dualReport.notRun)
        for (name in listOf("preprocess", "image_encoder", "text", "text_encoder")) {
            assertEquals(StageStatus.PASSED, dualReport.stage(name).status, "$name: ${dualReport.stage(name).detail}")
        }
        val fedIds = dualSessions.fed.getValue("text_encoder").getValue("input_ids").longs().toList()
        assertEquals(dualRecord.text().inputIds.flatMap { it.toList() }, fedIds)
        @Suppress("UNCHECKED_CAST")
        val probabilities = dualReport.stage("scores").figures["probabilities"] as List<List<Double>>
        assertEquals(dualRecord.scores().probabilities.map { it.size }, probabilities.map { it.size })
    }

    @Test
    fun aStageThatDiffersFromTheRecordFailsAndIsNamed() {
        val vlm = GoldenFixtures.copy(GoldenFixtures.vlm())
        GoldenFixtures.editJson(vlm, "golden.json") { r ->
            @Suppress("UNCHECKED_CAST")
            val samples = ((GoldenFixtures.stage(r, "preprocess")["tensors"] as Map<String, Any?>)["pixel_values"]
                as MutableMap<String, Any?>)["samples"] as MutableMap<String, Any?>
            @Suppress("UNCHECKED_CAST")
            val values = samples["value"] as MutableList<Any?>
            values[0] = (values[0] as Number).toDouble() + 0.5
        }
        val report = replay(Bundle.open(vlm))
        assertEquals("preprocess", report.failedStage, report.stage("preprocess").detail)
        assertEquals(StageStatus.PASSED, report.stage("generation").status)

        // the loop's own ids, stop reason and text are compared, each one (what the record says, changed)
        val changes: List<Pair<String, (Any?) -> Any?>> = listOf(
            "stop_reason" to { v -> if (v == "max_new_tokens") "eos" else "max_new_tokens" },
            "text" to { v -> "$v." },
            "token_ids" to { v -> (v as List<*>).dropLast(1) })
        for ((key, change) in changes) {
            val copy = GoldenFixtures.copy(GoldenFixtures.vlm())
            GoldenFixtures.editJson(copy, "golden.json") { r ->
                val stage = GoldenFixtures.stage(r, "generation")
                stage[key] = change(stage[key])
            }
            val changed = replay(Bundle.open(copy))
            assertEquals(StageStatus.FAILED, changed.stage("generation").status, "$key: ${changed.stage("generation").detail}")
            assertEquals("generation", changed.failedStage)
        }

        val dual = GoldenFixtures.copy(GoldenFixtures.dual())
        GoldenFixtures.editJson(dual, "golden.json") { r ->
            @Suppress("UNCHECKED_CAST")
            val ids = GoldenFixtures.stage(r, "text")["input_ids"] as MutableList<MutableList<Any?>>
            ids[0][1] = 7L
        }
        val dualReport = replay(Bundle.open(dual))
        assertEquals("text", dualReport.failedStage, dualReport.stage("text").detail)
        assertTrue("input_ids differs at" in dualReport.stage("text").detail, dualReport.stage("text").detail)
    }

    @Test
    fun anEditedOrForeignRecordIsOneBundleErrorNamingIt() {
        val name = GoldenFixtures.vlm()
        val unhashed = GoldenFixtures.copy(name)
        val text = File(unhashed, "golden.json").readText()
        val digit = text.indexOfFirst { it in '1'..'8' }
        File(unhashed, "golden.json").writeText(text.substring(0, digit) + (text[digit] + 1) + text.substring(digit + 1))
        val tampered = assertFailsWith<BundleError> { GoldenReplay(Bundle.open(unhashed), null) }
        assertTrue("golden.json does not match its sha256" in tampered.problem, tampered.problem)

        @Suppress("UNCHECKED_CAST")
        val edits: List<Pair<String, (MutableMap<String, Any?>) -> Unit>> = listOf(
            "version 2 is not 1" to { r -> r["golden_version"] = 2L },
            "expected [preprocess, vision_encoder" to { r -> (r["stages"] as MutableList<Any?>).reverse() },
            "outside the vocabulary" to { r ->
                val steps = GoldenFixtures.stage(r, "text_decoder")["steps"] as List<MutableMap<String, Any?>>
                (steps[0]["top_k"] as MutableList<MutableList<Any?>>)[1][0] = 10_000_000L
            },
            "samples' does not fit" to { r ->
                val tensors = GoldenFixtures.stage(r, "vision_encoder")["tensors"] as Map<String, MutableMap<String, Any?>>
                val samples = tensors.values.first()["samples"] as MutableMap<String, Any?>
                (samples["index"] as MutableList<Any?>)[0] = 100_000_000L
            },
            "no max_abs or max_abs_relative" to { r -> GoldenFixtures.stage(r, "preprocess")["tolerance"] = mapOf("x" to 1L) },
            "the manifest says" to { r -> r["family"] = "another_family" },
            "field 'stages[4].token_ids' is missing" to { r -> GoldenFixtures.stage(r, "generation").remove("token_ids") },
        )
        for ((expected, edit) in edits) {
            val copy = GoldenFixtures.copy(name)
            GoldenFixtures.editJson(copy, "golden.json", edit)
            val error = assertFailsWith<BundleError>(expected) { replay(Bundle.open(copy)) }
            assertTrue(expected in error.problem, "expected '$expected' in: ${error.problem}")
        }
    }

    @Test
    fun aStageThatDidNotRunIsNeverPassed() {
        val record = GoldenRecord.read(GoldenFixtures.open(GoldenFixtures.vlm()))
        val nothing = GoldenReport(record, "jvm", GoldenRecord.VLM_STAGES.map { StageResult.notRun(it, "no model") })
        assertFalse(nothing.passed)
        assertEquals(emptyList(), nothing.ran)
        val json = nothing.toJson()
        assertEquals(false, json["pass"])
        @Suppress("UNCHECKED_CAST")
        val first = (json["stages"] as List<Map<String, Any?>>)[0]
        assertEquals("not_run", first["status"])
        assertEquals(false, first["ran"])
        assertEquals(null, first["error"])
        val one = GoldenReport(record, "jvm", listOf(StageResult.of("preprocess", true, 0.0, 1.0, "ok")) +
            GoldenRecord.VLM_STAGES.drop(1).map { StageResult.notRun(it, "no model") })
        assertTrue(one.passed)
        assertEquals(listOf("preprocess"), one.ran)
    }

    @Test
    fun replayMainPrintsOneJsonObjectAndExitsByVerdict() {
        for (name in GoldenFixtures.bundles.keys) {
            val (code, out, err) = runReplay(GoldenFixtures.dir(name).path)
            assertEquals(0, code, "$name: $err\n$out")
            val result = Json.read(out, "replay output")
            assertEquals(true, result["pass"].bool())
            val statuses = result["stages"].list().associate { it["name"].string() to it["status"].string() }
            assertEquals("passed", statuses["preprocess"])
            assertTrue(statuses.values.all { it == "passed" || it == "not_run" }, statuses.toString())
            assertTrue(result["files"]["verified"].strings().contains("golden.json"))
        }
        val failing = GoldenFixtures.copy(GoldenFixtures.vlm())
        GoldenFixtures.editJson(failing, "golden.json") { r -> GoldenFixtures.stage(r, "generation")["text"] = "x" }
        val (code, out, _) = runReplay(failing.path)
        assertEquals(1, code, out)
        assertEquals("generation", Json.read(out, "replay output")["failed_stage"].string())

        val broken = Files.createTempDirectory("pocketvlm-broken").toFile()
        File(broken, "manifest.json").writeText("{\"schema_version\": 1, \"family\": \"clip\"")
        for (args in listOf(arrayOf(broken.path), arrayOf(File(broken, "nowhere").path), emptyArray())) {
            val (bad, badOut, badErr) = runReplay(*args)
            assertEquals(2, bad, badErr)
            assertEquals("", badOut)
            assertTrue(badErr.startsWith("error: ") && badErr.trim().lines().size == 1, badErr)
        }
    }

    @Test
    fun pngFilesDecodeToTheStoredSamples() {
        val image = java.awt.image.BufferedImage(3, 2, java.awt.image.BufferedImage.TYPE_4BYTE_ABGR)
        image.setRGB(0, 0, 0x80FF0010.toInt())
        image.setRGB(2, 1, 0xFF0A0B0C.toInt())
        val png = ByteArrayOutputStream().also { javax.imageio.ImageIO.write(image, "png", it) }.toByteArray()
        val rgba = readRgba(png, "test.png")
        assertEquals(listOf(0xFF, 0x00, 0x10, 0x80), (0..3).map { rgba.pixels[it].toInt() and 0xFF })
        assertEquals(listOf(0x0A, 0x0B, 0x0C, 0xFF), (20..23).map { rgba.pixels[it].toInt() and 0xFF })
        val gray = java.awt.image.BufferedImage(2, 1, java.awt.image.BufferedImage.TYPE_BYTE_GRAY)
        gray.raster.setSample(1, 0, 0, 100)
        val grayPng = ByteArrayOutputStream().also { javax.imageio.ImageIO.write(gray, "png", it) }.toByteArray()
        assertEquals(listOf(100, 100, 100, 255), (4..7).map { readRgba(grayPng, "g.png").pixels[it].toInt() and 0xFF })
        assertFailsWith<InputError> { readRgba("not an image".toByteArray(), "notes.png") }
        assertNotNull(GoldenFixtures.image(GoldenFixtures.open(GoldenFixtures.dual())))
    }

    private fun runReplay(vararg args: String): Triple<Int, String, String> {
        val out = ByteArrayOutputStream()
        val err = ByteArrayOutputStream()
        val code = replay(arrayOf(*args), PrintStream(out, true, "UTF-8"), PrintStream(err, true, "UTF-8"))
        return Triple(code, out.toString("UTF-8"), err.toString("UTF-8"))
    }
}

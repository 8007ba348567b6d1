package dev.pocketvlm.engine

import java.io.File
import java.security.MessageDigest
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

class BundleTest {
    /**
     * A fixture bundle whose components are small generated files (the fixtures carry no model files), every one
     * listed with its real size and sha256: a bundle that verifies whole.
     */
    @Suppress("UNCHECKED_CAST")
    private fun withModelFiles(name: String): File {
        val dir = GoldenFixtures.copy(name)
        GoldenFixtures.editJson(dir, "manifest.json") { m ->
            val files = (m["files"] as MutableList<MutableMap<String, Any?>>)
            files.removeAll { !File(dir, it["path"] as String).isFile }
            for ((i, entry) in (m["components"] as Map<String, MutableMap<String, Any?>>).entries.withIndex()) {
                val bytes = ByteArray(3000 + i * 1000) { (it * 31 + i).toByte() }
                val file = "${entry.key}.onnx"
                File(dir, file).writeBytes(bytes)
                entry.value["file"] = file
                entry.value["sha256"] = GoldenFixtures.sha256(bytes)
                entry.value["bytes"] = bytes.size.toLong()
                entry.value.remove("external_data")
                files.add(linkedMapOf("path" to file, "sha256" to GoldenFixtures.sha256(bytes), "bytes" to bytes.size.toLong()))
            }
        }
        return dir
    }

    @Test
    fun opensAFixtureAndChecksTheFilesItHas() {
        for (name in GoldenFixtures.bundles.keys) {
            val dir = GoldenFixtures.dir(name)
            val bundle = Bundle.open(dir)
            val manifestSha = MessageDigest.getInstance("SHA-256").digest(File(dir, "manifest.json").readBytes())
                .joinToString("") { "%02x".format(it) }
            assertEquals(manifestSha, bundle.manifestSha256)
            val (present, absent) = bundle.listedNames.partition { bundle.exists(it) }
            assertTrue(absent.isNotEmpty(), "$name: the fixture has no model files, so some listed files are absent")
            var last = 0L
            val checked = bundle.verify(present) { _, done, total -> assertTrue(done in last..total); last = done }
            assertEquals(present.sumOf { File(dir, it).length() }, checked)
            assertEquals(checked, last)
            // the model files are listed but absent: verifying everything names the first one missing
            val missing = assertFailsWith<BundleError> { bundle.verify() }
            assertTrue("is missing from" in missing.problem && absent.any { it in missing.problem }, missing.problem)
        }
    }

    @Test
    fun aMissingTruncatedOrAlteredFileIsNamed() {
        val dir = withModelFiles(GoldenFixtures.vlm())
        val bundle = Bundle.open(dir)
        assertEquals(bundle.totalBytes, bundle.verify())
        val model = bundle.manifest.component("text_decoder").file
        val bytes = File(dir, model).readBytes()

        File(dir, model).writeBytes(bytes.copyOf().also { it[1234] = (it[1234] + 1).toByte() })
        val altered = assertFailsWith<BundleError> { Bundle.open(dir).verify() }
        assertTrue("bundle file $model does not match its sha256" in altered.problem, altered.problem)

        File(dir, model).writeBytes(bytes.copyOf(bytes.size - 1))
        val truncated = assertFailsWith<BundleError> { Bundle.open(dir).verify() }
        assertTrue("bundle file $model is ${bytes.size - 1} bytes, its manifest says ${bytes.size}" in truncated.problem,
            truncated.problem)

        File(dir, model).delete()
        val gone = assertFailsWith<BundleError> { Bundle.open(dir).verify() }
        assertTrue("bundle file $model is missing" in gone.problem, gone.problem)

        // a small file read whole is checked on the way
        val tokenizer = bundle.manifest.tokenizer.file
        File(dir, tokenizer).appendText(" ")
        val read = assertFailsWith<BundleError> { Bundle.open(dir).readText(tokenizer) }
        assertTrue(tokenizer in read.problem, read.problem)
    }

    @Test
    @Suppress("UNCHECKED_CAST")
    fun pathsThatLeaveTheBundleOrAreNotListedAreRefused() {
        val name = GoldenFixtures.dual()
        for (bad in listOf("../secret.onnx", "/etc/passwd", "a/../../b", "a//b", "./x", "C:\\x.onnx", "")) {
            val dir = GoldenFixtures.copy(name)
            GoldenFixtures.editJson(dir, "manifest.json") { m ->
                (m["files"] as MutableList<MutableMap<String, Any?>>)[0]["path"] = bad
            }
            val error = assertFailsWith<BundleError>(bad) { Bundle.open(dir) }
            assertTrue("leaves the bundle" in error.problem && "'$bad'" in error.problem, error.problem)
        }
        val unlisted = GoldenFixtures.copy(name)
        GoldenFixtures.editJson(unlisted, "manifest.json") { m ->
            (m["tokenizer"] as MutableMap<String, Any?>)["file"] = "other_tokenizer.json"
        }
        val error = assertFailsWith<BundleError> { Bundle.open(unlisted) }
        assertTrue("the tokenizer file 'other_tokenizer.json' is not in the manifest's file list" in error.problem,
            error.problem)

        val bundle = GoldenFixtures.open(name)
        val notListed = assertFailsWith<BundleError> { bundle.read("notes.txt") }
        assertTrue("names a file its manifest does not list: 'notes.txt'" in notListed.problem, notListed.problem)
        assertFailsWith<BundleError> { DirectorySource(GoldenFixtures.dir(name)).open("../index.json") }

        val foreign = GoldenFixtures.copy(name)
        GoldenFixtures.editJson(foreign, "manifest.json") { m ->
            val component = (m["components"] as Map<String, MutableMap<String, Any?>>).values.first()
            component["sha256"] = "0".repeat(64)
        }
        val mismatch = assertFailsWith<BundleError> { Bundle.open(foreign) }
        assertTrue("the file list says" in mismatch.problem, mismatch.problem)

        // a QNN context component's bytes are its EPContext model plus the context binary beside it: more than the
        // model file's own entry is right, less is not
        for ((extra, accepted) in listOf(1000L to true, -1L to false)) {
            val qnn = GoldenFixtures.copy(name)
            GoldenFixtures.editJson(qnn, "manifest.json") { m ->
                val component = (m["components"] as Map<String, MutableMap<String, Any?>>).values.first()
                component["format"] = "qnn_context"
                component["bytes"] = (component["bytes"] as Long) + extra
            }
            if (accepted) Bundle.open(qnn) else assertFailsWith<BundleError> { Bundle.open(qnn) }
        }
    }

    @Test
    fun memoryIsRefusedBeforeLoadingWithTheNumbers() {
        val vlm = GoldenFixtures.open(GoldenFixtures.vlm())
        val d = vlm.manifest.decoder!!
        val capacity = (vlm.manifest.components.getValue("text_decoder").static?.get("kv_capacity")?.long()
            ?: vlm.manifest.maxContext.toLong())
        val kv = 2L * d.numLayers * d.kvHeads * d.headDim * 4 * capacity
        assertEquals(kv, vlm.kvCacheBytes)
        val external = vlm.manifest.components.keys.sumOf { c ->
            vlm.manifest.root["components"][c].opt("external_data")?.string()
                ?.let { path -> vlm.manifest.files.first { it.path == path }.bytes } ?: 0L
        }
        assertEquals(vlm.manifest.components.values.sumOf { it.bytes } + external, vlm.modelBytes)
        assertEquals(vlm.modelBytes + kv, vlm.memoryNeeded)
        assertEquals(vlm.memoryNeeded, vlm.checkMemory(vlm.memoryNeeded))
        val error = assertFailsWith<BundleError> { vlm.checkMemory(vlm.memoryNeeded - 1) }
        val mb = { b: Long -> if (b >= 10_000_000) ((b + 500_000) / 1_000_000).toString() else "%.1f".format(b / 1e6) }
        val expected = "the bundle needs about ${mb(vlm.memoryNeeded)} MB (model files ${mb(vlm.modelBytes)} MB loaded " +
            "once plus the KV cache ${mb(kv)} MB at $capacity tokens) but the device has ${mb(vlm.memoryNeeded - 1)} MB available"
        assertEquals(expected, error.problem)
        assertFailsWith<InputError> { vlm.checkMemory(-1) }

        // a static decoder's cache is its kv_capacity, allocated whole
        val static = GoldenFixtures.copy(GoldenFixtures.vlm())
        GoldenFixtures.editJson(static, "manifest.json") { m ->
            @Suppress("UNCHECKED_CAST")
            val decoder = (m["components"] as Map<String, MutableMap<String, Any?>>).getValue("text_decoder")
            @Suppress("UNCHECKED_CAST")
            val block = (decoder["static"] as? MutableMap<String, Any?>) ?: linkedMapOf<String, Any?>().also { decoder["static"] = it }
            block["kv_capacity"] = 100L
        }
        assertEquals(2L * d.numLayers * d.kvHeads * d.headDim * 4 * 100, Bundle.open(static).kvCacheBytes)

        val dual = GoldenFixtures.open(GoldenFixtures.dual())
        assertEquals(0L, dual.kvCacheBytes)
        assertEquals(dual.modelBytes, dual.checkMemory(Long.MAX_VALUE))
        val small = assertFailsWith<BundleError> { dual.checkMemory(1000) }
        assertTrue("but the device has 0.0 MB available" in small.problem && "KV cache 0.0 MB)" in small.problem,
            small.problem)
    }

    @Test
    fun aDirectoryThatIsNotABundleIsOneError() {
        val empty = kotlin.io.path.createTempDirectory("pocketvlm-empty").toFile()
        val none = assertFailsWith<BundleError> { Bundle.open(empty) }
        assertTrue("has no manifest.json" in none.problem, none.problem)
        val missing = assertFailsWith<BundleError> { Bundle.open(File(empty, "nowhere")) }
        assertTrue("bundle directory not found" in missing.problem, missing.problem)
        File(empty, "manifest.json").writeBytes(byteArrayOf(0x7b, 0xff.toByte(), 0x7d))
        val binary = assertFailsWith<BundleError> { Bundle.open(empty) }
        assertTrue("not UTF-8" in binary.problem, binary.problem)
        File(empty, "manifest.json").writeText("{\"schema_version\": 1}")
        val field = assertFailsWith<BundleError> { Bundle.open(empty) }
        assertTrue("manifest field 'family' is missing" in field.problem, field.problem)
    }
}

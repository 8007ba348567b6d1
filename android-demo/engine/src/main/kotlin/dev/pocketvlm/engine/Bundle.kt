package dev.pocketvlm.engine

import java.io.File
import java.io.IOException
import java.io.InputStream
import java.security.MessageDigest

/**
 * Where a bundle's files are: a directory on the JVM or in the phone's storage ([DirectorySource]), or anything
 * else that can list, size and stream named files (an app's assets). Names are paths inside the bundle with '/'
 * separators; [Bundle] only asks for names it has checked (no `..` segment, not absolute).
 */
interface BundleSource {
    /** What the user recognises: a directory path, an asset folder name. */
    val label: String

    /** Every file name in the bundle (for messages: what is there when something is missing). */
    fun list(): List<String>

    /** The file's size in bytes, or null when it does not exist. */
    fun size(name: String): Long?

    /** A stream over the file; a missing file is an [IOException]. */
    fun open(name: String): InputStream

    /** The whole file (callers bound the size first). */
    fun read(name: String): ByteArray = open(name).use { it.readBytes() }
}

/** A bundle directory: what `pocketvlm export --out DIR` wrote, copied to the device or read on the JVM. */
class DirectorySource(val root: File) : BundleSource {
    override val label: String = root.path

    /** The file on disk (a backend that loads a model by path, e.g. ONNX Runtime, takes this). */
    fun file(name: String): File {
        checkName(name, label)
        return File(root, name)
    }

    override fun list(): List<String> {
        val base = root.absoluteFile
        return base.walkTopDown().filter { it.isFile }.map { it.relativeTo(base).invariantSeparatorsPath }.sorted()
            .toList()
    }

    override fun size(name: String): Long? = file(name).takeIf { it.isFile }?.length()

    override fun open(name: String): InputStream = file(name).inputStream()
}

/**
 * A bundle: its manifest, read and checked when it is opened, over a [BundleSource]. Opening reads only
 * `manifest.json`; [verify] checks every file's sha256 (call it before loading sessions); [read] reads one small
 * file (the tokenizer, the golden record) and checks that file's size and sha256 on the way.
 */
class Bundle private constructor(val source: BundleSource, val manifest: Manifest, val manifestSha256: String) {
    private val listed: Map<String, FileEntry> = manifest.files.associateBy { it.path }

    /** Bytes of every file the manifest lists (what the result file records as the bundle's size). */
    val totalBytes: Long get() = manifest.files.sumOf { it.bytes }

    /** A component's bytes on disk: its model file plus its external-data file when it has one. */
    fun componentBytes(name: String): Long {
        val spec = manifest.component(name)
        val extra = manifest.root["components"][name].opt("external_data")?.string()
        return spec.bytes + (extra?.let { listed[it]?.bytes } ?: 0L)
    }

    /** Every component's bytes: what loading the sessions costs in memory at least once. */
    val modelBytes: Long get() = manifest.components.keys.sumOf { componentBytes(it) }

    /**
     * The KV cache the decoder holds at its largest sequence, in bytes: 2 (key and value) x layers x kv_heads x
     * head_dim x 4 bytes (float32) x the capacity, where the capacity is the static decoder's `kv_capacity` when the
     * bundle has one (tflite, qnn: the buffer is allocated whole) and `generation.max_context` otherwise (the dynamic
     * cache grows to it). 0 for a dual encoder.
     */
    val kvCacheBytes: Long
        get() {
            val d = manifest.decoder ?: return 0L
            return 2L * d.numLayers * d.kvHeads * d.headDim * FLOAT_BYTES * kvCapacity
        }

    /**
     * What running the bundle needs, in bytes: the model files, loaded once ([modelBytes]; the engine creates each
     * session from its file and keeps no second copy), plus the KV cache at its largest ([kvCacheBytes]). It leaves
     * out activations and the app itself, so it is the least the device must have free, not a promise.
     */
    val memoryNeeded: Long get() = modelBytes + kvCacheBytes

    /**
     * Refuses, before any session is created, a bundle that cannot fit in [availableBytes] (what the platform says
     * is free, e.g. Android's `ActivityManager.MemoryInfo.availMem`). The message gives the numbers in MB (10^6
     * bytes): "the bundle needs about X MB (model files Y MB loaded once plus the KV cache Z MB at N tokens) but the
     * device has W MB available". Returns [memoryNeeded] when it fits.
     */
    fun checkMemory(availableBytes: Long): Long {
        if (availableBytes < 0) throw InputError("available memory $availableBytes bytes is negative",
            "pass what the platform reports as free memory")
        val needed = memoryNeeded
        if (needed > availableBytes) {
            val capacity = if (kvCacheBytes > 0) " at $kvCapacity tokens" else ""
            throw BundleError("the bundle needs about ${mb(needed)} MB (model files ${mb(modelBytes)} MB loaded once " +
                "plus the KV cache ${mb(kvCacheBytes)} MB$capacity) but the device has ${mb(availableBytes)} MB " +
                "available", "close other apps, or export a smaller quantization (--quant int4) or a smaller model")
        }
        return needed
    }

    /** Tokens the KV cache holds at most: the static decoder's `kv_capacity`, else `generation.max_context`. */
    val kvCapacity: Long
        get() = manifest.components["text_decoder"]?.static?.opt("kv_capacity")?.long() ?: manifest.maxContext.toLong()

    /** The paths the manifest lists, in its order. */
    val listedNames: List<String> get() = listed.keys.toList()

    /**
     * Checks the size and sha256 of [names] (by default every file the manifest lists, components included),
     * streaming each one; [progress] gets (file, bytes done over all of them, total bytes) as it goes. A missing,
     * truncated or altered file is a [BundleError] naming it. Returns the bytes checked.
     */
    fun verify(names: Collection<String> = listedNames,
               progress: ((file: String, done: Long, total: Long) -> Unit)? = null): Long {
        val entries = names.map { entry(it) }
        val total = entries.sumOf { it.bytes }
        var done = 0L
        for (entry in entries) {
            val actual = sha256Of(entry) { read -> progress?.invoke(entry.path, done + read, total) }
            if (actual != entry.sha256) throw tampered(entry.path)
            done += entry.bytes
        }
        return done
    }

    /**
     * A file the manifest lists, whole, after checking its size and sha256 (so the tokenizer or golden record the
     * engine reads is the one the export wrote). Any other name is refused.
     */
    fun read(name: String): ByteArray {
        val entry = entry(name)
        if (entry.bytes > MAX_READ_BYTES) {
            throw BundleError("bundle file $name is ${entry.bytes} bytes, over the ${MAX_READ_BYTES} this engine " +
                "reads whole", "re-export the bundle")
        }
        presentSize(entry)
        val bytes = try { source.read(name) } catch (e: IOException) { throw unreadable(name, e) }
        if (bytes.size.toLong() != entry.bytes || sha256Hex(bytes) != entry.sha256) throw tampered(name)
        return bytes
    }

    fun readText(name: String): String = decodeUtf8(read(name), name)

    /** The listed file's entry; a name the manifest does not list is refused. */
    private fun entry(name: String): FileEntry = listed[name]
        ?: throw BundleError("${source.label} names a file its manifest does not list: '$name'",
            "re-export the bundle with `pocketvlm export`; never edit a manifest by hand")

    /** Whether the source has a file [name] (of any size; [verify] checks it). */
    fun exists(name: String): Boolean = source.size(name) != null

    private fun presentSize(entry: FileEntry) {
        val size = source.size(entry.path)
            ?: throw BundleError("bundle file ${entry.path} is missing from ${source.label}",
                "copy the whole bundle directory again (every file its manifest lists)")
        if (size != entry.bytes) {
            throw BundleError("bundle file ${entry.path} is $size bytes, its manifest says ${entry.bytes} " +
                "(truncated or replaced)", "copy the bundle again; never edit bundle files by hand")
        }
    }

    private fun sha256Of(entry: FileEntry, onRead: (Long) -> Unit): String {
        presentSize(entry)
        val digest = MessageDigest.getInstance("SHA-256")
        val buffer = ByteArray(1 shl 20)
        var read = 0L
        try {
            source.open(entry.path).use { input ->
                while (true) {
                    val n = input.read(buffer)
                    if (n < 0) break
                    digest.update(buffer, 0, n)
                    read += n
                    onRead(read)
                }
            }
        } catch (e: IOException) {
            throw unreadable(entry.path, e)
        }
        if (read != entry.bytes) throw tampered(entry.path)
        return hex(digest.digest())
    }

    private fun tampered(name: String) = BundleError(
        "bundle file $name does not match its sha256 in manifest.json (modified or truncated)",
        "re-export the bundle or copy it again; never edit bundle files by hand")

    private fun unreadable(name: String, e: IOException) =
        BundleError("bundle file $name cannot be read from ${source.label} (${e.message})",
            "copy the bundle again", e)

    companion object {
        const val MANIFEST = "manifest.json"
        private const val MAX_MANIFEST_BYTES = 16L shl 20
        private const val MAX_READ_BYTES = 256L shl 20
        private const val FLOAT_BYTES = 4L

        /**
         * Reads and checks `manifest.json` (the [Manifest] fields, and every path it names: listed, inside the
         * bundle). Nothing else is read; call [verify] before loading models.
         */
        fun open(source: BundleSource): Bundle {
            val size = source.size(MANIFEST) ?: throw BundleError(
                "${source.label} has no $MANIFEST: not a pocketvlm bundle, or an export that did not finish",
                "copy the whole --out directory of `pocketvlm export`")
            if (size > MAX_MANIFEST_BYTES) {
                throw BundleError("${source.label} $MANIFEST is $size bytes, over the $MAX_MANIFEST_BYTES a manifest " +
                    "may be", "re-export the bundle")
            }
            val bytes = try { source.read(MANIFEST) } catch (e: IOException) {
                throw BundleError("${source.label} $MANIFEST cannot be read (${e.message})", "copy the bundle again", e)
            }
            val manifest = Manifest.parse(decodeUtf8(bytes, MANIFEST))
            checkPaths(manifest, source.label)
            return Bundle(source, manifest, sha256Hex(bytes))
        }

        fun open(directory: File): Bundle {
            if (!directory.isDirectory) {
                throw BundleError("bundle directory not found: ${directory.path}",
                    "pass the --out directory of `pocketvlm export`")
            }
            return open(DirectorySource(directory))
        }

        /** Every path the manifest names stays inside the bundle, and every file the engine reads is listed. */
        private fun checkPaths(manifest: Manifest, label: String) {
            val listed = HashSet<String>()
            for (entry in manifest.files) {
                checkName(entry.path, label)
                if (!listed.add(entry.path)) {
                    throw BundleError("$label $MANIFEST lists '${entry.path}' twice", "re-export the bundle")
                }
                if (entry.bytes < 0 || !SHA256.matches(entry.sha256)) {
                    throw BundleError("$label $MANIFEST entry '${entry.path}' has a bad size or sha256",
                        "re-export the bundle")
                }
            }
            val named = mutableListOf<Pair<String, String>>()
            for ((name, spec) in manifest.components) {
                named += "component '$name'" to spec.file
                val data = manifest.root["components"][name].opt("external_data")
                data?.let { named += "component '$name' data" to it.string() }
                val entry = manifest.files.firstOrNull { it.path == spec.file }
                // a component's bytes are all it loads: its file, plus external data or (QNN) context binaries
                val alone = data == null && spec.format != "qnn_context"
                val sizeWrong = entry != null && (if (alone) entry.bytes != spec.bytes else entry.bytes > spec.bytes)
                if (entry != null && (entry.sha256 != spec.sha256 || sizeWrong)) {
                    throw BundleError("$label: component '$name' says ${spec.file} has sha256 ${spec.sha256} and " +
                        "${spec.bytes} bytes, the file list says ${entry.sha256} and ${entry.bytes}",
                        "re-export the bundle; never edit a manifest by hand")
                }
            }
            named += "tokenizer" to manifest.tokenizer.file
            manifest.golden?.let { named += "golden record" to it.file; named += "golden image" to it.image }
            manifest.app?.visionFeeds?.let { named += "app.vision_feeds" to it.file }
            for ((what, path) in named) {
                checkName(path, label)
                if (path !in listed) {
                    throw BundleError("$label: the $what file '$path' is not in the manifest's file list",
                        "re-export the bundle with `pocketvlm export`; never edit a manifest by hand")
                }
            }
        }

        private val SHA256 = Regex("[0-9a-f]{64}")
    }
}

/** A name inside a bundle: relative, '/'-separated, no empty, '.' or '..' segment, no backslash or drive. */
internal fun checkName(name: String, label: String) {
    val segments = name.split('/')
    val bad = name.isEmpty() || name.startsWith("/") || '\\' in name || ':' in name || '\u0000' in name ||
        segments.any { it.isEmpty() || it == "." || it == ".." }
    if (bad) {
        throw BundleError("$label names a file path that leaves the bundle or is not a plain relative path: '$name'",
            "re-export the bundle with `pocketvlm export`; never edit a manifest by hand")
    }
}

internal fun sha256Hex(bytes: ByteArray): String = hex(MessageDigest.getInstance("SHA-256").digest(bytes))

private fun hex(bytes: ByteArray): String {
    val digits = "0123456789abcdef"
    val out = StringBuilder(bytes.size * 2)
    for (b in bytes) {
        out.append(digits[(b.toInt() shr 4) and 0xf]).append(digits[b.toInt() and 0xf])
    }
    return out.toString()
}

private fun decodeUtf8(bytes: ByteArray, name: String): String {
    val decoder = Charsets.UTF_8.newDecoder()
    return try {
        decoder.decode(java.nio.ByteBuffer.wrap(bytes)).toString()
    } catch (e: java.nio.charset.CharacterCodingException) {
        throw BundleError("bundle file $name is not UTF-8 text", "re-export the bundle", e)
    }
}

private fun mb(bytes: Long): String = if (bytes >= 10_000_000) "${(bytes + 500_000) / 1_000_000}"
else String.format(java.util.Locale.ROOT, "%.1f", bytes / 1e6)

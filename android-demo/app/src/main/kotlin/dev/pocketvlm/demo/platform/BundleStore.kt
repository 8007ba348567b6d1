package dev.pocketvlm.demo.platform

import android.content.Context
import android.net.Uri
import android.provider.DocumentsContract
import dev.pocketvlm.engine.Bundle
import dev.pocketvlm.engine.InputError
import dev.pocketvlm.engine.PocketVlmException
import java.io.File
import java.io.IOException

/** A bundle directory on the phone and what its manifest says (or why it cannot be read). */
class BundleEntry(val name: String, val dir: File, val summary: String?, val problem: String?)

/**
 * The app's bundles: directories under `<external files dir>/bundles/` (`/sdcard/Android/data/dev.pocketvlm.demo/
 * files/bundles/NAME` on most phones), put there with `adb push` or copied in from a folder picked with the Storage
 * Access Framework (ONNX Runtime and LiteRT load models by file path, so a picked folder is copied, not read in
 * place). Results go to `<external files dir>/results/`.
 */
class BundleStore(context: Context) {
    private val resolver = context.contentResolver
    private val base: File = context.getExternalFilesDir(null) ?: context.filesDir
    val root: File = File(base, "bundles")
    val results: File = File(base, "results")

    init {
        root.mkdirs()
        results.mkdirs()
    }

    /** Every directory under [root], with its manifest's family / target / task (read only, no hashing). */
    fun list(): List<BundleEntry> = (root.listFiles()?.filter { it.isDirectory && !it.name.startsWith(".") }
        ?: emptyList()).sortedBy { it.name }.map { dir ->
        try {
            val m = Bundle.open(dir).manifest
            BundleEntry(dir.name, dir, "${m.family} · ${m.target} · ${m.quantization} · ${m.task}", null)
        } catch (e: PocketVlmException) {
            BundleEntry(dir.name, dir, null, e.line)
        }
    }

    /**
     * Copies the folder [tree] (an `ACTION_OPEN_DOCUMENT_TREE` result) into [root] under its own name, replacing a
     * bundle of that name only once the copy is complete. A folder without `manifest.json` is refused before
     * anything is copied. [progress] gets (file, bytes copied, total bytes).
     */
    fun import(tree: Uri, progress: (String, Long, Long) -> Unit): File {
        val top = DocumentsContract.buildDocumentUriUsingTree(tree, DocumentsContract.getTreeDocumentId(tree))
        val name = safeName(query(top).firstOrNull()?.name ?: "bundle")
        val files = ArrayList<Pair<String, Doc>>()
        collect(tree, DocumentsContract.getTreeDocumentId(tree), "", files)
        if (files.none { it.first == Bundle.MANIFEST }) {
            throw InputError("the folder '$name' has no ${Bundle.MANIFEST}: not a pocketvlm bundle",
                "pick the --out folder of `pocketvlm export` itself")
        }
        val total = files.sumOf { it.second.size }
        val staging = File(root, ".importing-$name")
        staging.deleteRecursively()
        var done = 0L
        try {
            for ((path, doc) in files) {
                val target = File(staging, path).also { it.parentFile?.mkdirs() }
                val uri = DocumentsContract.buildDocumentUriUsingTree(tree, doc.id)
                val input = resolver.openInputStream(uri) ?: throw IOException("cannot open $path")
                input.use { src ->
                    target.outputStream().use { dst ->
                        val buffer = ByteArray(1 shl 20)
                        while (true) {
                            val n = src.read(buffer)
                            if (n < 0) break
                            dst.write(buffer, 0, n)
                            done += n
                            progress(path, done, total)
                        }
                    }
                }
            }
            val dest = File(root, name)
            if (dest.exists() && !dest.deleteRecursively()) throw IOException("cannot replace ${dest.path}")
            if (!staging.renameTo(dest)) throw IOException("cannot rename ${staging.path} to ${dest.path}")
            return dest
        } catch (e: IOException) {
            staging.deleteRecursively()
            throw InputError("copying '$name' failed after ${done / 1_000_000} of ${total / 1_000_000} MB " +
                "(${e.message})", "check the free space on the phone and pick the folder again", e)
        }
    }

    fun delete(entry: BundleEntry): Boolean = entry.dir.canonicalFile.parentFile == root.canonicalFile &&
        entry.dir.deleteRecursively()

    private class Doc(val id: String, val name: String, val isDir: Boolean, val size: Long)

    private fun collect(tree: Uri, parentId: String, prefix: String, out: MutableList<Pair<String, Doc>>) {
        val children = DocumentsContract.buildChildDocumentsUriUsingTree(tree, parentId)
        for (doc in query(children)) {
            val path = prefix + safeName(doc.name)
            if (doc.isDir) collect(tree, doc.id, "$path/", out) else out += path to doc
        }
    }

    private fun query(uri: Uri): List<Doc> {
        val columns = arrayOf(DocumentsContract.Document.COLUMN_DOCUMENT_ID,
            DocumentsContract.Document.COLUMN_DISPLAY_NAME, DocumentsContract.Document.COLUMN_MIME_TYPE,
            DocumentsContract.Document.COLUMN_SIZE)
        val cursor = resolver.query(uri, columns, null, null, null) ?: return emptyList()
        return cursor.use { c ->
            val docs = ArrayList<Doc>()
            while (c.moveToNext()) {
                val isDir = c.getString(2) == DocumentsContract.Document.MIME_TYPE_DIR
                docs += Doc(c.getString(0), c.getString(1) ?: c.getString(0), isDir, if (c.isNull(3)) 0L else c.getLong(3))
            }
            docs
        }
    }

    /** A file name the copy can use: no separators, no `.` / `..`, nothing hidden. */
    private fun safeName(raw: String): String {
        val cleaned = raw.replace('/', '_').replace('\\', '_').trim()
        if (cleaned.isEmpty() || cleaned == "." || cleaned == "..") {
            throw InputError("the picked folder holds an entry named '$raw'", "pick the bundle folder itself")
        }
        return cleaned
    }
}

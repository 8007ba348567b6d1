package dev.pocketvlm.engine

/**
 * pocketvlm's typed errors, as in the Python runtime (`runtime/errors.py`) and the web demo (`errors.ts`): each one
 * names the problem and the fix in one line, which the app shows instead of crashing.
 */
sealed class PocketVlmException(val problem: String, val fix: String, cause: Throwable? = null) :
    Exception("$problem; $fix", cause) {
    /** The one line the app shows: "kind: problem (fix)". */
    val line: String get() = "$kind: $problem ($fix)"
    abstract val kind: String
}

/** The bundle is unusable: missing or tampered file, a newer schema, a field this engine cannot read. */
class BundleError(problem: String, fix: String, cause: Throwable? = null) : PocketVlmException(problem, fix, cause) {
    override val kind = "bundle error"
}

/** The request is unusable: an empty prompt, an image the decoder cannot read, a prompt longer than the context. */
class InputError(problem: String, fix: String, cause: Throwable? = null) : PocketVlmException(problem, fix, cause) {
    override val kind = "input error"
}

/** A backend failed while running a component (ONNX Runtime / LiteRT raised). */
class InferenceError(problem: String, fix: String, cause: Throwable? = null) : PocketVlmException(problem, fix, cause) {
    override val kind = "inference error"
}

/**
 * Runs [load], a backend's runtime loading the bundle file [fileName], and makes [BundleError]s of the two ways that
 * fails: the runtime's own [E] (worded by [refused]) and the phone running out of memory (naming the file). Anything
 * else is rethrown unchanged.
 */
inline fun <T, reified E : Exception> loadingModel(fileName: String, refused: (E) -> BundleError, load: () -> T): T =
    try {
        load()
    } catch (e: OutOfMemoryError) {
        throw BundleError("the phone ran out of memory loading $fileName",
            "close other apps, or export a smaller quantization", e)
    } catch (e: Exception) {
        throw if (e is E) refused(e) else e
    }

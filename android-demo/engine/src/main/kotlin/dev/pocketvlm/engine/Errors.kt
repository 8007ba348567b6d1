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

package dev.pocketvlm.demo.model

import dev.pocketvlm.engine.Bundle
import dev.pocketvlm.engine.Cancelled
import dev.pocketvlm.engine.Captioner
import dev.pocketvlm.engine.LoadFigures
import dev.pocketvlm.engine.Manifest
import dev.pocketvlm.engine.PocketVlmException
import dev.pocketvlm.engine.SessionFactory
import dev.pocketvlm.engine.Tokenizer
import dev.pocketvlm.engine.ZeroShotClassifier
import java.util.concurrent.Executor
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.atomic.AtomicBoolean

/**
 * A bundle loaded for use: its sessions (a backend behind `LoopedSessions`), the tokenizer, and what the app does
 * with it ([captioner] for a VLM, [classifier] for a dual encoder). [accelerator] is the result file's
 * `device.backend`, [notes] what the user should know about how it runs (a GPU fallback, the QNN SoC chosen).
 *
 * It owns [sessions]: [close] closes the factory, which releases every session and the decoder; the captioner, the
 * classifier and a self-test's replay only borrow them, and none is used after this is closed.
 */
class LoadedBundle(
    val name: String,
    val bundle: Bundle,
    val sessions: SessionFactory,
    val tokenizer: Tokenizer,
    val accelerator: String,
    val threads: Int?,
    val tools: Map<String, String>,
    val load: LoadFigures,
    val notes: List<String>,
) : AutoCloseable {
    val isVlm: Boolean get() = bundle.manifest.task == Manifest.VLM_TASK
    val captioner: Captioner? = if (isVlm) Captioner(bundle, sessions, tokenizer) else null
    val classifier: ZeroShotClassifier? = if (isVlm) null else ZeroShotClassifier(bundle, sessions, tokenizer)

    /** One line for the screen: "NAME: family target task, accelerator". */
    val title: String
        get() = bundle.manifest.let { "$name: ${it.family} ${it.target} (${it.quantization}) on $accelerator" }

    override fun close() = sessions.close()
}

/** A task's outcome for the UI: a value, or the one line to show instead of crashing. */
sealed class Outcome<out T> {
    class Done<T>(val value: T) : Outcome<T>()
    class Failed(val line: String) : Outcome<Nothing>()
}

/**
 * The one thread every model call runs on (loading, captions, the self-test, benchmarks): LiteRT signatures, QNN
 * contexts and the static decoders hold state between calls, so requests take turns here. Results come back on
 * [ui]. Every failure becomes an [Outcome.Failed] line (the engine's typed errors give "kind: problem (fix)");
 * nothing thrown on this thread can crash the app.
 */
class ModelHost(private val ui: Executor) {
    private val worker: ExecutorService = Executors.newSingleThreadExecutor { r ->
        Thread(r, "pocketvlm-model").apply { isDaemon = true }
    }
    private val cancelFlag = AtomicBoolean(false)

    @Volatile
    var loaded: LoadedBundle? = null
        private set

    @Volatile
    var busy: Boolean = false
        private set

    /** Asks the running task to stop at its next token or image. */
    fun cancel() = cancelFlag.set(true)

    val cancelled: () -> Boolean = { cancelFlag.get() }

    /** Runs [task] on the model thread; [done] gets its outcome on the UI thread. */
    fun <T> submit(task: () -> T, done: (Outcome<T>) -> Unit) {
        worker.execute {
            busy = true
            cancelFlag.set(false)
            val outcome: Outcome<T> = try {
                Outcome.Done(task())
            } catch (e: Throwable) {
                Outcome.Failed(describe(e))
            } finally {
                busy = false
            }
            ui.execute { done(outcome) }
        }
    }

    /** Replaces the loaded bundle (the old one is closed first, on the model thread, freeing its memory). */
    fun load(open: () -> LoadedBundle, done: (Outcome<LoadedBundle>) -> Unit) = submit({
        loaded?.let { old -> loaded = null; old.close() }
        open().also { loaded = it }
    }, done)

    fun unload(done: (Outcome<Unit>) -> Unit) = submit({
        loaded?.let { old -> loaded = null; old.close() }
        Unit
    }, done)

    companion object {
        fun describe(e: Throwable): String = when (e) {
            is PocketVlmException -> e.line
            is Cancelled -> "stopped"
            is OutOfMemoryError -> "out of memory: ${e.message ?: "the phone cannot hold this"} (close other apps, " +
                "or export a smaller quantization)"
            else -> "unexpected error: ${e.javaClass.simpleName}: ${e.message ?: "no message"} (please report it " +
                "with the bundle's manifest.json)"
        }
    }
}

package dev.pocketvlm.demo.model

import dev.pocketvlm.engine.ComponentSession
import dev.pocketvlm.engine.InputError
import dev.pocketvlm.engine.Manifest
import dev.pocketvlm.engine.SessionFactory
import dev.pocketvlm.engine.Tensor
import dev.pocketvlm.engine.TextDecoder

/**
 * A static-shape encoder exported at batch 1 (`static.loop_inputs` in the manifest: LiteRT and QNN bundles) over a
 * batch, as the Python runtime's `run_rows` (`runtime/static_decode.py`): one call per row of the loop inputs (the
 * other inputs passed whole), outputs concatenated along axis 0. Feeds that already have the static shapes go
 * through once. Zero-shot labels need it: the text encoder gets one row per label.
 *
 * Platform-free (no android.*): it belongs in the engine core next to the decoders, and lives here until it moves.
 */
class RowLoop(
    private val inner: ComponentSession,
    private val loop: List<String>,
    private val shapes: Map<String, IntArray>,
    private val outputs: List<String>,
) : ComponentSession {
    override val backend: String get() = inner.backend

    override fun run(feeds: Map<String, Tensor>): Map<String, Tensor> {
        val asStatic = shapes.all { (name, shape) -> feeds[name]?.shape?.contentEquals(shape) ?: true }
        if (loop.isEmpty() || asStatic) return inner.run(feeds)
        val rows = loop.mapNotNull { feeds[it]?.shape?.firstOrNull() }.toSet()
        if (rows.size != 1) {
            throw InputError("inputs $loop disagree on their first dimension: ${rows.sorted()}",
                "pass the same number of rows for each")
        }
        val count = rows.single()
        val parts = (0 until count).map { row ->
            inner.run(feeds.mapValues { (name, t) -> if (name in loop) row(t, row) else t })
        }
        return outputs.associateWith { name -> concat(name, parts.map { it[name] }) }
    }

    override fun close() = inner.close()

    private fun row(t: Tensor, index: Int): Tensor {
        val inner = t.size / t.shape[0]
        val shape = t.shape.copyOf().also { it[0] = 1 }
        return when (t) {
            is Tensor.F32 -> Tensor.F32(shape, t.data.copyOfRange(index * inner, (index + 1) * inner))
            is Tensor.I64 -> Tensor.I64(shape, t.data.copyOfRange(index * inner, (index + 1) * inner))
        }
    }

    private fun concat(name: String, parts: List<Tensor?>): Tensor {
        val present = parts.map {
            it ?: throw InputError("a row of the batch gave no '$name'", "re-export the bundle")
        }
        val first = present.first()
        val shape = first.shape.copyOf().also { it[0] = present.sumOf { p -> p.shape[0] } }
        return when (first) {
            is Tensor.F32 -> Tensor.F32(shape, FloatArray(shape.fold(1) { a, b -> a * b }).also { out ->
                var at = 0
                for (p in present) p.floats().let { System.arraycopy(it, 0, out, at, it.size); at += it.size }
            })
            is Tensor.I64 -> Tensor.I64(shape, LongArray(shape.fold(1) { a, b -> a * b }).also { out ->
                var at = 0
                for (p in present) p.longs().let { System.arraycopy(it, 0, out, at, it.size); at += it.size }
            })
        }
    }
}

/**
 * A backend's sessions with [RowLoop] around every component whose manifest entry lists `static.loop_inputs`
 * (the signature's shapes come from `static.signatures`). ONNX bundles (dynamic batch) pass through unchanged.
 */
class LoopedSessions(private val inner: SessionFactory, private val manifest: Manifest) : SessionFactory {
    private val wrapped = HashMap<String, ComponentSession>()

    @Synchronized
    override fun session(component: String): ComponentSession = wrapped.getOrPut(component) {
        val session = inner.session(component)
        val spec = manifest.component(component)
        val loop = spec.static?.opt("loop_inputs")?.strings() ?: emptyList()
        val shapes = spec.signatures.values.singleOrNull()
        if (loop.isEmpty() || shapes == null) session else RowLoop(session, loop, shapes, spec.outputs.map { it.name })
    }

    override fun textDecoder(): TextDecoder = inner.textDecoder()
}

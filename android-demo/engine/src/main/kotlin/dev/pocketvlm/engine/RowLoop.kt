package dev.pocketvlm.engine

/**
 * A static-shape encoder exported at batch 1 (`static.loop_inputs` in the manifest: LiteRT and QNN bundles) over a
 * batch, as the Python runtime's `run_rows` (`runtime/static_decode.py`): feeds that already have the signature's
 * [shapes] go through in one call; otherwise one call per row of the [loop] inputs (the other inputs passed whole),
 * and the [outputs] concatenated along axis 0. Zero-shot labels need it: the text encoder gets one row per label.
 *
 * Refused, as in Python: loop inputs that disagree on their first dimension ([InputError]); where Python stops on a
 * missing feed, an empty batch or parts numpy cannot concatenate, this is an [InputError] (what the caller fed) or an
 * [InferenceError] (what the model gave) naming it. [inner] is lent, like every session: this closes nothing.
 */
class RowLoop(
    private val inner: ComponentSession,
    private val loop: List<String>,
    private val shapes: Map<String, IntArray>,
    private val outputs: List<String>,
) : ComponentSession {
    override val backend: String get() = inner.backend

    override fun run(feeds: Map<String, Tensor>): Map<String, Tensor> {
        if (loop.isEmpty() || shapes.all { (name, shape) -> fed(feeds, name).shape.contentEquals(shape) }) {
            return inner.run(feeds)
        }
        val rows = loop.map { name ->
            fed(feeds, name).shape.firstOrNull() ?: throw InputError("loop input '$name' is a scalar",
                "pass it with a batch dimension first")
        }.toSet()
        if (rows.size != 1) {
            throw InputError("inputs $loop disagree on their first dimension: ${rows.sorted()}",
                "pass the same number of rows for each")
        }
        val count = rows.single()
        if (count == 0) throw InputError("inputs $loop have no rows", "pass one row or more")
        val parts = (0 until count).map { index ->
            inner.run(feeds.mapValues { (name, t) -> if (name in loop) row(t, index) else t })
        }
        return outputs.associateWith { name -> concat(name, parts) }
    }

    private fun fed(feeds: Map<String, Tensor>, name: String): Tensor = feeds[name]
        ?: throw InputError("input '$name' of this static-shape component is not fed (it has ${feeds.keys})",
            "feed every input its signature lists")

    private fun row(t: Tensor, index: Int): Tensor {
        val width = t.size / t.shape[0]
        val shape = t.shape.copyOf().also { it[0] = 1 }
        return when (t) {
            is Tensor.F32 -> Tensor.F32(shape, t.data.copyOfRange(index * width, (index + 1) * width))
            is Tensor.I64 -> Tensor.I64(shape, t.data.copyOfRange(index * width, (index + 1) * width))
        }
    }

    /** Output [name] of every row's call along axis 0: the same dtype and trailing dims in each, as numpy needs. */
    private fun concat(name: String, parts: List<Map<String, Tensor>>): Tensor {
        val present = parts.mapIndexed { index, part ->
            part[name] ?: throw InferenceError("row $index of the batch gave no '$name' (it gave ${part.keys})",
                "re-export the bundle")
        }
        val first = present.first()
        for ((index, part) in present.withIndex()) {
            val fits = part.dtype == first.dtype && part.shape.size == first.shape.size && part.shape.isNotEmpty() &&
                (1 until part.shape.size).all { part.shape[it] == first.shape[it] }
            if (!fits) {
                throw InferenceError("row $index of the batch gave '$name' ${part.dtype} ${part.shape.toList()}, row " +
                    "0 gave ${first.dtype} ${first.shape.toList()}: they do not concatenate", "re-export the bundle")
            }
        }
        val shape = first.shape.copyOf().also { it[0] = present.sumOf { p -> p.shape[0] } }
        var at = 0
        return when (first) {
            is Tensor.F32 -> Tensor.F32(shape, FloatArray(present.sumOf { it.size }).also { out ->
                for (p in present) p.floats().let { System.arraycopy(it, 0, out, at, it.size); at += it.size }
            })
            is Tensor.I64 -> Tensor.I64(shape, LongArray(present.sumOf { it.size }).also { out ->
                for (p in present) p.longs().let { System.arraycopy(it, 0, out, at, it.size); at += it.size }
            })
        }
    }
}

/**
 * A backend's sessions with a [RowLoop] around every component whose manifest entry lists `static.loop_inputs`
 * (the signature's shapes from `static.signatures`, as the Python runtime's LiteRT / QNN sessions do); ONNX bundles
 * (dynamic batch) pass through unchanged. Owns [inner]: closing this closes it.
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

    override fun close() = inner.close()
}

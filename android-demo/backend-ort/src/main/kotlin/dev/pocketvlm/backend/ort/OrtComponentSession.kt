package dev.pocketvlm.backend.ort

import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtException
import ai.onnxruntime.OrtSession
import ai.onnxruntime.TensorInfo
import ai.onnxruntime.platform.Fp16Conversions
import dev.pocketvlm.engine.ComponentSession
import dev.pocketvlm.engine.InferenceError
import dev.pocketvlm.engine.InputError
import dev.pocketvlm.engine.Tensor
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.FloatBuffer
import java.nio.IntBuffer
import java.nio.LongBuffer
import java.nio.ShortBuffer

/**
 * One bundle component (or one entry of a static decoder: a QNN context's `prefill_N` / `decode`) on an ONNX Runtime
 * session, as the Python runtime's `OrtSession` / `QnnSession._call`: the engine's float32 / int64 [Tensor]s are
 * copied into ORT tensors of the graph's own input types (float16, int32, bool and uint8 too, which HTP graphs may
 * take), and the outputs come back as float32 / int64. Only the inputs the graph declares are fed, so callers may
 * pass a superset; a missing one is an [InputError] naming it. Any ORT failure while running is an
 * [InferenceError] with the file's name and ORT's first line.
 *
 * ORT's `OrtSession.run` is thread-safe, so one session may serve several threads (as in Python); the static
 * decoders built over these sessions hold a cache and are not.
 */
class OrtComponentSession internal constructor(
    private val env: OrtEnvironment,
    private val session: OrtSession,
    /** The model file's name, for messages. */
    val name: String,
    override val backend: String,
) : ComponentSession, AutoCloseable {
    /** Input name -> (element type, shape with -1 for a dynamic dim), read once from the graph. */
    val inputs: Map<String, Pair<OnnxJavaType, LongArray>>
    val outputNames: List<String>

    init {
        try {
            inputs = session.inputInfo.mapValues { (_, node) ->
                val info = node.info as? TensorInfo ?: throw InferenceError(
                    "$name has a non-tensor input '${node.name}'", "re-export the bundle")
                info.type to info.shape
            }
            outputNames = session.outputNames.toList()
        } catch (e: OrtException) {
            throw InferenceError("ONNX Runtime cannot describe $name: ${firstLine(e)}", "re-export the bundle", e)
        }
    }

    override fun run(feeds: Map<String, Tensor>): Map<String, Tensor> {
        val created = ArrayList<OnnxTensor>(inputs.size)
        try {
            val ortFeeds = LinkedHashMap<String, OnnxTensor>()
            for ((input, typeAndShape) in inputs) {
                val tensor = feeds[input] ?: throw InputError(
                    "$name needs input '$input', which the engine did not pass (it passed ${feeds.keys})",
                    "re-export the bundle with the pocketvlm version this app was built with")
                checkShape(input, tensor, typeAndShape.second)
                val value = toOrt(input, tensor, typeAndShape.first)
                created += value
                ortFeeds[input] = value
            }
            session.run(ortFeeds).use { result ->
                val out = LinkedHashMap<String, Tensor>(outputNames.size)
                for ((index, output) in outputNames.withIndex()) {
                    val value = result.get(index) as? OnnxTensor
                        ?: throw InferenceError("$name output '$output' is not a tensor", "re-export the bundle")
                    out[output] = fromOrt(output, value)
                }
                return out
            }
        } catch (e: OrtException) {
            throw InferenceError("ONNX Runtime failed running $name: ${firstLine(e)}",
                "check the inputs (token ids within the vocabulary, image sizes the bundle takes); if they are " +
                    "right, re-export the bundle", e)
        } finally {
            for (t in created) t.close()
        }
    }

    /** A static dim that differs is refused by name before ORT sees it (a QNN context is fixed at its shapes). */
    private fun checkShape(input: String, tensor: Tensor, declared: LongArray) {
        val ok = declared.size == tensor.shape.size &&
            declared.indices.all { declared[it] < 0 || declared[it] == tensor.shape[it].toLong() }
        if (!ok) {
            throw InputError("input '$input' has shape ${tensor.shape.toList()}, but $name takes " +
                "${declared.map { if (it < 0) "?" else it.toString() }}",
                "re-export the bundle with static shapes that cover this input")
        }
    }

    private fun toOrt(input: String, tensor: Tensor, type: OnnxJavaType): OnnxTensor {
        val shape = LongArray(tensor.shape.size) { tensor.shape[it].toLong() }
        return when (type) {
            OnnxJavaType.FLOAT -> OnnxTensor.createTensor(env, FloatBuffer.wrap(asFloats(tensor)), shape)
            OnnxJavaType.FLOAT16 -> {
                val floats = asFloats(tensor)
                val halves = ShortBuffer.allocate(floats.size)
                for (f in floats) halves.put(Fp16Conversions.floatToFp16(f))
                halves.rewind()
                OnnxTensor.createTensor(env, halves, shape, OnnxJavaType.FLOAT16)
            }
            OnnxJavaType.INT64 -> OnnxTensor.createTensor(env, LongBuffer.wrap(asLongs(input, tensor)), shape)
            OnnxJavaType.INT32 -> {
                val longs = asLongs(input, tensor)
                OnnxTensor.createTensor(env, IntBuffer.wrap(IntArray(longs.size) { narrow(input, longs[it]) }), shape)
            }
            OnnxJavaType.BOOL, OnnxJavaType.UINT8, OnnxJavaType.INT8 -> {
                val longs = asLongs(input, tensor)
                val bytes = ByteBuffer.allocateDirect(longs.size).order(ByteOrder.nativeOrder())
                for (v in longs) bytes.put(v.toInt().toByte())
                bytes.rewind()
                OnnxTensor.createTensor(env, bytes, shape, type)
            }
            else -> throw InputError("$name input '$input' is of type $type, which this app does not feed",
                "re-export the bundle with float32 / int64 inputs")
        }
    }

    private fun fromOrt(output: String, value: OnnxTensor): Tensor {
        val shape = value.info.shape.map { it.toInt() }.toIntArray()
        return when (value.info.type) {
            OnnxJavaType.FLOAT, OnnxJavaType.FLOAT16, OnnxJavaType.BFLOAT16 -> {
                val buffer = value.floatBuffer
                    ?: throw InferenceError("$name output '$output' could not be read as floats", "re-export the bundle")
                Tensor.F32(shape, FloatArray(buffer.remaining()).also { buffer.get(it) })
            }
            OnnxJavaType.INT64 -> {
                val buffer = value.longBuffer
                Tensor.I64(shape, LongArray(buffer.remaining()).also { buffer.get(it) })
            }
            OnnxJavaType.INT32 -> {
                val buffer = value.intBuffer
                Tensor.I64(shape, LongArray(buffer.remaining()) { buffer.get().toLong() })
            }
            OnnxJavaType.BOOL, OnnxJavaType.UINT8 -> {
                val buffer = value.byteBuffer
                Tensor.I64(shape, LongArray(buffer.remaining()) { (buffer.get().toInt() and 0xff).toLong() })
            }
            OnnxJavaType.INT8 -> {
                val buffer = value.byteBuffer
                Tensor.I64(shape, LongArray(buffer.remaining()) { buffer.get().toLong() })
            }
            else -> throw InferenceError("$name output '$output' is of type ${value.info.type}, which this app " +
                "does not read", "re-export the bundle with float32 / int64 outputs")
        }
    }

    /** Float inputs take the engine's floats; integer feeds (masks) widen, as HTP graphs may take masks as floats. */
    private fun asFloats(tensor: Tensor): FloatArray = when (tensor) {
        is Tensor.F32 -> tensor.data
        is Tensor.I64 -> FloatArray(tensor.data.size) { tensor.data[it].toFloat() }
    }

    private fun asLongs(input: String, tensor: Tensor): LongArray = when (tensor) {
        is Tensor.I64 -> tensor.data
        is Tensor.F32 -> throw InputError("$name input '$input' takes integers, the engine passed float32",
            "re-export the bundle with the pocketvlm version this app was built with")
    }

    private fun narrow(input: String, v: Long): Int {
        if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) {
            throw InputError("$name input '$input' holds $v, outside int32", "check the token ids and positions")
        }
        return v.toInt()
    }

    private var closed = false

    /** Closed by its owner, the [OrtBackend], only (what it lends out never closes it); idempotent. */
    @Synchronized
    override fun close() {
        if (closed) return
        closed = true
        try {
            session.close()
        } catch (e: OrtException) {
            // closing releases native memory; a failure here leaves nothing the app could act on
        }
    }

    companion object {
        internal fun firstLine(e: Throwable): String =
            (e.message ?: e.javaClass.simpleName).trim().lineSequence().firstOrNull()?.take(300) ?: "unknown error"
    }
}

package dev.pocketvlm.backend.litert

import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.LiteRtException
import com.google.ai.edge.litert.TensorBuffer
import com.google.ai.edge.litert.TensorType
import dev.pocketvlm.engine.BundleError
import dev.pocketvlm.engine.ComponentSession
import dev.pocketvlm.engine.InferenceError
import dev.pocketvlm.engine.InputError
import dev.pocketvlm.engine.Tensor

/**
 * One signature of a `.tflite` component on a LiteRT [CompiledModel], as one [ComponentSession]: an encoder's one
 * signature, or a decoder's `prefill_N` / `decode` (which the engine core's `StaticKvDecoder` drives). The input
 * and output buffers are created once and reused; every call checks each feed against the signature's static shape
 * from the manifest (`static.signatures`), writes it in the signature's element type (float32, int32, int64, bool,
 * int8), runs, and reads the outputs back as float32 / int64. A LiteRT failure while running is an
 * [InferenceError]. Not reentrant (the buffers are the signature's own): the app runs one request at a time.
 *
 * Written against LiteRT 2.3.0's Kotlin API (`CompiledModel.createInputBuffer(name, signature)`,
 * `run(Map, Map, signature)`, `TensorBuffer.write*` / `read*`); NOT compiled where this project is checked, which
 * has no LiteRT jar: the first build in Android Studio is its first compile.
 */
class LiteRtSignatureSession internal constructor(
    private val model: CompiledModel,
    /** The signature's name in the `.tflite` file. */
    val signature: String,
    /** Input name -> static shape, from the manifest's `static.signatures`. */
    private val shapes: Map<String, IntArray>,
    outputNames: List<String>,
    /** The file, for messages. */
    private val file: String,
    override val backend: String,
) : ComponentSession, AutoCloseable {
    private val inputTypes: Map<String, TensorType.ElementType>
    private val outputTypes: Map<String, TensorType>
    private val inputBuffers: Map<String, TensorBuffer>
    private val outputBuffers: Map<String, TensorBuffer>
    private var closed = false

    init {
        val created = ArrayList<TensorBuffer>()
        try {
            inputTypes = shapes.keys.associateWith { model.getInputTensorType(it, signature).elementType }
            outputTypes = outputNames.associateWith { model.getOutputTensorType(it, signature) }
            inputBuffers = shapes.keys.associateWith { model.createInputBuffer(it, signature).also(created::add) }
            outputBuffers = outputNames.associateWith { model.createOutputBuffer(it, signature).also(created::add) }
        } catch (e: LiteRtException) {
            for (b in created) b.close()
            throw BundleError("LiteRT cannot set up signature '$signature' of $file: ${firstLine(e)}",
                "re-export the bundle with --target tflite and the pocketvlm version this app was built with", e)
        }
    }

    @Synchronized
    override fun run(feeds: Map<String, Tensor>): Map<String, Tensor> {
        check(!closed) { "signature '$signature' of $file was closed" }
        for ((name, shape) in shapes) {
            val tensor = feeds[name] ?: throw InputError("signature '$signature' of $file needs input '$name', which " +
                "the engine did not pass (it passed ${feeds.keys})",
                "re-export the bundle with the pocketvlm version this app was built with")
            if (!tensor.shape.contentEquals(shape)) {
                throw InputError("input '$name' has shape ${tensor.shape.toList()}, but signature '$signature' of " +
                    "this LiteRT bundle is fixed at ${shape.toList()}",
                    "re-export with --target tflite and static shapes that cover this input")
            }
            write(name, tensor, inputTypes.getValue(name), inputBuffers.getValue(name))
        }
        try {
            model.run(inputBuffers, outputBuffers, signature)
            return outputBuffers.mapValues { (name, buffer) -> read(name, buffer, outputTypes.getValue(name)) }
        } catch (e: LiteRtException) {
            throw InferenceError("LiteRT failed running signature '$signature' of $file: ${firstLine(e)}",
                "check the inputs (token ids within the vocabulary); if they are right, re-export the bundle", e)
        }
    }

    private fun write(name: String, tensor: Tensor, type: TensorType.ElementType, buffer: TensorBuffer) {
        try {
            when (type) {
                TensorType.ElementType.FLOAT -> buffer.writeFloat(when (tensor) {
                    is Tensor.F32 -> tensor.data
                    is Tensor.I64 -> FloatArray(tensor.data.size) { tensor.data[it].toFloat() }
                })
                TensorType.ElementType.INT64 -> buffer.writeLong(longs(name, tensor))
                TensorType.ElementType.INT -> {
                    val values = longs(name, tensor)
                    buffer.writeInt(IntArray(values.size) { i ->
                        val v = values[i]
                        if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) {
                            throw InputError("input '$name' holds $v, outside int32", "check the token ids and positions")
                        }
                        v.toInt()
                    })
                }
                TensorType.ElementType.BOOLEAN -> buffer.writeBoolean(longs(name, tensor).let { v ->
                    BooleanArray(v.size) { v[it] != 0L }
                })
                TensorType.ElementType.INT8 -> buffer.writeInt8(longs(name, tensor).let { v ->
                    ByteArray(v.size) { v[it].toInt().toByte() }
                })
                else -> throw InputError("input '$name' of signature '$signature' is of type $type, which this app " +
                    "does not feed", "re-export the bundle with float32 / int64 inputs")
            }
        } catch (e: LiteRtException) {
            throw InferenceError("LiteRT cannot write input '$name' of signature '$signature': ${firstLine(e)}",
                "re-export the bundle", e)
        }
    }

    private fun read(name: String, buffer: TensorBuffer, type: TensorType): Tensor {
        val shape = type.layout?.dimensions?.toIntArray()
            ?: throw InferenceError("signature '$signature' of $file gives output '$name' no static shape",
                "re-export with --target tflite (static shapes)")
        return when (type.elementType) {
            TensorType.ElementType.FLOAT -> Tensor.F32(shape, buffer.readFloat())
            TensorType.ElementType.INT64 -> Tensor.I64(shape, buffer.readLong())
            TensorType.ElementType.INT -> buffer.readInt().let { v -> Tensor.I64(shape, LongArray(v.size) { v[it].toLong() }) }
            TensorType.ElementType.INT8 -> buffer.readInt8().let { v -> Tensor.I64(shape, LongArray(v.size) { v[it].toLong() }) }
            TensorType.ElementType.BOOLEAN -> buffer.readBoolean().let { v ->
                Tensor.I64(shape, LongArray(v.size) { if (v[it]) 1L else 0L })
            }
            else -> throw InferenceError("output '$name' of signature '$signature' is of type ${type.elementType}, " +
                "which this app does not read", "re-export the bundle with float32 / int64 outputs")
        }
    }

    private fun longs(name: String, tensor: Tensor): LongArray = when (tensor) {
        is Tensor.I64 -> tensor.data
        is Tensor.F32 -> throw InputError("input '$name' of signature '$signature' takes integers, the engine passed " +
            "float32", "re-export the bundle with the pocketvlm version this app was built with")
    }

    /** Closes this signature's buffers (the model is the backend's); only the [LiteRtBackend] closes it. Idempotent. */
    @Synchronized
    override fun close() {
        if (closed) return
        closed = true
        for (b in inputBuffers.values) b.close()
        for (b in outputBuffers.values) b.close()
    }

    companion object {
        internal fun firstLine(e: Throwable): String =
            (e.message ?: e.javaClass.simpleName).trim().lineSequence().firstOrNull()?.take(300) ?: "unknown error"
    }
}

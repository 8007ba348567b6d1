package dev.pocketvlm.demo.platform

import android.content.Context
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.ImageDecoder
import android.net.Uri
import dev.pocketvlm.engine.InputError
import dev.pocketvlm.engine.Rgba
import java.io.IOException
import java.nio.ByteBuffer

/**
 * Pictures into the engine core's [Rgba] (8-bit, not premultiplied), with the pixel values as the file stores them:
 * the bytes are copied out of the bitmap as they are (`copyPixelsToBuffer`, no colour-space conversion, as Pillow
 * ignores embedded profiles too), and a photo's EXIF orientation is applied (ImageDecoder does, as the Python
 * runtime and the web demo do).
 */
object Images {
    /**
     * Photos are decoded at most this many pixels on their long side (the platform decoder downsamples larger ones
     * first; the bundle's own resize then runs on that), so a 50 MP photo does not take 200 MB of memory.
     */
    const val MAX_SIDE = 2048

    fun fromUri(context: Context, uri: Uri): Rgba {
        val bitmap = try {
            ImageDecoder.decodeBitmap(ImageDecoder.createSource(context.contentResolver, uri)) { decoder, info, _ ->
                decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
                decoder.isUnpremultipliedRequired = true
                val (w, h) = info.size.width to info.size.height
                val longest = maxOf(w, h)
                if (longest > MAX_SIDE) {
                    val scale = MAX_SIDE.toDouble() / longest
                    decoder.setTargetSize(maxOf(1, (w * scale).toInt()), maxOf(1, (h * scale).toInt()))
                }
            }
        } catch (e: IOException) {
            throw InputError("cannot decode this picture (${e.message})", "pick a JPEG, PNG, WebP or HEIC photo", e)
        } catch (e: IllegalArgumentException) {
            throw InputError("cannot decode this picture (${e.message})", "pick a JPEG, PNG, WebP or HEIC photo", e)
        }
        return toRgba(bitmap)
    }

    /** A PNG from the bundle (the golden image: decoded at its own size, never scaled). */
    fun fromPng(bytes: ByteArray, name: String): Rgba {
        val options = BitmapFactory.Options().apply {
            inPreferredConfig = Bitmap.Config.ARGB_8888
            inPremultiplied = false
            inScaled = false
        }
        val bitmap = BitmapFactory.decodeByteArray(bytes, 0, bytes.size, options)
            ?: throw InputError("cannot decode $name from the bundle", "copy the bundle again")
        return toRgba(bitmap)
    }

    /** A small preview of the same picture for the screen. */
    fun preview(image: Rgba, side: Int = 512): Bitmap {
        val argb = IntArray(image.width * image.height)
        val p = image.pixels
        for (i in argb.indices) {
            val o = i * 4
            argb[i] = ((p[o + 3].toInt() and 0xff) shl 24) or ((p[o].toInt() and 0xff) shl 16) or
                ((p[o + 1].toInt() and 0xff) shl 8) or (p[o + 2].toInt() and 0xff)
        }
        val full = Bitmap.createBitmap(argb, image.width, image.height, Bitmap.Config.ARGB_8888)
        val scale = minOf(1.0, side.toDouble() / maxOf(image.width, image.height))
        return if (scale >= 1.0) full
        else Bitmap.createScaledBitmap(full, maxOf(1, (image.width * scale).toInt()),
            maxOf(1, (image.height * scale).toInt()), true)
    }

    private fun toRgba(decoded: Bitmap): Rgba {
        val bitmap = if (decoded.config == Bitmap.Config.ARGB_8888) decoded
        else decoded.copy(Bitmap.Config.ARGB_8888, false)
            ?: throw InputError("cannot convert this picture to 8-bit RGBA", "pick another photo")
        val buffer = ByteBuffer.allocate(bitmap.byteCount)
        bitmap.copyPixelsToBuffer(buffer)  // ARGB_8888 is stored R, G, B, A in memory
        val width = bitmap.width
        val height = bitmap.height
        val row = width * 4
        val pixels = if (bitmap.rowBytes == row) buffer.array()
        else ByteArray(row * height).also { out ->
            for (y in 0 until height) System.arraycopy(buffer.array(), y * bitmap.rowBytes, out, y * row, row)
        }
        return Rgba(width, height, pixels.copyOf(row * height))
    }
}

package dev.pocketvlm.engine

/**
 * Decoded pixels as the app hands them to the engine: RGBA, row-major, 4 bytes per pixel, straight (not
 * premultiplied) alpha. The app decodes the image itself (Android's `BitmapFactory`) and applies the EXIF orientation
 * before building this (the Python runtime's `upright`, the browser's `imageOrientation: 'from-image'`): the engine
 * sees the pixels the user sees. An empty image, a buffer that is not `width * height * 4` bytes, or more than
 * [MAX_PIXELS] pixels is an [InputError].
 */
class Rgba(val width: Int, val height: Int, val pixels: ByteArray) {
    init {
        if (width < 1 || height < 1) {
            throw InputError("image is empty (${width}x$height)", "pass an image with at least one pixel")
        }
        val count = width.toLong() * height
        if (count > MAX_PIXELS) {
            throw InputError("image is ${width}x$height = $count pixels, over the limit of $MAX_PIXELS",
                "downscale the image before passing it")
        }
        if (pixels.size.toLong() != count * 4) {
            throw InputError("pixel buffer of ${pixels.size} bytes for a ${width}x$height RGBA image (expected " +
                "${count * 4})", "pass 4 bytes per pixel (R, G, B, A), row-major, not premultiplied")
        }
    }

    companion object {
        /** The Python runtime's `DEFAULT_MAX_PIXELS`: beyond ~8000 x 8000 an image is a mistake or a bomb. */
        const val MAX_PIXELS = 64_000_000L

        /**
         * From ARGB color ints as Android's `Bitmap.getPixels` returns them (`0xAARRGGBB`, not premultiplied),
         * row-major with a stride of [width].
         */
        fun fromArgb(width: Int, height: Int, argb: IntArray): Rgba {
            if (width < 1 || height < 1 || argb.size.toLong() != width.toLong() * height) {
                throw InputError("ARGB buffer of ${argb.size} pixels for a ${width}x$height image",
                    "pass width * height color ints (Bitmap.getPixels with stride = width)")
            }
            val out = ByteArray(argb.size * 4)
            for ((i, c) in argb.withIndex()) {
                out[i * 4] = (c ushr 16).toByte()
                out[i * 4 + 1] = (c ushr 8).toByte()
                out[i * 4 + 2] = c.toByte()
                out[i * 4 + 3] = (c ushr 24).toByte()
            }
            return Rgba(width, height, out)
        }
    }
}

/** 8-bit RGB, 3 bytes per pixel, row-major: the image after RGB conversion, as PIL resizes and crops it. */
class Rgb(val width: Int, val height: Int, val data: ByteArray) {
    init {
        if (width < 1 || height < 1 || data.size.toLong() != width.toLong() * height * 3) {
            throw InputError("RGB buffer of ${data.size} bytes for a ${width}x$height image",
                "pass 3 bytes per pixel, row-major")
        }
    }

    /** The channel [c] of pixel ([x], [y]) as 0..255. */
    operator fun get(x: Int, y: Int, c: Int): Int = data[(y * width + x) * 3 + c].toInt() and 0xFF

    /** `image.crop((left, top, left + width, top + height))` of a box inside the image. */
    fun crop(left: Int, top: Int, width: Int, height: Int): Rgb {
        if (left < 0 || top < 0 || left + width > this.width || top + height > this.height) {
            throw InputError("crop box ${width}x$height at ($left, $top) outside a ${this.width}x${this.height} " +
                "image", "crop inside the image")
        }
        val out = ByteArray(width * height * 3)
        for (y in 0 until height) {
            System.arraycopy(data, ((top + y) * this.width + left) * 3, out, y * width * 3, width * 3)
        }
        return Rgb(width, height, out)
    }
}

/**
 * RGB conversion as transformers does it (the runtime's `to_rgb`): alpha composited onto opaque white with Pillow's
 * integer `alpha_composite` (AlphaComposite.c, 7 fractional bits), then the alpha dropped.
 */
fun Rgba.toRgb(): Rgb {
    val out = ByteArray(width * height * 3)
    var o = 0
    for (i in pixels.indices step 4) {
        val a = pixels[i + 3].toInt() and 0xFF
        when (a) {
            255 -> for (c in 0 until 3) out[o + c] = pixels[i + c]
            0 -> for (c in 0 until 3) out[o + c] = -1  // 255: the white background
            else -> {
                val coef1 = a * 255 * 255 * 128 / (a * 255 + 255 * (255 - a))
                val coef2 = 255 * 128 - coef1
                for (c in 0 until 3) {
                    val tmp = (pixels[i + c].toInt() and 0xFF) * coef1 + 255 * coef2 + (0x80 shl 7)
                    out[o + c] = ((((tmp ushr 8) + tmp) ushr 8) ushr 7).toByte()
                }
            }
        }
        o += 3
    }
    return Rgb(width, height, out)
}

/**
 * Center crop to [cropH] x [cropW] as transformers does it: an integer (floor) offset, and where the image is smaller
 * than the crop it is first padded with zeros, centred (the runtime's `_center_crop`).
 */
fun Rgb.centerCrop(cropH: Int, cropW: Int): Rgb {
    var top = Math.floorDiv(height - cropH, 2)
    var left = Math.floorDiv(width - cropW, 2)
    if (top >= 0 && left >= 0) return crop(left, top, cropW, cropH)
    val newH = maxOf(cropH, height)
    val newW = maxOf(cropW, width)
    val canvas = ByteArray(newH * newW * 3)
    val padTop = (newH - height + 1) / 2
    val padLeft = (newW - width + 1) / 2
    for (y in 0 until height) {
        System.arraycopy(data, y * width * 3, canvas, ((padTop + y) * newW + padLeft) * 3, width * 3)
    }
    top = maxOf(top + padTop, 0)
    left = maxOf(left + padLeft, 0)
    return Rgb(newW, newH, canvas).crop(left, top, cropW, cropH)
}

/**
 * Rescale and normalise as transformers does it (the runtime's `rescale_normalize`): the byte times [factor] in
 * float64, cast to float32, then `(x - mean) / std` in float32. Constants from the manifest's `preprocessing.image`.
 */
class Normalize(val factor: Double, val mean: FloatArray, val std: FloatArray) {
    init {
        if (mean.size != 3 || std.size != 3 || std.any { it == 0f || !it.isFinite() } || !factor.isFinite()) {
            throw BundleError("image normalisation needs 3 means and 3 finite non-zero stds (got mean " +
                "${mean.toList()}, std ${std.toList()}, rescale factor $factor)", "re-export the bundle")
        }
    }

    /** [image] as CHW float32 written into [out] from [offset] (3 * height * width values). */
    fun into(image: Rgb, out: FloatArray, offset: Int = 0) {
        val plane = image.width * image.height
        for (c in 0 until 3) {
            val base = offset + c * plane
            val m = mean[c]
            val s = std[c]
            for (p in 0 until plane) {
                val scaled = ((image.data[p * 3 + c].toInt() and 0xFF) * factor).toFloat()
                out[base + p] = (scaled - m) / s
            }
        }
    }

    companion object {
        /** The `rescale_factor`, `mean` and `std` fields of a `preprocessing.image` block. */
        fun of(config: JsonNode): Normalize =
            Normalize(config["rescale_factor"].double(), config["mean"].floats(), config["std"].floats())
    }
}

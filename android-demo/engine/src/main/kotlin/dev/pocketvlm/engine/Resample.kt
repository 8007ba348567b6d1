package dev.pocketvlm.engine

/**
 * The resampling filters of PIL's `Image.resize`, by their manifest names, with Pillow's supports and weight functions
 * (libImaging/Resample.c). [NEAREST] has no weights: it picks a source pixel (Geometry.c).
 */
enum class ResampleFilter(val manifestName: String, val support: Double) {
    NEAREST("nearest", 0.0) {
        override fun weight(x: Double): Double = throw IllegalStateException("nearest has no filter weights")
    },
    BOX("box", 0.5) {
        override fun weight(x: Double): Double = if (x > -0.5 && x <= 0.5) 1.0 else 0.0
    },
    BILINEAR("bilinear", 1.0) {
        override fun weight(x: Double): Double {
            val a = Math.abs(x)
            return if (a < 1.0) 1.0 - a else 0.0
        }
    },
    HAMMING("hamming", 1.0) {
        override fun weight(x: Double): Double {
            val a = Math.abs(x)
            if (a == 0.0) return 1.0
            if (a >= 1.0) return 0.0
            val px = a * Math.PI
            return StrictMath.sin(px) / px * (C054 + C046 * StrictMath.cos(px))
        }
    },
    BICUBIC("bicubic", 2.0) {
        override fun weight(x: Double): Double {
            val a = -0.5
            val t = Math.abs(x)
            if (t < 1.0) return ((a + 2.0) * t - (a + 3.0)) * t * t + 1
            if (t < 2.0) return (((t - 5) * t + 8) * t - 4) * a
            return 0.0
        }
    },
    LANCZOS("lanczos", 3.0) {
        override fun weight(x: Double): Double = if (x >= -3.0 && x < 3.0) sinc(x) * sinc(x / 3) else 0.0
    };

    /** The filter's weight at [x] (in source pixels, before widening by the downscale factor). */
    abstract fun weight(x: Double): Double

    companion object {
        // Resample.c's hamming uses the C float constants 0.54f and 0.46f, widened to double
        private val C054 = 0.54f.toDouble()
        private val C046 = 0.46f.toDouble()

        // StrictMath (fdlibm): the same value on every JVM and Android release
        private fun sinc(x: Double): Double {
            if (x == 0.0) return 1.0
            val px = x * Math.PI
            return StrictMath.sin(px) / px
        }

        /** The filter a manifest names (`preprocessing.image.resample`); an unknown name is a [BundleError]. */
        fun of(name: String): ResampleFilter = entries.firstOrNull { it.manifestName == name }
            ?: throw BundleError("image resample filter '$name' is not supported by this app (known: " +
                "${entries.joinToString(", ") { it.manifestName }})", "re-export the bundle or update the app")
    }
}

/**
 * PIL's `Image.resize` for 8-bit RGB, bit-exact with Pillow 13 (the web demo's `resample.ts` port of the same
 * algorithm).
 *
 * Convolution filters (Resample.c): per output pixel of each axis, the filter is evaluated over the input span (its
 * support widened by the downscale factor), normalised to sum 1 and rounded to fixed point with 22 fractional bits
 * (half away from zero). The two passes are separable; each adds half, shifts and clips to 0..255. A pass whose
 * size does not change is skipped. Pass order as Pillow 13: horizontal first (over only the rows the vertical pass
 * reads), unless the height shrinks by more than twice what the width does, then vertical first. NEAREST is
 * Geometry.c's `ImagingScaleAffine`: the source coordinate accumulated in doubles and truncated.
 */
object Resample {
    private const val PRECISION_BITS = 32 - 8 - 2
    private const val HALF = 1 shl (PRECISION_BITS - 1)

    /** `image.resize((width, height), filter)`. */
    fun resize(src: Rgb, width: Int, height: Int, filter: ResampleFilter): Rgb {
        if (width < 1 || height < 1) {
            throw InputError("resize of a ${src.width}x${src.height} image to ${width}x$height",
                "resize to at least one pixel a side")
        }
        if (width == src.width && height == src.height) return Rgb(width, height, src.data.copyOf())
        if (filter == ResampleFilter.NEAREST) return nearest(src, width, height)
        val horiz = Coefficients(src.width, width, filter)
        val vert = Coefficients(src.height, height, filter)
        val needH = width != src.width
        val needV = height != src.height
        val shrinkH = src.height - height
        if (shrinkH > 0 && shrinkH > (src.width - width) * 2) {  // vertical first
            var image = src
            if (needV) image = vertical(image, vert, 0)
            if (needH) image = horizontal(image, horiz, 0, image.height)
            return image
        }
        if (!needH) return vertical(src, vert, 0)
        // the horizontal pass over only the rows the vertical pass reads
        val first = vert.start[0]
        val last = vert.start[height - 1] + vert.count[height - 1]
        val image = horizontal(src, horiz, first, last - first)
        return if (needV) vertical(image, vert, first) else image
    }

    /** One axis' fixed-point weights: output pixel i reads `count[i]` inputs from `start[i]`. */
    private class Coefficients(inSize: Int, outSize: Int, filter: ResampleFilter) {
        val ksize: Int
        val start = IntArray(outSize)
        val count = IntArray(outSize)
        val weights: IntArray

        init {
            val scale = inSize.toDouble() / outSize
            val filterScale = maxOf(scale, 1.0)
            val support = filter.support * filterScale
            ksize = Math.ceil(support).toInt() * 2 + 1
            weights = IntArray(outSize * ksize)
            val ss = 1.0 / filterScale
            val w = DoubleArray(ksize)
            for (xx in 0 until outSize) {
                val center = (xx + 0.5) * scale
                val xmin = maxOf((center - support + 0.5).toInt(), 0)  // C's (int): toward zero
                val n = minOf((center + support + 0.5).toInt(), inSize) - xmin
                var total = 0.0
                for (x in 0 until n) {
                    w[x] = filter.weight((x + xmin - center + 0.5) * ss)
                    total += w[x]
                }
                for (x in 0 until n) {
                    val normalised = if (total != 0.0) w[x] / total else w[x]
                    val fixed = normalised * (1 shl PRECISION_BITS)
                    weights[xx * ksize + x] = (if (normalised < 0) -0.5 + fixed else 0.5 + fixed).toInt()
                }
                start[xx] = xmin
                count[xx] = n
            }
        }
    }

    private fun clip8(acc: Int): Byte {
        val v = acc shr PRECISION_BITS
        return (if (v < 0) 0 else if (v > 255) 255 else v).toByte()
    }

    /**
     * One output pixel of either pass: output index [i]'s `c.count[i]` taps, read from byte [first] of [data] and
     * [stride] bytes apart (3 along a row, a row's width along a column), weighted by its `c.weights` in fixed point
     * from [HALF] per channel, then clipped into [out] at byte [o]. Integer sums in tap order, as Resample.c.
     */
    private fun convolve(data: ByteArray, first: Int, stride: Int, c: Coefficients, i: Int, out: ByteArray, o: Int) {
        val k = i * c.ksize
        var s0 = HALF
        var s1 = HALF
        var s2 = HALF
        var p = first
        for (t in 0 until c.count[i]) {
            val w = c.weights[k + t]
            s0 += (data[p].toInt() and 0xFF) * w
            s1 += (data[p + 1].toInt() and 0xFF) * w
            s2 += (data[p + 2].toInt() and 0xFF) * w
            p += stride
        }
        out[o] = clip8(s0)
        out[o + 1] = clip8(s1)
        out[o + 2] = clip8(s2)
    }

    /** Horizontal pass over input rows `[rowFirst, rowFirst + rows)`. */
    private fun horizontal(src: Rgb, c: Coefficients, rowFirst: Int, rows: Int): Rgb {
        val outWidth = c.start.size
        val out = ByteArray(outWidth * rows * 3)
        for (y in 0 until rows) {
            val inRow = (y + rowFirst) * src.width * 3
            for (xx in 0 until outWidth) {
                convolve(src.data, inRow + c.start[xx] * 3, 3, c, xx, out, (y * outWidth + xx) * 3)
            }
        }
        return Rgb(outWidth, rows, out)
    }

    /** Vertical pass; [shift] is subtracted from the row bounds (the rows the horizontal pass skipped). */
    private fun vertical(src: Rgb, c: Coefficients, shift: Int): Rgb {
        val outHeight = c.start.size
        val width = src.width
        val out = ByteArray(width * outHeight * 3)
        for (yy in 0 until outHeight) {
            val ymin = c.start[yy] - shift
            for (xx in 0 until width) {
                convolve(src.data, (ymin * width + xx) * 3, width * 3, c, yy, out, (yy * width + xx) * 3)
            }
        }
        return Rgb(width, outHeight, out)
    }

    private fun nearest(src: Rgb, width: Int, height: Int): Rgb {
        val sx = src.width.toDouble() / width
        val sy = src.height.toDouble() / height
        val columns = IntArray(width)
        var xo = sx * 0.5
        for (x in 0 until width) {
            columns[x] = minOf(xo.toInt(), src.width - 1)
            xo += sx
        }
        val out = ByteArray(width * height * 3)
        var yo = sy * 0.5
        for (y in 0 until height) {
            val row = minOf(yo.toInt(), src.height - 1) * src.width
            for (x in 0 until width) {
                System.arraycopy(src.data, (row + columns[x]) * 3, out, (y * width + x) * 3, 3)
            }
            yo += sy
        }
        return Rgb(width, height, out)
    }
}

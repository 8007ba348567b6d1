package dev.pocketvlm.engine

/**
 * The preprocessing a manifest's `preprocessing.image` block names: a dual encoder's (CLIP / SigLIP: no `kind`),
 * `"idefics3"` (Idefics3 / SmolVLM tiling) or `"qwen2_vl"` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL patches). Each equals the
 * Python runtime (`runtime/image.py`, `idefics3.py`, `qwen_vl.py`) on the same decoded pixels, to the bit.
 */
interface Preprocessor {
    /**
     * -> the vision side's `pixel_values` (dual encoders: [1,3,H,W]; idefics3: [tiles,3,T,T];
     * qwen2_vl: [patches, C*T*P*P])
     */
    fun pixelValues(image: Rgba): Tensor.F32

    companion object {
        /** The preprocessor of a `preprocessing.image` block; an unknown kind, filter or bad field: [BundleError]. */
        fun of(config: JsonNode): Preprocessor = when (val kind = config.opt("kind")?.string()) {
            null -> DualEncoderPreprocessor(config)
            "idefics3" -> Idefics3Preprocessor(config)
            "qwen2_vl" -> QwenPreprocessor(config)
            else -> throw BundleError("image preprocessing '$kind' is not supported by this app (known: idefics3, " +
                "qwen2_vl, or a dual encoder's block without a kind)", "update the app or re-export the bundle")
        }
    }
}

/** A field that must be a positive integer; else a [BundleError] naming it. */
private fun positive(node: JsonNode): Int {
    val value = node.int()
    if (value < 1) {
        throw BundleError("manifest field '${node.path}' is $value, expected at least 1", "re-export the bundle")
    }
    return value
}

/**
 * CLIP / SigLIP (`runtime/image.py`'s `ImagePreprocess`): RGB on white, resize (shortest edge to N keeping the aspect
 * ratio, or to a fixed height x width), optional center crop, rescale and normalise, NCHW.
 */
class DualEncoderPreprocessor(config: JsonNode) : Preprocessor {
    /** `resize.shortest_edge`, or null when the block resizes to [resizeHeight] x [resizeWidth]. */
    val shortestEdge: Int?
    private val resizeHeight: Int
    private val resizeWidth: Int
    val crop: Pair<Int, Int>?  // (height, width)
    val filter: ResampleFilter = ResampleFilter.of(config["resample"].string())
    private val normalize = Normalize.of(config)

    init {
        config.opt("convert_rgb")?.string()?.let {
            if (it != "alpha_composite_on_white") {
                throw BundleError("image conversion '$it' is not supported by this app", "re-export the bundle")
            }
        }
        config.opt("layout")?.string()?.let {
            if (it != "NCHW") {
                throw BundleError("image layout '$it' is not supported by this app", "re-export the bundle")
            }
        }
        val resize = config["resize"]
        if (resize.has("shortest_edge")) {
            shortestEdge = positive(resize["shortest_edge"])
            resizeHeight = 0
            resizeWidth = 0
        } else {
            shortestEdge = null
            resizeHeight = positive(resize["height"])
            resizeWidth = positive(resize["width"])
        }
        crop = config.opt("center_crop")?.let { positive(it["height"]) to positive(it["width"]) }
    }

    /** (height, width) the image is resized to before the crop (the runtime's `resized_size`). */
    fun resizedSize(height: Int, width: Int): Pair<Int, Int> {
        val edge = shortestEdge ?: return resizeHeight to resizeWidth
        val portrait = width <= height
        val short = if (portrait) width else height
        val long = if (portrait) height else width
        val newLong = ((edge.toLong() * long).toDouble() / short).toInt()
        return if (portrait) newLong to edge else edge to newLong
    }

    override fun pixelValues(image: Rgba): Tensor.F32 {
        val rgb = image.toRgb()
        val (height, width) = resizedSize(rgb.height, rgb.width)
        var resized = Resample.resize(rgb, width, height, filter)
        crop?.let { (h, w) -> resized = resized.centerCrop(h, w) }
        val out = FloatArray(3 * resized.height * resized.width)
        normalize.into(resized, out)
        return Tensor.F32(intArrayOf(1, 3, resized.height, resized.width), out)
    }
}

/**
 * Idefics3 / SmolVLM (`runtime/idefics3.py`): the longest edge fitted to `longest_edge`, then either one tile (split
 * off) or, with `split`, the image resized to whole tiles and cut row-major into `tile_size` crops, followed by the
 * whole image as a global tile.
 */
class Idefics3Preprocessor(config: JsonNode) : Preprocessor {
    val filter: ResampleFilter = ResampleFilter.of(config["resample"].string())
    private val normalize = Normalize.of(config)
    val longestEdge: Int = positive(config["longest_edge"])
    val tileSize: Int = positive(config["tile_size"])
    val split: Boolean = config["split"].bool()

    /** Image tokens per tile in the prompt. */
    val imageSeqLen: Int = positive(config["image_seq_len"])

    /** The tiles as `pixel_values` [tiles, 3, tile, tile], and the split's rows and columns (0, 0 when unsplit). */
    class Tiled(val pixelValues: Tensor.F32, val rows: Int, val cols: Int)

    /** Rows and columns of the split of [image] (0, 0 when not split), as [tiles] gives them, from its size alone. */
    fun tileGrid(image: Rgba): Pair<Int, Int> {
        if (!split) return 0 to 0
        val (fitH, fitW) = fitLongestEdge(image.height, image.width)
        val (h, w) = multipleOfTile(fitH, fitW)
        return if (h > tileSize || w > tileSize) ((h - tileSize) / tileSize + 1) to ((w - tileSize) / tileSize + 1)
        else 0 to 0
    }

    fun tiles(image: Rgba): Tiled {
        val rgb = image.toRgb()
        var (height, width) = fitLongestEdge(rgb.height, rgb.width)
        var resized = Resample.resize(rgb, width, height, filter)
        val frames = ArrayList<Rgb>()
        var rows = 0
        var cols = 0
        if (!split) {
            frames.add(Resample.resize(resized, tileSize, tileSize, filter))
        } else {
            multipleOfTile(height, width).let { height = it.first; width = it.second }
            resized = Resample.resize(resized, width, height, filter)
            if (height > tileSize || width > tileSize) {
                rows = (height - tileSize) / tileSize + 1
                cols = (width - tileSize) / tileSize + 1
                for (r in 0 until rows) for (c in 0 until cols) {
                    frames.add(resized.crop(c * tileSize, r * tileSize, tileSize, tileSize))
                }
                frames.add(Resample.resize(resized, tileSize, tileSize, filter))
            } else {
                frames.add(resized)
            }
        }
        val plane = 3 * frames[0].width * frames[0].height
        val out = FloatArray(frames.size * plane)
        frames.forEachIndexed { i, frame -> normalize.into(frame, out, i * plane) }
        return Tiled(Tensor.F32(intArrayOf(frames.size, 3, frames[0].height, frames[0].width), out), rows, cols)
    }

    override fun pixelValues(image: Rgba): Tensor.F32 = tiles(image).pixelValues

    /** Longest edge to `longest_edge` (the other side rounded up to even), then capped at [MAX_IMAGE_SIZE]. */
    private fun fitLongestEdge(height: Int, width: Int): Pair<Int, Int> {
        val aspect = width.toDouble() / height
        var h: Int
        var w: Int
        if (width >= height) {
            w = longestEdge
            h = (longestEdge / aspect).toInt()
            h += h % 2
        } else {
            h = longestEdge
            w = (longestEdge * aspect).toInt()
            w += w % 2
        }
        h = maxOf(h, 1)
        w = maxOf(w, 1)
        if (w >= h && w > MAX_IMAGE_SIZE) {
            w = MAX_IMAGE_SIZE
            h = (MAX_IMAGE_SIZE / aspect).toInt()
        } else if (h > w && h > MAX_IMAGE_SIZE) {
            h = MAX_IMAGE_SIZE
            w = (MAX_IMAGE_SIZE * aspect).toInt()
        }
        return maxOf(h, 1) to maxOf(w, 1)
    }

    private fun multipleOfTile(height: Int, width: Int): Pair<Int, Int> {
        val aspect = width.toDouble() / height
        val tile = tileSize.toDouble()
        return if (width >= height) {
            val w = Math.ceil(width / tile).toInt() * tileSize
            Math.ceil((w / aspect).toInt() / tile).toInt() * tileSize to w
        } else {
            val h = Math.ceil(height / tile).toInt() * tileSize
            h to Math.ceil((h * aspect).toInt() / tile).toInt() * tileSize
        }
    }

    companion object {
        /** transformers' absolute cap on the longest edge. */
        const val MAX_IMAGE_SIZE = 4096
    }
}

/**
 * Qwen2-VL and its successors (`runtime/qwen_vl.py`): resized to `fixed_size` (static-shape bundles) or by
 * `smart_resize` (sides multiples of patch x merge, area within [min_pixels, max_pixels]), normalised, then cut into
 * `patch_size` patches in merge-block order, each patch repeated `temporal_patch_size` times (a still image is one
 * frame): `pixel_values` [patches, 3 * T * P * P].
 */
class QwenPreprocessor(config: JsonNode) : Preprocessor {
    val filter: ResampleFilter = ResampleFilter.of(config["resample"].string())
    private val normalize = Normalize.of(config)
    val patchSize: Int = positive(config["patch_size"])
    val mergeSize: Int = positive(config["merge_size"])
    val temporalPatchSize: Int = positive(config["temporal_patch_size"])
    val minPixels: Long = positive(config["min_pixels"]).toLong()
    val maxPixels: Long = positive(config["max_pixels"]).toLong()

    /** (height, width) every image is resized to, or null for smart_resize. */
    val fixedSize: Pair<Int, Int>? = config.opt("fixed_size")?.let { node ->
        val sides = node.list().map { positive(it) }
        val factor = patchSize * mergeSize
        if (sides.size != 2 || sides.any { it % factor != 0 }) {
            throw BundleError("manifest field '${node.path}' is $sides, expected [height, width] multiples of " +
                "$factor (patch x merge)", "re-export the bundle")
        }
        sides[0] to sides[1]
    }

    /** The image's patch grid as `image_grid_thw`: [t] frames (1 for an image), [h] x [w] patches. */
    class Grid(val t: Int, val h: Int, val w: Int)

    /** `pixel_values` [patches, 3 * T * P * P] and the grid they cover; [numTokens] image tokens in the prompt. */
    class Patches(val pixelValues: Tensor.F32, val grid: Grid, private val merge: Int) {
        val numTokens: Int get() = grid.h * grid.w / (merge * merge)
    }

    /** (height, width) the image is resized to; an aspect ratio over 200:1 is an [InputError] (smart_resize). */
    fun resizedSize(height: Int, width: Int): Pair<Int, Int> = fixedSize ?: smartResize(height, width)

    /** The patch grid [patches] gives [image], from its size alone. */
    fun qwenGrid(image: Rgba): Grid {
        val (h, w) = resizedSize(image.height, image.width)
        return Grid(1, h / patchSize, w / patchSize)
    }

    fun patches(image: Rgba): Patches {
        val rgb = image.toRgb()
        val (height, width) = resizedSize(rgb.height, rgb.width)
        val chw = FloatArray(3 * height * width)
        normalize.into(Resample.resize(rgb, width, height, filter), chw)
        val p = patchSize
        val rows = height / p
        val cols = width / p
        val dim = 3 * temporalPatchSize * p * p
        val out = FloatArray(rows * cols * dim)
        val ids = positionIds(rows, cols)
        for (n in 0 until rows * cols) {
            val row = ids[n * 2].toInt()
            val col = ids[n * 2 + 1].toInt()
            var o = n * dim
            for (c in 0 until 3) for (t in 0 until temporalPatchSize) for (py in 0 until p) {
                System.arraycopy(chw, (c * height + row * p + py) * width + col * p, out, o, p)
                o += p
            }
        }
        return Patches(Tensor.F32(intArrayOf(rows * cols, dim), out), Grid(1, rows, cols), mergeSize)
    }

    override fun pixelValues(image: Rgba): Tensor.F32 = patches(image).pixelValues

    /** `vision_position_ids` [patches, 2]: (row, col) of every patch of [grid], in merge-block order. */
    fun visionPositionIds(grid: Grid): Tensor.I64 =
        Tensor.I64(intArrayOf(grid.h * grid.w, 2), positionIds(grid.h, grid.w))

    private fun positionIds(rows: Int, cols: Int): LongArray {
        val merge = mergeSize
        val out = LongArray(rows * cols * 2)
        var n = 0
        for (br in 0 until rows / merge) for (bc in 0 until cols / merge) {
            for (ir in 0 until merge) for (ic in 0 until merge) {
                out[n++] = (br * merge + ir).toLong()
                out[n++] = (bc * merge + ic).toLong()
            }
        }
        return out
    }

    /** The runtime's `smart_resize` (Python's round is half to even: [Math.rint]). */
    private fun smartResize(height: Int, width: Int): Pair<Int, Int> {
        val ratio = maxOf(height, width).toDouble() / minOf(height, width)
        if (ratio > 200) {
            throw InputError("image aspect ratio ${Math.round(ratio)}:1 is over 200:1",
                "crop the image to a less extreme shape")
        }
        val factor = patchSize * mergeSize
        var h = Math.rint(height.toDouble() / factor).toLong() * factor
        var w = Math.rint(width.toDouble() / factor).toLong() * factor
        val area = height.toLong() * width
        if (h * w > maxPixels) {
            val beta = Math.sqrt(area.toDouble() / maxPixels)
            h = maxOf(factor.toLong(), Math.floor(height / beta / factor).toLong() * factor)
            w = maxOf(factor.toLong(), Math.floor(width / beta / factor).toLong() * factor)
        } else if (h * w < minPixels) {
            val beta = Math.sqrt(minPixels.toDouble() / area)
            h = Math.ceil(height * beta / factor).toLong() * factor
            w = Math.ceil(width * beta / factor).toLong() * factor
        }
        if (h * w * 3 * temporalPatchSize > Int.MAX_VALUE) {
            throw InputError("image resized to ${w}x$h is too large for one tensor", "use a smaller max_pixels")
        }
        return h.toInt() to w.toInt()
    }
}

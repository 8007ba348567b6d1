import Foundation

/// The preprocessing a VLM manifest's `preprocessing.image` block names (Kotlin's `Preprocessor`): `"idefics3"`
/// (Idefics3 / SmolVLM tiling) or `"qwen2_vl"` (Qwen2-VL, Qwen2.5-VL and Qwen3-VL patches). Each equals the Python
/// runtime (`runtime/idefics3.py`, `qwen_vl.py`) on the same decoded pixels, to the bit. A dual encoder's block (no
/// `kind`: CLIP / SigLIP) is refused: the iOS app runs only VLM bundles.
public enum Preprocessor {
    case idefics3(Idefics3Preprocessor)
    case qwen(QwenPreprocessor)

    /// The preprocessor of a `preprocessing.image` block; an unknown kind, filter or bad field: `BundleError`.
    // json: manifest:preprocessing.image
    public static func of(_ config: JSONNode) throws -> Preprocessor {
        guard let kind = try config.opt("kind")?.string() else {
            throw BundleError("the bundle's image preprocessing is a dual encoder's (no 'kind'); this app runs only " +
                              "captioning (image_text_to_text) bundles", "export a VLM with --target coreml")
        }
        switch kind {
        case "idefics3":
            return .idefics3(try Idefics3Preprocessor(config))
        case "qwen2_vl":
            return .qwen(try QwenPreprocessor(config))
        default:
            throw BundleError("image preprocessing '\(kind)' is not supported by this app (known: idefics3, " +
                              "qwen2_vl)", "update the app or re-export the bundle")
        }
    }

    /// The vision encoder's `pixel_values` (idefics3: [tiles, 3, T, T]; qwen2_vl: [patches, 3 * T * P * P]).
    public func pixelValues(_ image: Rgba) throws -> Tensor {
        switch self {
        case .idefics3(let p): return try p.pixelValues(image)
        case .qwen(let p): return try p.pixelValues(image)
        }
    }
}

/// A manifest integer that must be at least 1; else a `BundleError` naming the field.
private func positive(_ value: Int, _ path: String) throws -> Int {
    if value < 1 {
        throw BundleError("manifest field '\(path)' is \(value), expected at least 1", "re-export the bundle")
    }
    return value
}

/// Idefics3 / SmolVLM (`runtime/idefics3.py`): the longest edge fitted to `longest_edge`, then either one tile
/// (split off) or, with `split`, the image resized to whole tiles and cut row-major into `tile_size` crops, followed
/// by the whole image as a global tile.
public struct Idefics3Preprocessor {
    /// transformers' absolute cap on the longest edge.
    public static let maxImageSize = 4096

    public let filter: ResampleFilter
    let normalize: Normalize
    public let longestEdge: Int
    public let tileSize: Int
    public let split: Bool
    /// Image tokens per tile in the prompt.
    public let imageSeqLen: Int

    // json: manifest:preprocessing.image where kind=idefics3
    public init(_ config: JSONNode) throws {
        filter = try ResampleFilter.of(config["resample"].string())
        normalize = try Normalize.of(config)
        let longest = config["longest_edge"]
        longestEdge = try positive(longest.int(), longest.path)
        let tile = config["tile_size"]
        tileSize = try positive(tile.int(), tile.path)
        split = try config["split"].bool()
        let seq = config["image_seq_len"]
        imageSeqLen = try positive(seq.int(), seq.path)
    }

    /// The tiles as `pixel_values` [tiles, 3, tile, tile], and the split's rows and columns (0, 0 when unsplit).
    public struct Tiled {
        public let pixelValues: Tensor
        public let rows: Int
        public let cols: Int
    }

    /// Rows and columns of the split of `image` (0, 0 when not split), as `tiles` gives them, from its size alone.
    public func tileGrid(_ image: Rgba) -> (rows: Int, cols: Int) {
        if !split { return (0, 0) }
        let (fitH, fitW) = fitLongestEdge(image.height, image.width)
        let (h, w) = multipleOfTile(fitH, fitW)
        if h > tileSize || w > tileSize { return ((h - tileSize) / tileSize + 1, (w - tileSize) / tileSize + 1) }
        return (0, 0)
    }

    public func tiles(_ image: Rgba) throws -> Tiled {
        let rgb = image.toRgb()
        var (height, width) = fitLongestEdge(rgb.height, rgb.width)
        var resized = try Resample.resize(rgb, width: width, height: height, filter: filter)
        var frames: [Rgb] = []
        var rows = 0
        var cols = 0
        if !split {
            frames.append(try Resample.resize(resized, width: tileSize, height: tileSize, filter: filter))
        } else {
            (height, width) = multipleOfTile(height, width)
            resized = try Resample.resize(resized, width: width, height: height, filter: filter)
            if height > tileSize || width > tileSize {
                rows = (height - tileSize) / tileSize + 1
                cols = (width - tileSize) / tileSize + 1
                for r in 0..<rows {
                    for c in 0..<cols {
                        frames.append(try resized.crop(left: c * tileSize, top: r * tileSize, width: tileSize,
                                                       height: tileSize))
                    }
                }
                frames.append(try Resample.resize(resized, width: tileSize, height: tileSize, filter: filter))
            } else {
                frames.append(resized)
            }
        }
        let plane = 3 * frames[0].width * frames[0].height
        var out = [Float](repeating: 0, count: frames.count * plane)
        for (i, frame) in frames.enumerated() { normalize.into(frame, &out, offset: i * plane) }
        let shape = [frames.count, 3, frames[0].height, frames[0].width]
        return Tiled(pixelValues: .f32(shape: shape, data: out), rows: rows, cols: cols)
    }

    public func pixelValues(_ image: Rgba) throws -> Tensor { try tiles(image).pixelValues }

    /// Longest edge to `longest_edge` (the other side rounded up to even), then capped at `maxImageSize`.
    func fitLongestEdge(_ height: Int, _ width: Int) -> (Int, Int) {
        let aspect = Double(width) / Double(height)
        var h: Int
        var w: Int
        if width >= height {
            w = longestEdge
            h = Int(Double(longestEdge) / aspect)
            h += h % 2
        } else {
            h = longestEdge
            w = Int(Double(longestEdge) * aspect)
            w += w % 2
        }
        h = max(h, 1)
        w = max(w, 1)
        let cap = Idefics3Preprocessor.maxImageSize
        if w >= h && w > cap {
            w = cap
            h = Int(Double(cap) / aspect)
        } else if h > w && h > cap {
            h = cap
            w = Int(Double(cap) * aspect)
        }
        return (max(h, 1), max(w, 1))
    }

    func multipleOfTile(_ height: Int, _ width: Int) -> (Int, Int) {
        let aspect = Double(width) / Double(height)
        let tile = Double(tileSize)
        if width >= height {
            let w = Int((Double(width) / tile).rounded(.up)) * tileSize
            let h = Int((Double(Int(Double(w) / aspect)) / tile).rounded(.up)) * tileSize
            return (h, w)
        }
        let h = Int((Double(height) / tile).rounded(.up)) * tileSize
        let w = Int((Double(Int(Double(h) * aspect)) / tile).rounded(.up)) * tileSize
        return (h, w)
    }
}

/// Qwen2-VL and its successors (`runtime/qwen_vl.py`): resized to `fixed_size` (static-shape bundles, every Core ML
/// one) or by `smart_resize` (sides multiples of patch x merge, area within [min_pixels, max_pixels]), normalised,
/// then cut into `patch_size` patches in merge-block order, each patch repeated `temporal_patch_size` times (a still
/// image is one frame): `pixel_values` [patches, 3 * T * P * P].
public struct QwenPreprocessor {
    public let filter: ResampleFilter
    let normalize: Normalize
    public let patchSize: Int
    public let mergeSize: Int
    public let temporalPatchSize: Int
    public let minPixels: Int
    public let maxPixels: Int
    /// (height, width) every image is resized to, or nil for smart_resize.
    public let fixedSize: (height: Int, width: Int)?

    // json: manifest:preprocessing.image where kind=qwen2_vl
    public init(_ config: JSONNode) throws {
        filter = try ResampleFilter.of(config["resample"].string())
        normalize = try Normalize.of(config)
        let patch = config["patch_size"]
        patchSize = try positive(patch.int(), patch.path)
        let merge = config["merge_size"]
        mergeSize = try positive(merge.int(), merge.path)
        let temporal = config["temporal_patch_size"]
        temporalPatchSize = try positive(temporal.int(), temporal.path)
        let minNode = config["min_pixels"]
        minPixels = try positive(minNode.int(), minNode.path)
        let maxNode = config["max_pixels"]
        maxPixels = try positive(maxNode.int(), maxNode.path)
        if let fixed = config.opt("fixed_size") {
            let sides = try fixed.ints()
            let factor = patchSize * mergeSize
            if sides.count != 2 || sides.contains(where: { $0 < 1 || $0 % factor != 0 }) {
                throw BundleError("manifest field '\(fixed.path)' is \(sides), expected [height, width] multiples of " +
                                  "\(factor) (patch x merge)", "re-export the bundle")
            }
            fixedSize = (sides[0], sides[1])
        } else {
            fixedSize = nil
        }
    }

    /// The image's patch grid as `image_grid_thw`: `t` frames (1 for an image), `h` x `w` patches.
    public struct Grid: Equatable {
        public let t: Int
        public let h: Int
        public let w: Int
    }

    /// `pixel_values` [patches, 3 * T * P * P] and the grid they cover; `numTokens` image tokens in the prompt.
    public struct Patches {
        public let pixelValues: Tensor
        public let grid: Grid
        let merge: Int
        public var numTokens: Int { grid.h * grid.w / (merge * merge) }
    }

    /// (height, width) the image is resized to; an aspect ratio over 200:1 is an `InputError` (smart_resize).
    public func resizedSize(_ height: Int, _ width: Int) throws -> (Int, Int) {
        if let fixedSize { return (fixedSize.height, fixedSize.width) }
        return try smartResize(height, width)
    }

    /// The patch grid `patches` gives `image`, from its size alone.
    public func qwenGrid(_ image: Rgba) throws -> Grid {
        let (h, w) = try resizedSize(image.height, image.width)
        return Grid(t: 1, h: h / patchSize, w: w / patchSize)
    }

    public func patches(_ image: Rgba) throws -> Patches {
        let rgb = image.toRgb()
        let (height, width) = try resizedSize(rgb.height, rgb.width)
        var chw = [Float](repeating: 0, count: 3 * height * width)
        normalize.into(try Resample.resize(rgb, width: width, height: height, filter: filter), &chw)
        let p = patchSize
        let rows = height / p
        let cols = width / p
        let dim = 3 * temporalPatchSize * p * p
        var out = [Float](repeating: 0, count: rows * cols * dim)
        let ids = positionIds(rows, cols)
        chw.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for n in 0..<(rows * cols) {
                    let row = Int(ids[n * 2])
                    let col = Int(ids[n * 2 + 1])
                    var o = n * dim
                    for c in 0..<3 {
                        for _ in 0..<temporalPatchSize {
                            for py in 0..<p {
                                let from = (c * height + row * p + py) * width + col * p
                                for i in 0..<p { dst[o + i] = src[from + i] }
                                o += p
                            }
                        }
                    }
                }
            }
        }
        return Patches(pixelValues: .f32(shape: [rows * cols, dim], data: out), grid: Grid(t: 1, h: rows, w: cols),
                       merge: mergeSize)
    }

    public func pixelValues(_ image: Rgba) throws -> Tensor { try patches(image).pixelValues }

    /// `vision_position_ids` [patches, 2]: (row, col) of every patch of `grid`, in merge-block order.
    public func visionPositionIds(_ grid: Grid) -> Tensor {
        .i64(shape: [grid.h * grid.w, 2], data: positionIds(grid.h, grid.w))
    }

    func positionIds(_ rows: Int, _ cols: Int) -> [Int64] {
        let merge = mergeSize
        var out = [Int64](repeating: 0, count: rows * cols * 2)
        var n = 0
        for br in 0..<(rows / merge) {
            for bc in 0..<(cols / merge) {
                for ir in 0..<merge {
                    for ic in 0..<merge {
                        out[n] = Int64(br * merge + ir)
                        out[n + 1] = Int64(bc * merge + ic)
                        n += 2
                    }
                }
            }
        }
        return out
    }

    /// The runtime's `smart_resize` (Python's round is half to even).
    func smartResize(_ height: Int, _ width: Int) throws -> (Int, Int) {
        let ratio = Double(max(height, width)) / Double(min(height, width))
        if ratio > 200 {
            throw InputError("image aspect ratio \(Int(ratio.rounded())):1 is over 200:1",
                             "crop the image to a less extreme shape")
        }
        let factor = patchSize * mergeSize
        let f = Double(factor)
        var h = Int((Double(height) / f).rounded(.toNearestOrEven)) * factor
        var w = Int((Double(width) / f).rounded(.toNearestOrEven)) * factor
        let area = height * width
        if h * w > maxPixels {
            let beta = (Double(area) / Double(maxPixels)).squareRoot()
            h = max(factor, Int((Double(height) / beta / f).rounded(.down)) * factor)
            w = max(factor, Int((Double(width) / beta / f).rounded(.down)) * factor)
        } else if h * w < minPixels {
            let beta = (Double(minPixels) / Double(area)).squareRoot()
            h = Int((Double(height) * beta / f).rounded(.up)) * factor
            w = Int((Double(width) * beta / f).rounded(.up)) * factor
        }
        if h * w * 3 * temporalPatchSize > Int(Int32.max) {
            throw InputError("image resized to \(w)x\(h) is too large for one tensor", "use a smaller max_pixels")
        }
        return (h, w)
    }
}

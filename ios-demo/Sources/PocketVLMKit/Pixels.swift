import CoreGraphics
import Foundation
import ImageIO

/// Decoded pixels as the app hands them to the kit (Kotlin's `Rgba`): RGBA, row-major, 4 bytes per pixel, straight
/// (not premultiplied) alpha, with the picture's EXIF orientation already applied (the Python runtime's `upright`):
/// the kit sees the pixels the user sees. An empty image, a buffer that is not `width * height * 4` bytes, or more
/// than `Rgba.maxPixels` pixels is an `InputError`.
public struct Rgba {
    /// The Python runtime's `DEFAULT_MAX_PIXELS`: beyond ~8000 x 8000 an image is a mistake or a bomb.
    public static let maxPixels = 64_000_000

    public let width: Int
    public let height: Int
    /// R, G, B, A per pixel, row-major, no row padding.
    public let pixels: [UInt8]

    /// The same bytes as `pixels` (the name the brief's shared API uses).
    public var bytes: [UInt8] { pixels }

    public init(width: Int, height: Int, pixels: [UInt8]) throws {
        if width < 1 || height < 1 {
            throw InputError("image is empty (\(width)x\(height))", "pass an image with at least one pixel")
        }
        let count = width * height
        if count > Rgba.maxPixels {
            throw InputError("image is \(width)x\(height) = \(count) pixels, over the limit of \(Rgba.maxPixels)",
                             "downscale the image before passing it")
        }
        if pixels.count != count * 4 {
            throw InputError("pixel buffer of \(pixels.count) bytes for a \(width)x\(height) RGBA image (expected " +
                             "\(count * 4))", "pass 4 bytes per pixel (R, G, B, A), row-major, not premultiplied")
        }
        self.width = width
        self.height = height
        self.pixels = pixels
    }
}

// MARK: - Decoding with ImageIO

extension Rgba {
    /// A picture file (PNG, JPEG, HEIC, WebP ...) decoded by ImageIO, upright. With `maxSide`, a picture whose long
    /// side is larger is downsampled by ImageIO first (as Android's decoder does for photos: memory, not exactness);
    /// the bundle's golden image is decoded with `maxSide` nil, at its own size, sample for sample.
    public static func decode(_ data: Data, name: String, maxSide: Int? = nil) throws -> Rgba {
        let sourceOptions = [kCGImageSourceShouldCache: false] as CFDictionary
        guard let source = CGImageSourceCreateWithData(data as CFData, sourceOptions),
              CGImageSourceGetCount(source) > 0 else {
            throw InputError("cannot decode \(name): it is not a picture ImageIO reads",
                             "pick a JPEG, PNG, HEIC or WebP picture")
        }
        let properties = CGImageSourceCopyPropertiesAtIndex(source, 0, nil) as? [CFString: Any] ?? [:]
        let width = (properties[kCGImagePropertyPixelWidth] as? NSNumber)?.intValue ?? 0
        let height = (properties[kCGImagePropertyPixelHeight] as? NSNumber)?.intValue ?? 0
        let orientation = (properties[kCGImagePropertyOrientation] as? NSNumber)?.intValue ?? 1
        if let maxSide, maxSide >= 1, max(width, height) > maxSide {
            // ImageIO scales and applies the orientation itself (kCGImageSourceCreateThumbnailWithTransform)
            let options: [CFString: Any] = [
                kCGImageSourceCreateThumbnailFromImageAlways: true,
                kCGImageSourceCreateThumbnailWithTransform: true,
                kCGImageSourceThumbnailMaxPixelSize: maxSide,
                kCGImageSourceShouldCacheImmediately: true,
            ]
            guard let image = CGImageSourceCreateThumbnailAtIndex(source, 0, options as CFDictionary) else {
                throw InputError("cannot decode \(name) (ImageIO made no image)", "pick another picture")
            }
            return try Rgba(cgImage: image)
        }
        let options = [kCGImageSourceShouldCacheImmediately: true] as CFDictionary
        guard let image = CGImageSourceCreateImageAtIndex(source, 0, options) else {
            throw InputError("cannot decode \(name) (ImageIO made no image)", "pick another picture")
        }
        return try Rgba(cgImage: image, orientation: orientation)
    }

    /// A decoded `CGImage`, turned upright by its EXIF `orientation` (1...8, `kCGImagePropertyOrientation`) with
    /// Pillow's `exif_transpose` permutations (an exact pixel shuffle, no resampling).
    ///
    /// The samples are taken as the image stores them, with no colour management, because Pillow (what the golden
    /// record's `preprocess` stage was computed with) ignores embedded ICC profiles and gamma chunks: 8-bit RGB(A),
    /// grey and grey + alpha are read straight from the image's bytes; 16-bit ones as Pillow reduces them (the high
    /// byte, and `rint(v / 257)` for plain 16-bit grey, the runtime's `to_eight_bit`). Any other layout (CMYK, float,
    /// indexed, packed) is drawn into an 8-bit RGBA context in the image's own RGB colour space (drawing into the
    /// space the samples are in converts nothing), or device RGB where it has none.
    public init(cgImage image: CGImage, orientation: Int = 1) throws {
        guard (1...8).contains(orientation) else {
            throw InputError("EXIF orientation \(orientation) is not 1 to 8", "pass the orientation ImageIO reports")
        }
        let width = image.width
        let height = image.height
        if width < 1 || height < 1 || width * height > Rgba.maxPixels {
            throw InputError("image is \(width)x\(height) pixels (1 to \(Rgba.maxPixels) pixels are accepted)",
                             "pick another picture or downscale it")
        }
        let stored = try Rgba.samples(image) ?? Rgba.drawn(image)
        if orientation == 1 {
            try self.init(width: width, height: height, pixels: stored)
        } else {
            let (w, h, turned) = Rgba.oriented(stored, width, height, orientation)
            try self.init(width: w, height: h, pixels: turned)
        }
    }

    /// The image's bytes read as stored, for the layouts Pillow reads the same way; nil for any other layout.
    static func samples(_ image: CGImage) -> [UInt8]? {
        guard let space = image.colorSpace, image.pixelFormatInfo == .packed,
              !image.bitmapInfo.contains(.floatComponents) else { return nil }
        let colours: Int
        switch space.model {
        case .rgb: colours = 3
        case .monochrome: colours = 1
        default: return nil
        }
        let alpha = image.alphaInfo
        if alpha == .alphaOnly { return nil }
        let hasAlpha = alpha == .first || alpha == .last || alpha == .premultipliedFirst || alpha == .premultipliedLast
        let premultiplied = alpha == .premultipliedFirst || alpha == .premultipliedLast
        let alphaFirst = alpha == .first || alpha == .premultipliedFirst || alpha == .noneSkipFirst
        let components = colours + (alpha == .none ? 0 : 1)
        let bpc = image.bitsPerComponent
        guard bpc == 8 || bpc == 16, image.bitsPerPixel == bpc * components else { return nil }
        let componentBytes = bpc / 8
        let pixelBytes = componentBytes * components
        // 8-bit components packed little-endian in a word as wide as the pixel are stored in reverse order;
        // 16-bit components are each big- or little-endian
        var reversed = false
        var littleEndian = false
        switch image.byteOrderInfo {
        case .orderDefault, .order16Big, .order32Big: break
        case .order32Little:
            guard bpc == 8, image.bitsPerPixel == 32 else { return nil }
            reversed = true
        case .order16Little:
            if bpc == 16 { littleEndian = true } else if image.bitsPerPixel == 16 { reversed = true } else { return nil }
        default: return nil
        }
        let width = image.width
        let height = image.height
        let rowBytes = image.bytesPerRow
        guard let data = image.dataProvider?.data, let base = CFDataGetBytePtr(data),
              rowBytes >= width * pixelBytes, CFDataGetLength(data) >= rowBytes * (height - 1) + width * pixelBytes
        else { return nil }
        // logical component k of a pixel -> its byte offset in the pixel
        func offset(_ k: Int) -> Int { (reversed ? components - 1 - k : k) * componentBytes }
        let alphaSlot = alphaFirst ? 0 : colours
        let colourSlots = (0..<colours).map { offset(alphaFirst ? $0 + 1 : $0) }
        let alphaOffset = offset(alphaSlot)
        let plainGrey16 = bpc == 16 && colours == 1 && !hasAlpha
        func value(_ p: UnsafePointer<UInt8>) -> UInt8 {
            if bpc == 8 { return p[0] }
            let v = littleEndian ? Int(p[1]) << 8 | Int(p[0]) : Int(p[0]) << 8 | Int(p[1])
            if plainGrey16 { return UInt8((Double(v) / 257.0).rounded(.toNearestOrEven)) }
            return UInt8(v >> 8)
        }
        var out = [UInt8](repeating: 255, count: width * height * 4)
        out.withUnsafeMutableBufferPointer { dst in
            for y in 0..<height {
                let row = base + y * rowBytes
                for x in 0..<width {
                    let p = row + x * pixelBytes
                    let o = (y * width + x) * 4
                    let a: UInt8 = hasAlpha ? value(p + alphaOffset) : 255
                    for c in 0..<3 {
                        var v = value(p + colourSlots[colours == 1 ? 0 : c])
                        if premultiplied { v = Rgba.unpremultiply(v, a) }
                        dst[o + c] = v
                    }
                    dst[o + 3] = a
                }
            }
        }
        return out
    }

    /// Any other layout drawn into an 8-bit RGBA bitmap; premultiplied alpha undone (not exact for translucent pixels).
    static func drawn(_ image: CGImage) throws -> [UInt8] {
        let width = image.width
        let height = image.height
        // the image's own RGB space (drawing into it converts nothing), an indexed image's RGB base, else device RGB
        var space = CGColorSpaceCreateDeviceRGB()
        if let own = image.colorSpace {
            if own.model == .rgb, own.supportsOutput {
                space = own
            } else if own.model == .indexed, let base = own.baseColorSpace, base.model == .rgb, base.supportsOutput {
                space = base
            }
        }
        let alpha = image.alphaInfo
        let opaque = alpha == .none || alpha == .noneSkipFirst || alpha == .noneSkipLast
        let info = opaque ? CGImageAlphaInfo.noneSkipLast.rawValue : CGImageAlphaInfo.premultipliedLast.rawValue
        var out = [UInt8](repeating: 0, count: width * height * 4)
        let drew = out.withUnsafeMutableBytes { buffer -> Bool in
            guard let context = CGContext(data: buffer.baseAddress, width: width, height: height, bitsPerComponent: 8,
                                          bytesPerRow: width * 4, space: space, bitmapInfo: info) else { return false }
            context.interpolationQuality = .none
            context.setBlendMode(.copy)
            context.draw(image, in: CGRect(x: 0, y: 0, width: width, height: height))
            return true
        }
        if !drew {
            throw InputError("cannot convert this \(image.bitsPerComponent)-bit picture to 8-bit RGBA",
                             "pick another picture, or save it as an 8-bit PNG or JPEG")
        }
        for i in stride(from: 0, to: out.count, by: 4) {
            if opaque {
                out[i + 3] = 255
            } else {
                let a = out[i + 3]
                for c in 0..<3 { out[i + c] = Rgba.unpremultiply(out[i + c], a) }
            }
        }
        return out
    }

    @inline(__always)
    static func unpremultiply(_ v: UInt8, _ a: UInt8) -> UInt8 {
        if a == 255 { return v }
        if a == 0 { return 0 }
        return UInt8(min(255, (Int(v) * 255 + Int(a) / 2) / Int(a)))
    }

    /// Pillow's `exif_transpose`: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse,
    /// 8 rotate 90 counter-clockwise. Returns the new width, height and pixels.
    static func oriented(_ src: [UInt8], _ width: Int, _ height: Int, _ orientation: Int) -> (Int, Int, [UInt8]) {
        let swaps = orientation >= 5
        let w = swaps ? height : width
        let h = swaps ? width : height
        var out = [UInt8](repeating: 0, count: src.count)
        for y in 0..<h {
            for x in 0..<w {
                var sx = x
                var sy = y
                switch orientation {
                case 2: (sx, sy) = (width - 1 - x, y)
                case 3: (sx, sy) = (width - 1 - x, height - 1 - y)
                case 4: (sx, sy) = (x, height - 1 - y)
                case 5: (sx, sy) = (y, x)
                case 6: (sx, sy) = (y, height - 1 - x)
                case 7: (sx, sy) = (width - 1 - y, height - 1 - x)
                case 8: (sx, sy) = (width - 1 - y, x)
                default: break
                }
                let s = (sy * width + sx) * 4
                let o = (y * w + x) * 4
                out[o] = src[s]
                out[o + 1] = src[s + 1]
                out[o + 2] = src[s + 2]
                out[o + 3] = src[s + 3]
            }
        }
        return (w, h, out)
    }

    /// A `CGImage` of these pixels (straight alpha, device RGB) for showing a preview on screen.
    public func cgImage() -> CGImage? {
        guard let provider = CGDataProvider(data: Data(pixels) as CFData) else { return nil }
        return CGImage(width: width, height: height, bitsPerComponent: 8, bitsPerPixel: 32, bytesPerRow: width * 4,
                       space: CGColorSpaceCreateDeviceRGB(), bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.last.rawValue),
                       provider: provider, decode: nil, shouldInterpolate: true, intent: .defaultIntent)
    }
}

// MARK: - RGB, as PIL resizes and crops it

/// 8-bit RGB, 3 bytes per pixel, row-major: the image after RGB conversion, as PIL resizes and crops it.
public struct Rgb {
    public let width: Int
    public let height: Int
    public let data: [UInt8]

    public init(width: Int, height: Int, data: [UInt8]) throws {
        if width < 1 || height < 1 || data.count != width * height * 3 {
            throw InputError("RGB buffer of \(data.count) bytes for a \(width)x\(height) image",
                             "pass 3 bytes per pixel, row-major")
        }
        self.init(uncheckedWidth: width, height: height, data: data)
    }

    /// For the kit's own steps, whose sizes are right by construction.
    init(uncheckedWidth width: Int, height: Int, data: [UInt8]) {
        self.width = width
        self.height = height
        self.data = data
    }

    /// The channel `c` of pixel (`x`, `y`) as 0...255.
    public subscript(x: Int, y: Int, c: Int) -> Int { Int(data[(y * width + x) * 3 + c]) }

    /// `image.crop((left, top, left + width, top + height))` of a box inside the image.
    public func crop(left: Int, top: Int, width: Int, height: Int) throws -> Rgb {
        if left < 0 || top < 0 || width < 1 || height < 1 || left + width > self.width || top + height > self.height {
            throw InputError("crop box \(width)x\(height) at (\(left), \(top)) outside a \(self.width)x\(self.height) " +
                             "image", "crop inside the image")
        }
        var out = [UInt8](repeating: 0, count: width * height * 3)
        let rowBytes = width * 3
        data.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for y in 0..<height {
                    let from = ((top + y) * self.width + left) * 3
                    for i in 0..<rowBytes { dst[y * rowBytes + i] = src[from + i] }
                }
            }
        }
        return Rgb(uncheckedWidth: width, height: height, data: out)
    }
}

extension Rgba {
    /// RGB conversion as transformers does it (the runtime's `to_rgb`): alpha composited onto opaque white with
    /// Pillow's integer `alpha_composite` (AlphaComposite.c, 7 fractional bits), then the alpha dropped.
    public func toRgb() -> Rgb {
        var out = [UInt8](repeating: 0, count: width * height * 3)
        pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                var o = 0
                for i in stride(from: 0, to: src.count, by: 4) {
                    let a = Int(src[i + 3])
                    switch a {
                    case 255:
                        for c in 0..<3 { dst[o + c] = src[i + c] }
                    case 0:
                        for c in 0..<3 { dst[o + c] = 255 }  // the white background
                    default:
                        let coef1 = a * 255 * 255 * 128 / (a * 255 + 255 * (255 - a))
                        let coef2 = 255 * 128 - coef1
                        for c in 0..<3 {
                            let tmp = Int(src[i + c]) * coef1 + 255 * coef2 + (0x80 << 7)
                            dst[o + c] = UInt8(truncatingIfNeeded: (((tmp >> 8) + tmp) >> 8) >> 7)
                        }
                    }
                    o += 3
                }
            }
        }
        return Rgb(uncheckedWidth: width, height: height, data: out)
    }
}

// MARK: - Rescale and normalise

/// Rescale and normalise as transformers does it (the runtime's `rescale_normalize`): the byte times `factor` in
/// float64, cast to float32, then `(x - mean) / std` in float32. Constants from the manifest's `preprocessing.image`.
public struct Normalize {
    public let factor: Double
    public let mean: [Float]
    public let std: [Float]

    public init(factor: Double, mean: [Float], std: [Float]) throws {
        if mean.count != 3 || std.count != 3 || std.contains(where: { $0 == 0 || !$0.isFinite }) || !factor.isFinite {
            throw BundleError("image normalisation needs 3 means and 3 finite non-zero stds (got mean \(mean), std " +
                              "\(std), rescale factor \(factor))", "re-export the bundle")
        }
        self.factor = factor
        self.mean = mean
        self.std = std
    }

    /// The `rescale_factor`, `mean` and `std` fields of a `preprocessing.image` block.
    // json: manifest:preprocessing.image
    public static func of(_ config: JSONNode) throws -> Normalize {
        try Normalize(factor: config["rescale_factor"].double(), mean: config["mean"].floats(),
                      std: config["std"].floats())
    }

    /// `image` as CHW float32 written into `out` from `offset` (3 * height * width values).
    public func into(_ image: Rgb, _ out: inout [Float], offset: Int = 0) {
        let plane = image.width * image.height
        image.data.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for c in 0..<3 {
                    let base = offset + c * plane
                    let m = mean[c]
                    let s = std[c]
                    for p in 0..<plane {
                        let scaled = Float(Double(src[p * 3 + c]) * factor)
                        dst[base + p] = (scaled - m) / s
                    }
                }
            }
        }
    }
}

import Foundation

/// The resampling filters of PIL's `Image.resize`, by their manifest names (`preprocessing.image.resample`), with
/// Pillow's supports and weight functions (libImaging/Resample.c). `.nearest` has no weights: it picks a source
/// pixel (Geometry.c).
public enum ResampleFilter: String, CaseIterable {
    case nearest, box, bilinear, hamming, bicubic, lanczos

    /// The name the manifest uses.
    public var manifestName: String { rawValue }

    /// The filter's support in source pixels, before widening by the downscale factor.
    public var support: Double {
        switch self {
        case .nearest: return 0
        case .box: return 0.5
        case .bilinear, .hamming: return 1
        case .bicubic: return 2
        case .lanczos: return 3
        }
    }

    /// The filter's weight at `x` (in source pixels, before widening by the downscale factor).
    func weight(_ x: Double) -> Double {
        switch self {
        case .nearest:
            return 0  // never asked: nearest picks a pixel
        case .box:
            return x > -0.5 && x <= 0.5 ? 1 : 0
        case .bilinear:
            let a = abs(x)
            return a < 1 ? 1 - a : 0
        case .hamming:
            let a = abs(x)
            if a == 0 { return 1 }
            if a >= 1 { return 0 }
            let px = a * Double.pi
            return FdLibm.sin(px) / px * (ResampleFilter.c054 + ResampleFilter.c046 * FdLibm.cos(px))
        case .bicubic:
            let a = -0.5
            let t = abs(x)
            if t < 1 { return ((a + 2) * t - (a + 3)) * t * t + 1 }
            if t < 2 { return (((t - 5) * t + 8) * t - 4) * a }
            return 0
        case .lanczos:
            return x >= -3 && x < 3 ? ResampleFilter.sinc(x) * ResampleFilter.sinc(x / 3) : 0
        }
    }

    // Resample.c's hamming uses the C float constants 0.54f and 0.46f, widened to double
    private static let c054 = Double(Float(0.54))
    private static let c046 = Double(Float(0.46))

    private static func sinc(_ x: Double) -> Double {
        if x == 0 { return 1 }
        let px = x * Double.pi
        return FdLibm.sin(px) / px
    }

    /// The filter a manifest names; an unknown name is a `BundleError`.
    public static func of(_ name: String) throws -> ResampleFilter {
        guard let filter = ResampleFilter(rawValue: name) else {
            throw BundleError("image resample filter '\(name)' is not supported by this app (known: " +
                              "\(allCases.map { $0.rawValue }.joined(separator: ", ")))",
                              "re-export the bundle or update the app")
        }
        return filter
    }
}

/// PIL's `Image.resize` for 8-bit RGB, bit-exact with Pillow 13 (a port of the Android engine's `Resample.kt` and
/// the web demo's `resample.ts`).
///
/// Convolution filters (Resample.c): per output pixel of each axis, the filter is evaluated over the input span (its
/// support widened by the downscale factor), normalised to sum 1 and rounded to fixed point with 22 fractional bits
/// (half away from zero). The two passes are separable; each adds half, shifts and clips to 0..255. A pass whose
/// size does not change is skipped. Pass order as Pillow 13: horizontal first (over only the rows the vertical pass
/// reads), unless the height shrinks by more than twice what the width does, then vertical first. NEAREST is
/// Geometry.c's `ImagingScaleAffine`: the source coordinate accumulated in doubles and truncated. Sums are 32-bit
/// integers in tap order, as in C and Kotlin.
public enum Resample {
    static let precisionBits: Int32 = 32 - 8 - 2
    static let half: Int32 = 1 << (precisionBits - 1)

    /// `image.resize((width, height), filter)`.
    public static func resize(_ src: Rgb, width: Int, height: Int, filter: ResampleFilter) throws -> Rgb {
        if width < 1 || height < 1 {
            throw InputError("resize of a \(src.width)x\(src.height) image to \(width)x\(height)",
                             "resize to at least one pixel a side")
        }
        if width == src.width && height == src.height { return src }
        if filter == .nearest { return nearest(src, width, height) }
        let horiz = Coefficients(src.width, width, filter)
        let vert = Coefficients(src.height, height, filter)
        let needH = width != src.width
        let needV = height != src.height
        let shrinkH = src.height - height
        if shrinkH > 0 && shrinkH > (src.width - width) * 2 {  // vertical first
            var image = src
            if needV { image = vertical(image, vert, 0) }
            if needH { image = horizontal(image, horiz, 0, image.height) }
            return image
        }
        if !needH { return vertical(src, vert, 0) }
        // the horizontal pass over only the rows the vertical pass reads
        let first = vert.start[0]
        let last = vert.start[height - 1] + vert.count[height - 1]
        let image = horizontal(src, horiz, first, last - first)
        return needV ? vertical(image, vert, first) : image
    }

    /// One axis' fixed-point weights: output pixel i reads `count[i]` inputs from `start[i]`.
    struct Coefficients {
        let ksize: Int
        var start: [Int]
        var count: [Int]
        var weights: [Int32]

        init(_ inSize: Int, _ outSize: Int, _ filter: ResampleFilter) {
            let scale = Double(inSize) / Double(outSize)
            let filterScale = max(scale, 1.0)
            let support = filter.support * filterScale
            let ksize = Int(support.rounded(.up)) * 2 + 1
            self.ksize = ksize
            start = [Int](repeating: 0, count: outSize)
            count = [Int](repeating: 0, count: outSize)
            weights = [Int32](repeating: 0, count: outSize * ksize)
            let ss = 1.0 / filterScale
            var w = [Double](repeating: 0, count: ksize)
            let one = Double(1 << Int(Resample.precisionBits))
            for xx in 0..<outSize {
                let center = (Double(xx) + 0.5) * scale
                let xmin = max(Int(center - support + 0.5), 0)  // C's (int): toward zero
                let n = min(Int(center + support + 0.5), inSize) - xmin
                var total = 0.0
                var x = 0
                while x < n {
                    w[x] = filter.weight((Double(x + xmin) - center + 0.5) * ss)
                    total += w[x]
                    x += 1
                }
                x = 0
                while x < n {
                    let normalised = total != 0 ? w[x] / total : w[x]
                    let fixed = normalised * one
                    weights[xx * ksize + x] = Int32(normalised < 0 ? -0.5 + fixed : 0.5 + fixed)  // toward zero
                    x += 1
                }
                start[xx] = xmin
                count[xx] = max(n, 0)
            }
        }
    }

    @inline(__always)
    static func clip8(_ acc: Int32) -> UInt8 {
        let v = acc >> precisionBits
        return v < 0 ? 0 : (v > 255 ? 255 : UInt8(v))
    }

    /// One output pixel of either pass: `count` taps read from byte `first` of `data`, `stride` bytes apart (3 along
    /// a row, a row's width along a column), weighted by `weights[k...]` in fixed point from `half` per channel, then
    /// clipped into `out` at byte `o`.
    @inline(__always)
    static func convolve(_ data: UnsafeBufferPointer<UInt8>, _ first: Int, _ stride: Int,
                         _ weights: UnsafeBufferPointer<Int32>, _ k: Int, _ count: Int,
                         _ out: UnsafeMutableBufferPointer<UInt8>, _ o: Int) {
        var s0 = half
        var s1 = half
        var s2 = half
        var p = first
        var t = 0
        while t < count {
            let w = weights[k + t]
            s0 = s0 &+ Int32(data[p]) &* w
            s1 = s1 &+ Int32(data[p + 1]) &* w
            s2 = s2 &+ Int32(data[p + 2]) &* w
            p += stride
            t += 1
        }
        out[o] = clip8(s0)
        out[o + 1] = clip8(s1)
        out[o + 2] = clip8(s2)
    }

    /// Horizontal pass over input rows `rowFirst ..< rowFirst + rows`.
    static func horizontal(_ src: Rgb, _ c: Coefficients, _ rowFirst: Int, _ rows: Int) -> Rgb {
        let outWidth = c.start.count
        var out = [UInt8](repeating: 0, count: outWidth * rows * 3)
        src.data.withUnsafeBufferPointer { input in
            c.weights.withUnsafeBufferPointer { weights in
                out.withUnsafeMutableBufferPointer { output in
                    for y in 0..<rows {
                        let inRow = (y + rowFirst) * src.width * 3
                        for xx in 0..<outWidth {
                            convolve(input, inRow + c.start[xx] * 3, 3, weights, xx * c.ksize, c.count[xx], output,
                                     (y * outWidth + xx) * 3)
                        }
                    }
                }
            }
        }
        return Rgb(uncheckedWidth: outWidth, height: rows, data: out)
    }

    /// Vertical pass; `shift` is subtracted from the row bounds (the rows the horizontal pass skipped).
    static func vertical(_ src: Rgb, _ c: Coefficients, _ shift: Int) -> Rgb {
        let outHeight = c.start.count
        let width = src.width
        var out = [UInt8](repeating: 0, count: width * outHeight * 3)
        src.data.withUnsafeBufferPointer { input in
            c.weights.withUnsafeBufferPointer { weights in
                out.withUnsafeMutableBufferPointer { output in
                    for yy in 0..<outHeight {
                        let ymin = c.start[yy] - shift
                        for xx in 0..<width {
                            convolve(input, (ymin * width + xx) * 3, width * 3, weights, yy * c.ksize, c.count[yy],
                                     output, (yy * width + xx) * 3)
                        }
                    }
                }
            }
        }
        return Rgb(uncheckedWidth: width, height: outHeight, data: out)
    }

    static func nearest(_ src: Rgb, _ width: Int, _ height: Int) -> Rgb {
        let sx = Double(src.width) / Double(width)
        let sy = Double(src.height) / Double(height)
        var columns = [Int](repeating: 0, count: width)
        var xo = sx * 0.5
        for x in 0..<width {
            columns[x] = min(Int(xo), src.width - 1)
            xo += sx
        }
        var out = [UInt8](repeating: 0, count: width * height * 3)
        var yo = sy * 0.5
        for y in 0..<height {
            let row = min(Int(yo), src.height - 1) * src.width
            for x in 0..<width {
                let s = (row + columns[x]) * 3
                let o = (y * width + x) * 3
                out[o] = src.data[s]
                out[o + 1] = src.data[s + 1]
                out[o + 2] = src.data[s + 2]
            }
            yo += sy
        }
        return Rgb(uncheckedWidth: width, height: height, data: out)
    }
}

/// fdlibm 5.3's `sin` and `cos` (what Java's `StrictMath` computes, which the Android engine's filters use), so the
/// weights are the same doubles on every Apple OS release as on Android, not whatever the platform libm rounds to.
/// Only the argument reduction for |x| < 2^19 * pi/2 is ported: the filters ask for |x| < 3 * pi; larger arguments
/// fall back to the platform's functions.
enum FdLibm {
    private static let s1 = -1.66666666666666324348e-01
    private static let s2 = 8.33333333332248946124e-03
    private static let s3 = -1.98412698298579493134e-04
    private static let s4 = 2.75573137070700676789e-06
    private static let s5 = -2.50507602534068634195e-08
    private static let s6 = 1.58969099521155010221e-10
    private static let c1 = 4.16666666666666019037e-02
    private static let c2 = -1.38888888888741095749e-03
    private static let c3 = 2.48015872894767294178e-05
    private static let c4 = -2.75573143513906633035e-07
    private static let c5 = 2.08757232129817482790e-09
    private static let c6 = -1.13596475577881948265e-11
    private static let invpio2 = 6.36619772367581382433e-01
    private static let pio2_1 = 1.57079632673412561417e+00
    private static let pio2_1t = 6.07710050650619224932e-11
    private static let pio2_2 = 6.07710050630396597660e-11
    private static let pio2_2t = 2.02226624879595063154e-21
    private static let pio2_3 = 2.02226624871116645580e-21
    private static let pio2_3t = 8.47842766036889956997e-32
    private static let npio2hw: [Int32] = [
        0x3FF921FB, 0x400921FB, 0x4012D97C, 0x401921FB, 0x401F6A7A, 0x4022D97C, 0x4025FDBB, 0x402921FB,
        0x402C463A, 0x402F6A7A, 0x4031475C, 0x4032D97C, 0x40346B9C, 0x4035FDBB, 0x40378FDB, 0x403921FB,
        0x403AB41B, 0x403C463A, 0x403DD85A, 0x403F6A7A, 0x40407E4C, 0x4041475C, 0x4042106C, 0x4042D97C,
        0x4043A28C, 0x40446B9C, 0x404534AC, 0x4045FDBB, 0x4046C6CB, 0x40478FDB, 0x404858EB, 0x404921FB,
    ]

    /// The high 32 bits of a double, as C's `__HI(x)`.
    @inline(__always)
    private static func hi(_ x: Double) -> Int32 { Int32(truncatingIfNeeded: Int64(bitPattern: x.bitPattern) >> 32) }

    private static func kernelSin(_ x: Double, _ y: Double, _ iy: Int) -> Double {
        let ix = hi(x) & 0x7fffffff
        if ix < 0x3e400000 && Int(x) == 0 { return x }  // |x| < 2**-27
        let z = x * x
        let v = z * x
        let r = s2 + z * (s3 + z * (s4 + z * (s5 + z * s6)))
        if iy == 0 { return x + v * (s1 + z * r) }
        return x - ((z * (0.5 * y - v * r) - y) - v * s1)
    }

    private static func kernelCos(_ x: Double, _ y: Double) -> Double {
        let ix = hi(x) & 0x7fffffff
        if ix < 0x3e400000 && Int(x) == 0 { return 1 }  // |x| < 2**-27
        let z = x * x
        let r = z * (c1 + z * (c2 + z * (c3 + z * (c4 + z * (c5 + z * c6)))))
        if ix < 0x3FD33333 { return 1 - (0.5 * z - (z * r - x * y)) }  // |x| < 0.3
        let qx: Double
        if ix > 0x3fe90000 {
            qx = 0.28125
        } else {
            qx = Double(bitPattern: UInt64(UInt32(bitPattern: ix - 0x00200000)) << 32)
        }
        let hz = 0.5 * z - qx
        let a = 1 - qx
        return a - (hz - (z * r - x * y))
    }

    /// `__ieee754_rem_pio2` for |x| <= 2^19 * pi/2: n with x = n * pi/2 + (y0 + y1); nil beyond.
    private static func remPio2(_ x: Double) -> (n: Int, y0: Double, y1: Double)? {
        let hx = hi(x)
        let ix = hx & 0x7fffffff
        if ix < 0x4002d97c {  // |x| < 3pi/4, n = +-1
            if hx > 0 {
                var z = x - pio2_1
                if ix != 0x3ff921fb {
                    let y0 = z - pio2_1t
                    return (1, y0, (z - y0) - pio2_1t)
                }
                z -= pio2_2
                let y0 = z - pio2_2t
                return (1, y0, (z - y0) - pio2_2t)
            }
            var z = x + pio2_1
            if ix != 0x3ff921fb {
                let y0 = z + pio2_1t
                return (-1, y0, (z - y0) + pio2_1t)
            }
            z += pio2_2
            let y0 = z + pio2_2t
            return (-1, y0, (z - y0) + pio2_2t)
        }
        if ix > 0x413921fb { return nil }
        var t = abs(x)
        let n = Int(t * invpio2 + 0.5)
        let fn = Double(n)
        var r = t - fn * pio2_1
        var w = fn * pio2_1t  // 1st round good to 85 bits
        var y0: Double
        if n < 32 && ix != npio2hw[n - 1] {
            y0 = r - w  // quick check: no cancellation
        } else {
            let j = ix >> 20
            y0 = r - w
            var i = j - ((hi(y0) >> 20) & 0x7ff)
            if i > 16 {  // 2nd iteration needed, good to 118 bits
                t = r
                w = fn * pio2_2
                r = t - w
                w = fn * pio2_2t - ((t - r) - w)
                y0 = r - w
                i = j - ((hi(y0) >> 20) & 0x7ff)
                if i > 49 {  // 3rd iteration needed, 151 bits
                    t = r
                    w = fn * pio2_3
                    r = t - w
                    w = fn * pio2_3t - ((t - r) - w)
                    y0 = r - w
                }
            }
        }
        let y1 = (r - y0) - w
        return hx < 0 ? (-n, -y0, -y1) : (n, y0, y1)
    }

    static func sin(_ x: Double) -> Double {
        let ix = hi(x) & 0x7fffffff
        if ix <= 0x3fe921fb { return kernelSin(x, 0, 0) }  // |x| <= pi/4
        if ix >= 0x7ff00000 { return x - x }  // inf or NaN
        guard let reduced = remPio2(x) else { return platformSin(x) }
        let (n, y0, y1) = reduced
        switch n & 3 {
        case 0: return kernelSin(y0, y1, 1)
        case 1: return kernelCos(y0, y1)
        case 2: return -kernelSin(y0, y1, 1)
        default: return -kernelCos(y0, y1)
        }
    }

    static func cos(_ x: Double) -> Double {
        let ix = hi(x) & 0x7fffffff
        if ix <= 0x3fe921fb { return kernelCos(x, 0) }  // |x| <= pi/4
        if ix >= 0x7ff00000 { return x - x }  // inf or NaN
        guard let reduced = remPio2(x) else { return platformCos(x) }
        let (n, y0, y1) = reduced
        switch n & 3 {
        case 0: return kernelCos(y0, y1)
        case 1: return -kernelSin(y0, y1, 1)
        case 2: return -kernelCos(y0, y1)
        default: return kernelSin(y0, y1, 1)
        }
    }
}

/// The platform's own functions, for arguments the filters never pass (file scope: `sin` here is libm's).
private func platformSin(_ x: Double) -> Double { sin(x) }

private func platformCos(_ x: Double) -> Double { cos(x) }

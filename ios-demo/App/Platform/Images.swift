import Foundation
import ImageIO
import PocketVLMKit
import UIKit
import UniformTypeIdentifiers

/**
 Pictures as the kit takes them (encoded image bytes). A photo that is upright and at most `maxSide` pixels on its
 long side is passed on as the file's own bytes (the kit decodes them as the Python runtime decodes the file); a
 larger or rotated one is decoded once by ImageIO at most `maxSide` on its long side with its EXIF orientation
 applied, and handed on as a lossless PNG, so a 48 MP photo never takes 200 MB and no picture is sideways.
 */
enum Images {
    static let maxSide = 2048

    /// A photo from the picker (`PhotosPickerItem.loadTransferable(type: Data.self)`: the original file's bytes).
    static func prepared(_ data: Data) throws -> Data {
        guard let source = CGImageSourceCreateWithData(data as CFData, nil), CGImageSourceGetCount(source) > 0 else {
            throw InputError("cannot decode this picture", "pick a JPEG, PNG, HEIC or WebP photo")
        }
        let properties = CGImageSourceCopyPropertiesAtIndex(source, 0, nil) as? [CFString: Any] ?? [:]
        let width = properties[kCGImagePropertyPixelWidth] as? Int ?? 0
        let height = properties[kCGImagePropertyPixelHeight] as? Int ?? 0
        let orientation = properties[kCGImagePropertyOrientation] as? Int ?? 1
        let longest = max(width, height)
        if longest > 0, longest <= maxSide, orientation == 1 { return data }
        let options: [CFString: Any] = [
            kCGImageSourceCreateThumbnailFromImageAlways: true,
            kCGImageSourceCreateThumbnailWithTransform: true,
            kCGImageSourceThumbnailMaxPixelSize: longest > 0 ? min(longest, maxSide) : maxSide,
            kCGImageSourceShouldCacheImmediately: true,
        ]
        guard let image = CGImageSourceCreateThumbnailAtIndex(source, 0, options as CFDictionary) else {
            throw InputError("cannot decode this picture", "pick a JPEG, PNG, HEIC or WebP photo")
        }
        return try png(image)
    }

    /// A camera shot: drawn upright (its `imageOrientation` applied), at most `maxSide`, 8-bit sRGB, as PNG.
    static func fromCamera(_ photo: UIImage) throws -> Data {
        let pixels = CGSize(width: photo.size.width * photo.scale, height: photo.size.height * photo.scale)
        let longest = max(pixels.width, pixels.height)
        guard longest > 0 else { throw InputError("the camera returned an empty picture", "take the photo again") }
        let scale = min(1, CGFloat(maxSide) / longest)
        let size = CGSize(width: max(1, (pixels.width * scale).rounded()), height: max(1, (pixels.height * scale).rounded()))
        let format = UIGraphicsImageRendererFormat()
        format.scale = 1
        format.opaque = true
        format.preferredRange = .standard
        let upright = UIGraphicsImageRenderer(size: size, format: format).image { _ in
            photo.draw(in: CGRect(origin: .zero, size: size))
        }
        guard let data = upright.pngData() else {
            throw InputError("cannot encode the camera picture", "take the photo again")
        }
        return data
    }

    /// A small picture for the screen (nil when the bytes do not decode).
    static func preview(_ data: Data, side: Int = 1024) -> UIImage? {
        guard let source = CGImageSourceCreateWithData(data as CFData, nil) else { return nil }
        let options: [CFString: Any] = [
            kCGImageSourceCreateThumbnailFromImageAlways: true,
            kCGImageSourceCreateThumbnailWithTransform: true,
            kCGImageSourceThumbnailMaxPixelSize: side,
        ]
        guard let image = CGImageSourceCreateThumbnailAtIndex(source, 0, options as CFDictionary) else { return nil }
        return UIImage(cgImage: image)
    }

    /// Pixel size of encoded bytes, for the screen ("4032x3024").
    static func sizeLine(_ data: Data) -> String {
        guard let source = CGImageSourceCreateWithData(data as CFData, nil),
              let properties = CGImageSourceCopyPropertiesAtIndex(source, 0, nil) as? [CFString: Any],
              let width = properties[kCGImagePropertyPixelWidth] as? Int,
              let height = properties[kCGImagePropertyPixelHeight] as? Int else { return "" }
        return "\(width)x\(height)"
    }

    private static func png(_ image: CGImage) throws -> Data {
        let out = NSMutableData()
        guard let destination = CGImageDestinationCreateWithData(out as CFMutableData, UTType.png.identifier as CFString,
                                                                 1, nil) else {
            throw InputError("cannot encode the picture as PNG", "pick another photo")
        }
        CGImageDestinationAddImage(destination, image, nil)
        guard CGImageDestinationFinalize(destination) else {
            throw InputError("cannot encode the picture as PNG", "pick another photo")
        }
        return out as Data
    }
}

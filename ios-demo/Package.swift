// swift-tools-version:6.0
// PocketVLMKit: the platform-free engine core of the iOS demo (Foundation, Core ML, Core Graphics, ImageIO,
// Accelerate, CryptoKit, os; no third-party packages). The SwiftUI app in App/ depends on it through project.yml.
import PackageDescription

let package = Package(
    name: "PocketVLMKit",
    platforms: [.iOS(.v18), .macOS(.v15)],
    products: [
        .library(name: "PocketVLMKit", targets: ["PocketVLMKit"]),
    ],
    targets: [
        .target(name: "PocketVLMKit", path: "Sources/PocketVLMKit"),
    ],
    swiftLanguageModes: [.v5]
)

import CryptoKit
import Foundation

/// A bundle directory (Kotlin `Bundle.kt`; named `VLMBundle` here because `Foundation.Bundle` owns the plain name):
/// what `pocketvlm export --target coreml --out DIR` wrote, copied to the phone. Opening reads only `manifest.json`
/// and checks every path it names; `verify` checks every listed file's size and sha256 (call it before loading
/// models); `read` reads one small listed file (the tokenizer, the golden record) and checks it on the way.
public final class VLMBundle {
    public static let manifestName = "manifest.json"
    private static let maxManifestBytes: Int64 = 16 << 20
    private static let maxReadBytes: Int64 = 256 << 20
    private static let chunkBytes = 1 << 20

    /// The bundle directory (symlinks resolved).
    public let root: URL
    /// What the user recognises: the directory's path.
    public let label: String
    public let manifest: Manifest
    /// sha256 of `manifest.json`'s bytes (the result file records it).
    public let manifestSha256: String
    private let listed: [String: FileEntry]

    private init(root: URL, manifest: Manifest, manifestSha256: String) {
        self.root = root
        self.label = root.path
        self.manifest = manifest
        self.manifestSha256 = manifestSha256
        var byPath: [String: FileEntry] = [:]
        for entry in manifest.files { byPath[entry.path] = entry }
        self.listed = byPath
    }

    /// Reads and checks `manifest.json` (the `Manifest` fields, and every path it names: relative, inside the bundle,
    /// listed). Nothing else is read; call `verify` before loading models.
    public static func open(_ directory: URL) throws -> VLMBundle {
        let root = directory.standardizedFileURL.resolvingSymlinksInPath()
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw BundleError("bundle directory not found: \(directory.path)",
                "pass the --out directory of `pocketvlm export --target coreml`")
        }
        let label = root.path
        let manifestURL = root.appendingPathComponent(manifestName)
        guard let size = fileSize(manifestURL) else {
            throw BundleError("\(label) has no \(manifestName): not a pocketvlm bundle, or an export that did not finish",
                "copy the whole --out directory of `pocketvlm export`")
        }
        if size > maxManifestBytes {
            throw BundleError("\(label) \(manifestName) is \(size) bytes, over the \(maxManifestBytes) a manifest may be",
                "re-export the bundle")
        }
        let bytes: Data
        do {
            bytes = try Data(contentsOf: manifestURL)
        } catch {
            throw BundleError("\(label) \(manifestName) cannot be read (\(error.localizedDescription))",
                "copy the bundle again")
        }
        let manifest = try Manifest.parse(bytes)
        try checkPaths(manifest, label: label)
        return VLMBundle(root: root, manifest: manifest, manifestSha256: VLMBundle.hex(SHA256.hash(data: bytes)))
    }

    /// Bytes of every file the manifest lists (what the result file records as the bundle's size).
    public var totalBytes: Int64 { manifest.files.reduce(0) { $0 + $1.bytes } }

    /// The paths the manifest lists, in its order.
    public var listedNames: [String] { manifest.files.map { $0.path } }

    /// The listed files inside package `directory` (an `.mlpackage`), in the manifest's order.
    public func files(under directory: String) -> [FileEntry] {
        let prefix = directory + "/"
        return manifest.files.filter { $0.path.hasPrefix(prefix) }
    }

    /// A component's bytes on disk: the sum of the listed files under its `.mlpackage`.
    public func componentBytes(_ name: String) throws -> Int64 {
        let spec = try manifest.component(name)
        return files(under: spec.file).reduce(0) { $0 + $1.bytes }
    }

    /// Every component's bytes: what loading the models costs in memory at least once.
    public var modelBytes: Int64 {
        manifest.componentNames.reduce(0) { $0 + ((try? componentBytes($1)) ?? 0) }
    }

    /// Tokens the KV cache holds: the decoder's `static.kv_capacity` (checked present when the manifest was read).
    public var kvCapacity: Int64 { Int64(manifest.textDecoder.staticSpec.kvCapacity ?? manifest.maxContext) }

    /// Bytes of one KV cache element: 2 for a float16 package (the Core ML states are fp16), else 4.
    public var kvElementBytes: Int64 { manifest.textDecoder.coreml.computePrecision == "float16" ? 2 : 4 }

    /// The KV cache the decoder's `MLState` holds, allocated whole: 2 (key and value) x layers x kv_heads x head_dim
    /// x element bytes x the capacity.
    public var kvCacheBytes: Int64 {
        let d = manifest.decoder
        return 2 * Int64(d.numLayers) * Int64(d.kvHeads) * Int64(d.headDim) * kvElementBytes * kvCapacity
    }

    /// What running the bundle needs at least: the model files loaded once plus the KV cache (activations, the
    /// compiled model cache and the app itself are left out: the least the phone must have free, not a promise).
    public var memoryNeeded: Int64 { modelBytes + kvCacheBytes }

    /// Refuses, before any model is loaded, a bundle that cannot fit in `availableBytes` (what iOS says this app may
    /// still allocate, `os_proc_available_memory()`). The message gives the numbers in MB (10^6 bytes). Returns
    /// `memoryNeeded` when it fits.
    @discardableResult
    public func checkMemory(availableBytes: Int64) throws -> Int64 {
        if availableBytes < 0 {
            throw InputError("available memory \(availableBytes) bytes is negative",
                "pass what os_proc_available_memory() reports")
        }
        let needed = memoryNeeded
        if needed > availableBytes {
            let capacity = kvCacheBytes > 0 ? " at \(kvCapacity) tokens" : ""
            let mb = VLMBundle.megabytes
            throw BundleError("the bundle needs about \(mb(needed)) MB (model files \(mb(modelBytes)) MB loaded once "
                + "plus the KV cache \(mb(kvCacheBytes)) MB\(capacity)) but the device has \(mb(availableBytes)) MB "
                + "available (os_proc_available_memory)",
                "close other apps, or export a smaller quantization (--quant int4 or palette4) or a smaller model")
        }
        return needed
    }

    /// `checkMemory(availableBytes:)` with what iOS reports now; where it reports nothing (macOS, the simulator)
    /// nothing is refused and `memoryNeeded` is returned.
    @discardableResult
    public func checkMemory() throws -> Int64 {
        guard let available = MemoryProbe.availableBytes() else { return memoryNeeded }
        return try checkMemory(availableBytes: available)
    }

    /// Checks the size and sha256 of `names` (by default every listed file, the packages' files included), streaming
    /// each one in 1 MiB chunks; `progress` gets (file, bytes done over all of them, total bytes). A missing,
    /// truncated or altered file is a `BundleError` naming it. Returns the bytes checked.
    @discardableResult
    public func verify(_ names: [String]? = nil,
                       progress: ((_ file: String, _ done: Int64, _ total: Int64) -> Void)? = nil) throws -> Int64 {
        let entries = try (names ?? listedNames).map { try entry($0) }
        let total = entries.reduce(0) { $0 + $1.bytes }
        var done: Int64 = 0
        for entry in entries {
            let base = done
            let actual = try sha256Of(entry) { read in progress?(entry.path, base + read, total) }
            if actual != entry.sha256 { throw tampered(entry.path) }
            done += entry.bytes
        }
        return done
    }

    /// Checks every listed file of component `name`'s package (before compiling it).
    @discardableResult
    public func verifyComponent(_ name: String,
                                progress: ((_ file: String, _ done: Int64, _ total: Int64) -> Void)? = nil) throws -> Int64 {
        try verify(files(under: try manifest.component(name).file).map { $0.path }, progress: progress)
    }

    /// A listed file, whole, after checking its size and sha256 (so the tokenizer or golden record the kit reads is
    /// the one the export wrote). Any other name is refused.
    public func read(_ name: String) throws -> Data {
        let entry = try self.entry(name)
        if entry.bytes > VLMBundle.maxReadBytes {
            throw BundleError("bundle file \(name) is \(entry.bytes) bytes, over the \(VLMBundle.maxReadBytes) this kit "
                + "reads whole", "re-export the bundle")
        }
        let url = try presentSize(entry)
        let bytes: Data
        do {
            bytes = try Data(contentsOf: url)
        } catch {
            throw unreadable(name, error)
        }
        if Int64(bytes.count) != entry.bytes || VLMBundle.hex(SHA256.hash(data: bytes)) != entry.sha256 {
            throw tampered(name)
        }
        return bytes
    }

    /// A listed UTF-8 text file, checked as `read`.
    public func readText(_ name: String) throws -> String {
        guard let text = String(data: try read(name), encoding: .utf8) else {
            throw BundleError("bundle file \(name) is not UTF-8 text", "re-export the bundle")
        }
        return text
    }

    /// The URL of a listed file or of a listed package directory (an `.mlpackage` whose files are listed), checked to
    /// stay inside the bundle after symlinks are resolved.
    public func url(_ name: String) throws -> URL {
        try VLMBundle.checkName(name, label: label)
        if listed[name] == nil && files(under: name).isEmpty { throw unlisted(name) }
        let url = root.appendingPathComponent(name).standardizedFileURL.resolvingSymlinksInPath()
        if !url.path.hasPrefix(root.path + "/") {
            throw BundleError("\(label): '\(name)' resolves to \(url.path), outside the bundle",
                "copy the bundle again without links; never edit bundle files by hand")
        }
        return url
    }

    /// The `.mlpackage` directory of component `name`.
    public func componentURL(_ name: String) throws -> URL { try url(try manifest.component(name).file) }

    /// Whether the bundle has the listed file `name` on disk (of any size; `verify` checks it).
    public func exists(_ name: String) -> Bool {
        guard let found = try? self.url(name) else { return false }
        return FileManager.default.fileExists(atPath: found.path)
    }

    // -- checks ------------------------------------------------------------------------------------------------------

    private func entry(_ name: String) throws -> FileEntry {
        guard let entry = listed[name] else { throw unlisted(name) }
        return entry
    }

    private func unlisted(_ name: String) -> BundleError {
        BundleError("\(label) names a file its manifest does not list: '\(name)'",
            "re-export the bundle with `pocketvlm export`; never edit a manifest by hand")
    }

    @discardableResult
    private func presentSize(_ entry: FileEntry) throws -> URL {
        let url = try self.url(entry.path)
        guard let size = VLMBundle.fileSize(url) else {
            throw BundleError("bundle file \(entry.path) is missing from \(label)",
                "copy the whole bundle directory again (every file its manifest lists)")
        }
        if size != entry.bytes {
            throw BundleError("bundle file \(entry.path) is \(size) bytes, its manifest says \(entry.bytes) "
                + "(truncated or replaced)", "copy the bundle again; never edit bundle files by hand")
        }
        return url
    }

    /// The file's sha256, streamed through a `FileHandle` (weights are never read whole).
    private func sha256Of(_ entry: FileEntry, onRead: (Int64) -> Void) throws -> String {
        let url = try presentSize(entry)
        var hasher = SHA256()
        var read: Int64 = 0
        do {
            let handle = try FileHandle(forReadingFrom: url)
            defer { try? handle.close() }
            while true {
                let next: Data? = try autoreleasepool { try handle.read(upToCount: VLMBundle.chunkBytes) }
                guard let chunk = next, !chunk.isEmpty else { break }
                hasher.update(data: chunk)
                read += Int64(chunk.count)
                onRead(read)
            }
        } catch {
            throw unreadable(entry.path, error)
        }
        if read != entry.bytes { throw tampered(entry.path) }
        return VLMBundle.hex(hasher.finalize())
    }

    private func tampered(_ name: String) -> BundleError {
        BundleError("bundle file \(name) does not match its sha256 in manifest.json (modified or truncated)",
            "re-export the bundle or copy it again; never edit bundle files by hand")
    }

    private func unreadable(_ name: String, _ error: Error) -> BundleError {
        BundleError("bundle file \(name) cannot be read from \(label) (\(error.localizedDescription))",
            "copy the bundle again")
    }

    static func fileSize(_ url: URL) -> Int64? {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), !isDirectory.boolValue,
              let attributes = try? FileManager.default.attributesOfItem(atPath: url.path),
              let size = attributes[FileAttributeKey.size] as? NSNumber else { return nil }
        return size.int64Value
    }

    /// Every path the manifest names stays inside the bundle, every file the kit reads is listed, and each
    /// component's package digest and size agree with the file list.
    private static func checkPaths(_ manifest: Manifest, label: String) throws {
        var listed: Set<String> = []
        for entry in manifest.files {
            try checkName(entry.path, label: label)
            if !listed.insert(entry.path).inserted {
                throw BundleError("\(label) \(manifestName) lists '\(entry.path)' twice", "re-export the bundle")
            }
            if entry.bytes < 0 || !isSha256(entry.sha256) {
                throw BundleError("\(label) \(manifestName) entry '\(entry.path)' has a bad size or sha256",
                    "re-export the bundle")
            }
        }
        for name in manifest.componentNames {
            guard let spec = manifest.components[name] else { continue }
            try checkName(spec.file, label: label)
            let prefix = spec.file + "/"
            let inside = manifest.files.filter { $0.path.hasPrefix(prefix) }
            if inside.isEmpty {
                throw BundleError("\(label): the component '\(name)' package '\(spec.file)' has no file in the "
                    + "manifest's file list", "re-export the bundle with `pocketvlm export`; never edit a manifest by hand")
            }
            let bytes = inside.reduce(Int64(0)) { $0 + $1.bytes }
            let digest = packageDigest(inside, under: prefix)
            if bytes != spec.bytes || digest != spec.sha256 {
                throw BundleError("\(label): component '\(name)' says \(spec.file) has sha256 \(spec.sha256) and "
                    + "\(spec.bytes) bytes, its listed files give \(digest) and \(bytes)",
                    "re-export the bundle; never edit a manifest by hand")
            }
        }
        var named: [(String, String)] = [("tokenizer", manifest.tokenizer.file)]
        if let golden = manifest.golden {
            named.append(("golden record", golden.file))
            named.append(("golden image", golden.image))
        }
        if let feeds = manifest.app?.visionFeeds { named.append(("app.vision_feeds", feeds.file)) }
        for (what, path) in named {
            try checkName(path, label: label)
            if !listed.contains(path) {
                throw BundleError("\(label): the \(what) file '\(path)' is not in the manifest's file list",
                    "re-export the bundle with `pocketvlm export`; never edit a manifest by hand")
            }
        }
    }

    /// The exporter's package digest (export/targets/coreml/common.py `package_digest`): sha256 over
    /// "relative path \0 file sha256 \n" for each file, sorted by path segments.
    static func packageDigest(_ files: [FileEntry], under prefix: String) -> String {
        let relative = files.map { (path: String($0.path.dropFirst(prefix.count)), sha256: $0.sha256) }
        let sorted = relative.sorted { a, b in
            let x = a.path.split(separator: "/", omittingEmptySubsequences: false)
            let y = b.path.split(separator: "/", omittingEmptySubsequences: false)
            for (p, q) in zip(x, y) where p != q { return p.utf8.lexicographicallyPrecedes(q.utf8) }
            return x.count < y.count
        }
        var hasher = SHA256()
        for file in sorted { hasher.update(data: Data("\(file.path)\u{0}\(file.sha256)\n".utf8)) }
        return VLMBundle.hex(hasher.finalize())
    }

    private static func isSha256(_ text: String) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    /// A name inside a bundle: relative, '/'-separated, no empty, '.' or '..' segment, no backslash, colon or NUL.
    static func checkName(_ name: String, label: String) throws {
        let segments = name.split(separator: "/", omittingEmptySubsequences: false)
        let bad = name.isEmpty || name.hasPrefix("/") || name.contains("\\") || name.contains(":")
            || name.contains("\u{0}") || segments.contains { $0.isEmpty || $0 == "." || $0 == ".." }
        if bad {
            throw BundleError("\(label) names a file path that leaves the bundle or is not a plain relative path: "
                + "'\(name)'", "re-export the bundle with `pocketvlm export`; never edit a manifest by hand")
        }
    }

    /// Lower-case hex of a digest.
    static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        let digits = Array("0123456789abcdef")
        var out = ""
        for byte in digest {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return out
    }

    /// Megabytes (10^6 bytes) as the messages print them: whole above 10 MB, one decimal below.
    static func megabytes(_ bytes: Int64) -> String {
        bytes >= 10_000_000 ? "\((bytes + 500_000) / 1_000_000)" : String(format: "%.1f", Double(bytes) / 1e6)
    }
}

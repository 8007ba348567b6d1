import Foundation
import PocketVLMKit

/// A bundle folder in the app's Documents and what its manifest says (or why it cannot be read).
struct BundleEntry: Identifiable, Hashable, Sendable {
    let name: String
    let directory: URL
    let summary: String?
    let problem: String?
    var id: String { name }
}

/**
 The app's bundles: folders directly in its Documents folder, which the Files app ("On My iPhone > PocketVLM") and
 Finder's file sharing show (`UIFileSharingEnabled`, `LSSupportsOpeningDocumentsInPlace`), or copied in from a folder
 picked with `.fileImporter` (Core ML compiles a package from a local path, so a picked folder is copied, not read in
 place). Result files go to `Documents/results/`. The compiled models are the kit's cache, in Application Support.
 */
struct BundleStore: Sendable {
    let root: URL
    let results: URL

    static let resultsFolder = "results"
    static let manifestFile = "manifest.json"
    private static let stagingPrefix = ".importing-"
    private static let notBundles: Set<String> = [resultsFolder, "Inbox"]

    static func standard() -> BundleStore {
        let fm = FileManager.default
        let documents = fm.urls(for: .documentDirectory, in: .userDomainMask).first
            ?? fm.temporaryDirectory
        let store = BundleStore(root: documents, results: documents.appendingPathComponent(resultsFolder))
        try? fm.createDirectory(at: store.results, withIntermediateDirectories: true)
        return store
    }

    /// Every folder in Documents, with its manifest's family / target / quantization / task (read, not hashed).
    func list() -> [BundleEntry] {
        let fm = FileManager.default
        let folders = (try? fm.contentsOfDirectory(at: root, includingPropertiesForKeys: [.isDirectoryKey],
                                                   options: [.skipsHiddenFiles])) ?? []
        return folders.filter { url in
            (try? url.resourceValues(forKeys: [.isDirectoryKey]).isDirectory) == true
                && !Self.notBundles.contains(url.lastPathComponent)
        }
        .sorted { $0.lastPathComponent.localizedStandardCompare($1.lastPathComponent) == .orderedAscending }
        .map { entry($0) }
    }

    private func entry(_ directory: URL) -> BundleEntry {
        let name = directory.lastPathComponent
        guard FileManager.default.fileExists(atPath: directory.appendingPathComponent(Self.manifestFile).path) else {
            return BundleEntry(name: name, directory: directory, summary: nil,
                               problem: "no \(Self.manifestFile): not a pocketvlm bundle folder")
        }
        do {
            let manifest = try VLMBundle.open(directory).manifest
            let summary = "\(manifest.family) · \(manifest.target) · \(manifest.quantization) · \(manifest.task)"
            return BundleEntry(name: name, directory: directory, summary: summary, problem: nil)
        } catch {
            return BundleEntry(name: name, directory: directory, summary: nil, problem: describe(error))
        }
    }

    /**
     Copies the picked folder (a `.fileImporter` URL, security-scoped) into Documents under its own name, replacing a
     bundle of that name only once the copy is complete. A folder without `manifest.json` is refused before anything
     is copied. `progress` gets a line per file.
     */
    func importFolder(_ picked: URL, progress: @escaping (String) -> Void) throws -> URL {
        let scoped = picked.startAccessingSecurityScopedResource()
        defer { if scoped { picked.stopAccessingSecurityScopedResource() } }
        let name = try safeName(picked.lastPathComponent)
        var coordinated: NSError?
        var outcome: Result<URL, Error> = .failure(InputError("the picked folder could not be read",
                                                             "pick the bundle folder again"))
        NSFileCoordinator().coordinate(readingItemAt: picked, options: [], error: &coordinated) { source in
            do {
                outcome = .success(try copy(source, as: name, progress: progress))
            } catch {
                outcome = .failure(error)
            }
        }
        if let coordinated {
            throw InputError("the picked folder could not be read (\(coordinated.localizedDescription))",
                             "pick the bundle folder again, or copy it in with Finder or the Files app")
        }
        return try outcome.get()
    }

    private func copy(_ source: URL, as name: String, progress: (String) -> Void) throws -> URL {
        let fm = FileManager.default
        guard fm.fileExists(atPath: source.appendingPathComponent(Self.manifestFile).path) else {
            throw InputError("the folder '\(name)' has no \(Self.manifestFile): not a pocketvlm bundle",
                             "pick the --out folder of `pocketvlm export` itself")
        }
        let files = try listFiles(source)
        let total = files.reduce(Int64(0)) { $0 + $1.bytes }
        let staging = root.appendingPathComponent(Self.stagingPrefix + name)
        try? fm.removeItem(at: staging)
        var done: Int64 = 0
        do {
            for file in files {
                let target = staging.appendingPathComponent(file.path)
                try fm.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
                try fm.copyItem(at: source.appendingPathComponent(file.path), to: target)
                done += file.bytes
                progress("copying \(file.path): \(done / 1_000_000) of \(total / 1_000_000) MB")
            }
            let destination = root.appendingPathComponent(name)
            if fm.fileExists(atPath: destination.path) { try fm.removeItem(at: destination) }
            try fm.moveItem(at: staging, to: destination)
            return destination
        } catch {
            try? fm.removeItem(at: staging)
            throw InputError("copying '\(name)' failed after \(done / 1_000_000) of \(total / 1_000_000) MB "
                             + "(\(error.localizedDescription))",
                             "check the free space on the phone and pick the folder again")
        }
    }

    /// Every regular file under `folder` (packages such as `.mlpackage` included), as relative paths.
    private func listFiles(_ folder: URL) throws -> [(path: String, bytes: Int64)] {
        let keys: [URLResourceKey] = [.isRegularFileKey, .fileSizeKey]
        guard let walk = FileManager.default.enumerator(at: folder, includingPropertiesForKeys: keys) else {
            throw InputError("cannot list the picked folder", "pick the bundle folder again")
        }
        // Both sides with symlinks resolved: the enumerator may name /var/... as /private/var/... (or back).
        let base = folder.resolvingSymlinksInPath().path
        var files: [(path: String, bytes: Int64)] = []
        for case let url as URL in walk {
            let values = try url.resourceValues(forKeys: Set(keys))
            guard values.isRegularFile == true else { continue }
            let full = url.resolvingSymlinksInPath().path
            guard full.hasPrefix(base + "/") else { continue }
            files.append((String(full.dropFirst(base.count + 1)), Int64(values.fileSize ?? 0)))
        }
        return files
    }

    /// Deletes a bundle folder (only one directly in Documents).
    func delete(_ entry: BundleEntry) throws {
        guard entry.directory.deletingLastPathComponent().standardizedFileURL == root.standardizedFileURL else {
            throw InputError("'\(entry.name)' is not in the app's Documents", "delete it in the Files app")
        }
        try FileManager.default.removeItem(at: entry.directory)
    }

    /// A folder name the copy can use: no separators, no `.` / `..`, nothing hidden.
    private func safeName(_ raw: String) throws -> String {
        let cleaned = raw.replacingOccurrences(of: "/", with: "_").trimmingCharacters(in: .whitespaces)
        if cleaned.isEmpty || cleaned.hasPrefix(".") || Self.notBundles.contains(cleaned) {
            throw InputError("the picked folder is named '\(raw)'", "rename the bundle folder and pick it again")
        }
        return cleaned
    }
}

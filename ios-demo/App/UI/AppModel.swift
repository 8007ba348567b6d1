import Foundation
import Observation
import PocketVLMKit

/// Text pieces or progress lines sent from the model's queue, delivered in order on the main actor.
@MainActor
final class Feed {
    let send: @Sendable (String) -> Void
    private let continuation: AsyncStream<String>.Continuation
    private let delivery: Task<Void, Never>

    init(_ receive: @escaping @MainActor (String) -> Void) {
        let (stream, continuation) = AsyncStream.makeStream(of: String.self)
        self.continuation = continuation
        send = { piece in _ = continuation.yield(piece) }
        delivery = Task { @MainActor in
            for await piece in stream { receive(piece) }
        }
    }

    /// Ends the feed once everything sent so far is delivered.
    func finish() async {
        continuation.finish()
        await delivery.value
    }
}

/**
 The app's state (Android's `PocketVlmApp` + `MainActivity` logic): the bundles in Documents, the one `ModelRunner`
 and what it has loaded, the compute-unit choice (kept across launches; changing it reloads the loaded bundle on
 the new units), and the status line where every failure is shown as its one line.
 */
@MainActor
@Observable
final class AppModel {
    let runner = ModelRunner()
    let store = BundleStore.standard()
    private(set) var bundles: [BundleEntry] = []
    private(set) var loaded: BundleSummary?
    private(set) var busy = false
    private(set) var status = "nothing loaded"
    /// The picker's choice; `unitsChanged()` applies it.
    var computeUnits: ComputeUnits
    private var loadedEntry: BundleEntry?

    private static let unitsKey = "computeUnits"

    init() {
        let saved = UserDefaults.standard.string(forKey: Self.unitsKey).flatMap { ComputeUnits(rawValue: $0) }
        computeUnits = saved ?? .all
    }

    /// Lists the bundles (manifests read off the main thread: a big manifest never stalls the screen).
    func refresh() async {
        let store = self.store
        bundles = await Task.detached(priority: .userInitiated) { store.list() }.value
    }

    func load(_ entry: BundleEntry) async {
        await open(entry, units: computeUnits)
    }

    /// Saves the picker's choice and reloads the loaded bundle on it (Core ML fixes the compute units at load).
    func unitsChanged() async {
        UserDefaults.standard.set(computeUnits.rawValue, forKey: Self.unitsKey)
        guard !busy, let entry = loadedEntry, loaded?.computeUnits != computeUnits else { return }
        await open(entry, units: computeUnits)
    }

    private func open(_ entry: BundleEntry, units: ComputeUnits) async {
        busy = true
        loaded = nil
        let feed = Feed { [weak self] line in self?.status = line }
        let outcome = await runner.load(directory: entry.directory, name: entry.name, units: units,
                                        progress: feed.send)
        await feed.finish()
        busy = false
        switch outcome {
        case .done(let summary):
            loaded = summary
            loadedEntry = entry
            status = "loaded \(summary.title)\n\(summary.loadLine)"
        case .failed(let line):
            loadedEntry = nil
            status = "\(entry.name) did not load:\n\(line)"
        }
    }

    func unload() async {
        busy = true
        let outcome = await runner.unload()
        busy = false
        loaded = nil
        loadedEntry = nil
        if case .failed(let line) = outcome { status = line } else { status = "nothing loaded" }
    }

    /// Copies a folder picked with `.fileImporter` into Documents (in turn with the model's work).
    func importFolder(_ picked: URL) async {
        busy = true
        let feed = Feed { [weak self] line in self?.status = line }
        let store = self.store
        let send = feed.send
        let outcome = await runner.perform { try store.importFolder(picked, progress: send) }
        await feed.finish()
        busy = false
        switch outcome {
        case .done(let folder): status = "copied to Documents/\(folder.lastPathComponent): tap it to load"
        case .failed(let line): status = line
        }
        await refresh()
    }

    func delete(_ entry: BundleEntry) async {
        if entry.name == loadedEntry?.name { await unload() }
        do {
            try store.delete(entry)
        } catch {
            status = describe(error)
        }
        await refresh()
    }

    /// A failure or note from another screen, for the status line.
    func note(_ line: String) { status = line }
}

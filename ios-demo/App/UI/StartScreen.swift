import PocketVLMKit
import SwiftUI
import UniformTypeIdentifiers

/**
 The start screen (Android's `MainActivity`): the bundles in the app's Documents (copied in with Finder, the Files
 app, or the import button), the compute units, loading one (the manifest, the memory check, every file's sha256,
 then compiling and loading the Core ML models; each failure is its one line here), and the way to the caption,
 self-test and benchmark screens.
 */
struct StartScreen: View {
    @Environment(AppModel.self) private var app
    @State private var importing = false

    var body: some View {
        NavigationStack {
            List {
                bundlesSection
                ComputeUnitsSection()
                loadedSection
                Section("This device") {
                    Text(DeviceFacts.summary).font(.footnote).foregroundStyle(.secondary)
                }
            }
            .navigationTitle("PocketVLM")
            .refreshable { await app.refresh() }
            .task { await app.refresh() }
            .fileImporter(isPresented: $importing, allowedContentTypes: [.folder]) { result in
                switch result {
                case .success(let folder): Task { await app.importFolder(folder) }
                case .failure(let error): app.note(describe(error))
                }
            }
        }
    }

    private var bundlesSection: some View {
        Section {
            if app.bundles.isEmpty {
                Text("None yet: copy a bundle folder into PocketVLM with Finder or the Files app, or import one.")
                    .foregroundStyle(.secondary)
            }
            ForEach(app.bundles) { entry in
                BundleRow(entry: entry, loaded: app.loaded?.name == entry.name,
                          enabled: !app.busy && entry.problem == nil) {
                    Task { await app.load(entry) }
                }
                .swipeActions {
                    Button("Delete", role: .destructive) { Task { await app.delete(entry) } }
                }
            }
            Button {
                importing = true
            } label: {
                Label("Import a bundle folder…", systemImage: "folder.badge.plus")
            }
            .disabled(app.busy)
        } header: {
            Text("Bundles")
        } footer: {
            Text("Bundles are folders in this app's Documents (Files: On My iPhone › PocketVLM). "
                 + "Only --target coreml VLM bundles run here.")
        }
    }

    private var loadedSection: some View {
        Section("Loaded") {
            HStack(alignment: .top) {
                if app.busy { ProgressView().padding(.trailing, 4) }
                Text(app.status)
                    .font(.callout.monospaced())
                    .textSelection(.enabled)
            }
            if let loaded = app.loaded {
                NavigationLink("Caption / ask") { CaptionScreen() }
                NavigationLink("Self-test (golden replay)") { SelfTestScreen() }
                NavigationLink("Benchmark") { BenchmarkScreen() }
                Button("Unload \(loaded.name)", role: .destructive) { Task { await app.unload() } }
                    .disabled(app.busy)
            }
        }
    }
}

/// A bundle folder: its name and manifest summary (tap to load), or why it cannot be used.
private struct BundleRow: View {
    let entry: BundleEntry
    let loaded: Bool
    let enabled: Bool
    let load: () -> Void

    var body: some View {
        Button(action: load) {
            VStack(alignment: .leading, spacing: 2) {
                HStack {
                    Text(entry.name).font(.headline)
                    if loaded { Image(systemName: "checkmark.circle.fill").foregroundStyle(.green) }
                }
                if let summary = entry.summary {
                    Text(summary).font(.caption).foregroundStyle(.secondary)
                }
                if let problem = entry.problem {
                    Text(problem).font(.caption).foregroundStyle(.red)
                }
            }
        }
        .disabled(!enabled)
    }
}

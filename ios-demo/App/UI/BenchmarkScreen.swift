import Observation
import PhotosUI
import PocketVLMKit
import SwiftUI

/// The benchmark's state: the picked photos, the run counts, progress, and the outcome.
@MainActor
@Observable
final class BenchmarkModel {
    var photoItems: [PhotosPickerItem] = []
    var runs = 10
    var newTokens = 32
    private(set) var running = false
    private(set) var progress = "pick photos, or leave none to run the golden image"
    private(set) var outcome: BenchmarkOutcome?

    /**
     Prepares the picked photos as files (upright, at most 2048 px; one at a time, so 50 photos are never all in
     memory), then runs the benchmark on the model's queue and writes the device result file.
     */
    func run(on runner: ModelRunner, results: URL) async {
        running = true
        outcome = nil
        defer { running = false }
        let photos: [URL]
        do {
            photos = try await preparePhotos()
        } catch {
            progress = describe(error)
            return
        }
        let feed = Feed { [weak self] line in self?.progress = line }
        let plan = BenchmarkPlan(photos: photos, runs: max(1, runs), newTokens: max(1, newTokens), prompt: nil)
        let result = await runner.benchmark(plan, app: "pocketvlm ios-demo \(DeviceFacts.appVersion)",
                                            resultsIn: results, progress: feed.send)
        await feed.finish()
        switch result {
        case .done(let done):
            outcome = done
            progress = "\(done.runs) timed runs on \(done.computeUnits.label)"
                + (done.usedGoldenImage ? " (the golden image)" : "")
        case .failed(let line):
            progress = line
        }
    }

    private func preparePhotos() async throws -> [URL] {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("benchmark-photos")
        try? FileManager.default.removeItem(at: folder)
        guard !photoItems.isEmpty else { return [] }
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        var files: [URL] = []
        for (index, item) in photoItems.enumerated() {
            progress = "preparing photo \(index + 1) of \(photoItems.count)"
            guard let data = try await item.loadTransferable(type: Data.self) else {
                throw InputError("photo \(index + 1) could not be read", "pick the photos again")
            }
            let file = folder.appendingPathComponent("photo-\(index)")
            try await Task.detached(priority: .userInitiated) {
                try Images.prepared(data).write(to: file)
            }.value
            files.append(file)
        }
        return files
    }
}

/**
 N captions through the loaded bundle (the picked photos, one timed run each, or the bundle's golden image N times),
 one warm-up first, median and p90 per stage on the screen, written as the device result file
 (`runtime/schema/bench.schema.json`, `measured_on: "device"`, the compute units in its `device` block) to
 `Documents/results/`, shared from here with ShareLink for `benchmarks/report.py`.
 */
struct BenchmarkScreen: View {
    @Environment(AppModel.self) private var app
    @State private var model = BenchmarkModel()

    var body: some View {
        if let loaded = app.loaded {
            form(loaded)
        } else {
            NothingLoaded()
        }
    }

    private func form(_ loaded: BundleSummary) -> some View {
        Form {
            Section {
                PhotosPicker(selection: $model.photoItems, maxSelectionCount: Benchmarks.maxPhotos,
                             matching: .images, preferredItemEncoding: .current) {
                    Label(pickLabel, systemImage: "photo.stack")
                }
                if model.photoItems.isEmpty {
                    Stepper("Golden image runs: \(model.runs)", value: $model.runs, in: 1...200)
                } else {
                    Button("Use the golden image instead", role: .destructive) { model.photoItems = [] }
                }
                Stepper("New tokens per caption: \(model.newTokens)", value: $model.newTokens, in: 1...1024, step: 8)
            } header: {
                Text("Runs")
            } footer: {
                Text("One warm-up caption first, then one timed caption per photo (or per golden run), greedy, each "
                     + "exactly this many new tokens (generated past the end of text, so every run times the same).")
            }
            Section {
                HStack {
                    Button("Run") { Task { await model.run(on: app.runner, results: app.store.results) } }
                        .disabled(model.running || app.busy)
                    Spacer()
                    Button("Stop", role: .destructive) { app.runner.cancel() }
                        .disabled(!model.running)
                }
                .buttonStyle(.borderless)
                HStack {
                    if model.running { ProgressView().padding(.trailing, 4) }
                    Text(model.progress).font(.footnote.monospaced()).textSelection(.enabled)
                }
            }
            if let outcome = model.outcome {
                figures(outcome)
            }
            ComputeUnitsSection()
            Section { LoadedFooter(loaded: loaded) }
        }
        .navigationTitle("Benchmark")
    }

    private var pickLabel: String {
        model.photoItems.isEmpty ? "Pick photos (up to \(Benchmarks.maxPhotos))" : "\(model.photoItems.count) photos picked"
    }

    private func figures(_ outcome: BenchmarkOutcome) -> some View {
        Section {
            Grid(alignment: .trailing, horizontalSpacing: 12, verticalSpacing: 4) {
                GridRow {
                    Text("stage").gridColumnAlignment(.leading)
                    Text("median")
                    Text("p90")
                }
                .font(.caption.bold())
                ForEach(outcome.stages) { stage in
                    GridRow {
                        Text("\(stage.name) (\(stage.unit))").gridColumnAlignment(.leading)
                        Text(String(format: "%.1f", stage.median))
                        Text(String(format: "%.1f", stage.p90))
                    }
                    .font(.callout.monospacedDigit())
                }
            }
            ShareLink(item: outcome.file) { Label("Share the result file", systemImage: "square.and.arrow.up") }
            Text("results/\(outcome.file.lastPathComponent)").font(.caption.monospaced()).textSelection(.enabled)
        } header: {
            Text("\(outcome.runs) runs on \(outcome.computeUnits.label)")
        }
    }
}

import Observation
import PhotosUI
import PocketVLMKit
import SwiftUI
import UIKit

/// The caption screen's state: the picture, the question, the sampling, the streamed text and its figures.
@MainActor
@Observable
final class CaptionModel {
    var photoItem: PhotosPickerItem?
    var question = ""
    var maxNewTokens = 64
    var seeded = false
    var seed = 0
    var temperature = 0.7
    var topK = 40
    private(set) var imageData: Data?
    private(set) var preview: UIImage?
    private(set) var text = ""
    private(set) var figures: [(String, String)] = []
    private(set) var status = "pick a photo or take one, or type a question to ask without one"
    private(set) var running = false

    /// The question typed, trimmed ("" asks for a caption of the photo).
    var asked: String { question.trimmingCharacters(in: .whitespacesAndNewlines) }

    /// A caption needs a photo; a typed question runs with one or, without, as a text-only prompt.
    var canRun: Bool { imageData != nil || !asked.isEmpty }

    private var sampling: Sampling {
        seeded ? .seeded(seed: UInt64(max(seed, 0)), temperature: temperature, topK: topK) : .greedy
    }

    /// Reads the picked photo's original bytes and prepares them (upright, at most 2048 px).
    func loadPicked() async {
        guard let item = photoItem else { return }
        status = "reading the photo…"
        do {
            guard let data = try await item.loadTransferable(type: Data.self) else {
                throw InputError("the photo could not be read", "pick another photo")
            }
            use(try await Task.detached(priority: .userInitiated) { try Images.prepared(data) }.value)
        } catch {
            status = describe(error)
        }
    }

    func useCamera(_ photo: UIImage) {
        do {
            use(try Images.fromCamera(photo))
        } catch {
            status = describe(error)
        }
    }

    private func use(_ data: Data) {
        imageData = data
        preview = Images.preview(data)
        text = ""
        figures = []
        status = "photo \(Images.sizeLine(data)), \(data.count / 1000) KB"
    }

    /// Drops the picture, so a typed question is asked text-only.
    func clearPhoto() {
        photoItem = nil
        imageData = nil
        preview = nil
        status = "no photo: type a question to ask it text-only"
    }

    func run(on runner: ModelRunner, loaded: BundleSummary) async {
        let asked = self.asked
        guard canRun else {
            status = "pick a photo or take one first, or type a question"
            return
        }
        running = true
        text = ""
        figures = []
        status = asked.isEmpty ? "captioning…" : (imageData == nil ? "answering (no photo)…" : "answering…")
        let feed = Feed { [weak self] piece in self?.text += piece }
        let request = CaptionRequest(imageData: imageData, prompt: asked.isEmpty ? nil : asked, sampling: sampling,
                                     maxNewTokens: max(1, maxNewTokens))
        let outcome = await runner.caption(request, onText: feed.send)
        await feed.finish()
        running = false
        switch outcome {
        case .done(let result):
            text = result.text
            status = "done on \(loaded.computeUnits.label)"
            figures = Self.figures(result, loaded: loaded)
        case .failed(let line):
            status = line
        }
    }

    private static func figures(_ result: CaptionResult, loaded: BundleSummary) -> [(String, String)] {
        let rate = result.decodeMsPerToken > 0 ? 1000 / result.decodeMsPerToken : 0
        return [
            ("compute units", loaded.computeUnits.rawValue),
            ("tokens", "\(result.promptTokens) prompt + \(result.tokens) new"),
            ("preprocess", ms(result.preprocessMs)),
            ("vision encoder", ms(result.encodeMs)),
            ("prefill", ms(result.prefillMs)),
            ("to first token", ms(result.preprocessMs + result.encodeMs + result.prefillMs)),
            ("decode", String(format: "%.1f ms/token (%.1f tokens/s)", result.decodeMsPerToken, rate)),
        ]
    }
}

/**
 A photo (picker or camera) and what the loaded bundle says about it: the caption, or the answer to the question
 typed in the Ask field, streamed as it is generated and stoppable. Figures per stage below, with the compute units.
 */
struct CaptionScreen: View {
    @Environment(AppModel.self) private var app
    @State private var model = CaptionModel()
    @State private var camera = false

    var body: some View {
        if let loaded = app.loaded {
            form(loaded)
        } else {
            NothingLoaded()
        }
    }

    private func form(_ loaded: BundleSummary) -> some View {
        Form {
            Section("Picture") {
                if let preview = model.preview {
                    Image(uiImage: preview).resizable().scaledToFit().frame(maxHeight: 320)
                }
                HStack {
                    PhotosPicker(selection: $model.photoItem, matching: .images, preferredItemEncoding: .current) {
                        Label("Photo", systemImage: "photo.on.rectangle")
                    }
                    Spacer()
                    Button {
                        camera = true
                    } label: {
                        Label("Camera", systemImage: "camera")
                    }
                    .disabled(!CameraPicker.isAvailable)
                    if model.imageData != nil {
                        Spacer()
                        Button("Clear", role: .destructive) { model.clearPhoto() }
                    }
                }
                .buttonStyle(.borderless)
            }
            Section("Ask") {
                TextField("Question (empty: describe the photo; no photo: text only)", text: $model.question,
                          axis: .vertical)
                Stepper("Max new tokens: \(model.maxNewTokens)", value: $model.maxNewTokens, in: 1...1024, step: 16)
                Toggle("Seeded sampling (off: greedy)", isOn: $model.seeded)
                if model.seeded {
                    Stepper("Seed: \(model.seed)", value: $model.seed, in: 0...1_000_000)
                    Stepper("Top-k: \(model.topK)", value: $model.topK, in: 1...1000)
                    LabeledContent("Temperature \(String(format: "%.2f", model.temperature))") {
                        Slider(value: $model.temperature, in: 0.05...2.0)
                    }
                }
                HStack {
                    Button(model.asked.isEmpty ? String("Caption") : String("Ask")) {
                        Task { await model.run(on: app.runner, loaded: loaded) }
                    }
                    .disabled(model.running || app.busy || !model.canRun)
                    Spacer()
                    Button("Stop", role: .destructive) { app.runner.cancel() }
                        .disabled(!model.running)
                }
                .buttonStyle(.borderless)
            }
            Section("Answer") {
                Text(model.text.isEmpty ? " " : model.text).textSelection(.enabled)
                HStack {
                    if model.running { ProgressView().padding(.trailing, 4) }
                    Text(model.status).font(.footnote.monospaced()).foregroundStyle(.secondary)
                }
                ForEach(model.figures, id: \.0) { figure in FigureRow(name: figure.0, value: figure.1) }
            }
            ComputeUnitsSection()
            Section { LoadedFooter(loaded: loaded) }
        }
        .navigationTitle("Caption / ask")
        .onChange(of: model.photoItem) {
            Task { await model.loadPicked() }
        }
        .fullScreenCover(isPresented: $camera) {
            CameraPicker(isPresented: $camera) { photo in model.useCamera(photo) }
                .ignoresSafeArea()
        }
    }
}

import Observation
import PocketVLMKit
import SwiftUI

/// The self-test's state: running, the outcome, or the failure's line.
@MainActor
@Observable
final class SelfTestModel {
    private(set) var running = false
    private(set) var outcome: SelfTestOutcome?
    private(set) var status = "not run yet"

    func run(on runner: ModelRunner, results: URL) async {
        running = true
        outcome = nil
        status = "replaying the golden record…"
        let result = await runner.selfTest(resultsIn: results, device: DeviceFacts.summary)
        running = false
        switch result {
        case .done(let report):
            outcome = report
            status = "report: results/\(report.file.lastPathComponent)"
        case .failed(let line):
            status = line
        }
    }
}

/**
 The golden self-test on the phone (Android's `SelfTestActivity`): the bundle's golden record, written by the
 exporter from the Python runtime's run and passed by the other engines, replayed stage by stage here on Core ML
 with the chosen compute units (preprocessing, the vision encoder, the prompt, the decoder's logits, greedy
 generation), each stage pass or fail with its figures. The report is written next to the benchmark results.
 */
struct SelfTestScreen: View {
    @Environment(AppModel.self) private var app
    @State private var model = SelfTestModel()

    var body: some View {
        if let loaded = app.loaded {
            list(loaded)
        } else {
            NothingLoaded()
        }
    }

    private func list(_ loaded: BundleSummary) -> some View {
        List {
            Section {
                Button("Run the self-test") {
                    Task { await model.run(on: app.runner, results: app.store.results) }
                }
                .disabled(model.running || app.busy)
                HStack {
                    if model.running { ProgressView().padding(.trailing, 4) }
                    Text(model.status).font(.footnote.monospaced()).textSelection(.enabled)
                }
            } footer: {
                Text("Compares every stage with the exporter's own run, within each stage's tolerance. The Neural "
                     + "Engine and the GPU compute in float16, so a bundle can pass on one choice and not another.")
            }
            if let outcome = model.outcome {
                Section {
                    ForEach(outcome.stages) { stage in StageRow(stage: stage) }
                } header: {
                    Text(verdict(outcome))
                        .foregroundStyle(outcome.passed ? Color.green : Color.red)
                }
                Section {
                    ShareLink(item: outcome.file) { Label("Share the report", systemImage: "square.and.arrow.up") }
                }
            }
            ComputeUnitsSection()
            Section { LoadedFooter(loaded: loaded) }
        }
        .navigationTitle("Self-test")
    }

    private func verdict(_ outcome: SelfTestOutcome) -> String {
        (outcome.passed ? "PASS" : "FAIL") + " on " + outcome.computeUnits.label
    }
}

/// One stage: passed, failed or not run, its name and its figures.
private struct StageRow: View {
    let stage: StageLine

    private var icon: String {
        stage.passed ? "checkmark.circle.fill" : (stage.ran ? "xmark.octagon.fill" : "minus.circle")
    }

    var body: some View {
        HStack(alignment: .top) {
            Image(systemName: icon)
                .foregroundStyle(stage.passed ? Color.green : (stage.ran ? Color.red : Color.secondary))
            VStack(alignment: .leading, spacing: 2) {
                Text("\(stage.name): \(stage.status.replacingOccurrences(of: "_", with: " "))").font(.headline)
                Text(stage.detail).font(.caption.monospaced()).foregroundStyle(.secondary).textSelection(.enabled)
            }
        }
    }
}

import PocketVLMKit
import SwiftUI

/// The compute-unit picker, on every screen: the choice is recorded in the result files, and changing it reloads
/// the loaded bundle on the new units (the root view calls `AppModel.unitsChanged()`).
struct ComputeUnitsSection: View {
    @Environment(AppModel.self) private var app

    var body: some View {
        @Bindable var app = app
        Section {
            Picker("Compute units", selection: $app.computeUnits) {
                ForEach(ComputeUnits.allCases, id: \.self) { units in
                    Text(units.label).tag(units)
                }
            }
            .disabled(app.busy)
            Text(app.computeUnits.meaning)
                .font(.footnote)
                .foregroundStyle(.secondary)
        } header: {
            Text("Core ML compute units")
        } footer: {
            if let loaded = app.loaded, loaded.computeUnits != app.computeUnits {
                Text("\(loaded.name) is loaded on \(loaded.computeUnits.label); reloading on the new choice…")
            }
        }
    }
}

/// The figures line every screen shows under its results: the bundle and the compute units it runs on.
struct LoadedFooter: View {
    let loaded: BundleSummary

    var body: some View {
        VStack(alignment: .leading, spacing: 2) {
            Text(loaded.title)
            Text("compute units: \(loaded.computeUnits.label) (\(loaded.computeUnits.rawValue))")
            Text(loaded.loadLine)
        }
        .font(.footnote.monospaced())
        .foregroundStyle(.secondary)
    }
}

/// What a screen that needs a loaded bundle shows without one.
struct NothingLoaded: View {
    var body: some View {
        ContentUnavailableView("No bundle loaded", systemImage: "shippingbox",
                               description: Text("Go back and load a bundle first."))
    }
}

/// One figure row: a name and its value, monospaced.
struct FigureRow: View {
    let name: String
    let value: String

    var body: some View {
        HStack {
            Text(name)
            Spacer()
            Text(value).monospacedDigit()
        }
        .font(.callout)
    }
}

/// Milliseconds as the screens print them.
func ms(_ value: Double) -> String { String(format: "%.1f ms", value) }

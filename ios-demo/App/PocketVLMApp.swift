import SwiftUI

/// The app: one `AppModel` (the loaded bundle outlives the screens that use it; the model runner is shared), the
/// start screen at the root, and the compute-unit choice applied wherever it is changed.
@main
struct PocketVLMApp: App {
    @State private var app = AppModel()

    var body: some Scene {
        WindowGroup {
            StartScreen()
                .environment(app)
                .onChange(of: app.computeUnits) {
                    Task { await app.unitsChanged() }
                }
        }
    }
}

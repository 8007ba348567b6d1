import Foundation
import PocketVLMKit

/// A model task's outcome for the UI: a value, or the one line to show instead of crashing (Android's `Outcome`).
enum Outcome<Value> {
    case done(Value)
    case failed(String)
}

extension Outcome: Sendable where Value: Sendable {}

/// The one line for any error: a pocketvlm error's `line` ("kind: problem (fix)"), "stopped" for a cancelled run,
/// and the kit's wrapping of anything else.
func describe(_ error: Error) -> String {
    if error is Cancelled { return "stopped" }
    return errorLine(error)
}

extension ComputeUnits {
    /// The name on the picker and on every screen's figures.
    var label: String {
        switch self {
        case .all: return "All (CPU, GPU, Neural Engine)"
        case .cpuAndNeuralEngine: return "CPU + Neural Engine"
        case .cpuAndGPU: return "CPU + GPU"
        case .cpuOnly: return "CPU only"
        }
    }

    /// What the choice means for Core ML (`MLModelConfiguration.computeUnits`).
    var meaning: String {
        switch self {
        case .all:
            return "Core ML places each operation on the Neural Engine, the GPU or the CPU, as it sees fit."
        case .cpuAndNeuralEngine:
            return "No GPU: operations run on the Neural Engine where it supports them, the rest on the CPU."
        case .cpuAndGPU:
            return "No Neural Engine: operations run on the GPU (Metal) or the CPU."
        case .cpuOnly:
            return "The CPU alone: the slowest, and the baseline the other choices are compared with."
        }
    }
}

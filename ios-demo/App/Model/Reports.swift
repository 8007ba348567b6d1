import Foundation
import PocketVLMKit

/// Result file names and the self-test report, written next to the benchmark results.
enum Reports {
    /// "STEM-UNITS-MILLIS.json": the compute units are in the name, so runs on each choice sit side by side.
    static func fileName(_ stem: String, units: ComputeUnits, date: Date = Date()) -> String {
        let millis = Int64((date.timeIntervalSince1970 * 1000).rounded())
        return "\(stem)-\(units.rawValue)-\(millis).json"
    }

    /// The golden replay's report as JSON, in order: the bundle, the compute units and the device it ran on, then
    /// the kit's own report (`GoldenReport.toJson()`: the verdict, every stage with its error, limit and figures).
    static func selfTest(_ report: GoldenReport, bundle: BundleSummary, device: String,
                         date: Date = Date()) -> [(String, Any?)] {
        let header: [(String, Any?)] = [
            ("kind", "pocketvlm-ios-selftest"),
            ("created_utc", ISO8601DateFormatter().string(from: date)),
            ("bundle", bundle.name),
            ("family", bundle.family),
            ("target", bundle.target),
            ("quantization", bundle.quantization),
            ("compute_units", bundle.computeUnits.rawValue),
            ("device", device),
        ]
        return header + report.toJson()
    }
}

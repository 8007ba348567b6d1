import Foundation

/// Summary statistics over benchmark runs (Kotlin `Stats.kt`), computed as the Python bench computes them
/// (`runtime/bench.py`), so a device file and a host file mean the same thing: the median is the middle value (the
/// mean of the two middle ones for an even count, as `statistics.median`), a percentile interpolates linearly between
/// the closest ranks (numpy's default `np.percentile`).
public enum Stats {
    public static func median(_ values: [Double]) throws -> Double { try percentile(values, 50) }

    public static func mean(_ values: [Double]) throws -> Double {
        try requireValues(values)
        return values.reduce(0, +) / Double(values.count)
    }

    public static func min(_ values: [Double]) throws -> Double {
        try requireValues(values)
        return values.min()!
    }

    public static func p90(_ values: [Double]) throws -> Double { try percentile(values, 90) }

    public static func p10(_ values: [Double]) throws -> Double { try percentile(values, 10) }

    /// The `q`th percentile (0...100), linear between closest ranks: rank q/100 x (n - 1).
    public static func percentile(_ values: [Double], _ q: Double) throws -> Double {
        try requireValues(values)
        if q.isNaN || q < 0 || q > 100 { throw InputError("percentile \(q) is outside 0..100", "pass 0 to 100") }
        let sorted = values.sorted()
        let rank = q / 100 * Double(sorted.count - 1)
        let lo = Int(rank.rounded(.down))
        let hi = Int(rank.rounded(.up))
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - Double(lo))
    }

    /// Median, p90, min, mean and the count, in the units of `values` (the bench schema's `components` entry).
    public static func summary(_ values: [Double]) throws -> Summary {
        Summary(median: try median(values), p90: try p90(values), min: try min(values), mean: try mean(values),
            runs: values.count)
    }

    private static func requireValues(_ values: [Double]) throws {
        if values.isEmpty { throw InputError("no measurements to summarise", "run the benchmark at least once") }
        if let bad = values.first(where: { $0.isNaN || $0.isInfinite }) {
            throw InputError("a measurement is \(bad)", "measure with a monotonic clock (ContinuousClock)")
        }
    }
}

/// One measured quantity over runs.
public struct Summary {
    public let median: Double
    public let p90: Double
    public let min: Double
    public let mean: Double
    public let runs: Int

    public init(median: Double, p90: Double, min: Double, mean: Double, runs: Int) {
        self.median = median
        self.p90 = p90
        self.min = min
        self.mean = mean
        self.runs = runs
    }

    /// The bench schema's per-component latency entry (values in milliseconds).
    public func componentEntry() -> [(String, Any?)] {
        [("median_ms", median), ("p90_ms", p90), ("min_ms", min), ("runs", runs)]
    }
}

import Foundation
import PocketVLMKit

/// What the benchmark screen asks for: picked photos (prepared files, one timed run each), or none for the bundle's
/// golden image `runs` times; captions of exactly `newTokens` new tokens (the end of text ignored).
struct BenchmarkPlan {
    let photos: [URL]
    let runs: Int
    let newTokens: Int
    let prompt: String?          // nil: the bundle's caption prompt
}

/// One stage's figures over the timed runs.
struct StageFigures: Identifiable {
    let name: String
    let unit: String
    let median: Double
    let p90: Double
    var id: String { name }
}

/// The benchmark's figures for the screen and the device result file it wrote.
struct BenchmarkOutcome {
    let stages: [StageFigures]
    let runs: Int
    let usedGoldenImage: Bool
    let computeUnits: ComputeUnits
    let file: URL
}

/**
 The benchmark screen's runs (Android's `Benchmarks`), platform-free: one warm-up on the first image, then one
 timed caption per image; `image(i)` reads image i when its run starts, so N photos are never all in memory at
 once. Every run generates exactly `newTokens` tokens (`ignoreEos`, as `pocketvlm bench` and Android's benchmark
 do), so each run decodes the same number of tokens. The kit's `DeviceResult.vlm` turns the runs into the device
 result file of `runtime/schema/bench.schema.json` (the same file the web and Android demos write); `stages` gives
 the screen's median and p90 per stage.
 */
enum Benchmarks {
    static let maxPhotos = 50

    static func run(captioner: Captioner, count: Int, image: (Int) throws -> Data, prompt: String?, newTokens: Int,
                    progress: (String) -> Void, cancelled: @escaping () -> Bool) throws -> [CaptionResult] {
        if count < 1 { throw InputError("no images to benchmark", "pick one or more photos") }
        var runs: [CaptionResult] = []
        for index in -1..<count {
            if cancelled() { throw Cancelled() }
            progress(index < 0 ? "warm-up on image 1" : "image \(index + 1) of \(count)")
            let result = try captioner.caption(imageData: try image(max(index, 0)), prompt: prompt,
                                               sampling: .greedy, maxNewTokens: newTokens, ignoreEos: true,
                                               onText: { _ in }, cancelled: cancelled)
            if index >= 0 { runs.append(result) }
        }
        return runs
    }

    /// A prepared photo file the screen wrote before the run.
    static func readPhoto(_ url: URL) throws -> Data {
        do {
            return try Data(contentsOf: url)
        } catch {
            throw InputError("cannot read the prepared photo \(url.lastPathComponent) (\(error.localizedDescription))",
                             "pick the photos again")
        }
    }

    /// Median and p90 of every stage over `runs` (the kit's `Stats`: numpy's linear percentiles).
    static func stages(_ runs: [CaptionResult]) throws -> [StageFigures] {
        guard !runs.isEmpty else { return [] }
        func figures(_ name: String, _ unit: String, _ values: [Double]) throws -> StageFigures {
            StageFigures(name: name, unit: unit, median: try Stats.median(values), p90: try Stats.p90(values))
        }
        let firstToken = runs.map { $0.preprocessMs + $0.encodeMs + $0.prefillMs }
        let decodeRates = runs.map { $0.decodeMsPerToken > 0 ? 1000 / $0.decodeMsPerToken : 0 }
        return [
            try figures("preprocess", "ms", runs.map(\.preprocessMs)),
            try figures("vision encoder", "ms", runs.map(\.encodeMs)),
            try figures("prefill", "ms", runs.map(\.prefillMs)),
            try figures("to first token", "ms", firstToken),
            try figures("decode", "ms/token", runs.map(\.decodeMsPerToken)),
            try figures("decode rate", "tokens/s", decodeRates),
            try figures("new tokens", "tokens", runs.map { Double($0.tokens) }),
            try figures("prompt tokens", "tokens", runs.map { Double($0.promptTokens) }),
        ]
    }
}

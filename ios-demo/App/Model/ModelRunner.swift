import Dispatch
import Foundation
import os
import PocketVLMKit

/// A stop flag the UI sets while the model thread reads it between tokens and images.
final class StopFlag: @unchecked Sendable {
    private let state = OSAllocatedUnfairLock(initialState: false)

    func set(_ value: Bool) { state.withLock { $0 = value } }

    var isSet: Bool { state.withLock { $0 } }
}

/// What the screens show about the loaded bundle: plain values, while the bundle itself stays in the ModelRunner.
struct BundleSummary: Equatable {
    let name: String
    let family: String
    let target: String
    let quantization: String
    let computeUnits: ComputeUnits
    let verifyMs: Double
    let sessionLoadMs: Double

    /// "NAME: family target (quantization)".
    var title: String { "\(name): \(family) \(target) (\(quantization))" }

    /// The load figures line of the start screen.
    var loadLine: String {
        String(format: "checked in %.0f ms, sessions in %.0f ms, on %@", verifyMs, sessionLoadMs, computeUnits.label)
    }
}

/// One caption or answer to ask for; no image (`imageData` nil) asks `prompt` alone, text only.
struct CaptionRequest {
    let imageData: Data?
    let prompt: String?          // nil: the bundle's caption prompt
    let sampling: Sampling
    let maxNewTokens: Int
}

/// A self-test's stage as the screen shows it: `status` is "passed", "failed" or "not_run" (`StageStatus.json`).
struct StageLine: Identifiable {
    let name: String
    let status: String
    let detail: String
    var id: String { name }
    var passed: Bool { status == StageStatus.passed.json }
    var ran: Bool { status != StageStatus.notRun.json }
}

/// The self-test's verdict, its stages and the report file written.
struct SelfTestOutcome {
    let passed: Bool
    let stages: [StageLine]
    let computeUnits: ComputeUnits
    let file: URL
}

/**
 The one place every model call runs (loading, captions, the self-test, benchmarks), as Android's `ModelHost`:
 Core ML's stateful decoder keeps its KV cache between calls, so requests take turns here, one at a time. The actor
 runs on its own serial dispatch queue, so a long caption blocks that queue and never Swift's shared thread pool.
 It owns the loaded bundle: `close()` releases every session; nothing outside holds a model. Every failure comes back
 as an `Outcome.failed` line. `cancel()` is the one call that does not wait its turn: it sets the flag that the
 running caption or benchmark checks between tokens.
 */
actor ModelRunner {
    private let queue = DispatchSerialQueue(label: "dev.pocketvlm.model", qos: .userInitiated)
    nonisolated var unownedExecutor: UnownedSerialExecutor { queue.asUnownedSerialExecutor() }

    private let stop = StopFlag()
    private var loaded: LoadedBundle?
    private var captioner: Captioner?
    private var name = ""
    private var working = false

    /// Asks the running caption or benchmark to stop at its next token or image.
    nonisolated func cancel() { stop.set(true) }

    /// Runs `body` as the model's one task; a second request while one runs is refused with a line.
    private func exclusive<T>(_ body: () async throws -> T) async -> Outcome<T> {
        if working { return .failed("busy: the model is still running the last request (stop it, or wait)") }
        working = true
        stop.set(false)
        defer { working = false }
        do {
            return .done(try await body())
        } catch {
            return .failed(describe(error))
        }
    }

    /// Runs plain work (copying a bundle in) in turn with the model calls.
    func perform<T>(_ body: () throws -> T) async -> Outcome<T> {
        await exclusive { try body() }
    }

    /**
     Replaces the loaded bundle with the one in `directory`: the old one is closed first (its memory freed), then the
     kit loads in the order that keeps a failure cheap: the manifest, the memory check, every file's sha256, the
     compiled models and their sessions; `progress` gets a line per step.
     */
    func load(directory: URL, name: String, units: ComputeUnits,
              progress: @escaping (String) -> Void) async -> Outcome<BundleSummary> {
        await exclusive {
            close()
            progress("opening \(name) on \(units.label)")
            let opened = try await LoadedBundle.load(directory: directory, computeUnits: units, progress: progress)
            do {
                captioner = try Captioner(opened)
            } catch {
                opened.close()
                throw error
            }
            loaded = opened
            self.name = name
            return summary(opened)
        }
    }

    /// Closes the loaded bundle, if any.
    func unload() async -> Outcome<Void> {
        await exclusive { close() }
    }

    /// A caption (prompt nil) or an answer, its text streamed to `onText` piece by piece.
    func caption(_ request: CaptionRequest, onText: @escaping (String) -> Void) async -> Outcome<CaptionResult> {
        let stop = self.stop
        return await exclusive {
            try requireCaptioner().caption(imageData: request.imageData, prompt: request.prompt,
                                           sampling: request.sampling, maxNewTokens: request.maxNewTokens,
                                           onText: onText, cancelled: { stop.isSet })
        }
    }

    /// The golden replay on this phone and these compute units, its report written to `folder`.
    func selfTest(resultsIn folder: URL, device: String) async -> Outcome<SelfTestOutcome> {
        await exclusive {
            let loaded = try requireLoaded()
            let report = try GoldenReplay.run(loaded)
            let file = folder.appendingPathComponent(Reports.fileName("selftest-\(name)", units: loaded.computeUnits))
            try DeviceResult.write(Reports.selfTest(report, bundle: summary(loaded), device: device), to: file)
            let stages = report.stages.map { StageLine(name: $0.name, status: $0.status.json, detail: $0.detail) }
            return SelfTestOutcome(passed: report.passed, stages: stages, computeUnits: loaded.computeUnits, file: file)
        }
    }

    /// The benchmark of `plan`, written as the device result file to `folder`; `app` names the app in its `device`
    /// block ("pocketvlm ios-demo 0.1.0"), whose `backend` names the compute units ("coreml-ane", ...).
    func benchmark(_ plan: BenchmarkPlan, app: String, resultsIn folder: URL,
                   progress: @escaping (String) -> Void) async -> Outcome<BenchmarkOutcome> {
        let stop = self.stop
        return await exclusive {
            let loaded = try requireLoaded()
            let captioner = try requireCaptioner()
            let golden: Data? = try plan.photos.isEmpty ? goldenImage(loaded) : nil
            let count = golden == nil ? plan.photos.count : plan.runs
            let runs = try Benchmarks.run(captioner: captioner, count: count, image: { index in
                if let golden { return golden }
                return try Benchmarks.readPhoto(plan.photos[index])
            }, prompt: plan.prompt, newTokens: plan.newTokens, progress: progress, cancelled: { stop.isSet })
            let backend = DeviceResult.backend(computeUnits: loaded.computeUnits.rawValue)
            let result = try DeviceResult.vlm(loaded: loaded, runs: runs,
                                              device: DeviceInfo.current(app: app, backend: backend))
            let stem = "pocketvlm-ios-\(loaded.manifest.family)-\(loaded.manifest.target)"
            let file = folder.appendingPathComponent(Reports.fileName(stem, units: loaded.computeUnits))
            try DeviceResult.write(result, to: file)
            return BenchmarkOutcome(stages: try Benchmarks.stages(runs), runs: runs.count,
                                    usedGoldenImage: golden != nil, computeUnits: loaded.computeUnits, file: file)
        }
    }

    private func close() {
        captioner = nil
        loaded?.close()
        loaded = nil
    }

    private func requireLoaded() throws -> LoadedBundle {
        guard let loaded else { throw InputError("no bundle is loaded", "go back and load one") }
        return loaded
    }

    private func requireCaptioner() throws -> Captioner {
        guard let captioner else { throw InputError("no bundle is loaded", "go back and load one") }
        return captioner
    }

    /// The bundle's golden image (the exporter's own test picture), checked against its sha256 as it is read.
    private func goldenImage(_ loaded: LoadedBundle) throws -> Data {
        guard let golden = loaded.manifest.golden else {
            throw InputError("this bundle has no golden record to benchmark with", "pick photos for the benchmark")
        }
        return try loaded.bundle.read(golden.image)
    }

    private func summary(_ loaded: LoadedBundle) -> BundleSummary {
        let manifest = loaded.manifest
        return BundleSummary(name: name, family: manifest.family, target: manifest.target,
                             quantization: manifest.quantization, computeUnits: loaded.computeUnits,
                             verifyMs: loaded.loadFigures.verifyMs, sessionLoadMs: loaded.loadFigures.sessionLoadMs)
    }
}

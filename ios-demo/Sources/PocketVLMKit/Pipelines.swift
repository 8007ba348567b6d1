import Foundation

/*
 * What a loaded bundle does, over the kit's core and the Core ML sessions, as the Python runtime does it
 * (`runtime/vlm.py`) and the Android engine's `Pipelines.kt`: the picture through the vision side ([VlmSteps]), the
 * prompt from the manifest's `app` block, and the caption or answer streamed as text ([Captioner]). The steps need no
 * model of their own (each model step takes the sessions or the decoder to run), so the golden replay runs them one
 * by one. Sessions and the decoder are lent by their [SessionFactory]: nothing here closes them but [LoadedBundle].
 */

private func elapsedMs(since start: DispatchTime) -> Double {
    Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e6
}

/// A picture through the vision side: the outputs the decoder takes, and what it cost.
public struct VisionInput {
    public let embeds: [String: Tensor]
    public let preprocessMs: Double
    public let encodeMs: Double
}

/// A finished generation: the text (stop tokens left out, as the Python runtime's) and the loop's result.
public struct Answer {
    public let text: String
    public let result: GenerationResult
}

/// Running a bundle's components over a [SessionFactory]: a component fed the inputs it declares, the vision side in
/// order, and its constant inputs for the fixed image size.
public enum Components {
    /// One component on the inputs it declares, taken from `available`; a declared input not there is refused.
    public static func run(_ manifest: Manifest, _ sessions: SessionFactory, _ component: String,
                           _ available: [String: Tensor]) throws -> [String: Tensor] {
        let spec = try manifest.component(component)
        var feeds: Feeds = [:]
        for input in spec.inputs {
            guard let value = available[input.name] else {
                throw BundleError("component '\(component)' needs input '\(input.name)', which this app does not "
                    + "produce for it (inputs it has: \(available.keys.sorted()))",
                    "re-export the bundle with a pocketvlm version that writes the app block's vision_feeds")
            }
            feeds[input.name] = value
        }
        let outputs = try sessions.session(component).run(feeds)
        for (name, tensor) in outputs where tensor.dtype != "float32" {
            throw InferenceError("component '\(component)' output '\(name)' is \(tensor.dtype), expected float32",
                                 "re-export the bundle")
        }
        return outputs
    }

    /// The vision side in order (one encoder, or frontend + transformer), each fed what the ones before gave.
    public static func runVision(_ manifest: Manifest, _ sessions: SessionFactory,
                                 _ feeds: [String: Tensor]) throws -> [String: Tensor] {
        var available = feeds
        var last: [String: Tensor] = [:]
        for stage in manifest.visionStages {
            last = try run(manifest, sessions, stage, available)
            available.merge(last) { _, new in new }
        }
        return last
    }

    /// The vision side's constant inputs for the fixed image size (`app.vision_feeds`), by input name: float32 and
    /// int64 as stored, int32 widened to int64 (values kept), all little-endian.
    public static func visionConstants(_ bundle: VLMBundle) throws -> [String: Tensor] {
        guard let feeds = bundle.manifest.app?.visionFeeds else { return [:] }
        let bytes = [UInt8](try bundle.read(feeds.file))
        var out: [String: Tensor] = [:]
        for entry in feeds.tensors {
            let count = entry.shape.reduce(1, *)
            let width: Int64 = ["float32": 4, "int32": 4, "int64": 8][entry.dtype] ?? 0
            guard width > 0, count >= 0, entry.offset >= 0, entry.bytes == Int64(count) * width,
                  entry.offset + entry.bytes <= Int64(bytes.count) else {
                throw BundleError("app.vision_feeds tensor '\(entry.name)' (\(entry.dtype) \(entry.shape) at "
                    + "\(entry.offset), \(entry.bytes) bytes) does not fit \(feeds.file) (\(bytes.count) bytes)",
                    "re-export the bundle")
            }
            let start = Int(entry.offset)
            func word(_ i: Int, _ size: Int) -> UInt64 {
                var v: UInt64 = 0
                for b in 0..<size { v |= UInt64(bytes[start + i * size + b]) << (8 * UInt64(b)) }
                return v
            }
            switch entry.dtype {
            case "float32":
                out[entry.name] = .f32(shape: entry.shape,
                                       data: (0..<count).map { Float(bitPattern: UInt32(truncatingIfNeeded: word($0, 4))) })
            case "int64":
                out[entry.name] = .i64(shape: entry.shape, data: (0..<count).map { Int64(bitPattern: word($0, 8)) })
            default:
                out[entry.name] = .i64(shape: entry.shape,
                                       data: (0..<count).map { Int64(Int32(bitPattern: UInt32(truncatingIfNeeded: word($0, 4)))) })
            }
        }
        return out
    }

    /// Output `name` of a component, or an [InferenceError] naming what it gave instead.
    public static func output(_ outputs: [String: Tensor], _ name: String, _ component: String) throws -> Tensor {
        guard let tensor = outputs[name] else {
            throw InferenceError("the \(component) gave no \(name) (it gave \(outputs.keys.sorted()))",
                                 "re-export the bundle")
        }
        return tensor
    }
}

/// A VLM bundle's steps: [visionFeeds] (the picture preprocessed, with the app block's constant vision inputs),
/// [encodeVision] on the vision sessions, prompts from the manifest's `app` block ([promptBuilder]), and [generate]
/// over any [TextDecoder], with the text streamed as the Python runtime's `VisionLanguageModel.generate` streams it.
public final class VlmSteps {
    public let bundle: VLMBundle
    public let manifest: Manifest
    public let tokenizer: Tokenizer
    private let preprocessor: Preprocessor
    private let constants: [String: Tensor]
    private let prompts: PromptBuilder?

    public init(bundle: VLMBundle, tokenizer: Tokenizer) throws {
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.tokenizer = tokenizer
        preprocessor = try Preprocessor.of(bundle.manifest.image)
        constants = try Components.visionConstants(bundle)
        prompts = try bundle.manifest.app.map { app in try PromptBuilder(app: app) { try tokenizer.encodePlain($0) } }
    }

    /// What the vision side is fed for `image`: its `pixel_values` and the constant inputs for the fixed size.
    public func visionFeeds(_ image: Rgba) throws -> [String: Tensor] {
        var feeds = constants
        feeds["pixel_values"] = try preprocessor.pixelValues(image)
        return feeds
    }

    /// The vision side on `sessions`: `image_embeds` (and `deepstack_embeds` for Qwen3-VL).
    public func encodeVision(_ sessions: SessionFactory, _ feeds: [String: Tensor]) throws -> [String: Tensor] {
        try Components.runVision(manifest, sessions, feeds)
    }

    /// The prompts of the manifest's `app` block; a bundle without one is a [BundleError].
    public func promptBuilder() throws -> PromptBuilder {
        guard let prompts else {
            throw BundleError("this bundle's manifest has no 'app' block, which the iPhone app needs (the prompt "
                + "resolved for a fixed image layout)", "export the embedded captioner or a Qwen model with "
                + "--target coreml; other VLM bundles run with `pocketvlm caption` on a Mac")
        }
        return prompts
    }

    /// Generates from `prompt` on `decoder` with the vision outputs `image` (nil: text only). `onText` gets each new
    /// piece of text once it is complete (stop tokens are not streamed; the pieces add up to the answer's text);
    /// `cancelled` is asked after every token and stops the loop with [Cancelled].
    public func generate(_ decoder: TextDecoder, _ prompt: Prompt, _ image: [String: Tensor]?,
                         _ config: GenerationConfig, onText: ((String) -> Void)? = nil,
                         cancelled: @escaping () -> Bool = { false }, forced: [Int]? = nil,
                         imageEncodeS: Double = 0) throws -> Answer {
        let stops = manifest.eosTokenIds.union(config.stopTokenIds)
        let stream = onText != nil ? tokenizer.stream() : nil
        let generator = Generator(decoder: decoder, eosTokenIds: manifest.eosTokenIds, maxContext: manifest.maxContext)
        let result = try generator.generate(prompt: prompt, image: image, config: config, forced: forced,
                                            onToken: { id in
            if cancelled() { throw Cancelled() }
            if let stream, let onText, !stops.contains(id) {
                let piece = try stream.push(id)
                if !piece.isEmpty { onText(piece) }
            }
        }, imageEncodeS: imageEncodeS)
        let text = try tokenizer.decode(result.tokenIds.filter { !stops.contains($0) })
        if let stream, let onText {
            let rest = stream.finish(text)
            if !rest.isEmpty { onText(rest) }
        }
        return Answer(text: text, result: result)
    }
}

/// How the next token is picked: greedy (what the golden record and `pocketvlm caption` use), or sampled with a
/// seed that gives the same tokens as the web demo's and the Android app's sampler.
public enum Sampling {
    case greedy
    case seeded(seed: UInt64, temperature: Double, topK: Int)

    /// The loop's config; `ignoreEos` keeps generating past the end of text (benchmarks time equal token counts).
    public func config(maxNewTokens: Int, ignoreEos: Bool = false) throws -> GenerationConfig {
        switch self {
        case .greedy:
            return try GenerationConfig(maxNewTokens: maxNewTokens, doSample: false, ignoreEos: ignoreEos)
        case .seeded(let seed, let temperature, let topK):
            return try GenerationConfig(maxNewTokens: maxNewTokens, doSample: true, temperature: temperature,
                                        topK: topK, seed: Int64(bitPattern: seed), ignoreEos: ignoreEos)
        }
    }
}

/// One caption or answer with its figures (milliseconds), as the benchmark screen and the result file use them.
public struct CaptionResult {
    public let text: String
    public let preprocessMs: Double
    public let encodeMs: Double
    public let prefillMs: Double
    public let decodeMs: Double
    public let decodeMsPerToken: Double
    /// New tokens, and the decode steps among them (the first token comes from the prefill).
    public let tokens: Int
    public let decodeTokens: Int
    public let promptTokens: Int
    public let stopReason: String
    /// The run as the device result file takes it.
    public let run: VlmRun
}

/// A bundle opened on the phone, in the order that fails cheapest first: the manifest, the memory check, every
/// file's sha256, then the Core ML packages compiled (once, cached) and loaded for the chosen compute units.
public final class LoadedBundle {
    public let bundle: VLMBundle
    public let manifest: Manifest
    public let computeUnits: ComputeUnits
    public let sessions: CoreMLSessions
    public let tokenizer: Tokenizer
    public let loadFigures: LoadFigures

    private init(bundle: VLMBundle, computeUnits: ComputeUnits, sessions: CoreMLSessions, tokenizer: Tokenizer,
                 loadFigures: LoadFigures) {
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.computeUnits = computeUnits
        self.sessions = sessions
        self.tokenizer = tokenizer
        self.loadFigures = loadFigures
    }

    /// Loads the bundle in `directory`; `progress` gets one line per step. Every failure is a [PocketVLMError].
    public static func load(directory: URL, computeUnits: ComputeUnits,
                            progress: @escaping (String) -> Void) async throws -> LoadedBundle {
        progress("reading manifest.json")
        let bundle = try VLMBundle.open(directory)
        _ = try bundle.manifest.requireApp()
        progress("checking memory")
        _ = try bundle.checkMemory()
        progress("checking sha256 of \(bundle.manifest.files.count) files")
        var started = DispatchTime.now()
        _ = try bundle.verify(nil, progress: { name, _, _ in progress("sha256 \(name)") })
        let verifyMs = elapsedMs(since: started)
        let tokenizer = try Tokenizer.fromJson(try bundle.read(bundle.manifest.tokenizer.file))
        progress("compiling and loading the Core ML packages (\(computeUnits.name))")
        started = DispatchTime.now()
        let sessions = try CoreMLSessions(bundle: bundle, computeUnits: computeUnits)
        let loadMs = elapsedMs(since: started)
        return LoadedBundle(bundle: bundle, computeUnits: computeUnits, sessions: sessions, tokenizer: tokenizer,
                            loadFigures: LoadFigures(verifyMs: verifyMs, sessionLoadMs: loadMs))
    }

    /// Releases every Core ML model; nothing loaded from this bundle may be used afterwards.
    public func close() { sessions.close() }
}

/// The app's captioner: a VLM bundle whose manifest has the `app` block, run on the loaded bundle's sessions (lent:
/// the [LoadedBundle] closes them), so the app needs no chat template and no M-RoPE code.
public final class Captioner {
    /// The Python runtime's DEFAULT_CAPTION_PROMPT.
    public static let defaultPrompt = "Describe this image."

    public let steps: VlmSteps
    private let loaded: LoadedBundle
    private let prompts: PromptBuilder

    public init(_ loaded: LoadedBundle) throws {
        self.loaded = loaded
        steps = try VlmSteps(bundle: loaded.bundle, tokenizer: loaded.tokenizer)
        prompts = try steps.promptBuilder()
    }

    /// Preprocesses `image` and runs the vision side on it.
    public func encodeImage(_ image: Rgba) throws -> VisionInput {
        var started = DispatchTime.now()
        let feeds = try steps.visionFeeds(image)
        let preprocessMs = elapsedMs(since: started)
        started = DispatchTime.now()
        let embeds = try steps.encodeVision(loaded.sessions, feeds)
        return VisionInput(embeds: embeds, preprocessMs: preprocessMs, encodeMs: elapsedMs(since: started))
    }

    /// The answer to `text` about `vision` (nil: a text-only prompt), streamed to `onText`.
    public func generate(vision: VisionInput?, text: String, config: GenerationConfig,
                         onText: ((String) -> Void)? = nil, cancelled: @escaping () -> Bool = { false }) throws -> Answer {
        try steps.generate(try loaded.sessions.textDecoder(), try prompts.build(text, withImage: vision != nil),
                           vision?.embeds, config, onText: onText, cancelled: cancelled,
                           imageEncodeS: (vision?.encodeMs ?? 0) / 1e3)
    }

    /// A photo's caption (`prompt` nil or blank: [defaultPrompt]) or the answer to a question about it, with figures;
    /// with no photo (`imageData` nil) the text-only prompt of `prompt`, which must then be given.
    /// `cancelled` is asked after every token and stops the loop with [Cancelled].
    public func caption(imageData: Data?, prompt: String?, sampling: Sampling, maxNewTokens: Int,
                        ignoreEos: Bool = false, onText: @escaping (String) -> Void,
                        cancelled: @escaping () -> Bool) throws -> CaptionResult {
        let text = prompt.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.flatMap { $0.isEmpty ? nil : $0 }
        var decodeMs = 0.0
        var vision: VisionInput?
        if let imageData {
            let decodeStart = DispatchTime.now()
            let image = try Rgba.decode(imageData, name: "the photo")
            decodeMs = elapsedMs(since: decodeStart)
            vision = try encodeImage(image)
        } else if text == nil {
            throw InputError("no photo and no question", "pick a photo, or type a question to ask without one")
        }
        let answer = try generate(vision: vision, text: text ?? Captioner.defaultPrompt,
                                  config: try sampling.config(maxNewTokens: maxNewTokens, ignoreEos: ignoreEos),
                                  onText: onText, cancelled: cancelled)
        let timings = answer.result.timings
        let prefillMs = (timings["prefill_s"] ?? 0) * 1e3
        let decodeTotalMs = (timings["decode_s"] ?? 0) * 1e3
        let decodeTokens = Int(timings["decode_tokens"] ?? 0)
        let preprocessMs = decodeMs + (vision?.preprocessMs ?? 0)
        let encodeMs = vision?.encodeMs ?? 0
        let run = try VlmRun(preprocessMs: preprocessMs, imageEncodeMs: encodeMs, prefillMs: prefillMs,
                             promptTokens: answer.result.promptTokens, decodeMs: decodeTotalMs,
                             decodeTokens: decodeTokens, newTokens: answer.result.tokenIds.count)
        return CaptionResult(text: answer.text, preprocessMs: preprocessMs, encodeMs: encodeMs,
                             prefillMs: prefillMs, decodeMs: decodeTotalMs,
                             decodeMsPerToken: decodeTokens > 0 ? decodeTotalMs / Double(decodeTokens) : 0,
                             tokens: answer.result.tokenIds.count, decodeTokens: decodeTokens,
                             promptTokens: answer.result.promptTokens, stopReason: answer.result.stopReason, run: run)
    }

    /// What ran the vision side and the decoder, for the result file.
    public func engines() throws -> [String: String] {
        var out: [String: String] = [:]
        for stage in loaded.manifest.visionStages { out[stage] = try loaded.sessions.session(stage).backend }
        out[Manifest.decoderComponent] = try loaded.sessions.textDecoder().backend
        return out
    }
}

extension DeviceResult {
    /// The device result file (`runtime/schema/bench.schema.json`, as the web and Android demos write it) of the
    /// benchmark `runs` on `loaded`: what ran each component (the compute units chosen), the load figures, the memory
    /// read from the process's footprint, and the Core ML and app versions.
    public static func vlm(loaded: LoadedBundle, runs: [CaptionResult], device: DeviceInfo) throws -> [(String, Any?)] {
        var engines: [String: String] = [:]
        for stage in loaded.manifest.visionStages { engines[stage] = try loaded.sessions.session(stage).backend }
        engines[Manifest.decoderComponent] = try loaded.sessions.textDecoder().backend
        let os = ProcessInfo.processInfo.operatingSystemVersion
        let version = "\(os.majorVersion).\(os.minorVersion).\(os.patchVersion)"
        let app = Foundation.Bundle.main.infoDictionary?["CFBundleShortVersionString"] as? String ?? "unknown"
        return try vlm(bundle: loaded.bundle, runs: runs.map { $0.run }, engines: engines, device: device,
                       machine: MachineInfo.current(), tools: [("coreml", "iOS \(version)"), ("pocketvlm-ios", app)],
                       load: loaded.loadFigures)
    }
}

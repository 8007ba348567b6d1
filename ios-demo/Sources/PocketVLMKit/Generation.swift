import Foundation

// The generation loop and token selection, as the Python runtime's `runtime/generation.py` (GenerationConfig,
// Sampler) and `runtime/vlm.py` (`_generate`), the web demo's `generation.ts` / `vlm.ts` and the Android engine's
// `Generation.kt`. The loop drives a `TextDecoder` and knows nothing of the tokenizer: the caller turns the token
// ids into text.

/// Greedy decoding by default; `seed` makes sampling repeatable (same seed, same tokens on every engine but
/// Python's). Bad values are an `InputError`.
public struct GenerationConfig {
    public let maxNewTokens: Int
    public let doSample: Bool
    public let temperature: Double
    public let topK: Int
    public let topP: Double
    public let seed: Int64?
    public let stopTokenIds: [Int]
    /// Always generate `maxNewTokens` (benchmarks).
    public let ignoreEos: Bool

    public init(maxNewTokens: Int = 32, doSample: Bool = false, temperature: Double = 1.0, topK: Int = 0,
                topP: Double = 1.0, seed: Int64? = nil, stopTokenIds: [Int] = [], ignoreEos: Bool = false) throws {
        if maxNewTokens < 1 {
            throw InputError("max_new_tokens must be >= 1, got \(maxNewTokens)", "pass 1 or more new tokens")
        }
        // NaN is refused too (the Python check `temperature <= 0` lets it through; the web demo refuses it)
        if !(temperature > 0) {
            throw InputError("temperature must be > 0, got \(temperature)", "use do_sample=false for greedy")
        }
        if !(topP > 0 && topP <= 1) { throw InputError("top_p must be in (0, 1], got \(topP)", "pass a value like 0.9") }
        if topK < 0 { throw InputError("top_k must be >= 0, got \(topK)", "pass 0 to disable top-k") }
        self.maxNewTokens = maxNewTokens
        self.doSample = doSample
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
        self.stopTokenIds = stopTokenIds
        self.ignoreEos = ignoreEos
    }
}

/// SplitMix64 (Steele, Lea and Flood; Vigna's reference `splitmix64.c`): a seeded stream of 64-bit values and of
/// doubles in [0, 1) from their top 53 bits. The Python runtime samples from numpy's PCG64, whose stream no other
/// language reproduces portably; the web demo, the Android engine and this kit all use SplitMix64, so the same seed
/// gives the same tokens on an iPhone, an Android phone and in a browser (not the same as Python's).
public struct SplitMix64 {
    private var state: UInt64

    /// The stream of `seed` (its two's-complement bits, as Kotlin's `Long` and the web demo's `BigInt.asUintN`).
    public init(seed: Int64) { state = UInt64(bitPattern: seed) }

    /// The next 64-bit value (unsigned, as Python and the fixtures print it).
    public mutating func next() -> UInt64 {
        state = state &+ 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The next value as Kotlin's signed `Long` gives it.
    public mutating func nextLong() -> Int64 { Int64(bitPattern: next()) }

    /// A double in [0, 1): the top 53 bits over 2^53.
    public mutating func nextDouble() -> Double { Double(next() >> 11) / Double(UInt64(1) << 53) }
}

/// Greedy (numpy's argmax: the first maximum, or the first NaN), or temperature / top-k / top-p sampling.
public final class Sampler {
    private let config: GenerationConfig
    private var random: SplitMix64

    public init(_ config: GenerationConfig) {
        self.config = config
        random = SplitMix64(seed: config.seed ?? Int64.random(in: Int64.min...Int64.max))
    }

    /// The next token for `logits`.
    public func choose(_ logits: [Float]) throws -> Int {
        if logits.isEmpty { throw InferenceError("the decoder returned no logits", "re-export the bundle") }
        if !config.doSample { return Sampler.argmax(logits) }
        let probs = try probabilities(logits)
        // numpy's Generator.choice(p=...): the first index whose normalised cumulative sum exceeds u
        var cdf = [Double](repeating: 0, count: probs.count)
        var total = 0.0
        for i in 0..<probs.count {
            total += probs[i]
            cdf[i] = total
        }
        let u = random.nextDouble()
        for i in 0..<cdf.count where cdf[i] / total > u { return i }
        return probs.count - 1
    }

    /// The distribution `choose` draws from (float64), after temperature, top-k and top-p, as the Python Sampler.
    public func probabilities(_ logits: [Float]) throws -> [Double] {
        if logits.contains(where: { $0.isNaN }) {
            throw InferenceError("the decoder returned NaN logits", "re-export the bundle, or run it on another backend")
        }
        var scores = logits.map { Double($0) / config.temperature }
        if config.topK > 0 {
            let kth = scores.sorted()[scores.count - min(config.topK, scores.count)]
            for i in 0..<scores.count where scores[i] < kth { scores[i] = -Double.infinity }
        }
        let top = scores.max() ?? -Double.infinity
        if top.isInfinite {
            throw InferenceError("the decoder returned infinite logits",
                                 "re-export the bundle, or run it on another backend")
        }
        var probs = Sampler.normalised(scores.map { exp($0 - top) })
        if config.topP < 1.0 {
            // stable order, largest first; keep while the mass before a token is below top_p
            let order = probs.indices.sorted { a, b in probs[a] != probs[b] ? probs[a] > probs[b] : a < b }
            var keep = [Bool](repeating: false, count: probs.count)
            var cumulative = 0.0
            for index in order {
                cumulative += probs[index]
                if cumulative - probs[index] < config.topP { keep[index] = true }
            }
            probs = Sampler.normalised(probs.indices.map { keep[$0] ? probs[$0] : 0.0 })
        }
        return probs
    }

    private static func normalised(_ values: [Double]) -> [Double] {
        var sum = 0.0
        for v in values { sum += v }  // left to right, as Kotlin's sum()
        return values.map { $0 / sum }
    }

    /// numpy's argmax: the first maximum, or the first NaN.
    public static func argmax(_ values: [Float]) -> Int {
        var best = 0
        for i in 0..<values.count {
            if values[i].isNaN { return i }
            if values[i] > values[best] { best = i }
        }
        return best
    }
}

/// What one generation produced.
public struct GenerationResult {
    /// Every chosen token, stop tokens included.
    public let tokenIds: [Int]
    public let promptTokens: Int
    /// "eos" | "stop_token" | "max_new_tokens" | "forced" (teacher forcing)
    public let stopReason: String
    /// image_encode_s, prefill_s, decode_s (seconds) and decode_tokens, as the Python runtime's result.
    public let timings: [String: Double]
    /// Every step's logits, when teacher-forced.
    public let logits: [[Float]]?

    public init(tokenIds: [Int], promptTokens: Int, stopReason: String, timings: [String: Double],
                logits: [[Float]]?) {
        self.tokenIds = tokenIds
        self.promptTokens = promptTokens
        self.stopReason = stopReason
        self.timings = timings
        self.logits = logits
    }
}

/// The generation loop over one decoder: prefill the prompt, then one token per step until a stop.
public final class Generator {
    private let decoder: TextDecoder
    private let eosTokenIds: Set<Int>
    private let maxContext: Int

    public init(decoder: TextDecoder, eosTokenIds: Set<Int>, maxContext: Int) {
        self.decoder = decoder
        self.eosTokenIds = eosTokenIds
        self.maxContext = maxContext
    }

    /// Generates from `prompt` with the vision encoder's outputs `image` (`image_embeds`, and `deepstack_embeds`
    /// for Qwen3-VL; nil for a text-only prompt). With `forced` tokens (teacher forcing) each step feeds the forced
    /// token instead of the chosen one, never stops early, and the result carries every step's logits. `onToken`
    /// sees each chosen token, stop tokens included; what it throws (e.g. `Cancelled`) ends the loop. `imageEncodeS`
    /// is the caller's measured vision time, recorded as `image_encode_s`.
    public func generate(prompt: Prompt, image: [String: Tensor]?, config: GenerationConfig, forced: [Int]? = nil,
                         onToken: ((Int) throws -> Void)? = nil, imageEncodeS: Double = 0) throws -> GenerationResult {
        let promptTokens = prompt.ids.count
        if promptTokens + config.maxNewTokens > maxContext {
            throw InputError("prompt of \(promptTokens) tokens + \(config.maxNewTokens) new tokens exceeds the " +
                             "model's context of \(maxContext)", "shorten the prompt or lower max new tokens")
        }
        var timings: [String: Double] = ["image_encode_s": imageEncodeS]
        let stops = eosTokenIds.union(config.stopTokenIds)
        let sampler = Sampler(config)
        try decoder.reset(capacity: promptTokens + config.maxNewTokens)
        var vision = image
        var stepIds = prompt.ids
        var stepPositions = prompt.positions
        var tokens: [Int] = []
        var allLogits: [[Float]] = []
        var reason = "max_new_tokens"
        var started = Generator.now()
        while tokens.count < config.maxNewTokens {
            let logits = try decoder.step(ids: stepIds, positions: stepPositions, imageEmbeds: vision)
            if tokens.isEmpty {
                timings["prefill_s"] = Generator.seconds(since: started)
                // decode steps carry no image tokens; the graph needs one row
                if let rows = vision { vision = try Generator.firstRows(rows) }
                started = Generator.now()
            }
            let token = try sampler.choose(logits)
            tokens.append(token)
            try onToken?(token)
            var next = token
            if let forced {
                allLogits.append(logits)
                if tokens.count >= forced.count {
                    reason = "forced"
                    break
                }
                next = forced[tokens.count - 1]
            } else if stops.contains(token) && !config.ignoreEos {
                reason = eosTokenIds.contains(token) ? "eos" : "stop_token"
                break
            }
            stepIds = [Int64(next)]
            stepPositions = prompt.stepPosition(decoder.filled)
        }
        timings["decode_s"] = Generator.seconds(since: started)
        timings["decode_tokens"] = Double(max(tokens.count - 1, 0))
        return GenerationResult(tokenIds: tokens, promptTokens: promptTokens, stopReason: reason, timings: timings,
                                logits: forced != nil ? allLogits : nil)
    }

    private static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    private static func seconds(since: UInt64) -> Double { Double(now() &- since) / 1e9 }

    private static let imageInputs: Set<String> = ["image_embeds", "deepstack_embeds"]

    /// The one (unused) image row a decode step feeds: `image_embeds[:1]`, `deepstack_embeds[:, :1]`.
    public static func firstRows(_ image: [String: Tensor]) throws -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for (name, tensor) in image where imageInputs.contains(name) { out[name] = try firstRow(name, tensor) }
        return out
    }

    private static func firstRow(_ name: String, _ tensor: Tensor) throws -> Tensor {
        let shape = tensor.shape
        let axis = name == "deepstack_embeds" ? 1 : 0
        if shape.count <= axis || shape[axis] < 1 {
            throw InputError("image input '\(name)' has shape \(shape), with no image row",
                             "pass the vision encoder's outputs unchanged")
        }
        let data = try tensor.floats()
        let outer = shape.prefix(axis).reduce(1, *)
        let inner = shape.dropFirst(axis + 1).reduce(1, *)
        let rows = shape[axis]
        if data.count != outer * rows * inner {
            throw InputError("image input '\(name)' has \(data.count) values for shape \(shape)",
                             "pass the vision encoder's outputs unchanged")
        }
        var rowData: [Float] = []
        rowData.reserveCapacity(outer * inner)
        for o in 0..<outer { rowData.append(contentsOf: data[(o * rows * inner)..<(o * rows * inner + inner)]) }
        var rowShape = shape
        rowShape[axis] = 1
        return .f32(shape: rowShape, data: rowData)
    }
}

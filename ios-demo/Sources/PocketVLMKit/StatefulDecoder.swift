import CoreML
import Foundation

private let imageEmbedsName = "image_embeds"
private let deepstackName = "deepstack_embeds"

/// The text decoder of a `--target coreml` bundle (Kotlin's `StaticKvDecoder`, the Python runtime's
/// `CoreMLSession._run_decoder` over `static_decode.chunks`): static `prefill_N` and `decode` functions of one
/// multifunction package over a fixed `kv_capacity`, whose KV cache is the package's state: ONE `MLState` (made by
/// the `decode` function's model; both functions declare the same states) that both functions' predictions update
/// in place, so no past / present tensors pass through the kit. `reset` makes a new state.
///
/// A call of n tokens runs as chunks of `prefill_length` (`decode` for a single token), padded on the left with
/// masked tokens (pad id 0, or 1 where the image token is 0) so the last position, whose logits come back, is real;
/// positions are padded with the chunk's first real one; each chunk gets the image rows it needs (`image_embeds`
/// rows, and `deepstack_embeds` [levels, rows, hidden] for Qwen3-VL), counted by image tokens, the last row repeated
/// past the end. `attention_mask` [1, capacity + size] is 1 for the filled slots and the chunk's real tokens;
/// `cache_position` [size] is -1 for the pads, then the slots the real tokens fill.
///
/// As in the Python runtime, a sequence may be reset for more than `kv_capacity` tokens: the step that would
/// overflow the cache is refused (an `InputError`), so a reply that stops early still runs.
public final class StatefulDecoder: TextDecoder {
    /// The single-token function.
    public static let decode = "decode"

    public let prefillLength: Int
    public let kvCapacity: Int
    private let entries: [String: CoreMLSession]
    private let spec: ComponentSpec
    private let decoder: DecoderSpec
    private let imageToken: Int64
    private let prefill: String
    private let signatures: [String: [String: [Int]]]
    private var state: MLState?
    private var mask: [Int64]
    private var capacity = 0

    public var backend: String { entries[StatefulDecoder.decode]?.backend ?? "Core ML" }

    public private(set) var filled = 0

    /// Over the `prefill_N` and `decode` sessions of the `text_decoder` package (`entries`, by function name), whose
    /// manifest signatures are checked against the decoder spec here: a mismatch is a `BundleError` at load.
    init(entries: [String: CoreMLSession], spec: ComponentSpec, decoder: DecoderSpec) throws {
        let fix = "re-export the bundle with --target coreml"
        guard let prefillLength = spec.staticSpec.prefillLength, let kvCapacity = spec.staticSpec.kvCapacity else {
            throw BundleError("the \(spec.name) has no static.prefill_length / static.kv_capacity", fix)
        }
        guard let imageToken = spec.staticSpec.imageTokenId else {
            throw BundleError("the \(spec.name) has no static.image_token_id", fix)
        }
        if prefillLength < 2 || kvCapacity < prefillLength {
            throw BundleError("the \(spec.name) has prefill_length \(prefillLength) and kv_capacity \(kvCapacity)",
                              "re-export the bundle (prefill_length 2 or more, kv_capacity at least that)")
        }
        self.entries = entries
        self.spec = spec
        self.decoder = decoder
        self.prefillLength = prefillLength
        self.kvCapacity = kvCapacity
        self.imageToken = Int64(imageToken)
        prefill = "prefill_\(prefillLength)"
        signatures = spec.signatures
        mask = [Int64](repeating: 0, count: kvCapacity)
        for (entry, size) in [(prefill, prefillLength), (StatefulDecoder.decode, 1)] {
            try checkSignature(entry, size)
        }
    }

    private func checkSignature(_ entry: String, _ size: Int) throws {
        if entries[entry] == nil {
            throw BundleError("the \(spec.name) has no '\(entry)' function (it has \(entries.keys.sorted()))",
                              "re-export the bundle with --target coreml")
        }
        guard let signature = signatures[entry] else {
            throw BundleError("manifest field 'components.\(spec.name).static.signatures' has no '\(entry)'",
                              "re-export the bundle")
        }
        let expected: [String: [Int]] = [
            "input_ids": [1, size],
            "attention_mask": [1, kvCapacity + size],
            "position_ids": decoder.positionIds == "mrope" ? [3, 1, size] : [1, size],
            "cache_position": [size],
        ]
        for name in ["input_ids", "attention_mask", "position_ids", "cache_position"] {
            let want = expected[name] ?? []
            let got = signature[name]
            if got != want {
                let found = got.map { "\($0)" } ?? "missing"
                throw BundleError("signature '\(entry)' of the \(spec.name) has '\(name)' \(found), expected \(want)",
                                  "re-export the bundle")
            }
        }
        for (name, shape) in signature {
            let known = expected[name] != nil ||
                (name == imageEmbedsName && shape.count == 2 && shape[0] == size) ||
                (name == deepstackName && shape.count == 3 && shape[1] == size)
            if !known {
                throw BundleError("signature '\(entry)' of the \(spec.name) has an input '\(name)' \(shape) this app " +
                                  "does not feed", "re-export the bundle with the pocketvlm version the app was built with")
            }
        }
    }

    public func reset(capacity: Int) throws {
        if capacity < 1 { throw InputError("a KV cache of \(capacity) tokens", "pass a capacity of 1 or more") }
        guard let decodeSession = entries[StatefulDecoder.decode] else {
            throw InferenceError("the \(spec.name) has no decode function", "re-export the bundle")
        }
        state = try decodeSession.makeState()  // a sequence never sees the last one's cache
        for i in mask.indices { mask[i] = 0 }
        filled = 0
        self.capacity = capacity
    }

    public func step(ids: [Int64], positions: Tensor, imageEmbeds: [String: Tensor]?) throws -> [Float] {
        if capacity == 0 {
            throw InputError("the decoder was not reset for a new sequence", "call reset(capacity:) before the first step")
        }
        if ids.isEmpty { throw InputError("a decoder step with no tokens", "pass the prompt's ids, then one per step") }
        let n = ids.count
        guard case .i64(let positionShape, let positionData) = positions else {
            throw InputError("position ids are \(positions.dtype), expected int64", "build the prompt with PromptBuilder")
        }
        let expected = decoder.positionIds == "mrope" ? [3, 1, n] : [1, n]
        if positionShape != expected {
            throw InputError("position ids of shape \(positionShape) for \(n) tokens; this '\(decoder.positionIds)' " +
                             "decoder takes \(expected)", "build the prompt with PromptBuilder")
        }
        if filled + n > kvCapacity {
            throw InputError("\(filled) cached + \(n) new tokens exceed this Core ML bundle's KV capacity of " +
                             "\(kvCapacity)", "shorten the prompt or re-export with a larger kv_capacity")
        }
        if filled + n > capacity {
            throw InputError("KV cache full (\(capacity) tokens)", "lower max_new_tokens or shorten the prompt")
        }
        guard let state else { throw InputError("the decoder has no state", "call reset(capacity:) first") }
        var logits: [Float] = []
        var used = 0
        var start = 0
        while start < n {
            let real = min(prefillLength, n - start)
            let entry = real == 1 ? StatefulDecoder.decode : prefill
            let size = real == 1 ? 1 : prefillLength
            let feeds = try chunkFeeds(entry, ids, positionData, start, real, size, used, imageEmbeds)
            for i in start..<(start + real) where ids[i] == imageToken { used += 1 }
            guard let session = entries[entry] else {
                throw InferenceError("the \(spec.name) has no '\(entry)' function", "re-export the bundle")
            }
            let outputs = try session.run(feeds, state: state)
            logits = try lastLogits(outputs, "\(spec.name) (\(entry))")
            for slot in filled..<(filled + real) { mask[slot] = 1 }
            filled += real
            start += prefillLength
        }
        return logits
    }

    /// Lets go of the cache (the factory closes the models).
    func release() {
        state = nil
        capacity = 0
        filled = 0
    }

    /// One chunk's feeds: `real` tokens from `start`, left-padded to `size` with masked tokens.
    private func chunkFeeds(_ entry: String, _ ids: [Int64], _ positions: [Int64], _ start: Int, _ real: Int,
                            _ size: Int, _ used: Int, _ image: [String: Tensor]?) throws -> Feeds {
        let pad = size - real
        let padId: Int64 = imageToken != 0 ? 0 : 1
        let n = ids.count
        let axes = positions.count / n
        var chunkPositions = [Int64](repeating: 0, count: axes * size)
        for k in 0..<(axes * size) {
            let axis = k / size
            chunkPositions[k] = positions[axis * n + start + max(k % size - pad, 0)]
        }
        var chunkIds = [Int64](repeating: padId, count: size)
        for i in pad..<size { chunkIds[i] = ids[start + i - pad] }
        var chunkMask = [Int64](repeating: 0, count: kvCapacity + size)
        for i in 0..<kvCapacity { chunkMask[i] = mask[i] }
        for i in (kvCapacity + pad)..<(kvCapacity + size) { chunkMask[i] = 1 }
        var slots = [Int64](repeating: -1, count: size)
        for i in pad..<size { slots[i] = Int64(filled + i - pad) }
        guard let signature = signatures[entry] else {
            throw InferenceError("the \(spec.name) has no signature '\(entry)'", "re-export the bundle")
        }
        var feeds: Feeds = [:]
        for (name, shape) in signature {
            switch name {
            case "input_ids": feeds[name] = .i64(shape: [1, size], data: chunkIds)
            case "position_ids": feeds[name] = .i64(shape: shape, data: chunkPositions)
            case "attention_mask": feeds[name] = .i64(shape: [1, kvCapacity + size], data: chunkMask)
            case "cache_position": feeds[name] = .i64(shape: [size], data: slots)
            case imageEmbedsName, deepstackName:
                feeds[name] = try imageRows(entry, name, shape, image, used, size)
            default:
                throw InferenceError("signature '\(entry)' of the \(spec.name) has an input '\(name)' this app does " +
                                     "not feed", "re-export the bundle")
            }
        }
        return feeds
    }

    /// `size` rows from `start` along the row axis (the last row repeated past the end); zero rows without an image.
    private func imageRows(_ entry: String, _ name: String, _ shape: [Int], _ image: [String: Tensor]?, _ start: Int,
                           _ size: Int) throws -> Tensor {
        guard let image else { return Tensor.zeros(shape) }
        guard let rows = image[name] else {
            throw InputError("the image inputs have no '\(name)' (they have \(image.keys.sorted()))",
                             "pass the vision encoder's outputs unchanged")
        }
        guard case .f32(let rowShape, let rowData) = rows else {
            throw InputError("image input '\(name)' is \(rows.dtype), expected float32",
                             "pass the vision encoder's outputs unchanged")
        }
        let axis = name == deepstackName ? 1 : 0
        let fits = rowShape.count == shape.count && rowShape[axis] >= 1 &&
            rowShape.indices.allSatisfy { $0 == axis || rowShape[$0] == shape[$0] }
        if !fits {
            throw InputError("input '\(name)' has shape \(rowShape), but signature '\(entry)' of this Core ML bundle " +
                             "takes rows of \(shape)", "pass the vision encoder's outputs unchanged")
        }
        let count = rowShape[axis]
        let outer = shape[..<axis].reduce(1, *)
        let inner = shape[(axis + 1)...].reduce(1, *)
        var data = [Float](repeating: 0, count: outer * size * inner)
        rowData.withUnsafeBufferPointer { src in
            data.withUnsafeMutableBufferPointer { dst in
                for o in 0..<outer {
                    for r in 0..<size {
                        let source = min(start + r, count - 1)
                        let from = (o * count + source) * inner
                        let to = (o * size + r) * inner
                        for i in 0..<inner { dst[to + i] = src[from + i] }
                    }
                }
            }
        }
        return .f32(shape: shape, data: data)
    }

    /// The last position's logits, from `[1, vocab]` (or `[1, n, vocab]`).
    private func lastLogits(_ outputs: Feeds, _ what: String) throws -> [Float] {
        let vocab = decoder.vocabSize
        guard let logits = outputs["logits"] else {
            throw InferenceError("the \(what) returned no 'logits'", "re-export the bundle")
        }
        let data = try logits.floats()
        if logits.shape.last != vocab || data.count < vocab {
            throw InferenceError("the \(what) returned logits of shape \(logits.shape), expected [1, \(vocab)]",
                                 "re-export the bundle")
        }
        return Array(data[(data.count - vocab)...])
    }
}

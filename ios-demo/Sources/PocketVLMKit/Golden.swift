import Foundation

/// A bundle's golden record (`golden.json`, schema `runtime/schema/golden.schema.json`, written by the exporter from
/// the Python runtime's run of the bundle; Kotlin `Golden.kt`), read whole when the self-test starts: every field the
/// replay uses is read here and checked against the tensor it describes, so a record edited by hand is one
/// `BundleError` naming the field, never an index error in the middle of a stage. VLM records only.
public struct GoldenRecord {
    public static let goldenVersion = 1
    public static let vlmStages = ["preprocess", "vision_encoder", "prompt", "text_decoder", "generation"]

    public let version: Int
    public let task: String
    public let family: String
    public let target: String
    public let quantization: String
    public let recordedWith: String
    public let imageFile: String
    public let imageWidth: Int
    public let imageHeight: Int
    /// Stage names in the record's order (the schema fixes the first five).
    public let stageNames: [String]
    private let stageNodes: [JSONNode]

    // json: golden
    public init(_ root: JSONNode) throws {
        version = try root["golden_version"].int()
        task = try root["task"].string()
        family = try root["family"].string()
        target = try root["target"].string()
        quantization = try root["quantization"].string()
        recordedWith = try root["recorded_with"].string()
        imageFile = try root["image"]["file"].string()
        imageWidth = try root["image"]["width"].int()
        imageHeight = try root["image"]["height"].int()
        stageNodes = try root["stages"].list()
        stageNames = try root["stages"].list().map { try $0["name"].string() }
        let fix = "re-export the bundle; never edit golden.json by hand"
        if version != GoldenRecord.goldenVersion {
            throw BundleError("golden record version \(version) is not \(GoldenRecord.goldenVersion)",
                "use the app version that matches the pocketvlm version that exported the bundle")
        }
        if task != Manifest.vlmTask {
            throw BundleError("golden record task '\(task)' is not one this app replays", "re-export the bundle")
        }
        if Array(stageNames.prefix(GoldenRecord.vlmStages.count)) != GoldenRecord.vlmStages {
            throw BundleError("golden record stages are \(stageNames), expected \(GoldenRecord.vlmStages) first for "
                + "'\(task)'", fix)
        }
        if imageWidth < 1 || imageHeight < 1 {
            throw BundleError("golden image size \(imageWidth)x\(imageHeight)", "re-export the bundle")
        }
    }

    /// The bundle's record (its sha256 checked by `VLMBundle.read`); one that does not fit the manifest is refused.
    public static func read(_ bundle: VLMBundle) throws -> GoldenRecord {
        guard let ref = bundle.manifest.golden else {
            throw BundleError("\(bundle.label) carries no golden record (its manifest has no 'golden' entry)",
                "re-export the bundle with a pocketvlm version that writes golden.json")
        }
        let record = try GoldenRecord(JSONNode.parse(try bundle.read(ref.file), what: "golden record"))
        let m = bundle.manifest
        if record.task != m.task || record.family != m.family || record.target != m.target {
            throw BundleError("golden record is of a \(record.family) \(record.target) \(record.task) bundle, the "
                + "manifest says \(m.family) \(m.target) \(m.task)", "re-export the bundle")
        }
        if record.imageFile != ref.image {
            throw BundleError("golden record names image '\(record.imageFile)', the manifest '\(ref.image)'",
                "re-export the bundle")
        }
        return record
    }

    private func stage(_ name: String) throws -> Int {
        guard let index = stageNames.firstIndex(of: name) else {
            throw BundleError("golden record has no '\(name)' stage", "re-export the bundle")
        }
        return index
    }

    /// `preprocess` or `vision_encoder`: tensors compared within the tolerance.
    public func tensors(_ name: String) throws -> TensorStage { try TensorStage(stageNodes[stage(name)]) }
    public func prompt() throws -> PromptStage { try PromptStage(stageNodes[stage("prompt")]) }
    public func decoder() throws -> DecoderStage { try DecoderStage(stageNodes[stage("text_decoder")]) }
    public func generation() throws -> GenerationStage { try GenerationStage(stageNodes[stage("generation")]) }
}

/// The tolerances of a stage (`tolerance`); which ones a stage needs is checked where it is used.
public struct Tolerance {
    public let maxAbs: Double?
    public let maxAbsRelative: Double?
    public let logitMaxAbsRelative: Double?
    public let nearTieMarginRelative: Double?
    private let path: String

    // json: golden:stages[].tolerance
    public init(_ node: JSONNode) throws {
        maxAbs = try node.opt("max_abs")?.double()
        maxAbsRelative = try node.opt("max_abs_relative")?.double()
        logitMaxAbsRelative = try node.opt("logit_max_abs_relative")?.double()
        nearTieMarginRelative = try node.opt("near_tie_margin_relative")?.double()
        path = node.path
        for v in [maxAbs, maxAbsRelative, logitMaxAbsRelative, nearTieMarginRelative].compactMap({ $0 })
        where v.isNaN || v < 0 {
            throw BundleError("golden record field '\(path)' holds a negative tolerance \(v)",
                "re-export the bundle; never edit golden.json by hand")
        }
    }

    /// `value`, or a `BundleError` naming the missing `key`.
    public func need(_ value: Double?, _ key: String) throws -> Double {
        guard let value else {
            throw BundleError("golden record field '\(path).\(key)' is missing", "re-export the bundle")
        }
        return value
    }
}

/// A tensor as the record summarises it: an int tensor stored whole (`values`), or a float tensor's `mean`, `std`
/// and values at flat indices (`sampleIndex` / `sampleValue`). Checked against its shape when read.
public struct TensorSummary {
    public let shape: [Int]
    public let dtype: String
    public let values: [Int64]?
    public let mean: Double?
    public let std: Double?
    public let sampleIndex: [Int]
    public let sampleValue: [Double]

    /// Elements of a tensor of `shape`.
    public var size: Int { shape.reduce(1, *) }

    /// A summary read elsewhere (the prompt stage's `position_ids`), checked as the reader checks one.
    public init(shape: [Int], dtype: String, values: [Int64]?, mean: Double? = nil, std: Double? = nil,
                sampleIndex: [Int] = [], sampleValue: [Double] = [], path: String) throws {
        self.shape = shape
        self.dtype = dtype
        self.values = values
        self.mean = mean
        self.std = std
        self.sampleIndex = sampleIndex
        self.sampleValue = sampleValue
        try check(path: path, hasSamples: !sampleIndex.isEmpty || !sampleValue.isEmpty)
    }

    // json: golden:stages[].tensors.*
    public init(_ node: JSONNode) throws {
        shape = try node["shape"].ints()
        dtype = try node["dtype"].string()
        values = try node.opt("values")?.int64s()
        mean = try node.opt("mean")?.double()
        std = try node.opt("std")?.double()
        var index: [Int] = []
        var value: [Double] = []
        var hasSamples = false
        if let samples = node.opt("samples") {
            index = try samples["index"].ints()
            value = try samples["value"].doubles()
            hasSamples = true
        }
        sampleIndex = index
        sampleValue = value
        try check(path: node.path, hasSamples: hasSamples)
    }

    private func check(path: String, hasSamples: Bool) throws {
        let fix = "re-export the bundle; never edit golden.json by hand"
        if shape.contains(where: { $0 < 0 }) {
            throw BundleError("golden record field '\(path).shape' has a negative dim", fix)
        }
        if let values {
            if values.count != size {
                throw BundleError("golden record field '\(path).values' holds \(values.count) values for a tensor of "
                    + "\(size)", fix)
            }
        } else {
            if mean == nil || !hasSamples {
                throw BundleError("golden record field '\(path)' has neither values nor mean and samples", fix)
            }
            if sampleIndex.count != sampleValue.count || sampleIndex.isEmpty
                || sampleIndex.contains(where: { $0 < 0 || $0 >= size }) {
                throw BundleError("golden record field '\(path).samples' does not fit a tensor of \(size) elements "
                    + "(\(sampleIndex.count) indices, \(sampleValue.count) values)", fix)
            }
        }
    }
}

/// preprocess, vision_encoder: tensors compared within the tolerance.
public struct TensorStage {
    public let name: String
    /// Tensor names in the record's order.
    public let tensorNames: [String]
    public let tensors: [String: TensorSummary]
    public let tolerance: Tolerance

    // json: golden:stages[] where name=preprocess|vision_encoder
    public init(_ node: JSONNode) throws {
        name = try node["name"].string()
        var names: [String] = []
        var byName: [String: TensorSummary] = [:]
        for (tensor, summary) in try node["tensors"].obj() {
            names.append(tensor)
            byName[tensor] = try TensorSummary(summary)
        }
        tensorNames = names
        tensors = byName
        tolerance = try Tolerance(node["tolerance"])
        if names.isEmpty {
            throw BundleError("golden record stage '\(name)' has no tensors", "re-export the bundle")
        }
        if tolerance.maxAbs == nil && tolerance.maxAbsRelative == nil {
            throw BundleError("golden record stage '\(name)' has no max_abs or max_abs_relative tolerance",
                "re-export the bundle")
        }
    }
}

/// The prompt the record ran: its text, the chat-templated text, ids, positions (`[1, n]` or `[3, 1, n]`, whole) and
/// the M-RoPE delta.
public struct PromptStage {
    public let prompt: String
    public let text: String
    public let inputIds: [Int64]
    public let positionIds: TensorSummary
    public let ropeDelta: Int64

    // json: golden:stages[] where name=prompt
    public init(_ node: JSONNode) throws {
        prompt = try node["prompt"].string()
        text = try node["text"].string()
        inputIds = try node["input_ids"].int64s()
        let positions = node["position_ids"]
        positionIds = try TensorSummary(shape: try positions["shape"].ints(), dtype: try positions["dtype"].string(),
            values: try positions["values"].int64s(), path: positions.path)
        ropeDelta = try node["rope_delta"].int64()
        let n = inputIds.count
        if positionIds.shape != [1, n] && positionIds.shape != [3, 1, n] {
            throw BundleError("golden record prompt position_ids \(positionIds.shape) do not fit \(n) input ids "
                + "(expected [1, \(n)] or [3, 1, \(n)], stored whole)", "re-export the bundle")
        }
    }

    /// The recorded positions as the decoder takes them (int64, `[1, n]` or `[3, 1, n]`): with `inputIds` and
    /// `ropeDelta`, the recorded prompt when the kit's own prompt stage could not run (Kotlin `asPrompt`).
    public var positions: Tensor { .i64(shape: positionIds.shape, data: positionIds.values ?? []) }

    /// The recorded prompt as the generation loop takes it (when the kit's own prompt stage could not run).
    public func asPrompt() throws -> Prompt { try Prompt(ids: inputIds, positions: positions, delta: ropeDelta) }
}

/// One teacher-forced step: the token fed next and the recorded top-k (id, logit), largest first.
public struct DecoderStep {
    public let tokenId: Int
    public let topIds: [Int]
    public let topLogits: [Double]

    public init(tokenId: Int, topIds: [Int], topLogits: [Double]) {
        self.tokenId = tokenId
        self.topIds = topIds
        self.topLogits = topLogits
    }

    // json: golden:stages[].steps[]
    public init(_ node: JSONNode) throws {
        tokenId = try node["token_id"].int()
        let top = try node["top_k"].list()
        if try top.count < 2 || top.contains(where: { try $0.list().count != 2 }) {
            throw BundleError("golden record field '\(node.path).top_k' is not a list of (id, logit) pairs",
                "re-export the bundle")
        }
        topIds = try top.map { try $0[0].int() }
        topLogits = try top.map { try $0[1].double() }
    }
}

/// The teacher-forced decoder stage: steps, the logit tolerance and the near-tie margin.
public struct DecoderStage {
    public let steps: [DecoderStep]
    public let tolerance: Tolerance
    public let logitLimit: Double
    public let nearTie: Double

    // json: golden:stages[] where name=text_decoder
    public init(_ node: JSONNode) throws {
        steps = try node["steps"].list().map { try DecoderStep($0) }
        tolerance = try Tolerance(node["tolerance"])
        logitLimit = try tolerance.need(tolerance.logitMaxAbsRelative, "logit_max_abs_relative")
        nearTie = try tolerance.need(tolerance.nearTieMarginRelative, "near_tie_margin_relative")
        if steps.isEmpty {
            throw BundleError("golden record text_decoder stage has no steps", "re-export the bundle")
        }
    }

    /// Checks every recorded id against the decoder's vocabulary (a hand-edited id outside it is the record's fault).
    public func checkVocab(_ vocab: Int) throws {
        for (i, s) in steps.enumerated() where !(0..<vocab).contains(s.tokenId)
            || s.topIds.contains(where: { !(0..<vocab).contains($0) }) {
            throw BundleError("golden record step \(i) names token ids outside the vocabulary of \(vocab)",
                "re-export the bundle; never edit golden.json by hand")
        }
    }

    /// Steps whose recorded top-1 minus top-2 margin is at most near_tie_margin_relative x the largest |logit|.
    public func nearTies() -> Set<Int> {
        var ties: Set<Int> = []
        for (i, step) in steps.enumerated() {
            let sorted = step.topLogits.sorted(by: >)
            if sorted[0] - sorted[1] <= nearTie * scale(step) { ties.insert(i) }
        }
        return ties
    }

    /// The largest |recorded logit| of `step` (at least 1e-12).
    public func scale(_ step: DecoderStep) -> Double {
        max(step.topLogits.map { abs($0) }.max() ?? 0, 1e-12)
    }
}

/// Greedy generation as the record ran it.
public struct GenerationStage {
    public static let stopReasons: Set<String> = ["eos", "stop_token", "max_new_tokens"]

    public let maxNewTokens: Int
    public let tokenIds: [Int]
    public let text: String
    public let stopReason: String

    // json: golden:stages[] where name=generation
    public init(_ node: JSONNode) throws {
        maxNewTokens = try node["max_new_tokens"].int()
        tokenIds = try node["token_ids"].ints()
        text = try node["text"].string()
        stopReason = try node["stop_reason"].string()
        if maxNewTokens < 1 || tokenIds.count > maxNewTokens || !GenerationStage.stopReasons.contains(stopReason) {
            throw BundleError("golden record generation stage is inconsistent (max_new_tokens \(maxNewTokens), "
                + "\(tokenIds.count) tokens, stop '\(stopReason)')", "re-export the bundle; never edit golden.json by hand")
        }
    }
}

/// Whether a stage ran here, and if it did, its verdict.
public enum StageStatus: String {
    case passed
    case failed
    case notRun = "not_run"

    /// The JSON word: "passed", "failed", "not_run".
    public var json: String { rawValue }
}

/// One stage of the replay: `status` (a stage that did not run is never passed), the error measured and its limit
/// (nil when not run or not a number), one line of `detail`, and the `figures` behind it (written to the report).
public struct StageResult {
    public let name: String
    public let status: StageStatus
    public let error: Double?
    public let limit: Double?
    public let detail: String
    /// Extra report fields in order (values: nil, Bool, Int, Int64, Double, String, [Any?], [(String, Any?)]).
    public let figures: [(String, Any?)]

    public init(_ name: String, _ status: StageStatus, error: Double?, limit: Double?, detail: String,
                figures: [(String, Any?)] = []) {
        self.name = name
        self.status = status
        self.error = error
        self.limit = limit
        self.detail = detail
        self.figures = figures
    }

    public var ran: Bool { status != .notRun }

    /// "PASSED preprocess: ...", "NOT RUN text_decoder: ...".
    public func line() -> String {
        "\(status.json.uppercased().replacingOccurrences(of: "_", with: " ")) \(name): \(detail)"
    }

    public func toJson() -> [(String, Any?)] {
        var out: [(String, Any?)] = [("name", name), ("status", status.json), ("ran", ran), ("error", error),
                                     ("limit", limit), ("detail", detail)]
        out += figures
        return out
    }

    /// This result with `extra` figures appended (and `detail` replaced when given), as the replay adds context.
    public func adding(_ extra: [(String, Any?)], status: StageStatus? = nil, detail: String? = nil) -> StageResult {
        StageResult(name, status ?? self.status, error: error, limit: limit, detail: detail ?? self.detail,
            figures: figures + extra)
    }

    public static func notRun(_ name: String, _ why: String) -> StageResult {
        StageResult(name, .notRun, error: nil, limit: nil, detail: why)
    }

    public static func of(_ name: String, pass: Bool, error: Double?, limit: Double?, detail: String,
                          figures: [(String, Any?)] = []) -> StageResult {
        StageResult(name, pass ? .passed : .failed, error: error, limit: limit, detail: detail, figures: figures)
    }
}

/// The self-test's verdict: `passed` when at least one stage ran and every stage that ran passed. `mode` says where it
/// ran ("device": every stage with the bundle's models; "no model": the stages that need none).
public struct GoldenReport {
    public let record: GoldenRecord
    public let mode: String
    public let stages: [StageResult]

    public init(record: GoldenRecord, mode: String, stages: [StageResult]) {
        self.record = record
        self.mode = mode
        self.stages = stages
    }

    public var ran: [String] { stages.filter { $0.ran }.map { $0.name } }
    public var notRun: [String] { stages.filter { !$0.ran }.map { $0.name } }
    public var failedStage: String? { stages.first { $0.status == .failed }?.name }
    public var passed: Bool { !ran.isEmpty && failedStage == nil }

    public func toJson() -> [(String, Any?)] {
        let golden: [(String, Any?)] = [("task", record.task), ("family", record.family), ("target", record.target),
                                        ("quantization", record.quantization), ("recorded_with", record.recordedWith)]
        return [("pass", passed), ("mode", mode), ("failed_stage", failedStage), ("ran", ran.map { $0 as Any? }),
                ("not_run", notRun.map { $0 as Any? }), ("stages", stages.map { $0.toJson() as Any? }),
                ("golden", golden)]
    }
}

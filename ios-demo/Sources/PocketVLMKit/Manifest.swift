import Foundation

/// A bundle's `manifest.json`, read once at load (Kotlin `Manifest.kt`): every field the kit uses is read here, so a
/// missing or wrong field is one `BundleError` naming it before anything runs. The schema is
/// `runtime/schema/manifest.schema.json`; the iOS app reads the subset a Core ML VLM bundle needs and refuses the rest:
/// the target must be `coreml` and the task `image_text_to_text`.
public struct Manifest {
    public static let supportedSchema = 1
    public static let vlmTask = "image_text_to_text"
    public static let coremlTarget = "coreml"

    public let schemaVersion: Int
    public let family: String
    public let target: String
    public let task: String
    /// Component names in the manifest's order (the result file lists them in this order).
    public let componentNames: [String]
    public let components: [String: ComponentSpec]
    public let files: [FileEntry]
    public let tokenizer: TokenizerSpec
    /// `preprocessing.image`, read by `Preprocess.swift` (its readers are annotated per `kind`).
    public let image: JSONNode
    /// `special_tokens`, read where a token id is needed.
    public let special: JSONNode
    public let decoder: DecoderSpec
    public let eosTokenIds: Set<Int>
    public let maxContext: Int
    public let chatTemplate: String
    /// The phone's prompt block (`app`); nil for a bundle exported without one (then `requireApp()` refuses it).
    public let app: AppSpec?
    public let golden: GoldenRef?
    /// The text decoder's spec (checked at init: present, stateful, with `prefill_N` and `decode`).
    public let textDecoder: ComponentSpec

    // json: manifest
    public init(_ root: JSONNode) throws {
        schemaVersion = try root["schema_version"].int()
        family = try root["family"].string()
        target = try root["target"].string()
        task = try root["task"].string()
        if schemaVersion > Manifest.supportedSchema {
            throw BundleError("the bundle's manifest is schema version \(schemaVersion); this app reads up to "
                + "\(Manifest.supportedSchema)",
                "update the app, or export the bundle with the pocketvlm version the app was built with")
        }
        if target != Manifest.coremlTarget {
            throw BundleError("this is a '\(target)' bundle; the iOS app runs coreml bundles only",
                "export with --target coreml")
        }
        if task != Manifest.vlmTask {
            throw BundleError("task '\(task)' is not one the iOS app runs (it captions and answers: "
                + "\(Manifest.vlmTask))", "export a captioning model (a VLM) with --target coreml")
        }
        var names: [String] = []
        var specs: [String: ComponentSpec] = [:]
        for (name, value) in try root["components"].obj() {
            names.append(name)
            specs[name] = try ComponentSpec(name: name, value)
        }
        componentNames = names
        components = specs
        textDecoder = try Manifest.spec(Manifest.decoderComponent, in: specs, names: names)
        files = try root["files"].list().map { try FileEntry($0) }
        tokenizer = try TokenizerSpec(root["tokenizer"])
        image = root["preprocessing"]["image"]
        special = root["special_tokens"]
        golden = try root.opt("golden").map { try GoldenRef($0) }
        decoder = try DecoderSpec(root["decoder"])
        let generation = root["generation"]
        eosTokenIds = Set(try generation["eos_token_ids"].ints())
        maxContext = try generation["max_context"].int()
        chatTemplate = try root["chat_template"].string()
        let positionKind = decoder.positionIds
        app = try root.opt("app").map { try AppSpec($0, positionKind: positionKind) }
        try checkComponents()
    }

    /// The component that runs the text side.
    public static let decoderComponent = "text_decoder"

    private static func spec(_ name: String, in specs: [String: ComponentSpec], names: [String]) throws -> ComponentSpec {
        guard let spec = specs[name] else {
            throw BundleError("the bundle has no '\(name)' component (it has \(names.joined(separator: ", ")))",
                "re-export the bundle")
        }
        return spec
    }

    /// Reads `manifest.json`'s bytes (a `BundleError` on bad JSON or a field this app cannot use).
    public static func parse(_ data: Data) throws -> Manifest {
        try Manifest(JSONNode.parse(data, what: "manifest"))
    }

    /// The component `name`, or a `BundleError` naming what the bundle has.
    public func component(_ name: String) throws -> ComponentSpec {
        try Manifest.spec(name, in: components, names: componentNames)
    }

    /// The vision side: one `vision_encoder`, or `vision_frontend` + `vision_transformer` (`--split-vision`).
    public var visionStages: [String] {
        componentNames.contains("vision_frontend") ? ["vision_frontend", "vision_transformer"] : ["vision_encoder"]
    }

    /// The component methods joined with '/' in component order, as the golden record's `quantization`.
    public var quantization: String {
        var seen: [String] = []
        for name in componentNames {
            if let method = components[name]?.quantization, !seen.contains(method) { seen.append(method) }
        }
        return seen.joined(separator: "/")
    }

    /// The `app` block; a bundle without one is a `BundleError` (the phone has no chat template engine).
    public func requireApp() throws -> AppSpec {
        guard let app else {
            throw BundleError("this bundle's manifest has no 'app' block, which the phone app needs (the prompt "
                + "resolved for a fixed image layout)",
                "export with --target coreml and a fixed image size (a pocketvlm version that writes the app block)")
        }
        return app
    }

    /// What the iOS kit runs: a vision side and a stateful multifunction `text_decoder` (`prefill_N` + `decode`).
    private func checkComponents() throws {
        for stage in visionStages { _ = try component(stage) }
        let decoder = textDecoder
        let fix = "export with --target coreml (iOS18: a stateful prefill_N / decode text decoder)"
        guard let capacity = decoder.staticSpec.kvCapacity, let prefill = decoder.staticSpec.prefillLength else {
            throw BundleError("component 'text_decoder' has no static.kv_capacity / static.prefill_length", fix)
        }
        if capacity < 2 || prefill < 2 || prefill > capacity {
            throw BundleError("component 'text_decoder' has prefill_length \(prefill) and kv_capacity \(capacity)", fix)
        }
        let functions = decoder.coreml.functions
        for wanted in ["prefill_\(prefill)", "decode"] where !functions.contains(wanted) {
            throw BundleError("the text_decoder package has no function '\(wanted)' (it has "
                + "\(functions.joined(separator: ", ")))", fix)
        }
        if decoder.coreml.states.isEmpty {
            throw BundleError("the text_decoder package declares no states (its KV cache must be an MLState)", fix)
        }
        if decoder.coreml.deploymentTarget != "iOS18" {
            throw BundleError("the text_decoder package targets \(decoder.coreml.deploymentTarget); its stateful "
                + "decoder needs iOS18", fix)
        }
    }
}

/// One file of the bundle as `files` lists it: its path inside the bundle, sha256 and size.
public struct FileEntry {
    public let path: String
    public let sha256: String
    public let bytes: Int64

    public init(path: String, sha256: String, bytes: Int64) {
        self.path = path
        self.sha256 = sha256
        self.bytes = bytes
    }

    // json: manifest:files[]
    public init(_ node: JSONNode) throws {
        path = try node["path"].string()
        sha256 = try node["sha256"].string()
        bytes = try node["bytes"].int64()
    }
}

/// Where the golden record and its image are (`golden`).
public struct GoldenRef {
    public let file: String
    public let image: String

    // json: manifest:golden
    public init(_ node: JSONNode) throws {
        file = try node["file"].string()
        image = try node["image"].string()
    }
}

/// A declared input or output of a component.
public struct TensorSpec {
    /// One dim: a number, or the name of a dynamic axis ("batch", "sequence", ...).
    public enum Dim: Equatable {
        case fixed(Int)
        case named(String)
    }

    public let name: String
    public let dtype: String
    public let shape: [Dim]

    public init(name: String, dtype: String, shape: [Dim]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
    }
}

/// A component (`components.<name>`): its package, declared tensors, quantization method and Core ML specifics.
public struct ComponentSpec {
    public let name: String
    /// The `.mlpackage` directory inside the bundle (its files are listed in `files` under `file/`).
    public let file: String
    /// The package digest (the exporter's sha256 over its files' relative paths and sha256s).
    public let sha256: String
    /// The sum of the package's listed files.
    public let bytes: Int64
    public let format: String
    public let inputs: [TensorSpec]
    public let outputs: [TensorSpec]
    /// `quantization.method`: fp16, int8, int4, palette4, ...
    public let quantization: String
    /// `static`: signatures (input shapes per function), dtypes, loop inputs, the decoder's capacity and chunk.
    public let staticSpec: StaticSpec
    /// `coreml`: deployment target, precision, the decoder's functions and states.
    public let coreml: CoreMLSpec

    // json: manifest:components.*
    public init(name: String, _ node: JSONNode) throws {
        self.name = name
        file = try node["file"].string()
        sha256 = try node["sha256"].string()
        bytes = try node["bytes"].int64()
        format = try node["format"].string()
        if format != "mlpackage" {
            throw BundleError("component '\(name)' is a '\(format)' model; the iOS app runs Core ML packages",
                "export with --target coreml")
        }
        inputs = try node["inputs"].list().map { item in
            TensorSpec(name: try item["name"].string(), dtype: try item["dtype"].string(),
                shape: try item["shape"].list().map { dim -> TensorSpec.Dim in
                    if let fixed = try? dim.int() { return .fixed(fixed) }
                    return .named(try dim.string())
                })
        }
        outputs = try node["outputs"].list().map { item in
            TensorSpec(name: try item["name"].string(), dtype: try item["dtype"].string(),
                shape: try item["shape"].list().map { dim -> TensorSpec.Dim in
                    if let fixed = try? dim.int() { return .fixed(fixed) }
                    return .named(try dim.string())
                })
        }
        quantization = try node["quantization"]["method"].string()
        staticSpec = try StaticSpec(node["static"])
        coreml = try CoreMLSpec(node["coreml"])
    }

    /// Static signatures' input shapes (`prefill_N` / `decode` for the decoder, one named after the component else).
    public var signatures: [String: [String: [Int]]] { staticSpec.signatures }

    /// The declared input `name`, or a `BundleError`.
    public func input(_ name: String) throws -> TensorSpec {
        guard let spec = inputs.first(where: { $0.name == name }) else {
            throw BundleError("component '\(self.name)' has no input '\(name)'", "re-export the bundle")
        }
        return spec
    }

    /// The declared output `name`, or a `BundleError`.
    public func output(_ name: String) throws -> TensorSpec {
        guard let spec = outputs.first(where: { $0.name == name }) else {
            throw BundleError("component '\(self.name)' has no output '\(name)'", "re-export the bundle")
        }
        return spec
    }

    /// The input shapes of signature `name` (a function of the decoder, or the component's own).
    public func signature(_ name: String) throws -> [String: [Int]] {
        guard let shapes = staticSpec.signatures[name] else {
            throw BundleError("component '\(self.name)' has no static signature '\(name)' (it has "
                + "\(staticSpec.signatureNames.joined(separator: ", ")))", "re-export the bundle")
        }
        return shapes
    }

    /// The decoder's prefill function, `prefill_<prefill_length>` (nil for a component without one).
    public var prefillFunction: String? { staticSpec.prefillLength.map { "prefill_\($0)" } }
}

/// A component's static shapes (`components.<name>.static`).
public struct StaticSpec {
    /// Signature names in the manifest's order.
    public let signatureNames: [String]
    /// signature -> input -> shape.
    public let signatures: [String: [String: [Int]]]
    /// input -> dtype the package takes ("int32" for ids / positions / masks, "float32" else).
    public let dtypes: [String: String]
    /// Inputs run one row at a time (Idefics3 tiles at batch 1): the package's batch is 1, the rows are looped.
    public let loopInputs: [String]
    /// The decoder's chunk (`prefill_N`'s N) and KV capacity; its image token id (nil when none).
    public let prefillLength: Int?
    public let kvCapacity: Int?
    public let imageTokenId: Int?

    // json: manifest:components.*.static
    public init(_ node: JSONNode) throws {
        var names: [String] = []
        var shapes: [String: [String: [Int]]] = [:]
        for (signature, inputs) in try node["signatures"].obj() {
            var byInput: [String: [Int]] = [:]
            for (input, shape) in try inputs.obj() { byInput[input] = try shape.ints() }
            names.append(signature)
            shapes[signature] = byInput
        }
        signatureNames = names
        signatures = shapes
        var types: [String: String] = [:]
        if let dtypes = node.opt("dtypes") {
            for (input, dtype) in try dtypes.obj() { types[input] = try dtype.string() }
        }
        dtypes = types
        loopInputs = try node.opt("loop_inputs")?.strings() ?? []
        prefillLength = try node.opt("prefill_length")?.int()
        kvCapacity = try node.opt("kv_capacity")?.int()
        imageTokenId = try node.opt("image_token_id")?.int()
    }
}

/// A component's Core ML specifics (`components.<name>.coreml`).
public struct CoreMLSpec {
    /// "iOS16" | "iOS17" | "iOS18" (the stateful decoder needs iOS18).
    public let deploymentTarget: String
    /// "float16" | "float32": the package's compute precision (also the KV cache's element size).
    public let computePrecision: String
    /// The multifunction decoder's functions, e.g. ["prefill_16", "decode"]; empty for a single-function package.
    public let functions: [String]
    /// The decoder's states, e.g. ["key_cache", "value_cache"]; empty for a stateless package.
    public let states: [String]

    // json: manifest:components.*.coreml
    public init(_ node: JSONNode) throws {
        deploymentTarget = try node["deployment_target"].string()
        computePrecision = try node["compute_precision"].string()
        functions = try node.opt("functions")?.strings() ?? []
        states = try node.opt("states")?.strings() ?? []
    }
}

/// The tokenizer file and its padding rules (`tokenizer`).
public struct TokenizerSpec {
    public let file: String
    public let maxLength: Int
    /// "longest" | "max_length"
    public let padding: String
    public let padTokenId: Int
    public let paddingSide: String
    public let truncation: Bool

    // json: manifest:tokenizer
    public init(_ node: JSONNode) throws {
        file = try node["file"].string()
        maxLength = try node["max_length"].int()
        padding = try node["padding"].string()
        padTokenId = try node["pad_token_id"].int()
        paddingSide = try node["padding_side"].string()
        truncation = try node["truncation"].bool()
    }
}

/// The text decoder's shape (`decoder`).
public struct DecoderSpec {
    /// "1d" | "mrope"
    public let positionIds: String
    public let numLayers: Int
    public let kvHeads: Int
    public let headDim: Int
    public let hiddenSize: Int
    public let vocabSize: Int

    // json: manifest:decoder
    public init(_ node: JSONNode) throws {
        positionIds = try node["position_ids"].string()
        numLayers = try node["num_layers"].int()
        kvHeads = try node["kv_heads"].int()
        headDim = try node["head_dim"].int()
        hiddenSize = try node["hidden_size"].int()
        vocabSize = try node["vocab_size"].int()
        if positionIds != "1d" && positionIds != "mrope" {
            throw BundleError("decoder position ids '\(positionIds)' are not supported by this app", "update the app")
        }
    }
}

/// What the exporter resolved for a phone (the manifest's `app` block, export/app_block.py): the prompt as token ids
/// around the user's text, the positions of those tokens, and the vision side's constant inputs for the fixed image
/// size. With it the app needs no chat template, no image-size logic and no M-RoPE code.
public struct AppSpec {
    public let imageHeight: Int
    public let imageWidth: Int
    public let imageTokens: Int
    public let withImage: PromptSlots
    public let textOnly: PromptSlots
    public let positions: AppPositions
    public let visionFeeds: VisionFeeds?

    // json: manifest:app
    public init(_ node: JSONNode, positionKind: String) throws {
        imageHeight = try node["image"]["height"].int()
        imageWidth = try node["image"]["width"].int()
        imageTokens = try node["image_tokens"].int()
        withImage = try PromptSlots(node["prompt"]["image"])
        textOnly = try PromptSlots(node["prompt"]["text_only"])
        positions = try AppPositions(node["positions"], kind: positionKind)
        visionFeeds = try node.opt("vision_feeds").map { try VisionFeeds($0) }
    }
}

/// The prompt around the user's text, cut at the nearest added (special) tokens on either side: token ids `before`
/// (image tokens expanded inside) and `after`, and the plain text between them and the user's (`textPrefix`,
/// `textSuffix`). The app tokenizes `textPrefix + text + textSuffix` in one piece.
public struct PromptSlots {
    public let before: [Int64]
    public let textPrefix: String
    public let textSuffix: String
    public let after: [Int64]

    // json: manifest:app.prompt.*
    public init(_ node: JSONNode) throws {
        before = try node["before"].int64s()
        textPrefix = try node["text_prefix"].string()
        textSuffix = try node["text_suffix"].string()
        after = try node["after"].int64s()
    }
}

/// Positions of a prompt with an image: the `before` tokens' positions as a table (`[3][n]` for M-RoPE, `[1][n]`
/// otherwise), then every later token at sequence index i has position `i + delta` on every axis (decode steps too).
public struct AppPositions {
    public let before: [[Int64]]
    public let delta: Int64
    public let kind: String

    // json: manifest:app.positions
    public init(_ node: JSONNode, kind: String) throws {
        before = try node["before"].list().map { try $0.int64s() }
        delta = try node["delta"].int64()
        self.kind = kind
        let axes = kind == "mrope" ? 3 : 1
        if before.count != axes {
            throw BundleError("manifest field 'app.positions.before' has \(before.count) rows, expected \(axes) for "
                + "'\(kind)' positions", "re-export the bundle")
        }
    }
}

/// Constant inputs of the vision side for the fixed image size, stored little-endian in one bundle file.
public struct VisionFeeds {
    /// One tensor of the file: which component input it feeds, its dtype and shape, where its bytes are.
    public struct Entry {
        public let component: String
        public let name: String
        public let dtype: String
        public let shape: [Int]
        public let offset: Int64
        public let bytes: Int64
    }

    public let file: String
    public let tensors: [Entry]

    // json: manifest:app.vision_feeds
    public init(_ node: JSONNode) throws {
        file = try node["file"].string()
        tensors = try node["tensors"].list().map { item in
            Entry(component: try item["component"].string(), name: try item["name"].string(),
                dtype: try item["dtype"].string(), shape: try item["shape"].ints(),
                offset: try item["offset"].int64(), bytes: try item["bytes"].int64())
        }
    }
}

import Accelerate
import CoreML
import Foundation

/// Where Core ML may run the bundle's models (`MLModelConfiguration.computeUnits`), as the user picks it. `rawValue`
/// is the stable name the result file and the settings record ("all", "cpuAndNeuralEngine", "cpuAndGPU", "cpuOnly").
public enum ComputeUnits: String, CaseIterable, Sendable {
    case all
    case cpuAndNeuralEngine
    case cpuAndGPU
    case cpuOnly

    /// The stable name (the raw value).
    public var name: String { rawValue }

    /// Core ML's value for this choice.
    public var mlComputeUnits: MLComputeUnits {
        switch self {
        case .all: return .all
        case .cpuAndNeuralEngine: return .cpuAndNeuralEngine
        case .cpuAndGPU: return .cpuAndGPU
        case .cpuOnly: return .cpuOnly
        }
    }
}

/// One Core ML model as a `ComponentSession` (the Python runtime's `CoreMLSession._call`): a component's package, or
/// one function of the stateful multifunction decoder. Each call checks every feed against the signature's static
/// shape from the manifest (`static.signatures`; another shape is an `InputError`, as `_call`), converts it to an
/// `MLMultiArray` of the manifest's `static.dtypes` type (int32, float32 or float16; float32 where none is given),
/// predicts (with the decoder's `MLState` when `StatefulDecoder` passes one), and reads every declared output back as
/// float32, through the array's strides (outputs need not be contiguous) and from float16 where Core ML gives that.
/// A Core ML failure is an `InferenceError`. One call at a time (a lock): a model and its state serve one request.
public final class CoreMLSession: ComponentSession {
    public let backend: String
    /// The package's name in the bundle (for messages).
    public let file: String
    /// The function of a multifunction package, or nil for a package's only one.
    public let function: String?
    /// Input name -> static shape.
    public let shapes: [String: [Int]]
    private let dtypes: [String: String]
    private let outputNames: [String]
    private var model: MLModel?
    private let lock = NSLock()

    init(model: MLModel, file: String, function: String?, shapes: [String: [Int]], dtypes: [String: String],
         outputNames: [String], backend: String) throws {
        self.model = model
        self.file = file
        self.function = function
        self.shapes = shapes
        self.dtypes = dtypes
        self.outputNames = outputNames
        self.backend = backend
        let what = function.map { "function '\($0)' of \(file)" } ?? file
        let description = model.modelDescription
        for name in shapes.keys.sorted() where description.inputDescriptionsByName[name] == nil {
            throw BundleError("\(what) has no input '\(name)', which the manifest's static signature lists (it has " +
                              "\(description.inputDescriptionsByName.keys.sorted()))",
                              "re-export the bundle with --target coreml; never edit a manifest by hand")
        }
        for name in outputNames where description.outputDescriptionsByName[name] == nil {
            throw BundleError("\(what) has no output '\(name)', which the manifest lists (it has " +
                              "\(description.outputDescriptionsByName.keys.sorted()))",
                              "re-export the bundle with --target coreml; never edit a manifest by hand")
        }
        for (name, dtype) in dtypes where shapes[name] != nil && !["int32", "float32", "float16"].contains(dtype) {
            throw BundleError("input '\(name)' of \(what) has dtype '\(dtype)' in the manifest; this app feeds " +
                              "int32, float32 and float16", "re-export the bundle with --target coreml")
        }
    }

    /// A new KV cache for the package's declared states (`MLModel.makeState()`).
    func makeState() throws -> MLState {
        lock.lock()
        defer { lock.unlock() }
        guard let model else { throw closedError() }
        return model.makeState()
    }

    public func run(_ feeds: Feeds) throws -> Feeds { try run(feeds, state: nil) }

    /// Runs with `state` (the stateful decoder's KV cache, updated in place), or without one.
    func run(_ feeds: Feeds, state: MLState?) throws -> Feeds {
        lock.lock()
        defer { lock.unlock() }
        guard let model else { throw closedError() }
        let what = function.map { "function '\($0)' of \(file)" } ?? file
        var inputs: [String: MLFeatureValue] = [:]
        for (name, shape) in shapes {
            guard let tensor = feeds[name] else {
                throw InputError("\(what) needs input '\(name)', which the kit did not pass (it passed " +
                                 "\(feeds.keys.sorted()))",
                                 "re-export the bundle with the pocketvlm version this app was built with")
            }
            if tensor.shape != shape {
                throw InputError("input '\(name)' has shape \(tensor.shape), but this Core ML component is fixed at " +
                                 "\(shape)", "re-export with --target coreml and shapes that cover it")
            }
            let array = try MultiArrays.make(tensor, name: name, dtype: dtypes[name] ?? "float32")
            inputs[name] = MLFeatureValue(multiArray: array)
        }
        let result: MLFeatureProvider
        do {
            let provider = try MLDictionaryFeatureProvider(dictionary: inputs)
            if let state {
                result = try model.prediction(from: provider, using: state)
            } else {
                result = try model.prediction(from: provider)
            }
        } catch {
            throw InferenceError("Core ML failed running \(what): \(error.localizedDescription)",
                                 "check the inputs (token ids within the vocabulary); if they are right, re-export " +
                                 "the bundle or try other compute units")
        }
        var outputs: Feeds = [:]
        for name in outputNames {
            guard let array = result.featureValue(for: name)?.multiArrayValue else {
                throw InferenceError("\(what) returned no multi-array '\(name)' (it returned " +
                                     "\(result.featureNames.sorted()))", "re-export the bundle")
            }
            outputs[name] = try MultiArrays.floats(array, name: name, what: what)
        }
        return outputs
    }

    /// Lets go of the model (its memory is freed once nothing else holds it); later calls are refused.
    func close() {
        lock.lock()
        model = nil
        lock.unlock()
    }

    private func closedError() -> InferenceError {
        InferenceError("\(file) was closed (the bundle was unloaded)", "load the bundle again")
    }
}

/// Every component of a `--target coreml` VLM bundle loaded once with Core ML (Kotlin's backends behind
/// `SessionFactory`; the Python runtime's `CoreMLSession`), and their only owner: the vision side's packages (wrapped
/// in a `RowLoop` when the manifest lists `static.loop_inputs`: Idefics3 runs one tile per call) and the text
/// decoder's `prefill_N` and `decode` functions, each its own `MLModel` (`MLModelConfiguration.functionName`), under
/// the `StatefulDecoder` that holds their one `MLState`.
///
/// Each `.mlpackage` is compiled on the phone once: the `.mlmodelc` is cached under Application Support in a folder
/// named after the package's sha256 in the manifest, so a re-exported bundle is compiled again and an unchanged one
/// is not (a cached copy that no longer loads is compiled again once). Compilation uses the synchronous
/// `MLModel.compileModel(at:)`: `SessionFactory` is synchronous like the Android engine's, and the app loads off the
/// main actor (its model queue), so blocking that thread for the compile is what is wanted; the async variant would
/// only move the wait into every caller. Call `bundle.verify()` first: this compiles and loads what is on disk.
///
/// A package that is missing, does not compile or does not load, or whose inputs and outputs are not the manifest's,
/// is a `BundleError` naming the file and the fix, at init, never mid-caption.
public final class CoreMLSessions: SessionFactory {
    public let bundle: VLMBundle
    public let computeUnits: ComputeUnits
    /// e.g. "Core ML (cpuAndNeuralEngine)": what every session reports as its backend.
    public let backend: String
    /// Per package: seconds spent compiling it now (0 when the cached `.mlmodelc` was used) and loading its models.
    public private(set) var compileSeconds: [String: Double] = [:]
    public private(set) var loadSeconds: [String: Double] = [:]
    private var opened: [CoreMLSession] = []
    private var sessions: [String: ComponentSession] = [:]
    private var decoder: StatefulDecoder?
    private var closed = false
    private let lock = NSLock()

    /// Compiles (or finds compiled) and loads every component of `bundle` for `computeUnits`. `cacheDirectory`
    /// defaults to Application Support/PocketVLM/compiled.
    public init(bundle: VLMBundle, computeUnits: ComputeUnits, cacheDirectory: URL? = nil) throws {
        self.bundle = bundle
        self.computeUnits = computeUnits
        backend = "Core ML (\(computeUnits.rawValue))"
        let cache = try cacheDirectory ?? CoreMLSessions.defaultCacheDirectory()
        let manifest = bundle.manifest
        do {
            for name in manifest.visionStages {
                let spec = try manifest.component(name)
                let signatureNames = spec.staticSpec.signatureNames
                guard signatureNames.count == 1, let shapes = spec.signatures[signatureNames[0]] else {
                    throw BundleError("\(spec.file): the manifest has \(signatureNames.count) static signatures for " +
                                      "this Core ML component, expected 1", "re-export the bundle with --target coreml")
                }
                let models = try load(spec, functions: [nil], cache: cache)
                let session = try CoreMLSession(model: models[0], file: spec.file, function: nil, shapes: shapes,
                                                dtypes: spec.staticSpec.dtypes, outputNames: spec.outputs.map { $0.name },
                                                backend: backend)
                opened.append(session)
                let loop = spec.staticSpec.loopInputs
                let wrapped: ComponentSession = loop.isEmpty ? session
                    : RowLoop(inner: session, loop: loop, shapes: shapes, outputs: spec.outputs.map { $0.name })
                sessions[name] = wrapped
            }
            let spec = manifest.textDecoder
            guard let prefill = spec.prefillFunction else {
                throw BundleError("component 'text_decoder' has no static.prefill_length",
                                  "re-export the bundle with --target coreml")
            }
            let functions = [prefill, StatefulDecoder.decode]
            let models = try load(spec, functions: functions, cache: cache)
            var entries: [String: CoreMLSession] = [:]
            for (function, model) in zip(functions, models) {
                let session = try CoreMLSession(model: model, file: spec.file, function: function,
                                                shapes: try spec.signature(function), dtypes: spec.staticSpec.dtypes,
                                                outputNames: spec.outputs.map { $0.name }, backend: backend)
                opened.append(session)
                entries[function] = session
            }
            try CoreMLSessions.checkStates(models[1], spec)
            decoder = try StatefulDecoder(entries: entries, spec: spec, decoder: manifest.decoder)
        } catch {
            for session in opened { session.close() }
            throw error
        }
    }

    public func session(_ component: String) throws -> ComponentSession {
        lock.lock()
        defer { lock.unlock() }
        if closed { throw BundleError("the bundle's models were closed", "load the bundle again") }
        if component == Manifest.decoderComponent {
            throw BundleError("the text_decoder runs through textDecoder(), not as a session", "call textDecoder()")
        }
        guard let session = sessions[component] else {
            throw BundleError("the bundle has no '\(component)' component (it has \(sessions.keys.sorted()))",
                              "re-export the bundle")
        }
        return session
    }

    public func textDecoder() throws -> TextDecoder {
        lock.lock()
        defer { lock.unlock() }
        guard !closed, let decoder else { throw BundleError("the bundle's models were closed", "load the bundle again") }
        return decoder
    }

    /// Releases every model (and the decoder's state); nothing lent may be used afterwards. Idempotent.
    public func close() {
        lock.lock()
        defer { lock.unlock() }
        if closed { return }
        closed = true
        decoder?.release()
        for session in opened { session.close() }
        opened = []
        sessions = [:]
        decoder = nil
    }

    // -- loading ------------------------------------------------------------------------------------------------

    /// Application Support/PocketVLM/compiled (created, and kept out of backups: it is rebuilt on demand).
    public static func defaultCacheDirectory() throws -> URL {
        do {
            let support = try FileManager.default.url(for: .applicationSupportDirectory, in: .userDomainMask,
                                                      appropriateFor: nil, create: true)
            var folder = support.appendingPathComponent("PocketVLM/compiled", isDirectory: true)
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            var values = URLResourceValues()
            values.isExcludedFromBackup = true
            try? folder.setResourceValues(values)
            return folder
        } catch {
            throw BundleError("cannot create the compiled-model cache in Application Support " +
                              "(\(error.localizedDescription))", "free some storage on the phone and try again")
        }
    }

    /// Deletes every compiled model in the cache (they are compiled again when a bundle is next loaded).
    public static func clearCache(_ directory: URL? = nil) throws {
        let folder = try directory ?? defaultCacheDirectory()
        for item in (try? FileManager.default.contentsOfDirectory(at: folder, includingPropertiesForKeys: nil)) ?? [] {
            try FileManager.default.removeItem(at: item)
        }
    }

    /// The models of `spec`'s package, one per function (nil: the package's only one), from the compiled cache.
    private func load(_ spec: ComponentSpec, functions: [String?], cache: URL) throws -> [MLModel] {
        let package = try bundle.url(spec.file)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: package.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw BundleError("bundle package \(spec.file) is missing from \(bundle.label)",
                              "copy the whole bundle directory again (every file its manifest lists)")
        }
        let key = spec.sha256.lowercased()
        guard key.count == 64, key.allSatisfy({ $0.isHexDigit }) else {
            throw BundleError("component '\(spec.name)' has sha256 '\(spec.sha256)', not 64 hex digits",
                              "re-export the bundle with --target coreml")
        }
        let folder = cache.appendingPathComponent(key, isDirectory: true)
        let compiled = folder.appendingPathComponent(
            (spec.file as NSString).deletingPathExtension + ".mlmodelc", isDirectory: true)
        var fresh = false
        if !FileManager.default.fileExists(atPath: compiled.path) {
            try compile(package, spec.file, into: compiled)
            fresh = true
        }
        let started = Date()
        do {
            let models = try functions.map { try model(compiled, spec.file, $0) }
            loadSeconds[spec.file] = Date().timeIntervalSince(started)
            return models
        } catch let first {
            if fresh { throw first }
            // a cached copy that no longer loads (an OS update, a half-written cache): compile once more
            try? FileManager.default.removeItem(at: compiled)
            try compile(package, spec.file, into: compiled)
            let again = Date()
            let models = try functions.map { try model(compiled, spec.file, $0) }
            loadSeconds[spec.file] = Date().timeIntervalSince(again)
            return models
        }
    }

    /// Compiles `package` and moves the `.mlmodelc` to `destination` (renamed into place: never half there).
    private func compile(_ package: URL, _ file: String, into destination: URL) throws {
        let started = Date()
        let temporary: URL
        do {
            temporary = try MLModel.compileModel(at: package)
        } catch {
            throw BundleError("Core ML cannot compile \(file): \(error.localizedDescription)",
                              "re-export the bundle with --target coreml (iOS18) and the pocketvlm version this " +
                              "app was built with; the app needs iOS 18 or later")
        }
        let manager = FileManager.default
        do {
            let folder = destination.deletingLastPathComponent()
            try manager.createDirectory(at: folder, withIntermediateDirectories: true)
            let staging = folder.appendingPathComponent(".\(UUID().uuidString).mlmodelc", isDirectory: true)
            try manager.moveItem(at: temporary, to: staging)
            do {
                try manager.moveItem(at: staging, to: destination)
            } catch {
                try? manager.removeItem(at: staging)
                // another load put it there first
                if !manager.fileExists(atPath: destination.path) { throw error }
            }
        } catch {
            try? manager.removeItem(at: temporary)
            throw BundleError("cannot store the compiled \(file) in the app's cache (\(error.localizedDescription))",
                              "free some storage on the phone and load the bundle again")
        }
        compileSeconds[file] = Date().timeIntervalSince(started)
    }

    /// One `MLModel` of a compiled package: its function `function` (iOS 18 multifunction), or its only one.
    private func model(_ compiled: URL, _ file: String, _ function: String?) throws -> MLModel {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits.mlComputeUnits
        if let function { configuration.functionName = function }
        if compileSeconds[file] == nil { compileSeconds[file] = 0 }
        do {
            return try MLModel(contentsOf: compiled, configuration: configuration)
        } catch {
            let what = function.map { "function '\($0)' of \(file)" } ?? file
            throw BundleError("Core ML cannot load \(what) on \(computeUnits.rawValue): \(error.localizedDescription)",
                              "re-export the bundle with --target coreml (iOS18), or try other compute units")
        }
    }

    /// The decoder's package declares the states the manifest names (its KV cache), or it is not the stateful one.
    private static func checkStates(_ model: MLModel, _ spec: ComponentSpec) throws {
        let declared = model.modelDescription.stateDescriptionsByName
        for state in spec.coreml.states where declared[state] == nil {
            throw BundleError("\(spec.file) declares no state '\(state)' (it declares \(declared.keys.sorted()))",
                              "re-export the bundle with --target coreml (iOS18: a stateful decoder)")
        }
    }
}

/// `Tensor` <-> `MLMultiArray`, through the arrays' strides.
enum MultiArrays {
    static func rowMajorStrides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var step = 1
        for axis in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[axis] = step
            step *= shape[axis]
        }
        return strides
    }

    /// `body(flat, offset)` for every element in row-major order: its flat index and its offset under `strides`.
    static func forEachOffset(_ shape: [Int], _ strides: [Int], _ body: (Int, Int) -> Void) {
        let count = shape.reduce(1, *)
        if count == 0 { return }
        var index = [Int](repeating: 0, count: shape.count)
        var offset = 0
        for flat in 0..<count {
            body(flat, offset)
            var axis = shape.count - 1
            while axis >= 0 {
                index[axis] += 1
                offset += strides[axis]
                if index[axis] < shape[axis] { break }
                offset -= strides[axis] * shape[axis]
                index[axis] = 0
                axis -= 1
            }
        }
    }

    /// Row-major `values` into `raw` laid out with `strides` (in elements of `T`).
    static func scatter<T>(_ values: [T], _ raw: UnsafeMutableRawBufferPointer, _ shape: [Int], _ strides: [Int]) {
        let size = MemoryLayout<T>.stride
        values.withUnsafeBytes { src in
            if strides == rowMajorStrides(shape) {
                raw.baseAddress?.copyMemory(from: src.baseAddress!, byteCount: min(src.count, raw.count))
                return
            }
            forEachOffset(shape, strides) { flat, offset in
                raw.storeBytes(of: values[flat], toByteOffset: offset * size, as: T.self)
            }
        }
    }

    /// `raw` laid out with `strides` (elements of `T`) as row-major values.
    static func gather<T>(_ raw: UnsafeRawBufferPointer, _ shape: [Int], _ strides: [Int], zero: T) -> [T] {
        let size = MemoryLayout<T>.stride
        var out = [T](repeating: zero, count: shape.reduce(1, *))
        if strides == rowMajorStrides(shape) {
            out.withUnsafeMutableBytes { dst in
                dst.baseAddress?.copyMemory(from: raw.baseAddress!, byteCount: min(dst.count, raw.count))
            }
            return out
        }
        forEachOffset(shape, strides) { flat, offset in
            out[flat] = raw.load(fromByteOffset: offset * size, as: T.self)
        }
        return out
    }

    /// An input array of `dtype` ("int32", "float32", "float16") holding `tensor`.
    static func make(_ tensor: Tensor, name: String, dtype: String) throws -> MLMultiArray {
        let shape = tensor.shape
        let type: MLMultiArrayDataType
        switch dtype {
        case "int32": type = .int32
        case "float16": type = .float16
        default: type = .float32
        }
        let array: MLMultiArray
        do {
            array = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: type)
        } catch {
            throw InferenceError("cannot make a \(dtype) \(shape) array for input '\(name)': " +
                                 "\(error.localizedDescription)", "close other apps and try again")
        }
        if tensor.count == 0 { return array }
        switch type {
        case .int32:
            guard case .i64(_, let data) = tensor else {
                throw InputError("input '\(name)' takes integers, the kit passed float32",
                                 "re-export the bundle with the pocketvlm version this app was built with")
            }
            var values = [Int32](repeating: 0, count: data.count)
            for (i, v) in data.enumerated() {
                guard let narrow = Int32(exactly: v) else {
                    throw InputError("input '\(name)' holds \(v), outside int32", "check the token ids and positions")
                }
                values[i] = narrow
            }
            array.withUnsafeMutableBytes { raw, strides in scatter(values, raw, shape, strides) }
        case .float16:
            let halves = halfs(floats(tensor))
            array.withUnsafeMutableBytes { raw, strides in scatter(halves, raw, shape, strides) }
        default:
            let values = floats(tensor)
            array.withUnsafeMutableBytes { raw, strides in scatter(values, raw, shape, strides) }
        }
        return array
    }

    /// An output array as a float32 tensor of its shape (float32, float16, float64 and int32 arrays).
    static func floats(_ array: MLMultiArray, name: String, what: String) throws -> Tensor {
        let shape = array.shape.map { $0.intValue }
        let strides = array.strides.map { $0.intValue }
        let count = shape.reduce(1, *)
        let size: Int
        switch array.dataType {
        case .float16: size = 2
        case .float32, .int32: size = 4
        case .double: size = 8
        default:
            throw InferenceError("\(what) returned '\(name)' of Core ML type \(array.dataType.rawValue), which this " +
                                 "app does not read", "re-export the bundle (float32 or float16 outputs)")
        }
        var last = 0
        for (axis, dim) in shape.enumerated() where dim > 0 { last += (dim - 1) * strides[axis] }
        if count == 0 { return .f32(shape: shape, data: []) }
        let fits = array.withUnsafeBytes { raw in strides.allSatisfy { $0 >= 0 } && (last + 1) * size <= raw.count }
        if !fits {
            throw InferenceError("\(what) returned '\(name)' \(shape) with strides \(strides) that do not fit its " +
                                 "buffer", "re-export the bundle")
        }
        let data: [Float] = array.withUnsafeBytes { raw in
            switch array.dataType {
            case .float16: return floatsOfHalfs(gather(raw, shape, strides, zero: UInt16(0)))
            case .int32: return gather(raw, shape, strides, zero: Int32(0)).map { Float($0) }
            case .double: return gather(raw, shape, strides, zero: 0.0).map { Float($0) }
            default: return gather(raw, shape, strides, zero: Float(0))
            }
        }
        return .f32(shape: shape, data: data)
    }

    private static func floats(_ tensor: Tensor) -> [Float] {
        switch tensor {
        case .f32(_, let data): return data
        case .i64(_, let data): return data.map { Float($0) }
        }
    }

    /// float32 -> IEEE float16 bit patterns (vImage: round to nearest even; `Float16` is not on every Mac).
    static func halfs(_ values: [Float]) -> [UInt16] {
        var out = [UInt16](repeating: 0, count: values.count)
        if values.isEmpty { return out }
        values.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                var s = vImage_Buffer(data: UnsafeMutableRawPointer(mutating: src.baseAddress!), height: 1,
                                      width: vImagePixelCount(src.count), rowBytes: src.count * 4)
                var d = vImage_Buffer(data: dst.baseAddress!, height: 1, width: vImagePixelCount(dst.count),
                                      rowBytes: dst.count * 2)
                _ = vImageConvert_PlanarFtoPlanar16F(&s, &d, vImage_Flags(kvImageNoFlags))
            }
        }
        return out
    }

    /// IEEE float16 bit patterns -> float32 (exact).
    static func floatsOfHalfs(_ values: [UInt16]) -> [Float] {
        var out = [Float](repeating: 0, count: values.count)
        if values.isEmpty { return out }
        values.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                var s = vImage_Buffer(data: UnsafeMutableRawPointer(mutating: src.baseAddress!), height: 1,
                                      width: vImagePixelCount(src.count), rowBytes: src.count * 2)
                var d = vImage_Buffer(data: dst.baseAddress!, height: 1, width: vImagePixelCount(dst.count),
                                      rowBytes: dst.count * 4)
                _ = vImageConvert_Planar16FtoPlanarF(&s, &d, vImage_Flags(kvImageNoFlags))
            }
        }
        return out
    }
}

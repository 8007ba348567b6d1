import Darwin
import Foundation
import os

/// What the platform says about the process's memory: a peak in bytes (nil when it gives none) and what it is.
public struct MemoryReading {
    public let peakBytes: Int64?
    /// What the figure measures, e.g. "phys_footprint peak (task_info TASK_VM_INFO)", or "unavailable".
    public let source: String

    public init(peakBytes: Int64?, source: String) {
        self.peakBytes = peakBytes
        self.source = source
    }
}

/// Reads the process's peak memory at the end of a benchmark (Kotlin `MemoryProbe`). On iOS `physFootprint` reads
/// the kernel's ledger of the app's physical footprint (`task_info` `TASK_VM_INFO`: `ledger_phys_footprint_peak`, or
/// `phys_footprint` now where the peak is not reported), the figure jetsam judges the app by.
public struct MemoryProbe {
    public let read: () -> MemoryReading

    public init(_ read: @escaping () -> MemoryReading) { self.read = read }

    /// No figure: the result file says "unavailable" and writes a null peak.
    public static var unavailable: MemoryProbe { MemoryProbe { MemoryReading(peakBytes: nil, source: "unavailable") } }

    /// The app's physical footprint from `task_info` (its peak where the kernel reports one).
    public static var physFootprint: MemoryProbe {
        MemoryProbe {
            guard let info = vmInfo() else { return MemoryReading(peakBytes: nil, source: "unavailable") }
            if let peak = info.peak {
                return MemoryReading(peakBytes: peak, source: "phys_footprint peak (task_info TASK_VM_INFO)")
            }
            return MemoryReading(peakBytes: info.footprint, source: "phys_footprint at the end (task_info TASK_VM_INFO)")
        }
    }

    /// The app's physical footprint now, in bytes (nil when `task_info` fails).
    public static func currentFootprint() -> Int64? { vmInfo()?.footprint }

    /// What iOS says this app may still allocate before it is terminated (`os_proc_available_memory()`); nil where
    /// the platform reports nothing (macOS, the simulator: 0).
    public static func availableBytes() -> Int64? {
        #if os(iOS)
        let bytes = os_proc_available_memory()
        return bytes > 0 ? Int64(bytes) : nil
        #else
        return nil
        #endif
    }

    private static func vmInfo() -> (footprint: Int64, peak: Int64?)? {
        var info = task_vm_info_data_t()
        let word = MemoryLayout<integer_t>.size
        var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / word)
        let result = withUnsafeMutablePointer(to: &info) { pointer in
            pointer.withMemoryRebound(to: integer_t.self, capacity: Int(count)) { words in
                task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), words, &count)
            }
        }
        guard result == KERN_SUCCESS else { return nil }
        var peak: Int64?
        // the peak is in later revisions of the structure: only when the kernel filled that far
        if let offset = MemoryLayout<task_vm_info_data_t>.offset(of: \task_vm_info_data_t.ledger_phys_footprint_peak),
           Int(count) * word >= offset + MemoryLayout<Int64>.size, info.ledger_phys_footprint_peak > 0 {
            peak = info.ledger_phys_footprint_peak
        }
        return (Int64(info.phys_footprint), peak)
    }
}

/// One timed run of a VLM on the device, in milliseconds: preprocessing, the vision encoder, the prompt's prefill
/// (`promptTokens` tokens) and the decode steps after the first token (`decodeTokens` tokens in `decodeMs`).
/// `timeToFirstTokenMs` defaults to image encode + prefill, as `pocketvlm bench` computes it.
public struct VlmRun {
    public let preprocessMs: Double
    public let imageEncodeMs: Double
    public let prefillMs: Double
    public let promptTokens: Int
    public let decodeMs: Double
    public let decodeTokens: Int
    public let newTokens: Int
    public let timeToFirstTokenMs: Double

    public init(preprocessMs: Double, imageEncodeMs: Double, prefillMs: Double, promptTokens: Int, decodeMs: Double,
                decodeTokens: Int, newTokens: Int, timeToFirstTokenMs: Double? = nil) throws {
        self.preprocessMs = preprocessMs
        self.imageEncodeMs = imageEncodeMs
        self.prefillMs = prefillMs
        self.promptTokens = promptTokens
        self.decodeMs = decodeMs
        self.decodeTokens = decodeTokens
        self.newTokens = newTokens
        self.timeToFirstTokenMs = timeToFirstTokenMs ?? imageEncodeMs + prefillMs
        let times = [preprocessMs, imageEncodeMs, prefillMs, decodeMs, self.timeToFirstTokenMs]
        if times.contains(where: { $0.isNaN || $0 < 0 }) || promptTokens < 1 || decodeTokens < 0 || newTokens < 0 {
            throw InputError("a benchmark run has a negative or missing figure (times \(times), prompt \(promptTokens), "
                + "decode \(decodeTokens), new \(newTokens) tokens)", "time each stage with ContinuousClock around it")
        }
    }
}

/// The device and how the kit was set up on it: the result file's `device` block.
public struct DeviceInfo {
    /// The app's equivalent of a browser's user agent: "pocketvlm ios-demo 0.1.0 (iOS 18.1; iPhone15,2)".
    public let userAgent: String
    /// What ran the bundle: "coreml-ane", "coreml-gpu", "coreml-cpu", "coreml-all" (see `DeviceResult.backend`).
    public let backend: String
    /// Core ML does not say how many threads it uses: nil.
    public let threads: Int?
    public let model: String?
    public let os: String?
    public let app: String?

    public init(userAgent: String, backend: String, threads: Int? = nil, model: String? = nil, os: String? = nil,
                app: String? = nil) {
        self.userAgent = userAgent
        self.backend = backend
        self.threads = threads
        self.model = model
        self.os = os
        self.app = app
    }

    /// This device, for `app` (e.g. "pocketvlm ios-demo 0.1.0") running on `backend`.
    public static func current(app: String, backend: String) -> DeviceInfo {
        let model = modelIdentifier()
        let system = osDescription()
        return DeviceInfo(userAgent: "\(app) (\(system); \(model))", backend: backend, threads: nil, model: model,
            os: system, app: app)
    }

    /// The machine id, e.g. "iPhone15,2" (`utsname.machine`; the simulated model on the simulator).
    public static func modelIdentifier() -> String {
        let simulated = "SIMULATOR_MODEL_IDENTIFIER"
        if let model = ProcessInfo.processInfo.environment[simulated], !model.isEmpty { return model }
        var system = utsname()
        uname(&system)
        let machine = withUnsafeBytes(of: system.machine) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return machine.isEmpty ? "unknown" : machine
    }

    /// "iOS 18.1" (or "macOS 15.1"), from `ProcessInfo`.
    public static func osDescription() -> String {
        let v = ProcessInfo.processInfo.operatingSystemVersion
        let version = v.patchVersion > 0 ? "\(v.majorVersion).\(v.minorVersion).\(v.patchVersion)"
            : "\(v.majorVersion).\(v.minorVersion)"
        #if os(iOS)
        return "iOS \(version)"
        #elseif os(macOS)
        return "macOS \(version)"
        #else
        return "Apple OS \(version)"
        #endif
    }
}

/// The machine block: platform, CPU, logical CPUs and memory.
public struct MachineInfo {
    public let platform: String
    public let cpu: String
    public let logicalCpus: Int?
    public let memoryBytes: Int64?

    public init(platform: String, cpu: String, logicalCpus: Int?, memoryBytes: Int64?) {
        self.platform = platform
        self.cpu = cpu
        self.logicalCpus = logicalCpus
        self.memoryBytes = memoryBytes
    }

    /// This device: "iOS 18.1 arm64 (iPhone15,2)", its CPU's name where sysctl gives one, its cores and memory.
    public static func current() -> MachineInfo {
        #if arch(arm64)
        let arch = "arm64"
        #else
        let arch = "x86_64"
        #endif
        let model = DeviceInfo.modelIdentifier()
        let cpu = sysctlString("machdep.cpu.brand_string") ?? "\(model) \(arch)"
        let info = ProcessInfo.processInfo
        return MachineInfo(platform: "\(DeviceInfo.osDescription()) \(arch) (\(model))", cpu: cpu,
            logicalCpus: info.activeProcessorCount, memoryBytes: Int64(info.physicalMemory))
    }

    private static func sysctlString(_ name: String) -> String? {
        var size = 0
        guard sysctlbyname(name, nil, &size, nil, 0) == 0, size > 0 else { return nil }
        var buffer = [CChar](repeating: 0, count: size)
        guard sysctlbyname(name, &buffer, &size, nil, 0) == 0 else { return nil }
        let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return text.isEmpty ? nil : text
    }
}

/// Times of one load on the device, in milliseconds: the `device.figures` block and the shared top-level ones.
/// `sessionLoadMs` covers compiling the packages (first run) and loading every function's `MLModel`.
public struct LoadFigures {
    public let verifyMs: Double
    public let sessionLoadMs: Double
    public let downloadMs: Double

    public init(verifyMs: Double, sessionLoadMs: Double, downloadMs: Double = 0) {
        self.verifyMs = verifyMs
        self.sessionLoadMs = sessionLoadMs
        self.downloadMs = downloadMs
    }
}

/// The device result file (Kotlin `DeviceResult`): `runtime/schema/bench.schema.json` with `measured_on: "device"`
/// and a `device` block, the file the web and Android demos write, so `benchmarks/report.py` lists it among the
/// "Measured on devices" rows. Figures are medians over the runs (p90 per component), computed by `Stats`.
/// Objects are ordered `[(String, Any?)]` and lists `[Any?]`, as `JSONWriter` writes them.
public enum DeviceResult {
    public static let schemaVersion = 1
    /// The schema's timings are > 0; a timer that read 0 is below its resolution.
    private static let floorMs = 1e-3

    /// The result file's `device.backend` for the compute units the user chose ("all", "cpuAndNeuralEngine",
    /// "cpuAndGPU", "cpuOnly", as `MLComputeUnits` names them).
    public static func backend(computeUnits: String) -> String {
        switch computeUnits {
        case "cpuAndNeuralEngine": return "coreml-ane"
        case "cpuAndGPU": return "coreml-gpu"
        case "cpuOnly": return "coreml-cpu"
        case "all": return "coreml-all"
        default: return "coreml-\(computeUnits)"
        }
    }

    /// A VLM benchmark: `runs` after warm-up; `engines` is what ran each component (its session's `backend`, e.g.
    /// "Core ML (cpuAndNeuralEngine)"); `tools` e.g. [("coreml", "iOS 18.1"), ("pocketvlm-ios", "0.1.0")].
    public static func vlm(bundle: VLMBundle, runs: [VlmRun], engines: [String: String], device: DeviceInfo,
                           machine: MachineInfo, tools: [(String, String)], load: LoadFigures,
                           memory: MemoryProbe = .physFootprint, now: Date = Date()) throws -> [(String, Any?)] {
        guard let last = runs.last else {
            throw InputError("no benchmark runs to write", "run the benchmark at least once")
        }
        func ms(_ pick: (VlmRun) -> Double) -> [Double] { runs.map(pick) }
        let visionEncoder = try component(ms { $0.imageEncodeMs })
        let textDecoderPrefill = try component(ms { $0.prefillMs })
        let components: [(String, Any?)] = [("vision_encoder", visionEncoder),
                                            ("text_decoder_prefill", textDecoderPrefill)]
        let preprocessMs = try Stats.median(ms { $0.preprocessMs })
        let imageEncodeMs = floor(try Stats.median(ms { $0.imageEncodeMs }))
        let ttftMs = floor(try Stats.median(ms { $0.timeToFirstTokenMs }))
        let prefillRate = try Stats.median(runs.map { Double($0.promptTokens) / (floor($0.prefillMs) / 1e3) })
        var figures: [(String, Any?)] = [
            ("components", components),
            ("prompt_tokens", last.promptTokens),
            ("new_tokens", max(last.newTokens, 1)),
            ("preprocess_ms", preprocessMs),
            ("image_encode_ms", imageEncodeMs),
            ("time_to_first_token_ms", ttftMs),
            ("prefill_tokens_per_s", prefillRate),
        ]
        let decoded = runs.filter { $0.decodeTokens > 0 && $0.decodeMs > 0 }
        if !decoded.isEmpty {
            let rates = decoded.map { Double($0.decodeTokens) / ($0.decodeMs / 1e3) }
            let median = try Stats.median(rates)
            let p10 = try Stats.p10(rates)
            figures.append(("decode_tokens_per_s", median))
            figures.append(("decode_tokens_per_s_p10", p10))
        }
        let d = bundle.manifest.decoder
        let meanContext = Double(last.promptTokens) + Double(last.newTokens) / 2
        let perElement = 2 * Double(d.numLayers * d.kvHeads * d.headDim) * Double(bundle.kvElementBytes)
        let weights = try bundle.componentBytes(Manifest.decoderComponent)
        let perToken: [(String, Any?)] = [("weights", weights), ("kv_cache_at_mean_context", Int64(perElement * meanContext))]
        figures.append(("bytes_per_decode_token", perToken))
        figures.append(("kv_cache_bytes_at_max_context", bundle.kvCacheBytes))
        let deviceFigures: [(String, Any?)] = [("preprocess_ms", preprocessMs)]
        return try file(bundle, figures, engines, device, machine, tools, load, memory, now, deviceFigures)
    }

    /// Writes `result` as JSON (2-space indent, a final newline) to `url`, atomically (a temporary file renamed).
    public static func write(_ result: [(String, Any?)], to url: URL) throws {
        do {
            try Data((JSONWriter.write(result, indent: 2) + "\n").utf8).write(to: url, options: .atomic)
        } catch {
            throw InputError("cannot write the result file \(url.path) (\(error.localizedDescription))",
                "choose a writable folder (the app's Documents)")
        }
    }

    /// "<bundle directory>-<UTC time>.result.json": the name the app gives the file it exports.
    public static func fileName(bundle: VLMBundle, now: Date = Date()) -> String {
        let stamp = utc(now).replacingOccurrences(of: ":", with: "").replacingOccurrences(of: "-", with: "")
        return "\(bundle.root.lastPathComponent)-\(stamp).result.json"
    }

    private static func file(_ bundle: VLMBundle, _ shared: [(String, Any?)], _ engines: [String: String],
                             _ device: DeviceInfo, _ machine: MachineInfo, _ tools: [(String, String)],
                             _ load: LoadFigures, _ memory: MemoryProbe, _ now: Date,
                             _ deviceFigures: [(String, Any?)]) throws -> [(String, Any?)] {
        if engines.isEmpty || engines.values.contains(where: { $0.trimmingCharacters(in: .whitespaces).isEmpty }) {
            throw InputError("the result file needs what ran each component", "pass each session's backend")
        }
        if device.userAgent.isEmpty || device.backend.isEmpty {
            throw InputError("the device block needs a user agent and a backend", "describe the app and its backend")
        }
        var figures = shared
        let downloadMs = try nonNegative(load.downloadMs)
        let sessionLoadMs = try nonNegative(load.sessionLoadMs)
        let verifyMs = try nonNegative(load.verifyMs)
        figures.append(("bundle_download_ms", downloadMs))
        figures.append(("session_load_ms", sessionLoadMs))
        figures.append(("bundle_verify_ms", verifyMs))
        let reading = memory.read()
        let peak = reading.peakBytes.flatMap { $0 > 0 ? $0 : nil }
        let source = reading.source.trimmingCharacters(in: .whitespaces)
        if source.isEmpty { throw InputError("a memory reading without a source", "name what the figure measures") }
        let threads = device.threads.flatMap { $0 >= 1 ? $0 : nil }
        let m = bundle.manifest
        var deviceBlock: [(String, Any?)] = [
            ("user_agent", device.userAgent), ("backend", device.backend), ("threads", threads),
            ("cross_origin_isolated", nil), ("memory_source", peak == nil ? "unavailable" : source),
        ]
        if let model = device.model { deviceBlock.append(("model", model)) }
        if let os = device.os { deviceBlock.append(("os", os)) }
        if let app = device.app { deviceBlock.append(("app", app)) }
        var loadFigures = deviceFigures
        loadFigures.append(("download_ms", downloadMs))
        loadFigures.append(("load_ms", sessionLoadMs))
        deviceBlock.append(("figures", loadFigures))
        deviceBlock.append(("peak_memory_bytes", peak))
        // per component, in the manifest's order, then any other names given
        let ordered = m.componentNames.filter { engines[$0] != nil } + engines.keys.sorted().filter {
            !m.componentNames.contains($0)
        }
        var engineNames: [String] = []
        var enginesBlock: [(String, Any?)] = []
        for name in ordered {
            guard let engine = engines[name] else { continue }
            enginesBlock.append((name, engine))
            if !engineNames.contains(engine) { engineNames.append(engine) }
        }
        let quantization: [(String, Any?)] = try m.componentNames.map { name -> (String, Any?) in
            (name, try m.component(name).quantization)
        }
        let componentBytes: [(String, Any?)] = try m.componentNames.map { name -> (String, Any?) in
            (name, try bundle.componentBytes(name))
        }
        let bundleBlock: [(String, Any?)] = [
            ("path", bundle.label), ("family", m.family), ("target", m.target), ("task", m.task),
            ("manifest_sha256", bundle.manifestSha256), ("quantization", quantization), ("bytes", bundle.totalBytes),
            ("component_bytes", componentBytes),
        ]
        let machineBlock: [(String, Any?)] = [
            ("platform", machine.platform), ("cpu", machine.cpu), ("logical_cpus", machine.logicalCpus),
            ("memory_bytes", machine.memoryBytes),
        ]
        let toolsBlock: [(String, Any?)] = tools.map { tool -> (String, Any?) in (tool.0, tool.1) }
        return [
            ("schema_version", schemaVersion), ("kind", "bundle_bench"), ("measured_on", "device"),
            ("created_utc", utc(now)), ("machine", machineBlock), ("tools", toolsBlock), ("threads", threads),
            ("engine", engineNames.joined(separator: "; ")), ("engines", enginesBlock), ("bundle", bundleBlock),
            ("figures", figures), ("peak_rss_bytes", peak), ("device", deviceBlock),
        ]
    }

    /// "2026-12-01T12:34:56Z": UTC to the second, as the schema's `created_utc` pattern.
    static func utc(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: date)
    }

    private static func component(_ values: [Double]) throws -> [(String, Any?)] {
        let s = try Stats.summary(values)
        return Summary(median: floor(s.median), p90: floor(s.p90), min: floor(s.min), mean: s.mean, runs: s.runs)
            .componentEntry()
    }

    /// At least the timer's resolution (the schema's timings are > 0).
    private static func floor(_ ms: Double) -> Double { Swift.max(ms, floorMs) }

    private static func nonNegative(_ ms: Double) throws -> Double {
        if ms.isNaN || ms < 0 { throw InputError("a load time of \(ms) ms", "time the load with ContinuousClock") }
        return ms
    }
}

import Foundation

/// The golden record's comparisons (Kotlin `GoldenChecks.kt`), the same rules as `runtime/selftest.py`, the web demo
/// and the Android engine: float tensors at the recorded sample indices and by their mean (error = max |kit -
/// recorded|, limit `max_abs_relative` x the largest |sample| or `max_abs`), int tensors and id lists exactly, the
/// decoder's logits at the recorded top-k ids over the largest |recorded logit| with its argmax equal to the token
/// unless a near tie, and greedy tokens equal or first different at a recorded near tie.
public enum GoldenChecks {
    /// One tensor's comparison.
    public struct Check {
        public let pass: Bool
        public let error: Double
        public let limit: Double
        public let detail: String
    }

    /// One list compared exactly: what it is, ours and the recorded one (as text, so ids and strings compare alike).
    public struct ExactList {
        public let what: String
        public let ours: [String]
        public let recorded: [String]

        public init<T: CustomStringConvertible>(_ what: String, _ ours: [T], _ recorded: [T]) {
            self.what = what
            self.ours = ours.map { $0.description }
            self.recorded = recorded.map { $0.description }
        }
    }

    public static func tensor(_ name: String, _ ours: Tensor?, _ want: TensorSummary, _ tolerance: Tolerance) -> Check {
        guard let ours else {
            return Check(pass: false, error: .infinity, limit: 0, detail: "\(name): this kit produced no '\(name)'")
        }
        if ours.shape != want.shape {
            return Check(pass: false, error: .infinity, limit: 0,
                detail: "\(name): shape \(ours.shape) != recorded \(want.shape)")
        }
        let values = doubles(ours)
        if let recorded = want.values {
            let wrong = recorded.indices.filter { values[$0] != Double(recorded[$0]) }
            let detail = wrong.isEmpty ? "\(name): \(recorded.count) values equal"
                : "\(name): \(wrong.count) of \(recorded.count) values differ (first at \(wrong[0]): "
                    + "\(fmt(values[wrong[0]])) != \(recorded[wrong[0]]))"
            return Check(pass: wrong.isEmpty, error: Double(wrong.count), limit: 0, detail: detail)
        }
        var error = 0.0
        var worst = -1
        for (k, index) in want.sampleIndex.enumerated() {
            let d = abs(values[index] - want.sampleValue[k])
            if d.isNaN || d > error {
                error = d.isNaN ? .infinity : d
                worst = index
            }
        }
        let mean = values.reduce(0, +) / Double(max(values.count, 1))
        var meanError = abs(mean - (want.mean ?? .nan))
        if meanError.isNaN { meanError = .infinity }
        error = max(error, meanError)
        let scale = max(want.sampleValue.map { abs($0) }.max() ?? 0, 1e-12)
        let limit: Double
        let kind: String
        if let relative = tolerance.maxAbsRelative {
            limit = relative * scale
            kind = "max_abs_relative \(fmt(relative)) x \(fmt(scale))"
        } else {
            limit = tolerance.maxAbs ?? 0
            kind = "max_abs"
        }
        let location = worst >= 0 ? "worst at flat index \(worst)" : "every sample equal"
        return Check(pass: error <= limit, error: error, limit: limit, detail: "\(name): max |error| \(fmt(error)) "
            + "over \(want.sampleIndex.count) samples + mean (\(location)), limit \(fmt(limit)) (\(kind))")
    }

    /// The tensors of one stage against `ours`: fails if any fails; error and limit of the worst (error / limit).
    public static func tensorStage(_ stage: TensorStage, _ ours: [String: Tensor],
                                   figures: [(String, Any?)] = []) -> StageResult {
        let checks = stage.tensorNames.compactMap { name -> (String, Check)? in
            guard let want = stage.tensors[name] else { return nil }
            return (name, tensor(name, ours[name], want, stage.tolerance))
        }
        func badness(_ c: Check) -> Double { c.pass ? c.error / max(c.limit, 1e-30) : .infinity }
        var worst = checks[0].1
        for (_, c) in checks.dropFirst() where badness(c) > badness(worst) { worst = c }
        let perTensor: [(String, Any?)] = checks.map { pair -> (String, Any?) in
            let entry: [(String, Any?)] = [("pass", pair.1.pass), ("max_abs_error", finite(pair.1.error)),
                                           ("limit", pair.1.limit)]
            return (pair.0, entry)
        }
        var all: [(String, Any?)] = [("max_abs_error", finite(worst.error)), ("tensors", perTensor)]
        all += figures
        return StageResult.of(stage.name, pass: checks.allSatisfy { $0.1.pass }, error: finite(worst.error),
            limit: worst.limit, detail: checks.map { $0.1.detail }.joined(separator: "; "), figures: all)
    }

    /// Equal lists; the detail names the first difference of each that differs.
    public static func exact(_ name: String, _ checks: [ExactList], figures: [(String, Any?)] = []) -> StageResult {
        var wrong: [(ExactList, Int)] = []
        for check in checks {
            if let at = firstDifference(check.ours, check.recorded) { wrong.append((check, at)) }
        }
        let detail: String
        if wrong.isEmpty {
            detail = checks.map { $0.ours.count == 1 ? "\($0.what) equal" : "\($0.what): \($0.ours.count) equal" }
                .joined(separator: "; ")
        } else {
            detail = wrong.map { pair -> String in
                let (check, at) = pair
                return "\(check.what) differs at \(at) (\(item(check.ours, at)) != recorded "
                    + "\(item(check.recorded, at)); \(check.ours.count) vs \(check.recorded.count) items)"
            }.joined(separator: "; ")
        }
        let equal: [(String, Any?)] = checks.map { check -> (String, Any?) in
            ("\(check.what)_equal", check.ours == check.recorded)
        }
        return StageResult.of(name, pass: wrong.isEmpty, error: Double(wrong.count), limit: 0, detail: detail,
            figures: equal + figures)
    }

    /// The first index where `a` and `b` differ (the shorter one's length when one is a prefix), nil when equal.
    public static func firstDifference<T: Equatable>(_ a: [T], _ b: [T]) -> Int? {
        for i in 0..<min(a.count, b.count) where a[i] != b[i] { return i }
        return a.count == b.count ? nil : min(a.count, b.count)
    }

    /// Teacher-forced logits (`logits[i]` after feeding step i's prefix) against the recorded steps.
    public static func teacherForced(_ stage: DecoderStage, _ logits: [[Float]]) throws -> StageResult {
        let nearTies = stage.nearTies()
        var error = 0.0
        var worstStep = -1
        var wrongArgmax: [Int] = []
        for (i, step) in stage.steps.enumerated() where i < logits.count {
            let ours = logits[i]
            if step.topIds.contains(where: { $0 < 0 || $0 >= ours.count }) || step.tokenId < 0
                || step.tokenId >= ours.count {
                throw BundleError("golden record step \(i) names token ids outside the vocabulary of \(ours.count)",
                    "re-export the bundle; never edit golden.json by hand")
            }
            let scale = stage.scale(step)
            var e = 0.0
            for k in step.topIds.indices {
                let d = abs(Double(ours[step.topIds[k]]) - step.topLogits[k]) / scale
                e = d.isNaN ? .infinity : max(e, d)
            }
            if e > error {
                error = e
                worstStep = i
            }
            if !nearTies.contains(i) && argmax(ours) != step.tokenId { wrongArgmax.append(i) }
        }
        let missing = stage.steps.count - logits.count
        let pass = missing == 0 && error <= stage.logitLimit && wrongArgmax.isEmpty
        let ties = nearTies.sorted()
        var detail = "\(stage.steps.count) teacher-forced steps: max |logit error| / max |logit| \(fmt(error)) (step "
            + "\(worstStep)), limit \(fmt(stage.logitLimit))"
        if !wrongArgmax.isEmpty { detail += "; argmax differs at steps \(wrongArgmax)" }
        if !ties.isEmpty { detail += "; near ties at steps \(ties)" }
        if missing != 0 { detail += "; the decoder gave \(logits.count) logit rows for \(stage.steps.count) steps" }
        return StageResult.of("text_decoder", pass: pass, error: finite(error), limit: stage.logitLimit, detail: detail,
            figures: [("steps", stage.steps.count), ("argmax_differs_at", wrongArgmax.map { $0 as Any? }),
                      ("near_ties", ties.map { $0 as Any? })])
    }

    /// Greedy generation against the record: the ids equal (or first different at a recorded near tie, where the
    /// rest may go either way), and when they are equal the stop reason and the decoded text equal too.
    public static func generation(_ stage: GenerationStage, ids: [Int], text: String, stopReason: String,
                                  nearTies: Set<Int>, how: String, problems: [String] = []) -> StageResult {
        let recorded = stage.tokenIds
        let at = firstDifference(ids, recorded)
        let onTie = at.map { nearTies.contains($0) } ?? false
        let sameStop = stopReason == stage.stopReason
        let sameText = text == stage.text
        let pass = problems.isEmpty && (at == nil ? sameStop && sameText : onTie)
        var detail = how + ": "
        if let at {
            detail += "greedy tokens first differ at step \(at) (\(item(ids, at)) != recorded \(item(recorded, at)))"
            detail += onTie ? ", a recorded near tie" : ", not a recorded near tie"
        } else {
            detail += "\(ids.count) greedy tokens equal the recorded ones; stop \(stopReason) (recorded "
                + "\(stage.stopReason))"
            detail += sameText ? "; text equal"
                : "; text differs: \(JSONWriter.write(text)) != recorded \(JSONWriter.write(stage.text))"
        }
        for problem in problems { detail += "; " + problem }
        return StageResult.of("generation", pass: pass, error: at.map { Double(ids.count - $0) } ?? 0, limit: 0,
            detail: detail, figures: [
                ("token_ids", ids.map { $0 as Any? }), ("recorded_token_ids", recorded.map { $0 as Any? }),
                ("token_ids_equal", at == nil), ("stop_reason", stopReason),
                ("recorded_stop_reason", stage.stopReason), ("text", text), ("recorded_text", stage.text)])
    }

    /// The index of the largest logit (the first NaN, if any, as the Kotlin `Sampler.argmax`).
    public static func argmax(_ values: [Float]) -> Int {
        var best = 0
        for i in values.indices {
            if values[i].isNaN { return i }
            if values[i] > values[best] { best = i }
        }
        return best
    }

    private static func doubles(_ t: Tensor) -> [Double] {
        switch t {
        case .f32(_, let data): return data.map { Double($0) }
        case .i64(_, let data): return data.map { Double($0) }
        }
    }

    private static func item<T>(_ list: [T], _ index: Int) -> String {
        index < list.count ? "\(list[index])" : "null"
    }

    /// JSON has no infinity: an unbounded error is written as null.
    static func finite(_ v: Double) -> Double? { v.isNaN || v.isInfinite ? nil : v }

    /// Four significant digits (Java's `%.4g`: plain from 1e-4 to 1e4, else scientific), `%.2e` below 1e-3.
    public static func fmt(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "Infinity" : "-Infinity" }
        if v != 0 && abs(v) < 1e-3 { return String(format: "%.2e", v) }
        if v == 0 { return "0.000" }
        let rounded = Double(String(format: "%.3e", abs(v))) ?? abs(v)
        if rounded >= 1e4 { return String(format: "%.3e", v) }
        let decimals = max(0, 3 - Int(floor(log10(rounded))))
        return String(format: "%.\(decimals)f", v)
    }
}

/// A `TextDecoder` without a model, for the replay when the bundle's models cannot run: it returns, after the prompt
/// and after each fed token, the golden record's teacher-forced top-k logits of that step with -inf at every other
/// id. Driven by the kit's own generation loop, it checks the loop (argmax, stop rules, positions it feeds) and the
/// detokenizer against the record, never the decoder: the text_decoder stage needs the model.
public final class RecordedLogitsDecoder: TextDecoder {
    public let backend = "golden record logits (no model)"
    private let steps: [DecoderStep]
    private let vocab: Int
    private let promptTokens: Int
    private var capacity = 0
    private var fedIds: [Int64] = []
    private var fedPositions: [[Int64]] = []  // one per fed token: its position on each axis

    public var filled: Int { fedIds.count }

    public init(steps: [DecoderStep], vocab: Int, promptTokens: Int) throws {
        if vocab < 2 { throw BundleError("decoder vocabulary of \(vocab)", "re-export the bundle") }
        for (i, s) in steps.enumerated() where s.topIds.contains(where: { $0 < 0 || $0 >= vocab }) {
            throw BundleError("golden record step \(i) names token ids outside the vocabulary of \(vocab)",
                "re-export the bundle; never edit golden.json by hand")
        }
        self.steps = steps
        self.vocab = vocab
        self.promptTokens = promptTokens
    }

    public func reset(capacity: Int) throws {
        self.capacity = capacity
        fedIds.removeAll()
        fedPositions.removeAll()
    }

    public func step(ids: [Int64], positions: Tensor, imageEmbeds: [String: Tensor]?) throws -> [Float] {
        let n = ids.count
        let data = try positions.int64s()
        let axes = n == 0 ? 0 : data.count / n
        if n == 0 || data.count != axes * n || (axes != 1 && axes != 3) {
            throw InferenceError("the generation loop fed \(n) ids with positions \(positions.shape)",
                "feed [1, n] or [3, 1, n] positions for n ids")
        }
        if fedIds.count + n > capacity {
            throw InferenceError("the generation loop fed \(fedIds.count + n) tokens into a sequence of \(capacity)",
                "reset the decoder with the capacity the sequence needs")
        }
        for i in 0..<n {
            fedIds.append(ids[i])
            fedPositions.append((0..<axes).map { data[$0 * n + i] })
        }
        let index = fedIds.count - promptTokens
        if index < 0 {
            throw InferenceError("the generation loop asked for logits after \(fedIds.count) of the prompt's "
                + "\(promptTokens) tokens; the golden record has logits only after the whole prompt",
                "feed the prompt in one step (the decoders chunk it themselves)")
        }
        if index >= steps.count {
            throw InferenceError("the generation loop asked for decoder step \(index + 1); the golden record has "
                + "\(steps.count)", "stop at the recorded stop reason (the record ends there)")
        }
        var logits = [Float](repeating: -.infinity, count: vocab)
        let step = steps[index]
        for k in step.topIds.indices { logits[step.topIds[k]] = Float(step.topLogits[k]) }
        return logits
    }

    /// What the loop fed against what it should have (`prompt`, then the generated tokens but the last).
    public func feedProblems(_ prompt: Prompt, generated: [Int]) -> [String] {
        feedProblems(promptIds: prompt.ids, promptPositions: prompt.positions, delta: prompt.delta, generated: generated)
    }

    /// What the loop fed against what it should have: the prompt (`promptIds` at `promptPositions`, `[1, n]` or
    /// `[3, 1, n]`) and then each generated token but the last at position `i + delta` on every axis. Returns the
    /// differences (empty when none).
    public func feedProblems(promptIds: [Int64], promptPositions: Tensor, delta: Int64, generated: [Int]) -> [String] {
        var problems: [String] = []
        let n = promptIds.count
        let wantIds = promptIds + generated.dropLast().map { Int64($0) }
        if let at = GoldenChecks.firstDifference(fedIds, wantIds) {
            let fed = at < fedIds.count ? "\(fedIds[at])" : "null"
            let want = at < wantIds.count ? "\(wantIds[at])" : "null"
            problems.append("the loop fed token \(fed) at sequence index \(at), expected \(want) (\(fedIds.count) "
                + "tokens fed, \(wantIds.count) expected)")
        }
        let positions = (try? promptPositions.int64s()) ?? []
        let axes = positions.count / max(n, 1)
        for i in 0..<min(fedPositions.count, wantIds.count) {
            let want: [Int64] = (0..<axes).map { axis in i < n ? positions[axis * n + i] : Int64(i) + delta }
            if fedPositions[i] != want {
                problems.append("the loop fed sequence index \(i) at position \(fedPositions[i]), expected \(want)")
                break
            }
        }
        return problems
    }
}

import Foundation

/// The golden self-test: the bundle's golden record (written by `pocketvlm export` from the Python runtime's run of
/// the bundle, and replayed by `pocketvlm selftest`, the web demo and the Android app) replayed stage by stage on the
/// phone. With `sessions` every stage runs, each on the kit's own outputs of the stage before; without (`nil`) the
/// stages that need a model are reported as not run, never as passed: what runs is preprocessing, the prompt's ids
/// and positions (from the manifest's `app` block and the tokenizer), and the generation loop driven by the record's
/// teacher-forced logits ([RecordedLogitsDecoder]), which must give the recorded ids, stop reason and text.
///
/// The stages are the pipelines' own steps ([VlmSteps]), so the replay checks the code the app runs. `sessions` are
/// lent: the replay closes nothing. As the Android engine's `GoldenReplay.kt`, for VLM bundles only.
public final class GoldenReplay {
    public let record: GoldenRecord
    private let bundle: VLMBundle
    private let manifest: Manifest
    private let sessions: SessionFactory?
    private let tokenizer: Tokenizer
    private let mode: String

    public init(bundle: VLMBundle, sessions: SessionFactory?, tokenizer: Tokenizer) throws {
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.sessions = sessions
        self.tokenizer = tokenizer
        self.record = try GoldenRecord.read(bundle)
        self.mode = sessions != nil ? "device" : "no model"
    }

    /// The self-test of a loaded bundle on its Core ML sessions, on the record's own `golden.png`.
    public static func run(_ loaded: LoadedBundle) throws -> GoldenReport {
        let replay = try GoldenReplay(bundle: loaded.bundle, sessions: loaded.sessions, tokenizer: loaded.tokenizer)
        let image = try Rgba.decode(try loaded.bundle.read(replay.record.imageFile), name: replay.record.imageFile)
        return try replay.run(image)
    }

    /// Replays every stage on `image` (`golden.png`, decoded by the caller); a record that does not fit the bundle is
    /// a [BundleError], a stage whose code raised is failed with the error's line.
    public func run(_ image: Rgba) throws -> GoldenReport {
        if image.width != record.imageWidth || image.height != record.imageHeight {
            throw BundleError("golden image decodes to \(image.width)x\(image.height), the record says "
                + "\(record.imageWidth)x\(record.imageHeight)", "re-export the bundle")
        }
        let stages = try vlm(image)
        let known = Set(stages.map { $0.name })
        let unknown = record.stageNames.filter { !known.contains($0) }
            .map { StageResult.notRun($0, "a stage this app does not know") }
        return GoldenReport(record: record, mode: mode, stages: stages + unknown)
    }

    // preprocess, vision_encoder, prompt, text_decoder, generation
    private func vlm(_ image: Rgba) throws -> [StageResult] {
        let steps = try VlmSteps(bundle: bundle, tokenizer: tokenizer)
        let decoder = try sessions?.textDecoder()  // lent by the factory; the same one for both decoder stages
        var results: [StageResult] = []
        let feeds = try steps.visionFeeds(image)
        results.append(GoldenChecks.tensorStage(try record.tensors("preprocess"), feeds))

        let visionStage = try record.tensors("vision_encoder")
        var embeds: [String: Tensor]?
        if let sessions {
            results.append(try guarded(visionStage.name) {
                let out = try steps.encodeVision(sessions, feeds)
                embeds = out
                return GoldenChecks.tensorStage(visionStage, out)
            })
        } else {
            results.append(.notRun(visionStage.name, "needs the \(manifest.visionStages.joined(separator: " + ")) "
                + "model: no sessions here"))
        }

        let recordedPrompt = try record.prompt()
        var prompt: Prompt?
        results.append(try promptStage(steps, recordedPrompt) { prompt = $0 })
        let decoderPrompt = try prompt ?? recordedPrompt.asPrompt()
        let promptSource = prompt != nil ? "engine" : "record"

        let decoderStage = try record.decoder()
        try decoderStage.checkVocab(manifest.decoder.vocabSize)
        if let decoder {
            results.append(try guarded("text_decoder") {
                let forced = decoderStage.steps.map { $0.tokenId }
                let run = try steps.generate(decoder, decoderPrompt, embeds, try greedy(forced.count), forced: forced)
                return try GoldenChecks.teacherForced(decoderStage, run.result.logits ?? [])
            })
        } else {
            results.append(.notRun("text_decoder", "needs the text_decoder model: no sessions here"))
        }
        results.append(try generationStage(steps, decoder, decoderStage, decoderPrompt, promptSource, embeds))
        return results
    }

    private func promptStage(_ steps: VlmSteps, _ stage: PromptStage,
                             _ built: (Prompt) -> Void) throws -> StageResult {
        if manifest.app == nil {
            return .notRun("prompt", "the manifest has no app block (the prompt's ids and positions come from it on "
                + "a phone; re-export the bundle with a pocketvlm version that writes it)")
        }
        return try guarded("prompt") {
            let prompt = try steps.promptBuilder().build(stage.prompt, withImage: true)
            built(prompt)
            let positions = try prompt.positions.int64s()
            let text = try tokenizer.decode(prompt.ids.map { Int($0) }, skipSpecialTokens: false)
            let result = GoldenChecks.exact("prompt", [
                GoldenChecks.ExactList("input_ids", prompt.ids, stage.inputIds),
                GoldenChecks.ExactList("position_ids", positions, stage.positionIds.values ?? []),
                GoldenChecks.ExactList("rope_delta", [prompt.delta], [stage.ropeDelta]),
                GoldenChecks.ExactList("text", [text], [stage.text]),
            ], figures: [("input_ids", prompt.ids.map { $0 as Any? }),
                         ("recorded_input_ids", stage.inputIds.map { $0 as Any? })])
            if prompt.positions.shape == stage.positionIds.shape { return result }
            return result.adding([], status: .failed, detail: "position_ids shape \(prompt.positions.shape) != "
                + "recorded \(stage.positionIds.shape); \(result.detail)")
        }
    }

    /// Greedy generation on the phone's `decoder`, or (nil) on the record's teacher-forced logits.
    private func generationStage(_ steps: VlmSteps, _ decoder: TextDecoder?, _ decoderStage: DecoderStage,
                                 _ prompt: Prompt, _ promptSource: String,
                                 _ embeds: [String: Tensor]?) throws -> StageResult {
        try guarded("generation") {
            let stage = try record.generation()
            let replay = decoder == nil ? try RecordedLogitsDecoder(steps: decoderStage.steps,
                                                                    vocab: manifest.decoder.vocabSize,
                                                                    promptTokens: prompt.ids.count) : nil
            let used: TextDecoder = decoder ?? replay!
            let answer = try steps.generate(used, prompt, embeds, try greedy(stage.maxNewTokens))
            let ids = answer.result.tokenIds
            let how = (replay != nil ? "driven by the record's teacher-forced logits (no model)"
                : "greedy on \(used.backend)") + ", prompt from the \(promptSource)"
            let problems = replay?.feedProblems(prompt, generated: ids) ?? []
            let result = GoldenChecks.generation(stage, ids: ids, text: answer.text,
                                                 stopReason: answer.result.stopReason,
                                                 nearTies: decoderStage.nearTies(), how: how, problems: problems)
            return result.adding([("decoder", used.backend), ("prompt_from", promptSource)])
        }
    }

    /// Greedy, as the record's run (the Python runtime's default config: no extra stop tokens).
    private func greedy(_ maxNewTokens: Int) throws -> GenerationConfig {
        try GenerationConfig(maxNewTokens: maxNewTokens, doSample: false)
    }

    /// A stage whose kit code raised: failed with the error's line (a broken bundle still stops the replay).
    private func guarded(_ name: String, _ body: () throws -> StageResult) throws -> StageResult {
        do {
            return try body()
        } catch let error as BundleError {
            throw error
        } catch let error as PocketVLMError {
            return StageResult(name, .failed, error: nil, limit: nil, detail: error.line)
        }
    }
}

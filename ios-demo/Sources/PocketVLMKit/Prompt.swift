import Foundation

/// A prompt as the decoder takes it: token ids, their positions (`[1, n]`, or `[3, 1, n]` for M-RoPE, int64) and the
/// delta that later tokens add to their index (decode step k of a prompt of n tokens is at `n + k + delta`).
public struct Prompt {
    public let ids: [Int64]
    public let positions: Tensor
    public let delta: Int64

    /// Checks the ids and the positions' shape: an empty prompt or mismatched positions is an `InputError`.
    public init(ids: [Int64], positions: Tensor, delta: Int64) throws {
        if ids.isEmpty { throw InputError("the prompt has no tokens", "pass a question or instruction") }
        let shape = positions.shape
        if shape != [1, ids.count] && shape != [3, 1, ids.count] {
            throw InputError("prompt positions of shape \(shape) for \(ids.count) tokens",
                             "pass positions of shape [1, \(ids.count)] or [3, 1, \(ids.count)] (M-RoPE)")
        }
        if positions.dtype != "int64" {
            throw InputError("prompt positions are \(positions.dtype), not int64", "pass int64 positions")
        }
        self.ids = ids
        self.positions = positions
        self.delta = delta
    }

    /// Position axes: 1, or 3 for M-RoPE.
    public var axes: Int { positions.shape[0] }

    /// The position of the token at sequence index `index` (the tokens cached before it), on every axis.
    public func stepPosition(_ index: Int) -> Tensor {
        let shape = axes == 3 ? [3, 1, 1] : [1, 1]
        return .i64(shape: shape, data: [Int64](repeating: Int64(index) + delta, count: axes))
    }
}

/// Prompts from the manifest's `app` block (see `AppSpec`): the exporter's token ids before and after the user's
/// text around `encode` (the tokenizer's plain encoding of the text with the slot's plain-text prefix and suffix:
/// `PromptSlots`), and the positions it resolved, so the app needs no chat template and no M-RoPE code.
public final class PromptBuilder {
    private let app: AppSpec
    private let encode: (String) throws -> [Int64]
    private let axes: Int

    /// A builder over `app`, tokenizing with `encode` (e.g. `{ try tokenizer.encodePlain($0) }`). A positions table
    /// that does not fit the image prompt is a `BundleError`.
    public init(app: AppSpec, encode: @escaping (String) throws -> [Int64]) throws {
        self.app = app
        self.encode = encode
        axes = app.positions.kind == "mrope" ? 3 : 1
        if app.positions.before.count != axes {
            throw BundleError("manifest field 'app.positions.before' has \(app.positions.before.count) rows, " +
                              "expected \(axes) for '\(app.positions.kind)' positions", "re-export the bundle")
        }
        let before = app.withImage.before.count
        for (axis, row) in app.positions.before.enumerated() where row.count != before {
            throw BundleError("manifest field 'app.positions.before[\(axis)]' has \(row.count) positions for the " +
                              "\(before) tokens of 'app.prompt.image.before'", "re-export the bundle")
        }
    }

    /// The prompt for `text` (with the image's tokens when `withImage`); empty or blank text is an `InputError`.
    public func build(_ text: String, withImage: Bool) throws -> Prompt {
        if TokUnicode.isBlank(text) { throw InputError("the prompt is empty", "pass a question or instruction") }
        let slots = withImage ? app.withImage : app.textOnly
        let encoded = try encode(slots.textPrefix + text + slots.textSuffix)
        let ids = slots.before + encoded + slots.after
        let n = ids.count
        let delta = withImage ? app.positions.delta : 0
        let table = withImage ? app.positions.before : []
        var data = [Int64](repeating: 0, count: axes * n)
        for axis in 0..<axes {
            let fixed = withImage ? table[axis].count : 0
            for i in 0..<n { data[axis * n + i] = i < fixed ? table[axis][i] : Int64(i) + delta }
        }
        let shape = axes == 3 ? [3, 1, n] : [1, n]
        return try Prompt(ids: ids, positions: .i64(shape: shape, data: data), delta: delta)
    }
}

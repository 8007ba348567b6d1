import Foundation

/// A named model input or output: a flat row-major array and its shape (Kotlin's `Tensor.F32` / `Tensor.I64`).
/// The Core ML session copies these into `MLMultiArray`s; the rest of the kit never sees a Core ML type.
public enum Tensor {
    case f32(shape: [Int], data: [Float])
    case i64(shape: [Int], data: [Int64])

    public var shape: [Int] {
        switch self {
        case .f32(let shape, _), .i64(let shape, _): return shape
        }
    }

    /// Elements the shape holds.
    public var count: Int { shape.reduce(1, *) }

    /// "float32" or "int64", as the manifest names dtypes.
    public var dtype: String {
        if case .f32 = self { return "float32" }
        return "int64"
    }

    /// A float tensor of zeros.
    public static func zeros(_ shape: [Int]) -> Tensor { .f32(shape: shape, data: [Float](repeating: 0, count: shape.reduce(1, *))) }

    /// The values of a float tensor; an int tensor is an [InferenceError].
    public func floats() throws -> [Float] {
        if case .f32(_, let data) = self { return data }
        throw InferenceError("expected a float32 tensor, got \(dtype) \(shape)", "re-export the bundle")
    }

    /// The values of an int tensor; a float tensor is an [InferenceError].
    public func int64s() throws -> [Int64] {
        if case .i64(_, let data) = self { return data }
        throw InferenceError("expected an int64 tensor, got \(dtype) \(shape)", "re-export the bundle")
    }
}

/// Named inputs or outputs of one call.
public typealias Feeds = [String: Tensor]

/*
 * Who closes what (as in the Android engine). The Core ML backend opens every session of a bundle and is the one
 * [SessionFactory] that owns them: closing it releases them all. What it hands out, a [ComponentSession] and the
 * [TextDecoder], is lent: the decoder, [RowLoop], the pipelines and the golden replay run them and never release them.
 */

/// One component (`vision_encoder`) or one function of the stateful decoder (`prefill_N`, `decode`), lent by the
/// [SessionFactory] that opened it.
public protocol ComponentSession: AnyObject {
    /// e.g. "Core ML (cpuAndNeuralEngine)": what the result file records.
    var backend: String { get }
    /// Runs the component; a Core ML failure is an [InferenceError].
    func run(_ feeds: Feeds) throws -> Feeds
}

/// The text decoder as the generation loop drives it: a prompt, then one token per step, over a KV cache the decoder
/// side keeps (on iOS: the package's `MLState`, in [StatefulDecoder]).
public protocol TextDecoder: AnyObject {
    var backend: String { get }
    /// Tokens cached so far in this sequence.
    var filled: Int { get }
    /// A new sequence of at most `capacity` tokens (prompt + new tokens); forgets what the last one cached.
    func reset(capacity: Int) throws
    /// Runs the new tokens `ids` at `positions` (`[1, n]`, or `[3, 1, n]` for M-RoPE, int64) with the image rows
    /// `imageEmbeds` they need (nil: none; a zero row is fed where the graph needs one) and returns the logits of the
    /// last position (`vocab_size` floats).
    func step(ids: [Int64], positions: Tensor, imageEmbeds: [String: Tensor]?) throws -> [Float]
}

/// A bundle's models, opened once, and their only owner: [close] releases every session and the decoder, once.
public protocol SessionFactory: AnyObject {
    /// The open session of `component` (`vision_encoder`, ...).
    func session(_ component: String) throws -> ComponentSession
    /// The bundle's text decoder over its sessions, built once.
    func textDecoder() throws -> TextDecoder
    /// Releases every session (and the decoder); nothing it lent may be used afterwards. Idempotent.
    func close()
}

import Foundation

/// pocketvlm's typed errors, as in the Python runtime (`runtime/errors.py`), the web demo (`errors.ts`) and the
/// Android engine (`Errors.kt`): each one names the problem and the fix in one line, which the app shows instead of
/// crashing.
public protocol PocketVLMError: Error, CustomStringConvertible {
    /// What is wrong, e.g. "golden.json's sha256 does not match the manifest".
    var problem: String { get }
    /// What the user does about it, e.g. "re-export the bundle".
    var fix: String { get }
    /// "bundle error", "input error" or "inference error".
    var kind: String { get }
}

extension PocketVLMError {
    /// The one line the app shows: "kind: problem (fix)".
    public var line: String { "\(kind): \(problem) (\(fix))" }
    public var description: String { line }
}

/// The bundle is unusable: a missing or tampered file, a newer schema, a field this engine cannot read.
public struct BundleError: PocketVLMError {
    public let problem: String
    public let fix: String
    public var kind: String { "bundle error" }
    public init(_ problem: String, _ fix: String) {
        self.problem = problem
        self.fix = fix
    }
}

/// The request is unusable: an empty prompt, an image that cannot be decoded, a prompt longer than the KV cache.
public struct InputError: PocketVLMError {
    public let problem: String
    public let fix: String
    public var kind: String { "input error" }
    public init(_ problem: String, _ fix: String) {
        self.problem = problem
        self.fix = fix
    }
}

/// Core ML failed while running a component (a prediction raised, an output is missing or of the wrong type).
public struct InferenceError: PocketVLMError {
    public let problem: String
    public let fix: String
    public var kind: String { "inference error" }
    public init(_ problem: String, _ fix: String) {
        self.problem = problem
        self.fix = fix
    }
}

/// Thrown from a token callback (a `cancelled` closure answering true) to stop a generation the user cancelled.
public struct Cancelled: Error {
    public init() {}
}

/// The one line to show for any error: a pocketvlm error's own line, or an inference error wrapping a system one.
public func errorLine(_ error: Error) -> String {
    if let known = error as? PocketVLMError { return known.line }
    if error is Cancelled { return "cancelled" }
    return InferenceError("\(error.localizedDescription)", "try again; if it repeats, re-export the bundle").line
}

import Foundation

/// A static-shape encoder exported at batch 1 (`static.loop_inputs` in the manifest: Idefics3's vision encoder runs
/// one tile per call) over a batch, as the Python runtime's `run_rows` (`runtime/static_decode.py`) and the Android
/// engine's `RowLoop`: feeds that already have the signature's `shapes` go through in one call; otherwise one call
/// per row of the `loop` inputs (the other inputs passed whole), and the `outputs` concatenated along axis 0.
///
/// Refused, as in Python: loop inputs that disagree on their first dimension (`InputError`); where Python stops on a
/// missing feed, an empty batch or parts numpy cannot concatenate, this is an `InputError` (what the caller fed) or
/// an `InferenceError` (what the model gave) naming it. `inner` is lent, like every session: this closes nothing.
public final class RowLoop: ComponentSession {
    private let inner: ComponentSession
    private let loop: [String]
    private let shapes: [String: [Int]]
    private let outputs: [String]

    public init(inner: ComponentSession, loop: [String], shapes: [String: [Int]], outputs: [String]) {
        self.inner = inner
        self.loop = loop
        self.shapes = shapes
        self.outputs = outputs
    }

    public var backend: String { inner.backend }

    public func run(_ feeds: Feeds) throws -> Feeds {
        if try loop.isEmpty || shapes.allSatisfy({ try fed(feeds, $0.key).shape == $0.value }) {
            return try inner.run(feeds)
        }
        var rows = Set<Int>()
        for name in loop {
            guard let first = try fed(feeds, name).shape.first else {
                throw InputError("loop input '\(name)' is a scalar", "pass it with a batch dimension first")
            }
            rows.insert(first)
        }
        if rows.count != 1 {
            throw InputError("inputs \(loop) disagree on their first dimension: \(rows.sorted())",
                             "pass the same number of rows for each")
        }
        let count = rows.first ?? 0
        if count == 0 { throw InputError("inputs \(loop) have no rows", "pass one row or more") }
        var parts: [Feeds] = []
        parts.reserveCapacity(count)
        for index in 0..<count {
            var rowFeeds = feeds
            for name in loop {
                if let t = feeds[name] { rowFeeds[name] = row(t, index) }
            }
            parts.append(try inner.run(rowFeeds))
        }
        var result: Feeds = [:]
        for name in outputs { result[name] = try concat(name, parts) }
        return result
    }

    private func fed(_ feeds: Feeds, _ name: String) throws -> Tensor {
        guard let tensor = feeds[name] else {
            throw InputError("input '\(name)' of this static-shape component is not fed (it has " +
                             "\(feeds.keys.sorted()))", "feed every input its signature lists")
        }
        return tensor
    }

    private func row(_ t: Tensor, _ index: Int) -> Tensor {
        var shape = t.shape
        let width = t.count / shape[0]
        shape[0] = 1
        let range = (index * width)..<((index + 1) * width)
        switch t {
        case .f32(_, let data): return .f32(shape: shape, data: Array(data[range]))
        case .i64(_, let data): return .i64(shape: shape, data: Array(data[range]))
        }
    }

    /// Output `name` of every row's call along axis 0: the same dtype and trailing dims in each, as numpy needs.
    private func concat(_ name: String, _ parts: [Feeds]) throws -> Tensor {
        var present: [Tensor] = []
        for (index, part) in parts.enumerated() {
            guard let tensor = part[name] else {
                throw InferenceError("row \(index) of the batch gave no '\(name)' (it gave \(part.keys.sorted()))",
                                     "re-export the bundle")
            }
            present.append(tensor)
        }
        let first = present[0]
        for (index, part) in present.enumerated() {
            let fits = part.dtype == first.dtype && part.shape.count == first.shape.count && !part.shape.isEmpty &&
                part.shape.dropFirst() == first.shape.dropFirst()
            if !fits {
                throw InferenceError("row \(index) of the batch gave '\(name)' \(part.dtype) \(part.shape), row 0 " +
                                     "gave \(first.dtype) \(first.shape): they do not concatenate",
                                     "re-export the bundle")
            }
        }
        var shape = first.shape
        shape[0] = present.reduce(0) { $0 + $1.shape[0] }
        switch first {
        case .f32:
            var out: [Float] = []
            out.reserveCapacity(present.reduce(0) { $0 + $1.count })
            for p in present { out.append(contentsOf: try p.floats()) }
            return .f32(shape: shape, data: out)
        case .i64:
            var out: [Int64] = []
            out.reserveCapacity(present.reduce(0) { $0 + $1.count })
            for p in present { out.append(contentsOf: try p.int64s()) }
            return .i64(shape: shape, data: out)
        }
    }
}

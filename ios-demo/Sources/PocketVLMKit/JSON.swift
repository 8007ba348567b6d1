import Foundation

/// A JSON value as the kit reads it: objects keep their file order (the manifest's component order), integers stay
/// exact (`Int64`), as the Android engine's `Json.kt` reads them.
public indirect enum JSONValue {
    case object(JSONObject)
    case array([JSONValue])
    case string(String)
    case integer(Int64)
    case number(Double)
    case bool(Bool)
    case null
}

/// An insertion-ordered JSON object. Keys are told apart by their UTF-8 bytes, as Python and Rust do: Swift's
/// `String` equality is canonical equivalence ("\u{E9}" == "e\u{301}"), which would merge two distinct keys.
public struct JSONObject {
    public private(set) var entries: [(key: String, value: JSONValue)] = []
    private var index: [[UInt8]: Int] = [:]

    public init() {}

    public subscript(key: String) -> JSONValue? { index[Array(key.utf8)].map { entries[$0].value } }

    /// Sets `key` (a repeated key keeps its first place and takes the last value, as Python's json module does).
    public mutating func set(_ key: String, _ value: JSONValue) {
        if let at = index[Array(key.utf8)] {
            entries[at].value = value
        } else {
            index[Array(key.utf8)] = entries.count
            entries.append((key, value))
        }
    }
}

/// A value inside a JSON document with the path to it: a wrong or missing field is a [BundleError] naming
/// "`what` field 'path'" (e.g. "manifest field 'decoder.num_layers' is missing"). A missing field is only an error
/// when it is read: `node["a"]["b"]` of a missing `a` is a node whose accessors name 'a' as the missing field.
public struct JSONNode {
    private let value: JSONValue?  // nil: the field is missing (see `missing`)
    private let missing: String?  // the first missing field on the way here
    /// The path from the document's root, e.g. "components.text_decoder.static" ("" at the root).
    public let path: String
    /// The document, e.g. "manifest" or "golden record", for error messages.
    public let what: String

    init(_ value: JSONValue?, what: String, path: String, missing: String? = nil) {
        self.value = value
        self.what = what
        self.path = path
        self.missing = missing
    }

    /// The document in `data` (UTF-8); a syntax error is a [BundleError] naming `what` and the byte offset.
    public static func parse(_ data: Data, what: String) throws -> JSONNode {
        var parser = JSONParser(bytes: [UInt8](data), what: what)
        let value = try parser.document()
        return JSONNode(value, what: what, path: "")
    }

    private func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    private func wrong(_ expected: String) -> BundleError {
        if let missing {
            return BundleError("\(what) field '\(missing)' is missing",
                               "re-export the bundle with a pocketvlm version this app supports")
        }
        let got: String
        switch value {
        case .object: got = "an object"
        case .array: got = "a list"
        case .string: got = "a string"
        case .bool: got = "a boolean"
        case .integer(let n): got = "the number \(n)"
        case .number(let x): got = "the number \(x)"
        case .null, .none: got = "null"
        }
        return BundleError("\(what) field '\(path)' is \(got), expected \(expected)",
                           "re-export the bundle with a pocketvlm version this app supports")
    }

    /// A required field: when absent, reading the node (or anything under it) throws, naming the field.
    public subscript(key: String) -> JSONNode {
        if missing != nil { return JSONNode(nil, what: what, path: child(key), missing: missing) }
        guard case .object(let object)? = value, let found = object[key] else {
            if case .object? = value {
                return JSONNode(nil, what: what, path: child(key), missing: child(key))
            }
            return JSONNode(nil, what: what, path: child(key), missing: path.isEmpty ? what : path)
        }
        return JSONNode(found, what: what, path: child(key))
    }

    /// Item `index` of a list: out of range, reading it throws.
    public subscript(index: Int) -> JSONNode {
        let at = "\(path)[\(index)]"
        if missing != nil { return JSONNode(nil, what: what, path: at, missing: missing) }
        guard case .array(let items)? = value, items.indices.contains(index) else {
            return JSONNode(nil, what: what, path: at, missing: at)
        }
        return JSONNode(items[index], what: what, path: at)
    }

    /// An optional field: nil when absent or JSON null.
    public func opt(_ key: String) -> JSONNode? {
        guard case .object(let object)? = value, let found = object[key] else { return nil }
        if case .null = found { return nil }
        return JSONNode(found, what: what, path: child(key))
    }

    public func has(_ key: String) -> Bool { opt(key) != nil }

    public var isNull: Bool {
        if case .null? = value { return true }
        return false
    }

    public func string() throws -> String {
        guard case .string(let s)? = value else { throw wrong("a string") }
        return s
    }

    public func bool() throws -> Bool {
        guard case .bool(let b)? = value else { throw wrong("true or false") }
        return b
    }

    public func int64() throws -> Int64 {
        switch value {
        case .integer(let n)?: return n
        case .number(let x)? where x == x.rounded() && abs(x) < 9.0e15: return Int64(x)
        default: throw wrong("an integer")
        }
    }

    public func int() throws -> Int {
        let n = try int64()
        guard n >= Int64(Int32.min), n <= Int64(Int32.max) else { throw wrong("an integer in 32 bits") }
        return Int(n)
    }

    public func double() throws -> Double {
        switch value {
        case .integer(let n)?: return Double(n)
        case .number(let x)?: return x
        default: throw wrong("a number")
        }
    }

    public func float() throws -> Float { Float(try double()) }

    public func list() throws -> [JSONNode] {
        guard case .array(let items)? = value else { throw wrong("a list") }
        return items.enumerated().map { JSONNode($0.element, what: what, path: "\(path)[\($0.offset)]") }
    }

    /// The members in file order.
    public func obj() throws -> [(key: String, value: JSONNode)] {
        guard case .object(let object)? = value else { throw wrong("an object") }
        return object.entries.map { ($0.key, JSONNode($0.value, what: what, path: child($0.key))) }
    }

    public func ints() throws -> [Int] { try list().map { try $0.int() } }
    public func int64s() throws -> [Int64] { try list().map { try $0.int64() } }
    public func doubles() throws -> [Double] { try list().map { try $0.double() } }
    public func floats() throws -> [Float] { try list().map { try $0.float() } }
    public func strings() throws -> [String] { try list().map { try $0.string() } }
}

/// A strict RFC 8259 parser over UTF-8 bytes (no comments, no trailing commas, at most 256 levels deep).
struct JSONParser {
    let bytes: [UInt8]
    let what: String
    var pos = 0
    static let maxDepth = 256

    init(bytes: [UInt8], what: String) {
        self.bytes = bytes
        self.what = what
    }

    func fail(_ problem: String) -> BundleError {
        BundleError("\(what) is not valid JSON: \(problem) at byte \(pos)", "re-export the bundle")
    }

    mutating func document() throws -> JSONValue {
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { pos = 3 }  // a UTF-8 byte order mark
        let value = try parseValue(depth: 0)
        skipSpace()
        if pos != bytes.count { throw fail("trailing characters") }
        return value
    }

    mutating func skipSpace() {
        while pos < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[pos]) { pos += 1 }
    }

    mutating func parseValue(depth: Int) throws -> JSONValue {
        if depth > JSONParser.maxDepth { throw fail("nesting deeper than \(JSONParser.maxDepth)") }
        skipSpace()
        guard pos < bytes.count else { throw fail("unexpected end") }
        switch bytes[pos] {
        case UInt8(ascii: "{"): return try parseObject(depth: depth)
        case UInt8(ascii: "["): return try parseArray(depth: depth)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "n"): return try literal("null", .null)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw fail("unexpected character")
        }
    }

    mutating func literal(_ word: String, _ value: JSONValue) throws -> JSONValue {
        let want = Array(word.utf8)
        guard pos + want.count <= bytes.count, Array(bytes[pos..<pos + want.count]) == want else {
            throw fail("unexpected token")
        }
        pos += want.count
        return value
    }

    /// The members of the object or array whose opening bracket is at `pos`, up to its `close` bracket.
    mutating func members(close: UInt8, _ member: (inout JSONParser) throws -> Void) throws {
        pos += 1
        skipSpace()
        if pos < bytes.count, bytes[pos] == close {
            pos += 1
            return
        }
        while true {
            try member(&self)
            skipSpace()
            guard pos < bytes.count else { throw fail("unexpected end") }
            let c = bytes[pos]
            pos += 1
            if c == UInt8(ascii: ",") { continue }
            if c == close { return }
            pos -= 1
            throw fail("expected ',' or '\(Character(UnicodeScalar(close)))'")
        }
    }

    mutating func parseObject(depth: Int) throws -> JSONValue {
        var object = JSONObject()
        try members(close: UInt8(ascii: "}")) { parser in
            parser.skipSpace()
            guard parser.pos < parser.bytes.count, parser.bytes[parser.pos] == UInt8(ascii: "\"") else {
                throw parser.fail("expected a key")
            }
            let key = try parser.parseString()
            parser.skipSpace()
            guard parser.pos < parser.bytes.count, parser.bytes[parser.pos] == UInt8(ascii: ":") else {
                throw parser.fail("expected ':'")
            }
            parser.pos += 1
            object.set(key, try parser.parseValue(depth: depth + 1))
        }
        return .object(object)
    }

    mutating func parseArray(depth: Int) throws -> JSONValue {
        var items: [JSONValue] = []
        try members(close: UInt8(ascii: "]")) { parser in items.append(try parser.parseValue(depth: depth + 1)) }
        return .array(items)
    }

    mutating func hex4() throws -> UInt32 {
        guard pos + 4 <= bytes.count, let text = String(bytes: bytes[pos..<pos + 4], encoding: .ascii),
              let code = UInt32(text, radix: 16) else { throw fail("bad \\u escape") }
        pos += 4
        return code
    }

    mutating func parseString() throws -> String {
        pos += 1
        var out: [UInt8] = []
        while true {
            guard pos < bytes.count else { throw fail("unterminated string") }
            let c = bytes[pos]
            pos += 1
            if c == UInt8(ascii: "\"") { break }
            if c < 0x20 { throw fail("control character in a string") }
            if c != UInt8(ascii: "\\") {
                out.append(c)
                continue
            }
            guard pos < bytes.count else { throw fail("unterminated escape") }
            let e = bytes[pos]
            pos += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var code = try hex4()
                if (0xD800..<0xDC00).contains(code), pos + 6 <= bytes.count, bytes[pos] == UInt8(ascii: "\\"),
                   bytes[pos + 1] == UInt8(ascii: "u") {
                    pos += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw fail("unpaired surrogate") }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let scalar = UnicodeScalar(code) else { throw fail("unpaired surrogate") }
                out.append(contentsOf: Array(String(Character(scalar)).utf8))
            default: throw fail("bad escape")
            }
        }
        guard let text = String(bytes: out, encoding: .utf8) else { throw fail("a string that is not UTF-8") }
        return text
    }

    mutating func parseNumber() throws -> JSONValue {
        let start = pos
        var integral = true
        if bytes[pos] == UInt8(ascii: "-") { pos += 1 }
        while pos < bytes.count {
            let c = bytes[pos]
            let digit = (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c)
            let mark = c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E")
            guard digit || mark || c == UInt8(ascii: "+") || c == UInt8(ascii: "-") else { break }
            if mark { integral = false }
            pos += 1
        }
        let token = String(decoding: bytes[start..<pos], as: UTF8.self)
        if integral, let n = Int64(token) { return .integer(n) }
        guard let x = Double(token), x.isFinite else { throw fail("bad number '\(token)'") }
        return .number(x)
    }
}

/// Writes JSON for the device result file: a `[String: Any]` dictionary's keys are sorted (deterministic files), a
/// `[(String, Any?)]` list of pairs or a [JSONObject] keeps its order; numbers that are not finite become null (as
/// Python's report reads them); integers stay integers, doubles keep a decimal point.
public enum JSONWriter {
    public static func write(_ value: Any?, indent: Int = 2) -> String {
        var out = ""
        emit(value, indent: indent, level: 0, into: &out)
        return out
    }

    private static func emit(_ value: Any?, indent: Int, level: Int, into out: inout String) {
        let newline = indent > 0 ? "\n" + String(repeating: " ", count: indent * (level + 1)) : ""
        let close = indent > 0 ? "\n" + String(repeating: " ", count: indent * level) : ""
        func members(_ pairs: [(String, Any?)]) {
            out += "{"
            for (i, (key, item)) in pairs.enumerated() {
                out += (i > 0 ? "," : "") + newline
                quote(key, into: &out)
                out += indent > 0 ? ": " : ":"
                emit(item, indent: indent, level: level + 1, into: &out)
            }
            out += (pairs.isEmpty ? "" : close) + "}"
        }
        func items(_ list: [Any?]) {
            out += "["
            for (i, item) in list.enumerated() {
                out += (i > 0 ? "," : "") + newline
                emit(item, indent: indent, level: level + 1, into: &out)
            }
            out += (list.isEmpty ? "" : close) + "]"
        }
        switch value {
        case nil, is NSNull: out += "null"
        case let b as Bool: out += b ? "true" : "false"
        case let n as Int: out += String(n)
        case let n as Int64: out += String(n)
        case let n as Int32: out += String(n)
        case let n as UInt64: out += String(n)
        case let x as Float: emit(Double(x), indent: indent, level: level, into: &out)
        case let x as Double:
            if !x.isFinite {
                out += "null"
            } else if x == x.rounded(), abs(x) < 1e15 {
                out += String(Int64(x)) + ".0"
            } else {
                out += "\(x)"
            }
        case let s as String: quote(s, into: &out)
        case let object as JSONObject: members(object.entries.map { ($0.key, jsonAny($0.value)) })
        case let pairs as [(String, Any?)]: members(pairs)
        case let dict as [String: Any?]: members(dict.keys.sorted().map { ($0, dict[$0] ?? nil) })
        case let dict as [String: Any]: members(dict.keys.sorted().map { ($0, dict[$0]) })
        case let list as [Any?]: items(list)
        case let list as [Any]: items(list.map { Optional($0) })
        case let json as JSONValue: emit(jsonAny(json), indent: indent, level: level, into: &out)
        default: quote(String(describing: value!), into: &out)
        }
    }

    private static func jsonAny(_ value: JSONValue) -> Any? {
        switch value {
        case .object(let object): return object
        case .array(let items): return items.map { jsonAny($0) }
        case .string(let s): return s
        case .integer(let n): return n
        case .number(let x): return x
        case .bool(let b): return b
        case .null: return nil
        }
    }

    private static func quote(_ s: String, into out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    out += String(format: "\\u%04x", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}

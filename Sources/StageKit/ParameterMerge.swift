import Foundation
import Primitives

/// Layers JSON objects over a parameter struct's defaults and decodes the result, refusing keys
/// the struct does not have, so a misspelt parameter is an error rather than silently ignored.
public enum ParameterMerge {
    public static func jsonObject<P: Encodable>(_ value: P) throws -> [String: Any] {
        let data = try JSONEncoder().encode(value)
        return (try JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
    }

    public static func canonicalJSON(_ object: [String: Any]) throws -> String {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self)
    }

    /// Which numeric parameters take whole numbers, found from the parameter type itself: a
    /// parameter (or list) is an integer one when 2.5 does not decode where 2 does.
    public static func kinds<P: StageParameters>(_ type: P.Type) throws -> [String: ParameterKind] {
        let defaults = try jsonObject(P())
        func decodes(_ key: String, _ value: Any) -> Bool {
            var probe = defaults
            probe[key] = value
            guard let data = try? JSONSerialization.data(withJSONObject: probe) else { return false }
            do {
                _ = try JSONDecoder().decode(P.self, from: data)
                return true
            } catch is DecodingError {
                return false
            } catch {
                return true  // the value decoded; the type's own checks refused it
            }
        }
        var kinds: [String: ParameterKind] = [:]
        for (key, value) in defaults {
            let list = value as? [Any]
            guard !ParameterCheck.numbers(value).isEmpty || list?.isEmpty == true else { continue }
            let (whole, fractional): (Any, Any) = list == nil ? (2, 2.5) : ([2], [2.5])
            if decodes(key, fractional) {
                kinds[key] = .number
            } else if decodes(key, whole) {
                kinds[key] = .integer
            }
        }
        return kinds
    }

    /// The accepted values of each choice parameter (a ParameterChoice), found by decoding a value
    /// that is none of them: the refusal names them.
    public static func choices<P: StageParameters>(_ type: P.Type) throws -> [String: [String]] {
        let defaults = try jsonObject(P())
        var choices: [String: [String]] = [:]
        for (key, value) in defaults where value is String {
            var probe = defaults
            probe[key] = "\u{1}not a choice"
            guard let data = try? JSONSerialization.data(withJSONObject: probe) else { continue }
            do {
                _ = try JSONDecoder().decode(P.self, from: data)
            } catch let DecodingError.dataCorrupted(context) {
                if let invalid = context.underlyingError as? InvalidChoice { choices[key] = invalid.choices }
            } catch {}
        }
        return choices
    }

    /// A value as the user wrote it, for messages.
    static func shown(_ value: Any) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .sortedKeys]) else { return "\(value)" }
        return String(decoding: data, as: UTF8.self)
    }

    /// "3" -> 3, "true" -> true, "[1,2]" -> [1, 2], "abc" -> "abc".
    public static func parseValue(_ text: String) -> Any {
        if let data = text.data(using: .utf8),
           let value = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) {
            return value
        }
        return text
    }

    public static func merge<P: StageParameters>(_ type: P.Type, layers: [[String: Any]]) throws -> (P, String) {
        var merged = try jsonObject(P())
        let known = Set(merged.keys)
        for layer in layers {
            for (key, value) in layer {
                guard known.contains(key) else {
                    throw StageError("unknown parameter '\(key)' (known: \(known.sorted().joined(separator: ", ")))")
                }
                merged[key] = value
            }
        }
        let kinds = try kinds(P.self)
        for key in merged.keys.sorted() {
            let value = merged[key]!
            let numbers = ParameterCheck.numbers(value)
            guard !numbers.isEmpty else { continue }
            if let problem = ParameterCheck.problem(key: key, numbers: numbers, kind: kinds[key], rule: P.rules[key], shown: shown(value)) {
                throw StageError(problem)
            }
        }
        let data = try JSONSerialization.data(withJSONObject: merged, options: [.sortedKeys])
        let params: P
        do {
            params = try JSONDecoder().decode(P.self, from: data)
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            let key = context.codingPath.map(\.stringValue).joined(separator: ".")
            // NaN, inf and 1e400 are no JSON numbers, so they arrive as strings: say what they are.
            if let text = merged[key] as? String, let number = Double(text), !number.isFinite {
                throw StageError("parameter '\(key)' must be a finite number, got \(text)")
            }
            throw StageError("parameter '\(key)' has the wrong type: \(context.debugDescription)")
        } catch let DecodingError.dataCorrupted(context) {
            let key = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw StageError("parameter '\(key)' is invalid: \(context.debugDescription)")
        }
        // Re-encode so the recorded JSON is exactly what the stage will use.
        return (params, try canonicalJSON(try jsonObject(params)))
    }
}


import Foundation

/// The numbers one parameter accepts (each element, for a list), declared once per stage in
/// `StageParameters.rules`. The stage checks its merged parameters against the rules before
/// decoding them, `--describe` prints them (`param_rules`, next to each parameter's `param_kinds`),
/// and `wsss` checks a pipeline's values against the same declaration before anything runs.
public struct ParameterRule: Codable, Equatable, Sendable {
    public var min: Double?
    public var minInclusive: Bool
    public var max: Double?
    public var maxInclusive: Bool

    public init(min: Double? = nil, minInclusive: Bool = true, max: Double? = nil, maxInclusive: Bool = true) {
        self.min = min
        self.minInclusive = minInclusive
        self.max = max
        self.maxInclusive = maxInclusive
    }

    enum CodingKeys: String, CodingKey {
        case min, max, minInclusive = "min_inclusive", maxInclusive = "max_inclusive"
    }

    /// >= value.
    public static func atLeast(_ value: Double) -> ParameterRule { ParameterRule(min: value) }
    /// > 0.
    public static let positive = ParameterRule(min: 0, minInclusive: false)
    /// >= 0.
    public static let nonNegative = ParameterRule(min: 0)
    /// In [0, 1].
    public static let probability = ParameterRule(min: 0, max: 1)
    /// In (0, 1].
    public static let fraction = ParameterRule(min: 0, minInclusive: false, max: 1)
    /// In [low, high].
    public static func between(_ low: Double, _ high: Double) -> ParameterRule { ParameterRule(min: low, max: high) }

    /// The accepted range in words, e.g. "in [0, 1]", "> 0", ">= 1".
    public var range: String {
        func text(_ value: Double) -> String { value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : "\(value)" }
        switch (min, max) {
        case let (low?, high?): return "in \(minInclusive ? "[" : "(")\(text(low)), \(text(high))\(maxInclusive ? "]" : ")")"
        case let (low?, nil): return "\(minInclusive ? ">=" : ">") \(text(low))"
        case let (nil, high?): return "\(maxInclusive ? "<=" : "<") \(text(high))"
        case (nil, nil): return "any number"
        }
    }

    public func accepts(_ value: Double) -> Bool {
        guard value.isFinite else { return false }
        if let min, minInclusive ? value < min : value <= min { return false }
        if let max, maxInclusive ? value > max : value >= max { return false }
        return true
    }
}

/// What a parameter's value must be, as `--describe` tells the runner.
public enum ParameterKind: String, Codable, Sendable {
    /// A whole number (or a list of them): a fractional value is refused before the stage runs.
    case integer
    case number
}

public enum ParameterCheck {
    /// The problem with `value` for parameter `key`, or nil: a fractional value where the stage
    /// takes integers, a number outside the declared range, a non-finite number.
    public static func problem(key: String, numbers: [Double], kind: ParameterKind?, rule: ParameterRule?, shown: String) -> String? {
        if kind == .integer, let bad = numbers.first(where: { $0 != $0.rounded() || !$0.isFinite }) {
            return "parameter '\(key)' must be a whole number, got \(shown)" + (numbers.count > 1 ? " (\(bad))" : "")
        }
        if let rule, numbers.contains(where: { !rule.accepts($0) }) {
            return "parameter '\(key)' must be \(rule.range)\(numbers.count > 1 ? " (each element)" : ""), got \(shown)"
        }
        return nil
    }

    /// The numbers of a JSONSerialization value: itself, or a list's numeric elements (Bools,
    /// which JSONSerialization also hands out as NSNumber, of type "c", are not numbers).
    public static func numbers(_ value: Any) -> [Double] {
        if let number = value as? NSNumber, String(cString: number.objCType) != "c" { return [number.doubleValue] }
        if let list = value as? [Any] { return list.flatMap(numbers) }
        return []
    }
}

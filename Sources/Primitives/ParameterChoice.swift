/// A parameter with a fixed set of text values (a method, a supervision kind, ...): parsed at the
/// parameter boundary, so a wrong value fails before any work with an error listing the choices.
public protocol ParameterChoice: RawRepresentable, CaseIterable, Codable where RawValue == String {}

extension ParameterChoice {
    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let value = Self(rawValue: text) else {
            let choices = Self.allCases.map(\.rawValue)
            throw DecodingError.dataCorrupted(DecodingError.Context(
                codingPath: container.codingPath, debugDescription: "'\(text)' is not one of \(choices.joined(separator: ", "))",
                underlyingError: InvalidChoice(choices: choices)))
        }
        self = value
    }
}

/// What a ParameterChoice's refusal carries (as the decoding error's underlying error): the values
/// it accepts, so that `--describe` can list them and the runner check a pipeline's value.
public struct InvalidChoice: Error {
    public let choices: [String]
}

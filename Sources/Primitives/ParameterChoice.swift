/// A parameter with a fixed set of text values (a method, a supervision kind, ...): parsed at the
/// parameter boundary, so a wrong value fails before any work with an error listing the choices.
public protocol ParameterChoice: RawRepresentable, CaseIterable, Codable where RawValue == String {}

extension ParameterChoice {
    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let value = Self(rawValue: text) else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "'\(text)' is not one of \(Self.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self = value
    }
}

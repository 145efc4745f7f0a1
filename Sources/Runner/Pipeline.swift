import Foundation
import Yams

/// A place in a pipeline file (1-based line and column, as Yams reports them), or a pseudo-file
/// such as "--set" for values from the command line (line 0: no position).
public struct SourceLocation: Hashable, Sendable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int

    public init(file: String, line: Int = 0, column: Int = 0) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { line > 0 ? "\(file):\(line):\(column)" : file }
}

/// One problem with a pipeline, as `file:line:column: error: message`.
public struct PipelineError: Error, Equatable, CustomStringConvertible {
    public let location: SourceLocation?
    public let message: String

    public init(_ location: SourceLocation?, _ message: String) {
        self.location = location
        self.message = message
    }

    public var description: String {
        location.map { "\($0): error: \(message)" } ?? "error: \(message)"
    }
}

/// Every problem found in a pipeline: validation goes on past the first so one edit fixes all.
public struct PipelineErrors: Error, CustomStringConvertible {
    public let errors: [PipelineError]
    public init(_ errors: [PipelineError]) { self.errors = errors }
    public var description: String { errors.map(\.description).joined(separator: "\n") }
}

public enum InputSource: Hashable, Sendable, CustomStringConvertible {
    /// A file or folder, relative to the workspace unless absolute.
    case path(String)
    /// Another stage's named output.
    case stage(String, output: String)

    public var description: String {
        switch self {
        case .path(let path): return path
        case .stage(let stage, let output): return "\(stage).\(output)"
        }
    }
}

public struct InputDecl: Hashable, Sendable {
    public let name: String
    public let source: InputSource
    public let location: SourceLocation
}

public struct OutputDecl: Hashable, Sendable {
    public let name: String
    /// Normalised path relative to the workspace.
    public let path: String
    public let location: SourceLocation
}

public struct StageDecl: Sendable {
    public let name: String
    public let run: String
    public let description: String?
    public var inputs: [InputDecl]
    /// Parameters as written, with `${shared}` references resolved and `--set` applied.
    public var params: [String: JSONValue]
    public var paramLocations: [String: SourceLocation]
    public let outputs: [OutputDecl]
    public let location: SourceLocation
    public let runLocation: SourceLocation
    /// `shards: N`: run as N shard jobs and a merge (the stage must be shardable); nil: one job.
    public var shards: Int? = nil
    public var shardsLocation: SourceLocation? = nil

    /// Names of the stages this one reads from.
    public var upstream: Set<String> {
        Set(inputs.compactMap { if case .stage(let stage, _) = $0.source { return stage } else { return nil } })
    }
}

public struct Pipeline: Sendable {
    /// The file as the user named it (used in messages).
    public let file: String
    public let name: String
    public let description: String?
    public let params: [String: JSONValue]
    /// Stages in dependency order (file order wherever the dependencies allow it).
    public let stages: [StageDecl]
    /// Summary fields: name -> metric as `STAGE.KEY[.KEY...]` of a stage's JSON metrics output.
    public var summary: [(field: String, metric: String)] = []

    /// Stage names to positions in `stages` (lookups by name stay constant-time in large files).
    private let positions: [String: Int]

    public init(file: String, name: String, description: String?, params: [String: JSONValue], stages: [StageDecl]) {
        self.file = file
        self.name = name
        self.description = description
        self.params = params
        self.stages = stages
        positions = Dictionary(stages.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { first, _ in first })
    }

    public func stage(_ name: String) -> StageDecl? { positions[name].map { stages[$0] } }

    /// `name` and every stage it reads from, directly or not.
    public func withAncestors(_ name: String) -> Set<String> {
        var result: Set<String> = []
        var queue = [name]
        while let next = queue.popLast() {
            guard result.insert(next).inserted, let stage = stage(next) else { continue }
            queue += stage.upstream
        }
        return result
    }
}

/// Reads and checks a pipeline file's structure: keys, references, cycles, output clashes.
/// Checks that need the stage executables (their declared inputs, outputs and parameters) happen
/// when the pipeline is bound to a workspace (`PipelineBinder`).
public enum PipelineParser {
    static let topKeys = ["name", "description", "params", "stages", "summary"]
    static let stageKeys = ["name", "run", "description", "inputs", "params", "outputs", "shards"]
    static let identifier = try! NSRegularExpression(pattern: "^[A-Za-z_][A-Za-z0-9_-]*$")
    static let reference = try! NSRegularExpression(pattern: "^([A-Za-z_][A-Za-z0-9_-]*)\\.([A-Za-z_][A-Za-z0-9_-]*)$")
    static let sharedReference = try! NSRegularExpression(pattern: "\\$\\$|\\$\\{([A-Za-z_][A-Za-z0-9_-]*)\\}|\\$([A-Za-z_][A-Za-z0-9_]*)")

    /// Reads `file`; messages name it as `displayAs` (default: as given).
    public static func parse(file: String, displayAs: String? = nil, overrides: [String] = []) throws -> Pipeline {
        let shown = displayAs ?? file
        return try parse(text: try readText(file: file, shown: shown), file: shown, overrides: overrides)
    }

    static func readText(file: String, shown: String) throws -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: file, isDirectory: &isDirectory) else {
            throw PipelineErrors([PipelineError(SourceLocation(file: shown), "no such pipeline file")])
        }
        guard !isDirectory.boolValue else {
            throw PipelineErrors([PipelineError(SourceLocation(file: shown), "is a folder, not a pipeline file")])
        }
        // An empty file is read as empty text without Foundation's reader, which leaks its 4 KiB
        // buffer on a 0-byte file (swift-foundation, found by the FuzzPipeline target).
        let size = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? NSNumber)?.intValue
        guard let data = size == 0 ? Data() : FileManager.default.contents(atPath: file) else {
            throw PipelineErrors([PipelineError(SourceLocation(file: shown), "cannot read pipeline file")])
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw PipelineErrors([PipelineError(SourceLocation(file: shown), "pipeline file is not UTF-8 text")])
        }
        return text
    }

    public static func parse(text: String, file: String, overrides: [String] = []) throws -> Pipeline {
        let (pipeline, errors) = try parsePartially(text: text, file: file, overrides: overrides)
        guard let pipeline, errors.isEmpty else { throw PipelineErrors(errors) }
        return pipeline
    }

    /// The stages that parsed, next to every problem found (empty when the file is valid), so
    /// that later checks can add theirs to the same report. Throws only when there is nothing to
    /// check further (unreadable file, YAML syntax, no stages).
    public static func parsePartially(file: String, displayAs: String? = nil, overrides: [String] = []) throws -> (Pipeline?, [PipelineError]) {
        try parsePartially(text: try readText(file: file, shown: displayAs ?? file), file: displayAs ?? file, overrides: overrides)
    }

    static func parsePartially(text: String, file: String, overrides: [String]) throws -> (Pipeline?, [PipelineError]) {
        var parser = Parsing(file: file)
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw PipelineErrors([parser.yamlError(error)])
        }
        guard let root else {
            throw PipelineErrors([PipelineError(SourceLocation(file: file, line: 1, column: 1), "pipeline file is empty")])
        }
        let pipeline = parser.pipeline(root, overrides: overrides)
        if pipeline == nil, parser.errors.isEmpty { throw PipelineErrors([PipelineError(SourceLocation(file: file), "pipeline file holds no pipeline")]) }
        return (pipeline, parser.errors)
    }

    /// A node as written, for messages.
    static func scalarText(_ node: Node) -> String {
        if case .scalar(let scalar) = node { return scalar.string }
        return (try? Yams.serialize(node: node).trimmingCharacters(in: .whitespacesAndNewlines)) ?? "?"
    }

    static func matches(_ regex: NSRegularExpression, _ text: String) -> [String]? {
        let range = NSRange(text.startIndex..., in: text)
        guard let match = regex.firstMatch(in: text, range: range) else { return nil }
        return (0..<match.numberOfRanges).map { index in
            Range(match.range(at: index), in: text).map { String(text[$0]) } ?? ""
        }
    }

    /// "a/./b/../c" -> "a/c"; nil when the path climbs out of its base.
    static func normalise(_ path: String) -> String? {
        var parts: [Substring] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == ".." {
                if parts.isEmpty { return nil }
                parts.removeLast()
            } else {
                parts.append(part)
            }
        }
        return parts.isEmpty ? nil : parts.joined(separator: "/")
    }
}

private struct Parsing {
    let file: String
    var errors: [PipelineError] = []

    init(file: String) { self.file = file }

    func location(_ node: Node) -> SourceLocation {
        guard let mark = node.mark else { return SourceLocation(file: file) }
        return SourceLocation(file: file, line: mark.line, column: mark.column)
    }

    mutating func fail(_ node: Node?, _ message: String) {
        errors.append(PipelineError(node.map(location) ?? SourceLocation(file: file), message))
    }

    mutating func fail(_ location: SourceLocation?, _ message: String) {
        errors.append(PipelineError(location, message))
    }

    func yamlError(_ error: YamlError) -> PipelineError {
        func at(_ mark: Mark) -> SourceLocation { SourceLocation(file: file, line: mark.line, column: mark.column) }
        switch error {
        case let .scanner(context, problem, mark, yaml), let .parser(context, problem, mark, yaml), let .composer(context, problem, mark, yaml):
            var extra = context.map { " (\($0.text) at line \($0.mark.line), column \($0.mark.column))" } ?? ""
            // `{seed: ${seed}}` is the likely mistake: braces inside a flow mapping end it.
            let lines = yaml.split(separator: "\n", omittingEmptySubsequences: false)
            let suspects = [context?.mark.line, mark.line].compactMap { $0 }.filter { $0 >= 1 && $0 <= lines.count }
            if context?.text.contains("flow") == true, suspects.contains(where: { lines[$0 - 1].contains("${") }) {
                extra += "; inside { } or [ ] write a reference as $name or quote it: \"${name}\""
            }
            return PipelineError(at(mark), "invalid YAML: \(problem)\(extra)")
        case let .duplicatedKeysInMapping(duplicates, context):
            return PipelineError(at(context.mark), "key \(duplicates.sorted().map { "'\($0)'" }.joined(separator: ", ")) appears twice in one mapping")
        case let .reader(problem, offset, _, _):
            return PipelineError(SourceLocation(file: file), "cannot read YAML: \(problem)\(offset.map { " at byte \($0)" } ?? "")")
        default:
            return PipelineError(SourceLocation(file: file), "invalid YAML: \(error)")
        }
    }

    /// A mapping's pairs with string keys; reports unknown keys.
    mutating func pairs(_ node: Node, what: String, allowed: [String]?) -> [(key: String, keyNode: Node, value: Node)]? {
        guard case .mapping(let mapping) = node else {
            fail(node, "\(what) must be a mapping (key: value lines)")
            return nil
        }
        var result: [(String, Node, Node)] = []
        for (keyNode, value) in mapping {
            guard case .scalar(let scalar) = keyNode else {
                fail(keyNode, "keys of \(what) must be plain names")
                continue
            }
            let key = scalar.string
            if let allowed, !allowed.contains(key) {
                fail(keyNode, "unknown key '\(key)' in \(what) (allowed: \(allowed.joined(separator: ", ")))")
                continue
            }
            result.append((key, keyNode, value))
        }
        return result
    }

    mutating func string(_ node: Node, what: String) -> String? {
        guard case .scalar(let scalar) = node, Tag.Name(rawValue: node.tag.rawValue) != .null, !scalar.string.isEmpty else {
            fail(node, "\(what) must be a non-empty text value")
            return nil
        }
        return scalar.string
    }

    /// YAML -> JSON value, rejecting what JSON cannot carry.
    mutating func jsonValue(_ node: Node, what: String) -> JSONValue? {
        switch node {
        case .scalar(let scalar):
            switch Tag.Name(rawValue: node.tag.rawValue) {
            case .null: return .null
            case .bool: return node.bool.map(JSONValue.bool)
            case .int:
                if let int = node.int { return .int(int) }
                fail(node, "\(what): integer \(scalar.string) is out of range")
                return nil
            case .float:
                guard let double = node.float, double.isFinite else {
                    fail(node, "\(what): \(scalar.string) is not a finite number (JSON cannot carry it)")
                    return nil
                }
                return .double(double)
            default: return .string(scalar.string)
            }
        case .sequence(let sequence):
            var values: [JSONValue] = []
            for item in sequence {
                guard let value = jsonValue(item, what: what) else { return nil }
                values.append(value)
            }
            return .array(values)
        case .mapping:
            guard let members = pairs(node, what: what, allowed: nil) else { return nil }
            var object: [String: JSONValue] = [:]
            for member in members {
                guard let value = jsonValue(member.value, what: "\(what).\(member.key)") else { return nil }
                object[member.key] = value
            }
            return .object(object)
        case .alias:
            fail(node, "\(what): YAML aliases are not supported")
            return nil
        }
    }

    /// Replaces `${name}` (or `$name`) with shared parameter `name`: a value that is exactly one
    /// reference takes the parameter's type; inside longer text the parameter's text is spliced in.
    /// `$$` is a literal `$`.
    mutating func substitute(_ value: JSONValue, shared: [String: JSONValue], at location: SourceLocation, what: String) -> JSONValue? {
        switch value {
        case .string(let text):
            guard text.contains("$") else { return value }
            let matches = PipelineParser.sharedReference.matches(in: text, range: NSRange(text.startIndex..., in: text))
            func name(_ match: NSTextCheckingResult) -> String? {
                for group in 1...2 {
                    if let range = Range(match.range(at: group), in: text) { return String(text[range]) }
                }
                return nil
            }
            func lookup(_ name: String) -> JSONValue? {
                if let found = shared[name] { return found }
                fail(location, "\(what) refers to unknown shared parameter '\(name)' (shared: \(shared.keys.sorted().joined(separator: ", ")))")
                return nil
            }
            if matches.count == 1, matches[0].range == NSRange(text.startIndex..., in: text), let whole = name(matches[0]) {
                return lookup(whole)
            }
            var out = ""
            var cursor = text.startIndex
            for match in matches {
                let range = Range(match.range, in: text)!
                out += text[cursor..<range.lowerBound]
                cursor = range.upperBound
                guard let reference = name(match) else {
                    out += "$" // "$$"
                    continue
                }
                guard let replacement = lookup(reference) else { return nil }
                switch replacement {
                case .array, .object:
                    fail(location, "\(what): shared parameter '\(reference)' is a \(replacement.kindName) and cannot be spliced into text")
                    return nil
                default:
                    out += replacement.display
                }
            }
            out += text[cursor...]
            return .string(out)
        case .array(let values):
            var result: [JSONValue] = []
            for item in values {
                guard let item = substitute(item, shared: shared, at: location, what: what) else { return nil }
                result.append(item)
            }
            return .array(result)
        case .object(let members):
            var result: [String: JSONValue] = [:]
            for (key, item) in members {
                guard let item = substitute(item, shared: shared, at: location, what: "\(what).\(key)") else { return nil }
                result[key] = item
            }
            return .object(result)
        default:
            return value
        }
    }

    static func parseOverride(_ text: String) -> (target: String, value: JSONValue)? {
        guard let equals = text.firstIndex(of: "="), equals != text.startIndex else { return nil }
        let target = String(text[..<equals])
        let raw = String(text[text.index(after: equals)...])
        // The value reads like a YAML scalar: 0.2 is a number, true a boolean, anything else text.
        var scratch = Parsing(file: "--set")
        if let node = try? Yams.compose(yaml: raw), case .scalar = node, let value = scratch.jsonValue(node, what: target), scratch.errors.isEmpty {
            return (target, value)
        }
        return (target, .string(raw))
    }

    // MARK: The whole file

    mutating func pipeline(_ root: Node, overrides: [String]) -> Pipeline? {
        guard let top = pairs(root, what: "the pipeline file", allowed: PipelineParser.topKeys) else { return nil }
        let fields = Dictionary(top.map { ($0.key, $0) }, uniquingKeysWith: { first, _ in first })

        var name = ""
        if let field = fields["name"] {
            if let text = string(field.value, what: "'name'") {
                if PipelineParser.matches(PipelineParser.identifier, text) == nil {
                    fail(field.value, "pipeline name '\(text)' must be letters, digits, '-' or '_'")
                }
                name = text
            }
        } else {
            fail(root, "the pipeline has no 'name'")
        }
        var description: String?
        if let field = fields["description"] { description = string(field.value, what: "'description'") }

        // Shared parameters (taken literally: they do not refer to each other), then command-line
        // overrides of them.
        var shared: [String: JSONValue] = [:]
        if let field = fields["params"], let members = pairs(field.value, what: "'params'", allowed: nil) {
            for member in members {
                guard let value = jsonValue(member.value, what: "shared parameter '\(member.key)'") else { continue }
                shared[member.key] = value
            }
        }
        var stageOverrides: [(stage: String, param: String, value: JSONValue, text: String)] = []
        for text in overrides {
            guard let (target, value) = Self.parseOverride(text) else {
                fail(SourceLocation(file: "--set \(text)"), "expected STAGE.PARAM=VALUE or PARAM=VALUE")
                continue
            }
            if let dot = target.firstIndex(of: ".") {
                stageOverrides.append((String(target[..<dot]), String(target[target.index(after: dot)...]), value, text))
            } else if shared[target] != nil {
                shared[target] = value
            } else {
                fail(SourceLocation(file: "--set \(text)"), "no shared parameter '\(target)' (shared: \(shared.keys.sorted().joined(separator: ", "))); use STAGE.PARAM=VALUE for a stage's parameter")
            }
        }

        guard let stagesField = fields["stages"] else {
            fail(root, "the pipeline has no 'stages'")
            return nil
        }
        guard case .sequence(let stageNodes) = stagesField.value, stageNodes.count > 0 else {
            fail(stagesField.value, "'stages' must be a non-empty list of stages (each item starting with '- name:')")
            return nil
        }

        // First pass: names, so that references can be told from paths.
        var stageNames: [String: SourceLocation] = [:]
        for node in stageNodes {
            guard case .mapping(let mapping) = node, let nameNode = mapping["name"], case .scalar(let scalar) = nameNode else { continue }
            if stageNames[scalar.string] == nil { stageNames[scalar.string] = location(nameNode) }
        }

        var stages: [StageDecl] = []
        var outputOwners: [String: (stage: String, output: String, location: SourceLocation)] = [:]
        var seen: Set<String> = []
        for node in stageNodes {
            guard let stage = parseStage(node, shared: shared, stageNames: stageNames, seen: seen) else { continue }
            seen.insert(stage.name)
            for output in stage.outputs {
                if let owner = outputOwners[output.path] {
                    fail(output.location, "output path \(output.path) is already written by stage '\(owner.stage)' output '\(owner.output)' (\(owner.location)); two stages cannot write one file")
                } else {
                    outputOwners[output.path] = (stage.name, output.name, output.location)
                }
            }
            stages.append(stage)
        }

        // References: known stage, declared output; paths must not hide a dependency.
        let byName = Dictionary(stages.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        for stage in stages {
            for input in stage.inputs {
                switch input.source {
                case .stage(let upstream, let output):
                    guard let producer = byName[upstream] else { continue }
                    if !producer.outputs.contains(where: { $0.name == output }) {
                        fail(input.location, "stage '\(upstream)' has no output '\(output)' (its outputs: \(producer.outputs.map(\.name).joined(separator: ", ")))")
                    }
                case .path(let path):
                    if let normal = PipelineParser.normalise(path), let owner = outputOwners[normal] {
                        fail(input.location, "input '\(input.name)' reads \(normal), which stage '\(owner.stage)' writes; write \(owner.stage).\(owner.output) so the runner knows the dependency")
                    }
                }
            }
        }

        for override in stageOverrides {
            guard let index = stages.firstIndex(where: { $0.name == override.stage }) else {
                if stageNames[override.stage] == nil {
                    fail(SourceLocation(file: "--set \(override.text)"), "no stage '\(override.stage)' in this pipeline (stages: \(stages.map(\.name).joined(separator: ", ")))")
                }
                continue
            }
            stages[index].params[override.param] = override.value
            stages[index].paramLocations[override.param] = SourceLocation(file: "--set \(override.text)")
        }

        // Summary fields name a metric of a stage of this file.
        var summary: [(field: String, metric: String)] = []
        if let field = fields["summary"], let members = pairs(field.value, what: "'summary'", allowed: nil) {
            for member in members {
                guard let metric = string(member.value, what: "summary field '\(member.key)'") else { continue }
                let stageName = String(metric.prefix { $0 != "." })
                if !metric.contains(".") || stageNames[stageName] == nil {
                    fail(member.value, "summary field '\(member.key)' must name a metric as STAGE.KEY of a stage of this file, got '\(metric)'")
                } else {
                    summary.append((member.key, metric))
                }
            }
        }

        // With errors, the stages that did parse are still returned (in file order where a cycle
        // leaves no dependency order), so that binding can report its problems in the same pass.
        let ordered = order(stages) ?? stages
        var pipeline = Pipeline(file: file, name: name, description: description, params: shared, stages: ordered)
        pipeline.summary = summary
        return pipeline
    }

    mutating func parseStage(_ node: Node, shared: [String: JSONValue], stageNames: [String: SourceLocation], seen: Set<String>) -> StageDecl? {
        guard let members = pairs(node, what: "a stage", allowed: PipelineParser.stageKeys) else { return nil }
        let fields = Dictionary(members.map { ($0.key, $0) }, uniquingKeysWith: { first, _ in first })
        guard let nameField = fields["name"] else {
            fail(node, "a stage has no 'name'")
            return nil
        }
        guard let name = string(nameField.value, what: "a stage's 'name'") else { return nil }
        let label = "stage '\(name)'"
        var ok = true
        if PipelineParser.matches(PipelineParser.identifier, name) == nil {
            fail(nameField.value, "stage name '\(name)' must be letters, digits, '-' or '_' (no dots: 'stage.output' names an output)")
            ok = false
        }
        if seen.contains(name) {
            fail(nameField.value, "two stages are named '\(name)' (the first at \(stageNames[name]!))")
            ok = false
        }
        var run = ""
        var runLocation = location(node)
        if let field = fields["run"] {
            runLocation = location(field.value)
            if let text = string(field.value, what: "'run' of \(label)") { run = text } else { ok = false }
        } else {
            fail(node, "\(label) has no 'run' (the stage executable to run)")
            ok = false
        }
        let description = fields["description"].flatMap { string($0.value, what: "'description' of \(label)") }

        var params: [String: JSONValue] = [:]
        var paramLocations: [String: SourceLocation] = [:]
        if let field = fields["params"] {
            if let list = pairs(field.value, what: "'params' of \(label)", allowed: nil) {
                for member in list {
                    let what = "parameter '\(member.key)' of \(label)"
                    guard let raw = jsonValue(member.value, what: what),
                          let resolved = substitute(raw, shared: shared, at: location(member.value), what: what) else { ok = false; continue }
                    params[member.key] = resolved
                    paramLocations[member.key] = location(member.keyNode)
                }
            } else { ok = false }
        }

        var inputs: [InputDecl] = []
        if let field = fields["inputs"] {
            if let list = pairs(field.value, what: "'inputs' of \(label)", allowed: nil) {
                for member in list {
                    let what = "input '\(member.key)' of \(label)"
                    guard let raw = string(member.value, what: what),
                          case .string(let text)? = substitute(.string(raw), shared: shared, at: location(member.value), what: what) else { ok = false; continue }
                    let at = location(member.value)
                    if let parts = PipelineParser.matches(PipelineParser.reference, text), !text.contains("/") {
                        if stageNames[parts[1]] != nil {
                            inputs.append(InputDecl(name: member.key, source: .stage(parts[1], output: parts[2]), location: at))
                        } else {
                            fail(at, "\(what): '\(text)' names no stage of this pipeline (stages: \(stageNames.keys.sorted().joined(separator: ", "))); for a file of that name write ./\(text)")
                            ok = false
                        }
                    } else {
                        inputs.append(InputDecl(name: member.key, source: .path(text), location: at))
                    }
                }
            } else { ok = false }
        }

        var outputs: [OutputDecl] = []
        if let field = fields["outputs"] {
            if let list = pairs(field.value, what: "'outputs' of \(label)", allowed: nil) {
                for member in list {
                    let what = "output '\(member.key)' of \(label)"
                    guard let raw = string(member.value, what: what),
                          case .string(let text)? = substitute(.string(raw), shared: shared, at: location(member.value), what: what) else { ok = false; continue }
                    let at = location(member.value)
                    guard !text.hasPrefix("/"), let normal = PipelineParser.normalise(text) else {
                        fail(at, "\(what): '\(text)' must be a file path inside the workspace (relative, not climbing out with '..')")
                        ok = false
                        continue
                    }
                    if normal == "Artifacts/.cache" || normal.hasPrefix("Artifacts/.cache/") {
                        fail(at, "\(what): Artifacts/.cache belongs to the runner's store")
                        ok = false
                        continue
                    }
                    outputs.append(OutputDecl(name: member.key, path: normal, location: at))
                }
                if list.isEmpty {
                    fail(field.value, "\(label) must name at least one output")
                    ok = false
                }
            } else { ok = false }
        } else {
            fail(node, "\(label) has no 'outputs' (a stage must write at least one file)")
            ok = false
        }

        var shards: Int?
        var shardsLocation: SourceLocation?
        if let field = fields["shards"] {
            shardsLocation = location(field.value)
            if let value = jsonValue(field.value, what: "'shards' of \(label)"),
               case .int(let count) = substitute(value, shared: shared, at: location(field.value), what: "'shards' of \(label)") ?? .null, count >= 1 {
                shards = count
            } else {
                fail(field.value, "'shards' of \(label) must be a whole number >= 1 (the number of shard jobs), got '\(PipelineParser.scalarText(field.value))'")
                ok = false
            }
        }

        guard ok else { return nil }
        var stage = StageDecl(name: name, run: run, description: description, inputs: inputs, params: params,
                              paramLocations: paramLocations, outputs: outputs, location: location(nameField.value), runLocation: runLocation)
        stage.shards = shards
        stage.shardsLocation = shardsLocation
        return stage
    }

    /// Dependency order, keeping file order where possible; reports cycles. Linear in the number
    /// of stages and references (iterative, so a 50,000-stage chain does not exhaust the stack).
    mutating func order(_ stages: [StageDecl]) -> [StageDecl]? {
        var index: [String: Int] = [:]
        for (i, stage) in stages.enumerated() where index[stage.name] == nil { index[stage.name] = i }
        let upstream: [[Int]] = stages.map { stage in stage.upstream.sorted().compactMap { index[$0] } }

        // Depth-first search for a cycle, to name it (upstream in name order, as it reads).
        var state = [UInt8](repeating: 0, count: stages.count)  // 1 visiting, 2 done
        var path: [Int] = []
        var stack: [(stage: Int, next: Int)] = []
        for root in stages.indices where state[root] == 0 {
            state[root] = 1
            path.append(root)
            stack.append((root, 0))
            while let top = stack.last {
                guard top.next < upstream[top.stage].count else {
                    stack.removeLast()
                    path.removeLast()
                    state[top.stage] = 2
                    continue
                }
                stack[stack.count - 1].next += 1
                let next = upstream[top.stage][top.next]
                if state[next] == 2 { continue }
                if state[next] == 1 {
                    // The cycle reads against the dataflow; print it in dataflow order.
                    let cycle = Array(path[path.firstIndex(of: next)!...]) + [next]
                    let flow = cycle.reversed().map { stages[$0].name }
                    let input = stages[index[flow[1]]!].inputs.first { if case .stage(flow[0], _) = $0.source { return true } else { return false } }
                    fail(input?.location ?? stages[index[flow[0]]!].location, "cycle between stages: \(flow.joined(separator: " -> "))")
                    return nil
                }
                state[next] = 1
                path.append(next)
                stack.append((next, 0))
            }
        }

        // Kahn's algorithm, always taking the ready stage that comes first in the file.
        var waitingOn = upstream.map(\.count)
        var downstream = [[Int]](repeating: [], count: stages.count)
        for (i, ups) in upstream.enumerated() { for u in ups { downstream[u].append(i) } }
        var ready = MinHeap()
        for i in stages.indices where waitingOn[i] == 0 { ready.push(i) }
        var result: [StageDecl] = []
        result.reserveCapacity(stages.count)
        while let next = ready.pop() {
            result.append(stages[next])
            for d in downstream[next] {
                waitingOn[d] -= 1
                if waitingOn[d] == 0 { ready.push(d) }
            }
        }
        return result
    }
}

/// A binary min-heap of stage indices (the ready stages in file order).
struct MinHeap {
    private var items: [Int] = []

    mutating func push(_ value: Int) {
        items.append(value)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard items[child] < items[parent] else { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> Int? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        guard !items.isEmpty else { return top }
        items[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < items.count, items[left] < items[smallest] { smallest = left }
            if right < items.count, items[right] < items[smallest] { smallest = right }
            if smallest == parent { break }
            items.swapAt(parent, smallest)
            parent = smallest
        }
        return top
    }
}


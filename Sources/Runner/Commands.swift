import ArtifactStore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

// MARK: compare

/// Metrics of several pipelines side by side, and only the parameters that differ between them.
public struct Comparison: Sendable {
    public struct Row: Sendable {
        public let name: String
        /// One per pipeline; nil where that pipeline has no such metric or parameter.
        public let values: [JSONValue?]
    }

    public let pipelines: [String]
    public let files: [String]
    public let metrics: [Row]
    public let params: [Row]
    public let notes: [String]

    public var json: JSONValue {
        func rows(_ rows: [Row]) -> JSONValue {
            .array(rows.map { .object(["name": .string($0.name), "values": .array($0.values.map { $0 ?? .null })]) })
        }
        return .object([
            "pipelines": .array(zip(pipelines, files).map { .object(["name": .string($0), "file": .string($1)]) }),
            "metrics": rows(metrics), "params": rows(params), "notes": .array(notes.map(JSONValue.string)),
        ])
    }

    public var table: String {
        func cell(_ value: JSONValue?) -> String {
            guard let value else { return "-" }
            if case .double(let number) = value { return String(format: "%.4f", number) }
            return value.display
        }
        let header = [""] + pipelines
        var lines: [[String]] = [header]
        var sections: [(Int, String)] = []
        if !metrics.isEmpty {
            sections.append((lines.count, "metrics"))
            lines += metrics.map { [$0.name] + $0.values.map(cell) }
        }
        if !params.isEmpty {
            sections.append((lines.count, "parameters that differ"))
            lines += params.map { [$0.name] + $0.values.map(cell) }
        }
        let widths = (0..<header.count).map { column in lines.map { $0[column].count }.max() ?? 0 }
        var out: [String] = []
        for (index, line) in lines.enumerated() {
            if let section = sections.first(where: { $0.0 == index }) { out.append(section.1 + ":") }
            out.append(zip(line, widths).enumerated().map { column, pair in
                column == 0 ? "  " + pair.0.padding(toLength: pair.1, withPad: " ", startingAt: 0)
                    : String(repeating: " ", count: pair.1 - pair.0.count) + pair.0
            }.joined(separator: "   "))
        }
        if metrics.isEmpty { out.append("(no metrics: no evaluate stage of these pipelines has run)") }
        if params.isEmpty { out.append("(no parameters differ)") }
        out += notes.map { "note: " + $0 }
        return out.joined(separator: "\n")
    }
}

extension Runner {
    /// A stage reports metrics when it runs `evaluate` or has an output named like `metrics`;
    /// every JSON object among its outputs is read, numeric leaves flattened to `stage.key.sub`.
    static func reportsMetrics(_ stage: BoundStage) -> Bool {
        stage.decl.run == "evaluate" || (stage.decl.run as NSString).lastPathComponent == "evaluate"
            || stage.decl.outputs.contains { $0.name.lowercased().contains("metrics") }
    }

    public func compare(_ pipelines: [BoundPipeline]) throws -> Comparison {
        let names = pipelines.map(\.name)
        // Same pipeline names (a copy not yet renamed): tell the columns apart by file.
        let headers = Set(names).count == names.count ? names : pipelines.map(\.displayFile)
        var metricValues: [String: [Int: JSONValue]] = [:]
        var paramValues: [String: [Int: JSONValue]] = [:]
        var notes: [String] = []
        for (index, pipeline) in pipelines.enumerated() {
            let states = Dictionary(uniqueKeysWithValues: try status(pipeline).map { ($0.name, $0) })
            let records = self.records(for: pipeline)
            for stage in pipeline.stages where !stage.isShard {  // a sharded stage's merge speaks for it
                for (key, value) in stage.params { paramValues["\(stage.name).\(key)", default: [:]][index] = value }
                guard Self.reportsMetrics(stage) else { continue }
                // Read stored objects, not workspace paths (another pipeline may have written the
                // same path since): the current entry when the stage is up to date, else what the
                // stage last produced in this pipeline.
                let current = states[stage.name]?.state == .upToDate
                    ? states[stage.name]?.key.flatMap { JSONDecoder.decodeFile(CacheEntry.self, at: workspace.entryPath($0)) }
                    : nil
                let stored = current?.outputs.mapValues(\.hash) ?? records.stages[stage.name]?.outputs.mapValues(\.hash)
                var found = false
                for output in stage.decl.outputs {
                    let path = stored?[output.name].map { workspace.objectPath($0) } ?? workspace.path(output.path)
                    guard let data = FileManager.default.contents(atPath: path),
                          case .object(let object)? = try? JSONValue.parse(data) else { continue }
                    found = true
                    for (name, value) in Self.flatten(object, prefix: stage.name) {
                        metricValues[name, default: [:]][index] = value
                    }
                }
                if !found {
                    notes.append("\(headers[index]): stage '\(stage.name)' has no metrics yet (run the pipeline)")
                } else if states[stage.name]?.state == .stale {
                    notes.append("\(headers[index]): stage '\(stage.name)' is stale; its metrics are from its last run")
                }
            }
        }
        let metrics = metricValues.keys.sorted().map { name in
            Comparison.Row(name: name, values: pipelines.indices.map { metricValues[name]![$0] })
        }
        let params = paramValues.keys.sorted().compactMap { name -> Comparison.Row? in
            let values = pipelines.indices.map { paramValues[name]![$0] }
            return Set(values.map { $0?.canonical ?? "\u{0}" }).count > 1 ? Comparison.Row(name: name, values: values) : nil
        }
        return Comparison(pipelines: headers, files: pipelines.map(\.displayFile), metrics: metrics, params: params, notes: notes)
    }

    /// The union of the pipelines' `summary:` fields, in first-seen order (the columns of a summary).
    public static func summaryFields(_ pipelines: [BoundPipeline]) -> [String] {
        var fields: [String] = []
        for pipeline in pipelines { for (field, _) in pipeline.pipeline.summary where !fields.contains(field) { fields.append(field) } }
        return fields
    }

    /// Stage executables whose time counts as training time (`train_seconds` of a summary row).
    public static let trainingExecutables: Set<String> = ["classify-train", "seg-train", "single-stage-train", "psa-refine"]

    /// The pipelines' `summary:` fields side by side (one row per field, in first-seen order), then
    /// `train_seconds` (stages running a training executable) and `total_seconds`, with the
    /// parameters that differ: the methods-against-each-other view of `wsss compare`.
    public func compareSummaries(_ pipelines: [BoundPipeline]) throws -> Comparison {
        let full = try compare(pipelines)
        guard case .object(let top) = try summary(pipelines), case .array(let rows)? = top["rows"] else { return full }
        let fields = Self.summaryFields(pipelines)
        let objects: [[String: JSONValue]] = rows.map { if case .object(let o) = $0 { return o } else { return [:] } }
        var metrics = fields.map { field in
            Comparison.Row(name: field, values: objects.map { row in row[field].flatMap { $0 == .null ? nil : $0 } })
        }
        metrics.append(Comparison.Row(name: "train_seconds", values: objects.map { $0["train_seconds"] }))
        metrics.append(Comparison.Row(name: "total_seconds", values: objects.map { $0["total_seconds"] }))
        return Comparison(pipelines: full.pipelines, files: full.files, metrics: metrics, params: full.params, notes: full.notes)
    }

    /// One row per pipeline: its `summary:` fields (looked up among its metrics), the seconds each
    /// stage took when it last ran (the cache entry of its current key, or for a stale stage of the
    /// key it last ran with, the run its metrics come from), the training stages' share of them
    /// (`train_seconds`) and their total.
    public func summary(_ pipelines: [BoundPipeline]) throws -> JSONValue {
        var rows: [JSONValue] = []
        var notes: [String] = []
        for pipeline in pipelines {
            let comparison = try compare([pipeline])
            notes += comparison.notes
            let metrics = Dictionary(comparison.metrics.map { ($0.name, $0.values[0]) }, uniquingKeysWith: { first, _ in first })
            var row: [String: JSONValue] = ["pipeline": .string(pipeline.name), "file": .string(pipeline.displayFile)]
            for (field, metric) in pipeline.pipeline.summary {
                if let value = metrics[metric] ?? nil {
                    row[field] = value
                } else {
                    row[field] = .null
                    notes.append("\(pipeline.name): no value for summary field '\(field)' (\(metric))")
                }
            }
            var seconds: [String: JSONValue] = [:]
            var total = 0.0, training = 0.0
            let trainingStages = Set(pipeline.stages.filter { Self.trainingExecutables.contains($0.decl.run) }.map(\.name))
            let records = self.records(for: pipeline)
            for state in try status(pipeline) {
                // A stale stage counts its last run, as its metrics do (compare's note says so).
                let key = state.state == .upToDate ? state.key : records.stages[state.name]?.key
                guard let key, let entry = JSONDecoder.decodeFile(CacheEntry.self, at: workspace.entryPath(key)) else { continue }
                seconds[state.name] = .double((entry.seconds * 100).rounded() / 100)
                total += entry.seconds
                if trainingStages.contains(state.name) { training += entry.seconds }
            }
            row["stage_seconds"] = .object(seconds)
            row["train_seconds"] = .double((training * 100).rounded() / 100)
            row["total_seconds"] = .double((total * 100).rounded() / 100)
            rows.append(.object(row))
        }
        return .object(["rows": .array(rows), "notes": .array(notes.map(JSONValue.string))])
    }

    /// Differences between a summary and recorded values: `{"tolerance": T, "rows": {PIPELINE:
    /// {FIELD: VALUE}}}`. Every recorded field must be present and within T (absolute) of its value.
    public static func checkSummary(_ summary: JSONValue, against expected: JSONValue) -> [String] {
        guard case .object(let top) = expected, case .object(let expectedRows)? = top["rows"],
              let tolerance = top["tolerance"]?.doubleValue else {
            return ["expected values must be {\"tolerance\": number, \"rows\": {pipeline: {field: number}}}"]
        }
        var rows: [String: [String: JSONValue]] = [:]
        if case .object(let document) = summary, case .array(let list)? = document["rows"] {
            for case .object(let row) in list { if case .string(let name)? = row["pipeline"] { rows[name] = row } }
        }
        var problems: [String] = []
        for pipeline in expectedRows.keys.sorted() {
            guard case .object(let fields) = expectedRows[pipeline]! else { continue }
            guard let row = rows[pipeline] else { problems.append("\(pipeline): no such pipeline in the summary"); continue }
            for field in fields.keys.sorted() {
                guard let want = fields[field]!.doubleValue else { continue }
                guard let got = row[field]?.doubleValue else { problems.append("\(pipeline).\(field): missing, expected \(want)"); continue }
                if abs(got - want) > tolerance {
                    problems.append("\(pipeline).\(field): \(got), expected \(want) ± \(tolerance)")
                }
            }
        }
        return problems
    }

    /// The summary as a Markdown table; with a `fully-supervised` row, each row's `seg_val_miou`
    /// also appears as a fraction of that bound.
    public static func summaryMarkdown(_ summary: JSONValue, fields: [String]) -> String {
        guard case .object(let top) = summary, case .array(let rows)? = top["rows"] else { return "" }
        func object(_ v: JSONValue) -> [String: JSONValue] { if case .object(let o) = v { return o }; return [:] }
        func number(_ v: JSONValue?) -> Double? {
            switch v { case .double(let d)?: return d; case .int(let i)?: return Double(i); default: return nil }
        }
        let bound = rows.map(object).first { $0["pipeline"] == .string("fully-supervised") }.flatMap { number($0["seg_val_miou"]) }
        var header = ["pipeline"] + fields
        if bound != nil { header.append("seg / fully supervised") }
        header += ["train (s)", "time (s)"]
        var lines = ["| " + header.joined(separator: " | ") + " |", "|" + String(repeating: " --- |", count: header.count)]
        for row in rows.map(object) {
            var cells: [String] = []
            if case .string(let name)? = row["pipeline"] { cells.append(name) } else { cells.append("?") }
            for field in fields { cells.append(number(row[field]).map { String(format: "%.3f", $0) } ?? "–") }
            if let bound { cells.append(number(row["seg_val_miou"]).map { String(format: "%.2f", $0 / bound) } ?? "–") }
            cells.append(number(row["train_seconds"]).map { String(format: "%.0f", $0) } ?? "–")
            cells.append(number(row["total_seconds"]).map { String(format: "%.0f", $0) } ?? "–")
            lines.append("| " + cells.joined(separator: " | ") + " |")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func flatten(_ object: [String: JSONValue], prefix: String) -> [(String, JSONValue)] {
        var result: [(String, JSONValue)] = []
        for key in object.keys.sorted() {
            let name = prefix + "." + key
            switch object[key]! {
            case .int, .double: result.append((name, object[key]!))
            case .object(let inner): result += flatten(inner, prefix: name)
            default: continue
            }
        }
        return result
    }
}

// MARK: show

extension Runner {
    /// A description of one artifact: kind, producer, parameters, inputs (and which outputs they
    /// were), arrays with shapes, and which cached stage made it.
    public func show(_ path: String) throws -> String {
        let absolute = Workspace.absolute(path, base: FileManager.default.currentDirectoryPath)
        guard let stamp = FileStamp.of(absolute) else { throw RunnerError("\(path): no such file") }
        guard stamp.isRegular else { throw RunnerError("\(path): not a file") }
        let hash = try memory.hash(of: absolute)
        var lines = ["\(workspace.display(absolute))", "  content: \(hash) (\(Self.bytes(stamp.size)))"]

        let producers = cacheOrigins(of: hash)
        for producer in producers { lines.append("  made by: \(producer)") }
        if producers.isEmpty { lines.append("  made by: (not in this workspace's cache)") }

        var handle = Data()
        if let file = FileHandle(forReadingAtPath: absolute) {
            handle = (try? file.read(upToCount: 32)) ?? Data()
            try? file.close()
        }
        if handle.starts(with: [0x89, 0x48, 0x44, 0x46]) || handle.starts(with: Data(Seal.magic.utf8)) {
            lines += try describeHDF5(absolute)
        } else if handle.starts(with: [0x89, 0x50, 0x4E, 0x47]), handle.count >= 24 {
            let width = handle[16..<20].reduce(0) { $0 << 8 | Int($1) }
            let height = handle[20..<24].reduce(0) { $0 << 8 | Int($1) }
            lines.append("  PNG image, \(width) x \(height)")
        } else if stamp.size < 16 << 20, let first = handle.first(where: { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }),
                  first == UInt8(ascii: "{") || first == UInt8(ascii: "["),
                  let data = FileManager.default.contents(atPath: absolute), let value = try? JSONValue.parse(data) {
            lines.append("  JSON:")
            let pretty = (try? encodePretty(value)).map { String(decoding: $0, as: UTF8.self) } ?? value.canonical
            lines += pretty.split(separator: "\n").map { "    " + $0 }
        }
        try? memory.save()
        return lines.joined(separator: "\n")
    }

    func describeHDF5(_ path: String) throws -> [String] {
        // Damage (a broken seal, a file libhdf5 cannot open) is an error; a sound HDF5 file without
        // our provenance (pretrained weights, a file from h5py) is listed as what it is.
        let root = try HDF5File.open(path).root
        guard let reader = try? ArtifactReader(path: path, kind: nil) else {
            var lines = ["  not an artifact of this toolbox (no complete provenance)"]
            lines += try describeContents(root, standard: [])
            return lines
        }
        let provenance = reader.provenance
        var lines = [
            "  kind: \(provenance.kind) (format version \(provenance.formatVersion))",
            "  producer: \(provenance.producer)",
            "  created: \(provenance.createdAt)",
        ]
        if let params = try? JSONValue.parse(Data(provenance.paramsJSON.utf8)), case .object(let members) = params, !members.isEmpty {
            lines.append("  params:")
            for key in members.keys.sorted() { lines.append("    \(key): \(members[key]!.canonical)") }
        } else {
            lines.append("  params: (none)")
        }
        if provenance.inputs.isEmpty {
            lines.append("  inputs: (none)")
        } else {
            lines.append("  inputs:")
            for name in provenance.inputs.keys.sorted() {
                let hash = provenance.inputs[name]!
                let origin = cacheOrigins(of: hash).first.map { " <- \($0)" } ?? ""
                lines.append("    \(name): \(hash)\(origin)")
            }
        }
        lines += try describeContents(reader.root, standard: ["kind", "format_version", "producer", "params", "inputs", "created_at"])
        return lines
    }

    /// The arrays of a file and its root attributes other than `standard`.
    func describeContents(_ root: HDF5Group, standard: Set<String>) throws -> [String] {
        var lines: [String] = []
        let datasets = try root.datasetSummaries()
        lines.append("  arrays:")
        let width = datasets.map(\.path.count).max() ?? 0
        for dataset in datasets {
            let shape = "[" + dataset.shape.map(String.init).joined(separator: ", ") + "]"
            lines.append("    \(dataset.path.padding(toLength: width, withPad: " ", startingAt: 0))  \(dataset.type.padding(toLength: 8, withPad: " ", startingAt: 0)) \(shape)  \(Self.bytes(Int64(dataset.storedBytes))) stored")
        }
        if datasets.isEmpty { lines.append("    (none)") }
        let extra = root.attributeNames().filter { !standard.contains($0) }.sorted()
        if !extra.isEmpty {
            lines.append("  attributes:")
            for name in extra {
                var value = root.attributeText(name) ?? "?"
                // Long JSON blobs (statistics) would drown the listing; h5dump shows them whole.
                if value.count > 160 { value = String(value.prefix(157)) + "..." }
                lines.append("    \(name): \(value)")
            }
        }
        return lines
    }

    /// "stage 'data' output 'dataset' of Pipelines/ci.yaml" for every record holding this content.
    func cacheOrigins(of hash: String) -> [String] {
        var origins: [String] = []
        for records in allRecords().sorted(by: { $0.pipeline < $1.pipeline }) {
            for record in records.stages.values.sorted(by: { $0.stage < $1.stage }) {
                for (name, output) in record.outputs.sorted(by: { $0.key < $1.key }) where output.hash == hash {
                    origins.append("stage '\(record.stage)' (\(record.run)) output '\(name)' of \(records.pipeline), key \(record.key.prefix(12))")
                }
            }
        }
        return origins
    }

    static func bytes(_ count: Int64) -> String {
        let units = ["B", "KB", "MB", "GB", "TB"]
        var value = Double(count)
        var unit = 0
        while value >= 1000 && unit < units.count - 1 {
            value /= 1000
            unit += 1
        }
        return unit == 0 ? "\(count) B" : String(format: "%.1f %@", value, units[unit])
    }
}

// MARK: gc

public struct GCReport: Sendable {
    public let dryRun: Bool
    public let keptEntries: Int
    public let removedEntries: [String]
    public let removedObjects: [String]
    public let removedRecords: [String]
    public let freedBytes: Int64

    public var summary: String {
        let verb = dryRun ? "would remove" : "removed"
        return "wsss gc: \(verb) \(removedEntries.count) cache entr\(removedEntries.count == 1 ? "y" : "ies") and \(removedObjects.count) stored file\(removedObjects.count == 1 ? "" : "s") (\(Runner.bytes(freedBytes))); kept \(keptEntries) entr\(keptEntries == 1 ? "y" : "ies") that pipelines in Pipelines/ use"
    }
}

extension Runner {
    /// Every pipeline file in the workspace's `Pipelines/` folder.
    public func workspacePipelines() -> [String] {
        let folder = workspace.root + "/Pipelines"
        guard let walker = FileManager.default.enumerator(atPath: folder) else { return [] }
        var files: [String] = []
        while let relative = walker.nextObject() as? String {
            if relative.hasSuffix(".yaml") || relative.hasSuffix(".yml") { files.append(folder + "/" + relative) }
        }
        return files.sorted()
    }

    /// Removes cache entries that no pipeline in `Pipelines/` uses: neither the current key of one
    /// of its stages nor the last recorded key (what its workspace files are). Refuses when a
    /// pipeline there cannot be read, since then it cannot tell what that pipeline needs.
    public func gc(dryRun: Bool, wait: WorkspaceLock.Wait = .wait) throws -> GCReport {
        let lock = dryRun ? nil : try WorkspaceLock(workspace, purpose: "gc", wait: wait) { console.line($0) }
        defer { withExtendedLifetime(lock) {} }
        var keep: Set<String> = []
        var live: Set<String> = []
        for file in workspacePipelines() {
            let pipeline: BoundPipeline
            do {
                pipeline = try load(file)
            } catch {
                throw RunnerError("cannot tell what \(workspace.display(file)) needs, so nothing was removed:\n\(error)")
            }
            live.insert(workspace.recordsPath(pipelineFile: pipeline.file))
            for stage in try status(pipeline) { if let key = stage.key { keep.insert(key) } }
            for record in records(for: pipeline).stages.values where pipeline.stage(record.stage) != nil {
                keep.insert(record.key)
            }
        }
        let fm = FileManager.default
        var removedEntries: [String] = []
        var keptEntries = 0
        var keptObjects: Set<String> = []
        for name in (try? fm.contentsOfDirectory(atPath: workspace.entriesDir)) ?? [] where name.hasSuffix(".json") {
            let key = String(name.dropLast(5))
            let path = workspace.entriesDir + "/" + name
            if keep.contains(key), let entry = JSONDecoder.decodeFile(CacheEntry.self, at: path) {
                keptEntries += 1
                for output in entry.outputs.values { keptObjects.insert(workspace.objectPath(output.hash)) }
            } else {
                removedEntries.append(key)
                if !dryRun { unlink(path) }
            }
        }
        var removedObjects: [String] = []
        var freed: Int64 = 0
        for prefix in (try? fm.contentsOfDirectory(atPath: workspace.objectsDir)) ?? [] {
            let folder = workspace.objectsDir + "/" + prefix
            for name in (try? fm.contentsOfDirectory(atPath: folder)) ?? [] {
                let path = folder + "/" + name
                if keptObjects.contains(path) { continue }
                let stamp = FileStamp.of(path)
                removedObjects.append(path)
                freed += stamp?.size ?? 0
                if !dryRun { unlink(path) }
            }
            if !dryRun { rmdir(folder) } // only succeeds when empty
        }
        // Records of pipeline files that no longer exist.
        var removedRecords: [String] = []
        for name in (try? fm.contentsOfDirectory(atPath: workspace.recordsDir)) ?? [] where name.hasSuffix(".json") {
            let path = workspace.recordsDir + "/" + name
            if live.contains(path) { continue }
            if let records = JSONDecoder.decodeFile(PipelineRecords.self, at: path),
               FileStamp.of(workspace.path(records.pipeline)) != nil { continue }
            removedRecords.append(path)
            if !dryRun { unlink(path) }
        }
        if !dryRun {
            removeLeftovers()
            _ = memory.prune()
            try? memory.save()
        }
        return GCReport(dryRun: dryRun, keptEntries: keptEntries, removedEntries: removedEntries.sorted(), removedObjects: removedObjects.sorted(),
            removedRecords: removedRecords.sorted(), freedBytes: freed)
    }
}

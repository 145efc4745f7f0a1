import Foundation

/// What a pipeline's stages have produced, for readers of results (`wsss report`): per stage
/// whether its outputs are current, the stored files that hold them (content hash and the
/// read-only object in the cache) and how long the stage took when it made them, from the
/// runner's cache entry (artifacts hold no wall-clock times).
public struct StageProducts: Sendable {
    public enum State: String, Sendable {
        /// Up to date: the outputs of the stage's current key.
        case current
        /// The pipeline changed since: the outputs of the stage's last recorded run.
        case stale
        /// No run of this stage is recorded (or its stored outputs are gone).
        case notRun = "not run"
    }

    public struct Output: Sendable {
        public let name: String
        /// The output's path in the pipeline file (workspace-relative).
        public let path: String
        /// The stored object holding the content (read it rather than `path`, which another
        /// pipeline may have overwritten since).
        public let stored: String
        public let hash: String
    }

    public let stage: BoundStage
    public let state: State
    /// Why the stage is stale or has not run (from `status`).
    public let reasons: [String]
    public let outputs: [String: Output]
    /// Seconds the stage ran for, from the cache entry the outputs come from.
    public let seconds: Double?
    /// That cache entry's key (the file `Artifacts/.cache/entries/KEY.json`).
    public let entryKey: String?

    public var name: String { stage.name }
}

extension Runner {
    /// The workspace-relative path of a cache entry (where a stage's `seconds` are recorded).
    public func entryDisplayPath(_ key: String) -> String { workspace.display(workspace.entryPath(key)) }

    /// Every stage of `pipeline` with what it produced: the current cache entry when the stage is
    /// up to date, else the outputs its last recorded run stored (while they are still stored).
    public func products(_ pipeline: BoundPipeline) throws -> [StageProducts] {
        let states = Dictionary(uniqueKeysWithValues: try status(pipeline).map { ($0.name, $0) })
        let records = self.records(for: pipeline)
        func entry(_ key: String?) -> CacheEntry? {
            key.flatMap { JSONDecoder.decodeFile(CacheEntry.self, at: workspace.entryPath($0)) }
        }
        return pipeline.stages.map { stage in
            let status = states[stage.name]
            var state = StageProducts.State.notRun
            var key: String?
            var hashes: [String: String] = [:]
            if status?.state == .upToDate, let current = entry(status?.key) {
                (state, key, hashes) = (.current, current.key, current.outputs.mapValues(\.hash))
            } else if let record = records.stages[stage.name] {
                (state, key, hashes) = (.stale, record.key, record.outputs.mapValues(\.hash))
            }
            var outputs: [String: StageProducts.Output] = [:]
            for output in stage.decl.outputs {
                guard let hash = hashes[output.name], FileStamp.of(workspace.objectPath(hash))?.isRegular == true else { continue }
                outputs[output.name] = StageProducts.Output(name: output.name, path: output.path, stored: workspace.objectPath(hash), hash: hash)
            }
            var reasons = status?.reasons ?? []
            if state != .notRun && outputs.isEmpty {
                reasons.append("the outputs of its last run are no longer stored (wsss gc)")
                state = .notRun
            }
            let seconds = state == .notRun ? nil : entry(key)?.seconds
            return StageProducts(stage: stage, state: state, reasons: reasons, outputs: outputs, seconds: seconds,
                                 entryKey: seconds == nil ? nil : key)
        }
    }
}

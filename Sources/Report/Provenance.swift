import ArtifactStore
import Foundation
import Runner

/// Where the report's numbers and pictures came from: each source gets a number, which the page
/// cites next to every value ([n]) and lists at the end with its content hash.
final class Provenance {
    struct Source {
        var number: Int
        /// What it is: an artifact's path in the pipeline file, a cache entry, a file.
        var what: String
        /// `sha256:…` of the content, or `key …` for a cache entry.
        var hash: String
        /// "PIPELINE: stage.output" for each use.
        var uses: [String]
    }

    private(set) var sources: [Source] = []
    private var byKey: [String: Int] = [:]

    private func add(key: String, what: String, hash: String, use: String) -> Int {
        if let index = byKey[key] {
            if !sources[index].uses.contains(use) { sources[index].uses.append(use) }
            if !sources[index].what.split(separator: "\n").contains(Substring(what)) { sources[index].what += "\n" + what }
            return sources[index].number
        }
        sources.append(Source(number: sources.count + 1, what: what, hash: hash, uses: [use]))
        byKey[key] = sources.count - 1
        return sources.count
    }

    /// A stage output (by its content hash).
    func artifact(_ output: StageProducts.Output, pipeline: String, stage: String) -> Int {
        add(key: output.hash, what: output.path, hash: output.hash, use: "\(pipeline): \(stage).\(output.name)")
    }

    /// The cache entry a stage's time comes from.
    func entry(_ key: String, path: String, pipeline: String, stage: String) -> Int {
        add(key: "entry:" + key, what: path, hash: "key " + key, use: "\(pipeline): \(stage) (seconds)")
    }

    /// A file outside the cache (a pipeline file, make compare's compare.json).
    func file(_ path: String, shown: String, use: String) -> Int? {
        guard let hash = try? ContentHash.ofFile(path) else { return nil }
        return add(key: hash, what: shown, hash: hash, use: use)
    }

    var table: String {
        HTML.table(id: "provenance", header: ["#", "file", "content hash (or cache key)", "used for"], rows: sources.map { source in
            [#"<td id="src-\#(source.number)" class="num">\#(source.number)</td>"#,
             HTML.cell(source.what.split(separator: "\n").map { "<code>\(HTML.escape(String($0)))</code>" }.joined(separator: "<br>")),
             HTML.cell(#"<span class="hash">\#(HTML.escape(source.hash))</span>"#),
             HTML.cell(source.uses.map(HTML.escape).joined(separator: "<br>"))]
        })
    }
}

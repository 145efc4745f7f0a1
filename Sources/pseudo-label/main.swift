import ArtifactStore
import Datasets
import Foundation
import Imaging
import Localization
import StageKit

struct Params: StageParameters {
    static let rules: [String: ParameterRule] = [
        "high_background": .probability, "low_background": .probability, "downscale": .atLeast(1),
        "par_dilations": .atLeast(1), "par_iterations": .nonNegative, "par_w1": .nonNegative, "par_w2": .nonNegative,
        "samples": .nonNegative,
    ]
    var highBackground: Float = 0.55
    var lowBackground: Float = 0.35
    /// Resolution divisor at which PAR runs (the references halve).
    var downscale = 2
    var parIterations = 10
    var parDilations = [1, 2, 4, 8, 12, 24]
    var parW1: Float = 0.3
    var parW2: Float = 0.01
    /// Images drawn in the samples picture.
    var samples = 8

    enum CodingKeys: String, CodingKey {
        case highBackground = "high_background", lowBackground = "low_background", downscale
        case parIterations = "par_iterations", parDilations = "par_dilations", parW1 = "par_w1", parW2 = "par_w2", samples
    }
    init() {}

    var labeller: ConfidentLabels {
        var l = ConfidentLabels()
        l.highBackground = highBackground
        l.lowBackground = lowBackground
        l.downscale = downscale
        l.par.iterations = parIterations
        l.par.dilations = parDilations
        l.par.w1 = parW1
        l.par.w2 = parW2
        return l
    }
}

let spec = StageSpec(
    name: "pseudo-label", version: "0.1.0",
    summary: "Turns class maps into label maps {class, 0 background, 255 uncertain} with PAR and two background scores.",
    inputs: ["dataset", "cams"], outputs: ["labels", "samples"],
    resources: StageResources(threads: 2, memoryMB: 4096, runtimeMinutes: 120), shardable: true)

/// The labels joined; the samples picture is shard 0's (it draws the first images of the split).
func mergeShards(_ ctx: ShardMergeContext<Params>) throws {
    try MapShards.merge(ctx.parts("labels"), to: ctx.pendingOutput("labels").temporaryPath)
    try ctx.takeFirstPart("samples")
}

StageMain.run(spec, parameters: Params.self, merge: mergeShards) { ctx in
    let p = ctx.params
    guard p.lowBackground < p.highBackground else { throw StageError("low_background (\(p.lowBackground)) must be below high_background (\(p.highBackground))") }
    guard p.downscale >= 1, p.parIterations >= 0, !p.parDilations.isEmpty, p.parDilations.allSatisfy({ $0 >= 1 }) else {
        throw StageError("downscale and par_dilations must be >= 1 and par_iterations >= 0")
    }
    let dataset = try DatasetReader(path: ctx.input("dataset"))
    let (maps, split) = try dataset.classMaps(at: ctx.input("cams"), datasetHash: try ctx.inputContentHashes()["dataset"]!)
    let labeller = p.labeller

    let writer = try LabelMapsWriter(try ctx.createArtifact("labels", kind: .labels), context: maps.context)
    var pictures: [RGBImage] = []
    var labelled = 0, total = 0
    let part = ctx.shardRange(of: maps.count)
    let progress = ProgressReporter("pseudo-label", total: part.count, unit: "img")
    for n in part {
        let index = maps.imageIndices[n]
        let image = try split.image(index)
        let labels = labeller.labels(image: image, maps: try maps.maps(n))
        try writer.append(imageIndex: index, height: image.height, width: image.width, labels: labels)
        labelled += labels.reduce(0) { $0 + ($1 == ConfidentLabels.ignore ? 0 : 1) }
        total += labels.count
        if pictures.count < p.samples {
            let map = LabelMap(width: image.width, height: image.height, labels: labels)
            pictures.append(RGBImage.hstack([image, map.colorized(), image.overlaid(with: map, alpha: 0.5)]))
        }
        progress.advance()
    }
    let picture = ctx.pendingOutput("samples")
    try PNG.write(pictures.isEmpty ? RGBImage(width: 1, height: 1) : RGBImage.grid(pictures, columns: 2, gap: 6, margin: true), to: picture.temporaryPath)
    try writer.finish()
    try ctx.commitOutputs()
    print("pseudo-label: \(part.count) images of split '\(split.name)', \(String(format: "%.1f", 100 * Double(labelled) / Double(max(total, 1))))% of pixels labelled")
}

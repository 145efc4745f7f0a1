import ArtifactStore
import Datasets
import Foundation
import Imaging
import Primitives
import StageKit

/// Builds the dataset artifact every later stage reads, from one of three sources:
/// - "fashion-scenes": composed scenes of Fashion-MNIST objects on cluttered backgrounds with exact
///   masks (train scenes from the train file, val scenes from t10k);
/// - "idx": the same composition from any IDX image/label pair plus a class-names file;
/// - "voc": a PASCAL VOC-layout folder (JPEGImages, SegmentationClass, ImageSets/Segmentation).
/// Where the images come from: composed Fashion-MNIST scenes, any IDX pair, or a VOC-layout folder.
enum Source: String, ParameterChoice {
    case fashionScenes = "fashion-scenes", idx, voc
}

struct Params: StageParameters {
    static let rules: [String: ParameterRule] = [
        "image_size": .between(8, 4096), "train_count": .atLeast(1), "val_count": .atLeast(1), "seed": .nonNegative,
        "classes_min": .atLeast(1), "classes_max": .atLeast(1), "objects_min": .atLeast(1), "objects_max": .atLeast(1),
        "object_min_fraction": .fraction, "object_max_fraction": .fraction, "object_shade_floor": .probability,
        "background_noise": .nonNegative, "max_blobs": .nonNegative, "min_visible_pixels": .nonNegative,
        "compression_level": .between(0, 22), "contact_sheet_samples": .atLeast(1),
    ]
    var source = Source.fashionScenes
    var fashionMNISTDir = ObjectSource.defaultFashionMNISTDirectory
    var idxTrainImages = ""
    var idxTrainLabels = ""
    var idxValImages = ""
    var idxValLabels = ""
    /// One class name per line; required for "idx", optional for "voc" (default: VOC's 20 classes).
    var classNamesFile = ""
    var vocRoot = ""
    var vocTrainList = "train"
    var vocValList = "val"
    var imageSize = 64
    var trainCount = 4000
    var valCount = 1000
    var objectsMin = 1
    var objectsMax = 3
    var classesMin = 1
    var classesMax = 3
    var objectMinFraction = 0.3125
    var objectMaxFraction = 0.625
    var minVisiblePixels = 20
    var objectShadeFloor = 0.25
    var backgroundNoise = 6.0
    var maxBlobs = 4
    var seed = 0
    /// zstd level 1...22, or 0 for no compression.
    var compressionLevel = 3
    var contactSheetSamples = 8

    enum CodingKeys: String, CodingKey {
        case source, seed
        case fashionMNISTDir = "fashion_mnist_dir"
        case idxTrainImages = "idx_train_images", idxTrainLabels = "idx_train_labels"
        case idxValImages = "idx_val_images", idxValLabels = "idx_val_labels"
        case classNamesFile = "class_names_file"
        case vocRoot = "voc_root", vocTrainList = "voc_train_list", vocValList = "voc_val_list"
        case imageSize = "image_size", trainCount = "train_count", valCount = "val_count"
        case objectsMin = "objects_min", objectsMax = "objects_max", classesMin = "classes_min", classesMax = "classes_max"
        case objectMinFraction = "object_min_fraction", objectMaxFraction = "object_max_fraction"
        case minVisiblePixels = "min_visible_pixels", objectShadeFloor = "object_shade_floor"
        case backgroundNoise = "background_noise", maxBlobs = "max_blobs"
        case compressionLevel = "compression_level", contactSheetSamples = "contact_sheet_samples"
    }

    init() {}

    var sceneConfig: SceneConfig {
        var config = SceneConfig()
        config.width = imageSize
        config.height = imageSize
        config.objectsMin = objectsMin
        config.objectsMax = objectsMax
        config.classesMin = classesMin
        config.classesMax = classesMax
        config.objectMinFraction = objectMinFraction
        config.objectMaxFraction = objectMaxFraction
        config.minVisiblePixels = minVisiblePixels
        config.objectShadeFloor = Float(objectShadeFloor)
        config.backgroundNoise = Float(backgroundNoise)
        config.maxBlobs = maxBlobs
        return config
    }
}

let spec = StageSpec(
    name: "prepare-data", version: "1.0.0",
    summary: "Builds the dataset artifact (composed Fashion-MNIST scenes, IDX objects, or a VOC-layout folder) and a contact sheet.",
    inputs: [], outputs: ["dataset", "contact_sheet"],
    resources: StageResources(threads: 1, memoryMB: 4096, runtimeMinutes: 60))

/// Paths and content hashes of the files a source reads (they are not stage inputs, so the
/// provenance would not otherwise name them).
func describeFiles(_ paths: [String: String]) throws -> String {
    var object: [String: [String: String]] = [:]
    for (role, path) in paths {
        object[role] = ["path": path, "sha256": try ContentHash.ofFile(path)]
    }
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    return String(decoding: data, as: UTF8.self)
}

/// One cell of the contact sheet: the image and its mask overlay, at most `box` pixels a side.
func sheetCell(_ sample: Sample, box: Int = 160) -> RGBImage {
    var image = sample.image, mask = sample.mask
    let side = max(image.width, image.height)
    if side <= box {
        let k = box / side
        image = image.resizedNearest(width: image.width * k, height: image.height * k)
        mask = mask.resizedNearest(width: mask.width * k, height: mask.height * k)
    } else {
        let (w, h) = (max(1, image.width * box / side), max(1, image.height * box / side))
        image = image.resizedBilinear(width: w, height: h)
        mask = mask.resizedNearest(width: w, height: h)
    }
    return RGBImage.hstack([image, image.overlaid(with: mask, alpha: 0.6)], gap: 2)
}

func megabytes(_ bytes: Int64) -> String { String(format: "%.1f MB", Double(bytes) / 1e6) }

StageMain.run(spec, parameters: Params.self) { ctx in
    let p = ctx.params
    let started = Date()
    guard (0...22).contains(p.compressionLevel) else { throw StageError("compression_level must be 0...22, got \(p.compressionLevel)") }
    guard p.contactSheetSamples >= 1 else { throw StageError("contact_sheet_samples must be at least 1") }
    let compression: Compression = p.compressionLevel == 0 ? .none : .zstd(level: Int32(p.compressionLevel))
    let seed = UInt64(bitPattern: Int64(p.seed))

    let source: SampleSource
    var sourceFiles: [String: String] = [:]
    var splitObjectFiles: [String: (images: String, labels: String)] = [:]
    switch p.source {
    case .fashionScenes, .idx:
        let train: ObjectSource, val: ObjectSource
        if p.source == .fashionScenes {
            ctx.log.info("loading Fashion-MNIST objects from \(p.fashionMNISTDir)")
            train = try ObjectSource.fashionMNIST(directory: p.fashionMNISTDir, part: "train")
            val = try ObjectSource.fashionMNIST(directory: p.fashionMNISTDir, part: "t10k")
        } else {
            for (key, value) in [("idx_train_images", p.idxTrainImages), ("idx_train_labels", p.idxTrainLabels),
                                 ("idx_val_images", p.idxValImages), ("idx_val_labels", p.idxValLabels),
                                 ("class_names_file", p.classNamesFile)] where value.isEmpty {
                throw StageError("source 'idx' needs parameter \(key)")
            }
            let names = try ObjectSource.readClassNames(p.classNamesFile)
            train = try ObjectSource.load(images: p.idxTrainImages, labels: p.idxTrainLabels, classNames: names)
            val = try ObjectSource.load(images: p.idxValImages, labels: p.idxValLabels, classNames: names)
            sourceFiles["class_names"] = p.classNamesFile
            if (try? ContentHash.ofFile(train.imagesPath)) == (try? ContentHash.ofFile(val.imagesPath)) {
                ctx.log.warning("train and val objects come from the same file: val scenes reuse training objects")
            }
        }
        sourceFiles["train_images"] = train.imagesPath
        sourceFiles["train_labels"] = train.labelsPath
        sourceFiles["val_images"] = val.imagesPath
        sourceFiles["val_labels"] = val.labelsPath
        splitObjectFiles = ["train": (train.imagesPath, train.labelsPath), "val": (val.imagesPath, val.labelsPath)]
        ctx.log.info("objects: \(train.count) train, \(val.count) val, \(train.classNames.count) classes")
        do {
            source = try ComposedScenes(
                splits: [("train", train, p.trainCount), ("val", val, p.valCount)], config: p.sceneConfig, seed: seed)
        } catch let error as InvalidParameter {
            throw StageError(error.description)
        }
    case .voc:
        guard !p.vocRoot.isEmpty else { throw StageError("source 'voc' needs parameter voc_root") }
        let names = p.classNamesFile.isEmpty ? VOCFolder.classNames : try ObjectSource.readClassNames(p.classNamesFile)
        let folder = try VOCFolder(root: p.vocRoot, lists: [("train", p.vocTrainList), ("val", p.vocValList)], classNames: names)
        sourceFiles["train_list"] = URL(fileURLWithPath: p.vocRoot).appendingPathComponent("ImageSets/Segmentation/\(p.vocTrainList).txt").path
        sourceFiles["val_list"] = URL(fileURLWithPath: p.vocRoot).appendingPathComponent("ImageSets/Segmentation/\(p.vocValList).txt").path
        if !p.classNamesFile.isEmpty { sourceFiles["class_names"] = p.classNamesFile }
        source = folder
    }

    let artifact = try ctx.createArtifact("dataset", kind: .dataset)
    let root = artifact.root
    try root.setAttribute("source", p.source.rawValue)
    try root.setAttribute("source_files", try describeFiles(sourceFiles))
    let writer = try DatasetWriter(root: root, classNames: source.classNames, compression: compression)
    var reporters: [String: ProgressReporter] = [:]
    let report = try DatasetBuilder.build(from: source, into: writer, sheetSamples: p.contactSheetSamples) { split, done, total in
        guard let reporter = reporters[split] else {
            reporters[split] = ProgressReporter("prepare-data \(split)", total: total, unit: "images")
            return
        }
        reporter.advance(by: done - reporter.done)
    }
    for (split, files) in splitObjectFiles.sorted(by: { $0.key < $1.key }) {  // not dictionary order: same bytes every run
        let group = try root.group(split)
        try group.setAttribute("object_images", files.images)
        try group.setAttribute("object_labels", files.labels)
    }
    try root.setAttribute("stats", try report.statsJSON())
    let baselineSplit = report.splitNames.contains("val") ? "val" : report.splitNames.last!
    let baseline = report.stats[baselineSplit]!.baselineMIoU ?? .nan
    try root.setAttribute("baseline_otsu_miou", baseline)
    try root.setAttribute("baseline_otsu", String(decoding: try JSONSerialization.data(
        withJSONObject: ["method": OtsuBaseline.summary, "split": baselineSplit, "miou": baseline.isNaN ? NSNull() as Any : baseline as Any],
        options: [.sortedKeys]), as: UTF8.self))

    // The contact sheet and the dataset move into place together, so a failed run leaves neither.
    let sheetFile = ctx.pendingOutput("contact_sheet")
    let sheet = RGBImage.grid(report.sheetSamples.map { sheetCell($0) }, columns: 4, gap: 8, margin: true)
    try PNG.write(sheet, to: sheetFile.temporaryPath)
    try ctx.commitOutputs()

    let elapsed = Date().timeIntervalSince(started)
    let fileBytes = (try? FileManager.default.attributesOfItem(atPath: artifact.destination)[.size] as? NSNumber)?.int64Value ?? 0
    let rawBytes = report.stats.values.reduce(Int64(0)) { $0 + $1.rawBytes }
    var lines = ["prepare-data: source \(p.source), \(source.classNames.count) classes"]
    for name in report.splitNames {
        let s = report.stats[name]!
        let meanClasses = Double(s.imagesByClassCount.enumerated().reduce(0) { $0 + $1.offset * $1.element }) / Double(max(s.images, 1))
        let size = s.minWidth == s.maxWidth && s.minHeight == s.maxHeight ? "\(s.minWidth)x\(s.minHeight)" : "\(s.minWidth)...\(s.maxWidth) x \(s.minHeight)...\(s.maxHeight)"
        var line = "  \(name): \(s.images) images \(size), \(String(format: "%.2f", meanClasses)) classes/image, foreground \(String(format: "%.1f", 100 * s.meanForegroundFraction))%, ignore \(String(format: "%.2f", 100 * Double(s.ignorePixels) / Double(max(s.pixels, 1))))%"
        if s.objects > 0 { line += ", \(s.objects) objects (\(s.occludedClassesDropped) classes hidden by occlusion, unlabelled)" }
        lines.append(line)
    }
    lines.append("  trivial baseline (Otsu grey threshold, largest present class) \(baselineSplit) mIoU: \(String(format: "%.4f", baseline))")
    lines.append("  built in \(String(format: "%.2f", elapsed)) s; \(artifact.destination): \(megabytes(fileBytes)) (raw \(megabytes(rawBytes)), ratio \(String(format: "%.2f", Double(rawBytes) / Double(max(fileBytes, 1))))x)")
    lines.append("  contact sheet: \(sheetFile.destination)")
    print(lines.joined(separator: "\n"))
}

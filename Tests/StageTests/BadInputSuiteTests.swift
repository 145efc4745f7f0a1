import ArtifactStore
import CAM
import Datasets
import Engine
import Foundation
import Primitives
import TestSupport
import Training
import XCTest

/// Bad input for every stage and for the runner, as a table. Each case runs the real executable
/// and asserts: the exit status (1 for a stage, 2 for an invalid pipeline file), no crash (no
/// signal), stderr is the one error line (`error: <stage>: ...` naming the file or parameter and
/// the problem; for `wsss`, every line in its `FILE:LINE:COLUMN: error:` form), and that no file
/// appeared and none changed: a case's output folder holds afterwards exactly what it held before
/// (a sentinel file at one output path, for the cases that place one, keeps its bytes), and the
/// shared fixtures are untouched.
///
/// Stages run with WSSS_LOG_LEVEL=error so that their info log lines (stderr) do not count.
final class BadInputSuiteTests: XCTestCase {
    /// One bad invocation of a stage. Inputs, outputs and parameters start from the stage's valid
    /// defaults (`Defaults`); a case overrides or drops ("-") some. In every text, `$name` is the
    /// path of fixture `name`, and `$out` the case's own output folder.
    struct Case {
        var stage: String
        var ins: [String: String] = [:]
        var outs: [String: String] = [:]
        var params: [String] = []
        var extra: [String] = []
        var environment: [String: String] = [:]
        /// Substrings of the error line (after `error: <stage>: `).
        var expect: [String]
        /// An output whose path holds a sentinel file before the run.
        var sentinel: String? = nil
        var line: UInt = #line
    }

    enum Defaults {
        static let ins: [String: [String: String]] = [
            "prepare-data": [:],
            "classify-train": ["dataset": "$dataset"],
            "extract-attention": ["dataset": "$dataset", "checkpoint": "$checkpoint"],
            "cam-refine": ["cams": "$cams", "attention": "$attention"],
            "pseudo-label": ["dataset": "$dataset", "cams": "$cams"],
            "psa-refine": ["dataset": "$dataset", "cams": "$cams_train", "checkpoint": "$checkpoint"],
            "seg-train": ["dataset": "$dataset", "labels": "$labels"],
            "single-stage-train": ["dataset": "$dataset"],
            "evaluate": ["dataset": "$dataset", "subject": "$cams"],
        ]
        static let outs: [String: [String]] = [
            "prepare-data": ["dataset", "contact_sheet"],
            "classify-train": ["checkpoint"],
            "extract-attention": ["cams", "attention", "samples"],
            "cam-refine": ["cams", "report", "chart"],
            "pseudo-label": ["labels", "samples"],
            "psa-refine": ["labels", "samples"],
            "seg-train": ["checkpoint", "predictions", "samples"],
            "single-stage-train": ["checkpoint", "predictions", "samples"],
            "evaluate": ["metrics", "metrics_json", "panels", "confusion"],
        ]
        static let toyTrainer = ["image_size=32", "patch_size=8", "dim=16", "depth=1", "heads=2", "epochs=1", "batch_size=4", "stem=patch"]
        static let params: [String: [String]] = [
            "prepare-data": ["image_size=32", "train_count=4", "val_count=2"],
            "classify-train": toyTrainer,
            "extract-attention": ["split=val"],
            "psa-refine": ["epochs=1"],
            "seg-train": toyTrainer + ["decoder_channels=8"],
            "single-stage-train": toyTrainer + ["decoder_channels=8"],
        ]
        static func file(_ output: String) -> String {
            switch output {
            case "samples", "contact_sheet", "panels": return output + ".png"
            case "report", "metrics_json": return output + ".json"
            case "chart", "confusion": return output + ".svg"
            default: return output + ".h5"
            }
        }
    }

    /// The shared valid and invalid inputs, made once for the whole class.
    static var fixtureFolder: URL?
    static var fixtures: [String: String] = [:]
    static var fixtureError: Error?

    static func makeFixtures() throws -> [String: String] {
        let folder = try StageHarness.temporaryFolder()
        fixtureFolder = folder
        func path(_ name: String) -> String { folder.appendingPathComponent(name).path }
        var f: [String: String] = ["root": folder.path]
        f["dataset"] = try StageHarness.tinyDataset(in: folder)
        f["other"] = try StageHarness.tinyDataset(in: folder, seed: 1, name: "other.h5")
        let classNames = try DatasetReader(path: f["dataset"]!).classNames

        // Classifier checkpoints written with the Checkpoint API: the dataset's classes, two
        // classes, and as many classes under other names.
        func checkpoint(_ names: [String], _ name: String) throws -> String {
            let config = ViTConfig(imageSize: 16, patchSize: 4, depth: 2, dim: 16, heads: 2, mlpRatio: 2, numClasses: names.count)
            let model = try ViT(config: config, seed: 11)
            let artifact = try ArtifactWriter(path: path(name), provenance: Provenance(kind: .checkpoint, formatVersion: 1, producer: "test"))
            var contents = Checkpoint.Contents(modelConfig: config, normalization: Normalization(mean: [0.45, 0.45, 0.45], std: [0.25, 0.25, 0.25]),
                                               classNames: names, optimizer: .text("{}"), augmentation: AugmentationSettings(), seed: 11,
                                               epochsCompleted: 0, stepsCompleted: 0)
            contents.groups["weights"] = model.parameters.map { StoredTensor(name: $0.name, tensor: $0.value) }
            try Checkpoint.write(contents, to: artifact.root)
            try artifact.commit()
            return path(name)
        }
        f["checkpoint"] = try checkpoint(classNames, "checkpoint.h5")
        f["checkpoint_two"] = try checkpoint(["red", "blue"], "checkpoint-two.h5")
        f["checkpoint_renamed"] = try checkpoint(classNames.map { "not-" + $0 }, "checkpoint-renamed.h5")

        // Maps and labels by the real stages.
        func stage(_ name: String, _ arguments: [String]) throws {
            let result = try StageHarness.run(name, arguments)
            guard result.status == 0 else { throw StoreError(path: name, "fixture run failed: \(result.stderr)") }
        }
        for (suffix, dataset, split) in [("", "dataset", "val"), ("_train", "dataset", "train"), ("_other", "other", "val")] {
            f["cams" + suffix] = path("cams\(suffix).h5")
            f["attention" + suffix] = path("attention\(suffix).h5")
            try stage("extract-attention", ["--in", "dataset=\(f[dataset]!)", "--in", "checkpoint=\(f["checkpoint"]!)",
                                            "--out", "cams=\(f["cams" + suffix]!)", "--out", "attention=\(f["attention" + suffix]!)",
                                            "--out", "samples=\(path("samples\(suffix).png"))", "--param", "split=\(split)"])
        }
        f["labels"] = path("labels.h5")
        try stage("pseudo-label", ["--in", "dataset=\(f["dataset"]!)", "--in", "cams=\(f["cams_train"]!)",
                                   "--out", "labels=\(f["labels"]!)", "--out", "samples=\(path("labels.png"))"])
        f["labels_val"] = path("labels-val.h5")
        try stage("pseudo-label", ["--in", "dataset=\(f["dataset"]!)", "--in", "cams=\(f["cams"]!)",
                                   "--out", "labels=\(f["labels_val"]!)", "--out", "samples=\(path("labels-val.png"))"])

        // Broken files.
        func write(_ name: String, _ data: Data) throws -> String {
            try data.write(to: folder.appendingPathComponent(name))
            return path(name)
        }
        var rng = SplitMix64(seed: 5)
        f["random"] = try write("random.h5", Data((0..<5000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }))
        f["empty"] = try write("empty.h5", Data())
        let datasetBytes = try Data(contentsOf: URL(fileURLWithPath: f["dataset"]!))
        f["half"] = try write("half.h5", datasetBytes.prefix(datasetBytes.count / 2))
        // One byte changed deep inside (where HDF5 would read metadata or chunk data), and a
        // damaged seal: both refused before libhdf5 reads the file.
        var flipped = datasetBytes
        flipped[flipped.count * 3 / 4] ^= 0x10
        f["flipped"] = try write("flipped.h5", flipped)
        var badSeal = datasetBytes
        badSeal[Seal.magic.utf8.count + 7] = UInt8(ascii: "x")
        f["bad_seal"] = try write("bad-seal.h5", badSeal)
        f["folder"] = path("a-folder")
        try FileManager.default.createDirectory(atPath: f["folder"]!, withIntermediateDirectories: true)
        f["regular"] = try write("regular-file", Data("a file, not a folder\n".utf8))
        f["not_json"] = try write("not-json.json", Data("epochs: 2\n".utf8))
        f["json_list"] = try write("list.json", Data("[1, 2]".utf8))
        f["json_fraction"] = try write("fraction.json", Data("{\"panels\": 2.5}".utf8))
        f["missing"] = path("no-such-file.h5")
        // An HDF5 file that is no artifact, and a cams artifact of a format version from the future.
        f["plain_h5"] = path("plain.h5")
        let plain = try HDF5File.create(f["plain_h5"]!)
        try plain.root.setAttribute("note", "an HDF5 file, not an artifact")
        plain.close()
        f["cams_link"] = path("cams-link.h5")
        try FileManager.default.linkItem(atPath: f["cams"]!, toPath: f["cams_link"]!)
        f["future_cams"] = path("future-cams.h5")
        try FileManager.default.copyItem(atPath: f["cams"]!, toPath: f["future_cams"]!)
        let future = try HDF5File.open(f["future_cams"]!, writable: true)
        try future.root.setAttribute("format_version", Int64(99))
        future.close()
        f["no_names"] = try write("no-names.txt", Data())
        f["three_names"] = try write("three-names.txt", Data("a\nb\nc\n".utf8))
        f["ten_names"] = try write("ten-names.txt", Data((0..<10).map { "class\($0)\n" }.joined().utf8))
        let mnist = "/usr/share/datasets/fashion-mnist/"
        f["mnist"] = mnist
        let valImages = try Data(contentsOf: URL(fileURLWithPath: mnist + "t10k-images-idx3-ubyte.gz"))
        f["truncated_gz"] = try write("truncated.gz", valImages.prefix(1000))
        return f
    }

    override class func setUp() {
        super.setUp()
        do { fixtures = try makeFixtures() } catch { fixtureError = error }
    }

    override class func tearDown() {
        if let fixtureFolder { try? FileManager.default.removeItem(at: fixtureFolder) }
        super.tearDown()
    }

    /// `$name` replaced by fixture paths, `$out` by the case's folder (longest names first).
    static func resolve(_ text: String, out: String) -> String {
        var result = text.replacingOccurrences(of: "$out", with: out)
        for key in fixtures.keys.sorted(by: { $0.count > $1.count }) { result = result.replacingOccurrences(of: "$" + key, with: fixtures[key]!) }
        return result
    }

    /// Every file under `folder` (hidden ones included) with its bytes.
    static func snapshot(_ folder: String) -> [String: Data] {
        var files: [String: Data] = [:]
        guard let walker = FileManager.default.enumerator(atPath: folder) else { return files }
        for case let relative as String in walker {
            var isFolder: ObjCBool = false
            let full = folder + "/" + relative
            FileManager.default.fileExists(atPath: full, isDirectory: &isFolder)
            files[relative] = isFolder.boolValue ? Data("<folder>".utf8) : (FileManager.default.contents(atPath: full) ?? Data())
        }
        return files
    }

    func arguments(_ c: Case, out: String) -> [String] {
        var args: [String] = []
        var ins = Defaults.ins[c.stage]!
        ins.merge(c.ins) { $1 }
        for name in ins.keys.sorted() where ins[name] != "-" { args += ["--in", "\(name)=\(Self.resolve(ins[name]!, out: out))"] }
        var outs = Dictionary(uniqueKeysWithValues: Defaults.outs[c.stage]!.map { ($0, "$out/" + Defaults.file($0)) })
        outs.merge(c.outs) { $1 }
        for name in outs.keys.sorted() where outs[name] != "-" { args += ["--out", "\(name)=\(Self.resolve(outs[name]!, out: out))"] }
        let overridden = Set(c.params.compactMap { $0.split(separator: "=", maxSplits: 1).first.map(String.init) })
        for p in (Defaults.params[c.stage] ?? []).filter({ !overridden.contains(String($0.split(separator: "=")[0])) }) + c.params {
            args += ["--param", Self.resolve(p, out: out)]
        }
        return args + c.extra.map { Self.resolve($0, out: out) }
    }

    // MARK: - The stage table

    static let stageCases: [Case] = [
        // prepare-data: parameters, sources, the contract.
        Case(stage: "prepare-data", params: ["train_count=2.5"], expect: ["parameter 'train_count' must be a whole number, got 2.5"], sentinel: "dataset"),
        Case(stage: "prepare-data", params: ["image_size=4"], expect: ["parameter 'image_size' must be in [8, 4096], got 4"]),
        Case(stage: "prepare-data", params: ["bogus=1"], expect: ["unknown parameter 'bogus'"]),
        Case(stage: "prepare-data", params: ["source=nope"], expect: ["parameter 'source' is invalid: 'nope' is not one of fashion-scenes, idx, voc"]),
        Case(stage: "prepare-data", params: ["image_size=big"], expect: ["parameter 'image_size' has the wrong type"]),
        Case(stage: "prepare-data", params: ["compression_level=30"], expect: ["parameter 'compression_level' must be in [0, 22], got 30"]),
        Case(stage: "prepare-data", params: ["contact_sheet_samples=0"], expect: ["parameter 'contact_sheet_samples' must be >= 1, got 0"]),
        Case(stage: "prepare-data", params: ["objects_min=3", "objects_max=1"], expect: ["objects per image 3...1"], sentinel: "contact_sheet"),
        Case(stage: "prepare-data", params: ["fashion_mnist_dir=$missing"], expect: ["$missing/train-images-idx3-ubyte.gz: no such file"]),
        Case(stage: "prepare-data", params: ["source=voc"], expect: ["source 'voc' needs parameter voc_root"]),
        Case(stage: "prepare-data", params: ["source=voc", "voc_root=$missing"], expect: ["$missing: no such VOC folder"]),
        Case(stage: "prepare-data", params: ["source=voc", "voc_root=$folder"], expect: ["$folder/ImageSets/Segmentation/train.txt: no such image list"], sentinel: "dataset"),
        Case(stage: "prepare-data", params: ["source=idx"], expect: ["source 'idx' needs parameter idx_train_images"]),
        Case(stage: "prepare-data", params: idx(names: "$missing"), expect: ["$missing: no such file"]),
        Case(stage: "prepare-data", params: idx(names: "$no_names"), expect: ["$no_names: class-names file lists no names"]),
        Case(stage: "prepare-data", params: idx(names: "$three_names"), expect: ["train-labels-idx1-ubyte.gz: label 9 of item 0 is not below the 3 class names"]),
        Case(stage: "prepare-data", params: idx(trainImages: "$mnisttrain-labels-idx1-ubyte.gz"), expect: ["train-labels-idx1-ubyte.gz: IDX image file must have shape N x rows x cols"]),
        Case(stage: "prepare-data", params: idx(valImages: "$truncated_gz"), expect: ["$truncated_gz: truncated or corrupt gzip data"], sentinel: "dataset"),
        Case(stage: "prepare-data", params: idx(trainImages: "$random"), expect: ["$random"]),
        Case(stage: "prepare-data", params: idx(trainLabels: "$mnistt10k-labels-idx1-ubyte.gz"), expect: ["has 10000 labels but", "train-images-idx3-ubyte.gz has 60000 images"]),
        Case(stage: "prepare-data", params: idx(trainImages: "$missing"), expect: ["$missing: no such file"]),
        Case(stage: "prepare-data", outs: ["contact_sheet": "-"], expect: ["missing output 'contact_sheet': pass --out contact_sheet=PATH"], sentinel: "dataset"),
        Case(stage: "prepare-data", outs: ["extra": "$out/x.h5"], expect: ["unknown output 'extra' (this stage writes: dataset, contact_sheet)"]),
        Case(stage: "prepare-data", outs: ["contact_sheet": "$out/dataset.h5"], expect: ["outputs 'contact_sheet' and 'dataset' are both given the path $out/dataset.h5"], sentinel: "dataset"),
        Case(stage: "prepare-data", outs: ["dataset": "$regular/dataset.h5"], expect: ["output 'dataset': $regular/dataset.h5: $regular is not a folder"], sentinel: "contact_sheet"),
        Case(stage: "prepare-data", outs: ["dataset": "$folder"], expect: ["output 'dataset': $folder: is a folder, not a file"]),
        Case(stage: "prepare-data", ins: ["dataset": "$dataset"], expect: ["unknown input 'dataset' (this stage reads: )"]),
        Case(stage: "prepare-data", extra: ["--param", "seed"], expect: ["--param expects NAME=VALUE, got 'seed'"]),
        Case(stage: "prepare-data", extra: ["--params", "$missing"], expect: ["$missing: cannot read parameter file"]),
        Case(stage: "prepare-data", extra: ["--params", "$not_json"], expect: ["$not_json: parameter file is not a JSON object"]),
        Case(stage: "prepare-data", extra: ["--params", "$json_list"], expect: ["$json_list: parameter file is not a JSON object"]),
        Case(stage: "prepare-data", extra: ["--shard", "0/2"], expect: ["--shard: this stage does not split into shards"]),
        Case(stage: "prepare-data", extra: ["--bogus"], expect: ["Unknown option '--bogus'"]),
        Case(stage: "prepare-data", environment: ["SOURCE_DATE_EPOCH": "yesterday"], expect: ["SOURCE_DATE_EPOCH: 'yesterday' is not a whole number of seconds"]),

        // classify-train: the dataset file, checkpoints, parameters.
        Case(stage: "classify-train", ins: ["dataset": "$missing"], expect: ["$missing: no such file"], sentinel: "checkpoint"),
        Case(stage: "classify-train", ins: ["dataset": "$folder"], expect: ["$folder: is a directory, not an HDF5 file"]),
        Case(stage: "classify-train", ins: ["dataset": "$cams"], expect: ["$cams: expected an artifact of kind 'dataset', found kind 'cams'"], sentinel: "checkpoint"),
        Case(stage: "classify-train", ins: ["dataset": "$random"], expect: ["$random: not an HDF5 file"]),
        Case(stage: "classify-train", ins: ["dataset": "$empty"], expect: ["$empty: not an HDF5 file"]),
        Case(stage: "classify-train", ins: ["dataset": "$half"], expect: ["$half: HDF5 file is truncated: "], sentinel: "checkpoint"),
        Case(stage: "classify-train", ins: ["dataset": "-"], expect: ["missing input 'dataset': pass --in dataset=PATH"]),
        Case(stage: "classify-train", ins: ["dataset": ""], expect: ["input 'dataset': the path is empty"]),
        Case(stage: "classify-train", ins: ["init": "$cams"], expect: ["$cams: expected an artifact of kind 'checkpoint', found kind 'cams'"], sentinel: "checkpoint"),
        Case(stage: "classify-train", params: ["epochs=2.5"], expect: ["parameter 'epochs' must be a whole number, got 2.5"]),
        Case(stage: "classify-train", params: ["lr=0"], expect: ["parameter 'lr' must be > 0, got 0"], sentinel: "checkpoint"),
        Case(stage: "classify-train", params: ["lr=fast"], expect: ["parameter 'lr' has the wrong type"]),
        Case(stage: "classify-train", params: ["method=fancy"], expect: ["parameter 'method' is invalid: 'fancy' is not one of baseline, acr, areaM"]),
        Case(stage: "classify-train", params: ["high_background=1.5"], expect: ["parameter 'high_background' must be in [0, 1], got 1.5"]),
        Case(stage: "classify-train", params: ["train_split=test"], expect: ["$dataset: no split 'test' in this dataset (it has: train, val)"], sentinel: "checkpoint"),
        Case(stage: "classify-train", params: ["backbone=pretrained"], expect: ["backbone=pretrained needs the weights: pass --in vit_weights=PATH"]),
        Case(stage: "classify-train", params: ["resume=true"], expect: ["resume=true needs an init checkpoint: pass --in init=PATH"]),
        Case(stage: "classify-train", params: ["image_size=4096", "patch_size=4"], expect: ["parameter 'batch_size' asks for", "lower it"], sentinel: "checkpoint"),
        Case(stage: "classify-train", params: ["flip=maybe"], expect: ["parameter 'flip' has the wrong type"]),

        // extract-attention: the checkpoint against the dataset, parameters.
        Case(stage: "extract-attention", ins: ["checkpoint": "$missing"], expect: ["$missing: no such file"], sentinel: "cams"),
        Case(stage: "extract-attention", ins: ["checkpoint": "$dataset"], expect: ["$dataset: expected an artifact of kind 'checkpoint', found kind 'dataset'"]),
        Case(stage: "extract-attention", ins: ["checkpoint": "$half"], expect: ["$half: HDF5 file is truncated: "]),
        Case(stage: "extract-attention", ins: ["dataset": "$flipped"], expect: ["$flipped: HDF5 file is damaged: its bytes no longer match the checksum it was written with"]),
        Case(stage: "pseudo-label", ins: ["dataset": "$flipped"], expect: ["$flipped: HDF5 file is damaged: its bytes no longer match the checksum it was written with"]),
        Case(stage: "seg-train", ins: ["dataset": "$bad_seal"], expect: ["$bad_seal: HDF5 file is damaged: its seal (the checksum block at its start) is unreadable"]),
        Case(stage: "extract-attention", ins: ["checkpoint": "$checkpoint_two"], expect: ["checkpoint $checkpoint_two does not fit dataset $dataset: the classifier has 2 classes, the dataset 10"], sentinel: "attention"),
        Case(stage: "extract-attention", ins: ["checkpoint": "$checkpoint_renamed"], expect: ["checkpoint $checkpoint_renamed does not fit dataset $dataset: the classifier has other class names"]),
        Case(stage: "extract-attention", ins: ["dataset": "$labels"], expect: ["$labels: expected an artifact of kind 'dataset', found kind 'labels'"]),
        Case(stage: "extract-attention", params: ["scales=[100]"], expect: ["parameter 'scales' must be in [0.1, 8], got [100]"]),
        Case(stage: "extract-attention", params: ["batch_size=0"], expect: ["parameter 'batch_size' must be >= 1, got 0"]),
        Case(stage: "extract-attention", params: ["gradient_score=x"], expect: ["parameter 'gradient_score' is invalid: 'x' is not one of cls, cam, none"]),
        Case(stage: "extract-attention", params: ["split=test"], expect: ["$dataset: no split 'test' in this dataset"]),
        Case(stage: "extract-attention", params: ["use_ema=true"], expect: ["$checkpoint: use_ema is set but the checkpoint has no EMA weights"], sentinel: "samples"),
        Case(stage: "extract-attention", params: ["batch_size=100000000"], expect: ["parameter 'batch_size' asks for batches of 100000000 images", "lower it"], sentinel: "cams"),
        Case(stage: "extract-attention", params: ["limit=1.5"], expect: ["parameter 'limit' must be a whole number, got 1.5"]),
        Case(stage: "extract-attention", extra: ["--shard", "3/2"], expect: ["--shard expects I/N with 0 <= I < N, got '3/2'"]),
        Case(stage: "extract-attention", outs: ["attention": "$out/cams.h5"], expect: ["outputs 'attention' and 'cams' are both given the path $out/cams.h5"], sentinel: "cams"),
        Case(stage: "extract-attention", ins: ["extra": "$dataset"], expect: ["unknown input 'extra' (this stage reads: dataset, checkpoint)"]),
        Case(stage: "extract-attention", extra: ["--in"], expect: ["Missing value for '--in <in>'"]),

        // cam-refine: seeds and attention that do not belong together.
        Case(stage: "cam-refine", ins: ["attention": "$attention_train"], expect: ["$attention_train: covers split 'train', the seeds $cams cover split 'val'"], sentinel: "cams"),
        Case(stage: "cam-refine", ins: ["attention": "$attention_other"], expect: ["$attention_other: was extracted from another dataset", "than the seeds $cams"], sentinel: "report"),
        Case(stage: "cam-refine", ins: ["cams": "$attention"], expect: ["$attention: expected an artifact of kind 'cams', found kind 'attention'"]),
        Case(stage: "cam-refine", ins: ["attention": "$cams"], expect: ["$cams: expected an artifact of kind 'attention', found kind 'cams'"]),
        Case(stage: "cam-refine", ins: ["cams": "$empty"], expect: ["$empty: not an HDF5 file"]),
        Case(stage: "cam-refine", ins: ["attention": "-"], expect: ["missing input 'attention': pass --in attention=PATH"]),
        Case(stage: "cam-refine", params: ["threshold_step=0"], expect: ["parameter 'threshold_step' must be in [0.0001, 1], got 0"]),
        Case(stage: "cam-refine", params: ["method=x"], expect: ["parameter 'method' is invalid: 'x' is not one of none, mean, areaM, acr"]),
        Case(stage: "cam-refine", params: ["layers=[7]"], expect: ["layers: layer 7 does not exist (the attention has 2 layers"], sentinel: "chart"),
        Case(stage: "cam-refine", params: ["layers=[0.5]"], expect: ["parameter 'layers' must be a whole number, got [0.5]"]),
        Case(stage: "cam-refine", params: ["analyse=true"], expect: ["analyse scores against ground truth: pass the optional input --in dataset=PATH"]),
        Case(stage: "cam-refine", ins: ["dataset": "$other"], params: ["analyse=true"], expect: ["$cams: was made from another dataset", "than $other"], sentinel: "cams"),
        Case(stage: "cam-refine", params: ["threshold_start=0.9", "threshold_stop=0.1"], expect: ["threshold sweep needs threshold_step > 0 and threshold_stop >= threshold_start"]),

        // pseudo-label: maps of another dataset, shards, parameters.
        Case(stage: "pseudo-label", ins: ["dataset": "$other"], expect: ["$cams: was made from another dataset", "than $other"], sentinel: "labels"),
        Case(stage: "pseudo-label", ins: ["cams": "$labels"], expect: ["$labels: expected an artifact of kind 'cams', found kind 'labels'"]),
        Case(stage: "pseudo-label", ins: ["cams": "$random"], expect: ["$random: not an HDF5 file"]),
        Case(stage: "pseudo-label", ins: ["cams": "$plain_h5"], expect: ["$plain_h5: not an artifact (no 'kind' attribute)"]),
        Case(stage: "pseudo-label", ins: ["cams": "$future_cams"], expect: ["$future_cams: artifact of kind 'cams' has format version 99; this build reads version 1"], sentinel: "labels"),
        Case(stage: "pseudo-label", ins: ["cams": "$folder"], expect: ["$folder: is a directory, not an HDF5 file"]),
        Case(stage: "pseudo-label", params: ["high_background=1.5"], expect: ["parameter 'high_background' must be in [0, 1], got 1.5"]),
        Case(stage: "pseudo-label", params: ["low_background=0.6"], expect: ["low_background (0.6) must be below high_background (0.55)"], sentinel: "samples"),
        Case(stage: "pseudo-label", params: ["par_dilations=[0]"], expect: ["parameter 'par_dilations' must be >= 1, got [0]"]),
        Case(stage: "pseudo-label", params: ["downscale=1.5"], expect: ["parameter 'downscale' must be a whole number, got 1.5"]),
        Case(stage: "pseudo-label", extra: ["--shard", "2/2"], expect: ["--shard expects I/N with 0 <= I < N, got '2/2'"], sentinel: "labels"),
        Case(stage: "pseudo-label", extra: ["--shard", "half"], expect: ["--shard expects I/N with 0 <= I < N, got 'half'"]),

        // psa-refine: the checkpoint, maps, parameters.
        Case(stage: "psa-refine", ins: ["checkpoint": "$missing"], expect: ["$missing: no such file"], sentinel: "labels"),
        Case(stage: "psa-refine", ins: ["checkpoint": "$cams"], expect: ["$cams: expected an artifact of kind 'checkpoint', found kind 'cams'"]),
        Case(stage: "psa-refine", ins: ["checkpoint": "$checkpoint_two"], expect: ["$checkpoint_two: classes [\"red\", \"blue\"] differ from those of $cams_train"], sentinel: "labels"),
        Case(stage: "psa-refine", ins: ["dataset": "$other"], expect: ["$cams_train: was made from another dataset", "than $other"]),
        Case(stage: "psa-refine", params: ["logt=20"], expect: ["parameter 'logt' must be in [0, 16], got 20"]),
        Case(stage: "psa-refine", params: ["walk=x"], expect: ["parameter 'walk' is invalid: 'x' is not one of iterated, squaring"]),
        Case(stage: "psa-refine", params: ["lr=-1"], expect: ["parameter 'lr' must be > 0, got -1"]),
        Case(stage: "psa-refine", params: ["radius=2.5"], expect: ["parameter 'radius' must be a whole number, got 2.5"]),
        Case(stage: "psa-refine", params: ["feature_batch=0"], expect: ["parameter 'feature_batch' must be >= 1, got 0"], sentinel: "labels"),
        Case(stage: "psa-refine", params: ["input_size=512", "feature_batch=2"], environment: ["WSSS_MEMORY_LIMIT_MB": "100"],
             expect: ["parameter 'feature_batch' asks for forward passes of 2 images at 512 px", "lower it"], sentinel: "labels"),
        Case(stage: "psa-refine", extra: ["--shard", "0/2"], expect: ["--shard: this stage does not split into shards"]),

        // seg-train: labels that do not fit, memory, parameters.
        Case(stage: "seg-train", ins: ["labels": "-"], expect: ["supervision 'labels' needs the input 'labels'"], sentinel: "predictions"),
        Case(stage: "seg-train", ins: ["labels": "$labels_val"], expect: ["$labels_val: holds labels of split 'val'; seg-train trains on split 'train'"], sentinel: "checkpoint"),
        Case(stage: "seg-train", ins: ["dataset": "$other"], expect: ["$labels: was made from another dataset", "than $other"]),
        Case(stage: "seg-train", ins: ["labels": "$cams"], expect: ["$cams: expected an artifact of kind 'labels', found kind 'cams'"]),
        Case(stage: "seg-train", ins: ["init": "$labels"], expect: ["$labels: expected an artifact of kind 'checkpoint', found kind 'labels'"]),
        Case(stage: "seg-train", ins: ["vit_weights": "$missing"], expect: ["$missing: no such file"]),
        Case(stage: "seg-train", params: ["eval_scales=[100]"], expect: ["parameter 'eval_scales' must be in [0.1, 8], got [100]"]),
        Case(stage: "seg-train", params: ["supervision=x"], expect: ["parameter 'supervision' is invalid: 'x' is not one of labels, ground_truth"]),
        Case(stage: "seg-train", params: ["batch_size=100000000"], expect: ["parameter 'batch_size' asks for training batches of 100000000 images", "lower it"], sentinel: "samples"),
        Case(stage: "seg-train", params: ["dilations=[1.5]"], expect: ["parameter 'dilations' must be a whole number, got [1.5]"]),
        Case(stage: "seg-train", params: ["lr=0"], expect: ["parameter 'lr' must be > 0, got 0"]),

        // single-stage-train.
        Case(stage: "single-stage-train", ins: ["dataset": "$labels"], expect: ["$labels: expected an artifact of kind 'dataset', found kind 'labels'"], sentinel: "checkpoint"),
        Case(stage: "single-stage-train", ins: ["init": "$cams"], expect: ["$cams: expected an artifact of kind 'checkpoint', found kind 'cams'"]),
        Case(stage: "single-stage-train", ins: ["dataset": "$half"], expect: ["$half: HDF5 file is truncated: "]),
        Case(stage: "single-stage-train", params: ["method=x"], expect: ["parameter 'method' is invalid: 'x' is not one of baseline, fsr"]),
        Case(stage: "single-stage-train", params: ["teacher_momentum=2"], expect: ["parameter 'teacher_momentum' must be in [0, 1], got 2"]),
        Case(stage: "single-stage-train", params: ["batch_size=100000000"], expect: ["parameter 'batch_size' asks for training batches of 100000000 images", "lower it"], sentinel: "predictions"),
        Case(stage: "single-stage-train", params: ["eval_scales=[0.01]"], expect: ["parameter 'eval_scales' must be in [0.1, 8], got [0.01]"]),
        Case(stage: "single-stage-train", params: ["mask_block=1.5"], expect: ["parameter 'mask_block' must be a whole number, got 1.5"]),
        Case(stage: "single-stage-train", params: ["low_background=0.9"], expect: ["low_background (0.9) must be below high_background (0.7)"]),
        Case(stage: "single-stage-train", params: ["aux_layer=2"], expect: ["parameter 'aux_layer' must be <= 0, got 2"]),
        Case(stage: "single-stage-train", params: ["aux_layer=-5"], expect: ["aux_layer -5 reaches before the first of the backbone's 1 blocks"], sentinel: "checkpoint"),
        Case(stage: "single-stage-train", params: ["classifier_pooling=sum"], expect: ["parameter 'classifier_pooling' is invalid: 'sum' is not one of average, max"]),
        Case(stage: "single-stage-train", outs: ["samples": "$regular/samples.png"], expect: ["output 'samples': $regular/samples.png: $regular is not a folder"], sentinel: "checkpoint"),

        // evaluate: subjects of the wrong kind or dataset, outputs, parameter files.
        Case(stage: "evaluate", ins: ["dataset": "$other"], expect: ["$cams: was made from another dataset", "than $other"], sentinel: "metrics_json"),
        Case(stage: "evaluate", ins: ["subject": "$checkpoint"], expect: ["$checkpoint: evaluate scores artifacts of kind 'cams', 'labels' or 'predictions', found kind 'checkpoint'"]),
        Case(stage: "evaluate", ins: ["subject": "$attention"], expect: ["$attention: evaluate scores artifacts of kind", "found kind 'attention'"]),
        Case(stage: "evaluate", ins: ["subject": "$dataset"], expect: ["$dataset: evaluate scores artifacts of kind", "found kind 'dataset'"]),
        Case(stage: "evaluate", ins: ["subject": "$half"], expect: ["$half: HDF5 file is truncated: "]),
        Case(stage: "evaluate", ins: ["subject": "$plain_h5"], expect: ["$plain_h5: not an artifact (no 'kind' attribute)"]),
        Case(stage: "evaluate", ins: ["dataset": "$plain_h5"], expect: ["$plain_h5: not an artifact (no 'kind' attribute)"]),
        Case(stage: "cam-refine", ins: ["cams": "$future_cams"], expect: ["$future_cams: artifact of kind 'cams' has format version 99"]),
        Case(stage: "seg-train", ins: ["init": "$plain_h5"], expect: ["$plain_h5: not an artifact"]),
        Case(stage: "extract-attention", params: ["scales=[]"], expect: ["scales must be a non-empty list of positive numbers, got []"]),
        Case(stage: "classify-train", params: ["norm_mean=[0.5]"], expect: ["norm_mean and norm_std need 3 values each"]),
        Case(stage: "classify-train", params: ["image_size=30"], expect: ["invalid ViT config: image_size 30 not divisible by patch_size 8"]),
        Case(stage: "classify-train", params: ["frozen_blocks=3"], expect: ["frozen_blocks 3 exceeds the model's 1 blocks"]),
        Case(stage: "classify-train", params: ["lr=null"], expect: ["parameter 'lr' has the wrong type"]),
        Case(stage: "classify-train", params: ["lr=NaN"], expect: ["parameter 'lr' must be a finite number, got NaN"]),
        Case(stage: "seg-train", params: ["heads=3"], expect: ["invalid ViT config: dim 16 not divisible by heads 3"], sentinel: "checkpoint"),
        Case(stage: "seg-train", params: ["stem=bogus"], expect: ["stem 'bogus' is neither patch nor a known pretrained stem"]),
        Case(stage: "cam-refine", params: ["method=acr", "acr_start_layer=5"], expect: ["acr_start_layer: layer 5 does not exist"]),
        Case(stage: "pseudo-label", ins: ["cams": "$out/labels.h5"], expect: ["output 'labels' is given the path of input 'cams', $out/labels.h5: the stage would replace what it reads"], sentinel: "labels"),
        Case(stage: "evaluate", outs: ["metrics": "$cams"], expect: ["output 'metrics' is given the path of input 'subject', $cams"]),
        Case(stage: "evaluate", outs: ["metrics": "$cams_link"], expect: ["output 'metrics' is given the path of input 'subject', $cams_link"]),
        Case(stage: "classify-train", ins: ["init": "$out/checkpoint.h5"], expect: ["output 'checkpoint' is given the path of input 'init'"], sentinel: "checkpoint"),
        Case(stage: "pseudo-label", extra: ["--shard", "0/0"], expect: ["--shard expects I/N with 0 <= I < N, got '0/0'"]),
        Case(stage: "evaluate", ins: ["subject": ""], expect: ["input 'subject': the path is empty"]),
        Case(stage: "evaluate", params: ["panels=-1"], expect: ["parameter 'panels' must be >= 0, got -1"]),
        Case(stage: "evaluate", params: ["threshold_stop=2"], expect: ["parameter 'threshold_stop' must be in [0, 1], got 2"]),
        Case(stage: "evaluate", params: ["panels=x"], expect: ["parameter 'panels' has the wrong type"]),
        Case(stage: "evaluate", outs: ["confusion": "-"], expect: ["missing output 'confusion': pass --out confusion=PATH"], sentinel: "metrics"),
        Case(stage: "evaluate", outs: ["metrics": ""], expect: ["output 'metrics': : the path is empty"], sentinel: "panels"),
        Case(stage: "evaluate", outs: ["metrics_json": "$regular/metrics.json"], expect: ["output 'metrics_json': $regular/metrics.json: $regular is not a folder"], sentinel: "metrics"),
        Case(stage: "evaluate", outs: ["metrics": "$regular/deeper/metrics.h5"], expect: ["output 'metrics': $regular/deeper/metrics.h5: $regular is not a folder"], sentinel: "confusion"),
        Case(stage: "evaluate", outs: ["metrics": "$folder"], expect: ["output 'metrics': $folder: is a folder, not a file"], sentinel: "metrics_json"),
        Case(stage: "evaluate", extra: ["--params", "$json_fraction"], expect: ["parameter 'panels' must be a whole number, got 2.5"]),
        Case(stage: "evaluate", extra: ["--params", "$folder"], expect: ["$folder: cannot read parameter file"]),
        Case(stage: "evaluate", extra: ["--in", "dataset=$other"], expect: ["--in dataset given twice"], sentinel: "metrics"),
    ]

    /// prepare-data's IDX source over the Fashion-MNIST files, with one file swapped.
    static func idx(trainImages: String = "$mnisttrain-images-idx3-ubyte.gz", trainLabels: String = "$mnisttrain-labels-idx1-ubyte.gz",
                    valImages: String = "$mnistt10k-images-idx3-ubyte.gz", valLabels: String = "$mnistt10k-labels-idx1-ubyte.gz",
                    names: String = "$ten_names") -> [String] {
        ["source=idx", "idx_train_images=\(trainImages)", "idx_train_labels=\(trainLabels)", "idx_val_images=\(valImages)",
         "idx_val_labels=\(valLabels)", "class_names_file=\(names)"]
    }

    // MARK: - The runner table

    /// One bad `wsss` invocation in a shared workspace: a pipeline file (written to
    /// Pipelines/NAME.yaml when given), the command line, the exit status, and each stderr line's
    /// expected substrings (one entry per line; `$file` is the pipeline's path as wsss shows it).
    struct RunnerCase {
        var name: String
        var yaml: String?
        var arguments: [String]
        var status: Int32 = 2
        var lines: [[String]]
        var line: UInt = #line
    }

    static let goodPipeline = """
        name: good
        stages:
          - name: data
            run: prepare-data
            params: {image_size: 32, train_count: 4, val_count: 2}
            outputs:
              dataset: Artifacts/d.h5
              contact_sheet: Artifacts/d.png
        """
    static let dataOutputs = "outputs: {dataset: Artifacts/d.h5, contact_sheet: Artifacts/d.png}"
    static let evalOutputs = "outputs: {metrics: Artifacts/m.h5, metrics_json: Artifacts/m.json, panels: Artifacts/p.png, confusion: Artifacts/c.svg}"

    static func run(_ name: String, _ extra: [String] = []) -> [String] { ["run", "Pipelines/\(name).yaml"] + extra }

    static let runnerCases: [RunnerCase] = [
        RunnerCase(name: "yaml", yaml: "name: x\nstages: [ {\n", arguments: run("yaml"), lines: [["$file:3:1: error: invalid YAML"]]),
        RunnerCase(name: "yaml", arguments: ["status", "Pipelines/yaml.yaml"], lines: [["$file:3:1: error: invalid YAML"]]),
        RunnerCase(name: "stagekey", yaml: goodPipeline + "\n    colour: red\n", arguments: run("stagekey"),
                   lines: [["$file:9:5: error: unknown key 'colour' in a stage"]]),
        RunnerCase(name: "topkey", yaml: goodPipeline + "\nextra: 1\n", arguments: run("topkey"),
                   lines: [["$file:9:1: error: unknown key 'extra' in the pipeline file"]]),
        RunnerCase(name: "dupkey", yaml: "name: x\nname: y\nstages: []\n", arguments: run("dupkey"), lines: [["$file:", "error: key 'name' appears twice in one mapping"]]),
        RunnerCase(name: "nostages", yaml: "name: x\n", arguments: run("nostages"), lines: [["$file:1:1: error: the pipeline has no 'stages'"]]),
        RunnerCase(name: "noexe", yaml: "name: x\nstages:\n  - name: a\n    run: no-such-stage\n    outputs: {x: Artifacts/x}\n", arguments: run("noexe"),
                   lines: [["$file:4:10: error: stage 'a': executable 'no-such-stage' not found"]]),
        RunnerCase(name: "unkparam", yaml: "name: x\nstages:\n  - name: data\n    run: prepare-data\n    params: {image_size: 32, bogus: 1}\n    \(dataOutputs)\n",
                   arguments: run("unkparam"), lines: [["$file:5:30: error: stage 'data': prepare-data has no parameter 'bogus'"]]),
        RunnerCase(name: "ranges", yaml: "name: x\nstages:\n  - name: data\n    run: prepare-data\n    params: {image_size: 32.5, train_count: 0}\n    \(dataOutputs)\n",
                   arguments: run("ranges"), lines: [["$file:5:14: error: stage 'data': parameter 'image_size' must be a whole number, got 32.5"],
                                                     ["$file:5:32: error: stage 'data': parameter 'train_count' must be >= 1, got 0"]]),
        RunnerCase(name: "wrongtype", yaml: "name: x\nstages:\n  - name: data\n    run: prepare-data\n    params: {image_size: big}\n    \(dataOutputs)\n",
                   arguments: run("wrongtype"), lines: [["$file:5:14: error: stage 'data': parameter 'image_size' must be a number like its default 64, got string \"big\""]]),
        RunnerCase(name: "epochs", yaml: "name: x\nstages:\n  - name: train\n    run: classify-train\n    inputs: {dataset: ./Artifacts/none.h5}\n    params: {epochs: 2.5, lr: 0}\n    outputs: {checkpoint: Artifacts/ck.h5}\n",
                   arguments: run("epochs"), lines: [["$file:5:23: error: stage 'train': input 'dataset': no such file or folder: ./Artifacts/none.h5"],
                                                     ["$file:6:14: error: stage 'train': parameter 'epochs' must be a whole number, got 2.5"],
                                                     ["$file:6:27: error: stage 'train': parameter 'lr' must be > 0, got 0"]]),
        RunnerCase(name: "choice", yaml: "name: x\nstages:\n  - name: data\n    run: prepare-data\n    params: {source: nope}\n    \(dataOutputs)\n",
                   arguments: run("choice"), lines: [["$file:5:14: error: stage 'data': parameter 'source' is invalid: 'nope' is not one of fashion-scenes, idx, voc"]]),
        RunnerCase(name: "choice", arguments: run("choice", ["--dry-run"]), lines: [["$file:5:14: error: stage 'data': parameter 'source' is invalid"]]),
        RunnerCase(name: "good", yaml: goodPipeline + "\n", arguments: run("good", ["--set", "data.source=nope"]), lines: [["--set data.source=nope: error: stage 'data': parameter 'source' is invalid: 'nope' is not one of fashion-scenes, idx, voc"]]),
        RunnerCase(name: "cycle", yaml: """
            name: x
            stages:
              - name: a
                run: evaluate
                inputs: {dataset: b.metrics, subject: b.metrics}
                outputs: {metrics: Artifacts/m1.h5, metrics_json: Artifacts/m1.json, panels: Artifacts/p1.png, confusion: Artifacts/c1.svg}
              - name: b
                run: evaluate
                inputs: {dataset: a.metrics, subject: a.metrics}
                outputs: {metrics: Artifacts/m2.h5, metrics_json: Artifacts/m2.json, panels: Artifacts/p2.png, confusion: Artifacts/c2.svg}
            """, arguments: run("cycle"), lines: [["$file:", "error: cycle between stages: a -> b -> a"]]),
        RunnerCase(name: "twowriters", yaml: "name: x\nstages:\n  - name: a\n    run: prepare-data\n    \(dataOutputs)\n  - name: b\n    run: prepare-data\n    outputs: {dataset: Artifacts/d.h5, contact_sheet: Artifacts/e.png}\n",
                   arguments: run("twowriters"), lines: [["$file:8:24: error: output path Artifacts/d.h5 is already written by stage 'a' output 'dataset'", "two stages cannot write one file"]]),
        RunnerCase(name: "noref", yaml: "name: x\nstages:\n  - name: a\n    run: evaluate\n    inputs: {dataset: nope.h5x, subject: Artifacts/none.h5}\n    \(evalOutputs)\n",
                   arguments: run("noref"), lines: [["$file:5:23: error: input 'dataset' of stage 'a': 'nope.h5x' names no stage of this pipeline"]]),
        RunnerCase(name: "unkout", yaml: "name: x\nstages:\n  - name: a\n    run: evaluate\n    inputs: {dataset: data.nothing, subject: data.dataset}\n    \(evalOutputs)\n  - name: data\n    run: prepare-data\n    \(dataOutputs)\n",
                   arguments: run("unkout"), lines: [["$file:5:23: error: stage 'data' has no output 'nothing' (its outputs: dataset, contact_sheet)"]]),
        RunnerCase(name: "missingout", yaml: "name: x\nstages:\n  - name: data\n    run: prepare-data\n    outputs: {dataset: Artifacts/d.h5}\n",
                   arguments: run("missingout"), lines: [["$file:3:11: error: stage 'data': prepare-data writes output 'contact_sheet'; give it a path under 'outputs:'"]]),
        RunnerCase(name: "outside", yaml: "name: x\nstages:\n  - name: data\n    run: prepare-data\n    outputs: {dataset: /tmp/d.h5, contact_sheet: ../d.png}\n",
                   arguments: run("outside"), lines: [["$file:5:24: error: output 'dataset' of stage 'data': '/tmp/d.h5' must be a file path inside the workspace"],
                                                      ["$file:5:50: error: output 'contact_sheet' of stage 'data': '../d.png' must be a file path inside the workspace"]]),
        RunnerCase(name: "outplace", yaml: "name: x\nstages:\n  - name: data\n    run: prepare-data\n    outputs: {dataset: Artifacts/a-folder.h5, contact_sheet: Pipelines/yaml.yaml/d.png}\n",
                   arguments: run("outplace"), lines: [["$file:5:24: error: output 'dataset' of stage 'data': Artifacts/a-folder.h5: is a folder, not a file"],
                                                       ["$file:5:62: error: output 'contact_sheet' of stage 'data': Pipelines/yaml.yaml/d.png:", "Pipelines/yaml.yaml is not a folder"]]),
        RunnerCase(name: "unkin", yaml: "name: x\nstages:\n  - name: data\n    run: prepare-data\n    inputs: {bogus: ./Pipelines/yaml.yaml}\n    \(dataOutputs)\n",
                   arguments: run("unkin"), lines: [["$file:5:21: error: stage 'data': prepare-data has no input 'bogus' (it reads: nothing)"]]),
        RunnerCase(name: "good", yaml: goodPipeline + "\n", arguments: run("good", ["--workspace", "$root/no-such-workspace"]), status: 1,
                   lines: [["error: --workspace $root/no-such-workspace: no such folder"]]),
        RunnerCase(name: "good", arguments: run("good", ["--set", "data.bogus=1"]), lines: [["--set data.bogus=1: error: stage 'data': prepare-data has no parameter 'bogus'"]]),
        RunnerCase(name: "good", arguments: run("good", ["--set", "data.image_size=2.5"]), lines: [["--set data.image_size=2.5: error: stage 'data': parameter 'image_size' must be a whole number, got 2.5"]]),
        RunnerCase(name: "good", arguments: run("good", ["--set", "data.image_size=1"]), lines: [["--set data.image_size=1: error: stage 'data': parameter 'image_size' must be in [8, 4096], got 1"]]),
        RunnerCase(name: "good", arguments: run("good", ["--set", "nope=1"]), lines: [["--set nope=1: error: no shared parameter 'nope'"]]),
        RunnerCase(name: "good", arguments: ["status", "Pipelines/good.yaml", "--set", "data.bogus=1"], lines: [["--set data.bogus=1: error: stage 'data': prepare-data has no parameter 'bogus'"]]),
        RunnerCase(name: "good", arguments: run("good", ["--until", "nope"]), status: 1, lines: [["error: $file: no stage 'nope' (stages: data)"]]),
        RunnerCase(name: "good", arguments: run("good", ["--force", "nope"]), status: 1, lines: [["error: $file: no stage 'nope' (stages: data)"]]),
        RunnerCase(name: "none", arguments: run("none"), lines: [["$file: error: no such pipeline file"]]),
        RunnerCase(name: "folder", arguments: ["status", "Pipelines"], lines: [["Pipelines: error: is a folder, not a pipeline file"]]),
        RunnerCase(name: "binary", arguments: run("binary"), lines: [["$file: error: pipeline file is not UTF-8 text"]]),
        RunnerCase(name: "emptyfile", yaml: "", arguments: run("emptyfile"), lines: [["$file:", "error:"]]),
        RunnerCase(name: "notmapping", yaml: "- just\n- a list\n", arguments: run("notmapping"), lines: [["$file:1:1: error:"]]),
    ]

    // MARK: - The tests

    func testEveryStageAndTheRunnerRefuseBadInputCleanly() throws {
        if let error = Self.fixtureError { throw error }
        let started = Date()
        let root = Self.fixtures["root"]!
        let fixturesBefore = Self.snapshot(root)
        var perStage: [String: Int] = [:]

        for (n, c) in Self.stageCases.enumerated() {
            let out = root + "/cases/\(n)"
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let args = arguments(c, out: out)
            if let sentinel = c.sentinel {
                let path = Self.resolve("$out/" + Defaults.file(sentinel), out: out)
                try Data("sentinel \(n): the previous \(sentinel)\n".utf8).write(to: URL(fileURLWithPath: path))
            }
            let before = Self.snapshot(out)
            let result = try ProcessRunner.run(StageHarness.binFolder.appendingPathComponent(c.stage), StageHarness.toyStem(c.stage, args),
                                               environment: ["WSSS_LOG_LEVEL": "error"].merging(c.environment) { $1 })
            let shown = "\(c.stage) \(args.joined(separator: " "))"
            XCTAssertEqual(result.status, 1, "exit status of \(shown): \(result.output)", line: c.line)
            let lines = result.stderr.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).filter { !$0.isEmpty }
            XCTAssertEqual(lines.count, 1, "stderr of \(shown) is not one line:\n\(result.stderr)", line: c.line)
            let prefix = "error: \(c.stage): "
            XCTAssertTrue(lines.last?.hasPrefix(prefix) == true, "\(shown): \(result.stderr)", line: c.line)
            for expected in c.expect.map({ Self.resolve($0, out: out) }) {
                XCTAssertTrue(lines.last?.contains(expected) == true, "\(shown):\n  expected \(expected)\n  got      \(result.stderr)", line: c.line)
            }
            XCTAssertEqual(Self.snapshot(out), before, "\(shown) left or changed files in its output folder", line: c.line)
            perStage[c.stage, default: 0] += 1
        }

        // The runner, in one workspace (its describe cache is kept between cases).
        let workspace = root + "/workspace"
        try FileManager.default.createDirectory(atPath: workspace + "/Pipelines", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: workspace + "/Artifacts", withIntermediateDirectories: true)
        try Data("sentinel: the previous dataset\n".utf8).write(to: URL(fileURLWithPath: workspace + "/Artifacts/d.h5"))
        try FileManager.default.createDirectory(atPath: workspace + "/Artifacts/a-folder.h5", withIntermediateDirectories: true)
        try Data([0xff, 0xfe, 0x00, 0x9c, 0x80]).write(to: URL(fileURLWithPath: workspace + "/Pipelines/binary.yaml"))
        let wsss = StageHarness.binFolder.appendingPathComponent("wsss")
        for c in Self.runnerCases {
            if let yaml = c.yaml { try Data(yaml.utf8).write(to: URL(fileURLWithPath: workspace + "/Pipelines/\(c.name).yaml")) }
            let before = Self.snapshot(workspace).filter { !$0.key.hasPrefix("Artifacts/.cache") }
            let args = c.arguments.map { Self.resolve($0, out: workspace) }
            let result = try ProcessRunner.run(wsss, args + (args.contains("--workspace") ? [] : ["--workspace", workspace]), in: URL(fileURLWithPath: workspace))
            let shown = "wsss \(args.joined(separator: " "))"
            XCTAssertEqual(result.status, c.status, "exit status of \(shown): \(result.output)", line: c.line)
            XCTAssertLessThan(result.status, 128, line: c.line)
            let lines = result.stderr.split(separator: "\n").map(String.init)
            XCTAssertEqual(lines.count, c.lines.count, "\(shown):\n\(result.stderr)", line: c.line)
            let file = "Pipelines/\(c.name).yaml"
            for (line, expected) in zip(lines, c.lines) {
                // FILE:LINE:COLUMN: error: (or FILE: error:, --set ...: error:, error: ...).
                XCTAssertTrue(line.range(of: #"^(Pipelines(/[a-z]+\.yaml(:\d+:\d+)?)?: |--set \S+: )?error: "#, options: .regularExpression) != nil,
                              "\(shown): \(line)", line: c.line)
                for part in expected.map({ $0.replacingOccurrences(of: "$file", with: file).replacingOccurrences(of: "$root", with: root) }) {
                    XCTAssertTrue(line.contains(part), "\(shown):\n  expected \(part)\n  got      \(line)", line: c.line)
                }
            }
            XCTAssertTrue(result.stdout.isEmpty, "\(shown) ran something: \(result.stdout)", line: c.line)
            XCTAssertEqual(Self.snapshot(workspace).filter { !$0.key.hasPrefix("Artifacts/.cache") }, before,
                           "\(shown) left or changed files in the workspace", line: c.line)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + "/no-such-workspace"))
        perStage["wsss"] = Self.runnerCases.count

        let after = Self.snapshot(root).filter { !$0.key.hasPrefix("cases") && !$0.key.hasPrefix("workspace") }
        XCTAssertEqual(after, fixturesBefore.filter { !$0.key.hasPrefix("cases") && !$0.key.hasPrefix("workspace") }, "a case changed the shared fixtures")

        let count = Self.stageCases.count + Self.runnerCases.count
        XCTAssertEqual(Set(perStage.keys), Set(Defaults.outs.keys).union(["wsss"]), "every stage and the runner have cases")
        print("bad-input suite: \(count) cases (\(perStage.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))) in \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
        XCTAssertGreaterThanOrEqual(count, 80)
    }
}

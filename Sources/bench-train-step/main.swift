// The Swift side of `make bench` (Benchmarks/bench.sh runs it side by side with
// Benchmarks/bench_pytorch.py and Benchmarks/bench_onnxruntime.py, alternating rounds).
//
//   bench-train-step --vit-weights Artifacts/pretrained/dinov2-vits14.h5 --threads 2 \
//       --task train:112:32:5 --task forward:224:16:4 [--frozen 8 --classes 10 --warmup 1 --sgemm-rows 2080]
//
// Each task builds the ViT from the pretrained weights at the task's input size
// (PretrainedViTWeights.makeModel: DINOv2 ViT-S/14, position embedding resampled, fresh heads) and
// prints one JSON line with the median and best of STEPS timed steps after --warmup untimed ones:
//   train:IMAGE:BATCH:STEPS    ClassifierTrainer.trainStep as classify-train's default config runs
//                              it: forward, the two losses, backward, clipping at norm 1, AdamW
//                              (lr 1e-4, heads x10, weight decay 0.05); the embedding and the first
//                              --frozen blocks are frozen (model.frozenBlocks, not in the optimiser)
//   forward:IMAGE:BATCH:STEPS  extract-attention's forward: ViT.forward keeping every layer's
//                              attention probabilities and logits, both heads
// gflop_per_image counts multiply-adds x 2 of the matrix products as ViTConfig.forwardFLOPs does;
// a training step adds 2x the forward FLOPs of what is trained (the blocks above the frozen ones
// and the heads). peak_rss_mb: the process's peak resident memory so far (ResourceUsage).
// --sgemm-rows R adds one JSON line: sgemm GFLOP/s (OpenBLAS, as the linear layers call it: A B^T)
// at the ViT's linear shapes with R rows (qkv, proj, fc1, fc2), their FLOP-weighted rate, and 1024^3.
import Engine
import Foundation
import Primitives
import StageKit

let blasLine = BLASCorePolicy.apply()  // may re-execute with other OpenBLAS kernels

var arguments = Array(CommandLine.arguments.dropFirst())

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("bench-train-step: \(message)\n".utf8))
    exit(2)
}

func values(_ name: String) -> [String] {
    var out: [String] = []
    var i = 0
    while i < arguments.count {
        if arguments[i] == "--" + name {
            guard i + 1 < arguments.count else { fail("--\(name) needs a value") }
            out.append(arguments[i + 1])
            i += 2
        } else {
            i += 1
        }
    }
    return out
}

func option(_ name: String, _ fallback: Int) -> Int {
    guard let text = values(name).last else { return fallback }
    guard let v = Int(text) else { fail("--\(name) must be an integer, got '\(text)'") }
    return v
}

func now() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}

/// Sorted seconds of `steps` timed runs of `body` after `warmup` untimed ones.
func timed(warmup: Int, steps: Int, _ body: () throws -> Void) rethrows -> [Double] {
    for _ in 0..<warmup { try body() }
    var times: [Double] = []
    for _ in 0..<steps {
        let t0 = now()
        try body()
        times.append(now() - t0)
    }
    return times.sorted()
}

/// Best and median GFLOP/s of C[m, n] = A[m, k] B[n, k]^T (a linear layer's product).
func sgemmRate(m: Int, n: Int, k: Int) -> (best: Double, median: Double) {
    let a = Tensor(shape: [m, k], repeating: 0.5), b = Tensor(shape: [n, k], repeating: 0.25), c = Tensor(shape: [m, n])
    let flops = 2.0 * Double(m) * Double(n) * Double(k)
    let reps = max(3, Int(4e9 / flops))  // ~4 GFLOP per measurement, ~30 ms at 150 GFLOP/s
    let times = timed(warmup: 1, steps: 5) {
        for _ in 0..<reps {
            Float.gemm(transA: false, transB: true, m: m, n: n, k: k, alpha: 1, a: a.data, lda: k,
                       b: b.data, ldb: k, beta: 0, c: c.data, ldc: n)
        }
    }
    return (flops * Double(reps) / times[0] / 1e9, flops * Double(reps) / times[times.count / 2] / 1e9)
}

func emit(_ object: [String: Any]) {
    let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
    fflush(stdout)
}

guard let weightsPath = values("vit-weights").last else { fail("--vit-weights F.h5 is required (made by `make pretrained`)") }
let tasks = values("task")
let sgemmRows = option("sgemm-rows", 0)
guard !tasks.isEmpty || sgemmRows > 0 else { fail("nothing to do: give --task train|forward:IMAGE:BATCH:STEPS or --sgemm-rows R") }
let classes = option("classes", 10), frozen = option("frozen", 8), warmup = option("warmup", 1)
// 0 keeps OpenBLAS's own count (OPENBLAS_NUM_THREADS or the online cores) and the engine's default.
let threads = option("threads", 0)
if threads > 0 {
    setenv("WSSS_ENGINE_THREADS", String(threads), 1)  // read lazily by the engine
    EngineInfo.setBlasThreads(threads)
}
let weights: PretrainedViTWeights
do { weights = try PretrainedViTWeights(path: weightsPath) } catch { fail("\(error)") }

for spec in tasks {
    let parts = spec.split(separator: ":").map(String.init)
    guard parts.count == 4, ["train", "forward"].contains(parts[0]), let image = Int(parts[1]), let batch = Int(parts[2]),
          let steps = Int(parts[3]), image > 0, image % weights.patchSize == 0, batch > 0, steps > 0 else {
        fail("bad task '\(spec)': expected train|forward:IMAGE:BATCH:STEPS with IMAGE a multiple of \(weights.patchSize)")
    }
    let kind = parts[0]
    let model: ViT
    do { model = try weights.makeModel(imageSize: image, numClasses: classes, seed: 0) } catch { fail("\(error)") }
    let config = model.config
    let images = Tensor(shape: [batch, image, image, 3])
    var rng = SplitMix64(seed: 2)
    images.fillNormal(std: 1, rng: &rng)

    // FLOPs per image: ViTConfig's forward count; backward = 2x the forward of what is trained.
    let t = Double(config.tokens), n = Double(config.grid * config.grid), d = Double(config.dim)
    let perBlock = 2 * t * d * (4 * d + 2 * Double(config.hidden)) + 4 * t * t * d
    let embedding = 2 * n * d * Double(config.inChannels * config.patchSize * config.patchSize)
    let forwardFLOPs = config.forwardFLOPs()
    var row: [String: Any] = ["engine": "swift", "task": kind, "image": image, "tokens": config.tokens, "batch": batch,
                              "blas": blasLine, "threads": EngineInfo.blasThreads, "engine_threads": Parallel.threads]
    let times: [Double]
    var flopsPerImage = forwardFLOPs
    if kind == "train" {
        guard frozen <= config.depth else { fail("--frozen \(frozen) exceeds the model's \(config.depth) blocks") }
        model.frozenBlocks = frozen  // before the trainer: its optimiser takes the trainable parameters
        var settings = OptimizerSettings()
        settings.lr = 1e-4
        settings.headLRMultiplier = 10
        settings.weightDecay = 0.05
        settings.clipGradNorm = 1
        settings.totalSteps = 1_000_000
        let trainer = ClassifierTrainer(model: model, settings: settings)
        var labels = [Float](repeating: 0, count: batch * classes)
        for i in labels.indices { labels[i] = rng.uniform() < 0.3 ? 1 : 0 }
        do {
            times = try timed(warmup: max(warmup, 1), steps: steps) { try trainer.trainStep(images: images, labels: labels) }
        } catch { fail("\(error)") }
        let trained = forwardFLOPs - embedding - Double(frozen) * perBlock
        flopsPerImage = forwardFLOPs + 2 * trained
        row["frozen_blocks"] = frozen
        row["trainable_parameters"] = model.trainableParameters.reduce(0) { $0 + $1.value.count }
    } else {
        var acts: ViTActivations?
        times = timed(warmup: warmup, steps: steps) {
            let a = model.forward(images: images, training: false, reuse: acts)
            precondition(a.attnProbs.count == config.depth)
            acts = a
        }
    }
    let median = times[times.count / 2], best = times[0]
    row["steps"] = times.count
    row["median_s"] = median
    row["best_s"] = best
    row["images_per_s"] = Double(batch) / median
    row["best_images_per_s"] = Double(batch) / best
    row["gflop_per_image"] = flopsPerImage / 1e9
    row["achieved_gflops"] = flopsPerImage * Double(batch) / median / 1e9
    row["best_achieved_gflops"] = flopsPerImage * Double(batch) / best / 1e9
    row["peak_rss_mb"] = ResourceUsage.peakResidentMB()
    emit(row)
}

if sgemmRows > 0 {
    // The ViT's linear layers (D = 384, MLP 1536 for ViT-S) at `rows` = batch x tokens.
    let D = weights.dim, F = weights.mlpHidden
    let shapes = [("qkv", D, 3 * D), ("proj", D, D), ("fc1", D, F), ("fc2", F, D)]
    var row: [String: Any] = ["engine": "swift", "task": "sgemm", "rows": sgemmRows, "blas": blasLine, "threads": EngineInfo.blasThreads]
    var flops = 0.0, seconds = 0.0
    for (name, k, n) in shapes {
        let r = sgemmRate(m: sgemmRows, n: n, k: k)
        row["\(name)_shape"] = "\(sgemmRows)x\(k)x\(n)"
        row["\(name)_gflops"] = r.best
        let f = 2.0 * Double(sgemmRows * k * n)
        flops += f
        seconds += f / (r.best * 1e9)
    }
    row["weighted_gflops"] = flops / seconds / 1e9
    row["sgemm_1024_gflops"] = sgemmRate(m: 1024, n: 1024, k: 1024).best
    row["peak_rss_mb"] = ResourceUsage.peakResidentMB()
    emit(row)
}

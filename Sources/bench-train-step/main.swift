// Times one training step (forward, loss, backward, clipping, AdamW, as ClassifierTrainer runs
// it in classify-train) and sgemm in the same process, and prints one JSON line. Benchmarks/bench.sh
// runs it side by side with Benchmarks/bench_pytorch.py and prints the ratio.
import COpenBLAS
import Engine
import Foundation
import Primitives

let blasLine = BLASCorePolicy.apply()  // may re-execute with other OpenBLAS kernels

func option(_ name: String, _ fallback: Int) -> Int {
    let args = CommandLine.arguments
    guard let i = args.firstIndex(of: "--" + name), i + 1 < args.count, let v = Int(args[i + 1]) else { return fallback }
    return v
}

func doubleOption(_ name: String, _ fallback: Double) -> Double {
    let args = CommandLine.arguments
    guard let i = args.firstIndex(of: "--" + name), i + 1 < args.count, let v = Double(args[i + 1]) else { return fallback }
    return v
}

func now() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}

/// Best-of-three sgemm rate (GFLOP/s) for C[m, n] = A[m, k] B[k, n].
func sgemmRate(m: Int, n: Int, k: Int) -> Double {
    let a = Tensor(shape: [m, k]), b = Tensor(shape: [k, n]), c = Tensor(shape: [m, n])
    var rng = SplitMix64(seed: 1)
    for i in 0..<a.count { a.data[i] = Float(rng.uniform()) }
    for i in 0..<b.count { b.data[i] = Float(rng.uniform()) }
    func run() { cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(m), blasint(n), blasint(k), 1, a.data, blasint(k), b.data, blasint(n), 0, c.data, blasint(n)) }
    run()
    let flops = 2.0 * Double(m * n * k)
    let reps = max(3, Int(2e9 / flops))
    var best = Double.infinity
    for _ in 0..<3 {
        let t0 = now()
        for _ in 0..<reps { run() }
        best = min(best, (now() - t0) / Double(reps))
    }
    return flops / best / 1e9
}

func textOption(_ name: String) -> String? {
    let args = CommandLine.arguments
    guard let i = args.firstIndex(of: "--" + name), i + 1 < args.count else { return nil }
    return args[i + 1]
}

// --stem-weights F.h5: the hybrid ViT (frozen pretrained stem, as classify-train's default).
let stemPath = textOption("stem-weights")
let config = ViTConfig(imageSize: option("image", 64), patchSize: option("patch", 8), depth: option("depth", 4),
                       dim: option("dim", 128), heads: option("heads", 4), mlpRatio: option("mlp-ratio", 4),
                       numClasses: option("classes", 10), stem: stemPath == nil ? "patch" : "efficientnet_lite0")
let batch = option("batch", 32)
let steps = option("steps", 20)
let warmup = option("warmup", 3)
let seconds = doubleOption("seconds", 0)
// 0 keeps OpenBLAS's own count (OPENBLAS_NUM_THREADS or the online cores).
let threads = option("threads", 0)
if threads > 0 { openblas_set_num_threads(Int32(threads)) }

let stem = try stemPath.map { try PretrainedStem.load(path: $0, inputNormalization: .imageNet) }
let model = try ViT(config: config, seed: 0, stem: stem)
var settings = OptimizerSettings()
settings.lr = 1e-3
settings.headLRMultiplier = 10
settings.weightDecay = 0.05
settings.totalSteps = 1_000_000
let trainer = ClassifierTrainer(model: model, settings: settings)
let images = Tensor(shape: [batch, config.imageSize, config.imageSize, 3])
var labels = [Float](repeating: 0, count: batch * config.numClasses)
var rng = SplitMix64(seed: 2)
for i in 0..<images.count { images.data[i] = Float(rng.normal()) }
for i in 0..<labels.count { labels[i] = rng.uniform() < 0.3 ? 1 : 0 }

for _ in 0..<warmup { try trainer.trainStep(images: images, labels: labels) }
var times: [Double] = []
let start = now()
while times.count < steps || now() - start < seconds {
    let t0 = now()
    try trainer.trainStep(images: images, labels: labels)
    times.append(now() - t0)
}
times.sort()
let median = times[times.count / 2]
// A training step costs about 3 forwards (backward = 2 forwards' worth of products).
let stepFLOPs = model.trainingFLOPs() * Double(batch)
let rows = batch * config.tokens
let result: [String: Any] = [
    "engine": "swift", "blas": blasLine, "blas_core": BLASCorePolicy.loadedCore,
    "threads": Int(openblas_get_num_threads()), "batch": batch, "steps": times.count,
    "median_step_s": median, "images_per_s": Double(batch) / median,
    "mean_images_per_s": Double(batch * times.count) / times.reduce(0, +),
    "step_gflop": stepFLOPs / 1e9, "achieved_gflops": stepFLOPs / median / 1e9,
    "sgemm_gflops_1024": sgemmRate(m: 1024, n: 1024, k: 1024),
    "sgemm_gflops_fc1": sgemmRate(m: rows, n: config.hidden, k: config.dim),
    "sgemm_gflops_fc2": sgemmRate(m: rows, n: config.dim, k: config.hidden),
]
let data = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
print(String(decoding: data, as: UTF8.self))

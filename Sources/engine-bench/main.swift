// Micro-benchmarks of the engine (not a test): run the release build, e.g.
//   swift build -c release --product engine-bench   (or: swift build -c release)
//   .build/release/engine-bench vit --dim 192 --depth 6 --heads 3 --image 64 --patch 8 --batch 32
//   .build/release/engine-bench attention | elementwise | sgemm
// Every figure is measured side by side in one run; the ratio to plain sgemm is what carries
// over between runs on this shared machine.
import Engine
import Foundation
import Primitives
import ACR
import Localization

let blasLine = BLASCorePolicy.apply()  // the OpenBLAS kernels the stages run (may re-execute)

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// Median seconds of `reps` runs after one warm-up.
func time(_ reps: Int, _ body: () -> Void) -> Double {
    body()
    var ts: [Double] = []
    for _ in 0..<reps {
        let t0 = now()
        body()
        ts.append(now() - t0)
    }
    return ts.sorted()[ts.count / 2]
}

var args = Array(CommandLine.arguments.dropFirst())
let command = args.isEmpty ? "vit" : args.removeFirst()
func option(_ name: String, _ def: Int) -> Int {
    if let i = args.firstIndex(of: "--" + name), i + 1 < args.count, let v = Int(args[i + 1]) { return v }
    return def
}
func flag(_ name: String) -> Bool { args.contains("--" + name) }

print("\(blasLine); \(Parallel.threads) engine threads")
print("config: \(EngineInfo.blasConfig)")

/// sgemm GFLOP/s for C[m,n] = A[m,k] B[k,n] (optionally with B transposed as in a linear layer).
func sgemmRate(_ m: Int, _ n: Int, _ k: Int, transB: Bool = true, reps: Int = 5) -> Double {
    let a = Tensor(shape: [m, k], repeating: 0.5), b = Tensor(shape: [n, k], repeating: 0.25), c = Tensor(shape: [m, n])
    let t = time(reps) {
        Float.gemm(transA: false, transB: transB, m: m, n: n, k: k, alpha: 1, a: a.data, lda: k,
                   b: b.data, ldb: transB ? k : n, beta: 0, c: c.data, ldc: n)
    }
    return 2 * Double(m) * Double(n) * Double(k) / t / 1e9
}

/// Replays exactly the matrix products of one ViT training step (forward + backward) with no
/// elementwise work: the time the step would take if everything else were free.
func gemmOnlyStep(_ c: ViTConfig, batch B: Int, gridH: Int, gridW: Int) -> () -> Void {
    let N = gridH * gridW, T = N + 1, D = c.dim, F = c.hidden, rows = B * T, H = c.heads, dh = D / H
    let K = c.inChannels * c.patchSize * c.patchSize
    let x = Tensor(shape: [rows, max(3 * D, F)], repeating: 0.01), y = Tensor(shape: [rows, max(3 * D, F)])
    let w = Tensor(shape: [max(3 * D, F) * max(D, K)], repeating: 0.01), gw = Tensor(shape: [max(3 * D, F) * max(D, K)])
    let p = Tensor(shape: [T, T], repeating: 0.01), dp = Tensor(shape: [T, T])
    let q = Tensor(shape: [rows, 3 * D], repeating: 0.01), dq = Tensor(shape: [rows, 3 * D])
    func linear(_ r: Int, _ i: Int, _ o: Int) {
        Float.gemm(transA: false, transB: true, m: r, n: o, k: i, alpha: 1, a: x.data, lda: i, b: w.data, ldb: i, beta: 0, c: y.data, ldc: o)
    }
    func linearBack(_ r: Int, _ i: Int, _ o: Int) {
        Float.gemm(transA: false, transB: false, m: r, n: i, k: o, alpha: 1, a: x.data, lda: o, b: w.data, ldb: i, beta: 0, c: y.data, ldc: i)
        Float.gemm(transA: true, transB: false, m: o, n: i, k: r, alpha: 1, a: x.data, lda: o, b: y.data, ldb: i, beta: 1, c: gw.data, ldc: i)
    }
    func heads(_ backward: Bool) {
        Kernels.forEachHeadForBenchmark(B * H) { pair in
            let b = pair / H, h = pair % H
            let qp = q.data + b * T * 3 * D + h * dh
            let scratch = pair % 2 == 0 ? p : dp
            if !backward {
                Float.gemm(transA: false, transB: true, m: T, n: T, k: dh, alpha: 1, a: qp, lda: 3 * D, b: qp + D, ldb: 3 * D, beta: 0, c: scratch.data, ldc: T)
                Float.gemm(transA: false, transB: false, m: T, n: dh, k: T, alpha: 1, a: p.data, lda: T, b: qp + 2 * D, ldb: 3 * D, beta: 0, c: dq.data + b * T * 3 * D + h * dh, ldc: 3 * D)
            } else {
                Float.gemm(transA: false, transB: true, m: T, n: T, k: dh, alpha: 1, a: qp, lda: 3 * D, b: qp + 2 * D, ldb: 3 * D, beta: 0, c: scratch.data, ldc: T)
                Float.gemm(transA: true, transB: false, m: T, n: dh, k: T, alpha: 1, a: p.data, lda: T, b: qp, ldb: 3 * D, beta: 1, c: dq.data + b * T * 3 * D + h * dh + 2 * D, ldc: 3 * D)
                Float.gemm(transA: false, transB: false, m: T, n: dh, k: T, alpha: 1, a: p.data, lda: T, b: qp + D, ldb: 3 * D, beta: 1, c: dq.data + b * T * 3 * D + h * dh, ldc: 3 * D)
                Float.gemm(transA: true, transB: false, m: T, n: dh, k: T, alpha: 1, a: p.data, lda: T, b: qp, ldb: 3 * D, beta: 1, c: dq.data + b * T * 3 * D + h * dh + D, ldc: 3 * D)
            }
        }
    }
    return {
        linear(B * N, K, D)
        for _ in 0..<c.depth {
            linear(rows, D, 3 * D); heads(false); linear(rows, D, D); linear(rows, D, F); linear(rows, F, D)
        }
        for _ in 0..<c.depth {
            linearBack(rows, F, D); linearBack(rows, D, F); linearBack(rows, D, D); heads(true); linearBack(rows, D, 3 * D)
        }
        Float.gemm(transA: true, transB: false, m: D, n: K, k: B * N, alpha: 1, a: x.data, lda: D, b: y.data, ldb: K, beta: 1, c: gw.data, ldc: K)
        withExtendedLifetime((x, y, w, gw, p, dp, q, dq)) {}
    }
}

/// Times of several bodies measured in interleaved rounds (one of each per round), so load
/// from other processes on the shared machine hits all of them alike. Returns per body the
/// minimum and the median over rounds.
func interleaved(_ rounds: Int, _ bodies: [() -> Void]) -> [(min: Double, median: Double)] {
    for b in bodies { b() }  // warm-up
    var ts = [[Double]](repeating: [], count: bodies.count)
    for _ in 0..<rounds {
        for (i, b) in bodies.enumerated() {
            let t0 = now()
            b()
            ts[i].append(now() - t0)
        }
    }
    return ts.map { t in let s = t.sorted(); return (s[0], s[s.count / 2]) }
}

func benchViT() {
    let cfg = ViTConfig(imageSize: option("image", 64), patchSize: option("patch", 8), depth: option("depth", 6),
                        dim: option("dim", 192), heads: option("heads", 3), mlpRatio: 4, numClasses: option("classes", 10))
    let B = option("batch", 32), reps = option("reps", 7)
    if flag("attention-blas") { Kernels.attentionThreading = .blas }
    let model = try! ViT(config: cfg, seed: 1)
    var rng = SplitMix64(seed: 2)
    let images = Tensor(shape: [B, cfg.imageSize, cfg.imageSize, 3])
    images.fillNormal(std: 1, rng: &rng)
    let gCam = Tensor(shape: [B, cfg.numClasses], repeating: 0.01), gCls = Tensor(shape: [B, cfg.numClasses], repeating: 0.01)
    var acts = model.forward(images: images)
    if flag("steps-only") {  // for profilers: nothing but training steps
        for _ in 0..<reps {
            acts = model.forward(images: images, training: true, reuse: acts)
            model.backward(acts, ViTOutputGrads(camLogits: gCam, clsLogits: gCls))
        }
        return
    }
    let a = Tensor(shape: [1024, 1024], repeating: 0.5), b = Tensor(shape: [1024, 1024], repeating: 0.25), c = Tensor(shape: [1024, 1024])
    let gemmOnly = gemmOnlyStep(cfg, batch: B, gridH: cfg.grid, gridW: cfg.grid)
    let t = interleaved(reps, [
        { acts = model.forward(images: images, training: true, reuse: acts) },
        { model.backward(acts, ViTOutputGrads(camLogits: gCam, clsLogits: gCls)) },
        gemmOnly,
        { Float.gemm(transA: false, transB: true, m: 1024, n: 1024, k: 1024, alpha: 1, a: a.data, lda: 1024,
                     b: b.data, ldb: 1024, beta: 0, c: c.data, ldc: 1024) },
    ])
    let flops = 3 * cfg.forwardFLOPs() * Double(B)
    let step = (t[0].min + t[1].min, t[0].median + t[1].median), gemm = t[2], big = t[3]
    let bigRate = (2 * pow(1024.0, 3) / big.min / 1e9, 2 * pow(1024.0, 3) / big.median / 1e9)
    print(String(format: "ViT dim %d depth %d heads %d, %dx%d patch %d, batch %d (%.1f M params, %.2f GFLOP per step); %d interleaved rounds, min | median",
                 cfg.dim, cfg.depth, cfg.heads, cfg.imageSize, cfg.imageSize, cfg.patchSize, B,
                 Double(model.parameterCount) / 1e6, flops / 1e9, reps))
    print(String(format: "  forward %.1f | %.1f ms, backward %.1f | %.1f ms", t[0].min * 1e3, t[0].median * 1e3, t[1].min * 1e3, t[1].median * 1e3))
    print(String(format: "  step (fwd+bwd) %.1f | %.1f ms = %.1f | %.1f img/s, %.1f | %.1f GFLOP/s",
                 step.0 * 1e3, step.1 * 1e3, Double(B) / step.0, Double(B) / step.1, flops / step.0 / 1e9, flops / step.1 / 1e9))
    print(String(format: "  the step's matrix products alone: %.1f | %.1f ms (%.1f | %.1f GFLOP/s); non-product share of the step %.0f%% | %.0f%%",
                 gemm.min * 1e3, gemm.median * 1e3, flops / gemm.min / 1e9, flops / gemm.median / 1e9,
                 100 * (step.0 - gemm.min) / step.0, 100 * (step.1 - gemm.median) / step.1))
    print(String(format: "  plain sgemm 1024^3 in the same rounds: %.1f | %.1f GFLOP/s; step rate / sgemm rate = %.2f | %.2f",
                 bigRate.0, bigRate.1, flops / step.0 / 1e9 / bigRate.0, flops / step.1 / 1e9 / bigRate.1))
}

func benchAttention() {
    for (B, T, H, dh) in [(32, 65, 3, 64), (16, 197, 3, 64), (64, 50, 6, 64)] {
        let D = H * dh
        let qkv = Tensor(shape: [B * T, 3 * D]), out = Tensor(shape: [B * T, D])
        var rng = SplitMix64(seed: 3)
        qkv.fillNormal(std: 1, rng: &rng)
        let probs = Tensor(shape: [B, H, T, T]), logits = Tensor(shape: [B, H, T, T]), dq = Tensor(shape: [B * T, 3 * D])
        func run(_ mode: AttentionThreading, _ backward: Bool) -> () -> Void {
            return {
                Kernels.attentionThreading = mode
                if backward {
                    Kernels.attentionBackward(dQKV: dq.data, dProbs: nil, dOut: out.data, qkv: qkv.data, probs: probs.data,
                                              extraDProbs: nil, extraDLogits: nil, batch: B, tokens: T, dim: D, heads: H)
                } else {
                    Kernels.attentionForward(out: out.data, probs: probs.data, logits: logits.data, qkv: qkv.data,
                                             batch: B, tokens: T, dim: D, heads: H)
                }
            }
        }
        let t = interleaved(option("reps", 9), [run(.blas, false), run(.perHead, false), run(.blas, true), run(.perHead, true)])
        Kernels.attentionThreading = .perHead
        let fl = 4.0 * Double(B * H * T * T * dh)
        print(String(format: "attention B %d T %d H %d dh %d (min | median ms): forward blas %.2f | %.2f, perHead %.2f | %.2f; backward blas %.2f | %.2f, perHead %.2f | %.2f; perHead GFLOP/s fwd %.0f bwd %.0f",
                     B, T, H, dh, t[0].min * 1e3, t[0].median * 1e3, t[1].min * 1e3, t[1].median * 1e3,
                     t[2].min * 1e3, t[2].median * 1e3, t[3].min * 1e3, t[3].median * 1e3, fl / t[1].min / 1e9, 2 * fl / t[3].min / 1e9))
    }
}

func benchElementwise() {
    let n = 32 * 65 * 768
    let x = Tensor(shape: [n]), y = Tensor(shape: [n]), d = Tensor(shape: [n])
    var rng = SplitMix64(seed: 4)
    x.fillNormal(std: 2, rng: &rng)
    let rowsS = n / 65, rowsL = n / 192
    let w = Tensor(shape: [192], repeating: 1), b = Tensor(shape: [192]), st = Tensor(shape: [2 * rowsL])
    let gw = Tensor(shape: [192]), gb = Tensor(shape: [192])
    let names = ["GELU fwd", "GELU bwd", "softmax fwd (rows of 65)", "softmax bwd", "layernorm fwd (rows of 192)", "layernorm bwd",
                 "glibc tanhf loop (1 thread)", "copy (memmove)"]
    let t = interleaved(option("reps", 9), [
        { Kernels.geluForward(out: y.data, inp: x.data, count: n) },
        { Kernels.geluBackward(dInp: d.data, dOut: y.data, inp: x.data, count: n) },
        { Kernels.softmaxForward(out: y.data, inp: x.data, rows: rowsS, cols: 65) },
        { Kernels.softmaxBackward(dInp: d.data, dOut: x.data, out: y.data, rows: rowsS, cols: 65) },
        { Kernels.layerNormForward(out: y.data, mean: st.data, rstd: st.data + rowsL, inp: x.data, weight: w.data, bias: b.data, rows: rowsL, dim: 192, eps: 1e-6) },
        { Kernels.layerNormBackward(dInp: d.data, dWeight: gw.data, dBias: gb.data, dOut: y.data, inp: x.data, weight: w.data, mean: st.data, rstd: st.data + rowsL, rows: rowsL, dim: 192) },
        { for i in 0..<n { y.data[i] = tanhf(x.data[i]) } },
        { y.copy(from: x) },
    ])
    print("elementwise over \(n) floats, G elements/s (best | median of interleaved rounds):")
    for (name, r) in zip(names, t) {
        print(String(format: "  %@: %.2f | %.2f", name, Double(n) / r.min / 1e9, Double(n) / r.median / 1e9))
    }
}

/// ACR's attention consistency terms (`AttentionConsistency.evaluate`: head means, flip inversion,
/// L1 of class rows and patch blocks, forward + backward on the tape) at the default model's shapes.
func benchTape() {
    let B = option("batch", 32), H = 3, T = 65, L = 6
    var rng = SplitMix64(seed: 5)
    let maps = (0..<(2 * L)).map { _ -> Tensor in let t = Tensor(shape: [B, H, T, T]); t.fillUniform(0, 0.03, rng: &rng); return t }
    let order = TokenOrder.horizontalFlip(gridH: 8, gridW: 8)
    let t = interleaved(option("reps", 5), [{
        _ = AttentionConsistency.evaluate(probs1: Array(maps[..<L]), probs2: Array(maps[L...]), order: order, alpha: 100, beta: 100)
    }])
    print(String(format: "tape: ACR attention consistency (flip), %d layers of [%d, %d, %d, %d] per view: forward + backward %.1f | %.1f ms",
                 L, B, H, T, T, t[0].min * 1e3, t[0].median * 1e3))
}

/// PAR on one image (affinity + iterations), the operation the pseudo-label stage runs per image;
/// Benchmarks/bench_par.py times the PyTorch reference on the same sizes.
func benchPAR() {
    let size = option("size", 512), maps = option("maps", 3)
    var rng = SplitMix64(seed: 3)
    let image = (0..<size * size * 3).map { _ in Float(rng.uniform() * 255) }
    let scores = (0..<maps * size * size).map { _ in Float(rng.uniform()) }
    let par = PixelAdaptiveRefinement()
    let seconds = time(option("reps", 3)) {
        let affinity = image.withUnsafeBufferPointer { par.affinity(image: $0.baseAddress!, height: size, width: size) }
        var refined = scores
        par.refine(maps: &refined, count: maps, height: size, width: size, affinity: affinity)
    }
    print(String(format: "PAR %dx%d, %d maps, %d iterations: %.1f ms", size, size, maps, par.iterations, seconds * 1000))
}

/// The frozen pretrained stem's forward (Tests/Fixtures/make_stem_fixture.py --full writes real-size
/// random weights): time per batch and its share of FLOPs.
func benchStem() {
    guard let i = args.firstIndex(of: "--weights"), i + 1 < args.count else {
        print("usage: engine-bench stem --weights STEM.h5 [--image S --batch B --reps R]")
        exit(2)
    }
    let stem = try! PretrainedStem.load(path: args[i + 1], inputNormalization: .imageNet)
    let size = option("image", 64), B = option("batch", 32)
    var rng = SplitMix64(seed: 1)
    let images = Tensor(shape: [B, size, size, 3])
    images.fillNormal(std: 1, rng: &rng)
    let out = Tensor(shape: [B, size / 8, size / 8, stem.outChannels])
    let seconds = time(option("reps", 10)) { stem.forward(images: images, into: out.data) }
    let flops = Double(B) * stem.forwardFLOPs(height: size, width: size)
    print(String(format: "stem %@ %dx%d batch %d: %.2f ms (%.2f ms/img), %.1f GFLOP/s",
                 stem.architecture.name, size, size, B, seconds * 1000, seconds * 1000 / Double(B), flops / seconds / 1e9))
}

switch command {
case "stem": benchStem()
case "par": benchPAR()
case "tape": benchTape()
case "vit": benchViT()
case "attention": benchAttention()
case "elementwise": benchElementwise()
case "sgemm":
    for (m, n, k) in [(1024, 1024, 1024), (2080, 768, 192), (2080, 192, 768), (2080, 576, 192), (3152, 768, 192)] {
        print(String(format: "sgemm %d x %d x %d: %.1f GFLOP/s", m, n, k, sgemmRate(m, n, k)))
    }
default:
    print("usage: engine-bench vit|attention|elementwise|tape|sgemm|par|stem [--weights STEM.h5 --size S --maps K --dim D --depth L --heads H --image S --patch P --batch B --reps R --attention-blas --steps-only]")
    exit(2)
}

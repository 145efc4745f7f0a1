#!/usr/bin/env python3
"""The summary of `make bench` (Benchmarks/bench.sh) from the JSON lines its engines printed.

Each line is one measurement: {"phase": "main"|"scaling", "round": R, "engine": ..., "task":
"train"|"forward"|"sgemm", "image", "batch", "images_per_s" (from the median step of that round),
...}. Per engine and task: the median and the best over rounds. The RATIO lines are ratios of the
medians (Swift over the other engine); the training-step line comes last.

    bench_report.py LOG --batch 32 --forward-batch 16 --big-batch 4
"""
import argparse
import json
import statistics
import sys

PATCH = 14


def tokens(image):
    return (image // PATCH) ** 2 + 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--forward-batch", type=int, required=True)
    ap.add_argument("--big-batch", type=int, required=True)
    ap.add_argument("--par", nargs=2, metavar=("SWIFT_MS", "TORCH_MS"), help="PAR times, if measured")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--load", help="the load average at the end of the run")
    a = ap.parse_args()
    rows = [json.loads(line) for line in open(a.log) if line.startswith("{")]

    def runs(engine, task, image, batch, phase=None):
        return [r for r in rows if r["engine"] == engine and r["task"] == task and r.get("image") == image
                and r.get("batch") == batch and (phase is None or r["phase"] == phase)]

    def stat(engine, task, image, batch, key="images_per_s"):
        values = [r[key] for r in runs(engine, task, image, batch)]
        return (statistics.median(values), max(values), values) if values else None

    def fmt(x, width=8, digits=1):
        return f"{x:{width}.{digits}f}" if x is not None else f"{'-':>{width}}"

    out = []
    say = out.append
    B, FB, BB = a.batch, a.forward_batch, a.big_batch
    main_rounds = sorted({r["round"] for r in rows if r["phase"] == "main"})
    swift_train = runs("swift", "train", 112, B, "main")
    if not swift_train:
        sys.exit("bench_report.py: no Swift training-step measurement in the log")
    first = swift_train[0]
    torch_any = next((r for r in rows if r["engine"] == "pytorch"), {})
    ort_any = next((r for r in rows if r["engine"] == "onnxruntime"), {})
    say(f"Swift: {first['blas']}, {first['engine_threads']} engine threads; PyTorch {torch_any.get('torch', '?')} "
        f"({torch_any.get('threads', '?')} threads); onnxruntime {ort_any.get('onnxruntime', '?')} ({ort_any.get('threads', '?')} threads)")
    say(f"onnxruntime runs {ort_any.get('graph', '?')}")
    plural = lambda n, word: f"{n} {word}" + ("" if n == 1 else "s")  # noqa: E731
    say(f"{plural(len(main_rounds), 'alternating round')} (Swift, PyTorch, onnxruntime in turn), {plural(first['steps'], 'timed step')} "
        f"per task and round after warm-up; img/s from a round's median step; median | best over rounds, then each round")

    def block(title, task, image, batch, engines):
        say("")
        say(f"{title}, {image} px ({tokens(image)} tokens), batch {batch}:      median |     best   img/s")
        for engine, label in engines:
            s = stat(engine, task, image, batch)
            if s:
                say(f"  {label:<44}{fmt(s[0])} | {fmt(s[1])}   rounds: {' '.join(f'{v:.1f}' for v in s[2])}")

    engines_fwd = [("swift", "swift"), ("pytorch", "pytorch (explicit attention)"), ("onnxruntime", "onnxruntime (backbone graph)")]
    block("training step (frozen embedding + 8 blocks, AdamW, clipping)", "train", 112, B,
          [("swift", "swift"), ("pytorch", "pytorch (explicit attention, frozen alike)")])
    block("forward with every layer's attention probabilities", "forward", 224, FB, engines_fwd)
    block("forward with every layer's attention probabilities", "forward", 112, FB, engines_fwd)

    # FLOP rates: the Swift step's achieved rate next to sgemm at the same shapes, same processes.
    sg = [r for r in rows if r["task"] == "sgemm"]
    st = stat("swift", "train", 112, B, "achieved_gflops")
    say("")
    say(f"training step: {first['gflop_per_image'] * B:.1f} GFLOP per step (forward of all 12 blocks, backward of the "
        f"4 trained ones and the heads); swift achieves {st[0]:.0f} GFLOP/s (median; best {st[1]:.0f})")
    tt = stat("pytorch", "train", 112, B)
    if tt:
        say(f"  pytorch at the same FLOP count: {tt[0] * first['gflop_per_image']:.0f} GFLOP/s (median)")
    fw = runs("swift", "forward", 224, FB, "main")
    if fw:
        fs = stat("swift", "forward", 224, FB, "achieved_gflops")
        say(f"forward 224 px: {fw[0]['gflop_per_image']:.2f} GFLOP per image; swift achieves {fs[0]:.0f} GFLOP/s (median; best {fs[1]:.0f})")
    if sg:
        say(f"sgemm (OpenBLAS, A B^T as the linear layers call it) at the step's shapes, rows {sg[0]['rows']} = {B} x 65, "
            f"measured in each Swift round: median | best over rounds, GFLOP/s")
        for name in ("qkv", "proj", "fc1", "fc2"):
            v = [r[f"{name}_gflops"] for r in sg]
            say(f"  {name:<5}{sg[0][name + '_shape']:>16}  {statistics.median(v):7.1f} | {max(v):7.1f}")
        w = [r["weighted_gflops"] for r in sg]
        big = [r["sgemm_1024_gflops"] for r in sg]
        say(f"  FLOP-weighted over the four shapes:  {statistics.median(w):7.1f} | {max(w):7.1f}   (1024^3: {statistics.median(big):.1f} | {max(big):.1f})")
        say(f"  swift training step / FLOP-weighted sgemm: {100 * st[0] / statistics.median(w):.0f}% (medians)")

    # Scaling with resolution: 112 px (and 224 px forward) from the rounds above, the rest from one round.
    say("")
    say("scaling (img/s, median; training step and forward with attention probabilities, same settings as above):")
    say("     px tokens | train batch    swift  pytorch  ratio | fwd batch    swift  pytorch  onnxrt  vs-pt vs-ort")
    for image in (112, 168, 224, 448):
        tb = BB if image == 448 else B
        fb = BB if image == 448 else FB
        s_t, p_t = stat("swift", "train", image, tb), stat("pytorch", "train", image, tb)
        s_f, p_f, o_f = stat("swift", "forward", image, fb), stat("pytorch", "forward", image, fb), stat("onnxruntime", "forward", image, fb)
        med = lambda s: s[0] if s else None  # noqa: E731
        ratio = lambda x, y: x / y if x and y else None  # noqa: E731
        say(f"  {image:5d} {tokens(image):6d} | {tb:11d} {fmt(med(s_t))} {fmt(med(p_t))} {fmt(ratio(med(s_t), med(p_t)), 6, 2)} | "
            f"{fb:9d} {fmt(med(s_f))} {fmt(med(p_f))} {fmt(med(o_f), 7)} {fmt(ratio(med(s_f), med(p_f)), 6, 2)} {fmt(ratio(med(s_f), med(o_f)), 6, 2)}")
    scaling = [r for r in rows if r["phase"] == "scaling"]
    if scaling:
        say(f"  (168 and 448 px and the 224 px training step: one round of {plural(scaling[0]['steps'], 'timed step')}; 448 px at batch {BB})")
    else:
        say("  (scaling round skipped: BENCH_SCALING=0)")

    rss = [r["peak_rss_mb"] for r in swift_train]
    torch_rss = [r["peak_rss_mb"] for r in runs("pytorch", "train", 112, B, "main")]
    say("")
    say(f"peak RSS, training step at batch {B}, 112 px: swift {max(rss):.0f} MB (the process's peak after the step: "
        f"loaded weights file, model, activations, AdamW state)" + (f"; pytorch process {max(torch_rss):.0f} MB" if torch_rss else ""))
    if a.load:
        say(f"load average at the end: {a.load} (other work on the machine distorts the timings; the ratios of alternating rounds less so)")

    say("")
    if a.par:
        swift_ms, torch_ms = float(a.par[0]), float(a.par[1])
        say(f"PAR 512x512, 3 maps, 10 iterations: swift {swift_ms} ms (one thread), pytorch {torch_ms} ms ({a.threads} threads)")
        say(f"RATIO par-512-vs-pytorch {torch_ms / swift_ms:.2f}")

    def ratio_line(name, task, image, batch, other):
        s, o = stat("swift", task, image, batch), stat(other, task, image, batch)
        if s and o:
            say(f"RATIO {name} {s[0] / o[0]:.2f}")

    ratio_line("forward-112-vs-pytorch", "forward", 112, FB, "pytorch")
    ratio_line("forward-vs-onnxruntime", "forward", 224, FB, "onnxruntime")
    ratio_line("forward-vs-pytorch", "forward", 224, FB, "pytorch")
    ratio_line("train-step-vs-pytorch", "train", 112, B, "pytorch")
    print("\n".join(out))


if __name__ == "__main__":
    main()

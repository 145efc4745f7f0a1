"""PyTorch probe behind the choice of the default classifier (README, "Classifier"): trains the
ViT of Tests/Fixtures/vit_torch.py FROM SCRATCH (linear patch embedding, or --stem conv: a small conv stem
also from scratch) on a dataset artifact with the classify-train recipe (AdamW, warm-up + cosine,
clipping, flips) and prints val mAP / F1 per epoch. On fashion-scenes it stays at the label prior
(val mAP ~0.21-0.23, F1 0.00) for several epochs, as our engine does.

    python Benchmarks/probe_classifier_pytorch.py --data Artifacts/demo/fashion-scenes.h5 --epochs 5 \
        --dim 128 --depth 4 --heads 4 --lr 1e-3 --head 1 [--init trunc|xavier|torch] [--stem conv]

Needs torch, h5py, hdf5plugin (e.g. the .venv-bench of `make bench` plus hdf5plugin).
"""
import sys, math, time, h5py, hdf5plugin, numpy as np, torch, torch.nn as nn
sys.path.insert(0, __import__('os').path.join(__import__('os').path.dirname(__import__('os').path.abspath(__file__)), '..', 'Tests', 'Fixtures'))
from vit_torch import ViT, loss_fn, adamw
import argparse
ap = argparse.ArgumentParser()
ap.add_argument('--lr', type=float, default=1e-3); ap.add_argument('--head', type=float, default=10)
ap.add_argument('--epochs', type=int, default=3); ap.add_argument('--dim', type=int, default=192)
ap.add_argument('--depth', type=int, default=6); ap.add_argument('--heads', type=int, default=3)
ap.add_argument('--patch', type=int, default=8); ap.add_argument('--init', default='torch')
ap.add_argument('--wd', type=float, default=0.05); ap.add_argument('--bs', type=int, default=64)
ap.add_argument('--warm', type=float, default=1.0); ap.add_argument('--stem', default='patch'); ap.add_argument('--data', default='Artifacts/demo/fashion-scenes.h5')
a = ap.parse_args()
torch.manual_seed(0); torch.set_num_threads(2)
f = h5py.File(a.data)
def load(split):
    d = f[split+'/images/data'][:].reshape(-1, 64, 64, 3).astype(np.float32) / 255
    mean = np.array([0.485, 0.456, 0.406], np.float32); std = np.array([0.229, 0.224, 0.225], np.float32)
    return torch.tensor((d - mean) / std), torch.tensor(f[split+'/labels'][:].astype(np.float32))
xt, yt = load('train'); xv, yv = load('val')
m = ViT(64, a.patch, a.dim, a.depth, a.heads, 4, 10)
if a.stem == 'conv':
    class Stem(nn.Module):
        def __init__(s, dim):
            super().__init__()
            s.c1 = nn.Conv2d(3, 32, 3, 2, 1); s.c2 = nn.Conv2d(32, 64, 3, 2, 1); s.c3 = nn.Conv2d(64, dim, 2, 2)
        def forward(s, x):
            x = torch.relu(s.c1(x)); x = torch.relu(s.c2(x)); return s.c3(x).flatten(2).transpose(1, 2)
    m.patch_embed = Stem(a.dim)
if a.init == 'trunc':
    for n, p in m.named_parameters():
        if p.dim() > 1 or n in ('cls_token', 'pos_embed'): nn.init.trunc_normal_(p, std=0.02)
        elif n.endswith('bias'): nn.init.zeros_(p)
elif a.init == 'xavier':
    for n, p in m.named_parameters():
        if p.dim() > 1 and (n.startswith('blocks') or n.startswith('patch_embed')): nn.init.xavier_uniform_(p.view(p.shape[0], -1))
        elif n in ('cls_token', 'pos_embed'): nn.init.trunc_normal_(p, std=0.02)
opt = adamw(m, a.lr, a.head, (0.9, 0.999), 1e-8, a.wd)
base = [g['lr'] for g in opt.param_groups]
steps_per = len(xt) // a.bs; total = steps_per * a.epochs; warm = int(a.warm * steps_per)
def ap_score(s, y):
    aps = []
    for c in range(y.shape[1]):
        o = np.argsort(-s[:, c]); t = y[o, c]; 
        if t.sum() == 0: continue
        prec = np.cumsum(t) / np.arange(1, len(t)+1); aps.append((prec * t).sum() / t.sum())
    return np.mean(aps)
step = 0
for ep in range(a.epochs):
    t0 = time.time(); perm = torch.randperm(len(xt)); m.train(); tot = 0
    for i in range(steps_per):
        idx = perm[i*a.bs:(i+1)*a.bs]
        x = xt[idx]; flip = torch.rand(len(idx)) < 0.5; x[flip] = x[flip].flip(2)
        s = step / max(1, warm) if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm))) * 0.99 + 0.01
        for g, b in zip(opt.param_groups, base): g['lr'] = b * s
        cam, cls, _ = m(x); loss = loss_fn(cam, cls, yt[idx])
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
        tot += loss.item(); step += 1
    m.eval()
    with torch.no_grad():
        sc = torch.cat([m(xv[i:i+200])[0] for i in range(0, len(xv), 200)]).numpy()
    pred = sc > 0; yvn = yv.numpy()
    tp = (pred * yvn).sum(0); f1 = np.nanmean(2*tp / (pred.sum(0) + yvn.sum(0) + 1e-9))
    print(f'epoch {ep+1}: loss {tot/steps_per:.4f} val mAP {ap_score(sc, yvn):.3f} F1 {f1:.3f} [{time.time()-t0:.1f}s]', flush=True)

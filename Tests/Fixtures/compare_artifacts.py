"""Compares HDF5 artifacts array for array: compare_artifacts.py [--ignore=ATTR,...] A B [A2 B2 ...].

Every dataset (path, dtype, shape, values) and every attribute must be equal, except the root
attribute `shards` (the merge's listing of its parts), which only the merged file of a pair may
have, and the root attributes named by --ignore (e.g. `inputs`, whose content hashes differ
downstream of a merged file). Prints one line per difference; exit status 1 when there is any.
"""
import sys

import h5py
import hdf5plugin  # noqa: F401  (registers the zstd filter)
import numpy as np


def items(f):
    found = {}
    f.visititems(lambda name, obj: found.__setitem__(name, obj))
    return found


IGNORED = {"shards"}


def attrs(obj, root):
    return {k: v for k, v in obj.attrs.items() if not (root and k in IGNORED)}


def same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def compare(path_a, path_b):
    problems = []
    with h5py.File(path_a, "r") as a, h5py.File(path_b, "r") as b:
        for root, x, y in [(True, a, b)] + [(False, a[n], b[n]) for n in set(items(a)) & set(items(b))]:
            ax, ay = attrs(x, root), attrs(y, root)
            for key in sorted(set(ax) | set(ay)):
                if key not in ax or key not in ay or not same(ax[key], ay[key]):
                    problems.append(f"{x.name}: attribute {key} differs")
        ia, ib = items(a), items(b)
        for name in sorted(set(ia) ^ set(ib)):
            problems.append(f"{name}: only in one file")
        for name in sorted(set(ia) & set(ib)):
            x, y = ia[name], ib[name]
            if isinstance(x, h5py.Dataset):
                if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x[()], y[()]):
                    problems.append(f"{name}: arrays differ ({x.dtype} {x.shape} vs {y.dtype} {y.shape})")
    return [f"{path_a} vs {path_b}: {p}" for p in problems]


problems = []
args = sys.argv[1:]
while args and args[0].startswith("--ignore="):
    IGNORED |= set(args.pop(0)[len("--ignore="):].split(","))
for i in range(0, len(args), 2):
    problems += compare(args[i], args[i + 1])
print("\n".join(problems) if problems else f"{len(args) // 2} pairs equal")
sys.exit(1 if problems else 0)

"""Interop checks between our HDF5 store and h5py + hdf5plugin (zstd filter 32015).

  h5_interop.py check FILE    -- verify a file the Swift store wrote (values, filters, attributes)
  h5_interop.py write FILE    -- write a file with hdf5plugin.Zstd for the Swift store to read
  h5_interop.py write-sealed FILE -- the same, sealed as Scripts/pretrained_files.py seals its files

Both sides generate the same arrays from the same formulas, so neither trusts the other's output.
"""
import json
import os
import sys

import h5py
import hdf5plugin
import numpy as np

ZSTD = 32015


def arrays():
    return {
        "u8": (np.arange(300 * 1000) * 7 % 256).astype(np.uint8).reshape(300, 1000),
        "i32": (np.arange(2 * 60 * 1000) - 60000).astype(np.int32).reshape(2, 60, 1000),
        "i64": (np.arange(70000, dtype=np.int64) * 1000000007),
        "f32": np.sin(np.arange(90000, dtype=np.float64)).astype(np.float32).reshape(90, 1000),
    }


def check(path):
    with h5py.File(path, "r") as f:
        for name, expected in arrays().items():
            data = f[name]
            filters = data.id.get_create_plist()
            ids = [filters.get_filter(i)[0] for i in range(filters.get_nfilters())]
            assert ZSTD in ids, f"{name}: zstd filter missing, filters {ids}"
            assert data.dtype == expected.dtype, f"{name}: dtype {data.dtype} != {expected.dtype}"
            assert data.shape == expected.shape, f"{name}: shape {data.shape} != {expected.shape}"
            assert np.array_equal(data[()], expected), f"{name}: values differ"
        half = f["f16"]
        assert half.dtype == np.float16, f"f16 dtype {half.dtype}"
        assert np.array_equal(half[()], arrays()["f32"].astype(np.float16)), "f16 values differ from numpy rounding"
        assert f.attrs["kind"] == "dataset", f.attrs["kind"]
        assert f.attrs["format_version"] == 1
        assert json.loads(f.attrs["params"]) == {"seed": 7, "name": "ümlaut"}, f.attrs["params"]
        assert json.loads(f.attrs["inputs"]) == {"source": "sha256:00"}, f.attrs["inputs"]
    print("h5py-check-ok")


def write(path, sealed=False):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pretrained_files import h5_for_seal, seal
    with (h5_for_seal(path) if sealed else h5py.File(path, "w")) as f:
        for name, values in arrays().items():
            f.create_dataset(name, data=values, chunks=True, **hdf5plugin.Zstd(clevel=5))
        f.create_dataset("f16", data=arrays()["f32"].astype(np.float16), chunks=True, **hdf5plugin.Zstd())
        f.attrs["kind"] = "dataset"
        f.attrs["format_version"] = np.int64(1)
        f.attrs["producer"] = "h5py"
        f.attrs["params"] = json.dumps({"seed": 7})
        f.attrs["inputs"] = "{}"
        f.attrs["created_at"] = "2026-01-01T00:00:00Z"
        f.attrs["fixed"] = np.bytes_(b"fixed-length")
        f.attrs["int_list"] = [127, 127, 127]  # numeric array attributes (doublesAttribute)
        f.attrs["float_list"] = [0.5, 1.5]
        f.attrs["int_scalar"] = 8
    if sealed:
        seal(path)
    print("h5py-write-ok")


if __name__ == "__main__":
    {"check": check, "write": write, "write-sealed": lambda path: write(path, sealed=True)}[sys.argv[1]](sys.argv[2])

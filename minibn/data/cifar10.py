"""CIFAR-10 (python-version batches): find, validate and standardize.

Where the data comes from, first match wins:

1. ``data_dir`` (the studies' ``--data-dir``);
2. ``$MINIBN_DATA/cifar10``;
3. the cache ``~/.cache/minibn/cifar10``.

A folder qualifies when it holds ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``
(directly, or inside a ``cifar-10-batches-py`` subfolder as the official archive unpacks).
When the chosen folder has none of them and ``download=True``, the official archive is
fetched, checked against its published MD5 and unpacked into that folder atomically (a
half-finished download never looks like data). Every file read is validated (a pickled dict
with a uint8 ``data`` array of shape (n, 3072) and n ``labels`` in 0..9), and every failure
says what is wrong and how to fix it.

Images become NHWC float32 once, standardized per channel with the mean and standard
deviation of the whole training set:  x = (pixel / 255 - mean_c) / std_c.

The training loop draws its minibatches from these arrays with
:class:`minibn.train.MiniBatches` (a seeded permutation per epoch, full batches only).
"""

import codecs
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request

from minibn import backend

np = backend.host

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{k}" for k in range(1, 6))
TEST_FILES = ("test_batch",)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PIXELS = 32 * 32 * 3


class CIFARDataError(RuntimeError):
    """The CIFAR-10 files are missing, corrupt or not in the python-version format."""


def candidate_dirs(data_dir=None):
    """The folders searched, in order (only ``data_dir`` when it is given)."""
    if data_dir is not None:
        return [os.path.abspath(os.path.expanduser(str(data_dir)))]
    dirs = []
    if os.environ.get("MINIBN_DATA"):
        dirs.append(os.path.join(os.path.abspath(os.path.expanduser(os.environ["MINIBN_DATA"])), "cifar10"))
    dirs.append(os.path.join(os.path.expanduser("~"), ".cache", "minibn", "cifar10"))
    return dirs


def _batch_folder(folder):
    """``folder`` or its ``cifar-10-batches-py`` subfolder if either holds any batch file, else None."""
    for f in (folder, os.path.join(folder, ARCHIVE_FOLDER)):
        if any(os.path.exists(os.path.join(f, name)) for name in TRAIN_FILES + TEST_FILES):
            return f
    return None


def _how_to_fix(dirs):
    return (
        "put the python-version CIFAR-10 files (data_batch_1 ... data_batch_5, test_batch) in "
        f"{dirs[0]} (or pass --data-dir DIR, or set MINIBN_DATA so that $MINIBN_DATA/cifar10 holds them); "
        f"they come from {URL} (MD5 {MD5}), unpacked"
    )


def locate(data_dir=None, download=True, url=URL, md5=MD5, fetch=None):
    """The folder holding the batch files; downloads into the first candidate if none has them."""
    dirs = candidate_dirs(data_dir)
    for d in dirs:
        found = _batch_folder(d)
        if found is not None:
            return found
    if not download:
        raise CIFARDataError(f"CIFAR-10 not found (looked in {', '.join(dirs)}); {_how_to_fix(dirs)}")
    return download_archive(dirs[0], url=url, md5=md5, fetch=fetch)


def _urlopen_fetch(url, dest):
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def file_md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_archive(target, url=URL, md5=MD5, fetch=None):
    """Fetch the archive, verify ``md5``, unpack its batch files into ``target`` atomically.

    ``fetch(url, dest_path)`` writes the archive (default: urllib; tests pass their own).
    Returns ``target``.
    """
    fetch = fetch or _urlopen_fetch
    parent = os.path.dirname(target) or "."
    if os.path.isdir(target) and os.listdir(target):
        raise CIFARDataError(
            f"CIFAR-10: {target} exists but holds none of the batch files (it has {sorted(os.listdir(target))[:5]}); "
            f"empty it or {_how_to_fix([target])}"
        )
    try:
        os.makedirs(parent, exist_ok=True)
        work = tempfile.mkdtemp(prefix=".cifar10-download-", dir=parent)
    except OSError as err:
        raise CIFARDataError(f"CIFAR-10: cannot create the cache next to {target} ({err}); {_how_to_fix([target])}") from err
    try:
        archive = os.path.join(work, "cifar-10-python.tar.gz")
        try:
            fetch(url, archive)
        except Exception as err:  # no network, HTTP error, refused connection...
            raise CIFARDataError(
                f"CIFAR-10 was not found and downloading {url} failed ({type(err).__name__}: {err}); "
                f"{_how_to_fix([target])}"
            ) from err
        got = file_md5(archive)
        if got != md5:
            raise CIFARDataError(
                f"CIFAR-10: the downloaded archive from {url} has MD5 {got}, expected {md5} "
                f"(corrupt or incomplete download; nothing was unpacked); try again or {_how_to_fix([target])}"
            )
        unpacked = os.path.join(work, "unpacked")
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(unpacked, filter="data")
        except (tarfile.TarError, OSError, EOFError) as err:
            raise CIFARDataError(f"CIFAR-10: cannot unpack the archive from {url} ({err}); {_how_to_fix([target])}") from err
        source = _batch_folder(unpacked)
        if source is None:
            raise CIFARDataError(f"CIFAR-10: the archive from {url} holds no {ARCHIVE_FOLDER}/data_batch_* files")
        if os.path.isdir(target):
            os.rmdir(target)  # empty (checked above); os.replace needs it gone
        os.replace(source, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and NumPy arrays: a batch file cannot run code."""

    def find_class(self, module, name):
        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype")}:
            return getattr(np, name)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(_multiarray(), name)
        if (module, name) == ("_codecs", "encode"):  # how Python 3 pickles bytes at protocol 2
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a CIFAR batch holds only arrays and lists)")


def _multiarray():
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy < 2
        from numpy.core import multiarray
    return multiarray


def read_batch(path, rows=None):
    """``(data uint8 (n, 3072), labels int64 (n,))`` of one batch file, validated.

    ``rows``: the number of images the file must hold (None: any).
    """
    if not os.path.isfile(path):
        raise CIFARDataError(f"CIFAR-10: {path} is missing; {_how_to_fix([os.path.dirname(path)])}")
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as err:  # truncated (EOFError), garbage (UnpicklingError, ValueError...)
        raise CIFARDataError(
            f"CIFAR-10: {path} is truncated or corrupt ({type(err).__name__}: {err}); "
            f"replace it with an intact copy ({_how_to_fix([os.path.dirname(path)])})"
        ) from err
    if not isinstance(batch, dict):
        raise CIFARDataError(f"CIFAR-10: {path} holds a {type(batch).__name__}, not the dict of a python-version batch")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise CIFARDataError(f"CIFAR-10: {path} lacks the key(s) {missing} (has {sorted(batch)}); not a python-version batch")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CIFARDataError(f"CIFAR-10: {path}: 'data' must be a uint8 array of shape (n, {PIXELS}), got a {desc}")
    try:
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise CIFARDataError(f"CIFAR-10: {path}: 'labels' is not a list of integers ({err})") from err
    if labels.shape != (data.shape[0],):
        raise CIFARDataError(f"CIFAR-10: {path}: {data.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise CIFARDataError(f"CIFAR-10: {path}: labels must lie in 0..9, got range {labels.min()}..{labels.max()}")
    if rows is not None and data.shape[0] != rows:
        raise CIFARDataError(f"CIFAR-10: {path} holds {data.shape[0]} images, expected {rows} (batches.meta)")
    return data, labels


def _rows_per_batch(folder):
    """``num_cases_per_batch`` of batches.meta, or None where there is no readable meta file."""
    path = os.path.join(folder, "batches.meta")
    try:
        with open(path, "rb") as f:
            meta = _ArrayUnpickler(f, encoding="bytes").load()
        value = meta.get(b"num_cases_per_batch", meta.get("num_cases_per_batch"))
    except Exception:  # the meta file is optional: validation still checks every batch's shape
        return None
    return int(value) if value is not None else None


def load_raw(data_dir=None, download=True, **download_kwargs):
    """Raw arrays ``{"train_x", "train_y", "test_x", "test_y", "folder"}``; images uint8 (n, 3072)."""
    folder = locate(data_dir, download=download, **download_kwargs)
    absent = [name for name in TRAIN_FILES + TEST_FILES if not os.path.isfile(os.path.join(folder, name))]
    if absent:
        raise CIFARDataError(f"CIFAR-10: {folder} lacks {absent}; {_how_to_fix([folder])}")
    rows = _rows_per_batch(folder)
    out = {"folder": folder}
    for split, names in (("train", TRAIN_FILES), ("test", TEST_FILES)):
        parts = [read_batch(os.path.join(folder, name), rows) for name in names]
        out[f"{split}_x"] = np.concatenate([d for d, _ in parts])
        out[f"{split}_y"] = np.concatenate([y for _, y in parts])
    return out


def channel_stats(raw_x):
    """Per-channel mean and std (float64, [0, 1] scale) of raw (n, 3072) uint8 images, exact:
    from a 256-bin histogram per channel, so no float copy of the whole set is made."""
    values = np.arange(256, dtype=np.float64) / 255.0
    mean, std = np.empty(3), np.empty(3)
    for c in range(3):
        counts = np.bincount(raw_x[:, c * 1024:(c + 1) * 1024].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean[c] = (counts * values).sum() / total
        std[c] = np.sqrt((counts * (values - mean[c]) ** 2).sum() / total)
    return mean, std


def to_nhwc(raw_x, mean, std, dtype="float32"):
    """Standardized NHWC images: rows are channel-major (R plane, G plane, B plane), 32x32 each."""
    x = raw_x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(dtype)
    x *= 1.0 / 255.0
    x -= mean.astype(dtype)
    x /= std.astype(dtype)
    return x


def balanced_subset(labels, n):
    """Indices of the first ``n // 10`` images of each class (in file order), sorted.

    A fixed, class-balanced subset: the same images whatever the seed."""
    if n is None or n >= labels.size:
        return np.arange(labels.size)
    per_class = n // 10
    if per_class < 1:
        raise ValueError(f"cifar10: a subset needs at least 10 images (one per class), got {n}")
    picks = [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
    return np.sort(np.concatenate(picks))


def load(data_dir=None, train_size=None, test_size=None, dtype="float32", download=True, **download_kwargs):
    """Standardized CIFAR-10: ``{"train_x", "train_y", "test_x", "test_y", "mean", "std", "folder"}``.

    Images NHWC ``dtype``; labels int64. ``train_size``/``test_size`` take class-balanced
    subsets (None: everything); the standardization always uses the full training set.
    """
    for name, n in (("train_size", train_size), ("test_size", test_size)):
        if n is not None and (int(n) != n or n < 10):
            raise ValueError(f"cifar10.load: {name} must be None or an integer >= 10, got {n!r}")
    raw = load_raw(data_dir, download=download, **download_kwargs)
    mean, std = channel_stats(raw["train_x"])
    flat = [name for name, s in zip("RGB", std) if not s > 0]
    if flat:
        raise CIFARDataError(
            f"CIFAR-10: every training image in {raw['folder']} ({', '.join(TRAIN_FILES)}) holds one value in channel(s) "
            f"{', '.join(flat)}: standardizing divides by the channel's standard deviation, 0; the batch files are "
            f"damaged or not CIFAR-10")
    out = {"mean": mean.tolist(), "std": std.tolist(), "folder": raw["folder"]}
    for split, n in (("train", train_size), ("test", test_size)):
        keep = balanced_subset(raw[f"{split}_y"], n)
        out[f"{split}_x"] = to_nhwc(raw[f"{split}_x"][keep], mean, std, dtype)
        out[f"{split}_y"] = raw[f"{split}_y"][keep]
    return out


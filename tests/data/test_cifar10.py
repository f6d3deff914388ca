"""The CIFAR-10 loader on small synthetic folders in the python-version format, and on the
real data where this machine has it."""

import hashlib
import os
import pickle
import tarfile

import numpy as np
import pytest

from minibn.data import cifar10

REAL = os.environ.get("MINIBN_CIFAR10_TEST_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "cifar10"))
ROWS = 20


def write_batch(path, data, labels, str_keys=False, filenames=False):
    batch = {b"batch_label": b"synthetic", b"data": data, b"labels": [int(v) for v in labels]}
    if filenames:
        batch[b"filenames"] = [b"img%d.png" % i for i in range(len(labels))]
    if str_keys:
        batch = {k.decode(): v for k, v in batch.items()}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def make_folder(folder, rows=ROWS, seed=0, **kwargs):
    """A CIFAR-format folder: 5 train batches and a test batch of ``rows`` images each."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for name in cifar10.TRAIN_FILES + cifar10.TEST_FILES:
        data = rng.integers(0, 256, size=(rows, 3072), dtype=np.uint8)
        write_batch(os.path.join(folder, name), data, np.arange(rows) % 10, **kwargs)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"num_cases_per_batch": rows, b"label_names": [c.encode() for c in cifar10.CLASSES]}, f, protocol=2)
    return str(folder)


@pytest.mark.parametrize("kwargs", [{}, {"str_keys": True}, {"filenames": True}])
def test_good_folder_loads_standardized_nhwc(tmp_path, kwargs):
    folder = make_folder(tmp_path / "c", **kwargs)
    d = cifar10.load(folder, download=False)
    assert d["train_x"].shape == (5 * ROWS, 32, 32, 3) and d["train_x"].dtype == np.float32
    assert d["test_x"].shape == (ROWS, 32, 32, 3)
    assert d["train_y"].dtype == np.int64 and set(d["train_y"]) == set(range(10))
    # training-set standardization: each channel of the training set has mean 0 and std 1
    np.testing.assert_allclose(d["train_x"].mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(d["train_x"].std(axis=(0, 1, 2)), 1, atol=1e-5)


def test_layout_is_channel_major_rows_to_nhwc(tmp_path):
    folder = make_folder(tmp_path / "c")
    raw = cifar10.load_raw(folder, download=False)
    x = cifar10.to_nhwc(raw["train_x"], np.zeros(3), np.ones(3) / 255.0)
    row = raw["train_x"][7]
    # pixel (h=2, w=5): red at 2*32+5, green 1024 later, blue 2048 later
    assert list(x[7, 2, 5]) == [row[69], row[1024 + 69], row[2048 + 69]]


def test_channel_stats_are_exact(tmp_path):
    raw = np.random.default_rng(1).integers(0, 256, size=(30, 3072), dtype=np.uint8)
    mean, std = cifar10.channel_stats(raw)
    planes = raw.reshape(30, 3, 1024).transpose(1, 0, 2).reshape(3, -1) / 255.0
    np.testing.assert_allclose(mean, planes.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(std, planes.std(axis=1), rtol=1e-12)


def test_truncated_file_is_reported(tmp_path):
    folder = make_folder(tmp_path / "c")
    path = os.path.join(folder, "data_batch_3")
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) // 2])
    with pytest.raises(cifar10.CIFARDataError, match=r"data_batch_3 is truncated or corrupt"):
        cifar10.load(folder, download=False)


def test_wrong_shape_file_is_reported(tmp_path):
    folder = make_folder(tmp_path / "c")
    write_batch(os.path.join(folder, "test_batch"), np.zeros((ROWS, 1024), np.uint8), np.zeros(ROWS, int))
    with pytest.raises(cifar10.CIFARDataError, match=r"test_batch: 'data' must be a uint8 array of shape \(n, 3072\).*\(20, 1024\)"):
        cifar10.load(folder, download=False)


@pytest.mark.parametrize("labels,match", [
    (np.full(ROWS, 10), r"labels must lie in 0\.\.9"),
    (np.zeros(ROWS - 1, int), r"20 images but labels of shape \(19,\)"),
])
def test_bad_labels_are_reported(tmp_path, labels, match):
    folder = make_folder(tmp_path / "c")
    write_batch(os.path.join(folder, "data_batch_1"), np.zeros((ROWS, 3072), np.uint8), labels)
    with pytest.raises(cifar10.CIFARDataError, match=match):
        cifar10.load(folder, download=False)


def test_count_must_match_meta(tmp_path):
    folder = make_folder(tmp_path / "c")
    write_batch(os.path.join(folder, "data_batch_2"), np.zeros((ROWS + 1, 3072), np.uint8), np.zeros(ROWS + 1, int))
    with pytest.raises(cifar10.CIFARDataError, match=r"data_batch_2 holds 21 images, expected 20"):
        cifar10.load(folder, download=False)


def test_missing_key_and_missing_file_are_reported(tmp_path):
    folder = make_folder(tmp_path / "c")
    with open(os.path.join(folder, "data_batch_1"), "wb") as f:
        pickle.dump({b"data": np.zeros((ROWS, 3072), np.uint8)}, f, protocol=2)
    with pytest.raises(cifar10.CIFARDataError, match=r"lacks the key\(s\) \['labels'\]"):
        cifar10.load(folder, download=False)
    os.remove(os.path.join(folder, "data_batch_1"))
    with pytest.raises(cifar10.CIFARDataError, match=r"lacks \['data_batch_1'\]"):
        cifar10.load(folder, download=False)


def test_pickle_that_would_run_code_is_refused(tmp_path):
    folder = make_folder(tmp_path / "c")
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({b"data": os.getcwd, b"labels": []}, f, protocol=2)  # a global outside numpy
    with pytest.raises(cifar10.CIFARDataError, match="refusing to load"):
        cifar10.load(folder, download=False)


def test_missing_folder_says_where_to_put_the_data(tmp_path):
    with pytest.raises(cifar10.CIFARDataError, match=r"CIFAR-10 not found .*nowhere.*put the python-version CIFAR-10 files"):
        cifar10.load(tmp_path / "nowhere", download=False)


def test_search_order_env_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIBN_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    dirs = cifar10.candidate_dirs()
    assert dirs == [str(tmp_path / "env" / "cifar10"), str(tmp_path / "home" / ".cache" / "minibn" / "cifar10")]
    make_folder(tmp_path / "home" / ".cache" / "minibn" / "cifar10")
    assert cifar10.locate(download=False) == dirs[1]


def _archive(tmp_path):
    """A tar.gz laid out as the official one (cifar-10-batches-py/...), and its MD5."""
    src = make_folder(tmp_path / "src" / cifar10.ARCHIVE_FOLDER)
    path = tmp_path / "archive.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname=cifar10.ARCHIVE_FOLDER)
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_checksum_and_unpacks(tmp_path):
    path, md5 = _archive(tmp_path)
    target = tmp_path / "cache" / "cifar10"
    folder = cifar10.locate(target, url=path.as_uri(), md5=md5)
    assert folder == str(target)
    assert cifar10.load(target, download=False)["train_x"].shape[0] == 5 * ROWS
    assert not [n for n in os.listdir(target.parent) if n.startswith(".cifar10-download")]  # no leftovers


def test_download_with_wrong_checksum_is_rejected(tmp_path):
    path, _ = _archive(tmp_path)
    target = tmp_path / "cache" / "cifar10"
    with pytest.raises(cifar10.CIFARDataError, match=r"has MD5 [0-9a-f]{32}, expected 0{32}.*nothing was unpacked"):
        cifar10.locate(target, url=path.as_uri(), md5="0" * 32)
    assert not target.exists() and os.listdir(target.parent) == []


def test_download_without_network_says_where_to_put_the_data(tmp_path):
    def offline(url, dest):
        raise OSError("Network is unreachable")
    target = tmp_path / "cache" / "cifar10"
    with pytest.raises(cifar10.CIFARDataError, match=r"downloading https://www\.cs\.toronto\.edu/.*failed .*Network is unreachable.*put the python-version"):
        cifar10.locate(target, fetch=offline)
    assert not target.exists()


def test_balanced_subset_and_sizes(tmp_path):
    folder = make_folder(tmp_path / "c")
    d = cifar10.load(folder, train_size=30, test_size=10, download=False)
    assert np.bincount(d["train_y"], minlength=10).tolist() == [3] * 10
    assert np.bincount(d["test_y"], minlength=10).tolist() == [1] * 10
    with pytest.raises(ValueError, match="train_size must be None or an integer >= 10"):
        cifar10.load(folder, train_size=5, download=False)


@pytest.mark.skipif(not os.path.isdir(REAL), reason=f"the real CIFAR-10 is not at {REAL}")
def test_real_cifar10_matches_its_published_statistics():
    raw = cifar10.load_raw(REAL, download=False)
    assert raw["train_x"].shape == (50000, 3072) and raw["test_x"].shape == (10000, 3072)
    assert np.bincount(raw["train_y"]).tolist() == [5000] * 10
    assert raw["train_y"][:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    mean, std = cifar10.channel_stats(raw["train_x"])
    np.testing.assert_allclose(mean, [0.49139968, 0.48215841, 0.44653091], atol=1e-8)
    np.testing.assert_allclose(std, [0.24703223, 0.24348513, 0.26158784], atol=1e-8)


def test_a_channel_without_variance_is_refused_naming_folder_and_channel(tmp_path):
    folder = make_folder(tmp_path / "c")
    for name in cifar10.TRAIN_FILES:   # the green plane of every training image set to one value
        path = os.path.join(folder, name)
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = batch[b"data"].copy()
        data[:, 1024:2048] = 77
        write_batch(path, data, batch[b"labels"])
    with pytest.raises(cifar10.CIFARDataError, match=r"holds one value in channel\(s\) G"):
        cifar10.load(folder, download=False)

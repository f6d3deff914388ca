"""Reading a results folder back: runs by name, the helpers every report and rulebook shares."""

import math

import numpy as np
import pytest

from minibn import io, results
from minibn.claims import dln as dln_rules
from minibn.data.synthetic import linear_regression
from minibn.results import Run


def test_a_run_is_named_once_and_found_by_its_name():
    run = Run("batchnorm", 1e-6, 2)
    assert run.name == "batchnorm_lr1e-06_seed2"
    record = {"variant": "batchnorm", "lr": 1e-6, "seed": 2, "loss": [3.0, None, 1.0]}
    assert Run.of(record) == run
    doc = {"config": {}, "runs": {run.name: record, Run("standard", 1e-6, 2).name: dict(record, variant="standard")}}
    assert results.finder(doc, 2)("batchnorm", 1e-6) is record
    assert results.finder(doc, 2)("batchnorm", 1e-7) is None and results.finder(doc, 0)("batchnorm", 1e-6) is None
    assert results.seeds_of(doc) == [2] and results.lrs_of(doc) == [1e-6]
    assert results.runs_over_seeds(doc, "batchnorm", 1e-6) == [record]
    assert results.last(record, "loss") == 1.0 and results.name_of(doc, record) == run.name


def test_windows_and_tails():
    steps = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert results.window(steps) == list(range(1, 11)) and results.window(steps, early=True) == [1, 2]
    assert results.window([0, 5], early=True) == [1]
    assert results.tail_mean([1.0] * 18 + [None, 3.0, 5.0]) == pytest.approx(4.0)   # the last 10% of 20 finite
    assert math.isnan(results.tail_mean([None, float("nan")]))
    assert results.finite_median([None, 1.0, 3.0, float("inf")]) == 2.0
    assert results.scaled_layers(8, (2, 9, 13)) == [1, 6, 8]


def test_reading_a_folder_and_an_older_vgg_npz(tmp_path):
    doc = {"study": "x", "config": {"seeds": [0]}, "runs": {"a_lr0.1_seed0": {"variant": "a", "lr": 0.1, "seed": 0}}}
    results.write(str(tmp_path), doc, {"a_lr0.1_seed0/moments/1": np.arange(3.0)})
    back, arrays = results.read(str(tmp_path))
    assert back == doc and list(arrays) == ["a_lr0.1_seed0/moments/1"]
    io.write_npz(str(tmp_path / "results.npz"), **{"a_lr0.1_seed0__moments__1": np.arange(3.0)})  # the VGG's old names
    assert list(results.read(str(tmp_path))[1]) == ["a_lr0.1_seed0/moments/1"]
    (tmp_path / "results.npz").write_bytes(b"not a zip")
    with pytest.raises(io.DamagedFile, match="results.npz is damaged"):
        results.read(str(tmp_path))
    io.write_json(str(tmp_path / "results.json"), [1, 2])
    with pytest.raises(io.DamagedFile, match="no 'config' record"):
        results.read(str(tmp_path))


def test_rank_residuals_are_the_best_rank_k_fits():
    X, Y, A = linear_regression(50, 4, 4, rng=np.random.default_rng(3))
    residuals = results.rank_residuals(np.linalg.svd(Y, compute_uv=False))
    assert residuals[0] == pytest.approx(float((Y ** 2).sum())) and residuals[-1] == pytest.approx(0, abs=1e-9)
    rng = np.random.default_rng(0)
    for k in range(1, 4):
        # the truncated map of A itself and random rank-k maps all fit no better than r_k
        u, s, vt = np.linalg.svd(A)
        fits = [u[:, :k] * s[:k] @ vt[:k]] + [rng.standard_normal((4, k)) @ rng.standard_normal((k, 4)) for _ in range(3)]
        for B in fits:
            coef, *_ = np.linalg.lstsq(X @ B.T, Y, rcond=None)  # best use of that rank-k subspace
            assert float(((Y - X @ B.T @ coef) ** 2).sum()) >= residuals[k] * (1 - 1e-9)
    assert dln_rules.plateau(residuals[2] * 1.001, residuals) == (2, pytest.approx(1.001))

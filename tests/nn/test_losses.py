import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibn import backend, nn
from minibn.gradcheck import check_function

FAST = settings(max_examples=15, deadline=None)


def reference_cross_entropy(z, labels):
    total = 0.0
    for row, c in zip(z.tolist(), labels.tolist()):
        total += -math.log(math.exp(row[c]) / sum(math.exp(v) for v in row))
    return total / len(labels)


@FAST
@given(st.integers(1, 6), st.integers(2, 5), st.integers(0, 2**32 - 1))
def test_softmax_cross_entropy_value_and_gradient(n, k, seed):
    rng = np.random.default_rng(seed)
    z, labels = rng.normal(size=(n, k)) * 3, rng.integers(0, k, n)
    loss, dz = nn.softmax_cross_entropy(z, labels)
    assert isinstance(loss, float)
    assert abs(loss - reference_cross_entropy(z, labels)) < 1e-12 * max(1.0, loss)
    check_function(lambda: nn.softmax_cross_entropy(z, labels)[0], {"z": z}, {"z": dz}, raise_on_fail=True)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 999.0]])
    loss, dz = nn.softmax_cross_entropy(z, np.array([0, 2]))
    assert math.isfinite(loss) and np.all(np.isfinite(dz))
    assert abs(loss - (0.0 + math.log1p(math.e)) / 2) < 1e-12     # row 2: -log(e^999 / (e^1000 + e^999))
    np.testing.assert_allclose(dz.sum(axis=1), 0.0, atol=1e-15)


def test_softmax_cross_entropy_float32_and_bad_labels():
    z = np.zeros((3, 4), np.float32)
    loss, dz = nn.softmax_cross_entropy(z, np.array([0, 1, 3]))
    assert dz.dtype == np.float32 and abs(loss - math.log(4)) < 1e-6
    with pytest.raises(nn.LayerError, match=r"softmax_cross_entropy: labels must be integers of shape \(3,\).*got shape \(2,\)"):
        nn.softmax_cross_entropy(z, np.array([0, 1]))
    with pytest.raises(nn.LayerError, match=r"labels must be integers.*dtype float64"):
        nn.softmax_cross_entropy(z, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(nn.LayerError, match=r"labels must lie in \[0, 4\), got range \[0, 4\]"):
        nn.softmax_cross_entropy(z, np.array([0, 1, 4]))
    with pytest.raises(nn.LayerError, match=r"softmax_cross_entropy: logits must be 2-D, got shape \(3,\)"):
        nn.softmax_cross_entropy(np.zeros(3), np.array([0]))


@FAST
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.sampled_from(["sum", "mean"]), st.integers(0, 2**32 - 1))
def test_squared_error_value_and_gradient(shape, reduction, seed):
    rng = np.random.default_rng(seed)
    pred, target = rng.normal(size=shape), rng.normal(size=shape)
    loss, dpred = nn.squared_error(pred, target, reduction)
    total = sum((p - t) ** 2 for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()))
    assert abs(loss - (total if reduction == "sum" else total / pred.size)) < 1e-12 * max(1.0, total)
    check_function(lambda: nn.squared_error(pred, target, reduction)[0], {"pred": pred}, {"pred": dpred}, raise_on_fail=True)


def test_squared_error_bad_inputs():
    pred = np.zeros((2, 3), np.float32)
    assert nn.squared_error(pred, pred)[1].dtype == np.float32
    with pytest.raises(nn.LayerError, match=r"squared_error: target shape \(3, 2\) differs from pred shape \(2, 3\)"):
        nn.squared_error(pred, np.zeros((3, 2), np.float32))
    with pytest.raises(nn.LayerError, match="squared_error: target has dtype float64 but pred's values are float32"):
        nn.squared_error(pred, np.zeros((2, 3)))
    with pytest.raises(nn.LayerError, match="squared_error: reduction must be one of .*'max'"):
        nn.squared_error(pred, pred, "max")


def test_losses_on_every_backend(xp):
    rng = np.random.default_rng(0)
    z, labels = rng.normal(size=(4, 3)), rng.integers(0, 3, 4)
    loss, dz = nn.softmax_cross_entropy(backend.to_device(z, xp), backend.to_device(labels, xp))
    ref_loss, ref_dz = nn.softmax_cross_entropy(z, labels)
    assert abs(loss - ref_loss) < 1e-12
    np.testing.assert_allclose(backend.to_host(dz), ref_dz, rtol=1e-12)
    loss, dp = nn.squared_error(backend.to_device(z, xp), backend.to_device(z * 2, xp))
    assert abs(loss - float((z * z).sum())) < 1e-12


def test_empty_batches_are_refused_where_the_mean_is_undefined():
    with pytest.raises(nn.LayerError, match=r"softmax_cross_entropy: the batch is empty \(logits of shape \(0, 3\)\)"):
        nn.softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(nn.LayerError, match=r"squared_error: reduction 'mean' of an empty pred \(shape \(0, 2\)\)"):
        nn.squared_error(np.zeros((0, 2)), np.zeros((0, 2)), reduction="mean")
    loss, dpred = nn.squared_error(np.zeros((0, 2)), np.zeros((0, 2)))   # a sum over nothing is 0
    assert loss == 0.0 and dpred.shape == (0, 2)

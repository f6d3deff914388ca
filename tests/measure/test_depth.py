"""The depth profile against brute force: NumPy's rank, norms and the covariance built explicitly."""

import numpy as np
import pytest

from minibn import models, nn
from minibn.measure import depth


def test_spectrum_stats_against_brute_force():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 7))      # rank 3
    s = depth.spectrum_stats(A.reshape(40, 7, 1))
    C = A.T @ A / 40
    assert s["rank"] == np.linalg.matrix_rank(A) == 3
    assert s["stable_rank"] == pytest.approx(np.linalg.norm(A, "fro") ** 2 / np.linalg.norm(A, 2) ** 2, rel=1e-12)
    assert s["effective_rank"] == pytest.approx(np.trace(C) ** 2 / np.linalg.norm(C, "fro") ** 2, rel=1e-12)
    one = depth.spectrum_stats(np.outer(rng.standard_normal(10), rng.standard_normal(5)))
    assert one["rank"] == 1 and one["stable_rank"] == pytest.approx(1.0) and one["effective_rank"] == pytest.approx(1.0)
    assert depth.spectrum_stats(np.zeros((4, 3)))["rank"] == 0


@pytest.mark.parametrize("norm", [None, "batchnorm", "l1"])
def test_depth_profile_against_brute_force(norm):
    model = models.dln(depth=6, width=5, norm=norm, rng=0, dtype="float64")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((30, 5))
    params = model.flat_params().copy()
    out = depth.depth_profile(model, nn.squared_error, x, y)
    assert np.array_equal(model.flat_params(), params)
    layers = depth.weight_layers(model)
    assert out["layers"] == layers and len(out["grad_norm"]) == 6
    model.value_and_grad(nn.squared_error, x, y, mode="probe")
    for k, i in enumerate(layers):
        assert out["grad_norm"][k] == pytest.approx(np.linalg.norm(model[i].grads["W"]), rel=1e-14)
    h = x
    reps = []
    for i, layer in enumerate(model):
        if i in layers[1:]:
            reps.append(h)
        h = layer.forward(h, "probe")
    reps.append(h)
    for k, a in enumerate(reps):
        C = a.T @ a / len(a)
        assert out["rank"][k] == np.linalg.matrix_rank(a)
        assert out["effective_rank"][k] == pytest.approx(np.trace(C) ** 2 / np.linalg.norm(C, "fro") ** 2, rel=1e-10)
        assert out["stable_rank"][k] == pytest.approx(np.linalg.norm(a, "fro") ** 2 / np.linalg.norm(a, 2) ** 2,
                                                      rel=1e-10)


def test_conv_representations_are_flattened_per_sample():
    model = models.vgg([4, "M", 6, "M"], norm="batchnorm", num_classes=3, input_size=8, rng=0, dtype="float64")
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((12, 8, 8, 3)), rng.integers(0, 3, 12)
    out = depth.depth_profile(model, nn.softmax_cross_entropy, x, y)
    # conv2 sees the pooled 4x4x4 map, the Dense the flattened 2x2x6 one, then the 3 logits
    assert out["features"] == [4 * 4 * 4, 2 * 2 * 6, 3] and all(r <= 12 for r in out["rank"])
    with pytest.raises(ValueError, match="mode"):
        depth.depth_profile(model, nn.softmax_cross_entropy, x, y, mode="train")
